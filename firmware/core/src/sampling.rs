//! Sensors and the measurement schedule.
//!
//! Two ways a reading comes to be:
//! - **Scheduled**: the device decides when to measure (a pulse oximeter clipped on for a
//!   spot check, an automatic cuff). [`Schedule`] says which kind is due; the device calls
//!   [`Sensors::measure`].
//! - **Spontaneous**: a meter reports a reading the patient took (a cuff or glucose meter on a
//!   UART, sending Bluetooth-layout records). [`Sensors::next_record`] waits for one; once the
//!   reading is safe in the outbox the device calls [`Sensors::confirm`], so the meter can drop
//!   it (the same hand-over as a Bluetooth indication and its confirmation).
//!
//! Boards implement the per-kind traits ([`PulseOximeter`], [`BloodPressureMonitor`],
//! [`GlucoseMeter`]) over their drivers and combine them in a [`Kit`]; [`Absent`] fills the
//! slots a device does not have.

use embassy_futures::select::{Either, select};
use protocol::status::DeviceConfig;
use protocol::{BloodPressure, Glucose, Kind, Measurement, MeasurementStatus, Spo2};

/// Shortest interval the gateway's config may ask for (seconds); shorter ones are raised to it.
pub const MIN_CONFIG_INTERVAL_S: u32 = 60;

/// Most schedule entries (the protocol's config carries at most 4).
pub const MAX_ENTRIES: usize = 4;

/// One reading as a sensor produced it, before it gets a seq.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<M = Measurement> {
    /// The measured values.
    pub value: M,
    /// IEEE 11073 measurement status.
    pub status: MeasurementStatus,
    /// Kind-specific sensor status bits (`protocol::reading::sensor`).
    pub sensor: u32,
    /// When the sensor says the measurement was taken (Unix ms), if it has a clock of its own
    /// that is set (e.g. a meter's record timestamp); otherwise the device's clock is used.
    pub taken_at_ms: Option<i64>,
}

impl<M> Sample<M> {
    /// A sample with no status bits and no timestamp of its own.
    pub const fn plain(value: M) -> Self {
        Sample {
            value,
            status: MeasurementStatus(0),
            sensor: 0,
            taken_at_ms: None,
        }
    }

    /// The same sample with another value type.
    pub fn map<N>(self, f: impl FnOnce(M) -> N) -> Sample<N> {
        Sample {
            value: f(self.value),
            status: self.status,
            sensor: self.sensor,
            taken_at_ms: self.taken_at_ms,
        }
    }
}

/// A pulse oximeter measured on schedule (spot checks).
pub trait PulseOximeter {
    /// Why a measurement failed.
    type Error: core::fmt::Debug;

    /// Takes a spot check. `Ok(None)` when there is nothing to report (e.g. no finger).
    async fn spot_check(&mut self) -> Result<Option<Sample<Spo2>>, Self::Error>;
}

/// A blood-pressure monitor: reports the readings the patient takes; an automatic cuff can
/// also measure on schedule.
pub trait BloodPressureMonitor {
    /// Why a measurement failed.
    type Error: core::fmt::Debug;

    /// Measures on schedule. The default (a patient-operated cuff) reports nothing.
    async fn measure(&mut self) -> Result<Option<Sample<BloodPressure>>, Self::Error> {
        Ok(None)
    }

    /// Waits for the next reading the cuff reports. Must be cancel-safe.
    async fn next_record(&mut self) -> Result<Sample<BloodPressure>, Self::Error>;

    /// The last reading returned by `next_record` is stored; the cuff may drop it.
    async fn confirm(&mut self) -> Result<(), Self::Error>;
}

/// A glucose meter: reports the readings the patient takes.
pub trait GlucoseMeter {
    /// Why a measurement failed.
    type Error: core::fmt::Debug;

    /// Waits for the next reading the meter reports. Must be cancel-safe.
    async fn next_record(&mut self) -> Result<Sample<Glucose>, Self::Error>;

    /// The last reading returned by `next_record` is stored; the meter may drop it.
    async fn confirm(&mut self) -> Result<(), Self::Error>;
}

/// The sensors of a device, as the device loop sees them.
pub trait Sensors {
    /// Why a measurement failed.
    type Error: core::fmt::Debug;

    /// Measures `kind` now; `Ok(None)` if there is nothing to report or no such sensor.
    async fn measure(&mut self, kind: Kind) -> Result<Option<Sample>, Self::Error>;

    /// Waits for a reading a sensor reports on its own. Must be cancel-safe. The default
    /// never completes.
    async fn next_record(&mut self) -> Result<Sample, Self::Error> {
        core::future::pending().await
    }

    /// The last reading returned by [`Sensors::next_record`] is safe in the outbox.
    async fn confirm(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Battery charge in percent, if known (reported in the device status).
    fn battery(&self) -> Option<u8> {
        None
    }
}

/// A sensor slot with nothing in it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Absent;

/// [`Absent`] never fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Never {}

impl PulseOximeter for Absent {
    type Error = Never;
    async fn spot_check(&mut self) -> Result<Option<Sample<Spo2>>, Never> {
        Ok(None)
    }
}

impl BloodPressureMonitor for Absent {
    type Error = Never;
    async fn next_record(&mut self) -> Result<Sample<BloodPressure>, Never> {
        core::future::pending().await
    }
    async fn confirm(&mut self) -> Result<(), Never> {
        Ok(())
    }
}

impl GlucoseMeter for Absent {
    type Error = Never;
    async fn next_record(&mut self) -> Result<Sample<Glucose>, Never> {
        core::future::pending().await
    }
    async fn confirm(&mut self) -> Result<(), Never> {
        Ok(())
    }
}

/// A device's sensors: any of an oximeter, a cuff and a glucose meter.
#[derive(Debug, Default)]
pub struct Kit<O = Absent, B = Absent, G = Absent> {
    /// The pulse oximeter.
    pub oximeter: O,
    /// The blood-pressure monitor.
    pub bp: B,
    /// The glucose meter.
    pub glucose: G,
    /// Battery charge, percent, if the board measures it.
    pub battery: Option<u8>,
    /// Which meter produced the last `next_record`, to route the confirmation.
    last: Option<Kind>,
}

impl<O, B, G> Kit<O, B, G> {
    /// A kit of these sensors.
    pub fn new(oximeter: O, bp: B, glucose: G) -> Self {
        Kit {
            oximeter,
            bp,
            glucose,
            battery: None,
            last: None,
        }
    }
}

/// Which sensor of a [`Kit`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KitError<O, B, G> {
    /// The pulse oximeter.
    Oximeter(O),
    /// The blood-pressure monitor.
    BloodPressure(B),
    /// The glucose meter.
    Glucose(G),
}

impl<O: PulseOximeter, B: BloodPressureMonitor, G: GlucoseMeter> Sensors for Kit<O, B, G> {
    type Error = KitError<O::Error, B::Error, G::Error>;

    async fn measure(&mut self, kind: Kind) -> Result<Option<Sample>, Self::Error> {
        match kind {
            Kind::Spo2 => Ok(self
                .oximeter
                .spot_check()
                .await
                .map_err(KitError::Oximeter)?
                .map(|s| s.map(Measurement::Spo2))),
            Kind::BloodPressure => Ok(self
                .bp
                .measure()
                .await
                .map_err(KitError::BloodPressure)?
                .map(|s| s.map(Measurement::BloodPressure))),
            Kind::Glucose => Ok(None),
        }
    }

    async fn next_record(&mut self) -> Result<Sample, Self::Error> {
        match select(self.bp.next_record(), self.glucose.next_record()).await {
            Either::First(r) => {
                let s = r.map_err(KitError::BloodPressure)?;
                self.last = Some(Kind::BloodPressure);
                Ok(s.map(Measurement::BloodPressure))
            }
            Either::Second(r) => {
                let s = r.map_err(KitError::Glucose)?;
                self.last = Some(Kind::Glucose);
                Ok(s.map(Measurement::Glucose))
            }
        }
    }

    async fn confirm(&mut self) -> Result<(), Self::Error> {
        match self.last.take() {
            Some(Kind::BloodPressure) => self.bp.confirm().await.map_err(KitError::BloodPressure),
            Some(Kind::Glucose) => self.glucose.confirm().await.map_err(KitError::Glucose),
            _ => Ok(()),
        }
    }

    fn battery(&self) -> Option<u8> {
        self.battery
    }
}

/// One kind measured every `every_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// What to measure.
    pub kind: Kind,
    /// Interval, milliseconds (at least 1).
    pub every_ms: u64,
    /// Monotonic time it is next due.
    pub next_ms: u64,
}

/// One extra measurement the gateway asked for (a repeat request in its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeat {
    /// What to measure.
    pub kind: Kind,
    /// The request's id (`protocol::status::RepeatRequest::id`).
    pub id: i64,
    /// Monotonic time it is due.
    pub due_ms: u64,
}

/// A measurement that is due, from [`Schedule::take_due`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// What to measure.
    pub kind: Kind,
    /// The id of the repeat request this measurement answers, if it answers one.
    pub repeat: Option<i64>,
}

/// When each kind is measured next: a regular cadence per kind ([`Entry`]), plus at most one
/// pending one-shot [`Repeat`] per kind.
///
/// Repeats are one-shot slots beside the cadence, not a shift of it: a repeat measures its
/// kind once at its due time and leaves that kind's regular due time where it was (a kind with
/// no regular entry is measured all the same). When a repeat and the regular slot of its kind
/// are due at the same turn, one measurement answers both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    entries: heapless::Vec<Entry, MAX_ENTRIES>,
    repeats: heapless::Vec<Repeat, MAX_REPEATS>,
}

/// Most pending repeat requests: one per measurement kind.
pub const MAX_REPEATS: usize = 3;

impl Schedule {
    /// An empty schedule (nothing measured on schedule).
    pub const fn new() -> Self {
        Schedule {
            entries: heapless::Vec::new(),
            repeats: heapless::Vec::new(),
        }
    }

    /// Measures `kind` every `every_ms` (at least 1), first at `now_ms + every_ms`; replaces an
    /// entry of the same kind. Returns false if the schedule is full.
    pub fn set(&mut self, kind: Kind, every_ms: u64, now_ms: u64) -> bool {
        let every_ms = every_ms.max(1);
        let next_ms = now_ms.saturating_add(every_ms);
        if let Some(e) = self.entries.iter_mut().find(|e| e.kind == kind) {
            // Keep an earlier due time if the interval got shorter (or stayed the same).
            e.next_ms = e.next_ms.min(next_ms);
            e.every_ms = every_ms;
            return true;
        }
        self.entries
            .push(Entry {
                kind,
                every_ms,
                next_ms,
            })
            .is_ok()
    }

    /// Measures `kind` once at `due_ms`, for the repeat request `id`. A pending repeat of the
    /// same kind is replaced (the newer request supersedes it: one measurement after the later
    /// wait answers both). Never fails: there is a slot per kind.
    pub fn repeat_once(&mut self, kind: Kind, id: i64, due_ms: u64) {
        let repeat = Repeat { kind, id, due_ms };
        if let Some(r) = self.repeats.iter_mut().find(|r| r.kind == kind) {
            *r = repeat;
        } else {
            // Cannot fail: at most one repeat per kind, and there are MAX_REPEATS kinds.
            let _ = self.repeats.push(repeat);
        }
    }

    /// The entries.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The pending repeats.
    pub fn repeats(&self) -> &[Repeat] {
        &self.repeats
    }

    /// A measurement due at `now_ms`, if any; repeats first. A regular entry's next due time
    /// moves on by whole intervals, so missed slots (the device was busy or asleep) are
    /// skipped, not caught up; a repeat is removed once taken. A repeat taken when the regular
    /// slot of its kind is also due takes that slot too.
    pub fn take_due(&mut self, now_ms: u64) -> Option<Due> {
        if let Some(i) = self.repeats.iter().position(|r| r.due_ms <= now_ms) {
            let r = self.repeats.swap_remove(i);
            if let Some(e) = self
                .entries
                .iter_mut()
                .find(|e| e.kind == r.kind && e.next_ms <= now_ms)
            {
                advance(e, now_ms);
            }
            return Some(Due {
                kind: r.kind,
                repeat: Some(r.id),
            });
        }
        let e = self.entries.iter_mut().find(|e| e.next_ms <= now_ms)?;
        advance(e, now_ms);
        Some(Due {
            kind: e.kind,
            repeat: None,
        })
    }

    /// The earliest due time (regular or repeat).
    pub fn next_due(&self) -> Option<u64> {
        let regular = self.entries.iter().map(|e| e.next_ms);
        regular.chain(self.repeats.iter().map(|r| r.due_ms)).min()
    }

    /// Applies the gateway's config schedule (its `repeat` is the device's business: see
    /// [`Schedule::repeat_once`]). An empty schedule keeps the current one (the gateway sends
    /// only its time then); otherwise the config replaces it. Entries with an unknown kind or
    /// a zero interval are ignored; intervals under [`MIN_CONFIG_INTERVAL_S`] are raised to it.
    /// Pending repeats are kept. Returns whether the schedule changed.
    pub fn apply(&mut self, config: &DeviceConfig<'_>, now_ms: u64) -> bool {
        if config.schedule.is_empty() {
            return false;
        }
        let mut next: heapless::Vec<Entry, MAX_ENTRIES> = heapless::Vec::new();
        for entry in &config.schedule {
            let Some(kind) = Kind::parse(entry.kind) else {
                continue;
            };
            if entry.every_s == 0 {
                continue;
            }
            let every_ms = u64::from(entry.every_s.max(MIN_CONFIG_INTERVAL_S)) * 1000;
            let mut e = Entry {
                kind,
                every_ms,
                next_ms: now_ms.saturating_add(every_ms),
            };
            if let Some(old) = self.entries.iter().find(|o| o.kind == kind) {
                e.next_ms = e.next_ms.min(old.next_ms);
            }
            let _ = next.push(e);
        }
        if next.is_empty() {
            return false;
        }
        let changed = next != self.entries;
        self.entries = next;
        changed
    }
}

/// Moves a due entry on by whole intervals past `now_ms`.
fn advance(e: &mut Entry, now_ms: u64) {
    let behind = now_ms.saturating_sub(e.next_ms) / e.every_ms.max(1) + 1;
    e.next_ms = e
        .next_ms
        .saturating_add(behind.saturating_mul(e.every_ms.max(1)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::status::ScheduleEntry;

    fn regular(kind: Kind) -> Due {
        Due { kind, repeat: None }
    }

    fn repeat(kind: Kind, id: i64) -> Due {
        Due {
            kind,
            repeat: Some(id),
        }
    }

    #[test]
    fn a_repeat_is_one_extra_slot_beside_the_cadence() {
        let mut s = Schedule::new();
        s.set(Kind::Spo2, 10_000, 0);
        s.repeat_once(Kind::Spo2, 7, 3_000);
        // A kind with no regular entry is measured too.
        s.repeat_once(Kind::BloodPressure, 8, 4_000);
        assert_eq!(s.next_due(), Some(3_000));
        assert_eq!(s.take_due(2_999), None);
        assert_eq!(s.take_due(3_000), Some(repeat(Kind::Spo2, 7)));
        assert_eq!(s.take_due(3_000), None, "once");
        assert_eq!(s.entries()[0].next_ms, 10_000, "the cadence did not move");
        assert_eq!(s.next_due(), Some(4_000));
        assert_eq!(s.take_due(4_000), Some(repeat(Kind::BloodPressure, 8)));
        assert!(s.repeats().is_empty());
        assert_eq!(s.entries().len(), 1, "no regular entry was added");
        assert_eq!(s.take_due(9_999), None);
        assert_eq!(s.take_due(10_000), Some(regular(Kind::Spo2)));
        assert_eq!(s.take_due(20_000), Some(regular(Kind::Spo2)));
    }

    #[test]
    fn a_repeat_due_with_its_regular_slot_answers_both() {
        let mut s = Schedule::new();
        s.set(Kind::Spo2, 10_000, 0);
        s.repeat_once(Kind::Spo2, 1, 10_000);
        assert_eq!(s.take_due(10_000), Some(repeat(Kind::Spo2, 1)));
        assert_eq!(s.take_due(10_000), None, "one measurement, not two");
        assert_eq!(s.next_due(), Some(20_000));
    }

    #[test]
    fn a_newer_repeat_of_a_kind_replaces_the_pending_one() {
        let mut s = Schedule::new();
        s.repeat_once(Kind::Spo2, 1, 1_000);
        s.repeat_once(Kind::Spo2, 2, 5_000);
        s.repeat_once(Kind::Glucose, 3, 900);
        assert_eq!(s.repeats().len(), 2);
        assert_eq!(s.take_due(1_000), Some(repeat(Kind::Glucose, 3)));
        assert_eq!(s.take_due(4_999), None);
        assert_eq!(s.take_due(5_000), Some(repeat(Kind::Spo2, 2)));
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn a_config_schedule_keeps_pending_repeats() {
        let mut s = Schedule::new();
        s.set(Kind::Spo2, 1000, 0);
        s.repeat_once(Kind::BloodPressure, 9, 50_000);
        let mut cfg = DeviceConfig::with_time(0);
        cfg.schedule
            .push(ScheduleEntry {
                kind: "glucose",
                every_s: 3600,
            })
            .unwrap();
        assert!(s.apply(&cfg, 0));
        assert_eq!(
            s.repeats(),
            [Repeat {
                kind: Kind::BloodPressure,
                id: 9,
                due_ms: 50_000
            }]
        );
        assert!(!s.apply(&cfg, 0), "same config, no change");
    }

    #[test]
    fn due_times_skip_missed_slots() {
        let mut s = Schedule::new();
        assert!(s.set(Kind::Spo2, 1000, 0));
        assert!(s.set(Kind::BloodPressure, 5000, 0));
        assert_eq!(s.next_due(), Some(1000));
        assert_eq!(s.take_due(999), None);
        assert_eq!(s.take_due(1000), Some(regular(Kind::Spo2)));
        assert_eq!(s.next_due(), Some(2000));
        // Asleep until 7.5 s: each kind is due once, then back on its grid.
        assert_eq!(s.take_due(7500), Some(regular(Kind::Spo2)));
        assert_eq!(s.take_due(7500), Some(regular(Kind::BloodPressure)));
        assert_eq!(s.take_due(7500), None);
        assert_eq!(s.next_due(), Some(8000));
        assert_eq!(s.entries()[1].next_ms, 10_000);
    }

    #[test]
    fn config_replaces_keeps_or_ignores() {
        let mut s = Schedule::new();
        s.set(Kind::Spo2, 1000, 0);
        let mut cfg = DeviceConfig::with_time(1_763_798_400_000);
        assert!(!s.apply(&cfg, 0), "an empty schedule keeps ours");
        assert_eq!(s.entries().len(), 1);

        cfg.schedule
            .push(ScheduleEntry {
                kind: "bp",
                every_s: 43_200,
            })
            .unwrap();
        cfg.schedule
            .push(ScheduleEntry {
                kind: "weight",
                every_s: 60,
            })
            .unwrap();
        cfg.schedule
            .push(ScheduleEntry {
                kind: "spo2",
                every_s: 1,
            })
            .unwrap();
        assert!(s.apply(&cfg, 500));
        assert_eq!(
            s.entries(),
            [
                Entry {
                    kind: Kind::BloodPressure,
                    every_ms: 43_200_000,
                    next_ms: 43_200_500
                },
                Entry {
                    kind: Kind::Spo2,
                    every_ms: 60_000,
                    next_ms: 1000
                },
            ]
        );
        assert!(!s.apply(&cfg, 500), "same config, no change");

        let mut junk = DeviceConfig::with_time(0);
        junk.schedule
            .push(ScheduleEntry {
                kind: "bp",
                every_s: 0,
            })
            .unwrap();
        assert!(!s.apply(&junk, 0), "a config with only junk keeps ours");
        assert_eq!(s.entries().len(), 2);
    }

    #[test]
    fn kit_routes_and_confirms() {
        struct Cuff(u32);
        impl BloodPressureMonitor for Cuff {
            type Error = ();
            async fn next_record(&mut self) -> Result<Sample<BloodPressure>, ()> {
                Ok(Sample::plain(BloodPressure {
                    systolic: 120.0,
                    diastolic: 80.0,
                    mean: None,
                    pulse: None,
                    unit: protocol::PressureUnit::MmHg,
                }))
            }
            async fn confirm(&mut self) -> Result<(), ()> {
                self.0 += 1;
                Ok(())
            }
        }
        embassy_futures::block_on(async {
            let mut kit = Kit::new(Absent, Cuff(0), Absent);
            assert_eq!(kit.measure(Kind::Spo2).await, Ok(None));
            assert_eq!(kit.measure(Kind::Glucose).await, Ok(None));
            let s = kit.next_record().await.unwrap();
            assert_eq!(s.value.kind(), Kind::BloodPressure);
            kit.confirm().await.unwrap();
            kit.confirm().await.unwrap();
            assert_eq!(kit.bp.0, 1, "one confirmation per record");
        });
    }
}
