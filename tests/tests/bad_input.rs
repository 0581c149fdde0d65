//! Bad input from devices is quarantined with a reason, never acked as committed, and never
//! stops the gateway.

use std::time::Duration;

use e2e::harness::{Db, RawDevice, Stack, now_ms, topic};
use protocol::Ack;
use store::DeviceKind;

const WAIT: Duration = Duration::from_secs(10);

/// Collects the acks arriving within `window`.
async fn acks(dev: &mut RawDevice, window: Duration) -> Vec<Ack> {
    let mut out = Vec::new();
    while let Some((_, payload)) = dev.next_message(window).await {
        if let Ok(ack) = Ack::decode(&payload) {
            out.push(ack);
        }
    }
    out
}

async fn bad_input_is_quarantined(db: Db) -> anyhow::Result<()> {
    let stack = Stack::start(db).await?;
    let patient = stack.patient(&["diabetes"]).await?;
    let creds = stack.device(patient.id, DeviceKind::Glucose).await?;
    let mut dev = RawDevice::connect(stack.edge, &creds.id, &creds.secret);
    dev.connected().await.map_err(anyhow::Error::msg)?;
    dev.subscribe(&topic(&creds.id, "ack")).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let readings = topic(&creds.id, "readings");
    let t = now_ms();

    // Whole messages that cannot be trusted: quarantined, no ack at all.
    let whole: Vec<(&str, Vec<u8>)> = vec![
        ("payload.malformed", b"{\"v\":1,\"readings\":[{\"seq\":1".to_vec()),
        ("payload.malformed", b"\xff\xfe garbage".to_vec()),
        ("payload.malformed", format!(r#"{{"v":1,"readings":[{{"seq":1,"ts":{t},"kind":"glucose","value":5,"unit":"mmol/L","color":"red"}}]}}"#).into_bytes()),
        ("payload.unsupported_version", format!(r#"{{"v":7,"readings":[{{"seq":1,"ts":{t},"kind":"glucose","value":5,"unit":"mmol/L"}}]}}"#).into_bytes()),
        ("payload.too_large", {
            let mut big = format!(r#"{{"v":1,"readings":[{{"seq":1,"ts":{t},"kind":"glucose","value":5,"unit":"mmol/L"}}]}}"#).into_bytes();
            big.resize(protocol::MAX_PAYLOAD + 100, b' ');
            big
        }),
    ];
    for (_, payload) in &whole {
        dev.publish(&readings, payload.clone()).await?;
    }
    let entries = stack.wait_quarantine(whole.len() as i64, WAIT).await?;
    for (reason, _) in &whole {
        assert!(
            entries.iter().any(|e| &e.reason == reason),
            "no quarantine entry with reason {reason}: {entries:#?}"
        );
    }
    assert!(
        entries
            .iter()
            .all(|e| e.device_id.as_deref() == Some(creds.id.as_str()))
    );
    let big = entries
        .iter()
        .find(|e| e.reason == "payload.too_large")
        .expect("too large entry");
    assert_eq!(big.payload_size, (protocol::MAX_PAYLOAD + 100) as i64);
    assert!(
        acks(&mut dev, Duration::from_millis(500)).await.is_empty(),
        "a broken message was acked"
    );

    // Well-formed readings with bad content: quarantined per reading and reported as rejected,
    // never as committed; the good reading in the same batch is stored.
    let batch = format!(
        r#"{{"v":1,"readings":[
        {{"seq":10,"ts":{t},"kind":"weight","value":80,"unit":"kg"}},
        {{"seq":11,"ts":{t},"kind":"glucose","value":5,"unit":"mg"}},
        {{"seq":12,"ts":{t},"kind":"glucose","value":1200,"unit":"mg/dL"}},
        {{"seq":13,"ts":{t},"kind":"glucose","value":95,"unit":"mmol/L"}},
        {{"seq":14,"ts":{t},"kind":"glucose","value":5.4,"unit":"mmol/L","meal":"fasting"}}]}}"#
    );
    dev.publish(&readings, batch).await?;
    stack.wait_readings(&creds.id, 1, WAIT).await?;
    let entries = stack.wait_quarantine(whole.len() as i64 + 4, WAIT).await?;
    for (seq, reason) in [
        (10, "reading.unknown_kind"),
        (11, "reading.unknown_unit"),
        (12, "reading.implausible"),
        (13, "reading.implausible"),
    ] {
        assert!(
            entries
                .iter()
                .any(|e| e.seq == Some(seq) && e.reason == reason),
            "seq {seq} not quarantined as {reason}: {entries:#?}"
        );
    }
    let got = acks(&mut dev, Duration::from_secs(2)).await;
    assert!(!got.is_empty(), "no ack for the mixed batch");
    for ack in &got {
        for seq in 10..=13 {
            assert!(
                !ack.committed.iter().any(|r| r.contains(seq)),
                "seq {seq} acked as committed: {ack:?}"
            );
        }
    }
    assert!(
        got.iter()
            .any(|a| a.committed.iter().any(|r| r.contains(14))),
        "good seq 14 not acked: {got:?}"
    );
    assert!(
        got.iter()
            .any(|a| (10..=13).all(|s| a.rejected.iter().any(|r| r.contains(s)))),
        "rejections not reported: {got:?}"
    );
    assert_eq!(stack.store().stored_seqs(&creds.id).await?, vec![14]);

    // The gateway still works after all that.
    dev.publish(&readings, format!(r#"{{"v":1,"readings":[{{"seq":15,"ts":{t},"kind":"glucose","value":101,"unit":"mg/dL"}}]}}"#))
        .await?;
    stack.wait_readings(&creds.id, 2, WAIT).await?;
    dev.close();

    // A packet over the edge's limit closes the connection and leaves a record.
    let mut dev = RawDevice::connect(stack.edge, &creds.id, &creds.secret);
    dev.connected().await.map_err(anyhow::Error::msg)?;
    let before = stack.store().count_quarantine().await?;
    dev.publish(&readings, vec![b' '; 300 * 1024]).await?;
    let entries = stack.wait_quarantine(before + 1, WAIT).await?;
    assert!(
        entries.iter().any(|e| e.reason == "mqtt.packet_too_large"),
        "{entries:#?}"
    );
    dev.close();

    assert_eq!(stack.store().stored_seqs(&creds.id).await?, vec![14, 15]);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_quarantined_sqlite() -> anyhow::Result<()> {
    bad_input_is_quarantined(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_quarantined_postgres() -> anyhow::Result<()> {
    bad_input_is_quarantined(Db::Postgres).await
}
