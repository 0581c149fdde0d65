//! The Bluetooth layouts, byte for byte.

mod common;

use common::{BP_FULL, CONTEXT_FASTING, glucose_with_context};
use meter_uart::record::{
    BloodPressureMeasurement, Concentration, DateTime, GlucoseContext, GlucoseMeasurement,
    RecordError, bp_status, glucose_status,
};
use meter_uart::{SFloat, Value};

#[test]
fn blood_pressure_with_every_field() {
    let m = BloodPressureMeasurement::parse(&BP_FULL).expect("valid");
    assert!(!m.kpa);
    assert_eq!(m.systolic.to_f32(), Some(121.0));
    assert_eq!(m.diastolic.to_f32(), Some(81.0));
    assert_eq!(m.mean_arterial.to_f32(), Some(94.0));
    assert_eq!(
        m.timestamp,
        Some(DateTime {
            year: 2025,
            month: 11,
            day: 22,
            hours: 8,
            minutes: 30,
            seconds: 15
        })
    );
    assert_eq!(m.pulse_rate.and_then(SFloat::to_f32), Some(72.0));
    assert_eq!(m.user_id, Some(1));
    assert_eq!(m.status, Some(bp_status::BODY_MOVEMENT));
    let mut buf = [0u8; 32];
    let n = m.encode(&mut buf).expect("fits");
    assert_eq!(buf[..n], BP_FULL);
}

#[test]
fn blood_pressure_minimal_in_kpa() {
    // flags: kPa only; 16.1 / 10.7 / 12.5 kPa as SFLOAT with exponent -1.
    let bytes = [0x01, 0xA1, 0xF0, 0x6B, 0xF0, 0x7D, 0xF0];
    let m = BloodPressureMeasurement::parse(&bytes).expect("valid");
    assert!(m.kpa);
    assert_eq!(m.systolic.to_f32(), Some(16.1));
    assert_eq!(
        (m.timestamp, m.pulse_rate, m.user_id, m.status),
        (None, None, None, None)
    );
    let mut buf = [0u8; 32];
    let n = m.encode(&mut buf).expect("fits");
    assert_eq!(buf[..n], bytes);
}

#[test]
fn truncated_and_trailing_are_refused() {
    for cut in 0..BP_FULL.len() {
        assert_eq!(
            BloodPressureMeasurement::parse(&BP_FULL[..cut]),
            Err(RecordError::Truncated),
            "cut at {cut}"
        );
    }
    let mut long = BP_FULL.to_vec();
    long.push(0);
    assert_eq!(
        BloodPressureMeasurement::parse(&long),
        Err(RecordError::TrailingBytes)
    );
    let g = glucose_with_context();
    for cut in 0..g.len() {
        assert!(
            GlucoseMeasurement::parse(&g[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    assert!(GlucoseContext::parse(&CONTEXT_FASTING[..3]).is_err());
    let mut buf = [0u8; 4];
    let m = BloodPressureMeasurement::parse(&BP_FULL).expect("valid");
    assert_eq!(m.encode(&mut buf), Err(RecordError::BufferTooSmall));
}

#[test]
fn glucose_measurement_and_context() {
    let m = GlucoseMeasurement::parse(&glucose_with_context()).expect("valid");
    assert_eq!(m.sequence, 7);
    assert_eq!(m.time_offset_min, Some(5));
    assert!(m.context_follows);
    assert_eq!(
        m.concentration,
        Some(Concentration {
            value: SFloat::new(110, -5).expect("valid"),
            mol_per_l: false,
            sample_type: 1,
            location: 1,
        })
    );
    // 2025-11-22T07:05:00Z
    assert_eq!(m.unix_ms(0), Some(1_763_795_100_000));
    // The same wall time in CET (UTC+1) is an hour earlier in UTC.
    assert_eq!(m.unix_ms(60), Some(1_763_795_100_000 - 3_600_000));
    let mut buf = [0u8; 32];
    let n = m.encode(&mut buf).expect("fits");
    assert_eq!(buf[..n], glucose_with_context()[..]);

    let c = GlucoseContext::parse(&CONTEXT_FASTING).expect("valid");
    assert_eq!((c.sequence, c.meal), (7, Some(3)));
    let n = c.encode(&mut buf).expect("fits");
    assert_eq!(buf[..n], CONTEXT_FASTING);
}

#[test]
fn glucose_in_mol_per_litre_with_status() {
    let m = GlucoseMeasurement {
        sequence: 65535,
        base_time: DateTime::default(),
        time_offset_min: Some(-30),
        concentration: Some(Concentration {
            value: SFloat::new(61, -4).expect("valid"),
            mol_per_l: true,
            sample_type: 10,
            location: 4,
        }),
        status: Some(glucose_status::RESULT_TOO_HIGH | glucose_status::TIME_FAULT),
        context_follows: false,
    };
    let mut buf = [0u8; 32];
    let n = m.encode(&mut buf).expect("fits");
    assert_eq!(buf[0], 0x0F, "flags: offset, concentration, mol/L, status");
    assert_eq!(GlucoseMeasurement::parse(&buf[..n]), Ok(m));
    assert_eq!(m.unix_ms(0), None, "year 0: time not known");
}

#[test]
fn context_with_every_field_round_trips() {
    let c = GlucoseContext {
        sequence: 300,
        extended_flags: Some(0),
        carbohydrate: Some((1, SFloat::new(50, -3).expect("valid"))),
        meal: Some(2),
        tester_health: Some(0x51),
        exercise: Some((1800, 60)),
        medication: Some((2, SFloat::new(8, -6).expect("valid"), true)),
        hba1c: Some(SFloat::new(65, -1).expect("valid")),
    };
    let mut buf = [0u8; 32];
    let n = c.encode(&mut buf).expect("fits");
    assert_eq!(n, 17);
    assert_eq!(buf[0], 0xFF);
    assert_eq!(GlucoseContext::parse(&buf[..n]), Ok(c));
}

#[test]
fn special_values_survive_the_layouts() {
    for special in [
        SFloat::NAN,
        SFloat::NRES,
        SFloat::POSITIVE_INFINITY,
        SFloat::NEGATIVE_INFINITY,
        SFloat::RESERVED,
    ] {
        let mut bytes = BP_FULL;
        bytes[1..3].copy_from_slice(&special.to_le_bytes());
        let m = BloodPressureMeasurement::parse(&bytes).expect("valid layout");
        assert!(m.systolic.value().is_special());
        assert_eq!(m.systolic, special);
    }
    assert_eq!(SFloat::NRES.value(), Value::NRes);
}

#[test]
fn calendar() {
    let t = |year, month, day| DateTime {
        year,
        month,
        day,
        ..DateTime::default()
    };
    assert_eq!(t(1970, 1, 1).unix_ms(0), Some(0));
    assert_eq!(t(2000, 2, 29).unix_ms(0), Some(951_782_400_000));
    assert_eq!(t(2023, 2, 29).unix_ms(0), None, "not a leap year");
    assert_eq!(t(2025, 13, 1).unix_ms(0), None);
    assert_eq!(t(2025, 4, 31).unix_ms(0), None);
    assert_eq!(t(0, 0, 0).unix_ms(0), None);
    let mut late = t(2025, 1, 1);
    late.hours = 24;
    assert_eq!(late.unix_ms(0), None);
}
