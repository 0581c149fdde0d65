//! The alert engine's group of writes on PostgreSQL, set by set: one statement per step for
//! the whole group (`UNNEST` arrays), where writing them one by one costs three to five round
//! trips each, all under the event lock. The decisions are the one-by-one path's
//! ([`TriggerUpdate`], [`clears`], [`downgraded`]); only the statements differ.
//!
//! A group is split into rounds in which every (patient, rule) appears once, so that no two
//! writes of a round touch the same alert: round k takes the k-th write of each (patient,
//! rule), so an alert's writes keep their order, and a group of updates streaming into a few
//! alerts takes as many rounds as the busiest alert has writes (cutting a round at the first
//! repeated pair took one round per write for such a group). Rounds run one after another in
//! the transaction.

use std::collections::HashMap;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use time::OffsetDateTime;

use super::{
    ALERT_COLUMNS, Alert, AlertEvent, AlertWrite, AlertWritten, Confirmation, EVENT_COLUMNS,
    Trigger, TriggerOutcome, TriggerUpdate, alert_from_row, clears, downgraded, event_from_row,
    first_value, latest, reading_count, worst_of,
};
use crate::error::what;
use crate::sql::AnyRow;
use crate::{Result, StoreError};

/// Writes `writes` in order inside the caller's transaction (events locked); returns one
/// answer per write and the newest event id written (0: none).
pub(super) async fn write_pg(
    conn: &mut PgConnection,
    writes: &[AlertWrite],
) -> Result<(Vec<AlertWritten>, i64)> {
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashMap<(i64, &str), usize> = HashMap::new();
    for (i, w) in writes.iter().enumerate() {
        let k = seen.entry(key(w)).or_default();
        if *k == rounds.len() {
            rounds.push(Vec::new());
        }
        rounds[*k].push(i);
        *k += 1;
    }
    let mut done: Vec<Option<AlertWritten>> = vec![None; writes.len()];
    let mut last_event = 0;
    for indices in rounds {
        let round_writes: Vec<&AlertWrite> = indices.iter().map(|&i| &writes[i]).collect();
        let (answers, last) = round(conn, &round_writes).await?;
        for (i, answer) in indices.into_iter().zip(answers) {
            done[i] = Some(answer);
        }
        last_event = last_event.max(last);
    }
    let done = done
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| StoreError::Invalid("an alert write got no answer".into()))?;
    Ok((done, last_event))
}

fn key(w: &AlertWrite) -> (i64, &str) {
    match w {
        AlertWrite::Trigger(t) => (t.patient_id, t.rule_id.as_str()),
        AlertWrite::Clear {
            patient_id,
            rule_id,
            ..
        }
        | AlertWrite::Confirm {
            patient_id,
            rule_id,
            ..
        } => (*patient_id, rule_id.as_str()),
    }
}

/// An event to append, and which write it answers.
struct Event<'a> {
    write: usize,
    alert_id: i64,
    patient_id: i64,
    cot_id: i64,
    at: OffsetDateTime,
    kind: &'static str,
    severity: super::Severity,
    detail: Option<&'a str>,
}

/// Writes whose (patient, rule) pairs are all different.
async fn round(
    conn: &mut PgConnection,
    writes: &[&AlertWrite],
) -> Result<(Vec<AlertWritten>, i64)> {
    // 1. The alerts the writes are about: the open one per (patient, rule) for triggers and
    //    clears; the newest unconfirmed one, resolved or not, for confirmations.
    let (mut open_keys, mut confirm_keys) = (Pairs::default(), Pairs::default());
    for w in writes {
        let (patient, rule) = key(w);
        match w {
            AlertWrite::Confirm { .. } => confirm_keys.push(patient, rule),
            _ => open_keys.push(patient, rule),
        }
    }
    let open = alerts_by_key(
        conn,
        &open_keys,
        &format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE workflow <> 'resolved' \
             AND (patient_id, rule_id) IN (SELECT * FROM UNNEST($1::int8[], $2::text[]))"
        ),
    )
    .await?;
    let unconfirmed = alerts_by_key(
        conn,
        &confirm_keys,
        &format!(
            "SELECT DISTINCT ON (patient_id, rule_id) {ALERT_COLUMNS} FROM alerts \
             WHERE confirmation = 'unconfirmed' \
             AND (patient_id, rule_id) IN (SELECT * FROM UNNEST($1::int8[], $2::text[])) \
             ORDER BY patient_id, rule_id, id DESC"
        ),
    )
    .await?;

    // 2. New alerts for the triggers with none open.
    let new: Vec<&Trigger> = writes
        .iter()
        .filter_map(|w| match w {
            AlertWrite::Trigger(t) if !open.contains_key(&(t.patient_id, t.rule_id.clone())) => {
                Some(t)
            }
            _ => None,
        })
        .collect();
    let created = insert_alerts(conn, &new).await?;

    // 3. Every trigger's readings linked to its alert; how many were new, per alert.
    let mut links = Links::default();
    for w in writes {
        if let AlertWrite::Trigger(t) = w {
            let k = (t.patient_id, t.rule_id.clone());
            let id = match (open.get(&k), created.get(&k)) {
                (Some(a), _) => a.id,
                (None, Some((id, _))) => *id,
                (None, None) => {
                    return Err(StoreError::NotFound {
                        what: what("patient", t.patient_id),
                    });
                }
            };
            links.push(id, t);
        }
    }
    let new_links = links.insert(conn).await?;

    // 4. What each write does.
    let mut answers = Vec::with_capacity(writes.len());
    let mut events = Vec::new();
    let mut updates = Updates::default();
    for (i, w) in writes.iter().enumerate() {
        let answer = match w {
            AlertWrite::Trigger(t) => AlertWritten::Trigger({
                let k = (t.patient_id, t.rule_id.clone());
                if let Some(a) = open.get(&k) {
                    let added = new_links.get(&a.id).copied().unwrap_or(0);
                    match TriggerUpdate::of(a, t, added) {
                        None => TriggerOutcome::Unchanged { alert_id: a.id },
                        Some(u) => {
                            events.push(Event {
                                write: i,
                                alert_id: a.id,
                                patient_id: t.patient_id,
                                cot_id: a.cot_id,
                                at: t.at,
                                kind: u.event_kind(),
                                severity: u.severity,
                                detail: t.detail.as_deref(),
                            });
                            let outcome = u.outcome(a.id);
                            updates.trigger(a.id, t, u);
                            outcome
                        }
                    }
                } else {
                    let (alert_id, cot_id) = created.get(&k).copied().unwrap_or_default();
                    events.push(Event {
                        write: i,
                        alert_id,
                        patient_id: t.patient_id,
                        cot_id,
                        at: t.at,
                        kind: "opened",
                        severity: t.severity,
                        detail: t.detail.as_deref(),
                    });
                    TriggerOutcome::Opened { alert_id }
                }
            }),
            AlertWrite::Clear {
                patient_id,
                rule_id,
                at,
                measured_at,
                detail,
            } => match open.get(&(*patient_id, rule_id.clone())) {
                Some(a) if clears(a, *measured_at) => {
                    events.push(Event {
                        write: i,
                        alert_id: a.id,
                        patient_id: *patient_id,
                        cot_id: a.cot_id,
                        at: *at,
                        kind: "cleared",
                        severity: a.severity,
                        detail: detail.as_deref(),
                    });
                    updates.clear(a.id, *at, *measured_at);
                    AlertWritten::Clear(Some(a.id))
                }
                _ => AlertWritten::Clear(None),
            },
            AlertWrite::Confirm {
                patient_id,
                rule_id,
                at,
                what,
                detail,
            } => match unconfirmed.get(&(*patient_id, rule_id.clone())) {
                Some(a) => {
                    let (kind, severity) = match *what {
                        Confirmation::Confirmed => {
                            updates.confirmed(a.id, *at);
                            ("confirmed", a.severity)
                        }
                        Confirmation::Downgraded { severity, due_at } => {
                            let (severity, due_at) = downgraded(a, severity, due_at);
                            updates.downgraded(a.id, severity, due_at, *at);
                            ("downgraded", severity)
                        }
                    };
                    events.push(Event {
                        write: i,
                        alert_id: a.id,
                        patient_id: a.patient_id,
                        cot_id: a.cot_id,
                        at: *at,
                        kind,
                        severity,
                        detail: detail.as_deref(),
                    });
                    // Answered with its event once it is written.
                    AlertWritten::Confirm(None)
                }
                None => AlertWritten::Confirm(None),
            },
        };
        answers.push(answer);
    }

    // 5. The changes, then the events (every event of a round is on a different alert).
    updates.write(conn).await?;
    let written = insert_events(conn, &events).await?;
    let mut last_event = 0;
    for (e, event) in events.iter().zip(written) {
        last_event = last_event.max(event.id);
        if let Some(AlertWritten::Confirm(slot)) = answers.get_mut(e.write) {
            *slot = Some(event);
        }
    }
    Ok((answers, last_event))
}

/// (patient, rule) pairs as two arrays.
#[derive(Default)]
struct Pairs {
    patients: Vec<i64>,
    rules: Vec<String>,
}

impl Pairs {
    fn push(&mut self, patient: i64, rule: &str) {
        self.patients.push(patient);
        self.rules.push(rule.to_owned());
    }
}

async fn alerts_by_key(
    conn: &mut PgConnection,
    keys: &Pairs,
    sql: &str,
) -> Result<HashMap<(i64, String), Alert>> {
    if keys.patients.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(sql)
        .bind(&keys.patients)
        .bind(&keys.rules)
        .fetch_all(&mut *conn)
        .await?;
    rows.into_iter()
        .map(|r| {
            let a = alert_from_row(&AnyRow::Pg(r))?;
            Ok(((a.patient_id, a.rule_id.clone()), a))
        })
        .collect()
}

/// Opens an alert per trigger (with its patient's COT); returns (id, COT) by (patient, rule).
/// A trigger whose patient does not exist opens nothing.
async fn insert_alerts(
    conn: &mut PgConnection,
    triggers: &[&Trigger],
) -> Result<HashMap<(i64, String), (i64, i64)>> {
    if triggers.is_empty() {
        return Ok(HashMap::new());
    }
    let col = |f: fn(&Trigger) -> Option<String>| -> Vec<Option<String>> {
        triggers.iter().map(|t| f(t)).collect()
    };
    let rows: Vec<PgRow> = sqlx::query(
        "INSERT INTO alerts (patient_id, cot_id, rule_id, rule_kind, title, severity, \
         severity_rank, condition, workflow, plan_version, metric, unit, count, first_value, \
         worst_value, last_value, opened_at, last_triggered_at, last_measured_at, due_at, \
         updated_at, confirmation) \
         SELECT v.patient_id, p.cot_id, v.rule_id, v.rule_kind, v.title, v.severity, v.rank, \
         'active', 'new', v.plan_version, v.metric, v.unit, v.count, v.first_value, v.worst, \
         v.value, v.at, v.at, v.measured, v.due_at, v.at, v.confirmation \
         FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], \
         $7::int8[], $8::text[], $9::text[], $10::int8[], $11::float8[], $12::float8[], \
         $13::float8[], $14::timestamptz[], $15::timestamptz[], $16::timestamptz[], \
         $17::text[]) AS v(patient_id, rule_id, rule_kind, title, severity, rank, plan_version, \
         metric, unit, count, first_value, worst, value, at, measured, due_at, confirmation) \
         JOIN patients p ON p.id = v.patient_id \
         RETURNING id, patient_id, rule_id, cot_id",
    )
    .bind(triggers.iter().map(|t| t.patient_id).collect::<Vec<_>>())
    .bind(col(|t| Some(t.rule_id.clone())))
    .bind(col(|t| Some(t.rule_kind.clone())))
    .bind(col(|t| Some(t.title.clone())))
    .bind(col(|t| Some(t.severity.as_str().to_owned())))
    .bind(
        triggers
            .iter()
            .map(|t| t.severity.rank())
            .collect::<Vec<_>>(),
    )
    .bind(triggers.iter().map(|t| t.plan_version).collect::<Vec<_>>())
    .bind(col(|t| t.metric.clone()))
    .bind(col(|t| t.unit.clone()))
    .bind(
        triggers
            .iter()
            .map(|t| reading_count(t))
            .collect::<Vec<_>>(),
    )
    .bind(triggers.iter().map(|t| first_value(t)).collect::<Vec<_>>())
    .bind(
        triggers
            .iter()
            .map(|t| worst_of(None, t))
            .collect::<Vec<_>>(),
    )
    .bind(triggers.iter().map(|t| t.value).collect::<Vec<_>>())
    .bind(triggers.iter().map(|t| t.at).collect::<Vec<_>>())
    .bind(
        triggers
            .iter()
            .map(|t| latest(&t.readings))
            .collect::<Vec<_>>(),
    )
    .bind(triggers.iter().map(|t| t.due_at).collect::<Vec<_>>())
    .bind(col(|t| t.unconfirmed.then(|| "unconfirmed".to_owned())))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                (r.try_get("patient_id")?, r.try_get("rule_id")?),
                (r.try_get("id")?, r.try_get("cot_id")?),
            ))
        })
        .collect()
}

/// Readings to link, as arrays.
#[derive(Default)]
struct Links {
    alerts: Vec<i64>,
    devices: Vec<String>,
    seqs: Vec<i64>,
    measured: Vec<OffsetDateTime>,
    values: Vec<Option<f64>>,
}

impl Links {
    fn push(&mut self, alert_id: i64, t: &Trigger) {
        for r in &t.readings {
            self.alerts.push(alert_id);
            self.devices.push(r.device_id.clone());
            self.seqs.push(r.seq);
            self.measured.push(r.measured_at);
            self.values.push(r.value);
        }
    }

    /// Links them; returns how many were not linked before, per alert.
    async fn insert(self, conn: &mut PgConnection) -> Result<HashMap<i64, u64>> {
        let mut added = HashMap::new();
        if self.alerts.is_empty() {
            return Ok(added);
        }
        let rows: Vec<(i64,)> = sqlx::query_as(
            "INSERT INTO alert_readings (alert_id, device_id, seq, measured_at, value) \
             SELECT * FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::timestamptz[], \
             $5::float8[]) ON CONFLICT DO NOTHING RETURNING alert_id",
        )
        .bind(self.alerts)
        .bind(self.devices)
        .bind(self.seqs)
        .bind(self.measured)
        .bind(self.values)
        .fetch_all(&mut *conn)
        .await?;
        for (id,) in rows {
            *added.entry(id).or_insert(0) += 1;
        }
        Ok(added)
    }
}

/// The alert rows' changes of a round, by kind.
#[derive(Default)]
struct Updates {
    // Triggers on an open alert.
    t_ids: Vec<i64>,
    t_added: Vec<i64>,
    t_value: Vec<Option<f64>>,
    t_worst: Vec<Option<f64>>,
    t_at: Vec<OffsetDateTime>,
    t_measured: Vec<Option<OffsetDateTime>>,
    t_severity: Vec<String>,
    t_rank: Vec<i64>,
    t_workflow: Vec<String>,
    t_due: Vec<Option<OffsetDateTime>>,
    // Clears.
    c_ids: Vec<i64>,
    c_at: Vec<OffsetDateTime>,
    c_measured: Vec<Option<OffsetDateTime>>,
    // Confirmed.
    k_ids: Vec<i64>,
    k_at: Vec<OffsetDateTime>,
    // Downgraded.
    d_ids: Vec<i64>,
    d_severity: Vec<String>,
    d_rank: Vec<i64>,
    d_due: Vec<Option<OffsetDateTime>>,
    d_at: Vec<OffsetDateTime>,
}

impl Updates {
    fn trigger(&mut self, id: i64, t: &Trigger, u: TriggerUpdate) {
        self.t_ids.push(id);
        self.t_added.push(u.added);
        self.t_value.push(t.value);
        self.t_worst.push(u.worst);
        self.t_at.push(t.at);
        self.t_measured.push(u.last_measured);
        self.t_severity.push(u.severity.as_str().to_owned());
        self.t_rank.push(u.severity.rank());
        self.t_workflow.push(u.workflow);
        self.t_due.push(u.due_at);
    }

    fn clear(&mut self, id: i64, at: OffsetDateTime, measured: Option<OffsetDateTime>) {
        self.c_ids.push(id);
        self.c_at.push(at);
        self.c_measured.push(measured);
    }

    fn confirmed(&mut self, id: i64, at: OffsetDateTime) {
        self.k_ids.push(id);
        self.k_at.push(at);
    }

    fn downgraded(
        &mut self,
        id: i64,
        severity: super::Severity,
        due: Option<OffsetDateTime>,
        at: OffsetDateTime,
    ) {
        self.d_ids.push(id);
        self.d_severity.push(severity.as_str().to_owned());
        self.d_rank.push(severity.rank());
        self.d_due.push(due);
        self.d_at.push(at);
    }

    async fn write(self, conn: &mut PgConnection) -> Result<()> {
        if !self.t_ids.is_empty() {
            sqlx::query(
                "UPDATE alerts a SET count = a.count + v.added, \
                 last_value = COALESCE(v.value, a.last_value), worst_value = v.worst, \
                 last_triggered_at = v.at, last_measured_at = v.measured, severity = v.severity, \
                 severity_rank = v.rank, condition = 'active', cleared_at = NULL, \
                 workflow = v.workflow, due_at = v.due, updated_at = v.at \
                 FROM UNNEST($1::int8[], $2::int8[], $3::float8[], $4::float8[], \
                 $5::timestamptz[], $6::timestamptz[], $7::text[], $8::int8[], $9::text[], \
                 $10::timestamptz[]) AS v(id, added, value, worst, at, measured, severity, rank, \
                 workflow, due) WHERE a.id = v.id",
            )
            .bind(self.t_ids)
            .bind(self.t_added)
            .bind(self.t_value)
            .bind(self.t_worst)
            .bind(self.t_at)
            .bind(self.t_measured)
            .bind(self.t_severity)
            .bind(self.t_rank)
            .bind(self.t_workflow)
            .bind(self.t_due)
            .execute(&mut *conn)
            .await?;
        }
        if !self.c_ids.is_empty() {
            sqlx::query(
                "UPDATE alerts a SET condition = 'cleared', cleared_at = v.at, updated_at = v.at, \
                 last_measured_at = COALESCE(v.measured, a.last_measured_at) \
                 FROM UNNEST($1::int8[], $2::timestamptz[], $3::timestamptz[]) \
                 AS v(id, at, measured) WHERE a.id = v.id",
            )
            .bind(self.c_ids)
            .bind(self.c_at)
            .bind(self.c_measured)
            .execute(&mut *conn)
            .await?;
        }
        if !self.k_ids.is_empty() {
            sqlx::query(
                "UPDATE alerts a SET confirmation = 'confirmed', updated_at = v.at \
                 FROM UNNEST($1::int8[], $2::timestamptz[]) AS v(id, at) WHERE a.id = v.id",
            )
            .bind(self.k_ids)
            .bind(self.k_at)
            .execute(&mut *conn)
            .await?;
        }
        if !self.d_ids.is_empty() {
            sqlx::query(
                "UPDATE alerts a SET confirmation = 'not_confirmed', severity = v.severity, \
                 severity_rank = v.rank, due_at = v.due, updated_at = v.at \
                 FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::timestamptz[], \
                 $5::timestamptz[]) AS v(id, severity, rank, due, at) WHERE a.id = v.id",
            )
            .bind(self.d_ids)
            .bind(self.d_severity)
            .bind(self.d_rank)
            .bind(self.d_due)
            .bind(self.d_at)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

/// Appends the events (the engine is their actor), in order; returns them as written.
async fn insert_events(conn: &mut PgConnection, events: &[Event<'_>]) -> Result<Vec<AlertEvent>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(&format!(
        "INSERT INTO alert_events (alert_id, patient_id, cot_id, at, kind, actor, severity, \
         detail) SELECT v.alert_id, v.patient_id, v.cot_id, v.at, v.kind, 'engine', v.severity, \
         v.detail FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::timestamptz[], \
         $5::text[], $6::text[], $7::text[]) WITH ORDINALITY \
         AS v(alert_id, patient_id, cot_id, at, kind, severity, detail, n) ORDER BY v.n \
         RETURNING {EVENT_COLUMNS}"
    ))
    .bind(events.iter().map(|e| e.alert_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.patient_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.cot_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.at).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.kind).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.severity.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(events.iter().map(|e| e.detail).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    // RETURNING gives no order: match each event to its alert (one event per alert here).
    let mut by_alert: HashMap<i64, AlertEvent> = rows
        .into_iter()
        .map(|r| {
            let e = event_from_row(&AnyRow::Pg(r))?;
            Ok((e.alert_id, e))
        })
        .collect::<Result<_>>()?;
    events
        .iter()
        .map(|e| {
            by_alert
                .remove(&e.alert_id)
                .ok_or_else(|| StoreError::decode("INSERT … RETURNING lost an event".into()))
        })
        .collect()
}
