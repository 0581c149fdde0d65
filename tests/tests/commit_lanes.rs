//! Commit lanes: with `gateway.writers = 4`, batches of different patients commit at the
//! same time (each commit made to take 300 ms by a trigger on the test database), every
//! reading is stored once and acked; with one writer, commits run one at a time.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::harness::{Db, RawDevice, Stack, now_ms, topic};
use store::DeviceKind;

/// Patients, one BP cuff each: consecutive ids, so every lane (patient id mod 4) has two.
const PATIENTS: usize = 8;

/// Each statement inserting reading keys (one per batch commit) sleeps 300 ms.
const SLOW_COMMITS: &str = "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS \
     $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$; \
     CREATE TRIGGER slow_commit AFTER INSERT ON reading_keys \
     FOR EACH STATEMENT EXECUTE FUNCTION slow_commit();";

async fn peak_with(writers: usize) -> anyhow::Result<u64> {
    let stack = Stack::start_with(Db::Postgres, |c| {
        c.gateway.writers = writers;
        c.gateway.batch_max_delay = Duration::from_millis(50);
    })
    .await?;
    let out = tokio::process::Command::new("psql")
        .arg(stack.db.url())
        .args(["-v", "ON_ERROR_STOP=1", "-qc", SLOW_COMMITS])
        .output()
        .await
        .context("psql")?;
    if !out.status.success() {
        bail!("trigger: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut devices = Vec::new();
    for _ in 0..PATIENTS {
        let patient = stack.patient(&["hypertension"]).await?;
        let creds = stack.device(patient.id, DeviceKind::BloodPressure).await?;
        let mut dev = RawDevice::connect(stack.edge, &creds.id, &creds.secret);
        dev.connected().await.map_err(anyhow::Error::msg)?;
        dev.subscribe(&topic(&creds.id, "ack")).await?;
        devices.push((creds.id, dev));
    }
    // Everyone publishes at once: one reading each.
    let ts = now_ms();
    for (id, dev) in &devices {
        let payload = format!(
            r#"{{"v":1,"readings":[{{"seq":1,"ts":{ts},"kind":"bp","sys":128,"dia":82,"pulse":70,"unit":"mmHg"}}]}}"#
        );
        dev.publish(&topic(id, "readings"), payload).await?;
    }
    for (id, dev) in &mut devices {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if Instant::now() > deadline {
                bail!("{id}: no commit ack");
            }
            if let Some((t, payload)) = dev.next_message(Duration::from_millis(500)).await
                && t.ends_with("/ack")
                && String::from_utf8_lossy(&payload).contains("[1,1]")
            {
                break;
            }
        }
    }
    for (id, _) in &devices {
        let stored = stack.db.store.count_readings(Some(id)).await?;
        assert_eq!(stored, 1, "{id}: stored once");
    }
    Ok(stack.metrics.commits_in_flight_peak.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_commit_different_patients_at_once() -> anyhow::Result<()> {
    assert_eq!(peak_with(4).await?, 4, "four lanes busy at once");
    assert_eq!(peak_with(1).await?, 1, "one writer: one commit at a time");
    Ok(())
}
