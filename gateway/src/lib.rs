//! The device side of Sentinella: the edge devices connect to, the embedded broker, and the
//! ingest pipeline that stores readings and acknowledges them end to end.
//!
//! # Layout
//! - [`config`]: [`GatewayConfig`], the `[gateway]` table of the config file.
//! - `edge`: accepts device connections (TLS with client certificates, and plain TCP with
//!   passwords on loopback), authenticates them against the registry and keeps each device
//!   inside its own topics before forwarding to the broker.
//! - [`tls`]: the TLS listener's rustls configuration ([`EdgeTls`]) and per-IP limits.
//! - [`descriptors`]: the process's descriptor budget, which sets the edge's connection limit.
//! - `broker`: rumqttd's router in-process, the links the edge opens to it (one per device
//!   connection), the ingest link (watched by a heartbeat, rebuilt when it dies) and the threads
//!   bridging it to tokio.
//! - `registry`: a short-lived cache of the devices table.
//! - `ingest`: decode → batch → commit → ack.
//! - [`telemetry`]: counters every stage bumps, rendered for Prometheus.
//!
//! Start at [`start`]: it wires the stages together in the order the data flows.

pub mod config;
pub mod descriptors;
pub mod telemetry;
pub mod tls;

mod broker;
mod edge;
mod ingest;
mod proxy;
mod registry;
mod repeats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use store::Store;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use broker::{INGEST_LINK_ID, INTERNAL_CLIENT_IDS};
pub use config::GatewayConfig;
pub use descriptors::DescriptorBudget;
pub use repeats::RepeatRequest;
pub use telemetry::Metrics;
pub use tls::EdgeTls;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The embedded broker could not be set up.
    #[error("embedded broker: {0}")]
    Broker(String),
    /// The edge could not bind its listener.
    #[error("edge listener on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration is unsafe or inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// The TLS listener's certificates or keys are unusable.
    #[error("edge TLS: {0}")]
    Tls(String),
    /// The store failed its start-up health check.
    #[error("store health check: {0}")]
    Store(#[from] store::StoreError),
}

/// How long device connections stay open after the last ack was handed to the broker.
const ACK_DELIVERY_GRACE: Duration = Duration::from_millis(300);

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// Where devices connect over plain TCP (the bound address, useful with port 0).
    pub edge_addr: SocketAddr,
    /// Where devices connect over mutual TLS, when the TLS listener runs.
    pub tls_addr: Option<SocketAddr>,
    /// Counters of every stage.
    pub metrics: Arc<Metrics>,
    /// Where to send repeat requests for devices (delivered in their retained `config`).
    pub repeats: mpsc::UnboundedSender<RepeatRequest>,
    /// Most device connections the edge holds at once, over both listeners.
    pub max_connections: usize,
    /// The descriptor budget `max_connections` was checked against.
    pub descriptor_budget: DescriptorBudget,
    tracker: TaskTracker,
}

impl Gateway {
    /// Waits until every task has stopped after the shutdown token fired: the edge has closed
    /// its connections, the batcher has flushed and the writer has committed and acked.
    pub async fn join(self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// How far back the revocation poll looks at `revoked_at`. It tolerates that much clock
/// difference between the host that revokes (`sentinella device revoke`) and the gateway.
const REVOCATION_LOOKBACK: time::Duration = time::Duration::minutes(10);

/// Starts the gateway: checks the store, starts the broker with its ingest link subscribed,
/// then the pipeline, and only then the edge listeners (plain, and TLS on
/// `config.tls_listen` when `tls` is given), so no device publish can arrive before something
/// is listening for it. Everything stops when `cancel` fires.
///
/// Each committed batch is offered to `committed` when given (the alert engine, wired by the
/// composition root), never waiting for it: the batch's outbox entry keeps it until evaluated,
/// and a consumer that lags catches up from there (`store::handoff`). The gateway knows
/// nothing of what consumes it.
pub async fn start(
    config: GatewayConfig,
    store: Store,
    tls: Option<EdgeTls>,
    committed: Option<Arc<store::Handoff>>,
    cancel: CancellationToken,
) -> Result<Gateway, GatewayError> {
    if !config.listen.ip().is_loopback() && !config.allow_plain_on_non_loopback {
        return Err(GatewayError::Config(format!(
            "the plain (password, no TLS) device listener may bind only a loopback address, \
             not {}: device secrets and readings would cross the network in clear. Devices \
             should use the TLS listener (tls_listen); set allow_plain_on_non_loopback = true \
             only on a trusted network",
            config.listen
        )));
    }
    let per_ip_exempt = config
        .per_ip_exempt
        .iter()
        .map(|net| tls::IpNet::parse(net))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| GatewayError::Config(format!("[gateway] per_ip_exempt: {e}")))?;
    let proxy = if config.proxy_protocol {
        let trusted = config
            .proxy_trusted
            .iter()
            .map(|net| tls::IpNet::parse(net))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| GatewayError::Config(format!("[gateway] proxy_trusted: {e}")))?;
        if trusted.is_empty() {
            return Err(GatewayError::Config(
                "[gateway] proxy_protocol = true needs proxy_trusted: the load balancers' \
                 networks (a PROXY header from anyone else is never believed)"
                    .into(),
            ));
        }
        Some(Arc::new(proxy::ProxyProtocol {
            trusted,
            header_timeout: config.proxy_header_timeout,
        }))
    } else {
        None
    };
    let descriptor_budget =
        DescriptorBudget::of_process(config.api_descriptors, store.max_descriptors());
    let max_connections = descriptor_budget
        .resolve(config.max_connections)
        .map_err(GatewayError::Config)?;
    let server_config = tls.as_ref().map(tls::server_config).transpose()?;
    store.health_check().await?;
    let metrics = Arc::new(Metrics::default());
    metrics.store_ok.store(true, Ordering::Relaxed);
    metrics
        .edge_max_connections
        .store(max_connections as u64, Ordering::Relaxed);
    metrics
        .process_open_files_limit
        .store(descriptor_budget.limit, Ordering::Relaxed);
    tracing::info!(
        max_connections,
        open_files = descriptor_budget.limit,
        api = descriptor_budget.api,
        store = descriptor_budget.store,
        "edge connection limit from the descriptor budget"
    );
    let tracker = TaskTracker::new();

    let (inbound_tx, inbound_rx) = mpsc::channel(config.queue_capacity);
    let broker = broker::start(
        &config,
        max_connections,
        inbound_tx.clone(),
        metrics.clone(),
        broker::LinkWatch::default(),
        cancel.clone(),
    )?;
    let registry = Arc::new(registry::Registry::new(store.clone(), config.registry_ttl));

    let lanes = match store.backend() {
        store::Backend::Sqlite => 1,
        store::Backend::Postgres => config.writers.max(1),
    };
    let (batch_tx, batch_rx): (Vec<_>, Vec<_>) = (0..lanes).map(|_| mpsc::channel(2)).unzip();
    let batcher = ingest::batch::Batcher {
        registry: registry.clone(),
        metrics: metrics.clone(),
        max_rows: config.batch_max_rows,
        max_delay: config.batch_max_delay,
    };
    tracker.spawn(batcher.run(inbound_rx, batch_tx, cancel.clone()));
    // Repeat requests go through the store, which wakes the node holding the device (this one
    // or another on the same database); the device's live connections say which.
    let live = Arc::new(edge::LiveConnections::default());
    let repeats = Arc::new(repeats::Repeats::new(store.clone()));
    let (repeat_tx, repeat_rx) = mpsc::unbounded_channel();
    let is_live: repeats::IsLive = {
        let live = live.clone();
        Arc::new(move |device: &str| live.has(device))
    };
    tracker.spawn(repeats.clone().run(
        repeat_rx,
        store.device_wakeups(),
        is_live,
        broker.outbound.clone(),
        cancel.clone(),
    ));
    let writer = ingest::writer::Writer {
        store: store.clone(),
        outbound: broker.outbound.clone(),
        metrics: metrics.clone(),
        engine: committed,
    };
    // Device connections close only after the writer has committed and acked what was in
    // flight at shutdown, plus a moment for the broker to deliver those acks.
    let close = CancellationToken::new();
    tracker.spawn({
        let close = close.clone();
        let cancel = cancel.clone();
        async move {
            writer.run(batch_rx, cancel).await;
            tokio::time::sleep(ACK_DELIVERY_GRACE).await;
            close.cancel();
        }
    });
    tracker.spawn(maintenance(store.clone(), metrics.clone(), cancel.clone()));

    let (listener, edge_addr) = bind(config.listen).await?;
    let tls_listener = match server_config {
        Some(server_config) => {
            let (listener, addr) = bind(config.tls_listen).await?;
            let transport = edge::Transport::Tls {
                acceptor: tokio_rustls::TlsAcceptor::from(server_config),
                limits: tls::IpLimits::new(
                    config.max_connections_per_ip,
                    config.max_new_connections_per_ip_per_sec,
                    per_ip_exempt,
                ),
            };
            Some((listener, addr, transport))
        }
        None => None,
    };
    tracker.spawn(revocations(
        store.clone(),
        registry.clone(),
        live.clone(),
        metrics.clone(),
        config.revocation_poll,
        cancel.clone(),
    ));
    let ctx_proxy = proxy.is_some();
    let ctx = Arc::new(edge::EdgeContext {
        config,
        broker: broker.clone(),
        registry,
        inbound: inbound_tx,
        metrics: metrics.clone(),
        close,
        live,
        repeats,
        slots: Arc::new(tokio::sync::Semaphore::new(max_connections)),
        proxy,
    });
    let tls_addr = tls_listener.as_ref().map(|(_, addr, _)| *addr);
    if let Some((listener, _, transport)) = tls_listener {
        tracker.spawn(edge::serve(
            listener,
            transport,
            ctx.clone(),
            cancel.clone(),
            tracker.clone(),
        ));
    }
    tracker.spawn(edge::serve(
        listener,
        edge::Transport::Plain,
        ctx,
        cancel.clone(),
        tracker.clone(),
    ));
    tracing::info!(plain = %edge_addr, tls = ?tls_addr, proxy_protocol = ctx_proxy, "gateway listening for devices");
    Ok(Gateway {
        edge_addr,
        tls_addr,
        metrics,
        repeats: repeat_tx,
        max_connections,
        descriptor_budget,
        tracker,
    })
}

/// Accept backlog of the device listeners: after a regional outage thousands of devices
/// reconnect at once, and tokio's default (1024) overflows; the kernel caps it at somaxconn.
const LISTEN_BACKLOG: u32 = 8192;

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), GatewayError> {
    let err = |source| GatewayError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    let listener = socket.listen(LISTEN_BACKLOG).map_err(err)?;
    let bound = listener
        .local_addr()
        .map_err(|source| GatewayError::Bind { addr, source })?;
    Ok((listener, bound))
}

/// Polls the store for revoked (or re-certified) devices every `every`: forgets their cached
/// registry entries (so a reconnect, or a superseded certificate, is refused at once, not after
/// the cache TTL), closes the live connections of revoked ones, and of a re-certified one closes
/// those made with a certificate other than the one now recorded. Latency from `sentinella
/// device revoke` or `sentinella device cert` to the close: at most `every` plus one query (two
/// for a re-certified device with live connections).
async fn revocations(
    store: Store,
    registry: Arc<registry::Registry>,
    live: Arc<edge::LiveConnections>,
    metrics: Arc<Metrics>,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let since = time::OffsetDateTime::now_utc() - REVOCATION_LOOKBACK;
        match store.device_auth_changes_since(since).await {
            Ok(changes) => {
                for (id, revoked) in changes {
                    registry.invalidate(&id);
                    if revoked {
                        let closed = live.close_device(&id);
                        if closed > 0 {
                            Metrics::add(&metrics.edge_revoked_closed_total, closed as u64);
                            tracing::info!(device = %id, connections = closed, "device revoked: closing its connections");
                        }
                        continue;
                    }
                    if !live.has(&id) {
                        continue;
                    }
                    // Re-certified: only the certificate the store now records may stay.
                    let current = match registry.lookup(&id).await {
                        Ok(Some(entry)) => entry.cert_sha256,
                        Ok(None) => None,
                        Err(e) => {
                            tracing::warn!(error = %e, "revocation poll: device lookup failed; will retry");
                            continue;
                        }
                    };
                    let closed = live.close_superseded(&id, current.as_deref());
                    if closed > 0 {
                        Metrics::add(&metrics.edge_revoked_closed_total, closed as u64);
                        tracing::info!(device = %id, connections = closed, "device certificate superseded: closing the connections made with the old one");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "revocation poll failed; will retry"),
        }
    }
}

/// Periodic store chores: readiness probe every few seconds, partitions every few hours.
async fn maintenance(store: Store, metrics: Arc<Metrics>, cancel: CancellationToken) {
    let mut probe = tokio::time::interval(Duration::from_secs(2));
    let mut partitions = tokio::time::interval(Duration::from_secs(6 * 3600));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = probe.tick() => {
                let ok = store.health_check().await.is_ok();
                let was = metrics.store_ok.swap(ok, Ordering::Relaxed);
                if was != ok {
                    if ok { tracing::info!("store reachable again") } else { tracing::warn!("store unreachable") }
                }
            }
            _ = partitions.tick() => {
                if let Err(e) = store.ensure_partitions(time::OffsetDateTime::now_utc()).await {
                    tracing::warn!(error = %e, "partition maintenance failed; will retry");
                }
            }
        }
    }
}
