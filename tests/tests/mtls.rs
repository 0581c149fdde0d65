//! Device identity by mutual TLS at the edge: stalled handshakes block nobody, per-IP limits,
//! mosquitto clients with certificates (own topics only; no, revoked, foreign-CA or mismatched
//! certificates refused), revocation closing a live connection, and the plain listener kept on
//! loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use e2e::harness::{Db, RawDevice, Stack, now_ms, topic};
use e2e::kit::closed_by_server;
use gateway::Metrics;
use simulators::device::DeviceTls;
use store::DeviceKind;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(10);

/// A TCP connection to `to` from the loopback address `from` (the whole 127/8 is local).
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    Ok(socket.connect(to).await?)
}

/// The first bytes of a TLS 1.2/1.3 ClientHello: a record header announcing 512 bytes and the
/// start of the handshake message, then nothing more.
const PARTIAL_CLIENT_HELLO: [u8; 11] = [
    0x16, 0x03, 0x01, 0x02, 0x00, // handshake record, 512 bytes
    0x01, 0x00, 0x01, 0xfc, // ClientHello, 508 bytes
    0x03, 0x03, // client version 1.2
];

fn reading(seq: u32, kind_json: &str) -> String {
    format!(
        r#"{{"v":1,"readings":[{{"seq":{seq},"ts":{},{kind_json}}}]}}"#,
        now_ms()
    )
}

fn bp(seq: u32) -> String {
    reading(
        seq,
        r#""kind":"bp","sys":152,"dia":94,"pulse":77,"unit":"mmHg""#,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_do_not_block_tls_devices() -> anyhow::Result<()> {
    let handshake_timeout = Duration::from_secs(3);
    let stack = Stack::start_with(Db::Sqlite, |c| {
        c.gateway.tls_handshake_timeout = handshake_timeout;
    })
    .await?;
    let patient = stack.patient(&["hypertension"]).await?;
    let honest = stack.device(patient.id, DeviceKind::BloodPressure).await?;
    let tls = stack.device_tls(&honest.id).await?;
    let edge = stack.tls_edge;

    // 100 silent sockets and 100 stalled mid-ClientHello, from 8 source addresses (25 each,
    // within the default per-IP limits, so every one is held open by the edge).
    let mut silent = Vec::new();
    let mut stalled = Vec::new();
    for i in 0..200u8 {
        let from = Ipv4Addr::new(127, 0, 0, 2 + i % 8);
        let mut s = connect_from(from, edge).await?;
        if i % 2 == 0 {
            silent.push(s);
        } else {
            s.write_all(&PARTIAL_CLIENT_HELLO).await?;
            stalled.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        Metrics::get(&stack.metrics.edge_connections_open),
        200,
        "all hostile sockets held"
    );
    assert_eq!(
        Metrics::get(&stack.metrics.edge_ip_rate_refused_total)
            + Metrics::get(&stack.metrics.edge_ip_concurrency_refused_total),
        0
    );

    // A real device connects over mTLS, publishes and gets its commit ack within a second.
    let started = Instant::now();
    let mut dev = RawDevice::connect_tls(edge, &honest.id, &tls)?;
    dev.connected().await.map_err(anyhow::Error::msg)?;
    dev.subscribe(&topic(&honest.id, "ack")).await?;
    dev.publish(&topic(&honest.id, "readings"), bp(1)).await?;
    let ack = loop {
        let (t, payload) = dev
            .next_message(Duration::from_secs(5))
            .await
            .context_msg("no ack")?;
        if t.ends_with("/ack") {
            break String::from_utf8(payload)?;
        }
    };
    let elapsed = started.elapsed();
    eprintln!("mTLS connect + publish + commit ack with 200 stalled sockets: {elapsed:?}");
    assert!(ack.contains("[[1,1]]"), "{ack}");
    assert!(
        elapsed <= Duration::from_secs(1),
        "honest device took {elapsed:?}"
    );
    dev.close();

    // The stalled handshakes are closed by the handshake timeout, in their own tasks.
    for s in silent.iter_mut().chain(stalled.iter_mut()) {
        assert!(
            closed_by_server(s, handshake_timeout + Duration::from_secs(3)).await,
            "a stalled socket outlived the handshake timeout"
        );
    }
    // (The counter is bumped just after the socket is dropped.)
    let deadline = Instant::now() + Duration::from_secs(2);
    while Metrics::get(&stack.metrics.edge_tls_handshake_timeouts_total) < 200
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        Metrics::get(&stack.metrics.edge_tls_handshake_timeouts_total),
        200
    );
    stack.wait_readings(&honest.id, 1, WAIT).await?;
    stack.stop().await;
    Ok(())
}

trait ContextMsg<T> {
    fn context_msg(self, msg: &str) -> anyhow::Result<T>;
}

impl<T> ContextMsg<T> for Option<T> {
    fn context_msg(self, msg: &str) -> anyhow::Result<T> {
        self.ok_or_else(|| anyhow::anyhow!("{msg}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limits_refuse_floods_at_accept() -> anyhow::Result<()> {
    let stack = Stack::start_with(Db::Sqlite, |c| {
        c.gateway.max_connections_per_ip = 10;
        c.gateway.max_new_connections_per_ip_per_sec = 20;
    })
    .await?;
    let edge = stack.tls_edge;

    // 15 connections from one address: 10 are held, 5 closed at once.
    let from = Ipv4Addr::new(127, 0, 0, 40);
    let mut held = Vec::new();
    for _ in 0..15 {
        held.push(connect_from(from, edge).await?);
    }
    let mut closed = 0;
    for s in &mut held {
        if closed_by_server(s, Duration::from_millis(300)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 5);
    assert_eq!(
        Metrics::get(&stack.metrics.edge_ip_concurrency_refused_total),
        5
    );

    // 80 quick connections from another address: the rate limit (a fixed 1 s window of
    // `max_new_connections_per_ip_per_sec`) admits at most 20 per window the burst touches,
    // so however slow this machine is, at least 80 - 20 × (windows touched) are refused.
    let from = Ipv4Addr::new(127, 0, 0, 41);
    let started = std::time::Instant::now();
    let mut burst = Vec::new();
    for _ in 0..80 {
        burst.push(connect_from(from, edge).await?);
    }
    let windows = started.elapsed().as_secs() + 2;
    let at_least = 80u64.saturating_sub(20 * windows).max(1);
    let mut rate_refused = 0;
    for _ in 0..60 {
        rate_refused = Metrics::get(&stack.metrics.edge_ip_rate_refused_total);
        if rate_refused >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        (at_least..=80).contains(&rate_refused),
        "rate refused {rate_refused}, expected at least {at_least}"
    );
    // Other addresses are unaffected: a device still connects from 127.0.0.1.
    let patient = stack.patient(&["copd"]).await?;
    let dev = stack.device(patient.id, DeviceKind::Spo2).await?;
    let tls = stack.device_tls(&dev.id).await?;
    let mut raw = RawDevice::connect_tls(edge, &dev.id, &tls)?;
    raw.connected().await.map_err(anyhow::Error::msg)?;
    raw.close();
    let metrics = stack.get("/metrics").await?.1;
    let text = metrics.as_str().unwrap_or_default();
    // Refusals still in flight when the loop above sampled may have been counted since.
    let exported: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("sentinella_edge_ip_rate_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        (rate_refused..=80).contains(&exported),
        "/metrics says {exported} refused by rate, the counter said {rate_refused}: {text}"
    );
    assert!(text.contains("sentinella_edge_ip_concurrency_refused_total "));
    stack.stop().await;
    Ok(())
}

async fn run(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    let child = Command::new(program).args(args).kill_on_drop(true).output();
    match tokio::time::timeout(Duration::from_secs(20), child).await {
        Ok(out) => Ok(out?),
        Err(_) => anyhow::bail!("{program} did not finish within 20 s"),
    }
}

/// Writes a device's PEM files for the mosquitto clients; returns (cafile, cert, key) paths.
fn write_pems(dir: &Path, name: &str, tls: &DeviceTls) -> anyhow::Result<[String; 3]> {
    let paths = [
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    ];
    std::fs::write(&paths[0], &tls.ca_pem)?;
    std::fs::write(&paths[1], &tls.cert_pem)?;
    std::fs::write(&paths[2], &tls.key_pem)?;
    Ok(paths.map(|p| p.display().to_string()))
}

fn mtls_args<'a>(
    port: &'a str,
    id: &'a str,
    pems: Option<&'a [String; 3]>,
    ca: &'a str,
) -> Vec<&'a str> {
    let mut args = vec![
        "-h",
        "127.0.0.1",
        "-p",
        port,
        "-i",
        id,
        "-V",
        "mqttv311",
        "--cafile",
        ca,
    ];
    if let Some(p) = pems {
        args.extend(["--cert", &p[1], "--key", &p[2]]);
    }
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_over_mutual_tls() -> anyhow::Result<()> {
    let stack = Stack::start(Db::Postgres).await?;
    let dir = tempfile_dir()?;
    let patient = stack.patient(&["hypertension"]).await?;
    let me = stack.device(patient.id, DeviceKind::BloodPressure).await?;
    let other = stack.device(patient.id, DeviceKind::Spo2).await?;
    let revoked = stack.device(patient.id, DeviceKind::Glucose).await?;
    let my_pems = write_pems(&dir, "me", &stack.device_tls(&me.id).await?)?;
    let revoked_pems = write_pems(&dir, "revoked", &stack.device_tls(&revoked.id).await?)?;
    stack
        .store()
        .revoke_device(&revoked.id, time::OffsetDateTime::now_utc())
        .await?;
    let ca = my_pems[0].clone();
    let port = stack.tls_edge.port().to_string();
    let own_topic = topic(&me.id, "readings");

    // A device publishes its reading with its certificate (no password): stored.
    let mut args = mtls_args(&port, &me.id, Some(&my_pems), &ca);
    let r1 = bp(1);
    args.extend(["-q", "1", "-t", &own_topic, "-m", &r1]);
    let out = run("mosquitto_pub", &args).await?;
    assert!(
        out.status.success(),
        "mosquitto_pub over mTLS failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stack.wait_readings(&me.id, 1, WAIT).await?;
    let (status, body) = stack
        .get(&format!("/api/v1/patients/{}/readings", patient.id))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(body["readings"][0]["systolic"], 152.0);

    // Refused connections: each must fail, and nothing they carried may be stored.
    let foreign_ca = pki::DeviceCa::generate("someone else's CA")?;
    let foreign = foreign_ca.issue_device(&me.id)?;
    let foreign_pems = write_pems(
        &dir,
        "foreign",
        &DeviceTls {
            cert_pem: foreign.cert_pem,
            key_pem: foreign.key_pem,
            ca_pem: stack.ca.cert_pem().to_owned(),
        },
    )?;
    let r2 = bp(2);
    let refused: [(&str, Vec<&str>); 4] = [
        ("no certificate", mtls_args(&port, &me.id, None, &ca)),
        (
            "revoked device",
            mtls_args(&port, &revoked.id, Some(&revoked_pems), &ca),
        ),
        (
            "certificate from another CA",
            mtls_args(&port, &me.id, Some(&foreign_pems), &ca),
        ),
        (
            "client id differs from the certificate",
            mtls_args(&port, &other.id, Some(&my_pems), &ca),
        ),
    ];
    let handshake_failures = Metrics::get(&stack.metrics.edge_tls_handshake_failures_total);
    let refusals = Metrics::get(&stack.metrics.edge_refused_total);
    for (what, mut args) in refused {
        let topic_for = if what == "revoked device" {
            topic(&revoked.id, "readings")
        } else if what.starts_with("client id") {
            topic(&other.id, "readings")
        } else {
            own_topic.clone()
        };
        args.extend(["-q", "1", "-t", &topic_for, "-m", &r2]);
        let out = run("mosquitto_pub", &args).await?;
        assert!(!out.status.success(), "{what}: mosquitto_pub succeeded");
    }
    // Two failed in the handshake (no certificate, foreign CA), two at CONNECT.
    assert!(
        Metrics::get(&stack.metrics.edge_tls_handshake_failures_total) >= handshake_failures + 2
    );
    assert!(Metrics::get(&stack.metrics.edge_refused_total) >= refusals + 2);

    // Publishing on another device's topic with a valid certificate: closed and quarantined.
    let mut args = mtls_args(&port, &me.id, Some(&my_pems), &ca);
    let other_topic = topic(&other.id, "readings");
    let spoof = reading(1, r#""kind":"spo2","spo2":97"#);
    args.extend(["-q", "1", "-t", &other_topic, "-m", &spoof]);
    let _ = run("mosquitto_pub", &args).await?;
    let entries = stack.wait_quarantine(1, WAIT).await?;
    assert!(
        entries
            .iter()
            .any(|e| e.reason == "edge.publish_outside_own_topics" && e.topic == other_topic),
        "{entries:#?}"
    );

    // Subscribing to everything or to another device's topics: refused.
    for filter in [
        "#",
        &topic(&other.id, "ack"),
        "sentinella/v1/devices/+/readings",
    ] {
        let before = stack.store().count_quarantine().await?;
        let mut args = mtls_args(&port, &me.id, Some(&my_pems), &ca);
        args.extend(["-t", filter, "-C", "1", "-W", "2"]);
        let out = run("mosquitto_sub", &args).await?;
        assert!(out.stdout.is_empty(), "{filter}: received something");
        let entries = stack.wait_quarantine(before + 1, WAIT).await?;
        assert!(
            entries
                .iter()
                .any(|e| e.reason == "edge.subscribe_outside_own_topics" && e.topic == filter),
            "{filter}: {entries:#?}"
        );
    }

    // A re-issued certificate supersedes the old one, within the revocation poll interval
    // (the poll also drops the registry's cached entry of a re-certified device).
    let _new = stack.device_tls(&me.id).await?;
    let poll = gateway::GatewayConfig::default().revocation_poll;
    tokio::time::sleep(poll + Duration::from_millis(500)).await;
    let mut args = mtls_args(&port, &me.id, Some(&my_pems), &ca);
    let r3 = bp(3);
    args.extend(["-q", "1", "-t", &own_topic, "-m", &r3]);
    let out = run("mosquitto_pub", &args).await?;
    assert!(!out.status.success(), "superseded certificate accepted");

    // Nothing from the refused attempts reached the readings.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.store().stored_seqs(&me.id).await?, vec![1]);
    assert!(stack.store().stored_seqs(&other.id).await?.is_empty());
    assert!(stack.store().stored_seqs(&revoked.id).await?.is_empty());
    stack.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(e2e::harness::unique("sentinella-mtls-"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_closes_a_live_connection() -> anyhow::Result<()> {
    let stack = Stack::start(Db::Sqlite).await?;
    let poll = gateway::GatewayConfig::default().revocation_poll;
    let patient = stack.patient(&["diabetes"]).await?;
    let dev = stack.device(patient.id, DeviceKind::Glucose).await?;
    let tls = stack.device_tls(&dev.id).await?;
    let mut over_tls = RawDevice::connect_tls(stack.tls_edge, &dev.id, &tls)?;
    over_tls.connected().await.map_err(anyhow::Error::msg)?;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let revoked_at = Instant::now();
    stack
        .store()
        .revoke_device(&dev.id, time::OffsetDateTime::now_utc())
        .await?;
    let closed = tokio::time::timeout(poll + Duration::from_secs(3), over_tls.events.recv()).await;
    let latency = revoked_at.elapsed();
    eprintln!("revocation closed the live connection after {latency:?} (poll {poll:?})");
    assert!(
        matches!(closed, Ok(Some(Err(_)))),
        "connection not closed: {closed:?}"
    );
    assert!(
        latency <= poll + Duration::from_secs(1),
        "revocation took {latency:?}"
    );
    assert!(Metrics::get(&stack.metrics.edge_revoked_closed_total) >= 1);
    over_tls.close();

    // Reconnecting is refused at once (the registry cache was dropped): CONNACK 5.
    let mut again = RawDevice::connect_tls(stack.tls_edge, &dev.id, &tls)?;
    let refused = again.connected().await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("NotAuthorized")),
        "{refused:?}"
    );
    again.close();
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listener_stays_on_loopback_unless_allowed() -> anyhow::Result<()> {
    let refused = Stack::start_with(Db::Sqlite, |c| {
        c.gateway.listen = SocketAddr::from(([0, 0, 0, 0], 0));
    })
    .await;
    let err = format!("{:#}", refused.err().context_msg("started")?);
    assert!(err.contains("loopback"), "{err}");
    let stack = Stack::start_with(Db::Sqlite, |c| {
        c.gateway.listen = SocketAddr::from(([0, 0, 0, 0], 0));
        c.gateway.allow_plain_on_non_loopback = true;
    })
    .await?;
    assert!(stack.edge.ip().is_unspecified());
    stack.stop().await;
    Ok(())
}
