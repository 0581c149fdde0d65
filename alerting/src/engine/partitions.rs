//! The engine among several nodes: it evaluates the patients of the alert partitions it
//! leases (`store::leases`), takes its share in its own loop, and reads the batches other
//! nodes commit for its partitions from the outbox.
//!
//! - A **lease round** every [`LEASE_ROUND`]: the done outbox entries are deleted first, then
//!   [`store::Leases::rebalance`] gives back partitions above the fair share and takes free
//!   ones below it. Both happen between evaluations, so a partition is never given back while
//!   one of its patients is being evaluated.
//! - A partition **taken** (at start, when a node died or joined): its patients' cached state
//!   is dropped (another node changed it), their adherence clocks are re-read, and every
//!   pending outbox entry of the partition, whichever node wrote it, is evaluated. Batches
//!   committed before the partition was taken are not evaluated again from memory.
//! - A partition **lost**: its patients' state is forgotten; their batches in memory are
//!   skipped and stay in the outbox for the new holder.
//! - Every [`OUTBOX_POLL`], the pending entries other nodes wrote for the partitions held are
//!   evaluated (this node's own batches arrive from memory through the handoff).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use store::StoreError;
use store::leases::{PARTITIONS, partition_of, partitions_in};

use super::Engine;

/// How often the engine checks its leases and takes or gives back partitions. A dead node's
/// partitions are taken over within about this time (its lease connection closes with it).
pub(super) const LEASE_ROUND: Duration = Duration::from_secs(1);

/// How often the engine looks for batches other nodes committed for its partitions.
pub(super) const OUTBOX_POLL: Duration = Duration::from_millis(200);

/// Entries evaluated from the store are remembered this long, to skip their batch if it
/// also arrives from memory.
const SEEN_FOR: Duration = Duration::from_secs(600);

impl Engine {
    /// The first lease round, at start-up (before recovery).
    pub(super) async fn take_share(&mut self) -> Result<(), StoreError> {
        self.rebalance().await.map(|_| ())
    }

    /// One lease round; then evaluates the pending entries of the partitions taken.
    pub(super) async fn lease_round(&mut self) {
        let gained = match self.rebalance().await {
            Ok(gained) => gained,
            Err(e) => {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "alert engine: partition leases lost; retrying");
                return;
            }
        };
        if gained == 0 {
            return;
        }
        let started = Instant::now();
        match self.store.pending_outbox_in(gained, None).await {
            Ok(pending) => {
                let n = pending.len();
                if let Err(e) = self.evaluate_entries(pending).await {
                    self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "alert engine: takeover evaluation failed; the next poll retries");
                } else if n > 0 {
                    tracing::info!(
                        batches = n,
                        took_ms = started.elapsed().as_millis() as u64,
                        "alert engine: evaluated the batches pending in partitions taken over"
                    );
                }
            }
            Err(e) => {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "alert engine: could not read the partitions taken over; the next poll retries");
            }
        }
    }

    /// Rebalances the leases and applies what changed to the engine's state. Returns the
    /// partitions gained.
    async fn rebalance(&mut self) -> Result<u64, StoreError> {
        // Entries evaluated from memory must be gone before their partition is given back.
        self.flush_outbox().await;
        let Some(leases) = self.leases.as_mut() else {
            return Ok(0);
        };
        let result = leases.rebalance().await;
        let held = leases.held();
        self.metrics
            .partitions_held
            .store(u64::from(held.count_ones()), Ordering::Relaxed);
        let change = match result {
            Ok(change) => change,
            Err(e) => {
                // Every partition was dropped.
                let lost = self.held_since_mask();
                self.forget(lost);
                return Err(e);
            }
        };
        self.metrics
            .nodes_live
            .store(u64::from(change.nodes), Ordering::Relaxed);
        if change.lost != 0 {
            tracing::info!(
                partitions = change.lost.count_ones(),
                nodes = change.nodes,
                "alert engine: partitions given back"
            );
            self.forget(change.lost);
        }
        if change.gained != 0 {
            tracing::info!(
                partitions = change.gained.count_ones(),
                held = held.count_ones(),
                nodes = change.nodes,
                "alert engine: partitions taken"
            );
            self.metrics
                .partitions_taken
                .fetch_add(u64::from(change.gained.count_ones()), Ordering::Relaxed);
            self.forget(change.gained);
            let now = Instant::now();
            for p in partitions_in(change.gained) {
                self.held_since[p as usize] = Some(now);
            }
            self.reload_last_measured(change.gained).await?;
        }
        Ok(change.gained)
    }

    /// The partitions with a `held_since` (those held until now).
    fn held_since_mask(&self) -> u64 {
        (0..PARTITIONS)
            .filter(|p| self.held_since[*p as usize].is_some())
            .fold(0u64, |m, p| m | (1u64 << p))
    }

    /// Drops the cached state of the patients of `mask`: another node may change it.
    fn forget(&mut self, mask: u64) {
        let of = |patient: &i64| mask & (1u64 << partition_of(*patient)) != 0;
        for w in self.workers() {
            w.patients.retain(|p, _| !of(p));
            w.timed_active.retain(|(p, _)| !of(p));
            w.last_measured.retain(|(p, _), _| !of(p));
            w.last_late.retain(|(p, _), _| !of(p));
        }
        for p in partitions_in(mask) {
            if self
                .leases
                .as_ref()
                .is_none_or(|l| l.held() & (1u64 << p) == 0)
            {
                self.held_since[p as usize] = None;
            }
        }
    }

    /// The adherence clocks of the patients of `mask`, from the store.
    async fn reload_last_measured(&mut self, mask: u64) -> Result<(), StoreError> {
        let since = (self.clock)() - time::Duration::days(31);
        for (patient, kind, at) in self.store.last_measured(since).await? {
            if mask & (1u64 << partition_of(patient)) == 0 {
                continue;
            }
            if let Some(kind) = store::ReadingKind::parse(&kind)
                && let Some(w) = self.worker(patient)
            {
                w.last_measured.insert((patient, kind), at);
            }
        }
        Ok(())
    }

    /// Evaluates the pending entries other nodes committed for the partitions held.
    pub(super) async fn poll_others(&mut self) {
        let held = self.held();
        if held == 0 {
            return;
        }
        let node = self.store.node().to_owned();
        let pending = match self.store.pending_outbox_in(held, Some(&node)).await {
            Ok(p) => p,
            Err(e) => {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "alert engine: could not read other nodes' batches; retrying");
                return;
            }
        };
        if pending.is_empty() {
            return;
        }
        if let Err(e) = self.evaluate_entries(pending).await {
            self.metrics.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "alert engine: evaluating other nodes' batches failed; retrying");
        }
    }

    /// Forgets entries seen long ago (their batch will not arrive from memory any more).
    pub(super) fn prune_seen(&mut self) {
        let now = Instant::now();
        self.seen.retain(|_, at| now.duration_since(*at) < SEEN_FOR);
    }

    /// Gives every partition back at shutdown, after the last evaluation.
    pub(super) async fn release_leases(&mut self) {
        if let Some(leases) = self.leases.as_mut() {
            leases.release_all().await;
            self.metrics.partitions_held.store(0, Ordering::Relaxed);
        }
    }
}
