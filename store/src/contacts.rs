//! A patient's contacts and context (phones, caregiver, GP, preferred language, a clinical
//! note with its author and time), and the interventions recorded on alerts: what a nurse did
//! (a call and whether it reached the patient, advice, GP informed, home visit requested,
//! emergency services activated), by whom and when.
//!
//! An intervention is appended with an `intervention` alert event in the same transaction, so
//! it is in the alert's history and on the live stream. A call that did not reach the patient
//! puts the alert back in the queue (`new`, due at the retry time); the next intervention
//! clears the retry. [`Store::resolve_alert_after_intervention`] refuses to resolve an alert
//! of medium severity or above with no intervention on record.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::alerts::{EventRow, get_alert_in, insert_event_returning};
use crate::error::what;
use crate::rows::Columns;
use crate::sql::{AnyRow, Val};
use crate::{Alert, AlertEvent, Result, Store, StoreError, Workflow};

/// A phone number with what it is (home, mobile, daughter, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phone {
    pub label: String,
    pub number: String,
}

/// What an edit of a patient's contacts sets: the whole record (fields left `None` are
/// emptied).
#[derive(Debug, Clone, Default)]
pub struct NewContacts {
    pub patient_id: i64,
    pub phones: Vec<Phone>,
    pub caregiver_name: Option<String>,
    pub caregiver_relation: Option<String>,
    pub caregiver_phone: Option<String>,
    pub gp_name: Option<String>,
    pub gp_phone: Option<String>,
    pub gp_email: Option<String>,
    pub preferred_language: Option<String>,
    pub clinical_note: Option<String>,
}

/// A patient's stored contacts and context.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatientContacts {
    pub patient_id: i64,
    pub phones: Vec<Phone>,
    pub caregiver_name: Option<String>,
    pub caregiver_relation: Option<String>,
    pub caregiver_phone: Option<String>,
    pub gp_name: Option<String>,
    pub gp_phone: Option<String>,
    pub gp_email: Option<String>,
    pub preferred_language: Option<String>,
    pub clinical_note: Option<String>,
    /// Who wrote the note as it stands (an edit that leaves the note unchanged keeps it).
    pub note_author: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub note_at: Option<OffsetDateTime>,
    pub updated_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// What was done about an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterventionKind {
    PhoneCall,
    AdviceGiven,
    GpInformed,
    HomeVisitRequested,
    EmergencyServices,
}

impl InterventionKind {
    pub const ALL: [InterventionKind; 5] = [
        InterventionKind::PhoneCall,
        InterventionKind::AdviceGiven,
        InterventionKind::GpInformed,
        InterventionKind::HomeVisitRequested,
        InterventionKind::EmergencyServices,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InterventionKind::PhoneCall => "phone_call",
            InterventionKind::AdviceGiven => "advice_given",
            InterventionKind::GpInformed => "gp_informed",
            InterventionKind::HomeVisitRequested => "home_visit_requested",
            InterventionKind::EmergencyServices => "emergency_services",
        }
    }

    pub fn parse(s: &str) -> Option<InterventionKind> {
        InterventionKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// How a phone call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallResult {
    Reached,
    NotReached,
    WrongNumber,
}

impl CallResult {
    pub const ALL: [CallResult; 3] = [
        CallResult::Reached,
        CallResult::NotReached,
        CallResult::WrongNumber,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallResult::Reached => "reached",
            CallResult::NotReached => "not_reached",
            CallResult::WrongNumber => "wrong_number",
        }
    }

    pub fn parse(s: &str) -> Option<CallResult> {
        CallResult::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// An intervention to record on an alert.
#[derive(Debug, Clone)]
pub struct NewIntervention<'a> {
    pub alert_id: i64,
    pub kind: InterventionKind,
    /// Required for a phone call, absent otherwise.
    pub call_result: Option<CallResult>,
    pub note: Option<&'a str>,
    pub actor: &'a str,
    pub at: OffsetDateTime,
    /// When to call again: required for a call not reached, absent otherwise.
    pub retry_at: Option<OffsetDateTime>,
}

/// A stored intervention.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Intervention {
    pub id: i64,
    pub alert_id: i64,
    pub patient_id: i64,
    pub cot_id: i64,
    pub kind: InterventionKind,
    pub call_result: Option<CallResult>,
    pub note: Option<String>,
    pub actor: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub retry_at: Option<OffsetDateTime>,
}

const CONTACT_COLUMNS: &str = "patient_id, phones, caregiver_name, caregiver_relation, \
    caregiver_phone, gp_name, gp_phone, gp_email, preferred_language, clinical_note, \
    note_author, note_at, updated_by, updated_at";

const INTERVENTION_COLUMNS: &str =
    "id, alert_id, patient_id, cot_id, kind, call_result, note, actor, at, retry_at";

const MAX_INTERVENTIONS: i64 = 10_000;

impl Store {
    /// The patient's contacts, if any were recorded.
    pub async fn patient_contacts(&self, patient_id: i64) -> Result<Option<PatientContacts>> {
        let sql = format!("SELECT {CONTACT_COLUMNS} FROM patient_contacts WHERE patient_id = $1");
        self.read(&sql, &[Val::I64(patient_id)])
            .await?
            .first()
            .map(contacts_from_row)
            .transpose()
    }

    /// Replaces the patient's contacts with `new`. The note keeps its author and time unless
    /// its text changes, when `actor` and `at` become its author and time.
    pub async fn set_patient_contacts(
        &self,
        new: &NewContacts,
        actor: &str,
        at: OffsetDateTime,
    ) -> Result<PatientContacts> {
        let phones = serde_json::to_string(&new.phones)
            .map_err(|e| StoreError::Invalid(format!("phones: {e}")))?;
        let mut tx = self.tx().await?;
        if tx
            .one(
                "SELECT id FROM patients WHERE id = $1",
                &[Val::I64(new.patient_id)],
            )
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound {
                what: what("patient", new.patient_id),
            });
        }
        let sql = format!("SELECT {CONTACT_COLUMNS} FROM patient_contacts WHERE patient_id = $1");
        let before = tx
            .one(&sql, &[Val::I64(new.patient_id)])
            .await?
            .map(|r| contacts_from_row(&r))
            .transpose()?;
        let (note_author, note_at) = match (&before, &new.clinical_note) {
            (_, None) => (None, None),
            (Some(b), Some(text)) if b.clinical_note.as_deref() == Some(text.as_str()) => {
                (b.note_author.clone(), b.note_at)
            }
            (_, Some(_)) => (Some(actor.to_owned()), Some(at)),
        };
        let sql = format!(
            "INSERT INTO patient_contacts ({CONTACT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT (patient_id) DO UPDATE SET phones = excluded.phones, \
             caregiver_name = excluded.caregiver_name, \
             caregiver_relation = excluded.caregiver_relation, \
             caregiver_phone = excluded.caregiver_phone, gp_name = excluded.gp_name, \
             gp_phone = excluded.gp_phone, gp_email = excluded.gp_email, \
             preferred_language = excluded.preferred_language, \
             clinical_note = excluded.clinical_note, note_author = excluded.note_author, \
             note_at = excluded.note_at, updated_by = excluded.updated_by, \
             updated_at = excluded.updated_at \
             RETURNING {CONTACT_COLUMNS}"
        );
        let row = tx
            .one(
                &sql,
                &[
                    Val::I64(new.patient_id),
                    Val::Text(&phones),
                    Val::OptText(new.caregiver_name.as_deref()),
                    Val::OptText(new.caregiver_relation.as_deref()),
                    Val::OptText(new.caregiver_phone.as_deref()),
                    Val::OptText(new.gp_name.as_deref()),
                    Val::OptText(new.gp_phone.as_deref()),
                    Val::OptText(new.gp_email.as_deref()),
                    Val::OptText(new.preferred_language.as_deref()),
                    Val::OptText(new.clinical_note.as_deref()),
                    Val::OptText(note_author.as_deref()),
                    Val::OptTs(note_at),
                    Val::Text(actor),
                    Val::Ts(at),
                ],
            )
            .await?
            .ok_or_else(|| StoreError::decode("INSERT … RETURNING gave no row".into()))?;
        let contacts = contacts_from_row(&row)?;
        tx.commit().await?;
        Ok(contacts)
    }

    /// Records an intervention on an unresolved alert and appends its `intervention` event,
    /// in one transaction. A call not reached re-queues the alert: workflow `new`, due and
    /// retried at `retry_at`; any other intervention clears a pending retry.
    ///
    /// [`StoreError::NotFound`] for an unknown alert, [`StoreError::InvalidTransition`] for a
    /// resolved one, [`StoreError::Invalid`] when the call result or retry time is missing
    /// or given where it does not belong.
    pub async fn record_intervention(
        &self,
        new: &NewIntervention<'_>,
    ) -> Result<(Alert, AlertEvent, Intervention)> {
        let is_call = new.kind == InterventionKind::PhoneCall;
        if is_call != new.call_result.is_some() {
            return Err(StoreError::Invalid(
                "a phone call needs its result (reached, not_reached, wrong_number), and only a \
                 phone call has one"
                    .into(),
            ));
        }
        let not_reached = new.call_result == Some(CallResult::NotReached);
        if not_reached != new.retry_at.is_some() {
            return Err(StoreError::Invalid(
                "a call not reached needs a retry time, and only such a call has one".into(),
            ));
        }
        let mut tx = self.tx().await?;
        tx.lock_events().await?;
        let Some(before) = get_alert_in(&mut tx, new.alert_id).await? else {
            return Err(StoreError::NotFound {
                what: what("alert", new.alert_id),
            });
        };
        if before.workflow == Workflow::Resolved {
            return Err(StoreError::InvalidTransition(format!(
                "alert {} is resolved",
                before.id
            )));
        }
        let sql = format!(
            "INSERT INTO alert_interventions (alert_id, patient_id, cot_id, kind, call_result, \
             note, actor, at, retry_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             RETURNING {INTERVENTION_COLUMNS}"
        );
        let row = tx
            .one(
                &sql,
                &[
                    Val::I64(before.id),
                    Val::I64(before.patient_id),
                    Val::I64(before.cot_id),
                    Val::Text(new.kind.as_str()),
                    Val::OptText(new.call_result.map(CallResult::as_str)),
                    Val::OptText(new.note),
                    Val::Text(new.actor),
                    Val::Ts(new.at),
                    Val::OptTs(new.retry_at),
                ],
            )
            .await?
            .ok_or_else(|| StoreError::decode("INSERT … RETURNING gave no row".into()))?;
        let intervention = intervention_from_row(&row)?;
        if let Some(retry) = new.retry_at {
            tx.exec(
                "UPDATE alerts SET interventions = interventions + 1, workflow = 'new', \
                 due_at = $2, retry_at = $2, updated_at = $3 WHERE id = $1",
                &[Val::I64(before.id), Val::Ts(retry), Val::Ts(new.at)],
            )
            .await?;
        } else {
            tx.exec(
                "UPDATE alerts SET interventions = interventions + 1, retry_at = NULL, \
                 updated_at = $2 WHERE id = $1",
                &[Val::I64(before.id), Val::Ts(new.at)],
            )
            .await?;
        }
        let detail = serde_json::json!({
            "intervention": intervention.id,
            "kind": intervention.kind,
            "call_result": intervention.call_result,
            "note": intervention.note,
            "retry_at": intervention
                .retry_at
                .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
            "requeued": new.retry_at.is_some(),
        })
        .to_string();
        let event = insert_event_returning(
            &mut tx,
            EventRow {
                alert_id: before.id,
                patient_id: before.patient_id,
                cot_id: before.cot_id,
                at: new.at,
                kind: "intervention",
                actor: new.actor,
                severity: before.severity,
                detail: Some(&detail),
            },
        )
        .await?;
        let after =
            get_alert_in(&mut tx, before.id)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    what: what("alert", before.id),
                })?;
        tx.commit().await?;
        self.announce(event.id);
        Ok((after, event, intervention))
    }

    /// The interventions on one alert, oldest first.
    pub async fn alert_interventions(&self, alert_id: i64) -> Result<Vec<Intervention>> {
        let sql = format!(
            "SELECT {INTERVENTION_COLUMNS} FROM alert_interventions WHERE alert_id = $1 \
             ORDER BY id"
        );
        self.read(&sql, &[Val::I64(alert_id)])
            .await?
            .iter()
            .map(intervention_from_row)
            .collect()
    }

    /// A patient's interventions in `[from, to)` (either bound open), oldest first, at most
    /// 10,000: the patient's timeline.
    pub async fn patient_interventions(
        &self,
        patient_id: i64,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
    ) -> Result<Vec<Intervention>> {
        let sql = format!(
            "SELECT {INTERVENTION_COLUMNS} FROM alert_interventions WHERE patient_id = $1 \
             AND ($2 IS NULL OR at >= $2) AND ($3 IS NULL OR at < $3) ORDER BY at, id LIMIT $4"
        );
        self.read(
            &sql,
            &[
                Val::I64(patient_id),
                Val::OptTs(from),
                Val::OptTs(to),
                Val::I64(MAX_INTERVENTIONS),
            ],
        )
        .await?
        .iter()
        .map(intervention_from_row)
        .collect()
    }
}

fn contacts_from_row(r: &AnyRow) -> Result<PatientContacts> {
    let phones = r.text("phones")?;
    Ok(PatientContacts {
        patient_id: r.bigint("patient_id")?,
        phones: serde_json::from_str(&phones)
            .map_err(|e| StoreError::decode(format!("patient_contacts.phones: {e}")))?,
        caregiver_name: r.text_opt("caregiver_name")?,
        caregiver_relation: r.text_opt("caregiver_relation")?,
        caregiver_phone: r.text_opt("caregiver_phone")?,
        gp_name: r.text_opt("gp_name")?,
        gp_phone: r.text_opt("gp_phone")?,
        gp_email: r.text_opt("gp_email")?,
        preferred_language: r.text_opt("preferred_language")?,
        clinical_note: r.text_opt("clinical_note")?,
        note_author: r.text_opt("note_author")?,
        note_at: r.ts_opt("note_at")?,
        updated_by: r.text("updated_by")?,
        updated_at: r.ts("updated_at")?,
    })
}

fn intervention_from_row(r: &AnyRow) -> Result<Intervention> {
    let kind = r.text("kind")?;
    let call_result = r.text_opt("call_result")?;
    Ok(Intervention {
        id: r.bigint("id")?,
        alert_id: r.bigint("alert_id")?,
        patient_id: r.bigint("patient_id")?,
        cot_id: r.bigint("cot_id")?,
        kind: InterventionKind::parse(&kind)
            .ok_or_else(|| StoreError::decode(format!("intervention kind {kind:?}")))?,
        call_result: call_result
            .map(|c| {
                CallResult::parse(&c)
                    .ok_or_else(|| StoreError::decode(format!("call result {c:?}")))
            })
            .transpose()?,
        note: r.text_opt("note")?,
        actor: r.text("actor")?,
        at: r.ts("at")?,
        retry_at: r.ts_opt("retry_at")?,
    })
}
