//! Three `sentinella run` nodes on one PostgreSQL database behind HAProxy (Debian's, TCP
//! mode): devices land on different nodes; one node is killed with SIGKILL under load. Its
//! devices reconnect through HAProxy to the others, the survivors take over its alert
//! partitions, every generated reading is stored exactly once and acked, and a critical
//! reading sent while the partitions move alerts exactly once per patient.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use simulators::device::{DeviceHandle, DeviceSpec, spawn};
use store::testing::TestDb;
use store::{AlertQuery, DeviceKind, NewDevice, NewPatient, Severity};
use tokio_util::sync::CancellationToken;

const NODES: usize = 3;
const DEVICES: usize = 12;
/// The target for a dead node's partitions to be taken over.
const TAKEOVER_WITHIN: Duration = Duration::from_secs(15);

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One `sentinella run` process.
struct Node {
    name: String,
    data_dir: tempfile::TempDir,
    edge: u16,
    api: u16,
    child: Option<Child>,
}

impl Node {
    fn start(url: &str, name: &str) -> anyhow::Result<Node> {
        let data_dir = tempfile::tempdir()?;
        let (edge, api) = (free_port()?, free_port()?);
        let child = Command::new(env!("CARGO_BIN_EXE_sentinella"))
            .args([
                "--database-url",
                url,
                "--log",
                &std::env::var("CLUSTER_LOG").unwrap_or("warn".into()),
                "run",
            ])
            .arg("--data-dir")
            .arg(data_dir.path())
            .env("SENTINELLA_NODE_ID", name)
            .env("SENTINELLA_EDGE_LISTEN", format!("127.0.0.1:{edge}"))
            .env("SENTINELLA_EDGE_TLS_LISTEN", "127.0.0.1:0")
            .env("SENTINELLA_API_LISTEN", format!("127.0.0.1:{api}"))
            .stdout(Stdio::null())
            .spawn()
            .context("spawn sentinella")?;
        Ok(Node {
            name: name.to_owned(),
            data_dir,
            edge,
            api,
            child: Some(child),
        })
    }

    async fn ready(&self) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.api);
        for _ in 0..400 {
            if let Ok(resp) = reqwest::get(&url).await
                && resp.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{} did not become ready", self.name)
    }

    /// The alert partitions this node holds, from its `/metrics`.
    async fn partitions(&self) -> Option<u64> {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.api))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("sentinella_alert_partitions_held "))
            .and_then(|v| v.trim().parse().ok())
    }

    fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("not running")?;
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        for _ in 0..200 {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child.kill()?;
        bail!("{} did not exit within 10 s of SIGTERM", self.name)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = &self.data_dir;
    }
}

/// Debian's HAProxy in the foreground, in TCP mode over the nodes' device listeners,
/// checking each node's `/readyz`; killed on drop.
struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(listen: u16, nodes: &[Node]) -> anyhow::Result<Haproxy> {
        let dir = tempfile::tempdir()?;
        let servers: String = nodes
            .iter()
            .map(|n| {
                format!(
                    "    server {} 127.0.0.1:{} check port {} inter 300ms fall 2 rise 1 \
                     on-marked-down shutdown-sessions\n",
                    n.name, n.edge, n.api
                )
            })
            .collect();
        let config = format!(
            "global\n    maxconn 2000\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 1h\n    \
             timeout server 1h\n    timeout check 2s\n    retries 3\n    option redispatch\n\
             frontend devices\n    bind 127.0.0.1:{listen}\n    default_backend nodes\n\
             backend nodes\n    balance roundrobin\n    option httpchk\n    \
             http-check send meth GET uri /readyz\n    http-check expect status 200\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config)?;
        let program = if std::path::Path::new("/usr/sbin/haproxy").exists() {
            "/usr/sbin/haproxy"
        } else {
            "haproxy"
        };
        let child = Command::new(program)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .spawn()
            .context("spawn haproxy (Debian package haproxy)")?;
        Ok(Haproxy { child, _dir: dir })
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn glucose(value: f32) -> protocol::Measurement {
    protocol::Measurement::Glucose(protocol::Glucose {
        value,
        unit: protocol::GlucoseUnit::MgDl,
        sample: protocol::SampleType::CapillaryPlasma,
        meal: None,
    })
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Waits until the live nodes hold all 64 partitions between them, each some; returns the
/// time it took.
async fn partitions_settled(nodes: &[&Node], within: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let mut held = Vec::new();
        for n in nodes {
            held.push(n.partitions().await.unwrap_or(0));
        }
        if held.iter().sum::<u64>() == 64 && held.iter().all(|h| *h > 0) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            bail!("partitions not settled within {within:?}: {held:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_nothing_and_its_partitions_move() -> anyhow::Result<()> {
    let db = TestDb::postgres().await;
    let store = db.store.clone();
    let cot = store.add_cot("COT-CLUSTER", "COT cluster").await?;

    let mut nodes = Vec::new();
    for i in 1..=NODES {
        nodes.push(Node::start(&db.url, &format!("node-{i}"))?);
    }
    for n in &nodes {
        n.ready().await?;
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let shared = partitions_settled(&all, Duration::from_secs(20)).await?;
    eprintln!("3 nodes share the 64 partitions {shared:?} after all were ready");

    let lb = free_port()?;
    let _haproxy = Haproxy::start(lb, &nodes)?;

    let cancel = CancellationToken::new();
    let mut devices: Vec<(DeviceHandle, i64)> = Vec::new();
    for i in 0..DEVICES {
        let patient = store
            .add_patient(&NewPatient {
                cot_id: cot.id,
                code: format!("P-{i}"),
                display_name: format!("Paziente {i}"),
                birth_year: None,
                conditions: vec!["diabetes".into()],
            })
            .await?;
        let secret = store::credentials::generate_secret();
        let id = format!("cluster-{i}");
        store
            .add_device(&NewDevice {
                id: id.clone(),
                patient_id: patient.id,
                kind: DeviceKind::Glucose,
                secret_hash: store::credentials::hash_secret(&secret),
                model: None,
            })
            .await?;
        let mut spec = DeviceSpec::new(&id, &secret, format!("127.0.0.1:{lb}"));
        spec.resend_after = Duration::from_secs(2);
        let dev = spawn(spec, cancel.clone());
        dev.wait_connected(Duration::from_secs(20)).await?;
        devices.push((dev, patient.id));
    }

    let generating = Arc::new(AtomicBool::new(true));
    let feeders: Vec<_> = devices
        .iter()
        .map(|(dev, _)| {
            let dev = dev.clone();
            let generating = generating.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                let mut i = 0u32;
                while generating.load(Ordering::Relaxed) {
                    // In range for a diabetic patient: no alert.
                    seqs.push(dev.measure(glucose(110.0 + (i % 40) as f32), now_ms()));
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                seqs
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(store.count_readings(None).await? > 0, "nothing stored");
    let seen = store
        .list_devices(None, None)
        .await?
        .iter()
        .filter(|d| d.last_seen_at.is_some())
        .count();
    assert_eq!(seen, DEVICES, "every device has published");

    // Node 1 dies; at once every patient measures a dangerously low glucose, so most of the
    // critical readings land while node 1's partitions are moving.
    let killed = Instant::now();
    nodes[0].kill()?;
    let criticals: Vec<_> = devices
        .iter()
        .map(|(dev, _)| dev.measure(glucose(38.0), now_ms()))
        .collect();
    let survivors: Vec<&Node> = nodes[1..].iter().collect();
    partitions_settled(&survivors, TAKEOVER_WITHIN).await?;
    let takeover = killed.elapsed();
    eprintln!("the dead node's partitions were taken over {takeover:?} after SIGKILL");

    tokio::time::sleep(Duration::from_secs(2)).await;
    generating.store(false, Ordering::Relaxed);

    let mut total = 0;
    let mut reconnected = 0;
    for (((dev, _), feeder), critical) in devices.iter().zip(feeders).zip(&criticals) {
        // Every generated reading once, the critical one included.
        let mut want: Vec<u32> = feeder.await?;
        want.push(*critical);
        want.sort_unstable();
        dev.wait_settled(Duration::from_secs(60)).await?;
        let mut stored: Vec<u32> = store
            .stored_seqs(dev.id())
            .await?
            .into_iter()
            .map(|s| s as u32)
            .collect();
        stored.sort_unstable();
        assert_eq!(
            stored,
            want,
            "{}: stored set differs from generated",
            dev.id()
        );
        total += stored.len();
        if dev.stats().connects >= 2 {
            reconnected += 1;
        }
    }
    assert_eq!(store.count_readings(None).await?, total as i64);
    assert!(reconnected > 0, "no device was on the killed node");

    // Exactly one critical alert per patient, whichever node evaluated it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut counts = Vec::new();
        for (_, patient) in &devices {
            let alerts = store
                .list_alerts(&AlertQuery {
                    patient_id: Some(*patient),
                    min_severity: Some(Severity::High),
                    limit: 100,
                    ..AlertQuery::default()
                })
                .await?;
            counts.push(alerts.len());
        }
        if counts.iter().all(|c| *c == 1) {
            break;
        }
        assert!(
            counts.iter().all(|c| *c <= 1),
            "a patient has more than one alert: {counts:?}"
        );
        if Instant::now() > deadline {
            bail!("not every patient's critical reading alerted: {counts:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every committed batch evaluated, by whichever node holds its partition: the outbox
    // drains (entries evaluated from memory are deleted on each node's next lease round).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pending = store.pending_outbox().await?;
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("outbox not drained: {pending:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for (dev, _) in devices {
        dev.stop().await;
    }
    cancel.cancel();
    for n in nodes.iter_mut().skip(1) {
        let status = n.terminate().await?;
        assert!(status.success(), "{} SIGTERM exit status {status}", n.name);
    }
    Ok(())
}
