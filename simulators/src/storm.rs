//! The reconnection storm: many devices, each holding a backlog, connect at once.
//!
//! Every device is started with [`device::spawn_when`], so it does not connect; it measures
//! `backlog` readings (dated one minute apart, ending now) into its outbox, like a home device
//! that was out of coverage. Then every device is let go, within `spread` (0: all at the same
//! instant; otherwise device *i* of *n* at `spread × i / n`). The run reports how long until
//! every device connected and until every backlog was committed and acked, the gateway's
//! peak RSS and CPU, the simulator's own memory and descriptors, and what the kernel dropped
//! from listen queues while it happened; then it reads the store like [`crate::chaos`].
//!
//! A tokio listener has a backlog of 1,024 (capped by `net.core.somaxconn`): when more
//! connections arrive at once than the gateway accepts, the kernel drops the SYNs
//! (`ListenOverflows`), and the devices' TCP stacks send them again after 1 s, 3 s, … .
//! Nothing is lost that way, it only takes longer; `spread` shows whether pacing helps.

use std::fmt;
use std::time::Duration;

use anyhow::{anyhow, bail};
use hdrhistogram::Histogram;
use protocol::{Kind, MealContext};
use serde::Serialize;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bench::LatencySummary;
use crate::chaos::{
    GenLog, Monitor, ReadyProbe, TimelineEntry, Totals, device_model, pick_devices, write_procs,
    write_store, write_verdict,
};
use crate::device::{self, DeviceSpec};
use crate::fleet::{FleetFile, stop_all};
use crate::observe::{GatewayPid, ListenCounters, ProcSample, ProcSummary, ProcWatch};
use crate::schedule::now_ms;
use crate::verify::{DeviceRecord, StoreCheck, check_store};

/// How often the storm looks at the devices.
const TICK: Duration = Duration::from_millis(100);
/// Backlog readings are dated this far apart.
const BACKLOG_STEP_MS: i64 = 60_000;

/// How [`run_storm`] loads the gateway.
#[derive(Debug, Clone)]
pub struct StormOptions {
    /// How many of the fleet's devices to use (all when `None`).
    pub devices: Option<usize>,
    /// Readings each device holds before it connects.
    pub backlog: usize,
    /// Connections are let go over this long (0: all at once).
    pub spread: Duration,
    /// Longest wait for every backlog to be acked.
    pub timeout: Duration,
    /// A batch not acked within this time is sent again.
    pub resend_after: Duration,
    /// The gateway process, to sample its memory and CPU.
    pub gateway: GatewayPid,
    /// The gateway's API, `host:port`, to probe `/readyz` each second.
    pub api: Option<String>,
    /// The store the gateway writes to, read directly at the end.
    pub database_url: String,
    /// Seed for the generated values.
    pub seed: u64,
    /// First seq of every device (see `fleet::SeqFloor`).
    pub first_seq: u32,
    /// Connect with passwords over plain TCP even where the fleet has certificates.
    pub plain: bool,
}

impl Default for StormOptions {
    fn default() -> Self {
        StormOptions {
            devices: None,
            backlog: 20,
            spread: Duration::ZERO,
            timeout: Duration::from_secs(300),
            resend_after: device::DEFAULT_RESEND_AFTER,
            gateway: GatewayPid::None,
            api: None,
            database_url: String::new(),
            seed: 1,
            first_seq: 1,
            plain: false,
        }
    }
}

/// Seconds from the go to a share of the devices, or of the readings.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Milestones {
    /// Half.
    pub p50_secs: Option<f64>,
    /// 99 %.
    pub p99_secs: Option<f64>,
    /// All.
    pub all_secs: Option<f64>,
}

/// The result of a storm.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    /// Devices.
    pub devices: usize,
    /// Readings each held before connecting.
    pub backlog: usize,
    /// Connections let go over this long, seconds.
    pub spread_secs: f64,
    /// Devices that connected over mutual TLS (their certificate as the credential); the
    /// rest connected over plain TCP with a password.
    pub tls_devices: usize,
    /// Readings generated (devices × backlog).
    pub generated: u64,
    /// Readings acked as committed.
    pub acked: u64,
    /// From the go until devices had connected (CONNACK, first time), seconds.
    pub connected: Milestones,
    /// From the go until readings were acked as committed, seconds.
    pub acked_at: Milestones,
    /// Whether everything was acked before the timeout.
    pub completed: bool,
    /// Successful connections, all devices.
    pub connects: u64,
    /// Devices that needed more than one connection.
    pub reconnected_devices: usize,
    /// Readings published again (after a reconnection or a missing ack).
    pub resent: u64,
    /// Readings messages published.
    pub publishes: u64,
    /// Publish→ack latency of every reading.
    pub latency: LatencySummary,
    /// What the kernel dropped from listen queues during the storm (system-wide: the
    /// gateway's internal broker listener counts too).
    pub listen: ListenCounters,
    /// The simulator with every backlog built, before connecting.
    pub simulator_before_connect: Option<ProcSample>,
    /// The gateway's peaks.
    pub gateway: Option<ProcSummary>,
    /// The simulator's peaks.
    pub simulator: ProcSummary,
    /// The store compared with what the devices generated.
    pub store: StoreCheck,
    /// Devices that needed several connections or never settled (up to 20), with their last
    /// error.
    pub problems: Vec<String>,
    /// One past the highest seq used.
    pub next_seq: u32,
    /// What went wrong; empty if nothing was lost, duplicated or left pending.
    pub failures: Vec<String>,
    /// Every `/readyz` probe.
    pub readyz: Vec<ReadyProbe>,
    /// One entry a second.
    pub timeline: Vec<TimelineEntry>,
}

impl StormReport {
    /// Nothing lost, nothing twice, nothing pending.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs the storm with `fleet`'s devices against the gateway at `broker`.
pub async fn run_storm(
    fleet: &FleetFile,
    broker: &str,
    opts: &StormOptions,
    cancel: CancellationToken,
) -> anyhow::Result<StormReport> {
    let chosen = pick_devices(fleet, opts.devices)?;
    if opts.backlog == 0 {
        bail!("a storm needs a backlog of at least one reading");
    }
    let n = chosen.len();
    let go = CancellationToken::new();
    let devices_cancel = CancellationToken::new();
    let base_ms = now_ms();
    let mut handles = Vec::with_capacity(n);
    let mut logs = Vec::with_capacity(n);
    let mut tls_devices = 0;
    for (i, d) in chosen.iter().enumerate() {
        let mut spec = DeviceSpec::new(&d.id, &d.secret, broker);
        spec.resend_after = opts.resend_after;
        spec.first_seq = opts.first_seq;
        spec.history = 0;
        if !opts.plain {
            spec.tls = d.tls.clone();
        }
        tls_devices += usize::from(spec.tls.is_some());
        let delay = opts.spread.mul_f64(i as f64 / n as f64);
        let gate = go.clone();
        let handle = device::spawn_when(spec, devices_cancel.clone(), async move {
            gate.cancelled().await;
            tokio::time::sleep(delay).await;
        });
        let (kind, mut patient) = device_model(d, opts.seed)?;
        let meal = (kind == Kind::Glucose).then_some(MealContext::Casual);
        let log = GenLog::default();
        for k in 0..opts.backlog {
            let back = i64::try_from(opts.backlog - 1 - k).unwrap_or(0);
            let ts = base_ms - back * BACKLOG_STEP_MS;
            let seq = handle.record(patient.measure(kind, ts, meal), ts);
            log.push(seq, ts);
        }
        handles.push(handle);
        logs.push(log);
    }
    let generated = (n * opts.backlog) as u64;
    // Let the spawned (idle) tasks settle before measuring the simulator.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let simulator_before_connect = ProcWatch::myself().sample();
    info!(
        devices = n,
        backlog = opts.backlog,
        spread = %humantime::format_duration(opts.spread),
        rss_mib = simulator_before_connect.map(|s| s.rss_kib / 1024),
        "backlogs built; letting every device connect"
    );

    let mut monitor = Monitor::start(opts.gateway.clone(), opts.api.clone());
    let listen_before = ListenCounters::read();
    let t0 = Instant::now();
    go.cancel();

    let mut connected = Milestones::default();
    let mut acked_at = Milestones::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deadline = t0 + opts.timeout;
    let mut completed = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = sleep_until(deadline) => break,
            _ = tick.tick() => {}
        }
        let totals = Totals::of(&handles);
        monitor.maybe_sample(&totals);
        let secs = t0.elapsed().as_secs_f64();
        let mark = |m: &mut Milestones, have: u64, of: u64| {
            if m.p50_secs.is_none() && have * 2 >= of {
                m.p50_secs = Some(secs);
            }
            if m.p99_secs.is_none() && have * 100 >= of * 99 {
                m.p99_secs = Some(secs);
            }
            if m.all_secs.is_none() && have >= of {
                m.all_secs = Some(secs);
            }
        };
        mark(&mut connected, totals.ever_connected as u64, n as u64);
        mark(&mut acked_at, totals.committed, generated);
        if totals.pending == 0 {
            completed = true;
            break;
        }
    }
    let listen = ListenCounters::read().since(listen_before);
    if !completed {
        let totals = Totals::of(&handles);
        warn!(
            pending = totals.pending,
            devices = totals.pending_devices,
            never_connected = n - totals.ever_connected,
            "the storm did not settle in time"
        );
    }
    info!(
        all_connected_s = connected.all_secs,
        all_acked_s = acked_at.all_secs,
        listen_overflows = listen.listen_overflows,
        "storm over"
    );

    let mut latencies = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| anyhow!("latency histogram: {e:?}"))?;
    let mut records = Vec::with_capacity(n);
    let mut problems = Vec::new();
    let (mut acked, mut connects, mut reconnected, mut resent, mut publishes, mut next_seq) =
        (0, 0, 0, 0, 0, 0);
    for ((handle, d), log) in handles.iter().zip(chosen).zip(&logs) {
        let stats = handle.stats();
        latencies
            .add(handle.latencies())
            .map_err(|e| anyhow!("merging latencies: {e:?}"))?;
        acked += stats.committed;
        connects += stats.connects;
        resent += stats.resent;
        publishes += stats.publishes;
        next_seq = next_seq.max(stats.next_seq);
        if stats.connects > 1 {
            reconnected += 1;
        }
        if (stats.connects != 1 || stats.pending > 0) && problems.len() < 20 {
            problems.push(format!(
                "{}: {} connections, {} pending, last error: {}",
                d.id,
                stats.connects,
                stats.pending,
                stats.last_error.as_deref().unwrap_or("none")
            ));
        }
        records.push(DeviceRecord {
            id: d.id.clone(),
            patient_code: d.patient_code.clone(),
            generated: log.seqs(),
            committed: handle.committed(),
            rejected: handle.rejected(),
            pending: handle.pending_seqs(),
        });
    }
    devices_cancel.cancel();
    stop_all(handles).await;
    let (gateway, simulator, timeline, readyz) = monitor.finish().await;

    info!("verifying the store");
    let store = check_store(&opts.database_url, &records, opts.first_seq).await?;
    let mut failures = store.failures();
    if !completed {
        failures.push(format!(
            "not every backlog was acked within {}",
            humantime::format_duration(opts.timeout)
        ));
    }
    Ok(StormReport {
        devices: n,
        backlog: opts.backlog,
        spread_secs: opts.spread.as_secs_f64(),
        tls_devices,
        generated,
        acked,
        connected,
        acked_at,
        completed,
        connects,
        reconnected_devices: reconnected,
        resent,
        publishes,
        latency: LatencySummary::from_micros(&latencies),
        listen,
        simulator_before_connect,
        gateway,
        simulator,
        store,
        problems,
        next_seq,
        failures,
        readyz,
        timeline,
    })
}

impl fmt::Display for StormReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |v: Option<f64>| v.map_or("never".to_owned(), |v| format!("{v:.1} s"));
        writeln!(
            f,
            "storm        {} devices × {} readings = {} held before connecting, let go within {:.1} s; {}",
            self.devices,
            self.backlog,
            self.generated,
            self.spread_secs,
            match self.tls_devices {
                0 => "plain TCP, passwords".to_owned(),
                t if t == self.devices => "mutual TLS, device certificates".to_owned(),
                t => format!("{t} over mutual TLS, the rest plain TCP"),
            }
        )?;
        writeln!(
            f,
            "connected    half {}, 99 % {}, all {} after the go ({} connections, {} devices needed more than one)",
            s(self.connected.p50_secs),
            s(self.connected.p99_secs),
            s(self.connected.all_secs),
            self.connects,
            self.reconnected_devices
        )?;
        writeln!(
            f,
            "acked        half {}, 99 % {}, all {} after the go ({} of {} acked, {} messages, {} resent)",
            s(self.acked_at.p50_secs),
            s(self.acked_at.p99_secs),
            s(self.acked_at.all_secs),
            self.acked,
            self.generated,
            self.publishes,
            self.resent
        )?;
        let l = &self.latency;
        writeln!(
            f,
            "ack latency  p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
        )?;
        writeln!(
            f,
            "kernel       {} listen-queue overflows, {} listen drops, {} SYN-queue-full drops during the storm (system-wide)",
            self.listen.listen_overflows,
            self.listen.listen_drops,
            self.listen.syn_queue_full_drops
        )?;
        if let Some(b) = &self.simulator_before_connect {
            writeln!(
                f,
                "backlogs     simulator at {:.1} MiB RSS, {} fds with every backlog built",
                b.rss_kib as f64 / 1024.0,
                b.fds
            )?;
        }
        write_procs(f, self.gateway.as_ref(), &self.simulator)?;
        write_store(f, &self.store)?;
        for p in &self.problems {
            writeln!(f, "  device: {p}")?;
        }
        write_verdict(f, &self.failures)
    }
}
