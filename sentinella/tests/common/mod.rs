//! What the process tests (`cluster.rs`, `crash.rs`) share: a `sentinella run` child process,
//! and the e2e crate's helpers (HAProxy, the SSE reader), included by path because this crate
//! cannot depend on `e2e`, which depends on it.

// Each test binary uses part of these, and none is reachable from outside it.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

#[path = "../../../tests/src/kit.rs"]
pub mod kit;

pub use kit::free_port;

/// One `sentinella run` process on fixed ports and its own data dir, so that it restarts as the
/// same node.
pub struct Node {
    pub name: String,
    url: String,
    pub data_dir: tempfile::TempDir,
    config: Option<PathBuf>,
    /// The plain (password) device listener.
    pub edge: u16,
    /// The mutual-TLS device listener.
    pub tls_edge: u16,
    pub api: u16,
    child: Option<Child>,
}

impl Node {
    /// A node on `url`, not started; `config` is the content of its TOML file, if any.
    pub fn new(url: &str, name: &str, config: Option<&str>) -> anyhow::Result<Node> {
        let data_dir = tempfile::tempdir()?;
        let config = match config {
            Some(text) => {
                let path = data_dir.path().join("sentinella.toml");
                std::fs::write(&path, text)?;
                Some(path)
            }
            None => None,
        };
        Ok(Node {
            name: name.to_owned(),
            url: url.to_owned(),
            data_dir,
            config,
            edge: free_port()?,
            tls_edge: free_port()?,
            api: free_port()?,
            child: None,
        })
    }

    /// Starts the process (log level from `NODE_LOG`, default warn) without waiting.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sentinella"));
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        let child = cmd
            .args([
                "--database-url",
                &self.url,
                "--log",
                &std::env::var("NODE_LOG").unwrap_or("warn".into()),
                "run",
            ])
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .env("SENTINELLA_NODE_ID", &self.name)
            .env("SENTINELLA_EDGE_LISTEN", format!("127.0.0.1:{}", self.edge))
            .env(
                "SENTINELLA_EDGE_TLS_LISTEN",
                format!("127.0.0.1:{}", self.tls_edge),
            )
            .env("SENTINELLA_API_LISTEN", format!("127.0.0.1:{}", self.api))
            .stdout(Stdio::null())
            .spawn()
            .context("spawn sentinella")?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts the process and waits until it is ready.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        self.spawn()?;
        self.ready().await
    }

    /// Waits until `/readyz` answers 200 (20 s at most).
    pub async fn ready(&self) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.api);
        for _ in 0..400 {
            if let Ok(resp) = reqwest::get(&url).await
                && resp.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{} did not become ready", self.name)
    }

    /// The alert partitions this node holds, from its `/metrics`.
    pub async fn partitions(&self) -> Option<u64> {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.api))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("sentinella_alert_partitions_held "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGTERM; its exit status (killed after 10 s).
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("not running")?;
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        for _ in 0..200 {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child.kill()?;
        bail!("{} did not exit within 10 s of SIGTERM", self.name)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
