//! The alert engine's group of writes on PostgreSQL, set by set: one statement per step for
//! the whole group (`UNNEST` arrays), where writing them one by one costs three to five round
//! trips each, all under the event lock. The decisions are the one-by-one path's
//! ([`TriggerUpdate`], [`clears`], [`downgraded`]); only the statements differ.
//!
//! A group is split into rounds in which every (patient, rule) appears once, so that no two
//! items of a round touch the same alert. Per (patient, rule) the writes are cut into items:
//! a run of consecutive triggers and clears is one item, a confirmation is one on its own
//! (it is about the newest unconfirmed alert, which may be resolved); round k takes the k-th
//! item of each (patient, rule), so an alert's writes keep their order. A run is folded in
//! memory: the alert is read (or opened by the run's first trigger) once, every write is
//! decided on the alert as the ones before it left it, and one `UPDATE` writes where the run
//! ends, beside every write's own event. A run stays on one alert: only a nurse resolves one.
//! A worker streaming a patient in a band sends triggers and clears by the dozen back to back;
//! one round each cost four or five statements apiece. Rounds run one after another in the
//! transaction.

use std::collections::{HashMap, HashSet};

use sqlx::PgConnection;
use sqlx::postgres::PgRow;
use time::OffsetDateTime;

use super::{
    ALERT_COLUMNS, Alert, AlertEvent, AlertWrite, AlertWritten, Confirmation, EVENT_COLUMNS,
    Trigger, TriggerOutcome, TriggerUpdate, alert_from_row, cleared, clears, downgraded,
    event_from_row, first_value, latest, reading_count, worst_of,
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
    let mut done: Vec<Option<AlertWritten>> = vec![None; writes.len()];
    let mut last_event = 0;
    for items in rounds(writes) {
        let last = round(conn, writes, &items, &mut done).await?;
        last_event = last_event.max(last);
    }
    let done = done
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| StoreError::Invalid("an alert write got no answer".into()))?;
    Ok((done, last_event))
}

/// The writes' indices cut into rounds of items (see the module's notes): each item is a run
/// of consecutive triggers and clears of one (patient, rule), or one confirmation.
fn rounds(writes: &[AlertWrite]) -> Vec<Vec<Vec<usize>>> {
    let mut rounds: Vec<Vec<Vec<usize>>> = Vec::new();
    // Per (patient, rule): its items so far, and where its last item sits if it is a run
    // still open to the next write.
    let mut seen: HashMap<(i64, &str), (usize, Option<usize>)> = HashMap::new();
    for (i, w) in writes.iter().enumerate() {
        let folds = !matches!(w, AlertWrite::Confirm { .. });
        let (items, run) = seen.entry(key(w)).or_default();
        match *run {
            Some(at) if folds => rounds[*items - 1][at].push(i),
            _ => {
                if *items == rounds.len() {
                    rounds.push(Vec::new());
                }
                let round = &mut rounds[*items];
                *run = folds.then_some(round.len());
                round.push(vec![i]);
                *items += 1;
            }
        }
    }
    rounds
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

fn as_trigger(w: &AlertWrite) -> Option<&Trigger> {
    match w {
        AlertWrite::Trigger(t) => Some(t),
        _ => None,
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

impl<'a> Event<'a> {
    /// Trigger `t`'s event on alert `a`, answering write `write`.
    fn trigger(
        write: usize,
        a: &Alert,
        t: &'a Trigger,
        kind: &'static str,
        severity: super::Severity,
    ) -> Event<'a> {
        Event {
            write,
            alert_id: a.id,
            patient_id: t.patient_id,
            cot_id: a.cot_id,
            at: t.at,
            kind,
            severity,
            detail: t.detail.as_deref(),
        }
    }
}

/// One round: items whose (patient, rule) pairs are all different. Puts each write's answer
/// in `done`; returns the newest event id written (0: none).
async fn round(
    conn: &mut PgConnection,
    writes: &[AlertWrite],
    items: &[Vec<usize>],
    done: &mut [Option<AlertWritten>],
) -> Result<i64> {
    // 1. The alerts the items are about: the open one per (patient, rule) for triggers and
    //    clears; the newest unconfirmed one, resolved or not, for confirmations.
    let (mut open_keys, mut confirm_keys) = (Pairs::default(), Pairs::default());
    for item in items {
        let w = &writes[item[0]];
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

    // 2. New alerts, opened by the first trigger of a run with none open.
    let new: Vec<&Trigger> = items
        .iter()
        .filter_map(|item| item.iter().find_map(|&i| as_trigger(&writes[i])))
        .filter(|t| !open.contains_key(&(t.patient_id, t.rule_id.clone())))
        .collect();
    let created = insert_alerts(conn, &new).await?;

    // 3. Every trigger's readings linked to its alert; how many each linked first.
    let mut links = Links::default();
    for item in items {
        let Some(first) = item.iter().find_map(|&i| as_trigger(&writes[i])) else {
            continue;
        };
        let k = (first.patient_id, first.rule_id.clone());
        let Some(alert) = open.get(&k).or_else(|| created.get(&k)) else {
            return Err(StoreError::NotFound {
                what: what("patient", first.patient_id),
            });
        };
        let mut linked = HashSet::new();
        for &i in item {
            if let Some(t) = as_trigger(&writes[i]) {
                links.push(alert.id, i, t, &mut linked);
            }
        }
    }
    let added = links.insert(conn).await?;

    // 4. What each write does.
    let mut events = Vec::new();
    let mut updates = Updates::default();
    for item in items {
        let i = item[0];
        let answer = match &writes[i] {
            AlertWrite::Trigger(_) | AlertWrite::Clear { .. } => {
                let (patient, rule) = key(&writes[i]);
                let k = (patient, rule.to_owned());
                let run = Run {
                    writes,
                    open: open.get(&k),
                    created: created.get(&k),
                    added: &added,
                };
                run.fold(item, &mut events, &mut updates, done);
                continue;
            }
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
        done[i] = Some(answer);
    }

    // 5. The changes, then the events. A confirmation's event is the only one of its alert
    //    in the round (its (patient, rule) has no other item here).
    updates.write(conn).await?;
    let written = insert_events(conn, &events).await?;
    let last_event = written.iter().map(|e| e.id).max().unwrap_or(0);
    let mut by_alert: HashMap<i64, AlertEvent> =
        written.into_iter().map(|e| (e.alert_id, e)).collect();
    for e in &events {
        if let Some(Some(AlertWritten::Confirm(slot))) = done.get_mut(e.write) {
            *slot = by_alert.remove(&e.alert_id);
        }
    }
    Ok(last_event)
}

/// A run of triggers and clears on one (patient, rule), and what the round knows of it: the
/// alert open before it, the one its first trigger opened (if none was), and how many readings
/// each trigger linked first.
struct Run<'a, 'r> {
    writes: &'a [AlertWrite],
    open: Option<&'r Alert>,
    created: Option<&'r Alert>,
    added: &'r HashMap<usize, u64>,
}

impl<'a> Run<'a, '_> {
    /// Decides each write of `run` on the alert as the write before left it: answers in
    /// `done`, events in `events`, and the alert as the run left it in `updates` if the run
    /// changed it.
    fn fold(
        &self,
        run: &[usize],
        events: &mut Vec<Event<'a>>,
        updates: &mut Updates,
        done: &mut [Option<AlertWritten>],
    ) {
        let mut alert = self.open.cloned();
        let mut changed = false;
        let mut counted = 0i64;
        for &j in run {
            let answer = match (&self.writes[j], alert.as_mut()) {
                // None open: the run's first trigger opened one (none: an unknown patient,
                // which failed the round before this).
                (AlertWrite::Trigger(t), None) => {
                    let Some(a) = self.created else {
                        continue;
                    };
                    events.push(Event::trigger(j, a, t, "opened", t.severity));
                    alert = Some(a.clone());
                    AlertWritten::Trigger(TriggerOutcome::Opened { alert_id: a.id })
                }
                (AlertWrite::Trigger(t), Some(a)) => {
                    let added = self.added.get(&j).copied().unwrap_or(0);
                    AlertWritten::Trigger(match TriggerUpdate::of(a, t, added) {
                        None => TriggerOutcome::Unchanged { alert_id: a.id },
                        Some(u) => {
                            events.push(Event::trigger(j, a, t, u.event_kind(), u.severity));
                            u.apply(a, t);
                            changed = true;
                            counted += u.added;
                            u.outcome(a.id)
                        }
                    })
                }
                (
                    AlertWrite::Clear {
                        patient_id,
                        at,
                        measured_at,
                        detail,
                        ..
                    },
                    Some(a),
                ) if clears(a, *measured_at) => {
                    events.push(Event {
                        write: j,
                        alert_id: a.id,
                        patient_id: *patient_id,
                        cot_id: a.cot_id,
                        at: *at,
                        kind: "cleared",
                        severity: a.severity,
                        detail: detail.as_deref(),
                    });
                    cleared(a, *at, *measured_at);
                    changed = true;
                    AlertWritten::Clear(Some(a.id))
                }
                (AlertWrite::Clear { .. }, _) => AlertWritten::Clear(None),
                // Never in a run.
                (AlertWrite::Confirm { .. }, _) => continue,
            };
            done[j] = Some(answer);
        }
        if let Some(a) = alert.as_ref().filter(|_| changed) {
            updates.state(a, counted);
        }
    }
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

/// Opens an alert per trigger (with its patient's COT); returns them by (patient, rule). A
/// trigger whose patient does not exist opens nothing.
async fn insert_alerts(
    conn: &mut PgConnection,
    triggers: &[&Trigger],
) -> Result<HashMap<(i64, String), Alert>> {
    if triggers.is_empty() {
        return Ok(HashMap::new());
    }
    let col = |f: fn(&Trigger) -> Option<String>| -> Vec<Option<String>> {
        triggers.iter().map(|t| f(t)).collect()
    };
    let rows: Vec<PgRow> = sqlx::query(&format!(
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
         RETURNING {ALERT_COLUMNS}"
    ))
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
    rows.into_iter()
        .map(|r| {
            let a = alert_from_row(&AnyRow::Pg(r))?;
            Ok(((a.patient_id, a.rule_id.clone()), a))
        })
        .collect()
}

/// Readings to link, as arrays, and the write each is linked for.
#[derive(Default)]
struct Links {
    alerts: Vec<i64>,
    devices: Vec<String>,
    seqs: Vec<i64>,
    measured: Vec<OffsetDateTime>,
    values: Vec<Option<f64>>,
    writes: Vec<usize>,
}

impl Links {
    /// The readings of trigger `write` on `alert_id`, but those `linked` already by an
    /// earlier trigger of its run (one by one, the earlier write would have linked them).
    fn push<'a>(
        &mut self,
        alert_id: i64,
        write: usize,
        t: &'a Trigger,
        linked: &mut HashSet<(&'a str, i64)>,
    ) {
        for r in &t.readings {
            if !linked.insert((r.device_id.as_str(), r.seq)) {
                continue;
            }
            self.alerts.push(alert_id);
            self.devices.push(r.device_id.clone());
            self.seqs.push(r.seq);
            self.measured.push(r.measured_at);
            self.values.push(r.value);
            self.writes.push(write);
        }
    }

    /// Links them; returns how many were not linked before, per write.
    async fn insert(self, conn: &mut PgConnection) -> Result<HashMap<usize, u64>> {
        let mut added = HashMap::new();
        if self.alerts.is_empty() {
            return Ok(added);
        }
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(
            "INSERT INTO alert_readings (alert_id, device_id, seq, measured_at, value) \
             SELECT * FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::timestamptz[], \
             $5::float8[]) ON CONFLICT DO NOTHING RETURNING alert_id, device_id, seq",
        )
        .bind(&self.alerts)
        .bind(&self.devices)
        .bind(&self.seqs)
        .bind(&self.measured)
        .bind(&self.values)
        .fetch_all(&mut *conn)
        .await?;
        let new: HashSet<(i64, String, i64)> = rows.into_iter().collect();
        for (((alert, device), seq), write) in self
            .alerts
            .into_iter()
            .zip(self.devices)
            .zip(self.seqs)
            .zip(self.writes)
        {
            if new.contains(&(alert, device, seq)) {
                *added.entry(write).or_insert(0) += 1;
            }
        }
        Ok(added)
    }
}

/// The alert rows' changes of a round, by kind.
#[derive(Default)]
struct Updates {
    // Runs: the alert as the run left it, and the readings it counted.
    s_ids: Vec<i64>,
    s_added: Vec<i64>,
    s_value: Vec<Option<f64>>,
    s_worst: Vec<Option<f64>>,
    s_triggered: Vec<OffsetDateTime>,
    s_measured: Vec<Option<OffsetDateTime>>,
    s_severity: Vec<String>,
    s_rank: Vec<i64>,
    s_condition: Vec<String>,
    s_cleared: Vec<Option<OffsetDateTime>>,
    s_workflow: Vec<&'static str>,
    s_due: Vec<Option<OffsetDateTime>>,
    s_at: Vec<OffsetDateTime>,
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
    /// A run on alert `a`, as the run left it, having counted `added` readings.
    fn state(&mut self, a: &Alert, added: i64) {
        self.s_ids.push(a.id);
        self.s_added.push(added);
        self.s_value.push(a.last_value);
        self.s_worst.push(a.worst_value);
        self.s_triggered.push(a.last_triggered_at);
        self.s_measured.push(a.last_measured_at);
        self.s_severity.push(a.severity.as_str().to_owned());
        self.s_rank.push(a.severity.rank());
        self.s_condition.push(a.condition.clone());
        self.s_cleared.push(a.cleared_at);
        self.s_workflow.push(a.workflow.as_str());
        self.s_due.push(a.due_at);
        self.s_at.push(a.updated_at);
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
        if !self.s_ids.is_empty() {
            sqlx::query(
                "UPDATE alerts a SET count = a.count + v.added, last_value = v.value, \
                 worst_value = v.worst, last_triggered_at = v.triggered, \
                 last_measured_at = v.measured, severity = v.severity, severity_rank = v.rank, \
                 condition = v.condition, cleared_at = v.cleared, workflow = v.workflow, \
                 due_at = v.due, updated_at = v.at \
                 FROM UNNEST($1::int8[], $2::int8[], $3::float8[], $4::float8[], \
                 $5::timestamptz[], $6::timestamptz[], $7::text[], $8::int8[], $9::text[], \
                 $10::timestamptz[], $11::text[], $12::timestamptz[], $13::timestamptz[]) \
                 AS v(id, added, value, worst, triggered, measured, severity, rank, condition, \
                 cleared, workflow, due, at) WHERE a.id = v.id",
            )
            .bind(self.s_ids)
            .bind(self.s_added)
            .bind(self.s_value)
            .bind(self.s_worst)
            .bind(self.s_triggered)
            .bind(self.s_measured)
            .bind(self.s_severity)
            .bind(self.s_rank)
            .bind(self.s_condition)
            .bind(self.s_cleared)
            .bind(self.s_workflow)
            .bind(self.s_due)
            .bind(self.s_at)
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
    // RETURNING gives no order; the caller matches the events it answers with by alert.
    if rows.len() != events.len() {
        return Err(StoreError::decode(
            "INSERT … RETURNING lost an event".into(),
        ));
    }
    rows.into_iter()
        .map(|r| event_from_row(&AnyRow::Pg(r)))
        .collect()
}
