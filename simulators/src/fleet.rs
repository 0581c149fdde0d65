//! Fleets: which devices exist (a JSON fleet file), provisioning them into the store, and
//! running them on their patients' schedules.
//!
//! [`provision`] enrolls patients with plausible condition mixes in a COT and gives each one
//! to three devices (hypertension → cuff; COPD or heart failure → oximeter, often a cuff too;
//! diabetes → glucose meter). It returns the [`FleetFile`] with the device secrets, which
//! only exist there: the store keeps their hashes.
//!
//! [`run_fleet`] connects every device and feeds it measurements at its schedule's moments
//! in simulated time, then waits (bounded) for every outbox to drain.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use indicatif::ProgressBar;
use protocol::{DeviceId, Kind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use store::{DeviceKind, NewPatient, Store, StoreError};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::device::{self, DeviceHandle, DeviceSpec, DeviceStats};
use crate::physiology::{Condition, Patient, hash_str, mix};
use crate::schedule::{Schedule, SimClock, now_ms};

/// The devices of a fleet, as written by `sentinella-sim provision` and read by `run`/`bench`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    /// Every device, in provisioning order.
    pub devices: Vec<FleetDevice>,
}

/// One provisioned device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetDevice {
    /// Device id (MQTT client id and username).
    pub id: String,
    /// Device secret (MQTT password); the store keeps only its hash.
    pub secret: String,
    /// What it measures: `bp`, `spo2` or `glucose`.
    pub kind: String,
    /// The patient's pseudonymous code.
    pub patient_code: String,
    /// The patient's conditions (`hypertension`, `copd`, `diabetes`, `heart_failure`).
    pub conditions: Vec<String>,
    /// Mutual-TLS credentials (certificate, key, CA), when issued: the device then connects
    /// over TLS unless the run asks for plain connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<device::DeviceTls>,
}

impl FleetDevice {
    fn parsed(&self) -> anyhow::Result<(Kind, Vec<Condition>)> {
        let kind = Kind::parse(&self.kind)
            .ok_or_else(|| anyhow!("device {}: unknown kind {:?}", self.id, self.kind))?;
        let conditions = self
            .conditions
            .iter()
            .map(|c| {
                Condition::parse(c)
                    .ok_or_else(|| anyhow!("device {}: unknown condition {c:?}", self.id))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((kind, conditions))
    }

    /// The seed of this device's patient: every device of one patient sees the same person.
    fn patient_seed(&self, seed: u64) -> u64 {
        mix(seed, hash_str(&self.patient_code))
    }
}

impl FleetFile {
    /// Reads a fleet file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading fleet file {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("parsing fleet file {}", path.display()))
    }

    /// Writes the fleet file (readable by its owner only where the platform allows: it holds
    /// device secrets).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self).context("serializing the fleet")?;
        pki::write_private(path, format!("{text}\n").as_bytes())
            .with_context(|| format!("writing fleet file {}", path.display()))
    }
}

/// Enrolls `patients` simulated patients in the COT `cot_code` (created if missing) with 1-3
/// devices each, and returns the fleet with the device secrets.
///
/// Patient codes are `{prefix}-P00001`…, device ids `{prefix}-bp-00001`…, numbered per kind.
/// Codes and ids are unique in the store, so provisioning twice with the same prefix fails
/// with a conflict: pick another prefix.
pub async fn provision(
    store: &Store,
    cot_code: &str,
    patients: usize,
    seed: u64,
    prefix: &str,
) -> anyhow::Result<FleetFile> {
    DeviceId::parse(&device_id(prefix, DeviceKind::Glucose, 99_999))
        .map_err(|e| anyhow!("prefix {prefix:?} makes invalid device ids: {e}"))?;
    let cot = match store
        .cot_by_code(cot_code)
        .await
        .with_context(|| format!("looking up COT {cot_code}"))?
    {
        Some(cot) => cot,
        None => {
            info!(cot = cot_code, "creating COT");
            match store
                .add_cot(cot_code, &format!("{cot_code} (simulated)"))
                .await
            {
                Ok(cot) => cot,
                // Someone else created it in the meantime.
                Err(StoreError::Conflict { .. }) => store
                    .cot_by_code(cot_code)
                    .await
                    .with_context(|| format!("looking up COT {cot_code}"))?
                    .with_context(|| format!("COT {cot_code} vanished while provisioning"))?,
                Err(e) => return Err(e).with_context(|| format!("creating COT {cot_code}")),
            }
        }
    };

    let mut rng = StdRng::seed_from_u64(seed);
    let mut numbers: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut fleet = FleetFile::default();
    for n in 1..=patients {
        let code = format!("{prefix}-P{n:05}");
        let conditions = condition_mix(&mut rng);
        let names: Vec<String> = conditions.iter().map(|c| c.as_str().to_owned()).collect();
        let patient = store
            .add_patient(&NewPatient {
                cot_id: cot.id,
                code: code.clone(),
                display_name: display_name(&mut rng),
                birth_year: Some(rng.gen_range(1932..=1975)),
                conditions: names.clone(),
            })
            .await
            .with_context(|| {
                format!("enrolling patient {code} (already provisioned? use another --prefix)")
            })?;
        for kind in device_kinds(&conditions, &mut rng) {
            let number = numbers.entry(kind.as_str()).or_default();
            *number += 1;
            let id = device_id(prefix, kind, *number);
            let secret = api::ops::devices::provision(
                store,
                patient.id,
                kind,
                Some(id.clone()),
                Some(model(kind).to_owned()),
            )
            .await
            .with_context(|| format!("provisioning device {id}"))?
            .secret;
            fleet.devices.push(FleetDevice {
                id,
                secret,
                kind: kind.as_str().to_owned(),
                patient_code: code.clone(),
                conditions: names.clone(),
                tls: None,
            });
        }
    }
    info!(
        cot = cot_code,
        patients,
        devices = fleet.devices.len(),
        "fleet provisioned"
    );
    Ok(fleet)
}

fn device_id(prefix: &str, kind: DeviceKind, number: usize) -> String {
    format!("{prefix}-{}-{number:05}", kind.as_str())
}

fn model(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::BloodPressure => "SimCuff BP-1",
        DeviceKind::Spo2 => "SimOx PO-2",
        DeviceKind::Glucose => "SimGluco G-3",
    }
}

/// A plausible mix for a telemonitored chronic patient: hypertension is the commonest, and
/// nobody is enrolled without a condition.
fn condition_mix(rng: &mut StdRng) -> Vec<Condition> {
    let mut conditions = Vec::new();
    for (condition, p) in [
        (Condition::Hypertension, 0.65),
        (Condition::Copd, 0.22),
        (Condition::Diabetes, 0.30),
        (Condition::HeartFailure, 0.15),
    ] {
        if rng.gen_bool(p) {
            conditions.push(condition);
        }
    }
    if conditions.is_empty() {
        conditions.push(match rng.gen_range(0..10) {
            0..=4 => Condition::Hypertension,
            5..=7 => Condition::Diabetes,
            _ => Condition::Copd,
        });
    }
    conditions
}

/// The devices a patient with `conditions` takes home: one to three.
fn device_kinds(conditions: &[Condition], rng: &mut StdRng) -> Vec<DeviceKind> {
    let has = |c| conditions.contains(&c);
    let mut kinds = Vec::new();
    let lungs_or_heart = has(Condition::Copd) || has(Condition::HeartFailure);
    if has(Condition::Hypertension)
        || has(Condition::HeartFailure)
        || (has(Condition::Copd) && rng.gen_bool(0.5))
    {
        kinds.push(DeviceKind::BloodPressure);
    }
    if lungs_or_heart {
        kinds.push(DeviceKind::Spo2);
    }
    if has(Condition::Diabetes) {
        kinds.push(DeviceKind::Glucose);
    }
    kinds
}

fn display_name(rng: &mut StdRng) -> String {
    const FIRST: [&str; 16] = [
        "Giulia",
        "Marco",
        "Anna",
        "Luca",
        "Maria",
        "Giuseppe",
        "Francesca",
        "Antonio",
        "Rosa",
        "Giovanni",
        "Lucia",
        "Paolo",
        "Teresa",
        "Franco",
        "Carla",
        "Sergio",
    ];
    const LAST: [&str; 16] = [
        "Rossi", "Bianchi", "Colombo", "Ferrari", "Esposito", "Romano", "Ricci", "Marino", "Greco",
        "Bruno", "Gallo", "Conti", "Costa", "Mancini", "Lombardi", "Moretti",
    ];
    let first = FIRST.get(rng.gen_range(0..FIRST.len())).unwrap_or(&"Anna");
    let last = LAST.get(rng.gen_range(0..LAST.len())).unwrap_or(&"Rossi");
    format!("{first} {last} (sim)")
}

/// Issues a client certificate from `ca` to every device of `fleet` that has none, records
/// its fingerprint in the store (the edge then accepts only that certificate for the device)
/// and keeps the credentials in the fleet. Returns how many were issued.
pub async fn issue_certs(
    store: &Store,
    ca: &pki::DeviceCa,
    fleet: &mut FleetFile,
) -> anyhow::Result<usize> {
    let mut issued = 0;
    for d in fleet.devices.iter_mut().filter(|d| d.tls.is_none()) {
        let cert = api::ops::devices::issue_cert(store, ca, &d.id)
            .await
            .with_context(|| format!("issuing a certificate to {}", d.id))?;
        d.tls = Some(device::DeviceTls::issued(cert, ca.cert_pem()));
        issued += 1;
    }
    Ok(issued)
}

/// How [`run_fleet`] runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Simulated ms per real ms (1440: a simulated day per real minute).
    pub speed: f64,
    /// Real time to generate readings for.
    pub duration: Duration,
    /// Seed for the patients' physiology (with each patient's code).
    pub seed: u64,
    /// The first seq of every device; see [`clock_seq_base`].
    pub first_seq: u32,
    /// End the simulated period at the real time the run starts instead of starting it
    /// there, so no reading is dated in the future.
    pub backdate: bool,
    /// Longest wait, after generation stops, for the outboxes to drain.
    pub drain: Duration,
    /// A progress bar to keep up to date (generated / committed / pending, readings/s).
    pub progress: Option<ProgressBar>,
    /// Connect with passwords over plain TCP even where the fleet has certificates.
    pub plain: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            speed: 1440.0,
            duration: Duration::from_secs(60),
            seed: 1,
            first_seq: 1,
            backdate: false,
            drain: Duration::from_secs(30),
            progress: None,
            plain: false,
        }
    }
}

/// Totals of a fleet run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetReport {
    /// Devices in the fleet.
    pub devices: usize,
    /// Devices that connected at least once.
    pub connected: usize,
    /// Readings generated.
    pub generated: u64,
    /// Readings the gateway reported committed.
    pub committed: u64,
    /// Readings the gateway reported rejected.
    pub rejected: u64,
    /// Readings still unsettled at the end.
    pub pending: u64,
    /// Readings messages published.
    pub publishes: u64,
    /// Readings sent again (reconnection or no ack in time).
    pub resent: u64,
    /// Real seconds from start to end (generation plus drain).
    pub elapsed_secs: f64,
    /// Simulated period covered, ms since the Unix epoch.
    pub simulated_from_ms: i64,
    /// End of the simulated period.
    pub simulated_to_ms: i64,
    /// One past the highest seq any device used: the next run's first seq.
    pub next_seq: u32,
    /// Devices that never connected or still hold readings, with their last error.
    pub problems: Vec<DeviceProblem>,
}

/// A device that did not finish cleanly.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceProblem {
    /// Device id.
    pub id: String,
    /// Readings left in its outbox.
    pub pending: usize,
    /// Successful connections.
    pub connects: u64,
    /// Its last error.
    pub last_error: Option<String>,
}

impl FleetReport {
    fn add(&mut self, id: &str, stats: &DeviceStats) {
        self.devices += 1;
        self.connected += usize::from(stats.connects > 0);
        self.generated += stats.generated;
        self.committed += stats.committed;
        self.rejected += stats.rejected;
        self.pending += stats.pending as u64;
        self.publishes += stats.publishes;
        self.resent += stats.resent;
        self.next_seq = self.next_seq.max(stats.next_seq);
        if stats.pending > 0 || stats.connects == 0 {
            self.problems.push(DeviceProblem {
                id: id.to_owned(),
                pending: stats.pending,
                connects: stats.connects,
                last_error: stats.last_error.clone(),
            });
        }
    }
}

impl fmt::Display for FleetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = (self.simulated_to_ms - self.simulated_from_ms) as f64 / 86_400_000.0;
        writeln!(
            f,
            "devices    {} ({} connected)",
            self.devices, self.connected
        )?;
        writeln!(f, "simulated  {days:.2} days in {:.1} s", self.elapsed_secs)?;
        writeln!(f, "generated  {}", self.generated)?;
        writeln!(f, "committed  {}", self.committed)?;
        writeln!(f, "rejected   {}", self.rejected)?;
        writeln!(f, "pending    {}", self.pending)?;
        writeln!(
            f,
            "published  {} messages, {} readings resent",
            self.publishes, self.resent
        )?;
        for p in self.problems.iter().take(10) {
            writeln!(
                f,
                "  {}: {} pending, {} connections, last error: {}",
                p.id,
                p.pending,
                p.connects,
                p.last_error.as_deref().unwrap_or("none")
            )?;
        }
        if self.problems.len() > 10 {
            writeln!(f, "  … and {} more devices", self.problems.len() - 10)?;
        }
        Ok(())
    }
}

/// Runs `fleet` against the gateway at `broker` (`host:port`): every device connects and
/// measures on its schedule for `opts.duration`; then the run waits up to `opts.drain` for
/// every outbox to settle and reports.
///
/// `cancel` stops generation early; the outboxes still get a short drain (at most 5 s).
pub async fn run_fleet(
    fleet: &FleetFile,
    broker: &str,
    opts: RunOptions,
    cancel: CancellationToken,
) -> anyhow::Result<FleetReport> {
    let devices = fleet
        .devices
        .iter()
        .map(|d| Ok((d, d.parsed()?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if devices.is_empty() {
        bail!("the fleet has no devices");
    }
    let started = Instant::now();
    let clock = if opts.backdate {
        let span = (opts.duration.as_secs_f64() * 1_000.0 * opts.speed) as i64;
        SimClock::new(now_ms() - span, opts.speed)
    } else {
        SimClock::starting_now(opts.speed)
    };
    let end = started + opts.duration;
    // Devices outlive generation (they must drain), so they get their own token.
    let devices_cancel = CancellationToken::new();
    let feed_cancel = cancel.child_token();
    let mut handles: Vec<DeviceHandle> = Vec::with_capacity(devices.len());
    let mut feeders = JoinSet::new();
    for (d, (kind, conditions)) in devices {
        let mut spec = DeviceSpec::new(&d.id, &d.secret, broker);
        spec.first_seq = opts.first_seq;
        if !opts.plain {
            spec.tls = d.tls.clone();
        }
        let handle = device::spawn(spec, devices_cancel.clone());
        let patient = Patient::new(d.patient_seed(opts.seed), &conditions);
        let schedule = Schedule::new(kind, &conditions, mix(d.patient_seed(opts.seed), 1));
        feeders.spawn(feed(
            handle.clone(),
            patient,
            kind,
            schedule,
            clock,
            end,
            feed_cancel.clone(),
        ));
        handles.push(handle);
    }
    info!(
        devices = handles.len(),
        broker,
        speed = opts.speed,
        "fleet running"
    );

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_committed = 0u64;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = sleep_until(end) => break,
            _ = tick.tick() => {
                if let Some(pb) = &opts.progress {
                    let t = totals(&handles);
                    pb.set_message(format!(
                        "{} generated · {} committed · {} pending · {}/s · sim {}",
                        t.generated,
                        t.committed,
                        t.pending,
                        t.committed.saturating_sub(last_committed),
                        sim_date(clock.now_ms()),
                    ));
                    last_committed = t.committed;
                }
            }
        }
    }
    feed_cancel.cancel();
    while feeders.join_next().await.is_some() {}
    let simulated_to_ms = clock.now_ms();

    let drain = if cancel.is_cancelled() {
        opts.drain.min(Duration::from_secs(5))
    } else {
        opts.drain
    };
    if let Some(pb) = &opts.progress {
        pb.set_message(format!(
            "draining (up to {})",
            humantime::format_duration(drain)
        ));
    }
    drain_all(&handles, drain).await;

    let mut report = FleetReport {
        simulated_from_ms: clock.start_ms(),
        simulated_to_ms,
        ..FleetReport::default()
    };
    for handle in &handles {
        report.add(handle.id(), &handle.stats());
    }
    stop_all(handles).await;
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Feeds one device its scheduled measurements until `end` or cancellation, and answers the
/// gateway's repeat requests ([`DeviceHandle::next_repeat`]): `in_s` simulated seconds after a
/// request arrived, the device measures that kind once more from the patient's physiology at
/// that moment. A request for a kind this device cannot measure is logged and dropped, as a
/// real single-sensor device would.
pub async fn feed(
    handle: DeviceHandle,
    mut patient: Patient,
    kind: Kind,
    schedule: Schedule,
    clock: SimClock,
    end: Instant,
    cancel: CancellationToken,
) {
    let mut cursor = clock.now_ms();
    // Simulated due times of accepted repeats, and their request ids.
    let mut repeats: Vec<(i64, i64)> = Vec::new();
    loop {
        let scheduled = schedule
            .next_after(cursor)
            .map(|(at_ms, slot)| (clock.instant_at(at_ms), at_ms, slot))
            .filter(|(at, ..)| *at < end);
        let repeat = repeats.iter().copied().min();
        let scheduled_at = scheduled.map(|(at, ..)| at);
        let repeat_at = repeat.map(|(at_ms, _)| clock.instant_at(at_ms));
        let wait_for = |at: Option<Instant>| async move {
            match at {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = sleep_until(end) => break,
            _ = wait_for(scheduled_at) => {
                if let Some((_, at_ms, slot)) = scheduled {
                    let sample = patient.measure(kind, at_ms, slot.meal);
                    handle.record(sample, at_ms);
                    cursor = at_ms;
                }
            }
            _ = wait_for(repeat_at) => {
                if let Some((at_ms, id)) = repeat {
                    repeats.retain(|r| *r != (at_ms, id));
                    let sample = patient.measure(kind, at_ms, None);
                    let seq = handle.record(sample, at_ms);
                    debug!(device = handle.id(), id, seq, "repeat measured");
                }
            }
            ask = handle.next_repeat() => {
                if ask.kind != kind {
                    warn!(
                        device = handle.id(),
                        asked = ask.kind.as_str(),
                        has = kind.as_str(),
                        "repeat request for a kind this device does not measure; ignored"
                    );
                    continue;
                }
                // Simulated time when the request arrived, plus the wait.
                let waited_ms = (ask.received.elapsed().as_secs_f64() * 1_000.0 * clock.speed()) as i64;
                let at_ms = clock.now_ms() - waited_ms + i64::from(ask.in_s) * 1_000;
                repeats.push((at_ms, ask.id));
            }
        }
    }
}

/// Waits up to `timeout` in all for every outbox to settle; logs what is left.
pub(crate) async fn drain_all(handles: &[DeviceHandle], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for handle in handles {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = handle.wait_settled(left).await {
            debug!(error = %format!("{e:#}"), "outbox not drained");
        }
    }
    let unsettled: Vec<(String, usize)> = handles
        .iter()
        .map(|h| (h.id().to_owned(), h.stats().pending))
        .filter(|(_, pending)| *pending > 0)
        .collect();
    if let Some((first, _)) = unsettled.first() {
        warn!(
            devices = unsettled.len(),
            readings = unsettled.iter().map(|(_, n)| n).sum::<usize>(),
            first = %first,
            waited = %humantime::format_duration(timeout),
            "outboxes not drained: the gateway did not acknowledge everything"
        );
    }
}

/// Sum of every device's counters.
pub(crate) fn totals(handles: &[DeviceHandle]) -> DeviceStats {
    handles
        .iter()
        .map(DeviceHandle::stats)
        .fold(DeviceStats::default(), |mut t, s| {
            t.generated += s.generated;
            t.committed += s.committed;
            t.rejected += s.rejected;
            t.pending += s.pending;
            t.publishes += s.publishes;
            t.resent += s.resent;
            t.replayed += s.replayed;
            t.acks += s.acks;
            t.bad_messages += s.bad_messages;
            t.connects += s.connects;
            t.next_seq = t.next_seq.max(s.next_seq);
            t
        })
}

/// Stops every device concurrently.
pub(crate) async fn stop_all(handles: Vec<DeviceHandle>) {
    let mut stops = JoinSet::new();
    for handle in handles {
        stops.spawn(handle.stop());
    }
    while stops.join_next().await.is_some() {}
}

fn sim_date(ms: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// A first seq derived from the clock: tenths of a second since 2025-01-01 UTC.
///
/// The store dedupes on (device, seq), so a simulator that restarted its devices at seq 1
/// against a store that already holds their readings would see every new reading acked as
/// a duplicate and never stored. A real device keeps its seq across reboots; the simulator
/// approximates that with a clock-based start, which stays ahead of earlier runs as long as
/// a device averaged fewer than 10 readings per real second (true at any schedule speed;
/// the load generator is faster, hence also [`SeqFloor`]). It lasts until 2038.
pub fn clock_seq_base() -> u32 {
    const EPOCH_2025_MS: i64 = 1_735_689_600_000;
    let tenths = (now_ms() - EPOCH_2025_MS).max(0) / 100;
    u32::try_from(tenths).unwrap_or(u32::MAX).max(1)
}

/// The next free seq of a fleet's devices, kept beside the fleet file (`fleet.json.seq`) so
/// a later run never reuses a seq an earlier one sent.
#[derive(Debug, Clone)]
pub struct SeqFloor {
    path: PathBuf,
}

impl SeqFloor {
    /// The floor file of the fleet file at `fleet`.
    pub fn beside(fleet: &Path) -> Self {
        let mut name = fleet.as_os_str().to_owned();
        name.push(".seq");
        SeqFloor {
            path: PathBuf::from(name),
        }
    }

    /// The first seq for the next run: the larger of the stored floor and [`clock_seq_base`].
    pub fn first_seq(&self) -> anyhow::Result<u32> {
        let stored = match std::fs::read_to_string(&self.path) {
            Ok(text) => text
                .trim()
                .parse::<u32>()
                .with_context(|| format!("parsing {}", self.path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", self.path.display()));
            }
        };
        Ok(stored.max(clock_seq_base()))
    }

    /// Records that seqs below `next` are used.
    pub fn store(&self, next: u32) -> anyhow::Result<()> {
        std::fs::write(&self.path, format!("{next}\n"))
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_patient_gets_one_to_three_fitting_devices() {
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..2_000 {
            let conditions = condition_mix(&mut rng);
            assert!(!conditions.is_empty());
            let kinds = device_kinds(&conditions, &mut rng);
            assert!(
                (1..=3).contains(&kinds.len()),
                "{conditions:?} -> {kinds:?}"
            );
            let has = |c| conditions.contains(&c);
            assert_eq!(
                kinds.contains(&DeviceKind::Glucose),
                has(Condition::Diabetes)
            );
            if has(Condition::Hypertension) || has(Condition::HeartFailure) {
                assert!(kinds.contains(&DeviceKind::BloodPressure));
            }
            if has(Condition::Copd) || has(Condition::HeartFailure) {
                assert!(kinds.contains(&DeviceKind::Spo2));
            }
        }
    }

    #[test]
    fn fleet_file_round_trips_and_rejects_unknown_fields() {
        let fleet = FleetFile {
            devices: vec![FleetDevice {
                id: "sim-bp-00001".into(),
                secret: "s".into(),
                kind: "bp".into(),
                patient_code: "sim-P00001".into(),
                conditions: vec!["hypertension".into()],
                tls: None,
            }],
        };
        let text = serde_json::to_string(&fleet).unwrap();
        assert_eq!(serde_json::from_str::<FleetFile>(&text).unwrap(), fleet);
        assert!(serde_json::from_str::<FleetFile>(r#"{"devices":[],"x":1}"#).is_err());
        let mut bad = fleet.devices[0].clone();
        bad.kind = "ecg".into();
        assert!(bad.parsed().is_err());
        bad.kind = "bp".into();
        bad.conditions = vec!["asthma".into()];
        assert!(bad.parsed().is_err());
    }

    #[test]
    fn seq_floor_never_goes_back() {
        let dir = std::env::temp_dir().join(format!("simseq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let floor = SeqFloor::beside(&dir.join("fleet.json"));
        let base = floor.first_seq().unwrap();
        assert!(base >= clock_seq_base().saturating_sub(10));
        floor.store(base + 1_000_000).unwrap();
        assert_eq!(floor.first_seq().unwrap(), base + 1_000_000);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
