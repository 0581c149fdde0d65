//! How committed batches reach the alert engine without ever holding ingest back.
//!
//! The writer commits a batch together with its outbox row (`CommitBatch::outbox`), acks it,
//! and offers the batch's readings here: [`Handoff::offer`] never waits. While the engine keeps
//! up, batches travel in memory, in commit order. When the in-memory queue is full the batch
//! is not queued: its outbox row already holds it, so the handoff only remembers that it
//! overflowed, and from then on queues nothing more until the engine has caught up. The engine
//! drains what was queued before the overflow, then reads every pending outbox entry back from
//! the store, patient by patient and in measurement order (`alerting::Engine::catch_up`), and resumes
//! with the queue; batches queued after the overflow whose outbox entry the catch-up already
//! evaluated are skipped. Per patient the order stays the commit order throughout, since
//! batches are committed one after another (outbox ids grow with commits).
//!

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

use crate::Committed;

/// The writer's side and the engine's side of the handoff.
#[derive(Debug)]
pub struct Handoff {
    state: Mutex<State>,
    wake: Notify,
    capacity: usize,
    /// Batches left to the outbox because the queue was full (or catching up).
    overflowed_total: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Committed>,
    /// A batch was left to the outbox; the engine must catch up from the store.
    overflowed: bool,
    /// The writer is gone: after the queue, nothing more comes.
    closed: bool,
}

/// What the engine does next.
#[derive(Debug)]
pub enum Next {
    /// Evaluate this batch.
    Batch(Committed),
    /// Batches were left to the outbox: evaluate every pending outbox entry from the store.
    CatchUp,
    /// The writer has stopped and everything queued was handed over.
    Closed,
}

impl Handoff {
    /// A handoff holding at most `capacity` batches in memory.
    pub fn new(capacity: usize) -> Handoff {
        Handoff {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            capacity: capacity.max(1),
            overflowed_total: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a committed batch to the engine without waiting. Returns false when the batch
    /// was left to the outbox (the engine lags; it will read it back from the store).
    pub fn offer(&self, batch: Committed) -> bool {
        let queued = {
            let mut state = self.state();
            if state.overflowed || state.queue.len() >= self.capacity {
                state.overflowed = true;
                false
            } else {
                state.queue.push_back(batch);
                true
            }
        };
        if !queued {
            self.overflowed_total.fetch_add(1, Ordering::Relaxed);
        }
        self.wake.notify_one();
        queued
    }

    /// The writer has stopped: the engine ends once it has taken what is queued.
    pub fn close(&self) {
        self.state().closed = true;
        self.wake.notify_one();
    }

    /// Batches left to the outbox so far.
    pub fn overflowed_total(&self) -> u64 {
        self.overflowed_total.load(Ordering::Relaxed)
    }

    /// The batches queued now, up to `max_readings` readings in all (at least one batch if
    /// any is queued), without waiting: the engine evaluates them together.
    pub fn take_ready(&self, max_readings: usize) -> Vec<Committed> {
        let mut state = self.state();
        let mut taken = Vec::new();
        let mut readings = 0;
        while let Some(next) = state.queue.front() {
            if !taken.is_empty() && readings + next.readings.len() > max_readings {
                break;
            }
            readings += next.readings.len();
            taken.extend(state.queue.pop_front());
        }
        taken
    }

    /// Waits for the engine's next step. Cancel-safe: nothing is taken unless returned.
    pub async fn next(&self) -> Next {
        loop {
            {
                let mut state = self.state();
                if let Some(batch) = state.queue.pop_front() {
                    return Next::Batch(batch);
                }
                // Everything queued before the overflow is evaluated: now the store.
                if state.overflowed && !state.closed {
                    state.overflowed = false;
                    return Next::CatchUp;
                }
                if state.closed {
                    // Left in the outbox, if anything: the next start evaluates it.
                    return Next::Closed;
                }
            }
            // A single consumer: `notify_one` keeps a permit when nobody waits yet.
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(id: i64) -> Committed {
        Committed {
            readings: Vec::new(),
            outbox: vec![crate::OutboxRef { partition: 0, id }],
            committed: std::time::Instant::now(),
        }
    }

    fn id(next: Next) -> Option<i64> {
        match next {
            Next::Batch(b) => b.outbox.first().map(|o| o.id),
            Next::CatchUp => Some(-1),
            Next::Closed => None,
        }
    }

    #[tokio::test]
    async fn overflow_queues_nothing_until_the_engine_caught_up() {
        let h = Handoff::new(2);
        assert!(h.offer(batch(1)));
        assert!(h.offer(batch(2)));
        // Full: left to the outbox, and so is everything after it, room or not.
        assert!(!h.offer(batch(3)));
        assert_eq!(id(h.next().await), Some(1));
        assert!(!h.offer(batch(4)));
        assert_eq!(id(h.next().await), Some(2));
        // The queue is drained: catch up from the store (3 and 4), then take new batches.
        assert_eq!(id(h.next().await), Some(-1));
        assert!(h.offer(batch(5)));
        assert_eq!(id(h.next().await), Some(5));
        assert_eq!(h.overflowed_total(), 2);
        h.close();
        assert_eq!(id(h.next().await), None);
    }

    #[tokio::test]
    async fn the_engine_wakes_for_an_offer() {
        let h = std::sync::Arc::new(Handoff::new(4));
        let waiter = tokio::spawn({
            let h = h.clone();
            async move { id(h.next().await) }
        });
        tokio::task::yield_now().await;
        assert!(h.offer(batch(9)));
        assert_eq!(waiter.await.unwrap(), Some(9));
    }
}
