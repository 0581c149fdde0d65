//! The edge: where devices connect.
//!
//! Every device connection ends here first, on one of two listeners that share one connection
//! handler ([`connection`], generic over the byte stream):
//! - **TLS** (production): the handshake (with a timeout, inside the connection's task) requires
//!   a client certificate of the device CA; the device id is the certificate's
//!   (`pki::device_id_from_cert`) and the CONNECT's client id must equal it; no password.
//!   Per-source-IP limits (open connections, new connections per second) apply at accept.
//! - **plain TCP** (loopback by default): client id = username = device id, password = device
//!   secret.
//!
//! The edge reads the MQTT CONNECT (with a timeout), checks the device against the registry
//! (unknown, revoked, wrong secret, superseded certificate, keep-alive 0), and only then opens
//! the device's own in-process link to rumqttd's router (`broker::RouterHandle::link`, no
//! socket: the device's is the connection's only descriptor); the router answers the CONNACK,
//! PUBACKs, SUBACKs and PINGRESPs as it would over TCP. From then on the edge hands the router
//! every packet the device sends, decoded once, after checking it: PUBLISH only on the device's
//! own `readings` or `status` topic, SUBSCRIBE only to its own `ack` and `config` topics
//! (exactly those, no wildcards, at most [`MAX_FILTERS`] distinct filters per connection), a
//! will only on its own status topic. A violation is quarantined (so nothing a device sent
//! vanishes unrecorded) and closes the connection: MQTT 3.1.1 has no way to refuse a single
//! publish. What the router sends the device is encoded once and written as it comes. The edge
//! enforces the keep-alive (1.5 × the device's), and publishes a device's will itself when the
//! connection ends without DISCONNECT (except at shutdown).
//!
//! rumqttd never frees the commit log it makes for each distinct filter, and keeps a persistent
//! session's subscriptions after a disconnect, so both are bounded here: the exact-topic rule
//! caps the filters the broker ever sees at two per provisioned device, and the link is opened
//! with `clean_session = true` whatever the device asked, so nothing of a device's
//! session outlives its connection (devices subscribe again after every CONNACK, and the end-to-
//! end acks make a lost broker session harmless).
//!
//! Refused CONNECTs get a CONNACK with a return code (4: bad credentials, 5: not authorized,
//! 3: server unavailable when the registry cannot be read), unlike rumqttd, which closes
//! silently and makes clients retry in a tight loop.
//!
//! Every authorized connection is registered in [`LiveConnections`] with the fingerprint of
//! its client certificate; the gateway's revocation poll closes those of a device revoked in
//! the store, and those whose certificate was superseded by a newer one (`sentinella device
//! cert`). Both listeners share one connection limit (`max_connections`, from the descriptor
//! budget).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::Notification;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, Login, Packet, Protocol, Publish,
};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use protocol::topic::{Channel, DeviceId, Topic, filter_within_device};

use crate::broker::{BrokerHandle, Inbound};
use crate::config::GatewayConfig;
use crate::proxy::ProxyProtocol;
use crate::registry::Registry;
use crate::telemetry::Metrics;
use crate::tls::{IpLimits, IpRefusal, IpSlot};

/// What every connection task needs.
#[derive(Debug)]
pub(crate) struct EdgeContext {
    pub(crate) config: GatewayConfig,
    pub(crate) broker: BrokerHandle,
    pub(crate) registry: Arc<Registry>,
    pub(crate) inbound: mpsc::Sender<Inbound>,
    pub(crate) metrics: Arc<Metrics>,
    /// Fires once the pipeline has committed and acked everything after shutdown began;
    /// connections stay open until then so devices receive their last acks.
    pub(crate) close: CancellationToken,
    /// Authorized connections by device, for closing them on revocation.
    pub(crate) live: Arc<LiveConnections>,
    /// Repeat measurements the alert engine asked for, delivered in the device's config.
    pub(crate) repeats: Arc<crate::repeats::Repeats>,
    /// Device connections both listeners may hold at once (`max_connections`).
    pub(crate) slots: Arc<Semaphore>,
    /// The PROXY protocol on both listeners (`proxy_protocol`): who may send a header.
    pub(crate) proxy: Option<Arc<ProxyProtocol>>,
}

/// Most distinct subscription filters one device connection may hold. A device needs two (its
/// `ack` and `config` topics), which are also the only ones allowed; the cap keeps the bound if
/// that rule ever widens.
pub(crate) const MAX_FILTERS: usize = 8;

/// How a listener's connections are carried and authenticated.
#[derive(Clone)]
pub(crate) enum Transport {
    /// Plain TCP, username/password.
    Plain,
    /// TLS with a required client certificate, per-IP limits at accept.
    Tls {
        acceptor: TlsAcceptor,
        limits: Arc<IpLimits>,
    },
}

/// Who the transport says the peer is, before its CONNECT is read.
#[derive(Debug)]
enum Identity {
    /// Nothing yet: the CONNECT's username/password decide.
    Password,
    /// A verified client certificate naming this device, with its fingerprint.
    Certificate { device_id: String, sha256: String },
}

/// One authorized connection: what closes it, and the certificate it presented.
#[derive(Debug)]
struct LiveEntry {
    token: CancellationToken,
    /// SHA-256 of the client certificate; `None` on the password listener.
    cert_sha256: Option<String>,
}

/// The devices' authorized connections, each with a token that closes it.
#[derive(Debug, Default)]
pub(crate) struct LiveConnections {
    next: AtomicU64,
    map: Mutex<HashMap<String, HashMap<u64, LiveEntry>>>,
}

/// A registered connection; deregisters on drop.
#[derive(Debug)]
struct LiveGuard {
    live: Arc<LiveConnections>,
    device: String,
    id: u64,
    token: CancellationToken,
}

impl LiveConnections {
    fn register(self: &Arc<Self>, device: &str, cert_sha256: Option<&str>) -> LiveGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(device.to_owned()).or_default().insert(
            id,
            LiveEntry {
                token: token.clone(),
                cert_sha256: cert_sha256.map(str::to_owned),
            },
        );
        LiveGuard {
            live: self.clone(),
            device: device.to_owned(),
            id,
            token,
        }
    }

    /// Closes every live connection of `device`; returns how many there were.
    pub(crate) fn close_device(&self, device: &str) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let Some(conns) = map.get(device) else {
            return 0;
        };
        for entry in conns.values() {
            entry.token.cancel();
        }
        conns.len()
    }

    /// Whether `device` has a connection registered after `guard`'s (a device reconnecting
    /// before its first connection is through: rumqttd keeps the newer one).
    fn newer_than(&self, guard: &LiveGuard) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&guard.device)
            .is_some_and(|conns| conns.keys().any(|id| *id > guard.id))
    }

    /// Whether `device` has a live connection.
    pub(crate) fn has(&self, device: &str) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.contains_key(device)
    }

    /// Closes the connections of `device` made with a certificate other than `current` (the
    /// one the store now accepts; `None`: none is recorded, so every certificate connection of
    /// the device is closed). Password connections are left alone. Returns how many it closed.
    pub(crate) fn close_superseded(&self, device: &str, current: Option<&str>) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let Some(conns) = map.get(device) else {
            return 0;
        };
        let mut closed = 0;
        for entry in conns.values() {
            let superseded = entry
                .cert_sha256
                .as_deref()
                .is_some_and(|used| current != Some(used));
            if superseded && !entry.token.is_cancelled() {
                entry.token.cancel();
                closed += 1;
            }
        }
        closed
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut map = self.live.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(conns) = map.get_mut(&self.device) {
            conns.remove(&self.id);
            if conns.is_empty() {
                map.remove(&self.device);
            }
        }
    }
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum EdgeError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("mqtt: {0:?}")]
    Mqtt(rumqttd::protocol::Error),
    #[error("no CONNECT within the timeout")]
    ConnectTimeout,
    #[error("first packet was not CONNECT")]
    NotConnect,
    #[error("refused: {0}")]
    Refused(&'static str),
    #[error("violation: {0}")]
    Violation(&'static str),
    #[error("packet of {0} bytes over the limit")]
    TooLarge(usize),
    #[error("no TLS handshake within the timeout")]
    HandshakeTimeout,
    #[error("TLS handshake: {0}")]
    Handshake(String),
    #[error("device revoked or its certificate superseded while connected")]
    Revoked,
    #[error("gateway shutting down")]
    ShuttingDown,
    #[error("nothing from the device within 1.5 times its keep-alive")]
    KeepAlive,
    #[error("the broker dropped the device's link (a newer connection with its id)")]
    BrokerDropped,
}

/// How a device connection ended without error.
#[derive(Debug)]
enum End {
    /// The device sent DISCONNECT.
    Disconnected,
    /// The device closed its socket without DISCONNECT.
    Closed,
    /// The gateway is shutting down.
    Shutdown,
}

/// Accepts device connections until `cancel`.
pub(crate) async fn serve(
    listener: TcpListener,
    transport: Transport,
    ctx: Arc<EdgeContext>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = ctx.slots.clone();
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: wait instead of spinning.
                    tracing::warn!(error = %e, "edge accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Cheap checks only here: the PROXY header, the TLS handshake and the CONNECT run in
        // the task.
        if let Some(proxy) = &ctx.proxy
            && !proxy.trusts(peer.ip())
        {
            Metrics::add(&ctx.metrics.edge_proxy_untrusted_refused_total, 1);
            tracing::debug!(%peer, "connection from outside proxy_trusted while proxy_protocol is on, closing");
            drop(stream);
            continue;
        }
        // Behind a load balancer the per-IP limits wait for the device's own address (the
        // header); otherwise the socket's peer is the device.
        let ip_slot = if ctx.proxy.is_none() {
            match admit_ip(&transport, peer, &ctx) {
                Ok(slot) => slot,
                Err(()) => {
                    drop(stream);
                    continue;
                }
            }
        } else {
            None
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            Metrics::add(&ctx.metrics.edge_refused_total, 1);
            tracing::warn!(%peer, "edge connection limit reached, closing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let cancel = cancel.clone();
        let transport = transport.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let mut stream = stream;
            let mut peer = peer;
            let mut ip_slot = ip_slot;
            if let Some(proxy) = &ctx.proxy {
                let balancer = peer;
                let header = tokio::select! {
                    _ = cancel.cancelled() => return,
                    header = Box::pin(proxy.read(&mut stream, balancer)) => header,
                };
                match header {
                    Ok(client) => peer = client,
                    Err(e) => {
                        Metrics::add(&ctx.metrics.edge_proxy_header_failures_total, 1);
                        tracing::info!(peer = %balancer, error = %e, "PROXY header refused, closing");
                        return;
                    }
                }
                match admit_ip(&transport, peer, &ctx) {
                    Ok(slot) => ip_slot = slot,
                    Err(()) => return,
                }
            }
            let _ip_slot = ip_slot;
            Metrics::add(&ctx.metrics.edge_connections_open, 1);
            let outcome = match transport {
                Transport::Plain => {
                    connection(stream, peer, Identity::Password, &ctx, &cancel).await
                }
                Transport::Tls { acceptor, .. } => {
                    tls_connection(acceptor, stream, peer, &ctx, &cancel).await
                }
            };
            ctx.metrics
                .edge_connections_open
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            match outcome {
                Ok(()) => {}
                Err(EdgeError::Refused(why)) => {
                    Metrics::add(&ctx.metrics.edge_refused_total, 1);
                    tracing::info!(%peer, why, "device connection refused");
                }
                Err(EdgeError::Violation(why)) => {
                    Metrics::add(&ctx.metrics.edge_violations_total, 1);
                    tracing::warn!(%peer, why, "device connection closed for a violation");
                }
                Err(EdgeError::HandshakeTimeout) => {
                    Metrics::add(&ctx.metrics.edge_tls_handshake_timeouts_total, 1);
                    tracing::debug!(%peer, "TLS handshake timed out, closed");
                }
                Err(EdgeError::Handshake(why)) => {
                    Metrics::add(&ctx.metrics.edge_tls_handshake_failures_total, 1);
                    tracing::debug!(%peer, why, "TLS handshake failed");
                }
                Err(EdgeError::Revoked) => {
                    tracing::info!(%peer, "device connection closed: device revoked or certificate superseded");
                }
                Err(e) => tracing::debug!(%peer, error = %e, "device connection ended"),
            }
        });
    }
}

/// The per-source-IP admission of the TLS listener for the device at `peer` (none on the plain
/// listener); `Err` when refused (counted and logged here).
fn admit_ip(
    transport: &Transport,
    peer: SocketAddr,
    ctx: &EdgeContext,
) -> Result<Option<IpSlot>, ()> {
    let Transport::Tls { limits, .. } = transport else {
        return Ok(None);
    };
    match limits.admit(peer.ip()) {
        Ok(slot) => Ok(Some(slot)),
        Err(why) => {
            let counter = match why {
                IpRefusal::Concurrency => &ctx.metrics.edge_ip_concurrency_refused_total,
                IpRefusal::Rate => &ctx.metrics.edge_ip_rate_refused_total,
            };
            Metrics::add(counter, 1);
            tracing::debug!(%peer, ?why, "edge per-IP limit reached, closing");
            Err(())
        }
    }
}

/// The TLS handshake (bounded by `tls_handshake_timeout`, abandoned at shutdown), then the
/// device identity from the verified client certificate, then the shared handler.
async fn tls_connection(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &EdgeContext,
    cancel: &CancellationToken,
) -> Result<(), EdgeError> {
    let handshake = Box::pin(tokio::time::timeout(
        ctx.config.tls_handshake_timeout,
        acceptor.accept(stream),
    ));
    let tls = tokio::select! {
        _ = cancel.cancelled() => return Err(EdgeError::ShuttingDown),
        done = handshake => done
            .map_err(|_| EdgeError::HandshakeTimeout)?
            .map_err(|e| EdgeError::Handshake(e.to_string()))?,
    };
    let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
        // The verifier requires a certificate; this is defence in depth.
        return Err(EdgeError::Handshake("no client certificate".into()));
    };
    let sha256 = pki::fingerprint(leaf);
    let device_id =
        pki::device_id_from_cert(leaf).map_err(|e| EdgeError::Handshake(e.to_string()))?;
    let identity = Identity::Certificate { device_id, sha256 };
    // Boxed, like everything only the opening of a connection needs: a task's size is fixed
    // at spawn by its largest state, and an idle connection should pay only for its steady
    // state (see `open`).
    connection(Box::new(tls), peer, identity, ctx, cancel).await
}

/// One device connection over any byte stream: CONNECT, authorization, then forwarding.
async fn connection<S>(
    mut client: S,
    peer: SocketAddr,
    identity: Identity,
    ctx: &EdgeContext,
    cancel: &CancellationToken,
) -> Result<(), EdgeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    let max = ctx.config.max_packet_size;
    let Opened {
        device_id,
        keep_alive,
        will,
        live,
        mut link_tx,
        mut link_rx,
    } = Box::pin(open(&mut client, &mut buf, peer, identity, ctx, cancel)).await?;
    let device = DeviceId::parse(&device_id).map_err(|_| EdgeError::Refused("bad device id"))?;

    // The device must send something within 1.5 × its keep-alive (MQTT 3.1.1 §3.1.2.10).
    let idle = Duration::from_millis(u64::from(keep_alive) * 1500);
    let router = &ctx.broker.router;
    let (mut from_client, mut to_client) = tokio::io::split(client);
    // The two directions are pinned in place (moved into `select!` by value they would take
    // their room in the task twice) and dropped with this block, giving their borrows back.
    let result = {
        let downstream = std::pin::pin!(async {
            let mut out = BytesMut::new();
            loop {
                let mut next = link_rx.next().await.map_err(|_| EdgeError::BrokerDropped)?;
                let mut unscheduled = false;
                let mut dropped = false;
                out.clear();
                // Everything the router has already handed over goes out in one write.
                loop {
                    match next {
                        Some(Notification::Unschedule) => unscheduled = true,
                        Some(Notification::Disconnect(..)) => dropped = true,
                        Some(notification) => {
                            if let Some(packet) = Option::<Packet>::from(notification) {
                                V4.write(packet, &mut out).map_err(EdgeError::Mqtt)?;
                            }
                        }
                        None => {}
                    }
                    match now_or_never(link_rx.next()) {
                        Some(Ok(more)) => next = more,
                        Some(Err(_)) => {
                            dropped = true;
                            break;
                        }
                        None => break,
                    }
                }
                if !out.is_empty() {
                    to_client.write_all(&out).await?;
                    to_client.flush().await?;
                }
                if dropped {
                    return Err::<End, EdgeError>(EdgeError::BrokerDropped);
                }
                if unscheduled {
                    link_rx.wake().await.map_err(|_| EdgeError::BrokerDropped)?;
                }
                // An idle connection keeps no write buffer.
                if out.capacity() > 4096 {
                    out = BytesMut::new();
                }
            }
        });
        let upstream = std::pin::pin!(async {
            let mut filters = HashSet::new();
            loop {
                let read = tokio::select! {
                    biased;
                    // Shutdown: take nothing more from the device, but keep the connection open
                    // (downstream) until the pipeline has sent its last acks.
                    _ = cancel.cancelled() => {
                        ctx.close.cancelled().await;
                        return Ok::<End, EdgeError>(End::Shutdown);
                    }
                    read = tokio::time::timeout(idle, read_packet(&mut from_client, &mut buf, max)) => read,
                };
                let Some(packet) = read.map_err(|_| EdgeError::KeepAlive)?? else {
                    return Ok(End::Closed);
                };
                // Whatever else the device has already sent goes to the router in the same event.
                let mut packets = vec![packet];
                let mut failed = None;
                while failed.is_none() && packets.len() < MAX_PACKETS_PER_PUSH {
                    match decode(&mut buf, max) {
                        Ok(Some(packet)) => packets.push(packet),
                        Ok(None) => break,
                        Err(e) => failed = Some(e),
                    }
                }
                // Checked in order: what precedes a violation (or a DISCONNECT) still counts.
                let mut end = None;
                let mut publishes = false;
                for (i, packet) in packets.iter().enumerate() {
                    if let Err(e) = check_packet(packet, device, &mut filters, &ctx.inbound).await {
                        end = Some((i, Err(e)));
                        break;
                    }
                    publishes |= matches!(packet, Packet::Publish(..));
                    if matches!(packet, Packet::Disconnect(..)) {
                        end = Some((i + 1, Ok(End::Disconnected)));
                        break;
                    }
                }
                if let Some((keep, _)) = &end {
                    packets.truncate(*keep);
                }
                if publishes {
                    wait_for_room(ctx).await;
                }
                router
                    .push(&mut link_tx, packets)
                    .await
                    .map_err(|_| EdgeError::BrokerDropped)?;
                if let Some((_, outcome)) = end {
                    return outcome;
                }
                if let Some(e) = failed {
                    return Err(e);
                }
                // An idle connection keeps only a small read buffer.
                if buf.is_empty() && buf.capacity() > READ_BUFFER {
                    buf = BytesMut::new();
                }
            }
        });
        tokio::select! {
            r = upstream => r,
            r = downstream => r,
            _ = ctx.close.cancelled() => Ok(End::Shutdown),
            _ = live.token.cancelled() => Err(EdgeError::Revoked),
        }
    };
    // Leave the router. A DISCONNECT the device sent is already there; a link the router
    // dropped is gone (its id may already belong to another connection). Otherwise the
    // connection ended without DISCONNECT, so the device's will is published first, except
    // at shutdown, when nothing would store it.
    let mut leave = Vec::new();
    match &result {
        Ok(End::Disconnected) | Err(EdgeError::BrokerDropped) => {}
        Ok(End::Shutdown) => leave.push(Packet::Disconnect(normal_disconnect(), None)),
        _ => {
            if let Some(will) = will {
                // At QoS 0: nobody is left to take a PUBACK.
                let publish = Publish::new(will.topic, will.message, will.retain);
                leave.push(Packet::Publish(publish, None));
            }
            leave.push(Packet::Disconnect(normal_disconnect(), None));
        }
    }
    if router.push(&mut link_tx, leave).await.is_err() {
        tracing::debug!(device = %device_id, "the broker link was already gone");
    }
    let result = result.map(|_| ());
    drop(live);
    let _ = ctx.inbound.send(presence(&device_id, false)).await;
    tracing::info!(device = %device_id, %peer, "device disconnected");
    if let Err(EdgeError::TooLarge(size)) = &result {
        let entry = refusal(
            "",
            Some(device_id.as_str()),
            "mqtt.packet_too_large",
            format!("packet of {size} bytes exceeds the {max}-byte limit; connection closed"),
            &[],
        );
        let _ = ctx.inbound.send(Inbound::Refused(entry)).await;
        return Err(EdgeError::Violation("packet too large"));
    }
    result
}

/// What the opening of a connection hands to its steady state.
struct Opened {
    device_id: String,
    keep_alive: u16,
    will: Option<rumqttd::protocol::LastWill>,
    live: LiveGuard,
    link_tx: rumqttd::local::LinkTx,
    link_rx: rumqttd::local::LinkRx,
}

/// The opening of a device connection: CONNECT within `connect_timeout`, authorization, the
/// device's retained config, its router link and the CONNACK. Awaited boxed by `connection`, so
/// its large, short-lived state (packets with their properties, store lookups) is not part of
/// every connection task for the connection's whole life.
async fn open<S>(
    client: &mut S,
    buf: &mut BytesMut,
    peer: SocketAddr,
    identity: Identity,
    ctx: &EdgeContext,
    cancel: &CancellationToken,
) -> Result<Opened, EdgeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let first = tokio::select! {
        _ = cancel.cancelled() => return Err(EdgeError::ShuttingDown),
        first = tokio::time::timeout(
            ctx.config.connect_timeout,
            read_packet(client, buf, ctx.config.max_packet_size),
        ) => first.map_err(|_| EdgeError::ConnectTimeout)??,
    };
    let Some(Packet::Connect(connect, _, will, _, login)) = first else {
        return Err(EdgeError::NotConnect);
    };

    // Without a keep-alive a vanished device would hold its slot for ever (rumqttd refuses
    // these too, silently).
    let authorized = if connect.keep_alive == 0 {
        Err((ConnectReturnCode::NotAuthorized, "keep-alive 0 (disabled)"))
    } else {
        Box::pin(authorize(
            &connect.client_id,
            login.as_ref(),
            will.as_ref(),
            &identity,
            ctx,
        ))
        .await
    };
    let device_id = match authorized {
        Ok(id) => id,
        Err((code, why)) => {
            let mut out = BytesMut::new();
            let connack = ConnAck {
                session_present: false,
                code,
            };
            let _ = V4.write(Packet::ConnAck(connack, None), &mut out);
            let _ = client.write_all(&out).await;
            let _ = client.shutdown().await;
            return Err(EdgeError::Refused(why));
        }
    };
    let device = DeviceId::parse(&device_id).map_err(|_| EdgeError::Refused("bad device id"))?;
    let cert_sha256 = match &identity {
        Identity::Certificate { sha256, .. } => Some(sha256.as_str()),
        Identity::Password => None,
    };
    let live = ctx.live.register(&device_id, cert_sha256);
    Metrics::add(&ctx.metrics.edge_connections_total, 1);
    let tls = matches!(identity, Identity::Certificate { .. });
    tracing::info!(device = %device_id, %peer, tls, "device connected");

    // The device's config is retained before the device can subscribe to it.
    let _ = ctx
        .broker
        .outbound
        .send(Box::pin(ctx.repeats.config_message(device)).await)
        .await;

    // The device's own in-process link to the router, a clean session whatever the device
    // asked: nothing of its session may outlive its connection in the broker.
    let (link_tx, link_rx, connack) = match Box::pin(ctx.broker.router.link(device_id.clone()))
        .await
    {
        Ok(link) => link,
        Err(why) => {
            // rumqttd drops the older link of a client id when a newer one connects: a
            // device that reconnected meanwhile is no fault of the broker's.
            if ctx.live.newer_than(&live) {
                tracing::info!(device = %device_id, %peer, "a newer connection of the device took its session; this one is closed");
            } else {
                tracing::error!(device = %device_id, %why, "the broker refused the device's link");
            }
            let mut out = BytesMut::new();
            let connack = ConnAck {
                session_present: false,
                code: ConnectReturnCode::ServiceUnavailable,
            };
            let _ = V4.write(Packet::ConnAck(connack, None), &mut out);
            let _ = client.write_all(&out).await;
            let _ = client.shutdown().await;
            return Err(EdgeError::Refused("broker unavailable"));
        }
    };
    let mut out = BytesMut::with_capacity(64);
    if let Some(packet) = Option::<Packet>::from(connack) {
        V4.write(packet, &mut out).map_err(EdgeError::Mqtt)?;
    }
    client.write_all(&out).await?;
    client.flush().await?;
    let _ = ctx.inbound.send(presence(&device_id, true)).await;
    Ok(Opened {
        device_id,
        keep_alive: connect.keep_alive,
        will,
        live,
        link_tx,
        link_rx,
    })
}

/// Checks a CONNECT; returns the device id or the CONNACK code to refuse with.
///
/// Over TLS the certificate is the credential: the client id must equal the certificate's
/// device id (else 5), a username/password, if any, is ignored, and when the store recorded the
/// device's certificate only that one is accepted (a re-issued certificate supersedes the old).
async fn authorize(
    client_id: &str,
    login: Option<&Login>,
    will: Option<&rumqttd::protocol::LastWill>,
    identity: &Identity,
    ctx: &EdgeContext,
) -> Result<String, (ConnectReturnCode, &'static str)> {
    let Ok(device) = DeviceId::parse(client_id) else {
        return Err((
            ConnectReturnCode::ClientIdentifierNotValid,
            "client id is not a device id",
        ));
    };
    let password = match identity {
        Identity::Certificate { device_id, .. } => {
            if device_id != client_id {
                return Err((
                    ConnectReturnCode::NotAuthorized,
                    "client id differs from the certificate's device",
                ));
            }
            None
        }
        Identity::Password => {
            let Some(login) = login else {
                return Err((
                    ConnectReturnCode::BadUserNamePassword,
                    "no username/password",
                ));
            };
            if login.username != client_id {
                return Err((
                    ConnectReturnCode::BadUserNamePassword,
                    "username differs from client id",
                ));
            }
            Some(login.password.as_str())
        }
    };
    let entry = match ctx.registry.lookup(client_id).await {
        Ok(entry) => entry,
        Err(e) => {
            tracing::error!(error = %e, "device registry unavailable");
            return Err((
                ConnectReturnCode::ServiceUnavailable,
                "registry unavailable",
            ));
        }
    };
    let Some(entry) = entry else {
        let code = match identity {
            Identity::Password => ConnectReturnCode::BadUserNamePassword,
            Identity::Certificate { .. } => ConnectReturnCode::NotAuthorized,
        };
        return Err((code, "unknown device"));
    };
    match (password, identity) {
        (Some(password), _) => {
            if !store::credentials::verify_secret(password, &entry.secret_hash) {
                return Err((ConnectReturnCode::BadUserNamePassword, "wrong secret"));
            }
        }
        (None, Identity::Certificate { sha256, .. }) => {
            if entry
                .cert_sha256
                .as_ref()
                .is_some_and(|known| known != sha256)
            {
                return Err((
                    ConnectReturnCode::NotAuthorized,
                    "certificate superseded by a newer one",
                ));
            }
        }
        (None, Identity::Password) => {
            return Err((ConnectReturnCode::BadUserNamePassword, "no password"));
        }
    }
    if entry.revoked {
        return Err((ConnectReturnCode::NotAuthorized, "device revoked"));
    }
    if let Some(will) = will {
        let own = std::str::from_utf8(&will.topic)
            .ok()
            .and_then(|t| Topic::parse(t).ok())
            .is_some_and(|t| t.device == device && t.channel == Channel::Status);
        if !own {
            return Err((
                ConnectReturnCode::NotAuthorized,
                "will outside the device's status topic",
            ));
        }
    }
    Ok(client_id.to_owned())
}

/// Enforces the per-device rules on one packet from the device; `filters` are the distinct
/// subscription filters the connection holds so far.
async fn check_packet(
    packet: &Packet,
    device: DeviceId<'_>,
    filters: &mut HashSet<String>,
    inbound: &mpsc::Sender<Inbound>,
) -> Result<(), EdgeError> {
    match packet {
        Packet::Publish(publish, _) => {
            let topic = std::str::from_utf8(&publish.topic).unwrap_or("");
            let allowed = Topic::parse(topic)
                .is_ok_and(|t| t.device == device && t.channel.device_publishes());
            if !allowed {
                let entry = refusal(
                    &String::from_utf8_lossy(&publish.topic),
                    Some(device.as_str()),
                    "edge.publish_outside_own_topics",
                    format!(
                        "device {device} may publish only on its own readings and status topics"
                    ),
                    &publish.payload,
                );
                let _ = Box::pin(inbound.send(Inbound::Refused(entry))).await;
                return Err(EdgeError::Violation("publish outside own topics"));
            }
            Ok(())
        }
        Packet::Subscribe(subscribe, _) => {
            for filter in &subscribe.filters {
                let refused = if !filter_within_device(&filter.path, device) {
                    Some((
                        "edge.subscribe_outside_own_topics",
                        format!("device {device} may subscribe only under its own prefix"),
                        "subscribe outside own topics",
                    ))
                } else if !device_may_subscribe(&filter.path, device) {
                    Some((
                        "edge.subscribe_filter_not_allowed",
                        format!(
                            "device {device} may subscribe only to its own ack and config topics"
                        ),
                        "subscribe to a filter other than the device's ack and config topics",
                    ))
                } else if !filters.contains(&filter.path) && filters.len() >= MAX_FILTERS {
                    Some((
                        "edge.too_many_subscriptions",
                        format!("device {device} may hold at most {MAX_FILTERS} subscriptions"),
                        "too many subscriptions",
                    ))
                } else {
                    None
                };
                if let Some((reason, detail, why)) = refused {
                    let entry = refusal(&filter.path, Some(device.as_str()), reason, detail, &[]);
                    let _ = Box::pin(inbound.send(Inbound::Refused(entry))).await;
                    return Err(EdgeError::Violation(why));
                }
                filters.insert(filter.path.clone());
            }
            Ok(())
        }
        Packet::Unsubscribe(unsubscribe, _) => {
            for filter in &unsubscribe.filters {
                filters.remove(filter);
            }
            Ok(())
        }
        Packet::Connect(..) => Err(EdgeError::Violation("second CONNECT")),
        Packet::ConnAck(..) | Packet::SubAck(..) | Packet::UnsubAck(..) | Packet::PingResp(..) => {
            Err(EdgeError::Violation("server-only packet from a device"))
        }
        _ => Ok(()),
    }
}

/// Whether a device may subscribe to `filter`: exactly its own `ack` or `config` topic.
fn device_may_subscribe(filter: &str, device: DeviceId<'_>) -> bool {
    Topic::parse(filter)
        .is_ok_and(|t| t.device == device && matches!(t.channel, Channel::Ack | Channel::Config))
}

/// Holds a device's publishes back while the ingest queue is nearly full, so memory stays
/// bounded and TCP pushes back on the devices instead.
async fn wait_for_room(ctx: &EdgeContext) {
    let low_water = ctx.config.queue_capacity / 10;
    while ctx.inbound.capacity() < low_water {
        // Boxed: the rare waits below (and the refusals above) would otherwise take their
        // room in every connection's task.
        Box::pin(tokio::time::sleep(Duration::from_millis(5))).await;
    }
}

/// Initial capacity of a connection's read buffer; device packets are small. It grows for a
/// larger packet and is given back once that packet is handled.
const READ_BUFFER: usize = 512;

/// Most packets read ahead and handed to the router in one event.
const MAX_PACKETS_PER_PUSH: usize = 64;

/// Decodes one complete packet from `buf`, `None` if more bytes are needed.
fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Packet>, EdgeError> {
    match V4.read_mut(buf, max) {
        Ok(packet) => Ok(Some(packet)),
        Err(rumqttd::protocol::Error::InsufficientBytes(_)) => Ok(None),
        Err(rumqttd::protocol::Error::PayloadSizeLimitExceeded(size)) => {
            Err(EdgeError::TooLarge(size))
        }
        Err(e) => Err(EdgeError::Mqtt(e)),
    }
}

/// Reads one MQTT packet, `None` at a clean end of stream.
async fn read_packet<R: AsyncReadExt + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Packet>, EdgeError> {
    loop {
        if let Some(packet) = decode(buf, max)? {
            return Ok(Some(packet));
        }
        if buf.capacity() - buf.len() < READ_BUFFER / 2 {
            buf.reserve(buf.capacity().max(READ_BUFFER));
        }
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(EdgeError::Violation("truncated packet"))
            };
        }
    }
}

/// Polls `future` once: its output if it is ready now.
fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

fn normal_disconnect() -> Disconnect {
    Disconnect {
        reason_code: DisconnectReasonCode::NormalDisconnection,
    }
}

fn presence(device_id: &str, online: bool) -> Inbound {
    Inbound::Presence {
        device_id: device_id.to_owned(),
        online,
        at: OffsetDateTime::now_utc(),
    }
}

/// A quarantine record for something the edge refused.
pub(crate) fn refusal(
    topic: &str,
    device_id: Option<&str>,
    reason: &str,
    detail: String,
    payload: &[u8],
) -> store::NewQuarantine {
    let kept = &payload[..payload.len().min(protocol::MAX_PAYLOAD)];
    store::NewQuarantine {
        received_at: OffsetDateTime::now_utc(),
        topic: topic.to_owned(),
        device_id: device_id.map(str::to_owned),
        seq: None,
        reason: reason.to_owned(),
        detail,
        payload: kept.to_vec(),
        payload_size: payload.len() as i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_knows_when_its_device_reconnected_after_it() {
        let live = Arc::new(LiveConnections::default());
        let first = live.register("bp-1", None);
        let other = live.register("bp-2", None);
        assert!(!live.newer_than(&first), "alone, nothing is newer");
        let second = live.register("bp-1", None);
        assert!(
            live.newer_than(&first),
            "the device reconnected after the first"
        );
        assert!(!live.newer_than(&second), "nothing came after the second");
        assert!(
            !live.newer_than(&other),
            "another device's connections do not count"
        );
        drop(second);
        assert!(!live.newer_than(&first), "the newer one is gone again");
    }
}
