//! Quarantine: device input the gateway could not accept, kept for diagnosis.

use serde::Serialize;
use time::OffsetDateTime;

use crate::rows::Columns;
use crate::sql::{Tx, Val, values_list};
use crate::{Result, Store};

/// A rejected message to keep.
#[derive(Debug, Clone)]
pub struct NewQuarantine {
    pub received_at: OffsetDateTime,
    pub topic: String,
    pub device_id: Option<String>,
    pub seq: Option<i64>,
    /// Machine-readable code, e.g. `payload.malformed`.
    pub reason: String,
    /// Human-readable explanation.
    pub detail: String,
    /// The payload, or its first bytes: the caller truncates.
    pub payload: Vec<u8>,
    /// Size of the whole payload as received.
    pub payload_size: i64,
}

/// A stored quarantine row.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineEntry {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub topic: String,
    pub device_id: Option<String>,
    pub seq: Option<i64>,
    pub reason: String,
    pub detail: String,
    pub payload_size: i64,
    /// The first 512 bytes of the stored payload as UTF-8 (invalid sequences replaced).
    pub payload_preview: String,
}

/// Bytes of payload shown in [`QuarantineEntry::payload_preview`].
const PREVIEW_BYTES: i64 = 512;
const MAX_LIMIT: i64 = 10_000;

const COLUMNS: &str = "received_at, topic, device_id, seq, reason, detail, payload, payload_size";

/// Rows per multi-row INSERT: 8 parameters each, far under both backends' limits.
const ROWS_PER_STATEMENT: usize = 500;

impl Store {
    /// Stores quarantine rows in one transaction (the same rows can also ride along in a
    /// [`crate::CommitBatch`]).
    pub async fn record_quarantine(&self, entries: &[NewQuarantine]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut tx = self.tx().await?;
        insert(&mut tx, entries).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The newest quarantine rows first, at most `limit` (clamped to 1..=10,000). With a
    /// scope, only rows of devices whose patient is in those COTs, plus rows naming no known
    /// device (they belong to no patient; an unknown sender is what they diagnose).
    pub async fn list_quarantine(
        &self,
        limit: i64,
        scope: Option<&[i64]>,
    ) -> Result<Vec<QuarantineEntry>> {
        let limit = limit.clamp(1, MAX_LIMIT);
        // substr(bytes, start, count) is the same function on both backends.
        let preview = format!("substr(q.payload, 1, {PREVIEW_BYTES})");
        let filter = match scope {
            None => String::new(),
            Some(cots) => {
                let list: Vec<String> = cots.iter().map(i64::to_string).collect();
                let own = if list.is_empty() {
                    String::new()
                } else {
                    // Ids are integers formatted here, never caller text.
                    format!(
                        " OR q.device_id IN (SELECT d.id FROM devices d JOIN patients p \
                         ON p.id = d.patient_id WHERE p.cot_id IN ({}))",
                        list.join(", ")
                    )
                };
                format!(
                    "WHERE (q.device_id IS NULL OR NOT EXISTS \
                     (SELECT 1 FROM devices d WHERE d.id = q.device_id){own})"
                )
            }
        };
        let sql = format!(
            "SELECT q.id, q.received_at, q.topic, q.device_id, q.seq, q.reason, q.detail, \
             q.payload_size, {preview} AS preview FROM quarantine q {filter} \
             ORDER BY q.received_at DESC, q.id DESC LIMIT $1"
        );
        let rows = self.read(&sql, &[Val::I64(limit)]).await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// How many quarantine rows are stored.
    pub async fn count_quarantine(&self) -> Result<i64> {
        let row = self
            .read_one("SELECT count(*) AS n FROM quarantine", &[])
            .await?;
        row.map_or(Ok(0), |r| r.bigint("n"))
    }
}

/// Inserts quarantine rows in the transaction, as multi-row `VALUES`.
pub(crate) async fn insert(tx: &mut Tx, entries: &[NewQuarantine]) -> Result<()> {
    for chunk in entries.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO quarantine ({COLUMNS}) VALUES {}",
            values_list(chunk.len(), 8)
        );
        let mut vals = Vec::with_capacity(chunk.len() * 8);
        for e in chunk {
            vals.extend([
                Val::Ts(e.received_at),
                Val::Text(&e.topic),
                Val::OptText(e.device_id.as_deref()),
                Val::OptI64(e.seq),
                Val::Text(&e.reason),
                Val::Text(&e.detail),
                Val::Bytes(&e.payload),
                Val::I64(e.payload_size),
            ]);
        }
        tx.exec(&sql, &vals).await?;
    }
    Ok(())
}

fn entry_from_row(row: &impl Columns) -> Result<QuarantineEntry> {
    Ok(QuarantineEntry {
        id: row.bigint("id")?,
        received_at: row.ts("received_at")?,
        topic: row.text("topic")?,
        device_id: row.text_opt("device_id")?,
        seq: row.bigint_opt("seq")?,
        reason: row.text("reason")?,
        detail: row.text("detail")?,
        payload_size: row.bigint("payload_size")?,
        payload_preview: String::from_utf8_lossy(&row.bytes("preview")?).into_owned(),
    })
}
