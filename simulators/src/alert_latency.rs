//! The alert-latency benchmark: commit → alert event on the live stream, at a given
//! readings/s, through the real engine task and store.
//!
//! The setup mirrors the gateway's own wiring (`gateway::start`) without MQTT in front: the
//! engine runs as its task ([`Engine::run`], the production tick, the system clock) fed through
//! a bounded channel, exactly as the writer feeds it; producer tasks play the writer (one, or
//! `producers` like the gateway's commit lanes, each its own patients): every `batch_ms` each
//! commits the readings due (`commit_batch` with the engine outbox) and hands the stored ones
//! to the engine. A reader task plays the live stream: it waits on
//! [`Store::alert_feed`] and reads [`Store::alert_events_after`], like the SSE endpoint.
//! Latency runs from the moment `commit_batch` returned to the moment the reader holds the
//! event (opened / updated / reactivated / severity raised) of a triggering reading. Normal
//! readings are drawn inside every band so that only injected readings trigger (a single BP
//! ≥ 180/110 or glucose < 54 mg/dL each give exactly one event).
//!
//! Afterwards, the engine's ceiling: readings are committed first without the engine, then
//! handed to it all at once; the rate at which it evaluates them is its throughput alone.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alerting::{AlertsConfig, Committed, Engine, EngineMetrics, plan, system_clock};
use anyhow::Context;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use store::{
    CommitBatch, DeviceKind, NewCarePlan, NewDevice, NewPatient, NewReading, ReadingKind, Store,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::alert_quality::open_store;

/// What to measure.
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    /// `None`: a fresh SQLite file in a temporary folder. Otherwise an empty database.
    pub database_url: Option<String>,
    pub patients: usize,
    /// Readings per second offered.
    pub rate: f64,
    pub duration: Duration,
    /// The producer commits every this many ms (the writer's flush interval is 20 ms).
    pub batch_ms: u64,
    /// Share of readings that trigger an alert.
    pub trigger_share: f64,
    /// Readings for the engine-ceiling phase (0: skip it).
    pub ceiling_readings: usize,
    /// The engine's workers (`[gateway.alerts] workers`; 1: the serial engine).
    pub workers: usize,
    /// Producers committing at once, each its own patients at `rate / producers` (the
    /// gateway's commit lanes; one producer tops out near 17,000 readings/s on 2 cores).
    pub producers: usize,
    pub seed: u64,
}

impl Default for LatencyOptions {
    fn default() -> Self {
        LatencyOptions {
            database_url: None,
            patients: 5_000,
            rate: 5_000.0,
            duration: Duration::from_secs(30),
            batch_ms: 20,
            trigger_share: 0.01,
            ceiling_readings: 100_000,
            workers: AlertsConfig::default().workers,
            producers: 1,
            seed: 1,
        }
    }
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    pub store: String,
    pub patients: usize,
    pub rate_offered: f64,
    pub seconds: f64,
    pub readings: u64,
    pub rate_committed: f64,
    pub triggers: u64,
    /// Triggers whose event the reader saw.
    pub events_seen: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Commits slower than their interval (the producer fell behind).
    pub commit_p99_ms: f64,
    /// The engine alone: readings evaluated per second with `trigger_share` triggering.
    pub ceiling_readings: u64,
    pub ceiling_readings_per_s: Option<f64>,
    /// Alert writes per committed group, over the whole run (the group commit at work).
    pub alert_writes_per_commit: f64,
    pub engine_errors: u64,
}

struct Who {
    patient_id: i64,
    device_id: String,
    kind: ReadingKind,
    seq: i64,
}

type Pending = Arc<Mutex<HashMap<i64, VecDeque<Instant>>>>;

/// Runs the benchmark.
pub async fn run_alert_latency(opts: &LatencyOptions) -> anyhow::Result<LatencyReport> {
    let (store, label, _dir) = open_store(opts.database_url.as_deref()).await?;
    let report = run_on(&store, label, opts).await;
    store.close().await;
    report
}

async fn provision(store: &Store, opts: &LatencyOptions) -> anyhow::Result<Vec<Who>> {
    let code = format!("COT-LAT-{}", opts.seed);
    let cot = match store.cot_by_code(&code).await? {
        Some(c) => c,
        None => store.add_cot(&code, "Alert-latency bench").await?,
    };
    let mut out = Vec::with_capacity(opts.patients);
    for n in 0..opts.patients {
        let (condition, kind, dkind) = match n % 10 {
            0..=4 => (
                "hypertension",
                ReadingKind::BloodPressure,
                DeviceKind::BloodPressure,
            ),
            5..=7 => ("diabetes", ReadingKind::Glucose, DeviceKind::Glucose),
            _ => ("copd", ReadingKind::Spo2, DeviceKind::Spo2),
        };
        let patient = store
            .add_patient(&NewPatient {
                cot_id: cot.id,
                code: format!("lat{}-P{n:05}", opts.seed),
                display_name: format!("Latency patient {n}"),
                birth_year: None,
                conditions: vec![condition.to_owned()],
            })
            .await
            .context("enrolling a patient (use an empty database)")?;
        let device_id = format!("lat{}-{}-{n:05}", opts.seed, dkind.as_str());
        store
            .add_device(&NewDevice {
                id: device_id.clone(),
                patient_id: patient.id,
                kind: dkind,
                secret_hash: store::credentials::hash_secret(
                    &store::credentials::generate_secret(),
                ),
                model: Some("simulated".into()),
            })
            .await?;
        let template = plan::template(condition).context("template")?;
        store
            .add_care_plan(&NewCarePlan {
                patient_id: patient.id,
                template: Some(condition.to_owned()),
                plan: serde_json::to_string(&template)?,
                author: "sentinella-sim".into(),
                reason: "latency bench".into(),
            })
            .await?;
        out.push(Who {
            patient_id: patient.id,
            device_id,
            kind,
            seq: 0,
        });
    }
    Ok(out)
}

/// A reading of `who` now: inside every band, or (`trigger`) one that alerts on its own.
fn reading(who: &mut Who, trigger: bool, rng: &mut StdRng) -> NewReading {
    who.seq += 1;
    let now = OffsetDateTime::now_utc();
    let mut r = NewReading {
        ..NewReading::bare(&who.device_id, who.seq, who.patient_id, who.kind, now, now)
    };
    match who.kind {
        ReadingKind::BloodPressure => {
            let (sys, dia) = if trigger {
                (rng.gen_range(195..215), rng.gen_range(112..125))
            } else {
                (rng.gen_range(118..140), rng.gen_range(70..86))
            };
            r.systolic = Some(sys as f32);
            r.diastolic = Some(dia as f32);
            r.pulse = Some(rng.gen_range(60..90) as f32);
            r.source_unit = Some("mmHg".into());
        }
        ReadingKind::Glucose => {
            r.glucose_mg_dl = Some(if trigger {
                rng.gen_range(38..50)
            } else {
                rng.gen_range(95..160)
            } as f32);
            r.glucose_sample = Some("capillary_plasma".into());
            r.source_unit = Some("mg/dL".into());
        }
        ReadingKind::Spo2 => {
            r.spo2 = Some(rng.gen_range(90..94) as f32);
            r.pulse = Some(rng.gen_range(65..95) as f32);
            r.source_unit = Some("%".into());
        }
    }
    r
}

/// Draws `n` readings, about `share` of them triggering; returns them and the triggering
/// patients.
fn draw(who: &mut [Who], n: usize, share: f64, rng: &mut StdRng) -> (Vec<NewReading>, Vec<i64>) {
    let mut readings = Vec::with_capacity(n);
    let mut triggers = Vec::new();
    for _ in 0..n {
        let mut i = rng.gen_range(0..who.len());
        let trigger = rng.gen_bool(share.clamp(0.0, 1.0));
        if trigger {
            // BP and glucose patients (the first 8 of every 10) alert on one reading.
            i -= i % 10;
            i += rng.gen_range(0..8);
            i = i.min(who.len() - 1);
            if who[i].kind == ReadingKind::Spo2 {
                i = 0;
            }
            triggers.push(who[i].patient_id);
        }
        readings.push(reading(&mut who[i], trigger, rng));
    }
    (readings, triggers)
}

async fn commit(store: &Store, readings: Vec<NewReading>) -> anyhow::Result<Committed> {
    let outcome = store
        .commit_batch(&CommitBatch {
            readings: readings.clone(),
            outbox: true,
            ..CommitBatch::default()
        })
        .await?;
    let fresh = readings
        .into_iter()
        .zip(&outcome.fresh)
        .filter(|(_, f)| **f)
        .map(|(r, _)| r)
        .collect();
    Ok(Committed {
        readings: fresh,
        outbox: outcome.outbox.clone(),
        committed: Instant::now(),
    })
}

async fn wait_evaluated(metrics: &EngineMetrics, target: u64, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while metrics.readings_evaluated.load(Ordering::Relaxed) < target {
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

async fn run_on(
    store: &Store,
    label: String,
    opts: &LatencyOptions,
) -> anyhow::Result<LatencyReport> {
    if opts.patients < 10 {
        anyhow::bail!("at least 10 patients");
    }
    tracing::info!(patients = opts.patients, "provisioning");
    let mut who = provision(store, opts).await?;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let metrics = Arc::new(EngineMetrics::default());
    let engine = Engine::new(
        store.clone(),
        AlertsConfig {
            workers: opts.workers,
            ..AlertsConfig::default()
        },
        system_clock(),
        metrics.clone(),
    );
    let cancel = CancellationToken::new();
    let (tx, rx) = mpsc::channel(64);
    let engine_task = tokio::spawn(engine.run(rx, cancel.clone()));

    // Warm-up: one reading per patient, so the engine has met everyone (caches, plans).
    let mut sent = 0u64;
    for chunk in (0..who.len()).collect::<Vec<_>>().chunks(1_000) {
        let readings: Vec<NewReading> = chunk
            .iter()
            .map(|&i| reading(&mut who[i], false, &mut rng))
            .collect();
        sent += readings.len() as u64;
        let c = commit(store, readings).await?;
        tx.send(c).await.context("engine stopped")?;
    }
    wait_evaluated(&metrics, sent, Duration::from_secs(120)).await;
    tracing::info!("warm-up done; measuring");

    // The reader: the live stream.
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("histogram")?,
    ));
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let store = store.clone();
        let pending = pending.clone();
        let hist = hist.clone();
        let seen = seen.clone();
        let stop = cancel.child_token();
        let mut feed = store.alert_feed();
        let mut last = store.last_alert_event_id().await?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = feed.changed() => if changed.is_err() { break },
                    _ = stop.cancelled() => break,
                }
                loop {
                    let Ok(events) = store.alert_events_after(last, None, 10_000).await else {
                        break;
                    };
                    let now = Instant::now();
                    let Some(e) = events.last() else { break };
                    last = e.id;
                    for e in &events {
                        if !["opened", "updated", "reactivated", "severity_raised"]
                            .contains(&e.kind.as_str())
                        {
                            continue;
                        }
                        let t = pending
                            .lock()
                            .ok()
                            .and_then(|mut p| p.get_mut(&e.patient_id)?.pop_front());
                        if let Some(t) = t {
                            let us = now.duration_since(t).as_micros() as u64;
                            if let Ok(mut h) = hist.lock() {
                                let _ = h.record(us.max(1));
                            }
                            seen.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if events.len() < 10_000 {
                        break;
                    }
                }
            }
        })
    };

    // The producers: the writers at `rate`, each its own patients (so a patient's readings are
    // committed and handed over in order, as by the gateway's lanes).
    let k = opts.producers.clamp(1, 16);
    let per_batch = opts.rate / k as f64 * opts.batch_ms as f64 / 1_000.0;
    let start = Instant::now();
    let base = metrics.readings_evaluated.load(Ordering::Relaxed);
    let mut shares: Vec<Vec<Who>> = Vec::with_capacity(k);
    // Whole groups of 10 (the trigger draw picks within one).
    let size = who.len().div_ceil(k).div_ceil(10) * 10;
    while !who.is_empty() {
        let rest = who.split_off(size.min(who.len()));
        shares.push(std::mem::replace(&mut who, rest));
    }
    let mut producers = Vec::with_capacity(shares.len());
    for (i, mut share) in shares.into_iter().enumerate() {
        let store = store.clone();
        let tx = tx.clone();
        let pending = pending.clone();
        let mut rng = StdRng::seed_from_u64(opts.seed.wrapping_add(1 + i as u64));
        let (duration, batch_ms, trigger_share) =
            (opts.duration, opts.batch_ms, opts.trigger_share);
        producers.push(tokio::spawn(async move {
            let mut commit_hist =
                Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("histogram")?;
            let mut owed = 0.0;
            let (mut readings_total, mut triggers_total) = (0u64, 0u64);
            let mut interval = tokio::time::interval(Duration::from_millis(batch_ms.max(1)));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while start.elapsed() < duration {
                interval.tick().await;
                owed += per_batch;
                let n = owed.floor() as usize;
                if n == 0 {
                    continue;
                }
                owed -= n as f64;
                let (readings, triggers) = draw(&mut share, n, trigger_share, &mut rng);
                let t0 = Instant::now();
                let c = commit(&store, readings).await?;
                let _ = commit_hist.record((t0.elapsed().as_micros() as u64).max(1));
                readings_total += c.readings.len() as u64;
                triggers_total += triggers.len() as u64;
                if let Ok(mut p) = pending.lock() {
                    for patient in triggers {
                        p.entry(patient).or_default().push_back(c.committed);
                    }
                }
                tx.send(c).await.context("engine stopped")?;
            }
            anyhow::Ok((share, readings_total, triggers_total, commit_hist))
        }));
    }
    let mut commit_hist =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("histogram")?;
    let (mut readings_total, mut triggers_total) = (0u64, 0u64);
    for p in producers {
        let (share, readings, triggers, hist) = p.await.context("producer")??;
        who.extend(share);
        readings_total += readings;
        triggers_total += triggers;
        commit_hist.add(&hist).context("histogram")?;
    }
    let seconds = start.elapsed().as_secs_f64();
    wait_evaluated(&metrics, base + readings_total, Duration::from_secs(120)).await;
    let until = Instant::now() + Duration::from_secs(10);
    while seen.load(Ordering::Relaxed) < triggers_total && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events_seen = seen.load(Ordering::Relaxed);
    if let Ok(mut p) = pending.lock() {
        p.clear();
    }

    // The engine's ceiling.
    let mut ceiling = None;
    if opts.ceiling_readings > 0 {
        let mut batches = Vec::new();
        let mut left = opts.ceiling_readings;
        while left > 0 {
            let n = left.min(1_000);
            left -= n;
            let (readings, _) = draw(&mut who, n, opts.trigger_share, &mut rng);
            batches.push(commit(store, readings).await?);
        }
        let total: u64 = batches.iter().map(|b| b.readings.len() as u64).sum();
        let base = metrics.readings_evaluated.load(Ordering::Relaxed);
        let t0 = Instant::now();
        for b in batches {
            tx.send(b).await.context("engine stopped")?;
        }
        if wait_evaluated(&metrics, base + total, Duration::from_secs(600)).await {
            ceiling = Some((total as f64 / t0.elapsed().as_secs_f64()).round());
        }
    }

    drop(tx);
    let _ = engine_task.await;
    cancel.cancel();
    let _ = reader.await;
    let h = hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    let ms = |us: u64| (us as f64 / 100.0).round() / 10.0;
    Ok(LatencyReport {
        store: label,
        patients: opts.patients,
        rate_offered: opts.rate,
        seconds: (seconds * 10.0).round() / 10.0,
        readings: readings_total,
        rate_committed: (readings_total as f64 / seconds).round(),
        triggers: triggers_total,
        events_seen,
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
        commit_p99_ms: ms(commit_hist.value_at_quantile(0.99)),
        ceiling_readings: opts.ceiling_readings as u64,
        ceiling_readings_per_s: ceiling,
        alert_writes_per_commit: {
            let writes = metrics.alert_writes.load(Ordering::Relaxed) as f64;
            let commits = metrics.alert_write_commits.load(Ordering::Relaxed).max(1) as f64;
            (writes / commits * 10.0).round() / 10.0
        },
        engine_errors: metrics.errors.load(Ordering::Relaxed),
    })
}

impl fmt::Display for LatencyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "alert latency ({}): {} patients, {:.0} readings/s offered, {:.0} committed over {:.1} s",
            self.store, self.patients, self.rate_offered, self.rate_committed, self.seconds
        )?;
        writeln!(
            f,
            "triggers {} (events seen {}); commit -> event p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 <= 250 ms)",
            self.triggers, self.events_seen, self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms
        )?;
        writeln!(f, "commit p99 {:.1} ms", self.commit_p99_ms)?;
        match self.ceiling_readings_per_s {
            Some(c) => writeln!(
                f,
                "engine ceiling: {c:.0} readings/s evaluated ({} readings handed over at once)",
                self.ceiling_readings
            )?,
            None if self.ceiling_readings > 0 => {
                writeln!(f, "engine ceiling: did not finish within 600 s")?
            }
            None => {}
        }
        writeln!(
            f,
            "alert writes per commit {:.1}; engine errors {}",
            self.alert_writes_per_commit, self.engine_errors
        )
    }
}
