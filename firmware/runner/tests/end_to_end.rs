//! The runner with simulated sensors against a real gateway started in the test, on a fresh
//! SQLite store.
//!
//! The device must lose nothing and duplicate nothing across its own restart (same flash
//! image, killed like a power cut) and a gateway restart (same store, same port): the seqs in
//! the store are exactly the seqs the device generated.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use firmware_core::uplink::UplinkConfig;
use firmware_runner::{MeterSource, OximeterSource, Runner, RunnerConfig, Stats};
use gateway::{Gateway, GatewayConfig};
use store::testing::TestDb;
use store::{DeviceKind, NewDevice, NewPatient, ReadingKind, ReadingQuery, Store};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

fn init_logging() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into());
    let filter = format!("rumqttd::server=off,rumqttd::router::routing=off,{filter}");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// A port that was free a moment ago (the gateway must come back on the same one).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

async fn start_gateway(store: &Store, port: u16) -> anyhow::Result<(Gateway, CancellationToken)> {
    let cancel = CancellationToken::new();
    let config = GatewayConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        ..Default::default()
    };
    let gateway = gateway::start(config, store.clone(), cancel.clone())
        .await
        .context("start gateway")?;
    Ok((gateway, cancel))
}

async fn stop_gateway(gateway: Gateway, cancel: CancellationToken) {
    cancel.cancel();
    gateway.join().await;
}

struct Provisioned {
    id: String,
    secret: String,
    patient_id: i64,
}

async fn provision(store: &Store, id: &str, kind: DeviceKind) -> anyhow::Result<Provisioned> {
    let cot = match store.cot_by_code("COT-FW").await? {
        Some(c) => c,
        None => store.add_cot("COT-FW", "COT firmware").await?,
    };
    let patient = store
        .add_patient(&NewPatient {
            cot_id: cot.id,
            code: format!("PAT-{id}"),
            display_name: format!("Paziente {id}"),
            birth_year: Some(1948),
            conditions: vec!["copd".into()],
        })
        .await?;
    let secret = store::credentials::generate_secret();
    store
        .add_device(&NewDevice {
            id: id.to_owned(),
            patient_id: patient.id,
            kind,
            secret_hash: store::credentials::hash_secret(&secret),
            model: Some("firmware-runner".into()),
        })
        .await?;
    Ok(Provisioned {
        id: id.to_owned(),
        secret,
        patient_id: patient.id,
    })
}

fn uplink() -> UplinkConfig {
    UplinkConfig {
        resend_after_ms: 2_000,
        connect_timeout_ms: 2_000,
        backoff_min_ms: 100,
        backoff_max_ms: 1_000,
        ..UplinkConfig::default()
    }
}

fn oximeter_config(dev: &Provisioned, port: u16, flash: &Path, readings: u32) -> RunnerConfig {
    let mut c = RunnerConfig::new(
        &dev.id,
        &dev.secret,
        &format!("127.0.0.1:{port}"),
        flash.into(),
    );
    c.oximeter = Some(OximeterSource::Sim);
    c.spot_check_every = Duration::from_millis(60);
    c.spot_check_window_s = 3;
    c.sim_speed = 20.0;
    c.uplink = uplink();
    c.max_readings = Some(readings);
    c
}

async fn all_acked(runner: &Runner, n: usize) -> anyhow::Result<Stats> {
    runner
        .wait_for("every reading stored and acked", WAIT, |s| {
            s.stored.len() >= n && s.pending() == 0
        })
        .await
}

async fn assert_store_matches(
    store: &Store,
    device: &str,
    generated: &BTreeSet<u32>,
) -> anyhow::Result<()> {
    let stored: Vec<i64> = store.stored_seqs(device).await?;
    let expected: Vec<i64> = generated.iter().map(|s| i64::from(*s)).collect();
    assert_eq!(
        stored, expected,
        "the store holds exactly the generated seqs"
    );
    assert_eq!(
        store.count_readings(Some(device)).await?,
        generated.len() as i64,
        "one row per reading"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oximeter_survives_its_own_power_cut_and_a_gateway_restart() -> anyhow::Result<()> {
    init_logging();
    let db = TestDb::sqlite().await;
    let store = db.store.clone();
    let dev = provision(&store, "spo2-fw-1", DeviceKind::Spo2).await?;
    let port = free_port()?;
    let dir = tempfile::tempdir()?;
    let flash = dir.path().join("spo2-fw-1.flash");
    let (gw, gw_cancel) = start_gateway(&store, port).await?;

    // Run 1: measure and publish, then lose power right after the 8th reading is stored,
    // while the last ones are likely still unacked.
    let run1 = firmware_runner::start(
        oximeter_config(&dev, port, &flash, 8),
        CancellationToken::new(),
    )
    .await?;
    run1.wait_for("a first ack", WAIT, |s| s.committed >= 1)
        .await?;
    run1.wait_for("8 readings", WAIT, |s| s.stored.len() >= 8)
        .await?;
    let s1 = run1.kill().await;
    assert_eq!(s1.stored.len(), 8);
    assert!(s1.clock_set, "the gateway's config set the clock");

    // Run 2 on the same flash image: whatever was unacked is still there and goes out again;
    // new seqs continue above every seq of run 1.
    let run2 = firmware_runner::start(
        oximeter_config(&dev, port, &flash, 14),
        CancellationToken::new(),
    )
    .await?;
    let s2 = run2.stats();
    assert_eq!(
        u64::from(s2.recovered),
        s1.pending(),
        "unacked readings survived the cut"
    );
    run2.wait_for("readings after the restart", WAIT, |s| {
        s.stored.len() >= 4 && s.committed >= 1
    })
    .await?;

    // The gateway restarts while the device keeps measuring into its outbox.
    stop_gateway(gw, gw_cancel).await;
    run2.wait_for("the device to notice", WAIT, |s| !s.connected)
        .await?;
    let during = run2.stats().stored.len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (gw, gw_cancel) = start_gateway(&store, port).await?;
    let s2 = all_acked(&run2, 14).await?;
    assert!(s2.connects >= 2, "reconnected to the new gateway: {s2:?}");
    assert!(
        s2.stored.len() > during || during == 14,
        "measured through the outage"
    );

    let first_of_run2 = s2.stored.iter().min().copied().unwrap_or(0);
    let last_of_run1 = s1.stored.iter().max().copied().unwrap_or(0);
    assert!(
        first_of_run2 > last_of_run1,
        "no seq reused after the power cut"
    );
    let generated: BTreeSet<u32> = s1.stored.iter().chain(&s2.stored).copied().collect();
    assert_eq!(generated.len(), s1.stored.len() + s2.stored.len());
    assert_store_matches(&store, &dev.id, &generated).await?;

    // Values made it through: plausible SpO2 with pulse and perfusion, device time set.
    let rows = store
        .readings(&ReadingQuery {
            patient_id: dev.patient_id,
            from: None,
            to: None,
            kind: Some(ReadingKind::Spo2),
            limit: 100,
        })
        .await?;
    assert_eq!(rows.len(), generated.len());
    for r in &rows {
        let spo2 = r.spo2.context("spo2 value")?;
        assert!((93.0..=100.0).contains(&spo2), "{r:?}");
        assert!(r.pulse.is_some() && r.perfusion_index.is_some(), "{r:?}");
    }
    assert!(
        rows.iter().any(|r| !r.clock_unset),
        "readings after the clock was set"
    );

    run2.stop().await?;
    stop_gateway(gw, gw_cancel).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuff_and_glucose_meter_readings_arrive_with_their_bits() -> anyhow::Result<()> {
    init_logging();
    let db = TestDb::sqlite().await;
    let store = db.store.clone();
    let port = free_port()?;
    let (gw, gw_cancel) = start_gateway(&store, port).await?;
    let dir = tempfile::tempdir()?;

    for (id, kind, source) in [
        (
            "bp-fw-1",
            DeviceKind::BloodPressure,
            MeterSource::SimBloodPressure {
                every: Duration::from_millis(40),
            },
        ),
        (
            "glu-fw-1",
            DeviceKind::Glucose,
            MeterSource::SimGlucose {
                every: Duration::from_millis(40),
            },
        ),
    ] {
        let dev = provision(&store, id, kind).await?;
        let mut c = RunnerConfig::new(
            &dev.id,
            &dev.secret,
            &format!("127.0.0.1:{port}"),
            dir.path().join(format!("{id}.flash")),
        );
        c.meter = Some(source);
        c.uplink = uplink();
        c.max_readings = Some(6);
        let runner = firmware_runner::start(c, CancellationToken::new()).await?;
        let s = all_acked(&runner, 6).await?;
        runner.stop().await?;
        let generated: BTreeSet<u32> = s.stored.iter().copied().collect();
        assert_eq!(generated.len(), 6);
        assert_store_matches(&store, id, &generated).await?;

        let rows = store
            .readings(&ReadingQuery {
                patient_id: dev.patient_id,
                from: None,
                to: None,
                kind: None,
                limit: 100,
            })
            .await?;
        assert_eq!(rows.len(), 6);
        let now = time::OffsetDateTime::now_utc();
        for r in &rows {
            // Timed by the meter's own clock, not flagged unset.
            assert!(!r.clock_unset, "{r:?}");
            assert!(
                (now - r.measured_at).abs() < time::Duration::seconds(30),
                "{r:?}"
            );
            match kind {
                DeviceKind::BloodPressure => {
                    let (sys, dia) = (r.systolic.context("sys")?, r.diastolic.context("dia")?);
                    assert!(
                        dia < sys && r.mean_arterial.is_some() && r.pulse.is_some(),
                        "{r:?}"
                    );
                }
                _ => {
                    let mg = r.glucose_mg_dl.context("glucose")?;
                    assert!((75.0..190.0).contains(&mg), "{r:?}");
                    assert_eq!(r.glucose_sample.as_deref(), Some("capillary_whole_blood"));
                }
            }
        }
    }
    stop_gateway(gw, gw_cancel).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_device_backs_off_and_keeps_its_readings() -> anyhow::Result<()> {
    init_logging();
    let db = TestDb::sqlite().await;
    let store = db.store.clone();
    let dev = provision(&store, "spo2-fw-bad", DeviceKind::Spo2).await?;
    let port = free_port()?;
    let (gw, gw_cancel) = start_gateway(&store, port).await?;
    let dir = tempfile::tempdir()?;
    let wrong = Provisioned {
        secret: "not-the-secret".into(),
        ..dev
    };
    let runner = firmware_runner::start(
        oximeter_config(&wrong, port, &dir.path().join("bad.flash"), 3),
        CancellationToken::new(),
    )
    .await?;
    let s = runner
        .wait_for("readings stored while refused", WAIT, |s| {
            s.stored.len() >= 3 && s.last_error.is_some()
        })
        .await?;
    assert_eq!(s.connects, 0);
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("Refused")),
        "{s:?}"
    );
    assert_eq!(s.pending(), 3, "nothing dropped");
    assert_eq!(store.count_readings(Some(&wrong.id)).await?, 0);
    runner.stop().await?;
    stop_gateway(gw, gw_cancel).await;
    Ok(())
}
