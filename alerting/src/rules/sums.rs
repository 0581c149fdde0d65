//! The look-backs a trend or an average sums up: a trend's baseline median, an average's
//! period (count, days, per-metric sums). [`Scan`] sums them afresh from the readings, as the
//! rules always did; [`Running`] keeps them per rule in the patient's [`super::Window`] and, as
//! readings arrive in time order, only adds what entered the look-back and removes what left
//! it. A reading then costs O(log n) instead of O(n) in the look-back: a continuous glucose
//! monitor, an oximeter sending every minute or a device in a burst put thousands of readings
//! in a 7-day look-back, and the scan of every one of them for every new reading made the
//! engine CPU-bound (7,900 readings/s with 10,000 readings per patient, where sparse patients
//! gave 58,000/s; BENCHMARKS.md).
//!
//! Both give the same answers: the same readings, and the same sums bit for bit. Every value
//! is an `f32` widened to `f64` (24 significant bits), so the sums of a look-back are exact in
//! `f64` whatever the order of adding and removing (`running_sums_match_a_fresh_scan`).

use std::collections::BTreeMap;

use store::ReadingKind;

use super::{At, Obs, Quality};
use crate::plan::Metric;

/// Every [`Metric`], for per-metric sums.
const METRICS: usize = Metric::ALL.len();

fn metric_index(m: Metric) -> usize {
    m as usize
}

/// A set of reading kinds, as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Kinds(u8);

impl Kinds {
    fn bit(kind: ReadingKind) -> u8 {
        match kind {
            ReadingKind::BloodPressure => 1,
            ReadingKind::Spo2 => 2,
            ReadingKind::Glucose => 4,
        }
    }

    /// The kinds that measure any of `metrics`.
    pub(super) fn of(metrics: impl IntoIterator<Item = Metric>) -> Kinds {
        Kinds(
            metrics
                .into_iter()
                .flat_map(|m| m.kinds().iter())
                .fold(0, |acc, k| acc | Kinds::bit(*k)),
        )
    }

    pub(super) fn has(self, kind: ReadingKind) -> bool {
        self.0 & Kinds::bit(kind) != 0
    }
}

/// A trend's baseline: how many values, and their median.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Baseline {
    pub(super) len: usize,
    pub(super) median: f64,
}

/// An average's period as a rule reads it: how many readings, on how many days (UTC), and per
/// metric the sum and count of the values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Summary {
    pub(super) len: usize,
    pub(super) days: usize,
    sums: [f64; METRICS],
    counts: [u32; METRICS],
}

impl Summary {
    /// The mean of `m` over the period's readings that carry it.
    pub(super) fn mean(&self, m: Metric) -> Option<f64> {
        let i = metric_index(m);
        (self.counts[i] > 0).then(|| self.sums[i] / f64::from(self.counts[i]))
    }
}

/// A period being summed: the summary's figures and the readings per day.
#[derive(Debug, Clone, Default)]
struct Period {
    len: usize,
    days: BTreeMap<i64, u32>,
    sums: [f64; METRICS],
    counts: [u32; METRICS],
}

impl Period {
    /// Adds `o` (`added`) or takes it away.
    fn count(&mut self, o: &Obs, added: bool) {
        let d = o.at.day();
        if added {
            self.len += 1;
            *self.days.entry(d).or_default() += 1;
        } else {
            self.len -= 1;
            if let Some(n) = self.days.get_mut(&d) {
                *n -= 1;
                if *n == 0 {
                    self.days.remove(&d);
                }
            }
        }
        for m in Metric::ALL {
            if let Some(v) = o.values.get(m) {
                let i = metric_index(m);
                if added {
                    self.sums[i] += v;
                    self.counts[i] += 1;
                } else {
                    self.sums[i] -= v;
                    self.counts[i] -= 1;
                }
            }
        }
    }

    fn summary(&self) -> Summary {
        Summary {
            len: self.len,
            days: self.days.len(),
            sums: self.sums,
            counts: self.counts,
        }
    }
}

/// Whether a reading counts in a trend's baseline of `metric`.
fn in_baseline(o: &Obs, metric: Metric) -> bool {
    o.quality == Quality::Good && metric.kinds().contains(&o.kind) && o.values.get(metric).is_some()
}

/// Whether a reading counts in an average's period over `kinds`.
fn in_period(o: &Obs, kinds: Kinds) -> bool {
    o.quality == Quality::Good && kinds.has(o.kind)
}

/// How a rule's look-back is summed. `window` is sorted (see [`super::Window::readings`]);
/// `rule` (the rule's index in its plan) only names a running sum.
pub(super) trait Sums {
    /// The good values of `metric` in `window[lo..hi]`, `current` left out.
    fn baseline(
        &mut self,
        rule: usize,
        window: &[Obs],
        metric: Metric,
        range: (usize, usize),
        current: &Obs,
    ) -> Baseline;

    /// The good readings of `kinds` in `window[lo..hi]` other than `current`, and `current`
    /// itself if it is after `since` (`lo` is the first reading after it).
    fn period(
        &mut self,
        rule: usize,
        window: &[Obs],
        kinds: Kinds,
        range: (usize, usize),
        current: &Obs,
        since: At,
    ) -> Summary;
}

/// Sums afresh from the readings.
pub(super) struct Scan;

impl Sums for Scan {
    fn baseline(
        &mut self,
        _rule: usize,
        window: &[Obs],
        metric: Metric,
        (lo, hi): (usize, usize),
        current: &Obs,
    ) -> Baseline {
        let mut values: Vec<f64> = window[lo..hi.max(lo)]
            .iter()
            .filter(|o| in_baseline(o, metric) && !o.same(current))
            .filter_map(|o| o.values.get(metric))
            .collect();
        Baseline {
            len: values.len(),
            median: median(&mut values),
        }
    }

    fn period(
        &mut self,
        _rule: usize,
        window: &[Obs],
        kinds: Kinds,
        (lo, hi): (usize, usize),
        current: &Obs,
        since: At,
    ) -> Summary {
        let mut period = Period::default();
        for o in &window[lo..hi.max(lo)] {
            if in_period(o, kinds) && !o.same(current) {
                period.count(o, true);
            }
        }
        if current.at > since {
            period.count(current, true);
        }
        period.summary()
    }
}

/// The median, by selection rather than a full sort (a baseline can hold thousands).
pub(super) fn median(values: &mut [f64]) -> f64 {
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    let (lower, upper, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    let upper = *upper;
    if n % 2 == 1 {
        upper
    } else {
        let below = lower
            .iter()
            .copied()
            .max_by(f64::total_cmp)
            .unwrap_or(upper);
        (below + upper) / 2.0
    }
}

/// Positions in a window that do not move when its past is dropped: a reading's index plus
/// every reading dropped before it.
type Span = (u64, u64);

/// A sum that readings step in and out of, for one filter (`Key`).
trait Step: Default {
    type Key: Copy + PartialEq;
    fn step(&mut self, key: Self::Key, o: &Obs, added: bool);
}

/// One rule's running sum: what it covers and the sum.
#[derive(Debug, Clone)]
struct RunningSum<T: Step> {
    rule: usize,
    key: T::Key,
    /// The absolute positions of the readings summed.
    covers: Span,
    sum: T,
}

/// A multiset of values that gives its median at once: the lower half (with the middle value
/// when the count is odd) and the upper half, each value counted by its `total_cmp` key, so a
/// value costs O(log d) in and out (d: distinct values; an oximeter has a few dozen).
#[derive(Debug, Clone, Default)]
struct Medians {
    lower: BTreeMap<i64, u32>,
    upper: BTreeMap<i64, u32>,
    lower_len: usize,
    upper_len: usize,
}

/// A key whose integer order is `f64::total_cmp`'s (the same bit trick); its own inverse.
fn key(v: f64) -> i64 {
    let bits = v.to_bits() as i64;
    bits ^ ((((bits >> 63) as u64) >> 1) as i64)
}

fn value(key_: i64) -> f64 {
    f64::from_bits((key_ ^ ((((key_ >> 63) as u64) >> 1) as i64)) as u64)
}

fn take_one(half: &mut BTreeMap<i64, u32>, k: i64) -> bool {
    match half.get_mut(&k) {
        Some(n) if *n > 1 => *n -= 1,
        Some(_) => {
            half.remove(&k);
        }
        None => return false,
    }
    true
}

impl Step for Medians {
    type Key = Metric;

    fn step(&mut self, metric: Metric, o: &Obs, added: bool) {
        if let Some(v) = o.values.get(metric).filter(|_| in_baseline(o, metric)) {
            if added {
                self.insert(v);
            } else {
                self.remove(v);
            }
        }
    }
}

impl Step for Period {
    type Key = Kinds;

    fn step(&mut self, kinds: Kinds, o: &Obs, added: bool) {
        if in_period(o, kinds) {
            self.count(o, added);
        }
    }
}

impl Medians {
    fn len(&self) -> usize {
        self.lower_len + self.upper_len
    }

    fn insert(&mut self, v: f64) {
        let k = key(v);
        if self.lower.last_key_value().is_none_or(|(top, _)| k <= *top) {
            *self.lower.entry(k).or_default() += 1;
            self.lower_len += 1;
        } else {
            *self.upper.entry(k).or_default() += 1;
            self.upper_len += 1;
        }
        self.balance();
    }

    fn remove(&mut self, v: f64) {
        let k = key(v);
        if self
            .lower
            .last_key_value()
            .is_some_and(|(top, _)| k <= *top)
        {
            if take_one(&mut self.lower, k) {
                self.lower_len -= 1;
            }
        } else if take_one(&mut self.upper, k) {
            self.upper_len -= 1;
        }
        self.balance();
    }

    /// Keeps `lower_len` equal to `upper_len` or one more.
    fn balance(&mut self) {
        while self.lower_len > self.upper_len + 1 {
            let (&k, _) = self.lower.last_key_value().expect("lower is not empty");
            take_one(&mut self.lower, k);
            *self.upper.entry(k).or_default() += 1;
            self.lower_len -= 1;
            self.upper_len += 1;
        }
        while self.upper_len > self.lower_len {
            let (&k, _) = self.upper.first_key_value().expect("upper is not empty");
            take_one(&mut self.upper, k);
            *self.lower.entry(k).or_default() += 1;
            self.upper_len -= 1;
            self.lower_len += 1;
        }
    }

    /// The median as [`median`] computes it (`NaN` when empty).
    fn median(&self) -> f64 {
        let Some((&below, _)) = self.lower.last_key_value() else {
            return f64::NAN;
        };
        if self.lower_len > self.upper_len {
            value(below)
        } else {
            let (&above, _) = self.upper.first_key_value().expect("halves are balanced");
            (value(below) + value(above)) / 2.0
        }
    }
}

/// The running sums of one window, one per rule that has asked.
#[derive(Debug, Clone, Default)]
pub(super) struct Running {
    baselines: Vec<RunningSum<Medians>>,
    periods: Vec<RunningSum<Period>>,
}

impl Running {
    /// `o` landed at absolute position `at`, before the window's newest: the readings from
    /// `at` on moved up one. A sum over readings all before `at` is unchanged; one over
    /// readings all from `at` on moves up one; one with `at` inside takes `o` in and grows by
    /// one. (Before, any reading landing mid-window restarted every sum: O(window) for the
    /// next reading, each time a patient's two devices' batches crossed.)
    pub(super) fn inserted(&mut self, at: u64, o: &Obs) {
        shift(&mut self.baselines, at, o);
        shift(&mut self.periods, at, o);
    }
}

fn shift<T: Step>(sums: &mut [RunningSum<T>], at: u64, o: &Obs) {
    for entry in sums {
        let (lo, hi) = entry.covers;
        if at <= lo {
            entry.covers = (lo + 1, hi + 1);
        } else if at < hi {
            entry.covers = (lo, hi + 1);
            entry.sum.step(entry.key, o, true);
        }
    }
}

/// The readings a [`Running`] sums over: every reading the window still holds (`all`, the
/// first at absolute position `dropped`) and the live ones from `start`.
#[derive(Clone, Copy)]
pub(super) struct Positions<'a> {
    pub(super) all: &'a [Obs],
    pub(super) dropped: u64,
    pub(super) start: usize,
}

impl Positions<'_> {
    /// The absolute span of `live[lo..hi]`.
    fn span(&self, (lo, hi): (usize, usize)) -> Span {
        let base = self.dropped + self.start as u64;
        (base + lo as u64, base + hi.max(lo) as u64)
    }

    fn at(&self, position: u64) -> &Obs {
        &self.all[(position - self.dropped) as usize]
    }

    /// Brings `rule`'s running sum in `sums` to cover `to`: steps in and out what differs at
    /// either end (a span moves on with each newer reading, and back a little for a reading
    /// landing before the newest); starts afresh when the spans do not overlap or a reading
    /// to step out has been dropped.
    fn update<'s, T: Step>(
        &self,
        sums: &'s mut Vec<RunningSum<T>>,
        rule: usize,
        key: T::Key,
        to: Span,
    ) -> &'s T {
        let i = match sums.iter().position(|e| e.rule == rule && e.key == key) {
            Some(i) => i,
            None => {
                sums.push(RunningSum {
                    rule,
                    key,
                    covers: (to.0, to.0),
                    sum: T::default(),
                });
                sums.len() - 1
            }
        };
        let entry = &mut sums[i];
        let from = entry.covers;
        if from.0 >= self.dropped && to.0 <= from.1 && from.0 <= to.1 {
            let (front, back) = (
                from.0.min(to.0)..from.0.max(to.0),
                from.1.min(to.1)..from.1.max(to.1),
            );
            for p in front {
                entry.sum.step(key, self.at(p), p < from.0);
            }
            for p in back {
                entry.sum.step(key, self.at(p), p >= from.1);
            }
        } else {
            entry.sum = T::default();
            for p in to.0..to.1 {
                entry.sum.step(key, self.at(p), true);
            }
        }
        entry.covers = to;
        &entry.sum
    }
}

/// [`Sums`] from a window's running sums, for a reading in the window (`current`, at this
/// index of the live readings, after every other reading of its time).
pub(super) struct Live<'a> {
    pub(super) running: &'a mut Running,
    pub(super) positions: Positions<'a>,
    pub(super) current: usize,
}

impl Sums for Live<'_> {
    fn baseline(
        &mut self,
        rule: usize,
        _window: &[Obs],
        metric: Metric,
        (lo, hi): (usize, usize),
        _current: &Obs,
    ) -> Baseline {
        // `current` is the last reading of its time: a span that reaches it ends there, so
        // it is left out.
        let to = self.positions.span((lo, hi.min(self.current)));
        let values = self
            .positions
            .update(&mut self.running.baselines, rule, metric, to);
        Baseline {
            len: values.len(),
            median: values.median(),
        }
    }

    fn period(
        &mut self,
        rule: usize,
        _window: &[Obs],
        kinds: Kinds,
        (lo, hi): (usize, usize),
        _current: &Obs,
        _since: At,
    ) -> Summary {
        // The period runs to `current`, the last reading of its time (`hi`), `current`
        // included exactly when it is after `since` (then `lo` is at or before it).
        let to = self.positions.span((lo, hi));
        self.positions
            .update(&mut self.running.periods, rule, kinds, to)
            .summary()
    }
}
