//! Clinical scenarios injected into a simulated patient's measurements, each with its ground
//! truth: which alerts the care-plan templates should raise (rule, minimum severity, time
//! window), or which they must not raise.
//!
//! A [`SimPatient`] is one patient of a cohort: a [`Patient`] (physiology), one home device
//! measuring on its daily [`Schedule`], the patient's habits (an occasional skipped
//! measurement; a repeat after a worrying value, as home-monitoring instructions ask) and the
//! [`Scenario`]s injected into it. [`SimPatient::timeline`] turns that into the readings and
//! device statuses the gateway would receive, with measurement and delivery times, so the alert
//! benchmark can feed them to the real engine in compressed time (`alert_quality`).
//!
//! | scenario | injected | ground truth |
//! | --- | --- | --- |
//! | hypertensive crisis | a reading ≥ 180/110 and a repeat 5 min later, also severe | `bp-high` ≥ critical within 1 h |
//! | progressive desaturation | COPD SpO2 drifting down over 3-5 days to ≤ 85 %, held 36 h, recovering over 2 days | `spo2-low` ≥ high before recovery ends |
//! | spurious low SpO2 | one reading at 78-84 %, then normal (the repeat too) | no `spo2-low` / `spo2-trend` within 24 h |
//! | COPD low baseline | a COPD patient whose baseline is 88-90 % | no `spo2-low` / `spo2-trend` all run |
//! | hypoglycaemia | one glucose reading < 54 mg/dL, retest 15 min later recovered | `glucose-low` ≥ critical within 1 h |
//! | control-solution check | a meter check with low-level control solution (35-50 mg/dL) | no `glucose-low` within 24 h |
//! | missed measurements | the patient stops measuring for 48-72 h | `missed-<kind>` within the gap |
//! | device silent | the device stops connecting for 30-72 h, then delivers its backlog | `device-offline` within the silence (plus, explained: `missed-<kind>`, `late-review`) |
//! | low battery | the device reports 5-14 % battery for 1-3 days | `device-battery` within that time |

use std::fmt;

use protocol::reading::sensor;
use protocol::{Kind, MealContext, Measurement, SampleType};
use rand::Rng;
use rand::rngs::StdRng;
use serde::Serialize;
use store::Severity;

use crate::physiology::{Baseline, Condition, Patient, Sample};
use crate::schedule::{Schedule, Slot, slot};

/// A minute in ms.
pub const MINUTE_MS: i64 = 60_000;
/// An hour in ms.
pub const HOUR_MS: i64 = 3_600_000;
/// A day in ms.
pub const DAY_MS: i64 = 86_400_000;

/// What a scenario injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioKind {
    HypertensiveCrisis,
    ProgressiveDesaturation,
    SpuriousLowSpo2,
    CopdLowBaseline,
    Hypoglycaemia,
    ControlSolution,
    MissedMeasurements,
    DeviceSilent,
    LowBattery,
}

impl ScenarioKind {
    /// Every scenario.
    pub const ALL: [ScenarioKind; 9] = [
        ScenarioKind::HypertensiveCrisis,
        ScenarioKind::ProgressiveDesaturation,
        ScenarioKind::SpuriousLowSpo2,
        ScenarioKind::CopdLowBaseline,
        ScenarioKind::Hypoglycaemia,
        ScenarioKind::ControlSolution,
        ScenarioKind::MissedMeasurements,
        ScenarioKind::DeviceSilent,
        ScenarioKind::LowBattery,
    ];

    /// The name on the command line and in reports.
    pub const fn as_str(self) -> &'static str {
        match self {
            ScenarioKind::HypertensiveCrisis => "hypertensive-crisis",
            ScenarioKind::ProgressiveDesaturation => "progressive-desaturation",
            ScenarioKind::SpuriousLowSpo2 => "spurious-low-spo2",
            ScenarioKind::CopdLowBaseline => "copd-low-baseline",
            ScenarioKind::Hypoglycaemia => "hypoglycaemia",
            ScenarioKind::ControlSolution => "control-solution",
            ScenarioKind::MissedMeasurements => "missed-measurements",
            ScenarioKind::DeviceSilent => "device-silent",
            ScenarioKind::LowBattery => "low-battery",
        }
    }

    /// Parses [`Self::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        ScenarioKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// One line for `sentinella-sim scenario --list`.
    pub const fn description(self) -> &'static str {
        match self {
            ScenarioKind::HypertensiveCrisis => {
                "a reading >= 180/110 mmHg confirmed by a repeat 5 min later"
            }
            ScenarioKind::ProgressiveDesaturation => {
                "COPD SpO2 drifting down over 3-5 days to <= 85 %, held 36 h, recovering over 2 days"
            }
            ScenarioKind::SpuriousLowSpo2 => {
                "one SpO2 reading at 78-84 % (unflagged artefact), then normal"
            }
            ScenarioKind::CopdLowBaseline => {
                "a COPD patient whose own baseline is 88-90 % (scale 2 target)"
            }
            ScenarioKind::Hypoglycaemia => {
                "one glucose reading < 54 mg/dL, retest after 15 min recovered"
            }
            ScenarioKind::ControlSolution => {
                "a meter check with low-level control solution (35-50 mg/dL), sample type control"
            }
            ScenarioKind::MissedMeasurements => "the patient stops measuring for 48-72 h",
            ScenarioKind::DeviceSilent => {
                "the device stops connecting for 30-72 h, then delivers its backlog (late data)"
            }
            ScenarioKind::LowBattery => "the device reports 5-14 % battery for 1-3 days",
        }
    }

    /// The device the scenario needs.
    pub const fn device(self) -> Option<Kind> {
        match self {
            ScenarioKind::HypertensiveCrisis => Some(Kind::BloodPressure),
            ScenarioKind::ProgressiveDesaturation
            | ScenarioKind::SpuriousLowSpo2
            | ScenarioKind::CopdLowBaseline => Some(Kind::Spo2),
            ScenarioKind::Hypoglycaemia | ScenarioKind::ControlSolution => Some(Kind::Glucose),
            ScenarioKind::MissedMeasurements
            | ScenarioKind::DeviceSilent
            | ScenarioKind::LowBattery => None,
        }
    }

    /// A clinical event the nurse must hear about (the detection target is 100 %).
    pub const fn critical(self) -> bool {
        matches!(
            self,
            ScenarioKind::HypertensiveCrisis
                | ScenarioKind::ProgressiveDesaturation
                | ScenarioKind::Hypoglycaemia
        )
    }
}

impl fmt::Display for ScenarioKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the alert engine should make of a scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroundTruth {
    /// One of these rules must raise an alert of at least `min_severity` in the window
    /// (empty: nothing is required). A rule id matches an alert's rule id exactly or as its
    /// prefix before `:` (`device-offline` matches `device-offline:bp-001`).
    pub expect: Vec<String>,
    pub min_severity: Option<Severity>,
    /// Other alerts in the window that the scenario explains (true positives, not required).
    pub related: Vec<String>,
    /// Alerts the scenario must not raise in the window.
    pub forbid: Vec<String>,
    /// The window, simulated ms since the Unix epoch, inclusive.
    pub from_ms: i64,
    pub to_ms: i64,
}

impl GroundTruth {
    /// Whether `rule_id` (as stored on an alert) is one of `rules`.
    pub fn matches(rules: &[String], rule_id: &str) -> bool {
        rules.iter().any(|r| {
            rule_id == r
                || rule_id
                    .strip_prefix(r.as_str())
                    .is_some_and(|rest| rest.starts_with(':'))
        })
    }

    /// Whether an alert of `rule_id` at `at_ms` is explained by this scenario.
    pub fn explains(&self, rule_id: &str, at_ms: i64) -> bool {
        (self.from_ms..=self.to_ms).contains(&at_ms)
            && (GroundTruth::matches(&self.expect, rule_id)
                || GroundTruth::matches(&self.related, rule_id))
    }

    /// Whether an alert of `rule_id` at `at_ms` and `severity` fulfils the expectation.
    pub fn fulfils(&self, rule_id: &str, at_ms: i64, severity: Severity) -> bool {
        (self.from_ms..=self.to_ms).contains(&at_ms)
            && GroundTruth::matches(&self.expect, rule_id)
            && self.min_severity.is_none_or(|m| severity >= m)
    }

    /// Whether an alert of `rule_id` at `at_ms` breaks a "must not alert" rule.
    pub fn violated_by(&self, rule_id: &str, at_ms: i64) -> bool {
        (self.from_ms..=self.to_ms).contains(&at_ms) && GroundTruth::matches(&self.forbid, rule_id)
    }
}

/// One scenario injected into one patient.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scenario {
    pub kind: ScenarioKind,
    /// When it starts, simulated ms since the Unix epoch.
    pub start_ms: i64,
    /// How long it lasts (the ramp and hold of a desaturation, a gap, a low-battery period).
    pub duration_ms: i64,
    /// The level it drives a value to (systolic, SpO2 target, glucose, battery), by kind.
    pub level: f64,
    /// The patient's device kind.
    #[serde(serialize_with = "ser_kind")]
    pub device: Kind,
}

fn ser_kind<S: serde::Serializer>(k: &Kind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.as_str())
}

/// A measurement a scenario adds outside the patient's schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Extra {
    pub at_ms: i64,
    pub meal: Option<MealContext>,
    /// The patient may repeat it if the value worries them (the spurious low does; an
    /// injected repeat does not repeat again).
    pub may_repeat: bool,
}

/// The adherence rule id for a device kind (see `gateway::alerts::plan`).
pub fn missed_rule(kind: Kind) -> String {
    format!("missed-{}", kind.as_str())
}

impl Scenario {
    /// A `kind` scenario starting at `start_ms` on a patient with a `device`, its duration
    /// and level drawn from `rng`.
    pub fn new(kind: ScenarioKind, start_ms: i64, device: Kind, rng: &mut impl Rng) -> Scenario {
        let (duration_ms, level) = match kind {
            ScenarioKind::HypertensiveCrisis => (10 * MINUTE_MS, rng.gen_range(184.0..215.0)),
            // Ramp (3-5 days) + hold (36 h); recovery (48 h) follows.
            ScenarioKind::ProgressiveDesaturation => (
                rng.gen_range(3..=5) * DAY_MS + 36 * HOUR_MS,
                rng.gen_range(83.0..84.5),
            ),
            ScenarioKind::SpuriousLowSpo2 => (MINUTE_MS, f64::from(rng.gen_range(78..=84))),
            ScenarioKind::CopdLowBaseline => (30 * DAY_MS, rng.gen_range(88.6..89.6)),
            ScenarioKind::Hypoglycaemia => (15 * MINUTE_MS, f64::from(rng.gen_range(36..=52))),
            ScenarioKind::ControlSolution => (MINUTE_MS, f64::from(rng.gen_range(35..=50))),
            ScenarioKind::MissedMeasurements => (rng.gen_range(48..=72) * HOUR_MS, 0.0),
            ScenarioKind::DeviceSilent => (rng.gen_range(30..=72) * HOUR_MS, 0.0),
            ScenarioKind::LowBattery => (
                rng.gen_range(24..=72) * HOUR_MS,
                f64::from(rng.gen_range(5..=14)),
            ),
        };
        Scenario {
            kind,
            start_ms,
            duration_ms,
            level,
            device,
        }
    }

    /// The end of what is injected (a desaturation also recovers for 48 h after it).
    pub fn end_ms(&self) -> i64 {
        self.start_ms + self.duration_ms
    }

    /// What the engine should make of it.
    pub fn truth(&self) -> GroundTruth {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<String>>();
        let (expect, min_severity, related, forbid, to_ms) = match self.kind {
            ScenarioKind::HypertensiveCrisis => (
                s(&["bp-high"]),
                Some(Severity::Critical),
                s(&["bp-trend", "pulse"]),
                vec![],
                self.start_ms + HOUR_MS,
            ),
            ScenarioKind::ProgressiveDesaturation => (
                s(&["spo2-low"]),
                Some(Severity::High),
                s(&["spo2-trend", "pulse", "quality-repeat"]),
                vec![],
                self.end_ms() + 2 * DAY_MS,
            ),
            ScenarioKind::SpuriousLowSpo2 => (
                vec![],
                None,
                vec![],
                s(&["spo2-low", "spo2-trend"]),
                self.start_ms + DAY_MS,
            ),
            ScenarioKind::CopdLowBaseline => (
                vec![],
                None,
                vec![],
                s(&["spo2-low", "spo2-trend"]),
                self.end_ms(),
            ),
            ScenarioKind::Hypoglycaemia => (
                s(&["glucose-low"]),
                Some(Severity::Critical),
                vec![],
                vec![],
                self.start_ms + HOUR_MS,
            ),
            ScenarioKind::ControlSolution => (
                vec![],
                None,
                vec![],
                s(&["glucose-low"]),
                self.start_ms + DAY_MS,
            ),
            ScenarioKind::MissedMeasurements => (
                vec![missed_rule(self.device)],
                Some(Severity::Low),
                vec![],
                vec![],
                self.end_ms() + HOUR_MS,
            ),
            ScenarioKind::DeviceSilent => (
                s(&["device-offline"]),
                Some(Severity::Low),
                vec![missed_rule(self.device), "late-review".to_owned()],
                vec![],
                self.end_ms() + HOUR_MS,
            ),
            ScenarioKind::LowBattery => (
                s(&["device-battery"]),
                Some(Severity::Low),
                vec![],
                vec![],
                self.end_ms(),
            ),
        };
        GroundTruth {
            expect,
            min_severity,
            related,
            forbid,
            from_ms: self.start_ms,
            to_ms,
        }
    }

    /// Whether the patient skips a scheduled measurement of `kind` at `at_ms`.
    pub fn skips(&self, kind: Kind, at_ms: i64) -> bool {
        self.kind == ScenarioKind::MissedMeasurements
            && kind == self.device
            && (self.start_ms..self.end_ms()).contains(&at_ms)
    }

    /// Measurements the scenario adds outside the schedule.
    pub fn extras(&self) -> Vec<Extra> {
        let at = |at_ms, meal, may_repeat| Extra {
            at_ms,
            meal,
            may_repeat,
        };
        match self.kind {
            ScenarioKind::HypertensiveCrisis => vec![
                at(self.start_ms, None, false),
                at(self.start_ms + 5 * MINUTE_MS, None, false),
            ],
            ScenarioKind::SpuriousLowSpo2 => vec![at(self.start_ms, None, true)],
            ScenarioKind::Hypoglycaemia => vec![
                at(self.start_ms, Some(MealContext::Casual), false),
                at(
                    self.start_ms + 15 * MINUTE_MS,
                    Some(MealContext::Casual),
                    false,
                ),
            ],
            ScenarioKind::ControlSolution => vec![at(self.start_ms, None, false)],
            _ => Vec::new(),
        }
    }

    /// How far a desaturation has pulled SpO2 below the baseline at `at_ms`, as a fraction of
    /// the full drop (0 outside it).
    fn desaturation(&self, at_ms: i64) -> f64 {
        let hold = 36 * HOUR_MS;
        let ramp = self.duration_ms - hold;
        let recovery = 2 * DAY_MS;
        let t = at_ms - self.start_ms;
        if t < 0 || t > self.duration_ms + recovery {
            0.0
        } else if t < ramp {
            t as f64 / ramp as f64
        } else if t <= self.duration_ms {
            1.0
        } else {
            1.0 - (t - self.duration_ms) as f64 / recovery as f64
        }
    }

    /// Changes what the device measured at `at_ms`.
    pub fn alter(&self, at_ms: i64, sample: &mut Sample, baseline: &Baseline, rng: &mut impl Rng) {
        match (self.kind, &mut sample.measurement) {
            (ScenarioKind::HypertensiveCrisis, Measurement::BloodPressure(bp))
                if (self.start_ms..self.end_ms()).contains(&at_ms) =>
            {
                let sys = (self.level + rng.gen_range(-4.0..6.0)).max(181.0).round();
                let dia = rng.gen_range(98.0..124.0_f64).round().min(sys - 40.0);
                bp.systolic = sys as f32;
                bp.diastolic = dia as f32;
                bp.mean = Some((dia + (sys - dia) / 3.0).round() as f32);
                bp.pulse = bp.pulse.map(|p| p + 8.0);
                sample.sensor &= !sensor::BP_BODY_MOVEMENT;
            }
            (ScenarioKind::ProgressiveDesaturation, Measurement::Spo2(ox)) => {
                let frac = self.desaturation(at_ms);
                if frac > 0.0 {
                    let drop = (baseline.spo2 - self.level).max(0.0) * frac;
                    ox.percent = (f64::from(ox.percent) - drop).round().clamp(70.0, 100.0) as f32;
                    ox.pulse = ox
                        .pulse
                        .map(|p| (f64::from(p) + 10.0 * frac).round() as f32);
                }
            }
            (ScenarioKind::SpuriousLowSpo2, Measurement::Spo2(ox)) if at_ms == self.start_ms => {
                ox.percent = self.level as f32;
                sample.sensor = 0;
            }
            (ScenarioKind::Hypoglycaemia, Measurement::Glucose(g)) => {
                let mg_dl = if at_ms == self.start_ms {
                    Some(self.level)
                } else if at_ms == self.start_ms + 15 * MINUTE_MS {
                    // Rule of 15: 15 g of fast sugar, retest after 15 min.
                    Some(f64::from(rng.gen_range(74..=105)))
                } else {
                    None
                };
                if let Some(v) = mg_dl {
                    g.value = match g.unit {
                        protocol::GlucoseUnit::MgDl => v as f32,
                        protocol::GlucoseUnit::MmolL => {
                            ((v / f64::from(protocol::reading::MG_DL_PER_MMOL_L) * 10.0).round()
                                / 10.0) as f32
                        }
                    };
                }
            }
            (ScenarioKind::ControlSolution, Measurement::Glucose(g)) if at_ms == self.start_ms => {
                g.sample = SampleType::ControlSolution;
                g.meal = None;
                g.unit = protocol::GlucoseUnit::MgDl;
                g.value = self.level as f32;
            }
            _ => {}
        }
    }

    /// When a reading measured at `measured_ms` reaches the gateway, if the scenario holds
    /// it back (a silent device delivers its backlog when it connects again).
    pub fn holds_until(&self, measured_ms: i64) -> Option<i64> {
        (self.kind == ScenarioKind::DeviceSilent
            && (self.start_ms..self.end_ms()).contains(&measured_ms))
        .then_some(self.end_ms())
    }

    /// Whether the device is silent (sends nothing) at `at_ms`.
    pub fn silent(&self, at_ms: i64) -> bool {
        self.kind == ScenarioKind::DeviceSilent && (self.start_ms..self.end_ms()).contains(&at_ms)
    }

    /// The battery the device reports at `at_ms`, if the scenario sets it.
    pub fn battery(&self, at_ms: i64) -> Option<u8> {
        (self.kind == ScenarioKind::LowBattery && (self.start_ms..self.end_ms()).contains(&at_ms))
            .then_some(self.level as u8)
    }

    /// The baseline the scenario gives the patient, if any.
    pub fn baseline(&self, mut b: Baseline) -> Option<Baseline> {
        (self.kind == ScenarioKind::CopdLowBaseline).then(|| {
            b.spo2 = self.level;
            b
        })
    }
}

/// A reading as the gateway receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedReading {
    /// Device time of the measurement, ms.
    pub measured_ms: i64,
    /// When the gateway receives it, ms.
    pub delivered_ms: i64,
    pub kind: Kind,
    pub sample: Sample,
    /// A scenario added or changed it.
    pub injected: bool,
    /// The patient's repeat of a worrying value.
    pub repeat: bool,
}

/// A device status as the gateway receives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimedStatus {
    pub at_ms: i64,
    pub battery: u8,
}

/// The patient's habits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Habits {
    /// Chance that a scheduled measurement is skipped (forgotten, away from home).
    pub skip_rate: f64,
    /// Chance that the patient repeats a worrying value (SpO2 below target, BP ≥ 180/110)
    /// after 5-10 min of rest, as home-monitoring instructions ask.
    pub repeat_rate: f64,
}

impl Default for Habits {
    fn default() -> Self {
        Habits {
            skip_rate: 0.03,
            repeat_rate: 0.85,
        }
    }
}

/// One simulated patient with one home device.
#[derive(Debug, Clone)]
pub struct SimPatient {
    pub condition: Condition,
    pub device: Kind,
    pub physiology: Patient,
    pub schedule: Schedule,
    pub scenarios: Vec<Scenario>,
    pub habits: Habits,
    /// Battery at the start, percent; it drains slowly.
    pub battery: f64,
}

/// The daily measurement moments of a patient's device: BP twice a day; SpO2 once or twice;
/// glucose once, twice or four times (`per_day`).
pub fn slots(kind: Kind, per_day: u32) -> Vec<Slot> {
    match (kind, per_day) {
        (Kind::BloodPressure, _) => vec![slot(7, 30, None), slot(20, 0, None)],
        (Kind::Spo2, 1) => vec![slot(8, 30, None)],
        (Kind::Spo2, _) => vec![slot(8, 30, None), slot(20, 30, None)],
        (Kind::Glucose, 1) => vec![slot(7, 0, Some(MealContext::Fasting))],
        (Kind::Glucose, 2) => vec![
            slot(7, 0, Some(MealContext::Fasting)),
            slot(19, 30, Some(MealContext::Preprandial)),
        ],
        (Kind::Glucose, _) => vec![
            slot(7, 0, Some(MealContext::Fasting)),
            slot(14, 30, Some(MealContext::Postprandial)),
            slot(19, 30, Some(MealContext::Preprandial)),
            slot(22, 30, Some(MealContext::Bedtime)),
        ],
    }
}

/// The device a condition gets in the cohort.
pub fn device_for(condition: Condition) -> Kind {
    match condition {
        Condition::Copd => Kind::Spo2,
        Condition::Diabetes => Kind::Glucose,
        Condition::Hypertension | Condition::HeartFailure => Kind::BloodPressure,
    }
}

impl SimPatient {
    /// A patient with one `condition` and its device, measuring `per_day` times a day.
    pub fn new(seed: u64, condition: Condition, per_day: u32, rng: &mut impl Rng) -> SimPatient {
        let device = device_for(condition);
        SimPatient {
            condition,
            device,
            physiology: Patient::new(seed, &[condition]),
            schedule: Schedule::with_slots(slots(device, per_day), seed),
            scenarios: Vec::new(),
            habits: Habits::default(),
            battery: rng.gen_range(45.0..100.0),
        }
    }

    /// Injects a scenario (and the baseline it implies).
    pub fn inject(&mut self, scenario: Scenario) {
        if let Some(b) = scenario.baseline(self.physiology.baseline()) {
            self.physiology.set_baseline(b);
        }
        self.scenarios.push(scenario);
    }

    fn worrying(&self, sample: &Sample) -> bool {
        match sample.measurement {
            Measurement::Spo2(ox) => {
                let target = if self.condition == Condition::Copd {
                    88.0
                } else {
                    94.0
                };
                f64::from(ox.percent) < target
            }
            Measurement::BloodPressure(bp) => bp.systolic >= 180.0 || bp.diastolic >= 110.0,
            Measurement::Glucose(_) => false,
        }
    }

    fn measure_at(&mut self, at_ms: i64, meal: Option<MealContext>, rng: &mut StdRng) -> Sample {
        let mut sample = self.physiology.measure(self.device, at_ms, meal);
        let baseline = self.physiology.baseline();
        for sc in &self.scenarios {
            sc.alter(at_ms, &mut sample, &baseline, rng);
        }
        sample
    }

    /// The readings (in measurement order) and statuses of `[from_ms, to_ms)`.
    pub fn timeline(
        &mut self,
        from_ms: i64,
        to_ms: i64,
        rng: &mut StdRng,
    ) -> (Vec<TimedReading>, Vec<TimedStatus>) {
        // (time, meal, may repeat, injected)
        let mut moments: Vec<(i64, Option<MealContext>, bool, bool)> = self
            .schedule
            .between(from_ms, to_ms)
            .filter(|(t, _)| !self.scenarios.iter().any(|s| s.skips(self.device, *t)))
            .filter(|_| !rng.gen_bool(self.habits.skip_rate.clamp(0.0, 1.0)))
            .map(|(t, s)| (t, s.meal, true, false))
            .collect();
        for sc in &self.scenarios {
            for e in sc.extras() {
                if (from_ms..to_ms).contains(&e.at_ms) {
                    moments.push((e.at_ms, e.meal, e.may_repeat, true));
                }
            }
        }
        moments.sort_by_key(|m| m.0);
        let mut readings = Vec::new();
        for (at, meal, may_repeat, injected) in moments {
            let sample = self.measure_at(at, meal, rng);
            let worrying = self.worrying(&sample);
            readings.push(self.timed(at, sample, injected, false, rng));
            if may_repeat && worrying && rng.gen_bool(self.habits.repeat_rate.clamp(0.0, 1.0)) {
                let again = at + rng.gen_range(5..=10) * MINUTE_MS;
                let sample = self.measure_at(again, meal, rng);
                readings.push(self.timed(again, sample, injected, true, rng));
            }
        }
        // Statuses: with every connection (a delivery) and a daily check-in at ~03:00 local.
        let mut statuses = Vec::new();
        let mut deliveries: Vec<i64> = readings.iter().map(|r| r.delivered_ms).collect();
        let first_day = from_ms.div_euclid(DAY_MS);
        for day in first_day..=to_ms.div_euclid(DAY_MS) {
            let at = day * DAY_MS + 2 * HOUR_MS + rng.gen_range(0..60) * MINUTE_MS;
            if (from_ms..to_ms).contains(&at) && !self.scenarios.iter().any(|s| s.silent(at)) {
                deliveries.push(at);
            }
        }
        deliveries.sort_unstable();
        deliveries.dedup();
        for at in deliveries {
            let drained = self.battery - 0.3 * (at - from_ms) as f64 / DAY_MS as f64;
            let battery = self
                .scenarios
                .iter()
                .find_map(|s| s.battery(at))
                .unwrap_or(drained.clamp(20.0, 100.0).round() as u8);
            statuses.push(TimedStatus { at_ms: at, battery });
        }
        (readings, statuses)
    }

    fn timed(
        &self,
        at: i64,
        sample: Sample,
        injected: bool,
        repeat: bool,
        rng: &mut StdRng,
    ) -> TimedReading {
        let sync = rng.gen_range(5_000..90_000);
        let delivered = self
            .scenarios
            .iter()
            .find_map(|s| s.holds_until(at))
            .map_or(at + sync, |until| until + sync);
        let injected = injected
            || self.scenarios.iter().any(|s| {
                s.kind == ScenarioKind::ProgressiveDesaturation && s.desaturation(at) > 0.0
            });
        TimedReading {
            measured_ms: at,
            delivered_ms: delivered,
            kind: self.device,
            sample,
            injected,
            repeat,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const T0: i64 = 1_763_942_400_000; // a midnight UTC

    fn spo2_values(p: &mut SimPatient, days: i64) -> Vec<(i64, f32)> {
        let mut rng = StdRng::seed_from_u64(9);
        p.timeline(T0, T0 + days * DAY_MS, &mut rng)
            .0
            .into_iter()
            .filter_map(|r| match r.sample.measurement {
                Measurement::Spo2(ox) => Some((r.measured_ms, ox.percent)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn names_round_trip_and_truths_are_consistent() {
        let mut rng = StdRng::seed_from_u64(1);
        for kind in ScenarioKind::ALL {
            assert_eq!(ScenarioKind::parse(kind.as_str()), Some(kind));
            let device = kind.device().unwrap_or(Kind::BloodPressure);
            let truth = Scenario::new(kind, T0, device, &mut rng).truth();
            assert!(truth.to_ms > truth.from_ms, "{kind}");
            assert_eq!(
                truth.expect.is_empty(),
                truth.min_severity.is_none(),
                "{kind}"
            );
            assert_ne!(truth.expect.is_empty(), truth.forbid.is_empty(), "{kind}");
        }
        assert!(GroundTruth::matches(
            &["device-offline".into()],
            "device-offline:x-bp-1"
        ));
        assert!(!GroundTruth::matches(&["bp-high".into()], "bp-highest"));
    }

    #[test]
    fn desaturation_reaches_85_and_recovers() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut p = SimPatient::new(5, Condition::Copd, 2, &mut rng);
        let sc = Scenario::new(
            ScenarioKind::ProgressiveDesaturation,
            T0 + 5 * DAY_MS,
            Kind::Spo2,
            &mut rng,
        );
        let hold_end = sc.end_ms();
        p.inject(sc);
        let values = spo2_values(&mut p, 20);
        let before: Vec<f32> = values
            .iter()
            .filter(|(t, _)| *t < T0 + 5 * DAY_MS)
            .map(|v| v.1)
            .collect();
        assert!(before.iter().all(|v| *v >= 85.0), "{before:?}");
        let hold: Vec<f32> = values
            .iter()
            .filter(|(t, _)| (hold_end - 30 * HOUR_MS..hold_end).contains(t))
            .map(|v| v.1)
            .collect();
        assert!(hold.iter().any(|v| *v <= 85.0), "{hold:?}");
        let after: Vec<f32> = values
            .iter()
            .filter(|(t, _)| *t > hold_end + 3 * DAY_MS)
            .map(|v| v.1)
            .collect();
        assert!(after.iter().all(|v| *v >= 85.0), "{after:?}");
    }

    #[test]
    fn crisis_is_confirmed_and_silence_delays_delivery() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut p = SimPatient::new(7, Condition::Hypertension, 2, &mut rng);
        let start = T0 + DAY_MS + 16 * HOUR_MS;
        p.inject(Scenario::new(
            ScenarioKind::HypertensiveCrisis,
            start,
            Kind::BloodPressure,
            &mut rng,
        ));
        p.inject(Scenario::new(
            ScenarioKind::DeviceSilent,
            T0 + 3 * DAY_MS,
            Kind::BloodPressure,
            &mut rng,
        ));
        let mut r = StdRng::seed_from_u64(4);
        let (readings, statuses) = p.timeline(T0, T0 + 6 * DAY_MS, &mut r);
        let severe: Vec<i64> = readings
            .iter()
            .filter_map(|r| match r.sample.measurement {
                Measurement::BloodPressure(bp) if bp.systolic >= 180.0 => Some(r.measured_ms),
                _ => None,
            })
            .collect();
        assert!(severe.contains(&start) && severe.contains(&(start + 5 * MINUTE_MS)));
        let late = readings
            .iter()
            .filter(|r| r.delivered_ms - r.measured_ms > 6 * HOUR_MS)
            .count();
        assert!(late >= 2, "a silent device delivers its backlog late");
        let silence = T0 + 3 * DAY_MS + HOUR_MS..T0 + 3 * DAY_MS + 30 * HOUR_MS;
        assert!(!statuses.iter().any(|s| silence.contains(&s.at_ms)));
    }
}
