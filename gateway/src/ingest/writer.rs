//! The writers: commit batches and acknowledge what was committed.
//!
//! There is one writer per lane ([`super::batch::lane`]: a patient's rows always take the same
//! lane), each committing its batches one after another, so up to `lanes` transactions are in
//! flight at once over disjoint devices and patients: a commit's round trips and its WAL flush
//! no longer hold every other device's batch back, and two lanes never wait on each other's
//! row locks. Per device, batches are committed and acked in the order received; per patient,
//! they reach the alert engine in that order.
//!
//! Retry policy: an error that can heal (connection lost, pool timeout, database restarting,
//! disk full) is retried with backoff for as long as it takes; meanwhile the queues fill up and
//! push back on the broker link and the edge. Nothing is acked until the commit succeeds. An
//! error that cannot heal (a constraint the batch violates) must not wedge the pipeline: the
//! batch is split and committed row by row, and rows the store refuses are quarantined with
//! the store's reason and reported to their device as rejected.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use protocol::ack::{Ack, MAX_ACK_RANGES, ranges};
use protocol::topic::{Channel, DeviceId, Topic};
use store::{CommitBatch, Store, StoreError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{DeviceAcks, PendingBatch};
use crate::broker::Outbound;
use crate::telemetry::Metrics;

/// How long a commit keeps being retried once shutdown has begun.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The writers' dependencies, shared by every lane.
#[derive(Debug)]
pub(crate) struct Writer {
    pub(crate) store: Store,
    pub(crate) outbound: mpsc::Sender<Outbound>,
    pub(crate) metrics: Arc<Metrics>,
    /// The alert engine, offered every batch's newly stored readings after its commit
    /// (never waited for).
    pub(crate) engine: Option<Arc<store::Handoff>>,
}

impl Writer {
    /// Runs one writer per lane until the batcher hangs up, then closes the engine's hand-off.
    pub(crate) async fn run(
        self,
        lanes: Vec<mpsc::Receiver<PendingBatch>>,
        cancel: CancellationToken,
    ) {
        let writer = Arc::new(self);
        let mut tasks = tokio::task::JoinSet::new();
        for rx in lanes {
            tasks.spawn(writer.clone().lane(rx, cancel.clone()));
        }
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "writer lane failed");
            }
        }
        if let Some(engine) = &writer.engine {
            engine.close();
        }
        tracing::debug!("writer stopped");
    }

    /// Commits one lane's batches until the batcher hangs up.
    async fn lane(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<PendingBatch>,
        cancel: CancellationToken,
    ) {
        while let Some(mut batch) = rx.recv().await {
            let started = Instant::now();
            batch.commit.outbox = self.engine.is_some();
            let m = &self.metrics;
            let running = m.commits_in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            m.commits_in_flight_peak
                .fetch_max(running, Ordering::Relaxed);
            let committed = self.commit(&batch.commit, &cancel).await;
            m.commits_in_flight.fetch_sub(1, Ordering::Relaxed);
            match committed {
                Ok(outcome) => {
                    self.to_engine(&batch.commit.readings, &outcome).await;
                    let m = &self.metrics;
                    Metrics::add(&m.readings_committed_total, outcome.inserted);
                    Metrics::add(&m.readings_duplicate_total, outcome.duplicates);
                    Metrics::add(&m.batches_committed_total, 1);
                    m.batch_commit_seconds.observe(started.elapsed());
                    tracing::debug!(
                        inserted = outcome.inserted,
                        duplicates = outcome.duplicates,
                        quarantined = batch.commit.quarantine.len(),
                        micros = started.elapsed().as_micros() as u64,
                        "batch committed"
                    );
                }
                Err(CommitFailure::Permanent(e)) => {
                    tracing::error!(error = %e, "batch refused by the store; committing row by row");
                    self.commit_row_by_row(&mut batch).await;
                }
                Err(CommitFailure::GaveUp(e)) => {
                    tracing::warn!(
                        error = %e,
                        readings = batch.commit.readings.len(),
                        "shutting down with the store unavailable; batch not committed and not acked (devices will resend)"
                    );
                    continue;
                }
            }
            let oldest = batch.oldest;
            self.send_acks(batch.acks).await;
            if let Some(oldest) = oldest {
                self.metrics
                    .ingest_latency_seconds
                    .observe(oldest.elapsed());
            }
        }
    }

    async fn commit(
        &self,
        batch: &CommitBatch,
        cancel: &CancellationToken,
    ) -> Result<store::CommitOutcome, CommitFailure> {
        let mut backoff = Duration::from_millis(50);
        let mut shutdown_since: Option<Instant> = None;
        loop {
            match self.store.commit_batch(batch).await {
                Ok(outcome) => {
                    self.metrics.store_ok.store(true, Ordering::Relaxed);
                    return Ok(outcome);
                }
                Err(e) if e.is_transient() => {
                    self.metrics.store_ok.store(false, Ordering::Relaxed);
                    Metrics::add(&self.metrics.store_retries_total, 1);
                    tracing::warn!(error = %e, retry_in = ?backoff, "store commit failed; retrying");
                    if cancel.is_cancelled() {
                        let since = *shutdown_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > SHUTDOWN_GRACE {
                            return Err(CommitFailure::GaveUp(e));
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(CommitFailure::Permanent(e)),
            }
        }
    }

    /// Commits each row on its own; rows the store refuses become quarantine records and
    /// rejected acks.
    async fn commit_row_by_row(&self, batch: &mut PendingBatch) {
        let commit = std::mem::take(&mut batch.commit);
        let single = |f: &dyn Fn(&mut CommitBatch)| {
            let mut b = CommitBatch::default();
            f(&mut b);
            b
        };
        for q in commit.quarantine {
            let one = single(&|b| b.quarantine.push(q.clone()));
            if let Err(e) = self.store.commit_batch(&one).await {
                tracing::error!(error = %e, topic = %q.topic, reason = %q.reason, "quarantine record could not be stored");
            }
        }
        for s in commit.statuses {
            let one = single(&|b| b.statuses.push(s.clone()));
            if let Err(e) = self.store.commit_batch(&one).await {
                tracing::warn!(error = %e, device = %s.device_id, "status update refused by the store");
            }
        }
        for row in commit.readings {
            let one = single(&|b| b.readings.push(row.clone()));
            let mut one = one;
            one.outbox = self.engine.is_some();
            match self.store.commit_batch(&one).await {
                Ok(outcome) => {
                    self.to_engine(&one.readings, &outcome).await;
                    Metrics::add(&self.metrics.readings_committed_total, outcome.inserted);
                    Metrics::add(&self.metrics.readings_duplicate_total, outcome.duplicates);
                }
                Err(e) => {
                    let seq = row.seq as u32;
                    if let Some(acks) = batch.acks.get_mut(&row.device_id) {
                        acks.committed.retain(|s| *s != seq);
                    }
                    let q = super::decode::quarantine(
                        &format!("{}{}/readings", protocol::topic::PREFIX, row.device_id),
                        Some(&row.device_id),
                        Some(seq),
                        "store.refused",
                        format!("seq {seq}: the store refused the reading: {e}"),
                        &[],
                        row.received_at,
                    );
                    let one = single(&|b| b.quarantine.push(q.clone()));
                    match self.store.commit_batch(&one).await {
                        Ok(_) => {
                            Metrics::add(&self.metrics.quarantined_total, 1);
                            if let Some(acks) = batch.acks.get_mut(&row.device_id) {
                                acks.rejected.push(seq);
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, device = %row.device_id, seq, "reading neither stored nor quarantined; not acked")
                        }
                    }
                }
            }
        }
    }

    /// Offers the readings stored now to the alert engine, without waiting: when the engine
    /// lags, the batch's outbox entry (committed with it) is how the engine gets it.
    async fn to_engine(&self, readings: &[store::NewReading], outcome: &store::CommitOutcome) {
        let Some(engine) = &self.engine else {
            return;
        };
        let fresh: Vec<store::NewReading> = readings
            .iter()
            .zip(&outcome.fresh)
            .filter(|(_, fresh)| **fresh)
            .map(|(r, _)| r.clone())
            .collect();
        if fresh.is_empty() {
            return;
        }
        let committed = store::Committed {
            readings: fresh,
            outbox: outcome.outbox.clone(),
            committed: Instant::now(),
        };
        if !engine.offer(committed) {
            Metrics::add(&self.metrics.engine_lagging_batches_total, 1);
        }
    }

    async fn send_acks(&self, acks: std::collections::BTreeMap<String, DeviceAcks>) {
        for (device_id, mut seqs) in acks {
            let Ok(device) = DeviceId::parse(&device_id) else {
                continue;
            };
            seqs.committed.sort_unstable();
            seqs.rejected.sort_unstable();
            Metrics::add(
                &self.metrics.readings_acked_total,
                seqs.committed.len() as u64,
            );
            let topic = Topic::new(device, Channel::Ack).to_string();
            for payload in ack_payloads(&seqs) {
                let msg = Outbound {
                    topic: topic.clone(),
                    payload,
                    retain: false,
                };
                if self.outbound.send(msg).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[derive(Debug)]
enum CommitFailure {
    Permanent(StoreError),
    GaveUp(StoreError),
}

/// Encodes a device's settled seqs as one or more ack messages of at most
/// [`MAX_ACK_RANGES`] ranges per list.
pub(crate) fn ack_payloads(seqs: &DeviceAcks) -> Vec<Vec<u8>> {
    let committed: Vec<_> = ranges(seqs.committed.iter().copied()).collect();
    let rejected: Vec<_> = ranges(seqs.rejected.iter().copied()).collect();
    let mut out = Vec::new();
    let chunks = committed
        .len()
        .max(rejected.len())
        .div_ceil(MAX_ACK_RANGES)
        .max(1);
    for i in 0..chunks {
        let window = |v: &Vec<protocol::SeqRange>| {
            v.iter()
                .skip(i * MAX_ACK_RANGES)
                .take(MAX_ACK_RANGES)
                .copied()
                .collect::<heapless::Vec<_, MAX_ACK_RANGES>>()
        };
        let ack = Ack {
            committed: window(&committed),
            rejected: window(&rejected),
        };
        let mut buf = [0u8; 2048];
        if let Ok(n) = ack.encode(&mut buf) {
            out.push(buf[..n].to_vec());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_ack_lists_are_split() {
        let seqs = DeviceAcks {
            committed: (0..200).map(|i| i * 2).collect(),
            rejected: vec![1, 3],
        };
        let payloads = ack_payloads(&seqs);
        assert_eq!(payloads.len(), 200usize.div_ceil(MAX_ACK_RANGES));
        let mut settled = 0;
        for p in &payloads {
            let ack = Ack::decode(p).unwrap();
            settled += ack.committed.len();
        }
        assert_eq!(settled, 200);
        let first = Ack::decode(&payloads[0]).unwrap();
        assert!(first.settles(1) && first.settles(3) && first.settles(0));
        assert_eq!(
            ack_payloads(&DeviceAcks {
                committed: vec![5, 6, 7],
                rejected: vec![]
            })
            .len(),
            1
        );
    }
}
