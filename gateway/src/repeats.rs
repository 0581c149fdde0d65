//! Repeat requests from the alert engine to devices.
//!
//! The engine asks for a repeat measurement when a reading falls in a care-plan band (see
//! the `alerting` crate). The request travels in the device's retained `config` message
//! (`protocol::status::RepeatRequest`): published at once, so a connected device gets it
//! within the broker's delivery time, and kept here while it is fresh, so a device that
//! connects later (most home devices connect, publish and drop) still gets it in the config
//! the edge publishes at every connection, with the wait shortened by the time gone by.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use protocol::status::{DeviceConfig, RepeatRequest as WireRepeat};
use protocol::topic::{Channel, DeviceId, Topic};
use time::OffsetDateTime;
use tokio::sync::mpsc;
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

/// A request stays deliverable this long after its measurement was due.
const FRESH_AFTER_DUE: Duration = Duration::from_secs(3600);

struct Held {
    request: RepeatRequest,
    received: Instant,
}

/// Pending repeat requests by device.
#[derive(Default)]
pub(crate) struct Repeats {
    pending: Mutex<HashMap<String, Held>>,
}

impl std::fmt::Debug for Repeats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repeats").finish_non_exhaustive()
    }
}

impl Repeats {
    /// The device's config: the gateway's time, and its pending repeat request if fresh.
    pub(crate) fn config_message(&self, device: DeviceId<'_>) -> Outbound {
        let now_ms = i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
            .unwrap_or(0);
        let mut config = DeviceConfig::with_time(now_ms);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let held = pending.get(device.as_str()).and_then(|h| {
            let wait = Duration::from_secs(u64::from(h.request.in_minutes) * 60);
            let elapsed = h.received.elapsed();
            (elapsed <= wait + FRESH_AFTER_DUE).then(|| (h, wait.saturating_sub(elapsed)))
        });
        let kind;
        match held {
            Some((h, left)) => {
                kind = h.request.kind.as_str();
                config.repeat = Some(WireRepeat {
                    id: i64::try_from(h.request.at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
                    kind,
                    in_s: u32::try_from(left.as_secs()).unwrap_or(u32::MAX),
                });
            }
            None => {
                pending.remove(device.as_str());
            }
        }
        let mut buf = [0u8; 512];
        let len = config.encode(&mut buf).unwrap_or(0);
        Outbound {
            topic: Topic::new(device, Channel::Config).to_string(),
            payload: buf[..len].to_vec(),
            retain: true,
        }
    }

    /// Takes the engine's requests until it stops (or `cancel`), publishing each at once.
    pub(crate) async fn run(
        self: std::sync::Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<RepeatRequest>,
        outbound: mpsc::Sender<Outbound>,
        cancel: CancellationToken,
    ) {
        loop {
            let request = tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
                _ = cancel.cancelled() => break,
            };
            let Ok(device) = DeviceId::parse(&request.device_id) else {
                continue;
            };
            tracing::info!(
                device = %request.device_id,
                kind = request.kind.as_str(),
                in_minutes = request.in_minutes,
                "repeat measurement requested"
            );
            {
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                // Forget stale requests of devices that never came back (bounded memory).
                if pending.len() > 100_000 {
                    pending.retain(|_, h| h.received.elapsed() < Duration::from_secs(6 * 3600));
                }
                pending.insert(
                    request.device_id.clone(),
                    Held {
                        request: request.clone(),
                        received: Instant::now(),
                    },
                );
            }
            let message = self.config_message(device);
            if outbound.send(message).await.is_err() {
                break;
            }
        }
    }
}
