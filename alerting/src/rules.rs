//! Rule evaluation, pure: a reading, the patient's recent readings and a care plan in; what
//! should happen to the patient's alerts out. No IO, no clock: the engine supplies both.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{Hash, Hasher};

use store::{NewReading, ReadingKind, Severity};
use time::{Duration, OffsetDateTime};

use protocol::limits::ClockState;
use protocol::reading::{MeasurementStatus, sensor};

use super::plan::{Band, CarePlan, Check, Condition, Direction, Metric};

mod at;
mod sums;
pub use at::At;
use sums::Sums;

/// Whether a reading may raise a clinical alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    /// Patient data the device vouches for.
    Good,
    /// The device flagged it questionable (status or sensor bits): it may ask for a repeat
    /// but raises no clinical alert and does not count towards persistence.
    Questionable,
    /// Never evaluated clinically: invalid, test or demo data, calibration, control solution.
    Excluded,
}

/// The values of one reading, canonical units.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Values {
    pub systolic: Option<f64>,
    pub diastolic: Option<f64>,
    pub mean_arterial: Option<f64>,
    pub pulse: Option<f64>,
    pub spo2: Option<f64>,
    pub perfusion_index: Option<f64>,
    pub glucose: Option<f64>,
}

impl Values {
    pub fn get(&self, m: Metric) -> Option<f64> {
        match m {
            Metric::Systolic => self.systolic,
            Metric::Diastolic => self.diastolic,
            Metric::MeanArterial => self.mean_arterial,
            Metric::Pulse => self.pulse,
            Metric::Spo2 => self.spo2,
            Metric::PerfusionIndex => self.perfusion_index,
            Metric::Glucose => self.glucose,
        }
    }
}

/// One reading as the engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Obs {
    pub device_id: String,
    pub seq: i64,
    pub kind: ReadingKind,
    /// When it was measured, as far as we can tell: the device time, or the receive time
    /// when the device clock is unset or implausible.
    pub at: At,
    pub received_at: At,
    pub values: Values,
    pub quality: Quality,
    /// The device clock was unset or implausible.
    pub clock_bad: bool,
}

fn f(v: Option<f32>) -> Option<f64> {
    v.map(f64::from)
}

/// Sensor bits that make a reading questionable (movement, cuff fit, poor signal, …).
const BP_QUESTIONABLE: u32 =
    sensor::BP_BODY_MOVEMENT | sensor::BP_CUFF_TOO_LOOSE | sensor::BP_IMPROPER_POSITION;
const PLX_QUESTIONABLE: u32 = sensor::PLX_SIGNAL_IRREGULARITY
    | sensor::PLX_INADEQUATE_SIGNAL
    | sensor::PLX_POOR_SIGNAL
    | sensor::PLX_LOW_PERFUSION
    | sensor::PLX_ERRATIC_SIGNAL
    | sensor::PLX_NON_PULSATILE
    | sensor::PLX_QUESTIONABLE_PULSE
    | sensor::PLX_SENSOR_INTERFERENCE
    | sensor::PLX_SENSOR_DISPLACED;
const PLX_EXCLUDED: u32 = sensor::PLX_EQUIPMENT_MALFUNCTION
    | sensor::PLX_SENSOR_UNCONNECTED
    | sensor::PLX_UNKNOWN_SENSOR
    | sensor::PLX_SENSOR_MALFUNCTION
    | sensor::PLX_SENSOR_DISCONNECTED;
const GLU_EXCLUDED: u32 = sensor::GLU_SENSOR_MALFUNCTION
    | sensor::GLU_SAMPLE_SIZE_INSUFFICIENT
    | sensor::GLU_STRIP_INSERTION_ERROR
    | sensor::GLU_STRIP_TYPE_INCORRECT;

/// How much a reading can be trusted clinically.
pub fn quality(
    kind: ReadingKind,
    status: i32,
    sensor_bits: i64,
    glucose_sample: Option<&str>,
) -> Quality {
    let status = MeasurementStatus(u16::try_from(status & 0xFFFF).unwrap_or(0));
    let bits = u32::try_from(sensor_bits & 0xFFFF_FFFF).unwrap_or(0);
    if status.has(MeasurementStatus::INVALID)
        || status.has(MeasurementStatus::TEST_DATA)
        || status.has(MeasurementStatus::DEMO_DATA)
        || status.has(MeasurementStatus::CALIBRATION_ONGOING)
        || status.has(MeasurementStatus::NOT_AVAILABLE)
        || status.has(MeasurementStatus::MSMT_ONGOING)
        // As stored by the ingest: the wire name of the sample type.
        || glucose_sample == Some(protocol::SampleType::ControlSolution.as_str())
    {
        return Quality::Excluded;
    }
    let (questionable, excluded) = match kind {
        ReadingKind::BloodPressure => (BP_QUESTIONABLE, 0),
        ReadingKind::Spo2 => (PLX_QUESTIONABLE, PLX_EXCLUDED),
        ReadingKind::Glucose => (0, GLU_EXCLUDED),
    };
    if bits & excluded != 0 {
        Quality::Excluded
    } else if status.has(MeasurementStatus::QUESTIONABLE) || bits & questionable != 0 {
        Quality::Questionable
    } else {
        Quality::Good
    }
}

impl Obs {
    /// From a reading (just committed, or read back from the store).
    pub fn from_new(r: &NewReading) -> Obs {
        let clock_bad = clock_bad(r.measured_at, r.received_at, r.clock_unset);
        Obs {
            device_id: r.device_id.clone(),
            seq: r.seq,
            kind: r.kind,
            at: At::from(if clock_bad {
                r.received_at
            } else {
                r.measured_at
            }),
            received_at: At::from(r.received_at),
            values: Values {
                systolic: f(r.systolic),
                diastolic: f(r.diastolic),
                mean_arterial: f(r.mean_arterial),
                pulse: f(r.pulse),
                spo2: f(r.spo2),
                perfusion_index: f(r.perfusion_index),
                glucose: f(r.glucose_mg_dl),
            },
            quality: quality(r.kind, r.status, r.sensor, r.glucose_sample.as_deref()),
            clock_bad,
        }
    }

    fn same(&self, other: &Obs) -> bool {
        self.seq == other.seq && self.device_id == other.device_id
    }

    /// A hash of what [`Obs::same`] compares.
    fn key(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        (self.device_id.as_str(), self.seq).hash(&mut h);
        h.finish()
    }
}

/// A patient's recent readings of every kind, kept sorted by time (a window read from the
/// store by (time, seq), later readings of an equal time after it), so each rule reads
/// only its own look-back, backwards from the reading evaluated, instead of the whole window
/// (a continuous glucose monitor alone puts some 4,000 readings in 15 days).
#[derive(Debug, Clone, Default)]
pub struct Window {
    obs: Vec<Obs>,
    /// Readings before this index have left the window; they are dropped in bulk.
    start: usize,
    /// How many readings have been dropped from the front of `obs` in all.
    dropped: u64,
    /// The running sums of the trends and averages evaluated on this window.
    running: sums::Running,
    /// How many readings of each (device, seq) hash `obs` holds (the dropped prefix aside). A
    /// reading whose hash is not here is not in the window, so the duplicate check scans the
    /// readings around its time only on a hit: a dense window (a continuous monitor, a
    /// benchmark's hundreds of readings a second) holds a thousand readings within the check's
    /// slack. (By seq alone, a patient's devices counting alike hit nearly every time.)
    keys: HashMap<u64, u32>,
}

/// A reading read back from the store may carry its times rounded to the store's precision:
/// the duplicate check looks this far either side.
const SAME_READING_SLACK: Duration = Duration::seconds(2);

fn order(a: &Obs, b: &Obs) -> std::cmp::Ordering {
    a.at.cmp(&b.at).then(a.seq.cmp(&b.seq))
}

impl Window {
    /// A window of readings in any order.
    pub fn new(mut obs: Vec<Obs>) -> Window {
        obs.sort_by(order);
        let mut keys = HashMap::with_capacity(obs.len());
        for o in &obs {
            *keys.entry(o.key()).or_insert(0) += 1;
        }
        Window {
            obs,
            keys,
            ..Window::default()
        }
    }

    /// The readings in the window, oldest first: what [`evaluate`] takes.
    pub fn readings(&self) -> &[Obs] {
        &self.obs[self.start..]
    }

    /// Adds a reading unless it is already there (same device and seq), or older than `span`
    /// before the newest. Readings of equal time keep their arrival order.
    pub fn insert(&mut self, o: &Obs, span: Duration) {
        let live = &self.obs[self.start..];
        if live.last().is_some_and(|newest| o.at < newest.at - span) {
            return;
        }
        let key = o.key();
        if self.keys.contains_key(&key) {
            let lo = live.partition_point(|w| w.at < o.at - SAME_READING_SLACK);
            let hi = live.partition_point(|w| w.at <= o.at + SAME_READING_SLACK);
            if live[lo..hi].iter().any(|w| w.same(o)) {
                return;
            }
        }
        // After every reading of its time: two devices measuring in the same instant append
        // rather than land mid-window (which restarts the running sums).
        let at = self.start + live.partition_point(|w| w.at <= o.at);
        if at != self.obs.len() {
            // The readings after it move up one: the running sums follow them (and take it in
            // where it lands inside what they sum) rather than start afresh over the window.
            self.running.inserted(self.dropped + at as u64, o);
        }
        self.obs.insert(at, o.clone());
        *self.keys.entry(key).or_insert(0) += 1;
    }

    /// [`evaluate`]s `current` on this window: from the running sums of its trends and averages
    /// when `current` is in the window where [`Window::insert`] puts it (after every reading of
    /// its time: the newest, for readings in time order, or just before the newest, for
    /// another device's batch a moment behind), else afresh.
    pub fn evaluate(&mut self, plan: &CarePlan, current: &Obs) -> Vec<Effect> {
        let live = &self.obs[self.start..];
        let end = live.partition_point(|w| w.at <= current.at);
        if end == 0 || live[end - 1] != *current {
            return evaluate_with(plan, live, current, &mut sums::Scan);
        }
        let mut sums = sums::Live {
            running: &mut self.running,
            positions: sums::Positions {
                all: &self.obs,
                dropped: self.dropped,
                start: self.start,
            },
            current: end - 1,
        };
        evaluate_with(plan, live, current, &mut sums)
    }

    /// Lets go of readings older than `span` before the newest.
    pub fn trim(&mut self, span: Duration) {
        let Some(newest) = self.obs.last().map(|o| o.at) else {
            return;
        };
        let cut = newest - span;
        self.start += self.obs[self.start..].partition_point(|w| w.at < cut);
        // In bulk, once the dead prefix outweighs the live part: amortised O(1) per reading.
        if self.start >= 64 && self.start * 2 >= self.obs.len() {
            for o in self.obs.drain(..self.start) {
                if let Entry::Occupied(mut n) = self.keys.entry(o.key()) {
                    *n.get_mut() -= 1;
                    if *n.get() == 0 {
                        n.remove();
                    }
                }
            }
            self.dropped += self.start as u64;
            self.start = 0;
        }
    }
}

/// What evaluating one reading asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Open or update the (patient, rule) alert.
    Trigger {
        rule_id: String,
        rule_kind: &'static str,
        title: String,
        severity: Severity,
        metric: Metric,
        value: Option<f64>,
        higher_is_worse: bool,
        /// The readings behind it (the run, oldest first) as (device, seq, at, value).
        readings: Vec<(String, i64, OffsetDateTime, Option<f64>)>,
    },
    /// The rule's condition no longer holds.
    Clear { rule_id: String },
    /// Ask the device that measured `current` to measure its kind again in `in_minutes`: the
    /// reading fell in a band (or was questionable) and a repeat confirms or downgrades it.
    Repeat {
        device_id: String,
        kind: ReadingKind,
        in_minutes: u32,
    },
}

/// How long after a reading to ask for its repeat: a BP or SpO2 after five minutes' rest
/// (ESH: repeat after 1-2 min seated; NEWS2/BTS: re-check after rest), a glucose after 15
/// minutes (the "rule of 15" after treating a low).
pub fn repeat_after_minutes(kind: ReadingKind) -> u32 {
    match kind {
        ReadingKind::BloodPressure | ReadingKind::Spo2 => 5,
        ReadingKind::Glucose => 15,
    }
}

/// The rule id of the "questionable reading, please repeat" request.
pub const REPEAT_RULE: &str = "quality-repeat";

/// Evaluates `current` (already in `window`, or not) against every reading rule of `plan`.
/// `window` holds the patient's recent readings of every kind, sorted by time as
/// [`Window::readings`] gives them.
pub fn evaluate(plan: &CarePlan, window: &[Obs], current: &Obs) -> Vec<Effect> {
    evaluate_with(plan, window, current, &mut sums::Scan)
}

/// [`evaluate`], the trends' baselines and the averages' periods summed by `sums`.
fn evaluate_with(
    plan: &CarePlan,
    window: &[Obs],
    current: &Obs,
    sums: &mut impl Sums,
) -> Vec<Effect> {
    debug_assert!(window.is_sorted_by(|a, b| a.at <= b.at));
    let mut out = Vec::new();
    if current.quality == Quality::Excluded {
        return out;
    }
    let mut repeat = false;
    for (index, rule) in plan.rules.iter().enumerate() {
        match &rule.check {
            Check::Threshold { bands, hysteresis } => {
                let metrics: Vec<Metric> = bands
                    .iter()
                    .flat_map(|b| b.any.iter().map(|c| c.metric))
                    .collect();
                if !metrics.iter().any(|m| m.kinds().contains(&current.kind))
                    || !metrics.iter().any(|m| current.values.get(*m).is_some())
                {
                    continue;
                }
                let mut ordered: Vec<&Band> = bands.iter().collect();
                ordered.sort_by_key(|b| std::cmp::Reverse(b.severity));
                let in_any = ordered
                    .iter()
                    .any(|b| b.severity >= Severity::Medium && band_holds(b, current));
                repeat |= in_any;
                if current.quality == Quality::Questionable {
                    if ordered.iter().any(|b| band_holds(b, current)) {
                        out.push(Effect::Trigger {
                            rule_id: REPEAT_RULE.into(),
                            rule_kind: "quality",
                            title: "Questionable measurement: repeat requested".into(),
                            // Info: listed, never escalated (the alert-quality run found 43 of 44 unmatched).
                            severity: Severity::Info,
                            metric: metrics[0],
                            value: metrics.iter().find_map(|m| current.values.get(*m)),
                            higher_is_worse: true,
                            readings: vec![run_entry(current, metrics[0])],
                        });
                    }
                    continue;
                }
                // The longest run any band needs is all this rule reads.
                let longest = bands.iter().map(|b| b.consecutive.max(1) as usize).max();
                let (history, _) = eligible(
                    window,
                    current,
                    |o| metrics.iter().any(|m| m.kinds().contains(&o.kind)),
                    |found, _| found + 1 >= longest.unwrap_or(1),
                );
                let mut triggered = false;
                for (i, band) in ordered.iter().enumerate() {
                    let n = band.consecutive.max(1) as usize;
                    if history.len() < n {
                        continue;
                    }
                    let run = &history[history.len() - n..];
                    let in_band = |o: &Obs| ordered[..=i].iter().any(|b| band_holds(b, o));
                    let within = band
                        .within_minutes
                        .is_none_or(|w| current.at - run[0].at <= Duration::minutes(i64::from(w)));
                    if within && run.iter().all(|o| in_band(o)) {
                        let cond = band
                            .any
                            .iter()
                            .find(|c| current.values.get(c.metric).is_some_and(|v| c.holds(v)))
                            .or_else(|| band.any.first());
                        let metric = cond.map_or(metrics[0], |c| c.metric);
                        out.push(Effect::Trigger {
                            rule_id: rule.id.clone(),
                            rule_kind: "threshold",
                            title: rule.title.clone(),
                            severity: band.severity,
                            metric,
                            value: current.values.get(metric),
                            higher_is_worse: cond.is_none_or(Condition::higher_is_worse),
                            readings: run.iter().map(|o| run_entry(o, metric)).collect(),
                        });
                        triggered = true;
                        break;
                    }
                }
                if !triggered {
                    let near = ordered.iter().any(|b| {
                        b.any.iter().any(|c| {
                            let h = hysteresis.unwrap_or_else(|| c.metric.hysteresis());
                            current
                                .values
                                .get(c.metric)
                                .is_some_and(|v| c.holds_widened(v, h))
                        })
                    });
                    if !near {
                        out.push(Effect::Clear {
                            rule_id: rule.id.clone(),
                        });
                    }
                }
            }
            Check::Trend {
                metric,
                direction,
                delta,
                baseline_days,
                min_baseline,
                severity,
                consecutive,
            } => {
                if !metric.kinds().contains(&current.kind)
                    || current.values.get(*metric).is_none()
                    || current.quality != Quality::Good
                {
                    continue;
                }
                let n = (*consecutive).max(1) as usize;
                let since = current.at - Duration::days(i64::from(*baseline_days));
                // The run, then the baseline: the days before the run, from `since`.
                let (run, oldest) = eligible(
                    window,
                    current,
                    |o| metric.kinds().contains(&o.kind) && o.values.get(*metric).is_some(),
                    |found, _| found + 1 >= n,
                );
                if run.len() < n {
                    continue;
                }
                let from = window.partition_point(|o| o.at < since);
                let baseline = sums.baseline(index, window, *metric, (from, oldest), current);
                if baseline.len < *min_baseline as usize {
                    continue;
                }
                let median = baseline.median;
                let off = |v: f64| match direction {
                    Direction::Drop => median - v,
                    Direction::Rise => v - median,
                };
                let holds = |o: &Obs| o.values.get(*metric).is_some_and(|v| off(v) >= *delta);
                if run.iter().all(|o| holds(o)) {
                    out.push(Effect::Trigger {
                        rule_id: rule.id.clone(),
                        rule_kind: "trend",
                        title: rule.title.clone(),
                        severity: *severity,
                        metric: *metric,
                        value: current.values.get(*metric),
                        higher_is_worse: *direction == Direction::Rise,
                        readings: run.iter().map(|o| run_entry(o, *metric)).collect(),
                    });
                } else if current
                    .values
                    .get(*metric)
                    .is_some_and(|v| off(v) < *delta - metric.hysteresis())
                {
                    out.push(Effect::Clear {
                        rule_id: rule.id.clone(),
                    });
                }
            }
            Check::Average {
                any,
                days,
                min_readings,
                min_days,
                severity,
            } => {
                if current.quality != Quality::Good
                    || !any.iter().any(|c| {
                        c.metric.kinds().contains(&current.kind)
                            && current.values.get(c.metric).is_some()
                    })
                {
                    continue;
                }
                let since = current.at - Duration::days(i64::from(*days));
                let kinds = sums::Kinds::of(any.iter().map(|c| c.metric));
                let from = window.partition_point(|o| o.at <= since);
                let end = window.partition_point(|o| o.at <= current.at);
                let period = sums.period(index, window, kinds, (from, end), current, since);
                if period.len < *min_readings as usize || period.days < *min_days as usize {
                    continue;
                }
                let mean = |m: Metric| period.mean(m);
                let holding = any
                    .iter()
                    .find(|c| mean(c.metric).is_some_and(|v| c.holds(v)));
                if let Some(c) = holding {
                    let m = c.metric;
                    out.push(Effect::Trigger {
                        rule_id: rule.id.clone(),
                        rule_kind: "average",
                        title: rule.title.clone(),
                        severity: *severity,
                        metric: m,
                        value: mean(m).map(|v| (v * 10.0).round() / 10.0),
                        higher_is_worse: c.higher_is_worse(),
                        readings: evidence(window, current, kinds, since)
                            .iter()
                            .map(|o| run_entry(o, m))
                            .collect(),
                    });
                } else if any.iter().all(|c| {
                    mean(c.metric).is_none_or(|v| !c.holds_widened(v, c.metric.hysteresis() * 0.6))
                }) {
                    out.push(Effect::Clear {
                        rule_id: rule.id.clone(),
                    });
                }
            }
            Check::Adherence { .. }
            | Check::DeviceOffline { .. }
            | Check::LowBattery { .. }
            | Check::Clock { .. } => {}
        }
    }
    if repeat {
        out.push(Effect::Repeat {
            device_id: current.device_id.clone(),
            kind: current.kind,
            in_minutes: repeat_after_minutes(current.kind),
        });
    }
    out
}

/// Whether a reading falls in a band (any condition holds).
pub fn band_holds(band: &Band, o: &Obs) -> bool {
    band.any.iter().any(|c| {
        c.metric.kinds().contains(&o.kind) && o.values.get(c.metric).is_some_and(|v| c.holds(v))
    })
}

/// The good readings up to and including `current` that `keep` accepts, oldest first
/// (`current` last, counted once), read backwards from `current`'s place in the sorted
/// `window` and stopping as soon as `enough(found, next)`: `found` readings before `current`
/// are taken, and `next` is the next older one (so a rule pays for its look-back only).
/// Also returns the index in `window` of the oldest one taken before `current`, or of
/// `current`'s place if none was.
fn eligible<'a>(
    window: &'a [Obs],
    current: &'a Obs,
    keep: impl Fn(&Obs) -> bool,
    enough: impl Fn(usize, &Obs) -> bool,
) -> (Vec<&'a Obs>, usize) {
    let end = window.partition_point(|o| o.at <= current.at);
    let mut oldest = end;
    let mut out: Vec<&Obs> = Vec::new();
    for (i, o) in window[..end].iter().enumerate().rev() {
        if enough(out.len(), o) {
            break;
        }
        if o.quality == Quality::Good && !o.same(current) && keep(o) {
            out.push(o);
            oldest = i;
        }
    }
    out.reverse();
    out.push(current);
    (out, oldest)
}

/// The readings an average's alert links as its evidence: its period's newest, at most
/// [`AVERAGE_EVIDENCE`] (a home-BP week is 28; a monitor streaming all week is thousands).
fn evidence<'a>(
    window: &'a [Obs],
    current: &'a Obs,
    kinds: sums::Kinds,
    since: At,
) -> Vec<&'a Obs> {
    let (mut period, _) = eligible(
        window,
        current,
        |o| kinds.has(o.kind),
        |found, next| found + 1 >= AVERAGE_EVIDENCE || next.at <= since,
    );
    period.retain(|o| o.at > since);
    period
}

/// The most readings an average's alert links (see [`evidence`]).
pub const AVERAGE_EVIDENCE: usize = 64;

/// Whether the device time cannot stand for the measurement time (unset or implausible, by
/// the one shared rule, `ClockState::assess`).
fn clock_bad(measured: OffsetDateTime, received: OffsetDateTime, unset: bool) -> bool {
    let ms = |t: OffsetDateTime| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let state = ClockState::assess(ms(measured), ms(received), unset);
    state.is_implausible() || state == ClockState::Unset
}

fn run_entry(o: &Obs, metric: Metric) -> (String, i64, OffsetDateTime, Option<f64>) {
    (
        o.device_id.clone(),
        o.seq,
        o.at.to_datetime(),
        o.values.get(metric),
    )
}

#[cfg(test)]
mod tests {
    use super::super::plan::template;
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-01-10 08:00 UTC);

    fn obs(seq: i64, minutes: i64, kind: ReadingKind, values: Values) -> Obs {
        Obs {
            device_id: "d".into(),
            seq,
            kind,
            at: At::from(T0 + Duration::minutes(minutes)),
            received_at: At::from(T0 + Duration::minutes(minutes)),
            values,
            quality: Quality::Good,
            clock_bad: false,
        }
    }

    fn bp(seq: i64, minutes: i64, sys: f64, dia: f64) -> Obs {
        obs(
            seq,
            minutes,
            ReadingKind::BloodPressure,
            Values {
                systolic: Some(sys),
                diastolic: Some(dia),
                pulse: Some(70.0),
                ..Values::default()
            },
        )
    }

    fn spo2(seq: i64, minutes: i64, v: f64) -> Obs {
        obs(
            seq,
            minutes,
            ReadingKind::Spo2,
            Values {
                spo2: Some(v),
                pulse: Some(72.0),
                ..Values::default()
            },
        )
    }

    /// Draws below `n`, reproducibly (xorshift64 from `seed`).
    fn draws(mut state: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        }
    }

    fn triggers(effects: &[Effect]) -> Vec<(String, Severity)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Trigger {
                    rule_id, severity, ..
                } => Some((rule_id.clone(), *severity)),
                _ => None,
            })
            .collect()
    }

    fn clears(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Clear { rule_id } => Some(rule_id.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn crisis_is_high_then_critical_on_repeat() {
        let plan = template("hypertension").unwrap();
        let first = bp(1, 0, 192.0, 112.0);
        assert_eq!(
            triggers(&evaluate(&plan, &[], &first)),
            [("bp-high".to_owned(), Severity::High)]
        );
        let second = bp(2, 5, 188.0, 108.0);
        let window = vec![first.clone()];
        let effects = evaluate(&plan, &window, &second);
        assert_eq!(
            triggers(&effects),
            [("bp-high".to_owned(), Severity::Critical)]
        );
        let Effect::Trigger { readings, .. } = &effects[0] else {
            panic!()
        };
        assert_eq!(readings.len(), 2);
        // A repeat an hour later is no confirmation: high again.
        let late = bp(3, 90, 185.0, 100.0);
        assert_eq!(
            triggers(&evaluate(&plan, std::slice::from_ref(&first), &late)),
            [("bp-high".to_owned(), Severity::High)]
        );
    }

    #[test]
    fn copd_baseline_raises_nothing_and_persistence_needs_two() {
        let plan = template("copd").unwrap();
        let window: Vec<Obs> = (0..10).map(|i| spo2(i, i * 600, 89.0)).collect();
        let at_baseline = spo2(10, 6000, 89.0);
        assert!(triggers(&evaluate(&plan, &window, &at_baseline)).is_empty());
        let mut w = window.clone();
        w.push(at_baseline);
        // One spurious low: nothing. Two in a row: an alert.
        let low1 = spo2(11, 6010, 82.0);
        assert!(triggers(&evaluate(&plan, &w, &low1)).is_empty());
        w.push(low1);
        let low2 = spo2(12, 6015, 83.0);
        let t = triggers(&evaluate(&plan, &w, &low2));
        assert!(
            t.contains(&("spo2-low".to_owned(), Severity::Critical)),
            "{t:?}"
        );
        // Back to baseline clears the condition.
        w.push(low2);
        let back = spo2(13, 6100, 90.0);
        assert!(clears(&evaluate(&plan, &w, &back)).contains(&"spo2-low".to_owned()));
    }

    #[test]
    fn hysteresis_keeps_the_condition_near_the_threshold() {
        let plan = template("hypertension").unwrap();
        let near = bp(5, 0, 177.0, 90.0); // within 5 mmHg of 180: neither trigger nor clear
        let effects = evaluate(&plan, &[], &near);
        assert!(!clears(&effects).contains(&"bp-high".to_owned()));
        let far = bp(6, 0, 150.0, 90.0);
        assert!(clears(&evaluate(&plan, &[], &far)).contains(&"bp-high".to_owned()));
    }

    #[test]
    fn suppressed_readings_raise_nothing_or_ask_for_a_repeat() {
        let plan = template("diabetes").unwrap();
        let glucose = |seq, v, sample: &str, status| {
            let mut o = obs(
                seq,
                0,
                ReadingKind::Glucose,
                Values {
                    glucose: Some(v),
                    ..Values::default()
                },
            );
            o.quality = quality(ReadingKind::Glucose, status, 0, Some(sample));
            o
        };
        // The sample type as the ingest stores it (`SampleType::as_str`).
        assert!(evaluate(&plan, &[], &glucose(1, 40.0, "control_solution", 0)).is_empty());
        assert!(
            evaluate(
                &plan,
                &[],
                &glucose(2, 40.0, "capillary_whole_blood", 0x0800)
            )
            .is_empty()
        );
        let q = evaluate(
            &plan,
            &[],
            &glucose(3, 40.0, "capillary_whole_blood", 0x4000),
        );
        assert_eq!(triggers(&q), [(REPEAT_RULE.to_owned(), Severity::Info)]);
        let real = evaluate(&plan, &[], &glucose(4, 40.0, "capillary_whole_blood", 0));
        assert_eq!(
            triggers(&real),
            [("glucose-low".to_owned(), Severity::Critical)]
        );
    }

    fn glucose(seq: i64, minutes: i64, v: f64) -> Obs {
        obs(
            seq,
            minutes,
            ReadingKind::Glucose,
            Values {
                glucose: Some(v),
                ..Values::default()
            },
        )
    }

    fn effective_for(conditions: &[&str]) -> CarePlan {
        let c: Vec<String> = conditions.iter().map(|s| (*s).to_owned()).collect();
        super::super::net::effective(&super::super::plan::for_conditions(&c).normalized())
    }

    fn worst(effects: &[Effect]) -> Option<Severity> {
        triggers(effects).into_iter().map(|(_, s)| s).max()
    }

    #[test]
    fn the_net_judges_every_kind_for_every_patient() {
        // (conditions, reading, expected worst severity on that single reading)
        let cases: Vec<(&[&str], Obs, Option<Severity>)> = vec![
            (&[], spo2(1, 0, 84.0), Some(Severity::Critical)),
            (
                &["heart_failure"],
                spo2(1, 0, 84.0),
                Some(Severity::Critical),
            ),
            (
                &["hypertension"],
                spo2(1, 0, 89.0),
                Some(Severity::Critical),
            ),
            (&["copd"], spo2(1, 0, 80.0), Some(Severity::Critical)),
            (&["copd"], spo2(1, 0, 89.0), None),
            (&["copd", "heart_failure"], spo2(1, 0, 89.0), None),
            (
                &["hypertension"],
                glucose(1, 0, 45.0),
                Some(Severity::Critical),
            ),
            (
                &["hypertension", "diabetes"],
                glucose(1, 0, 45.0),
                Some(Severity::Critical),
            ),
            (&["copd"], glucose(1, 0, 65.0), Some(Severity::High)),
            (&[], glucose(1, 0, 260.0), Some(Severity::Medium)),
            (&["diabetes"], glucose(1, 0, 380.0), Some(Severity::High)),
            (&["diabetes"], glucose(1, 0, 140.0), None),
            (
                &["diabetes"],
                bp(1, 0, 200.0, 120.0),
                Some(Severity::Critical),
            ),
            (&["copd"], bp(1, 0, 86.0, 50.0), Some(Severity::Critical)),
            (&["hypertension"], bp(1, 0, 165.0, 102.0), None),
            (&["hypertension"], bp(1, 0, 142.0, 91.0), None),
        ];
        for (conditions, reading, expected) in cases {
            let plan = effective_for(conditions);
            let effects = evaluate(&plan, &[], &reading);
            assert_eq!(
                worst(&effects),
                expected,
                "{conditions:?} {:?}: {effects:?}",
                reading.values
            );
            // Every reading in a band asks for a repeat (a grade 2 BP too: it needs the next
            // readings to persist); a quiet one does not.
            let repeat = effects.iter().any(|e| matches!(e, Effect::Repeat { .. }));
            let in_band = reading.values.systolic == Some(165.0);
            assert_eq!(
                repeat,
                expected.is_some() || in_band,
                "{conditions:?} {:?}",
                reading.values
            );
        }
        // Pulse from either device.
        let mut fast = spo2(1, 0, 97.0);
        fast.values.pulse = Some(140.0);
        assert_eq!(
            worst(&evaluate(&effective_for(&["diabetes"]), &[], &fast)),
            Some(Severity::Critical)
        );
    }

    #[test]
    fn home_average_needs_days_of_readings() {
        let plan = effective_for(&["hypertension"]);
        let average = |effects: &[Effect]| {
            triggers(effects)
                .into_iter()
                .any(|(id, s)| id == "bp-home-average" && s == Severity::Low)
        };
        // Two readings a day at 142/88 for six days, then one more.
        let window: Vec<Obs> = (0..12).map(|i| bp(i, i * 12 * 60, 142.0, 88.0)).collect();
        let next = bp(12, 12 * 12 * 60, 140.0, 86.0);
        assert!(average(&evaluate(&plan, &window, &next)));
        // Too few readings: no verdict.
        assert!(!average(&evaluate(&plan, &window[..5], &next)));
        // Controlled: the condition clears.
        let fine: Vec<Obs> = (0..12).map(|i| bp(i, i * 12 * 60, 124.0, 78.0)).collect();
        assert!(
            clears(&evaluate(&plan, &fine, &bp(12, 144 * 60, 122.0, 76.0)))
                .contains(&"bp-home-average".to_owned())
        );
    }

    #[test]
    fn trend_against_baseline() {
        let plan = template("copd").unwrap();
        let window: Vec<Obs> = (0..8).map(|i| spo2(i, i * 24 * 60, 95.0)).collect();
        let d1 = spo2(20, 8 * 24 * 60, 90.0);
        assert!(
            triggers(&evaluate(&plan, &window, &d1)).is_empty(),
            "one reading is not a trend"
        );
        let mut w = window.clone();
        w.push(d1);
        let d2 = spo2(21, 8 * 24 * 60 + 60, 90.0);
        assert!(
            triggers(&evaluate(&plan, &w, &d2))
                .contains(&("spo2-trend".to_owned(), Severity::Medium))
        );
    }

    #[test]
    fn the_window_stays_sorted_without_duplicates_and_trims_its_past() {
        let span = Duration::days(15);
        let mut w = Window::default();
        for (seq, minutes) in [(1, 30), (2, 10), (3, 20), (4, 20), (5, 0)] {
            w.insert(&spo2(seq, minutes, 95.0), span);
        }
        let order: Vec<i64> = w.readings().iter().map(|o| o.seq).collect();
        assert_eq!(order, [5, 2, 3, 4, 1]);
        // The same reading read back from the store, its time rounded: not added twice.
        let mut again = spo2(3, 20, 95.0);
        again.at += Duration::nanoseconds(700);
        w.insert(&again, span);
        assert_eq!(w.readings().len(), 5);
        // Another device's seq 3 is another reading.
        let mut other = spo2(3, 20, 95.0);
        other.device_id = "e".into();
        w.insert(&other, span);
        assert_eq!(w.readings().len(), 6);
        // Fifteen days later the first ones leave, and an older arrival is not kept.
        w.insert(&spo2(6, 15 * 24 * 60 + 25, 95.0), span);
        w.trim(span);
        let left: Vec<i64> = w.readings().iter().map(|o| o.seq).collect();
        assert_eq!(left, [1, 6]);
        w.insert(&spo2(7, 5, 95.0), span);
        assert_eq!(w.readings().len(), 2);
        // Dropping in bulk keeps the live part intact.
        let mut big = Window::default();
        for seq in 0..1000 {
            big.insert(&spo2(seq, seq * 60, 95.0), Duration::hours(100));
            big.trim(Duration::hours(100));
        }
        assert_eq!(big.readings().len(), 101);
        assert_eq!(big.readings()[0].seq, 899);
        assert!(big.obs.len() < 400);
        // The keys counted are the readings held, dropped ones gone; a live one is still
        // found when it comes again.
        let counted: u32 = big.keys.values().sum();
        assert_eq!(counted as usize, big.obs.len());
        assert!(!big.keys.contains_key(&spo2(0, 0, 95.0).key()));
        big.insert(&spo2(950, 950 * 60, 95.0), Duration::hours(100));
        assert_eq!(big.readings().len(), 101);
    }

    /// The look-back of every rule kind, read backwards and stopped early, takes exactly what
    /// the whole-window scan took: random windows of mixed kinds, qualities, equal times.
    #[test]
    fn bounded_look_backs_match_the_whole_window() {
        let whole = |window: &[Obs], current: &Obs| -> Vec<(String, i64)> {
            let mut out: Vec<&Obs> = window
                .iter()
                .filter(|o| o.quality == Quality::Good && !o.same(current) && o.at <= current.at)
                .filter(|o| o.kind == ReadingKind::Glucose)
                .collect();
            out.sort_by(|a, b| order(a, b));
            out.push(current);
            out.iter().map(|o| (o.device_id.clone(), o.seq)).collect()
        };
        let ids = |v: Vec<&Obs>| -> Vec<(String, i64)> {
            v.iter().map(|o| (o.device_id.clone(), o.seq)).collect()
        };
        let mut next = draws(0x2545_f491_4f6c_dd1d);
        for _ in 0..200 {
            let mut obs = Vec::new();
            for seq in 0..(next(300) as i64 + 1) {
                let minutes = next(20 * 24 * 60) as i64 / 30 * 30;
                let mut o = if next(3) == 0 {
                    spo2(seq, minutes, 95.0)
                } else {
                    glucose(seq, minutes, 100.0)
                };
                if next(5) == 0 {
                    o.quality = Quality::Questionable;
                }
                if next(4) == 0 {
                    o.device_id = "e".into();
                }
                obs.push(o);
            }
            let window = Window::new(obs.clone());
            let current = obs[next(obs.len() as u64) as usize].clone();
            let full = whole(window.readings(), &current);
            let glucose_only = |o: &Obs| o.kind == ReadingKind::Glucose;
            // Threshold: the last n.
            let n = next(6) as usize + 1;
            let got = ids(eligible(window.readings(), &current, glucose_only, |f, _| f + 1 >= n).0);
            assert_eq!(got, full[full.len().saturating_sub(n.max(1))..]);
            // Trend: everything since the baseline start, and at least the last n.
            let since = current.at - Duration::days(next(10) as i64);
            let got = ids(eligible(window.readings(), &current, glucose_only, |f, o| {
                f + 1 >= n && o.at < since
            })
            .0);
            let in_baseline = |id: &(String, i64)| {
                let o = obs
                    .iter()
                    .find(|o| (o.device_id.clone(), o.seq) == *id)
                    .unwrap();
                o.at >= since
            };
            let expected_len = full
                .iter()
                .rev()
                .enumerate()
                .take_while(|(i, id)| *i < n || in_baseline(id))
                .count();
            assert_eq!(got, full[full.len() - expected_len..]);
            // Average: strictly after `since`.
            let got = ids(eligible(window.readings(), &current, glucose_only, |_, o| {
                o.at <= since
            })
            .0);
            let after: Vec<(String, i64)> = full
                .iter()
                .filter(|id| {
                    *id == full.last().unwrap() || {
                        let o = obs
                            .iter()
                            .find(|o| (o.device_id.clone(), o.seq) == **id)
                            .unwrap();
                        o.at > since
                    }
                })
                .cloned()
                .collect();
            assert_eq!(got, after);
        }
    }

    /// The running sums give what a fresh scan gives, effect for effect: random streams of
    /// every kind (mostly in time order, some late, some repeated, equal times, questionable
    /// and excluded readings, days without readings) through the window's trims and drops,
    /// against every condition's plan and trends and averages of odd shapes (one reading, a
    /// metric of two kinds, look-backs longer than the window).
    #[test]
    fn running_sums_match_a_fresh_scan() {
        use super::super::plan::Rule;
        let mut plan = effective_for(&["hypertension", "copd", "diabetes", "heart_failure"]);
        let rule = |id: &str, check: Check| Rule {
            id: id.into(),
            title: id.into(),
            check,
            source: None,
            origin: None,
        };
        for (i, (metric, n, days)) in [
            (Metric::Pulse, 1, 1),
            (Metric::Glucose, 2, 20),
            (Metric::Spo2, 1, 3),
        ]
        .into_iter()
        .enumerate()
        {
            plan.rules.push(rule(
                &format!("trend-{i}"),
                Check::Trend {
                    metric,
                    direction: if i % 2 == 0 {
                        Direction::Rise
                    } else {
                        Direction::Drop
                    },
                    delta: 4.0,
                    baseline_days: days,
                    min_baseline: 2,
                    severity: Severity::Low,
                    consecutive: n,
                },
            ));
            plan.rules.push(rule(
                &format!("average-{i}"),
                Check::Average {
                    any: vec![Condition {
                        metric,
                        at_least: Some(if metric == Metric::Glucose {
                            150.0
                        } else {
                            90.0
                        }),
                        ..Condition::default()
                    }],
                    days,
                    min_readings: 1,
                    min_days: 1,
                    severity: Severity::Low,
                },
            ));
        }
        let mut next = draws(0x9e37_79b9_7f4a_7c15);
        let (mut live, mut behind, mut trends, mut averages) = (0, 0, 0, 0);
        let span = Duration::days(15);
        for _ in 0..3 {
            let mut w = Window::default();
            let mut sent: Vec<Obs> = Vec::new();
            let mut minutes = 0i64;
            for seq in 0..1500i64 {
                let o = if next(25) == 0 && !sent.is_empty() {
                    sent[next(sent.len() as u64) as usize].clone()
                } else {
                    minutes += [0, 1, 7, 60, 600, 3000][next(6) as usize];
                    let at = if next(12) == 0 {
                        minutes - next(20 * 24 * 60) as i64
                    } else if next(6) == 0 {
                        // Another device's batch a moment behind: it lands just before the
                        // newest, inside the running sums' spans.
                        minutes - next(15) as i64
                    } else {
                        minutes
                    };
                    // Tenths, as an f32 (what a device sends) widened to f64.
                    let mut v =
                        |lo: u64, span: u64| f64::from((lo * 10 + next(span * 10)) as f32 / 10.0);
                    let (a, b, c, d) = (v(100, 80), v(60, 45), v(85, 15), v(50, 250));
                    let pulse = v(50, 60);
                    let mut o = match next(3) {
                        0 => bp(seq, at, a, b),
                        1 => spo2(seq, at, c),
                        _ => glucose(seq, at, d),
                    };
                    o.values.pulse = Some(pulse);
                    o.quality = match next(10) {
                        0 => Quality::Questionable,
                        1 => Quality::Excluded,
                        _ => Quality::Good,
                    };
                    if next(3) == 0 {
                        o.device_id = "e".into();
                    }
                    o
                };
                sent.push(o.clone());
                w.insert(&o, span);
                w.trim(span);
                live += usize::from(w.readings().last() == Some(&o));
                let r = w.readings();
                let end = r.partition_point(|x| x.at <= o.at);
                behind += usize::from(end > 0 && end < r.len() && r[end - 1] == o);
                let fresh = evaluate(&plan, w.readings(), &o);
                let running = w.evaluate(&plan, &o);
                assert_eq!(
                    running,
                    fresh,
                    "reading {seq} at minute {}",
                    o.at - At::from(T0)
                );
                for e in &running {
                    if let Effect::Trigger { rule_kind, .. } = e {
                        trends += usize::from(*rule_kind == "trend");
                        averages += usize::from(*rule_kind == "average");
                    }
                }
            }
        }
        // Not a vacuous pass: the running sums answered most readings, some of them landing
        // before the newest, and both kinds of rule fired.
        assert!(live > 3_000, "{live}");
        assert!(behind > 100, "{behind}");
        assert!(trends > 50 && averages > 50, "{trends} {averages}");
    }

    #[test]
    fn the_median_by_selection_is_the_sorted_median() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for n in 0..60 {
            let mut values: Vec<f64> = (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % 50) as f64
                })
                .collect();
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            let expected = match n {
                0 => f64::NAN,
                n if n % 2 == 1 => sorted[n / 2],
                n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
            };
            let got = sums::median(&mut values);
            assert!(
                got == expected || (got.is_nan() && expected.is_nan()),
                "n {n}"
            );
        }
    }
}
