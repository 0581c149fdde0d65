//! [`Node`]: the one place that assembles a running Sentinella — the gateway (edge, broker,
//! ingest), the alert engine and the API — and takes it down again in order.
//!
//! The binary (`sentinella run`), the end-to-end tests and the firmware runner's tests all
//! start the system through [`Node::start`], so what is tested is what runs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use alerting::{Clock, Engine, EngineMetrics};
use anyhow::{Context, bail};
use store::Store;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;

/// The device-side TLS material: the edge's server certificate and the CA it trusts for
/// device certificates, with the device CA itself when this node issues certificates (the
/// API's provisioning routes need it).
#[derive(Debug, Clone)]
pub struct NodeTls {
    /// What the edge's TLS listener serves and trusts.
    pub edge: gateway::EdgeTls,
    /// The device CA (absent: the API cannot issue device certificates).
    pub ca: Option<Arc<pki::DeviceCa>>,
}

impl NodeTls {
    /// From the configuration: the device CA under `pki_dir` (created on first use), and the
    /// configured edge certificate or one issued now from the device CA.
    pub fn from_config(config: &Config) -> anyhow::Result<NodeTls> {
        let dir = config.pki_dir();
        let (ca, created) = pki::DeviceCa::load_or_create(&dir)
            .with_context(|| format!("device CA in {}", dir.display()))?;
        if created {
            tracing::info!(dir = %dir.display(), "device CA created");
        }
        let read =
            |p: &Path| std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()));
        let g = &config.gateway;
        let (cert_chain_pem, key_pem) = match (&g.tls_cert, &g.tls_key) {
            (Some(cert), Some(key)) => (read(cert)?, read(key)?),
            (None, None) => {
                let mut names: Vec<String> =
                    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
                let ip = g.tls_listen.ip();
                if !ip.is_unspecified() && !ip.is_loopback() {
                    names.push(ip.to_string());
                }
                names.extend(g.tls_server_names.iter().cloned());
                let server = ca
                    .issue_server(&names)
                    .context("issue the edge's server certificate")?;
                (server.cert_pem, server.key_pem)
            }
            _ => bail!("[gateway] tls_cert and tls_key must be set together"),
        };
        let client_ca_pem = match &g.tls_client_ca {
            Some(path) => read(path)?,
            None => ca.cert_pem().to_owned(),
        };
        Ok(NodeTls {
            edge: gateway::EdgeTls {
                cert_chain_pem,
                key_pem,
                client_ca_pem,
            },
            ca: Some(Arc::new(ca)),
        })
    }

    /// From a device CA held in memory (tests): a server certificate for localhost.
    pub fn from_ca(ca: Arc<pki::DeviceCa>) -> anyhow::Result<NodeTls> {
        let server = ca.issue_server(&["localhost".into(), "127.0.0.1".into()])?;
        Ok(NodeTls {
            edge: gateway::EdgeTls {
                cert_chain_pem: server.cert_pem,
                key_pem: server.key_pem,
                client_ca_pem: ca.cert_pem().to_owned(),
            },
            ca: Some(ca),
        })
    }
}

/// A running node: devices connect to its edge, staff to its API.
#[derive(Debug)]
pub struct Node {
    /// Where devices connect over plain TCP (passwords, loopback by default).
    pub edge_addr: SocketAddr,
    /// Where devices connect over mutual TLS.
    pub tls_addr: SocketAddr,
    /// Where the API listens.
    pub api_addr: SocketAddr,
    /// Whether the API is served over HTTPS.
    pub api_https: bool,
    /// Counters of the device side.
    pub metrics: Arc<gateway::Metrics>,
    /// Counters of the alert engine (zero when it is disabled).
    pub alert_metrics: Arc<EngineMetrics>,
    /// The most device connections the edge holds at once.
    pub max_connections: usize,
    gateway: gateway::Gateway,
    api: JoinHandle<std::io::Result<()>>,
    tasks: TaskTracker,
}

impl Node {
    /// Starts a node on `store` (migrated): the gateway first (so nothing devices send can be
    /// lost to a missing consumer), the alert engine fed by its commits on `clock`, then the
    /// API. Everything stops when `cancel` fires; then call [`Node::join`].
    pub async fn start(
        config: &Config,
        store: Store,
        tls: NodeTls,
        clock: Clock,
        cancel: CancellationToken,
    ) -> anyhow::Result<Node> {
        let tasks = TaskTracker::new();
        // Outbox entries name the node that committed them (its engine evaluates them from
        // memory, the others from the store).
        // The name is made unique per running node (two nodes configured with one name, or
        // several in one test process, must not take each other's batches for their own).
        let node_id = instance_name(&config.cluster.node_id());
        let store = store.with_node(&node_id);
        // The gateway sizes the edge's connection limit from the process's descriptors,
        // leaving the API's share: its own cap.
        let mut gateway_config = config.gateway.clone();
        gateway_config.api_descriptors = config.api.max_connections;
        // Committed batches for the alert engine: the writer never waits for it; each batch is
        // also in the store's outbox, where a lagging engine (or the next start) finds it.
        let handoff = config
            .alerts
            .enabled
            .then(|| Arc::new(store::Handoff::new(config.alerts.queue_batches)));
        let gateway = gateway::start(
            gateway_config,
            store.clone(),
            Some(tls.edge),
            handoff.clone(),
            cancel.clone(),
        )
        .await
        .context("start the gateway")?;
        let tls_addr = gateway.tls_addr.context("TLS listener address")?;

        let alert_metrics = Arc::new(EngineMetrics::default());
        if let Some(handoff) = handoff {
            // The engine's repeat requests go to the gateway, which delivers them to devices.
            let (repeat_tx, mut repeat_rx) = mpsc::unbounded_channel::<alerting::RepeatRequest>();
            let to_devices = gateway.repeats.clone();
            tasks.spawn(async move {
                while let Some(r) = repeat_rx.recv().await {
                    let request = gateway::RepeatRequest {
                        device_id: r.device_id,
                        kind: r.kind,
                        in_minutes: r.in_minutes,
                        at: r.at,
                    };
                    if to_devices.send(request).is_err() {
                        break;
                    }
                }
            });
            let engine = Engine::new(
                store.clone(),
                config.alerts.clone(),
                clock,
                alert_metrics.clone(),
            )
            .with_repeats(repeat_tx)
            // The patients of the alert partitions this node leases (all of them on SQLite,
            // or when it is the only node on its PostgreSQL database).
            .with_leases(store.leases(&node_id));
            // The engine stops when the writer closes the handoff: after the last batch.
            tasks.spawn(engine.run_handoff(handoff, cancel.clone()));
        }

        if let Some(dir) = config.reports.monthly_dir.clone() {
            tracing::info!(dir = %dir.display(), "monthly reports on");
            tasks.spawn(api::report::monthly::run(
                store.clone(),
                dir,
                cancel.clone(),
            ));
        }

        let (listener, api_addr, api_tls, state) =
            api_parts(config, store, &gateway, &alert_metrics, tls.ca).await?;
        let api_https = api_tls.is_some();
        let api = tokio::spawn(api::serve_with(
            listener,
            api_tls,
            state,
            config.api.conn_limits(),
            cancel,
        ));
        Ok(Node {
            edge_addr: gateway.edge_addr,
            tls_addr,
            api_addr,
            api_https,
            metrics: gateway.metrics.clone(),
            alert_metrics,
            max_connections: gateway.max_connections,
            gateway,
            api,
            tasks,
        })
    }

    /// Waits, after the cancel token fired, until the API has finished its requests, the
    /// gateway has committed and acked what was in flight, and the engine has evaluated it.
    pub async fn join(self) -> anyhow::Result<()> {
        let api = self.api.await.context("API task")?;
        self.gateway.join().await;
        self.tasks.close();
        self.tasks.wait().await;
        api.context("API server")
    }
}

/// `name` made unique to this running node: the process id, its start time and a counter.
fn instance_name(name: &str) -> String {
    static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{name}/{}-{at}-{n}", std::process::id())
}

/// The API's listener and state: its TLS, identity settings, and the gateway's readiness and
/// metrics (the only things the API learns of the device side).
async fn api_parts(
    config: &Config,
    store: Store,
    gateway: &gateway::Gateway,
    alert_metrics: &Arc<EngineMetrics>,
    device_ca: Option<Arc<pki::DeviceCa>>,
) -> anyhow::Result<(
    tokio::net::TcpListener,
    SocketAddr,
    Option<api::tls::TlsAcceptor>,
    api::http::AppState,
)> {
    let api_tls = match (&config.api.tls_cert, &config.api.tls_key) {
        (Some(cert), Some(key)) => Some(api::tls::acceptor(cert, key)?),
        (None, None) => None,
        _ => bail!("[api] needs both tls_cert and tls_key, or neither"),
    };
    let oidc = config
        .api
        .oidc
        .clone()
        .map(api::http::oidc::Oidc::load)
        .transpose()
        .context("[api.oidc]")?;
    let auth = api::http::AuthState {
        session_ttl: time::Duration::try_from(config.api.session_ttl)
            .context("[api] session_ttl is too long")?,
        oidc,
        tls: api_tls.is_some(),
        trusted_proxies: config.api.trusted_proxies.clone(),
        ..api::http::AuthState::default()
    };
    let ready_metrics = gateway.metrics.clone();
    let metrics = gateway.metrics.clone();
    let alert_metrics = alert_metrics.clone();
    let state = api::http::AppState {
        store,
        auth: Arc::new(auth),
        device_ca,
        ready: Arc::new(move || ready_metrics.ready()),
        metrics: Arc::new(move || {
            let mut out = metrics.render_prometheus();
            alert_metrics.render_prometheus(&mut out);
            out
        }),
    };
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("bind the API on {}", config.api.listen))?;
    let api_addr = listener.local_addr().context("API address")?;
    Ok((listener, api_addr, api_tls, state))
}
