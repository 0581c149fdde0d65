//! Generated values always pass the protocol's validation and have the right clinical flavour.

use protocol::reading::sensor;
use protocol::{GlucoseUnit, Kind, Measurement, Reading};
use simulators::physiology::{Condition, Patient};
use simulators::schedule::Schedule;

const T0: i64 = 1_763_798_400_000;
const DAY: i64 = 86_400_000;

fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

/// Readings from `patients` patients with `conditions`, `days` days each, on their schedules.
fn readings(kind: Kind, conditions: &[Condition], patients: u64, days: i64) -> Vec<Reading> {
    let mut out = Vec::new();
    for seed in 0..patients {
        let mut patient = Patient::new(seed * 7919 + 1, conditions);
        let schedule = Schedule::new(kind, conditions, seed);
        for (ts, slot) in schedule.between(T0, T0 + days * DAY) {
            let sample = patient.measure(kind, ts, slot.meal);
            out.push(Reading {
                seq: out.len() as u32,
                ts_ms: ts,
                clock_unset: false,
                status: sample.status,
                sensor: sample.sensor,
                measurement: sample.measurement,
            });
        }
    }
    out
}

#[test]
fn thousands_of_readings_pass_protocol_validation() {
    let mixes: &[&[Condition]] = &[
        &[],
        &[Condition::Hypertension],
        &[Condition::Copd],
        &[Condition::Diabetes],
        &[Condition::HeartFailure],
        &[
            Condition::Hypertension,
            Condition::Copd,
            Condition::Diabetes,
            Condition::HeartFailure,
        ],
    ];
    let mut checked = 0;
    let mut buf = vec![0u8; protocol::MAX_PAYLOAD];
    for conditions in mixes {
        for kind in [Kind::BloodPressure, Kind::Spo2, Kind::Glucose] {
            let all = readings(kind, conditions, 40, 30);
            for chunk in all.chunks(protocol::MAX_BATCH) {
                let n = protocol::encode_batch(chunk, &mut buf).unwrap();
                let decoded = protocol::decode_batch(&buf[..n]).unwrap();
                assert_eq!(decoded.len(), chunk.len());
                for (item, original) in decoded.iter().zip(chunk) {
                    let reading = item
                        .unwrap_or_else(|(seq, e)| panic!("seq {seq} refused: {e} ({original:?})"));
                    assert_eq!(&reading, original, "the JSON round trip is exact");
                }
                checked += chunk.len();
            }
        }
    }
    assert!(checked > 30_000, "{checked}");
}

#[test]
fn copd_saturates_lower_than_healthy() {
    let spo2 = |conditions: &[Condition]| {
        let values: Vec<f32> = readings(Kind::Spo2, conditions, 30, 20)
            .iter()
            .map(|r| match r.measurement {
                Measurement::Spo2(s) => s.percent,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(values.iter().all(|v| (50.0..=100.0).contains(v)));
        median(values)
    };
    let copd = spo2(&[Condition::Copd]);
    let healthy = spo2(&[Condition::Hypertension]);
    assert!((89.0..=93.0).contains(&copd), "COPD median {copd}");
    assert!((96.0..=98.0).contains(&healthy), "healthy median {healthy}");
    assert!(copd < healthy);
}

#[test]
fn blood_pressure_has_the_right_shape() {
    let all = readings(Kind::BloodPressure, &[Condition::Hypertension], 50, 30);
    let mut irregular = 0;
    let mut sys = Vec::new();
    let mut dia = Vec::new();
    for r in &all {
        let Measurement::BloodPressure(bp) = r.measurement else {
            panic!("{r:?}")
        };
        let map = bp.mean.unwrap();
        assert!(bp.diastolic < bp.systolic);
        // MAP = DIA + (SYS - DIA) / 3, rounded.
        assert!((map - (bp.diastolic + (bp.systolic - bp.diastolic) / 3.0)).abs() <= 0.5);
        assert!(bp.pulse.is_some());
        if r.sensor & sensor::BP_IRREGULAR_PULSE != 0 {
            irregular += 1;
        }
        sys.push(bp.systolic);
        dia.push(bp.diastolic);
    }
    let (sys, dia) = (median(sys), median(dia));
    assert!((138.0..=152.0).contains(&sys), "systolic median {sys}");
    assert!((82.0..=94.0).contains(&dia), "diastolic median {dia}");
    let rate = f64::from(irregular) / all.len() as f64;
    assert!((0.008..=0.035).contains(&rate), "irregular pulse in {rate}");
}

#[test]
fn glucose_is_higher_for_diabetics_and_some_meters_use_mmol() {
    let fasting_mg_dl = |conditions: &[Condition]| {
        let values: Vec<f32> = readings(Kind::Glucose, conditions, 60, 20)
            .iter()
            .filter_map(|r| match r.measurement {
                Measurement::Glucose(g) if g.meal == Some(protocol::MealContext::Fasting) => {
                    Some(g.mg_dl())
                }
                _ => None,
            })
            .collect();
        median(values)
    };
    let diabetic = fasting_mg_dl(&[Condition::Diabetes]);
    let other = fasting_mg_dl(&[Condition::Hypertension]);
    assert!(
        (120.0..=160.0).contains(&diabetic),
        "diabetic fasting {diabetic}"
    );
    assert!(
        (85.0..=105.0).contains(&other),
        "non-diabetic fasting {other}"
    );

    let units: Vec<GlucoseUnit> = (0..100)
        .map(|seed| Patient::new(seed, &[Condition::Diabetes]).glucose_unit())
        .collect();
    let mmol = units.iter().filter(|u| **u == GlucoseUnit::MmolL).count();
    assert!((15..=45).contains(&mmol), "{mmol} of 100 meters in mmol/L");
}

#[test]
fn low_perfusion_is_rare_and_flagged() {
    let all = readings(Kind::Spo2, &[Condition::Copd], 60, 30);
    let flagged: Vec<&Reading> = all
        .iter()
        .filter(|r| r.sensor & sensor::PLX_LOW_PERFUSION != 0)
        .collect();
    let rate = flagged.len() as f64 / all.len() as f64;
    assert!((0.003..=0.02).contains(&rate), "low perfusion in {rate}");
    for r in flagged {
        let Measurement::Spo2(s) = r.measurement else {
            panic!()
        };
        assert!(s.perfusion_index.unwrap() < 0.6, "{s:?}");
    }
}
