//! The engine's alert writes, committed in groups.
//!
//! Every transaction that appends alert events holds the store's event lock until it commits
//! (so the live stream sees event ids in order), which makes them run one at a time: one
//! commit per trigger capped the engine at a few hundred alert writes a second, whatever the
//! number of workers. The workers hand their writes to one task instead; while it commits a
//! group, the next writes queue, and it commits those together (up to
//! [`store::MAX_ALERT_WRITES`]). The task commits in the order the writes came, so a
//! patient's writes stay in order. A worker waits for a write's answer when its cached state
//! depends on it (an alert of a rule it does not know open may open); an update or clear of
//! an alert it knows is open it only [`Writes::send`]s, and settles the answers once its share of the step is through (one
//! wait per worker and step instead of one per reading, for a stream in an alert's band).

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use store::{AlertWrite, AlertWritten, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use super::EngineMetrics;

type Reply = oneshot::Sender<Result<AlertWritten, StoreError>>;

/// A write's answer, to [`settle`] later.
pub(super) type Answer = oneshot::Receiver<Result<AlertWritten, StoreError>>;

/// Waits for a sent write's answer.
pub(super) async fn settle(answer: Answer) -> Result<AlertWritten, StoreError> {
    answer
        .await
        .unwrap_or_else(|_| Err(StoreError::Invalid("alert writer stopped".into())))
}

/// A handle to the group-commit task (cheap to clone; the task starts with the first write
/// and ends when the last handle is dropped).
#[derive(Clone)]
pub(super) struct Writes {
    store: Store,
    metrics: Arc<EngineMetrics>,
    queue: Arc<OnceLock<mpsc::UnboundedSender<(AlertWrite, Reply)>>>,
}

impl Writes {
    pub(super) fn new(store: Store, metrics: Arc<EngineMetrics>) -> Writes {
        Writes {
            store,
            metrics,
            queue: Arc::new(OnceLock::new()),
        }
    }

    /// Commits `write` with whatever other writes are waiting, and returns what it did.
    pub(super) async fn write(&self, write: AlertWrite) -> Result<AlertWritten, StoreError> {
        settle(self.send(write)).await
    }

    /// Queues `write` behind those sent before it; its answer comes through the [`Answer`]
    /// (an error if the task has stopped).
    pub(super) fn send(&self, write: AlertWrite) -> Answer {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(commit_groups(self.store.clone(), self.metrics.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        // Sent back on failure, the reply is dropped: the answer reads "stopped".
        let _ = queue.send((write, reply));
        answer
    }
}

async fn commit_groups(
    store: Store,
    metrics: Arc<EngineMetrics>,
    mut rx: mpsc::UnboundedReceiver<(AlertWrite, Reply)>,
) {
    let mut group = Vec::with_capacity(store::MAX_ALERT_WRITES);
    while rx.recv_many(&mut group, store::MAX_ALERT_WRITES).await > 0 {
        let (writes, replies): (Vec<AlertWrite>, Vec<Reply>) = group.drain(..).unzip();
        let done = store.write_alerts(&writes).await;
        let ok = done.iter().filter(|d| d.is_ok()).count() as u64;
        metrics.alert_writes.fetch_add(ok, Ordering::Relaxed);
        metrics.alert_write_commits.fetch_add(1, Ordering::Relaxed);
        for (reply, result) in replies.into_iter().zip(done) {
            // The worker may have gone (shutdown); what was committed stays committed.
            let _ = reply.send(result);
        }
    }
}
