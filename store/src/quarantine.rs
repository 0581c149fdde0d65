//! Quarantine: device input the gateway could not accept, kept for diagnosis.

use serde::Serialize;
use sqlx::{PgConnection, SqliteConnection};
use time::OffsetDateTime;

use crate::rows::{Columns, to_ms};
use crate::{Db, Result, Store, connect};

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

const PG_INSERT: &str = "\
INSERT INTO quarantine (received_at, topic, device_id, seq, reason, detail, payload, payload_size)
SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::int8[], $5::text[],
                     $6::text[], $7::bytea[], $8::int8[])";

const SQLITE_INSERT: &str = "\
INSERT INTO quarantine (received_at, topic, device_id, seq, reason, detail, payload, payload_size)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

impl Store {
    /// Stores quarantine rows in one transaction (the same rows can also ride along in a
    /// [`crate::CommitBatch`]).
    pub async fn record_quarantine(&self, entries: &[NewQuarantine]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        match &self.db {
            Db::Postgres(pg) => {
                let mut tx = pg.begin().await?;
                pg_insert(&mut tx, entries).await?;
                tx.commit().await?;
            }
            Db::Sqlite(pool) => {
                let mut tx = connect::sqlite_write(pool).await?;
                sqlite_insert(&mut tx, entries).await?;
                tx.commit().await?;
            }
        }
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
        let preview = match self.backend() {
            crate::Backend::Postgres => format!("substring(q.payload FROM 1 FOR {PREVIEW_BYTES})"),
            crate::Backend::Sqlite => format!("substr(q.payload, 1, {PREVIEW_BYTES})"),
        };
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
        match &self.db {
            Db::Postgres(pg) => {
                let mut c = pg.conn().await?;
                let rows = sqlx::query(&sql).bind(limit).fetch_all(&mut *c).await?;
                c.finish().await?;
                rows.iter().map(entry_from_row).collect()
            }
            Db::Sqlite(pool) => {
                let rows = sqlx::query(&sql).bind(limit).fetch_all(pool).await?;
                rows.iter().map(entry_from_row).collect()
            }
        }
    }

    /// How many quarantine rows are stored.
    pub async fn count_quarantine(&self) -> Result<i64> {
        let sql = "SELECT count(*) FROM quarantine";
        match &self.db {
            Db::Postgres(pg) => {
                let mut c = pg.conn().await?;
                let count = sqlx::query_scalar(sql).fetch_one(&mut *c).await?;
                c.finish().await?;
                Ok(count)
            }
            Db::Sqlite(pool) => Ok(sqlx::query_scalar(sql).fetch_one(pool).await?),
        }
    }
}

pub(crate) async fn pg_insert(conn: &mut PgConnection, entries: &[NewQuarantine]) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let received_at: Vec<OffsetDateTime> = entries.iter().map(|e| e.received_at).collect();
    let topic: Vec<&str> = entries.iter().map(|e| e.topic.as_str()).collect();
    let device_id: Vec<Option<&str>> = entries.iter().map(|e| e.device_id.as_deref()).collect();
    let seq: Vec<Option<i64>> = entries.iter().map(|e| e.seq).collect();
    let reason: Vec<&str> = entries.iter().map(|e| e.reason.as_str()).collect();
    let detail: Vec<&str> = entries.iter().map(|e| e.detail.as_str()).collect();
    let payload: Vec<&[u8]> = entries.iter().map(|e| e.payload.as_slice()).collect();
    let payload_size: Vec<i64> = entries.iter().map(|e| e.payload_size).collect();
    sqlx::query(PG_INSERT)
        .bind(received_at)
        .bind(topic)
        .bind(device_id)
        .bind(seq)
        .bind(reason)
        .bind(detail)
        .bind(payload)
        .bind(payload_size)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(crate) async fn sqlite_insert(
    conn: &mut SqliteConnection,
    entries: &[NewQuarantine],
) -> Result<()> {
    for e in entries {
        sqlx::query(SQLITE_INSERT)
            .bind(to_ms(e.received_at))
            .bind(&e.topic)
            .bind(&e.device_id)
            .bind(e.seq)
            .bind(&e.reason)
            .bind(&e.detail)
            .bind(&e.payload)
            .bind(e.payload_size)
            .execute(&mut *conn)
            .await?;
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
