//! Estimates as Sentinella readings (feature `protocol`).
//!
//! The values go into [`protocol::Spo2`] in their canonical units (percent, beats per minute,
//! perfusion index in percent), rounded to one decimal. Quality findings become bits:
//! - irregular rhythm → PLX *signal processing irregularity* and *questionable pulse*
//!   (`protocol::reading::sensor::PLX_SIGNAL_IRREGULARITY`, `PLX_QUESTIONABLE_PULSE`) and the
//!   IEEE 11073 *questionable* measurement status;
//! - low perfusion → PLX *low perfusion* (`PLX_LOW_PERFUSION`).
//!
//! Estimation failures map to no reading at all: a spot check without a finger, a pulse or a
//! plausible signal produces nothing to store. [`sensor_bits_of`] says which PLX bit such a
//! failure corresponds to, for a status report.

use protocol::MeasurementStatus;
use protocol::reading::sensor;

use crate::spo2::{Estimate, EstimateError};

/// The reading's values, IEEE 11073 status and PLX device/sensor status bits.
pub fn to_reading(estimate: &Estimate) -> (protocol::Spo2, MeasurementStatus, u32) {
    let mut status = 0u16;
    let mut bits = 0u32;
    if estimate.irregular {
        status |= MeasurementStatus::QUESTIONABLE;
        bits |= sensor::PLX_SIGNAL_IRREGULARITY | sensor::PLX_QUESTIONABLE_PULSE;
    }
    if estimate.low_perfusion {
        bits |= sensor::PLX_LOW_PERFUSION;
    }
    let value = protocol::Spo2 {
        percent: tenths(estimate.spo2),
        pulse: Some(tenths(estimate.pulse_bpm)),
        perfusion_index: Some(tenths(estimate.perfusion_index)),
    };
    (value, MeasurementStatus(status), bits)
}

/// The PLX device/sensor status bit matching an estimation failure.
pub fn sensor_bits_of(error: EstimateError) -> u32 {
    match error {
        EstimateError::TooFewSamples => sensor::PLX_ANALYSIS_ONGOING,
        EstimateError::NoFinger => sensor::PLX_SENSOR_UNCONNECTED,
        EstimateError::Saturated => sensor::PLX_SENSOR_INTERFERENCE,
        EstimateError::NoPulse => sensor::PLX_NON_PULSATILE,
        EstimateError::Implausible => sensor::PLX_ERRATIC_SIGNAL,
    }
}

/// Rounds a non-negative value to one decimal without `libm`.
fn tenths(x: f32) -> f32 {
    if x.is_nan() || x < 0.0 {
        return 0.0;
    }
    ((x * 10.0 + 0.5) as u32) as f32 / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_values_and_bits() {
        let e = Estimate {
            spo2: 96.96,
            pulse_bpm: 71.04,
            perfusion_index: 0.24,
            ratio: 0.6,
            beats: 5,
            irregular: true,
            low_perfusion: true,
        };
        let (v, status, bits) = to_reading(&e);
        assert_eq!(v.percent, 97.0);
        assert_eq!(v.pulse, Some(71.0));
        assert_eq!(v.perfusion_index, Some(0.2));
        assert!(status.has(MeasurementStatus::QUESTIONABLE));
        assert_eq!(
            bits,
            sensor::PLX_SIGNAL_IRREGULARITY
                | sensor::PLX_QUESTIONABLE_PULSE
                | sensor::PLX_LOW_PERFUSION
        );
        let calm = Estimate {
            irregular: false,
            low_perfusion: false,
            ..e
        };
        assert_eq!(to_reading(&calm).1, MeasurementStatus(0));
        assert_eq!(to_reading(&calm).2, 0);
        assert_eq!(
            sensor_bits_of(EstimateError::NoFinger),
            sensor::PLX_SENSOR_UNCONNECTED
        );
        assert_eq!(tenths(f32::NAN), 0.0);
    }
}
