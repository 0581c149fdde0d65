//! Care plans: what a patient is expected to measure and the rules that turn readings into
//! alerts. A plan is JSON in the store (`care_plans.plan`), versioned there; this module is
//! its schema, its validation and the clinical templates a clinician starts from.
//!
//! ```json
//! {
//!   "schedule": [{"kind": "bp", "every_hours": 12, "grace_hours": 2}],
//!   "rules": [
//!     {"id": "bp-high", "title": "Blood pressure high", "type": "threshold",
//!      "bands": [
//!        {"severity": "critical", "any": [{"metric": "systolic", "at_least": 180},
//!                                         {"metric": "diastolic", "at_least": 110}],
//!         "consecutive": 2, "within_minutes": 30},
//!        {"severity": "high", "any": [{"metric": "systolic", "at_least": 180}]}]}
//!   ]
//! }
//! ```
//!
//! Bands are checked from the most severe down; the first whose conditions hold on
//! `consecutive` readings in a row (within `within_minutes` of each other, if set) decides the
//! severity. Glucose thresholds may be written in mmol/L (`"unit": "mmol/L"`); they are
//! normalised to mg/dL, the stored unit, by [`CarePlan::normalized`].

use serde::{Deserialize, Serialize};
use store::{ReadingKind, Severity};

pub mod net;

pub use net::SafetyNet;

/// A patient's care plan (one version).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarePlan {
    /// The expected measurements; adherence rules refer to them.
    #[serde(default)]
    pub schedule: Vec<Expected>,
    pub rules: Vec<Rule>,
    /// How the safety net under every plan applies to this patient (see [`net`]).
    #[serde(default, skip_serializing_if = "SafetyNet::is_default")]
    pub safety_net: SafetyNet,
}

/// One kind of measurement the patient is expected to take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    pub kind: ReadingKind,
    /// One reading is expected every this many hours.
    pub every_hours: f64,
    /// Slack before a missing reading counts as missed.
    #[serde(default)]
    pub grace_hours: f64,
}

/// A rule: an id unique in the plan, a title for the nurse, the check, and where its numbers
/// come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    pub title: String,
    #[serde(flatten)]
    pub check: Check,
    /// The evidence behind the numbers (guideline, table), for the clinician.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Where the rule comes from in an effective plan: `template:<name>`, `plan`,
    /// `safety-net`, or one of those joined with `+safety-net` (set by the engine, not by
    /// the author).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// What a rule checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Check {
    /// Bands of severity over one or more metrics of a reading, with persistence.
    Threshold {
        bands: Vec<Band>,
        /// How far back inside a band a value must come before the condition clears
        /// (default per metric: 5 mmHg, 5 /min, 1 %, 10 mg/dL).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hysteresis: Option<f64>,
    },
    /// A change against the patient's own baseline: the median of the metric over the
    /// previous `baseline_days`.
    Trend {
        metric: Metric,
        direction: Direction,
        /// How far from the baseline (in the metric's unit) the value must be.
        delta: f64,
        #[serde(default = "default_baseline_days")]
        baseline_days: u32,
        /// Fewer baseline readings than this: no baseline, no trend alert.
        #[serde(default = "default_min_baseline")]
        min_baseline: u32,
        severity: Severity,
        #[serde(default = "one")]
        consecutive: u32,
    },
    /// No reading of `kind` within the schedule's interval plus grace.
    Adherence {
        kind: ReadingKind,
        severity: Severity,
    },
    /// A device not seen for `after_hours`.
    DeviceOffline {
        after_hours: f64,
        severity: Severity,
    },
    /// A device reporting a battery below `below_pct`.
    LowBattery { below_pct: u8, severity: Severity },
    /// A device whose clock is not set or implausible.
    Clock { severity: Severity },
    /// The mean of the patient's good readings over the last `days` (ESH home blood
    /// pressure monitoring: the average of several days, not one reading, decides).
    Average {
        /// Conditions on the means (any holds: the rule holds).
        any: Vec<Condition>,
        #[serde(default = "default_average_days")]
        days: u32,
        /// Fewer readings than this in the period: no verdict.
        #[serde(default = "default_average_readings")]
        min_readings: u32,
        /// The readings must span at least this many calendar days.
        #[serde(default = "default_average_span")]
        min_days: u32,
        severity: Severity,
    },
}

/// Rising or falling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Rise,
    Drop,
}

/// One severity level of a threshold rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Band {
    pub severity: Severity,
    /// The band holds when any of these holds.
    pub any: Vec<Condition>,
    /// Readings in a row that must hold the band (or a worse one). 1: the reading alone.
    #[serde(default = "one")]
    pub consecutive: u32,
    /// The run of readings must fit in this many minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within_minutes: Option<u32>,
}

/// A bound on one metric: inclusive `at_least`/`at_most`, strict `above`/`below`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub metric: Metric,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_least: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_most: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// For glucose: `mg/dL` (default) or `mmol/L`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// A measured quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    #[default]
    Systolic,
    Diastolic,
    MeanArterial,
    /// From a BP monitor or an oximeter.
    Pulse,
    Spo2,
    PerfusionIndex,
    /// mg/dL.
    Glucose,
}

impl Metric {
    /// Every metric, in declaration order (`m as usize` indexes it).
    pub const ALL: [Metric; 7] = [
        Metric::Systolic,
        Metric::Diastolic,
        Metric::MeanArterial,
        Metric::Pulse,
        Metric::Spo2,
        Metric::PerfusionIndex,
        Metric::Glucose,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Systolic => "systolic",
            Metric::Diastolic => "diastolic",
            Metric::MeanArterial => "mean_arterial",
            Metric::Pulse => "pulse",
            Metric::Spo2 => "spo2",
            Metric::PerfusionIndex => "perfusion_index",
            Metric::Glucose => "glucose",
        }
    }

    /// The stored unit.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::Systolic | Metric::Diastolic | Metric::MeanArterial => "mmHg",
            Metric::Pulse => "/min",
            Metric::Spo2 | Metric::PerfusionIndex => "%",
            Metric::Glucose => "mg/dL",
        }
    }

    /// The reading kinds that carry it.
    pub fn kinds(self) -> &'static [ReadingKind] {
        match self {
            Metric::Systolic | Metric::Diastolic | Metric::MeanArterial => {
                &[ReadingKind::BloodPressure]
            }
            Metric::Pulse => &[ReadingKind::BloodPressure, ReadingKind::Spo2],
            Metric::Spo2 | Metric::PerfusionIndex => &[ReadingKind::Spo2],
            Metric::Glucose => &[ReadingKind::Glucose],
        }
    }

    /// The default hysteresis (see [`Check::Threshold`]).
    pub fn hysteresis(self) -> f64 {
        match self {
            Metric::Systolic | Metric::Diastolic | Metric::MeanArterial | Metric::Pulse => 5.0,
            Metric::Spo2 => 1.0,
            Metric::PerfusionIndex => 0.2,
            Metric::Glucose => 10.0,
        }
    }

    /// Physiologically possible values (outside: a typo in the plan).
    fn range(self) -> (f64, f64) {
        match self {
            Metric::Systolic | Metric::MeanArterial => (20.0, 300.0),
            Metric::Diastolic => (10.0, 250.0),
            Metric::Pulse => (15.0, 300.0),
            Metric::Spo2 => (40.0, 100.0),
            Metric::PerfusionIndex => (0.0, 25.0),
            Metric::Glucose => (10.0, 1000.0),
        }
    }
}

fn one() -> u32 {
    1
}
fn default_baseline_days() -> u32 {
    7
}
fn default_min_baseline() -> u32 {
    5
}
fn default_average_days() -> u32 {
    7
}
fn default_average_readings() -> u32 {
    12
}
fn default_average_span() -> u32 {
    3
}

impl Condition {
    /// Whether `v` meets the bound.
    pub fn holds(&self, v: f64) -> bool {
        self.at_least.is_none_or(|t| v >= t)
            && self.above.is_none_or(|t| v > t)
            && self.at_most.is_none_or(|t| v <= t)
            && self.below.is_none_or(|t| v < t)
    }

    /// Whether `v` still counts as inside the bound once widened by `h` (for clearing).
    pub fn holds_widened(&self, v: f64, h: f64) -> bool {
        self.at_least.is_none_or(|t| v >= t - h)
            && self.above.is_none_or(|t| v > t - h)
            && self.at_most.is_none_or(|t| v <= t + h)
            && self.below.is_none_or(|t| v < t + h)
    }

    /// Whether a higher value is worse for this bound.
    pub fn higher_is_worse(&self) -> bool {
        self.at_least.is_some() || self.above.is_some()
    }
}

impl CarePlan {
    /// Parses a stored plan.
    pub fn from_json(text: &str) -> Result<CarePlan, String> {
        serde_json::from_str(text).map_err(|e| format!("care plan: {e}"))
    }

    /// Glucose bounds converted to mg/dL; everything else as it is.
    pub fn normalized(mut self) -> CarePlan {
        for rule in &mut self.rules {
            let conditions: Vec<&mut Condition> = match &mut rule.check {
                Check::Threshold { bands, .. } => {
                    bands.iter_mut().flat_map(|b| b.any.iter_mut()).collect()
                }
                Check::Average { any, .. } => any.iter_mut().collect(),
                _ => Vec::new(),
            };
            for c in conditions {
                if c.unit.as_deref() == Some("mmol/L") {
                    let f = f64::from(protocol::reading::MG_DL_PER_MMOL_L);
                    for bound in [&mut c.at_least, &mut c.above, &mut c.at_most, &mut c.below] {
                        *bound = bound.map(|v| (v * f * 10.0).round() / 10.0);
                    }
                    c.unit = Some("mg/dL".into());
                }
            }
        }
        self
    }

    /// Every problem with the plan, as messages for the clinician (empty: valid).
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.safety_net.problems();
        let mut ids = std::collections::HashSet::new();
        for e in &self.schedule {
            if !(e.every_hours.is_finite() && e.every_hours > 0.0 && e.every_hours <= 24.0 * 31.0) {
                out.push(format!(
                    "schedule {}: every_hours must be in (0, 744]",
                    e.kind.as_str()
                ));
            }
            if !(e.grace_hours.is_finite() && e.grace_hours >= 0.0) {
                out.push(format!(
                    "schedule {}: grace_hours must be ≥ 0",
                    e.kind.as_str()
                ));
            }
        }
        for rule in &self.rules {
            let id = &rule.id;
            if id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                out.push(format!("rule {id:?}: id must be 1-64 of A-Z a-z 0-9 - _"));
            }
            if id.starts_with("device-") || id.starts_with("late-") || id.starts_with("quality-") {
                out.push(format!(
                    "rule {id}: ids starting device-, late-, quality- are reserved"
                ));
            }
            if !ids.insert(id.clone()) {
                out.push(format!("rule {id}: duplicate id"));
            }
            if rule.title.trim().is_empty() {
                out.push(format!("rule {id}: a title is required"));
            }
            match &rule.check {
                Check::Threshold { bands, hysteresis } => {
                    if bands.is_empty() {
                        out.push(format!("rule {id}: at least one band"));
                    }
                    if hysteresis.is_some_and(|h| !(h.is_finite() && h >= 0.0)) {
                        out.push(format!("rule {id}: hysteresis must be ≥ 0"));
                    }
                    let mut seen = std::collections::HashSet::new();
                    for band in bands {
                        let sev = band.severity.as_str();
                        if !seen.insert(band.severity) {
                            out.push(format!("rule {id}: two {sev} bands"));
                        }
                        if band.any.is_empty() {
                            out.push(format!("rule {id} {sev}: a band needs a condition"));
                        }
                        if !(1..=20).contains(&band.consecutive) {
                            out.push(format!("rule {id} {sev}: consecutive must be 1-20"));
                        }
                        for c in &band.any {
                            check_condition(&mut out, id, sev, c);
                        }
                    }
                }
                Check::Trend {
                    delta,
                    baseline_days,
                    min_baseline,
                    consecutive,
                    ..
                } => {
                    if !(delta.is_finite() && *delta > 0.0) {
                        out.push(format!("rule {id}: delta must be > 0"));
                    }
                    if !(1..=90).contains(baseline_days) {
                        out.push(format!("rule {id}: baseline_days must be 1-90"));
                    }
                    if !(1..=500).contains(min_baseline) {
                        out.push(format!("rule {id}: min_baseline must be 1-500"));
                    }
                    if !(1..=20).contains(consecutive) {
                        out.push(format!("rule {id}: consecutive must be 1-20"));
                    }
                }
                Check::Adherence { kind, .. } => {
                    if !self.schedule.iter().any(|e| e.kind == *kind) {
                        out.push(format!(
                            "rule {id}: adherence for {} needs it in the schedule",
                            kind.as_str()
                        ));
                    }
                }
                Check::DeviceOffline { after_hours, .. } => {
                    if !(after_hours.is_finite() && *after_hours > 0.0) {
                        out.push(format!("rule {id}: after_hours must be > 0"));
                    }
                }
                Check::LowBattery { below_pct, .. } => {
                    if !(1..=100).contains(below_pct) {
                        out.push(format!("rule {id}: below_pct must be 1-100"));
                    }
                }
                Check::Clock { .. } => {}
                Check::Average {
                    any,
                    days,
                    min_readings,
                    min_days,
                    ..
                } => {
                    if any.is_empty() {
                        out.push(format!("rule {id}: an average needs a condition"));
                    }
                    for c in any {
                        check_condition(&mut out, id, "average", c);
                    }
                    if !(1..=90).contains(days) {
                        out.push(format!("rule {id}: days must be 1-90"));
                    }
                    if !(1..=500).contains(min_readings) {
                        out.push(format!("rule {id}: min_readings must be 1-500"));
                    }
                    if *min_days > *days {
                        out.push(format!("rule {id}: min_days must be at most days"));
                    }
                }
            }
        }
        out
    }
}

fn check_condition(out: &mut Vec<String>, id: &str, sev: &str, c: &Condition) {
    let metric = c.metric.as_str();
    let bounds = [c.at_least, c.above, c.at_most, c.below];
    if bounds.iter().all(Option::is_none) {
        out.push(format!(
            "rule {id} {sev} {metric}: give at_least, above, at_most or below"
        ));
    }
    match c.unit.as_deref() {
        None => {}
        Some("mg/dL" | "mmol/L") if c.metric == Metric::Glucose => {}
        Some(u) if u == c.metric.unit() => {}
        Some(u) => out.push(format!("rule {id} {sev} {metric}: unit {u:?} does not fit")),
    }
    let factor = if c.unit.as_deref() == Some("mmol/L") {
        f64::from(protocol::reading::MG_DL_PER_MMOL_L)
    } else {
        1.0
    };
    let (lo, hi) = c.metric.range();
    for b in bounds.into_iter().flatten() {
        let v = b * factor;
        if !v.is_finite() || v < lo || v > hi {
            out.push(format!(
                "rule {id} {sev} {metric}: {b} is outside {lo}-{hi} {} (wrong unit?)",
                c.metric.unit()
            ));
        }
    }
}

/// The templates a plan starts from.
pub const TEMPLATE_NAMES: [&str; 5] = [
    "hypertension",
    "copd",
    "diabetes",
    "heart_failure",
    "general",
];

/// Enrolled conditions and their templates, in precedence order: when two templates have a
/// rule with the same id, the one listed first wins (COPD's SpO2 scale 2 over the scale 1
/// of heart failure and `general`). `general` is always the base, last.
pub const CONDITION_TEMPLATES: [&str; 4] = ["copd", "heart_failure", "diabetes", "hypertension"];

/// A template by name, with its cited numbers (see `clinical-defaults.md` §5).
pub fn template(name: &str) -> Option<CarePlan> {
    let mut rules = match name {
        "hypertension" => vec![
            bp_high(),
            bp_low(),
            pulse_rule(),
            bp_trend(),
            bp_home_average(),
            adherence(ReadingKind::BloodPressure),
        ],
        "copd" => vec![
            spo2_scale2(),
            spo2_trend(),
            pulse_rule(),
            adherence(ReadingKind::Spo2),
        ],
        "diabetes" => vec![
            glucose_low(),
            glucose_high(),
            adherence(ReadingKind::Glucose),
        ],
        "heart_failure" => vec![
            spo2_scale1(),
            bp_high_hf(),
            bp_low(),
            pulse_hf(),
            adherence(ReadingKind::BloodPressure),
            adherence(ReadingKind::Spo2),
        ],
        "general" => vec![spo2_scale1(), bp_high(), bp_low(), pulse_rule()],
        _ => return None,
    };
    rules.extend(device_rules());
    let origin = format!("template:{name}");
    for r in &mut rules {
        r.origin = Some(origin.clone());
    }
    let schedule = match name {
        "hypertension" => vec![expect(ReadingKind::BloodPressure, 12.0, 14.0)],
        "copd" => vec![expect(ReadingKind::Spo2, 24.0, 6.0)],
        "diabetes" => vec![expect(ReadingKind::Glucose, 24.0, 6.0)],
        "heart_failure" => vec![
            expect(ReadingKind::BloodPressure, 24.0, 6.0),
            expect(ReadingKind::Spo2, 24.0, 6.0),
        ],
        _ => Vec::new(),
    };
    let safety_net = match name {
        "copd" => SafetyNet {
            spo2_scale: 2,
            reason: Some(
                "COPD at risk of hypercapnic respiratory failure: target SpO2 88-92 %, NEWS2 \
                 scale 2 (RCP 2017; BTS oxygen guideline). Remove for a COPD patient without \
                 that risk."
                    .into(),
            ),
            widen: Vec::new(),
        },
        _ => SafetyNet::default(),
    };
    Some(CarePlan {
        schedule,
        rules,
        safety_net,
    })
}

/// The conditions a patient is enrolled with that have a template, in precedence order.
pub fn templates_for_conditions(conditions: &[String]) -> Vec<&'static str> {
    CONDITION_TEMPLATES
        .into_iter()
        .filter(|t| conditions.iter().any(|c| c.eq_ignore_ascii_case(t)))
        .collect()
}

/// The plan of a patient without a stored plan: the templates of all their conditions
/// composed over `general` (see [`compose`]).
pub fn for_conditions(conditions: &[String]) -> CarePlan {
    compose(&templates_for_conditions(conditions))
}

/// Composes templates: every rule of every template, `general` as the base; for a rule id
/// in several, the template first in [`CONDITION_TEMPLATES`] order wins whole (`names` in
/// any order). Schedules join (per kind the shortest interval, with its grace). The safety
/// net takes the strongest choice a template makes (SpO2 scale 2 from COPD, with its reason).
pub fn compose(names: &[&str]) -> CarePlan {
    let mut ordered: Vec<&str> = CONDITION_TEMPLATES
        .into_iter()
        .filter(|t| names.contains(t))
        .collect();
    ordered.push("general");
    let mut out = CarePlan {
        schedule: Vec::new(),
        rules: Vec::new(),
        safety_net: SafetyNet::default(),
    };
    for name in ordered {
        let Some(t) = template(name) else { continue };
        for r in t.rules {
            if !out.rules.iter().any(|o| o.id == r.id) {
                out.rules.push(r);
            }
        }
        for e in t.schedule {
            match out.schedule.iter_mut().find(|o| o.kind == e.kind) {
                Some(o) if o.every_hours <= e.every_hours => {}
                Some(o) => *o = e,
                None => out.schedule.push(e),
            }
        }
        if t.safety_net.spo2_scale > out.safety_net.spo2_scale {
            out.safety_net = t.safety_net;
        }
    }
    out
}

/// The single template name for `conditions` when there is one, else `composed`.
pub fn template_label(conditions: &[String]) -> String {
    let names = templates_for_conditions(conditions);
    match names.as_slice() {
        [] => "general".into(),
        [one] => (*one).into(),
        many => many.join("+"),
    }
}

fn expect(kind: ReadingKind, every_hours: f64, grace_hours: f64) -> Expected {
    Expected {
        kind,
        every_hours,
        grace_hours,
    }
}

fn cond(metric: Metric) -> Condition {
    Condition {
        metric,
        ..Condition::default()
    }
}

pub(super) fn band(
    severity: Severity,
    any: Vec<Condition>,
    consecutive: u32,
    within: Option<u32>,
) -> Band {
    Band {
        severity,
        any,
        consecutive,
        within_minutes: within,
    }
}

pub(super) fn threshold(id: &str, title: &str, bands: Vec<Band>, source: &str) -> Rule {
    Rule {
        id: id.into(),
        title: title.into(),
        check: Check::Threshold {
            bands,
            hysteresis: None,
        },
        source: Some(source.into()),
        origin: None,
    }
}

fn bp_high_hf() -> Rule {
    threshold(
        "bp-high",
        "Blood pressure high",
        vec![band(
            Severity::Medium,
            vec![Condition {
                at_least: Some(160.0),
                ..cond(Metric::Systolic)
            }],
            2,
            Some(3 * 24 * 60),
        )],
        "HL7 Italia telemonitoring heart-failure plan: SBP 90-160 mmHg; 2 readings ≥160 within \
         3 days → review (clinical-defaults §2.5, §5.1)",
    )
}

/// Pulse below 50 or above 110 on 2 readings within 36 h: same-day review (§5.3; the HL7
/// Italia HF plan's HR range).
fn pulse_outside_50_110() -> Band {
    band(
        Severity::Medium,
        vec![
            Condition {
                below: Some(50.0),
                ..cond(Metric::Pulse)
            },
            Condition {
                above: Some(110.0),
                ..cond(Metric::Pulse)
            },
        ],
        2,
        Some(36 * 60),
    )
}

fn pulse_hf() -> Rule {
    threshold(
        "pulse",
        "Heart rate out of range",
        vec![pulse_outside_50_110()],
        "HL7 Italia telemonitoring heart-failure plan: HR 50-110 /min; 2 readings outside → \
         review (clinical-defaults §2.5)",
    )
}

fn bp_home_average() -> Rule {
    Rule {
        id: "bp-home-average".into(),
        title: "Home blood pressure average above target".into(),
        check: Check::Average {
            any: vec![
                Condition {
                    at_least: Some(135.0),
                    ..cond(Metric::Systolic)
                },
                Condition {
                    at_least: Some(85.0),
                    ..cond(Metric::Diastolic)
                },
            ],
            days: 7,
            min_readings: 12,
            min_days: 3,
            severity: Severity::Low,
        },
        source: Some(
            "ESH home BP monitoring: the mean of duplicate morning and evening readings over \
             ≥3 (preferably 7) days; ≥135/85 mmHg is hypertension at home → review the \
             treatment (ESH 2021 HBPM position paper; clinical-defaults §5.1)"
                .into(),
        ),
        origin: None,
    }
}

fn bp_high() -> Rule {
    let severe = || {
        vec![
            Condition {
                at_least: Some(180.0),
                ..cond(Metric::Systolic)
            },
            Condition {
                at_least: Some(110.0),
                ..cond(Metric::Diastolic)
            },
        ]
    };
    threshold(
        "bp-high",
        "Blood pressure high",
        vec![
            band(Severity::Critical, severe(), 2, Some(30)),
            band(Severity::High, severe(), 1, None),
            band(
                Severity::Medium,
                vec![
                    Condition {
                        at_least: Some(160.0),
                        ..cond(Metric::Systolic)
                    },
                    Condition {
                        at_least: Some(100.0),
                        ..cond(Metric::Diastolic)
                    },
                ],
                3,
                Some(3 * 24 * 60),
            ),
        ],
        "ESC/ESH grade 3 ≥180/≥110 (urgency; critical when confirmed by a repeat within 30 min, \
         high on a single reading); grade 2 ≥160/≥100 on 3 consecutive readings → same-day \
         review (clinical-defaults §5.1, §5.3)",
    )
}

fn bp_low() -> Rule {
    threshold(
        "bp-low",
        "Blood pressure low",
        vec![
            band(
                Severity::High,
                vec![Condition {
                    at_most: Some(90.0),
                    ..cond(Metric::Systolic)
                }],
                1,
                None,
            ),
            band(
                Severity::Medium,
                vec![Condition {
                    below: Some(100.0),
                    ..cond(Metric::Systolic)
                }],
                2,
                Some(36 * 60),
            ),
        ],
        "NEWS2 systolic ≤90 scores 3; SBP <100 on 2 readings → review (clinical-defaults §5.1, §5.3)",
    )
}

fn pulse_rule() -> Rule {
    threshold(
        "pulse",
        "Heart rate out of range",
        vec![
            band(
                Severity::High,
                vec![
                    Condition {
                        at_most: Some(40.0),
                        ..cond(Metric::Pulse)
                    },
                    Condition {
                        at_least: Some(131.0),
                        ..cond(Metric::Pulse)
                    },
                ],
                1,
                None,
            ),
            pulse_outside_50_110(),
        ],
        "NEWS2 pulse ≤40 or ≥131 scores 3; 2 consecutive <50 or >110 → same-day review \
         (clinical-defaults §5.3)",
    )
}

fn bp_trend() -> Rule {
    Rule {
        id: "bp-trend".into(),
        title: "Systolic rising against the patient's baseline".into(),
        check: Check::Trend {
            metric: Metric::Systolic,
            direction: Direction::Rise,
            delta: 20.0,
            baseline_days: 7,
            min_baseline: 5,
            severity: Severity::Low,
            consecutive: 3,
        },
        source: Some(
            "Individualised baselines beat fixed rules (HeartPhone; Moazeni 2023, \
             clinical-defaults §5.2); +20 mmHg over the 7-day median on 3 readings"
                .into(),
        ),
        origin: None,
    }
}

fn spo2_scale1() -> Rule {
    threshold(
        "spo2-low",
        "SpO2 low",
        vec![
            band(
                Severity::Critical,
                vec![Condition {
                    at_most: Some(91.0),
                    ..cond(Metric::Spo2)
                }],
                2,
                Some(30),
            ),
            band(
                Severity::Medium,
                vec![Condition {
                    at_most: Some(93.0),
                    ..cond(Metric::Spo2)
                }],
                2,
                Some(60),
            ),
        ],
        "NEWS2 SpO2 scale 1: ≤91 % scores 3, 92-93 % scores 2; a repeat confirms \
         (clinical-defaults §5.1, §5.3)",
    )
}

fn spo2_scale2() -> Rule {
    threshold(
        "spo2-low",
        "SpO2 below the COPD target",
        vec![
            band(
                Severity::Critical,
                vec![Condition {
                    at_most: Some(83.0),
                    ..cond(Metric::Spo2)
                }],
                2,
                Some(30),
            ),
            band(
                Severity::High,
                vec![Condition {
                    at_most: Some(85.0),
                    ..cond(Metric::Spo2)
                }],
                2,
                Some(36 * 60),
            ),
            band(
                Severity::Medium,
                vec![Condition {
                    at_most: Some(87.0),
                    ..cond(Metric::Spo2)
                }],
                3,
                Some(36 * 60),
            ),
        ],
        "NEWS2 SpO2 scale 2 (target 88-92 %): ≤83 scores 3, 84-85 scores 2, 86-87 scores 1; \
         a COPD baseline of 88-92 % raises nothing (clinical-defaults §5.1, §5.3)",
    )
}

fn spo2_trend() -> Rule {
    Rule {
        id: "spo2-trend".into(),
        title: "SpO2 dropping against the patient's baseline".into(),
        check: Check::Trend {
            metric: Metric::Spo2,
            direction: Direction::Drop,
            delta: 4.0,
            baseline_days: 7,
            min_baseline: 5,
            severity: Severity::Medium,
            consecutive: 2,
        },
        source: Some(
            "COPD: drops against the patient's own baseline precede most exacerbations \
             (7-day rolling SPC limits, clinical-defaults §5.2); 4 points below the 7-day \
             median on 2 readings"
                .into(),
        ),
        origin: None,
    }
}

fn glucose_low() -> Rule {
    threshold(
        "glucose-low",
        "Hypoglycaemia",
        vec![
            band(
                Severity::Critical,
                vec![Condition {
                    below: Some(54.0),
                    ..cond(Metric::Glucose)
                }],
                1,
                None,
            ),
            band(
                Severity::Medium,
                vec![Condition {
                    below: Some(70.0),
                    ..cond(Metric::Glucose)
                }],
                1,
                None,
            ),
        ],
        "ADA Standards: level 2 hypoglycaemia <54 mg/dL (3.0 mmol/L), level 1 <70 mg/dL \
         (3.9 mmol/L) (clinical-defaults §5.1)",
    )
}

fn glucose_high() -> Rule {
    threshold(
        "glucose-high",
        "Hyperglycaemia",
        vec![
            band(
                Severity::High,
                vec![Condition {
                    at_least: Some(350.0),
                    ..cond(Metric::Glucose)
                }],
                1,
                None,
            ),
            band(
                Severity::Medium,
                vec![Condition {
                    above: Some(250.0),
                    ..cond(Metric::Glucose)
                }],
                2,
                Some(36 * 60),
            ),
        ],
        "ADA level 2 hyperglycaemia >250 mg/dL (13.9 mmol/L) on 2 readings; ≥350 urgent \
         call-back (clinical-defaults §5.1, §5.3)",
    )
}

fn adherence(kind: ReadingKind) -> Rule {
    Rule {
        id: format!("missed-{}", kind.as_str()),
        title: format!("Missed {} measurement", kind.as_str()),
        check: Check::Adherence {
            kind,
            severity: Severity::Low,
        },
        source: Some(
            "Expected reading missing past its interval plus grace → nurse task \
             (clinical-defaults §5.3, 'No data')"
                .into(),
        ),
        origin: None,
    }
}

fn device_rules() -> Vec<Rule> {
    vec![
        Rule {
            id: "offline".into(),
            title: "Device offline".into(),
            check: Check::DeviceOffline {
                after_hours: 30.0,
                severity: Severity::Low,
            },
            source: Some("clinical-defaults §5.3 'Technical'".into()),
            origin: None,
        },
        Rule {
            id: "battery".into(),
            title: "Device battery low".into(),
            check: Check::LowBattery {
                below_pct: 15,
                severity: Severity::Low,
            },
            source: Some("clinical-defaults §5.3 'Technical'".into()),
            origin: None,
        },
        Rule {
            id: "clock".into(),
            title: "Device clock not set or wrong".into(),
            check: Check::Clock {
                severity: Severity::Low,
            },
            source: Some("clinical-defaults §5.3 'Technical: clock not set'".into()),
            origin: None,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_valid_and_round_trip() {
        for name in TEMPLATE_NAMES {
            let plan = template(name).unwrap();
            assert_eq!(plan.problems(), Vec::<String>::new(), "{name}");
            let json = serde_json::to_string(&plan).unwrap();
            assert_eq!(CarePlan::from_json(&json).unwrap(), plan, "{name}");
        }
        assert!(template("nope").is_none());
    }

    #[test]
    fn plans_compose_from_every_condition() {
        let conditions = |c: &[&str]| c.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let ids = |p: &CarePlan| p.rules.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        // Hypertension + diabetes: both templates' rules, both schedules.
        let p = for_conditions(&conditions(&["hypertension", "diabetes"]));
        for id in [
            "bp-high",
            "bp-home-average",
            "missed-bp",
            "glucose-low",
            "glucose-high",
            "missed-glucose",
            "spo2-low",
        ] {
            assert!(ids(&p).contains(&id.to_owned()), "{id} in {:?}", ids(&p));
        }
        assert_eq!(p.schedule.len(), 2);
        assert!(p.problems().is_empty(), "{:?}", p.problems());
        // COPD's SpO2 (scale 2) wins over heart failure's and general's (scale 1), whatever
        // the order the conditions were enrolled in; the net follows with its reason.
        for order in [["heart_failure", "copd"], ["copd", "heart_failure"]] {
            let p = for_conditions(&conditions(&order));
            let spo2: Vec<&Rule> = p.rules.iter().filter(|r| r.id == "spo2-low").collect();
            assert_eq!(spo2.len(), 1);
            assert_eq!(spo2[0].origin.as_deref(), Some("template:copd"));
            assert_eq!(p.safety_net.spo2_scale, 2);
            assert!(p.safety_net.reason.is_some());
            // Heart failure still brings its BP schedule and its own rules.
            assert!(
                p.schedule
                    .iter()
                    .any(|e| e.kind == ReadingKind::BloodPressure)
            );
            assert!(ids(&p).contains(&"missed-bp".to_owned()));
        }
        // No listed condition: the general template.
        let p = for_conditions(&conditions(&["ckd"]));
        assert!(
            p.rules
                .iter()
                .all(|r| r.origin.as_deref() == Some("template:general"))
        );
        assert_eq!(
            template_label(&conditions(&["diabetes", "hypertension"])),
            "diabetes+hypertension"
        );
        assert_eq!(template_label(&[]), "general");
    }

    #[test]
    fn problems_are_reported() {
        let mut plan = template("hypertension").unwrap();
        plan.rules.push(plan.rules[0].clone());
        if let Check::Threshold { bands, .. } = &mut plan.rules[0].check {
            bands[0].any[0].at_least = Some(1800.0);
            bands[1].consecutive = 0;
        }
        plan.rules[1].id = "device-x".into();
        plan.schedule.clear();
        let problems = plan.problems().join("\n");
        for expected in [
            "duplicate id",
            "1800 is outside",
            "consecutive must be",
            "reserved",
            "needs it in the schedule",
        ] {
            assert!(problems.contains(expected), "{expected} in {problems}");
        }
        assert!(CarePlan::from_json("{\"rules\": [], \"extra\": 1}").is_err());
    }

    #[test]
    fn glucose_in_mmol_is_normalised() {
        let plan = CarePlan::from_json(
            r#"{"rules":[{"id":"g","title":"low","type":"threshold","bands":[
                {"severity":"critical","any":[{"metric":"glucose","below":3.0,"unit":"mmol/L"}]}]}]}"#,
        )
        .unwrap();
        assert!(plan.problems().is_empty(), "{:?}", plan.problems());
        let plan = plan.normalized();
        let Check::Threshold { bands, .. } = &plan.rules[0].check else {
            panic!("threshold")
        };
        assert_eq!(bands[0].any[0].below, Some(54.0));
        assert_eq!(bands[0].any[0].unit.as_deref(), Some("mg/dL"));
        // 3.0 mmol/L written as mg/dL is a typo the validation catches.
        let typo = CarePlan::from_json(
            r#"{"rules":[{"id":"g","title":"low","type":"threshold","bands":[
                {"severity":"critical","any":[{"metric":"glucose","below":3.0}]}]}]}"#,
        )
        .unwrap();
        assert!(typo.problems().join(" ").contains("wrong unit"));
    }
}
