//! Records as Sentinella readings (feature `protocol`).
//!
//! | record field | reading |
//! |---|---|
//! | BP flags bit 0 (kPa) | `unit` `kPa`, else `mmHg`; values kept in the declared unit |
//! | BP systolic, diastolic | required: a special SFLOAT (NaN, NRes, ±INF, reserved) → [`MapError::NoValue`] |
//! | BP mean arterial, pulse rate | optional: a special SFLOAT → absent |
//! | BP measurement status | `sensor` bits as they are (`protocol::reading::sensor::BP_*`); body movement, cuff too loose or improper position also set IEEE 11073 *questionable* |
//! | BP user id | a user other than the patient's (and not 255, unknown) → [`MapError::OtherUser`] |
//! | glucose concentration, kg/L | `mg/dL` (× 10⁵, exact in decimal) |
//! | glucose concentration, mol/L | `mmol/L` (× 10³) |
//! | glucose type / location | `sample` (1-10); location 4 (control solution) → control solution |
//! | glucose sensor status annunciation | `sensor` bits as they are (`GLU_*`); malfunction, general fault, strip errors, read interrupted, sample too small → *invalid*; result too high/low, temperature too high/low → *questionable*; control solution → *test data* |
//! | glucose time fault | the meter's time is ignored (the device clock times the reading) |
//! | context meal (1-5) | `meal` |
//! | timestamps (Date Time, local) | Unix ms with the configured UTC offset |

use protocol::reading::sensor;
use protocol::{
    BloodPressure, Glucose, GlucoseUnit, MealContext, Measurement, MeasurementStatus, PressureUnit,
    SampleType,
};

use crate::meter::Record;
use crate::record::{GlucoseMeasurement, glucose_status};
use crate::sfloat::{SFloat, Value};

/// How to read a meter's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MapOptions {
    /// The meter's clock is local time this many minutes ahead of UTC (e.g. 60 for CET).
    pub utc_offset_min: i16,
    /// The patient's user id on a multi-user cuff; readings of other users are refused.
    /// `None` accepts every user.
    pub patient_user: Option<u8>,
}

/// A record as a reading, before it gets a seq.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeterReading {
    /// The values.
    pub measurement: Measurement,
    /// IEEE 11073 measurement status.
    pub status: MeasurementStatus,
    /// The characteristic's status bits.
    pub sensor: u32,
    /// The meter's time of the measurement, if it has a valid one.
    pub taken_at_ms: Option<i64>,
}

/// Why a record is not a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// A required value is a special SFLOAT.
    NoValue {
        /// Which field.
        field: &'static str,
        /// Which special value.
        value: Value,
    },
    /// A glucose record without a concentration.
    NoConcentration,
    /// A reading of another user of a shared cuff.
    OtherUser(u8),
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MapError::NoValue { field, value } => write!(f, "{field} has no value ({value:?})"),
            MapError::NoConcentration => f.write_str("glucose record without a concentration"),
            MapError::OtherUser(u) => write!(f, "reading of user {u}, not the patient"),
        }
    }
}

/// Maps a record to a reading.
pub fn to_reading(record: &Record, options: &MapOptions) -> Result<MeterReading, MapError> {
    match record {
        Record::BloodPressure(m) => {
            if let (Some(user), Some(patient)) = (m.user_id, options.patient_user)
                && user != patient
                && user != 0xFF
            {
                return Err(MapError::OtherUser(user));
            }
            let status_bits = m.status.unwrap_or(0) & crate::record::bp_status::DEFINED;
            let questionable = crate::record::bp_status::BODY_MOVEMENT
                | crate::record::bp_status::CUFF_TOO_LOOSE
                | crate::record::bp_status::IMPROPER_POSITION;
            let mut status = 0;
            if status_bits & questionable != 0 {
                status |= MeasurementStatus::QUESTIONABLE;
            }
            Ok(MeterReading {
                measurement: Measurement::BloodPressure(BloodPressure {
                    systolic: required(m.systolic, "sys", 0)?,
                    diastolic: required(m.diastolic, "dia", 0)?,
                    mean: m.mean_arterial.to_f32(),
                    pulse: m.pulse_rate.and_then(SFloat::to_f32),
                    unit: if m.kpa {
                        PressureUnit::KPa
                    } else {
                        PressureUnit::MmHg
                    },
                }),
                status: MeasurementStatus(status),
                sensor: u32::from(status_bits) & sensor::BP_DEFINED,
                taken_at_ms: m.timestamp.and_then(|t| t.unix_ms(options.utc_offset_min)),
            })
        }
        Record::Glucose(m, context) => {
            let c = m.concentration.ok_or(MapError::NoConcentration)?;
            let (value, unit) = if c.mol_per_l {
                (required(c.value, "value", 3)?, GlucoseUnit::MmolL)
            } else {
                (required(c.value, "value", 5)?, GlucoseUnit::MgDl)
            };
            let sample = if c.location == 4 {
                SampleType::ControlSolution
            } else {
                sample_type(c.sample_type)
            };
            let bits = m.status.unwrap_or(0) & glucose_status::DEFINED;
            Ok(MeterReading {
                measurement: Measurement::Glucose(Glucose {
                    value,
                    unit,
                    sample,
                    meal: context.and_then(|c| c.meal).and_then(meal),
                }),
                status: MeasurementStatus(glucose_measurement_status(bits, sample)),
                sensor: u32::from(bits) & sensor::GLU_DEFINED,
                taken_at_ms: glucose_time(m, bits, options.utc_offset_min),
            })
        }
    }
}

fn required(v: SFloat, field: &'static str, shift: i8) -> Result<f32, MapError> {
    v.scaled(shift).ok_or(MapError::NoValue {
        field,
        value: v.value(),
    })
}

fn glucose_time(m: &GlucoseMeasurement, bits: u16, utc_offset_min: i16) -> Option<i64> {
    if bits & glucose_status::TIME_FAULT != 0 {
        return None;
    }
    m.unix_ms(utc_offset_min)
}

fn glucose_measurement_status(bits: u16, sample: SampleType) -> u16 {
    use glucose_status as g;
    let invalid = g::SENSOR_MALFUNCTION
        | g::GENERAL_FAULT
        | g::READ_INTERRUPTED
        | g::STRIP_INSERTION_ERROR
        | g::STRIP_TYPE_INCORRECT
        | g::SAMPLE_SIZE_INSUFFICIENT;
    let questionable =
        g::RESULT_TOO_HIGH | g::RESULT_TOO_LOW | g::TEMPERATURE_TOO_HIGH | g::TEMPERATURE_TOO_LOW;
    let mut status = 0;
    if bits & invalid != 0 {
        status |= MeasurementStatus::INVALID;
    }
    if bits & questionable != 0 {
        status |= MeasurementStatus::QUESTIONABLE;
    }
    if sample == SampleType::ControlSolution {
        status |= MeasurementStatus::TEST_DATA;
    }
    status
}

/// The Glucose Measurement type nibble.
pub fn sample_type(nibble: u8) -> SampleType {
    match nibble {
        1 => SampleType::CapillaryWholeBlood,
        2 => SampleType::CapillaryPlasma,
        3 => SampleType::VenousWholeBlood,
        4 => SampleType::VenousPlasma,
        5 => SampleType::ArterialWholeBlood,
        6 => SampleType::ArterialPlasma,
        9 => SampleType::InterstitialFluid,
        10 => SampleType::ControlSolution,
        _ => SampleType::Undetermined,
    }
}

/// The Glucose Measurement Context meal field.
pub fn meal(value: u8) -> Option<MealContext> {
    match value {
        1 => Some(MealContext::Preprandial),
        2 => Some(MealContext::Postprandial),
        3 => Some(MealContext::Fasting),
        4 => Some(MealContext::Casual),
        5 => Some(MealContext::Bedtime),
        _ => None,
    }
}
