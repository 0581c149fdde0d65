//! The COT-facing side of Sentinella and the `sentinella` binary that composes everything.
//!
//! # Layout
//! - [`config`]: the typed configuration file.
//! - [`http`]: the API under `/api/v1` plus `/healthz`, `/readyz`, `/metrics`;
//!   [`http::app`] builds the router from an [`http::AppState`].
//! - [`console`]: the web console for COT staff (static files of our own, compiled in),
//!   served at `/console/`.
//! - [`tls`]: HTTPS for the API when a certificate is configured.
//! - [`fhir`]: the read-only FHIR R4 API under `/fhir/r4` (same tokens, scope and audit).
//! - `main.rs`: the `sentinella` binary: `run` (gateway + API in one process), `migrate`,
//!   and the provisioning commands.
//!
//! The API and the gateway never call each other: they meet in the store. Only `main.rs`
//! wires a gateway's readiness and metrics into the API's state.

pub mod config;
pub mod console;
pub mod fhir;
pub mod http;
pub mod tls;

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves the API on `listener` until `cancel`, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: http::AppState,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app = http::app(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

/// [`serve`] over TLS.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: http::AppState,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let app = http::app(state).into_make_service_with_connect_info::<SocketAddr>();
    let listener = tls::TlsListener::new(listener, acceptor, cancel.clone()).tap_io(|_| {});
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}
