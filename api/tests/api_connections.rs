//! The API's connection limits on a real socket (M3 of the pentest: idle HTTP connections
//! exhausted the descriptors the device edge shares): at most `max_connections` are held at
//! once, and a connection that sends no request head within `header_read_timeout` (on
//! connecting, or idle between kept-alive requests) is closed. Alone in its test binary, so
//! the process's descriptor count is this test's.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use api::ConnLimits;
use common::fixture;
use store::testing::TestDb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Reads until the server closes; `None` if it is still open after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut buf)).await {
        Ok(_) => Some(buf),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_capped_and_closed_after_the_header_timeout() {
    let f = fixture(TestDb::sqlite().await).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let limits = ConnLimits {
        max_connections: 4,
        header_read_timeout: Duration::from_millis(500),
    };
    let server = tokio::spawn(api::serve_with(
        listener,
        None,
        f.state(),
        limits,
        cancel.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Twelve clients connect and say nothing: the server holds at most four of them.
    let before = open_descriptors();
    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..12 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let held = open_descriptors() - before - idle.len();
    assert!(held <= 4, "the server holds {held} connections, cap 4");

    // Each is closed by the header timeout in turn (a wave of at most four per timeout).
    let mut closed_at = Vec::new();
    for stream in &mut idle {
        let answer = closed_within(stream, Duration::from_secs(10)).await;
        assert!(answer.is_some(), "an idle connection stayed open");
        closed_at.push(started.elapsed());
    }
    closed_at.sort();
    assert!(
        closed_at[0] >= Duration::from_millis(400),
        "closed before the timeout: {closed_at:?}"
    );
    assert!(
        closed_at
            .iter()
            .filter(|t| **t < Duration::from_millis(900))
            .count()
            <= 4,
        "more than the cap served at once: {closed_at:?}"
    );

    // A kept-alive connection is served, then closed once idle for the timeout.
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = client.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle_since = Instant::now();
    assert!(
        closed_within(&mut client, Duration::from_secs(5))
            .await
            .is_some()
    );
    assert!(idle_since.elapsed() >= Duration::from_millis(400));

    // A client trickling its head never gets past the timeout either.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let trickle_started = Instant::now();
    let trickle = async {
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n" {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), trickle).await;
    assert!(
        closed_within(&mut slow, Duration::from_secs(3))
            .await
            .is_some()
    );
    assert!(trickle_started.elapsed() < Duration::from_secs(5));

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
