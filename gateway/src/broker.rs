//! rumqttd embedded in-process, reachable only on loopback and only by the edge.
//!
//! The broker routes; it is not the durability point (its PUBACK means "in my memory") and it
//! cannot authorize per device, so devices never reach it directly (see ARCHITECTURE.md). Three
//! things are set up here, in this order:
//! 1. the router, with bounded commit-log segments for the ingest filters;
//! 2. the ingest link, subscribed to every device's readings and status topics *before* any
//!    listener accepts a connection (rumqttd acks and drops publishes nobody subscribed to);
//! 3. a v4 listener on `127.0.0.1:<free port>` that accepts only the edge's internal login, a
//!    random secret made at start-up, so no other local process can publish as a device.
//!
//! Two OS threads bridge rumqttd's blocking link API to tokio: the inbound thread moves
//! publishes from the link into the bounded ingest queue (blocking when it is full, which is the
//! backpressure), the outbound thread publishes acks and device configs.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Packet, Publish};
use rumqttd::{
    ConnectionSettings, Notification, Router, RouterConfig, SegmentConfig, Server, ServerSettings,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::GatewayError;
use crate::config::GatewayConfig;
use crate::telemetry::Metrics;

/// A publish taken off the broker, waiting for the batcher.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A device published on one of its topics.
    Publish {
        topic: Bytes,
        payload: Bytes,
        received_at: OffsetDateTime,
    },
    /// The edge refused something a device sent; it is quarantined, never acked.
    Refused(store::NewQuarantine),
    /// The edge saw a device connect or disconnect.
    Presence {
        device_id: String,
        online: bool,
        at: OffsetDateTime,
    },
}

/// Something for the broker to deliver to a device.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) retain: bool,
}

/// The running broker, as the rest of the gateway needs it.
#[derive(Debug, Clone)]
pub(crate) struct BrokerHandle {
    /// Loopback address of the internal listener.
    pub(crate) addr: SocketAddr,
    /// Login the edge presents on behalf of devices.
    pub(crate) username: String,
    pub(crate) password: String,
    /// Queue to the outbound thread.
    pub(crate) outbound: mpsc::Sender<Outbound>,
}

const INTERNAL_USER: &str = "sentinella-edge";

pub(crate) fn start(
    config: &GatewayConfig,
    inbound: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<BrokerHandle, GatewayError> {
    let segment = SegmentConfig {
        max_segment_size: config.broker_segment_size,
        max_segment_count: config.broker_segment_count,
    };
    let mut custom = HashMap::new();
    custom.insert(protocol::topic::READINGS_FILTER.to_owned(), segment.clone());
    custom.insert(protocol::topic::STATUS_FILTER.to_owned(), segment);
    let router_config = RouterConfig {
        max_connections: config.max_connections + 16,
        max_outgoing_packet_count: 200,
        // Topics nobody reads in bulk (acks, configs) keep little.
        max_segment_size: 1024 * 1024,
        max_segment_count: 2,
        custom_segment: Some(custom),
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let router_tx = Router::new(0, router_config).spawn();

    let (mut link_tx, link_rx, _) = LinkBuilder::new("sentinella-ingest", router_tx.clone())
        .clean_session(true)
        .build()
        .map_err(|e| GatewayError::Broker(format!("ingest link: {e}")))?;
    for filter in [
        protocol::topic::READINGS_FILTER,
        protocol::topic::STATUS_FILTER,
    ] {
        link_tx
            .subscribe(filter)
            .map_err(|e| GatewayError::Broker(format!("subscribe {filter}: {e}")))?;
    }

    let password = hex::encode(rand::random::<[u8; 32]>());
    let mut auth = HashMap::new();
    auth.insert(INTERNAL_USER.to_owned(), password.clone());
    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: config.max_packet_size + 1024,
        max_inflight_count: 100,
        auth: Some(auth),
        external_auth: None,
        dynamic_filters: true,
    };
    let make_server = move |settings| Server::new(settings, router_tx.clone(), V4);
    let addr = spawn_listener(make_server, connections)?;

    let (outbound_tx, outbound_rx) = mpsc::channel(4096);
    thread::Builder::new()
        .name("broker-inbound".into())
        .spawn({
            let cancel = cancel.clone();
            move || inbound_loop(link_rx, inbound, metrics, cancel)
        })
        .map_err(|e| GatewayError::Broker(format!("inbound thread: {e}")))?;
    let runtime = tokio::runtime::Handle::current();
    thread::Builder::new()
        .name("broker-outbound".into())
        .spawn(move || outbound_loop(link_tx, outbound_rx, runtime))
        .map_err(|e| GatewayError::Broker(format!("outbound thread: {e}")))?;

    Ok(BrokerHandle {
        addr,
        username: INTERNAL_USER.to_owned(),
        password,
        outbound: outbound_tx,
    })
}

/// Runs rumqttd's v4 listener on a free loopback port on its own thread and waits until it
/// listens. rumqttd binds the address itself, so a port is picked, released and handed over;
/// if another process takes it in between, rumqttd's bind fails and another port is tried.
fn spawn_listener<F>(
    make_server: F,
    connections: ConnectionSettings,
) -> Result<SocketAddr, GatewayError>
where
    F: Fn(ServerSettings) -> Server<V4> + Clone + Send + 'static,
{
    for _attempt in 0..5 {
        let port = StdListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| GatewayError::Broker(format!("pick a loopback port: {e}")))?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let settings = ServerSettings {
            name: "sentinella-internal".into(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 0,
            connections: connections.clone(),
        };
        let (failed_tx, failed_rx) = std::sync::mpsc::channel();
        let make_server = make_server.clone();
        thread::Builder::new()
            .name("broker-listener".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = failed_tx.send(e.to_string());
                        return;
                    }
                };
                let mut server = make_server(settings);
                let result = runtime.block_on(server.start(rumqttd::LinkType::Remote));
                let _ = failed_tx.send(format!("{result:?}"));
            })
            .map_err(|e| GatewayError::Broker(format!("listener thread: {e}")))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(why) = failed_rx.try_recv() {
                tracing::warn!(%addr, %why, "broker listener failed to start, trying another port");
                break;
            }
            // Once the port is taken and rumqttd has not reported a failed bind, it is
            // rumqttd's. (Probing with a connection would make rumqttd log errors.)
            if StdListener::bind(addr).is_err() {
                thread::sleep(Duration::from_millis(50));
                if failed_rx.try_recv().is_err() {
                    return Ok(addr);
                }
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
    Err(GatewayError::Broker(
        "could not start the internal broker listener".into(),
    ))
}

fn inbound_loop(
    mut link_rx: LinkRx,
    inbound: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let notification = match link_rx.recv_deadline(Instant::now() + Duration::from_millis(200))
        {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(rumqttd::local::LinkError::RecvTimeout(_)) => continue,
            Err(e) => {
                tracing::error!(error = %e, "broker ingest link failed");
                break;
            }
        };
        match notification {
            Notification::Forward(forward) => {
                let msg = Inbound::Publish {
                    topic: forward.publish.topic,
                    payload: forward.publish.payload,
                    received_at: OffsetDateTime::now_utc(),
                };
                Metrics::add(&metrics.queue_depth, 1);
                // Blocks while the queue is full: the broker keeps the data (bounded by its
                // segments) and the devices keep theirs until acked.
                if inbound.blocking_send(msg).is_err() {
                    break;
                }
            }
            Notification::Unschedule => {
                if let Err(e) = link_rx.ready() {
                    tracing::error!(error = %e, "broker ingest link failed");
                    break;
                }
            }
            _ => {}
        }
    }
    tracing::debug!("broker inbound thread stopped");
}

fn outbound_loop(
    mut link_tx: LinkTx,
    mut rx: mpsc::Receiver<Outbound>,
    runtime: tokio::runtime::Handle,
) {
    while let Some(msg) = rx.blocking_recv() {
        let result = if msg.retain {
            let publish = Publish::new(Bytes::from(msg.topic), Bytes::from(msg.payload), true);
            runtime
                .block_on(link_tx.send(Packet::Publish(publish, None)))
                .map(|_| ())
        } else {
            link_tx.publish(msg.topic, msg.payload).map(|_| ())
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "broker outbound link failed");
            break;
        }
    }
    tracing::debug!("broker outbound thread stopped");
}
