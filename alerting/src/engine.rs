//! The engine task: evaluates every committed batch per patient in measurement order, and
//! runs the time-driven rules (adherence, escalation, device health) from a timer.
//!
//! # State and restarts
//! Nothing the engine decides lives only in memory. Alerts, their condition and workflow are
//! in the store; the per-patient reading windows are a cache rebuilt from the readings table;
//! the care plans are read from the store (and re-read when their version changes). Each
//! committed batch leaves an outbox row in its own commit transaction; the engine deletes it
//! once the batch is evaluated. At start-up, the engine re-evaluates the readings of every
//! outbox row left by a crash. Re-evaluating a reading is harmless: a trigger whose readings
//! are already linked to the alert changes nothing (`Store::trigger_alert`), so a restart
//! neither loses nor duplicates alerts.
//!
//! # Late readings
//! A reading delivered more than `late_after` (default 6 h) after it was measured (a backlog
//! from a device that was offline, or a replay) is stored and joins the window (baselines,
//! persistence of later readings) but raises no current alert and clears none: it describes a
//! moment that has passed. If it would have fallen in a band of medium severity or worse, the
//! patient gets one low-severity `late-review` alert listing such readings, so a nurse looks
//! at them without treating them as an emergency. A reading whose device clock is unset or
//! implausible is dated at its receive time, evaluated as current, and raises the device's
//! `clock` alert.
//!
//! # Plans
//! The plan a patient is evaluated with is their stored plan, or without one the templates
//! of all their conditions composed ([`plan::for_conditions`]); either way with the safety
//! net joined in ([`super::net::effective`]), so every reading of every kind is judged.
//!
//! # Single readings and repeats
//! A reading in a band of medium severity or worse (or a questionable one) makes the engine
//! ask its device for a repeat ([`RepeatRequest`], delivered on the device's `config` topic),
//! at most once per device and kind in [`REPEAT_EVERY`]. An alert opened by a single reading
//! of a cuff or an oximeter in a high or critical band is *unconfirmed*; the next good reading of its metric within
//! [`CONFIRM_WITHIN`] settles it: in the same band or a worse one, `confirmed`; in a milder
//! band, `downgraded` to that band's severity; in none, `downgraded` to low (and its
//! condition clears). No repeat within that time: it stays unconfirmed at its severity, so a
//! device that cannot repeat never silences an alert. A repeat that lands after the nurse
//! resolved the alert is still recorded on it.
//!
//! # Adherence
//! Judged on measurement time: a late reading (a backlog) counts as a measurement taken. No
//! adherence alert fires while a backlog of that kind is arriving (a late reading received
//! within [`BACKLOG_QUIET`]), and none for a kind the patient has no device for.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use store::{
    AlertReading, AlertWrite, Confirmation, NewReading, ReadingKind, ReadingQuery, Severity, Store,
    StoreError, Trigger, TriggerOutcome,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::net;
use super::plan::{self, CarePlan, Check, Metric};
use super::rules::{self, Effect, Obs, Quality};

mod partitions;
mod writes;
use store::handoff::{Handoff, Next};
use telemetry::Histogram;

/// The engine's clock (a fixed or fast clock in tests).
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(OffsetDateTime::now_utc)
}

/// The `[gateway.alerts]` table.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Run the alert engine in this process.
    pub enabled: bool,
    /// How often time-driven rules run (adherence, escalation, device health).
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Response time per severity: an alert not acknowledged within it escalates.
    #[serde(with = "humantime_serde")]
    pub critical: Duration,
    #[serde(with = "humantime_serde")]
    pub high: Duration,
    #[serde(with = "humantime_serde")]
    pub medium: Duration,
    #[serde(with = "humantime_serde")]
    pub low: Duration,
    /// A reading delivered later than this after its measurement raises no current alert.
    #[serde(with = "humantime_serde")]
    pub late_after: Duration,
    /// Patients whose reading windows are cached; beyond it the least recently used are
    /// dropped (and reloaded from the store when they measure again).
    pub max_cached_patients: usize,
    /// Committed batches held in memory for the engine; when it lags further, batches wait
    /// in the store's outbox instead and the engine catches up from there (the writer never
    /// waits for the engine).
    pub queue_batches: usize,
    /// Workers evaluating patients at the same time, each the patients of its share of the
    /// alert partitions (a patient always by the same worker, its readings in order).
    pub workers: usize,
    /// A pause before each reading is evaluated: makes the engine slow on purpose, for tests
    /// and benchmarks of a lagging engine. Not read from the file; zero otherwise.
    #[serde(skip)]
    pub evaluation_delay: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            enabled: true,
            tick: Duration::from_secs(30),
            critical: Duration::from_secs(15 * 60),
            high: Duration::from_secs(2 * 3600),
            medium: Duration::from_secs(8 * 3600),
            low: Duration::from_secs(24 * 3600),
            late_after: Duration::from_secs(6 * 3600),
            max_cached_patients: 50_000,
            queue_batches: 256,
            workers: 32,
            evaluation_delay: Duration::ZERO,
        }
    }
}

impl AlertsConfig {
    /// How long an alert of `severity` may wait for acknowledgement (`None`: never escalates).
    pub fn response(&self, severity: Severity) -> Option<Duration> {
        match severity {
            Severity::Critical => Some(self.critical),
            Severity::High => Some(self.high),
            Severity::Medium => Some(self.medium),
            Severity::Low => Some(self.low),
            Severity::Info => None,
        }
    }
}

pub use store::Committed;

/// Counters of the engine, rendered on `/metrics`.
#[derive(Debug, Default)]
pub struct EngineMetrics {
    pub readings_evaluated: AtomicU64,
    pub readings_late: AtomicU64,
    pub readings_suppressed: AtomicU64,
    pub alerts_opened: AtomicU64,
    pub alerts_updated: AtomicU64,
    pub alerts_cleared: AtomicU64,
    pub alerts_escalated: AtomicU64,
    pub errors: AtomicU64,
    /// Times the engine read lagging batches back from the outbox.
    pub catch_ups: AtomicU64,
    /// Steps that started behind (their oldest batch committed more than `BEHIND_AFTER`
    /// before), evaluated in long turns.
    pub steps_behind: AtomicU64,
    /// Times a worker gave the runtime a turn between readings.
    pub yields: AtomicU64,
    /// Alert partitions this node holds now (gauge; all of them on SQLite).
    pub partitions_held: AtomicU64,
    /// Live nodes sharing the partitions, as last counted (gauge).
    pub nodes_live: AtomicU64,
    /// Partitions taken (at start, from a node that died or left, or given back).
    pub partitions_taken: AtomicU64,
    /// Workers evaluating now (gauge).
    pub workers_busy: AtomicU64,
    /// The most workers ever evaluating at the same time.
    pub workers_busy_peak: AtomicU64,
    /// Alert writes (triggers, clears, confirmations) committed, and the transactions
    /// that committed them (the group commit's effect is the ratio).
    pub alert_writes: AtomicU64,
    pub alert_write_commits: AtomicU64,
    /// Triggers whose answer a worker waited for: an alert it did not know open may open.
    pub alert_write_waits: AtomicU64,
    /// From a batch's commit to its alert events being written.
    pub commit_to_alert_seconds: Histogram,
    /// From the oldest batch's commit to the start of the step that evaluates it.
    pub step_wait_seconds: Histogram,
    /// A step: its readings evaluated and their alert writes committed.
    pub step_seconds: Histogram,
    /// A worker's wait, at the end of its share of a step, for its alert writes to commit.
    pub settle_seconds: Histogram,
}

/// A worker counted busy while it lives.
struct Busy<'a>(&'a EngineMetrics);

impl<'a> Busy<'a> {
    fn start(metrics: &'a EngineMetrics) -> Busy<'a> {
        let now = metrics.workers_busy.fetch_add(1, Ordering::Relaxed) + 1;
        metrics.workers_busy_peak.fetch_max(now, Ordering::Relaxed);
        Busy(metrics)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.workers_busy.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EngineMetrics {
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        for (name, help, v) in [
            (
                "alert_readings_evaluated_total",
                "Readings evaluated by the alert engine.",
                &self.readings_evaluated,
            ),
            (
                "alert_readings_late_total",
                "Readings evaluated as late (no current alert).",
                &self.readings_late,
            ),
            (
                "alert_readings_suppressed_total",
                "Readings excluded from clinical rules (invalid, test, demo, control solution).",
                &self.readings_suppressed,
            ),
            ("alerts_opened_total", "Alerts opened.", &self.alerts_opened),
            (
                "alerts_updated_total",
                "Open alerts updated (count, severity, reactivation).",
                &self.alerts_updated,
            ),
            (
                "alerts_cleared_total",
                "Alert conditions cleared.",
                &self.alerts_cleared,
            ),
            (
                "alerts_escalated_total",
                "Alerts escalated for lack of acknowledgement.",
                &self.alerts_escalated,
            ),
            (
                "alert_engine_errors_total",
                "Store errors met by the alert engine.",
                &self.errors,
            ),
            (
                "alert_engine_catch_ups_total",
                "Times the alert engine, lagging, read committed batches back from the outbox.",
                &self.catch_ups,
            ),
            (
                "alert_engine_steps_behind_total",
                "Steps of the alert engine that started behind and took long turns on the runtime.",
                &self.steps_behind,
            ),
            (
                "alert_engine_yields_total",
                "Times an alert engine worker gave the device path a turn between readings.",
                &self.yields,
            ),
            (
                "alert_writes_total",
                "Alert writes (triggers, clears, confirmations) the engine committed.",
                &self.alert_writes,
            ),
            (
                "alert_write_commits_total",
                "Transactions that committed the engine's alert writes (several per commit).",
                &self.alert_write_commits,
            ),
            (
                "alert_write_waits_total",
                "Alert triggers whose answer an engine worker waited for (an alert it did not know open may open).",
                &self.alert_write_waits,
            ),
            (
                "alert_partitions_taken_total",
                "Alert partitions this node took (at start, from a node that died or left).",
                &self.partitions_taken,
            ),
        ] {
            let _ = writeln!(out, "# HELP sentinella_{name} {help}");
            let _ = writeln!(out, "# TYPE sentinella_{name} counter");
            let _ = writeln!(out, "sentinella_{name} {}", v.load(Ordering::Relaxed));
        }
        for (name, help, v) in [
            (
                "alert_partitions_held",
                "Alert partitions (of 64) whose patients this node evaluates.",
                &self.partitions_held,
            ),
            (
                "alert_nodes_live",
                "Nodes sharing the alert partitions, as last counted.",
                &self.nodes_live,
            ),
            (
                "alert_workers_busy",
                "Alert engine workers evaluating readings now.",
                &self.workers_busy,
            ),
        ] {
            let _ = writeln!(out, "# HELP sentinella_{name} {help}");
            let _ = writeln!(out, "# TYPE sentinella_{name} gauge");
            let _ = writeln!(out, "sentinella_{name} {}", v.load(Ordering::Relaxed));
        }
        self.commit_to_alert_seconds.render(
            out,
            "sentinella_commit_to_alert_seconds",
            "From a batch's commit to the alert engine having written its events.",
        );
        self.step_wait_seconds.render(
            out,
            "sentinella_alert_step_wait_seconds",
            "From the oldest batch's commit to the start of the alert engine step that evaluates it.",
        );
        self.step_seconds.render(
            out,
            "sentinella_alert_step_seconds",
            "An alert engine step: its readings evaluated and their alert writes committed.",
        );
        self.settle_seconds.render(
            out,
            "sentinella_alert_settle_seconds",
            "A worker's wait, at the end of its share of a step, for its alert writes to commit.",
        );
    }
}

/// A repeat measurement the engine asks a device for (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct RepeatRequest {
    pub device_id: String,
    pub kind: ReadingKind,
    pub in_minutes: u32,
    /// When it was asked for, by the engine's clock (also the request's id on the wire).
    pub at: OffsetDateTime,
}

/// At most one repeat request per device and kind within this time.
pub const REPEAT_EVERY: time::Duration = time::Duration::minutes(30);
/// A repeat settles an unconfirmed alert only within this time of the reading that opened it.
pub const CONFIRM_WITHIN: time::Duration = time::Duration::hours(2);
/// A late reading of a kind received within this time: its backlog is still arriving.
pub const BACKLOG_QUIET: time::Duration = time::Duration::minutes(15);

/// An unconfirmed alert waiting for its repeat.
#[derive(Debug, Clone, Copy)]
struct Pending {
    severity: Severity,
    metric: Metric,
    at: rules::At,
}

/// A patient's plan as the engine uses it.
#[derive(Debug)]
struct LoadedPlan {
    plan: CarePlan,
    /// `None`: no stored plan, the template for the patient's conditions applies.
    version: Option<i64>,
}

#[derive(Debug)]
struct PatientState {
    plan: Arc<LoadedPlan>,
    /// Recent readings of every kind, sorted.
    window: rules::Window,
    /// Rules whose condition is active in the store (so a reading back in range clears).
    active: HashSet<String>,
    /// Rules with an alert not resolved, as the worker last learned: a trigger of one
    /// updates it, so nothing waits for its answer. A nurse may have resolved one since;
    /// then the trigger opens a new alert, and its answer, settled at the end of the step,
    /// says so (see [`Worker::opened`]).
    open: HashSet<String>,
    /// Unconfirmed alerts by rule, waiting for a repeat.
    unconfirmed: HashMap<String, Pending>,
    /// Average rules that opened an alert recently: quiet until then.
    quiet_until: HashMap<String, OffsetDateTime>,
    touched: u64,
}

/// How long the engine keeps evaluating queued batches once shutdown has begun.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Outbox spans of one patient this close together are read back in one query.
const CATCH_UP_GAP: time::Duration = time::Duration::seconds(1);

/// Queued batches evaluated together, up to this many readings (see [`Engine::on_batches`]).
const MERGE_READINGS: usize = 20_000;

/// Readings evaluated between two yields to the runtime (and of the CPU permit). Yielding
/// every 2 ms instead let the engine keep up better under a full device load but put the
/// device path's half-rate p99 publish->ack over 250 ms (320 ms in `bench.sh`).
const YIELD_EVERY: usize = 32;

/// The same for a step that starts behind: its oldest batch was committed more than
/// [`BEHIND_AFTER`] before. A yield puts the worker behind every device connection and writer
/// with work, so under a full device load 32 readings per turn bound what the engine
/// evaluates, however few cycles it needs; late, it takes longer turns, and the acks wait
/// a little instead of the alerts a lot.
const YIELD_EVERY_BEHIND: usize = 512;

/// How late a step's oldest batch may be before the step takes longer turns (a quarter of
/// the commit → alert target).
const BEHIND_AFTER: std::time::Duration = std::time::Duration::from_millis(60);

/// How much history a window keeps (the longest baseline plus margin).
const WINDOW: time::Duration = time::Duration::days(15);

/// The alert engine: a coordinator and its workers.
///
/// The coordinator owns the hand-off, the outbox deletion, the partition leases and the
/// timers' schedule; each [`Worker`] owns the patients of the partitions `p % workers == i`
/// with their whole state (cache, plans, adherence clocks). A batch is split by worker and
/// the workers evaluate their share at the same time, each on its own task; the coordinator
/// waits for all of them before the next batch. So a patient is evaluated by one worker only,
/// its readings in order, and nothing is shared between workers (no locks); leases and
/// timers run between batches, when every worker is idle.
pub struct Engine {
    store: Store,
    /// The workers' alert writes, committed in groups.
    writes: writes::Writes,
    cpu: Arc<tokio::sync::Semaphore>,
    /// Fires `STOP_GRACE` after shutdown began: the workers leave what they have not
    /// evaluated yet in the outbox (a catch-up of a long backlog is one step).
    halt: CancellationToken,
    config: AlertsConfig,
    clock: Clock,
    metrics: Arc<EngineMetrics>,
    /// Where repeat requests go (`None`: nowhere, e.g. a benchmark without devices).
    repeats: Option<mpsc::UnboundedSender<RepeatRequest>>,
    /// Fires at shutdown: timers stop, the remaining batches are still evaluated.
    stopping: CancellationToken,
    /// `None` only while the worker is out on its task.
    workers: Vec<Option<Worker>>,
    done_outbox: Vec<i64>,
    /// Outbox entries evaluated from the store (catch-up, takeover, other nodes' batches),
    /// with when: the same batch arriving from memory afterwards is skipped.
    seen: HashMap<i64, std::time::Instant>,
    /// The alert partitions this engine evaluates (`None`: all, alone on its store).
    leases: Option<store::Leases>,
    /// When each partition was last taken (batches committed before are not evaluated from
    /// memory: the takeover read them from the store).
    held_since: [Option<std::time::Instant>; store::leases::PARTITIONS as usize],
}

/// The state and evaluation of one worker's patients (see [`Engine`]).
struct Worker {
    store: Store,
    writes: writes::Writes,
    /// Shared by the workers: see [`cpu_permits`].
    cpu: Arc<tokio::sync::Semaphore>,
    /// The permit while this worker evaluates. At most `cpu_permits()` workers evaluate at
    /// any instant, however many wait on the store: the rest of the runtime (connections,
    /// batcher, writers) keeps its share of the cores. A worker keeps its permit from
    /// reading to reading and from patient to patient (taking it for each was a task switch
    /// per patient) and lets go of it before it may wait on the store, at every yield and
    /// when its share of a step is through.
    cpu_held: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Readings evaluated since the worker last yielded.
    since_yield: usize,
    /// Readings evaluated between two yields in this step: [`YIELD_EVERY`], or
    /// [`YIELD_EVERY_BEHIND`] when it started behind.
    turn: usize,
    halt: CancellationToken,
    config: AlertsConfig,
    clock: Clock,
    metrics: Arc<EngineMetrics>,
    repeats: Option<mpsc::UnboundedSender<RepeatRequest>>,
    stopping: CancellationToken,
    /// The partitions of this worker (`p % workers == index`).
    mask: u64,
    /// Of those, the ones the engine holds now.
    held: u64,
    patients: HashMap<i64, PatientState>,
    /// Latest measurement per (patient, kind), for adherence.
    last_measured: HashMap<(i64, ReadingKind), OffsetDateTime>,
    /// Time-driven conditions known active (not to re-trigger every tick).
    timed_active: HashSet<(i64, String)>,
    plans: HashMap<i64, Arc<LoadedPlan>>,
    /// Composed plans shared by every patient without a stored plan, by conditions.
    templates: HashMap<String, Arc<LoadedPlan>>,
    last_repeat: HashMap<(String, ReadingKind), OffsetDateTime>,
    /// When a late reading of (patient, kind) last arrived, by the engine's clock.
    last_late: HashMap<(i64, ReadingKind), OffsetDateTime>,
    /// The (patient, kind) pairs with a device (`None` until the first device tick).
    device_kinds: Option<HashSet<(i64, ReadingKind)>>,
    touch: u64,
    /// Answers of writes nothing waits on (see `writes`), by patient: settled once the
    /// worker's share of a step is through (one wait for all, not one per patient).
    unsettled: Vec<Unsettled>,
    /// Whether the (patient, average rule) alert was open when read in this step.
    open_seen: HashMap<(i64, String), bool>,
}

/// A write sent without waiting, settled once the worker's share of a step is through.
struct Unsettled {
    patient: i64,
    answer: writes::Answer,
    /// A trigger's: what it changes in the cached state if it opens an alert.
    opens: Option<Opens>,
}

/// What a trigger that opens an alert changes in the worker's cached state.
struct Opens {
    rule_id: String,
    /// A single reading's alert: unconfirmed until a repeat.
    pending: Option<Pending>,
    /// An average's alert: the rule is quiet for a week.
    average: bool,
    now: OffsetDateTime,
}

/// Work for a worker: one patient's readings, from memory or read back from the store.
enum Job {
    Readings(i64, Vec<NewReading>),
    /// Received-at spans of the patient's readings in the store.
    Spans(i64, Vec<(OffsetDateTime, OffsetDateTime)>),
}

impl Job {
    fn patient(&self) -> i64 {
        match self {
            Job::Readings(p, _) | Job::Spans(p, _) => *p,
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

/// Why a worker left a patient unevaluated at shutdown (see `Engine::halt`).
fn halted() -> StoreError {
    StoreError::Invalid("alert engine stopping".into())
}

/// How many workers may evaluate rules at the same instant: half the cores (at least one).
/// The workers are many so that their store round trips overlap (and their alert writes share
/// commits), not to take every core from the device path on the same runtime.
fn cpu_permits() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// The worker evaluating `patient`, of `workers`.
fn worker_of(patient: i64, workers: usize) -> usize {
    store::leases::partition_of(patient) as usize % workers
}

/// The partitions of worker `index` of `workers`.
fn worker_mask(index: usize, workers: usize) -> u64 {
    (0..store::leases::PARTITIONS)
        .filter(|p| *p as usize % workers == index)
        .fold(0u64, |m, p| m | (1u64 << p))
}

impl Engine {
    pub fn new(
        store: Store,
        config: AlertsConfig,
        clock: Clock,
        metrics: Arc<EngineMetrics>,
    ) -> Engine {
        let mut engine = Engine {
            writes: writes::Writes::new(store.clone(), metrics.clone()),
            cpu: Arc::new(tokio::sync::Semaphore::new(cpu_permits())),
            halt: CancellationToken::new(),
            store,
            config,
            clock,
            metrics,
            repeats: None,
            stopping: CancellationToken::new(),
            workers: Vec::new(),
            done_outbox: Vec::new(),
            seen: HashMap::new(),
            leases: None,
            held_since: [None; store::leases::PARTITIONS as usize],
        };
        engine.reset_workers();
        engine
    }

    /// New workers with empty caches (they fill from the store as patients measure).
    fn reset_workers(&mut self) {
        let k = self
            .config
            .workers
            .clamp(1, store::leases::PARTITIONS as usize);
        self.workers = (0..k).map(|i| Some(self.new_worker(i, k))).collect();
    }

    fn new_worker(&self, index: usize, of: usize) -> Worker {
        // The cache bound is the engine's: each worker keeps its share.
        let mut config = self.config.clone();
        config.max_cached_patients = config.max_cached_patients.div_ceil(of).max(1);
        Worker {
            mask: worker_mask(index, of),
            store: self.store.clone(),
            writes: self.writes.clone(),
            cpu: self.cpu.clone(),
            cpu_held: None,
            since_yield: 0,
            turn: YIELD_EVERY,
            halt: self.halt.clone(),
            config,
            clock: self.clock.clone(),
            metrics: self.metrics.clone(),
            repeats: self.repeats.clone(),
            stopping: self.stopping.clone(),
            held: 0,
            patients: HashMap::new(),
            last_measured: HashMap::new(),
            timed_active: HashSet::new(),
            plans: HashMap::new(),
            templates: HashMap::new(),
            last_repeat: HashMap::new(),
            last_late: HashMap::new(),
            device_kinds: None,
            touch: 0,
            unsettled: Vec::new(),
            open_seen: HashMap::new(),
        }
    }

    /// The workers (all at home: between batches).
    fn workers(&mut self) -> impl Iterator<Item = &mut Worker> {
        let held = self.held();
        self.workers.iter_mut().filter_map(move |w| {
            let w = w.as_mut()?;
            w.held = held & w.mask;
            Some(w)
        })
    }

    /// The worker of `patient`.
    fn worker(&mut self, patient: i64) -> Option<&mut Worker> {
        let i = worker_of(patient, self.workers.len());
        self.workers.get_mut(i)?.as_mut()
    }

    /// Evaluates `jobs`, each worker its own patients on its own task, all at once; returns
    /// the patients whose evaluation failed (their cached state is dropped).
    async fn dispatch(&mut self, jobs: Vec<Job>, turn: usize) -> Vec<(i64, StoreError)> {
        let k = self.workers.len();
        let held = self.held();
        let mut shares: Vec<Vec<Job>> = (0..k).map(|_| Vec::new()).collect();
        for job in jobs {
            shares[worker_of(job.patient(), k)].push(job);
        }
        let mut running = Vec::new();
        for (i, share) in shares.into_iter().enumerate() {
            if share.is_empty() {
                continue;
            }
            let Some(mut worker) = self.workers[i].take() else {
                continue;
            };
            worker.held = held & worker.mask;
            worker.turn = turn;
            running.push((
                i,
                share.iter().map(Job::patient).collect::<Vec<_>>(),
                tokio::spawn(async move {
                    let failed = worker.run(share).await;
                    (worker, failed)
                }),
            ));
        }
        let mut failed = Vec::new();
        for (i, patients, task) in running {
            match task.await {
                Ok((worker, f)) => {
                    self.workers[i] = Some(worker);
                    failed.extend(f);
                }
                Err(e) => {
                    // A panic in a rule: the worker's cache is gone; it is rebuilt from the
                    // store, and its batches stay in the outbox for the next start.
                    tracing::error!(error = %e, worker = i, "alert engine worker failed");
                    self.workers[i] = Some(self.new_worker(i, k));
                    failed.extend(
                        patients
                            .into_iter()
                            .map(|p| (p, StoreError::Invalid("alert worker failed".into()))),
                    );
                }
            }
        }
        failed
    }

    /// Evaluates only the patients of the alert partitions `leases` holds, and takes its
    /// share of them in its loop, among the nodes on the same PostgreSQL database (see
    /// `store::leases` and the `partitions` module). Without it the engine evaluates every
    /// patient.
    pub fn with_leases(mut self, leases: store::Leases) -> Engine {
        self.leases = Some(leases);
        self
    }

    /// Sends repeat requests to `tx` (the gateway delivers them to the devices).
    pub fn with_repeats(mut self, tx: mpsc::UnboundedSender<RepeatRequest>) -> Engine {
        self.repeats = Some(tx.clone());
        for w in self.workers() {
            w.repeats = Some(tx.clone());
        }
        self
    }

    fn set_stopping(&mut self, cancel: &CancellationToken) {
        self.stopping = cancel.clone();
        for w in self.workers() {
            w.stopping = cancel.clone();
        }
    }

    /// Runs until `cancel` fires and the channel is drained: recovers the outbox first, then
    /// evaluates batches as they come and runs the timers.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Committed>, cancel: CancellationToken) {
        self.set_stopping(&cancel);
        self.start_up(&cancel).await;
        let start = tokio::time::Instant::now() + self.config.tick;
        let mut tick = tokio::time::interval_at(start, self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                batch = rx.recv() => match batch {
                    Some(batch) => {
                        let mut batches = vec![batch];
                        let mut readings = batches[0].readings.len();
                        while readings < MERGE_READINGS
                            && let Ok(more) = rx.try_recv()
                        {
                            readings += more.readings.len();
                            batches.push(more);
                        }
                        self.on_batches(batches).await;
                    }
                    None => break,
                },
                _ = tick.tick(), if !cancel.is_cancelled() => self.on_tick().await,
            }
        }
        self.flush_outbox().await;
        tracing::debug!("alert engine stopped");
    }

    /// [`Engine::run`] fed through a [`Handoff`]: the writer never waits for the engine;
    /// when the engine lags, it catches up from the outbox (see `store::handoff`).
    pub async fn run_handoff(mut self, handoff: Arc<Handoff>, cancel: CancellationToken) {
        self.set_stopping(&cancel);
        self.start_up(&cancel).await;
        let start = tokio::time::Instant::now() + self.config.tick;
        let mut tick = tokio::time::interval_at(start, self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Shared leases (PostgreSQL): a lease round and a look for other nodes' batches.
        let shared = self.leases.as_ref().is_some_and(store::Leases::shared);
        let mut rounds = tokio::time::interval_at(
            tokio::time::Instant::now() + partitions::LEASE_ROUND,
            partitions::LEASE_ROUND,
        );
        rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut polls = tokio::time::interval(partitions::OUTBOX_POLL);
        polls.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // At shutdown the queue is drained for at most STOP_GRACE; what is left stays in the
        // outbox, which the next start evaluates (so SIGTERM never waits on a lagging engine).
        // A step in progress at that point (a long catch-up is one step) is cut short too: this
        // loop only sees the cancellation between steps, so a task of its own halts the workers.
        let halt = self.halt.clone();
        let stopping = cancel.clone();
        let halter = tokio::spawn(async move {
            stopping.cancelled().await;
            tokio::time::sleep(STOP_GRACE).await;
            halt.cancel();
        });
        let halted = self.halt.clone();
        loop {
            if halted.is_cancelled() {
                tracing::info!(
                    "alert engine stopping; batches not yet evaluated stay in the outbox"
                );
                break;
            }
            tokio::select! {
                _ = halted.cancelled() => {}
                next = handoff.next() => match next {
                    Next::Batch(batch) => {
                        let mut batches = vec![batch];
                        batches.extend(handoff.take_ready(MERGE_READINGS));
                        self.on_batches(batches).await;
                    }
                    Next::CatchUp => {
                        // Until it works: the handoff queues nothing meanwhile.
                        while let Err(e) = self.catch_up().await {
                            if self.halt.is_cancelled() || !self.wait_after(&e, &cancel).await {
                                break;
                            }
                        }
                    }
                    Next::Closed => break,
                },
                _ = tick.tick(), if !cancel.is_cancelled() => self.on_tick().await,
                _ = rounds.tick(), if shared && !cancel.is_cancelled() => self.lease_round().await,
                _ = polls.tick(), if shared && !cancel.is_cancelled() => self.poll_others().await,
            }
        }
        halter.abort();
        self.flush_outbox().await;
        self.release_leases().await;
        tracing::debug!("alert engine stopped");
    }

    /// Evaluates every pending outbox entry of the partitions held from the store (see
    /// [`Engine::evaluate_entries`]). Returns how many entries it evaluated.
    pub async fn catch_up(&mut self) -> Result<usize, StoreError> {
        // What was evaluated from memory is not pending any more.
        self.flush_outbox().await;
        let pending = self.store.pending_outbox_in(self.held(), None).await?;
        if pending.is_empty() {
            return Ok(0);
        }
        self.metrics.catch_ups.fetch_add(1, Ordering::Relaxed);
        let n = self.evaluate_entries(pending).await?;
        tracing::info!(
            batches = n,
            "alert engine lagged: caught up from the outbox"
        );
        Ok(n)
    }

    /// Evaluates outbox entries read from the store: per patient, the readings received in
    /// its entries' time spans (adjacent spans merged into one query), in measurement order;
    /// then deletes the entries. Returns how many entries it evaluated.
    async fn evaluate_entries(
        &mut self,
        pending: Vec<store::OutboxEntry>,
    ) -> Result<usize, StoreError> {
        let mut spans: std::collections::BTreeMap<i64, Vec<(OffsetDateTime, OffsetDateTime)>> =
            std::collections::BTreeMap::new();
        for entry in &pending {
            for &patient in &entry.patients {
                spans
                    .entry(patient)
                    .or_default()
                    .push((entry.min_received_at, entry.max_received_at));
            }
        }
        let mut jobs = Vec::with_capacity(spans.len());
        for (patient, mut list) in spans {
            list.sort();
            let mut merged: Vec<(OffsetDateTime, OffsetDateTime)> = Vec::new();
            for (lo, hi) in list {
                match merged.last_mut() {
                    Some(last) if lo <= last.1 + CATCH_UP_GAP => last.1 = last.1.max(hi),
                    _ => merged.push((lo, hi)),
                }
            }
            jobs.push(Job::Spans(patient, merged));
        }
        if let Some((_, e)) = self.dispatch(jobs, YIELD_EVERY).await.into_iter().next() {
            // The entries stay: the next catch-up, poll or start evaluates them again.
            return Err(e);
        }
        let ids: Vec<i64> = pending.iter().map(|e| e.id).collect();
        self.store.finish_outbox(&ids).await?;
        let now = std::time::Instant::now();
        self.seen.extend(ids.iter().map(|id| (*id, now)));
        Ok(ids.len())
    }

    /// The partitions this engine evaluates now, as a mask.
    fn held(&self) -> u64 {
        self.leases
            .as_ref()
            .map_or(store::leases::ALL_PARTITIONS, store::Leases::held)
    }

    /// Whether this engine evaluates `patient` now.
    fn holds(&self, patient: i64) -> bool {
        store::leases::holds(self.held(), patient)
    }

    async fn start_up(&mut self, cancel: &CancellationToken) {
        let now = (self.clock)();
        // A share of the partitions first: recovery evaluates only those.
        while self.leases.as_ref().is_some_and(store::Leases::shared) {
            match self.take_share().await {
                Ok(()) => break,
                Err(e) => {
                    if !self.wait_after(&e, cancel).await {
                        return;
                    }
                }
            }
        }
        loop {
            match self.load_all_plans().await {
                Ok(()) => break,
                Err(e) => {
                    if !self.wait_after(&e, cancel).await {
                        return;
                    }
                }
            }
        }
        loop {
            match self
                .store
                .last_measured(now - time::Duration::days(31))
                .await
            {
                Ok(rows) => {
                    for (patient, kind, at) in rows {
                        if let Some(kind) = ReadingKind::parse(&kind)
                            && let Some(w) = self.worker(patient)
                        {
                            w.last_measured.insert((patient, kind), at);
                        }
                    }
                    break;
                }
                Err(e) => {
                    if !self.wait_after(&e, cancel).await {
                        return;
                    }
                }
            }
        }
        loop {
            match self.recover().await {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(
                            batches = n,
                            "alert engine re-evaluated batches left by a stop"
                        );
                    }
                    break;
                }
                Err(e) => {
                    if !self.wait_after(&e, cancel).await {
                        return;
                    }
                }
            }
        }
    }

    /// Every patient's plan in two queries: stored plans, and the shared template for the
    /// conditions of everyone else.
    async fn load_all_plans(&mut self) -> Result<(), StoreError> {
        let stored: HashMap<i64, store::CarePlanRow> = self
            .store
            .current_care_plans()
            .await?
            .into_iter()
            .map(|r| (r.patient_id, r))
            .collect();
        for p in self.store.list_patients(None, None).await? {
            let Some(w) = self.worker(p.id) else {
                continue;
            };
            let loaded = match stored.get(&p.id) {
                Some(row) => Arc::new(parse_stored(row)),
                None => w.template_plan(&p.conditions),
            };
            w.plans.insert(p.id, loaded);
        }
        Ok(())
    }

    /// Logs a store error and waits a moment; false if shutting down.
    async fn wait_after(&self, e: &StoreError, cancel: &CancellationToken) -> bool {
        self.metrics.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "alert engine: store error; retrying");
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(Duration::from_secs(1)) => true,
        }
    }

    /// Re-evaluates the readings of every pending outbox entry of the partitions held (left
    /// by a stop or a crash); returns how many entries.
    pub async fn recover(&mut self) -> Result<usize, StoreError> {
        let pending = self.store.pending_outbox_in(self.held(), None).await?;
        if pending.is_empty() {
            return Ok(0);
        }
        self.evaluate_entries(pending).await
    }

    /// Evaluates one committed batch: the readings of the partitions held since before its
    /// commit whose outbox entry was not already evaluated from the store.
    pub async fn on_batch(&mut self, batch: Committed) {
        self.on_batches(vec![batch]).await;
    }

    /// Evaluates committed batches together, in commit order (see [`Engine::on_batch`]): one
    /// dispatch for all, so the workers share more readings (and more alert writes to commit
    /// in one group) between two waits for the slowest of them.
    pub async fn on_batches(&mut self, batches: Vec<Committed>) {
        let mut by_patient: HashMap<i64, Vec<NewReading>> = HashMap::new();
        let mut done = Vec::new();
        let mut committed = Vec::with_capacity(batches.len());
        for batch in batches {
            let mut skip = 0u64;
            for entry in &batch.outbox {
                let taken_after = self.held_since[entry.partition as usize]
                    .is_some_and(|since| since > batch.committed);
                if self.seen.remove(&entry.id).is_some() || taken_after {
                    skip |= 1u64 << entry.partition;
                }
            }
            let evaluate = self.held() & !skip;
            for r in batch.readings {
                if store::leases::holds(evaluate, r.patient_id) {
                    by_patient.entry(r.patient_id).or_default().push(r);
                }
            }
            done.extend(
                batch
                    .outbox
                    .iter()
                    .filter(|e| evaluate & (1u64 << e.partition) != 0)
                    .map(|e| e.id),
            );
            committed.push(batch.committed);
        }
        let jobs = by_patient
            .into_iter()
            .map(|(patient, readings)| Job::Readings(patient, readings))
            .collect();
        let waited = committed.iter().min().map(|oldest| oldest.elapsed());
        if let Some(w) = waited {
            self.metrics.step_wait_seconds.observe(w);
        }
        let behind = waited.is_some_and(|w| w > BEHIND_AFTER);
        let turn = if behind {
            self.metrics.steps_behind.fetch_add(1, Ordering::Relaxed);
            YIELD_EVERY_BEHIND
        } else {
            YIELD_EVERY
        };
        let started = std::time::Instant::now();
        let failed = self.dispatch(jobs, turn).await;
        self.metrics.step_seconds.observe(started.elapsed());
        let ok = failed.is_empty();
        if self.halt.is_cancelled() && !ok {
            tracing::info!(
                patients = failed.len(),
                "alert engine stopped mid-step; the rest stays in the outbox for the next start"
            );
        } else {
            for (patient, e) in failed {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                // The outbox entries stay: a restart evaluates these readings again.
                tracing::warn!(error = %e, patient, "alert engine: evaluation failed; kept for re-evaluation");
            }
        }
        for at in committed {
            self.metrics.commit_to_alert_seconds.observe(at.elapsed());
        }
        if ok {
            self.done_outbox.extend(done);
            if self.done_outbox.len() >= 64 {
                self.flush_outbox().await;
            }
        }
    }

    async fn flush_outbox(&mut self) {
        if self.done_outbox.is_empty() {
            return;
        }
        match self.store.finish_outbox(&self.done_outbox).await {
            Ok(()) => self.done_outbox.clear(),
            Err(e) => {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "alert engine: could not clear the outbox; will retry");
            }
        }
    }

    /// The time-driven rules.
    pub async fn on_tick(&mut self) {
        self.flush_outbox().await;
        self.prune_seen();
        let now = (self.clock)();
        // The timers run worker by worker: once every 30 s, no need to run them in parallel.
        match self.store.care_plan_versions().await {
            Ok(versions) => {
                let mut errors = Vec::new();
                for w in self.workers() {
                    if let Err(e) = w.refresh_plans(&versions).await {
                        errors.push(e);
                    }
                }
                errors.iter().for_each(|e| self.note_error(e));
            }
            Err(e) => self.note_error(&e),
        }
        if let Err(e) = self.escalate(now).await {
            self.note_error(&e);
        }
        match self.store.list_devices(None, None).await {
            Ok(devices) => {
                let mut errors = Vec::new();
                for w in self.workers() {
                    if let Err(e) = w.devices(&devices, now).await {
                        errors.push(e);
                    }
                }
                errors.iter().for_each(|e| self.note_error(e));
            }
            Err(e) => self.note_error(&e),
        }
        let mut errors = Vec::new();
        for w in self.workers() {
            if let Err(e) = w.adherence(now).await {
                errors.push(e);
            }
        }
        errors.iter().for_each(|e| self.note_error(e));
    }

    fn note_error(&self, e: &StoreError) {
        self.metrics.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "alert engine timer: store error; next tick retries");
    }

    async fn escalate(&mut self, now: OffsetDateTime) -> Result<(), StoreError> {
        for alert in self.store.overdue_alerts(now, 500).await? {
            if self.stopping.is_cancelled() {
                break;
            }
            if !self.holds(alert.patient_id) {
                continue;
            }
            let Some(response) = self.config.response(alert.severity) else {
                continue;
            };
            let next = now + time::Duration::try_from(response).unwrap_or(time::Duration::HOUR);
            if self
                .store
                .escalate_alert(alert.id, now, next)
                .await?
                .is_some()
            {
                self.metrics
                    .alerts_escalated
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    alert = alert.id,
                    patient = alert.patient_id,
                    severity = alert.severity.as_str(),
                    "alert escalated: not acknowledged in time"
                );
            }
        }
        Ok(())
    }
}

impl Worker {
    /// Evaluates its share of a batch, patient by patient; returns the patients that failed
    /// (their cached state dropped: it is reloaded from the store next time).
    async fn run(&mut self, jobs: Vec<Job>) -> Vec<(i64, StoreError)> {
        let metrics = self.metrics.clone();
        let _busy = Busy::start(&metrics);
        let mut failed = Vec::new();
        for job in jobs {
            let patient = job.patient();
            if self.halt.is_cancelled() {
                failed.push((patient, halted()));
                continue;
            }
            let result = match job {
                Job::Readings(_, readings) => self.evaluate_patient(patient, &readings).await,
                Job::Spans(_, spans) => self.evaluate_spans(patient, &spans).await,
            };
            if let Err(e) = result {
                self.patients.remove(&patient);
                failed.push((patient, e));
            }
        }
        self.open_seen.clear();
        self.cpu_held = None;
        let settling = std::time::Instant::now();
        let settled = self.settle().await;
        metrics.settle_seconds.observe(settling.elapsed());
        for (patient, e) in settled {
            if !failed.iter().any(|(p, _)| *p == patient) {
                self.patients.remove(&patient);
                failed.push((patient, e));
            }
        }
        failed
    }

    /// Evaluates the patient's readings received in `spans`, read from the store.
    async fn evaluate_spans(
        &mut self,
        patient: i64,
        spans: &[(OffsetDateTime, OffsetDateTime)],
    ) -> Result<(), StoreError> {
        for &(lo, hi) in spans {
            self.cpu_held = None;
            let stored = self
                .store
                .readings_received_between(patient, lo, hi)
                .await?;
            let readings: Vec<NewReading> = stored.into_iter().map(to_new).collect();
            self.evaluate_patient(patient, &readings).await?;
        }
        Ok(())
    }

    /// Whether `patient` is this worker's.
    fn mine(&self, patient: i64) -> bool {
        store::leases::holds(self.mask, patient)
    }

    /// Whether the engine evaluates `patient` now (for the timers).
    fn holds(&self, patient: i64) -> bool {
        store::leases::holds(self.held, patient)
    }

    fn template_plan(&mut self, conditions: &[String]) -> Arc<LoadedPlan> {
        self.templates
            .entry(plan::template_label(conditions))
            .or_insert_with(|| {
                Arc::new(LoadedPlan {
                    plan: net::effective(&plan::for_conditions(conditions).normalized()),
                    version: None,
                })
            })
            .clone()
    }

    async fn load_plan(&mut self, patient: i64) -> Result<Arc<LoadedPlan>, StoreError> {
        if let Some(p) = self.plans.get(&patient) {
            return Ok(p.clone());
        }
        let loaded = match self.store.current_care_plan(patient).await? {
            Some(row) => Arc::new(parse_stored(&row)),
            None => {
                let conditions = self
                    .store
                    .get_patient(patient)
                    .await?
                    .map(|p| p.conditions)
                    .unwrap_or_default();
                self.template_plan(&conditions)
            }
        };
        self.plans.insert(patient, loaded.clone());
        Ok(loaded)
    }

    async fn load_patient(&mut self, patient: i64, from: OffsetDateTime) -> Result<(), StoreError> {
        if self.patients.contains_key(&patient) {
            return Ok(());
        }
        let plan = self.load_plan(patient).await?;
        let stored = self
            .store
            .readings(&ReadingQuery {
                patient_id: patient,
                from: Some(from - WINDOW),
                to: None,
                kind: None,
                limit: 10_000,
            })
            .await?;
        let window = rules::Window::new(
            stored
                .into_iter()
                .map(|r| Obs::from_new(&to_new(r)))
                .collect(),
        );
        let open = self.store.open_alerts(patient).await?;
        let active = open
            .iter()
            .filter(|a| a.condition == "active")
            .map(|a| a.rule_id.clone())
            .collect();
        let known_open = open.iter().map(|a| a.rule_id.clone()).collect();
        let unconfirmed = open
            .iter()
            .filter(|a| a.confirmation.as_deref() == Some("unconfirmed"))
            .filter_map(|a| {
                let metric = metric_named(a.metric.as_deref()?)?;
                Some((
                    a.rule_id.clone(),
                    Pending {
                        severity: a.severity,
                        metric,
                        at: rules::At::from(a.last_measured_at.unwrap_or(a.opened_at)),
                    },
                ))
            })
            .collect();
        if self.patients.len() >= self.config.max_cached_patients {
            self.evict();
        }
        self.patients.insert(
            patient,
            PatientState {
                plan,
                window,
                active,
                open: known_open,
                unconfirmed,
                quiet_until: HashMap::new(),
                touched: 0,
            },
        );
        Ok(())
    }

    /// Drops the least recently used tenth of the cache.
    fn evict(&mut self) {
        let mut ages: Vec<(u64, i64)> = self
            .patients
            .iter()
            .map(|(id, s)| (s.touched, *id))
            .collect();
        ages.sort_unstable();
        for (_, id) in ages
            .into_iter()
            .take(self.config.max_cached_patients / 10 + 1)
        {
            self.patients.remove(&id);
        }
    }

    /// Evaluates a patient's new readings in measurement order.
    /// Waits for the answers of the writes sent without waiting; returns the patients whose
    /// writes failed.
    async fn settle(&mut self) -> Vec<(i64, StoreError)> {
        let mut failed: Vec<(i64, StoreError)> = Vec::new();
        for Unsettled {
            patient,
            answer,
            opens,
        } in std::mem::take(&mut self.unsettled)
        {
            match writes::settle(answer).await {
                Ok(store::AlertWritten::Trigger(outcome)) => {
                    let opened = matches!(outcome, TriggerOutcome::Opened { .. });
                    self.record(outcome);
                    if let Some(opens) = opens.filter(|_| opened) {
                        // Resolved by a nurse since the worker learned it open.
                        self.opened(patient, opens);
                    }
                }
                Ok(store::AlertWritten::Clear(cleared)) => {
                    if cleared.is_some() {
                        self.metrics.alerts_cleared.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(store::AlertWritten::Confirm(_)) => {}
                Err(e) => failed.push((patient, e)),
            }
        }
        failed
    }

    async fn evaluate_patient(
        &mut self,
        patient: i64,
        readings: &[NewReading],
    ) -> Result<(), StoreError> {
        let now = (self.clock)();
        let mut obs: Vec<Obs> = readings.iter().map(Obs::from_new).collect();
        obs.sort_by(|a, b| a.at.cmp(&b.at).then(a.seq.cmp(&b.seq)));
        let Some(first) = obs.first().map(|o| o.at) else {
            return Ok(());
        };
        if !self.patients.contains_key(&patient) {
            // Its state is read from the store: the permit goes to a worker with work.
            self.cpu_held = None;
        }
        self.load_patient(patient, first.to_datetime()).await?;
        self.touch += 1;
        let touch = self.touch;
        let late_after =
            time::Duration::try_from(self.config.late_after).unwrap_or(time::Duration::HOUR);
        let mut late_review: Vec<(Obs, Severity)> = Vec::new();
        let mut clock_devices: Vec<(String, i64, OffsetDateTime)> = Vec::new();
        for o in obs {
            if !self.config.evaluation_delay.is_zero() {
                self.cpu_held = None;
                tokio::time::sleep(self.config.evaluation_delay).await;
            }
            // Evaluating is CPU work on the runtime the device connections and the writers
            // share: give them a turn between chunks of a long backlog, or their acks wait
            // behind it.
            self.since_yield += 1;
            if self.since_yield >= self.turn {
                self.since_yield = 0;
                self.cpu_held = None;
                self.metrics.yields.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
            if self.halt.is_cancelled() {
                return Err(halted());
            }
            self.metrics
                .readings_evaluated
                .fetch_add(1, Ordering::Relaxed);
            let (plan, effects, late) = {
                if self.cpu_held.is_none() {
                    self.cpu_held = self.cpu.clone().acquire_owned().await.ok();
                }

                let Some(state) = self.patients.get_mut(&patient) else {
                    return Ok(());
                };
                state.touched = touch;
                state.window.insert(&o, WINDOW);
                state.window.trim(WINDOW);
                let late = !o.clock_bad && o.received_at - o.at > late_after;
                let effects = state.window.evaluate(&state.plan.plan, &o);
                (state.plan.clone(), effects, late)
            };

            if effects.iter().any(|e| self.may_wait(patient, e, &o)) {
                self.cpu_held = None;
            }
            if o.quality == Quality::Excluded {
                self.metrics
                    .readings_suppressed
                    .fetch_add(1, Ordering::Relaxed);
            }
            let key = (patient, o.kind);
            if self
                .last_measured
                .get(&key)
                .is_none_or(|t| rules::At::from(*t) < o.at)
            {
                self.last_measured.insert(key, o.at.to_datetime());
            }
            // Measured is measured, late or not: adherence may be met again.
            self.adherence_met(patient, &plan, o.kind, now).await?;
            if o.clock_bad && has_rule(&plan.plan, |c| matches!(c, Check::Clock { .. })) {
                clock_devices.push((o.device_id.clone(), o.seq, o.at.to_datetime()));
            }
            if late {
                self.last_late.insert(key, now);
                self.metrics.readings_late.fetch_add(1, Ordering::Relaxed);
                for e in effects {
                    if let Effect::Trigger { severity, .. } = e
                        && severity >= Severity::Medium
                    {
                        late_review.push((o.clone(), severity));
                        break;
                    }
                }
                continue;
            }
            let pending: Vec<(String, Pending)> = match self.patients.get(&patient) {
                Some(state) if o.quality == Quality::Good => state
                    .unconfirmed
                    .iter()
                    .filter(|(_, p)| {
                        o.at > p.at
                            && o.at - p.at <= CONFIRM_WITHIN
                            && p.metric.kinds().contains(&o.kind)
                            && o.values.get(p.metric).is_some()
                    })
                    .map(|(r, p)| (r.clone(), *p))
                    .collect(),
                _ => Vec::new(),
            };
            let mut fired: HashMap<String, Severity> = HashMap::new();
            for effect in effects {
                if let Effect::Trigger {
                    rule_id, severity, ..
                } = &effect
                {
                    fired.insert(rule_id.clone(), *severity);
                }
                self.apply(patient, &plan, effect, &o, now).await?;
            }
            for (rule_id, p) in pending {
                let what = match fired.get(&rule_id) {
                    Some(s) if *s >= p.severity => Confirmation::Confirmed,
                    other => {
                        let severity = other.copied().unwrap_or(Severity::Low);
                        Confirmation::Downgraded {
                            severity,
                            due_at: self.due(severity, now),
                        }
                    }
                };
                let detail = serde_json::json!({
                    "device": o.device_id,
                    "seq": o.seq,
                    "value": o.values.get(p.metric),
                })
                .to_string();
                // Sent without waiting: the pending confirmation goes whatever the answer.
                let confirm = AlertWrite::Confirm {
                    patient_id: patient,
                    rule_id: rule_id.clone(),
                    at: now,
                    what,
                    detail: Some(detail),
                };
                self.send(patient, confirm, None);
                if let Some(state) = self.patients.get_mut(&patient) {
                    state.unconfirmed.remove(&rule_id);
                }
            }
        }
        for (device, seq, at) in clock_devices {
            let severity = clock_severity(&plan_of(self, patient));
            let t = Trigger {
                patient_id: patient,
                rule_id: format!("device-clock:{device}"),
                rule_kind: "device".into(),
                title: format!("Device {device}: clock not set or wrong"),
                severity,
                plan_version: plan_of(self, patient).version,
                metric: None,
                unit: None,
                value: None,
                higher_is_worse: true,
                readings: vec![AlertReading {
                    device_id: device,
                    seq,
                    measured_at: at,
                    value: None,
                }],
                at: now,
                due_at: self.due(severity, now),
                detail: None,
                unconfirmed: false,
            };
            self.send_trigger(t);
        }
        if !late_review.is_empty() {
            let plan = plan_of(self, patient);
            let worst = late_review
                .iter()
                .map(|(_, s)| *s)
                .max()
                .unwrap_or(Severity::Medium);
            let t = Trigger {
                patient_id: patient,
                rule_id: "late-review".into(),
                rule_kind: "retrospective".into(),
                title: "Late readings out of range: review".into(),
                severity: Severity::Low,
                plan_version: plan.version,
                metric: None,
                unit: None,
                value: None,
                higher_is_worse: true,
                readings: late_review
                    .iter()
                    .map(|(o, _)| AlertReading {
                        device_id: o.device_id.clone(),
                        seq: o.seq,
                        measured_at: o.at.to_datetime(),
                        value: None,
                    })
                    .collect(),
                at: now,
                due_at: self.due(Severity::Low, now),
                detail: Some(serde_json::json!({ "worst_band": worst.as_str() }).to_string()),
                unconfirmed: false,
            };
            self.send_trigger(t);
        }
        Ok(())
    }

    fn due(&self, severity: Severity, now: OffsetDateTime) -> Option<OffsetDateTime> {
        self.config
            .response(severity)
            .and_then(|d| time::Duration::try_from(d).ok())
            .map(|d| now + d)
    }

    /// Opens or updates an alert nothing in the cached state depends on (a device's clock,
    /// a late reading's review) without waiting for it.
    fn send_trigger(&mut self, t: Trigger) {
        let patient = t.patient_id;
        if let Some(state) = self.patients.get_mut(&patient) {
            state.open.insert(t.rule_id.clone());
        }
        self.send(patient, AlertWrite::Trigger(t), None);
    }

    /// Sends `write` without waiting; its answer is settled at the end of the step, and
    /// `opens` applied then if it turns out to have opened an alert.
    fn send(&mut self, patient: i64, write: AlertWrite, opens: Option<Opens>) {
        let answer = self.writes.send(write);
        self.unsettled.push(Unsettled {
            patient,
            answer,
            opens,
        });
    }

    /// Opens or updates an alert (through the group commit).
    async fn trigger(&self, t: Trigger) -> Result<TriggerOutcome, StoreError> {
        self.writes
            .write(AlertWrite::Trigger(t))
            .await?
            .into_trigger()
    }

    fn record(&self, outcome: TriggerOutcome) {
        match outcome {
            TriggerOutcome::Opened { .. } => {
                self.metrics.alerts_opened.fetch_add(1, Ordering::Relaxed);
            }
            TriggerOutcome::Updated { .. } => {
                self.metrics.alerts_updated.fetch_add(1, Ordering::Relaxed);
            }
            TriggerOutcome::Unchanged { .. } => {}
        }
    }

    async fn apply(
        &mut self,
        patient: i64,
        plan: &LoadedPlan,
        effect: Effect,
        o: &Obs,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        match effect {
            Effect::Repeat {
                device_id,
                kind,
                in_minutes,
            } => {
                let key = (device_id, kind);
                if self
                    .last_repeat
                    .get(&key)
                    .is_some_and(|t| now - *t < REPEAT_EVERY)
                {
                    return Ok(());
                }
                if let Some(tx) = &self.repeats {
                    let _ = tx.send(RepeatRequest {
                        device_id: key.0.clone(),
                        kind,
                        in_minutes,
                        at: now,
                    });
                }
                self.last_repeat.insert(key, now);
            }
            Effect::Trigger {
                rule_id,
                rule_kind,
                title,
                severity,
                metric,
                value,
                higher_is_worse,
                readings,
            } => {
                if rule_kind == "average" && !self.average_may_open(patient, &rule_id, now).await? {
                    return Ok(());
                }
                let single = single_reading(rule_kind, readings.len(), severity, o.kind);
                let unneeded = self.answer_unneeded(patient, &rule_id, rule_kind, single);
                let t = Trigger {
                    patient_id: patient,
                    rule_id: rule_id.clone(),
                    rule_kind: rule_kind.into(),
                    title,
                    severity,
                    plan_version: plan.version,
                    metric: Some(metric.as_str().into()),
                    unit: Some(metric.unit().into()),
                    value,
                    higher_is_worse,
                    readings: readings
                        .into_iter()
                        .map(|(device_id, seq, measured_at, value)| AlertReading {
                            device_id,
                            seq,
                            measured_at,
                            value,
                        })
                        .collect(),
                    at: now,
                    due_at: self.due(severity, now),
                    detail: None,
                    unconfirmed: single,
                };
                let opens = Opens {
                    rule_id: rule_id.clone(),
                    pending: single.then_some(Pending {
                        severity,
                        metric,
                        at: o.at,
                    }),
                    average: rule_kind == "average",
                    now,
                };
                // Whatever the answer, an alert of the rule is open and active after it.
                if let Some(state) = self.patients.get_mut(&patient) {
                    state.active.insert(rule_id.clone());
                    state.open.insert(rule_id);
                }
                if unneeded {
                    self.send(patient, AlertWrite::Trigger(t), Some(opens));
                    return Ok(());
                }
                self.metrics
                    .alert_write_waits
                    .fetch_add(1, Ordering::Relaxed);
                let outcome = self.trigger(t).await?;
                let opened = matches!(outcome, TriggerOutcome::Opened { .. });
                self.record(outcome);
                if opened {
                    self.opened(patient, opens);
                }
            }
            Effect::Clear { rule_id } => {
                let active = self
                    .patients
                    .get(&patient)
                    .is_some_and(|s| s.active.contains(&rule_id));
                if active {
                    self.send(patient, clear_write(patient, &rule_id, now, None), None);
                    if let Some(state) = self.patients.get_mut(&patient) {
                        state.active.remove(&rule_id);
                    }
                }
            }
        }
        Ok(())
    }

    /// What an alert a trigger opened changes in the cached state: a single reading's waits
    /// for its repeat, an average's rule goes quiet for a week.
    fn opened(&mut self, patient: i64, opens: Opens) {
        let Some(state) = self.patients.get_mut(&patient) else {
            return;
        };
        if let Some(pending) = opens.pending {
            state.unconfirmed.insert(opens.rule_id.clone(), pending);
        }
        if opens.average {
            state
                .quiet_until
                .insert(opens.rule_id, opens.now + time::Duration::days(7));
        }
    }

    /// Whether nothing the worker does after a trigger depends on its answer, so it is sent
    /// without waiting (see `writes`): only whether a single-reading alert or an average's
    /// was opened (not updated) changes its cached state, and the next reading of the
    /// patient depends on it. The worker waits unless it knows the rule's alert open. If a
    /// nurse resolved it since, the trigger opens a new one and [`Worker::settle`] applies
    /// that at the end of the step: the patient's readings after it in the same step do not
    /// confirm it, the next ones do.
    fn answer_unneeded(&self, patient: i64, rule_id: &str, rule_kind: &str, single: bool) -> bool {
        if single {
            return self
                .patients
                .get(&patient)
                .is_some_and(|s| s.open.contains(rule_id));
        }
        // An average's alert in its quiet week updated: it was read open in this step (a
        // nurse may have resolved it since it opened).
        rule_kind != "average"
            || self
                .open_seen
                .get(&(patient, rule_id.to_owned()))
                .copied()
                .unwrap_or(false)
    }

    /// Whether applying `effect` may wait on the store (else the worker keeps its CPU permit).
    fn may_wait(&self, patient: i64, effect: &Effect, o: &Obs) -> bool {
        match effect {
            Effect::Trigger {
                rule_id,
                rule_kind,
                severity,
                readings,
                ..
            } => {
                let single = single_reading(rule_kind, readings.len(), *severity, o.kind);
                !self.answer_unneeded(patient, rule_id, rule_kind, single)
            }
            // Sent without waiting, or no store at all.
            Effect::Clear { .. } | Effect::Repeat { .. } => false,
        }
    }

    /// Whether an average rule may trigger: its open alert may always be updated, but a new
    /// one opens at most a week after the last one, so a review the nurse resolved is not
    /// raised again by the next reading of the same week.
    async fn average_may_open(
        &mut self,
        patient: i64,
        rule_id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let until = match self
            .patients
            .get(&patient)
            .and_then(|s| s.quiet_until.get(rule_id))
        {
            Some(until) => *until,
            None => {
                let last = self.store.last_alert_opened(patient, rule_id).await?;
                let until = last.map_or(now, |t| t + time::Duration::days(7));
                if let Some(state) = self.patients.get_mut(&patient) {
                    state.quiet_until.insert(rule_id.to_owned(), until);
                }
                until
            }
        };
        if now >= until {
            return Ok(true);
        }
        // Quiet: only an alert still open (not resolved) takes the trigger. Read once per
        // patient and step: a stream in the average's band triggers on every reading.
        let key = (patient, rule_id.to_owned());
        if let Some(open) = self.open_seen.get(&key) {
            return Ok(*open);
        }
        let open = self
            .store
            .open_alerts(patient)
            .await?
            .iter()
            .any(|a| a.rule_id == rule_id);
        self.open_seen.insert(key, open);
        Ok(open)
    }

    /// Clears the adherence alerts of `kind` whose schedule the latest measurement meets.
    async fn adherence_met(
        &mut self,
        patient: i64,
        plan: &LoadedPlan,
        kind: ReadingKind,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let Some(last) = self.last_measured.get(&(patient, kind)).copied() else {
            return Ok(());
        };
        for rule in &plan.plan.rules {
            let Check::Adherence { kind: k, .. } = &rule.check else {
                continue;
            };
            let Some(expected) = plan.plan.schedule.iter().find(|e| e.kind == *k) else {
                continue;
            };
            if *k == kind
                && now - last <= hours(expected.every_hours + expected.grace_hours)
                && self.timed_active.remove(&(patient, rule.id.clone()))
            {
                self.cpu_held = None;
                self.clear(patient, &rule.id, now, Some(last)).await?;
            }
        }
        Ok(())
    }

    async fn clear(
        &self,
        patient: i64,
        rule_id: &str,
        now: OffsetDateTime,
        measured: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        let write = clear_write(patient, rule_id, now, measured);
        if self.writes.write(write).await?.into_clear()?.is_some() {
            self.metrics.alerts_cleared.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Drops cached plans whose stored version changed, and loads plans of patients the
    /// engine has not met yet (their adherence clocks run too).
    async fn refresh_plans(&mut self, versions: &[(i64, i64)]) -> Result<(), StoreError> {
        for &(patient, version) in versions {
            if !self.mine(patient) {
                continue;
            }
            let stale = self
                .plans
                .get(&patient)
                .is_none_or(|p| p.version != Some(version));
            if stale {
                self.plans.remove(&patient);
                let plan = self.load_plan(patient).await?;
                if let Some(state) = self.patients.get_mut(&patient) {
                    state.plan = plan;
                }
            }
        }
        Ok(())
    }

    async fn adherence(&mut self, now: OffsetDateTime) -> Result<(), StoreError> {
        let plans: Vec<(i64, Arc<LoadedPlan>)> = self
            .plans
            .iter()
            .filter(|(p, _)| self.holds(**p))
            .map(|(p, l)| (*p, l.clone()))
            .collect();
        for (patient, loaded) in plans {
            if self.stopping.is_cancelled() {
                break;
            }
            for rule in &loaded.plan.rules {
                let Check::Adherence { kind, severity } = &rule.check else {
                    continue;
                };
                let Some(expected) = loaded.plan.schedule.iter().find(|e| e.kind == *kind) else {
                    continue;
                };
                let key = (patient, rule.id.clone());
                if self.timed_active.contains(&key) {
                    continue;
                }
                // No device of that kind: nothing can be measured, nothing is missed.
                if self
                    .device_kinds
                    .as_ref()
                    .is_some_and(|k| !k.contains(&(patient, *kind)))
                {
                    continue;
                }
                // A backlog of that kind is arriving: wait until it is in.
                if self
                    .last_late
                    .get(&(patient, *kind))
                    .is_some_and(|t| now - *t < BACKLOG_QUIET)
                {
                    continue;
                }
                let limit = hours(expected.every_hours + expected.grace_hours);
                let since = match self.last_measured.get(&(patient, *kind)) {
                    Some(t) => *t,
                    // Never measured: the clock starts when the engine met the plan.
                    None => {
                        self.last_measured.insert((patient, *kind), now);
                        continue;
                    }
                };
                if now - since > limit {
                    let t = Trigger {
                        patient_id: patient,
                        rule_id: rule.id.clone(),
                        rule_kind: "adherence".into(),
                        title: rule.title.clone(),
                        severity: *severity,
                        plan_version: loaded.version,
                        metric: None,
                        unit: None,
                        value: None,
                        higher_is_worse: true,
                        readings: Vec::new(),
                        at: now,
                        due_at: self.due(*severity, now),
                        detail: Some(serde_json::json!({ "last_measured": since.unix_timestamp(), "expected_every_hours": expected.every_hours }).to_string()),
                        unconfirmed: false,
                    };
                    self.record(self.trigger(t).await?);
                    self.timed_active.insert(key);
                }
            }
        }
        Ok(())
    }

    async fn devices(
        &mut self,
        devices: &[store::Device],
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.device_kinds = Some(
            devices
                .iter()
                .filter(|d| d.revoked_at.is_none() && self.mine(d.patient_id))
                .map(|d| (d.patient_id, ReadingKind::from(d.kind)))
                .collect(),
        );
        for d in devices {
            if self.stopping.is_cancelled() {
                break;
            }
            if d.revoked_at.is_some() || !self.holds(d.patient_id) {
                continue;
            }
            let loaded = self.load_plan(d.patient_id).await?;
            for rule in &loaded.plan.rules {
                let (rule_id, firing, severity, clears) = match &rule.check {
                    Check::DeviceOffline {
                        after_hours,
                        severity,
                    } => {
                        let seen = d.last_seen_at.unwrap_or(d.created_at);
                        let limit = hours(*after_hours);
                        (
                            format!("device-offline:{}", d.id),
                            now - seen > limit,
                            *severity,
                            now - seen <= limit,
                        )
                    }
                    Check::LowBattery {
                        below_pct,
                        severity,
                    } => {
                        let low = d.battery_pct.is_some_and(|b| b < i16::from(*below_pct));
                        let fine = d
                            .battery_pct
                            .is_some_and(|b| b >= i16::from(*below_pct) + 5);
                        (format!("device-battery:{}", d.id), low, *severity, fine)
                    }
                    _ => continue,
                };
                let key = (d.patient_id, rule_id.clone());
                if firing && !self.timed_active.contains(&key) {
                    let t = Trigger {
                        patient_id: d.patient_id,
                        rule_id: rule_id.clone(),
                        rule_kind: "device".into(),
                        title: format!("{}: {}", rule.title, d.id),
                        severity,
                        plan_version: loaded.version,
                        metric: None,
                        unit: None,
                        value: d.battery_pct.map(f64::from),
                        higher_is_worse: false,
                        readings: Vec::new(),
                        at: now,
                        due_at: self.due(severity, now),
                        detail: None,
                        unconfirmed: false,
                    };
                    self.record(self.trigger(t).await?);
                    self.timed_active.insert(key);
                } else if clears && self.timed_active.remove(&key) {
                    self.clear(d.patient_id, &rule_id, now, None).await?;
                }
            }
        }
        Ok(())
    }
}

/// Clears the (patient, rule) alert's condition.
fn clear_write(
    patient: i64,
    rule_id: &str,
    now: OffsetDateTime,
    measured: Option<OffsetDateTime>,
) -> AlertWrite {
    AlertWrite::Clear {
        patient_id: patient,
        rule_id: rule_id.to_owned(),
        at: now,
        measured_at: measured,
        detail: None,
    }
}

/// One reading in a high or critical band: an alert at once, unconfirmed until a repeat. Only
/// for the artefact-prone kinds (cuff, oximeter): a meter's glucose is what it is, and its
/// retest after treatment (the "rule of 15") measures the treatment, not the reading.
fn single_reading(rule_kind: &str, readings: usize, severity: Severity, kind: ReadingKind) -> bool {
    rule_kind == "threshold"
        && readings == 1
        && severity >= Severity::High
        && kind != ReadingKind::Glucose
}

fn empty_plan() -> CarePlan {
    CarePlan {
        schedule: Vec::new(),
        rules: Vec::new(),
        safety_net: plan::SafetyNet::default(),
    }
}

/// A stored plan with the safety net, or (unreadable: logged) the general template with it,
/// under its version.
fn parse_stored(row: &store::CarePlanRow) -> LoadedPlan {
    let plan = match CarePlan::from_json(&row.plan) {
        Ok(plan) => plan.normalized(),
        Err(e) => {
            tracing::error!(patient = row.patient_id, version = row.version, error = %e, "stored care plan unreadable; using the general template");
            plan::template("general").unwrap_or_else(empty_plan)
        }
    };
    LoadedPlan {
        plan: net::effective(&plan),
        version: Some(row.version),
    }
}

fn metric_named(name: &str) -> Option<Metric> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
}

fn plan_of(engine: &Worker, patient: i64) -> Arc<LoadedPlan> {
    engine
        .patients
        .get(&patient)
        .map(|s| s.plan.clone())
        .unwrap_or_else(|| {
            Arc::new(LoadedPlan {
                plan: empty_plan(),
                version: None,
            })
        })
}

fn clock_severity(plan: &LoadedPlan) -> Severity {
    plan.plan
        .rules
        .iter()
        .find_map(|r| match r.check {
            Check::Clock { severity } => Some(severity),
            _ => None,
        })
        .unwrap_or(Severity::Low)
}

fn has_rule(plan: &CarePlan, f: impl Fn(&Check) -> bool) -> bool {
    plan.rules.iter().any(|r| f(&r.check))
}

/// `h` hours, saturating (plans are validated, but a stored one is not trusted blindly).
fn hours(h: f64) -> time::Duration {
    time::Duration::checked_seconds_f64(h * 3600.0).unwrap_or(time::Duration::days(3650))
}

fn to_new(r: store::StoredReading) -> NewReading {
    NewReading {
        device_id: r.device_id,
        seq: r.seq,
        patient_id: r.patient_id,
        kind: r.kind,
        measured_at: r.measured_at,
        received_at: r.received_at,
        clock_unset: r.clock_unset,
        status: r.status,
        sensor: r.sensor,
        systolic: r.systolic,
        diastolic: r.diastolic,
        mean_arterial: r.mean_arterial,
        pulse: r.pulse,
        spo2: r.spo2,
        perfusion_index: r.perfusion_index,
        glucose_mg_dl: r.glucose_mg_dl,
        glucose_sample: r.glucose_sample,
        glucose_meal: r.glucose_meal,
        source_unit: r.source_unit,
    }
}
