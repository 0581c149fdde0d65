//! The audit log: every read of patient data and every change, by whom, from where.
//!
//! The table is append-only for the application: database triggers refuse UPDATE, DELETE
//! (and TRUNCATE on PostgreSQL), so not even a bug in this crate can rewrite history.

use serde::Serialize;
use time::OffsetDateTime;

use crate::rows::Columns;
use crate::sql::Val;
use crate::{Result, Store};

/// An audit record to write; the store stamps the time.
#[derive(Debug, Clone, Default)]
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
    /// The patient whose data was read or changed, if any: feeds the patient's access history.
    pub patient_id: Option<i64>,
    /// The COT the entry concerns, if any: what an administrator of that COT may see.
    pub cot_id: Option<i64>,
    /// The COTs of the user an entry is about (a login, a change to the user): the entry is
    /// shown to the administrators of any of them.
    pub cot_ids: Vec<i64>,
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
    pub patient_id: Option<i64>,
    pub cot_id: Option<i64>,
    /// The COTs of the user the entry is about, if it is about one.
    pub cot_ids: Vec<i64>,
}

/// A query of the audit log; every filter is optional.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only entries of these COTs (`None`: all): their `cot_id`, or one of the COTs of the
    /// user they are about. With `include_unscoped`, entries about no COT and no user of a
    /// COT too (e.g. failed logins of unknown usernames).
    pub cot_ids: Option<Vec<i64>>,
    pub include_unscoped: bool,
    pub patient_id: Option<i64>,
    pub actor: Option<String>,
    /// An action, or a prefix ending in `.` (e.g. `auth.`).
    pub action: Option<String>,
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
    /// Entries with an id below this (paging backwards), newest first.
    pub before_id: Option<i64>,
    pub limit: i64,
}

const MAX_LIMIT: i64 = 10_000;

const COLUMNS: &str = "id, at, actor, action, target, source, detail, patient_id, cot_id, cot_ids";

/// `",1,4,"` for COTs 1 and 4 (so one COT matches `LIKE '%,1,%'`); `None` for none.
fn cot_list(ids: &[i64]) -> Option<String> {
    if ids.is_empty() {
        return None;
    }
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let inner: Vec<String> = sorted.iter().map(i64::to_string).collect();
    Some(format!(",{},", inner.join(",")))
}

fn parse_cot_list(text: Option<String>) -> Vec<i64> {
    text.map(|t| t.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

impl Store {
    /// Writes an audit record stamped with the current time.
    pub async fn record_audit(&self, e: &NewAudit) -> Result<()> {
        let now = OffsetDateTime::now_utc();
        let cots = cot_list(&e.cot_ids);
        let mut tx = self.tx().await?;
        tx.exec(
            "INSERT INTO audit_log \
             (at, actor, action, target, source, detail, patient_id, cot_id, cot_ids) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                Val::Ts(now),
                Val::Text(&e.actor),
                Val::Text(&e.action),
                Val::Text(&e.target),
                Val::OptText(e.source.as_deref()),
                Val::OptText(e.detail.as_deref()),
                Val::OptI64(e.patient_id),
                Val::OptI64(e.cot_id),
                Val::OptText(cots.as_deref()),
            ],
        )
        .await?;
        tx.commit().await
    }

    /// The newest audit records first, at most `limit` (clamped to 1..=10,000).
    pub async fn list_audit(&self, limit: i64) -> Result<Vec<AuditEntry>> {
        self.query_audit(&AuditQuery {
            limit,
            ..AuditQuery::default()
        })
        .await
    }

    /// Audit records matching `q`, newest first.
    pub async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut sql = format!("SELECT {COLUMNS} FROM audit_log WHERE 1 = 1");
        let mut vals: Vec<Val<'_>> = Vec::new();
        if let Some(cots) = &q.cot_ids {
            // Integers formatted here, never caller text.
            let list: Vec<String> = cots.iter().map(i64::to_string).collect();
            let scoped = if list.is_empty() {
                "1 = 0".to_owned()
            } else {
                let of_user: Vec<String> = list
                    .iter()
                    .map(|c| format!("cot_ids LIKE '%,{c},%'"))
                    .collect();
                format!(
                    "cot_id IN ({}) OR {}",
                    list.join(", "),
                    of_user.join(" OR ")
                )
            };
            if q.include_unscoped {
                sql.push_str(&format!(
                    " AND ({scoped} OR (cot_id IS NULL AND cot_ids IS NULL))"
                ));
            } else {
                sql.push_str(&format!(" AND ({scoped})"));
            }
        }
        if let Some(p) = q.patient_id {
            vals.push(Val::I64(p));
            sql.push_str(&format!(" AND patient_id = ${}", vals.len()));
        }
        if let Some(actor) = &q.actor {
            vals.push(Val::Text(actor));
            sql.push_str(&format!(" AND actor = ${}", vals.len()));
        }
        let prefix;
        if let Some(action) = &q.action {
            if action.ends_with('.') {
                prefix = format!("{}%", action.replace(['%', '_'], ""));
                vals.push(Val::Text(&prefix));
                sql.push_str(&format!(" AND action LIKE ${}", vals.len()));
            } else {
                vals.push(Val::Text(action));
                sql.push_str(&format!(" AND action = ${}", vals.len()));
            }
        }
        if let Some(from) = q.from {
            vals.push(Val::Ts(from));
            sql.push_str(&format!(" AND at >= ${}", vals.len()));
        }
        if let Some(to) = q.to {
            vals.push(Val::Ts(to));
            sql.push_str(&format!(" AND at < ${}", vals.len()));
        }
        if let Some(before) = q.before_id {
            vals.push(Val::I64(before));
            sql.push_str(&format!(" AND id < ${}", vals.len()));
        }
        vals.push(Val::I64(q.limit.clamp(1, MAX_LIMIT)));
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", vals.len()));
        let rows = self.read(&sql, &vals).await?;
        rows.iter().map(entry_from_row).collect()
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
        patient_id: row.bigint_opt("patient_id")?,
        cot_id: row.bigint_opt("cot_id")?,
        cot_ids: parse_cot_list(row.text_opt("cot_ids")?),
    })
}
