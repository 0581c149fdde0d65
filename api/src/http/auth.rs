//! Who is calling, and what they may do.
//!
//! Three kinds of credentials reach the API, all as `Authorization: Bearer …`:
//! - **sessions**: `stk_…` tokens issued by `POST /api/v1/auth/login` (username + Argon2id
//!   password), expiring after the configured session lifetime, revoked by logout;
//! - **API keys**: `stk_…` tokens of service accounts (integrations), created by an
//!   administrator or the CLI, optionally expiring;
//! - **JWTs** from a regional identity provider, verified against its JWKS
//!   ([`super::oidc`]): issuer, audience, expiry, and claims mapped to a role and COTs.
//!
//! Opaque tokens are `stk_` + 64 hex characters (256 random bits); the store keeps only their
//! SHA-256. Every token acts for a user with one [`Role`] in one or more COTs: the role gives
//! a fixed set of [`Permission`]s (checked per route by [`super::policy`]) and the COTs are
//! the caller's [`Caller::cot_scope`], applied to every query of patient data.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use store::Role;
use time::OffsetDateTime;

use super::AppState;
use super::error::ApiError;

pub use crate::ops::identity::{TOKEN_PREFIX, hash_token, new_token};

/// What a role may do. Tenancy (which COTs) is separate: see [`Caller::cot_scope`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// List and read the patient registry (identity, conditions, devices).
    ReadPatients,
    /// Read clinical data: readings, alerts, care plans, the alert stream, FHIR.
    ReadClinical,
    /// Acknowledge, assign, comment on and resolve alerts.
    WorkAlerts,
    /// Create new care-plan versions.
    EditCarePlans,
    /// Enroll patients with a COT.
    EnrollPatients,
    /// Read device state.
    ReadDevices,
    /// Provision and revoke devices; read the quarantine.
    ManageDevices,
    /// Create, change and disable users; issue API keys.
    ManageUsers,
    /// Create COTs.
    ManageCots,
    /// Query the audit log and patients' access histories.
    ReadAudit,
}

/// The permissions of each role: the one table that says who may do what.
pub fn allows(role: Role, permission: Permission) -> bool {
    use Permission::*;
    match role {
        Role::Nurse => matches!(
            permission,
            ReadPatients | ReadClinical | WorkAlerts | ReadDevices
        ),
        Role::Physician => matches!(
            permission,
            ReadPatients | ReadClinical | WorkAlerts | EditCarePlans | EnrollPatients | ReadDevices
        ),
        Role::DeviceManager => matches!(permission, ReadPatients | ReadDevices | ManageDevices),
        Role::Admin => matches!(
            permission,
            ReadPatients | EnrollPatients | ManageUsers | ManageCots | ReadAudit
        ),
    }
}

/// How the caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A login session.
    Session,
    /// A service account's API key.
    ApiKey,
    /// A JWT from the configured identity provider.
    Jwt,
}

/// The authenticated caller of a request.
#[derive(Clone)]
pub struct Caller {
    /// The user id (`None` for identity-provider users, who have no local record).
    pub user_id: Option<i64>,
    /// The username (or the JWT subject's preferred name).
    pub username: String,
    /// The name to show.
    pub display_name: String,
    pub role: Role,
    /// The COTs the caller belongs to.
    pub cots: Vec<i64>,
    pub via: Via,
    /// The client's address, when known.
    pub source: Option<String>,
    /// The SHA-256 of the token used (opaque or JWT), for logout.
    pub(crate) token_hash: Option<String>,
    /// When the JWT used expires (identity-provider callers), for logout.
    pub(crate) jwt_expires_at: Option<OffsetDateTime>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("username", &self.username)
            .field("role", &self.role)
            .field("cots", &self.cots)
            .field("via", &self.via)
            .finish_non_exhaustive()
    }
}

impl Caller {
    /// A local user calling with an opaque token (its hash kept for logout).
    pub(crate) fn of_user(
        user: store::User,
        via: Via,
        source: Option<String>,
        token_hash: String,
    ) -> Caller {
        Caller {
            user_id: Some(user.id),
            username: user.username,
            display_name: user.display_name,
            role: user.role,
            cots: user.cot_ids,
            via,
            source,
            token_hash: Some(token_hash),
            jwt_expires_at: None,
        }
    }

    /// How the caller is recorded as the actor of audit entries and alert events.
    pub fn actor(&self) -> String {
        match self.via {
            Via::Jwt => format!("idp:{}", self.username),
            Via::Session | Via::ApiKey => format!("user:{}", self.username),
        }
    }

    /// The COTs whose patients the caller may see. Every query of patient data passes this
    /// to the store; it is never `None` for a caller (that is for the gateway's components).
    pub fn cot_scope(&self) -> Option<Vec<i64>> {
        Some(self.cots.clone())
    }

    /// Whether a row of COT `cot_id` is visible to the caller.
    pub fn sees_cot(&self, cot_id: i64) -> bool {
        self.cots.contains(&cot_id)
    }

    /// Whether the caller's role grants `permission`.
    pub fn can(&self, permission: Permission) -> bool {
        allows(self.role, permission)
    }

    /// [`Caller::can`] or 403.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.can(permission) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

/// The bearer credential of a request, if it has one.
pub(crate) fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The client address of a request, when the server recorded it. When the peer is one of
/// `trusted_proxies`, the client is the right-most `X-Forwarded-For` entry that is not a
/// trusted proxy (entries left of it were written by the client and prove nothing); from any
/// other peer the header is ignored, so a client cannot choose its own address.
pub fn client_address(parts: &Parts, trusted_proxies: &[IpAddr]) -> Option<String> {
    let ConnectInfo(peer) = parts.extensions.get::<ConnectInfo<SocketAddr>>()?;
    let mut client = peer.ip().to_canonical();
    if !trusted_proxies.contains(&client) {
        return Some(client.to_string());
    }
    let headers = parts.headers.get_all("x-forwarded-for");
    for value in headers.iter().rev() {
        let Ok(text) = value.to_str() else {
            break;
        };
        for hop in text.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip.to_canonical();
                    if !trusted_proxies.contains(&client) {
                        return Some(client.to_string());
                    }
                }
                // A malformed entry: the last address vouched for stands.
                Err(_) => return Some(client.to_string()),
            }
        }
    }
    Some(client.to_string())
}

/// Authenticates a request: a session or API key by its hash, or a JWT by the identity
/// provider's keys. Disabled users' tokens are refused like revoked ones.
pub(crate) async fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
    let source = client_address(parts, &state.auth.trusted_proxies);
    if !token.starts_with(TOKEN_PREFIX) {
        let oidc = state.auth.oidc.as_ref().ok_or(ApiError::Unauthorized)?;
        let identity = oidc.verify(token).map_err(|e| {
            tracing::info!(reason = %e, "identity-provider token refused");
            ApiError::TokenRejected
        })?;
        let hash = hash_token(token);
        if state.store.jwt_revoked(&hash).await? {
            return Err(ApiError::TokenRejected);
        }
        let mut cots = Vec::new();
        for code in &identity.cot_codes {
            if let Some(cot) = state.store.cot_by_code(code).await? {
                cots.push(cot.id);
            }
        }
        return Ok(Caller {
            user_id: None,
            display_name: identity
                .display_name
                .unwrap_or_else(|| identity.username.clone()),
            username: identity.username,
            role: identity.role,
            cots,
            via: Via::Jwt,
            source,
            token_hash: Some(hash),
            jwt_expires_at: Some(identity.expires_at),
        });
    }
    let hash = hash_token(token);
    let record = state
        .store
        .api_token_by_hash(&hash)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let now = OffsetDateTime::now_utc();
    if record.revoked_at.is_some() || record.expires_at.is_some_and(|e| e <= now) {
        return Err(ApiError::TokenRejected);
    }
    // Tokens from before users existed belong to nobody: refused.
    let user_id = record.user_id.ok_or(ApiError::TokenRejected)?;
    let user = state
        .store
        .get_user(user_id)
        .await?
        .filter(|u| u.disabled_at.is_none())
        .ok_or(ApiError::TokenRejected)?;
    let via = match record.kind {
        store::TokenKind::Session => Via::Session,
        store::TokenKind::ApiKey => Via::ApiKey,
    };
    Ok(Caller::of_user(user, via, source, hash))
}

/// Handlers take the caller the access policy already authenticated (it sits in the
/// request's extensions); a route outside the policy authenticates here.
impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        authenticate(parts, state).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_has_a_distinct_job() {
        // Nurses never edit plans nor manage anything; admins never read clinical data.
        assert!(allows(Role::Nurse, Permission::WorkAlerts));
        assert!(!allows(Role::Nurse, Permission::EditCarePlans));
        assert!(allows(Role::Physician, Permission::EditCarePlans));
        assert!(!allows(Role::DeviceManager, Permission::ReadClinical));
        assert!(allows(Role::DeviceManager, Permission::ManageDevices));
        assert!(!allows(Role::Admin, Permission::ReadClinical));
        assert!(allows(Role::Admin, Permission::ReadAudit));
        assert!(!allows(Role::Nurse, Permission::ReadAudit));
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, ha) = new_token();
        let (b, hb) = new_token();
        assert_ne!(a, b);
        assert_ne!(ha, hb);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == 68);
        assert_eq!(hash_token(&a), ha);
        assert!(!ha.contains(&a[4..]));
    }
}
