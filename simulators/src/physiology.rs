//! Virtual patients: a personal baseline per condition mix, day-to-day drift and reading noise.
//!
//! A [`Patient`] is seeded, so the same seed and conditions always produce the same series of
//! readings. Values are rounded the way home devices display them and clamped to ranges the
//! devices can measure, which lie inside `protocol::limits`, so every generated reading passes
//! the gateway's plausibility checks. The clinical flavour follows the usual pictures:
//! hypertensive patients sit around 140/85 mmHg at home, COPD patients around 89-93 % SpO2, diabetic
//! fasting glucose around 140 mg/dL.

use std::f64::consts::PI;
use std::fmt;

use protocol::reading::sensor;
use protocol::{
    BloodPressure, Glucose, GlucoseUnit, Kind, MealContext, Measurement, MeasurementStatus,
    PressureUnit, SampleType, Spo2,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Milliseconds in a day.
pub(crate) const DAY_MS: i64 = 86_400_000;

/// A chronic condition that shapes a patient's values and devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Arterial hypertension: higher blood pressure; gets a blood-pressure monitor.
    Hypertension,
    /// Chronic obstructive pulmonary disease: lower SpO2; gets a pulse oximeter.
    Copd,
    /// Diabetes mellitus: higher glucose, measured four times a day; gets a glucose meter.
    Diabetes,
    /// Chronic heart failure: faster pulse, slightly lower SpO2; gets a cuff and an oximeter.
    HeartFailure,
}

impl Condition {
    /// Every condition, in declaration order.
    pub const ALL: [Condition; 4] = [
        Condition::Hypertension,
        Condition::Copd,
        Condition::Diabetes,
        Condition::HeartFailure,
    ];

    /// The name used in fleet files and the store.
    pub const fn as_str(self) -> &'static str {
        match self {
            Condition::Hypertension => "hypertension",
            Condition::Copd => "copd",
            Condition::Diabetes => "diabetes",
            Condition::HeartFailure => "heart_failure",
        }
    }

    /// Parses a name as written by [`Condition::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        Condition::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a device produced for one measurement: the values and its status bits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The measured values.
    pub measurement: Measurement,
    /// IEEE 11073-20601 measurement status.
    pub status: MeasurementStatus,
    /// Kind-specific sensor status bits (`protocol::reading::sensor`).
    pub sensor: u32,
}

impl Sample {
    /// A sample with no status bits.
    pub fn plain(measurement: Measurement) -> Self {
        Sample {
            measurement,
            status: MeasurementStatus::default(),
            sensor: 0,
        }
    }
}

/// A patient's personal means, around which daily drift and reading noise vary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    /// Mean systolic pressure, mmHg.
    pub systolic: f64,
    /// Mean diastolic pressure, mmHg.
    pub diastolic: f64,
    /// Mean resting pulse, beats per minute.
    pub pulse: f64,
    /// Mean SpO2, percent.
    pub spo2: f64,
    /// Mean fasting glucose, mg/dL.
    pub glucose_fasting: f64,
}

/// A virtual patient.
#[derive(Debug, Clone)]
pub struct Patient {
    seed: u64,
    hypertension: bool,
    copd: bool,
    diabetes: bool,
    heart_failure: bool,
    baseline: Baseline,
    glucose_unit: GlucoseUnit,
    rng: StdRng,
}

impl Patient {
    /// A patient with `conditions`, whose baseline and readings derive from `seed` alone.
    pub fn new(seed: u64, conditions: &[Condition]) -> Self {
        let has = |c| conditions.contains(&c);
        let (hypertension, copd, diabetes, heart_failure) = (
            has(Condition::Hypertension),
            has(Condition::Copd),
            has(Condition::Diabetes),
            has(Condition::HeartFailure),
        );
        let mut rng = StdRng::seed_from_u64(mix(seed, 0x5EED));
        // Home values of treated patients: home BP runs below office BP (ESH: home ≥135/85
        // corresponds to office ≥140/90), so a telemonitored hypertensive cohort centres
        // near 140/85 rather than at office levels.
        let (sys, dia) = if hypertension {
            (normal(&mut rng, 140.0, 8.0), normal(&mut rng, 85.0, 5.0))
        } else {
            (normal(&mut rng, 122.0, 7.0), normal(&mut rng, 76.0, 4.0))
        };
        let mut pulse = normal(&mut rng, 72.0, 5.0);
        if heart_failure {
            pulse += 8.0;
        }
        if copd {
            pulse += 5.0;
        }
        let spo2 = if copd {
            normal(&mut rng, 91.0, 0.8).clamp(89.0, 93.0)
        } else if heart_failure {
            normal(&mut rng, 95.0, 0.6).clamp(93.5, 96.5)
        } else {
            normal(&mut rng, 97.3, 0.4).clamp(96.3, 98.3)
        };
        let glucose_fasting = if diabetes {
            normal(&mut rng, 140.0, 18.0).clamp(100.0, 220.0)
        } else {
            normal(&mut rng, 95.0, 5.0)
        };
        // About a third of the meters in the field are set to mmol/L.
        let glucose_unit = if rng.gen_bool(0.3) {
            GlucoseUnit::MmolL
        } else {
            GlucoseUnit::MgDl
        };
        Patient {
            seed,
            hypertension,
            copd,
            diabetes,
            heart_failure,
            baseline: Baseline {
                systolic: sys,
                diastolic: dia.min(sys - 30.0),
                pulse,
                spo2,
                glucose_fasting,
            },
            glucose_unit,
            rng,
        }
    }

    /// The patient's personal means.
    pub fn baseline(&self) -> Baseline {
        self.baseline
    }

    /// Replaces the patient's personal means (a scenario that needs a given baseline, e.g. a
    /// COPD patient sitting at 88-90 % SpO2).
    pub fn set_baseline(&mut self, baseline: Baseline) {
        self.baseline = baseline;
    }

    /// The unit the patient's glucose meter declares.
    pub fn glucose_unit(&self) -> GlucoseUnit {
        self.glucose_unit
    }

    /// One measurement of `kind` taken at `ts_ms` (simulated wall-clock time, UTC), with the
    /// meal context the patient gave for a glucose reading.
    pub fn measure(&mut self, kind: Kind, ts_ms: i64, meal: Option<MealContext>) -> Sample {
        let day = Day::new(self.seed, ts_ms);
        match kind {
            Kind::BloodPressure => self.blood_pressure(&day, ts_ms),
            Kind::Spo2 => self.spo2(&day),
            Kind::Glucose => self.glucose(&day, meal),
        }
    }

    fn blood_pressure(&mut self, day: &Day, ts_ms: i64) -> Sample {
        let b = self.baseline;
        // Morning surge: pressure peaks in the first hours after waking (UTC+1, Italy).
        let hour = (ts_ms + 3_600_000).rem_euclid(DAY_MS) / 3_600_000;
        let surge = if (5..11).contains(&hour) { 4.0 } else { 0.0 };
        let rng = &mut self.rng;
        let sys = (b.systolic + day.systolic + surge + normal(rng, 0.0, 8.5)).clamp(75.0, 250.0);
        // Home DBP varies less than SBP between readings (about 5 vs 8 mmHg over days).
        let dia = (b.diastolic + day.diastolic + normal(rng, 0.0, 4.5)).clamp(40.0, 140.0);
        let sys = sys.round();
        let dia = dia.round().min(sys - 15.0);
        let map = (dia + (sys - dia) / 3.0).round();
        let pulse = (b.pulse + day.pulse + normal(rng, 0.0, 5.5))
            .clamp(35.0, 180.0)
            .round();
        let mut sensor_bits = 0;
        if rng.gen_bool(0.02) {
            sensor_bits |= sensor::BP_IRREGULAR_PULSE;
        }
        if rng.gen_bool(0.01) {
            sensor_bits |= sensor::BP_BODY_MOVEMENT;
        }
        Sample {
            measurement: Measurement::BloodPressure(BloodPressure {
                systolic: sys as f32,
                diastolic: dia as f32,
                mean: Some(map as f32),
                pulse: Some(pulse as f32),
                unit: PressureUnit::MmHg,
            }),
            status: MeasurementStatus::default(),
            sensor: sensor_bits,
        }
    }

    fn spo2(&mut self, day: &Day) -> Sample {
        let b = self.baseline;
        let rng = &mut self.rng;
        let sd = if self.copd { 1.3 } else { 0.8 };
        let percent = (b.spo2 + day.spo2 + normal(rng, 0.0, sd))
            .clamp(70.0, 100.0)
            .round();
        let pulse = (b.pulse + day.pulse + normal(rng, 0.0, 6.0))
            .clamp(35.0, 180.0)
            .round();
        let mut sensor_bits = 0;
        let pi = if rng.gen_bool(0.01) {
            sensor_bits |= sensor::PLX_LOW_PERFUSION;
            rng.gen_range(0.2..0.5)
        } else {
            normal(rng, 1.1, 0.5).exp().clamp(0.5, 20.0)
        };
        let pi = (pi * 10.0).round() / 10.0;
        Sample {
            measurement: Measurement::Spo2(Spo2 {
                percent: percent as f32,
                pulse: Some(pulse as f32),
                perfusion_index: Some(pi as f32),
            }),
            status: MeasurementStatus::default(),
            sensor: sensor_bits,
        }
    }

    fn glucose(&mut self, day: &Day, meal: Option<MealContext>) -> Sample {
        let b = self.baseline;
        let rng = &mut self.rng;
        let after_food = match meal {
            Some(MealContext::Postprandial) => 45.0,
            Some(MealContext::Bedtime) => 25.0,
            Some(MealContext::Casual) => 20.0,
            Some(MealContext::Preprandial) => 8.0,
            Some(MealContext::Fasting) | None => 0.0,
        };
        let (scale, cv) = if self.diabetes {
            (1.0, 0.13)
        } else {
            (0.6, 0.08)
        };
        // Spread proportional to the level (biological variation plus meter error, which
        // ISO 15197 bounds at ±15 %), so a well-controlled patient does not dip into
        // hypoglycaemia from noise alone.
        let mean = b.glucose_fasting + day.glucose + scale * after_food;
        let mg_dl = (mean + normal(rng, 0.0, cv * mean)).clamp(40.0, 600.0);
        let value = match self.glucose_unit {
            GlucoseUnit::MgDl => mg_dl.round(),
            GlucoseUnit::MmolL => {
                (mg_dl / f64::from(protocol::reading::MG_DL_PER_MMOL_L) * 10.0).round() / 10.0
            }
        };
        Sample::plain(Measurement::Glucose(Glucose {
            value: value as f32,
            unit: self.glucose_unit,
            sample: SampleType::CapillaryPlasma,
            meal,
        }))
    }

    /// The conditions this patient was created with.
    pub fn conditions(&self) -> Vec<Condition> {
        let flags = [
            self.hypertension,
            self.copd,
            self.diabetes,
            self.heart_failure,
        ];
        Condition::ALL
            .into_iter()
            .zip(flags)
            .filter_map(|(c, on)| on.then_some(c))
            .collect()
    }
}

/// The day's shared drift (stress, salt, medication taken or not), the same for every reading
/// of one patient on one day whatever order they are generated in.
struct Day {
    systolic: f64,
    diastolic: f64,
    pulse: f64,
    spo2: f64,
    glucose: f64,
}

impl Day {
    fn new(seed: u64, ts_ms: i64) -> Self {
        let day = ts_ms.div_euclid(DAY_MS) as u64;
        let mut rng = StdRng::seed_from_u64(mix(seed, day));
        let systolic = normal(&mut rng, 0.0, 5.0);
        Day {
            systolic,
            // Diastolic drifts with systolic, less widely.
            diastolic: 0.5 * systolic + normal(&mut rng, 0.0, 2.5),
            pulse: normal(&mut rng, 0.0, 3.0),
            spo2: normal(&mut rng, 0.0, 0.6),
            glucose: normal(&mut rng, 0.0, 8.0),
        }
    }
}

/// A normal deviate by the Box-Muller transform (rand 0.8 has no distributions crate here).
pub(crate) fn normal(rng: &mut impl Rng, mean: f64, sd: f64) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.r#gen();
    mean + sd * (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

/// Mixes two values into a well-spread seed (SplitMix64 finaliser).
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A stable 64-bit hash of a string (FNV-1a), for seeds derived from ids and codes.
pub(crate) fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_763_798_400_000;

    #[test]
    fn conditions_parse_round_trip() {
        for c in Condition::ALL {
            assert_eq!(Condition::parse(c.as_str()), Some(c));
        }
        assert_eq!(Condition::parse("asthma"), None);
        let p = Patient::new(3, &[Condition::Diabetes, Condition::Copd]);
        assert_eq!(p.conditions(), [Condition::Copd, Condition::Diabetes]);
    }

    #[test]
    fn same_seed_same_series() {
        let series = |seed| {
            let mut p = Patient::new(seed, &[Condition::Hypertension]);
            (0..50)
                .map(|i| p.measure(Kind::BloodPressure, T0 + i * 3_600_000, None))
                .collect::<Vec<_>>()
        };
        assert_eq!(series(7), series(7));
        assert_ne!(series(7), series(8));
    }

    #[test]
    fn hypertensive_pressure_is_higher() {
        let mean_sys = |conditions: &[Condition]| {
            let mut total = 0.0;
            let mut n = 0.0;
            for seed in 0..40 {
                let mut p = Patient::new(seed, conditions);
                for i in 0..25 {
                    if let Measurement::BloodPressure(bp) = p
                        .measure(Kind::BloodPressure, T0 + i * DAY_MS, None)
                        .measurement
                    {
                        total += f64::from(bp.systolic);
                        n += 1.0;
                    }
                }
            }
            total / n
        };
        let hyper = mean_sys(&[Condition::Hypertension]);
        let normo = mean_sys(&[]);
        assert!((138.0..152.0).contains(&hyper), "hypertensive mean {hyper}");
        assert!((115.0..129.0).contains(&normo), "normotensive mean {normo}");
    }

    #[test]
    fn mix_and_hash_spread() {
        assert_ne!(mix(1, 2), mix(2, 1));
        assert_ne!(hash_str("P-1"), hash_str("P-2"));
        assert_eq!(hash_str(""), 0xCBF2_9CE4_8422_2325);
    }
}
