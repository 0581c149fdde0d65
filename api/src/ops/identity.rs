//! Identity operations: API keys and service accounts.

use sha2::{Digest, Sha256};
use store::{ApiToken, NewApiToken, NewUser, Role, Store, TokenKind, UserKind};
use time::OffsetDateTime;

use super::OpsError;

/// Prefix of every opaque token, so a leaked one is recognisable in a secret scanner.
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

/// Creates an API key for user `user_id` (a service account) and returns it with its stored
/// row. The key is shown only now: the store keeps its SHA-256.
pub async fn issue_api_key(
    store: &Store,
    user_id: i64,
    name: &str,
    expires_at: Option<OffsetDateTime>,
) -> Result<(String, ApiToken), OpsError> {
    let (token, hash) = new_token();
    let stored = store
        .add_api_token(&NewApiToken {
            user_id,
            name,
            kind: TokenKind::ApiKey,
            token_hash: &hash,
            expires_at,
        })
        .await?;
    Ok((token, stored))
}

/// Creates a service account `username` with `role` in `cot_ids` and returns an API key for
/// it (integrations, tooling and tests that need a caller without a login).
pub async fn service_account(
    store: &Store,
    username: &str,
    role: Role,
    cot_ids: &[i64],
) -> Result<String, OpsError> {
    let user = store
        .add_user(&NewUser {
            username,
            display_name: username,
            role,
            kind: UserKind::Service,
            password_hash: None,
            cot_ids,
        })
        .await?;
    let (token, _) = issue_api_key(store, user.id, username, None).await?;
    Ok(token)
}
