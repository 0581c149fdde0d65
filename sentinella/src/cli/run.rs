//! `sentinella run`: a node until SIGTERM or Ctrl-C.

use clap::Args;
use store::Store;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::node::{Node, NodeTls};

#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// Also provision and run this many simulated patients with their home devices (needs a
    /// binary built with the `demo` feature).
    #[arg(long, value_name = "PATIENTS")]
    pub demo: Option<usize>,
    /// Days of history the demo patients first catch up on (readings dated in the past,
    /// sent in about a minute), before measuring in real time.
    #[arg(long, default_value_t = 14)]
    #[cfg_attr(not(feature = "demo"), allow(dead_code))]
    pub demo_days: u32,
}

/// Runs a node until SIGTERM or Ctrl-C, then shuts it down in order: the demo devices (if
/// any), the API, the gateway (flushing and acking what is in flight), the engine, the store.
#[cfg_attr(not(feature = "demo"), allow(unused_variables))]
pub async fn run(config: Config, store: Store, args: RunArgs) -> anyhow::Result<()> {
    let tls = NodeTls::from_config(&config)?;
    #[cfg(feature = "demo")]
    let ca = tls.ca.clone();
    let cancel = CancellationToken::new();
    let node = Node::start(
        &config,
        store.clone(),
        tls,
        alerting::system_clock(),
        cancel.clone(),
    )
    .await?;
    let scheme = if node.api_https { "https" } else { "http" };
    tracing::info!(api_addr = %node.api_addr, api_scheme = scheme, edge_tls = %node.tls_addr, edge_plain = %node.edge_addr, "sentinella running");
    crate::notify::ready();

    // The demo devices stop first, so the gateway does not log them being cut off.
    let demo_cancel = CancellationToken::new();
    #[cfg(feature = "demo")]
    let demo = match (args.demo, ca) {
        (Some(patients), Some(ca)) => Some(crate::demo::spawn(
            &node,
            store.clone(),
            &config,
            patients,
            args.demo_days,
            ca,
            demo_cancel.clone(),
        )),
        _ => None,
    };
    #[cfg(not(feature = "demo"))]
    let demo: Option<tokio::task::JoinHandle<()>> = None;

    shutdown_signal().await;
    tracing::info!("shutting down: flushing in-flight batches and acks");
    crate::notify::stopping();
    demo_cancel.cancel();
    if let Some(demo) = demo {
        let _ = demo.await;
    }
    cancel.cancel();
    node.join().await?;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
