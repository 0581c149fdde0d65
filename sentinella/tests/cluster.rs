//! Three `sentinella run` nodes on one PostgreSQL database behind HAProxy (Debian's), as in
//! production: TCP mode, mutual TLS passed through to the nodes, a PROXY protocol v2 header in
//! front of each connection (`send-proxy-v2`; the nodes with `[gateway] proxy_protocol` and
//! `proxy_trusted`), health checks on `/readyz`. Devices land on different nodes; one node is
//! killed with SIGKILL under load. Its devices reconnect through HAProxy to the others, the
//! survivors take over its alert partitions, every generated reading is stored exactly once
//! and acked, a critical reading sent while the partitions move alerts exactly once per
//! patient, and a nurse's alert stream (SSE) open on the killed node, resumed on a survivor
//! with `Last-Event-ID`, has every alert event of the store once, in order.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use common::Node;
use common::kit::{Haproxy, Sse, SseEvent, free_port};
use simulators::device::{DeviceHandle, DeviceSpec, DeviceTls, spawn};
use store::testing::TestDb;
use store::{AlertQuery, DeviceKind, NewDevice, NewPatient, Severity};
use tokio_util::sync::CancellationToken;

const NODES: usize = 3;
const DEVICES: usize = 12;
/// The issue's target for a dead node's partitions to be taken over.
const TAKEOVER_WITHIN: Duration = Duration::from_secs(15);

/// HAProxy as packaging/haproxy/sentinella.cfg has it for devices, on this test's ports.
fn haproxy_config(listen: u16, nodes: &[Node]) -> String {
    let servers: String = nodes
        .iter()
        .map(|n| {
            format!(
                "    server {} 127.0.0.1:{} send-proxy-v2 check port {} inter 300ms fall 2 rise 1 \
                 on-marked-down shutdown-sessions\n",
                n.name, n.tls_edge, n.api
            )
        })
        .collect();
    format!(
        "global\n    maxconn 2000\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 1h\n    \
         timeout server 1h\n    timeout check 2s\n    retries 3\n    option redispatch\n\
         frontend devices_tls\n    bind 127.0.0.1:{listen}\n    default_backend nodes\n\
         backend nodes\n    balance roundrobin\n    option httpchk\n    \
         http-check send meth GET uri /readyz\n    http-check expect status 200\n{servers}"
    )
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

/// Reads `sse` until the stream ends (its node died) and returns what arrived.
async fn until_ended(sse: &mut Sse) -> Vec<SseEvent> {
    let mut seen = Vec::new();
    while let Ok(Some(e)) = sse.next(Duration::from_secs(10)).await {
        seen.push(e);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_nothing_and_its_partitions_move() -> anyhow::Result<()> {
    let db = TestDb::postgres().await;
    let store = db.store.clone();
    let cot = store.add_cot("COT-CLUSTER", "COT cluster").await?;
    // A nurse's token (any node accepts it: sessions are in the store).
    let token = api::ops::identity::service_account(
        &store,
        "cluster-nurse",
        store::Role::Physician,
        &[cot.id],
    )
    .await?;

    // One device CA for every node (docs/deploy.md: the same CA on every node).
    let pki = tempfile::tempdir()?;
    let (ca, _) = pki::DeviceCa::load_or_create(pki.path())?;
    let config = format!(
        "pki_dir = {:?}\n[gateway]\nproxy_protocol = true\nproxy_trusted = [\"127.0.0.1/32\"]\n",
        pki.path().display().to_string()
    );
    let mut nodes = Vec::new();
    for i in 1..=NODES {
        let mut node = Node::new(&db.url, &format!("node-{i}"), Some(&config))?;
        node.spawn()?;
        nodes.push(node);
    }
    for n in &nodes {
        n.ready().await?;
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let shared = partitions_settled(&all, Duration::from_secs(20)).await?;
    eprintln!("3 nodes share the 64 partitions {shared:?} after all were ready");

    let lb = free_port()?;
    let _haproxy = Haproxy::start(
        &haproxy_config(lb, &nodes),
        std::net::SocketAddr::from(([127, 0, 0, 1], lb)),
    )
    .await?;

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
        let id = format!("cluster-{i}");
        // A password is still required by the store; the device connects with its certificate.
        let secret = store::credentials::generate_secret();
        store
            .add_device(&NewDevice {
                id: id.clone(),
                patient_id: patient.id,
                kind: DeviceKind::Glucose,
                secret_hash: store::credentials::hash_secret(&secret),
                model: None,
            })
            .await?;
        let cert = api::ops::devices::issue_cert(&store, &ca, &id).await?;
        let mut spec = DeviceSpec::new(&id, &secret, format!("127.0.0.1:{lb}"));
        spec.tls = Some(DeviceTls::issued(cert, ca.cert_pem()));
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

    // A nurse follows the alerts on node 1, which is about to die; the first patient's
    // critical reading reaches it before.
    let start = store.last_alert_event_id().await?;
    let mut stream = Sse::connect(
        std::net::SocketAddr::from(([127, 0, 0, 1], nodes[0].api)),
        &token,
        None,
    )
    .await?;
    let mut criticals = vec![devices[0].0.measure(glucose(38.0), now_ms())];
    let mut on_dead = stream.until("opened", Duration::from_secs(15)).await?;

    // Node 1 dies; at once every other patient measures a dangerously low glucose, so most of
    // the critical readings land while node 1's partitions are moving.
    let killed = Instant::now();
    nodes[0].kill()?;
    for (dev, _) in &devices[1..] {
        criticals.push(dev.measure(glucose(38.0), now_ms()));
    }
    // What reached the client before its node died, then the stream's end.
    on_dead.extend(until_ended(&mut stream).await);
    let survivors: Vec<&Node> = nodes[1..].iter().collect();
    partitions_settled(&survivors, TAKEOVER_WITHIN).await?;
    let takeover = killed.elapsed();
    eprintln!("the dead node's partitions were taken over {takeover:?} after SIGKILL");

    // The nurse's console reconnects to node 2 with the last id it saw.
    let last_seen = on_dead.last().map(|e| e.id).unwrap_or(start);
    let mut resumed = Sse::connect(
        std::net::SocketAddr::from(([127, 0, 0, 1], nodes[1].api)),
        &token,
        Some(last_seen),
    )
    .await?;

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

    // The nurse's stream: what node 1 sent, then what node 2 sent after the last id seen, is
    // the store's alert event list, every event once, in order.
    let want: Vec<i64> = store
        .alert_events_after(start, None, 10_000)
        .await?
        .iter()
        .map(|e| e.id)
        .collect();
    let mut got: Vec<i64> = on_dead.iter().map(|e| e.id).collect();
    let before_resume = got.len();
    while got.len() < want.len() {
        match resumed.next(Duration::from_secs(5)).await? {
            Some(e) => got.push(e.id),
            None => break,
        }
    }
    // Nothing more arrives (no event sent twice).
    if let Some(e) = resumed.next(Duration::from_millis(1500)).await? {
        got.push(e.id);
    }
    eprintln!(
        "alert stream: {before_resume} events from node 1 before it died, {} from node 2 after \
         Last-Event-ID {last_seen}",
        got.len() - before_resume
    );
    assert!(!on_dead.is_empty(), "node 1's stream delivered nothing");
    assert_eq!(got, want, "no gap, no duplicate across the resume");

    for (dev, _) in devices {
        dev.stop().await;
    }
    cancel.cancel();
    // The console goes away first: a node's shutdown waits (up to 30 s) for open streams.
    drop(resumed);
    for n in nodes.iter_mut().skip(1) {
        let status = n.terminate().await?;
        assert!(status.success(), "{} SIGTERM exit status {status}", n.name);
    }
    Ok(())
}
