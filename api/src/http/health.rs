//! `/healthz` (the process is up), `/readyz` (the store answers and the pipeline can commit),
//! `/metrics` (Prometheus text).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let store_ok = state.store.health_check().await.is_ok();
    let pipeline_ok = (state.ready)();
    let status = if store_ok && pipeline_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": store_ok && pipeline_ok, "store": store_ok, "pipeline": pipeline_ok})),
    )
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = (state.metrics)();
    let auth = &state.auth;
    text.push_str(&format!(
        "# HELP sentinella_api_password_hashes_total Argon2id hashes and verifications run by the API.\n\
         # TYPE sentinella_api_password_hashes_total counter\n\
         sentinella_api_password_hashes_total {}\n\
         # HELP sentinella_api_logins_refused_total Login attempts refused by the throttling (429).\n\
         # TYPE sentinella_api_logins_refused_total counter\n\
         sentinella_api_logins_refused_total {}\n",
        auth.hasher.performed(),
        auth.limiter.refused(),
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
