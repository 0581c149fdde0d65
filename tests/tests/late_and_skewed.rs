//! Readings arriving days late, twice, out of order, or with a device clock far off are stored
//! once, with both the device time and the receive time, and flagged where the clock cannot be
//! trusted.

use std::time::Duration;

use e2e::harness::{Db, RawDevice, Stack, now_ms, topic};
use gateway::Metrics;
use protocol::Ack;
use store::DeviceKind;

const DAY: i64 = 24 * 60 * 60 * 1000;

fn reading(seq: u32, ts: i64) -> String {
    format!(r#"{{"seq":{seq},"ts":{ts},"kind":"spo2","spo2":94,"pulse":71}}"#)
}

fn batch(readings: &[String]) -> String {
    format!(r#"{{"v":1,"readings":[{}]}}"#, readings.join(","))
}

async fn late_duplicate_out_of_order_skewed(db: Db) -> anyhow::Result<()> {
    let stack = Stack::start(db).await?;
    let patient = stack.patient(&["copd"]).await?;
    let creds = stack.device(patient.id, DeviceKind::Spo2).await?;
    let mut dev = RawDevice::connect(stack.edge, &creds.id, &creds.secret);
    dev.connected().await.map_err(anyhow::Error::msg)?;
    dev.subscribe(&topic(&creds.id, "ack")).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = now_ms();
    let readings = topic(&creds.id, "readings");

    // Three days offline: a backlog, sent out of order, part of it twice.
    let backlog: Vec<String> = (1..=6)
        .map(|s| reading(s, t - 3 * DAY + i64::from(s) * 60_000))
        .collect();
    dev.publish(
        &readings,
        batch(&[backlog[3].clone(), backlog[5].clone(), backlog[0].clone()]),
    )
    .await?;
    dev.publish(
        &readings,
        batch(&[
            backlog[1].clone(),
            backlog[4].clone(),
            backlog[2].clone(),
            backlog[0].clone(),
        ]),
    )
    .await?;
    dev.publish(&readings, batch(&backlog)).await?;
    // A current reading, one from a clock two years ahead, one from a clock stuck in 2001,
    // and one from a device without a clock.
    dev.publish(
        &readings,
        batch(&[
            reading(7, t),
            reading(8, t + 730 * DAY),
            reading(9, 1_000_000_000_000),
            r#"{"seq":10,"ts":42,"clock_unset":true,"kind":"spo2","spo2":95}"#.to_owned(),
        ]),
    )
    .await?;
    stack
        .wait_readings(&creds.id, 10, Duration::from_secs(10))
        .await?;

    // Everything acked as committed, nothing rejected.
    let mut settled = std::collections::BTreeSet::new();
    while let Some((_, payload)) = dev.next_message(Duration::from_millis(700)).await {
        let ack = Ack::decode(&payload).map_err(|e| anyhow::anyhow!("{e}"))?;
        assert!(ack.rejected.is_empty(), "{ack:?}");
        for r in &ack.committed {
            settled.extend(r.0..=r.1);
        }
    }
    assert_eq!(settled, (1..=10).collect());

    // Stored once each, with both times.
    assert_eq!(
        stack.store().stored_seqs(&creds.id).await?,
        (1..=10).collect::<Vec<i64>>()
    );
    assert!(Metrics::get(&stack.metrics.readings_duplicate_total) >= 7);
    let (status, body) = stack
        .get(&format!(
            "/api/v1/patients/{}/readings?limit=100",
            patient.id
        ))
        .await?;
    assert_eq!(status, 200);
    let rows = body["readings"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 10);
    let clock_of = |seq: i64| {
        rows.iter()
            .find(|r| r["seq"] == seq)
            .map(|r| {
                (
                    r["clock"].as_str().unwrap_or("?").to_owned(),
                    r["measured_at"].clone(),
                    r["received_at"].clone(),
                )
            })
            .unwrap_or_else(|| panic!("seq {seq} missing"))
    };
    for seq in 1..=6 {
        let (clock, measured, received) = clock_of(seq);
        assert_eq!(clock, "late", "seq {seq}");
        assert_ne!(measured, received);
    }
    assert_eq!(clock_of(7).0, "ok");
    assert_eq!(clock_of(8).0, "ahead");
    assert_eq!(clock_of(9).0, "behind");
    let (clock, measured, received) = clock_of(10);
    assert_eq!(clock, "unset");
    assert_eq!(
        measured, received,
        "a clockless reading is dated by its arrival"
    );
    // Oldest first, by device time.
    let order: Vec<i64> = rows
        .iter()
        .map(|r| r["seq"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(order, vec![9, 1, 2, 3, 4, 5, 6, 7, 10, 8]);
    assert_eq!(
        Metrics::get(&stack.metrics.readings_clock_implausible_total),
        2
    );
    assert!(Metrics::get(&stack.metrics.readings_late_total) >= 6);

    dev.close();
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_duplicate_out_of_order_skewed_sqlite() -> anyhow::Result<()> {
    late_duplicate_out_of_order_skewed(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_duplicate_out_of_order_skewed_postgres() -> anyhow::Result<()> {
    late_duplicate_out_of_order_skewed(Db::Postgres).await
}
