//! Fixtures shared by the store's integration tests.
// Test support: unwrapping is the point, and each test binary uses a different subset.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use store::{
    Cot, Device, DeviceKind, NewDevice, NewPatient, NewReading, Patient, ReadingKind, Store,
    credentials,
};
use time::OffsetDateTime;
use time::macros::datetime;

/// Runs `async fn $name(db: TestDb, layout: ReadingsLayout)` on SQLite, PostgreSQL (a fresh
/// database) and TimescaleDB (a fresh schema on `TSDB_DATABASE_URL`; fails if unset).
#[macro_export]
macro_rules! on_all_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use store::ReadingsLayout;
            use store::testing::TestDb;

            #[tokio::test]
            async fn sqlite() {
                super::$name(TestDb::sqlite().await, ReadingsLayout::Sqlite).await;
            }

            #[tokio::test]
            async fn postgres() {
                super::$name(TestDb::postgres().await, ReadingsLayout::PostgresPartitioned).await;
            }

            #[tokio::test]
            async fn timescale() {
                super::$name(TestDb::timescale().await, ReadingsLayout::TimescaleHypertable).await;
            }
        }
    )*};
}

pub const T0: OffsetDateTime = datetime!(2025-03-10 08:00 UTC);

/// A COT, a patient and one device per kind (ids `<prefix>-bp`, `<prefix>-spo2`,
/// `<prefix>-glucose`).
pub struct Fixture {
    pub cot: Cot,
    pub patient: Patient,
    pub bp: Device,
    pub spo2: Device,
    pub glucose: Device,
}

pub async fn fixture(store: &Store, prefix: &str) -> Fixture {
    let cot = store
        .add_cot(&format!("COT-{prefix}"), "COT Milano Nord")
        .await
        .unwrap();
    let patient = store
        .add_patient(&NewPatient {
            cot_id: cot.id,
            code: format!("P-{prefix}"),
            display_name: "M. R.".into(),
            birth_year: Some(1948),
            conditions: vec!["hypertension".into(), "diabetes".into()],
        })
        .await
        .unwrap();
    let mut devices = Vec::new();
    for kind in [
        DeviceKind::BloodPressure,
        DeviceKind::Spo2,
        DeviceKind::Glucose,
    ] {
        let device = store
            .add_device(&NewDevice {
                id: format!("{prefix}-{}", kind.as_str()),
                patient_id: patient.id,
                kind,
                secret_hash: credentials::hash_secret(&credentials::generate_secret()),
                model: Some("test".into()),
            })
            .await
            .unwrap();
        devices.push(device);
    }
    let glucose = devices.pop().unwrap();
    let spo2 = devices.pop().unwrap();
    let bp = devices.pop().unwrap();
    Fixture {
        cot,
        patient,
        bp,
        spo2,
        glucose,
    }
}

/// A reading of the device's kind, with plausible values derived from `seq`.
pub fn reading(device: &Device, seq: i64, measured_at: OffsetDateTime) -> NewReading {
    let kind = ReadingKind::from(device.kind);
    let v = (seq % 20) as f32;
    let mut r = NewReading {
        ..NewReading::bare(
            &device.id,
            seq,
            device.patient_id,
            kind,
            measured_at,
            measured_at + time::Duration::seconds(5),
        )
    };
    match kind {
        ReadingKind::BloodPressure => {
            r.systolic = Some(120.0 + v);
            r.diastolic = Some(80.0 + v / 2.0);
            r.mean_arterial = Some(93.5);
            r.pulse = Some(70.0);
        }
        ReadingKind::Spo2 => {
            r.spo2 = Some(97.0 - v / 10.0);
            r.pulse = Some(66.0);
            r.perfusion_index = Some(2.25);
        }
        ReadingKind::Glucose => {
            r.glucose_mg_dl = Some(110.0 + v);
            r.glucose_sample = Some("capillary_whole_blood".into());
            r.glucose_meal = Some("preprandial".into());
            r.source_unit = Some("mmol/L".into());
        }
    }
    r
}
