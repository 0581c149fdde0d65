//! The runner with simulated sensors against a real gateway started in the test, on a fresh
//! SQLite store, over **mutual TLS**: the gateway's TLS listener with a server certificate from
//! a device CA made for the test, each device with the bundle `sentinella device add
//! --cert-out` writes (`{id}.crt`, `{id}.key`, `ca.crt`, read back from files) and its
//! certificate's fingerprint recorded in the store.
//!
//! The device must lose nothing and duplicate nothing across its own restart (same flash
//! image, killed like a power cut) and a gateway restart (same store, same port): the seqs in
//! the store are exactly the seqs the device generated. Devices with a certificate of another
//! CA, or expecting another server name, never connect and keep their readings. Plain
//! username/password mode is checked once, on the loopback listener.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use api::ops;
use firmware_core::uplink::UplinkConfig;
use firmware_runner::{
    BundleFiles, DeviceTls, MeterSource, OximeterSource, Runner, RunnerConfig, Stats,
};
use gateway::{EdgeTls, Metrics};
use pki::DeviceCa;
use sentinella::{Config, Node, NodeTls};
use store::testing::TestDb;
use store::{DeviceKind, NewPatient, ReadingKind, ReadingQuery, Store};
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

/// Starts a node (as `sentinella run` does) with its TLS listener on `tls_port` (kept across
/// restarts), its plain listener and API on ephemeral loopback ports; the server certificate
/// is issued from `ca` at every start.
async fn start_gateway(
    store: &Store,
    ca: &DeviceCa,
    tls_port: u16,
) -> anyhow::Result<(Node, CancellationToken)> {
    let cancel = CancellationToken::new();
    let mut config = Config::default();
    config.gateway.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.gateway.tls_listen = SocketAddr::from(([127, 0, 0, 1], tls_port));
    config.api.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = ca.issue_server(&["localhost".into(), "127.0.0.1".into()])?;
    let tls = EdgeTls {
        cert_chain_pem: server.cert_pem,
        key_pem: server.key_pem,
        client_ca_pem: ca.cert_pem().to_owned(),
    };
    let tls = NodeTls {
        edge: tls,
        ca: None,
    };
    let node = Node::start(
        &config,
        store.clone(),
        tls,
        alerting::system_clock(),
        cancel.clone(),
    )
    .await
    .context("start the node")?;
    assert_eq!(
        node.tls_addr.port(),
        tls_port,
        "TLS listener on the chosen port"
    );
    Ok((node, cancel))
}

async fn stop_gateway(node: Node, cancel: CancellationToken) {
    cancel.cancel();
    node.join().await.expect("the node stops cleanly");
}

struct Provisioned {
    id: String,
    secret: String,
    patient_id: i64,
    tls: DeviceTls,
}

/// Provisions a device as `sentinella device add --cert-out DIR` does: a row with a secret, a
/// certificate from `ca` whose fingerprint the store records, and the bundle written to `dir`,
/// which the device then reads back.
async fn provision(
    store: &Store,
    ca: &DeviceCa,
    dir: &Path,
    id: &str,
    kind: DeviceKind,
) -> anyhow::Result<Provisioned> {
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
    let secret = ops::devices::provision(
        store,
        patient.id,
        kind,
        Some(id.to_owned()),
        Some("firmware-runner".into()),
    )
    .await?
    .secret;
    let cert = ops::devices::issue_cert(store, ca, id).await?;
    let bundle_dir = dir.join(id);
    pki::write_device_bundle(&bundle_dir, id, &cert, ca.cert_pem())?;
    let tls = DeviceTls::from_files(&BundleFiles::in_dir(&bundle_dir, id))?;
    Ok(Provisioned {
        id: id.to_owned(),
        secret,
        patient_id: patient.id,
        tls,
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

/// The device over mutual TLS to the gateway's TLS port.
fn tls_config(dev: &Provisioned, tls_port: u16, flash: PathBuf) -> RunnerConfig {
    RunnerConfig::mutual_tls(
        &dev.id,
        dev.tls.clone(),
        &format!("127.0.0.1:{tls_port}"),
        flash,
    )
}

fn oximeter(mut c: RunnerConfig, readings: u32) -> RunnerConfig {
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
async fn oximeter_over_mutual_tls_survives_its_own_power_cut_and_a_gateway_restart()
-> anyhow::Result<()> {
    init_logging();
    let db = TestDb::sqlite().await;
    let store = db.store.clone();
    let ca = DeviceCa::generate("firmware e2e device CA")?;
    let dir = tempfile::tempdir()?;
    let dev = provision(&store, &ca, dir.path(), "spo2-fw-1", DeviceKind::Spo2).await?;
    let port = free_port()?;
    let flash = dir.path().join("spo2-fw-1.flash");
    let (gw, gw_cancel) = start_gateway(&store, &ca, port).await?;

    // Run 1: measure and publish, then lose power right after the 8th reading is stored,
    // while the last ones are likely still unacked.
    let run1 = firmware_runner::start(
        oximeter(tls_config(&dev, port, flash.clone()), 8),
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
        oximeter(tls_config(&dev, port, flash.clone()), 14),
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
    let (gw, gw_cancel) = start_gateway(&store, &ca, port).await?;
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
    assert!(
        Metrics::get(&gw.metrics.readings_committed_total) > 0,
        "the restarted gateway stored readings"
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
    let ca = DeviceCa::generate("firmware e2e device CA")?;
    let port = free_port()?;
    let (gw, gw_cancel) = start_gateway(&store, &ca, port).await?;
    let dir = tempfile::tempdir()?;

    for (id, kind, source, server_name) in [
        (
            "bp-fw-1",
            DeviceKind::BloodPressure,
            MeterSource::SimBloodPressure {
                every: Duration::from_millis(40),
            },
            None,
        ),
        // Reached by IP address, the gateway's certificate checked for the name `localhost`
        // (`--server-name`).
        (
            "glu-fw-1",
            DeviceKind::Glucose,
            MeterSource::SimGlucose {
                every: Duration::from_millis(40),
            },
            Some("localhost"),
        ),
    ] {
        let mut dev = provision(&store, &ca, dir.path(), id, kind).await?;
        dev.tls.server_name = server_name.map(str::to_owned);
        let mut c = tls_config(&dev, port, dir.path().join(format!("{id}.flash")));
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

/// Waits until a device that cannot connect has stored `n` readings and failed to connect,
/// then checks it kept them all and the store has none.
async fn refused(runner: Runner, store: &Store, id: &str, n: usize) -> anyhow::Result<Stats> {
    let s = runner
        .wait_for("readings stored while refused", WAIT, |s| {
            s.stored.len() >= n && s.last_error.is_some()
        })
        .await?;
    assert_eq!(s.connects, 0, "{s:?}");
    assert_eq!(s.pending(), n as u64, "nothing dropped");
    assert_eq!(store.count_readings(Some(id)).await?, 0);
    runner.stop().await?;
    Ok(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_devices_back_off_and_keep_their_readings() -> anyhow::Result<()> {
    init_logging();
    let db = TestDb::sqlite().await;
    let store = db.store.clone();
    let ca = DeviceCa::generate("firmware e2e device CA")?;
    let port = free_port()?;
    let (gw, gw_cancel) = start_gateway(&store, &ca, port).await?;
    let dir = tempfile::tempdir()?;

    // A certificate for the right id from another CA: the gateway fails the handshake.
    let other_ca = DeviceCa::generate("someone else's CA")?;
    let dev = provision(&store, &ca, dir.path(), "spo2-fw-alien", DeviceKind::Spo2).await?;
    let alien_dir = dir.path().join("alien");
    let alien = other_ca.issue_device(&dev.id)?;
    pki::write_device_bundle(&alien_dir, &dev.id, &alien, ca.cert_pem())?;
    let alien_tls = DeviceTls::from_files(&BundleFiles::in_dir(&alien_dir, &dev.id))?;
    let c = RunnerConfig::mutual_tls(
        &dev.id,
        alien_tls,
        &format!("127.0.0.1:{port}"),
        dir.path().join("alien.flash"),
    );
    let runner = firmware_runner::start(oximeter(c, 3), CancellationToken::new()).await?;
    let s = refused(runner, &store, &dev.id, 3).await?;
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("AlertReceived(UnknownCA)")),
        "{s:?}"
    );
    assert!(Metrics::get(&gw.metrics.edge_tls_handshake_failures_total) > 0);

    // The right certificate, but the device expects a server name the gateway's certificate
    // does not carry: the device refuses the gateway.
    let mut dev = provision(&store, &ca, dir.path(), "spo2-fw-name", DeviceKind::Spo2).await?;
    dev.tls.server_name = Some("not-the-gateway.example".into());
    let c = tls_config(&dev, port, dir.path().join("name.flash"));
    let runner = firmware_runner::start(oximeter(c, 3), CancellationToken::new()).await?;
    let s = refused(runner, &store, &dev.id, 3).await?;
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("NotValidForName")),
        "{s:?}"
    );

    stop_gateway(gw, gw_cancel).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_password_mode_still_works_on_the_loopback_listener() -> anyhow::Result<()> {
    init_logging();
    let db = TestDb::sqlite().await;
    let store = db.store.clone();
    let ca = DeviceCa::generate("firmware e2e device CA")?;
    let (gw, gw_cancel) = start_gateway(&store, &ca, free_port()?).await?;
    let plain = gw.edge_addr.to_string();
    let dir = tempfile::tempdir()?;

    let dev = provision(&store, &ca, dir.path(), "spo2-fw-plain", DeviceKind::Spo2).await?;
    let c = RunnerConfig::new(
        &dev.id,
        "not-the-secret",
        &plain,
        dir.path().join("bad.flash"),
    );
    let runner = firmware_runner::start(oximeter(c, 3), CancellationToken::new()).await?;
    let s = refused(runner, &store, &dev.id, 3).await?;
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("Refused")),
        "{s:?}"
    );

    let c = RunnerConfig::new(&dev.id, &dev.secret, &plain, dir.path().join("ok.flash"));
    let runner = firmware_runner::start(oximeter(c, 3), CancellationToken::new()).await?;
    let s = all_acked(&runner, 3).await?;
    runner.stop().await?;
    assert_store_matches(&store, &dev.id, &s.stored.iter().copied().collect()).await?;

    stop_gateway(gw, gw_cancel).await;
    Ok(())
}
