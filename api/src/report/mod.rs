//! The telemonitoring report of one patient over a period, for the GP, the specialist and the
//! FSE: trends per vital sign against the thresholds of the care plan in force, adherence
//! (measurements expected by the plan's schedule vs taken), the alerts with their outcomes
//! and interventions, and the plan versions in force.
//!
//! - [`Report::gather`] reads it from the store (one patient, one period; nothing stored);
//! - [`pdf::render`] draws it as a PDF in Italian or English (`pdf-writer`, standard fonts);
//! - [`monthly`] writes every patient's report of the previous month to a folder, when
//!   configured;
//! - `crate::fhir::report` maps it to a FHIR `DiagnosticReport` (with the Observations it
//!   summarises as `result`) and a `DocumentReference` carrying the PDF.
//!
//! A period is whole UTC days: `from` and `to` are dates, both included.

pub mod monthly;
pub mod pdf;

use alerting::plan::{self, CarePlan, Check, Metric};
use serde::Serialize;
use store::{Alert, CarePlanRow, Intervention, Patient, ReadingKind, Severity, StoredReading};
use time::{Date, Duration, OffsetDateTime, Time};

/// At most this many readings go into one report (a year of four readings a day per kind).
pub const MAX_READINGS: i64 = 10_000;
/// The longest period one report covers.
pub const MAX_DAYS: i64 = 366;
/// The period when none is asked for: the last 30 days, today included.
pub const DEFAULT_DAYS: i64 = 30;

/// The report's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    It,
    En,
}

impl Lang {
    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "it" => Some(Lang::It),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lang::It => "it",
            Lang::En => "en",
        }
    }
}

/// The days a report covers, both included (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from: Date,
    pub to: Date,
}

impl Period {
    /// `from`..=`to`, refused when reversed or longer than [`MAX_DAYS`].
    pub fn new(from: Date, to: Date) -> Result<Period, String> {
        if from > to {
            return Err("from must not be after to".into());
        }
        if (to - from).whole_days() + 1 > MAX_DAYS {
            return Err(format!("a report covers at most {MAX_DAYS} days"));
        }
        Ok(Period { from, to })
    }

    /// The last [`DEFAULT_DAYS`] days up to `today`.
    pub fn last_days(today: Date) -> Period {
        Period {
            from: today - Duration::days(DEFAULT_DAYS - 1),
            to: today,
        }
    }

    /// The previous calendar month of `today` (for the monthly reports).
    pub fn previous_month(today: Date) -> Period {
        let first_this = today.replace_day(1).unwrap_or(today);
        let last_prev = first_this - Duration::days(1);
        Period {
            from: last_prev.replace_day(1).unwrap_or(last_prev),
            to: last_prev,
        }
    }

    /// The first instant of the period.
    pub fn start(self) -> OffsetDateTime {
        self.from.with_time(Time::MIDNIGHT).assume_utc()
    }

    /// The first instant after the period.
    pub fn end(self) -> OffsetDateTime {
        (self.to + Duration::days(1))
            .with_time(Time::MIDNIGHT)
            .assume_utc()
    }

    pub fn days(self) -> i64 {
        (self.to - self.from).whole_days() + 1
    }

    /// `tm-{patient}-{yyyymmdd}-{yyyymmdd}`: the FHIR id of the report of this period.
    pub fn fhir_id(self, patient_id: i64) -> String {
        format!(
            "tm-{patient_id}-{}-{}",
            compact(self.from),
            compact(self.to)
        )
    }

    /// The inverse of [`Period::fhir_id`].
    pub fn parse_fhir_id(id: &str) -> Option<(i64, Period)> {
        let rest = id.strip_prefix("tm-")?;
        let mut parts = rest.split('-');
        let patient = parts.next()?.parse().ok()?;
        let from = parse_compact(parts.next()?)?;
        let to = parse_compact(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some((patient, Period::new(from, to).ok()?))
    }
}

fn compact(d: Date) -> String {
    format!("{:04}{:02}{:02}", d.year(), u8::from(d.month()), d.day())
}

fn parse_compact(s: &str) -> Option<Date> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year = s[0..4].parse().ok()?;
    let month = time::Month::try_from(s[4..6].parse::<u8>().ok()?).ok()?;
    Date::from_calendar_date(year, month, s[6..8].parse().ok()?).ok()
}

/// A threshold line on a chart: a bound of a band of a threshold rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Threshold {
    pub metric: Metric,
    pub value: f64,
    pub severity: Severity,
    /// Whether values above (true) or below the line are out of range.
    pub upper: bool,
}

/// One chart: a reading kind, the metrics drawn, their points and the thresholds.
#[derive(Debug, Clone, Serialize)]
pub struct Trend {
    pub kind: ReadingKind,
    pub series: Vec<Series>,
    pub thresholds: Vec<Threshold>,
}

/// The values of one metric over the period.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub metric: Metric,
    /// (measurement time, value), oldest first.
    pub points: Vec<(OffsetDateTime, f64)>,
}

impl Series {
    /// (count, min, mean, max), or `None` without points.
    pub fn stats(&self) -> Option<(usize, f64, f64, f64)> {
        let n = self.points.len();
        if n == 0 {
            return None;
        }
        let (mut min, mut max, mut sum) = (f64::INFINITY, f64::NEG_INFINITY, 0.0);
        for &(_, v) in &self.points {
            min = min.min(v);
            max = max.max(v);
            sum += v;
        }
        Some((n, min, sum / n as f64, max))
    }
}

/// Measurements of one kind: expected by the plan's schedule over the period vs taken.
#[derive(Debug, Clone, Serialize)]
pub struct Adherence {
    pub kind: ReadingKind,
    pub every_hours: f64,
    pub expected: i64,
    pub taken: i64,
}

impl Adherence {
    /// Taken / expected, in percent (capped at 100), or `None` when nothing was expected.
    pub fn percent(&self) -> Option<f64> {
        (self.expected > 0).then(|| (self.taken as f64 / self.expected as f64 * 100.0).min(100.0))
    }
}

/// An alert of the period with what was done about it.
#[derive(Debug, Clone, Serialize)]
pub struct AlertLine {
    pub alert: Alert,
    pub interventions: Vec<Intervention>,
}

/// Everything one report shows.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub patient: Patient,
    pub cot_name: Option<String>,
    #[serde(skip)]
    pub period: Period,
    #[serde(with = "time::serde::rfc3339")]
    pub generated_at: OffsetDateTime,
    /// The plan whose thresholds the charts show (the one in force at the end of the period),
    /// `None` when the template for the patient's conditions applied.
    pub plan_version: Option<i64>,
    /// The template name, when no stored plan was in force.
    pub template: String,
    pub trends: Vec<Trend>,
    pub adherence: Vec<Adherence>,
    pub alerts: Vec<AlertLine>,
    /// The plan versions in force during the period, oldest first.
    pub plans: Vec<CarePlanRow>,
    /// The readings summarised (for the FHIR `result` references), oldest first.
    #[serde(skip)]
    pub readings: Vec<StoredReading>,
    /// Whether [`MAX_READINGS`] cut the readings short.
    pub truncated: bool,
}

impl Report {
    /// Reads the report of `patient` over `period` from the store.
    pub async fn gather(
        store: &store::Store,
        patient: &Patient,
        period: Period,
        now: OffsetDateTime,
    ) -> Result<Report, store::StoreError> {
        let (start, end) = (period.start(), period.end());
        let readings = store
            .readings(&store::ReadingQuery {
                patient_id: patient.id,
                from: Some(start),
                to: Some(end),
                kind: None,
                limit: MAX_READINGS,
            })
            .await?;
        let truncated = readings.len() as i64 >= MAX_READINGS;
        let versions = store.list_care_plans(patient.id).await?;
        // In force during the period: the newest created before its start, and every one
        // created within it.
        let mut plans: Vec<CarePlanRow> = Vec::new();
        let mut sorted = versions.clone();
        sorted.sort_by_key(|p| p.version);
        for p in &sorted {
            if p.created_at < start {
                plans.clear();
                plans.push(p.clone());
            } else if p.created_at < end {
                plans.push(p.clone());
            }
        }
        let in_force = plans.last().cloned();
        let (plan, plan_version) = match in_force.as_ref().and_then(|row| {
            CarePlan::from_json(&row.plan)
                .ok()
                .map(|p| (p, row.version))
        }) {
            Some((p, v)) => (p, Some(v)),
            None => (plan::for_conditions(&patient.conditions), None),
        };
        let plan = alerting::net::effective(&plan.normalized());
        let mut alerts = store
            .list_alerts(&store::AlertQuery {
                cot_ids: Some(vec![patient.cot_id]),
                patient_id: Some(patient.id),
                workflow: Vec::new(),
                limit: 1_000,
                ..Default::default()
            })
            .await?;
        alerts.retain(|a| a.opened_at < end && a.resolved_at.is_none_or(|r| r >= start));
        alerts.sort_by_key(|a| (a.opened_at, a.id));
        // What was done about the period's alerts, also after the period's end (as their
        // outcome is).
        let interventions = store.patient_interventions(patient.id, None, None).await?;
        let alerts = alerts
            .into_iter()
            .map(|alert| AlertLine {
                interventions: interventions
                    .iter()
                    .filter(|i| i.alert_id == alert.id)
                    .cloned()
                    .collect(),
                alert,
            })
            .collect();
        let cot_name = store
            .cots_by_ids(&[patient.cot_id])
            .await?
            .into_iter()
            .next()
            .map(|c| c.name);
        Ok(Report {
            trends: trends(&plan, &readings),
            adherence: adherence(&plan, &readings, period),
            patient: patient.clone(),
            cot_name,
            period,
            generated_at: now,
            plan_version,
            template: plan::template_label(&patient.conditions),
            alerts,
            plans,
            readings,
            truncated,
        })
    }
}

const CHARTS: [(ReadingKind, &[Metric]); 3] = [
    (
        ReadingKind::BloodPressure,
        &[Metric::Systolic, Metric::Diastolic],
    ),
    (ReadingKind::Spo2, &[Metric::Spo2]),
    (ReadingKind::Glucose, &[Metric::Glucose]),
];

fn value(r: &StoredReading, m: Metric) -> Option<f64> {
    let v = match m {
        Metric::Systolic => r.systolic,
        Metric::Diastolic => r.diastolic,
        Metric::MeanArterial => r.mean_arterial,
        Metric::Pulse => r.pulse,
        Metric::Spo2 => r.spo2,
        Metric::PerfusionIndex => r.perfusion_index,
        Metric::Glucose => r.glucose_mg_dl,
    };
    v.map(f64::from).filter(|v| v.is_finite())
}

/// The threshold lines of `plan` for `metrics`: one per (metric, bound), the most severe band
/// that uses it.
pub fn thresholds(plan: &CarePlan, metrics: &[Metric]) -> Vec<Threshold> {
    let mut out: Vec<Threshold> = Vec::new();
    for rule in &plan.rules {
        let Check::Threshold { bands, .. } = &rule.check else {
            continue;
        };
        for band in bands {
            for c in band.any.iter().filter(|c| metrics.contains(&c.metric)) {
                let bounds = [
                    (c.at_least, true),
                    (c.above, true),
                    (c.at_most, false),
                    (c.below, false),
                ];
                for (v, upper) in bounds {
                    let Some(value) = v else { continue };
                    match out
                        .iter_mut()
                        .find(|t| t.metric == c.metric && t.value == value && t.upper == upper)
                    {
                        Some(t) if t.severity < band.severity => t.severity = band.severity,
                        Some(_) => {}
                        None => out.push(Threshold {
                            metric: c.metric,
                            value,
                            severity: band.severity,
                            upper,
                        }),
                    }
                }
            }
        }
    }
    out
}

fn trends(plan: &CarePlan, readings: &[StoredReading]) -> Vec<Trend> {
    let scheduled = |k: ReadingKind| plan.schedule.iter().any(|e| e.kind == k);
    CHARTS
        .iter()
        .filter(|(kind, _)| scheduled(*kind) || readings.iter().any(|r| r.kind == *kind))
        .map(|&(kind, metrics)| Trend {
            kind,
            series: metrics
                .iter()
                .map(|&metric| Series {
                    metric,
                    points: readings
                        .iter()
                        .filter(|r| r.kind == kind)
                        .filter_map(|r| value(r, metric).map(|v| (r.measured_at, v)))
                        .collect(),
                })
                .collect(),
            thresholds: thresholds(plan, metrics),
        })
        .collect()
}

fn adherence(plan: &CarePlan, readings: &[StoredReading], period: Period) -> Vec<Adherence> {
    let hours = (period.days() * 24) as f64;
    plan.schedule
        .iter()
        .map(|e| Adherence {
            kind: e.kind,
            every_hours: e.every_hours,
            expected: (hours / e.every_hours).floor() as i64,
            taken: readings.iter().filter(|r| r.kind == e.kind).count() as i64,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn periods() {
        let p = Period::new(date!(2026 - 11 - 01), date!(2026 - 11 - 30)).unwrap();
        assert_eq!(p.days(), 30);
        assert_eq!(p.fhir_id(7), "tm-7-20261101-20261130");
        assert_eq!(
            Period::parse_fhir_id("tm-7-20261101-20261130"),
            Some((7, p))
        );
        for bad in [
            "tm-7-20261101",
            "tm-x-20261101-20261130",
            "tm-7-20261131-20261201",
            "tm-7-20261201-20261101",
            "tm-7-20261101-20261130-1",
        ] {
            assert_eq!(Period::parse_fhir_id(bad), None, "{bad}");
        }
        assert!(Period::new(date!(2025 - 01 - 01), date!(2026 - 01 - 02)).is_err());
        assert_eq!(
            Period::previous_month(date!(2026 - 03 - 15)),
            Period::new(date!(2026 - 02 - 01), date!(2026 - 02 - 28)).unwrap()
        );
        assert_eq!(
            Period::last_days(date!(2026 - 12 - 04)).from,
            date!(2026 - 11 - 05)
        );
        assert_eq!(p.end() - p.start(), Duration::days(30));
    }

    #[test]
    fn threshold_lines_keep_the_most_severe_band() {
        let plan = plan::template("hypertension").unwrap();
        let lines = thresholds(&plan, &[Metric::Systolic]);
        let at_180: Vec<_> = lines.iter().filter(|t| t.value == 180.0).collect();
        assert_eq!(at_180.len(), 1, "{lines:?}");
        assert!(at_180[0].upper);
        assert!(lines.iter().all(|t| t.metric == Metric::Systolic));
    }
}
