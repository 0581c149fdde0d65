//! The safety net: guideline bands under every care plan, for every patient and every
//! reading kind, that no template and no physician's plan can remove.
//!
//! | rule | critical (one reading) | high (one reading) | medium |
//! | --- | --- | --- | --- |
//! | `spo2-low`, NEWS2 scale 1 | SpO2 ≤ 91 % (scores 3) | | ≤ 93 % (scores 2) on 2 readings within 60 min |
//! | `spo2-low`, NEWS2 scale 2 | SpO2 ≤ 83 % (scores 3) | ≤ 85 % (scores 2; urgent on scale 2, §5.3) | |
//! | `bp-high` | SBP ≥ 180 or DBP ≥ 110 (ESC/ESH grade 3) | | |
//! | `bp-low` | SBP ≤ 90 (NEWS2 scores 3) | | SBP ≤ 100 (scores 2) on 2 readings within 60 min |
//! | `pulse` | ≤ 40 or ≥ 131 /min (NEWS2 scores 3) | | ≥ 111 /min (scores 2) on 2 readings within 60 min |
//! | `glucose-low` | < 54 mg/dL (ADA level 2) | < 70 mg/dL (ADA level 1) | |
//! | `glucose-high` | ≥ 600 mg/dL (hyperosmolar range) | ≥ 350 mg/dL | > 250 mg/dL (ADA level 2 range) |
//!
//! A single reading in a critical or high band alerts at once: a patient who measures once a
//! day must not wait a day for a confirmation. For a cuff or an oximeter the engine marks such
//! an alert *unconfirmed* and asks the device for a repeat; the repeat confirms it or
//! downgrades it (see [`crate::engine`]). A meter's glucose is not marked: its retest after
//! treatment measures the treatment. Medium bands of BP, pulse and SpO2 need the repeat itself: a
//! moderately low SpO2 or a fast pulse is often a measurement artefact.
//!
//! How the net joins a plan ([`effective`]): a plan rule with the same id as a net rule keeps
//! its own bands and gains the net's (bands are checked most severe first, so whichever band
//! catches a value first decides); a net rule the plan lacks is added whole. A plan can
//! therefore make a band stricter (add its own) but never looser, except by an explicit
//! [`SafetyNet::widen`] entry with a reason, or by choosing NEWS2 SpO2 scale 2 with a reason
//! (hypercapnic respiratory failure: target 88–92 %). Both are shown in the plan.

use serde::{Deserialize, Serialize};
use store::Severity;

use super::{Band, CarePlan, Check, Condition, Metric, Rule, band, threshold};

/// A plan's choices about the safety net.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyNet {
    /// NEWS2 SpO2 scale: 1 (default, target 94–98 %) or 2 (hypercapnic respiratory failure,
    /// target 88–92 %; needs `reason`).
    #[serde(default = "scale_1")]
    pub spo2_scale: u8,
    /// Why scale 2 applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Net bands widened on purpose, each with its reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub widen: Vec<Widening>,
}

impl Default for SafetyNet {
    fn default() -> Self {
        SafetyNet {
            spo2_scale: 1,
            reason: None,
            widen: Vec::new(),
        }
    }
}

fn scale_1() -> u8 {
    1
}

impl SafetyNet {
    pub fn is_default(&self) -> bool {
        *self == SafetyNet::default()
    }

    /// Every problem (empty: valid).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self.spo2_scale {
            1 => {}
            2 if self.reason.as_deref().is_some_and(|r| !r.trim().is_empty()) => {}
            2 => out.push("safety_net: SpO2 scale 2 needs a reason".into()),
            s => out.push(format!("safety_net: spo2_scale must be 1 or 2, not {s}")),
        }
        let net = rules(&SafetyNet {
            widen: Vec::new(),
            ..self.clone()
        });
        for w in &self.widen {
            let what = format!("safety_net widen {} {}", w.rule, w.severity.as_str());
            if w.reason.trim().is_empty() {
                out.push(format!("{what}: a reason is required"));
            }
            let Some(cond) = net
                .iter()
                .filter(|r| r.id == w.rule)
                .find_map(|r| band_of(r, w.severity))
                .and_then(|b| b.any.iter().find(|c| c.metric == w.metric))
            else {
                out.push(format!(
                    "{what}: the safety net has no such band on {}",
                    w.metric.as_str()
                ));
                continue;
            };
            let wider = if cond.higher_is_worse() {
                cond.at_least.or(cond.above).is_some_and(|t| w.limit > t)
            } else {
                cond.at_most.or(cond.below).is_some_and(|t| w.limit < t)
            };
            if !wider || !w.limit.is_finite() {
                out.push(format!(
                    "{what}: {} does not widen the band (to tighten it, add a band to the plan's own rule)",
                    w.limit
                ));
            }
        }
        out
    }
}

/// A net band moved on purpose: the band of `severity` of net rule `rule` catches `metric`
/// only beyond `limit` (same direction and strictness as the net's own bound).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Widening {
    pub rule: String,
    pub severity: Severity,
    pub metric: Metric,
    pub limit: f64,
    pub reason: String,
}

/// Where a rule of an effective plan comes from.
pub const ORIGIN_NET: &str = "safety-net";
/// A rule of the plan that the net also speaks for.
pub const ORIGIN_PLAN_AND_NET: &str = "plan+safety-net";
/// A rule written in the plan (a physician's, or a stored template's).
pub const ORIGIN_PLAN: &str = "plan";

fn band_of(rule: &Rule, severity: Severity) -> Option<&Band> {
    match &rule.check {
        Check::Threshold { bands, .. } => bands.iter().find(|b| b.severity == severity),
        _ => None,
    }
}

fn bound(metric: Metric, f: impl FnOnce(&mut Condition)) -> Condition {
    let mut c = Condition {
        metric,
        ..Condition::default()
    };
    f(&mut c);
    c
}

fn at_most(metric: Metric, v: f64) -> Condition {
    bound(metric, |c| c.at_most = Some(v))
}
fn at_least(metric: Metric, v: f64) -> Condition {
    bound(metric, |c| c.at_least = Some(v))
}
fn below(metric: Metric, v: f64) -> Condition {
    bound(metric, |c| c.below = Some(v))
}
fn above(metric: Metric, v: f64) -> Condition {
    bound(metric, |c| c.above = Some(v))
}

/// A band one reading decides.
fn single(severity: Severity, any: Vec<Condition>) -> Band {
    band(severity, any, 1, None)
}

/// A band a repeat within the hour must confirm.
fn repeated(severity: Severity, any: Vec<Condition>) -> Band {
    band(severity, any, 2, Some(60))
}

fn rule(id: &str, title: &str, bands: Vec<Band>, source: &str) -> Rule {
    Rule {
        origin: Some(ORIGIN_NET.into()),
        ..threshold(id, title, bands, source)
    }
}

/// The net's rules for these choices (widenings applied).
pub fn rules(net: &SafetyNet) -> Vec<Rule> {
    use Metric::*;
    use Severity::*;
    let spo2 = if net.spo2_scale == 2 {
        rule(
            "spo2-low",
            "SpO2 low (safety net, NEWS2 scale 2)",
            vec![
                single(Critical, vec![at_most(Spo2, 83.0)]),
                single(High, vec![at_most(Spo2, 85.0)]),
            ],
            "NEWS2 SpO2 scale 2 (hypercapnic respiratory failure, target 88-92 %): ≤83 % \
             scores 3, 84-85 % scores 2, urgent on scale 2 (RCP 2017; clinical-defaults \
             §5.1, §5.3)",
        )
    } else {
        rule(
            "spo2-low",
            "SpO2 low (safety net)",
            vec![
                single(Critical, vec![at_most(Spo2, 91.0)]),
                repeated(Medium, vec![at_most(Spo2, 93.0)]),
            ],
            "NEWS2 SpO2 scale 1: ≤91 % scores 3, 92-93 % scores 2 (RCP 2017; \
             clinical-defaults §5.1)",
        )
    };
    let mut out = vec![
        spo2,
        rule(
            "bp-high",
            "Blood pressure very high (safety net)",
            vec![single(
                Critical,
                vec![at_least(Systolic, 180.0), at_least(Diastolic, 110.0)],
            )],
            "ESC/ESH grade 3 hypertension ≥180 and/or ≥110 mmHg: exclude an emergency at once \
             (clinical-defaults §5.1)",
        ),
        rule(
            "bp-low",
            "Blood pressure low (safety net)",
            vec![
                single(Critical, vec![at_most(Systolic, 90.0)]),
                repeated(Medium, vec![at_most(Systolic, 100.0)]),
            ],
            "NEWS2 systolic ≤90 mmHg scores 3, 91-100 scores 2 (RCP 2017; clinical-defaults \
             §5.1)",
        ),
        rule(
            "pulse",
            "Heart rate out of range (safety net)",
            vec![
                single(Critical, vec![at_most(Pulse, 40.0), at_least(Pulse, 131.0)]),
                repeated(Medium, vec![at_least(Pulse, 111.0)]),
            ],
            "NEWS2 pulse ≤40 or ≥131 /min scores 3, 111-130 scores 2 (RCP 2017; \
             clinical-defaults §5.1)",
        ),
        rule(
            "glucose-low",
            "Hypoglycaemia (safety net)",
            vec![
                single(Critical, vec![below(Glucose, 54.0)]),
                single(High, vec![below(Glucose, 70.0)]),
            ],
            "ADA Standards of Care: level 2 hypoglycaemia <54 mg/dL (3.0 mmol/L), level 1 \
             <70 mg/dL (3.9 mmol/L) (clinical-defaults §5.1)",
        ),
        rule(
            "glucose-high",
            "Hyperglycaemia (safety net)",
            vec![
                single(Critical, vec![at_least(Glucose, 600.0)]),
                single(High, vec![at_least(Glucose, 350.0)]),
                single(Medium, vec![above(Glucose, 250.0)]),
            ],
            "ADA: >250 mg/dL (13.9 mmol/L) is level 2 hyperglycaemia; ≥350 urgent call-back; \
             >600 the range of the hyperosmolar state (clinical-defaults §5.1, §5.3)",
        ),
    ];
    for w in &net.widen {
        for r in out.iter_mut().filter(|r| r.id == w.rule) {
            if let Check::Threshold { bands, .. } = &mut r.check {
                for b in bands.iter_mut().filter(|b| b.severity == w.severity) {
                    for c in b.any.iter_mut().filter(|c| c.metric == w.metric) {
                        for t in [&mut c.at_least, &mut c.above, &mut c.at_most, &mut c.below] {
                            if t.is_some() {
                                *t = Some(w.limit);
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// The plan the engine runs: `plan` with the safety net joined in, every rule labelled with
/// where it comes from (`origin`).
pub fn effective(plan: &CarePlan) -> CarePlan {
    let mut out = plan.clone();
    for r in &mut out.rules {
        if r.origin.is_none() {
            r.origin = Some(ORIGIN_PLAN.into());
        }
    }
    for net_rule in rules(&plan.safety_net) {
        match out.rules.iter_mut().find(|r| r.id == net_rule.id) {
            Some(own) => match (&mut own.check, net_rule.check) {
                (Check::Threshold { bands, .. }, Check::Threshold { bands: net, .. }) => {
                    bands.extend(net);
                    let from = own.origin.take().unwrap_or_else(|| ORIGIN_PLAN.into());
                    own.origin = Some(if from == ORIGIN_PLAN {
                        ORIGIN_PLAN_AND_NET.into()
                    } else {
                        format!("{from}+{ORIGIN_NET}")
                    });
                    if let (Some(a), Some(b)) = (&own.source, &net_rule.source) {
                        own.source = Some(format!("{a}; safety net: {b}"));
                    }
                }
                // The plan used the id for another kind of rule: keep both.
                (_, check) => out.rules.push(Rule {
                    id: format!("net-{}", net_rule.id),
                    check,
                    ..net_rule
                }),
            },
            None => out.rules.push(net_rule),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_is_valid_and_widening_is_checked() {
        assert!(SafetyNet::default().problems().is_empty());
        let mut net = SafetyNet {
            spo2_scale: 2,
            ..SafetyNet::default()
        };
        assert!(net.problems().join(" ").contains("needs a reason"));
        net.reason = Some("hypercapnic COPD".into());
        assert!(net.problems().is_empty());
        net.widen.push(Widening {
            rule: "bp-low".into(),
            severity: Severity::Critical,
            metric: Metric::Systolic,
            limit: 85.0,
            reason: "HF on sacubitril, usual SBP 88-95".into(),
        });
        assert!(net.problems().is_empty(), "{:?}", net.problems());
        net.widen[0].limit = 95.0;
        assert!(net.problems().join(" ").contains("does not widen"));
        net.widen[0].limit = 85.0;
        net.widen[0].reason = " ".into();
        assert!(net.problems().join(" ").contains("reason is required"));
        net.widen[0].reason = "x".into();
        net.widen[0].metric = Metric::Glucose;
        assert!(net.problems().join(" ").contains("no such band"));
    }

    #[test]
    fn widening_moves_only_its_band() {
        let net = SafetyNet {
            widen: vec![Widening {
                rule: "bp-low".into(),
                severity: Severity::Critical,
                metric: Metric::Systolic,
                limit: 85.0,
                reason: "usual SBP 88-95".into(),
            }],
            ..SafetyNet::default()
        };
        let rules = rules(&net);
        let low = rules.iter().find(|r| r.id == "bp-low").unwrap();
        assert_eq!(
            band_of(low, Severity::Critical).unwrap().any[0].at_most,
            Some(85.0)
        );
        assert_eq!(
            band_of(low, Severity::Medium).unwrap().any[0].at_most,
            Some(100.0)
        );
    }
}
