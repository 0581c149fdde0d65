//! Bearer tokens for API access.
//!
//! A token is `stk_` followed by 64 hex characters (256 random bits); the store keeps only its
//! SHA-256, so a database leak does not leak usable tokens. Roles and per-COT scoping come with
//! the identity work; today a valid token may read everything and every read is audited under
//! the token's name.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::AppState;
use super::error::ApiError;

/// Prefix of every API token, so a leaked one is recognisable in a secret scanner.
pub const TOKEN_PREFIX: &str = "stk_";

/// A fresh token (shown once) and the hash to store.
pub fn new_token() -> (String, String) {
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()));
    let hash = hash_token(&token);
    (token, hash)
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name, recorded as the actor in the audit log.
    pub name: String,
    /// The client's address, when known.
    pub source: Option<String>,
}

impl Caller {
    /// How the caller is recorded as the actor of audit entries and alert events.
    pub fn actor(&self) -> String {
        format!("token:{}", self.name)
    }

    /// The COTs whose patients the caller may see: `None` means all. Every query of patient
    /// data passes this through to the store, so per-COT scoping (the identity work) only
    /// has to change this function. Today every valid token sees every COT.
    pub fn cot_scope(&self) -> Option<Vec<i64>> {
        None
    }

    /// Whether a row of COT `cot_id` is visible to the caller.
    pub fn sees_cot(&self, cot_id: i64) -> bool {
        self.cot_scope().is_none_or(|cots| cots.contains(&cot_id))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthorized)?;
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| t.starts_with(TOKEN_PREFIX))
            .ok_or(ApiError::Unauthorized)?;
        let record = state
            .store
            .api_token_by_hash(&hash_token(token))
            .await?
            .ok_or(ApiError::Unauthorized)?;
        let now = OffsetDateTime::now_utc();
        if record.revoked_at.is_some() || record.expires_at.is_some_and(|e| e <= now) {
            return Err(ApiError::TokenRejected);
        }
        let source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.to_string());
        Ok(Caller {
            name: record.name,
            source,
        })
    }
}
