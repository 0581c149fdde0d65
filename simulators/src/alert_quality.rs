//! The alert-quality benchmark: a simulated multimorbid cohort with injected clinical events,
//! run through the real alert engine and store in compressed time, scored against the ground
//! truth (see BENCHMARKS.md, "Alert quality", for the figures and what they mean).
//!
//! 1. **Cohort.** A fresh store (a temporary SQLite file, or the database given), migrated; one
//!    COT; each patient drawn from [`COHORT_MIX`] (condition combinations with their
//!    prevalences, an assumption stated there) and enrolled with *all* their conditions.
//!    Devices follow the conditions (the rule of `fleet.rs`: hypertension → cuff; COPD or heart
//!    failure → oximeter, heart failure a cuff too, COPD a cuff half the time; diabetes →
//!    meter; no listed condition → cuff, half of them an oximeter too), plus, for
//!    [`QualityOptions::off_condition_device_rate`] of the patients with a condition, one device
//!    outside them (a diabetic with a cuff, a hypertensive with the household's meter). **No
//!    care plan is stored**: the engine picks the plan as in production, the templates of all
//!    the patient's conditions composed (`plan::for_conditions`) with the safety net under it.
//!    (`--tuned` stores that composed plan with [`tune`] applied: a proposal, shown apart.)
//! 2. **Events.** Per patient, the [`EventRates`] (per patient-month, among the patients an
//!    event can happen to; assumptions chosen for statistical power, not incidence, see there)
//!    draw at most one long event (desaturation, sustained high home BP, missed measurements,
//!    silent device, low battery) and any number of single-reading events on distinct days
//!    outside it. Readings and device statuses come from [`SimPatient::timeline`].
//! 3. **Repeats.** The engine runs with `Engine::with_repeats`: every `RepeatRequest` is
//!    honoured by the patients who comply ([`QualityOptions::repeat_compliance`], default
//!    85 %, an assumption) `in_minutes` (+0-3 min) after it was asked for, measured from the
//!    patient's physiology at that moment with the scenarios applied (an artefact repeats
//!    normal, a real event repeats abnormal), unless the patient already measures that device
//!    within 10 minutes of it. The patients have no spontaneous repeat habit.
//! 4. **Time.** Simulated time advances in steps (default 5 min). At each step the readings and
//!    statuses delivered in it are committed in one `commit_batch` (with the engine outbox, like
//!    the gateway's writer) and handed to [`Engine::on_batch`]; the engine's clock reads the end
//!    of the step. `Engine::on_tick` runs every tick (default 15 min). Measurement and receive
//!    times are the simulated ones, so only a silent device's backlog arrives "late". Nurses
//!    resolve every alert at 20-80 % of its severity's response time.
//! 5. **Scoring.** An event is *detected* when one of its expected rules opened, updated,
//!    re-activated or raised an alert to at least the expected severity inside its window; time
//!    to alert runs from the event's start (for a single-reading event, its reading). An alert
//!    is a *true positive* when a trigger of it falls in the window of a scenario of that
//!    patient that expects or explains its rule; an adherence alert over a real gap (a skipped
//!    measurement) and a `bp-home-average` alert on a patient whose own home BP is ≥ 135/85 are
//!    true too and counted apart. Alerts are split into clinical (threshold, trend, average,
//!    late review), adherence, device and info; PPV is given for each. A no-alert scenario is
//!    *violated* when a forbidden alert was raised in its window and not downgraded by a repeat
//!    (*transient* when a repeat downgraded it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use alerting::{AlertsConfig, Clock, Committed, Engine, EngineMetrics, plan};
use anyhow::Context;
use protocol::{Kind, MealContext};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use store::{
    AlertEvent, AlertQuery, CommitBatch, DeviceKind, DeviceStatusUpdate, NewCarePlan, NewDevice,
    NewPatient, NewReading, ReadingKind, Severity, Store,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::physiology::{Condition, mix};
use crate::scenario::{
    DAY_MS, GroundTruth, HOUR_MS, Habits, MINUTE_MS, Scenario, ScenarioKind, SimPatient,
    TimedReading,
};

/// The cohort's condition combinations and their shares. **An assumption**, shaped by what is
/// known of telemonitored chronic patients rather than measured: hypertension is the commonest
/// condition and usually comes with others (most people with type 2 diabetes are
/// hypertensive; hypertension and COPD are the commonest comorbidities of heart failure);
/// 5 % are enrolled with no listed condition (e.g. after a discharge), who get the general
/// template and the safety net only.
pub const COHORT_MIX: [(&str, &[Condition], f64); 10] = [
    ("hypertension", &[Condition::Hypertension], 0.24),
    ("diabetes", &[Condition::Diabetes], 0.08),
    ("copd", &[Condition::Copd], 0.10),
    ("heart_failure", &[Condition::HeartFailure], 0.05),
    (
        "hypertension+diabetes",
        &[Condition::Hypertension, Condition::Diabetes],
        0.18,
    ),
    (
        "heart_failure+hypertension",
        &[Condition::HeartFailure, Condition::Hypertension],
        0.10,
    ),
    (
        "copd+heart_failure",
        &[Condition::Copd, Condition::HeartFailure],
        0.05,
    ),
    (
        "copd+hypertension",
        &[Condition::Copd, Condition::Hypertension],
        0.08,
    ),
    (
        "hypertension+diabetes+heart_failure",
        &[
            Condition::Hypertension,
            Condition::Diabetes,
            Condition::HeartFailure,
        ],
        0.07,
    ),
    ("none", &[], 0.05),
];

/// How often each event is injected: the chance per patient per 30 days among the patients it
/// can happen to (stated after each field). **Assumptions chosen so that each event type gets
/// some 20-60 cases in 1,000 patients**, not incidences: real severe events are rarer, so a
/// real service's PPV would be lower than the one measured here at the same false-alert
/// burden (the false alerts do not depend on these rates).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRates {
    /// Cuff: one reading ≥ 180/110, the crisis lasting 30-120 min.
    pub crisis: f64,
    /// Cuff: SBP 76-90 for 2-8 h.
    pub hypotension: f64,
    /// Cuff: one artefactual reading ≥ 185/100, repeat normal (no alert expected).
    pub spurious_high_bp: f64,
    /// Cuff, own home mean < 133/83: home BP raised for 10-14 days to a mean ≥ 135/85.
    pub sustained_high_bp: f64,
    /// Oximeter: SpO2 80-85 % for 2-8 h, one reading of it.
    pub severe_low_spo2: f64,
    /// Oximeter: one artefactual 78-84 %, repeat normal (no alert expected).
    pub spurious_low_spo2: f64,
    /// COPD or heart failure with an oximeter: a drift to 83-84 % over 3-5 days.
    pub desaturation: f64,
    /// Cuff or oximeter: pulse 132-155 for 1-4 h.
    pub tachycardia: f64,
    /// Cuff or oximeter: pulse 32-40 for 2-8 h.
    pub bradycardia: f64,
    /// Diabetes: one glucose < 54 mg/dL, treated (retest recovered).
    pub hypoglycaemia: f64,
    /// Diabetes: one glucose 56-68 mg/dL, treated.
    pub mild_hypoglycaemia: f64,
    /// Diabetes: glucose 255-345 mg/dL for 2-6 h.
    pub hyperglycaemia: f64,
    /// Diabetes: glucose 360-480 mg/dL for 2-6 h.
    pub severe_hyperglycaemia: f64,
    /// Diabetes: a meter check with low-level control solution (no alert expected).
    pub control_solution: f64,
    /// A device outside the patient's conditions: one severe reading on it.
    pub off_condition: f64,
    /// COPD: a baseline of 88-90 % all run (a trait; no alert expected; not scaled).
    pub copd_low_baseline: f64,
    /// Anyone: stops measuring for 48-72 h.
    pub missed: f64,
    /// Anyone: one device silent for 30-72 h.
    pub silent: f64,
    /// Anyone: one device at 5-14 % battery for 1-3 days.
    pub battery: f64,
}

impl Default for EventRates {
    fn default() -> Self {
        EventRates {
            crisis: 0.04,
            hypotension: 0.03,
            spurious_high_bp: 0.06,
            sustained_high_bp: 0.10,
            severe_low_spo2: 0.06,
            spurious_low_spo2: 0.10,
            desaturation: 0.08,
            tachycardia: 0.03,
            bradycardia: 0.03,
            hypoglycaemia: 0.08,
            mild_hypoglycaemia: 0.08,
            hyperglycaemia: 0.08,
            severe_hyperglycaemia: 0.06,
            control_solution: 0.10,
            off_condition: 0.30,
            copd_low_baseline: 0.30,
            missed: 0.06,
            silent: 0.02,
            battery: 0.03,
        }
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct QualityOptions {
    pub patients: usize,
    pub days: u32,
    pub seed: u64,
    /// `None`: a fresh SQLite file in a temporary folder. Otherwise an empty database.
    pub database_url: Option<String>,
    pub rates: EventRates,
    /// Multiplies every event rate (not the COPD low baseline, a trait); 1 as documented.
    pub event_scale: f64,
    /// Share of patients whose device honours the engine's repeat requests (the patient takes
    /// the repeat when the device asks). An assumption: 85 %.
    pub repeat_compliance: f64,
    /// Share of patients with a condition who also have a device outside their conditions.
    /// An assumption: 10 %.
    pub off_condition_device_rate: f64,
    pub habits: Habits,
    /// Simulated minutes per commit step.
    pub step_minutes: i64,
    /// Simulated minutes between engine ticks (a multiple of the step).
    pub tick_minutes: i64,
    /// Store every patient's composed plan with the proposed changes ([`tune`]) instead of
    /// letting the engine compose it.
    pub tuned: bool,
}

impl Default for QualityOptions {
    fn default() -> Self {
        QualityOptions {
            patients: 1_000,
            days: 30,
            seed: 1,
            database_url: None,
            rates: EventRates::default(),
            event_scale: 1.0,
            repeat_compliance: 0.85,
            off_condition_device_rate: 0.10,
            habits: Habits::default(),
            step_minutes: 5,
            tick_minutes: 15,
            tuned: false,
        }
    }
}

/// One row of the per-event table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioRow {
    pub scenario: String,
    /// clinical, adherence, device or no-alert.
    pub category: String,
    /// The expected rules and minimum severity (empty for no-alert scenarios).
    pub expect: String,
    pub injected: usize,
    /// Detected at the expected severity or above inside the window.
    pub detected: usize,
    pub sensitivity: f64,
    /// An expected rule alerted in the window at any severity.
    pub alerted_any: usize,
    /// Minutes from the event's start to the first qualifying alert event.
    pub median_minutes_to_alert: Option<f64>,
    pub max_minutes_to_alert: Option<f64>,
    /// Detected events whose alert a repeat then downgraded.
    pub downgraded: usize,
    /// No-alert scenarios with a forbidden alert left standing.
    pub violated: usize,
    /// No-alert scenarios with a forbidden alert that a repeat downgraded.
    pub transient: usize,
}

/// One row of the per-rule table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleRow {
    pub rule: String,
    pub alerts: usize,
    pub true_positive: usize,
    pub false_positive: usize,
    pub ppv: f64,
    /// Alerts by their final severity.
    pub by_severity: BTreeMap<String, usize>,
    /// Alerts that a repeat downgraded.
    pub downgraded: usize,
}

/// Alerts of one category.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CategoryRow {
    pub alerts: usize,
    pub per_patient_month: f64,
    pub true_positive: usize,
    pub ppv: f64,
}

/// The benchmark's result.
#[derive(Debug, Clone, Serialize)]
pub struct QualityReport {
    pub patients: usize,
    pub days: u32,
    pub seed: u64,
    pub store: String,
    pub readings: u64,
    pub readings_late: u64,
    /// Patients per condition combination.
    pub cohort: BTreeMap<String, usize>,
    /// Devices per kind, and how many of them are outside the patient's conditions.
    pub devices: BTreeMap<String, usize>,
    pub off_condition_devices: usize,
    pub repeat_compliance: f64,
    pub event_scale: f64,
    pub repeat_requests: usize,
    pub repeats_taken: usize,
    /// Requests of patients who do not comply.
    pub repeats_declined: usize,
    /// Requests met by a measurement the patient was taking anyway (within 10 min).
    pub repeats_already_measured: usize,
    /// Urgent clinical events (expected at high or above).
    pub critical_injected: usize,
    pub critical_detected: usize,
    pub detection_rate: f64,
    pub critical_alerted_any: usize,
    /// Every event with an expectation.
    pub events_injected: usize,
    pub events_detected: usize,
    pub alerts: usize,
    pub alerts_per_patient_month: f64,
    pub true_positive: usize,
    pub ppv: f64,
    /// clinical, adherence, device, info.
    pub by_category: BTreeMap<String, CategoryRow>,
    pub clinical_ppv: f64,
    /// Clinical PPV without the `bp-home-average` alerts on chronically high home BP.
    pub clinical_ppv_without_chronic: f64,
    /// Clinical alerts whose final severity is medium or above, and their PPV.
    pub clinical_medium_plus: usize,
    pub clinical_medium_plus_ppv: f64,
    /// `bp-home-average` alerts on patients whose own home BP is ≥ 135/85 (true, apart).
    pub chronic_average_alerts: usize,
    /// Adherence alerts over a real gap the patient left, not injected (true, apart).
    pub adherence_natural_gaps: usize,
    /// Alerts opened unconfirmed (one reading in a high or critical band), and what became of
    /// them: confirmed, downgraded by a repeat (on a real event, on an artefact scenario,
    /// elsewhere), or still unconfirmed.
    pub unconfirmed_opened: usize,
    pub confirmed: usize,
    pub downgraded: usize,
    pub downgraded_on_real_events: usize,
    pub downgraded_on_artefacts: usize,
    pub downgraded_other: usize,
    pub left_unconfirmed: usize,
    pub no_alert_scenarios: usize,
    pub no_alert_violated: usize,
    pub no_alert_transient: usize,
    pub escalations: usize,
    pub tuned: bool,
    pub by_scenario: Vec<ScenarioRow>,
    pub by_rule: Vec<RuleRow>,
    /// Alerts per patient per month by condition combination.
    pub alerts_per_patient_month_by_cohort: BTreeMap<String, f64>,
    pub missed: Vec<String>,
    pub wall_seconds: f64,
}

struct Member {
    patient_id: i64,
    label: &'static str,
    sim: SimPatient,
    device_ids: Vec<String>,
    /// The device outside the patient's conditions, if any.
    off_device: Option<usize>,
    complies: bool,
    /// Measurement times per device, ms, in order.
    measured: Vec<Vec<i64>>,
    next_seq: Vec<i64>,
    /// The composed plan's interval plus grace per reading kind, ms.
    adherence_limit_ms: HashMap<Kind, i64>,
    /// Own home BP mean ≥ 135/85 (ESH home threshold).
    chronic_high_bp: bool,
}

/// Runs the benchmark.
pub async fn run_alert_quality(opts: &QualityOptions) -> anyhow::Result<QualityReport> {
    let wall = std::time::Instant::now();
    let (store, label, _dir) = open_store(opts.database_url.as_deref()).await?;
    let report = run_on(&store, label, opts, wall).await;
    store.close().await;
    report
}

pub(crate) async fn open_store(
    url: Option<&str>,
) -> anyhow::Result<(Store, String, Option<tempfile::TempDir>)> {
    let (url, dir) = match url {
        Some(u) => (u.to_owned(), None),
        None => {
            let dir = tempfile::tempdir().context("a temporary folder for SQLite")?;
            let url = format!("sqlite://{}", dir.path().join("alert-quality.db").display());
            (url, Some(dir))
        }
    };
    let store = Store::connect(&url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    store.migrate().await.context("migrating the store")?;
    let label = if url.starts_with("postgres") {
        "postgresql".to_owned()
    } else {
        "sqlite".to_owned()
    };
    Ok((store, label, dir))
}

fn draw_mix(rng: &mut StdRng) -> (&'static str, &'static [Condition]) {
    let mut u: f64 = rng.r#gen::<f64>() * COHORT_MIX.iter().map(|m| m.2).sum::<f64>();
    for (label, conditions, p) in COHORT_MIX {
        if u < p {
            return (label, conditions);
        }
        u -= p;
    }
    (COHORT_MIX[0].0, COHORT_MIX[0].1)
}

/// The devices (kind, measurements a day) of a patient with `conditions`, per the rule of
/// `fleet.rs`, and the index of one outside the conditions, if drawn.
fn devices_for(
    conditions: &[Condition],
    off_rate: f64,
    rng: &mut StdRng,
) -> (Vec<(Kind, u32)>, Option<usize>) {
    let has = |c| conditions.contains(&c);
    let mut out = Vec::new();
    let none = conditions.is_empty();
    if has(Condition::Hypertension) {
        out.push((Kind::BloodPressure, 2));
    } else if has(Condition::HeartFailure) || none || (has(Condition::Copd) && rng.gen_bool(0.5)) {
        out.push((Kind::BloodPressure, 1));
    }
    if has(Condition::Copd) {
        out.push((Kind::Spo2, [1, 2][rng.gen_range(0..2)]));
    } else if has(Condition::HeartFailure) || (none && rng.gen_bool(0.5)) {
        out.push((Kind::Spo2, 1));
    }
    if has(Condition::Diabetes) {
        out.push((Kind::Glucose, [1, 2, 4, 4][rng.gen_range(0..4)]));
    }
    let mut off = None;
    if !none && rng.gen_bool(off_rate.clamp(0.0, 1.0)) {
        let missing: Vec<Kind> = [Kind::BloodPressure, Kind::Spo2, Kind::Glucose]
            .into_iter()
            .filter(|k| !out.iter().any(|(o, _)| o == k))
            .collect();
        if !missing.is_empty() {
            out.push((missing[rng.gen_range(0..missing.len())], 1));
            off = Some(out.len() - 1);
        }
    }
    (out, off)
}

/// A moment on `day` between local `from_h` and `to_h` o'clock (UTC+1).
fn moment(start_ms: i64, day: i64, from_h: i64, to_h: i64, rng: &mut StdRng) -> i64 {
    start_ms + day * DAY_MS + (rng.gen_range(from_h * 60..to_h * 60) - 60) * MINUTE_MS
}

/// The patient's own home BP mean (the morning surge on half the readings).
fn home_bp_mean(sim: &SimPatient) -> (f64, f64) {
    let b = sim.physiology.baseline();
    (b.systolic + 2.0, b.diastolic)
}

/// Draws the scenarios of one patient.
fn draw_scenarios(
    m: &Member,
    opts: &QualityOptions,
    start_ms: i64,
    rng: &mut StdRng,
) -> Vec<Scenario> {
    let days = i64::from(opts.days.max(3));
    let r = &opts.rates;
    let scale = opts.event_scale.max(0.0);
    let p = |rate: f64| (rate * scale).clamp(0.0, 1.0);
    let sim = &m.sim;
    let has = |c| sim.conditions.contains(&c);
    let cuff = sim.has(Kind::BloodPressure);
    let ox = sim.has(Kind::Spo2);
    let diabetic = has(Condition::Diabetes) && sim.has(Kind::Glucose);
    let mut out = Vec::new();
    if has(Condition::Copd) && ox && rng.gen_bool(r.copd_low_baseline.clamp(0.0, 1.0)) {
        let mut s = Scenario::new(ScenarioKind::CopdLowBaseline, start_ms, Kind::Spo2, rng);
        s.duration_ms = days * DAY_MS;
        out.push(s);
    }
    let any_device = |rng: &mut StdRng| sim.devices[rng.gen_range(0..sim.devices.len())].kind;
    // At most one long event.
    let (mean_sys, mean_dia) = home_bp_mean(sim);
    let long: Vec<(ScenarioKind, f64)> = [
        (
            ScenarioKind::ProgressiveDesaturation,
            ox && (has(Condition::Copd) || has(Condition::HeartFailure)),
            r.desaturation,
        ),
        (
            ScenarioKind::SustainedHighBp,
            cuff && mean_sys < 133.0 && mean_dia < 83.0 && days >= 10,
            r.sustained_high_bp,
        ),
        (ScenarioKind::MissedMeasurements, true, r.missed),
        (ScenarioKind::DeviceSilent, true, r.silent),
        (ScenarioKind::LowBattery, true, r.battery),
    ]
    .into_iter()
    .filter(|(_, eligible, _)| *eligible)
    .map(|(k, _, rate)| (k, p(rate)))
    .collect();
    let mut u: f64 = rng.r#gen();
    let mut busy: Option<(i64, i64)> = None;
    for (kind, rate) in long {
        if u >= rate {
            u -= rate;
            continue;
        }
        let s = match kind {
            ScenarioKind::ProgressiveDesaturation => {
                let mut s = Scenario::new(kind, 0, Kind::Spo2, rng);
                s.duration_ms = s
                    .duration_ms
                    .min((days - 2) * DAY_MS)
                    .max(DAY_MS + 36 * HOUR_MS);
                let latest = (days * DAY_MS - s.duration_ms - DAY_MS).max(DAY_MS);
                let earliest = (7 * DAY_MS).min(latest);
                s.start_ms = start_ms + rng.gen_range(earliest..=latest);
                s
            }
            ScenarioKind::SustainedHighBp => {
                let mut s = Scenario::new(kind, 0, Kind::BloodPressure, rng);
                s.duration_ms = s.duration_ms.min((days - 3) * DAY_MS);
                let latest = ((days * DAY_MS - s.duration_ms) / DAY_MS - 1).max(1);
                let d = rng.gen_range(1.min(latest)..=latest);
                s.start_ms = moment(start_ms, d, 0, 24, rng);
                // To a mean of 142-150 systolic (and the diastolic with it).
                s.level = (rng.gen_range(142.0..150.0) - mean_sys).max(10.0);
                s
            }
            _ => {
                let d = rng.gen_range(1..(days - 3).max(2));
                let at = moment(start_ms, d, 0, 24, rng);
                let device = any_device(rng);
                Scenario::new(kind, at, device, rng)
            }
        };
        busy = Some((
            s.start_ms.div_euclid(DAY_MS) - 1,
            s.effect_end_ms().div_euclid(DAY_MS) + 1,
        ));
        out.push(s);
        break;
    }
    // Single-reading events, each on its own day outside the long event.
    let pulse = cuff || ox;
    let off_kind = m.off_device.map(|d| sim.devices[d].kind);
    let singles: Vec<(ScenarioKind, Option<Kind>, f64)> = vec![
        (
            ScenarioKind::HypertensiveCrisis,
            cuff.then_some(Kind::BloodPressure),
            r.crisis,
        ),
        (
            ScenarioKind::Hypotension,
            cuff.then_some(Kind::BloodPressure),
            r.hypotension,
        ),
        (
            ScenarioKind::SpuriousHighBp,
            cuff.then_some(Kind::BloodPressure),
            r.spurious_high_bp,
        ),
        (
            ScenarioKind::SevereLowSpo2,
            ox.then_some(Kind::Spo2),
            r.severe_low_spo2,
        ),
        (
            ScenarioKind::SpuriousLowSpo2,
            ox.then_some(Kind::Spo2),
            r.spurious_low_spo2,
        ),
        (
            ScenarioKind::Tachycardia,
            pulse.then_some(if cuff {
                Kind::BloodPressure
            } else {
                Kind::Spo2
            }),
            r.tachycardia,
        ),
        (
            ScenarioKind::Bradycardia,
            pulse.then_some(if ox { Kind::Spo2 } else { Kind::BloodPressure }),
            r.bradycardia,
        ),
        (
            ScenarioKind::Hypoglycaemia,
            diabetic.then_some(Kind::Glucose),
            r.hypoglycaemia,
        ),
        (
            ScenarioKind::MildHypoglycaemia,
            diabetic.then_some(Kind::Glucose),
            r.mild_hypoglycaemia,
        ),
        (
            ScenarioKind::Hyperglycaemia,
            diabetic.then_some(Kind::Glucose),
            r.hyperglycaemia,
        ),
        (
            ScenarioKind::SevereHyperglycaemia,
            diabetic.then_some(Kind::Glucose),
            r.severe_hyperglycaemia,
        ),
        (
            ScenarioKind::ControlSolution,
            diabetic.then_some(Kind::Glucose),
            r.control_solution,
        ),
        (ScenarioKind::OffConditionReading, off_kind, r.off_condition),
    ];
    let mut taken: HashSet<i64> = HashSet::new();
    for (kind, device, rate) in singles {
        let Some(device) = device else { continue };
        if !rng.gen_bool(p(rate)) {
            continue;
        }
        // A free day: not in the long event (± a day), not the day of another event.
        let mut day = None;
        for _ in 0..20 {
            let d = rng.gen_range(1..days - 1);
            let abs = start_ms.div_euclid(DAY_MS) + d;
            if taken.contains(&d) || busy.is_some_and(|(a, b)| (a..=b).contains(&abs)) {
                continue;
            }
            day = Some(d);
            break;
        }
        let Some(d) = day else { continue };
        taken.insert(d);
        let at = moment(start_ms, d, 9, 21, rng);
        out.push(Scenario::new(kind, at, device, rng));
    }
    out.retain(|s| s.start_ms < start_ms + days * DAY_MS);
    out
}

fn store_kind(kind: Kind) -> (DeviceKind, ReadingKind) {
    match kind {
        Kind::BloodPressure => (DeviceKind::BloodPressure, ReadingKind::BloodPressure),
        Kind::Spo2 => (DeviceKind::Spo2, ReadingKind::Spo2),
        Kind::Glucose => (DeviceKind::Glucose, ReadingKind::Glucose),
    }
}

/// Milliseconds since the Unix epoch as a time.
pub fn at_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn ms_of(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// A simulated reading as the gateway's decoder would store it.
pub fn new_reading(device_id: &str, patient_id: i64, seq: i64, r: &TimedReading) -> NewReading {
    let (_, kind) = store_kind(r.kind);
    let mut row = NewReading {
        status: i32::from(r.sample.status.0),
        sensor: i64::from(r.sample.sensor),
        ..NewReading::bare(
            device_id,
            seq,
            patient_id,
            kind,
            at_ms(r.measured_ms),
            at_ms(r.delivered_ms),
        )
    };
    row.set_measurement(&r.sample.measurement);
    row
}

enum Delivery {
    Reading(Box<NewReading>),
    /// (member, device, battery)
    Status(usize, usize, u8),
}

const TRIGGER_KINDS: [&str; 4] = ["opened", "updated", "severity_raised", "reactivated"];

/// Repeat requests and what the simulated patients made of them.
#[derive(Default)]
struct RepeatStats {
    requests: usize,
    taken: usize,
    declined: usize,
    already: usize,
}

async fn run_on(
    store: &Store,
    label: String,
    opts: &QualityOptions,
    wall: std::time::Instant,
) -> anyhow::Result<QualityReport> {
    let days = i64::from(opts.days.max(1));
    // The simulated month ends at the last midnight (UTC) before now: nothing in the future.
    let now_ms = ms_of(OffsetDateTime::now_utc());
    let start_ms = (now_ms.div_euclid(DAY_MS) - days - 1) * DAY_MS;
    let end_ms = start_ms + days * DAY_MS;
    let run_end_ms = end_ms + DAY_MS;
    let mut rng = StdRng::seed_from_u64(mix(opts.seed, 0xA1E7));

    let code = format!("COT-AQ-{}", opts.seed);
    let cot = match store.cot_by_code(&code).await? {
        Some(c) => c,
        None => store.add_cot(&code, "Alert-quality cohort").await?,
    };
    let prefix = format!("aq{}", opts.seed);
    let mut cohort: Vec<Member> = Vec::with_capacity(opts.patients);
    let mut by_label: BTreeMap<String, usize> = BTreeMap::new();
    let mut devices_by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for n in 0..opts.patients {
        let (label, conditions) = draw_mix(&mut rng);
        let (devices, off_device) =
            devices_for(conditions, opts.off_condition_device_rate, &mut rng);
        let mut sim =
            SimPatient::with_devices(mix(opts.seed, n as u64), conditions, &devices, &mut rng);
        sim.habits = opts.habits;
        *by_label.entry(label.to_owned()).or_default() += 1;
        let names: Vec<String> = conditions.iter().map(|c| c.as_str().to_owned()).collect();
        let patient = store
            .add_patient(&NewPatient {
                cot_id: cot.id,
                code: format!("{prefix}-P{n:05}"),
                display_name: format!("Cohort patient {n}"),
                birth_year: Some(rng.gen_range(1935..=1975)),
                conditions: names.clone(),
            })
            .await
            .context("enrolling a patient (use an empty database)")?;
        let mut device_ids = Vec::new();
        for d in &sim.devices {
            let (device_kind, _) = store_kind(d.kind);
            let device_id = format!("{prefix}-{}-{n:05}", device_kind.as_str());
            store
                .add_device(&NewDevice {
                    id: device_id.clone(),
                    patient_id: patient.id,
                    kind: device_kind,
                    secret_hash: store::credentials::hash_secret(
                        &store::credentials::generate_secret(),
                    ),
                    model: Some("simulated".into()),
                })
                .await?;
            *devices_by_kind
                .entry(device_kind.as_str().to_owned())
                .or_default() += 1;
            device_ids.push(device_id);
        }
        // The plan the engine will compose for these conditions (not stored), for scoring.
        let composed = plan::for_conditions(&names);
        if opts.tuned {
            let mut tuned = composed.clone();
            tune(&mut tuned);
            store
                .add_care_plan(&NewCarePlan {
                    patient_id: patient.id,
                    template: Some(plan::template_label(&names)),
                    plan: serde_json::to_string(&tuned)?,
                    author: "sentinella-sim".into(),
                    reason: "alert-quality: proposed template changes".into(),
                })
                .await?;
        }
        let adherence_limit_ms = sim
            .devices
            .iter()
            .filter_map(|d| {
                let (_, rk) = store_kind(d.kind);
                composed.schedule.iter().find(|e| e.kind == rk).map(|e| {
                    (
                        d.kind,
                        ((e.every_hours + e.grace_hours) * HOUR_MS as f64) as i64,
                    )
                })
            })
            .collect();
        let (sys, dia) = home_bp_mean(&sim);
        let n_dev = sim.devices.len();
        let mut member = Member {
            patient_id: patient.id,
            label,
            chronic_high_bp: sim.has(Kind::BloodPressure) && (sys >= 135.0 || dia >= 85.0),
            sim,
            device_ids,
            off_device,
            complies: rng.gen_bool(opts.repeat_compliance.clamp(0.0, 1.0)),
            measured: vec![Vec::new(); n_dev],
            next_seq: vec![1; n_dev],
            adherence_limit_ms,
        };
        for s in draw_scenarios(&member, opts, start_ms, &mut rng) {
            member.sim.inject(s);
        }
        cohort.push(member);
    }
    let off_condition_devices = cohort.iter().filter(|m| m.off_device.is_some()).count();

    // Everything the gateway will receive on the patients' own schedules, by delivery time.
    let mut deliveries: Vec<(i64, Delivery)> = Vec::new();
    for (i, c) in cohort.iter_mut().enumerate() {
        let mut prng = StdRng::seed_from_u64(mix(opts.seed, 0x7100 + i as u64));
        // One day past the end keeps the timers honest: devices do not all fall silent at
        // once. Alerts opened after `end_ms` are not scored.
        let (readings, statuses) = c.sim.timeline(start_ms, run_end_ms, &mut prng);
        for r in &readings {
            c.measured[r.device].push(r.measured_ms);
            let seq = c.next_seq[r.device];
            c.next_seq[r.device] += 1;
            let row = new_reading(&c.device_ids[r.device], c.patient_id, seq, r);
            deliveries.push((r.delivered_ms, Delivery::Reading(Box::new(row))));
        }
        for s in statuses {
            deliveries.push((s.at_ms, Delivery::Status(i, s.device, s.battery)));
        }
    }
    deliveries.sort_by_key(|d| d.0);
    let by_device: HashMap<String, (usize, usize)> = cohort
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            c.device_ids
                .iter()
                .enumerate()
                .map(move |(d, id)| (id.clone(), (i, d)))
        })
        .collect();

    let clock_ms = Arc::new(AtomicI64::new(start_ms));
    let clock: Clock = {
        let c = clock_ms.clone();
        Arc::new(move || at_ms(c.load(Ordering::Relaxed)))
    };
    let config = AlertsConfig::default();
    let metrics = Arc::new(EngineMetrics::default());
    let (repeat_tx, mut repeat_rx) = mpsc::unbounded_channel();
    let mut engine =
        Engine::new(store.clone(), config.clone(), clock, metrics.clone()).with_repeats(repeat_tx);
    let feed = store.alert_feed();
    let mut last_event = 0i64;
    // alert id → resolve at ms
    let mut to_resolve: HashMap<i64, i64> = HashMap::new();
    let mut nurse_rng = StdRng::seed_from_u64(mix(opts.seed, 0x4E55));
    let mut repeat_rng = StdRng::seed_from_u64(mix(opts.seed, 0x8E9E));
    let mut repeats = RepeatStats::default();
    // Repeat readings waiting for their delivery time.
    let mut pending: Vec<(i64, NewReading)> = Vec::new();

    let step = opts.step_minutes.max(1) * MINUTE_MS;
    let tick_every = (opts.tick_minutes.max(1) * MINUTE_MS / step).max(1);
    let mut next = 0usize;
    let mut readings_total = 0u64;
    let mut k: i64 = 0;
    let mut t = start_ms;
    while t < run_end_ms {
        t += step;
        k += 1;
        clock_ms.store(t, Ordering::Relaxed);
        let mut readings = Vec::new();
        let mut statuses = Vec::new();
        while next < deliveries.len() && deliveries[next].0 <= t {
            match &deliveries[next].1 {
                Delivery::Reading(r) => readings.push((**r).clone()),
                Delivery::Status(i, d, battery) => statuses.push(DeviceStatusUpdate {
                    device_id: cohort[*i].device_ids[*d].clone(),
                    at: at_ms(deliveries[next].0),
                    online: true,
                    battery: Some(i16::from(*battery)),
                    firmware: None,
                    rssi: None,
                }),
            }
            next += 1;
        }
        let mut i = 0;
        while i < pending.len() {
            if pending[i].0 <= t {
                readings.push(pending.swap_remove(i).1);
            } else {
                i += 1;
            }
        }
        if !readings.is_empty() || !statuses.is_empty() {
            let outcome = store
                .commit_batch(&CommitBatch {
                    readings: readings.clone(),
                    statuses,
                    outbox: true,
                    ..CommitBatch::default()
                })
                .await
                .context("committing a batch")?;
            let fresh: Vec<NewReading> = readings
                .into_iter()
                .zip(&outcome.fresh)
                .filter(|(_, f)| **f)
                .map(|(r, _)| r)
                .collect();
            readings_total += fresh.len() as u64;
            if !fresh.is_empty() {
                engine
                    .on_batch(Committed {
                        readings: fresh,
                        outbox: outcome.outbox.clone(),
                        committed: std::time::Instant::now(),
                    })
                    .await;
            }
        }
        // The devices honour the engine's repeat requests (patients who comply).
        while let Ok(req) = repeat_rx.try_recv() {
            repeats.requests += 1;
            let Some(&(i, d)) = by_device.get(&req.device_id) else {
                continue;
            };
            let c = &mut cohort[i];
            if !c.complies {
                repeats.declined += 1;
                continue;
            }
            let due = ms_of(req.at)
                + i64::from(req.in_minutes) * MINUTE_MS
                + repeat_rng.gen_range(0..=3) * MINUTE_MS;
            let kind = c.sim.devices[d].kind;
            let times = &c.measured[d];
            let pos = times.partition_point(|m| *m < due - 10 * MINUTE_MS);
            if times.get(pos).is_some_and(|m| *m <= due + 10 * MINUTE_MS) {
                repeats.already += 1;
                continue;
            }
            if due >= run_end_ms || c.sim.scenarios.iter().any(|s| s.silent(kind, due)) {
                continue;
            }
            let meal = (kind == Kind::Glucose).then_some(MealContext::Casual);
            let sample = c.sim.measure(kind, due, meal, &mut repeat_rng);
            let r = c.sim.timed(due, d, sample, false, true, &mut repeat_rng);
            c.measured[d].insert(pos, due);
            let seq = c.next_seq[d];
            c.next_seq[d] += 1;
            pending.push((
                r.delivered_ms,
                new_reading(&c.device_ids[d], c.patient_id, seq, &r),
            ));
            repeats.taken += 1;
        }
        // Nurses: schedule a resolution for what is new, resolve what is due.
        if *feed.borrow() > last_event {
            loop {
                let events = store.alert_events_after(last_event, None, 10_000).await?;
                let Some(last) = events.last() else { break };
                last_event = last.id;
                for e in &events {
                    if e.kind == "opened" || e.kind == "severity_raised" {
                        let response = config
                            .response(e.severity)
                            .map_or(DAY_MS, |d| d.as_millis() as i64);
                        let when =
                            ms_of(e.at) + (response as f64 * nurse_rng.gen_range(0.2..0.8)) as i64;
                        let slot = to_resolve.entry(e.alert_id).or_insert(when);
                        *slot = (*slot).min(when);
                    }
                }
                if events.len() < 10_000 {
                    break;
                }
            }
        }
        let due: Vec<i64> = to_resolve
            .iter()
            .filter(|(_, w)| **w <= t)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            to_resolve.remove(&id);
            let outcome = ["contacted: advice given", "contacted: no action needed"]
                [nurse_rng.gen_range(0..2)];
            // Already resolved (or gone): nothing to do.
            let _ = store
                .resolve_alert(id, "nurse.sim", outcome, None, at_ms(t))
                .await;
        }
        if k % tick_every == 0 {
            engine.on_tick().await;
        }
    }

    let run = Run {
        readings: readings_total,
        readings_late: metrics.readings_late.load(Ordering::Relaxed),
        by_label,
        devices_by_kind,
        off_condition_devices,
        repeats,
    };
    score(store, &cohort, end_ms, opts, label, run, wall).await
}

struct Run {
    readings: u64,
    readings_late: u64,
    by_label: BTreeMap<String, usize>,
    devices_by_kind: BTreeMap<String, usize>,
    off_condition_devices: usize,
    repeats: RepeatStats,
}

fn category(rule_kind: &str, severity: Severity) -> &'static str {
    if severity == Severity::Info {
        return "info";
    }
    match rule_kind {
        "adherence" => "adherence",
        "device" => "device",
        "quality" => "info",
        _ => "clinical",
    }
}

fn scenario_category(kind: ScenarioKind) -> &'static str {
    if kind.clinical() {
        "clinical"
    } else if kind == ScenarioKind::MissedMeasurements {
        "adherence"
    } else if matches!(kind, ScenarioKind::DeviceSilent | ScenarioKind::LowBattery) {
        "device"
    } else {
        "no-alert"
    }
}

async fn score(
    store: &Store,
    cohort: &[Member],
    end_ms: i64,
    opts: &QualityOptions,
    label: String,
    run: Run,
    wall: std::time::Instant,
) -> anyhow::Result<QualityReport> {
    let mut alerts = Vec::new();
    loop {
        let page = store
            .list_alerts(&AlertQuery {
                limit: 1_000,
                offset: alerts.len() as i64,
                ..AlertQuery::default()
            })
            .await?;
        let n = page.len();
        alerts.extend(page);
        if n < 1_000 {
            break;
        }
    }
    alerts.retain(|a| ms_of(a.opened_at) < end_ms);
    let mut events: Vec<AlertEvent> = Vec::new();
    loop {
        let after = events.last().map_or(0, |e| e.id);
        let page = store.alert_events_after(after, None, 10_000).await?;
        let n = page.len();
        events.extend(page);
        if n < 10_000 {
            break;
        }
    }
    let mut triggers: HashMap<i64, Vec<&AlertEvent>> = HashMap::new();
    let mut downgraded_alerts: HashSet<i64> = HashSet::new();
    let mut confirmed_alerts: HashSet<i64> = HashSet::new();
    let mut unconfirmed_opened: HashSet<i64> = HashSet::new();
    let mut escalations = 0;
    for e in &events {
        if TRIGGER_KINDS.contains(&e.kind.as_str()) {
            triggers.entry(e.alert_id).or_default().push(e);
        }
        match e.kind.as_str() {
            "escalated" => escalations += 1,
            "downgraded" => {
                downgraded_alerts.insert(e.alert_id);
            }
            "confirmed" => {
                confirmed_alerts.insert(e.alert_id);
            }
            _ => {}
        }
    }
    for a in &alerts {
        if a.confirmation.is_some() {
            unconfirmed_opened.insert(a.id);
        }
    }
    let by_patient: HashMap<i64, &Member> = cohort.iter().map(|c| (c.patient_id, c)).collect();
    let rule_of = |r: &str| r.split(':').next().unwrap_or(r).to_owned();
    let trigger_times = |id: i64, opened: OffsetDateTime| -> Vec<i64> {
        triggers
            .get(&id)
            .map(|v| v.iter().map(|e| ms_of(e.at)).collect())
            .unwrap_or_else(|| vec![ms_of(opened)])
    };

    // Alerts: true or false positives, by category and rule.
    let mut rules: BTreeMap<String, RuleRow> = BTreeMap::new();
    let mut cats: BTreeMap<String, CategoryRow> = BTreeMap::new();
    let mut tp = 0;
    let mut per_label: BTreeMap<String, usize> = BTreeMap::new();
    let (mut natural_gaps, mut chronic) = (0, 0);
    let (mut med_plus, mut med_plus_tp) = (0, 0);
    let (mut dg_real, mut dg_artefact, mut dg_other) = (0, 0, 0);
    for a in &alerts {
        let Some(c) = by_patient.get(&a.patient_id) else {
            continue;
        };
        let times = trigger_times(a.id, a.opened_at);
        let injected = c.sim.scenarios.iter().any(|s| {
            let truth = s.truth();
            times.iter().any(|t| truth.explains(&a.rule_id, *t))
        });
        let artefact = c.sim.scenarios.iter().any(|s| {
            let truth = s.truth();
            times.iter().any(|t| truth.violated_by(&a.rule_id, *t))
        });
        // An adherence alert over a real gap (a skipped measurement, not injected) did what
        // the plan asks: true, but counted apart.
        let natural = !injected
            && a.rule_kind == "adherence"
            && a.rule_id
                .strip_prefix("missed-")
                .and_then(|k| {
                    c.sim
                        .devices
                        .iter()
                        .position(|d| d.kind.as_str() == k)
                        .map(|d| (d, c.adherence_limit_ms.get(&c.sim.devices[d].kind)))
                })
                .is_some_and(|(d, limit)| {
                    limit.is_some_and(|limit| {
                        let t = ms_of(a.opened_at);
                        !c.measured[d].iter().any(|m| (t - limit..=t).contains(m))
                    })
                });
        // The ESH home threshold on a patient whose own home BP is above it: true, apart.
        let chronic_avg = !injected && a.rule_id == "bp-home-average" && c.chronic_high_bp;
        natural_gaps += usize::from(natural);
        chronic += usize::from(chronic_avg);
        let true_positive = injected || natural || chronic_avg;
        let downgraded = downgraded_alerts.contains(&a.id);
        if downgraded {
            if injected {
                dg_real += 1;
            } else if artefact {
                dg_artefact += 1;
            } else {
                dg_other += 1;
            }
        }
        let row = rules.entry(rule_of(&a.rule_id)).or_default();
        row.alerts += 1;
        row.downgraded += usize::from(downgraded);
        *row.by_severity
            .entry(a.severity.as_str().to_owned())
            .or_default() += 1;
        *per_label.entry(c.label.to_owned()).or_default() += 1;
        let cat = category(&a.rule_kind, a.severity);
        let crow = cats.entry(cat.to_owned()).or_default();
        crow.alerts += 1;
        if cat == "clinical" && a.severity >= Severity::Medium {
            med_plus += 1;
            med_plus_tp += usize::from(true_positive);
        }
        if true_positive {
            tp += 1;
            row.true_positive += 1;
            crow.true_positive += 1;
        } else {
            row.false_positive += 1;
        }
    }
    let by_rule: Vec<RuleRow> = rules
        .into_iter()
        .map(|(rule, mut row)| {
            row.rule = rule;
            row.ppv = ratio(row.true_positive, row.alerts);
            row
        })
        .collect();
    let month = 30.0 / f64::from(opts.days.max(1));
    let per_patient_month = |n: usize, patients: usize| {
        if patients == 0 {
            0.0
        } else {
            round2(n as f64 / patients as f64 * month)
        }
    };
    for cat in ["clinical", "adherence", "device", "info"] {
        let row = cats.entry(cat.to_owned()).or_default();
        row.per_patient_month = per_patient_month(row.alerts, cohort.len());
        row.ppv = ratio(row.true_positive, row.alerts);
    }
    let clinical = cats.get("clinical").cloned().unwrap_or_default();

    // Injected events: detected or violated.
    let mut rows: BTreeMap<ScenarioKind, (ScenarioRow, Vec<f64>)> = BTreeMap::new();
    let mut missed = Vec::new();
    let (mut crit_n, mut crit_hit, mut crit_any, mut ev_n, mut ev_hit) = (0, 0, 0, 0, 0);
    let (mut neg_n, mut neg_bad, mut neg_transient) = (0, 0, 0);
    let mut alerts_of: HashMap<i64, Vec<&store::Alert>> = HashMap::new();
    for a in &alerts {
        alerts_of.entry(a.patient_id).or_default().push(a);
    }
    for c in cohort {
        let mine = alerts_of.get(&c.patient_id).cloned().unwrap_or_default();
        for s in &c.sim.scenarios {
            let truth = s.truth();
            let (row, delays) = rows.entry(s.kind).or_default();
            row.injected += 1;
            if !truth.expect.is_empty() {
                ev_n += 1;
                let first = mine
                    .iter()
                    .flat_map(|a| {
                        triggers
                            .get(&a.id)
                            .into_iter()
                            .flatten()
                            .filter(|e| truth.fulfils(&a.rule_id, ms_of(e.at), e.severity))
                            .map(move |e| (ms_of(e.at), a.id))
                    })
                    .min();
                let any = mine.iter().any(|a| {
                    GroundTruth::matches(&truth.expect, &a.rule_id)
                        && trigger_times(a.id, a.opened_at)
                            .iter()
                            .any(|t| (truth.from_ms..=truth.to_ms).contains(t))
                });
                row.alerted_any += usize::from(any);
                if s.kind.critical() {
                    crit_n += 1;
                    crit_any += usize::from(any);
                }
                match first {
                    Some((t, id)) => {
                        ev_hit += 1;
                        row.detected += 1;
                        delays.push((t - s.start_ms) as f64 / MINUTE_MS as f64);
                        if downgraded_alerts.contains(&id) {
                            row.downgraded += 1;
                        }
                        if s.kind.critical() {
                            crit_hit += 1;
                        }
                    }
                    None => missed.push(format!(
                        "{} on {} of patient {} ({}) at {}{}",
                        s.kind,
                        s.device.as_str(),
                        c.patient_id,
                        c.label,
                        at_ms(s.start_ms),
                        if any {
                            " (alerted below the severity)"
                        } else {
                            ""
                        }
                    )),
                }
            } else {
                neg_n += 1;
                let hits: Vec<&&store::Alert> = mine
                    .iter()
                    .filter(|a| {
                        trigger_times(a.id, a.opened_at)
                            .iter()
                            .any(|t| truth.violated_by(&a.rule_id, *t))
                    })
                    .collect();
                if hits.iter().any(|a| !downgraded_alerts.contains(&a.id)) {
                    neg_bad += 1;
                    row.violated += 1;
                } else if !hits.is_empty() {
                    neg_transient += 1;
                    row.transient += 1;
                }
            }
        }
    }
    let by_scenario = rows
        .into_iter()
        .map(|(kind, (mut row, mut delays))| {
            let truth = Scenario {
                kind,
                start_ms: 0,
                duration_ms: 1,
                level: 0.0,
                device: Kind::BloodPressure,
            }
            .truth();
            row.scenario = kind.as_str().to_owned();
            row.category = scenario_category(kind).to_owned();
            row.expect = if truth.expect.is_empty() {
                format!("none of {}", truth.forbid.join(", "))
            } else if kind == ScenarioKind::OffConditionReading {
                "the net's rule of the kind >= high".to_owned()
            } else {
                format!(
                    "{} >= {}",
                    truth.expect.join(" | "),
                    truth.min_severity.map_or("-", Severity::as_str)
                )
            };
            row.sensitivity = if truth.expect.is_empty() {
                0.0
            } else {
                ratio(row.detected, row.injected)
            };
            delays.sort_by(f64::total_cmp);
            row.median_minutes_to_alert = delays.get(delays.len() / 2).copied();
            row.max_minutes_to_alert = delays.last().copied();
            row
        })
        .collect();
    let alerts_per_patient_month_by_cohort = per_label
        .iter()
        .map(|(l, n)| {
            (
                l.clone(),
                per_patient_month(*n, run.by_label.get(l).copied().unwrap_or(0)),
            )
        })
        .collect();
    let left_unconfirmed = alerts
        .iter()
        .filter(|a| a.confirmation.as_deref() == Some("unconfirmed"))
        .count();
    Ok(QualityReport {
        patients: cohort.len(),
        days: opts.days,
        seed: opts.seed,
        store: label,
        readings: run.readings,
        readings_late: run.readings_late,
        cohort: run.by_label,
        devices: run.devices_by_kind,
        off_condition_devices: run.off_condition_devices,
        repeat_compliance: opts.repeat_compliance,
        event_scale: opts.event_scale,
        repeat_requests: run.repeats.requests,
        repeats_taken: run.repeats.taken,
        repeats_declined: run.repeats.declined,
        repeats_already_measured: run.repeats.already,
        critical_injected: crit_n,
        critical_detected: crit_hit,
        detection_rate: ratio(crit_hit, crit_n),
        critical_alerted_any: crit_any,
        events_injected: ev_n,
        events_detected: ev_hit,
        alerts: alerts.len(),
        alerts_per_patient_month: per_patient_month(alerts.len(), cohort.len()),
        true_positive: tp,
        ppv: ratio(tp, alerts.len()),
        clinical_ppv: clinical.ppv,
        clinical_ppv_without_chronic: ratio(
            clinical.true_positive - chronic,
            clinical.alerts - chronic,
        ),
        clinical_medium_plus: med_plus,
        clinical_medium_plus_ppv: ratio(med_plus_tp, med_plus),
        by_category: cats,
        chronic_average_alerts: chronic,
        adherence_natural_gaps: natural_gaps,
        unconfirmed_opened: unconfirmed_opened.len(),
        confirmed: confirmed_alerts.len(),
        downgraded: downgraded_alerts.len(),
        downgraded_on_real_events: dg_real,
        downgraded_on_artefacts: dg_artefact,
        downgraded_other: dg_other,
        left_unconfirmed,
        no_alert_scenarios: neg_n,
        no_alert_violated: neg_bad,
        no_alert_transient: neg_transient,
        escalations,
        tuned: opts.tuned,
        by_scenario,
        by_rule,
        alerts_per_patient_month_by_cohort,
        missed,
        wall_seconds: round2(wall.elapsed().as_secs_f64()),
    })
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        1.0
    } else {
        (a as f64 / b as f64 * 10_000.0).round() / 10_000.0
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn pct(v: f64) -> String {
    format!("{:.1} %", v * 100.0)
}

impl fmt::Display for QualityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "alert quality: {} patients x {} days ({}{}), seed {}, {} readings ({} late), {:.1} s",
            self.patients,
            self.days,
            self.store,
            if self.tuned {
                ", stored plans with the proposed changes"
            } else {
                ", plans composed by the engine"
            },
            self.seed,
            self.readings,
            self.readings_late,
            self.wall_seconds
        )?;
        let join = |m: &BTreeMap<String, usize>| {
            m.iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(f, "cohort: {}", join(&self.cohort))?;
        writeln!(
            f,
            "devices: {} ({} outside the patient's conditions)",
            join(&self.devices),
            self.off_condition_devices
        )?;
        writeln!(
            f,
            "repeat requests {}: taken {}, declined {} (compliance {}), already measuring {}",
            self.repeat_requests,
            self.repeats_taken,
            self.repeats_declined,
            pct(self.repeat_compliance),
            self.repeats_already_measured
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "urgent events alerted (>= expected) {}/{} = {}   (any severity: {})",
            self.critical_detected,
            self.critical_injected,
            pct(self.detection_rate),
            self.critical_alerted_any
        )?;
        writeln!(
            f,
            "all expected events alerted        {}/{}",
            self.events_detected, self.events_injected
        )?;
        writeln!(
            f,
            "alerts per patient per month       {:.2}   (target <= 5)",
            self.alerts_per_patient_month
        )?;
        for (cat, r) in &self.by_category {
            writeln!(
                f,
                "  {:<10} {:>6} alerts  {:>5.2}/patient/month  PPV {}",
                cat,
                r.alerts,
                r.per_patient_month,
                pct(r.ppv)
            )?;
        }
        writeln!(
            f,
            "PPV all {}; clinical {} ({} without {} bp-home-average alerts on chronically high home BP); clinical >= medium {} of {}",
            pct(self.ppv),
            pct(self.clinical_ppv),
            pct(self.clinical_ppv_without_chronic),
            self.chronic_average_alerts,
            pct(self.clinical_medium_plus_ppv),
            self.clinical_medium_plus
        )?;
        writeln!(
            f,
            "unconfirmed alerts {}: confirmed {}, downgraded {} (on real events {}, on artefacts {}, elsewhere {}), left unconfirmed {}",
            self.unconfirmed_opened,
            self.confirmed,
            self.downgraded,
            self.downgraded_on_real_events,
            self.downgraded_on_artefacts,
            self.downgraded_other,
            self.left_unconfirmed
        )?;
        writeln!(
            f,
            "no-alert scenarios violated {}/{} (transient, downgraded by the repeat: {})",
            self.no_alert_violated, self.no_alert_scenarios, self.no_alert_transient
        )?;
        writeln!(
            f,
            "adherence over real gaps {} (counted true); escalations {}",
            self.adherence_natural_gaps, self.escalations
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:<24} {:<9} {:>5} {:>8} {:>7} {:>5} {:>8} {:>8} {:>5} {:>5} {:>5}  expected",
            "event",
            "category",
            "n",
            "detected",
            "sens",
            "any",
            "med min",
            "max min",
            "down",
            "viol",
            "trans"
        )?;
        for r in &self.by_scenario {
            let m = |v: Option<f64>| v.map_or("-".to_owned(), |m| format!("{m:.0}"));
            writeln!(
                f,
                "{:<24} {:<9} {:>5} {:>8} {:>7} {:>5} {:>8} {:>8} {:>5} {:>5} {:>5}  {}",
                r.scenario,
                r.category,
                r.injected,
                r.detected,
                if r.category == "no-alert" {
                    "-".to_owned()
                } else {
                    pct(r.sensitivity)
                },
                r.alerted_any,
                m(r.median_minutes_to_alert),
                m(r.max_minutes_to_alert),
                r.downgraded,
                r.violated,
                r.transient,
                r.expect
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<16} {:>7} {:>6} {:>6} {:>8} {:>5}  by severity",
            "rule", "alerts", "TP", "FP", "PPV", "down"
        )?;
        for r in &self.by_rule {
            let sev: Vec<String> = r
                .by_severity
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect();
            writeln!(
                f,
                "{:<16} {:>7} {:>6} {:>6} {:>8} {:>5}  {}",
                r.rule,
                r.alerts,
                r.true_positive,
                r.false_positive,
                pct(r.ppv),
                r.downgraded,
                sev.join(", ")
            )?;
        }
        let per: Vec<String> = self
            .alerts_per_patient_month_by_cohort
            .iter()
            .map(|(c, v)| format!("{c} {v:.2}"))
            .collect();
        writeln!(f, "\nalerts/patient/month by cohort: {}", per.join(", "))?;
        if !self.missed.is_empty() {
            writeln!(f, "\nnot alerted at the expected severity:")?;
            for m in self.missed.iter().take(40) {
                writeln!(f, "  {m}")?;
            }
        }
        Ok(())
    }
}

/// A fixed seed's quick check, for tests: `patients` × `days` on a temporary SQLite file.
pub async fn small_cohort(patients: usize, days: u32, seed: u64) -> anyhow::Result<QualityReport> {
    run_alert_quality(&QualityOptions {
        patients,
        days,
        seed,
        ..QualityOptions::default()
    })
    .await
}

/// The template changes this benchmark proposes (see BENCHMARKS.md, "Alert quality"), applied
/// to a composed plan before it is stored: they are data, not code, so a clinician can apply
/// them per patient. None yet beyond what the templates already adopted.
pub fn tune(_plan: &mut plan::CarePlan) {}
