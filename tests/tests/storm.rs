//! A reconnect storm, short enough for CI: 2,000 devices, each holding a small backlog, all
//! connect at once. Every reading is stored exactly once and acked, the gateway holds one
//! descriptor per device connection (counted in `/proc/self/fd`), and the shutdown path
//! (the token `sentinella run` cancels on SIGTERM) finishes within 10 s with every device
//! still connected. The 18,000-device storm is a benchmark (BENCHMARKS.md), not a test.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use e2e::harness::{Db, Stack, now_ms, topic};
use gateway::Metrics;
use store::DeviceKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Devices in the storm.
const DEVICES: usize = 2_000;
/// Readings each device holds when it connects.
const BACKLOG: u32 = 5;
/// Devices per patient.
const DEVICES_PER_PATIENT: usize = 50;
/// How long one device may take from connect to its last ack.
const DEVICE_DEADLINE: Duration = Duration::from_secs(120);

fn open_descriptors() -> anyhow::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
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

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    remaining_length(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// CONNECT, MQTT 3.1.1, clean session, keep-alive 60 s, username = client id.
fn connect(id: &str, secret: &str) -> Vec<u8> {
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.extend_from_slice(&[4, 0xC2, 0, 60]);
    string(id.as_bytes(), &mut body);
    string(id.as_bytes(), &mut body);
    string(secret.as_bytes(), &mut body);
    packet(0x10, &body)
}

fn subscribe(pkid: u16, filter: &str) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    string(filter.as_bytes(), &mut body);
    body.push(1);
    packet(0x82, &body)
}

fn publish_qos1(pkid: u16, topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic.as_bytes(), &mut body);
    body.extend_from_slice(&pkid.to_be_bytes());
    body.extend_from_slice(payload);
    packet(0x32, &body)
}

/// Reads one packet: (first byte, body).
async fn read_packet(s: &mut TcpStream) -> anyhow::Result<(u8, Vec<u8>)> {
    let header = s.read_u8().await?;
    let mut len = 0usize;
    let mut shift = 0;
    loop {
        let byte = s.read_u8().await?;
        len |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        ensure!(shift <= 21, "bad remaining length");
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).await?;
    Ok((header, body))
}

/// One device of the storm: connects, subscribes to its acks, publishes its backlog (one
/// reading per publish, all in flight at once) and returns once every seq is acked as
/// committed, with the connection still open.
async fn device(edge: SocketAddr, id: String, secret: String) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(edge).await?;
    s.write_all(&connect(&id, &secret)).await?;
    let (header, body) = read_packet(&mut s).await?;
    ensure!(
        header == 0x20 && body == [0, 0],
        "{id}: CONNACK {header:#x} {body:?}"
    );
    s.write_all(&subscribe(1, &topic(&id, "ack"))).await?;
    let (header, body) = read_packet(&mut s).await?;
    ensure!(
        header == 0x90 && body == [0, 1, 1],
        "{id}: SUBACK {header:#x} {body:?}"
    );
    let readings = topic(&id, "readings");
    let start = now_ms() - i64::from(BACKLOG) * 60_000;
    let mut out = Vec::new();
    for seq in 1..=BACKLOG {
        let payload = format!(
            r#"{{"v":1,"readings":[{{"seq":{seq},"ts":{},"kind":"bp","sys":128,"dia":82,"pulse":70,"unit":"mmHg"}}]}}"#,
            start + i64::from(seq) * 60_000
        );
        out.extend(publish_qos1(seq as u16, &readings, payload.as_bytes()));
    }
    s.write_all(&out).await?;
    let mut pubacks = BTreeSet::new();
    let mut committed = BTreeSet::new();
    while committed.len() < BACKLOG as usize || pubacks.len() < BACKLOG as usize {
        let (header, body) = read_packet(&mut s).await?;
        match header >> 4 {
            4 => {
                ensure!(body.len() >= 2, "{id}: short PUBACK");
                pubacks.insert(u16::from_be_bytes([body[0], body[1]]));
            }
            3 => {
                let qos = (header >> 1) & 3;
                ensure!(body.len() >= 2, "{id}: short PUBLISH");
                let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let mut at = 2 + tlen;
                if qos > 0 {
                    let pkid = &body[at..at + 2];
                    s.write_all(&[0x40, 2, pkid[0], pkid[1]]).await?;
                    at += 2;
                }
                let ack: serde_json::Value = serde_json::from_slice(&body[at..])?;
                let rejected = ack["rejected"].as_array().map_or(0, Vec::len);
                ensure!(rejected == 0, "{id}: rejected {ack}");
                for range in ack["committed"].as_array().context("committed")? {
                    let a = range[0].as_u64().context("range")?;
                    let b = range[1].as_u64().context("range")?;
                    committed.extend(a..=b);
                }
            }
            other => bail!("{id}: unexpected packet type {other}"),
        }
    }
    ensure!(
        committed == (1..=u64::from(BACKLOG)).collect::<BTreeSet<_>>(),
        "{id}: committed {committed:?}"
    );
    Ok(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_devices_is_absorbed_with_one_descriptor_each() -> anyhow::Result<()> {
    let stack = Stack::start(Db::Postgres).await?;
    let mut devices = Vec::with_capacity(DEVICES);
    let mut patient = None;
    for i in 0..DEVICES {
        if i % DEVICES_PER_PATIENT == 0 {
            patient = Some(stack.patient(&["hypertension"]).await?.id);
        }
        let patient = patient.context("patient")?;
        devices.push(stack.device(patient, DeviceKind::BloodPressure).await?);
    }
    let readings_before = stack.store().count_readings(None).await?;
    let descriptors_before = open_descriptors()?;

    // All at once.
    let started = Instant::now();
    let edge = stack.edge;
    let tasks: Vec<_> = devices
        .iter()
        .map(|d| {
            let (id, secret) = (d.id.clone(), d.secret.clone());
            tokio::spawn(async move {
                tokio::time::timeout(DEVICE_DEADLINE, device(edge, id.clone(), secret))
                    .await
                    .with_context(|| format!("{id}: no ack of its whole backlog in time"))?
            })
        })
        .collect();
    let mut open = Vec::with_capacity(DEVICES);
    for task in tasks {
        open.push(task.await??);
    }
    let absorbed = started.elapsed();

    // Every device is connected: the test holds one socket of each connection, the gateway the
    // other, and nothing else.
    let descriptors_during = open_descriptors()?;
    let grown = descriptors_during.saturating_sub(descriptors_before);
    eprintln!(
        "storm: {DEVICES} devices × {BACKLOG} readings acked in {absorbed:?}; descriptors \
         {descriptors_before} → {descriptors_during} (+{grown}: the devices' {DEVICES} and the \
         gateway's)"
    );
    assert_eq!(
        Metrics::get(&stack.metrics.edge_connections_open),
        DEVICES as u64
    );
    assert!(
        grown <= 2 * DEVICES + 64,
        "{grown} descriptors for {DEVICES} connections: more than one on the gateway's side"
    );

    // Zero lost, zero duplicated.
    let stored = stack.store().count_readings(None).await? - readings_before;
    assert_eq!(stored, (DEVICES as i64) * i64::from(BACKLOG));
    for d in devices.iter().step_by(97) {
        assert_eq!(
            stack.store().count_readings(Some(&d.id)).await?,
            i64::from(BACKLOG)
        );
    }
    assert_eq!(Metrics::get(&stack.metrics.readings_duplicate_total), 0);

    // Shutdown with every device still connected: within 10 s.
    let stopping = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(10), stack.stop()).await;
    let took = stopping.elapsed();
    eprintln!("storm: shutdown with {DEVICES} devices connected took {took:?}");
    assert!(stopped.is_ok(), "shutdown took more than 10 s");
    drop(open);
    // The gateway's sockets are all closed: back to where the storm began (± the pool's).
    let descriptors_after = open_descriptors()?;
    assert!(
        descriptors_after <= descriptors_before + 32,
        "{descriptors_after} descriptors open after the shutdown, {descriptors_before} before"
    );
    Ok(())
}
