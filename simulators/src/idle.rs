//! Idle mutual-TLS connections: what one held device connection costs a broker.
//!
//! [`run_idle`] opens `connections` MQTT 3.1.1 connections over mutual TLS, one per fleet
//! device (its own client certificate, client id = device id, clean session, a long
//! keep-alive), waits for every CONNACK, reports, and then holds them, answering nothing and
//! sending only PINGREQs, until it is cancelled. The broker's memory and descriptors are
//! measured from outside (`scripts/idle-rss.sh`) while they are held; the same program and
//! the same certificates are used against Sentinella's edge and against Mosquitto.
//!
//! The client is deliberately thin (a TLS stream and two hand-written packets, no MQTT
//! client library) so that one process holds tens of thousands of connections.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rumqttc::tokio_rustls::TlsConnector;
use rustls_pki_types::ServerName;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::device::client_config;
use crate::fleet::FleetFile;

/// How [`run_idle`] connects.
#[derive(Debug, Clone)]
pub struct IdleOptions {
    /// The broker's TLS listener, `host:port`.
    pub broker: String,
    /// The name the broker's certificate must carry.
    pub server_name: String,
    /// How many connections (the fleet's first devices with certificates).
    pub connections: usize,
    /// Handshakes in progress at once.
    pub concurrency: usize,
    /// The MQTT keep-alive, seconds; a PINGREQ goes out every half of it.
    pub keep_alive: u16,
    /// A connection that fails is tried again this many times.
    pub retries: u32,
}

impl Default for IdleOptions {
    fn default() -> Self {
        IdleOptions {
            broker: "127.0.0.1:8883".into(),
            server_name: "localhost".into(),
            connections: 1_000,
            concurrency: 32,
            keep_alive: 600,
            retries: 5,
        }
    }
}

/// What [`run_idle`] reports once every connection is up (or has failed for good).
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// Connections asked for.
    pub wanted: usize,
    /// Connections that got a CONNACK with return code 0 and are held.
    pub connected: usize,
    /// Connections that failed after every retry.
    pub failed: usize,
    /// Attempts that failed and were retried.
    pub retried: u64,
    /// Seconds from the first connect to the last CONNACK.
    pub connect_secs: f64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

impl fmt::Display for IdleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "idle: {} of {} connections held ({} failed, {} attempts retried) after {:.1} s",
            self.connected, self.wanted, self.failed, self.retried, self.connect_secs
        )?;
        if let Some(e) = &self.first_error {
            writeln!(f, "first error: {e}")?;
        }
        Ok(())
    }
}

/// Opens the connections, calls `ready` with the report once all are up, then holds them
/// until `cancel`. Returns the report.
pub async fn run_idle(
    fleet: &FleetFile,
    opts: &IdleOptions,
    cancel: CancellationToken,
    ready: impl FnOnce(&IdleReport),
) -> anyhow::Result<IdleReport> {
    let devices: Vec<_> = fleet
        .devices
        .iter()
        .filter(|d| d.tls.is_some())
        .take(opts.connections)
        .collect();
    if devices.len() < opts.connections {
        bail!(
            "the fleet has {} devices with certificates, {} connections asked for",
            devices.len(),
            opts.connections
        );
    }
    let server_name = ServerName::try_from(opts.server_name.clone())
        .map_err(|e| anyhow!("server name {:?}: {e}", opts.server_name))?;
    let gate = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let retried = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut connecting = JoinSet::new();
    for d in devices {
        let tls = d.tls.as_ref().context("device without certificate")?;
        let connector = TlsConnector::from(client_config(tls)?);
        let id = d.id.clone();
        let (gate, retried, broker, name) = (
            gate.clone(),
            retried.clone(),
            opts.broker.clone(),
            server_name.clone(),
        );
        let (keep_alive, retries) = (opts.keep_alive, opts.retries);
        connecting.spawn(async move {
            let mut last = None;
            for attempt in 0..=retries {
                if attempt > 0 {
                    retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                let Ok(_permit) = gate.acquire().await else {
                    break;
                };
                match connect(&connector, &broker, name.clone(), &id, keep_alive).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = Some(format!("{id}: {e:#}")),
                }
            }
            Err(last.unwrap_or_else(|| format!("{id}: not tried")))
        });
    }
    let mut held = Vec::with_capacity(opts.connections);
    let mut failed = 0;
    let mut first_error = None;
    while let Some(done) = tokio::select! {
        _ = cancel.cancelled() => None,
        done = connecting.join_next() => done,
    } {
        match done {
            Ok(Ok(stream)) => held.push(stream),
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let report = IdleReport {
        wanted: opts.connections,
        connected: held.len(),
        failed,
        retried: retried.load(Ordering::Relaxed),
        connect_secs: started.elapsed().as_secs_f64(),
        first_error,
    };
    info!(connected = report.connected, failed, "idle connections up");
    ready(&report);

    // Hold: a PINGREQ every half keep-alive, its PINGRESP read back.
    let closed = Arc::new(AtomicU64::new(0));
    let mut holding = JoinSet::new();
    let period = Duration::from_secs(u64::from(opts.keep_alive.max(2)) / 2);
    for mut stream in held {
        let (cancel, closed) = (cancel.clone(), closed.clone());
        holding.spawn(async move {
            let mut byte = [0u8; 2];
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(period) => {}
                }
                let ping = async {
                    stream.write_all(&[0xC0, 0x00]).await?;
                    stream.flush().await?;
                    stream.read_exact(&mut byte).await?;
                    std::io::Result::Ok(())
                };
                if ping.await.is_err() {
                    closed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            let _ = stream.write_all(&[0xE0, 0x00]).await;
            let _ = stream.shutdown().await;
        });
    }
    while holding.join_next().await.is_some() {}
    let lost = closed.load(Ordering::Relaxed);
    if lost > 0 {
        warn!(lost, "connections closed by the broker while held");
    }
    Ok(report)
}

/// TCP, the TLS handshake with the device's certificate, CONNECT, CONNACK.
async fn connect(
    connector: &TlsConnector,
    broker: &str,
    name: ServerName<'static>,
    client_id: &str,
    keep_alive: u16,
) -> anyhow::Result<rumqttc::tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(Duration::from_secs(30), TcpStream::connect(broker))
        .await
        .context("TCP connect timed out")?
        .context("TCP connect")?;
    let _ = tcp.set_nodelay(true);
    let mut tls = tokio::time::timeout(Duration::from_secs(30), connector.connect(name, tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake")?;
    tls.write_all(&connect_packet(client_id, keep_alive)?)
        .await?;
    tls.flush().await?;
    let mut connack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(30), tls.read_exact(&mut connack))
        .await
        .context("CONNACK timed out")?
        .context("CONNACK")?;
    if connack[0] != 0x20 || connack[1] != 0x02 {
        bail!("expected CONNACK, got {connack:02x?}");
    }
    if connack[3] != 0 {
        bail!("CONNACK return code {}", connack[3]);
    }
    Ok(tls)
}

/// An MQTT 3.1.1 CONNECT: clean session, no will, no username or password (the certificate
/// is the credential).
fn connect_packet(client_id: &str, keep_alive: u16) -> anyhow::Result<Vec<u8>> {
    let id = client_id.as_bytes();
    let id_len = u16::try_from(id.len()).context("client id too long")?;
    // Variable header: protocol name, level 4, flags (clean session), keep-alive.
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02];
    body.extend_from_slice(&keep_alive.to_be_bytes());
    body.extend_from_slice(&id_len.to_be_bytes());
    body.extend_from_slice(id);
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    Ok(packet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_packet_is_mqtt_311() {
        let p = connect_packet("sim-bp-00001", 600).unwrap();
        // Fixed header, remaining length 10 + 2 + 12.
        assert_eq!(&p[..2], &[0x10, 24]);
        assert_eq!(&p[2..10], &[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02]);
        assert_eq!(&p[10..12], &600u16.to_be_bytes());
        assert_eq!(&p[12..14], &[0, 12]);
        assert_eq!(&p[14..], b"sim-bp-00001");
    }
}
