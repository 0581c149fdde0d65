//! Wake-ups between the nodes of a cluster (several processes on one PostgreSQL database).
//!
//! Two things written by one node must wake the others at once: a new alert event (every
//! node's alert stream sends it) and a new repeat request for a device (the node holding the
//! device's connection publishes it). On PostgreSQL the writes `NOTIFY` in their own
//! transaction (triggers of migration 0010, so the notification is delivered at commit and
//! only then), and each [`Store`] runs one task holding a `PgListener` on both channels, which
//! feeds the same in-process signals as this process's own writes:
//!
//! - [`Store::alert_feed`]: the newest alert event id announced, by this process or (through
//!   `sentinella_alert_events`) by any node;
//! - [`Store::device_wakeups`]: devices with something new to publish (channel
//!   `sentinella_devices`, payload the device id).
//!
//! The listener starts with the first subscription (so a store that nobody listens through
//! holds no extra connection) and stops when the last clone of the store is dropped or the
//! pool is closed. It holds one of the pool's connections. When its connection is lost it
//! reconnects (with a growing pause, at most 5 s) and then wakes every subscriber once
//! ([`DeviceWakeup::All`], and the alert feed is marked changed), since notifications sent
//! while it was away are lost; subscribers must also poll now and then, as a notification can
//! be lost in other ways too (the alert stream reads the store every second anyway).
//!
//! SQLite has one writer process: its own writes are the only wake-ups. A PostgreSQL store
//! scoped to a schema (`search_path` in the URL, the shared-session PGlite of the tests) does
//! not listen either: there a session is not a connection, and polling covers it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, watch};

use crate::{Db, Store};

/// The channel of new alert events (payload: the newest event id of the statement).
pub(crate) const ALERT_EVENTS_CHANNEL: &str = "sentinella_alert_events";
/// The channel of devices with something new to publish (payload: the device id).
pub(crate) const DEVICES_CHANNEL: &str = "sentinella_devices";

/// Wake-ups buffered per subscriber of [`Store::device_wakeups`]; one that falls further
/// behind gets [`tokio::sync::broadcast::error::RecvError::Lagged`] and should treat it as
/// [`DeviceWakeup::All`].
const DEVICE_WAKEUPS: usize = 4096;
/// Longest pause between two attempts to (re)connect the listener.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A device with something new for it in the store (see [`Store::device_wakeups`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceWakeup {
    /// This device.
    One(String),
    /// Any device: wake-ups may have been lost (the listener reconnected).
    All,
}

/// The signals one store (all its clones) shares, and its listener's life.
#[derive(Debug)]
pub(crate) struct Signals {
    devices: broadcast::Sender<DeviceWakeup>,
    /// Set once the listener task was started.
    started: AtomicBool,
    /// True while the listener is connected: this process's own writes then leave the
    /// device wake-up to the notification (one wake-up per write, not two).
    listening: Arc<AtomicBool>,
    /// Dropped with the last clone of the store, which stops the listener.
    _alive: watch::Sender<()>,
    alive: watch::Receiver<()>,
}

impl Default for Signals {
    fn default() -> Self {
        let (alive_tx, alive) = watch::channel(());
        Signals {
            devices: broadcast::channel(DEVICE_WAKEUPS).0,
            started: AtomicBool::new(false),
            listening: Arc::new(AtomicBool::new(false)),
            _alive: alive_tx,
            alive,
        }
    }
}

impl Store {
    /// Devices with something new to publish (a repeat request), written by this process or
    /// by any node on the same PostgreSQL database. A subscriber that lags behind by more than
    /// a few thousand wake-ups gets `Lagged`: treat it as [`DeviceWakeup::All`].
    pub fn device_wakeups(&self) -> broadcast::Receiver<DeviceWakeup> {
        self.listen();
        self.signals.devices.subscribe()
    }

    /// Whether this store hears the other nodes' wake-ups now: its listener is connected
    /// (PostgreSQL; it starts with the first subscription). Always false on SQLite and on a
    /// schema-scoped store, which have no other nodes to hear.
    pub fn listening(&self) -> bool {
        self.signals.listening.load(Ordering::Acquire)
    }

    /// Wakes this process's subscribers for `device`, unless the listener will (it hears
    /// this process's notifications too).
    pub(crate) fn wake_device(&self, device: &str) {
        if !self.signals.listening.load(Ordering::Acquire) {
            let _ = self
                .signals
                .devices
                .send(DeviceWakeup::One(device.to_owned()));
        }
    }

    /// Starts the listener task, once, on an unscoped PostgreSQL store inside a tokio
    /// runtime.
    pub(crate) fn listen(&self) {
        let Db::Postgres(pg) = &self.db else {
            return;
        };
        if pg.is_scoped() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if self.signals.started.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(listener(
            pg.pool.clone(),
            self.alert_feed.clone(),
            self.signals.devices.clone(),
            self.signals.listening.clone(),
            self.signals.alive.clone(),
        ));
    }
}

/// The listener task: (re)connects, LISTENs on both channels, and turns notifications into
/// wake-ups, until the store is dropped or its pool closed.
async fn listener(
    pool: PgPool,
    feed: Arc<watch::Sender<i64>>,
    devices: broadcast::Sender<DeviceWakeup>,
    listening: Arc<AtomicBool>,
    mut alive: watch::Receiver<()>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        if pool.is_closed() {
            break;
        }
        let connect = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen_all([ALERT_EVENTS_CHANNEL, DEVICES_CHANNEL])
                .await?;
            Ok::<_, sqlx::Error>(l)
        };
        let connected = tokio::select! {
            c = connect => c,
            _ = alive.changed() => break,
        };
        let mut l = match connected {
            Ok(l) => l,
            Err(_) if pool.is_closed() => break,
            Err(e) => {
                tracing::warn!(error = %e, "cluster listener: cannot LISTEN; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = alive.changed() => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        listening.store(true, Ordering::Release);
        if !first {
            tracing::info!("cluster listener: listening again");
            wake_all(&feed, &devices);
        }
        first = false;
        loop {
            let received = tokio::select! {
                r = l.try_recv() => r,
                _ = alive.changed() => {
                    listening.store(false, Ordering::Release);
                    return;
                }
            };
            match received {
                Ok(Some(n)) => match n.channel() {
                    ALERT_EVENTS_CHANNEL => {
                        if let Ok(id) = n.payload().parse::<i64>() {
                            crate::alerts::announce_to(&feed, id);
                        }
                    }
                    DEVICES_CHANNEL => {
                        let _ = devices.send(DeviceWakeup::One(n.payload().to_owned()));
                    }
                    _ => {}
                },
                // The connection was lost: the next try_recv reconnects and listens again;
                // what was notified meanwhile is lost.
                Ok(None) => {
                    tracing::warn!("cluster listener: connection lost; reconnecting");
                    listening.store(false, Ordering::Release);
                    wake_all(&feed, &devices);
                    break;
                }
                // The store is closing (shutdown): stop quietly.
                Err(sqlx::Error::PoolClosed) => break,
                Err(_) if pool.is_closed() => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster listener failed; reconnecting");
                    listening.store(false, Ordering::Release);
                    wake_all(&feed, &devices);
                    break;
                }
            }
        }
        // Pause before reconnecting, so a database that is down is not hammered.
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = alive.changed() => break,
        }
    }
    listening.store(false, Ordering::Release);
}

/// After notifications may have been lost: every subscriber re-reads the store.
fn wake_all(feed: &watch::Sender<i64>, devices: &broadcast::Sender<DeviceWakeup>) {
    feed.send_modify(|_| {});
    let _ = devices.send(DeviceWakeup::All);
}
