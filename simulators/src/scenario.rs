//! Clinical scenarios injected into a simulated patient's measurements, each with its ground
//! truth: which alerts a patient's care plan should raise (rule, minimum severity, time
//! window), or which it must not raise.
//!
//! A [`SimPatient`] is one patient of a cohort: a [`Patient`] (physiology, from all of the
//! patient's conditions), one or more home devices each measuring on its daily [`Schedule`],
//! the patient's habits (an occasional skipped measurement) and the [`Scenario`]s injected
//! into it. [`SimPatient::timeline`] turns that into the readings and device statuses the
//! gateway would receive, with measurement and delivery times, so the alert benchmark can feed
//! them to the real engine in compressed time (`alert_quality`). A repeat the engine asks a
//! device for is measured with [`SimPatient::measure`] at the moment it is taken: a scenario
//! still in progress shows in it (a real desaturation repeats low), an artefact does not.
//!
//! The expected severities follow clinical-defaults §5.3: "urgent" → at least high, "warning"
//! (same-day review) → at least medium, "info/trend" → at least low; the scenarios the old
//! benchmark had keep their stricter expectations (crisis and level-2 hypoglycaemia critical).
//!
//! | scenario | injected | ground truth |
//! | --- | --- | --- |
//! | hypertensive crisis | one reading ≥ 180/110 starting 30-120 min of severe BP (a repeat is severe too) | `bp-high` ≥ critical within 1 h |
//! | progressive desaturation | SpO2 drifting down over 3-5 days to 83-84 %, held 36 h, recovering over 2 days | `spo2-low` ≥ high before recovery ends |
//! | severe low SpO2 | one reading at 80-85 % starting 2-8 h of it (any condition) | `spo2-low` ≥ high within 1 h |
//! | hypotension | one reading with SBP 76-90 starting 2-8 h of it | `bp-low` ≥ high within 1 h |
//! | tachycardia / bradycardia | one reading with pulse 132-155 / 32-40 starting 1-4 / 2-8 h of it | `pulse` ≥ high within 1 h |
//! | hypoglycaemia | one glucose < 54 mg/dL; the patient treats it, retest after 15 min recovered | `glucose-low` ≥ critical within 1 h |
//! | mild hypoglycaemia | one glucose 56-68 mg/dL; retest after 15 min recovered | `glucose-low` ≥ medium within 1 h |
//! | hyperglycaemia | one glucose 255-345 mg/dL starting 2-6 h of it | `glucose-high` ≥ medium within 1 h |
//! | severe hyperglycaemia | one glucose 360-480 mg/dL starting 2-6 h of it | `glucose-high` ≥ high within 1 h |
//! | off-condition reading | a severe reading from a device outside the patient's conditions (glucose 38-50, BP ≥ 185/110, SpO2 84-89 % on scale 1) | the net's rule (`glucose-low`, `bp-high`, `spo2-low`) ≥ high within 1 h |
//! | sustained high home BP | home BP shifted up for 10-14 days so the 7-day mean is ≥ 135/85 | `bp-home-average` ≥ low within the shift |
//! | spurious low SpO2 | one reading at 78-84 % (unflagged artefact); a repeat is normal | no `spo2-low` / `spo2-trend` left standing within 24 h |
//! | spurious high BP | one reading at 185-205 / 100-115 (after exertion); a repeat is normal | no `bp-high` left standing within 24 h |
//! | COPD low baseline | a COPD patient whose baseline is 88-90 % | no `spo2-low` / `spo2-trend` all run |
//! | control-solution check | a meter check with low-level control solution (35-50 mg/dL) | no `glucose-low` within 24 h |
//! | missed measurements | the patient stops measuring (every device) for 48-72 h | a `missed-<kind>` within the gap |
//! | device silent | one device stops connecting for 30-72 h, then delivers its backlog | `device-offline` within the silence (plus, explained: `missed-<kind>`, `late-review`) |
//! | low battery | one device reports 5-14 % battery for 1-3 days | `device-battery` within that time |

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
    SevereLowSpo2,
    Hypotension,
    Tachycardia,
    Bradycardia,
    Hypoglycaemia,
    MildHypoglycaemia,
    Hyperglycaemia,
    SevereHyperglycaemia,
    OffConditionReading,
    SustainedHighBp,
    SpuriousLowSpo2,
    SpuriousHighBp,
    CopdLowBaseline,
    ControlSolution,
    MissedMeasurements,
    DeviceSilent,
    LowBattery,
}

impl ScenarioKind {
    /// Every scenario.
    pub const ALL: [ScenarioKind; 19] = [
        ScenarioKind::HypertensiveCrisis,
        ScenarioKind::ProgressiveDesaturation,
        ScenarioKind::SevereLowSpo2,
        ScenarioKind::Hypotension,
        ScenarioKind::Tachycardia,
        ScenarioKind::Bradycardia,
        ScenarioKind::Hypoglycaemia,
        ScenarioKind::MildHypoglycaemia,
        ScenarioKind::Hyperglycaemia,
        ScenarioKind::SevereHyperglycaemia,
        ScenarioKind::OffConditionReading,
        ScenarioKind::SustainedHighBp,
        ScenarioKind::SpuriousLowSpo2,
        ScenarioKind::SpuriousHighBp,
        ScenarioKind::CopdLowBaseline,
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
            ScenarioKind::SevereLowSpo2 => "severe-low-spo2",
            ScenarioKind::Hypotension => "hypotension",
            ScenarioKind::Tachycardia => "tachycardia",
            ScenarioKind::Bradycardia => "bradycardia",
            ScenarioKind::Hypoglycaemia => "hypoglycaemia",
            ScenarioKind::MildHypoglycaemia => "mild-hypoglycaemia",
            ScenarioKind::Hyperglycaemia => "hyperglycaemia",
            ScenarioKind::SevereHyperglycaemia => "severe-hyperglycaemia",
            ScenarioKind::OffConditionReading => "off-condition-reading",
            ScenarioKind::SustainedHighBp => "sustained-high-bp",
            ScenarioKind::SpuriousLowSpo2 => "spurious-low-spo2",
            ScenarioKind::SpuriousHighBp => "spurious-high-bp",
            ScenarioKind::CopdLowBaseline => "copd-low-baseline",
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
                "one reading >= 180/110 mmHg; the pressure stays severe for 30-120 min"
            }
            ScenarioKind::ProgressiveDesaturation => {
                "SpO2 drifting down over 3-5 days to 83-84 %, held 36 h, recovering over 2 days"
            }
            ScenarioKind::SevereLowSpo2 => {
                "one SpO2 reading at 80-85 %; the patient stays that low for 2-8 h"
            }
            ScenarioKind::Hypotension => "one reading with SBP 76-90 mmHg; it lasts 2-8 h",
            ScenarioKind::Tachycardia => "one reading with pulse 132-155 /min; it lasts 1-4 h",
            ScenarioKind::Bradycardia => "one reading with pulse 32-40 /min; it lasts 2-8 h",
            ScenarioKind::Hypoglycaemia => {
                "one glucose reading < 54 mg/dL, retest after 15 min recovered (treated)"
            }
            ScenarioKind::MildHypoglycaemia => {
                "one glucose reading 56-68 mg/dL, retest after 15 min recovered (treated)"
            }
            ScenarioKind::Hyperglycaemia => "one glucose reading 255-345 mg/dL; it lasts 2-6 h",
            ScenarioKind::SevereHyperglycaemia => {
                "one glucose reading 360-480 mg/dL; it lasts 2-6 h"
            }
            ScenarioKind::OffConditionReading => {
                "a severe reading from a device outside the patient's conditions (glucose 38-50, BP >= 185/110, SpO2 84-89 %)"
            }
            ScenarioKind::SustainedHighBp => {
                "home BP shifted up for 10-14 days so that its 7-day mean is >= 135/85 mmHg"
            }
            ScenarioKind::SpuriousLowSpo2 => {
                "one SpO2 reading at 78-84 % (unflagged artefact), then normal"
            }
            ScenarioKind::SpuriousHighBp => {
                "one BP reading at 185-205/100-115 mmHg (measured after exertion), then normal"
            }
            ScenarioKind::CopdLowBaseline => {
                "a COPD patient whose own baseline is 88-90 % (scale 2 target)"
            }
            ScenarioKind::ControlSolution => {
                "a meter check with low-level control solution (35-50 mg/dL), sample type control"
            }
            ScenarioKind::MissedMeasurements => {
                "the patient stops measuring (every device) for 48-72 h"
            }
            ScenarioKind::DeviceSilent => {
                "one device stops connecting for 30-72 h, then delivers its backlog (late data)"
            }
            ScenarioKind::LowBattery => "one device reports 5-14 % battery for 1-3 days",
        }
    }

    /// The device the scenario needs (`None`: any).
    pub const fn device(self) -> Option<Kind> {
        match self {
            ScenarioKind::HypertensiveCrisis
            | ScenarioKind::Hypotension
            | ScenarioKind::SustainedHighBp
            | ScenarioKind::SpuriousHighBp => Some(Kind::BloodPressure),
            ScenarioKind::ProgressiveDesaturation
            | ScenarioKind::SevereLowSpo2
            | ScenarioKind::SpuriousLowSpo2
            | ScenarioKind::CopdLowBaseline => Some(Kind::Spo2),
            ScenarioKind::Hypoglycaemia
            | ScenarioKind::MildHypoglycaemia
            | ScenarioKind::Hyperglycaemia
            | ScenarioKind::SevereHyperglycaemia
            | ScenarioKind::ControlSolution => Some(Kind::Glucose),
            ScenarioKind::Tachycardia
            | ScenarioKind::Bradycardia
            | ScenarioKind::OffConditionReading
            | ScenarioKind::MissedMeasurements
            | ScenarioKind::DeviceSilent
            | ScenarioKind::LowBattery => None,
        }
    }

    /// A clinical event the nurse must hear about urgently (at least high; target 100 %).
    pub const fn critical(self) -> bool {
        matches!(
            self,
            ScenarioKind::HypertensiveCrisis
                | ScenarioKind::ProgressiveDesaturation
                | ScenarioKind::SevereLowSpo2
                | ScenarioKind::Hypotension
                | ScenarioKind::Tachycardia
                | ScenarioKind::Bradycardia
                | ScenarioKind::Hypoglycaemia
                | ScenarioKind::SevereHyperglycaemia
                | ScenarioKind::OffConditionReading
        )
    }

    /// A clinical event (as opposed to adherence, a device, or a no-alert scenario).
    pub const fn clinical(self) -> bool {
        self.critical()
            || matches!(
                self,
                ScenarioKind::MildHypoglycaemia
                    | ScenarioKind::Hyperglycaemia
                    | ScenarioKind::SustainedHighBp
            )
    }

    /// One reading (and the engine's repeat) is all the engine sees of it.
    pub const fn single_reading(self) -> bool {
        self.critical() && !matches!(self, ScenarioKind::ProgressiveDesaturation)
            || matches!(
                self,
                ScenarioKind::MildHypoglycaemia
                    | ScenarioKind::Hyperglycaemia
                    | ScenarioKind::SpuriousLowSpo2
                    | ScenarioKind::SpuriousHighBp
                    | ScenarioKind::ControlSolution
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
    /// The level it drives a value to (systolic, SpO2, pulse, glucose, battery, or the
    /// systolic shift of a sustained rise), by kind.
    pub level: f64,
    /// The device kind it concerns.
    #[serde(serialize_with = "ser_kind")]
    pub device: Kind,
}

fn ser_kind<S: serde::Serializer>(k: &Kind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.as_str())
}

/// A measurement a scenario adds outside the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Extra {
    pub at_ms: i64,
    pub meal: Option<MealContext>,
    /// The patient may repeat it if the value worries them (only with a spontaneous repeat
    /// habit; an injected retest does not repeat again).
    pub may_repeat: bool,
}

/// The adherence rule id for a device kind (see `alerting::plan`).
pub fn missed_rule(kind: Kind) -> String {
    format!("missed-{}", kind.as_str())
}

fn set_mg_dl(g: &mut protocol::Glucose, v: f64) {
    g.value = match g.unit {
        protocol::GlucoseUnit::MgDl => v.round() as f32,
        protocol::GlucoseUnit::MmolL => {
            ((v / f64::from(protocol::reading::MG_DL_PER_MMOL_L) * 10.0).round() / 10.0) as f32
        }
    };
}

fn set_bp(bp: &mut protocol::BloodPressure, sys: f64, dia: f64) {
    let sys = sys.round();
    let dia = dia.round().min(sys - 15.0);
    bp.systolic = sys as f32;
    bp.diastolic = dia as f32;
    bp.mean = Some((dia + (sys - dia) / 3.0).round() as f32);
}

impl Scenario {
    /// A `kind` scenario starting at `start_ms` on the patient's `device`, its duration and
    /// level drawn from `rng`.
    pub fn new(kind: ScenarioKind, start_ms: i64, device: Kind, rng: &mut impl Rng) -> Scenario {
        let (duration_ms, level) = match kind {
            ScenarioKind::HypertensiveCrisis => (
                rng.gen_range(30..=120) * MINUTE_MS,
                rng.gen_range(184.0..215.0),
            ),
            // Ramp (3-5 days) + hold (36 h); recovery (48 h) follows.
            ScenarioKind::ProgressiveDesaturation => (
                rng.gen_range(3..=5) * DAY_MS + 36 * HOUR_MS,
                rng.gen_range(83.0..84.5),
            ),
            ScenarioKind::SevereLowSpo2 => (
                rng.gen_range(2..=8) * HOUR_MS,
                f64::from(rng.gen_range(80..=85)),
            ),
            ScenarioKind::Hypotension => (
                rng.gen_range(2..=8) * HOUR_MS,
                f64::from(rng.gen_range(76..=90)),
            ),
            ScenarioKind::Tachycardia => (
                rng.gen_range(1..=4) * HOUR_MS,
                f64::from(rng.gen_range(132..=155)),
            ),
            ScenarioKind::Bradycardia => (
                rng.gen_range(2..=8) * HOUR_MS,
                f64::from(rng.gen_range(32..=40)),
            ),
            ScenarioKind::Hypoglycaemia => (15 * MINUTE_MS, f64::from(rng.gen_range(36..=52))),
            ScenarioKind::MildHypoglycaemia => (15 * MINUTE_MS, f64::from(rng.gen_range(56..=68))),
            ScenarioKind::Hyperglycaemia => (
                rng.gen_range(2..=6) * HOUR_MS,
                f64::from(rng.gen_range(255..=345)),
            ),
            ScenarioKind::SevereHyperglycaemia => (
                rng.gen_range(2..=6) * HOUR_MS,
                f64::from(rng.gen_range(360..=480)),
            ),
            ScenarioKind::OffConditionReading => match device {
                Kind::Glucose => (
                    rng.gen_range(30..=60) * MINUTE_MS,
                    f64::from(rng.gen_range(38..=50)),
                ),
                Kind::BloodPressure => (
                    rng.gen_range(60..=180) * MINUTE_MS,
                    f64::from(rng.gen_range(185..=210)),
                ),
                Kind::Spo2 => (
                    rng.gen_range(2..=6) * HOUR_MS,
                    f64::from(rng.gen_range(84..=89)),
                ),
            },
            // The systolic shift; the benchmark sets it from the patient's own mean.
            ScenarioKind::SustainedHighBp => (rng.gen_range(10..=14) * DAY_MS, 15.0),
            ScenarioKind::SpuriousLowSpo2 => (MINUTE_MS, f64::from(rng.gen_range(78..=84))),
            ScenarioKind::SpuriousHighBp => (MINUTE_MS, f64::from(rng.gen_range(185..=205))),
            ScenarioKind::CopdLowBaseline => (30 * DAY_MS, rng.gen_range(88.6..89.6)),
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

    /// Whether `at_ms` falls while the scenario acts.
    fn during(&self, at_ms: i64) -> bool {
        (self.start_ms..self.end_ms()).contains(&at_ms)
    }

    /// The last moment the scenario shapes what a device measures (a desaturation recovers
    /// for 48 h after its hold).
    pub fn effect_end_ms(&self) -> i64 {
        match self.kind {
            ScenarioKind::ProgressiveDesaturation => self.end_ms() + 2 * DAY_MS,
            _ => self.end_ms(),
        }
    }

    /// What the engine should make of it.
    pub fn truth(&self) -> GroundTruth {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<String>>();
        let hour = self.start_ms + HOUR_MS;
        let all_missed = || {
            [Kind::BloodPressure, Kind::Spo2, Kind::Glucose]
                .into_iter()
                .map(missed_rule)
                .collect::<Vec<_>>()
        };
        let (expect, min_severity, related, forbid, to_ms) = match self.kind {
            ScenarioKind::HypertensiveCrisis => (
                s(&["bp-high"]),
                Some(Severity::Critical),
                s(&["bp-trend", "pulse", "bp-home-average"]),
                vec![],
                hour,
            ),
            ScenarioKind::ProgressiveDesaturation => (
                s(&["spo2-low"]),
                Some(Severity::High),
                s(&["spo2-trend", "pulse", "quality-repeat"]),
                vec![],
                self.end_ms() + 2 * DAY_MS,
            ),
            ScenarioKind::SevereLowSpo2 => (
                s(&["spo2-low"]),
                Some(Severity::High),
                s(&["spo2-trend", "pulse"]),
                vec![],
                hour,
            ),
            ScenarioKind::Hypotension => (
                s(&["bp-low"]),
                Some(Severity::High),
                s(&["pulse"]),
                vec![],
                hour,
            ),
            ScenarioKind::Tachycardia | ScenarioKind::Bradycardia => {
                (s(&["pulse"]), Some(Severity::High), vec![], vec![], hour)
            }
            ScenarioKind::Hypoglycaemia => (
                s(&["glucose-low"]),
                Some(Severity::Critical),
                vec![],
                vec![],
                hour,
            ),
            ScenarioKind::MildHypoglycaemia => (
                s(&["glucose-low"]),
                Some(Severity::Medium),
                vec![],
                vec![],
                hour,
            ),
            ScenarioKind::Hyperglycaemia => (
                s(&["glucose-high"]),
                Some(Severity::Medium),
                vec![],
                vec![],
                hour,
            ),
            ScenarioKind::SevereHyperglycaemia => (
                s(&["glucose-high"]),
                Some(Severity::High),
                vec![],
                vec![],
                hour,
            ),
            ScenarioKind::OffConditionReading => {
                let rule = match self.device {
                    Kind::Glucose => "glucose-low",
                    Kind::BloodPressure => "bp-high",
                    Kind::Spo2 => "spo2-low",
                };
                (
                    s(&[rule]),
                    Some(Severity::High),
                    s(&["pulse"]),
                    vec![],
                    hour,
                )
            }
            ScenarioKind::SustainedHighBp => (
                s(&["bp-home-average"]),
                Some(Severity::Low),
                s(&["bp-high", "bp-trend"]),
                vec![],
                self.end_ms() + DAY_MS,
            ),
            ScenarioKind::SpuriousLowSpo2 => (
                vec![],
                None,
                vec![],
                s(&["spo2-low", "spo2-trend"]),
                self.start_ms + DAY_MS,
            ),
            ScenarioKind::SpuriousHighBp => (
                vec![],
                None,
                vec![],
                s(&["bp-high"]),
                self.start_ms + DAY_MS,
            ),
            ScenarioKind::CopdLowBaseline => (
                vec![],
                None,
                vec![],
                s(&["spo2-low", "spo2-trend"]),
                self.end_ms(),
            ),
            ScenarioKind::ControlSolution => (
                vec![],
                None,
                vec![],
                s(&["glucose-low"]),
                self.start_ms + DAY_MS,
            ),
            ScenarioKind::MissedMeasurements => (
                all_missed(),
                Some(Severity::Low),
                vec![],
                vec![],
                self.end_ms() + HOUR_MS,
            ),
            ScenarioKind::DeviceSilent => {
                let mut related = all_missed();
                related.push("late-review".to_owned());
                (
                    s(&["device-offline"]),
                    Some(Severity::Low),
                    related,
                    vec![],
                    self.end_ms() + HOUR_MS,
                )
            }
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

    /// Whether the patient skips a scheduled measurement at `at_ms` (of any kind: a patient
    /// away from home measures nothing).
    pub fn skips(&self, _kind: Kind, at_ms: i64) -> bool {
        self.kind == ScenarioKind::MissedMeasurements && self.during(at_ms)
    }

    /// Measurements the scenario adds outside the schedule (on its device).
    pub fn extras(&self) -> Vec<Extra> {
        let at = |at_ms, meal, may_repeat| Extra {
            at_ms,
            meal,
            may_repeat,
        };
        match self.kind {
            ScenarioKind::HypertensiveCrisis
            | ScenarioKind::SevereLowSpo2
            | ScenarioKind::Hypotension
            | ScenarioKind::Tachycardia
            | ScenarioKind::Bradycardia
            | ScenarioKind::SpuriousLowSpo2
            | ScenarioKind::SpuriousHighBp => vec![at(self.start_ms, None, true)],
            ScenarioKind::OffConditionReading => {
                let meal = (self.device == Kind::Glucose).then_some(MealContext::Casual);
                vec![at(self.start_ms, meal, true)]
            }
            ScenarioKind::Hyperglycaemia | ScenarioKind::SevereHyperglycaemia => {
                vec![at(self.start_ms, Some(MealContext::Casual), true)]
            }
            // Rule of 15: treat, retest after 15 min (the patient's own instruction).
            ScenarioKind::Hypoglycaemia | ScenarioKind::MildHypoglycaemia => vec![
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

    /// Changes what a device measured at `at_ms`.
    pub fn alter(&self, at_ms: i64, sample: &mut Sample, baseline: &Baseline, rng: &mut impl Rng) {
        let during = self.during(at_ms);
        let jitter = |rng: &mut dyn rand::RngCore, d: i32| f64::from(rng.gen_range(-d..=d));
        match (self.kind, &mut sample.measurement) {
            (ScenarioKind::HypertensiveCrisis, Measurement::BloodPressure(bp)) if during => {
                let sys = (self.level + rng.gen_range(-4.0..6.0)).max(181.0);
                let dia = rng.gen_range(98.0..124.0_f64).min(sys - 40.0);
                set_bp(bp, sys, dia);
                bp.pulse = bp.pulse.map(|p| p + 8.0);
                sample.sensor &= !sensor::BP_BODY_MOVEMENT;
            }
            (ScenarioKind::OffConditionReading, Measurement::BloodPressure(bp)) if during => {
                let sys = (self.level + jitter(rng, 4)).max(181.0);
                let dia = rng.gen_range(100.0..118.0_f64).min(sys - 40.0);
                set_bp(bp, sys, dia);
                sample.sensor &= !sensor::BP_BODY_MOVEMENT;
            }
            (ScenarioKind::SpuriousHighBp, Measurement::BloodPressure(bp))
                if at_ms == self.start_ms =>
            {
                let dia = rng.gen_range(100.0..=115.0_f64);
                set_bp(bp, self.level, dia);
                bp.pulse = bp.pulse.map(|p| p + 15.0);
                sample.sensor = 0;
            }
            (ScenarioKind::Hypotension, Measurement::BloodPressure(bp)) if during => {
                let sys = (self.level + jitter(rng, 3)).min(90.0);
                let dia = (sys * 0.62 + jitter(rng, 3)).max(40.0);
                set_bp(bp, sys, dia);
                bp.pulse = bp.pulse.map(|p| p + 12.0);
                sample.sensor &= !sensor::BP_BODY_MOVEMENT;
            }
            (ScenarioKind::SustainedHighBp, Measurement::BloodPressure(bp)) if during => {
                let sys = f64::from(bp.systolic) + self.level;
                let dia = f64::from(bp.diastolic) + self.level * 0.55;
                set_bp(bp, sys.min(250.0), dia.min(140.0));
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
            (ScenarioKind::SevereLowSpo2, Measurement::Spo2(ox)) if during => {
                ox.percent = (self.level + jitter(rng, 1)).clamp(78.0, 85.0) as f32;
                ox.pulse = ox.pulse.map(|p| p + 10.0);
                sample.sensor = 0;
            }
            (ScenarioKind::OffConditionReading, Measurement::Spo2(ox)) if during => {
                ox.percent = (self.level + jitter(rng, 1)).clamp(83.0, 89.0) as f32;
                sample.sensor = 0;
            }
            (ScenarioKind::SpuriousLowSpo2, Measurement::Spo2(ox)) if at_ms == self.start_ms => {
                ox.percent = self.level as f32;
                sample.sensor = 0;
            }
            (ScenarioKind::Tachycardia, Measurement::BloodPressure(bp)) if during => {
                bp.pulse = Some((self.level + jitter(rng, 3)).max(131.0) as f32);
                sample.sensor &= !sensor::BP_BODY_MOVEMENT;
            }
            (ScenarioKind::Tachycardia, Measurement::Spo2(ox)) if during => {
                ox.pulse = Some((self.level + jitter(rng, 3)).max(131.0) as f32);
                sample.sensor = 0;
            }
            (ScenarioKind::Bradycardia, Measurement::BloodPressure(bp)) if during => {
                bp.pulse = Some((self.level + jitter(rng, 2)).min(40.0) as f32);
                sample.sensor &= !sensor::BP_BODY_MOVEMENT;
            }
            (ScenarioKind::Bradycardia, Measurement::Spo2(ox)) if during => {
                ox.pulse = Some((self.level + jitter(rng, 2)).min(40.0) as f32);
                sample.sensor = 0;
            }
            (
                ScenarioKind::Hypoglycaemia | ScenarioKind::MildHypoglycaemia,
                Measurement::Glucose(g),
            ) => {
                if at_ms == self.start_ms {
                    set_mg_dl(g, self.level);
                } else if at_ms == self.start_ms + 15 * MINUTE_MS {
                    // Rule of 15: 15 g of fast sugar, retest after 15 min.
                    set_mg_dl(g, f64::from(rng.gen_range(78..=110)));
                }
            }
            (ScenarioKind::OffConditionReading, Measurement::Glucose(g)) if during => {
                set_mg_dl(g, (self.level + jitter(rng, 3)).clamp(36.0, 52.0));
                g.sample = SampleType::CapillaryPlasma;
            }
            (ScenarioKind::Hyperglycaemia, Measurement::Glucose(g)) if during => {
                set_mg_dl(g, (self.level + jitter(rng, 15)).clamp(256.0, 348.0));
            }
            (ScenarioKind::SevereHyperglycaemia, Measurement::Glucose(g)) if during => {
                set_mg_dl(g, (self.level + jitter(rng, 20)).max(356.0));
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

    /// When a reading of `kind` measured at `measured_ms` reaches the gateway, if the
    /// scenario holds it back (a silent device delivers its backlog when it connects again).
    pub fn holds_until(&self, kind: Kind, measured_ms: i64) -> Option<i64> {
        (self.kind == ScenarioKind::DeviceSilent && kind == self.device && self.during(measured_ms))
            .then_some(self.end_ms())
    }

    /// Whether the `kind` device is silent (sends nothing) at `at_ms`.
    pub fn silent(&self, kind: Kind, at_ms: i64) -> bool {
        self.kind == ScenarioKind::DeviceSilent && kind == self.device && self.during(at_ms)
    }

    /// The battery the `kind` device reports at `at_ms`, if the scenario sets it.
    pub fn battery(&self, kind: Kind, at_ms: i64) -> Option<u8> {
        (self.kind == ScenarioKind::LowBattery && kind == self.device && self.during(at_ms))
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
    /// Which of the patient's devices measured it (index into [`SimPatient::devices`]).
    pub device: usize,
    pub kind: Kind,
    pub sample: Sample,
    /// A scenario added or changed it.
    pub injected: bool,
    /// A repeat (the patient's own, or one the engine asked for).
    pub repeat: bool,
}

/// A device status as the gateway receives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimedStatus {
    pub at_ms: i64,
    /// Which of the patient's devices.
    pub device: usize,
    pub battery: u8,
}

/// The patient's habits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Habits {
    /// Chance that a scheduled measurement is skipped (forgotten, away from home).
    pub skip_rate: f64,
    /// Chance that the patient repeats a worrying value (SpO2 below target, BP ≥ 180/110)
    /// after 5-10 min of rest of their own accord. 0 by default: the repeat the engine asks
    /// the device for is what drives repeats (the benchmark simulates the device honouring
    /// it), so a spontaneous habit would count some repeats twice.
    pub repeat_rate: f64,
}

impl Default for Habits {
    fn default() -> Self {
        Habits {
            skip_rate: 0.03,
            repeat_rate: 0.0,
        }
    }
}

/// One home device of a simulated patient.
#[derive(Debug, Clone)]
pub struct SimDevice {
    pub kind: Kind,
    pub schedule: Schedule,
    /// Battery at the start, percent; it drains slowly.
    pub battery: f64,
}

/// One simulated patient with one or more home devices.
#[derive(Debug, Clone)]
pub struct SimPatient {
    /// The patient's listed conditions (may be empty).
    pub conditions: Vec<Condition>,
    pub devices: Vec<SimDevice>,
    pub physiology: Patient,
    pub scenarios: Vec<Scenario>,
    pub habits: Habits,
}

/// The daily measurement moments of a patient's device: BP once or twice a day; SpO2 once or
/// twice; glucose once, twice or four times (`per_day`).
pub fn slots(kind: Kind, per_day: u32) -> Vec<Slot> {
    match (kind, per_day) {
        (Kind::BloodPressure, 1) => vec![slot(8, 0, None)],
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

/// The device a single condition gets (`scenario` shows one condition on one device).
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
        SimPatient::with_devices(seed, &[condition], &[(device_for(condition), per_day)], rng)
    }

    /// A patient with `conditions` (possibly none) and `devices` (kind, measurements a day).
    pub fn with_devices(
        seed: u64,
        conditions: &[Condition],
        devices: &[(Kind, u32)],
        rng: &mut impl Rng,
    ) -> SimPatient {
        let devices = devices
            .iter()
            .enumerate()
            .map(|(i, (kind, per_day))| SimDevice {
                kind: *kind,
                schedule: Schedule::with_slots(
                    slots(*kind, *per_day),
                    crate::physiology::mix(seed, 0xD0 + i as u64),
                ),
                battery: rng.gen_range(45.0..100.0),
            })
            .collect();
        SimPatient {
            conditions: conditions.to_vec(),
            devices,
            physiology: Patient::new(seed, conditions),
            scenarios: Vec::new(),
            habits: Habits::default(),
        }
    }

    /// The patient's device of `kind`, if any.
    pub fn device_of(&self, kind: Kind) -> Option<usize> {
        self.devices.iter().position(|d| d.kind == kind)
    }

    /// Whether the patient has a device of `kind`.
    pub fn has(&self, kind: Kind) -> bool {
        self.device_of(kind).is_some()
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
                let target = if self.conditions.contains(&Condition::Copd) {
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

    /// What the `kind` device measures at `at_ms` (the patient's physiology with every
    /// scenario applied): a scheduled reading, or a repeat the engine asked for.
    pub fn measure(
        &mut self,
        kind: Kind,
        at_ms: i64,
        meal: Option<MealContext>,
        rng: &mut StdRng,
    ) -> Sample {
        let mut sample = self.physiology.measure(kind, at_ms, meal);
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
        // (time, device, meal, may repeat, injected)
        let mut moments: Vec<(i64, usize, Option<MealContext>, bool, bool)> = Vec::new();
        for (d, dev) in self.devices.iter().enumerate() {
            for (t, s) in dev.schedule.between(from_ms, to_ms) {
                if self.scenarios.iter().any(|sc| sc.skips(dev.kind, t))
                    || rng.gen_bool(self.habits.skip_rate.clamp(0.0, 1.0))
                {
                    continue;
                }
                moments.push((t, d, s.meal, true, false));
            }
        }
        for sc in &self.scenarios {
            let Some(d) = self.device_of(sc.device) else {
                continue;
            };
            for e in sc.extras() {
                if (from_ms..to_ms).contains(&e.at_ms) {
                    moments.push((e.at_ms, d, e.meal, e.may_repeat, true));
                }
            }
        }
        moments.sort_by_key(|m| (m.0, m.1));
        let mut readings = Vec::new();
        for (at, d, meal, may_repeat, injected) in moments {
            let kind = self.devices[d].kind;
            let sample = self.measure(kind, at, meal, rng);
            let worrying = self.worrying(&sample);
            readings.push(self.timed(at, d, sample, injected, false, rng));
            if may_repeat && worrying && rng.gen_bool(self.habits.repeat_rate.clamp(0.0, 1.0)) {
                let again = at + rng.gen_range(5..=10) * MINUTE_MS;
                let sample = self.measure(kind, again, meal, rng);
                readings.push(self.timed(again, d, sample, injected, true, rng));
            }
        }
        // Statuses: with every connection (a delivery) and a daily check-in at ~03:00 local.
        let mut statuses = Vec::new();
        for (d, dev) in self.devices.iter().enumerate() {
            let mut deliveries: Vec<i64> = readings
                .iter()
                .filter(|r| r.device == d)
                .map(|r| r.delivered_ms)
                .collect();
            let first_day = from_ms.div_euclid(DAY_MS);
            for day in first_day..=to_ms.div_euclid(DAY_MS) {
                let at = day * DAY_MS + 2 * HOUR_MS + rng.gen_range(0..60) * MINUTE_MS;
                if (from_ms..to_ms).contains(&at)
                    && !self.scenarios.iter().any(|s| s.silent(dev.kind, at))
                {
                    deliveries.push(at);
                }
            }
            deliveries.sort_unstable();
            deliveries.dedup();
            for at in deliveries {
                let drained = dev.battery - 0.3 * (at - from_ms) as f64 / DAY_MS as f64;
                let battery = self
                    .scenarios
                    .iter()
                    .find_map(|s| s.battery(dev.kind, at))
                    .unwrap_or(drained.clamp(20.0, 100.0).round() as u8);
                statuses.push(TimedStatus {
                    at_ms: at,
                    device: d,
                    battery,
                });
            }
        }
        statuses.sort_by_key(|s| s.at_ms);
        (readings, statuses)
    }

    /// A reading of device `d` measured at `at` as the gateway receives it.
    pub fn timed(
        &self,
        at: i64,
        d: usize,
        sample: Sample,
        injected: bool,
        repeat: bool,
        rng: &mut StdRng,
    ) -> TimedReading {
        let kind = self.devices[d].kind;
        let sync = rng.gen_range(5_000..90_000);
        let delivered = self
            .scenarios
            .iter()
            .find_map(|s| s.holds_until(kind, at))
            .map_or(at + sync, |until| until + sync);
        let injected = injected
            || self.scenarios.iter().any(|s| {
                s.kind == ScenarioKind::ProgressiveDesaturation && s.desaturation(at) > 0.0
            });
        TimedReading {
            measured_ms: at,
            delivered_ms: delivered,
            device: d,
            kind,
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
        assert_eq!(severe, [start], "one severe reading on the schedule's day");
        // A repeat the engine asks for 5 min later is still severe: the crisis goes on.
        let repeat = p.measure(Kind::BloodPressure, start + 6 * MINUTE_MS, None, &mut r);
        assert!(
            matches!(repeat.measurement, Measurement::BloodPressure(bp) if bp.systolic >= 180.0)
        );
        let late = readings
            .iter()
            .filter(|r| r.delivered_ms - r.measured_ms > 6 * HOUR_MS)
            .count();
        assert!(late >= 2, "a silent device delivers its backlog late");
        let silence = T0 + 3 * DAY_MS + HOUR_MS..T0 + 3 * DAY_MS + 30 * HOUR_MS;
        assert!(!statuses.iter().any(|s| silence.contains(&s.at_ms)));
    }
}
