//! Reliability runs: "nothing lost, nothing twice" while the gateway is hurt.
//!
//! [`run_chaos`] drives a fleet at a steady rate (every device measures every `interval`) for
//! `duration`, while a script outside kills the gateway, stops it or stops its database. The
//! run records every seq each device generated; afterwards it waits (bounded) for every outbox
//! to drain, stops the devices and reads the store directly ([`crate::verify`]): readings
//! generated, stored, duplicated, lost, acked but not stored, and still pending.
//!
//! The script tells the run when the fault happened through a fault file (`start=<unix ms>`,
//! then `end=<unix ms>` once the fault is lifted; see [`FaultTimes`]). **Recovery** is the first
//! moment after the fault at which every device is connected again and every reading generated
//! up to the end of the fault has been committed and acknowledged; it is checked every
//! 200 ms and reported from the fault's start and from its end.
//!
//! Each second the run samples the gateway (`/proc/<pid>`: RSS, CPU, descriptors; the pid may
//! come from a file, so a restarted gateway is followed), the simulator itself, and, given the
//! API address, the gateway's `/readyz`. The per-second timeline is in the JSON report.
//!
//! The storm (many devices with a backlog connecting at once) is [`crate::storm`].

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail};
use hdrhistogram::Histogram;
use protocol::{Kind, MealContext};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bench::LatencySummary;
use crate::device::{self, DeviceHandle, DeviceSpec};
use crate::fleet::{FleetDevice, FleetFile, stop_all};
use crate::observe::{
    FaultTimes, GatewayPid, ListenCounters, ProcSample, ProcSummary, ProcWatch, probe_readyz,
};
use crate::physiology::{Condition, Patient, hash_str, mix};
use crate::schedule::now_ms;
use crate::verify::{DeviceRecord, StoreCheck, check_store};

/// How often the run looks at the devices (recovery resolution).
const TICK: Duration = Duration::from_millis(200);
/// How often the processes are sampled and a timeline entry is written.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for one `/readyz` answer (the store health check may hang while the database
/// is down).
const READYZ_WAIT: Duration = Duration::from_secs(10);
/// Descriptors the simulator needs besides one per device.
const FD_HEADROOM: u64 = 256;

/// How [`run_chaos`] loads the gateway and what it watches.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// How many of the fleet's devices to use (all when `None`).
    pub devices: Option<usize>,
    /// Every device measures once per `interval` (phases spread evenly over the fleet).
    pub interval: Duration,
    /// How long readings are generated.
    pub duration: Duration,
    /// Longest wait for the outboxes to drain after generation.
    pub drain: Duration,
    /// Longest wait for every device to connect before generation starts.
    pub connect_timeout: Duration,
    /// A batch not acked within this time is sent again.
    pub resend_after: Duration,
    /// The gateway process, to sample its memory and CPU.
    pub gateway: GatewayPid,
    /// The fault file written by the script that injects the fault.
    pub fault_file: Option<PathBuf>,
    /// The gateway's API, `host:port`, to probe `/readyz` each second.
    pub api: Option<String>,
    /// The store the gateway writes to, read directly at the end.
    pub database_url: String,
    /// Seed for the generated values.
    pub seed: u64,
    /// First seq of every device (see `fleet::SeqFloor`).
    pub first_seq: u32,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        ChaosOptions {
            devices: None,
            interval: Duration::from_secs(1),
            duration: Duration::from_secs(120),
            drain: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(60),
            resend_after: device::DEFAULT_RESEND_AFTER,
            gateway: GatewayPid::None,
            fault_file: None,
            api: None,
            database_url: String::new(),
            seed: 1,
            first_seq: 1,
        }
    }
}

/// One second of a run.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    /// Seconds since the run started.
    pub t_s: f64,
    /// Wall clock, unix ms.
    pub unix_ms: i64,
    /// Readings generated so far.
    pub generated: u64,
    /// Readings acked as committed so far.
    pub committed: u64,
    /// Readings in outboxes now.
    pub pending: u64,
    /// Devices connected (and subscribed) now.
    pub connected: usize,
    /// The gateway process, if it is there.
    pub gateway: Option<ProcSample>,
    /// The simulator process.
    pub simulator: Option<ProcSample>,
    /// The latest `/readyz` status (`None`: no answer or not probed).
    pub readyz: Option<u16>,
}

/// One `/readyz` probe.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ReadyProbe {
    /// When the probe was sent, unix ms.
    pub unix_ms: i64,
    /// How long the answer took, ms.
    pub took_ms: u64,
    /// The HTTP status, `None` without an answer.
    pub status: Option<u16>,
}

/// The fault as the run saw it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultReport {
    /// When it was injected and lifted, unix ms.
    pub times: FaultTimes,
    /// `end - start`, seconds.
    pub fault_secs: Option<f64>,
    /// When the fleet had recovered (every device connected, every reading generated up to
    /// the end of the fault acked as committed), unix ms.
    pub recovered_ms: Option<i64>,
    /// From the fault's start to recovery, seconds.
    pub recovery_from_start_secs: Option<f64>,
    /// From the fault's end to recovery, seconds.
    pub recovery_from_end_secs: Option<f64>,
    /// Readings generated up to the end of the fault that recovery waited for.
    pub readings_due: u64,
    /// `/readyz` answers while the fault lasted: `"200"`, `"503"`, `"none"` (no answer) → count.
    pub readyz_during: std::collections::BTreeMap<String, u64>,
    /// From the fault's end to the first `/readyz` 200, seconds.
    pub ready_after_end_secs: Option<f64>,
    /// The gateway's largest sampled RSS while the fault lasted, MiB.
    pub gateway_peak_rss_during_mib: Option<f64>,
}

/// The result of a chaos run.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    /// Devices started.
    pub devices: usize,
    /// Devices connected when generation started.
    pub connected_at_start: usize,
    /// Each device measured every this many ms.
    pub interval_ms: u64,
    /// `devices / interval`: the offered load, readings/s.
    pub target_rate: f64,
    /// How long readings were generated, seconds.
    pub generating_secs: f64,
    /// How long the outboxes took to drain after generation, seconds.
    pub drain_secs: f64,
    /// The whole run, connection to verification, seconds.
    pub wall_secs: f64,
    /// Readings generated.
    pub generated: u64,
    /// Readings the gateway acked as committed.
    pub acked: u64,
    /// Readings messages published (batches, resends included).
    pub publishes: u64,
    /// Readings published again (after a reconnection or a missing ack).
    pub resent: u64,
    /// Successful connections, all devices (the first one included).
    pub connects: u64,
    /// Publish→ack latency of every acked reading.
    pub latency: LatencySummary,
    /// What the kernel dropped from listen queues during the run (system-wide: the gateway's
    /// internal broker listener counts too).
    pub listen: ListenCounters,
    /// The fault, if one was reported in the fault file.
    pub fault: Option<FaultReport>,
    /// The gateway's peaks (all its pids).
    pub gateway: Option<ProcSummary>,
    /// The simulator's own peaks.
    pub simulator: ProcSummary,
    /// The store compared with what the devices generated.
    pub store: StoreCheck,
    /// Devices left with pending readings (up to 20): id, pending, connects, last error.
    pub problems: Vec<String>,
    /// One past the highest seq used: the next run's first seq.
    pub next_seq: u32,
    /// What went wrong; empty if nothing was lost, duplicated or left pending.
    pub failures: Vec<String>,
    /// Every `/readyz` probe.
    pub readyz: Vec<ReadyProbe>,
    /// One entry a second.
    pub timeline: Vec<TimelineEntry>,
}

impl ChaosReport {
    /// Nothing lost, nothing twice, nothing pending.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs the chaos load with `fleet`'s devices against the gateway at `broker`.
pub async fn run_chaos(
    fleet: &FleetFile,
    broker: &str,
    opts: &ChaosOptions,
    cancel: CancellationToken,
) -> anyhow::Result<ChaosReport> {
    let started = Instant::now();
    let chosen = pick_devices(fleet, opts.devices)?;
    let interval = opts.interval.max(Duration::from_millis(1));

    let devices_cancel = CancellationToken::new();
    let mut handles = Vec::with_capacity(chosen.len());
    for d in chosen {
        let mut spec = DeviceSpec::new(&d.id, &d.secret, broker);
        spec.resend_after = opts.resend_after;
        spec.first_seq = opts.first_seq;
        spec.history = 0;
        handles.push(device::spawn(spec, devices_cancel.clone()));
    }
    let mut monitor = Monitor::start(opts.gateway.clone(), opts.api.clone());
    let listen_before = ListenCounters::read();

    info!(devices = handles.len(), broker, "connecting");
    let connected_at_start = wait_all_connected(&handles, opts.connect_timeout, &cancel).await;
    if connected_at_start < handles.len() {
        warn!(
            not_connected = handles.len() - connected_at_start,
            "some devices did not connect in time; generation starts anyway (their readings \
             wait in their outboxes)"
        );
    }
    if connected_at_start == 0 {
        let last_error = handles.first().and_then(|h| h.stats().last_error);
        devices_cancel.cancel();
        stop_all(handles).await;
        monitor.finish().await;
        bail!(
            "no device connected to {broker} (last error: {})",
            last_error.as_deref().unwrap_or("none")
        );
    }

    // Feeders: one per device, phases spread evenly over one interval.
    let gen_start = Instant::now() + Duration::from_millis(100);
    let gen_end = gen_start + opts.duration;
    let logs: Vec<GenLog> = handles.iter().map(|_| GenLog::default()).collect();
    let mut feeding = JoinSet::new();
    let n = handles.len() as u32;
    for (i, (handle, d)) in handles.iter().zip(chosen).enumerate() {
        let (kind, patient) = device_model(d, opts.seed)?;
        let phase = interval.mul_f64(f64::from(i as u32) / f64::from(n));
        feeding.spawn(feed(
            handle.clone(),
            patient,
            kind,
            gen_start + phase,
            interval,
            gen_end,
            logs[i].clone(),
            cancel.clone(),
        ));
    }
    info!(
        devices = handles.len(),
        rate = handles.len() as f64 / interval.as_secs_f64(),
        duration = %humantime::format_duration(opts.duration),
        "generating"
    );

    // Watch until generation ends and the outboxes drain (bounded).
    let mut recovery = Recovery::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut drain_deadline = None;
    let mut drained_at = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled(), if drain_deadline.is_none() => {}
        }
        let now = Instant::now();
        let totals = Totals::of(&handles);
        if let Some(file) = &opts.fault_file {
            recovery.observe(FaultTimes::read(file), &handles, &logs, &totals);
        }
        monitor.maybe_sample(&totals);
        match drain_deadline {
            None if now >= gen_end || cancel.is_cancelled() => {
                while feeding.join_next().await.is_some() {}
                let drain = if cancel.is_cancelled() {
                    opts.drain.min(Duration::from_secs(5))
                } else {
                    opts.drain
                };
                info!(drain = %humantime::format_duration(drain), "generation over, draining");
                drain_deadline = Some((Instant::now(), Instant::now() + drain));
            }
            None => {}
            Some((drain_start, deadline)) => {
                let totals = Totals::of(&handles);
                if totals.pending == 0 {
                    drained_at = Some(now.duration_since(drain_start));
                    break;
                }
                if now >= deadline {
                    warn!(
                        pending = totals.pending,
                        devices = totals.pending_devices,
                        "outboxes not drained in time"
                    );
                    break;
                }
            }
        }
    }
    let generating_secs = gen_end
        .min(drain_deadline.map_or(gen_end, |(s, _)| s))
        .saturating_duration_since(gen_start)
        .as_secs_f64();
    let drain_secs = drained_at
        .or_else(|| drain_deadline.map(|(s, _)| s.elapsed()))
        .unwrap_or_default()
        .as_secs_f64();
    // A last look at the fault, if recovery came with the very last acks.
    let totals = Totals::of(&handles);
    if let Some(file) = &opts.fault_file {
        recovery.observe(FaultTimes::read(file), &handles, &logs, &totals);
    }

    // Freeze what the devices know, then stop them.
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| anyhow!("latency histogram: {e:?}"))?;
    let mut records = Vec::with_capacity(handles.len());
    let mut problems = Vec::new();
    let mut report_totals = (0u64, 0u64, 0u64, 0u64, 0u32);
    for ((handle, d), log) in handles.iter().zip(chosen).zip(&logs) {
        let stats = handle.stats();
        latencies
            .add(handle.latencies())
            .map_err(|e| anyhow!("merging latencies: {e:?}"))?;
        report_totals.0 += stats.committed;
        report_totals.1 += stats.publishes;
        report_totals.2 += stats.resent;
        report_totals.3 += stats.connects;
        report_totals.4 = report_totals.4.max(stats.next_seq);
        if stats.pending > 0 && problems.len() < 20 {
            problems.push(format!(
                "{}: {} pending, {} connections, last error: {}",
                d.id,
                stats.pending,
                stats.connects,
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
    let fault = opts
        .fault_file
        .as_ref()
        .filter(|_| recovery.times.start_ms.is_some())
        .map(|_| recovery.report(&timeline, &readyz));
    let listen = ListenCounters::read().since(listen_before);
    let mut failures = store.failures();
    if let Some(f) = &fault
        && f.recovered_ms.is_none()
    {
        failures.push("the fleet never recovered from the fault".into());
    }

    let generated = records.iter().map(|r| r.generated.len() as u64).sum();
    Ok(ChaosReport {
        devices: records.len(),
        connected_at_start,
        interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        target_rate: records.len() as f64 / interval.as_secs_f64(),
        generating_secs,
        drain_secs,
        wall_secs: started.elapsed().as_secs_f64(),
        generated,
        acked: report_totals.0,
        publishes: report_totals.1,
        resent: report_totals.2,
        connects: report_totals.3,
        latency: LatencySummary::from_micros(&latencies),
        listen,
        fault,
        gateway,
        simulator,
        store,
        problems,
        next_seq: report_totals.4,
        failures,
        readyz,
        timeline,
    })
}

/// The first `wanted` devices of the fleet (all by default); checks that this process may open
/// a descriptor per device.
pub(crate) fn pick_devices(
    fleet: &FleetFile,
    wanted: Option<usize>,
) -> anyhow::Result<&[FleetDevice]> {
    let wanted = wanted.unwrap_or(fleet.devices.len());
    if wanted == 0 || wanted > fleet.devices.len() {
        bail!(
            "asked for {wanted} devices, the fleet has {}",
            fleet.devices.len()
        );
    }
    if let Some(limit) = crate::observe::open_files_limit()
        && (wanted as u64) + FD_HEADROOM > limit
    {
        bail!(
            "{wanted} devices need about {} open files and this process may open {limit}: \
             raise the limit first (`ulimit -n`)",
            wanted as u64 + FD_HEADROOM
        );
    }
    Ok(fleet.devices.get(..wanted).unwrap_or_default())
}

/// A device's kind and its virtual patient.
pub(crate) fn device_model(d: &FleetDevice, seed: u64) -> anyhow::Result<(Kind, Patient)> {
    let kind = Kind::parse(&d.kind)
        .ok_or_else(|| anyhow!("device {}: unknown kind {:?}", d.id, d.kind))?;
    let conditions: Vec<Condition> = d
        .conditions
        .iter()
        .filter_map(|c| Condition::parse(c))
        .collect();
    Ok((
        kind,
        Patient::new(mix(seed, hash_str(&d.patient_code)), &conditions),
    ))
}

/// Waits (bounded in all) for every device to connect; returns how many did.
pub(crate) async fn wait_all_connected(
    handles: &[DeviceHandle],
    timeout: Duration,
    cancel: &CancellationToken,
) -> usize {
    let deadline = Instant::now() + timeout;
    let mut connected = 0;
    for handle in handles {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = cancel.cancelled() => break,
            result = handle.wait_connected(left) => {
                if result.is_ok() {
                    connected += 1;
                }
            }
        }
    }
    connected
}

/// Every (seq, generation time in unix ms) of one device, shared by its feeder and the
/// recovery check.
#[derive(Debug, Clone, Default)]
pub(crate) struct GenLog(Arc<Mutex<Vec<(u32, i64)>>>);

impl GenLog {
    pub(crate) fn push(&self, seq: u32, at_ms: i64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((seq, at_ms));
    }

    /// Every seq generated.
    pub(crate) fn seqs(&self) -> Vec<u32> {
        let log = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        log.iter().map(|&(seq, _)| seq).collect()
    }

    /// The highest seq generated at or before `ms`, and how many were.
    fn up_to(&self, ms: i64) -> (Option<u32>, usize) {
        let log = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = log.partition_point(|&(_, at)| at <= ms);
        (n.checked_sub(1).and_then(|i| log.get(i)).map(|e| e.0), n)
    }
}

/// Measures every `interval` from `first` until `end`; logs every seq.
#[allow(clippy::too_many_arguments)]
async fn feed(
    handle: DeviceHandle,
    mut patient: Patient,
    kind: Kind,
    first: Instant,
    interval: Duration,
    end: Instant,
    log: GenLog,
    cancel: CancellationToken,
) {
    let meal = (kind == Kind::Glucose).then_some(MealContext::Casual);
    let mut tick = interval_at(first, interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_ts = 0i64;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = sleep_until(end) => return,
            _ = tick.tick() => {}
        }
        // Distinct measurement times per device keep the store's paging by time exact.
        let ts = now_ms().max(last_ts + 1);
        last_ts = ts;
        let seq = handle.record(patient.measure(kind, ts, meal), ts);
        log.push(seq, ts);
    }
}

/// The fleet's counters right now.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Totals {
    pub(crate) generated: u64,
    pub(crate) committed: u64,
    pub(crate) pending: u64,
    pub(crate) pending_devices: usize,
    pub(crate) connected: usize,
    pub(crate) ever_connected: usize,
    pub(crate) connects: u64,
}

impl Totals {
    pub(crate) fn of(handles: &[DeviceHandle]) -> Self {
        let mut t = Totals::default();
        for h in handles {
            let s = h.stats();
            t.generated += s.generated;
            t.committed += s.committed;
            t.pending += s.pending as u64;
            t.pending_devices += usize::from(s.pending > 0);
            t.connected += usize::from(s.connected);
            t.ever_connected += usize::from(s.connects > 0);
            t.connects += s.connects;
        }
        t
    }
}

/// Detects recovery from the fault.
#[derive(Debug, Default)]
struct Recovery {
    times: FaultTimes,
    /// Per device, the highest seq generated up to the end of the fault.
    due: Option<Vec<Option<u32>>>,
    readings_due: u64,
    recovered_ms: Option<i64>,
}

impl Recovery {
    fn observe(
        &mut self,
        times: FaultTimes,
        handles: &[DeviceHandle],
        logs: &[GenLog],
        totals: &Totals,
    ) {
        if times.start_ms.is_none() {
            return;
        }
        self.times = times;
        // Without an end yet, the fault is still on.
        let Some(end) = times.end_ms else {
            return;
        };
        if self.recovered_ms.is_some() {
            return;
        }
        let due = self.due.get_or_insert_with(|| {
            let mut n = 0;
            let due = logs
                .iter()
                .map(|log| {
                    let (seq, count) = log.up_to(end);
                    n += count as u64;
                    seq
                })
                .collect();
            self.readings_due = n;
            due
        });
        if totals.connected < handles.len() {
            return;
        }
        let settled = handles.iter().zip(due.iter()).all(|(h, due)| match due {
            None => true,
            Some(due) => h.oldest_pending().is_none_or(|oldest| oldest > *due),
        });
        if settled {
            let now = now_ms();
            self.recovered_ms = Some(now);
            info!(
                after_end_s = (now - end) as f64 / 1_000.0,
                "recovered: every reading generated up to the fault's end is acked"
            );
        }
    }

    fn report(&self, timeline: &[TimelineEntry], readyz: &[ReadyProbe]) -> FaultReport {
        let t = self.times;
        let secs = |from: Option<i64>, to: Option<i64>| match (from, to) {
            (Some(a), Some(b)) => Some((b - a) as f64 / 1_000.0),
            _ => None,
        };
        let mut out = FaultReport {
            times: t,
            fault_secs: secs(t.start_ms, t.end_ms),
            recovered_ms: self.recovered_ms,
            recovery_from_start_secs: secs(t.start_ms, self.recovered_ms),
            recovery_from_end_secs: secs(t.end_ms, self.recovered_ms),
            readings_due: self.readings_due,
            ..FaultReport::default()
        };
        if let (Some(start), Some(end)) = (t.start_ms, t.end_ms) {
            for p in readyz
                .iter()
                .filter(|p| p.unix_ms > start && p.unix_ms < end)
            {
                let key = p.status.map_or("none".into(), |s| s.to_string());
                *out.readyz_during.entry(key).or_default() += 1;
            }
            out.ready_after_end_secs = readyz
                .iter()
                .find(|p| p.unix_ms >= end && p.status == Some(200))
                .map(|p| (p.unix_ms + p.took_ms as i64 - end) as f64 / 1_000.0);
            out.gateway_peak_rss_during_mib = timeline
                .iter()
                .filter(|e| e.unix_ms >= start && e.unix_ms <= end)
                .filter_map(|e| e.gateway.map(|g| g.rss_kib.max(g.hwm_kib)))
                .max()
                .map(|kib| kib as f64 / 1024.0);
        }
        out
    }
}

/// Samples processes each second and probes `/readyz` in the background.
pub(crate) struct Monitor {
    gateway: Option<ProcWatch>,
    me: ProcWatch,
    started: Instant,
    last_sample: Option<Instant>,
    timeline: Vec<TimelineEntry>,
    probes: Arc<Mutex<Vec<ReadyProbe>>>,
    stop: CancellationToken,
    prober: Option<tokio::task::JoinHandle<()>>,
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("samples", &self.timeline.len())
            .finish_non_exhaustive()
    }
}

impl Monitor {
    pub(crate) fn start(gateway: GatewayPid, api: Option<String>) -> Self {
        let probes = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let prober = api.map(|api| tokio::spawn(probe_loop(api, probes.clone(), stop.clone())));
        Monitor {
            gateway: gateway.is_some().then(|| ProcWatch::new(gateway)),
            me: ProcWatch::myself(),
            started: Instant::now(),
            last_sample: None,
            timeline: Vec::new(),
            probes,
            stop,
            prober,
        }
    }

    /// Writes a timeline entry if a second has passed since the last one.
    pub(crate) fn maybe_sample(&mut self, totals: &Totals) {
        let now = Instant::now();
        if self
            .last_sample
            .is_some_and(|at| now.duration_since(at) < SAMPLE_EVERY)
        {
            return;
        }
        self.last_sample = Some(now);
        let readyz = self
            .probes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .and_then(|p| p.status);
        self.timeline.push(TimelineEntry {
            t_s: now.duration_since(self.started).as_secs_f64(),
            unix_ms: now_ms(),
            generated: totals.generated,
            committed: totals.committed,
            pending: totals.pending,
            connected: totals.connected,
            gateway: self.gateway.as_mut().and_then(ProcWatch::sample),
            simulator: self.me.sample(),
            readyz,
        });
    }

    /// Stops probing; returns the gateway's and the simulator's peaks, the timeline and the
    /// probes.
    pub(crate) async fn finish(
        mut self,
    ) -> (
        Option<ProcSummary>,
        ProcSummary,
        Vec<TimelineEntry>,
        Vec<ReadyProbe>,
    ) {
        self.stop.cancel();
        if let Some(prober) = self.prober.take() {
            let _ = prober.await;
        }
        let probes =
            std::mem::take(&mut *self.probes.lock().unwrap_or_else(PoisonError::into_inner));
        (
            self.gateway.map(|g| g.summary),
            self.me.summary,
            self.timeline,
            probes,
        )
    }
}

async fn probe_loop(api: String, probes: Arc<Mutex<Vec<ReadyProbe>>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let unix_ms = now_ms();
        let sent = Instant::now();
        let status = tokio::select! {
            _ = stop.cancelled() => return,
            status = probe_readyz(&api, READYZ_WAIT) => status,
        };
        let took_ms = u64::try_from(sent.elapsed().as_millis()).unwrap_or(u64::MAX);
        probes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(ReadyProbe {
                unix_ms,
                took_ms,
                status,
            });
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The process lines of the text reports.
pub(crate) fn write_procs(
    f: &mut fmt::Formatter<'_>,
    gateway: Option<&ProcSummary>,
    simulator: &ProcSummary,
) -> fmt::Result {
    if let Some(g) = gateway {
        writeln!(
            f,
            "gateway      peak RSS {:.1} MiB (max sampled {:.1}, VmHWM {:.1}), CPU avg {:.0} % / peak {:.0} % of one core ({:.1} s), peak {} fds, pids {:?}",
            g.peak_rss_mib,
            mib(g.max_rss_kib),
            mib(g.max_hwm_kib),
            g.avg_cpu_pct,
            g.peak_cpu_pct,
            g.cpu_secs,
            g.max_fds,
            g.pids
        )?;
    }
    writeln!(
        f,
        "simulator    peak RSS {:.1} MiB, CPU avg {:.0} % / peak {:.0} %, peak {} fds",
        simulator.peak_rss_mib, simulator.avg_cpu_pct, simulator.peak_cpu_pct, simulator.max_fds
    )
}

/// The store lines of the text reports.
pub(crate) fn write_store(f: &mut fmt::Formatter<'_>, s: &StoreCheck) -> fmt::Result {
    writeln!(
        f,
        "store        {}: {} rows ({} distinct) and {} keys for {} generated; {} duplicates, {} lost, {} acked-not-stored, {} rejected; {} pending in {} devices ({} not stored, {} stored but unacked) (checked in {:.1} s; store total {}, {} rows and keys of earlier runs not judged)",
        s.backend,
        s.stored_rows,
        s.distinct_rows,
        s.stored_keys,
        s.generated,
        s.duplicates,
        s.lost,
        s.acked_not_stored,
        s.rejected,
        s.pending_readings,
        s.pending_devices,
        s.undelivered,
        s.stored_not_acked,
        s.check_secs,
        s.store_total,
        s.earlier
    )?;
    for e in &s.examples {
        writeln!(f, "  {e}")?;
    }
    Ok(())
}

/// The verdict line.
pub(crate) fn write_verdict(f: &mut fmt::Formatter<'_>, failures: &[String]) -> fmt::Result {
    if failures.is_empty() {
        writeln!(
            f,
            "verdict      OK: nothing lost, nothing twice, nothing pending"
        )
    } else {
        writeln!(f, "verdict      FAILED: {}", failures.join("; "))
    }
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "load         {} devices ({} connected at start), one reading each every {} ms = {:.0} readings/s offered, {:.1} s generating, drained in {:.1} s, {:.1} s in all",
            self.devices,
            self.connected_at_start,
            self.interval_ms,
            self.target_rate,
            self.generating_secs,
            self.drain_secs,
            self.wall_secs
        )?;
        writeln!(
            f,
            "devices      {} generated, {} acked, {} messages, {} resent, {} connections ({} beyond one per device)",
            self.generated,
            self.acked,
            self.publishes,
            self.resent,
            self.connects,
            self.connects.saturating_sub(self.devices as u64)
        )?;
        let l = &self.latency;
        writeln!(
            f,
            "ack latency  p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
        )?;
        writeln!(
            f,
            "kernel       {} listen-queue overflows, {} listen drops during the run (system-wide)",
            self.listen.listen_overflows, self.listen.listen_drops
        )?;
        if let Some(fault) = &self.fault {
            let s = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1} s"));
            writeln!(
                f,
                "fault        lasted {}; recovered {} after its start, {} after its end ({} readings due); /readyz during it {:?}, 200 again {} after its end; gateway peak RSS during it {}",
                s(fault.fault_secs),
                s(fault.recovery_from_start_secs),
                s(fault.recovery_from_end_secs),
                fault.readings_due,
                fault.readyz_during,
                s(fault.ready_after_end_secs),
                fault
                    .gateway_peak_rss_during_mib
                    .map_or("n/a".to_owned(), |m| format!("{m:.1} MiB")),
            )?;
        }
        write_procs(f, self.gateway.as_ref(), &self.simulator)?;
        write_store(f, &self.store)?;
        for p in &self.problems {
            writeln!(f, "  pending: {p}")?;
        }
        write_verdict(f, &self.failures)
    }
}
