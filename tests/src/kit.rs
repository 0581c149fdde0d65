//! Test helpers shared by the e2e tests and `sentinella`'s own process tests
//! (`sentinella/tests/common`, which includes this file by path: `sentinella` cannot depend on
//! this crate, which depends on it). Only tokio, reqwest, serde_json and anyhow, which both
//! have.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether the server closed `s` (EOF or reset) within `within`.
pub async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Debian's HAProxy (`/usr/sbin/haproxy`, else `haproxy` on the PATH), run in the foreground
/// with a configuration checked first (`haproxy -c`); killed on drop.
#[derive(Debug)]
pub struct Haproxy {
    child: Child,
    config: PathBuf,
}

impl Haproxy {
    /// Starts HAProxy with `config` and waits until `wait_for` (one of its frontends) accepts.
    pub async fn start(config: &str, wait_for: SocketAddr) -> anyhow::Result<Haproxy> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "sentinella-test-haproxy-{}-{}.cfg",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, config)?;
        let program = if std::path::Path::new("/usr/sbin/haproxy").exists() {
            "/usr/sbin/haproxy"
        } else {
            "haproxy"
        };
        let check = Command::new(program)
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .await?;
        anyhow::ensure!(
            check.status.success(),
            "haproxy -c: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new(program)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let proxy = Haproxy {
            child,
            config: path,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(wait_for).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "haproxy did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(proxy)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// One parsed Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: i64,
    pub kind: String,
    pub data: Value,
    /// When the client read it.
    pub received: Instant,
}

/// A minimal reader of the API's alert stream (`/api/v1/alerts/stream`).
#[derive(Debug)]
pub struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    /// Opens the stream on the API at `api` with `token`, resuming after `last_id` if given.
    pub async fn connect(
        api: SocketAddr,
        token: &str,
        last_id: Option<i64>,
    ) -> anyhow::Result<Sse> {
        let mut req = reqwest::Client::new()
            .get(format!("http://{api}/api/v1/alerts/stream"))
            .bearer_auth(token)
            .header("accept", "text/event-stream");
        if let Some(id) = last_id {
            req = req.header("last-event-id", id.to_string());
        }
        let response = req.send().await?;
        anyhow::ensure!(response.status() == 200, "stream: {}", response.status());
        Ok(Sse {
            response,
            buffer: String::new(),
        })
    }

    /// The next event, or `None` if none arrives within `wait`; an error if the stream ended.
    pub async fn next(&mut self, wait: Duration) -> anyhow::Result<Option<SseEvent>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse_sse(&block)? {
                    return Ok(Some(event));
                }
            }
            let Ok(chunk) = tokio::time::timeout_at(deadline, self.response.chunk()).await else {
                return Ok(None);
            };
            let chunk = chunk?.ok_or_else(|| anyhow::anyhow!("the stream ended"))?;
            self.buffer.push_str(std::str::from_utf8(&chunk)?);
        }
    }

    /// Events up to and including the first of kind `kind` (within `wait` each).
    pub async fn until(&mut self, kind: &str, wait: Duration) -> anyhow::Result<Vec<SseEvent>> {
        let mut events = Vec::new();
        loop {
            let Some(e) = self.next(wait).await? else {
                anyhow::bail!("no {kind:?} event within {wait:?}; got {events:?}");
            };
            let done = e.kind == kind;
            events.push(e);
            if done {
                return Ok(events);
            }
        }
    }
}

/// One event block of the stream (`None` for a comment-only block, e.g. a keep-alive).
fn parse_sse(block: &str) -> anyhow::Result<Option<SseEvent>> {
    let (mut id, mut kind, mut data) = (None, None, String::new());
    for line in block.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.parse::<i64>()?),
            "event" => kind = Some(value.to_owned()),
            "data" => data.push_str(value),
            _ => {}
        }
    }
    let Some(id) = id else {
        return Ok(None);
    };
    Ok(Some(SseEvent {
        id,
        kind: kind.unwrap_or_default(),
        data: serde_json::from_str(&data)?,
        received: Instant::now(),
    }))
}
