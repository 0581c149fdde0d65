//! Records to Sentinella readings.

mod common;

use common::{BP_FULL, CONTEXT_FASTING, glucose_with_context};
use meter_uart::reading::{MapError, MapOptions, to_reading};
use meter_uart::record::{
    BloodPressureMeasurement, GlucoseContext, GlucoseMeasurement, glucose_status,
};
use meter_uart::{Record, SFloat, Value};
use protocol::reading::sensor;
use protocol::{
    BloodPressure, Glucose, GlucoseUnit, MealContext, Measurement, MeasurementStatus, PressureUnit,
    SampleType,
};

fn bp() -> BloodPressureMeasurement {
    BloodPressureMeasurement::parse(&BP_FULL).expect("valid")
}

fn glucose() -> (GlucoseMeasurement, GlucoseContext) {
    (
        GlucoseMeasurement::parse(&glucose_with_context()).expect("valid"),
        GlucoseContext::parse(&CONTEXT_FASTING).expect("valid"),
    )
}

#[test]
fn blood_pressure() {
    let r = to_reading(&Record::BloodPressure(bp()), &MapOptions::default()).expect("maps");
    assert_eq!(
        r.measurement,
        Measurement::BloodPressure(BloodPressure {
            systolic: 121.0,
            diastolic: 81.0,
            mean: Some(94.0),
            pulse: Some(72.0),
            unit: PressureUnit::MmHg,
        })
    );
    assert_eq!(r.sensor, sensor::BP_BODY_MOVEMENT);
    assert_eq!(r.status, MeasurementStatus(MeasurementStatus::QUESTIONABLE));
    // 2025-11-22T08:30:15Z
    assert_eq!(r.taken_at_ms, Some(1_763_800_215_000));
    let cet = MapOptions {
        utc_offset_min: 60,
        ..MapOptions::default()
    };
    let r = to_reading(&Record::BloodPressure(bp()), &cet).expect("maps");
    assert_eq!(r.taken_at_ms, Some(1_763_800_215_000 - 3_600_000));
}

#[test]
fn every_special_value_in_a_required_field_means_no_reading() {
    for (special, value) in [
        (SFloat::NAN, Value::NaN),
        (SFloat::NRES, Value::NRes),
        (SFloat::POSITIVE_INFINITY, Value::PositiveInfinity),
        (SFloat::NEGATIVE_INFINITY, Value::NegativeInfinity),
        (SFloat::RESERVED, Value::Reserved),
    ] {
        let mut m = bp();
        m.systolic = special;
        assert_eq!(
            to_reading(&Record::BloodPressure(m), &MapOptions::default()),
            Err(MapError::NoValue {
                field: "sys",
                value
            })
        );
        let mut m = bp();
        m.diastolic = special;
        assert!(to_reading(&Record::BloodPressure(m), &MapOptions::default()).is_err());
        let (mut g, c) = glucose();
        if let Some(conc) = g.concentration.as_mut() {
            conc.value = special;
        }
        assert_eq!(
            to_reading(&Record::Glucose(g, Some(c)), &MapOptions::default()),
            Err(MapError::NoValue {
                field: "value",
                value
            })
        );
    }
}

#[test]
fn every_special_value_in_an_optional_field_means_absent() {
    for special in [
        SFloat::NAN,
        SFloat::NRES,
        SFloat::POSITIVE_INFINITY,
        SFloat::NEGATIVE_INFINITY,
        SFloat::RESERVED,
    ] {
        let mut m = bp();
        m.mean_arterial = special;
        m.pulse_rate = Some(special);
        let r = to_reading(&Record::BloodPressure(m), &MapOptions::default()).expect("maps");
        let Measurement::BloodPressure(v) = r.measurement else {
            panic!("kind")
        };
        assert_eq!((v.mean, v.pulse), (None, None), "{special:?}");
    }
}

#[test]
fn other_users_of_a_shared_cuff_are_refused() {
    let mine = MapOptions {
        patient_user: Some(1),
        ..MapOptions::default()
    };
    assert!(to_reading(&Record::BloodPressure(bp()), &mine).is_ok());
    let theirs = MapOptions {
        patient_user: Some(2),
        ..MapOptions::default()
    };
    assert_eq!(
        to_reading(&Record::BloodPressure(bp()), &theirs),
        Err(MapError::OtherUser(1))
    );
    let mut unknown = bp();
    unknown.user_id = Some(0xFF);
    assert!(to_reading(&Record::BloodPressure(unknown), &theirs).is_ok());
}

#[test]
fn glucose_units_sample_meal_and_time() {
    let (g, c) = glucose();
    let r = to_reading(&Record::Glucose(g, Some(c)), &MapOptions::default()).expect("maps");
    assert_eq!(
        r.measurement,
        Measurement::Glucose(Glucose {
            value: 110.0,
            unit: GlucoseUnit::MgDl,
            sample: SampleType::CapillaryWholeBlood,
            meal: Some(MealContext::Fasting),
        })
    );
    assert_eq!(r.status, MeasurementStatus(0));
    assert_eq!(r.taken_at_ms, Some(1_763_795_100_000));

    let mut mol = g;
    if let Some(conc) = mol.concentration.as_mut() {
        conc.value = SFloat::new(61, -4).expect("valid");
        conc.mol_per_l = true;
        conc.sample_type = 9;
    }
    let r = to_reading(&Record::Glucose(mol, None), &MapOptions::default()).expect("maps");
    assert_eq!(
        r.measurement,
        Measurement::Glucose(Glucose {
            value: 6.1,
            unit: GlucoseUnit::MmolL,
            sample: SampleType::InterstitialFluid,
            meal: None,
        })
    );
}

#[test]
fn glucose_status_bits() {
    let (g, _) = glucose();
    let with = |bits: u16, location: u8| {
        let mut m = g;
        m.status = Some(bits);
        if let Some(c) = m.concentration.as_mut() {
            c.location = location;
        }
        to_reading(&Record::Glucose(m, None), &MapOptions::default()).expect("maps")
    };
    let r = with(glucose_status::STRIP_TYPE_INCORRECT, 1);
    assert_eq!(r.sensor, sensor::GLU_STRIP_TYPE_INCORRECT);
    assert!(r.status.has(MeasurementStatus::INVALID));
    let r = with(glucose_status::RESULT_TOO_HIGH, 1);
    assert_eq!(r.status, MeasurementStatus(MeasurementStatus::QUESTIONABLE));
    let r = with(glucose_status::TIME_FAULT | 0xF000, 1);
    assert_eq!(r.sensor, sensor::GLU_TIME_FAULT, "undefined bits dropped");
    assert_eq!(
        r.taken_at_ms, None,
        "time fault: the meter's time is not used"
    );
    let r = with(0, 4);
    let Measurement::Glucose(v) = r.measurement else {
        panic!("kind")
    };
    assert_eq!(v.sample, SampleType::ControlSolution);
    assert!(r.status.has(MeasurementStatus::TEST_DATA));
    assert!(!r.status.is_patient_data());

    let mut none = g;
    none.concentration = None;
    assert_eq!(
        to_reading(&Record::Glucose(none, None), &MapOptions::default()),
        Err(MapError::NoConcentration)
    );
}
