//! The load generator: devices publishing as fast as the gateway acknowledges.
//!
//! Every device keeps its in-flight window full (`in_flight` batches of `batch` readings
//! awaiting the gateway's ack): a new batch is generated as soon as one settles. After all
//! devices have connected, a measured window of `duration` starts; the throughput counts only
//! readings acked inside it. Then generation stops and the outboxes drain (bounded).
//!
//! Given the gateway's pid, the bench samples its resident memory (`VmRSS`) every second and
//! reads its high-water mark (`VmHWM`) at the end from `/proc/<pid>/status` (Linux only).

use std::fmt;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use hdrhistogram::Histogram;
use protocol::{Kind, MealContext};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::device::{self, DeviceHandle, DeviceSpec};
use crate::fleet::{FleetFile, drain_all, stop_all, totals};
use crate::physiology::{Condition, Patient, hash_str, mix};
use crate::schedule::now_ms;

/// How [`run_bench`] loads the gateway.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// How many of the fleet's devices to use (all when `None`).
    pub devices: Option<usize>,
    /// Length of the measured window.
    pub duration: Duration,
    /// Readings per batch (1 to `protocol::MAX_BATCH`).
    pub batch: usize,
    /// Batches awaiting the gateway's ack at once, per device.
    pub in_flight: usize,
    /// Resend a batch not acked within this time.
    pub resend_after: Duration,
    /// The gateway's process id, to report its memory.
    pub gateway_pid: Option<u32>,
    /// Seed for the generated values.
    pub seed: u64,
    /// First seq of every device (see `fleet::SeqFloor`).
    pub first_seq: u32,
    /// Longest wait for every device to connect before the window starts.
    pub connect_timeout: Duration,
    /// Longest wait for the outboxes to drain after the window.
    pub drain: Duration,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            devices: None,
            duration: Duration::from_secs(30),
            batch: device::DEFAULT_MAX_BATCH,
            in_flight: device::DEFAULT_MAX_IN_FLIGHT,
            resend_after: Duration::from_secs(10),
            gateway_pid: None,
            seed: 1,
            first_seq: 1,
            connect_timeout: Duration::from_secs(30),
            drain: Duration::from_secs(15),
        }
    }
}

/// The result of a bench run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Devices started.
    pub devices: usize,
    /// Devices connected when the window started.
    pub connected: usize,
    /// Readings per batch.
    pub batch: usize,
    /// Batches in flight per device.
    pub in_flight: usize,
    /// Length of the measured window, seconds.
    pub window_secs: f64,
    /// Readings acked as committed inside the window.
    pub committed_in_window: u64,
    /// `committed_in_window / window_secs`.
    pub readings_per_sec: f64,
    /// Publish→ack latency of readings settled inside the window.
    pub latency: LatencySummary,
    /// Readings generated, window and drain.
    pub generated: u64,
    /// Readings acked as committed, window and drain.
    pub committed: u64,
    /// Readings acked as rejected.
    pub rejected: u64,
    /// Readings still unsettled after the drain.
    pub pending: u64,
    /// Readings messages published.
    pub publishes: u64,
    /// Readings published again.
    pub resent: u64,
    /// One past the highest seq used: the next run's first seq.
    pub next_seq: u32,
    /// The gateway's memory, when its pid was given.
    pub gateway: Option<GatewayMemory>,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencySummary {
    /// Readings measured.
    pub samples: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl LatencySummary {
    pub(crate) fn from_micros(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1_000.0;
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// The gateway process's memory, KiB.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayMemory {
    /// The gateway's pid.
    pub pid: u32,
    /// The larger of the two figures below: the peak the bench could observe.
    pub peak_rss_kib: Option<u64>,
    /// Largest `VmRSS` sampled once a second during the run.
    pub max_sampled_rss_kib: Option<u64>,
    /// `VmHWM` (peak resident set over the process's life) at the end. Linux updates the
    /// high-water mark lazily, so it can be below an RSS sampled earlier.
    pub vm_hwm_kib: Option<u64>,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "devices      {} ({} connected), batch {}, {} in flight",
            self.devices, self.connected, self.batch, self.in_flight
        )?;
        writeln!(
            f,
            "throughput   {:.0} committed readings/s ({} in {:.1} s)",
            self.readings_per_sec, self.committed_in_window, self.window_secs
        )?;
        let l = &self.latency;
        writeln!(
            f,
            "ack latency  p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} readings)",
            l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.samples
        )?;
        writeln!(
            f,
            "totals       {} generated, {} committed, {} rejected, {} pending, {} messages, {} resent",
            self.generated,
            self.committed,
            self.rejected,
            self.pending,
            self.publishes,
            self.resent
        )?;
        if let Some(g) = &self.gateway {
            let mib = |kib: Option<u64>| {
                kib.map_or("n/a".to_owned(), |k| {
                    format!("{:.1} MiB", k as f64 / 1024.0)
                })
            };
            writeln!(
                f,
                "gateway      pid {}: peak RSS {} (VmHWM {}, max sampled RSS {})",
                g.pid,
                mib(g.peak_rss_kib),
                mib(g.vm_hwm_kib),
                mib(g.max_sampled_rss_kib)
            )?;
        }
        Ok(())
    }
}

/// Runs the load generator with `fleet`'s devices against the gateway at `broker`.
pub async fn run_bench(
    fleet: &FleetFile,
    broker: &str,
    opts: &BenchOptions,
    cancel: CancellationToken,
) -> anyhow::Result<BenchReport> {
    let wanted = opts.devices.unwrap_or(fleet.devices.len());
    if wanted == 0 || wanted > fleet.devices.len() {
        bail!(
            "asked for {wanted} devices, the fleet has {}",
            fleet.devices.len()
        );
    }
    let batch = opts.batch.clamp(1, protocol::MAX_BATCH);
    let in_flight = opts.in_flight.max(1);

    let devices_cancel = CancellationToken::new();
    let mut handles = Vec::with_capacity(wanted);
    let mut feeders = Vec::with_capacity(wanted);
    for d in fleet.devices.iter().take(wanted) {
        let kind = Kind::parse(&d.kind)
            .ok_or_else(|| anyhow!("device {}: unknown kind {:?}", d.id, d.kind))?;
        let conditions: Vec<Condition> = d
            .conditions
            .iter()
            .filter_map(|c| Condition::parse(c))
            .collect();
        let mut spec = DeviceSpec::new(&d.id, &d.secret, broker);
        spec.max_batch = batch;
        spec.max_in_flight = in_flight;
        spec.resend_after = opts.resend_after;
        spec.first_seq = opts.first_seq;
        spec.history = 0;
        let handle = device::spawn(spec, devices_cancel.clone());
        let patient = Patient::new(mix(opts.seed, hash_str(&d.patient_code)), &conditions);
        feeders.push((handle.clone(), patient, kind));
        handles.push(handle);
    }

    let memory = opts.gateway_pid.map(|pid| {
        let stop = devices_cancel.clone();
        tokio::spawn(sample_rss(pid, stop))
    });

    info!(devices = wanted, broker, "connecting");
    let connect_deadline = Instant::now() + opts.connect_timeout;
    let mut connected = 0;
    let mut first_failure = None;
    for handle in &handles {
        let left = connect_deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = cancel.cancelled() => break,
            result = handle.wait_connected(left) => match result {
                Ok(()) => connected += 1,
                Err(e) => {
                    first_failure.get_or_insert_with(|| format!("{e:#}"));
                }
            },
        }
    }
    if let Some(error) = &first_failure {
        warn!(
            not_connected = wanted - connected,
            first = %error,
            "some devices did not connect; the bench goes on without them"
        );
    }
    if connected == 0 || cancel.is_cancelled() {
        let last_error = handles.first().and_then(|h| h.stats().last_error);
        devices_cancel.cancel();
        stop_all(handles).await;
        bail!(
            "no device connected to {broker} (last error: {})",
            last_error.as_deref().unwrap_or("none")
        );
    }

    info!(connected, window = %humantime::format_duration(opts.duration), "load window starts");
    let committed_before = totals(&handles).committed;
    let started = Instant::now();
    let feed_cancel = cancel.child_token();
    let mut feeding = JoinSet::new();
    for (handle, patient, kind) in feeders {
        feeding.spawn(blast(
            handle,
            patient,
            kind,
            batch,
            batch * in_flight,
            feed_cancel.clone(),
        ));
    }
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = sleep_until(started + opts.duration) => {}
    }
    let window = started.elapsed();
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .context("creating the latency histogram")?;
    for handle in &handles {
        latencies
            .add(handle.latencies())
            .map_err(|e| anyhow!("merging latencies: {e:?}"))?;
    }
    // After the latencies, so every latency sample is also counted as committed here.
    let committed_in_window = totals(&handles).committed - committed_before;
    feed_cancel.cancel();
    while feeding.join_next().await.is_some() {}

    info!("draining");
    drain_all(&handles, opts.drain).await;
    let t = totals(&handles);
    devices_cancel.cancel();
    stop_all(handles).await;

    let gateway = match (opts.gateway_pid, memory) {
        (Some(pid), Some(sampler)) => {
            let max_sampled_rss_kib = sampler.await.ok().flatten();
            let vm_hwm_kib = crate::observe::read_status_kib(pid, "VmHWM:");
            if vm_hwm_kib.is_none() {
                warn!(pid, "cannot read VmHWM from /proc/{pid}/status");
            }
            Some(GatewayMemory {
                pid,
                peak_rss_kib: vm_hwm_kib.max(max_sampled_rss_kib),
                max_sampled_rss_kib,
                vm_hwm_kib,
            })
        }
        _ => None,
    };

    let window_secs = window.as_secs_f64();
    Ok(BenchReport {
        devices: wanted,
        connected,
        batch,
        in_flight,
        window_secs,
        committed_in_window,
        readings_per_sec: if window_secs > 0.0 {
            committed_in_window as f64 / window_secs
        } else {
            0.0
        },
        latency: LatencySummary::from_micros(&latencies),
        generated: t.generated,
        committed: t.committed,
        rejected: t.rejected,
        pending: t.pending as u64,
        publishes: t.publishes,
        resent: t.resent,
        next_seq: t.next_seq,
        gateway,
    })
}

/// Generates a batch whenever the device's window has room for one.
async fn blast(
    handle: DeviceHandle,
    mut patient: Patient,
    kind: Kind,
    batch: usize,
    window: usize,
    cancel: CancellationToken,
) {
    let meal = (kind == Kind::Glucose).then_some(MealContext::Casual);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = handle.wait_pending_at_most(window - batch) => {}
        }
        if cancel.is_cancelled() {
            return;
        }
        let ts = now_ms();
        for _ in 0..batch {
            let sample = patient.measure(kind, ts, meal);
            handle.record(sample, ts);
        }
    }
}

/// Samples the process's `VmRSS` every second until `stop`; returns the largest, KiB.
async fn sample_rss(pid: u32, stop: CancellationToken) -> Option<u64> {
    let mut max = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                if let Some(rss) = crate::observe::read_status_kib(pid, "VmRSS:") {
                    max = max.max(Some(rss));
                }
            }
        }
    }
    if let Some(rss) = crate::observe::read_status_kib(pid, "VmRSS:") {
        max = max.max(Some(rss));
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_summary_in_ms() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for us in 1..=1_000u64 {
            h.record(us * 1_000).unwrap();
        }
        let s = LatencySummary::from_micros(&h);
        assert_eq!(s.samples, 1_000);
        assert!((s.p50_ms - 500.0).abs() < 2.0, "{s:?}");
        assert!((s.p99_ms - 990.0).abs() < 2.0, "{s:?}");
        assert!((s.max_ms - 1_000.0).abs() < 2.0, "{s:?}");
    }
}
