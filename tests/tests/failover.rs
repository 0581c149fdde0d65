//! PostgreSQL primary failover with a synchronous standby, under load.
//!
//! The test makes two PostgreSQL clusters of its own in temporary folders on free ports
//! (`initdb`, `pg_basebackup -R`, `pg_ctl` from `SENTINELLA_PG_BIN`, default
//! `/usr/lib/postgresql/15/bin`; run as the `postgres` user when the test runs as root): a
//! primary with `synchronous_standby_names = 'standby1'` and `synchronous_commit = on`, and a
//! streaming standby named `standby1`. A node writes through the multi-host URL
//! `postgres://postgres@127.0.0.1:P,127.0.0.1:S/sentinella?target_session_attrs=read-write`
//! while devices publish; the primary is stopped in immediate mode and the standby
//! promoted. Then: every reading a device saw acknowledged is on the new primary, once; the
//! devices' unacknowledged readings arrive by their resends; the node answers `/readyz` 200.
//! The times from promotion to the first acknowledgement and to ready are printed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use e2e::harness::{Launch, Stack, now_ms};
use e2e::kit::free_port;
use gateway::Metrics;
use protocol::{Measurement, Spo2};
use simulators::device::{DeviceSpec, spawn};
use store::DeviceKind;
use store::testing::TestDb;
use tokio_util::sync::CancellationToken;

/// Devices publishing (every 20 ms each); `SENTINELLA_FAILOVER_DEVICES` raises it
/// (scripts/failover.sh).
fn device_count() -> usize {
    std::env::var("SENTINELLA_FAILOVER_DEVICES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(12)
}

/// `pg_ctl`, `initdb`… as the `postgres` user when we are root (initdb refuses root).
fn pg_command(bin: &str) -> Command {
    let dir = std::env::var("SENTINELLA_PG_BIN")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_owned());
    let program = Path::new(&dir).join(bin);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn run(mut command: Command) -> anyhow::Result<()> {
    let shown = format!("{command:?}");
    let out = command.output().with_context(|| format!("start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// One PostgreSQL cluster in a folder of the test; stopped (immediately) when dropped.
struct Cluster {
    data: PathBuf,
    port: u16,
}

impl Cluster {
    fn ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut c = pg_command("pg_ctl");
        c.arg("-D").arg(&self.data).args(args);
        run(c)
    }

    fn start(&self) -> anyhow::Result<()> {
        let log = self.data.with_extension("log");
        let mut c = pg_command("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"]);
        run(c)
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.ctl(&["-m", "immediate", "-w", "stop"]);
    }
}

fn append(file: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(file)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// A primary requiring a synchronous standby, and that standby, streaming.
fn make_clusters(root: &Path) -> anyhow::Result<(Cluster, Cluster)> {
    let primary = Cluster {
        data: root.join("primary"),
        port: free_port()?,
    };
    let mut c = pg_command("initdb");
    c.arg("-D").arg(&primary.data).args([
        "-U",
        "postgres",
        "--auth=trust",
        "--no-sync",
        "-E",
        "UTF8",
    ]);
    run(c)?;
    append(
        &primary.data.join("postgresql.conf"),
        &format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             wal_level = replica\nmax_wal_senders = 5\nmax_connections = 60\n\
             shared_buffers = 32MB\nsynchronous_standby_names = 'standby1'\n\
             synchronous_commit = on\n",
            primary.port,
            root.display()
        ),
    )?;
    primary.start()?;
    let standby = Cluster {
        data: root.join("standby"),
        port: free_port()?,
    };
    let mut c = pg_command("pg_basebackup");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &primary.port.to_string(),
        "-U",
        "postgres",
    ])
    .arg("-D")
    .arg(&standby.data)
    .args(["-R", "-X", "stream", "--no-sync"]);
    run(c)?;
    append(
        &standby.data.join("postgresql.auto.conf"),
        // Promoted, it has no standby of its own: it must not wait for one (in production a
        // second standby, or Patroni, takes that role).
        &format!(
            "\nport = {}\ncluster_name = 'standby1'\nsynchronous_standby_names = ''\n",
            standby.port
        ),
    )?;
    standby.start()?;
    Ok((primary, standby))
}

/// `psql -Atc sql` on `port` (database postgres), its output trimmed.
fn psql(port: u16, sql: &str) -> anyhow::Result<String> {
    let mut c = pg_command("psql");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "postgres",
        "-d",
        "postgres",
    ])
    .args(["-v", "ON_ERROR_STOP=1", "-Atc", sql]);
    let shown = format!("{c:?}");
    let out = c.output().with_context(|| format!("start {shown}"))?;
    ensure!(
        out.status.success(),
        "{shown}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn wait_sync_standby(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = psql(
            port,
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'",
        )?;
        if state == "sync" {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "standby not synchronous: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoting_the_synchronous_standby_loses_no_acked_reading() -> anyhow::Result<()> {
    e2e::harness::init_logging();
    let root = tempfile::Builder::new()
        .prefix("sentinella-failover-")
        .tempdir()?;
    if is_root() {
        run({
            let mut c = Command::new("chown");
            c.arg("postgres:").arg(root.path());
            c
        })?;
    }
    let (primary, standby) = make_clusters(root.path())?;
    wait_sync_standby(primary.port).await?;
    psql(primary.port, "CREATE DATABASE sentinella")?;
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/sentinella?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let db = TestDb::at(&url).await;
    let stack = Stack::start_on(db, Launch::default()).await?;

    let cancel = CancellationToken::new();
    let mut devices = Vec::new();
    for _ in 0..device_count().div_ceil(2) {
        let patient = stack.patient(&["copd"]).await?;
        for kind in [DeviceKind::Spo2, DeviceKind::BloodPressure] {
            let creds = stack.device(patient.id, kind).await?;
            let mut spec = DeviceSpec::new(&creds.id, &creds.secret, stack.edge.to_string());
            spec.resend_after = Duration::from_secs(2);
            let dev = spawn(spec, cancel.clone());
            dev.wait_connected(Duration::from_secs(20)).await?;
            devices.push(dev);
        }
    }

    let generating = Arc::new(AtomicBool::new(true));
    let mut feeders = Vec::new();
    for dev in &devices {
        let dev = dev.clone();
        let generating = generating.clone();
        feeders.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            let mut i = 0u32;
            while generating.load(Ordering::Relaxed) {
                let m = Measurement::Spo2(Spo2 {
                    percent: 90.0 + (i % 8) as f32,
                    pulse: Some(80.0),
                    perfusion_index: None,
                });
                seqs.push(dev.measure(m, now_ms()));
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seqs
        }));
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    let acked_before = Metrics::get(&stack.metrics.readings_acked_total);
    ensure!(acked_before > 0, "nothing acked before the failover");
    ensure!(stack.get("/readyz").await?.0 == 200, "not ready before");

    // The primary dies (no shutdown checkpoint, connections cut), the standby is promoted.
    primary.ctl(&["-m", "immediate", "-w", "stop"])?;
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked_at_promotion = Metrics::get(&stack.metrics.readings_acked_total);
    standby.ctl(&["-w", "-t", "60", "promote"])?;
    let promoted = Instant::now();

    let mut first_ack = None;
    let mut ready = None;
    let mut saw_503 = false;
    let deadline = promoted + Duration::from_secs(45);
    while (first_ack.is_none() || ready.is_none()) && Instant::now() < deadline {
        if first_ack.is_none()
            && Metrics::get(&stack.metrics.readings_acked_total) > acked_at_promotion
        {
            first_ack = Some(promoted.elapsed());
        }
        if ready.is_none() {
            match stack.get("/readyz").await?.0 {
                200 if first_ack.is_some() => ready = Some(promoted.elapsed()),
                503 => saw_503 = true,
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_ack = first_ack.context("no acknowledgement within 45 s of the promotion")?;
    let ready = ready.context("not ready within 45 s of the promotion")?;
    println!(
        "failover: primary stopped, promoted {:?} later; first ack {first_ack:?} and ready \
         {ready:?} after the promotion (503 seen: {saw_503})",
        promoted - stopped
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    generating.store(false, Ordering::Relaxed);
    let mut generated = Vec::new();
    for f in feeders {
        generated.push(f.await?);
    }
    for dev in &devices {
        dev.wait_settled(Duration::from_secs(60)).await?;
    }

    // On the new primary (the standby's own address, not through the node's store): every
    // acked reading, once; and in the end every generated one, since the devices resend.
    let new_primary = store::Store::connect(&standby.url("sentinella")).await?;
    let mut total = 0;
    let mut acked_total = 0;
    for (dev, seqs) in devices.iter().zip(&generated) {
        let stored: Vec<u32> = new_primary
            .stored_seqs(dev.id())
            .await?
            .into_iter()
            .map(|s| s as u32)
            .collect();
        let mut unique = stored.clone();
        unique.dedup();
        assert_eq!(unique, stored, "{}: a reading stored twice", dev.id());
        let acked = dev.committed();
        let lost: Vec<u32> = acked
            .iter()
            .filter(|s| stored.binary_search(s).is_err())
            .copied()
            .collect();
        assert!(lost.is_empty(), "{}: acked but lost: {lost:?}", dev.id());
        let mut want = seqs.clone();
        want.sort_unstable();
        assert_eq!(
            stored,
            want,
            "{}: stored set differs from generated",
            dev.id()
        );
        total += want.len();
        acked_total += acked.len();
    }
    assert_eq!(new_primary.count_readings(None).await?, total as i64);
    assert_eq!(stack.get("/readyz").await?.0, 200, "not ready at the end");
    println!("failover: {total} readings generated and stored once, {acked_total} acked, 0 lost");

    for dev in devices {
        dev.stop().await;
    }
    cancel.cancel();
    stack.stop().await;
    new_primary.close().await;
    drop(standby);
    drop(primary);
    Ok(())
}
