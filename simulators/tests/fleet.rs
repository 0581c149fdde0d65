//! Provisioning into a real (SQLite) store, and a whole fleet run against Mosquitto with the
//! test acking as the gateway.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{FakeGateway, MOSQUITTO, unique_id};
use protocol::DeviceId;
use simulators::bench::{BenchOptions, run_bench};
use simulators::fleet::{FleetFile, RunOptions, provision, run_fleet};
use store::testing::TestDb;
use tokio_util::sync::CancellationToken;

fn prefix() -> String {
    // Device ids are `{prefix}-glucose-00001`: keep the prefix short but unique on the
    // shared broker.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!(
        "t{}x{}x{}",
        std::process::id(),
        nanos % 1_000_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[tokio::test]
async fn provision_enrolls_patients_with_fitting_devices() {
    let db = TestDb::sqlite().await;
    let prefix = prefix();
    let fleet = provision(&db.store, "COT-TEST", 30, 5, &prefix)
        .await
        .unwrap();

    let cot = db.store.cot_by_code("COT-TEST").await.unwrap().unwrap();
    let patients = db.store.list_patients(None, Some(cot.id)).await.unwrap();
    assert_eq!(patients.len(), 30);
    let mut per_patient: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for d in &fleet.devices {
        DeviceId::parse(&d.id).unwrap();
        assert!(
            d.id.starts_with(&format!("{prefix}-{}-", d.kind)),
            "{}",
            d.id
        );
        per_patient
            .entry(&d.patient_code)
            .or_default()
            .push(&d.kind);
        let auth = db.store.device_auth(&d.id).await.unwrap().unwrap();
        assert!(store::credentials::verify_secret(
            &d.secret,
            &auth.secret_hash
        ));
        let stored = db.store.get_device(&d.id).await.unwrap().unwrap();
        assert_eq!(stored.kind.as_str(), d.kind);
        let has = |c: &str| d.conditions.iter().any(|x| x == c);
        match d.kind.as_str() {
            "glucose" => assert!(has("diabetes")),
            "spo2" => assert!(has("copd") || has("heart_failure")),
            "bp" => assert!(has("hypertension") || has("heart_failure") || has("copd")),
            other => panic!("kind {other}"),
        }
    }
    assert_eq!(per_patient.len(), 30, "every patient has a device");
    assert!(per_patient.values().all(|k| (1..=3).contains(&k.len())));

    // Same seed, same fleet shape; same prefix again is a conflict.
    let err = provision(&db.store, "COT-TEST", 1, 5, &prefix)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("already exists"), "{err:#}");
    // The COT is reused with a new prefix.
    let other = provision(&db.store, "COT-TEST", 2, 5, &format!("{prefix}b"))
        .await
        .unwrap();
    assert!(!other.devices.is_empty());
    assert_eq!(db.store.list_cots().await.unwrap().len(), 1);

    // The fleet file round-trips through disk.
    let dir = tempfile_dir();
    let path = dir.join("fleet.json");
    fleet.save(&path).unwrap();
    assert_eq!(FleetFile::load(&path).unwrap(), fleet);
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique_id("fleetfile"));
    std::fs::create_dir_all(&dir).expect("creating a temporary folder");
    dir
}

async fn small_fleet(patients: usize) -> FleetFile {
    let db = TestDb::sqlite().await;
    provision(&db.store, "COT-RUN", patients, 9, &prefix())
        .await
        .expect("provisioning a small fleet")
}

#[tokio::test]
async fn a_fleet_runs_on_schedule_and_drains() {
    let fleet = small_fleet(4).await;
    let ids: Vec<String> = fleet.devices.iter().map(|d| d.id.clone()).collect();
    let _gateway = FakeGateway::start(&ids, true).await;

    // Two simulated days per real second, for three seconds: six days.
    let opts = RunOptions {
        speed: 2.0 * 86_400.0,
        duration: Duration::from_secs(3),
        seed: 3,
        first_seq: 500,
        drain: Duration::from_secs(10),
        ..RunOptions::default()
    };
    let report = run_fleet(&fleet, MOSQUITTO, opts, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.devices, fleet.devices.len());
    assert_eq!(report.connected, fleet.devices.len(), "{report:?}");
    assert_eq!(report.pending, 0, "{report}");
    assert_eq!(report.committed, report.generated);
    assert!(report.problems.is_empty(), "{report:?}");
    // Each device measures 1-4 times a simulated day; about six days went by (the first
    // moments may fall before the devices connected — they are queued, not lost).
    let days = (report.simulated_to_ms - report.simulated_from_ms) as f64 / 86_400_000.0;
    assert!((5.0..7.5).contains(&days), "{days}");
    let min = (fleet.devices.len() as f64 * (days - 1.0)) as u64;
    let max = (fleet.devices.len() as f64 * 4.0 * (days + 1.0)) as u64;
    assert!((min..=max).contains(&report.generated), "{report}");
    assert!(report.next_seq > 500);
}

#[tokio::test]
async fn bench_measures_throughput_and_latency() {
    let fleet = small_fleet(2).await;
    let ids: Vec<String> = fleet.devices.iter().map(|d| d.id.clone()).collect();
    let _gateway = FakeGateway::start(&ids, true).await;
    let opts = BenchOptions {
        devices: Some(2),
        duration: Duration::from_secs(2),
        batch: 16,
        in_flight: 2,
        gateway_pid: Some(std::process::id()),
        ..BenchOptions::default()
    };
    let report = run_bench(&fleet, MOSQUITTO, &opts, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((report.devices, report.connected), (2, 2));
    assert!(report.committed_in_window > 100, "{report}");
    assert!(report.readings_per_sec > 50.0, "{report}");
    assert_eq!(report.pending, 0, "{report}");
    assert_eq!(report.committed, report.generated);
    assert!(report.latency.samples > 0 && report.latency.p50_ms > 0.0);
    assert!(report.latency.p50_ms <= report.latency.p99_ms);
    let gw = report.gateway.as_ref().unwrap();
    let peak = gw.peak_rss_kib.unwrap();
    assert!(peak >= gw.vm_hwm_kib.unwrap() && peak >= gw.max_sampled_rss_kib.unwrap());
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["readings_per_sec"].as_f64().unwrap() > 0.0);
    assert!(format!("{report}").contains("committed readings/s"));

    let err = run_bench(
        &fleet,
        MOSQUITTO,
        &BenchOptions {
            devices: Some(99),
            ..BenchOptions::default()
        },
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(format!("{err}").contains("the fleet has"), "{err}");
}
