//! Starts a node (`sentinella::Node::start`, as the binary does) against a fresh database,
//! and drives it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use api::ops;
use gateway::Metrics;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use sentinella::{Config, Node, NodeTls};
use simulators::device::DeviceTls;
use store::testing::TestDb;
use store::{DeviceKind, NewPatient, Patient};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    /// A fresh SQLite file.
    Sqlite,
    /// A fresh PostgreSQL database (native partitions).
    Postgres,
    /// A fresh schema on TimescaleDB (PGlite).
    Timescale,
}

impl Db {
    /// A fresh, migrated database of this kind.
    pub async fn create(self) -> TestDb {
        match self {
            Db::Sqlite => TestDb::sqlite().await,
            Db::Postgres => TestDb::postgres().await,
            Db::Timescale => TestDb::timescale().await,
        }
    }
}

/// Credentials of a provisioned device.
#[derive(Debug, Clone)]
pub struct DeviceCreds {
    /// Device id (= MQTT client id and username).
    pub id: String,
    /// Device secret (= MQTT password).
    pub secret: String,
    /// The patient it belongs to.
    pub patient_id: i64,
}

/// The running system.
#[derive(Debug)]
pub struct Stack {
    /// The database (kept alive for the test's duration).
    pub db: TestDb,
    /// Where devices connect over plain TCP (password).
    pub edge: SocketAddr,
    /// Where devices connect over mutual TLS (client certificate).
    pub tls_edge: SocketAddr,
    /// The device CA the TLS listener trusts and that signed its server certificate.
    pub ca: Arc<pki::DeviceCa>,
    /// Where the API listens.
    pub api: SocketAddr,
    /// A valid API token.
    pub token: String,
    /// The gateway's counters.
    pub metrics: Arc<Metrics>,
    /// The alert engine's counters.
    pub alert_metrics: Arc<alerting::EngineMetrics>,
    cancel: CancellationToken,
    node: Node,
    http: reqwest::Client,
    cot_id: i64,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique within this test process.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    // rumqttd logs every clean disconnect as an ERROR; the gateway's own logs say the same.
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into());
    let filter = format!("rumqttd::server=off,rumqttd::router::routing=off,{filter}");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// How [`Stack::start_on`] starts a node, beyond the database.
pub struct Launch<'a> {
    /// The store the node reaches the database through (e.g. a [`crate::faults::FaultProxy`]);
    /// default: the database's own. The test keeps the direct way in either way.
    pub store: Option<store::Store>,
    /// The alert engine's clock (scenarios in compressed time); default: the system clock.
    pub clock: Option<alerting::Clock>,
    /// Adjusts the node's configuration (edge and API are on free loopback ports before).
    pub config: Box<dyn FnOnce(&mut Config) + 'a>,
}

impl Default for Launch<'_> {
    fn default() -> Self {
        Launch::configured(|_| {})
    }
}

impl std::fmt::Debug for Launch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch").finish_non_exhaustive()
    }
}

impl<'a> Launch<'a> {
    /// The defaults, with `config` adjusting the node's configuration.
    pub fn configured(config: impl FnOnce(&mut Config) + 'a) -> Launch<'a> {
        Launch {
            store: None,
            clock: None,
            config: Box::new(config),
        }
    }
}

impl Stack {
    /// Starts the stack with the default gateway configuration (edge and API on free ports).
    pub async fn start(db: Db) -> anyhow::Result<Stack> {
        Stack::start_with(db, |_| {}).await
    }

    /// Starts the stack after `tweak` adjusts the node's configuration.
    pub async fn start_with(db: Db, tweak: impl FnOnce(&mut Config)) -> anyhow::Result<Stack> {
        init_logging();
        let db = db.create().await;
        Stack::start_on(db, Launch::configured(tweak)).await
    }

    /// Starts the stack on an existing database (e.g. to restart over the same data), with
    /// the choices of [`Launch`]; [`Stack::start`] and [`Stack::start_with`] are this on a
    /// fresh database.
    pub async fn start_on(db: TestDb, launch: Launch<'_>) -> anyhow::Result<Stack> {
        let store = launch.store.unwrap_or_else(|| db.store.clone());
        let clock = launch.clock.unwrap_or_else(alerting::system_clock);
        let mut config = Config::default();
        config.gateway.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.gateway.tls_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.api.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        (launch.config)(&mut config);
        let ca = Arc::new(pki::DeviceCa::generate("e2e device CA")?);
        let cancel = CancellationToken::new();
        let node = Node::start(
            &config,
            store.clone(),
            NodeTls::from_ca(ca.clone())?,
            clock,
            cancel.clone(),
        )
        .await
        .context("start the node")?;
        let metrics = node.metrics.clone();
        let alert_metrics = node.alert_metrics.clone();
        let cot_code = unique("COT-");
        let cot = match store.cot_by_code(&cot_code).await? {
            Some(c) => c,
            None => store.add_cot(&cot_code, "COT di prova").await?,
        };
        // A physician of the stack's COT: reads every patient's data and works alerts.
        let token = ops::identity::service_account(
            &store,
            &unique("e2e-"),
            store::Role::Physician,
            &[cot.id],
        )
        .await?;
        Ok(Stack {
            db,
            edge: node.edge_addr,
            tls_edge: node.tls_addr,
            ca,
            api: node.api_addr,
            token,
            metrics,
            alert_metrics,
            cancel,
            node,
            http: reqwest::Client::new(),
            cot_id: cot.id,
        })
    }

    /// Starts a second node on this stack's database, with its own store (pool, listener),
    /// edge, API, alert engine, COT and token, as another `sentinella run` of a cluster.
    pub async fn start_peer(&self, launch: Launch<'_>) -> anyhow::Result<Stack> {
        Stack::start_on(self.db.another_node().await, launch).await
    }

    /// The store.
    pub fn store(&self) -> &store::Store {
        &self.db.store
    }

    /// Enrols a patient.
    pub async fn patient(&self, conditions: &[&str]) -> anyhow::Result<Patient> {
        let code = unique("PAT-");
        let new = NewPatient {
            cot_id: self.cot_id,
            code: code.clone(),
            display_name: format!("Paziente {code}"),
            birth_year: Some(1950),
            conditions: conditions.iter().map(|c| (*c).to_owned()).collect(),
        };
        Ok(self.store().add_patient(&new).await?)
    }

    /// Provisions a device for `patient_id` (as `sentinella device add` does).
    pub async fn device(&self, patient_id: i64, kind: DeviceKind) -> anyhow::Result<DeviceCreds> {
        let id = unique(&format!("{}-", kind.as_str()));
        let p =
            ops::devices::provision(self.store(), patient_id, kind, Some(id), Some("e2e".into()))
                .await?;
        Ok(DeviceCreds {
            id: p.device.id,
            secret: p.secret,
            patient_id,
        })
    }

    /// Issues `device_id` a client certificate from the stack's CA and records it in the store
    /// (as `sentinella device add` does).
    pub async fn device_tls(&self, device_id: &str) -> anyhow::Result<DeviceTls> {
        let cert = ops::devices::issue_cert(self.store(), &self.ca, device_id).await?;
        Ok(DeviceTls::issued(cert, self.ca.cert_pem()))
    }

    /// GET on the API with the test token; returns status and JSON body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
        self.get_with(path, Some(&self.token)).await
    }

    /// GET on the API with the given token (or none).
    pub async fn get_with(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let mut req = self.http.get(format!("http://{}{path}", self.api));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("GET {path}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok((status, body))
    }

    /// Waits until the store holds `n` readings of `device_id` (or fails after `timeout`).
    pub async fn wait_readings(
        &self,
        device_id: &str,
        n: i64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let have = self.store().count_readings(Some(device_id)).await?;
            if have >= n {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{device_id}: {have} readings stored, expected {n}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the quarantine holds at least `n` entries.
    pub async fn wait_quarantine(
        &self,
        n: i64,
        timeout: Duration,
    ) -> anyhow::Result<Vec<store::QuarantineEntry>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let have = self.store().count_quarantine().await?;
            if have >= n {
                return Ok(self.store().list_quarantine(1000, None).await?);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{have} quarantine entries, expected {n}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops the stack gracefully and returns the database for inspection or a restart.
    pub async fn stop(self) -> TestDb {
        self.cancel.cancel();
        let _ = self.node.join().await;
        self.db
    }
}

/// A raw MQTT client logged in as a device, for tests that need full control.
#[derive(Debug)]
pub struct RawDevice {
    /// The client.
    pub client: AsyncClient,
    /// Publishes received on subscribed topics (topic, payload).
    pub inbox: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    /// CONNACK return codes and connection errors, in order.
    pub events: mpsc::UnboundedReceiver<Result<(), String>>,
    task: JoinHandle<()>,
}

impl RawDevice {
    /// Connects to `edge` with the given credentials (reconnects are not attempted after an
    /// error, so a refusal stays visible).
    pub fn connect(edge: SocketAddr, id: &str, password: &str) -> RawDevice {
        let mut opts = MqttOptions::new(id, edge.ip().to_string(), edge.port());
        opts.set_credentials(id, password);
        RawDevice::start(opts)
    }

    /// Connects to the TLS listener `edge` with client id `id` and the certificate in `tls`
    /// (no password).
    pub fn connect_tls(edge: SocketAddr, id: &str, tls: &DeviceTls) -> anyhow::Result<RawDevice> {
        let mut opts = MqttOptions::new(id, edge.ip().to_string(), edge.port());
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            simulators::device::client_config(tls)?,
        )));
        Ok(RawDevice::start(opts))
    }

    fn start(mut opts: MqttOptions) -> RawDevice {
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1024 * 1024, 1024 * 1024);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (inbox_tx, inbox) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = events_tx.send(Ok(()));
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = inbox_tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = events_tx.send(Err(e.to_string()));
                        break;
                    }
                }
            }
        });
        RawDevice {
            client,
            inbox,
            events,
            task,
        }
    }

    /// Waits for the CONNACK (Ok) or the connection error.
    pub async fn connected(&mut self) -> Result<(), String> {
        match tokio::time::timeout(Duration::from_secs(10), self.events.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => Err("event loop ended".into()),
            Err(_) => Err("no CONNACK within 10 s".into()),
        }
    }

    /// Publishes at QoS 1.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await?;
        Ok(())
    }

    /// Subscribes at QoS 1.
    pub async fn subscribe(&self, filter: &str) -> anyhow::Result<()> {
        self.client.subscribe(filter, QoS::AtLeastOnce).await?;
        Ok(())
    }

    /// The next publish received within `timeout`, if any.
    pub async fn next_message(&mut self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        tokio::time::timeout(timeout, self.inbox.recv())
            .await
            .ok()
            .flatten()
    }

    /// Stops the client.
    pub fn close(self) {
        self.task.abort();
    }
}

/// `sentinella/v1/devices/{id}/{channel}`.
pub fn topic(id: &str, channel: &str) -> String {
    format!("{}{id}/{channel}", protocol::topic::PREFIX)
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
