//! The batcher: groups decoded rows and hands full (or old enough) batches to the writer.
//!
//! A message is never split across batches, so a device's ack always covers a whole publish.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use protocol::topic::{Channel, Topic};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::PendingBatch;
use super::decode::{self, Source};
use crate::broker::Inbound;
use crate::registry::Registry;
use crate::telemetry::Metrics;

/// The batcher's inputs and limits.
#[derive(Debug)]
pub(crate) struct Batcher {
    pub(crate) registry: Arc<Registry>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) max_rows: usize,
    pub(crate) max_delay: Duration,
}

impl Batcher {
    /// Runs until `cancel`, then drains what is already queued and flushes it.
    pub(crate) async fn run(
        self,
        mut rx: mpsc::Receiver<Inbound>,
        writer: mpsc::Sender<PendingBatch>,
        cancel: CancellationToken,
    ) {
        let mut batch = PendingBatch::default();
        let mut deadline: Option<Instant> = None;
        loop {
            let flush_at = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    self.add(&mut batch, msg).await;
                    if deadline.is_none() && batch.rows() > 0 {
                        deadline = Some(Instant::now() + self.max_delay);
                    }
                    if batch.rows() >= self.max_rows && !self.flush(&mut batch, &writer).await {
                        return;
                    }
                    if batch.rows() == 0 { deadline = None; }
                }
                _ = tokio::time::sleep_until(flush_at), if deadline.is_some() => {
                    if !self.flush(&mut batch, &writer).await {
                        return;
                    }
                    deadline = None;
                }
                _ = cancel.cancelled() => break,
            }
        }
        // Shutdown: whatever the link already handed over is committed and acked before exit.
        while let Ok(msg) = rx.try_recv() {
            self.add(&mut batch, msg).await;
            if batch.rows() >= self.max_rows {
                self.flush(&mut batch, &writer).await;
            }
        }
        self.flush(&mut batch, &writer).await;
        tracing::debug!("batcher stopped");
    }

    /// Sends the batch to the writer; false when the writer is gone.
    async fn flush(&self, batch: &mut PendingBatch, writer: &mpsc::Sender<PendingBatch>) -> bool {
        if batch.rows() == 0 {
            return true;
        }
        writer.send(std::mem::take(batch)).await.is_ok()
    }

    async fn add(&self, batch: &mut PendingBatch, msg: Inbound) {
        batch.oldest.get_or_insert_with(std::time::Instant::now);
        match msg {
            Inbound::Publish {
                topic,
                payload,
                received_at,
            } => {
                self.metrics
                    .queue_depth
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                Metrics::add(&self.metrics.messages_received_total, 1);
                self.add_publish(batch, &topic, &payload, received_at).await;
            }
            Inbound::Refused(entry) => {
                Metrics::add(&self.metrics.quarantined_total, 1);
                batch.commit.quarantine.push(entry);
            }
            Inbound::Presence {
                device_id,
                online,
                at,
            } => {
                // Presence only flips `online`; absent fields keep their stored values.
                batch.commit.statuses.push(store::DeviceStatusUpdate {
                    device_id,
                    at,
                    online,
                    battery: None,
                    firmware: None,
                    rssi: None,
                });
            }
        }
    }

    async fn add_publish(
        &self,
        batch: &mut PendingBatch,
        topic: &Bytes,
        payload: &[u8],
        at: OffsetDateTime,
    ) {
        let topic_str = String::from_utf8_lossy(topic);
        let parsed = match Topic::parse(&topic_str) {
            Ok(t) => t,
            Err(e) => {
                let q = decode::quarantine(
                    &topic_str,
                    None,
                    None,
                    e.code(),
                    e.to_string(),
                    payload,
                    at,
                );
                return self.quarantine(batch, q);
            }
        };
        let device_id = parsed.device.as_str();
        let entry = match self.registry.lookup(device_id).await {
            Ok(Some(entry)) => entry,
            Ok(None) => {
                let q = decode::quarantine(
                    &topic_str,
                    Some(device_id),
                    None,
                    "device.unknown",
                    format!("device {device_id} is not provisioned"),
                    payload,
                    at,
                );
                return self.quarantine(batch, q);
            }
            Err(e) => {
                // The registry read failed (store down). The message is not lost: it was never
                // acked, so the device resends it. Quarantining it would be wrong, it is valid.
                tracing::warn!(device = device_id, error = %e, "registry unavailable; message dropped unacked");
                return;
            }
        };
        let src = Source {
            topic: &topic_str,
            device_id,
            patient_id: entry.patient_id,
            received_at: at,
        };
        match parsed.channel {
            Channel::Readings => match decode::readings(src, payload) {
                Ok(decoded) => {
                    let acks = batch.acks.entry(device_id.to_owned()).or_default();
                    Metrics::add(
                        &self.metrics.readings_received_total,
                        (decoded.accepted.len() + decoded.rejected.len()) as u64,
                    );
                    for row in decoded.accepted {
                        self.assess_clock(&row);
                        acks.committed.push(row.seq as u32);
                        batch.commit.readings.push(row);
                    }
                    for (seq, q) in decoded.rejected {
                        tracing::info!(device = device_id, seq, reason = %q.reason, "reading quarantined");
                        Metrics::add(&self.metrics.quarantined_total, 1);
                        acks.rejected.push(seq);
                        batch.commit.quarantine.push(q);
                    }
                }
                Err(q) => self.quarantine(batch, *q),
            },
            Channel::Status => match decode::status(src, payload) {
                Ok(update) => batch.commit.statuses.push(update),
                Err(q) => self.quarantine(batch, *q),
            },
            // The edge lets no device publish here; anything arriving is from elsewhere.
            Channel::Ack | Channel::Config => {}
        }
    }

    /// Counts late readings and implausible device clocks. The reading is stored either way,
    /// with both times; readers derive the same verdict (`protocol::limits::ClockState`).
    fn assess_clock(&self, row: &store::NewReading) {
        let ms = |t: OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
        let state = protocol::limits::ClockState::assess(
            ms(row.measured_at),
            ms(row.received_at),
            row.clock_unset,
        );
        match state {
            protocol::limits::ClockState::Late => {
                Metrics::add(&self.metrics.readings_late_total, 1)
            }
            s if s.is_implausible() => {
                Metrics::add(&self.metrics.readings_clock_implausible_total, 1);
                tracing::info!(device = %row.device_id, seq = row.seq, clock = s.as_str(), measured_at = %row.measured_at, "implausible device clock");
            }
            _ => {}
        }
    }

    fn quarantine(&self, batch: &mut PendingBatch, q: store::NewQuarantine) {
        tracing::info!(topic = %q.topic, reason = %q.reason, detail = %q.detail, "message quarantined");
        Metrics::add(&self.metrics.quarantined_total, 1);
        batch.commit.quarantine.push(q);
    }
}
