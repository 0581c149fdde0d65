//! The audit log: every read of patient data and every change, by whom.

use serde::Serialize;
use time::OffsetDateTime;

use crate::rows::{Columns, to_ms};
use crate::{Db, Result, Store};

/// An audit record to write; the store stamps the time.
#[derive(Debug, Clone)]
pub struct NewAudit {
    /// Who: a user, a service account or a component (e.g. `gateway`).
    pub actor: String,
    /// What, as a machine code, e.g. `device.revoke` or `readings.read`.
    pub action: String,
    /// On what, e.g. `device:bp-0001` or `patient:42`.
    pub target: String,
    /// From where, e.g. the client address.
    pub source: Option<String>,
    pub detail: Option<String>,
}

/// A stored audit record.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub source: Option<String>,
    pub detail: Option<String>,
}

const MAX_LIMIT: i64 = 10_000;

const INSERT: &str = "\
INSERT INTO audit_log (at, actor, action, target, source, detail) VALUES ($1, $2, $3, $4, $5, $6)";

const LIST: &str = "\
SELECT id, at, actor, action, target, source, detail FROM audit_log
ORDER BY at DESC, id DESC LIMIT $1";

impl Store {
    /// Writes an audit record stamped with the current time.
    pub async fn record_audit(&self, e: &NewAudit) -> Result<()> {
        let now = OffsetDateTime::now_utc();
        match &self.db {
            Db::Postgres(pg) => {
                let mut c = pg.conn().await?;
                sqlx::query(INSERT)
                    .bind(now)
                    .bind(&e.actor)
                    .bind(&e.action)
                    .bind(&e.target)
                    .bind(&e.source)
                    .bind(&e.detail)
                    .execute(&mut *c)
                    .await?;
                c.finish().await?;
            }
            Db::Sqlite(pool) => {
                sqlx::query(INSERT)
                    .bind(to_ms(now))
                    .bind(&e.actor)
                    .bind(&e.action)
                    .bind(&e.target)
                    .bind(&e.source)
                    .bind(&e.detail)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// The newest audit records first, at most `limit` (clamped to 1..=10,000).
    pub async fn list_audit(&self, limit: i64) -> Result<Vec<AuditEntry>> {
        let limit = limit.clamp(1, MAX_LIMIT);
        match &self.db {
            Db::Postgres(pg) => {
                let mut c = pg.conn().await?;
                let rows = sqlx::query(LIST).bind(limit).fetch_all(&mut *c).await?;
                c.finish().await?;
                rows.iter().map(entry_from_row).collect()
            }
            Db::Sqlite(pool) => {
                let rows = sqlx::query(LIST).bind(limit).fetch_all(pool).await?;
                rows.iter().map(entry_from_row).collect()
            }
        }
    }
}

fn entry_from_row(row: &impl Columns) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: row.bigint("id")?,
        at: row.ts("at")?,
        actor: row.text("actor")?,
        action: row.text("action")?,
        target: row.text("target")?,
        source: row.text_opt("source")?,
        detail: row.text_opt("detail")?,
    })
}
