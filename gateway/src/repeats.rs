//! Repeat requests from the alert engine to devices.
//!
//! The engine asks for a repeat measurement when a reading falls in a care-plan band (see
//! the `alerting` crate). The request travels in the device's retained `config` message
//! (`protocol::status::RepeatRequest`). The engine that asks may run on another node than
//! the one holding the device's connection, so the request goes through the store
//! ([`store::Store::put_repeat_request`]): it stays there while it is fresh, and its write
//! wakes every node ([`store::Store::device_wakeups`], `NOTIFY` on PostgreSQL); the node
//! holding the device publishes the config at once, and a device that connects later, to any
//! node (most home devices connect, publish and drop), gets the request in the config the
//! edge publishes at every connection, with the wait shortened by the time gone by.
//!
//! If the store cannot take a request, it is published to the device at once when this node
//! holds it, and otherwise lost (the engine asks again at the next reading in the band).

use std::sync::Arc;

use protocol::status::{DeviceConfig, RepeatRequest as WireRepeat};
use protocol::topic::{Channel, DeviceId, Topic};
use store::{DeviceWakeup, PendingRepeat, Store};
use time::OffsetDateTime;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::broker::Outbound;

/// A repeat measurement to ask a device for (from the alert engine, through the composition
/// root).
#[derive(Debug, Clone)]
pub struct RepeatRequest {
    /// The device to ask.
    pub device_id: String,
    /// What to measure again.
    pub kind: store::ReadingKind,
    /// In how many minutes.
    pub in_minutes: u32,
    /// When it was asked for (also the request's id on the wire).
    pub at: OffsetDateTime,
}

/// Whether this node holds a live connection of a device.
pub(crate) type IsLive = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Pending repeat requests, through the store.
pub(crate) struct Repeats {
    store: Store,
}

impl std::fmt::Debug for Repeats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repeats").finish_non_exhaustive()
    }
}

fn millis(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// The device's config: the gateway's time, and `pending` if it is still fresh at `now`.
fn config_of(
    device: DeviceId<'_>,
    pending: Option<&PendingRepeat>,
    now: OffsetDateTime,
) -> Outbound {
    let mut config = DeviceConfig::with_time(millis(now));
    if let Some(p) = pending.filter(|p| p.expires_at() > now) {
        let left = (p.due_at() - now).max(time::Duration::ZERO);
        config.repeat = Some(WireRepeat {
            id: millis(p.asked_at),
            kind: p.kind.as_str(),
            in_s: u32::try_from(left.whole_seconds()).unwrap_or(u32::MAX),
        });
    }
    let mut buf = [0u8; 512];
    let len = config.encode(&mut buf).unwrap_or(0);
    Outbound {
        topic: Topic::new(device, Channel::Config).to_string(),
        payload: buf[..len].to_vec(),
        retain: true,
    }
}

impl Repeats {
    pub(crate) fn new(store: Store) -> Repeats {
        Repeats { store }
    }

    /// The device's config: the gateway's time, and its pending repeat request if fresh.
    /// A store error leaves the request out (logged): the device still gets the time.
    pub(crate) async fn config_message(&self, device: DeviceId<'_>) -> Outbound {
        let now = OffsetDateTime::now_utc();
        let pending = match self.store.pending_repeat(device.as_str(), now).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(device = %device.as_str(), error = %e,
                    "repeat requests: cannot read the device's pending request");
                None
            }
        };
        config_of(device, pending.as_ref(), now)
    }

    /// Takes the engine's requests into the store, and publishes the config of each device
    /// held here that has a new request (from this node or any other), until the engine stops
    /// or `cancel`.
    pub(crate) async fn run(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<RepeatRequest>,
        mut wakeups: broadcast::Receiver<DeviceWakeup>,
        is_live: IsLive,
        outbound: mpsc::Sender<Outbound>,
        cancel: CancellationToken,
    ) {
        let mut engine_open = true;
        loop {
            tokio::select! {
                r = rx.recv(), if engine_open => match r {
                    Some(r) => {
                        if !self.take(r, &is_live, &outbound).await {
                            break;
                        }
                    }
                    None => engine_open = false,
                },
                w = wakeups.recv() => {
                    let sent = match w {
                        Ok(DeviceWakeup::One(device)) => self.publish(&device, &is_live, &outbound).await,
                        Ok(DeviceWakeup::All) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            self.publish_all(&is_live, &outbound).await
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    };
                    if !sent {
                        break;
                    }
                }
                _ = cancel.cancelled() => break,
            }
        }
    }

    /// Stores one request of the engine; false once the broker is gone.
    async fn take(
        &self,
        request: RepeatRequest,
        is_live: &IsLive,
        outbound: &mpsc::Sender<Outbound>,
    ) -> bool {
        let Ok(device) = DeviceId::parse(&request.device_id) else {
            return true;
        };
        tracing::info!(
            device = %request.device_id,
            kind = request.kind.as_str(),
            in_minutes = request.in_minutes,
            "repeat measurement requested"
        );
        let pending = PendingRepeat {
            device_id: request.device_id.clone(),
            kind: request.kind,
            in_minutes: request.in_minutes,
            asked_at: request.at,
            received_at: OffsetDateTime::now_utc(),
        };
        match self.store.put_repeat_request(&pending).await {
            // The wake-up publishes it where the device is.
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(device = %request.device_id, error = %e,
                    "repeat requests: cannot store the request; delivering it only if the device is connected here");
                if !is_live(&request.device_id) {
                    return true;
                }
                let message = config_of(device, Some(&pending), OffsetDateTime::now_utc());
                outbound.send(message).await.is_ok()
            }
        }
    }

    /// Publishes the config of `device` if it is connected here; false once the broker is gone.
    async fn publish(
        &self,
        device: &str,
        is_live: &IsLive,
        outbound: &mpsc::Sender<Outbound>,
    ) -> bool {
        let Ok(id) = DeviceId::parse(device) else {
            return true;
        };
        if !is_live(device) {
            return true;
        }
        let message = self.config_message(id).await;
        outbound.send(message).await.is_ok()
    }

    /// After wake-ups may have been lost: the config of every device connected here that has
    /// a pending request.
    async fn publish_all(&self, is_live: &IsLive, outbound: &mpsc::Sender<Outbound>) -> bool {
        let now = OffsetDateTime::now_utc();
        let pending = match self.store.pending_repeats(now).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "repeat requests: cannot list pending requests");
                return true;
            }
        };
        for p in pending.iter().filter(|p| is_live(&p.device_id)) {
            let Ok(id) = DeviceId::parse(&p.device_id) else {
                continue;
            };
            if outbound.send(config_of(id, Some(p), now)).await.is_err() {
                return false;
            }
        }
        true
    }
}
