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
