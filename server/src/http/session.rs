//! Login, logout and "who am I".
//!
//! - `POST /api/v1/auth/login` `{"username","password"}` → `{"token","expires_at","user"}`;
//!   wrong username or password → 401 `invalid_credentials` (one answer for both, and an
//!   unknown user costs the same Argon2id verification as a known one); after repeated
//!   failures per username or per client address → 429 `too_many_attempts` with
//!   `Retry-After`. Every attempt is audited (`auth.login`, `auth.login.failed`,
//!   `auth.login.throttled`).
//! - `POST /api/v1/auth/logout` revokes the session token used → 204.
//! - `GET /api/v1/auth/me` → the caller with their role and COTs.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::AppState;
use super::auth::{Caller, Via, new_token, source};
use super::error::{ApiError, rejection};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/login", post(login))
        .route("/auth/logout", post(logout))
        .route("/auth/me", get(me))
}

/// Shortest password accepted when one is set (NIST SP 800-63B asks at least 8; staff
/// accounts that reach health data get more).
pub const MIN_PASSWORD: usize = 12;

/// An Argon2id PHC string for `password` (RustCrypto defaults: m = 19 MiB, t = 2, p = 1, the
/// OWASP recommendation). CPU-heavy: async code calls [`hash_password_off_thread`].
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(ApiError::BadRequest(format!(
            "a password needs at least {MIN_PASSWORD} characters"
        )));
    }
    phc(password.as_bytes())
        .map_err(|e| ApiError::BadRequest(format!("cannot hash the password: {e}")))
}

/// [`hash_password`] on a blocking thread.
pub async fn hash_password_off_thread(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|_| ApiError::BadRequest("cannot hash the password".into()))?
}

fn phc(secret: &[u8]) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret, &salt)
        .map(|h| h.to_string())
}

/// Whether `password` matches the PHC string `hash`.
fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash to verify against when the user does not exist, so that answer takes as long.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| phc(b"no such user, no such password").unwrap_or_default())
}

/// Failed logins per key (a username, a client address) in a sliding window. In memory: a
/// restart forgets, which an attacker cannot trigger from the login form.
#[derive(Debug)]
pub struct LoginLimiter {
    window: Duration,
    per_user: usize,
    per_source: usize,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Default for LoginLimiter {
    /// 5 failures per username and 20 per address in 15 minutes.
    fn default() -> Self {
        LoginLimiter::new(Duration::from_secs(15 * 60), 5, 20)
    }
}

impl LoginLimiter {
    pub fn new(window: Duration, per_user: usize, per_source: usize) -> Self {
        LoginLimiter {
            window,
            per_user,
            per_source,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The keys an attempt counts against: the username, and the client address when known
    /// (an unknown address is not one shared key, or one client could lock everyone out).
    fn keys(username: &str, source: Option<&str>) -> Vec<(String, bool)> {
        let mut keys = vec![(format!("user:{}", username.to_lowercase()), true)];
        if let Some(ip) = source {
            keys.push((format!("ip:{ip}"), false));
        }
        keys
    }

    /// Seconds to wait when a key is over its limit, else `None`.
    pub fn blocked(&self, username: &str, source: Option<&str>) -> Option<u64> {
        let Ok(mut map) = self.failures.lock() else {
            return Some(self.window.as_secs());
        };
        let now = Instant::now();
        let mut wait = None;
        for (key, is_user) in Self::keys(username, source) {
            let limit = if is_user {
                self.per_user
            } else {
                self.per_source
            };
            if let Some(q) = map.get_mut(&key) {
                while q.front().is_some_and(|t| now - *t >= self.window) {
                    q.pop_front();
                }
                if q.len() >= limit
                    && let Some(oldest) = q.front()
                {
                    let secs = (self.window - (now - *oldest)).as_secs().max(1);
                    wait = Some(wait.map_or(secs, |w: u64| w.max(secs)));
                }
            }
        }
        wait
    }

    /// Records a failure for both keys.
    pub fn failed(&self, username: &str, source: Option<&str>) {
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        let now = Instant::now();
        if map.len() > 100_000 {
            let window = self.window;
            map.retain(|_, q| q.back().is_some_and(|t| now - *t < window));
        }
        for (key, _) in Self::keys(username, source) {
            map.entry(key).or_default().push_back(now);
        }
    }

    /// A successful login clears the username's failures (not the address's).
    pub fn succeeded(&self, username: &str) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(&format!("user:{}", username.to_lowercase()));
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

/// A COT as the caller sees it.
#[derive(Debug, Serialize)]
pub(crate) struct CotOut {
    id: i64,
    code: String,
    name: String,
}

/// The caller as `/auth/me` and the login answer show it.
#[derive(Debug, Serialize)]
pub(crate) struct Me {
    id: Option<i64>,
    username: String,
    display_name: String,
    role: store::Role,
    via: &'static str,
    cots: Vec<CotOut>,
}

pub(crate) async fn me_of(state: &AppState, caller: &Caller) -> Result<Me, ApiError> {
    let cots = state
        .store
        .cots_by_ids(&caller.cots)
        .await?
        .into_iter()
        .map(|c| CotOut {
            id: c.id,
            code: c.code,
            name: c.name,
        })
        .collect();
    Ok(Me {
        id: caller.user_id,
        username: caller.username.clone(),
        display_name: caller.display_name.clone(),
        role: caller.role,
        via: match caller.via {
            Via::Session => "session",
            Via::ApiKey => "api_key",
            Via::Jwt => "identity_provider",
        },
        cots,
    })
}

#[derive(Debug, Serialize)]
struct LoginOut {
    token: String,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    user: Me,
}

async fn login(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<Json<LoginBody>, JsonRejection>,
) -> Result<Json<LoginOut>, ApiError> {
    let Json(body) = body.map_err(rejection)?;
    let source = source(&parts);
    let limiter = &state.auth.limiter;
    let audit = |action: &str, detail: Option<String>| store::NewAudit {
        actor: format!("user:{}", body.username),
        action: action.to_owned(),
        target: format!("user:{}", body.username),
        source: source.clone(),
        detail,
        ..store::NewAudit::default()
    };
    if body.username.len() > 64 || body.password.len() > 1024 {
        return Err(ApiError::InvalidCredentials);
    }
    if let Some(wait) = limiter.blocked(&body.username, source.as_deref()) {
        state
            .store
            .record_audit(&audit("auth.login.throttled", None))
            .await?;
        return Err(ApiError::TooManyAttempts(wait));
    }
    let found = state.store.user_login(&body.username).await?;
    let hash = found
        .as_ref()
        .and_then(|(_, h)| h.clone())
        .unwrap_or_else(|| dummy_hash().to_owned());
    let password = body.password.clone();
    let matches = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    let user = match found {
        Some((user, Some(_)))
            if matches && user.disabled_at.is_none() && user.kind == store::UserKind::Person =>
        {
            user
        }
        other => {
            limiter.failed(&body.username, source.as_deref());
            let why = match other {
                None => "unknown user",
                Some((u, _)) if u.disabled_at.is_some() => "disabled user",
                Some((u, _)) if u.kind == store::UserKind::Service => "service account",
                Some(_) => "wrong password",
            };
            state
                .store
                .record_audit(&audit("auth.login.failed", Some(why.to_owned())))
                .await?;
            return Err(ApiError::InvalidCredentials);
        }
    };
    limiter.succeeded(&body.username);
    let (token, token_hash) = new_token();
    let expires_at = OffsetDateTime::now_utc() + state.auth.session_ttl;
    state
        .store
        .add_api_token(&store::NewApiToken {
            user_id: user.id,
            name: "login",
            kind: store::TokenKind::Session,
            token_hash: &token_hash,
            expires_at: Some(expires_at),
        })
        .await?;
    state.store.record_audit(&audit("auth.login", None)).await?;
    let caller = Caller::of_user(user, Via::Session, source, token_hash);
    Ok(Json(LoginOut {
        token,
        expires_at,
        user: me_of(&state, &caller).await?,
    }))
}

async fn logout(State(state): State<AppState>, caller: Caller) -> Result<StatusCode, ApiError> {
    if let Some(hash) = &caller.token_hash {
        state
            .store
            .revoke_api_token(hash, OffsetDateTime::now_utc())
            .await?;
    }
    state
        .audit(&caller, "auth.logout", format!("user:{}", caller.username))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        serde_json::json!({ "user": me_of(&state, &caller).await? }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse batterY", &hash));
        assert!(!verify_password("x", "not a hash"));
        assert!(hash_password("short").is_err());
    }

    #[test]
    fn limiter_blocks_after_failures_per_user_and_per_address() {
        let l = LoginLimiter::new(Duration::from_secs(60), 3, 5);
        for _ in 0..3 {
            assert_eq!(l.blocked("Anna", Some("10.0.0.1")), None);
            l.failed("anna", Some("10.0.0.1"));
        }
        let wait = l.blocked("ANNA", Some("10.0.0.9")).unwrap();
        assert!((1..=60).contains(&wait));
        // Another user from the same address: two more failures block the address too.
        assert_eq!(l.blocked("bruno", Some("10.0.0.1")), None);
        l.failed("bruno", Some("10.0.0.1"));
        l.failed("bruno", Some("10.0.0.1"));
        assert!(l.blocked("carla", Some("10.0.0.1")).is_some());
        assert_eq!(l.blocked("carla", Some("10.0.0.2")), None);
        l.succeeded("anna");
        assert_eq!(l.blocked("anna", Some("10.0.0.9")), None);
    }
}
