//! Alerts, their events (the live stream) and the engine's outbox.
//!
//! An alert has two independent states: the *condition* (`active` / `cleared`), which only
//! the engine moves, and the *workflow* (`new` → `acknowledged` → `resolved`), which nurses
//! move. At most one unresolved alert exists per (patient, rule): [`Store::trigger_alert`]
//! opens it or updates it in place. Every change appends an [`AlertEvent`] in the same
//! transaction; event ids become visible in increasing order, so a reader that asks for the
//! events after the last id it saw misses none ([`Store::alert_events_after`]).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::error::what;
use crate::rows::Columns;
use crate::sql::{AnyRow, Tx, Val};
use crate::{Result, Store, StoreError};

mod bulk;

/// How urgent an alert is; the order is the triage order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// 0 (info) to 4 (critical), as stored for ordering.
    pub fn rank(self) -> i64 {
        match self {
            Severity::Info => 0,
            Severity::Low => 1,
            Severity::Medium => 2,
            Severity::High => 3,
            Severity::Critical => 4,
        }
    }
}

/// Where a nurse is with an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workflow {
    New,
    Acknowledged,
    Resolved,
}

impl Workflow {
    pub fn as_str(self) -> &'static str {
        match self {
            Workflow::New => "new",
            Workflow::Acknowledged => "acknowledged",
            Workflow::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Workflow> {
        [Workflow::New, Workflow::Acknowledged, Workflow::Resolved]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// A reading that raised or updated an alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertReading {
    pub device_id: String,
    pub seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub measured_at: OffsetDateTime,
    pub value: Option<f64>,
}

/// What the engine found: a rule's condition holds for a patient.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub patient_id: i64,
    /// The rule's id in the plan, or a built-in one (`device-offline`, …).
    pub rule_id: String,
    /// threshold, trend, adherence, device, quality, retrospective.
    pub rule_kind: String,
    pub title: String,
    pub severity: Severity,
    pub plan_version: Option<i64>,
    pub metric: Option<String>,
    pub unit: Option<String>,
    /// The value that triggered (for worst/last); `None` for time-driven rules.
    pub value: Option<f64>,
    /// Whether a higher value is worse (for `worst_value`).
    pub higher_is_worse: bool,
    /// The readings behind it (all of a persistence run); empty for time-driven rules.
    /// A trigger whose readings are all linked to the alert already changes nothing, which
    /// makes re-evaluating a reading after a restart harmless.
    pub readings: Vec<AlertReading>,
    /// Now, by the engine's clock.
    pub at: OffsetDateTime,
    /// When a new (or newly worse) alert must be acknowledged by.
    pub due_at: Option<OffsetDateTime>,
    /// Free detail for the event (JSON text).
    pub detail: Option<String>,
    /// Opened by one reading that a repeat should confirm (stored as `confirmation =
    /// 'unconfirmed'` on a new alert; ignored by an update).
    pub unconfirmed: bool,
}

/// What a repeat measurement made of an unconfirmed alert.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Confirmation {
    /// The repeat held the band (or a worse one).
    Confirmed,
    /// The repeat fell in a milder band (or none): the alert takes `severity` and is due
    /// within its response time from now.
    Downgraded {
        severity: Severity,
        due_at: Option<OffsetDateTime>,
    },
}

/// What [`Store::trigger_alert`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum TriggerOutcome {
    /// A new alert.
    Opened { alert_id: i64 },
    /// The open alert was updated; `severity_raised` if the trigger was worse, `reactivated`
    /// if its condition had cleared.
    Updated {
        alert_id: i64,
        severity_raised: bool,
        reactivated: bool,
    },
    /// Nothing new: the readings were counted before, or the condition is already active.
    Unchanged { alert_id: i64 },
}

/// One write of the alert engine: [`Store::write_alerts`] commits several in one transaction.
#[derive(Debug, Clone)]
pub enum AlertWrite {
    /// [`Store::trigger_alert`].
    Trigger(Trigger),
    /// [`Store::clear_alert`].
    Clear {
        patient_id: i64,
        rule_id: String,
        at: OffsetDateTime,
        measured_at: Option<OffsetDateTime>,
        detail: Option<String>,
    },
    /// [`Store::confirm_alert`].
    Confirm {
        patient_id: i64,
        rule_id: String,
        at: OffsetDateTime,
        what: Confirmation,
        detail: Option<String>,
    },
}

/// What an [`AlertWrite`] did, variant for variant.
#[derive(Debug, Clone)]
pub enum AlertWritten {
    Trigger(TriggerOutcome),
    Clear(Option<i64>),
    Confirm(Option<AlertEvent>),
}

/// Most writes committed together by [`Store::write_alerts`].
pub const MAX_ALERT_WRITES: usize = 64;

impl AlertWritten {
    /// What a [`AlertWrite::Trigger`] did (an error for any other answer).
    pub fn into_trigger(self) -> Result<TriggerOutcome> {
        match self {
            AlertWritten::Trigger(outcome) => Ok(outcome),
            other => Err(unexpected(&other)),
        }
    }

    /// What a [`AlertWrite::Clear`] did (an error for any other answer).
    pub fn into_clear(self) -> Result<Option<i64>> {
        match self {
            AlertWritten::Clear(id) => Ok(id),
            other => Err(unexpected(&other)),
        }
    }

    /// What a [`AlertWrite::Confirm`] did (an error for any other answer).
    pub fn into_confirm(self) -> Result<Option<AlertEvent>> {
        match self {
            AlertWritten::Confirm(event) => Ok(event),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(written: &AlertWritten) -> StoreError {
    StoreError::Invalid(format!("alert write answered with {written:?}"))
}

/// A stored alert.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub id: i64,
    pub patient_id: i64,
    pub cot_id: i64,
    pub rule_id: String,
    pub rule_kind: String,
    pub title: String,
    pub severity: Severity,
    /// `active` or `cleared`.
    pub condition: String,
    pub workflow: Workflow,
    pub outcome: Option<String>,
    pub assignee: Option<String>,
    pub plan_version: Option<i64>,
    pub metric: Option<String>,
    pub unit: Option<String>,
    pub count: i64,
    pub first_value: Option<f64>,
    pub worst_value: Option<f64>,
    pub last_value: Option<f64>,
    /// `unconfirmed` (one reading, a repeat asked for), `confirmed`, `not_confirmed`
    /// (downgraded by the repeat), or `null` (a run of readings, or no repeat needed).
    pub confirmation: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_triggered_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_measured_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub cleared_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub acknowledged_at: Option<OffsetDateTime>,
    pub acknowledged_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub resolved_at: Option<OffsetDateTime>,
    pub resolved_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub due_at: Option<OffsetDateTime>,
    pub escalation_level: i64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub escalated_at: Option<OffsetDateTime>,
    /// How many interventions (calls, advice, …) are recorded on it.
    pub interventions: i64,
    /// When a call that did not reach the patient is to be retried (the alert is back in the
    /// queue, due then); cleared by the next intervention.
    #[serde(with = "time::serde::rfc3339::option")]
    pub retry_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// One transition of an alert.
#[derive(Debug, Clone, Serialize)]
pub struct AlertEvent {
    pub id: i64,
    pub alert_id: i64,
    pub patient_id: i64,
    pub cot_id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// opened, updated, severity_raised, reactivated, cleared, escalated, acknowledged,
    /// assigned, commented, resolved.
    pub kind: String,
    pub actor: String,
    /// The alert's severity after the event.
    pub severity: Severity,
    /// JSON text.
    pub detail: Option<String>,
}

/// Which alerts [`Store::list_alerts`] returns, most urgent first: severity, then
/// escalation level, then the oldest.
#[derive(Debug, Clone, Default)]
pub struct AlertQuery {
    /// Only these COTs (`None`: all; an empty list matches nothing).
    pub cot_ids: Option<Vec<i64>>,
    pub patient_id: Option<i64>,
    /// Only these workflow states (empty: all).
    pub workflow: Vec<Workflow>,
    /// Only at least this severity.
    pub min_severity: Option<Severity>,
    /// Only exactly this severity.
    pub severity: Option<Severity>,
    /// `active` or `cleared`.
    pub condition: Option<String>,
    /// Clamped to 1..=1,000.
    pub limit: i64,
    /// Skip this many (paging).
    pub offset: i64,
}

/// A committed batch the engine has not finished evaluating.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub id: i64,
    /// The alert partition of its patients (`store::leases`).
    pub partition: u32,
    pub min_received_at: OffsetDateTime,
    pub max_received_at: OffsetDateTime,
    pub patients: Vec<i64>,
}

const ALERT_COLUMNS: &str = "id, patient_id, cot_id, rule_id, rule_kind, title, severity, \
    condition, workflow, outcome, assignee, plan_version, metric, unit, count, first_value, \
    worst_value, last_value, confirmation, opened_at, last_triggered_at, last_measured_at, cleared_at, \
    acknowledged_at, acknowledged_by, resolved_at, resolved_by, due_at, escalation_level, \
    escalated_at, interventions, retry_at, updated_at";

const EVENT_COLUMNS: &str = "id, alert_id, patient_id, cot_id, at, kind, actor, severity, detail";

const MAX_ALERTS: i64 = 1_000;
const MAX_EVENTS: i64 = 10_000;

impl Store {
    /// Commits `writes` in one transaction, in order (the engine's group commit: the
    /// transactions that append alert events run one at a time, see `Tx::lock_events`, so one
    /// commit for many writes is what lets the engine keep up with a region's readings).
    /// One answer per write, in order. If one fails the transaction is rolled back and every
    /// write is tried again alone, so a failure is only that write's.
    pub async fn write_alerts(&self, writes: &[AlertWrite]) -> Vec<Result<AlertWritten>> {
        match self.write_alerts_at_once(writes).await {
            Ok(done) => done.into_iter().map(Ok).collect(),
            Err(e) if writes.len() <= 1 => vec![Err(e)],
            Err(_) => {
                let mut done = Vec::with_capacity(writes.len());
                for w in writes {
                    done.push(self.write_alert(w.clone()).await);
                }
                done
            }
        }
    }

    /// One [`AlertWrite`] in its own transaction.
    pub async fn write_alert(&self, write: AlertWrite) -> Result<AlertWritten> {
        let mut done = self
            .write_alerts_at_once(std::slice::from_ref(&write))
            .await?;
        done.pop()
            .ok_or_else(|| StoreError::Invalid("alert write gave no answer".into()))
    }

    async fn write_alerts_at_once(&self, writes: &[AlertWrite]) -> Result<Vec<AlertWritten>> {
        let mut tx = self.tx().await?;
        tx.lock_events().await?;
        if let Tx::Pg(pg) = &mut tx
            && writes.len() > 1
        {
            let (done, last_event) = bulk::write_pg(pg, writes).await?;
            tx.commit().await?;
            self.announce(last_event);
            return Ok(done);
        }
        let mut done = Vec::with_capacity(writes.len());
        let mut last_event = 0;
        for w in writes {
            let (written, event) = match w {
                AlertWrite::Trigger(t) => {
                    let (outcome, event) = trigger_in(&mut tx, t).await?;
                    (AlertWritten::Trigger(outcome), event)
                }
                AlertWrite::Clear {
                    patient_id,
                    rule_id,
                    at,
                    measured_at,
                    detail,
                } => {
                    let (id, event) = clear_in(
                        &mut tx,
                        *patient_id,
                        rule_id,
                        *at,
                        *measured_at,
                        detail.as_deref(),
                    )
                    .await?;
                    (AlertWritten::Clear(id), event)
                }
                AlertWrite::Confirm {
                    patient_id,
                    rule_id,
                    at,
                    what,
                    detail,
                } => {
                    let event =
                        confirm_in(&mut tx, *patient_id, rule_id, *at, *what, detail.as_deref())
                            .await?;
                    let id = event.as_ref().map_or(0, |e| e.id);
                    (AlertWritten::Confirm(event), id)
                }
            };
            last_event = last_event.max(event);
            done.push(written);
        }
        tx.commit().await?;
        self.announce(last_event);
        Ok(done)
    }

    /// Opens the (patient, rule) alert or updates the open one, linking the trigger's
    /// readings, in one transaction with its event.
    pub async fn trigger_alert(&self, t: &Trigger) -> Result<TriggerOutcome> {
        self.write_alert(AlertWrite::Trigger(t.clone()))
            .await?
            .into_trigger()
    }

    /// Marks the condition of the open (patient, rule) alert cleared. Returns the alert id
    /// if it was active.
    pub async fn clear_alert(
        &self,
        patient_id: i64,
        rule_id: &str,
        at: OffsetDateTime,
        measured_at: Option<OffsetDateTime>,
        detail: Option<&str>,
    ) -> Result<Option<i64>> {
        let write = AlertWrite::Clear {
            patient_id,
            rule_id: rule_id.to_owned(),
            at,
            measured_at,
            detail: detail.map(str::to_owned),
        };
        self.write_alert(write).await?.into_clear()
    }

    /// new → acknowledged.
    pub async fn acknowledge_alert(
        &self,
        alert_id: i64,
        actor: &str,
        at: OffsetDateTime,
    ) -> Result<(Alert, AlertEvent)> {
        self.transition(
            alert_id,
            actor,
            at,
            "acknowledged",
            None,
            |a| match a.workflow {
                Workflow::New => Ok(()),
                Workflow::Acknowledged => Err(format!("alert {} is already acknowledged", a.id)),
                Workflow::Resolved => Err(format!("alert {} is resolved", a.id)),
            },
            "UPDATE alerts SET workflow = 'acknowledged', acknowledged_at = $2, \
                 acknowledged_by = $3, updated_at = $2 WHERE id = $1",
            &[Val::Ts(at), Val::Text(actor)],
        )
        .await
    }

    /// Assigns the alert to a nurse (`None` unassigns). Not on a resolved alert.
    pub async fn assign_alert(
        &self,
        alert_id: i64,
        actor: &str,
        assignee: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<(Alert, AlertEvent)> {
        let detail = serde_json::json!({ "assignee": assignee }).to_string();
        self.transition(
            alert_id,
            actor,
            at,
            "assigned",
            Some(&detail),
            |a| {
                if a.workflow == Workflow::Resolved {
                    Err(format!("alert {} is resolved", a.id))
                } else {
                    Ok(())
                }
            },
            "UPDATE alerts SET assignee = $2, updated_at = $3 WHERE id = $1",
            &[Val::OptText(assignee), Val::Ts(at)],
        )
        .await
    }

    /// Adds a comment (any state).
    pub async fn comment_alert(
        &self,
        alert_id: i64,
        actor: &str,
        text: &str,
        at: OffsetDateTime,
    ) -> Result<(Alert, AlertEvent)> {
        if text.trim().is_empty() {
            return Err(StoreError::Invalid("an empty comment".into()));
        }
        let detail = serde_json::json!({ "text": text }).to_string();
        self.transition(
            alert_id,
            actor,
            at,
            "commented",
            Some(&detail),
            |_| Ok(()),
            "UPDATE alerts SET updated_at = $2 WHERE id = $1",
            &[Val::Ts(at)],
        )
        .await
    }

    /// new or acknowledged → resolved, with an outcome. Records the resolution as given;
    /// a nurse's resolution goes through [`Store::resolve_alert_after_intervention`].
    pub async fn resolve_alert(
        &self,
        alert_id: i64,
        actor: &str,
        outcome: &str,
        note: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<(Alert, AlertEvent)> {
        self.resolve(alert_id, actor, outcome, note, at, false)
            .await
    }

    /// [`Store::resolve_alert`], refused ([`StoreError::InvalidTransition`]) for an alert of
    /// medium severity or above on which no intervention is recorded: what was done about it
    /// must be on record before it leaves the queue. Checked in the resolving transaction.
    pub async fn resolve_alert_after_intervention(
        &self,
        alert_id: i64,
        actor: &str,
        outcome: &str,
        note: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<(Alert, AlertEvent)> {
        self.resolve(alert_id, actor, outcome, note, at, true).await
    }

    async fn resolve(
        &self,
        alert_id: i64,
        actor: &str,
        outcome: &str,
        note: Option<&str>,
        at: OffsetDateTime,
        needs_intervention: bool,
    ) -> Result<(Alert, AlertEvent)> {
        let detail = serde_json::json!({ "outcome": outcome, "note": note }).to_string();
        self.transition(
            alert_id,
            actor,
            at,
            "resolved",
            Some(&detail),
            |a| {
                if a.workflow == Workflow::Resolved {
                    Err(format!("alert {} is already resolved", a.id))
                } else if needs_intervention
                    && a.severity >= Severity::Medium
                    && a.interventions == 0
                {
                    Err(format!(
                        "alert {} is {}: record an intervention (call, advice, GP informed, \
                         home visit, emergency services) before resolving it",
                        a.id,
                        a.severity.as_str()
                    ))
                } else {
                    Ok(())
                }
            },
            "UPDATE alerts SET workflow = 'resolved', outcome = $2, resolved_at = $3, retry_at = NULL, \
                 resolved_by = $4, updated_at = $3, \
                 acknowledged_at = COALESCE(acknowledged_at, $3), \
                 acknowledged_by = COALESCE(acknowledged_by, $4) WHERE id = $1",
            &[Val::Text(outcome), Val::Ts(at), Val::Text(actor)],
        )
        .await
    }

    /// Escalates an unacknowledged alert past its due time: the level goes up by one and the
    /// next deadline is `next_due`. Does nothing (returns `None`) if the alert was
    /// acknowledged or resolved meanwhile, or is not due yet at `at`.
    pub async fn escalate_alert(
        &self,
        alert_id: i64,
        at: OffsetDateTime,
        next_due: OffsetDateTime,
    ) -> Result<Option<AlertEvent>> {
        let mut tx = self.tx().await?;
        tx.lock_events().await?;
        let Some(a) = get_alert_in(&mut tx, alert_id).await? else {
            tx.commit().await?;
            return Ok(None);
        };
        if a.workflow != Workflow::New || a.due_at.is_none_or(|due| due > at) {
            tx.commit().await?;
            return Ok(None);
        }
        let level = a.escalation_level + 1;
        tx.exec(
            "UPDATE alerts SET escalation_level = $2, escalated_at = $3, due_at = $4, \
             updated_at = $3 WHERE id = $1",
            &[
                Val::I64(a.id),
                Val::I64(level),
                Val::Ts(at),
                Val::Ts(next_due),
            ],
        )
        .await?;
        let overdue = (at - a.due_at.unwrap_or(at)).whole_seconds();
        let detail = serde_json::json!({ "level": level, "overdue_s": overdue }).to_string();
        let event = insert_event_returning(
            &mut tx,
            EventRow {
                alert_id: a.id,
                patient_id: a.patient_id,
                cot_id: a.cot_id,
                at,
                kind: "escalated",
                actor: "engine",
                severity: a.severity,
                detail: Some(&detail),
            },
        )
        .await?;
        tx.commit().await?;
        self.announce(event.id);
        Ok(Some(event))
    }

    /// Records what a repeat made of the newest unconfirmed (patient, rule) alert: confirmed,
    /// or downgraded (severity and due time replaced; on a resolved alert only the record).
    /// Event `confirmed` or `downgraded`. `None` if there is no such alert (already settled).
    pub async fn confirm_alert(
        &self,
        patient_id: i64,
        rule_id: &str,
        at: OffsetDateTime,
        what: Confirmation,
        detail: Option<&str>,
    ) -> Result<Option<AlertEvent>> {
        let write = AlertWrite::Confirm {
            patient_id,
            rule_id: rule_id.to_owned(),
            at,
            what,
            detail: detail.map(str::to_owned),
        };
        self.write_alert(write).await?.into_confirm()
    }

    /// When the newest (patient, rule) alert was opened, resolved or not.
    pub async fn last_alert_opened(
        &self,
        patient_id: i64,
        rule_id: &str,
    ) -> Result<Option<OffsetDateTime>> {
        let rows = self
            .read(
                "SELECT opened_at FROM alerts WHERE patient_id = $1 AND rule_id = $2 \
                 ORDER BY opened_at DESC LIMIT 1",
                &[Val::I64(patient_id), Val::Text(rule_id)],
            )
            .await?;
        rows.first().map(|r| r.ts("opened_at")).transpose()
    }

    /// Unacknowledged alerts whose due time has passed at `at`, oldest deadline first.
    pub async fn overdue_alerts(&self, at: OffsetDateTime, limit: i64) -> Result<Vec<Alert>> {
        let sql = format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE workflow = 'new' AND due_at <= $1 \
             ORDER BY due_at LIMIT $2"
        );
        self.read(&sql, &[Val::Ts(at), Val::I64(limit.clamp(1, MAX_ALERTS))])
            .await?
            .iter()
            .map(alert_from_row)
            .collect()
    }

    /// One alert.
    pub async fn get_alert(&self, alert_id: i64) -> Result<Option<Alert>> {
        let sql = format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1");
        self.read(&sql, &[Val::I64(alert_id)])
            .await?
            .first()
            .map(alert_from_row)
            .transpose()
    }

    /// The unresolved alerts of a patient.
    pub async fn open_alerts(&self, patient_id: i64) -> Result<Vec<Alert>> {
        let sql = format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE patient_id = $1 AND workflow <> 'resolved' \
             ORDER BY id"
        );
        self.read(&sql, &[Val::I64(patient_id)])
            .await?
            .iter()
            .map(alert_from_row)
            .collect()
    }

    /// Alerts matching `q`, most urgent first (severity, escalation level, oldest).
    pub async fn list_alerts(&self, q: &AlertQuery) -> Result<Vec<Alert>> {
        let mut sql = format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE 1 = 1");
        let mut vals: Vec<Val<'_>> = Vec::new();
        let param = |vals: &mut Vec<Val<'_>>| format!("${}", vals.len() + 1);
        if let Some(cots) = &q.cot_ids {
            if cots.is_empty() {
                return Ok(Vec::new());
            }
            let list: Vec<String> = cots.iter().map(i64::to_string).collect();
            // Ids are integers formatted here, never caller text.
            sql.push_str(&format!(" AND cot_id IN ({})", list.join(", ")));
        }
        if let Some(p) = q.patient_id {
            let n = param(&mut vals);
            sql.push_str(&format!(" AND patient_id = {n}"));
            vals.push(Val::I64(p));
        }
        if !q.workflow.is_empty() {
            let list: Vec<String> = q
                .workflow
                .iter()
                .map(|w| format!("'{}'", w.as_str()))
                .collect();
            sql.push_str(&format!(" AND workflow IN ({})", list.join(", ")));
        }
        if let Some(s) = q.min_severity {
            let n = param(&mut vals);
            sql.push_str(&format!(" AND severity_rank >= {n}"));
            vals.push(Val::I64(s.rank()));
        }
        if let Some(s) = q.severity {
            let n = param(&mut vals);
            sql.push_str(&format!(" AND severity_rank = {n}"));
            vals.push(Val::I64(s.rank()));
        }
        if let Some(c) = &q.condition {
            let n = param(&mut vals);
            sql.push_str(&format!(" AND condition = {n}"));
            vals.push(Val::Text(c));
        }
        let n = param(&mut vals);
        let m = format!("${}", vals.len() + 2);
        sql.push_str(&format!(
            " ORDER BY severity_rank DESC, escalation_level DESC, opened_at, id LIMIT {n} OFFSET {m}"
        ));
        vals.push(Val::I64(q.limit.clamp(1, MAX_ALERTS)));
        vals.push(Val::I64(q.offset.max(0)));
        self.read(&sql, &vals)
            .await?
            .iter()
            .map(alert_from_row)
            .collect()
    }

    /// The events of one alert, oldest first.
    pub async fn alert_events(&self, alert_id: i64) -> Result<Vec<AlertEvent>> {
        let sql =
            format!("SELECT {EVENT_COLUMNS} FROM alert_events WHERE alert_id = $1 ORDER BY id");
        self.read(&sql, &[Val::I64(alert_id)])
            .await?
            .iter()
            .map(event_from_row)
            .collect()
    }

    /// The readings linked to an alert, oldest first.
    pub async fn alert_readings(&self, alert_id: i64) -> Result<Vec<AlertReading>> {
        self.read(
            "SELECT device_id, seq, measured_at, value FROM alert_readings WHERE alert_id = $1 \
             ORDER BY measured_at, device_id, seq",
            &[Val::I64(alert_id)],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(AlertReading {
                device_id: r.text("device_id")?,
                seq: r.bigint("seq")?,
                measured_at: r.ts("measured_at")?,
                value: r.double_opt("value")?,
            })
        })
        .collect()
    }

    /// Events with an id above `after`, oldest first, at most `limit` (clamped to
    /// 1..=10,000), only of `cot_ids` when given.
    pub async fn alert_events_after(
        &self,
        after: i64,
        cot_ids: Option<&[i64]>,
        limit: i64,
    ) -> Result<Vec<AlertEvent>> {
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM alert_events WHERE id > $1");
        if let Some(cots) = cot_ids {
            if cots.is_empty() {
                return Ok(Vec::new());
            }
            let list: Vec<String> = cots.iter().map(i64::to_string).collect();
            sql.push_str(&format!(" AND cot_id IN ({})", list.join(", ")));
        }
        sql.push_str(" ORDER BY id LIMIT $2");
        self.read(
            &sql,
            &[Val::I64(after), Val::I64(limit.clamp(1, MAX_EVENTS))],
        )
        .await?
        .iter()
        .map(event_from_row)
        .collect()
    }

    /// The newest event id (0 when there is none).
    pub async fn last_alert_event_id(&self) -> Result<i64> {
        Ok(self
            .read("SELECT COALESCE(MAX(id), 0) AS id FROM alert_events", &[])
            .await?
            .first()
            .map(|r| r.bigint("id"))
            .transpose()?
            .unwrap_or(0))
    }

    /// Changes whenever an alert event is written, by this process or (on PostgreSQL) by any
    /// node on the same database (see `store::cluster`); the value is the newest id announced.
    /// The live stream waits on it, and polls as well, since a wake-up from another node can
    /// be lost (e.g. while the listener reconnects).
    pub fn alert_feed(&self) -> watch::Receiver<i64> {
        self.listen();
        self.alert_feed.subscribe()
    }

    pub(crate) fn announce(&self, event_id: i64) {
        announce_to(&self.alert_feed, event_id);
    }

    /// Batches committed with `outbox: true` that the engine has not marked done.
    pub async fn pending_outbox(&self) -> Result<Vec<OutboxEntry>> {
        self.pending_outbox_in(crate::leases::ALL_PARTITIONS, None)
            .await
    }

    /// The pending outbox entries of the partitions in `partitions` (a mask, see
    /// `store::leases`), oldest first; with `not_from`, only those another node wrote.
    pub async fn pending_outbox_in(
        &self,
        partitions: u64,
        not_from: Option<&str>,
    ) -> Result<Vec<OutboxEntry>> {
        if partitions == 0 {
            return Ok(Vec::new());
        }
        let mut sql = String::from(
            "SELECT id, CAST(part AS BIGINT) AS part, min_received_at, max_received_at, patients \
             FROM alert_outbox",
        );
        let mut clauses = Vec::new();
        if partitions != crate::leases::ALL_PARTITIONS {
            // Integers we made: safe to inline.
            let list: Vec<String> = crate::leases::partitions_in(partitions)
                .map(|p| p.to_string())
                .collect();
            clauses.push(format!("part IN ({})", list.join(", ")));
        }
        let mut args = Vec::new();
        if let Some(node) = not_from {
            clauses.push("node <> $1".to_string());
            args.push(Val::Text(node));
        }
        if !clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&clauses.join(" AND "));
        }
        sql.push_str(" ORDER BY id");
        self.read(&sql, &args)
            .await?
            .iter()
            .map(|r| {
                let patients = r
                    .text("patients")?
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        p.parse::<i64>()
                            .map_err(|_| StoreError::decode(format!("outbox patient {p:?}")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(OutboxEntry {
                    id: r.bigint("id")?,
                    partition: u32::try_from(r.bigint("part")?).unwrap_or(0),
                    min_received_at: r.ts("min_received_at")?,
                    max_received_at: r.ts("max_received_at")?,
                    patients,
                })
            })
            .collect()
    }

    /// Marks outbox entries evaluated.
    pub async fn finish_outbox(&self, ids: &[i64]) -> Result<()> {
        for chunk in ids.chunks(500) {
            let list: Vec<String> = chunk.iter().map(i64::to_string).collect();
            let mut tx = self.tx().await?;
            tx.exec(
                &format!("DELETE FROM alert_outbox WHERE id IN ({})", list.join(", ")),
                &[],
            )
            .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// The latest measurement time per (patient, kind) since `since`: where the engine's
    /// adherence clocks start after a restart.
    pub async fn last_measured(
        &self,
        since: OffsetDateTime,
    ) -> Result<Vec<(i64, String, OffsetDateTime)>> {
        self.read(
            "SELECT patient_id, kind, MAX(measured_at) AS last FROM readings \
             WHERE measured_at >= $1 GROUP BY patient_id, kind",
            &[Val::Ts(since)],
        )
        .await?
        .iter()
        .map(|r| Ok((r.bigint("patient_id")?, r.text("kind")?, r.ts("last")?)))
        .collect()
    }
}

/// One outbox row: the readings of one alert partition of a committed batch.
pub(crate) struct OutboxRow {
    pub partition: u32,
    pub min: OffsetDateTime,
    pub max: OffsetDateTime,
    pub readings: i64,
    /// The patients, comma-separated.
    pub patients: String,
}

/// Writes the outbox rows of a batch inside the commit transaction (see
/// `CommitBatch::outbox`), naming the node that committed it, and returns their ids, in
/// `rows`' order (one per partition). On
/// PostgreSQL in one statement: a batch of a few hundred readings touches a dozen partitions,
/// and a round trip each was a tenth of the ingest transaction's statements.
pub(crate) async fn insert_outbox(tx: &mut Tx, node: &str, rows: &[OutboxRow]) -> Result<Vec<i64>> {
    if let Tx::Pg(pg) = tx {
        let parts: Vec<i64> = rows.iter().map(|r| i64::from(r.partition)).collect();
        let written: Vec<(i64, i64)> = sqlx::query_as(
            "INSERT INTO alert_outbox \
             (min_received_at, max_received_at, readings, patients, part, node) \
             SELECT v.min, v.max, v.readings, v.patients, v.part, $6 \
             FROM UNNEST($1::timestamptz[], $2::timestamptz[], $3::int8[], $4::text[], \
             $5::int8[]) AS v(min, max, readings, patients, part) RETURNING id, part::int8",
        )
        .bind(rows.iter().map(|r| r.min).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.max).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.readings).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.patients.as_str()).collect::<Vec<_>>())
        .bind(&parts)
        .bind(node)
        .fetch_all(&mut **pg)
        .await?;
        let ids: std::collections::HashMap<i64, i64> =
            written.into_iter().map(|(id, part)| (part, id)).collect();
        return parts
            .iter()
            .map(|p| {
                ids.get(p).copied().ok_or_else(|| {
                    StoreError::decode(format!("no outbox row came back for partition {p}"))
                })
            })
            .collect();
    }
    let mut ids = Vec::with_capacity(rows.len());
    for row in rows {
        let written = tx
            .one(
                "INSERT INTO alert_outbox \
                 (min_received_at, max_received_at, readings, patients, part, node) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[
                    Val::Ts(row.min),
                    Val::Ts(row.max),
                    Val::I64(row.readings),
                    Val::Text(&row.patients),
                    Val::I64(i64::from(row.partition)),
                    Val::Text(node),
                ],
            )
            .await?
            .ok_or_else(|| StoreError::decode("INSERT … RETURNING gave no row".into()))?;
        ids.push(written.bigint("id")?);
    }
    Ok(ids)
}

fn latest(readings: &[AlertReading]) -> Option<OffsetDateTime> {
    readings.iter().map(|r| r.measured_at).max()
}

async fn open_alert(tx: &mut Tx, patient_id: i64, rule_id: &str) -> Result<Option<Alert>> {
    let sql = format!(
        "SELECT {ALERT_COLUMNS} FROM alerts WHERE patient_id = $1 AND rule_id = $2 \
         AND workflow <> 'resolved'"
    );
    tx.one(&sql, &[Val::I64(patient_id), Val::Text(rule_id)])
        .await?
        .as_ref()
        .map(alert_from_row)
        .transpose()
}

pub(crate) async fn get_alert_in(tx: &mut Tx, alert_id: i64) -> Result<Option<Alert>> {
    let sql = format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1");
    tx.one(&sql, &[Val::I64(alert_id)])
        .await?
        .as_ref()
        .map(alert_from_row)
        .transpose()
}

/// Links readings to an alert; returns how many were not linked before.
async fn link_readings(tx: &mut Tx, alert_id: i64, readings: &[AlertReading]) -> Result<u64> {
    let mut added = 0;
    for r in readings {
        added += tx
            .exec(
                "INSERT INTO alert_readings (alert_id, device_id, seq, measured_at, value) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[
                    Val::I64(alert_id),
                    Val::Text(&r.device_id),
                    Val::I64(r.seq),
                    Val::Ts(r.measured_at),
                    Val::F64(r.value),
                ],
            )
            .await?;
    }
    Ok(added)
}

pub(crate) struct EventRow<'a> {
    pub(crate) alert_id: i64,
    pub(crate) patient_id: i64,
    pub(crate) cot_id: i64,
    pub(crate) at: OffsetDateTime,
    pub(crate) kind: &'a str,
    pub(crate) actor: &'a str,
    pub(crate) severity: Severity,
    pub(crate) detail: Option<&'a str>,
}

pub(crate) async fn insert_event_returning(tx: &mut Tx, e: EventRow<'_>) -> Result<AlertEvent> {
    let sql = format!(
        "INSERT INTO alert_events (alert_id, patient_id, cot_id, at, kind, actor, severity, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {EVENT_COLUMNS}"
    );
    let row = tx
        .one(
            &sql,
            &[
                Val::I64(e.alert_id),
                Val::I64(e.patient_id),
                Val::I64(e.cot_id),
                Val::Ts(e.at),
                Val::Text(e.kind),
                Val::Text(e.actor),
                Val::Text(e.severity.as_str()),
                Val::OptText(e.detail),
            ],
        )
        .await?
        .ok_or_else(|| StoreError::decode("INSERT … RETURNING gave no row".into()))?;
    event_from_row(&row)
}

async fn insert_event(tx: &mut Tx, e: EventRow<'_>) -> Result<i64> {
    Ok(insert_event_returning(tx, e).await?.id)
}

impl Store {
    /// A nurse's workflow change: checks `allowed` on the current alert, applies `apply`,
    /// appends the event, all in one transaction. [`StoreError::NotFound`] for an unknown
    /// alert, [`StoreError::InvalidTransition`] when `allowed` refuses.
    #[allow(clippy::too_many_arguments)]
    async fn transition<'a>(
        &self,
        alert_id: i64,
        actor: &'a str,
        at: OffsetDateTime,
        kind: &'a str,
        detail: Option<&'a str>,
        allowed: impl FnOnce(&Alert) -> std::result::Result<(), String>,
        update: &str,
        vals: &[Val<'_>],
    ) -> Result<(Alert, AlertEvent)> {
        let mut tx = self.tx().await?;
        tx.lock_events().await?;
        let Some(before) = get_alert_in(&mut tx, alert_id).await? else {
            return Err(StoreError::NotFound {
                what: what("alert", alert_id),
            });
        };
        allowed(&before).map_err(StoreError::InvalidTransition)?;
        let mut all = vec![Val::I64(alert_id)];
        all.extend_from_slice(vals);
        tx.exec(update, &all).await?;
        let event = insert_event_returning(
            &mut tx,
            EventRow {
                alert_id,
                patient_id: before.patient_id,
                cot_id: before.cot_id,
                at,
                kind,
                actor,
                severity: before.severity,
                detail,
            },
        )
        .await?;
        let after = get_alert_in(&mut tx, alert_id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: what("alert", alert_id),
            })?;
        tx.commit().await?;
        self.announce(event.id);
        Ok((after, event))
    }
}

/// How many readings a new alert counts.
pub(crate) fn reading_count(t: &Trigger) -> i64 {
    i64::try_from(t.readings.len().max(1)).unwrap_or(i64::MAX)
}

/// The value a new alert shows first: its first reading's (an average's, its mean).
pub(crate) fn first_value(t: &Trigger) -> Option<f64> {
    t.readings
        .first()
        .and_then(|r| r.value)
        .filter(|_| t.rule_kind != "average")
        .or(t.value)
}

/// Whether a reading measured at `measured_at` clears the open alert's condition.
pub(crate) fn clears(open: &Alert, measured_at: Option<OffsetDateTime>) -> bool {
    // An older reading than the one that last moved the condition cannot clear it.
    open.condition == "active"
        && !matches!((open.last_measured_at, measured_at), (Some(last), Some(m)) if m < last)
}

/// The open alert as a clear leaves it: what the one-by-one `UPDATE` writes.
pub(crate) fn cleared(a: &mut Alert, at: OffsetDateTime, measured_at: Option<OffsetDateTime>) {
    "cleared".clone_into(&mut a.condition);
    a.cleared_at = Some(at);
    a.updated_at = at;
    a.last_measured_at = measured_at.or(a.last_measured_at);
}

/// The severity and due time a downgraded unconfirmed alert takes (never worse than it was;
/// a resolved alert is due no more).
pub(crate) fn downgraded(
    a: &Alert,
    severity: Severity,
    due_at: Option<OffsetDateTime>,
) -> (Severity, Option<OffsetDateTime>) {
    (
        severity.min(a.severity),
        due_at.filter(|_| a.workflow != Workflow::Resolved),
    )
}

/// How a trigger changes the open alert of its (patient, rule), shared by the one-by-one and
/// the bulk writes.
pub(crate) struct TriggerUpdate {
    pub(crate) added: i64,
    pub(crate) worst: Option<f64>,
    pub(crate) last_measured: Option<OffsetDateTime>,
    pub(crate) severity: Severity,
    pub(crate) workflow: Workflow,
    pub(crate) due_at: Option<OffsetDateTime>,
    pub(crate) severity_raised: bool,
    pub(crate) reactivated: bool,
}

impl TriggerUpdate {
    /// `None`: nothing changes (no new reading linked, condition still active).
    pub(crate) fn of(open: &Alert, t: &Trigger, new_links: u64) -> Option<TriggerUpdate> {
        let reactivated = open.condition == "cleared";
        if new_links == 0 && !reactivated {
            return None;
        }
        let severity_raised = t.severity > open.severity;
        // A worse band puts the alert back in the queue: it needs acknowledging again,
        // within the response time of its new severity.
        let (workflow, due_at) = if severity_raised {
            (Workflow::New, t.due_at)
        } else {
            (open.workflow, open.due_at)
        };
        Some(TriggerUpdate {
            added: i64::try_from(new_links.max(1)).unwrap_or(i64::MAX),
            worst: worst_of(open.worst_value, t),
            last_measured: match (open.last_measured_at, latest(&t.readings)) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            severity: open.severity.max(t.severity),
            workflow,
            due_at,
            severity_raised,
            reactivated,
        })
    }

    /// The open alert as the update leaves it: what the one-by-one `UPDATE` writes.
    pub(crate) fn apply(&self, a: &mut Alert, t: &Trigger) {
        a.count = a.count.saturating_add(self.added);
        a.last_value = t.value.or(a.last_value);
        a.worst_value = self.worst;
        a.last_triggered_at = t.at;
        a.last_measured_at = self.last_measured;
        a.severity = self.severity;
        "active".clone_into(&mut a.condition);
        a.cleared_at = None;
        a.workflow = self.workflow;
        a.due_at = self.due_at;
        a.updated_at = t.at;
    }

    pub(crate) fn outcome(&self, alert_id: i64) -> TriggerOutcome {
        TriggerOutcome::Updated {
            alert_id,
            severity_raised: self.severity_raised,
            reactivated: self.reactivated,
        }
    }

    pub(crate) fn event_kind(&self) -> &'static str {
        if self.severity_raised {
            "severity_raised"
        } else if self.reactivated {
            "reactivated"
        } else {
            "updated"
        }
    }
}

/// The worst of `so_far` and every value of the trigger (its readings and its own value): an
/// alert opened by a run shows the run's worst, not the confirming reading's.
fn worst_of(so_far: Option<f64>, t: &Trigger) -> Option<f64> {
    // An average's readings are its evidence, not its value: its worst is the worst mean.
    let per_reading = t.rule_kind != "average";
    t.readings
        .iter()
        .filter(|_| per_reading)
        .filter_map(|r| r.value)
        .chain(t.value)
        .chain(so_far)
        .reduce(|a, b| {
            if t.higher_is_worse {
                a.max(b)
            } else {
                a.min(b)
            }
        })
}

fn alert_from_row(r: &AnyRow) -> Result<Alert> {
    let severity = r.text("severity")?;
    let workflow = r.text("workflow")?;
    Ok(Alert {
        id: r.bigint("id")?,
        patient_id: r.bigint("patient_id")?,
        cot_id: r.bigint("cot_id")?,
        rule_id: r.text("rule_id")?,
        rule_kind: r.text("rule_kind")?,
        title: r.text("title")?,
        severity: Severity::parse(&severity)
            .ok_or_else(|| StoreError::decode(format!("alert severity {severity:?}")))?,
        condition: r.text("condition")?,
        workflow: Workflow::parse(&workflow)
            .ok_or_else(|| StoreError::decode(format!("alert workflow {workflow:?}")))?,
        outcome: r.text_opt("outcome")?,
        assignee: r.text_opt("assignee")?,
        plan_version: r.bigint_opt("plan_version")?,
        metric: r.text_opt("metric")?,
        unit: r.text_opt("unit")?,
        count: r.bigint("count")?,
        first_value: r.double_opt("first_value")?,
        worst_value: r.double_opt("worst_value")?,
        last_value: r.double_opt("last_value")?,
        confirmation: r.text_opt("confirmation")?,
        opened_at: r.ts("opened_at")?,
        last_triggered_at: r.ts("last_triggered_at")?,
        last_measured_at: r.ts_opt("last_measured_at")?,
        cleared_at: r.ts_opt("cleared_at")?,
        acknowledged_at: r.ts_opt("acknowledged_at")?,
        acknowledged_by: r.text_opt("acknowledged_by")?,
        resolved_at: r.ts_opt("resolved_at")?,
        resolved_by: r.text_opt("resolved_by")?,
        due_at: r.ts_opt("due_at")?,
        escalation_level: r.bigint("escalation_level")?,
        escalated_at: r.ts_opt("escalated_at")?,
        interventions: r.bigint("interventions")?,
        retry_at: r.ts_opt("retry_at")?,
        updated_at: r.ts("updated_at")?,
    })
}

fn event_from_row(r: &AnyRow) -> Result<AlertEvent> {
    let severity = r.text("severity")?;
    Ok(AlertEvent {
        id: r.bigint("id")?,
        alert_id: r.bigint("alert_id")?,
        patient_id: r.bigint("patient_id")?,
        cot_id: r.bigint("cot_id")?,
        at: r.ts("at")?,
        kind: r.text("kind")?,
        actor: r.text("actor")?,
        severity: Severity::parse(&severity)
            .ok_or_else(|| StoreError::decode(format!("event severity {severity:?}")))?,
        detail: r.text_opt("detail")?,
    })
}

/// Raises the alert feed to `event_id` (waking its subscribers) if it is newer.
/// [`Store::trigger_alert`] inside `tx` (events locked): the outcome and the newest event id
/// written (0: none).
async fn trigger_in(tx: &mut Tx, t: &Trigger) -> Result<(TriggerOutcome, i64)> {
    let open = open_alert(tx, t.patient_id, &t.rule_id).await?;
    let (outcome, event) = match open {
        None => {
            let Some(cot) = tx
                .one(
                    "SELECT cot_id FROM patients WHERE id = $1",
                    &[Val::I64(t.patient_id)],
                )
                .await?
            else {
                return Err(StoreError::NotFound {
                    what: what("patient", t.patient_id),
                });
            };
            let cot_id = cot.bigint("cot_id")?;
            let sql = "INSERT INTO alerts (patient_id, cot_id, rule_id, rule_kind, title, \
                    severity, severity_rank, condition, workflow, plan_version, metric, unit, \
                    count, first_value, worst_value, last_value, opened_at, last_triggered_at, \
                    last_measured_at, due_at, updated_at, confirmation) VALUES ($1, $2, $3, $4, \
                    $5, $6, $7, 'active', 'new', $8, $9, $10, $11, $16, $17, $12, $13, $13, $14, \
                    $15, $13, $18) RETURNING id";
            let row = tx
                .one(
                    sql,
                    &[
                        Val::I64(t.patient_id),
                        Val::I64(cot_id),
                        Val::Text(&t.rule_id),
                        Val::Text(&t.rule_kind),
                        Val::Text(&t.title),
                        Val::Text(t.severity.as_str()),
                        Val::I64(t.severity.rank()),
                        Val::OptI64(t.plan_version),
                        Val::OptText(t.metric.as_deref()),
                        Val::OptText(t.unit.as_deref()),
                        Val::I64(reading_count(t)),
                        Val::F64(t.value),
                        Val::Ts(t.at),
                        Val::OptTs(latest(&t.readings)),
                        Val::OptTs(t.due_at),
                        Val::F64(first_value(t)),
                        Val::F64(worst_of(None, t)),
                        Val::OptText(t.unconfirmed.then_some("unconfirmed")),
                    ],
                )
                .await?
                .ok_or_else(|| StoreError::decode("INSERT … RETURNING gave no row".into()))?;
            let alert_id = row.bigint("id")?;
            link_readings(tx, alert_id, &t.readings).await?;
            (
                TriggerOutcome::Opened { alert_id },
                Some((alert_id, cot_id, "opened", t.severity)),
            )
        }
        Some(open) => {
            let new_links = link_readings(tx, open.id, &t.readings).await?;
            let Some(u) = TriggerUpdate::of(&open, t, new_links) else {
                return Ok((TriggerOutcome::Unchanged { alert_id: open.id }, 0));
            };
            let sql = "UPDATE alerts SET count = count + $2, last_value = COALESCE($3, last_value), \
                    worst_value = $4, last_triggered_at = $5, last_measured_at = $6, \
                    severity = $7, severity_rank = $8, condition = 'active', cleared_at = NULL, \
                    workflow = $9, due_at = $10, updated_at = $5 WHERE id = $1";
            tx.exec(
                sql,
                &[
                    Val::I64(open.id),
                    Val::I64(u.added),
                    Val::F64(t.value),
                    Val::F64(u.worst),
                    Val::Ts(t.at),
                    Val::OptTs(u.last_measured),
                    Val::Text(u.severity.as_str()),
                    Val::I64(u.severity.rank()),
                    Val::Text(u.workflow.as_str()),
                    Val::OptTs(u.due_at),
                ],
            )
            .await?;
            (
                u.outcome(open.id),
                Some((open.id, open.cot_id, u.event_kind(), u.severity)),
            )
        }
    };
    let mut last_event = 0;
    if let Some((alert_id, cot_id, kind, severity)) = event {
        last_event = insert_event(
            tx,
            EventRow {
                alert_id,
                patient_id: t.patient_id,
                cot_id,
                at: t.at,
                kind,
                actor: "engine",
                severity,
                detail: t.detail.as_deref(),
            },
        )
        .await?;
    }
    Ok((outcome, last_event))
}

/// [`Store::clear_alert`] inside `tx` (events locked): the alert id if it was active, and
/// the event id written (0: none).
async fn clear_in(
    tx: &mut Tx,
    patient_id: i64,
    rule_id: &str,
    at: OffsetDateTime,
    measured_at: Option<OffsetDateTime>,
    detail: Option<&str>,
) -> Result<(Option<i64>, i64)> {
    let Some(open) = open_alert(tx, patient_id, rule_id).await? else {
        return Ok((None, 0));
    };
    if !clears(&open, measured_at) {
        return Ok((None, 0));
    }
    tx.exec(
        "UPDATE alerts SET condition = 'cleared', cleared_at = $2, updated_at = $2, \
             last_measured_at = COALESCE($3, last_measured_at) WHERE id = $1",
        &[Val::I64(open.id), Val::Ts(at), Val::OptTs(measured_at)],
    )
    .await?;
    let id = insert_event(
        tx,
        EventRow {
            alert_id: open.id,
            patient_id,
            cot_id: open.cot_id,
            at,
            kind: "cleared",
            actor: "engine",
            severity: open.severity,
            detail,
        },
    )
    .await?;
    Ok((Some(open.id), id))
}

/// [`Store::confirm_alert`] inside `tx` (events locked).
async fn confirm_in(
    tx: &mut Tx,
    patient_id: i64,
    rule_id: &str,
    at: OffsetDateTime,
    what: Confirmation,
    detail: Option<&str>,
) -> Result<Option<AlertEvent>> {
    // The newest unconfirmed (patient, rule) alert, resolved or not: a nurse may resolve
    // a critical alert before its repeat lands, and the repeat still belongs on record.
    let sql = format!(
        "SELECT {ALERT_COLUMNS} FROM alerts WHERE patient_id = $1 AND rule_id = $2 \
             AND confirmation = 'unconfirmed' ORDER BY id DESC LIMIT 1"
    );
    let found = tx
        .one(&sql, &[Val::I64(patient_id), Val::Text(rule_id)])
        .await?
        .as_ref()
        .map(alert_from_row)
        .transpose()?;
    let Some(a) = found else {
        return Ok(None);
    };
    let (kind, severity) = match what {
        Confirmation::Confirmed => {
            tx.exec(
                "UPDATE alerts SET confirmation = 'confirmed', updated_at = $2 WHERE id = $1",
                &[Val::I64(a.id), Val::Ts(at)],
            )
            .await?;
            ("confirmed", a.severity)
        }
        Confirmation::Downgraded { severity, due_at } => {
            let (severity, due_at) = downgraded(&a, severity, due_at);
            tx.exec(
                "UPDATE alerts SET confirmation = 'not_confirmed', severity = $2, \
                     severity_rank = $3, due_at = $4, updated_at = $5 WHERE id = $1",
                &[
                    Val::I64(a.id),
                    Val::Text(severity.as_str()),
                    Val::I64(severity.rank()),
                    Val::OptTs(due_at),
                    Val::Ts(at),
                ],
            )
            .await?;
            ("downgraded", severity)
        }
    };
    let event = insert_event_returning(
        tx,
        EventRow {
            alert_id: a.id,
            patient_id: a.patient_id,
            cot_id: a.cot_id,
            at,
            kind,
            actor: "engine",
            severity,
            detail,
        },
    )
    .await?;
    Ok(Some(event))
}

pub(crate) fn announce_to(feed: &watch::Sender<i64>, event_id: i64) {
    if event_id > 0 {
        feed.send_if_modified(|last| {
            if event_id > *last {
                *last = event_id;
                true
            } else {
                false
            }
        });
    }
}
