//! The device edge against the pentest's findings: a device cannot take the broker's own
//! identities, cannot grow the broker's memory with subscriptions, loses its connection when its
//! certificate is re-issued; the edge's connection limit fits the process's descriptors; per-IP
//! limits spare exempt networks.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::harness::{Db, RawDevice, Stack, now_ms, topic};
use e2e::kit::closed_by_server;
use gateway::Metrics;
use store::{DeviceKind, NewDevice};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

fn bp(seq: u32) -> String {
    format!(
        r#"{{"v":1,"readings":[{{"seq":{seq},"ts":{},"kind":"bp","sys":128,"dia":82,"pulse":70,"unit":"mmHg"}}]}}"#,
        now_ms()
    )
}

/// Publishes reading `seq` and waits for its commit ack on the device's ack topic.
async fn publish_acked(dev: &mut RawDevice, id: &str, seq: u32) -> anyhow::Result<()> {
    dev.publish(&topic(id, "readings"), bp(seq)).await?;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some((t, payload)) = dev.next_message(Duration::from_millis(500)).await {
            let text = String::from_utf8_lossy(&payload);
            if t.ends_with("/ack") && text.contains(&format!("[{seq},{seq}]")) {
                return Ok(());
            }
        }
    }
    bail!("{id}: no commit ack for seq {seq}")
}

/// Connects `id` on the plain listener, subscribes to its acks and waits for the CONNACK.
async fn connected(stack: &Stack, id: &str, secret: &str) -> anyhow::Result<RawDevice> {
    let mut dev = RawDevice::connect(stack.edge, id, secret);
    dev.connected().await.map_err(anyhow::Error::msg)?;
    dev.subscribe(&topic(id, "ack")).await?;
    Ok(dev)
}

async fn add_device(stack: &Stack, id: &str, patient_id: i64) -> anyhow::Result<String> {
    let secret = store::credentials::generate_secret();
    stack
        .store()
        .add_device(&NewDevice {
            id: id.to_owned(),
            patient_id,
            kind: DeviceKind::BloodPressure,
            secret_hash: store::credentials::hash_secret(&secret),
            model: None,
        })
        .await?;
    Ok(secret)
}

/// H2: the ingest link's client id was a valid device id; a device provisioned with it and
/// connected once made rumqttd drop the link, and nothing was stored any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_device_can_take_the_brokers_own_identities() -> anyhow::Result<()> {
    let stack = Stack::start(Db::Sqlite).await?;
    let patient = stack.patient(&["hypertension"]).await?;
    let honest = stack.device(patient.id, DeviceKind::BloodPressure).await?;
    let mut dev = connected(&stack, &honest.id, &honest.secret).await?;
    publish_acked(&mut dev, &honest.id, 1).await?;

    // Every identity the gateway holds in the broker: provisioning refuses it, and a CONNECT
    // with it is refused before anything reaches the broker.
    assert!(!gateway::INTERNAL_CLIENT_IDS.is_empty());
    for id in gateway::INTERNAL_CLIENT_IDS {
        let refused = add_device(&stack, id, patient.id).await;
        assert!(refused.is_err(), "{id} was provisioned");
        let mut impostor = RawDevice::connect(stack.edge, id, "x");
        let answer = impostor.connected().await;
        assert!(answer.is_err(), "{id}: {answer:?}");
        impostor.close();
    }

    // The id the pentest used (the link's id until now) is an ordinary device id: connecting
    // it, twice, harms nobody.
    let secret = add_device(&stack, "sentinella-ingest", patient.id).await?;
    for _ in 0..2 {
        let old_name = connected(&stack, "sentinella-ingest", &secret).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        old_name.close();
    }

    // Ingestion of the other devices goes on, and the gateway says it is ready.
    for seq in 2..=4 {
        publish_acked(&mut dev, &honest.id, seq).await?;
    }
    stack.wait_readings(&honest.id, 4, WAIT).await?;
    assert!(stack.metrics.ready());
    assert_eq!(Metrics::get(&stack.metrics.ingest_link_restarts_total), 0);
    let (status, _) = stack.get_with("/readyz", None).await?;
    assert_eq!(status, 200);
    let metrics = stack.get("/metrics").await?.1;
    let text = metrics.as_str().unwrap_or_default();
    assert!(text.contains("sentinella_ingest_link_up 1\n"), "{text}");
    dev.close();
    stack.stop().await;
    Ok(())
}

fn remaining_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

fn mqtt_string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(header: u8, body: Vec<u8>) -> Vec<u8> {
    let mut out = vec![header];
    remaining_length(body.len(), &mut out);
    out.extend(body);
    out
}

/// CONNECT with username and password, asking for a persistent session (clean session 0).
fn persistent_connect(id: &str, secret: &str) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_string(b"MQTT", &mut body);
    body.extend_from_slice(&[4, 0b1100_0000, 0, 60]);
    mqtt_string(id.as_bytes(), &mut body);
    mqtt_string(id.as_bytes(), &mut body);
    mqtt_string(secret.as_bytes(), &mut body);
    packet(0x10, body)
}

fn subscribe_many(pkid: u16, filters: &[String]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    for f in filters {
        mqtt_string(f.as_bytes(), &mut body);
        body.push(1);
    }
    packet(0x82, body)
}

/// Resident set size of this process (the broker runs in it), bytes.
fn rss() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    Ok(kb * 1024)
}

/// H3: one device subscribed 20,000 filters under its own prefix in half a second; rumqttd
/// kept them (about 125 MB) after the device left, forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_flood_is_cut_off_and_broker_memory_stays_bounded() -> anyhow::Result<()> {
    let stack = Stack::start(Db::Sqlite).await?;
    let patient = stack.patient(&["copd"]).await?;
    let greedy = stack.device(patient.id, DeviceKind::Spo2).await?;
    let honest = stack.device(patient.id, DeviceKind::BloodPressure).await?;
    let mut dev = connected(&stack, &honest.id, &honest.secret).await?;
    publish_acked(&mut dev, &honest.id, 1).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss()?;

    // 10,000 distinct filters under the device's own prefix, 100 per SUBSCRIBE, over a
    // connection asking for a persistent session; twice, as a reconnecting device would.
    let mut sent = 0usize;
    for round in 0..2 {
        let mut s = TcpStream::connect(stack.edge).await?;
        s.write_all(&persistent_connect(&greedy.id, &greedy.secret))
            .await?;
        for batch in 0..100u16 {
            let filters: Vec<String> = (0..100)
                .map(|i| topic(&greedy.id, &format!("r{round}/f{batch}x{i}")))
                .collect();
            if s.write_all(&subscribe_many(batch + 1, &filters))
                .await
                .is_err()
            {
                break;
            }
            sent += filters.len();
        }
        assert!(
            closed_by_server(&mut s, Duration::from_secs(5)).await,
            "round {round}: the flooding connection stayed open"
        );
    }
    eprintln!("subscription flood: {sent} filters written before the edge closed the connections");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grown = rss()?.saturating_sub(before);
    eprintln!(
        "RSS growth after the flood: {:.1} MiB",
        grown as f64 / (1024.0 * 1024.0)
    );
    assert!(
        grown < 16 * 1024 * 1024,
        "broker memory grew by {grown} bytes"
    );
    // Each attempt was quarantined and counted as a violation.
    let entries = stack.wait_quarantine(2, WAIT).await?;
    assert!(
        entries
            .iter()
            .filter(|e| e.reason == "edge.subscribe_filter_not_allowed"
                && e.device_id.as_deref() == Some(greedy.id.as_str()))
            .count()
            >= 2,
        "{entries:#?}"
    );
    assert!(Metrics::get(&stack.metrics.edge_violations_total) >= 2);

    // The same device, behaving, subscribes to its ack and config topics (no more) and is
    // served; the honest one never noticed.
    let mut good = RawDevice::connect(stack.edge, &greedy.id, &greedy.secret);
    good.connected().await.map_err(anyhow::Error::msg)?;
    good.subscribe(&topic(&greedy.id, "ack")).await?;
    good.subscribe(&topic(&greedy.id, "config")).await?;
    let spo2 = format!(
        r#"{{"v":1,"readings":[{{"seq":1,"ts":{},"kind":"spo2","spo2":96,"pulse":70}}]}}"#,
        now_ms()
    );
    good.publish(&topic(&greedy.id, "readings"), spo2).await?;
    stack.wait_readings(&greedy.id, 1, WAIT).await?;
    publish_acked(&mut dev, &honest.id, 2).await?;
    good.close();
    dev.close();
    stack.stop().await;
    Ok(())
}

/// M2: `sentinella device cert` issued a new certificate, but the connection made with the old
/// one stayed open and kept committing readings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reissuing_a_certificate_closes_the_old_ones_connection() -> anyhow::Result<()> {
    let stack = Stack::start(Db::Sqlite).await?;
    let poll = gateway::GatewayConfig::default().revocation_poll;
    let patient = stack.patient(&["hypertension"]).await?;
    let dev = stack.device(patient.id, DeviceKind::BloodPressure).await?;
    let old = stack.device_tls(&dev.id).await?;
    let mut old_conn = RawDevice::connect_tls(stack.tls_edge, &dev.id, &old)?;
    old_conn.connected().await.map_err(anyhow::Error::msg)?;
    old_conn.subscribe(&topic(&dev.id, "ack")).await?;
    publish_acked(&mut old_conn, &dev.id, 1).await?;

    // Re-issue, as `sentinella device cert` does (new certificate recorded in the store).
    let reissued_at = Instant::now();
    let new = stack.device_tls(&dev.id).await?;
    let closed = tokio::time::timeout(poll + Duration::from_secs(3), async {
        loop {
            match old_conn.events.recv().await {
                Some(Err(e)) => return Some(e),
                Some(Ok(())) => continue,
                None => return None,
            }
        }
    })
    .await;
    let latency = reissued_at.elapsed();
    eprintln!("re-issue closed the old certificate's connection after {latency:?} (poll {poll:?})");
    assert!(
        matches!(closed, Ok(Some(_))),
        "old connection not closed: {closed:?}"
    );
    assert!(latency <= poll + Duration::from_secs(1), "took {latency:?}");
    assert!(Metrics::get(&stack.metrics.edge_revoked_closed_total) >= 1);
    old_conn.close();

    // The old certificate no longer connects; the new one does, and is served.
    let mut again = RawDevice::connect_tls(stack.tls_edge, &dev.id, &old)?;
    let refused = again.connected().await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("NotAuthorized")),
        "{refused:?}"
    );
    again.close();
    let mut new_conn = RawDevice::connect_tls(stack.tls_edge, &dev.id, &new)?;
    new_conn.connected().await.map_err(anyhow::Error::msg)?;
    new_conn.subscribe(&topic(&dev.id, "ack")).await?;
    publish_acked(&mut new_conn, &dev.id, 2).await?;
    // It stays open across further polls (the change stays in the poll's window).
    tokio::time::sleep(poll * 2).await;
    publish_acked(&mut new_conn, &dev.id, 3).await?;
    new_conn.close();
    stack.stop().await;
    Ok(())
}

async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    Ok(socket.connect(to).await?)
}

/// M3 (edge part): `max_connections` was 20,000, the process's whole descriptor limit, though
/// the API and the store need theirs (a device then cost three; now one, its socket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_limit_fits_the_descriptor_budget() -> anyhow::Result<()> {
    // Configured beyond the budget: refused at start, saying why.
    let refused = Stack::start_with(Db::Sqlite, |c| c.gateway.max_connections = Some(20_000)).await;
    let err = format!("{:#}", refused.err().context("started with 20,000")?);
    assert!(
        err.contains("max_connections = 20000") && err.contains("descriptors"),
        "{err}"
    );

    // Unset: derived from the budget, and exposed.
    let stack = Stack::start(Db::Sqlite).await?;
    let limit = Metrics::get(&stack.metrics.process_open_files_limit);
    let (soft, hard) = rlimit_nofile()?;
    assert_eq!(soft, hard, "soft limit raised to the hard one");
    assert_eq!(limit, hard);
    let budget = gateway::DescriptorBudget {
        limit,
        api: gateway::GatewayConfig::default().api_descriptors,
        store: stack.store().max_descriptors(),
        reserve: gateway::descriptors::RESERVE,
    };
    let max = Metrics::get(&stack.metrics.edge_max_connections);
    eprintln!("descriptor limit {limit}: edge max_connections {max}");
    assert_eq!(max, budget.device_connections() as u64);
    // One descriptor per device (its socket), and room left for the API and the store.
    assert_eq!(gateway::descriptors::PER_DEVICE, 1);
    assert!(max + 1024 < limit);
    let metrics = stack.get("/metrics").await?.1;
    let text = metrics.as_str().unwrap_or_default();
    assert!(
        text.contains(&format!("sentinella_edge_max_connections {max}\n")),
        "{text}"
    );
    stack.stop().await;

    // Both listeners share the one limit.
    let stack = Stack::start_with(Db::Sqlite, |c| c.gateway.max_connections = Some(2)).await?;
    let mut a = TcpStream::connect(stack.tls_edge).await?;
    let mut b = TcpStream::connect(stack.edge).await?;
    let mut c = TcpStream::connect(stack.tls_edge).await?;
    assert!(closed_by_server(&mut c, Duration::from_secs(2)).await);
    assert!(!closed_by_server(&mut a, Duration::from_millis(200)).await);
    assert!(!closed_by_server(&mut b, Duration::from_millis(200)).await);
    assert!(Metrics::get(&stack.metrics.edge_refused_total) >= 1);
    stack.stop().await;
    Ok(())
}

fn rlimit_nofile() -> anyhow::Result<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("Max open files")?;
    let mut numbers = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    Ok((
        numbers.next().context("soft")?,
        numbers.next().context("hard")?,
    ))
}

/// Devices behind one NAT address were refused by the per-IP limits: exempt networks are not
/// limited, every other address still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exempt_networks_pass_the_per_ip_limits() -> anyhow::Result<()> {
    let refused = Stack::start_with(Db::Sqlite, |c| {
        c.gateway.per_ip_exempt = vec!["127.0.0.0/33".into()];
    })
    .await;
    let err = format!("{:#}", refused.err().context("started with a bad network")?);
    assert!(err.contains("per_ip_exempt"), "{err}");

    let stack = Stack::start_with(Db::Sqlite, |c| {
        c.gateway.max_connections_per_ip = 5;
        c.gateway.max_new_connections_per_ip_per_sec = 100;
        c.gateway.per_ip_exempt = vec!["127.0.0.64/30".into()];
    })
    .await?;
    let edge = stack.tls_edge;
    // 30 connections from an exempt address (a NAT): all held.
    let mut nat = Vec::new();
    for _ in 0..30 {
        nat.push(connect_from(Ipv4Addr::new(127, 0, 0, 65), edge).await?);
    }
    // 30 from an address outside it: 5 held, 25 closed at accept.
    let mut other = Vec::new();
    for _ in 0..30 {
        other.push(connect_from(Ipv4Addr::new(127, 0, 0, 70), edge).await?);
    }
    let mut nat_closed = 0;
    for s in &mut nat {
        if closed_by_server(s, Duration::from_millis(100)).await {
            nat_closed += 1;
        }
    }
    let mut other_closed = 0;
    for s in &mut other {
        if closed_by_server(s, Duration::from_millis(100)).await {
            other_closed += 1;
        }
    }
    assert_eq!(nat_closed, 0);
    assert_eq!(other_closed, 25);
    assert_eq!(
        Metrics::get(&stack.metrics.edge_ip_concurrency_refused_total),
        25
    );
    stack.stop().await;
    Ok(())
}
