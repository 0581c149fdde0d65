//! Physiological plausibility limits.
//!
//! A value outside these ranges cannot come from a living patient measured correctly by a home
//! device; it is a device fault, a unit mix-up or garbage, and is rejected at the edge of the
//! system instead of reaching a nurse's queue. They are deliberately wide: the clinical
//! thresholds (alerts) live in care plans, not here. Values are in canonical units.

/// An inclusive range of plausible values for one field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// The wire name of the field the limit applies to.
    pub field: &'static str,
    /// Smallest plausible value.
    pub min: f32,
    /// Largest plausible value.
    pub max: f32,
}

impl Limit {
    /// Whether `value` lies inside the range.
    pub fn admits(&self, value: f32) -> bool {
        value.is_finite() && value >= self.min && value <= self.max
    }
}

/// Systolic pressure, mmHg (home monitors measure about 60-260; records exist near 300).
pub const SYSTOLIC: Limit = Limit {
    field: "sys",
    min: 40.0,
    max: 300.0,
};
/// Diastolic pressure, mmHg.
pub const DIASTOLIC: Limit = Limit {
    field: "dia",
    min: 20.0,
    max: 200.0,
};
/// Mean arterial pressure, mmHg.
pub const MEAN_ARTERIAL: Limit = Limit {
    field: "map",
    min: 25.0,
    max: 250.0,
};
/// Pulse rate, beats per minute.
pub const PULSE: Limit = Limit {
    field: "pulse",
    min: 20.0,
    max: 300.0,
};
/// SpO2, percent (home oximeters are specified from about 70 %; values below 50 are artefacts).
pub const SPO2: Limit = Limit {
    field: "spo2",
    min: 50.0,
    max: 100.0,
};
/// Perfusion index, percent.
pub const PERFUSION_INDEX: Limit = Limit {
    field: "pi",
    min: 0.0,
    max: 30.0,
};
/// Glucose, mg/dL (meters report 10-600; "LO"/"HI" results come with annunciation bits).
pub const GLUCOSE_MG_DL: Limit = Limit {
    field: "value",
    min: 10.0,
    max: 1000.0,
};

/// Earliest device time accepted from a device whose clock is set: 2000-01-01T00:00:00Z.
pub const EARLIEST_TS_MS: i64 = 946_684_800_000;
/// Latest device time accepted from a device whose clock is set: 2100-01-01T00:00:00Z.
pub const LATEST_TS_MS: i64 = 4_102_444_800_000;

/// How far ahead of the gateway's clock a device time may be before it is implausible
/// (clock drift and transmission delay stay well inside it).
pub const MAX_AHEAD_MS: i64 = 5 * 60 * 1000;
/// A reading received this long after it was measured arrived late (the device was offline).
pub const LATE_AFTER_MS: i64 = 60 * 60 * 1000;
/// A reading older than this when received cannot come from a device's outbox in good faith:
/// its clock is wrong.
pub const MAX_AGE_MS: i64 = 365 * 24 * 60 * 60 * 1000;

/// What a reading's device time says once compared with the time the gateway received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockState {
    /// Measured shortly before it was received.
    Ok,
    /// Measured more than [`LATE_AFTER_MS`] before it was received: a backlog from a device that
    /// was offline. The time is plausible; the reading is not current.
    Late,
    /// Dated more than [`MAX_AHEAD_MS`] after it was received: the device clock runs ahead.
    Ahead,
    /// Dated more than [`MAX_AGE_MS`] before it was received: the device clock is wrong.
    Behind,
    /// The device said its clock was not set; the receive time stands in for the device time.
    Unset,
}

impl ClockState {
    /// Compares a device time with the receive time (both ms since the Unix epoch).
    pub fn assess(measured_ms: i64, received_ms: i64, clock_unset: bool) -> Self {
        if clock_unset {
            return ClockState::Unset;
        }
        let age = received_ms.saturating_sub(measured_ms);
        if age < -MAX_AHEAD_MS {
            ClockState::Ahead
        } else if age > MAX_AGE_MS {
            ClockState::Behind
        } else if age > LATE_AFTER_MS {
            ClockState::Late
        } else {
            ClockState::Ok
        }
    }

    /// Whether the device time cannot be trusted as the measurement time.
    pub const fn is_implausible(self) -> bool {
        matches!(self, ClockState::Ahead | ClockState::Behind)
    }

    /// The name used in the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            ClockState::Ok => "ok",
            ClockState::Late => "late",
            ClockState::Ahead => "ahead",
            ClockState::Behind => "behind",
            ClockState::Unset => "unset",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_table() {
        const NOW: i64 = 1_763_798_400_000;
        const MIN: i64 = 60_000;
        for (measured, unset, want) in [
            (NOW, false, ClockState::Ok),
            (NOW - 59 * MIN, false, ClockState::Ok),
            (NOW + 4 * MIN, false, ClockState::Ok),
            (NOW + 6 * MIN, false, ClockState::Ahead),
            (NOW - 61 * MIN, false, ClockState::Late),
            (NOW - 3 * 24 * 60 * MIN, false, ClockState::Late),
            (NOW - MAX_AGE_MS - 1, false, ClockState::Behind),
            (NOW + 2 * MAX_AGE_MS, false, ClockState::Ahead),
            (0, true, ClockState::Unset),
            (i64::MIN, false, ClockState::Behind),
            (i64::MAX, false, ClockState::Ahead),
        ] {
            assert_eq!(ClockState::assess(measured, NOW, unset), want, "{measured}");
        }
        assert!(ClockState::Ahead.is_implausible() && !ClockState::Late.is_implausible());
    }
}
