//! The COT-facing side of Sentinella: what staff and integrations reach over HTTP.
//!
//! # Layout
//! - [`app`]: the whole application (REST, FHIR, console, operational endpoints) behind the
//!   access policy and the shared headers; the only module that knows every surface.
//! - [`config`]: the `[api]` table of the configuration file.
//! - [`http`]: the API under `/api/v1` plus `/healthz`, `/readyz`, `/metrics`;
//!   its resources' routes and the shared [`http::AppState`].
//! - [`console`]: the web console for COT staff (static files of our own, compiled in),
//!   served at `/console/`.
//! - [`tls`]: HTTPS for the API when a certificate is configured.
//! - [`ops`]: use cases shared by the REST handlers, the CLI, the simulators and the tests
//!   (provisioning a device and its certificate, API keys, service accounts).
//! - [`fhir`]: the read-only FHIR R4 API under `/fhir/r4` (same tokens, scope and audit).
//! - [`report`]: the telemonitoring report of a patient over a period (PDF in Italian or
//!   English; FHIR DiagnosticReport and DocumentReference through [`fhir`]; scheduled
//!   monthly reports).
//! - [`serve_with`]: the connection loop (limits, timeouts, graceful shutdown).
//!
//! The API depends on the store and on the care-plan schema (`alerting::plan`), never on the
//! device side: it learns the gateway's readiness and metrics only through the closures in
//! [`http::AppState`], which the composition root (`sentinella::Node`) fills in.

pub mod app;
pub mod config;
pub mod console;
pub mod fhir;
pub mod http;
pub mod ops;
pub mod report;
pub mod tls;

pub use app::app;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// What one API listener allows its HTTP connections (`[api]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections served at once (TLS handshakes included). At the cap the listener stops
    /// accepting: further clients wait in the kernel's backlog, holding no descriptor of ours.
    pub max_connections: usize,
    /// How long a client has to send a request's head: from the connection's start, and
    /// again each time a kept-alive connection waits for its next request (so it is also
    /// the idle keep-alive timeout). Past it the connection is closed.
    pub header_read_timeout: Duration,
}

impl Default for ConnLimits {
    /// 1,024 connections (the API's share of the process's descriptors, the device edge
    /// keeps the rest) and 10 seconds for a request head.
    fn default() -> Self {
        ConnLimits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a shutdown waits for in-flight requests (as long as the request timeout).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The server's shutdown, handed to every request: long-lived responses (the alert stream)
/// end when it fires instead of holding the shutdown for [`SHUTDOWN_GRACE`]; the client
/// reconnects, through the load balancer to another node, with `Last-Event-ID`.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown(pub(crate) CancellationToken);

/// Serves the API on `listener` until `cancel`, then finishes in-flight requests (default
/// [`ConnLimits`]).
pub async fn serve(
    listener: TcpListener,
    state: http::AppState,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, None, state, ConnLimits::default(), cancel).await
}

/// [`serve`] over TLS.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: http::AppState,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    serve_with(
        listener,
        Some(acceptor),
        state,
        ConnLimits::default(),
        cancel,
    )
    .await
}

/// Serves the API on `listener` (over TLS with `tls`) within `limits` until `cancel`. Each
/// connection runs in its own task (its TLS handshake too, under a timeout), so a silent
/// client holds up nobody; at `max_connections` the accept loop waits for one to end.
pub async fn serve_with(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: http::AppState,
    limits: ConnLimits,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app = app::app(state);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            () = cancel.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // E.g. out of descriptors: wait a little rather than spin.
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let shutdown = Shutdown(cancel.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(tcp, peer, app, limits, watcher, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, app, limits, watcher, shutdown).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "API TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "API TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    // Idle connections close now; in-flight requests finish, within the grace period.
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("API connections still open after the shutdown grace period");
        }
    }
    Ok(())
}

/// One HTTP/1.1 connection: the router with the peer's address, the head timeout, and the
/// graceful-shutdown watch.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    app: axum::Router,
    limits: ConnLimits,
    watcher: Watcher,
    shutdown: Shutdown,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = app.map_request(move |mut req: axum::http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(shutdown.clone());
        req
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "API connection closed");
    }
}
