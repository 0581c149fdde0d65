//! The device uplink against the real Mosquitto broker on 127.0.0.1:1883, with the test
//! playing the gateway (see `common`).

mod common;

use std::time::Duration;

use common::{FakeGateway, MOSQUITTO, eventually, unique_id};
use protocol::reading::sensor;
use protocol::{Kind, MeasurementStatus, Reading};
use simulators::physiology::{Condition, Patient};
use simulators::schedule::{Schedule, SimClock};
use simulators::{DeviceHandle, DeviceSpec, spawn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const T0: i64 = 1_763_798_400_000;
const SECS: fn(u64) -> Duration = Duration::from_secs;

fn start(spec: DeviceSpec) -> DeviceHandle {
    spawn(spec, CancellationToken::new())
}

/// Takes `n` blood-pressure measurements; returns their seqs.
fn measure_bp(device: &DeviceHandle, n: usize) -> Vec<u32> {
    let mut patient = Patient::new(7, &[Condition::Hypertension]);
    (0..n as i64)
        .map(|i| {
            let ts = T0 + i * 60_000;
            let sample = patient.measure(Kind::BloodPressure, ts, None);
            device.measure(sample.measurement, ts)
        })
        .collect()
}

#[tokio::test]
async fn outbox_drains_when_the_gateway_acks() {
    let id = unique_id("drain");
    let mut gateway = FakeGateway::start(std::slice::from_ref(&id), true).await;
    let device = start(DeviceSpec::new(&id, "secret", MOSQUITTO));
    device.wait_connected(SECS(5)).await.unwrap();

    let (_, status) = gateway
        .next_status(SECS(5))
        .await
        .expect("status after connecting");
    let status = protocol::status::Status::decode(status.as_bytes()).unwrap();
    assert!(status.online);
    assert_eq!(status.fw, Some("sim-0.1"));
    assert!(status.battery.is_some_and(|b| b <= 100));

    let seqs = measure_bp(&device, 100);
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    device.wait_settled(SECS(10)).await.unwrap();

    assert_eq!(device.committed(), seqs);
    assert!(device.rejected().is_empty());
    let stats = device.stats();
    assert_eq!(
        (stats.generated, stats.committed, stats.pending),
        (100, 100, 0)
    );
    assert!(stats.publishes >= 4, "{stats:?}");
    assert!(stats.acks >= 4, "{stats:?}");
    assert_eq!(stats.connects, 1);
    assert!(device.latencies().len() == 100);

    // Batches respect max_batch, and first sends come in seq order.
    let mut first_sends = Vec::new();
    while let Some(batch) = gateway.try_next_batch(Duration::from_millis(100)).await {
        assert!(batch.readings.len() <= 32, "{}", batch.readings.len());
        for seq in batch.seqs() {
            if !first_sends.contains(&seq) {
                first_sends.push(seq);
            }
        }
    }
    assert_eq!(first_sends, seqs);

    // A clean stop disconnects: the broker must not publish the will.
    device.stop().await;
    let will = gateway.next_status(Duration::from_millis(700)).await;
    assert!(will.is_none(), "will fired after a clean stop: {will:?}");
}

#[tokio::test]
async fn rejected_ranges_settle_too() {
    let id = unique_id("reject");
    let mut gateway = FakeGateway::start(std::slice::from_ref(&id), false).await;
    let device = start(DeviceSpec::new(&id, "secret", MOSQUITTO));
    device.wait_connected(SECS(5)).await.unwrap();

    measure_bp(&device, 10);
    assert_eq!(
        gateway.collect_seqs(10, SECS(5)).await,
        (1..=10).collect::<Vec<_>>()
    );
    gateway.ack(&id, &[(1, 3), (6, 10)], &[(4, 5)]).await;
    device.wait_settled(SECS(5)).await.unwrap();

    assert_eq!(device.committed(), [1, 2, 3, 6, 7, 8, 9, 10]);
    assert_eq!(device.rejected(), [4, 5]);
    let stats = device.stats();
    assert_eq!((stats.committed, stats.rejected, stats.pending), (8, 2, 0));
    device.stop().await;
}

#[tokio::test]
async fn unacked_readings_are_resent_after_resend_after() {
    let id = unique_id("resend");
    let mut gateway = FakeGateway::start(std::slice::from_ref(&id), false).await;
    let mut spec = DeviceSpec::new(&id, "secret", MOSQUITTO);
    spec.resend_after = Duration::from_millis(400);
    let device = start(spec);
    device.wait_connected(SECS(5)).await.unwrap();

    measure_bp(&device, 5);
    let first = gateway.next_batch(SECS(5)).await;
    assert_eq!(first.seqs(), [1, 2, 3, 4, 5]);
    let again = gateway.next_batch(SECS(5)).await;
    assert_eq!(again.seqs(), [1, 2, 3, 4, 5]);
    let gap = again.at - first.at;
    assert!(gap >= Duration::from_millis(350), "resent after {gap:?}");
    assert_eq!(
        again.readings, first.readings,
        "a resend carries the same readings"
    );

    // Acking only part of it leaves the rest to be resent, alone.
    gateway.ack(&id, &[(1, 3)], &[]).await;
    let mut rest = gateway.next_batch(SECS(5)).await;
    while rest.seqs() != [4, 5] {
        // A resend of the whole batch may have crossed the partial ack.
        assert_eq!(rest.seqs(), [1, 2, 3, 4, 5]);
        rest = gateway.next_batch(SECS(5)).await;
    }
    gateway.ack(&id, &[(4, 5)], &[]).await;
    device.wait_settled(SECS(5)).await.unwrap();
    assert!(device.stats().resent >= 7, "{:?}", device.stats());
    device.stop().await;
}

#[tokio::test]
async fn replay_republishes_settled_readings() {
    let id = unique_id("replay");
    let mut gateway = FakeGateway::start(std::slice::from_ref(&id), true).await;
    let device = start(DeviceSpec::new(&id, "secret", MOSQUITTO));
    device.wait_connected(SECS(5)).await.unwrap();

    measure_bp(&device, 5);
    device.wait_settled(SECS(5)).await.unwrap();
    let mut originals = Vec::new();
    while let Some(batch) = gateway.try_next_batch(Duration::from_millis(100)).await {
        originals.extend(batch.readings);
    }

    // 99 was never measured; 3 is replayed twice in one call.
    assert_eq!(device.replay(&[2, 4, 99, 3, 3]), 4);
    let mut replayed = Vec::new();
    while replayed.len() < 4 {
        replayed.extend(gateway.next_batch(SECS(5)).await.readings);
    }
    let seqs: Vec<u32> = replayed.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [2, 4, 3, 3]);
    for r in &replayed {
        let original = originals.iter().find(|o| o.seq == r.seq).unwrap();
        assert_eq!(r, original, "a replay is byte-for-byte the settled reading");
    }
    let stats = device.stats();
    assert_eq!((stats.replayed, stats.pending, stats.committed), (4, 0, 5));
    device.stop().await;
}

#[tokio::test]
async fn garbage_acks_are_ignored() {
    let id = unique_id("garbage");
    let mut gateway = FakeGateway::start(std::slice::from_ref(&id), false).await;
    let device = start(DeviceSpec::new(&id, "secret", MOSQUITTO));
    device.wait_connected(SECS(5)).await.unwrap();

    measure_bp(&device, 3);
    gateway.collect_seqs(3, SECS(5)).await;
    for payload in [
        b"not json".to_vec(),
        br#"{"committed":[[1]]}"#.to_vec(),
        br#"{"committed":[[1,3]],"extra":1}"#.to_vec(),
        vec![0xff; 15_000],
        Vec::new(),
    ] {
        gateway.raw_ack(&id, payload).await;
    }
    assert!(
        eventually(SECS(5), || device.stats().bad_messages == 5).await,
        "{:?}",
        device.stats()
    );
    assert_eq!(device.stats().pending, 3, "garbage settles nothing");
    // Inverted and out-of-range ranges settle nothing they should not.
    gateway.ack(&id, &[(3, 1), (100, u32::MAX)], &[]).await;
    gateway.ack(&id, &[(1, 3)], &[]).await;
    device.wait_settled(SECS(5)).await.unwrap();
    assert_eq!(device.committed(), [1, 2, 3]);
    assert!(device.stats().connected, "still connected after garbage");
    device.stop().await;
}

#[tokio::test]
async fn reconnection_resends_what_was_in_flight() {
    let id = unique_id("reconnect");
    let mut gateway = FakeGateway::start(std::slice::from_ref(&id), false).await;
    let mut spec = DeviceSpec::new(&id, "secret", MOSQUITTO);
    // Long enough that only the reconnection can explain a resend.
    spec.resend_after = SECS(60);
    let device = start(spec);
    device.wait_connected(SECS(5)).await.unwrap();
    let online = gateway.next_status(SECS(5)).await.unwrap();
    assert!(online.1.contains("\"online\":true"), "{online:?}");

    measure_bp(&device, 3);
    assert_eq!(gateway.next_batch(SECS(5)).await.seqs(), [1, 2, 3]);

    // Another client with the device's id takes its session over: the device is dropped
    // without a DISCONNECT, so its will fires, and it reconnects after its back-off.
    let mut options = rumqttc::MqttOptions::new(id.clone(), "127.0.0.1", 1883);
    options.set_keep_alive(SECS(30));
    let (intruder, mut intruder_loop) = rumqttc::AsyncClient::new(options, 10);
    loop {
        if let rumqttc::Event::Incoming(rumqttc::Incoming::ConnAck(_)) =
            intruder_loop.poll().await.unwrap()
        {
            break;
        }
    }
    intruder.disconnect().await.unwrap();
    while !matches!(
        intruder_loop.poll().await,
        Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_)
    ) {}
    drop(intruder_loop);

    let will = gateway.next_status(SECS(5)).await.unwrap();
    assert_eq!(will.1, r#"{"online":false}"#);
    let resent = gateway.next_batch(SECS(10)).await;
    assert_eq!(resent.seqs(), [1, 2, 3]);
    let stats = device.stats();
    assert!(stats.connects >= 2, "{stats:?}");
    assert!(stats.resent >= 3, "{stats:?}");

    gateway.ack(&id, &[(1, 3)], &[]).await;
    device.wait_settled(SECS(5)).await.unwrap();
    device.stop().await;
}

#[tokio::test]
async fn push_keeps_odd_readings_as_given() {
    let id = unique_id("push");
    let mut gateway = FakeGateway::start(std::slice::from_ref(&id), true).await;
    let device = start(DeviceSpec::new(&id, "secret", MOSQUITTO));
    device.wait_connected(SECS(5)).await.unwrap();

    let mut patient = Patient::new(1, &[Condition::Copd]);
    let sample = patient.measure(Kind::Spo2, T0, None);
    let odd = Reading {
        seq: 1_000,
        ts_ms: 5,
        clock_unset: true,
        status: MeasurementStatus(MeasurementStatus::QUESTIONABLE),
        sensor: sensor::PLX_SENSOR_DISPLACED,
        measurement: sample.measurement,
    };
    device.push(odd);
    assert_eq!(device.measure(sample.measurement, T0), 1_001);
    device.wait_settled(SECS(5)).await.unwrap();
    let mut seen = Vec::new();
    while let Some(batch) = gateway.try_next_batch(Duration::from_millis(100)).await {
        seen.extend(batch.readings);
    }
    assert_eq!(seen.first(), Some(&odd));
    assert_eq!(device.committed(), [1_000, 1_001]);
    device.stop().await;
}

/// A broker that answers every CONNECT with "CONNACK, not authorized" and closes, like the
/// gateway's edge for a wrong secret.
#[tokio::test]
async fn refused_connections_back_off_instead_of_spinning() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = attempts.clone();
    let server = tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                let _ = socket.read(&mut buf).await;
                // CONNACK, remaining length 2, no session, return code 5 (not authorized).
                let _ = socket.write_all(&[0x20, 0x02, 0x00, 0x05]).await;
            });
        }
    });

    let device = start(DeviceSpec::new(
        unique_id("refused"),
        "wrong",
        addr.to_string(),
    ));
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let n = attempts.load(std::sync::atomic::Ordering::SeqCst);
    // Back-off 200 ms doubling with jitter in [d/2, d]: at most 1 + about 6 attempts in
    // 2.5 s, at least 3; a client without back-off would make hundreds.
    assert!((3..=8).contains(&n), "{n} connection attempts in 2.5 s");
    let stats = device.stats();
    assert_eq!(stats.connects, 0);
    assert!(!stats.connected);
    let error = stats.last_error.unwrap();
    assert!(error.contains("refused"), "{error}");
    let err = device
        .wait_connected(Duration::from_millis(10))
        .await
        .unwrap_err();
    assert!(format!("{err}").contains("refused"), "{err}");
    device.stop().await;
    server.abort();
}

/// The fleet's feeder (what `sentinella-sim run` and the demo use) answers a repeat request:
/// one more reading of that kind, `in_s` simulated seconds later; the same request delivered
/// again (the gateway's retained config, republished on every connection) is not measured
/// twice; a new request is.
#[tokio::test]
async fn a_repeat_request_is_measured_once() {
    let id = unique_id("repeat");
    let mut gateway = FakeGateway::start(std::slice::from_ref(&id), true).await;
    let device = start(DeviceSpec::new(&id, "secret", MOSQUITTO));
    device.wait_connected(SECS(5)).await.unwrap();

    // No daily slots: every reading is an answer to a repeat request. 60× time: 120 simulated
    // seconds pass in 2 real ones.
    let clock = SimClock::starting_now(60.0);
    let cancel = CancellationToken::new();
    let feeder = tokio::spawn(simulators::fleet::feed(
        device.clone(),
        Patient::new(3, &[Condition::Copd]),
        Kind::Spo2,
        Schedule::with_slots(Vec::new(), 1),
        clock,
        tokio::time::Instant::now() + SECS(60),
        cancel.clone(),
    ));
    let config = |id: i64, kind: &str| {
        format!(r#"{{"time_ms":{T0},"repeat":{{"id":{id},"kind":"{kind}","in_s":120}}}}"#)
    };

    let asked_at = clock.now_ms();
    gateway.config(&id, &config(41, "spo2"), true).await;
    let batch = gateway.next_batch(SECS(10)).await;
    assert_eq!(batch.readings.len(), 1);
    let reading = batch.readings[0];
    assert_eq!(reading.measurement.kind(), Kind::Spo2);
    let waited = reading.ts_ms - asked_at;
    assert!(
        (120_000..120_000 + 60_000).contains(&waited),
        "measured {waited} simulated ms after the request"
    );

    // The same retained config again (as the gateway republishes it at every connection):
    // nothing more is measured. A request for a kind this oximeter lacks neither.
    gateway.config(&id, &config(41, "spo2"), true).await;
    gateway.config(&id, &config(42, "bp"), false).await;
    let quiet = gateway.try_next_batch(SECS(4)).await;
    assert!(quiet.is_none(), "measured again: {quiet:?}");
    assert_eq!(device.stats().repeats_requested, 2, "{:?}", device.stats());

    // A new request is a new reading.
    gateway.config(&id, &config(43, "spo2"), true).await;
    let batch = gateway.next_batch(SECS(10)).await;
    assert_eq!(batch.readings.len(), 1);
    assert_eq!(batch.readings[0].measurement.kind(), Kind::Spo2);
    assert!(batch.readings[0].seq > reading.seq);
    device.wait_settled(SECS(5)).await.unwrap();
    assert_eq!(device.stats().generated, 2);

    // Clear the retained config so the broker does not keep it.
    gateway.config(&id, "", true).await;
    cancel.cancel();
    feeder.await.unwrap();
    device.stop().await;
}
