//! Two nodes (two `Node::start`, each with its own store, edge, API and alert engine) on one
//! PostgreSQL database, in one test process: what one node writes reaches the clients and
//! devices of the other.
//!
//! - An alert written by node B's engine reaches an SSE client of node A within a second
//!   (woken by `NOTIFY`, not by the stream's one-second poll), and a client resuming on node B
//!   with `Last-Event-ID` gets the same events after it: no gap, no duplicate.
//! - Failed logins on node A throttle logins on node B.
//! - A repeat request stored through node A reaches the device connected to node B at once,
//!   and the device, connecting later to node A, gets it in the config sent at connect.

use std::time::{Duration, Instant};

use e2e::harness::{Launch, RawDevice, Stack, init_logging, now_ms, topic};
use e2e::kit::{Sse, SseEvent};
use serde_json::{Value, json};
use store::{DeviceKind, PendingRepeat, ReadingKind};
use time::OffsetDateTime;

/// Two nodes on a fresh PostgreSQL database, both listening for the other's wake-ups.
async fn two_nodes() -> anyhow::Result<(Stack, Stack)> {
    init_logging();
    let a = Stack::start_on(e2e::harness::Db::Postgres.create().await, Launch::default()).await?;
    let b = a.start_peer(Launch::default()).await?;
    for (name, node) in [("A", &a), ("B", &b)] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !node.store().listening() {
            anyhow::ensure!(Instant::now() < deadline, "node {name} does not LISTEN");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok((a, b))
}

fn bp_batch(seq: u32, ts: i64, sys: u32, dia: u32) -> String {
    format!(
        r#"{{"v":1,"readings":[{{"seq":{seq},"ts":{ts},"kind":"bp","sys":{sys},"dia":{dia},"pulse":72,"unit":"mmHg"}}]}}"#
    )
}

/// Polls the store until an event after `after` is visible; returns its id and when.
async fn committed_after(stack: &Stack, after: i64) -> anyhow::Result<(i64, Instant)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(e) = stack
            .store()
            .alert_events_after(after, None, 1)
            .await?
            .first()
        {
            return Ok((e.id, Instant::now()));
        }
        anyhow::ensure!(Instant::now() < deadline, "no alert event after {after}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_stream_across_nodes() -> anyhow::Result<()> {
    let (a, b) = two_nodes().await?;
    // A patient of node A's COT (so node A's client sees it) whose device lands on node B.
    let p = a.patient(&["hypertension"]).await?;
    let creds = a.device(p.id, DeviceKind::BloodPressure).await?;
    let start = a.store().last_alert_event_id().await?;
    let mut on_a = Sse::connect(a.api, &a.token, None).await?;

    let mut dev = RawDevice::connect(b.edge, &creds.id, &creds.secret);
    dev.connected().await.map_err(anyhow::Error::msg)?;
    let watch = tokio::spawn({
        let store = a.store().clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Ok(events) = store.alert_events_after(start, None, 1).await
                    && let Some(e) = events.first()
                {
                    return Some((e.id, Instant::now()));
                }
                if Instant::now() > deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    dev.publish(
        &topic(&creds.id, "readings"),
        bp_batch(1, now_ms(), 192, 112),
    )
    .await?;
    // Node B's engine opens the alert; node A's client gets it.
    let opened = on_a.until("opened", Duration::from_secs(15)).await?;
    let first = opened.first().cloned().expect("one event at least");
    let (visible_id, visible_at) = watch.await?.expect("the event is committed");
    assert_eq!(first.id, visible_id, "the first event after connecting");
    let latency = first.received.saturating_duration_since(visible_at);
    println!("alert opened by node B: on node A's stream {latency:?} after its commit was visible");
    assert!(
        latency < Duration::from_secs(1),
        "node B's event reached node A's stream after {latency:?}"
    );
    let opened = opened.last().cloned().expect("the opened event");
    assert_eq!(opened.data["patient_id"], p.id, "{:?}", opened.data);
    let alert_id = opened.data["alert_id"].as_i64().expect("alert id");

    // A nurse acknowledges on node B (the session made on node A is valid there).
    let before = a.store().last_alert_event_id().await?;
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/v1/alerts/{alert_id}/ack", b.api))
        .bearer_auth(&a.token)
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(response.status(), 200, "{}", response.text().await?);
    let (_, acked_visible) = committed_after(&a, before).await?;
    let mut after_opened = on_a.until("acknowledged", Duration::from_secs(5)).await?;
    let acked = after_opened
        .last()
        .cloned()
        .expect("the acknowledged event");
    let latency = acked.received.saturating_duration_since(acked_visible);
    println!("acknowledged on node B: on node A's stream {latency:?} after its commit");
    assert!(latency < Duration::from_secs(1), "{latency:?}");

    // A client resuming on node B after the opened event gets what node A's client got
    // after it: same ids, in order, none missing, none twice.
    let mut on_b = Sse::connect(b.api, &a.token, Some(opened.id)).await?;
    let resumed = on_b.until("acknowledged", Duration::from_secs(5)).await?;
    let ids = |events: &[SseEvent]| events.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(&resumed), ids(&after_opened));
    let stored: Vec<i64> = a
        .store()
        .alert_events_after(opened.id, None, 100)
        .await?
        .iter()
        .map(|e| e.id)
        .take_while(|id| *id <= acked.id)
        .collect();
    assert_eq!(ids(&resumed), stored, "no gap, no duplicate");
    after_opened.clear();
    // Nothing more arrives on either (no duplicate sent later).
    assert!(on_b.next(Duration::from_millis(1500)).await?.is_none());
    assert!(on_a.next(Duration::from_millis(200)).await?.is_none());
    // Closed before the nodes stop: a node's shutdown waits (up to 30 s) for open streams.
    drop((on_a, on_b));
    dev.close();
    b.stop().await;
    a.stop().await;
    Ok(())
}

async fn login(stack: &Stack, username: &str, password: &str) -> anyhow::Result<(u16, Value)> {
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/v1/auth/login", stack.api))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_on_one_node_throttle_the_other() -> anyhow::Result<()> {
    let (a, b) = two_nodes().await?;
    let user = e2e::harness::unique("nurse-");
    // The default limit: 5 failures per (username, address) in 15 minutes.
    for _ in 0..5 {
        let (status, body) = login(&a, &user, "not the password").await?;
        assert_eq!(status, 401, "{body}");
    }
    let (status, body) = login(&b, &user, "not the password").await?;
    assert_eq!(status, 429, "node B counts node A's failures: {body}");
    assert_eq!(body["error"]["code"], "too_many_attempts");
    let (status, _) = login(&a, &user, "not the password").await?;
    assert_eq!(status, 429);
    // One audit row for the refusals of the window, whichever node refused.
    let throttled = a
        .store()
        .query_audit(&store::AuditQuery {
            action: Some("auth.login.throttled".into()),
            limit: 100,
            ..Default::default()
        })
        .await?
        .into_iter()
        .filter(|e| e.actor == format!("user:{user}"))
        .count();
    assert_eq!(throttled, 1);
    b.stop().await;
    a.stop().await;
    Ok(())
}

/// The config messages `dev` receives within `wait`, as JSON.
async fn configs(dev: &mut RawDevice, config_topic: &str, wait: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Some((tp, payload)) = dev
        .next_message(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        if tp == config_topic
            && let Ok(v) = serde_json::from_slice::<Value>(&payload)
        {
            out.push(v);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeat_requests_reach_the_node_holding_the_device() -> anyhow::Result<()> {
    let (a, b) = two_nodes().await?;
    let p = a.patient(&[]).await?;
    let creds = a.device(p.id, DeviceKind::Spo2).await?;
    let config_topic = topic(&creds.id, "config");

    // The device is connected to node B only.
    let mut on_b = RawDevice::connect(b.edge, &creds.id, &creds.secret);
    on_b.connected().await.map_err(anyhow::Error::msg)?;
    on_b.subscribe(&config_topic).await?;
    let hello = configs(&mut on_b, &config_topic, Duration::from_secs(2)).await;
    assert!(
        hello.iter().all(|c| c["repeat"].is_null()),
        "nothing pending yet: {hello:?}"
    );

    // Node A's gateway stores its engine's request (what `Gateway::repeats` does with it).
    let asked_at = OffsetDateTime::now_utc().replace_millisecond(0)?;
    let started = Instant::now();
    a.store()
        .put_repeat_request(&PendingRepeat {
            device_id: creds.id.clone(),
            kind: ReadingKind::Spo2,
            in_minutes: 5,
            asked_at,
            received_at: OffsetDateTime::now_utc(),
        })
        .await?;
    let mut got = None;
    while let Some((tp, payload)) = on_b.next_message(Duration::from_secs(5)).await {
        let v: Value = serde_json::from_slice(&payload)?;
        if tp == config_topic && !v["repeat"].is_null() {
            got = Some(v["repeat"].clone());
            break;
        }
    }
    let repeat = got.expect("node B publishes node A's request to its device");
    println!(
        "repeat request stored on node A: on the device at node B after {:?}",
        started.elapsed()
    );
    let id = i64::try_from(asked_at.unix_timestamp_nanos() / 1_000_000)?;
    assert_eq!(
        (repeat["id"].as_i64(), repeat["kind"].as_str()),
        (Some(id), Some("spo2"))
    );
    assert!(
        repeat["in_s"].as_u64().is_some_and(|s| s <= 300 && s > 270),
        "{repeat}"
    );
    on_b.close();

    // Later the device connects to node A, which never held it: the request is in the
    // config sent at connect.
    let mut on_a = RawDevice::connect(a.edge, &creds.id, &creds.secret);
    on_a.connected().await.map_err(anyhow::Error::msg)?;
    on_a.subscribe(&config_topic).await?;
    let at_connect = configs(&mut on_a, &config_topic, Duration::from_secs(2)).await;
    let first = at_connect.first().expect("the config retained at connect");
    assert_eq!(first["repeat"]["id"].as_i64(), Some(id), "{first}");
    on_a.close();
    b.stop().await;
    a.stop().await;
    Ok(())
}
