//! When virtual patients measure, in simulated time.
//!
//! Home telemonitoring is spot checks at fixed moments of the day: blood pressure morning and
//! evening, SpO2 three times a day, glucose four times a day for diabetics (fasting, after
//! lunch, before dinner, bedtime) and once a day otherwise. Each moment moves by up to a
//! quarter of an hour from day to day, deterministically per patient.
//!
//! A [`SimClock`] maps simulated wall-clock time onto real time with a compression factor:
//! at speed 1440 a simulated day passes in a real minute.

use protocol::{Kind, MealContext};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::physiology::{Condition, DAY_MS, mix};

/// Offset of the patients' local time from UTC, minutes (Italy, winter time).
pub const LOCAL_UTC_OFFSET_MIN: i64 = 60;

/// Largest shift of a slot from its nominal time, minutes (either way).
pub const JITTER_MIN: i64 = 15;

/// One daily measurement moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Nominal local time, minutes after midnight.
    pub minute_of_day: u32,
    /// Meal context the patient gives with a glucose reading at this moment.
    pub meal: Option<MealContext>,
}

/// The slot at `hour:minute` local time.
pub const fn slot(hour: u32, minute: u32, meal: Option<MealContext>) -> Slot {
    Slot {
        minute_of_day: hour * 60 + minute,
        meal,
    }
}

/// The daily measurement moments of `kind` for a patient with `conditions`, in time order.
pub fn daily_slots(kind: Kind, conditions: &[Condition]) -> Vec<Slot> {
    match kind {
        Kind::BloodPressure => vec![slot(7, 30, None), slot(20, 0, None)],
        Kind::Spo2 => vec![slot(8, 0, None), slot(14, 0, None), slot(21, 0, None)],
        Kind::Glucose if conditions.contains(&Condition::Diabetes) => vec![
            slot(7, 0, Some(MealContext::Fasting)),
            slot(14, 30, Some(MealContext::Postprandial)),
            slot(19, 30, Some(MealContext::Preprandial)),
            slot(22, 30, Some(MealContext::Bedtime)),
        ],
        Kind::Glucose => vec![slot(7, 15, Some(MealContext::Fasting))],
    }
}

/// The measurement plan of one device: its daily slots with per-day jitter.
#[derive(Debug, Clone)]
pub struct Schedule {
    slots: Vec<Slot>,
    seed: u64,
}

impl Schedule {
    /// The schedule of a `kind` device of a patient with `conditions`; `seed` fixes the jitter.
    pub fn new(kind: Kind, conditions: &[Condition], seed: u64) -> Self {
        Schedule {
            slots: daily_slots(kind, conditions),
            seed,
        }
    }

    /// A schedule of the given daily `slots` (in time order); `seed` fixes the jitter.
    pub fn with_slots(slots: Vec<Slot>, seed: u64) -> Self {
        Schedule { slots, seed }
    }

    /// The daily slots.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The first measurement strictly after `after_ms` (simulated UTC ms) and its slot.
    pub fn next_after(&self, after_ms: i64) -> Option<(i64, Slot)> {
        let offset_ms = LOCAL_UTC_OFFSET_MIN * 60_000;
        let local_day = (after_ms + offset_ms).div_euclid(DAY_MS);
        // Jitter never moves a slot across midnight, so the previous, current and next local
        // days are enough; two more keep this total even for an empty edge case.
        (local_day - 1..=local_day + 2)
            .flat_map(|day| {
                self.slots
                    .iter()
                    .enumerate()
                    .map(move |(i, s)| (self.at(day, i, s) - offset_ms, *s))
            })
            .find(|(t, _)| *t > after_ms)
    }

    /// Every measurement in `[from_ms, to_ms)`, in time order.
    pub fn between(&self, from_ms: i64, to_ms: i64) -> impl Iterator<Item = (i64, Slot)> + '_ {
        let mut cursor = from_ms - 1;
        std::iter::from_fn(move || {
            let (t, s) = self.next_after(cursor)?;
            cursor = t;
            (t < to_ms).then_some((t, s))
        })
    }

    /// Local time (ms since the local epoch) of slot `index` on local day `day`.
    fn at(&self, day: i64, index: usize, slot: &Slot) -> i64 {
        let mut rng = StdRng::seed_from_u64(mix(self.seed, (day as u64) << 8 | index as u64));
        let jitter_min = rng.gen_range(-JITTER_MIN..=JITTER_MIN);
        let second = rng.gen_range(0..60);
        day * DAY_MS + (i64::from(slot.minute_of_day) + jitter_min) * 60_000 + second * 1_000
    }
}

/// Simulated wall-clock time running `speed` times faster than real time.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    real_start: Instant,
    sim_start_ms: i64,
    speed: f64,
}

impl SimClock {
    /// A clock reading `sim_start_ms` now and advancing `speed` simulated ms per real ms.
    ///
    /// A speed that is not a positive finite number is taken as 1.
    pub fn new(sim_start_ms: i64, speed: f64) -> Self {
        let speed = if speed.is_finite() && speed > 0.0 {
            speed
        } else {
            1.0
        };
        SimClock {
            real_start: Instant::now(),
            sim_start_ms,
            speed,
        }
    }

    /// A clock starting at the real wall-clock time.
    pub fn starting_now(speed: f64) -> Self {
        SimClock::new(now_ms(), speed)
    }

    /// The compression factor.
    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// Simulated time when the clock started, ms since the Unix epoch.
    pub fn start_ms(&self) -> i64 {
        self.sim_start_ms
    }

    /// The simulated time now, ms since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        let real = self.real_start.elapsed().as_secs_f64() * 1_000.0;
        self.sim_start_ms + (real * self.speed) as i64
    }

    /// The real instant at which the simulated clock reads `sim_ms`.
    pub fn instant_at(&self, sim_ms: i64) -> Instant {
        let real_ms = (sim_ms - self.sim_start_ms) as f64 / self.speed;
        if real_ms <= 0.0 {
            return self.real_start;
        }
        self.real_start + std::time::Duration::from_secs_f64(real_ms / 1_000.0)
    }
}

/// The real wall-clock time, ms since the Unix epoch.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_763_798_400_000;

    fn per_day(kind: Kind, conditions: &[Condition]) -> f64 {
        let days = 30;
        let s = Schedule::new(kind, conditions, 42);
        // Start at an arbitrary time of day: whole days still hold whole sets of slots
        // (give or take the jitter at the window's edges).
        let from = T0 + 11 * 3_600_000 + 123_456;
        s.between(from, from + days * DAY_MS).count() as f64 / days as f64
    }

    #[test]
    fn readings_per_simulated_day() {
        use Condition::*;
        let check = |kind, conditions: &[Condition], expected: f64| {
            let got = per_day(kind, conditions);
            assert!(
                (got - expected).abs() < 0.1,
                "{kind:?} {conditions:?}: {got}"
            );
        };
        check(Kind::BloodPressure, &[Hypertension], 2.0);
        check(Kind::Spo2, &[Copd], 3.0);
        check(Kind::Glucose, &[Diabetes], 4.0);
        check(Kind::Glucose, &[Hypertension], 1.0);
    }

    #[test]
    fn exact_count_over_whole_local_days() {
        let s = Schedule::new(Kind::Spo2, &[Condition::Copd], 9);
        // Local midnight to local midnight: no slot can fall outside.
        let midnight = (T0 / DAY_MS) * DAY_MS - LOCAL_UTC_OFFSET_MIN * 60_000;
        let got: Vec<_> = s.between(midnight, midnight + 7 * DAY_MS).collect();
        assert_eq!(got.len(), 21);
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "time order");
    }

    #[test]
    fn jitter_stays_within_bounds_and_is_deterministic() {
        let s = Schedule::new(Kind::BloodPressure, &[], 5);
        let midnight = (T0 / DAY_MS) * DAY_MS - LOCAL_UTC_OFFSET_MIN * 60_000;
        for (t, slot) in s.between(midnight, midnight + 20 * DAY_MS) {
            let local_min = (t - midnight).rem_euclid(DAY_MS) / 60_000;
            let nominal = i64::from(slot.minute_of_day);
            assert!(
                (local_min - nominal).abs() <= JITTER_MIN,
                "{local_min} vs {nominal}"
            );
        }
        let again = Schedule::new(Kind::BloodPressure, &[], 5);
        assert_eq!(s.next_after(T0), again.next_after(T0));
    }

    #[test]
    fn glucose_meal_contexts() {
        let slots = daily_slots(Kind::Glucose, &[Condition::Diabetes]);
        assert_eq!(slots[0].meal, Some(MealContext::Fasting));
        assert_eq!(slots.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn clock_compresses_time() {
        let clock = SimClock::new(T0, 1440.0);
        tokio::time::advance(std::time::Duration::from_secs(60)).await;
        let now = clock.now_ms();
        assert!((now - (T0 + DAY_MS)).abs() < 1_000, "{now}");
        let at = clock.instant_at(T0 + DAY_MS / 2);
        assert_eq!(at - clock.real_start, std::time::Duration::from_secs(30));
        assert_eq!(clock.instant_at(T0 - 5), clock.real_start);
    }
}
