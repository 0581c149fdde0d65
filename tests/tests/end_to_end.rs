//! Simulated home devices → edge → broker → ingest → store → API, on every backend: the API
//! returns exactly the readings sent, resends create no duplicates, and every device is acked
//! for everything it sent.

use std::collections::HashMap;
use std::time::Duration;

use e2e::harness::{Db, Launch, Stack, now_ms};
use protocol::{
    BloodPressure, Glucose, GlucoseUnit, MealContext, Measurement, PressureUnit, SampleType, Spo2,
};
use simulators::device::{DeviceHandle, DeviceSpec, spawn};
use store::DeviceKind;
use tokio_util::sync::CancellationToken;

const PATIENTS: usize = 4;
const PER_DEVICE: u32 = 60;
const SETTLE: Duration = Duration::from_secs(60);

/// A deterministic, plausible measurement for reading `i` of a device of `kind`.
fn measurement(kind: DeviceKind, i: u32) -> Measurement {
    let f = i as f32;
    match kind {
        DeviceKind::BloodPressure => Measurement::BloodPressure(BloodPressure {
            systolic: 110.0 + f,
            diastolic: 70.0 + f / 2.0,
            mean: Some(85.0 + f / 2.0),
            pulse: Some(60.0 + (i % 30) as f32),
            unit: PressureUnit::MmHg,
        }),
        DeviceKind::Spo2 => Measurement::Spo2(Spo2 {
            percent: 88.0 + (i % 12) as f32,
            pulse: Some(70.0 + (i % 20) as f32),
            perfusion_index: Some(1.5),
        }),
        DeviceKind::Glucose => Measurement::Glucose(Glucose {
            // Alternate units: the store keeps mg/dL.
            value: if i.is_multiple_of(2) {
                90.0 + f
            } else {
                5.0 + f / 10.0
            },
            unit: if i.is_multiple_of(2) {
                GlucoseUnit::MgDl
            } else {
                GlucoseUnit::MmolL
            },
            sample: SampleType::CapillaryPlasma,
            meal: Some(MealContext::Fasting),
        }),
    }
}

/// The canonical (kind, field, value) the API must return for `m`.
fn expected_fields(m: &Measurement) -> Vec<(&'static str, f32)> {
    match m {
        Measurement::BloodPressure(bp) => {
            vec![
                ("systolic", bp.systolic),
                ("diastolic", bp.diastolic),
                ("pulse", bp.pulse.unwrap_or_default()),
            ]
        }
        Measurement::Spo2(ox) => vec![
            ("spo2", ox.percent),
            ("pulse", ox.pulse.unwrap_or_default()),
        ],
        Measurement::Glucose(g) => vec![("glucose_mg_dl", g.mg_dl())],
    }
}

async fn devices_to_api(db: Db) -> anyhow::Result<()> {
    let stack = Stack::start(db).await?;
    let cancel = CancellationToken::new();
    let mut devices: Vec<(DeviceHandle, DeviceKind, i64)> = Vec::new();
    for _ in 0..PATIENTS {
        let patient = stack.patient(&["hypertension", "copd", "diabetes"]).await?;
        for kind in [
            DeviceKind::BloodPressure,
            DeviceKind::Spo2,
            DeviceKind::Glucose,
        ] {
            let creds = stack.device(patient.id, kind).await?;
            let mut spec = DeviceSpec::new(&creds.id, &creds.secret, stack.edge.to_string());
            spec.max_batch = 16;
            spec.resend_after = Duration::from_secs(3);
            devices.push((spawn(spec, cancel.clone()), kind, patient.id));
        }
    }
    for (dev, _, _) in &devices {
        dev.wait_connected(Duration::from_secs(20)).await?;
    }

    // Each device measures PER_DEVICE readings, one minute apart, ending now.
    let mut expected: HashMap<(String, u32), (i64, Measurement)> = HashMap::new();
    let start = now_ms() - i64::from(PER_DEVICE) * 60_000;
    for (dev, kind, patient) in &devices {
        for i in 0..PER_DEVICE {
            let m = measurement(*kind, i);
            let seq = dev.measure(m, start + i64::from(i) * 60_000);
            expected.insert((dev.id().to_owned(), seq), (*patient, m));
        }
    }
    for (dev, _, _) in &devices {
        dev.wait_settled(SETTLE).await?;
        let stats = dev.stats();
        assert_eq!(
            stats.committed,
            u64::from(PER_DEVICE),
            "{}: {stats:?}",
            dev.id()
        );
        assert_eq!(stats.rejected, 0, "{}: {stats:?}", dev.id());
        assert_eq!(dev.committed().len(), PER_DEVICE as usize);
    }

    // The API returns exactly what was sent, per patient, in canonical units.
    let mut seen = 0;
    for patient in devices
        .iter()
        .map(|d| d.2)
        .collect::<std::collections::BTreeSet<_>>()
    {
        let (status, body) = stack
            .get(&format!("/api/v1/patients/{patient}/readings?limit=10000"))
            .await?;
        assert_eq!(status, 200, "{body}");
        let readings = body["readings"].as_array().expect("readings array");
        assert_eq!(readings.len(), 3 * PER_DEVICE as usize, "patient {patient}");
        for r in readings {
            let key = (
                r["device_id"].as_str().unwrap_or_default().to_owned(),
                r["seq"].as_u64().unwrap_or(0) as u32,
            );
            let (owner, m) = expected
                .get(&key)
                .unwrap_or_else(|| panic!("unexpected reading {r}"));
            assert_eq!(*owner, patient);
            for (field, want) in expected_fields(m) {
                let got = r[field].as_f64().unwrap_or(f64::NAN) as f32;
                assert!(
                    (got - want).abs() < 0.01,
                    "{key:?} {field}: got {got}, want {want}"
                );
            }
            seen += 1;
        }
        let (_, body) = stack
            .get(&format!(
                "/api/v1/patients/{patient}/readings?kind=spo2&limit=10000"
            ))
            .await?;
        assert_eq!(body["count"], PER_DEVICE);
    }
    assert_eq!(seen, expected.len());

    // Resending committed readings stores nothing twice, and they are acked again.
    let total = stack.store().count_readings(None).await?;
    let dup_before = gateway::Metrics::get(&stack.metrics.readings_duplicate_total);
    for (dev, _, _) in &devices[..3] {
        let acks_before = dev.stats().acks;
        let replayed = dev.replay(&dev.committed());
        assert_eq!(replayed, PER_DEVICE as usize);
        let deadline = tokio::time::Instant::now() + SETTLE;
        while dev.stats().acks < acks_before + 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        dev.wait_settled(SETTLE).await?;
    }
    let deadline = tokio::time::Instant::now() + SETTLE;
    while gateway::Metrics::get(&stack.metrics.readings_duplicate_total)
        < dup_before + 3 * u64::from(PER_DEVICE)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        gateway::Metrics::get(&stack.metrics.readings_duplicate_total),
        dup_before + 3 * u64::from(PER_DEVICE)
    );
    assert_eq!(stack.store().count_readings(None).await?, total);
    for (dev, _, _) in &devices {
        let stored: Vec<u32> = stack
            .store()
            .stored_seqs(dev.id())
            .await?
            .into_iter()
            .map(|s| s as u32)
            .collect();
        assert_eq!(stored, dev.committed(), "{}", dev.id());
    }

    // The operator sees the same numbers on /metrics.
    let (status, metrics) = stack.get("/metrics").await?;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    let committed = format!("sentinella_readings_committed_total {total}\n");
    assert!(
        metrics.contains(&committed),
        "{committed:?} not in /metrics:\n{metrics}"
    );
    assert!(
        metrics.contains("sentinella_ingest_latency_seconds_count"),
        "{metrics}"
    );

    // Devices show up with last-seen and status.
    let (_, body) = stack.get("/api/v1/devices").await?;
    let listed = body["devices"].as_array().expect("devices");
    assert_eq!(listed.len(), devices.len());
    assert!(
        listed
            .iter()
            .all(|d| d["last_seen_at"].is_string() && d["online"] == true),
        "{body}"
    );

    for (dev, _, _) in devices {
        dev.stop().await;
    }
    cancel.cancel();
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_to_api_sqlite() -> anyhow::Result<()> {
    devices_to_api(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_to_api_postgres() -> anyhow::Result<()> {
    devices_to_api(Db::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_to_api_timescale() -> anyhow::Result<()> {
    devices_to_api(Db::Timescale).await
}

/// A graceful stop flushes what the pipeline holds; a restart over the same database keeps
/// every reading exactly once and devices that resend are acked without duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_everything_once() -> anyhow::Result<()> {
    let stack = Stack::start(Db::Postgres).await?;
    let patient = stack.patient(&["hypertension"]).await?;
    let creds = stack.device(patient.id, DeviceKind::BloodPressure).await?;
    let cancel = CancellationToken::new();
    let dev = spawn(
        DeviceSpec::new(&creds.id, &creds.secret, stack.edge.to_string()),
        cancel.clone(),
    );
    dev.wait_connected(Duration::from_secs(20)).await?;
    for i in 0..100 {
        dev.measure(
            measurement(DeviceKind::BloodPressure, i),
            now_ms() - 1000 * i64::from(100 - i),
        );
    }
    dev.wait_settled(SETTLE).await?;
    // A real device keeps its seq counter across reboots; so does this one.
    let next_seq = dev.stats().next_seq;
    dev.stop().await;
    let db = stack.stop().await;
    assert_eq!(db.store.count_readings(Some(&creds.id)).await?, 100);

    let stack = Stack::start_on(db, Launch::default()).await?;
    let mut spec = DeviceSpec::new(&creds.id, &creds.secret, stack.edge.to_string());
    spec.first_seq = next_seq;
    let dev = spawn(spec, cancel.clone());
    dev.wait_connected(Duration::from_secs(20)).await?;
    for i in 100..150 {
        dev.measure(measurement(DeviceKind::BloodPressure, i), now_ms());
    }
    dev.wait_settled(SETTLE).await?;
    assert_eq!(stack.store().count_readings(Some(&creds.id)).await?, 150);
    dev.stop().await;
    cancel.cancel();
    stack.stop().await;
    Ok(())
}
