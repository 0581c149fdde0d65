//! One simulated device: an MQTT client, an outbox and the end-to-end ack protocol.
//!
//! [`spawn`] starts two tasks per device:
//! - the **poll task** owns the rumqttc [`EventLoop`]. It only polls: it records connections,
//!   applies the gateway's `ack` messages to the outbox and, after a failed connection, backs
//!   off exponentially with jitter (rumqttc has none, and a refused device would otherwise
//!   reconnect in a tight loop). It never waits on anything else, so the connection always
//!   makes progress.
//! - the **uplink task** decides what to send: after every (re)connection it subscribes to the
//!   device's `ack` and `config` topics and publishes its status; once the subscription is
//!   acknowledged it publishes unsettled readings in seq order, in batches of at most
//!   `max_batch`, keeping at most `max_in_flight` batches waiting for the gateway's ack.
//!
//! A reading leaves the outbox only when an `ack` message lists its seq as committed or
//! rejected; the broker's PUBACK means nothing durable. Because the session is clean, rumqttc
//! forgets unacked publishes on reconnect (`session_present = 0`), so every batch in flight is
//! sent again after a reconnection; a batch without an ack within `resend_after` is sent again
//! too. The gateway dedupes on (device, seq), so resends are harmless.
//!
//! **Repeat requests.** A `config` with a `repeat` (the alert engine asking for a repeat
//! measurement) is accepted once per id: the gateway republishes its retained config at every
//! connection, so the same request arrives again. The device does not measure by itself (its
//! owner feeds it readings), so it hands accepted requests to the owner through
//! [`DeviceHandle::next_repeat`]; `fleet`'s feeder measures the kind `in_s` simulated seconds
//! later from the patient's physiology. Unlike the firmware (`firmware_core`), the simulated
//! device keeps no flash: a restarted simulator may measure a still-retained request again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, anyhow};
use hdrhistogram::Histogram;
use protocol::ack::Ack;
use protocol::status::{DeviceConfig, Status};
use protocol::{Channel, DeviceId, Kind, MAX_BATCH, MAX_PAYLOAD, Measurement, Reading, Topic};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing, QoS, SubscribeFilter,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::physiology::{Sample, hash_str};
use crate::seqset::SeqSet;

/// Default readings per published batch.
pub const DEFAULT_MAX_BATCH: usize = 32;
/// Default wait for the gateway's ack before a batch is sent again.
pub const DEFAULT_RESEND_AFTER: Duration = Duration::from_secs(5);
/// Default batches awaiting the gateway's ack at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;
/// Default settled readings kept for [`DeviceHandle::replay`].
pub const DEFAULT_HISTORY: usize = 10_000;
/// Firmware version the simulated devices report.
pub const FIRMWARE: &str = "sim-0.1";

/// MQTT keep-alive.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Largest MQTT packet either way: a full batch (16 KiB) plus topic and header, with room.
const MAX_PACKET: usize = 32 * 1024;
/// First delay after a failed connection.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest delay between connection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A connection that lasted this long resets the back-off.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// How long a clean disconnect may take before the task gives up on it.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);
/// Repeat request ids remembered, to apply each once (the gateway's retained config carries
/// only its latest request, so a few are plenty).
const REPEAT_IDS_KEPT: usize = 8;
/// Accepted repeat requests waiting for [`DeviceHandle::next_repeat`]; older ones are dropped.
const REPEATS_QUEUED: usize = 8;

/// A repeat measurement the gateway asked for (`protocol::status::RepeatRequest`), accepted
/// once per id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepeatAsk {
    /// The request's id.
    pub id: i64,
    /// What to measure.
    pub kind: Kind,
    /// Seconds (simulated: the feeder scales them) to wait before measuring.
    pub in_s: u32,
    /// When the config carrying it arrived.
    pub received: Instant,
}

/// What a device needs to connect, and how its uplink behaves.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// Device id: MQTT client id, username and topic level.
    pub id: String,
    /// Device secret, sent as the MQTT password (plain connections only).
    pub secret: String,
    /// Connect over mutual TLS with this certificate instead of a password.
    pub tls: Option<DeviceTls>,
    /// The gateway's edge, `host:port`.
    pub broker: String,
    /// Most readings per published batch (1 to `protocol::MAX_BATCH`).
    pub max_batch: usize,
    /// How long a batch may wait for the gateway's ack before it is sent again.
    pub resend_after: Duration,
    /// Most batches awaiting the gateway's ack at once.
    pub max_in_flight: usize,
    /// The seq [`DeviceHandle::measure`] assigns first. A real device keeps its seq across
    /// reboots; a simulator run twice against the same store must not restart from 1, or the
    /// store would take its new readings for duplicates (see `fleet::clock_seq_base`).
    pub first_seq: u32,
    /// Most settled readings kept for [`DeviceHandle::replay`] (oldest dropped first); 0 keeps
    /// none, which a load generator wants.
    pub history: usize,
}

impl DeviceSpec {
    /// A spec with the default uplink settings.
    pub fn new(
        id: impl Into<String>,
        secret: impl Into<String>,
        broker: impl Into<String>,
    ) -> Self {
        DeviceSpec {
            id: id.into(),
            secret: secret.into(),
            tls: None,
            broker: broker.into(),
            max_batch: DEFAULT_MAX_BATCH,
            resend_after: DEFAULT_RESEND_AFTER,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            first_seq: 1,
            history: DEFAULT_HISTORY,
        }
    }
}

/// A device's mutual-TLS credentials (the `pki` crate's bundle).
pub use pki::DeviceBundle as DeviceTls;

/// A rustls client configuration (ring provider) presenting the device certificate and
/// trusting only the given CA.
pub fn client_config(tls: &DeviceTls) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
        roots
            .add(ca.context("CA certificate PEM")?)
            .context("CA certificate")?;
    }
    let chain = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("device certificate PEM")?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).context("device key PEM")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("device certificate and key")?;
    Ok(Arc::new(config))
}

/// Counters of one device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeviceStats {
    /// Readings put into the outbox (measured or pushed).
    pub generated: u64,
    /// Distinct seqs the gateway reported committed.
    pub committed: u64,
    /// Distinct seqs the gateway reported rejected.
    pub rejected: u64,
    /// Readings in the outbox, not yet settled by an ack.
    pub pending: usize,
    /// Readings messages published (batches, including resends and replays).
    pub publishes: u64,
    /// Readings published again (after a reconnection or without an ack in time).
    pub resent: u64,
    /// Readings republished by [`DeviceHandle::replay`].
    pub replayed: u64,
    /// Ack messages applied.
    pub acks: u64,
    /// Ack or config messages that could not be decoded (logged and ignored).
    pub bad_messages: u64,
    /// Repeat requests accepted (each id once).
    pub repeats_requested: u64,
    /// Successful MQTT connections (CONNACK accepted).
    pub connects: u64,
    /// Whether the device is connected and subscribed right now.
    pub connected: bool,
    /// The seq the next measurement will get.
    pub next_seq: u32,
    /// The most recent connection or protocol error.
    pub last_error: Option<String>,
}

/// Starts a device: it connects at once and keeps reconnecting until `cancel` fires or
/// [`DeviceHandle::stop`] is called. Must be called inside a tokio runtime.
///
/// An invalid id or broker address does not panic: the device never connects and
/// [`DeviceStats::last_error`] says why.
pub fn spawn(spec: DeviceSpec, cancel: CancellationToken) -> DeviceHandle {
    spawn_inner(spec, cancel, None)
}

/// Like [`spawn`], but the device does not open its first connection until `start`
/// completes: until then it only measures, and its readings wait in the outbox, like a device
/// that was out of coverage. [`DeviceHandle::stop`] (or `cancel`) before `start` completes
/// stops it without it ever connecting.
pub fn spawn_when(
    spec: DeviceSpec,
    cancel: CancellationToken,
    start: impl Future<Output = ()> + Send + 'static,
) -> DeviceHandle {
    spawn_inner(spec, cancel, Some(Box::pin(start)))
}

/// What [`spawn_when`] waits for before connecting.
type StartGate = Pin<Box<dyn Future<Output = ()> + Send>>;

fn spawn_inner(
    spec: DeviceSpec,
    cancel: CancellationToken,
    start: Option<StartGate>,
) -> DeviceHandle {
    let limits = Limits::new(&spec);
    let (changed, _) = watch::channel(0u64);
    let shared = Arc::new(Shared {
        id: spec.id.clone(),
        cancel: cancel.child_token(),
        state: Mutex::new(State::new(&spec)),
        wake: Notify::new(),
        changed,
        tasks: Mutex::new(Vec::new()),
        limits,
    });
    let handle = DeviceHandle { shared };
    let setup = Topics::new(&spec.id).and_then(|topics| {
        let options = mqtt_options(&spec, &topics)?;
        Ok((topics, options))
    });
    let (topics, options) = match setup {
        Ok(ok) => ok,
        Err(e) => {
            error!(device = %spec.id, error = %format!("{e:#}"), "device cannot start");
            handle.shared.lock().last_error = Some(format!("{e:#}"));
            return handle;
        }
    };
    let topics = Arc::new(topics);
    let (client, eventloop) = AsyncClient::new(options, limits.max_in_flight + 8);
    let poll = tokio::spawn(poll_task(
        handle.shared.clone(),
        topics.clone(),
        client.clone(),
        eventloop,
        start,
    ));
    let uplink = tokio::spawn(uplink_task(handle.shared.clone(), topics, client));
    handle.shared.tasks_lock().extend([poll, uplink]);
    handle
}

/// A running simulated device. Cheap to clone; every clone drives the same device.
#[derive(Clone)]
pub struct DeviceHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for DeviceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceHandle")
            .field("id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

impl DeviceHandle {
    /// The device id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Takes a measurement: assigns the next seq, stores the reading in the outbox and wakes
    /// the uplink. Returns the seq.
    pub fn measure(&self, measurement: Measurement, ts_ms: i64) -> u32 {
        self.record(Sample::plain(measurement), ts_ms)
    }

    /// Like [`measure`](Self::measure), with the sample's status bits.
    pub fn record(&self, sample: Sample, ts_ms: i64) -> u32 {
        let seq = {
            let mut st = self.shared.lock();
            let seq = st.next_seq;
            st.next_seq = seq.saturating_add(1);
            st.add(Reading {
                seq,
                ts_ms,
                clock_unset: false,
                status: sample.status,
                sensor: sample.sensor,
                measurement: sample.measurement,
            });
            seq
        };
        self.shared.poke();
        seq
    }

    /// Stores a reading exactly as given (seq, flags, clock), for tests of odd cases. A seq
    /// already in the outbox is replaced; later measurements continue after the highest seq
    /// pushed.
    pub fn push(&self, reading: Reading) {
        {
            let mut st = self.shared.lock();
            st.next_seq = st.next_seq.max(reading.seq.saturating_add(1));
            st.add(reading);
        }
        self.shared.poke();
    }

    /// Publishes already-settled readings again (from the history), outside the in-flight
    /// window and without waiting for their ack, to show that the gateway dedupes. Seqs not in
    /// the history (unknown, still pending, or evicted) are skipped. Returns how many were
    /// queued.
    pub fn replay(&self, seqs: &[u32]) -> usize {
        let queued = {
            let mut st = self.shared.lock();
            let readings: Vec<Reading> = seqs
                .iter()
                .filter_map(|seq| st.history.get(seq).copied())
                .collect();
            st.replay.extend(readings.iter().copied());
            readings.len()
        };
        self.shared.poke();
        queued
    }

    /// The device's counters.
    pub fn stats(&self) -> DeviceStats {
        self.shared.lock().stats()
    }

    /// The lowest seq still in the outbox (not yet settled by an ack), if any.
    pub fn oldest_pending(&self) -> Option<u32> {
        self.shared.lock().outbox.keys().next().copied()
    }

    /// Seqs still in the outbox (not yet settled by an ack), ascending.
    pub fn pending_seqs(&self) -> Vec<u32> {
        self.shared.lock().outbox.keys().copied().collect()
    }

    /// Seqs the gateway reported committed, ascending.
    pub fn committed(&self) -> Vec<u32> {
        self.shared.lock().committed.to_vec()
    }

    /// Seqs the gateway reported rejected, ascending.
    pub fn rejected(&self) -> Vec<u32> {
        self.shared.lock().rejected.to_vec()
    }

    /// Waits until the outbox is empty.
    pub async fn wait_settled(&self, timeout: Duration) -> anyhow::Result<()> {
        let settled = self
            .wait_until(Some(Instant::now() + timeout), |st| st.outbox.is_empty())
            .await;
        if settled {
            return Ok(());
        }
        let st = self.shared.lock();
        Err(anyhow!(
            "device {}: {} readings still unsettled after {} (last error: {})",
            self.id(),
            st.outbox.len(),
            humantime::format_duration(round_ms(timeout)),
            st.last_error.as_deref().unwrap_or("none"),
        ))
    }

    /// Waits for the next repeat request the gateway sent (each id once, oldest first).
    /// Cancel-safe: a request is taken only when this returns it.
    pub async fn next_repeat(&self) -> RepeatAsk {
        loop {
            if let Some(ask) = self.shared.lock().repeats.pop_front() {
                return ask;
            }
            self.wait_until(None, |st| !st.repeats.is_empty()).await;
        }
    }

    /// Waits until the device is connected and subscribed to its ack topic.
    pub async fn wait_connected(&self, timeout: Duration) -> anyhow::Result<()> {
        if self
            .wait_until(Some(Instant::now() + timeout), State::ready)
            .await
        {
            return Ok(());
        }
        let st = self.shared.lock();
        Err(anyhow!(
            "device {}: not connected after {} ({} connections so far, last error: {})",
            self.id(),
            humantime::format_duration(round_ms(timeout)),
            st.connects,
            st.last_error.as_deref().unwrap_or("none"),
        ))
    }

    /// Waits until at most `max` readings are pending (for load generators filling the
    /// in-flight window). Returns at once if the device has been stopped.
    pub async fn wait_pending_at_most(&self, max: usize) {
        let cancel = self.shared.cancel.clone();
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = self.wait_until(None, |st| st.outbox.len() <= max) => {}
        }
    }

    /// Publish→ack latencies of settled readings, in microseconds, measured from the first
    /// time each reading was published (so resends count against it).
    pub fn latencies(&self) -> Histogram<u64> {
        self.shared.lock().latencies.clone()
    }

    /// Disconnects cleanly (so the broker discards the last will) and waits for the device's
    /// tasks to end. Every clone of the handle stops with it.
    pub async fn stop(self) {
        self.shared.cancel.cancel();
        let tasks = std::mem::take(&mut *self.shared.tasks_lock());
        for task in tasks {
            if let Err(e) = task.await {
                error!(device = %self.id(), error = %e, "device task failed");
            }
        }
    }

    async fn wait_until(&self, deadline: Option<Instant>, done: impl Fn(&State) -> bool) -> bool {
        let mut changed = self.shared.changed.subscribe();
        loop {
            if done(&self.shared.lock()) {
                return true;
            }
            match deadline {
                Some(deadline) => {
                    if timeout_at(deadline, changed.changed()).await.is_err() {
                        return done(&self.shared.lock());
                    }
                }
                None => {
                    // The sender lives in `shared`, which we hold, so this never fails.
                    let _ = changed.changed().await;
                }
            }
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Uplink settings, validated.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_batch: usize,
    max_in_flight: usize,
    resend_after: Duration,
}

/// The longest resend timeout, as it doubles while acks do not come.
pub const MAX_RESEND_AFTER: Duration = Duration::from_secs(60);

impl Limits {
    /// The resend timeout after `doublings` expiries without an ack in between: like the
    /// firmware's uplink (`firmware/core/src/uplink.rs`), a slow gateway is not sent every
    /// batch again every `resend_after`, which would only add to its load.
    fn resend(&self, doublings: u32) -> Duration {
        self.resend_after
            .saturating_mul(1u32 << doublings.min(16))
            .min(MAX_RESEND_AFTER.max(self.resend_after))
    }

    fn new(spec: &DeviceSpec) -> Self {
        Limits {
            max_batch: spec.max_batch.clamp(1, MAX_BATCH),
            max_in_flight: spec.max_in_flight.clamp(1, 64),
            resend_after: spec.resend_after.max(Duration::from_millis(10)),
        }
    }
}

/// The device's four topics.
#[derive(Debug)]
struct Topics {
    readings: String,
    status: String,
    ack: String,
    config: String,
}

impl Topics {
    fn new(id: &str) -> anyhow::Result<Self> {
        let device = DeviceId::parse(id).map_err(|e| anyhow!("device id {id:?}: {e}"))?;
        let topic = |channel| Topic::new(device, channel).to_string();
        Ok(Topics {
            readings: topic(Channel::Readings),
            status: topic(Channel::Status),
            ack: topic(Channel::Ack),
            config: topic(Channel::Config),
        })
    }
}

fn mqtt_options(spec: &DeviceSpec, topics: &Topics) -> anyhow::Result<MqttOptions> {
    let (host, port) = spec
        .broker
        .rsplit_once(':')
        .context("broker address must be host:port")?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("broker port in {:?}", spec.broker))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut options = MqttOptions::new(spec.id.clone(), host, port);
    match &spec.tls {
        // The certificate is the credential; no password crosses the wire.
        Some(tls) => {
            let config = client_config(tls)?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        }
        None => {
            options.set_credentials(spec.id.clone(), spec.secret.clone());
        }
    }
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_last_will(LastWill::new(
            topics.status.clone(),
            r#"{"online":false}"#,
            QoS::AtLeastOnce,
            false,
        ));
    Ok(options)
}

struct Shared {
    id: String,
    cancel: CancellationToken,
    state: Mutex<State>,
    /// Wakes the uplink task: new readings, an ack, a (re)connection.
    wake: Notify,
    /// Bumped on every change waiters may care about.
    changed: watch::Sender<u64>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    limits: Limits,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the counters inconsistent in a way that
        // matters to a simulator, so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tasks_lock(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Something changed that the uplink should act on.
    fn poke(&self) {
        self.wake.notify_one();
        self.notify_changed();
    }

    fn notify_changed(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

struct Entry {
    reading: Reading,
    /// The batch this reading is in flight with, if any.
    batch: Option<u64>,
    first_sent: Option<Instant>,
    sends: u32,
}

struct Batch {
    seqs: Vec<u32>,
    deadline: Instant,
}

enum Action {
    Subscribe,
    Status,
    Readings(Vec<u8>),
}

struct State {
    next_seq: u32,
    outbox: BTreeMap<u32, Entry>,
    history: BTreeMap<u32, Reading>,
    history_cap: usize,
    replay: VecDeque<Reading>,
    batches: HashMap<u64, Batch>,
    next_batch: u64,
    committed: SeqSet,
    rejected: SeqSet,
    latencies: Histogram<u64>,
    /// Connection generation: bumped on every CONNACK.
    epoch: u64,
    /// The generation whose SUBACK has arrived.
    ready_epoch: u64,
    connected: bool,
    connected_at: Option<Instant>,
    generated: u64,
    publishes: u64,
    resent: u64,
    /// The resend timeout is `resend_after` doubled this many times (see [`Limits::resend`]).
    resend_doublings: u32,
    replayed: u64,
    acks: u64,
    bad_messages: u64,
    connects: u64,
    last_error: Option<String>,
    /// Ids of the last repeat requests accepted.
    repeat_ids: VecDeque<i64>,
    /// Accepted repeat requests not yet taken by [`DeviceHandle::next_repeat`].
    repeats: VecDeque<RepeatAsk>,
    repeats_requested: u64,
}

impl State {
    fn new(spec: &DeviceSpec) -> Self {
        State {
            next_seq: spec.first_seq,
            outbox: BTreeMap::new(),
            history: BTreeMap::new(),
            history_cap: spec.history,
            replay: VecDeque::new(),
            batches: HashMap::new(),
            next_batch: 0,
            committed: SeqSet::default(),
            rejected: SeqSet::default(),
            // 1 µs to 1 h at 3 significant digits: valid constant bounds, cannot fail.
            latencies: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("constant histogram bounds are valid"),
            epoch: 0,
            ready_epoch: 0,
            connected: false,
            connected_at: None,
            generated: 0,
            publishes: 0,
            resent: 0,
            resend_doublings: 0,
            replayed: 0,
            acks: 0,
            bad_messages: 0,
            connects: 0,
            last_error: None,
            repeat_ids: VecDeque::new(),
            repeats: VecDeque::new(),
            repeats_requested: 0,
        }
    }

    /// Accepts a repeat request unless its id was seen already; returns whether it did.
    fn accept_repeat(&mut self, ask: RepeatAsk) -> bool {
        if self.repeat_ids.contains(&ask.id) {
            return false;
        }
        if self.repeat_ids.len() == REPEAT_IDS_KEPT {
            self.repeat_ids.pop_front();
        }
        self.repeat_ids.push_back(ask.id);
        if self.repeats.len() == REPEATS_QUEUED {
            self.repeats.pop_front();
        }
        self.repeats.push_back(ask);
        self.repeats_requested += 1;
        true
    }

    fn ready(&self) -> bool {
        self.connected && self.ready_epoch == self.epoch
    }

    fn add(&mut self, reading: Reading) {
        self.generated += 1;
        self.outbox.insert(
            reading.seq,
            Entry {
                reading,
                batch: None,
                first_sent: None,
                sends: 0,
            },
        );
    }

    fn stats(&self) -> DeviceStats {
        DeviceStats {
            generated: self.generated,
            committed: self.committed.len(),
            rejected: self.rejected.len(),
            pending: self.outbox.len(),
            publishes: self.publishes,
            resent: self.resent,
            replayed: self.replayed,
            acks: self.acks,
            bad_messages: self.bad_messages,
            repeats_requested: self.repeats_requested,
            connects: self.connects,
            connected: self.ready(),
            next_seq: self.next_seq,
            last_error: self.last_error.clone(),
        }
    }

    /// Settles every outbox seq the ack lists. Seqs not in the outbox (already settled,
    /// replayed, never sent, or garbage ranges) are ignored.
    fn apply_ack(&mut self, ack: &Ack, now: Instant) {
        self.acks += 1;
        // The path to the store works: the first resend timeout applies again.
        self.resend_doublings = 0;
        for (ranges, committed) in [(&ack.committed, true), (&ack.rejected, false)] {
            for range in ranges.iter() {
                if range.0 > range.1 {
                    continue;
                }
                let seqs: Vec<u32> = self
                    .outbox
                    .range(range.0..=range.1)
                    .map(|(&seq, _)| seq)
                    .collect();
                for seq in seqs {
                    if let Some(entry) = self.outbox.remove(&seq) {
                        self.settle(entry, committed, now);
                    }
                }
            }
        }
    }

    fn settle(&mut self, entry: Entry, committed: bool, now: Instant) {
        let seq = entry.reading.seq;
        if let Some(sent) = entry.first_sent {
            let micros = u64::try_from(now.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
            self.latencies.saturating_record(micros.max(1));
        }
        if committed {
            self.committed.insert(seq);
        } else {
            self.rejected.insert(seq);
        }
        if self.history_cap > 0 {
            self.history.insert(seq, entry.reading);
            while self.history.len() > self.history_cap {
                self.history.pop_first();
            }
        }
    }

    /// Decides what the uplink sends now; returns the actions and when to look again.
    fn plan(
        &mut self,
        limits: &Limits,
        now: Instant,
        setup_epoch: &mut u64,
        buf: &mut [u8],
    ) -> (Vec<Action>, Option<Instant>) {
        let mut actions = Vec::new();
        if !self.connected {
            return (actions, None);
        }
        if self.epoch != *setup_epoch {
            // A new connection with a clean session: rumqttc dropped whatever was unacked, and
            // acks for the old batches may never come. Everything in flight goes again once
            // the ack subscription is in place.
            *setup_epoch = self.epoch;
            for entry in self.outbox.values_mut() {
                entry.batch = None;
            }
            self.batches.clear();
            actions.push(Action::Subscribe);
            actions.push(Action::Status);
            return (actions, None);
        }
        if self.ready_epoch != self.epoch {
            return (actions, None);
        }

        self.retire_batches(now);

        while !self.replay.is_empty() {
            let n = self.replay.len().min(limits.max_batch);
            let readings: Vec<Reading> = self.replay.drain(..n).collect();
            let mut rest: &[Reading] = &readings;
            while !rest.is_empty() {
                match encode_prefix(rest, buf) {
                    Ok((sent, payload)) => {
                        actions.push(Action::Readings(payload));
                        self.publishes += 1;
                        self.replayed += sent as u64;
                        rest = rest.get(sent..).unwrap_or_default();
                    }
                    Err(seq) => {
                        self.last_error = Some(format!("reading {seq} cannot be encoded"));
                        rest = rest.get(1..).unwrap_or_default();
                    }
                }
            }
        }

        while self.batches.len() < limits.max_in_flight {
            let readings: Vec<Reading> = self
                .outbox
                .values()
                .filter(|e| e.batch.is_none())
                .take(limits.max_batch)
                .map(|e| e.reading)
                .collect();
            if readings.is_empty() {
                break;
            }
            match encode_prefix(&readings, buf) {
                Ok((sent, payload)) => {
                    let id = self.next_batch;
                    self.next_batch += 1;
                    let seqs: Vec<u32> = readings.iter().take(sent).map(|r| r.seq).collect();
                    for seq in &seqs {
                        if let Some(entry) = self.outbox.get_mut(seq) {
                            entry.batch = Some(id);
                            entry.first_sent.get_or_insert(now);
                            entry.sends += 1;
                            if entry.sends > 1 {
                                self.resent += 1;
                            }
                        }
                    }
                    self.batches.insert(
                        id,
                        Batch {
                            seqs,
                            deadline: now + limits.resend(self.resend_doublings),
                        },
                    );
                    self.publishes += 1;
                    actions.push(Action::Readings(payload));
                }
                Err(seq) => {
                    // Cannot happen for readings built from `protocol` types (one reading is
                    // far below MAX_PAYLOAD); dropping it keeps the outbox from jamming.
                    error!(seq, "reading cannot be encoded; dropped");
                    self.outbox.remove(&seq);
                    self.last_error = Some(format!("reading {seq} cannot be encoded"));
                }
            }
        }
        let next = self.batches.values().map(|b| b.deadline).min();
        (actions, next)
    }

    /// Forgets batches that are fully settled, and frees the unsettled readings of batches
    /// that waited past their deadline, so they are sent again (and the next batches wait
    /// twice as long: see [`Limits::resend`]).
    fn retire_batches(&mut self, now: Instant) {
        let outbox = &mut self.outbox;
        let mut expired = false;
        self.batches.retain(|&id, batch| {
            let live = batch
                .seqs
                .iter()
                .any(|seq| outbox.get(seq).is_some_and(|e| e.batch == Some(id)));
            if !live {
                return false;
            }
            if batch.deadline > now {
                return true;
            }
            expired = true;
            for seq in &batch.seqs {
                if let Some(entry) = outbox.get_mut(seq)
                    && entry.batch == Some(id)
                {
                    entry.batch = None;
                }
            }
            false
        });
        if expired {
            self.resend_doublings = self.resend_doublings.saturating_add(1).min(16);
        }
    }
}

/// Encodes the longest prefix of `readings` that fits one payload; returns how many readings
/// it holds and the payload, or the seq of a single reading that cannot be encoded at all.
fn encode_prefix(readings: &[Reading], buf: &mut [u8]) -> Result<(usize, Vec<u8>), u32> {
    let mut n = readings.len().min(MAX_BATCH);
    loop {
        let part = readings.get(..n).unwrap_or_default();
        match protocol::encode_batch(part, buf) {
            Ok(len) => return Ok((n, buf.get(..len).unwrap_or_default().to_vec())),
            Err(_) if n > 1 => n /= 2,
            Err(_) => return Err(readings.first().map_or(0, |r| r.seq)),
        }
    }
}

async fn poll_task(
    shared: Arc<Shared>,
    topics: Arc<Topics>,
    client: AsyncClient,
    mut eventloop: EventLoop,
    start: Option<StartGate>,
) {
    if let Some(start) = start {
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => return,
            _ = start => {}
        }
    }
    let id = shared.id.clone();
    let mut backoff = Backoff::new(hash_str(&id));
    let mut failures_in_a_row = 0u32;
    loop {
        let event = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                failures_in_a_row = 0;
                {
                    let mut st = shared.lock();
                    st.connected = true;
                    st.connected_at = Some(Instant::now());
                    st.epoch += 1;
                    st.connects += 1;
                }
                debug!(device = %id, "connected");
                shared.poke();
            }
            Ok(Event::Incoming(Incoming::SubAck(suback))) => {
                let refused = suback
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure));
                {
                    let mut st = shared.lock();
                    if refused {
                        // Readings still go out (the gateway stores them), but acks will not
                        // arrive, so they will be resent until the subscription works.
                        st.last_error = Some("subscription to ack/config refused".into());
                        warn!(device = %id, "broker refused the ack/config subscription");
                    }
                    st.ready_epoch = st.epoch;
                }
                shared.poke();
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                on_publish(&shared, &topics, &publish.topic, &publish.payload);
            }
            Ok(_) => {}
            Err(e) => {
                let (was_connected, stable) = {
                    let mut st = shared.lock();
                    let stable = st
                        .connected_at
                        .is_some_and(|at| at.elapsed() >= STABLE_CONNECTION);
                    let was_connected = std::mem::replace(&mut st.connected, false);
                    st.connected_at = None;
                    st.last_error = Some(e.to_string());
                    (was_connected, stable)
                };
                shared.notify_changed();
                if stable {
                    backoff.reset();
                }
                let delay = backoff.next();
                failures_in_a_row += 1;
                // A lost connection is news; failed attempts are in the stats (last_error) and,
                // for a fleet of thousands against a gateway that is down, would flood the log.
                if was_connected {
                    warn!(device = %id, error = %e, retry_in = ?delay, "connection lost");
                } else {
                    debug!(device = %id, error = %e, attempt = failures_in_a_row, retry_in = ?delay, "connection failed");
                }
                tokio::select! {
                    _ = shared.cancel.cancelled() => break,
                    _ = sleep(delay) => {}
                }
            }
        }
    }
    disconnect(&shared, &client, &mut eventloop).await;
}

/// Sends DISCONNECT (so the broker discards the will) if connected, polling until it is out.
async fn disconnect(shared: &Shared, client: &AsyncClient, eventloop: &mut EventLoop) {
    let was_connected = {
        let mut st = shared.lock();
        std::mem::replace(&mut st.connected, false)
    };
    shared.notify_changed();
    if !was_connected {
        // Polling now would open a new connection just to close it.
        return;
    }
    let deadline = Instant::now() + DISCONNECT_GRACE;
    let mut requested = false;
    loop {
        if !requested {
            requested = client.try_disconnect().is_ok();
        }
        match timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => {
                debug!(device = %shared.id, "disconnected");
                break;
            }
            Ok(Ok(Event::Incoming(Incoming::Publish(publish)))) if requested => {
                debug!(device = %shared.id, topic = %publish.topic, "message while stopping");
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
}

fn on_publish(shared: &Shared, topics: &Topics, topic: &str, payload: &[u8]) {
    if topic == topics.ack {
        match Ack::decode(payload) {
            Ok(ack) => {
                shared.lock().apply_ack(&ack, Instant::now());
                shared.poke();
            }
            Err(e) => {
                shared.lock().bad_messages += 1;
                warn!(device = %shared.id, error = %e, bytes = payload.len(), "ignoring malformed ack");
                shared.notify_changed();
            }
        }
    } else if topic == topics.config {
        match DeviceConfig::decode(payload) {
            Ok(config) => {
                debug!(
                    device = %shared.id,
                    time_ms = config.time_ms,
                    entries = config.schedule.len(),
                    "config received"
                );
                // `decode` checked the kind; one it let through that we do not know is ignored.
                let ask = config.repeat.and_then(|r| {
                    Some(RepeatAsk {
                        id: r.id,
                        kind: Kind::parse(r.kind)?,
                        in_s: r.in_s,
                        received: Instant::now(),
                    })
                });
                if let Some(ask) = ask
                    && shared.lock().accept_repeat(ask)
                {
                    info!(
                        device = %shared.id,
                        kind = ask.kind.as_str(),
                        in_s = ask.in_s,
                        id = ask.id,
                        "repeat measurement requested"
                    );
                    shared.notify_changed();
                }
            }
            Err(e) => {
                shared.lock().bad_messages += 1;
                warn!(device = %shared.id, error = %e, "ignoring malformed config");
            }
        }
    } else {
        debug!(device = %shared.id, topic, "ignoring message on an unexpected topic");
    }
}

async fn uplink_task(shared: Arc<Shared>, topics: Arc<Topics>, client: AsyncClient) {
    let limits = shared.limits;
    let mut setup_epoch = 0u64;
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let battery = 55 + (hash_str(&shared.id) % 46) as u8;
    loop {
        let (actions, next) =
            shared
                .lock()
                .plan(&limits, Instant::now(), &mut setup_epoch, &mut buf);
        if !actions.is_empty() {
            shared.notify_changed();
        }
        for action in actions {
            let sent = async {
                match action {
                    Action::Subscribe => {
                        client
                            .subscribe_many([
                                SubscribeFilter::new(topics.ack.clone(), QoS::AtLeastOnce),
                                SubscribeFilter::new(topics.config.clone(), QoS::AtLeastOnce),
                            ])
                            .await
                    }
                    Action::Status => {
                        let status = Status {
                            online: true,
                            battery: Some(battery),
                            fw: Some(FIRMWARE),
                            rssi: None,
                        };
                        let mut out = [0u8; 128];
                        let len = status.encode(&mut out).unwrap_or(0);
                        let payload = out.get(..len).unwrap_or_default().to_vec();
                        client
                            .publish(topics.status.clone(), QoS::AtLeastOnce, false, payload)
                            .await
                    }
                    Action::Readings(payload) => {
                        client
                            .publish(topics.readings.clone(), QoS::AtLeastOnce, false, payload)
                            .await
                    }
                }
            };
            tokio::select! {
                biased;
                _ = shared.cancel.cancelled() => return,
                result = sent => {
                    if let Err(e) = result {
                        // Only happens once the event loop is gone, i.e. while stopping.
                        info!(device = %shared.id, error = %e, "uplink stopped");
                        return;
                    }
                }
            }
        }
        let deadline = async {
            match next {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => return,
            _ = shared.wake.notified() => {}
            _ = deadline => {}
        }
    }
}

/// Exponential back-off with jitter: each delay is drawn from [d/2, d], d doubling from
/// [`BACKOFF_MIN`] to [`BACKOFF_MAX`].
struct Backoff {
    next: Duration,
    rng: StdRng,
}

impl Backoff {
    fn new(seed: u64) -> Self {
        Backoff {
            next: BACKOFF_MIN,
            rng: StdRng::seed_from_u64(seed ^ rand::random::<u64>()),
        }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(BACKOFF_MAX);
        let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(self.rng.gen_range(millis / 2..=millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ack::SeqRange;
    use protocol::{BloodPressure, MeasurementStatus, PressureUnit};

    fn reading(seq: u32) -> Reading {
        Reading {
            seq,
            ts_ms: 1_763_798_400_000,
            clock_unset: false,
            status: MeasurementStatus::default(),
            sensor: 0,
            measurement: Measurement::BloodPressure(BloodPressure {
                systolic: 130.0,
                diastolic: 80.0,
                mean: Some(97.0),
                pulse: Some(70.0),
                unit: PressureUnit::MmHg,
            }),
        }
    }

    fn ready_state(spec: &DeviceSpec) -> (State, u64) {
        let mut st = State::new(spec);
        st.connected = true;
        st.epoch = 1;
        st.ready_epoch = 1;
        (st, 1)
    }

    fn count_readings(actions: &[Action]) -> usize {
        actions
            .iter()
            .map(|a| match a {
                Action::Readings(p) => protocol::decode_batch(p).map_or(0, |b| b.len()),
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn plan_fills_the_window_in_seq_order_and_resends_after_deadline() {
        let mut spec = DeviceSpec::new("d", "s", "h:1");
        spec.max_batch = 3;
        spec.max_in_flight = 2;
        let limits = Limits::new(&spec);
        let (mut st, mut setup) = ready_state(&spec);
        for seq in [5, 1, 2, 3, 4, 6, 7, 8] {
            st.add(reading(seq));
        }
        let mut buf = vec![0; MAX_PAYLOAD];
        let t0 = Instant::now();
        let (actions, next) = st.plan(&limits, t0, &mut setup, &mut buf);
        assert_eq!(actions.len(), 2);
        assert_eq!(count_readings(&actions), 6);
        let Action::Readings(first) = &actions[0] else {
            panic!("expected readings")
        };
        let seqs: Vec<u32> = protocol::decode_batch(first)
            .unwrap()
            .iter()
            .map(|r| r.unwrap().seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(next, Some(t0 + spec.resend_after));

        // Window full: nothing more until an ack or the deadline.
        let (actions, _) = st.plan(&limits, t0, &mut setup, &mut buf);
        assert!(actions.is_empty());

        // Ack the first batch partly (1..=2) and reject 3: the window opens for 7, 8.
        let mut ack = Ack::default();
        ack.committed.push(SeqRange(1, 2)).unwrap();
        ack.rejected.push(SeqRange(3, 3)).unwrap();
        st.apply_ack(&ack, t0);
        let (actions, _) = st.plan(&limits, t0, &mut setup, &mut buf);
        assert_eq!(count_readings(&actions), 2);
        assert_eq!(st.committed.to_vec(), [1, 2]);
        assert_eq!(st.rejected.to_vec(), [3]);

        // After the deadline, both unacked batches go again.
        let later = t0 + spec.resend_after + Duration::from_millis(1);
        let (actions, next) = st.plan(&limits, later, &mut setup, &mut buf);
        assert_eq!(count_readings(&actions), 5);
        assert_eq!(st.resent, 5);
        // No ack came in time: the resent batches wait twice as long.
        assert_eq!(next, Some(later + 2 * spec.resend_after));
        // An ack brings the first timeout back.
        let mut ack = Ack::default();
        ack.committed.push(SeqRange(4, 8)).unwrap();
        st.apply_ack(&ack, later);
        st.add(reading(9));
        let (actions, next) = st.plan(&limits, later, &mut setup, &mut buf);
        assert_eq!(count_readings(&actions), 1);
        assert_eq!(next, Some(later + spec.resend_after));
        assert_eq!(
            limits.resend(10),
            MAX_RESEND_AFTER,
            "the timeout stops doubling at its cap"
        );
    }

    #[test]
    fn reconnection_resends_everything_in_flight() {
        let spec = DeviceSpec::new("d", "s", "h:1");
        let limits = Limits::new(&spec);
        let (mut st, mut setup) = ready_state(&spec);
        for seq in 1..=10 {
            st.add(reading(seq));
        }
        let mut buf = vec![0; MAX_PAYLOAD];
        let now = Instant::now();
        let (actions, _) = st.plan(&limits, now, &mut setup, &mut buf);
        assert_eq!(count_readings(&actions), 10);
        st.epoch = 2;
        let (actions, _) = st.plan(&limits, now, &mut setup, &mut buf);
        assert!(matches!(actions[..], [Action::Subscribe, Action::Status]));
        let (actions, _) = st.plan(&limits, now, &mut setup, &mut buf);
        assert!(actions.is_empty(), "waits for the SUBACK");
        st.ready_epoch = 2;
        let (actions, _) = st.plan(&limits, now, &mut setup, &mut buf);
        assert_eq!(count_readings(&actions), 10);
    }

    #[test]
    fn garbage_ranges_are_harmless() {
        let spec = DeviceSpec::new("d", "s", "h:1");
        let (mut st, _) = ready_state(&spec);
        st.add(reading(7));
        let mut ack = Ack::default();
        ack.committed.push(SeqRange(9, 2)).unwrap();
        ack.committed.push(SeqRange(100, u32::MAX)).unwrap();
        ack.rejected.push(SeqRange(0, u32::MAX)).unwrap();
        st.apply_ack(&ack, Instant::now());
        assert!(st.outbox.is_empty());
        assert_eq!(st.rejected.to_vec(), [7]);
        assert_eq!(st.committed.len(), 0);
    }

    #[test]
    fn repeat_requests_are_accepted_once_per_id_and_bounded() {
        let spec = DeviceSpec::new("d", "s", "h:1");
        let (mut st, _) = ready_state(&spec);
        let ask = |id| RepeatAsk {
            id,
            kind: protocol::Kind::Spo2,
            in_s: 300,
            received: Instant::now(),
        };
        assert!(st.accept_repeat(ask(1)));
        assert!(!st.accept_repeat(ask(1)), "the same id again");
        assert_eq!(st.repeats.len(), 1);
        for id in 2..=20 {
            assert!(st.accept_repeat(ask(id)));
        }
        assert_eq!(st.repeats.len(), REPEATS_QUEUED);
        assert_eq!(st.repeat_ids.len(), REPEAT_IDS_KEPT);
        assert!(!st.accept_repeat(ask(20)));
        assert_eq!(st.stats().repeats_requested, 20);
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(1);
        let delays: Vec<Duration> = (0..12).map(|_| b.next()).collect();
        assert!(delays[0] >= BACKOFF_MIN / 2 && delays[0] <= BACKOFF_MIN);
        assert!(delays.iter().all(|d| *d <= BACKOFF_MAX));
        assert!(delays[11] >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.next() <= BACKOFF_MIN);
    }

    #[test]
    fn bad_id_or_broker_reports_instead_of_panicking() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for (id, broker) in [("a/b", "127.0.0.1:1"), ("ok", "no-port"), ("ok", "h:99999")] {
                let d = spawn(DeviceSpec::new(id, "s", broker), CancellationToken::new());
                let err = d
                    .wait_connected(Duration::from_millis(20))
                    .await
                    .unwrap_err();
                assert!(d.stats().last_error.is_some(), "{id} {broker}: {err}");
                d.stop().await;
            }
        });
    }
}
