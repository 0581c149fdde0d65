//! Fault injection at process edges: a TCP proxy that can cut a real service off.
//!
//! Put between the gateway and PostgreSQL, it turns a database outage into something a test
//! can switch on and off without stopping the shared PostgreSQL server that other tests use:
//! while cut, every open connection is reset and new ones are closed at once, which is what
//! sqlx sees when the server goes down.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A TCP proxy to one target that can be cut and restored.
#[derive(Debug)]
pub struct FaultProxy {
    /// Where clients connect instead of the target.
    pub addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `target` on a free loopback port.
    pub async fn start(target: SocketAddr) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, _) = watch::channel(false);
        let cut = Arc::new(cut);
        let state = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *state.borrow() {
                    drop(client);
                    continue;
                }
                let mut cut = state.subscribe();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Ok(FaultProxy { addr, cut, task })
    }

    /// Resets every open connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// `url` (`scheme://user@host:port/db…`) with its host and port replaced by the proxy's.
    pub fn proxied_url(&self, url: &str) -> anyhow::Result<String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| anyhow::anyhow!("not a URL: {url}"))?;
        let (user, rest) = rest
            .split_once('@')
            .map(|(u, r)| (format!("{u}@"), r))
            .unwrap_or((String::new(), rest));
        let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
        Ok(format!("{scheme}://{user}{}{path}", self.addr))
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
