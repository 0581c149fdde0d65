//! Hostile MQTT clients — random bytes, oversized packets, sockets that never speak, connect
//! floods, a client that never reads — neither take the gateway down nor starve an honest
//! device, which keeps getting its readings committed and acknowledged while they run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use e2e::harness::{Db, RawDevice, Stack, now_ms, topic};
use gateway::Metrics;
use protocol::{Measurement, Spo2};
use rand::{Rng, SeedableRng};
use simulators::device::{DeviceSpec, spawn};
use store::DeviceKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_do_not_starve_honest_devices() -> anyhow::Result<()> {
    let stack = Stack::start_with(Db::Sqlite, |c| {
        c.gateway.connect_timeout = Duration::from_secs(2)
    })
    .await?;
    let edge = stack.edge;
    let patient = stack.patient(&["copd"]).await?;
    let honest = stack.device(patient.id, DeviceKind::Spo2).await?;
    let greedy = stack.device(patient.id, DeviceKind::BloodPressure).await?;
    let cancel = CancellationToken::new();
    let dev = spawn(
        DeviceSpec::new(&honest.id, &honest.secret, edge.to_string()),
        cancel.clone(),
    );
    dev.wait_connected(Duration::from_secs(10)).await?;

    let attacking = Arc::new(AtomicBool::new(true));
    let attacks = Arc::new(AtomicU64::new(0));
    let mut attackers = Vec::new();

    // 100 sockets that connect and never send a byte.
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(edge).await?);
    }
    // 50 sockets that announce a 200 MB CONNECT and then trickle.
    let mut trickling = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(edge).await?;
        s.write_all(&[0x10, 0xff, 0xff, 0xff, 0x7f, 0x00]).await?;
        trickling.push(s);
    }
    // Random bytes, over and over, from 20 connections at a time.
    for seed in 0..20u64 {
        let (attacking, attacks) = (attacking.clone(), attacks.clone());
        attackers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            while attacking.load(Ordering::Relaxed) {
                if let Ok(mut s) = TcpStream::connect(edge).await {
                    let len = rng.gen_range(1..4096);
                    let junk: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
                    let _ = s.write_all(&junk).await;
                    let mut sink = [0u8; 64];
                    let _ =
                        tokio::time::timeout(Duration::from_millis(50), s.read(&mut sink)).await;
                    attacks.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // A connect flood: connect and drop as fast as possible.
    for _ in 0..2 {
        let (attacking, attacks) = (attacking.clone(), attacks.clone());
        attackers.push(tokio::spawn(async move {
            while attacking.load(Ordering::Relaxed) {
                let _ = TcpStream::connect(edge).await;
                attacks.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Oversized publishes from a device that authenticated properly (closed each time).
    {
        let (attacking, attacks, greedy) = (attacking.clone(), attacks.clone(), greedy.clone());
        attackers.push(tokio::spawn(async move {
            while attacking.load(Ordering::Relaxed) {
                let mut raw = RawDevice::connect(edge, &greedy.id, &greedy.secret);
                if raw.connected().await.is_ok() {
                    let _ = raw
                        .publish(&topic(&greedy.id, "readings"), vec![b'{'; 400 * 1024])
                        .await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                raw.close();
                attacks.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // A client that subscribes to its own acks, publishes, and never reads its socket.
    let mut deaf = TcpStream::connect(edge).await?;
    deaf.write_all(&connect_packet(&greedy.id, &greedy.secret))
        .await?;
    let sub_topic = topic(&greedy.id, "ack");
    deaf.write_all(&subscribe_packet(&sub_topic)).await?;
    let deaf_publisher = {
        let attacking = attacking.clone();
        let id = greedy.id.clone();
        tokio::spawn(async move {
            let mut seq = 1u32;
            while attacking.load(Ordering::Relaxed) {
                let body = format!(
                    r#"{{"v":1,"readings":[{{"seq":{seq},"ts":{},"kind":"bp","sys":130,"dia":80,"unit":"mmHg"}}]}}"#,
                    now_ms()
                );
                if deaf
                    .write_all(&publish_packet(&topic(&id, "readings"), body.as_bytes()))
                    .await
                    .is_err()
                {
                    break;
                }
                seq += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            deaf
        })
    };

    // Meanwhile the honest device measures every 50 ms; each reading must be acked promptly.
    let attack_started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut sent = 0u64;
    while attack_started.elapsed() < Duration::from_secs(6) {
        let m = Measurement::Spo2(Spo2 {
            percent: 93.0,
            pulse: Some(81.0),
            perfusion_index: None,
        });
        let t0 = Instant::now();
        dev.measure(m, now_ms());
        sent += 1;
        dev.wait_settled(Duration::from_secs(10)).await?;
        worst = worst.max(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    attacking.store(false, Ordering::Relaxed);
    for a in attackers {
        a.await?;
    }
    let _deaf = deaf_publisher.await?;
    eprintln!(
        "hostile run: {} attack connections in 6 s; honest device: {sent} readings, worst publish→ack {worst:?}; edge refused {}, violations {}",
        attacks.load(Ordering::Relaxed),
        Metrics::get(&stack.metrics.edge_refused_total),
        Metrics::get(&stack.metrics.edge_violations_total),
    );
    assert!(
        attacks.load(Ordering::Relaxed) > 100,
        "the attack did not run"
    );
    assert!(
        worst < Duration::from_secs(2),
        "honest device starved: worst publish→ack {worst:?}"
    );
    assert_eq!(
        stack.store().count_readings(Some(&honest.id)).await?,
        sent as i64
    );
    assert_eq!(stack.get("/readyz").await?.0, 200);

    // Silent and trickling sockets are closed by the CONNECT timeout.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut closed = 0;
    for mut s in silent.into_iter().chain(trickling) {
        let mut b = [0u8; 16];
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(Ok(0)) = tokio::time::timeout(left, s.read(&mut b)).await {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 150,
        "sockets that never sent a CONNECT were left open"
    );
    let oversized = stack.store().list_quarantine(1000, None).await?;
    assert!(
        oversized
            .iter()
            .any(|e| e.reason == "mqtt.packet_too_large")
    );

    dev.stop().await;
    cancel.cancel();
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

fn connect_packet(id: &str, secret: &str) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_string(b"MQTT", &mut body);
    body.extend_from_slice(&[4, 0b1100_0010, 0, 60]);
    mqtt_string(id.as_bytes(), &mut body);
    mqtt_string(id.as_bytes(), &mut body);
    mqtt_string(secret.as_bytes(), &mut body);
    packet(0x10, body)
}

fn subscribe_packet(filter: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    mqtt_string(filter.as_bytes(), &mut body);
    body.push(0);
    packet(0x82, body)
}

fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_string(topic.as_bytes(), &mut body);
    body.extend_from_slice(payload);
    packet(0x30, body)
}
