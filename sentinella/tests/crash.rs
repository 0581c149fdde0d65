//! The `sentinella` process dies under load (SIGKILL) or is stopped (SIGTERM) and restarts:
//! devices reconnect and resend, and in the end every reading they generated is stored exactly
//! once and no device holds an unacknowledged reading.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use simulators::device::{DeviceHandle, DeviceSpec, spawn};
use store::testing::TestDb;
use store::{DeviceKind, NewDevice, NewPatient};
use tokio_util::sync::CancellationToken;

const DEVICES: usize = 12;

#[derive(Clone, Copy, Debug)]
enum Stop {
    Kill,
    Term,
}

async fn survives(db: TestDb, stop: Stop) -> anyhow::Result<()> {
    let store = db.store.clone();
    let cot = store.add_cot("COT-CRASH", "COT crash").await?;
    let mut gw = common::Node::new(&db.url, "crash", None)?;
    gw.start().await?;

    let cancel = CancellationToken::new();
    let mut devices: Vec<DeviceHandle> = Vec::new();
    for i in 0..DEVICES {
        let patient = store
            .add_patient(&NewPatient {
                cot_id: cot.id,
                code: format!("P-{i}"),
                display_name: format!("Paziente {i}"),
                birth_year: None,
                conditions: vec![],
            })
            .await?;
        let secret = store::credentials::generate_secret();
        let id = format!("crash-{i}");
        store
            .add_device(&NewDevice {
                id: id.clone(),
                patient_id: patient.id,
                kind: DeviceKind::Glucose,
                secret_hash: store::credentials::hash_secret(&secret),
                model: None,
            })
            .await?;
        let mut spec = DeviceSpec::new(&id, &secret, format!("127.0.0.1:{}", gw.edge));
        spec.resend_after = Duration::from_secs(2);
        let dev = spawn(spec, cancel.clone());
        dev.wait_connected(Duration::from_secs(20)).await?;
        devices.push(dev);
    }

    let generating = Arc::new(AtomicBool::new(true));
    let feeders: Vec<_> = devices
        .iter()
        .map(|dev| {
            let dev = dev.clone();
            let generating = generating.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                let mut i = 0u32;
                while generating.load(Ordering::Relaxed) {
                    let m = protocol::Measurement::Glucose(protocol::Glucose {
                        value: 80.0 + (i % 50) as f32,
                        unit: protocol::GlucoseUnit::MgDl,
                        sample: protocol::SampleType::CapillaryPlasma,
                        meal: None,
                    });
                    let now =
                        (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
                    seqs.push(dev.measure(m, now));
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                seqs
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = store.count_readings(None).await?;
    assert!(before > 0, "nothing stored before the stop");
    match stop {
        Stop::Kill => gw.kill()?,
        Stop::Term => {
            let status = gw.terminate().await?;
            assert!(status.success(), "SIGTERM exit status {status}");
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    gw.start().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    generating.store(false, Ordering::Relaxed);

    let mut total = 0;
    for (dev, feeder) in devices.iter().zip(feeders) {
        let mut generated = feeder.await?;
        dev.wait_settled(Duration::from_secs(60)).await?;
        generated.sort_unstable();
        let stored: Vec<u32> = store
            .stored_seqs(dev.id())
            .await?
            .into_iter()
            .map(|s| s as u32)
            .collect();
        assert_eq!(
            stored,
            generated,
            "{}: stored set differs from generated set ({stop:?})",
            dev.id()
        );
        assert!(dev.stats().connects >= 2, "{} never reconnected", dev.id());
        total += generated.len();
    }
    assert_eq!(store.count_readings(None).await?, total as i64);
    for dev in devices {
        dev.stop().await;
    }
    cancel.cancel();
    gw.terminate().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_on_postgres() -> anyhow::Result<()> {
    survives(TestDb::postgres().await, Stop::Kill).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_on_sqlite() -> anyhow::Result<()> {
    survives(TestDb::sqlite().await, Stop::Kill).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_on_postgres() -> anyhow::Result<()> {
    survives(TestDb::postgres().await, Stop::Term).await
}
