//! The live alert stream over a real socket: live events, resume with `Last-Event-ID`
//! (missed events in order, no gap, no duplicate), replay from `?after=`, events written by
//! another process, and the audit at connect. On SQLite and PostgreSQL.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Fixture, TOKEN_NAME, fixture, open, trigger};
use serde_json::{Value, json};
use store::Severity;
use store::testing::TestDb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn stream_live_and_resume_sqlite() {
    stream_live_and_resume(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn stream_live_and_resume_postgres() {
    stream_live_and_resume(TestDb::postgres().await).await;
}

/// One parsed Server-Sent Event.
#[derive(Debug, Clone)]
struct SseEvent {
    id: i64,
    kind: String,
    data: Value,
}

/// A minimal SSE reader over a streaming reqwest response.
struct SseClient {
    response: reqwest::Response,
    buffer: String,
    /// Comment-only blocks seen (keep-alives).
    comments: usize,
}

impl SseClient {
    async fn connect(base: &str, token: &str, query: &str, last_id: Option<i64>) -> SseClient {
        let client = reqwest::Client::new();
        let mut req = client
            .get(format!("{base}/api/v1/alerts/stream{query}"))
            .bearer_auth(token)
            .header("accept", "text/event-stream");
        if let Some(id) = last_id {
            req = req.header("last-event-id", id.to_string());
        }
        let response = tokio::time::timeout(Duration::from_secs(10), req.send())
            .await
            .expect("the stream answers within 10 s")
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        SseClient {
            response,
            buffer: String::new(),
            comments: 0,
        }
    }

    /// The next event (skipping comments), or `None` if none arrives within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse(&block) {
                    return Some(event);
                }
                if block.starts_with(':') {
                    self.comments += 1;
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .unwrap()
                .expect("the stream does not end");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Exactly `n` events, each within 5 s.
    async fn take(&mut self, n: usize) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for i in 0..n {
            let event = self
                .next(Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("event {i} of {n} did not arrive; got {events:?}"));
            events.push(event);
        }
        events
    }
}

fn parse(block: &str) -> Option<SseEvent> {
    let (mut id, mut kind, mut data) = (None, None, String::new());
    for line in block.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.parse::<i64>().unwrap()),
            "event" => kind = Some(value.to_owned()),
            "data" => data.push_str(value),
            _ => {}
        }
    }
    let id = id?;
    Some(SseEvent {
        id,
        kind: kind.unwrap(),
        data: serde_json::from_str(&data).unwrap(),
    })
}

async fn serve(f: &Fixture) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cancel = CancellationToken::new();
    tokio::spawn(api::serve(listener, f.state(), cancel.clone()));
    (base, cancel)
}

fn kinds(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

async fn stream_live_and_resume(db: TestDb) {
    let f = fixture(db).await;
    let store = &f.db.store;
    let (base, cancel) = serve(&f).await;
    // History before connecting is not sent to a client that does not ask for it.
    let old = open(&f, &trigger(f.p1, "old", Severity::Low, 1, &[])).await;
    let audit_before = store.list_audit(10_000).await.unwrap().len();

    let mut live = SseClient::connect(&base, &f.token, "", None).await;
    let a = open(&f, &trigger(f.p1, "bp-high", Severity::High, 10, &[1, 2])).await;
    let (status, _) = f.post(&format!("/api/v1/alerts/{a}/ack"), json!({})).await;
    assert_eq!(status, 200);
    let first = live.take(2).await;
    assert_eq!(kinds(&first), vec!["opened", "acknowledged"]);
    assert_eq!(first[0].data["alert_id"], a);
    assert_eq!(first[0].data["severity"], "high");
    assert_eq!(first[0].data["actor"], "engine");
    assert_eq!(first[1].data["actor"], format!("user:{TOKEN_NAME}"));
    assert_eq!(first[0].data["id"], first[0].id);
    assert!(first[0].id < first[1].id);
    let last_seen = first[1].id;
    // The connect was audited once; the live events added no audit entries.
    let audit = f.audit_since(audit_before).await;
    let streams: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "alerts.stream")
        .collect();
    assert_eq!(streams.len(), 1, "{audit:?}");
    assert_eq!(streams[0].actor, format!("user:{TOKEN_NAME}"));
    drop(live);

    // Missed while disconnected: a comment, an assignment, a worse reading, a new alert, a
    // resolution. Then resume from the last id seen.
    f.post(
        &format!("/api/v1/alerts/{a}/comments"),
        json!({"text": "calling"}),
    )
    .await;
    f.post(
        &format!("/api/v1/alerts/{a}/assign"),
        json!({"assignee": "Giulia"}),
    )
    .await;
    store
        .trigger_alert(&trigger(f.p1, "bp-high", Severity::Critical, 20, &[3]))
        .await
        .unwrap();
    let b = open(&f, &trigger(f.p2, "no-reading", Severity::Low, 21, &[])).await;
    f.post(
        &format!("/api/v1/alerts/{b}/resolve"),
        json!({"outcome": "no_action_needed"}),
    )
    .await;

    let mut resumed = SseClient::connect(&base, &f.token, "", Some(last_seen)).await;
    let missed = resumed.take(5).await;
    assert_eq!(
        kinds(&missed),
        vec![
            "commented",
            "assigned",
            "severity_raised",
            "opened",
            "resolved"
        ]
    );
    let ids: Vec<i64> = missed.iter().map(|e| e.id).collect();
    let expected: Vec<i64> = (last_seen + 1..=last_seen + 5).collect();
    assert_eq!(ids, expected, "no gap, no duplicate");
    assert_eq!(missed[2].data["severity"], "critical");
    assert_eq!(missed[4].data["detail"]["outcome"], "no_action_needed");
    // Then live again, after the replay, with nothing repeated.
    let (status, _) = f.post(&format!("/api/v1/alerts/{a}/ack"), json!({})).await;
    assert_eq!(status, 200, "a raised severity needs acknowledging again");
    let next = resumed.take(1).await;
    assert_eq!(kinds(&next), vec!["acknowledged"]);
    assert_eq!(next[0].id, last_seen + 6);
    assert!(
        resumed.next(Duration::from_millis(1500)).await.is_none(),
        "nothing more"
    );

    // Events written by another process (its own Store, so no in-process notification)
    // arrive through the poll.
    let other = store::Store::connect(&f.db.url).await.unwrap();
    other
        .comment_alert(
            b,
            "token:other-process",
            "written elsewhere",
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    let polled = resumed.take(1).await;
    assert_eq!(polled[0].kind, "commented");
    assert_eq!(polled[0].id, last_seen + 7);
    assert_eq!(polled[0].data["actor"], "token:other-process");

    // `?after=0` replays everything from the start, in order; the header wins over `after`.
    let mut replay = SseClient::connect(&base, &f.token, "?after=0", None).await;
    let all = replay.take(usize::try_from(last_seen + 7).unwrap()).await;
    assert_eq!(all[0].data["alert_id"], old);
    let all_ids: Vec<i64> = all.iter().map(|e| e.id).collect();
    assert_eq!(all_ids, (1..=last_seen + 7).collect::<Vec<_>>());
    let mut header_wins =
        SseClient::connect(&base, &f.token, "?after=0", Some(last_seen + 6)).await;
    let only = header_wins.take(1).await;
    assert_eq!(only[0].id, last_seen + 7);

    // A malformed resume point is refused, not ignored.
    let client = reqwest::Client::new();
    for (query, header) in [("", Some("abc")), ("?after=-1", None), ("?after=x", None)] {
        let mut req = client
            .get(format!("{base}/api/v1/alerts/stream{query}"))
            .bearer_auth(&f.token);
        if let Some(h) = header {
            req = req.header("last-event-id", h);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 400, "{query} {header:?}");
    }
    cancel.cancel();
}

/// An idle stream gets keep-alive comments every 15 s and outlives the API's 30 s request
/// timeout (which bounds the time to the response head, not the body).
#[tokio::test]
async fn idle_stream_is_kept_alive_past_the_request_timeout() {
    let f = fixture(TestDb::sqlite().await).await;
    let (base, cancel) = serve(&f).await;
    let connected = tokio::time::Instant::now();
    let mut client = SseClient::connect(&base, &f.token, "", None).await;
    assert!(client.next(Duration::from_secs(31)).await.is_none());
    assert!(
        client.comments >= 2,
        "keep-alives in 31 s: {}",
        client.comments
    );
    assert!(connected.elapsed() > Duration::from_secs(30));
    let a = open(&f, &trigger(f.p1, "late", Severity::Medium, 1, &[])).await;
    let event = client.take(1).await;
    assert_eq!(event[0].data["alert_id"], a);
    cancel.cancel();
}

/// A node's shutdown ends open streams at once (their consoles reconnect to another node with
/// `Last-Event-ID`) instead of holding the shutdown for its 30 s grace.
#[tokio::test]
async fn shutdown_ends_open_streams_at_once() {
    let f = fixture(TestDb::sqlite().await).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cancel = CancellationToken::new();
    let server = tokio::spawn(api::serve(listener, f.state(), cancel.clone()));
    let mut client = SseClient::connect(&base, &f.token, "", None).await;
    let a = open(&f, &trigger(f.p1, "late", Severity::Medium, 1, &[])).await;
    assert_eq!(client.take(1).await[0].data["alert_id"], a);
    let stopping = tokio::time::Instant::now();
    cancel.cancel();
    // The body ends (not an error, not a hang)…
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match client.response.chunk().await {
                Ok(Some(_)) => continue,
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    })
    .await
    .expect("the stream ends within 5 s of the shutdown");
    assert!(end, "the stream ends cleanly");
    // …and the server is done well inside the 10 s a node has to stop.
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops within 5 s with a stream open")
        .unwrap()
        .unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(5));
}
