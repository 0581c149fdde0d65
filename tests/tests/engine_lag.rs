//! The alert engine never holds ingest back: with the engine made slow (a pause before every
//! reading it evaluates), a device's readings are committed and acked one after another while
//! the engine is far behind; the engine then catches up from the store's outbox, in order,
//! and opens the alert a crisis reading in the lagging stretch calls for.

use std::time::{Duration, Instant};

use anyhow::bail;
use e2e::harness::{Db, DeviceCreds, RawDevice, Stack, now_ms, topic};
use gateway::Metrics;
use store::DeviceKind;

/// Readings the device sends, each after the previous one's ack.
const READINGS: u32 = 100;
/// The engine's pause per reading: it evaluates at most 4 readings a second.
const SLOW: Duration = Duration::from_millis(250);
/// The one crisis reading (BP 200/120), deep in the stretch the engine lags on.
const CRISIS: u32 = 90;

async fn publish_acked(dev: &mut RawDevice, id: &str, seq: u32) -> anyhow::Result<()> {
    let (sys, dia) = if seq == CRISIS { (200, 120) } else { (128, 82) };
    let ts = now_ms() - i64::from(READINGS - seq) * 1000;
    let payload = format!(
        r#"{{"v":1,"readings":[{{"seq":{seq},"ts":{ts},"kind":"bp","sys":{sys},"dia":{dia},"pulse":70,"unit":"mmHg"}}]}}"#
    );
    dev.publish(&topic(id, "readings"), payload).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
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

/// A node on PostgreSQL whose engine pauses `delay` before every reading and holds `queue`
/// batches in memory, with a hypertensive patient's cuff connected and listening for acks.
async fn lagging_stack(
    delay: Duration,
    queue: usize,
) -> anyhow::Result<(Stack, store::Patient, DeviceCreds, RawDevice)> {
    let stack = Stack::start_with(Db::Postgres, |c| {
        c.alerts.evaluation_delay = delay;
        c.alerts.queue_batches = queue;
        c.gateway.batch_max_delay = Duration::from_millis(5);
    })
    .await?;
    let patient = stack.patient(&["hypertension"]).await?;
    let device = stack.device(patient.id, DeviceKind::BloodPressure).await?;
    let mut dev = RawDevice::connect(stack.edge, &device.id, &device.secret);
    dev.connected().await.map_err(anyhow::Error::msg)?;
    dev.subscribe(&topic(&device.id, "ack")).await?;
    Ok((stack, patient, device, dev))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_alert_engine_does_not_slow_commit_acks() -> anyhow::Result<()> {
    let (stack, patient, device, mut dev) = lagging_stack(SLOW, 8).await?;

    // One reading per batch: each is committed and acked before the next is sent.
    for seq in 1..=READINGS {
        publish_acked(&mut dev, &device.id, seq).await?;
    }
    let evaluated = stack
        .alert_metrics
        .readings_evaluated
        .load(std::sync::atomic::Ordering::Relaxed);
    let lagging = Metrics::get(&stack.metrics.engine_lagging_batches_total);
    eprintln!(
        "all {READINGS} readings acked; the engine had evaluated {evaluated}; {lagging} batches \
         left to the outbox"
    );
    // Had the writer waited for the engine (a queue of 8), at most 8 + 1 batches could be
    // ahead of the engine when the last ack left: it would have evaluated at least 91.
    assert!(
        evaluated < u64::from(READINGS) / 2,
        "the engine evaluated {evaluated} of {READINGS} before the last ack: acks waited for it"
    );
    assert!(lagging > 0, "the queue never overflowed");

    // The engine catches up from the outbox: everything evaluated once, the outbox empty, the
    // crisis alert raised.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let evaluated = stack
            .alert_metrics
            .readings_evaluated
            .load(std::sync::atomic::Ordering::Relaxed);
        let pending = stack.store().pending_outbox().await?.len();
        if evaluated >= u64::from(READINGS) && pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("engine behind: {evaluated} evaluated, {pending} outbox entries pending");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        stack
            .alert_metrics
            .catch_ups
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // The crisis opened a BP alert (a single cuff reading: unconfirmed, then settled by the
    // normal readings after it, evaluated in order).
    let open = stack.store().open_alerts(patient.id).await?;
    assert!(
        open.iter().any(|a| a.rule_id.starts_with("bp-")),
        "no alert for the crisis reading: {open:#?}"
    );
    dev.close();
    stack.stop().await;
    Ok(())
}

/// Shutdown does not wait for a lagging engine: stopped while it catches up on a backlog it
/// needs half a minute for (one step, read back from the outbox), the node is down within
/// the engine's 2 s grace plus the rest of the shutdown, and what the engine had not evaluated
/// is still in the outbox for the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_a_long_catch_up_short() -> anyhow::Result<()> {
    let (stack, _patient, device, mut dev) = lagging_stack(2 * SLOW, 1).await?;
    let catch_ups = || {
        stack
            .alert_metrics
            .catch_ups
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    for seq in 1..=READINGS {
        publish_acked(&mut dev, &device.id, seq).await?;
    }
    // The engine, far behind, starts a catch-up after the last reading: one step for all it
    // has not evaluated yet, most of the 100 readings at 2 a second.
    let before = catch_ups();
    let deadline = Instant::now() + Duration::from_secs(30);
    while catch_ups() == before {
        if Instant::now() > deadline {
            bail!("the engine never started catching up");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dev.close();
    let started = Instant::now();
    let db = stack.stop().await;
    let took = started.elapsed();
    eprintln!("stopped in {took:?} while the engine was catching up");
    assert!(
        took < Duration::from_secs(10),
        "shutdown waited {took:?} for the engine's catch-up"
    );
    let pending = db.store.pending_outbox().await?;
    assert!(
        !pending.is_empty(),
        "the catch-up was not cut short: nothing left in the outbox"
    );
    Ok(())
}
