//! The ingest pipeline: broker link → decode → batch → store commit → ack.
//!
//! - [`decode`]: pure functions turning a topic and payload into store rows or quarantine
//!   records; they never panic on device input.
//! - [`batch`]: the batcher task; groups rows until `batch_max_rows` or `batch_max_delay`.
//! - [`writer`]: the writer task; commits a batch in one transaction, retries what can heal,
//!   then publishes each device's committed and rejected seq ranges on its `ack` topic.

pub(crate) mod batch;
pub(crate) mod decode;
pub(crate) mod writer;

use std::collections::BTreeMap;

/// Seqs of one device settled by a batch, acked after its commit.
#[derive(Debug, Default)]
pub(crate) struct DeviceAcks {
    pub(crate) committed: Vec<u32>,
    pub(crate) rejected: Vec<u32>,
}

/// A batch on its way to the store.
#[derive(Debug, Default)]
pub(crate) struct PendingBatch {
    pub(crate) commit: store::CommitBatch,
    pub(crate) acks: BTreeMap<String, DeviceAcks>,
    /// When the batch's first message came off the broker.
    pub(crate) oldest: Option<std::time::Instant>,
}

impl PendingBatch {
    pub(crate) fn rows(&self) -> usize {
        self.commit.readings.len() + self.commit.quarantine.len() + self.commit.statuses.len()
    }
}
