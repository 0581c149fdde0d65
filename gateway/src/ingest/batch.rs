//! The batcher: groups decoded rows and hands full (or old enough) batches to the writers.
//!
//! A message is never split across batches, so a device's ack always covers a whole publish.
//! Rows are grouped by writer lane, the device's patient modulo the number of lanes (see
//! [`lane`]): every row of one patient (its devices' readings, statuses, quarantine records)
//! goes through one lane, so lanes commit disjoint rows at the same time without contending
//! for locks, and a device's acks and a patient's hand-off to the alert engine keep their order.

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

/// The writer lane of a patient's rows (of a device not provisioned: its id's hash).
pub(crate) fn lane(patient: Option<i64>, device_id: &str, lanes: usize) -> usize {
    let lanes = lanes.max(1) as u64;
    let key = match patient {
        Some(p) => p as u64,
        None => device_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        }),
    };
    (key % lanes) as usize
}

/// The batches being filled, one per writer lane.
struct Lanes {
    batches: Vec<PendingBatch>,
}

impl Lanes {
    fn rows(&self) -> usize {
        self.batches.iter().map(PendingBatch::rows).sum()
    }
}

impl Batcher {
    /// Runs until `cancel`, then drains what is already queued and flushes it. Batches go to
    /// `writers[lane]`; a full batch or an expired window flushes every lane at once.
    pub(crate) async fn run(
        self,
        mut rx: mpsc::Receiver<Inbound>,
        writers: Vec<mpsc::Sender<PendingBatch>>,
        cancel: CancellationToken,
    ) {
        let mut lanes = Lanes {
            batches: writers.iter().map(|_| PendingBatch::default()).collect(),
        };
        let mut deadline: Option<Instant> = None;
        loop {
            let flush_at = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    self.add(&mut lanes, msg).await;
                    if deadline.is_none() && lanes.rows() > 0 {
                        deadline = Some(Instant::now() + self.max_delay);
                    }
                    if lanes.rows() >= self.max_rows && !self.flush(&mut lanes, &writers).await {
                        return;
                    }
                    if lanes.rows() == 0 { deadline = None; }
                }
                _ = tokio::time::sleep_until(flush_at), if deadline.is_some() => {
                    if !self.flush(&mut lanes, &writers).await {
                        return;
                    }
                    deadline = None;
                }
                _ = cancel.cancelled() => break,
            }
        }
        // Shutdown: whatever the link already handed over is committed and acked before exit.
        while let Ok(msg) = rx.try_recv() {
            self.add(&mut lanes, msg).await;
            if lanes.rows() >= self.max_rows {
                self.flush(&mut lanes, &writers).await;
            }
        }
        self.flush(&mut lanes, &writers).await;
        tracing::debug!("batcher stopped");
    }

    /// Sends each lane's batch to its writer; false when a writer is gone.
    async fn flush(&self, lanes: &mut Lanes, writers: &[mpsc::Sender<PendingBatch>]) -> bool {
        for (batch, writer) in lanes.batches.iter_mut().zip(writers) {
            if batch.rows() > 0 && writer.send(std::mem::take(batch)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// The lane of a device's rows (its patient's, from the registry).
    async fn lane_of(&self, device_id: &str, lanes: usize) -> usize {
        let patient = match self.registry.lookup(device_id).await {
            Ok(Some(entry)) => Some(entry.patient_id),
            _ => None,
        };
        lane(patient, device_id, lanes)
    }

    async fn add(&self, lanes: &mut Lanes, msg: Inbound) {
        let n = lanes.batches.len();
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
                self.add_publish(lanes, &topic, &payload, received_at).await;
            }
            Inbound::Refused(entry) => {
                Metrics::add(&self.metrics.quarantined_total, 1);
                let lane = match &entry.device_id {
                    Some(id) => self.lane_of(id, n).await,
                    None => 0,
                };
                let batch = &mut lanes.batches[lane];
                batch.oldest.get_or_insert_with(std::time::Instant::now);
                batch.commit.quarantine.push(entry);
            }
            Inbound::Presence {
                device_id,
                online,
                at,
            } => {
                let batch = &mut lanes.batches[self.lane_of(&device_id, n).await];
                batch.oldest.get_or_insert_with(std::time::Instant::now);
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
        lanes: &mut Lanes,
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
                return self.quarantine(&mut lanes.batches[0], q);
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
                let lane = lane(None, device_id, lanes.batches.len());
                return self.quarantine(&mut lanes.batches[lane], q);
            }
            Err(e) => {
                // The registry read failed (store down). The message is not lost: it was never
                // acked, so the device resends it. Quarantining it would be wrong, it is valid.
                tracing::warn!(device = device_id, error = %e, "registry unavailable; message dropped unacked");
                return;
            }
        };
        let lane = lane(Some(entry.patient_id), device_id, lanes.batches.len());
        let batch = &mut lanes.batches[lane];
        batch.oldest.get_or_insert_with(std::time::Instant::now);
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
        batch.oldest.get_or_insert_with(std::time::Instant::now);
        tracing::info!(topic = %q.topic, reason = %q.reason, detail = %q.detail, "message quarantined");
        Metrics::add(&self.metrics.quarantined_total, 1);
        batch.commit.quarantine.push(q);
    }
}

#[cfg(test)]
mod tests {
    use super::lane;

    #[test]
    fn a_patient_keeps_its_lane_and_patients_spread_over_all_lanes() {
        let mut used = [0usize; 4];
        for patient in 0..400i64 {
            let l = lane(Some(patient), "any", 4);
            assert_eq!(l, lane(Some(patient), "another-device", 4));
            used[l] += 1;
        }
        assert_eq!(used, [100; 4]);
        // Unknown devices: by id, stable, inside the range.
        let l = lane(None, "ghost-1", 4);
        assert!(l < 4);
        assert_eq!(l, lane(None, "ghost-1", 4));
        assert_eq!(lane(Some(7), "x", 1), 0);
        assert_eq!(lane(Some(7), "x", 0), 0);
    }
}
