//! Login, logout and "who am I".
//!
//! - `POST /api/v1/auth/login` `{"username","password"}` → `{"token","expires_at","user"}`;
//!   wrong username or password → 401 `invalid_credentials` (one answer for both, and an
//!   unknown user costs the same Argon2id verification as a known one); after repeated
//!   failures per (username, client address) or per client address → 429
//!   `too_many_attempts` with `Retry-After` ([`LoginLimiter`]); when the bounded Argon2id
//!   pool is full → 503 `busy` ([`Hasher`]). Logins and failed logins are audited one row
//!   each (failures are bounded by the limiter); refusals one row per (username, address)
//!   and window, with the count of the previous window (`auth.login.throttled`).
//! - `POST /api/v1/auth/logout` revokes the token used (a session or API key; an
//!   identity-provider JWT is refused from then until it expires) → 204.
//! - `GET /api/v1/auth/me` → the caller with their role and COTs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use super::AppState;
use super::auth::{Caller, Via, client_address, new_token};
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

/// Whether `password` matches the PHC string `hash`. The Argon2 memory (19 MiB) is the
/// thread's own, allocated once and reused: with a fresh allocation per verification the
/// allocator kept freed blocks (glibc raises its mmap threshold past them), and the
/// process's memory grew with every login even with the pool bounded.
fn verify_password(password: &str, hash: &str) -> bool {
    thread_local! {
        static BLOCKS: std::cell::RefCell<Vec<argon2::Block>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(params) = argon2::Params::try_from(&parsed) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(argon2::Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let mut salt_buf = [0u8; argon2::password_hash::Salt::MAX_LENGTH];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    // Our hashes use 19 MiB; a stored hash asking for more than 64 MiB is not ours.
    if params.block_count() > 64 * 1024 {
        return false;
    }
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params.clone());
    let computed = BLOCKS.with(|blocks| {
        let Ok(mut blocks) = blocks.try_borrow_mut() else {
            return false;
        };
        if blocks.len() < params.block_count() {
            blocks.resize(params.block_count(), argon2::Block::default());
        }
        argon
            .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut blocks[..])
            .is_ok()
    });
    // `Output`'s equality is constant-time.
    computed && argon2::password_hash::Output::new(&out).is_ok_and(|computed| computed == expected)
}

/// A hash to verify against when the user does not exist, so that answer takes as long.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| phc(b"no such user, no such password").unwrap_or_default())
}

/// The API's Argon2id work, bounded: at most `permits` hashes at a time, on as many threads of
/// its own (each hash holds 19 MiB for tens of milliseconds; on threads of their own the
/// allocator keeps at most that many such blocks, where tokio's blocking pool would keep one
/// per thread it ever used), and a caller that cannot get a permit within `wait` is refused
/// with 503 and `Retry-After` instead of queueing without end. Unauthenticated logins reach
/// this, so it is what keeps a flood of them from taking the process's memory and cores.
#[derive(Debug)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    workers: usize,
    wait: Duration,
    performed: AtomicU64,
    queue: Mutex<Option<mpsc::Sender<Job>>>,
}

type Job = Box<dyn FnOnce() + Send>;

impl Default for Hasher {
    /// Two hashes at a time (about 40 MiB), callers wait at most two seconds.
    fn default() -> Self {
        Hasher::new(2, Duration::from_secs(2))
    }
}

impl Hasher {
    /// At most `permits` (at least one) hashes at once; a caller waits at most `wait`. The
    /// threads start with the first hash and end when the hasher is dropped.
    pub fn new(permits: usize, wait: Duration) -> Self {
        Hasher {
            permits: Arc::new(Semaphore::new(permits.max(1))),
            workers: permits.max(1),
            wait,
            performed: AtomicU64::new(0),
            queue: Mutex::new(None),
        }
    }

    /// How many Argon2id computations (hashes and verifications) this hasher ran.
    pub fn performed(&self) -> u64 {
        self.performed.load(Ordering::Relaxed)
    }

    /// The queue of the hashing threads, started on first use.
    fn queue(&self) -> Option<mpsc::Sender<Job>> {
        let mut queue = self.queue.lock().ok()?;
        if let Some(q) = queue.as_ref() {
            return Some(q.clone());
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..self.workers {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password-hashing thread");
                if i == 0 {
                    return None;
                }
            }
        }
        *queue = Some(tx.clone());
        Some(tx)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| ApiError::Busy)?
            .map_err(|_| ApiError::Busy)?;
        let queue = self.queue().ok_or(ApiError::Busy)?;
        self.performed.fetch_add(1, Ordering::Relaxed);
        // The permit goes with the work: a client that hangs up mid-login drops this future,
        // not the hash, which keeps its permit until it is done.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let result = work();
            drop(permit);
            let _ = tx.send(result);
        });
        queue.send(job).map_err(|_| ApiError::Busy)?;
        rx.await.map_err(|_| ApiError::Busy)
    }

    /// [`hash_password`] within the bound.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        // Too short a password is refused before it costs a permit.
        if password.chars().count() < MIN_PASSWORD {
            return hash_password(&password);
        }
        self.run(move || hash_password(&password)).await?
    }

    /// Whether `password` matches the PHC string `hash`, within the bound.
    async fn verify(&self, password: String, hash: String) -> Result<bool, ApiError> {
        self.run(move || verify_password(&password, &hash)).await
    }
}

/// Failed-login throttling: at most `per_user_source` failed attempts per (username, client
/// address) and `per_source` per client address within `window` (429 with `Retry-After`
/// beyond). The counts live in the store (`store::Store::admit_login`), so every node of a
/// cluster on one database counts the same attempts: failures on one node throttle logins on
/// the others, and a restart forgets nothing.
///
/// An attempt is counted when it is admitted, before its password is hashed, so parallel
/// guesses cannot all pass the check before the first one is counted (the store counts the
/// attempts of one key one after the other, across nodes); a successful login takes its own
/// attempt back. There is no lockout per username alone: failures from one address never
/// stop the user logging in from another (a stranger cannot lock anyone out), and behind a
/// trusted proxy the address is the client's (see [`super::auth::client_address`]).
#[derive(Debug)]
pub struct LoginLimiter {
    limits: store::LoginLimits,
    refused: AtomicU64,
}

/// An admitted login attempt, counted already; [`LoginLimiter::succeeded`] takes it back.
pub type Attempt = store::LoginAttempt;

/// A refused login attempt: `retry_after` seconds; `audit` when it opens a new audit window
/// for its (username, address), with `unlogged_before` refusals of the previous window that
/// had no audit row of their own.
pub type Throttled = store::LoginRefusal;

impl Default for LoginLimiter {
    /// 5 failures per (username, address) and 20 per address in 15 minutes.
    fn default() -> Self {
        LoginLimiter::new(Duration::from_secs(15 * 60), 5, 20)
    }
}

impl LoginLimiter {
    /// At most `per_user_source` failed attempts per (username, address) and `per_source`
    /// per address within `window`.
    pub fn new(window: Duration, per_user_source: usize, per_source: usize) -> Self {
        LoginLimiter {
            limits: store::LoginLimits {
                window: time::Duration::try_from(window).unwrap_or(time::Duration::MAX),
                per_pair: per_user_source.max(1) as u64,
                per_source: per_source.max(1) as u64,
            },
            refused: AtomicU64::new(0),
        }
    }

    /// How many attempts this process refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The (username, address) key; an unknown address is its own key, never one shared
    /// with other clients.
    fn pair_key(username: &str, source: Option<&str>) -> String {
        format!("{}\n{}", username.to_lowercase(), source.unwrap_or("?"))
    }

    /// Admits and counts an attempt (`Ok(Ok(_))`), or refuses it (`Ok(Err(_))`) when its
    /// (username, address) or its address is over the limit.
    pub async fn admit(
        &self,
        store: &store::Store,
        username: &str,
        source: Option<&str>,
    ) -> Result<Result<Attempt, Throttled>, ApiError> {
        let pair = Self::pair_key(username, source);
        let source_key = source.map(|s| format!("ip:{s}"));
        let admitted = store
            .admit_login(
                &pair,
                source_key.as_deref(),
                self.limits,
                OffsetDateTime::now_utc(),
            )
            .await?;
        if admitted.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        Ok(admitted)
    }

    /// A successful login: clears its (username, address) failures and takes its own
    /// attempt back from the address's count (the address's other failures stay).
    pub async fn succeeded(&self, store: &store::Store, attempt: Attempt) -> Result<(), ApiError> {
        Ok(store.login_succeeded(&attempt).await?)
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
    let source = client_address(&parts, &state.auth.trusted_proxies);
    let limiter = &state.auth.limiter;
    // Usernames are at most 64 characters of a small alphabet: a longer one is no user, and
    // is not echoed into the audit log.
    if body.username.len() > 64 || body.password.len() > 1024 {
        return Err(ApiError::InvalidCredentials);
    }
    let audit = |action: &str, detail: Option<String>, cot_ids: Vec<i64>| store::NewAudit {
        actor: format!("user:{}", body.username),
        action: action.to_owned(),
        target: format!("user:{}", body.username),
        source: source.clone(),
        detail,
        cot_ids,
        ..store::NewAudit::default()
    };
    // Counted before any work: parallel guesses cannot all pass the check first.
    let attempt = match limiter
        .admit(&state.store, &body.username, source.as_deref())
        .await?
    {
        Ok(attempt) => attempt,
        Err(throttled) => {
            if throttled.audit {
                let detail = serde_json::json!({
                    "refused_in_previous_window_unlogged": throttled.unlogged_before,
                    "note": "further refusals of this username and address in this window are counted, not logged",
                });
                let cots = state
                    .store
                    .user_by_username(&body.username)
                    .await?
                    .map(|u| u.cot_ids)
                    .unwrap_or_default();
                state
                    .store
                    .record_audit(&audit(
                        "auth.login.throttled",
                        Some(detail.to_string()),
                        cots,
                    ))
                    .await?;
            }
            return Err(ApiError::TooManyAttempts(throttled.retry_after));
        }
    };
    let found = state.store.user_login(&body.username).await?;
    let hash = found
        .as_ref()
        .and_then(|(_, h)| h.clone())
        .unwrap_or_else(|| dummy_hash().to_owned());
    let matches = state
        .auth
        .hasher
        .verify(body.password.clone(), hash)
        .await?;
    let user = match found {
        Some((user, Some(_)))
            if matches && user.disabled_at.is_none() && user.kind == store::UserKind::Person =>
        {
            user
        }
        other => {
            // The attempt stays counted.
            let (why, cots) = match other {
                None => ("unknown user", Vec::new()),
                Some((u, _)) if u.disabled_at.is_some() => ("disabled user", u.cot_ids),
                Some((u, _)) if u.kind == store::UserKind::Service => {
                    ("service account", u.cot_ids)
                }
                Some((u, _)) => ("wrong password", u.cot_ids),
            };
            state
                .store
                .record_audit(&audit("auth.login.failed", Some(why.to_owned()), cots))
                .await?;
            return Err(ApiError::InvalidCredentials);
        }
    };
    limiter.succeeded(&state.store, attempt).await?;
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
    state
        .store
        .record_audit(&audit("auth.login", None, user.cot_ids.clone()))
        .await?;
    let caller = Caller::of_user(user, Via::Session, source, token_hash);
    Ok(Json(LoginOut {
        token,
        expires_at,
        user: me_of(&state, &caller).await?,
    }))
}

async fn logout(State(state): State<AppState>, caller: Caller) -> Result<StatusCode, ApiError> {
    let now = OffsetDateTime::now_utc();
    match (&caller.token_hash, caller.via, caller.jwt_expires_at) {
        (Some(hash), Via::Jwt, Some(expires_at)) => {
            state.store.revoke_jwt(hash, expires_at).await?;
        }
        (Some(hash), Via::Session | Via::ApiKey, _) => {
            state.store.revoke_api_token(hash, now).await?;
        }
        // Every token has a hash and every accepted JWT an expiry: nothing is left valid
        // behind a 204.
        _ => return Err(ApiError::BadRequest("this token cannot be revoked".into())),
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

    #[tokio::test]
    async fn limiter_counts_per_user_and_address_and_per_address() {
        let db = store::testing::TestDb::sqlite().await;
        let st = &db.store;
        let l = &LoginLimiter::new(Duration::from_secs(60), 3, 5);
        let admit = |user: &'static str, ip: &'static str| async move {
            l.admit(st, user, Some(ip)).await.expect("store")
        };
        for _ in 0..3 {
            assert!(admit("Anna", "10.0.0.1").await.is_ok());
        }
        let refused = admit("ANNA", "10.0.0.1").await.unwrap_err();
        assert!((1..=60).contains(&refused.retry_after));
        assert!(refused.audit, "the first refusal of a window is audited");
        assert!(!admit("anna", "10.0.0.1").await.unwrap_err().audit);
        // Anna from elsewhere is not locked out.
        let ok = admit("anna", "10.0.0.9").await.unwrap();
        l.succeeded(st, ok).await.unwrap();
        // Another user from the same address: two more failures block the address too.
        assert!(admit("bruno", "10.0.0.1").await.is_ok());
        assert!(admit("bruno", "10.0.0.1").await.is_ok());
        assert!(admit("carla", "10.0.0.1").await.is_err());
        assert!(admit("carla", "10.0.0.2").await.is_ok());
        assert_eq!(l.refused(), 3);
    }

    #[tokio::test]
    async fn a_successful_login_takes_its_attempt_back() {
        let db = store::testing::TestDb::sqlite().await;
        let l = LoginLimiter::new(Duration::from_secs(60), 2, 2);
        for _ in 0..10 {
            let a = l
                .admit(&db.store, "anna", Some("10.0.0.1"))
                .await
                .unwrap()
                .unwrap();
            l.succeeded(&db.store, a).await.unwrap();
        }
        assert!(
            l.admit(&db.store, "bruno", Some("10.0.0.1"))
                .await
                .unwrap()
                .is_ok()
        );
    }
}
