//! The HTTP API: state, router assembly and the layers every route shares.
//!
//! Each resource owns a module with its routes, handlers and response types; this module only
//! merges them. [`policy`] names who may call each route (checked before any handler runs);
//! everything under `/api/v1` but the login needs a bearer token ([`auth::Caller`]); the
//! operational endpoints `/healthz`, `/readyz` and `/metrics` expose no patient data and are
//! open, so probes and scrapers need no secret.

pub mod auth;
pub mod error;
pub mod oidc;
pub mod openapi;
pub mod policy;
pub mod session;

mod admin;
mod alert_stream;
mod alerts;
mod careplans;
mod contacts;
mod devices;
mod health;
mod json_numbers;
pub(crate) mod patients;
mod quarantine;
mod reports;

use std::sync::Arc;

use axum::Router;

/// The largest request body accepted (413 beyond): a whole care plan is a few KiB.
pub const MAX_BODY: usize = 256 * 1024;

/// A probe the API asks to tell readiness beyond the store (e.g. the gateway's pipeline).
pub type ReadyProbe = Arc<dyn Fn() -> bool + Send + Sync>;
/// Renders extra Prometheus text (e.g. the gateway's counters).
pub type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: store::Store,
    /// Extra readiness condition; the API is ready when the store answers and this is true.
    pub ready: ReadyProbe,
    /// Extra metrics text appended to `/metrics`.
    pub metrics: MetricsSource,
    /// Sessions, login throttling, the identity provider.
    pub auth: Arc<AuthState>,
    /// The device CA, when this process holds it: devices provisioned through the API then
    /// get their client certificate in the answer.
    pub device_ca: Option<Arc<pki::DeviceCa>>,
}

/// How callers authenticate.
#[derive(Debug)]
pub struct AuthState {
    /// How long a login session lasts.
    pub session_ttl: time::Duration,
    /// Failed-login throttling.
    pub limiter: session::LoginLimiter,
    /// The bounded Argon2id pool (logins, passwords set through the API).
    pub hasher: session::Hasher,
    /// Reverse proxies whose `X-Forwarded-For` names the client (exact addresses); from any
    /// other peer the header is ignored.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// JWTs from the regional identity provider, when configured.
    pub oidc: Option<oidc::Oidc>,
    /// Whether the API is served over TLS (adds Strict-Transport-Security).
    pub tls: bool,
}

impl Default for AuthState {
    /// 8-hour sessions (a shift), default throttling and hashing pool, no trusted proxy, no
    /// identity provider, plain HTTP.
    fn default() -> Self {
        AuthState {
            session_ttl: time::Duration::hours(8),
            limiter: session::LoginLimiter::default(),
            hasher: session::Hasher::default(),
            trusted_proxies: Vec::new(),
            oidc: None,
            tls: false,
        }
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State with no extra readiness condition or metrics (the API alone).
    pub fn new(store: store::Store) -> Self {
        AppState {
            store,
            ready: Arc::new(|| true),
            metrics: Arc::new(String::new),
            auth: Arc::new(AuthState::default()),
            device_ca: None,
        }
    }

    /// Records an access in the audit log. A read that cannot be audited is not served.
    pub(crate) async fn audit(
        &self,
        caller: &auth::Caller,
        action: &str,
        target: String,
    ) -> Result<(), error::ApiError> {
        self.audit_detail(caller, action, target, None).await
    }

    /// [`AppState::audit`] with a detail (JSON text), e.g. what a change asked for.
    pub(crate) async fn audit_detail(
        &self,
        caller: &auth::Caller,
        action: &str,
        target: String,
        detail: Option<String>,
    ) -> Result<(), error::ApiError> {
        self.audit_about(caller, action, target, None, None, detail)
            .await
    }

    /// An access to one patient's data: it appears in that patient's access history and to
    /// the administrators of the patient's COT.
    pub(crate) async fn audit_patient(
        &self,
        caller: &auth::Caller,
        action: &str,
        target: String,
        patient: &store::Patient,
        detail: Option<String>,
    ) -> Result<(), error::ApiError> {
        self.audit_about(
            caller,
            action,
            target,
            Some(patient.id),
            Some(patient.cot_id),
            detail,
        )
        .await
    }

    /// The general form: the entry names the patient and COT it concerns, when it does.
    pub(crate) async fn audit_about(
        &self,
        caller: &auth::Caller,
        action: &str,
        target: String,
        patient_id: Option<i64>,
        cot_id: Option<i64>,
        detail: Option<String>,
    ) -> Result<(), error::ApiError> {
        // An entry about no COT in particular concerns the caller's COTs: their
        // administrators see it, the administrators of other COTs do not.
        let cot_ids = if cot_id.is_none() {
            caller.cots.clone()
        } else {
            Vec::new()
        };
        self.audit_full(caller, action, target, patient_id, cot_id, cot_ids, detail)
            .await
    }

    /// An entry about a user: it is shown to the administrators of the user's COTs (and only
    /// to them), not to every administrator.
    pub(crate) async fn audit_user(
        &self,
        caller: &auth::Caller,
        action: &str,
        user: &store::User,
        detail: Option<String>,
    ) -> Result<(), error::ApiError> {
        self.audit_full(
            caller,
            action,
            format!("user:{}", user.username),
            None,
            None,
            user.cot_ids.clone(),
            detail,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn audit_full(
        &self,
        caller: &auth::Caller,
        action: &str,
        target: String,
        patient_id: Option<i64>,
        cot_id: Option<i64>,
        cot_ids: Vec<i64>,
        detail: Option<String>,
    ) -> Result<(), error::ApiError> {
        self.store
            .record_audit(&store::NewAudit {
                actor: caller.actor(),
                action: action.to_owned(),
                target,
                source: caller.source.clone(),
                detail,
                patient_id,
                cot_id,
                cot_ids,
            })
            .await?;
        Ok(())
    }
}

/// The REST API's routes under `/api/v1` (nested by [`crate::app`]) and the operational
/// endpoints at the root.
pub(crate) fn routes() -> (Router<AppState>, Router<AppState>) {
    let api = Router::new()
        .merge(session::router())
        .merge(admin::router())
        .merge(patients::router())
        .merge(devices::router())
        .merge(quarantine::router())
        .merge(alerts::router())
        .merge(alert_stream::router())
        .merge(careplans::router())
        .merge(contacts::router())
        .merge(reports::router())
        .route("/openapi.json", axum::routing::get(openapi::serve))
        .layer(axum::middleware::from_fn(json_numbers::normalize));
    (api, health::router())
}
