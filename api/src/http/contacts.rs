//! A patient's contacts and context, and the interventions recorded on alerts.
//!
//! - `GET /api/v1/patients/{id}/contacts`: phones, caregiver, GP (MMG), preferred language
//!   and the clinical note with its author and time; `{"patient_id": id, "recorded": false}`
//!   with empty fields when nothing is recorded yet.
//! - `PUT /api/v1/patients/{id}/contacts` `{"phones": [{"label","number"}], "caregiver_name"?,
//!   "caregiver_relation"?, "caregiver_phone"?, "gp_name"?, "gp_phone"?, "gp_email"?,
//!   "preferred_language"?, "clinical_note"?}`: replaces the record (a field left out is
//!   emptied); the note takes the caller as author when its text changes. For the roles that
//!   enrol patients.
//! - `GET /api/v1/patients/{id}/interventions?from=&to=`: the patient's interventions on all
//!   alerts, oldest first (the patient timeline).
//! - `POST /api/v1/alerts/{id}/interventions` `{"kind", "result"?, "note"?,
//!   "retry_in_minutes"?}`: records what was done. `kind` is one of phone_call, advice_given,
//!   gp_informed, home_visit_requested, emergency_services; a phone call needs `result`
//!   (reached, not_reached, wrong_number). A call not reached re-queues the alert (workflow
//!   `new`, due at the retry time, `retry_in_minutes` 5–1440, default 30). Answers 201
//!   `{"alert", "event", "intervention"}`; 409 on a resolved alert.
//!
//! Tenancy: the patient or alert must be in the caller's COTs (else 404). Every read and every
//! change is audited (a change before it is attempted); the audit entry of a contacts edit
//! names the fields set, not their values, so phone numbers and notes stay out of the log.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use store::{CallResult, InterventionKind, NewContacts, NewIntervention, Phone};
use time::OffsetDateTime;

use super::AppState;
use super::alerts::{EventOut, visible_alert};
use super::auth::Caller;
use super::error::{ApiError, rejection};
use super::patients::{parse_time, visible_patient};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/patients/{id}/contacts", get(show).put(update))
        .route("/patients/{id}/interventions", get(timeline))
        .route("/alerts/{id}/interventions", post(intervene))
}

const MAX_PHONES: usize = 6;
const MAX_NAME: usize = 200;
const MAX_LABEL: usize = 60;
const MAX_PHONE: usize = 32;
const MAX_NOTE: usize = 4000;
/// A call not reached is retried after this long unless the nurse says otherwise.
const DEFAULT_RETRY_MINUTES: i64 = 30;

// ----- contacts ----------------------------------------------------------------------------

/// The contacts as the API shows them: the stored record, or an empty one.
#[derive(Debug, Serialize)]
struct ContactsOut {
    /// Whether anything was ever recorded.
    recorded: bool,
    #[serde(flatten)]
    contacts: Option<store::PatientContacts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patient_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    phones: Option<Vec<Phone>>,
}

impl ContactsOut {
    fn new(patient_id: i64, contacts: Option<store::PatientContacts>) -> Self {
        match contacts {
            Some(c) => ContactsOut {
                recorded: true,
                contacts: Some(c),
                patient_id: None,
                phones: None,
            },
            None => ContactsOut {
                recorded: false,
                contacts: None,
                patient_id: Some(patient_id),
                phones: Some(Vec::new()),
            },
        }
    }
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<ContactsOut>, ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let patient = visible_patient(&state, &caller, id).await?;
    let contacts = state.store.patient_contacts(id).await?;
    state
        .audit_patient(
            &caller,
            "patient.contacts.read",
            format!("patient:{id}"),
            &patient,
            None,
        )
        .await?;
    Ok(Json(ContactsOut::new(id, contacts)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactsBody {
    #[serde(default)]
    phones: Vec<Phone>,
    caregiver_name: Option<String>,
    caregiver_relation: Option<String>,
    caregiver_phone: Option<String>,
    gp_name: Option<String>,
    gp_phone: Option<String>,
    gp_email: Option<String>,
    preferred_language: Option<String>,
    clinical_note: Option<String>,
}

/// Trims `value`; empty becomes `None`; longer than `max` characters is a 400.
fn text(name: &str, value: Option<String>, max: usize) -> Result<Option<String>, ApiError> {
    let Some(v) = value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if v.chars().count() > max {
        return Err(ApiError::BadRequest(format!(
            "{name} must be at most {max} characters"
        )));
    }
    if v.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ApiError::BadRequest(format!(
            "{name} must not contain control characters"
        )));
    }
    Ok(Some(v))
}

/// A phone number as dialled: digits with an optional leading `+`, spaces, dots, dashes,
/// slashes and parentheses between them; 3 to 20 digits.
fn phone(name: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(v) = text(name, value, MAX_PHONE)? else {
        return Ok(None);
    };
    let digits = v.chars().filter(char::is_ascii_digit).count();
    let rest_ok = v
        .chars()
        .enumerate()
        .all(|(i, c)| c.is_ascii_digit() || " .-/()".contains(c) || (i == 0 && c == '+'));
    if !rest_ok || !(3..=20).contains(&digits) {
        return Err(ApiError::BadRequest(format!(
            "{name} must be a phone number (digits, optional leading +, spaces, - . / ( ))"
        )));
    }
    Ok(Some(v))
}

/// A BCP 47 language tag of the simple kind: `it`, `en`, `de-CH`, `sl`.
fn language(value: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(v) = text("preferred_language", value, 35)? else {
        return Ok(None);
    };
    let mut parts = v.split('-');
    let primary_ok = parts
        .next()
        .is_some_and(|p| (2..=3).contains(&p.len()) && p.chars().all(|c| c.is_ascii_lowercase()));
    let rest_ok =
        parts.all(|p| (2..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()));
    if !primary_ok || !rest_ok {
        return Err(ApiError::BadRequest(
            "preferred_language must be a language tag such as it, en, de-CH".into(),
        ));
    }
    Ok(Some(v))
}

fn contacts_from_body(patient_id: i64, b: ContactsBody) -> Result<NewContacts, ApiError> {
    if b.phones.len() > MAX_PHONES {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_PHONES} phone numbers"
        )));
    }
    let mut phones = Vec::with_capacity(b.phones.len());
    for (i, p) in b.phones.into_iter().enumerate() {
        let number = phone(&format!("phones[{i}].number"), Some(p.number))?
            .ok_or_else(|| ApiError::BadRequest(format!("phones[{i}].number must not be empty")))?;
        let label = text(&format!("phones[{i}].label"), Some(p.label), MAX_LABEL)?
            .unwrap_or_else(|| "phone".into());
        phones.push(Phone { label, number });
    }
    let gp_email = text("gp_email", b.gp_email, 254)?;
    if let Some(e) = &gp_email
        && (!e.contains('@') || e.contains(char::is_whitespace))
    {
        return Err(ApiError::BadRequest(
            "gp_email must be an e-mail address".into(),
        ));
    }
    Ok(NewContacts {
        patient_id,
        phones,
        caregiver_name: text("caregiver_name", b.caregiver_name, MAX_NAME)?,
        caregiver_relation: text("caregiver_relation", b.caregiver_relation, MAX_LABEL)?,
        caregiver_phone: phone("caregiver_phone", b.caregiver_phone)?,
        gp_name: text("gp_name", b.gp_name, MAX_NAME)?,
        gp_phone: phone("gp_phone", b.gp_phone)?,
        gp_email,
        preferred_language: language(b.preferred_language)?,
        clinical_note: text("clinical_note", b.clinical_note, MAX_NOTE)?,
    })
}

/// The names of the fields an edit sets (for the audit entry: names, not values).
fn fields_set(c: &NewContacts) -> Vec<&'static str> {
    let mut out = Vec::new();
    if !c.phones.is_empty() {
        out.push("phones");
    }
    for (name, v) in [
        ("caregiver_name", &c.caregiver_name),
        ("caregiver_relation", &c.caregiver_relation),
        ("caregiver_phone", &c.caregiver_phone),
        ("gp_name", &c.gp_name),
        ("gp_phone", &c.gp_phone),
        ("gp_email", &c.gp_email),
        ("preferred_language", &c.preferred_language),
        ("clinical_note", &c.clinical_note),
    ] {
        if v.is_some() {
            out.push(name);
        }
    }
    out
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<ContactsBody>, JsonRejection>,
) -> Result<Json<ContactsOut>, ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let Json(body) = body.map_err(rejection)?;
    let patient = visible_patient(&state, &caller, id).await?;
    let new = contacts_from_body(id, body)?;
    state
        .audit_patient(
            &caller,
            "patient.contacts.update",
            format!("patient:{id}"),
            &patient,
            Some(json!({ "fields": fields_set(&new) }).to_string()),
        )
        .await?;
    let contacts = state
        .store
        .set_patient_contacts(&new, &caller.actor(), OffsetDateTime::now_utc())
        .await?;
    Ok(Json(ContactsOut::new(id, Some(contacts))))
}

// ----- interventions -----------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimelineQuery {
    from: Option<String>,
    to: Option<String>,
}

#[derive(Debug, Serialize)]
struct Timeline {
    patient_id: i64,
    count: usize,
    interventions: Vec<store::Intervention>,
}

async fn timeline(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    query: Result<Query<TimelineQuery>, QueryRejection>,
) -> Result<Json<Timeline>, ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let Query(query) = query.map_err(rejection)?;
    let from = parse_time("from", query.from.as_deref())?;
    let to = parse_time("to", query.to.as_deref())?;
    let patient = visible_patient(&state, &caller, id).await?;
    let interventions = state.store.patient_interventions(id, from, to).await?;
    state
        .audit_patient(
            &caller,
            "patient.interventions.read",
            format!("patient:{id} from={:?} to={:?}", query.from, query.to),
            &patient,
            None,
        )
        .await?;
    Ok(Json(Timeline {
        patient_id: id,
        count: interventions.len(),
        interventions,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InterventionBody {
    kind: String,
    result: Option<String>,
    note: Option<String>,
    retry_in_minutes: Option<i64>,
}

#[derive(Debug, Serialize)]
struct Intervened {
    alert: store::Alert,
    event: EventOut,
    intervention: store::Intervention,
}

async fn intervene(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<InterventionBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Intervened>), ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let Json(body) = body.map_err(rejection)?;
    let kind = InterventionKind::parse(&body.kind).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "kind must be one of phone_call, advice_given, gp_informed, home_visit_requested, \
             emergency_services; got {:?}",
            body.kind
        ))
    })?;
    let result = body
        .result
        .as_deref()
        .map(|r| {
            CallResult::parse(r).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "result must be one of reached, not_reached, wrong_number; got {r:?}"
                ))
            })
        })
        .transpose()?;
    if (kind == InterventionKind::PhoneCall) != result.is_some() {
        return Err(ApiError::BadRequest(
            "a phone_call needs a result, and only a phone_call has one".into(),
        ));
    }
    let not_reached = result == Some(CallResult::NotReached);
    if body.retry_in_minutes.is_some() && !not_reached {
        return Err(ApiError::BadRequest(
            "retry_in_minutes is for a call not reached".into(),
        ));
    }
    let retry_minutes = body.retry_in_minutes.unwrap_or(DEFAULT_RETRY_MINUTES);
    if !(5..=1440).contains(&retry_minutes) {
        return Err(ApiError::BadRequest(
            "retry_in_minutes must be between 5 and 1440".into(),
        ));
    }
    let note = text("note", body.note, MAX_NOTE)?;
    let alert = visible_alert(&state, &caller, id).await?;
    state
        .audit_about(
            &caller,
            "alert.intervention",
            format!("alert:{id} patient:{}", alert.patient_id),
            Some(alert.patient_id),
            Some(alert.cot_id),
            Some(
                json!({ "kind": kind, "result": result, "retry_in_minutes":
                        not_reached.then_some(retry_minutes) })
                .to_string(),
            ),
        )
        .await?;
    let at = OffsetDateTime::now_utc();
    let actor = caller.actor();
    let (alert, event, intervention) = state
        .store
        .record_intervention(&NewIntervention {
            alert_id: id,
            kind,
            call_result: result,
            note: note.as_deref(),
            actor: &actor,
            at,
            retry_at: not_reached.then(|| at + time::Duration::minutes(retry_minutes)),
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Intervened {
            alert,
            event: EventOut::from(&event),
            intervention,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_and_languages() {
        let p = |v: &str| phone("p", Some(v.into()));
        assert_eq!(
            p("+39 02 1234 5678").unwrap().as_deref(),
            Some("+39 02 1234 5678")
        );
        assert_eq!(p("  ").unwrap(), None);
        assert!(p("12").is_err());
        assert!(p("02+1234").is_err());
        assert!(p("call me").is_err());
        let l = |v: &str| language(Some(v.into()));
        assert!(l("it").is_ok() && l("de-CH").is_ok() && l("fur").is_ok());
        assert!(l("Italian").is_err() && l("i").is_err() && l("it_IT").is_err());
    }
}
