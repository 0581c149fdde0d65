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
//!
//! **Internal identities.** rumqttd keeps one connection per client id and silently drops the
//! older one when a second connects with the same id, its own in-process links included. The
//! link's client id ([`INGEST_LINK_ID`]) therefore contains a `:`, which no device id may
//! contain (`protocol::DeviceId`, checked by the edge on every CONNECT and by the store on every
//! provisioning), so no device can ever take the link's place.
//!
//! **The link is watched.** Should the link die all the same, devices would still get their
//! PUBACKs while nothing is stored. So a heartbeat is published every second on
//! [`HEARTBEAT_TOPIC`] (no device may publish or subscribe there) and the link is subscribed to
//! it; when none arrives for [`LinkWatch::dead_after`] (time spent blocked on a full ingest
//! queue does not count), the inbound thread logs an error, marks the link down
//! (`Metrics::ingest_link_up`, so `/readyz` fails), builds a new link, subscribes it and hands
//! its sender to the outbound thread.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::sync::atomic::Ordering;
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

/// The login the edge presents to rumqttd on behalf of devices (with a random password).
const INTERNAL_USER: &str = "sentinella-edge";

/// Client id of the broker's in-process ingest link (it also publishes acks and configs).
/// Outside the device-id space: no device id contains `:`.
pub const INGEST_LINK_ID: &str = "sentinella:ingest";

/// Every client id the gateway itself holds in rumqttd. None is a valid device id.
pub const INTERNAL_CLIENT_IDS: &[&str] = &[INGEST_LINK_ID];

/// Where the link's heartbeat goes round; outside every device's topics.
pub(crate) const HEARTBEAT_TOPIC: &str = "sentinella/v1/internal/heartbeat";

/// How the ingest link is watched.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkWatch {
    /// How often a heartbeat is published.
    pub(crate) heartbeat_every: Duration,
    /// How long without a heartbeat (not counting time blocked on a full ingest queue) before
    /// the link is declared dead and rebuilt.
    pub(crate) dead_after: Duration,
}

impl Default for LinkWatch {
    fn default() -> Self {
        LinkWatch {
            heartbeat_every: Duration::from_secs(1),
            dead_after: Duration::from_secs(10),
        }
    }
}

pub(crate) fn start(
    config: &GatewayConfig,
    max_connections: usize,
    inbound: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    watch: LinkWatch,
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
        max_connections: max_connections + 16,
        max_outgoing_packet_count: 200,
        // Topics nobody reads in bulk (acks, configs) keep little.
        max_segment_size: 1024 * 1024,
        max_segment_count: 2,
        custom_segment: Some(custom),
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let router_tx = Router::new(0, router_config).spawn();

    let connect_link = {
        let router_tx = router_tx.clone();
        move || -> Result<(LinkTx, LinkRx), GatewayError> {
            let (mut link_tx, link_rx, _) = LinkBuilder::new(INGEST_LINK_ID, router_tx.clone())
                .clean_session(true)
                .build()
                .map_err(|e| GatewayError::Broker(format!("ingest link: {e}")))?;
            for filter in [
                protocol::topic::READINGS_FILTER,
                protocol::topic::STATUS_FILTER,
                HEARTBEAT_TOPIC,
            ] {
                link_tx
                    .subscribe(filter)
                    .map_err(|e| GatewayError::Broker(format!("subscribe {filter}: {e}")))?;
            }
            Ok((link_tx, link_rx))
        }
    };
    let (link_tx, link_rx) = connect_link()?;
    metrics.ingest_link_up.store(true, Ordering::Relaxed);

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
    let (relinked_tx, relinked_rx) = std::sync::mpsc::channel();
    thread::Builder::new()
        .name("broker-inbound".into())
        .spawn({
            let cancel = cancel.clone();
            move || {
                inbound_thread(
                    link_rx,
                    connect_link,
                    relinked_tx,
                    inbound,
                    metrics,
                    watch,
                    cancel,
                )
            }
        })
        .map_err(|e| GatewayError::Broker(format!("inbound thread: {e}")))?;
    let runtime = tokio::runtime::Handle::current();
    thread::Builder::new()
        .name("broker-outbound".into())
        .spawn(move || outbound_loop(link_tx, relinked_rx, outbound_rx, runtime))
        .map_err(|e| GatewayError::Broker(format!("outbound thread: {e}")))?;
    tokio::spawn(heartbeat(
        outbound_tx.clone(),
        watch.heartbeat_every,
        cancel,
    ));

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

/// Publishes the link's heartbeat every `every` until `cancel`.
async fn heartbeat(outbound: mpsc::Sender<Outbound>, every: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        // A full outbound queue delays the beat; the watch allows for that.
        let _ = outbound.try_send(Outbound {
            topic: HEARTBEAT_TOPIC.to_owned(),
            payload: b"1".to_vec(),
            retain: false,
        });
    }
}

/// Why [`inbound_loop`] returned.
enum LinkEnd {
    /// Shutdown, or the pipeline is gone: stop.
    Stop,
    /// The link stopped working; rebuild it.
    Dead(String),
}

/// Runs the ingest link, and rebuilds it whenever it dies, until shutdown.
fn inbound_thread<F>(
    mut link_rx: LinkRx,
    connect_link: F,
    relinked: std::sync::mpsc::Sender<LinkTx>,
    inbound: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    watch: LinkWatch,
    cancel: CancellationToken,
) where
    F: Fn() -> Result<(LinkTx, LinkRx), GatewayError>,
{
    loop {
        match inbound_loop(&mut link_rx, &inbound, &metrics, watch, &cancel) {
            LinkEnd::Stop => break,
            LinkEnd::Dead(why) => {
                metrics.ingest_link_up.store(false, Ordering::Relaxed);
                Metrics::add(&metrics.ingest_link_restarts_total, 1);
                tracing::error!(
                    %why,
                    "broker ingest link lost: device publishes are not being stored; rebuilding it"
                );
            }
        }
        // Rebuild, retrying every second, until it works or the gateway stops.
        loop {
            if cancel.is_cancelled() {
                return;
            }
            match connect_link() {
                Ok((tx, rx)) => {
                    link_rx = rx;
                    if relinked.send(tx).is_err() {
                        return;
                    }
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not rebuild the broker ingest link; retrying");
                    thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
    tracing::debug!("broker inbound thread stopped");
}

/// Moves publishes from the link to the ingest queue until shutdown or the link dies.
fn inbound_loop(
    link_rx: &mut LinkRx,
    inbound: &mpsc::Sender<Inbound>,
    metrics: &Metrics,
    watch: LinkWatch,
    cancel: &CancellationToken,
) -> LinkEnd {
    let mut last_beat = Instant::now();
    loop {
        if cancel.is_cancelled() {
            return LinkEnd::Stop;
        }
        if last_beat.elapsed() > watch.dead_after {
            return LinkEnd::Dead(format!(
                "no heartbeat for {} ms",
                last_beat.elapsed().as_millis()
            ));
        }
        let notification = match link_rx.recv_deadline(Instant::now() + Duration::from_millis(200))
        {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(rumqttd::local::LinkError::RecvTimeout(_)) => continue,
            Err(e) => return LinkEnd::Dead(e.to_string()),
        };
        match notification {
            Notification::Forward(forward) if forward.publish.topic == HEARTBEAT_TOPIC => {
                last_beat = Instant::now();
                if !metrics.ingest_link_up.swap(true, Ordering::Relaxed) {
                    tracing::info!("broker ingest link up again");
                }
            }
            Notification::Forward(forward) => {
                let msg = Inbound::Publish {
                    topic: forward.publish.topic,
                    payload: forward.publish.payload,
                    received_at: OffsetDateTime::now_utc(),
                };
                Metrics::add(&metrics.queue_depth, 1);
                // Blocks while the queue is full: the broker keeps the data (bounded by its
                // segments) and the devices keep theirs until acked.
                let blocked = Instant::now();
                if inbound.blocking_send(msg).is_err() {
                    return LinkEnd::Stop;
                }
                if blocked.elapsed() > watch.heartbeat_every {
                    // Backpressure is not a dead link: heartbeats waited behind readings.
                    last_beat = Instant::now();
                }
            }
            Notification::Unschedule => {
                if let Err(e) = link_rx.ready() {
                    return LinkEnd::Dead(e.to_string());
                }
            }
            Notification::Disconnect(..) => {
                return LinkEnd::Dead("disconnected by the router".into());
            }
            _ => {}
        }
    }
}

fn outbound_loop(
    mut link_tx: LinkTx,
    relinked: std::sync::mpsc::Receiver<LinkTx>,
    mut rx: mpsc::Receiver<Outbound>,
    runtime: tokio::runtime::Handle,
) {
    while let Some(msg) = rx.blocking_recv() {
        while let Ok(newer) = relinked.try_recv() {
            link_tx = newer;
        }
        let result = if msg.retain {
            let publish = Publish::new(Bytes::from(msg.topic), Bytes::from(msg.payload), true);
            runtime
                .block_on(link_tx.send(Packet::Publish(publish, None)))
                .map(|_| ())
        } else {
            link_tx.publish(msg.topic, msg.payload).map(|_| ())
        };
        if let Err(e) = result {
            // The inbound thread sees the dead link too (no heartbeat) and rebuilds it; what
            // was being sent is lost, and devices resend what was not acked.
            tracing::error!(error = %e, "broker outbound link failed; waiting for a new link");
            match relinked.recv() {
                Ok(newer) => link_tx = newer,
                Err(_) => break,
            }
        }
    }
    tracing::debug!("broker outbound thread stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use rumqttd::protocol::{Connect, Login, Protocol};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    #[test]
    fn internal_identities_are_not_device_ids() {
        for id in INTERNAL_CLIENT_IDS {
            assert!(protocol::DeviceId::parse(id).is_err(), "{id}");
            // rumqttd refuses client ids with these; ours must stay usable.
            assert!(!id.contains(['+', '$', '#', '/']), "{id}");
        }
        assert!(protocol::topic::Topic::parse(HEARTBEAT_TOPIC).is_err());
    }

    /// Logs in to the internal listener as `client_id` with the edge's login.
    async fn connect(broker: &BrokerHandle, client_id: &str) -> TcpStream {
        let mut stream = TcpStream::connect(broker.addr).await.unwrap();
        let connect = Connect {
            keep_alive: 30,
            client_id: client_id.to_owned(),
            clean_session: true,
        };
        let login = Login {
            username: broker.username.clone(),
            password: broker.password.clone(),
        };
        let mut out = BytesMut::new();
        V4.write(
            Packet::Connect(connect, None, None, None, Some(login)),
            &mut out,
        )
        .unwrap();
        stream.write_all(&out).await.unwrap();
        let mut connack = [0u8; 4];
        stream.read_exact(&mut connack).await.unwrap();
        assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
        stream
    }

    async fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_ingest_link_is_noticed_and_rebuilt() {
        let (tx, mut rx) = mpsc::channel(64);
        let metrics = Arc::new(Metrics::default());
        let cancel = CancellationToken::new();
        let watch = LinkWatch {
            heartbeat_every: Duration::from_millis(100),
            dead_after: Duration::from_millis(1000),
        };
        let config = GatewayConfig::default();
        let broker = start(&config, 16, tx, metrics.clone(), watch, cancel.clone()).unwrap();
        assert!(metrics.ingest_link_up.load(Ordering::Relaxed));

        // Whatever takes the link's client id makes rumqttd drop the link without a word
        // (devices cannot any more: the id is outside theirs; the edge's login is the only way).
        let _intruder = connect(&broker, INGEST_LINK_ID).await;
        // Declared dead, then rebuilt: the restart counter says so (the "down" state may
        // last less than one poll of this test, the new link beats within 100 ms).
        wait_until("the link is declared dead", || {
            Metrics::get(&metrics.ingest_link_restarts_total) >= 1
        })
        .await;
        wait_until("the link is rebuilt", || {
            metrics.ingest_link_up.load(Ordering::Relaxed)
        })
        .await;
        assert_eq!(Metrics::get(&metrics.ingest_link_restarts_total), 1);

        // Publishes reach the pipeline again.
        let mut device = connect(&broker, "bp-1").await;
        let topic = "sentinella/v1/devices/bp-1/readings";
        let mut out = BytesMut::new();
        V4.write(
            Packet::Publish(Publish::new(topic, "{}", false), None),
            &mut out,
        )
        .unwrap();
        device.write_all(&out).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a publish within 5 s")
            .expect("the queue is open");
        assert!(
            matches!(&got, Inbound::Publish { topic: t, .. } if t == topic),
            "{got:?}"
        );
        cancel.cancel();
    }
}
