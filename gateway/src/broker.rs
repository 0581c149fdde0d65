//! rumqttd's router embedded in-process, reachable only through in-process links.
//!
//! The broker routes; it is not the durability point (its PUBACK means "in my memory") and it
//! cannot authorize per device, so devices never reach it directly (see ARCHITECTURE.md). Two
//! things are set up here, in this order:
//! 1. the router, with bounded commit-log segments for the ingest filters;
//! 2. the ingest link, subscribed to every device's readings and status topics *before* the
//!    edge accepts a connection (rumqttd acks and drops publishes nobody subscribed to).
//!
//! rumqttd has no network listener here: the edge gives each device connection its own
//! in-process link to the router ([`RouterHandle::link`]) and moves the packets it has decoded
//! and checked straight into it, so a device costs one descriptor (its own socket) and each
//! packet is decoded once (by the edge) and encoded once (towards the device). No other process
//! can reach the router at all.
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
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use rumqttd::{Notification, Router, RouterConfig, SegmentConfig};
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
    /// In-process links to the router, one per device connection.
    pub(crate) router: RouterHandle,
    /// Queue to the outbound thread.
    pub(crate) outbound: mpsc::Sender<Outbound>,
}

/// A new in-process link: its sending and receiving halves, and the router's CONNACK.
pub(crate) type Link = (LinkTx, LinkRx, Notification);

type Connect = dyn Fn(&str) -> Result<Link, String> + Send + Sync;

/// The router has dropped a link (or stopped): nothing sent through it arrives any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkGone;
type Busy = dyn Fn() -> bool + Send + Sync;

/// Opens in-process links to the router and feeds them without stalling tokio's workers.
///
/// rumqttd's link API blocks: building a link waits for the router's answer, and every send
/// is a blocking `flume` send on the router's bounded event channel. The router's channel type
/// is private to rumqttd, so the handle keeps it inside closures.
#[derive(Clone)]
pub(crate) struct RouterHandle {
    connect: Arc<Connect>,
    busy: Arc<Busy>,
}

impl fmt::Debug for RouterHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterHandle").finish_non_exhaustive()
    }
}

impl RouterHandle {
    /// Registers `client_id` with the router as a clean session (on a blocking thread, since
    /// rumqttd waits for the router there). A client id already connected loses its link: the
    /// router drops the older one, whose [`LinkRx`] then fails.
    pub(crate) async fn link(&self, client_id: String) -> Result<Link, String> {
        let connect = self.connect.clone();
        tokio::task::spawn_blocking(move || connect(&client_id))
            .await
            .map_err(|e| format!("link task: {e}"))?
    }

    /// Hands `packets` to the router through `link`, with one router event for all of them.
    /// While the router's event channel is full this waits here (without blocking a tokio
    /// worker), which pushes back on the device's socket.
    pub(crate) async fn push(
        &self,
        link: &mut LinkTx,
        mut packets: Vec<Packet>,
    ) -> Result<(), LinkGone> {
        let Some(last) = packets.pop() else {
            return Ok(());
        };
        {
            let mut buffer = link.buffer();
            buffer.extend(packets);
        }
        let mut wait = Duration::from_micros(200);
        while (self.busy)() {
            // Boxed: a rare wait, kept out of every connection's task.
            Box::pin(tokio::time::sleep(wait)).await;
            wait = (wait * 2).min(Duration::from_millis(20));
        }
        // Room was there a moment ago: at worst this blocks briefly on a race.
        link.send(last).await.map(|_| ()).map_err(|_| LinkGone)
    }
}

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
    let router = RouterHandle {
        connect: Arc::new({
            let router_tx = router_tx.clone();
            move |client_id: &str| {
                LinkBuilder::new(client_id, router_tx.clone())
                    .clean_session(true)
                    .build()
                    .map_err(|e| e.to_string())
            }
        }),
        busy: Arc::new({
            let router_tx = router_tx.clone();
            move || router_tx.is_full()
        }),
    };

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
        router,
        outbound: outbound_tx,
    })
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

    #[test]
    fn internal_identities_are_not_device_ids() {
        for id in INTERNAL_CLIENT_IDS {
            assert!(protocol::DeviceId::parse(id).is_err(), "{id}");
            // rumqttd refuses client ids with these; ours must stay usable.
            assert!(!id.contains(['+', '$', '#', '/']), "{id}");
        }
        assert!(protocol::topic::Topic::parse(HEARTBEAT_TOPIC).is_err());
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
        // (devices cannot: the id is outside theirs, and only the edge opens links).
        let _intruder = broker.router.link(INGEST_LINK_ID.to_owned()).await.unwrap();
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

        // Publishes reach the pipeline again, through a device's own link as the edge makes
        // them (QoS 1, acked by the router).
        let (mut device, mut device_rx, connack) = broker.router.link("bp-1".into()).await.unwrap();
        assert!(matches!(
            Option::<Packet>::from(connack),
            Some(Packet::ConnAck(..))
        ));
        let topic = "sentinella/v1/devices/bp-1/readings";
        // PUBLISH, QoS 1, packet id 7, as the edge decodes it from a device.
        let mut wire = bytes::BytesMut::new();
        wire.extend_from_slice(&[0x32, (2 + topic.len() + 2 + 2) as u8, 0, topic.len() as u8]);
        wire.extend_from_slice(topic.as_bytes());
        wire.extend_from_slice(&[0, 7]);
        wire.extend_from_slice(b"{}");
        let publish =
            rumqttd::protocol::Protocol::read_mut(&mut rumqttd::protocol::v4::V4, &mut wire, 1024)
                .unwrap();
        broker
            .router
            .push(&mut device, vec![publish])
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a publish within 5 s")
            .expect("the queue is open");
        assert!(
            matches!(&got, Inbound::Publish { topic: t, .. } if t == topic),
            "{got:?}"
        );
        let ack = tokio::time::timeout(Duration::from_secs(5), device_rx.next())
            .await
            .expect("a PUBACK within 5 s")
            .unwrap();
        assert!(
            matches!(
                ack.and_then(Option::<Packet>::from),
                Some(Packet::PubAck(ref a, _)) if a.pkid == 7
            ),
            "no PUBACK"
        );
        cancel.cancel();
    }
}
