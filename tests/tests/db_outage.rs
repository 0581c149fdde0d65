//! The database goes away under load and comes back: the gateway stops acknowledging, reports
//! not-ready, reconnects by itself, and in the end every reading the devices generated is
//! stored exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use e2e::faults::FaultProxy;
use e2e::harness::{Db, Launch, Stack, now_ms};
use gateway::Metrics;
use protocol::{Measurement, Spo2};
use simulators::device::{DeviceSpec, spawn};
use store::DeviceKind;
use tokio_util::sync::CancellationToken;

const DEVICES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_loses_nothing_and_duplicates_nothing() -> anyhow::Result<()> {
    e2e::harness::init_logging();
    let db = Db::Postgres.create().await;
    let pg: std::net::SocketAddr = "127.0.0.1:5432".parse()?;
    let proxy = FaultProxy::start(pg).await?;
    let via_proxy = store::Store::connect(&proxy.proxied_url(&db.url)?).await?;
    let stack = Stack::start_on(
        db,
        Launch {
            store: Some(via_proxy),
            ..Launch::default()
        },
    )
    .await?;

    let cancel = CancellationToken::new();
    let mut devices = Vec::new();
    for _ in 0..DEVICES / 2 {
        let patient = stack.patient(&["copd"]).await?;
        for kind in [DeviceKind::Spo2, DeviceKind::BloodPressure] {
            let creds = stack.device(patient.id, kind).await?;
            let mut spec = DeviceSpec::new(&creds.id, &creds.secret, stack.edge.to_string());
            spec.resend_after = Duration::from_secs(2);
            let dev = spawn(spec, cancel.clone());
            dev.wait_connected(Duration::from_secs(20)).await?;
            devices.push(dev);
        }
    }

    // Every device measures every 20 ms until told to stop; the feeders remember every seq.
    let generating = Arc::new(AtomicBool::new(true));
    let mut feeders = Vec::new();
    for dev in &devices {
        let dev = dev.clone();
        let generating = generating.clone();
        feeders.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            let mut i = 0u32;
            while generating.load(Ordering::Relaxed) {
                let m = Measurement::Spo2(Spo2 {
                    percent: 90.0 + (i % 8) as f32,
                    pulse: Some(80.0),
                    perfusion_index: None,
                });
                seqs.push(dev.measure(m, now_ms()));
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seqs
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        Metrics::get(&stack.metrics.readings_acked_total) > 0,
        "nothing acked before the outage"
    );
    assert_eq!(stack.get("/readyz").await?.0, 200);

    proxy.cut();
    // Whatever was mid-commit settles; from then on nothing is acknowledged.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked_at_cut = Metrics::get(&stack.metrics.readings_acked_total);
    let committed_at_cut = stack.store().count_readings(None).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, body) = stack.get("/readyz").await?;
    assert_eq!(status, 503, "readyz during the outage: {body}");
    assert_eq!(body["store"], false);
    assert_eq!(
        Metrics::get(&stack.metrics.readings_acked_total),
        acked_at_cut,
        "acked while the store was down"
    );
    assert_eq!(
        stack.store().count_readings(None).await?,
        committed_at_cut,
        "rows appeared while cut off"
    );
    assert!(Metrics::get(&stack.metrics.store_retries_total) > 0);
    let pending: usize = devices.iter().map(|d| d.stats().pending).sum();
    assert!(
        pending > 0,
        "devices hold nothing unacked during the outage"
    );

    proxy.restore();
    tokio::time::sleep(Duration::from_secs(2)).await;
    generating.store(false, Ordering::Relaxed);
    let mut generated = Vec::new();
    for f in feeders {
        generated.push(f.await?);
    }
    for dev in &devices {
        dev.wait_settled(Duration::from_secs(60)).await?;
    }

    // Exactly once: the stored set equals the generated set, device by device.
    let mut total = 0;
    for (dev, seqs) in devices.iter().zip(&generated) {
        let stored: Vec<u32> = stack
            .store()
            .stored_seqs(dev.id())
            .await?
            .into_iter()
            .map(|s| s as u32)
            .collect();
        let mut want = seqs.clone();
        want.sort_unstable();
        assert_eq!(
            stored,
            want,
            "{}: stored set differs from generated set",
            dev.id()
        );
        assert_eq!(dev.stats().pending, 0);
        total += want.len();
    }
    assert_eq!(stack.store().count_readings(None).await?, total as i64);
    let (status, _) = stack.get("/readyz").await?;
    assert_eq!(status, 200, "not ready again after the outage");

    for dev in devices {
        dev.stop().await;
    }
    cancel.cancel();
    stack.stop().await;
    Ok(())
}
