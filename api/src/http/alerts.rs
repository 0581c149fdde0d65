//! Alerts: the nurses' queue and its workflow. The live stream is in `alert_stream`.
//!
//! - `GET /api/v1/alerts?status=&severity=|min_severity=&patient=&condition=&limit=&offset=`:
//!   most urgent first (severity, then escalation level, then the oldest). `status` is a
//!   comma list of workflow states `new`, `acknowledged`, `resolved` (default
//!   `new,acknowledged`: the unresolved queue); `severity` (exact) or `min_severity`, one of
//!   info, low, medium, high, critical; `condition` `active` or `cleared`; `limit` 1–1000
//!   (default 100); `offset` ≥ 0.
//! - `GET /api/v1/alerts/outcomes`: the outcomes a resolution may record, with their meaning.
//! - `GET /api/v1/alerts/{id}`: the alert, its events (oldest first), the readings that
//!   triggered it (`readings`: device, seq, time, value) and those readings as stored
//!   (`stored_readings`, with the clock verdict; see [`super::patients`]) and the
//!   interventions recorded on it.
//! - `POST /api/v1/alerts/{id}/ack`: new → acknowledged.
//! - `POST /api/v1/alerts/{id}/assign` `{"assignee": "name" | null}`: (un)assigns.
//! - `POST /api/v1/alerts/{id}/comments` `{"text": "…"}`: adds a comment, in any state.
//! - `POST /api/v1/alerts/{id}/resolve` `{"outcome": "…", "note": "…"?}`: new or
//!   acknowledged → resolved, with one of [`OUTCOMES`]; an alert of medium severity or above
//!   needs a recorded intervention first (409 otherwise; see [`super::contacts`]).
//!
//! A change answers `{"alert": …, "event": …}` (the alert after it, the event it appended).
//! A change the alert's state does not allow answers 409 `invalid_transition` with the
//! reason. The actor recorded in the event and in the audit log is `token:<name>`.
//!
//! Every read is audited before it is answered. A change is audited (with what it asked for)
//! before it is attempted, so no change exists without its audit entry; the alert's events
//! record what actually happened.

use std::collections::HashSet;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use time::OffsetDateTime;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, rejection};
use super::patients::ReadingOut;
use store::{Alert, AlertEvent, AlertQuery, Severity, Workflow};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/alerts", get(list))
        .route("/alerts/outcomes", get(outcomes))
        .route("/alerts/{id}", get(show))
        .route("/alerts/{id}/ack", post(acknowledge))
        .route("/alerts/{id}/assign", post(assign))
        .route("/alerts/{id}/comments", post(comment))
        .route("/alerts/{id}/resolve", post(resolve))
}

/// The outcomes a resolution may record, and what each means. The list is fixed so that
/// outcomes can be counted and compared across COTs.
pub(crate) const OUTCOMES: [(&str, &str); 7] = [
    (
        "called_patient",
        "the patient was called and the situation handled by phone",
    ),
    (
        "reading_error",
        "the reading was wrong (measurement error, device fault, wrong patient)",
    ),
    (
        "referred_to_gp",
        "the patient was referred to their general practitioner",
    ),
    (
        "sent_to_emergency",
        "the patient was sent to the emergency department or emergency services were called",
    ),
    (
        "medication_adjusted",
        "the physician adjusted the patient's therapy",
    ),
    (
        "no_action_needed",
        "reviewed: clinically expected, nothing to do",
    ),
    (
        "patient_hospitalised",
        "the patient is (or was just) admitted to hospital",
    ),
];

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;
const MAX_TEXT: usize = 4000;
const MAX_NAME: usize = 200;
/// Above this many linked readings the detail view leaves out `stored_readings`.
const MAX_STORED_READINGS: usize = 500;

// ----- reads -------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    severity: Option<String>,
    min_severity: Option<String>,
    patient: Option<i64>,
    condition: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[derive(Debug, Serialize)]
struct AlertList {
    count: usize,
    limit: i64,
    offset: i64,
    alerts: Vec<Alert>,
}

fn parse_severity(name: &str, value: &str) -> Result<Severity, ApiError> {
    Severity::parse(value).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "{name} must be one of info, low, medium, high, critical; got {value:?}"
        ))
    })
}

fn parse_status(value: Option<&str>) -> Result<Vec<Workflow>, ApiError> {
    let Some(value) = value else {
        return Ok(vec![Workflow::New, Workflow::Acknowledged]);
    };
    let mut states = Vec::new();
    for part in value.split(',').map(str::trim) {
        let state = Workflow::parse(part).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "status must be a comma-separated list of new, acknowledged, resolved; \
                 got {part:?}"
            ))
        })?;
        if !states.contains(&state) {
            states.push(state);
        }
    }
    Ok(states)
}

fn alert_query(q: &ListQuery, caller: &Caller) -> Result<AlertQuery, ApiError> {
    let workflow = parse_status(q.status.as_deref())?;
    let severity = q
        .severity
        .as_deref()
        .map(|s| parse_severity("severity", s))
        .transpose()?;
    let min_severity = q
        .min_severity
        .as_deref()
        .map(|s| parse_severity("min_severity", s))
        .transpose()?;
    if severity.is_some() && min_severity.is_some() {
        return Err(ApiError::BadRequest(
            "give severity or min_severity, not both".into(),
        ));
    }
    if let Some(c) = q.condition.as_deref()
        && c != "active"
        && c != "cleared"
    {
        return Err(ApiError::BadRequest(format!(
            "condition must be active or cleared; got {c:?}"
        )));
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let offset = q.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::BadRequest("offset must not be negative".into()));
    }
    Ok(AlertQuery {
        cot_ids: caller.cot_scope(),
        patient_id: q.patient,
        workflow,
        min_severity,
        severity,
        condition: q.condition.clone(),
        limit,
        offset,
    })
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<AlertList>, ApiError> {
    let Query(query) = query.map_err(rejection)?;
    let q = alert_query(&query, &caller)?;
    let alerts = state.store.list_alerts(&q).await?;
    let statuses: Vec<&str> = q.workflow.iter().map(|w| w.as_str()).collect();
    state
        .audit(
            &caller,
            "alerts.list",
            format!(
                "alerts status={} severity={:?} min_severity={:?} patient={:?} condition={:?} \
                 limit={} offset={}",
                statuses.join(","),
                query.severity,
                query.min_severity,
                query.patient,
                query.condition,
                q.limit,
                q.offset
            ),
        )
        .await?;
    Ok(Json(AlertList {
        count: alerts.len(),
        limit: q.limit,
        offset: q.offset,
        alerts,
    }))
}

#[derive(Debug, Serialize)]
struct OutcomeOut {
    outcome: &'static str,
    description: &'static str,
}

async fn outcomes(_caller: Caller) -> Json<serde_json::Value> {
    let list: Vec<OutcomeOut> = OUTCOMES
        .iter()
        .map(|&(outcome, description)| OutcomeOut {
            outcome,
            description,
        })
        .collect();
    Json(json!({ "outcomes": list }))
}

/// An alert event as the API shows it: `detail` parsed from its stored JSON text.
#[derive(Debug, Serialize)]
pub(crate) struct EventOut {
    id: i64,
    alert_id: i64,
    patient_id: i64,
    cot_id: i64,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    kind: String,
    actor: String,
    severity: Severity,
    detail: Option<serde_json::Value>,
}

impl From<&AlertEvent> for EventOut {
    fn from(e: &AlertEvent) -> Self {
        EventOut {
            id: e.id,
            alert_id: e.alert_id,
            patient_id: e.patient_id,
            cot_id: e.cot_id,
            at: e.at,
            kind: e.kind.clone(),
            actor: e.actor.clone(),
            severity: e.severity,
            // Detail is JSON written by the store; should it ever not parse, show it as text.
            detail: e.detail.as_deref().map(|d| {
                serde_json::from_str(d).unwrap_or_else(|_| serde_json::Value::String(d.to_owned()))
            }),
        }
    }
}

#[derive(Debug, Serialize)]
struct AlertDetail {
    #[serde(flatten)]
    alert: Alert,
    events: Vec<EventOut>,
    readings: Vec<store::AlertReading>,
    /// What was done about it (calls, advice, …), oldest first. Not `interventions`: that
    /// name is the alert's count, flattened in above, and a JSON object has one key per name.
    intervention_log: Vec<store::Intervention>,
    /// The linked readings as stored; absent when there are too many to fetch cheaply.
    #[serde(skip_serializing_if = "Option::is_none")]
    stored_readings: Option<Vec<ReadingOut>>,
}

/// The alert, if it exists and the caller may see it (an alert of another COT is "not found",
/// so its existence does not leak).
pub(crate) async fn visible_alert(
    state: &AppState,
    caller: &Caller,
    id: i64,
) -> Result<Alert, ApiError> {
    state
        .store
        .get_alert(id)
        .await?
        .filter(|a| caller.sees_cot(a.cot_id))
        .ok_or_else(|| ApiError::NotFound(format!("alert {id}")))
}

/// The full stored rows of the linked readings: one query over the readings' time span.
async fn stored_readings(
    state: &AppState,
    patient_id: i64,
    linked: &[store::AlertReading],
) -> Result<Option<Vec<ReadingOut>>, ApiError> {
    if linked.is_empty() {
        return Ok(Some(Vec::new()));
    }
    if linked.len() > MAX_STORED_READINGS {
        return Ok(None);
    }
    let from = linked.iter().map(|r| r.measured_at).min();
    let to = linked
        .iter()
        .map(|r| r.measured_at)
        .max()
        .map(|t| t + time::Duration::milliseconds(1));
    let mut rows = state
        .store
        .readings(&store::ReadingQuery {
            patient_id,
            from,
            to,
            kind: None,
            limit: 10_000,
        })
        .await?;
    let keys: HashSet<(&str, i64)> = linked
        .iter()
        .map(|r| (r.device_id.as_str(), r.seq))
        .collect();
    rows.retain(|r| keys.contains(&(r.device_id.as_str(), r.seq)));
    // A reading from a device whose clock was wrong is linked at its receive time (the
    // engine's date for it) while its row keeps the device's time: find those by receive time.
    if rows.len() < keys.len()
        && let (Some(from), Some(to)) = (from, to)
    {
        let found: HashSet<(String, i64)> =
            rows.iter().map(|r| (r.device_id.clone(), r.seq)).collect();
        let more = state
            .store
            .readings_received_between(patient_id, from, to)
            .await?;
        rows.extend(more.into_iter().filter(|r| {
            keys.contains(&(r.device_id.as_str(), r.seq))
                && !found.contains(&(r.device_id.clone(), r.seq))
        }));
    }
    Ok(Some(rows.into_iter().map(ReadingOut::from).collect()))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<AlertDetail>, ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let alert = visible_alert(&state, &caller, id).await?;
    let events = state.store.alert_events(id).await?;
    let readings = state.store.alert_readings(id).await?;
    let stored = stored_readings(&state, alert.patient_id, &readings).await?;
    let interventions = state.store.alert_interventions(id).await?;
    state
        .audit_about(
            &caller,
            "alert.read",
            format!("alert:{id} patient:{}", alert.patient_id),
            Some(alert.patient_id),
            Some(alert.cot_id),
            None,
        )
        .await?;
    Ok(Json(AlertDetail {
        alert,
        events: events.iter().map(EventOut::from).collect(),
        readings,
        intervention_log: interventions,
        stored_readings: stored,
    }))
}

// ----- changes -----------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct Changed {
    alert: Alert,
    event: EventOut,
}

fn changed(alert: Alert, event: &AlertEvent) -> Json<Changed> {
    Json(Changed {
        alert,
        event: EventOut::from(event),
    })
}

/// Reads a JSON body, mapping a missing or malformed one to 400 with serde's message.
fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b)
        .map_err(|e| ApiError::BadRequest(format!("invalid body: {}", e.body_text())))
}

/// Loads the alert (404 if missing or not visible), then audits the change before it is made.
async fn prepare_change(
    state: &AppState,
    caller: &Caller,
    id: Result<Path<i64>, PathRejection>,
    action: &str,
    detail: serde_json::Value,
) -> Result<i64, ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let alert = visible_alert(state, caller, id).await?;
    state
        .audit_about(
            caller,
            action,
            format!("alert:{id} patient:{}", alert.patient_id),
            Some(alert.patient_id),
            Some(alert.cot_id),
            Some(detail.to_string()),
        )
        .await?;
    Ok(id)
}

async fn acknowledge(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<Changed>, ApiError> {
    let id = prepare_change(&state, &caller, id, "alert.acknowledge", json!({})).await?;
    let (alert, event) = state
        .store
        .acknowledge_alert(id, &caller.actor(), OffsetDateTime::now_utc())
        .await?;
    Ok(changed(alert, &event))
}

/// `assignee` must be present: `null` unassigns, a missing field is an error (so that `{}`
/// cannot unassign by accident).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    #[serde(default, deserialize_with = "present")]
    assignee: Option<Option<String>>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

async fn assign(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    request: Result<Json<AssignBody>, JsonRejection>,
) -> Result<Json<Changed>, ApiError> {
    let request = body(request)?;
    let Some(assignee) = request.assignee else {
        return Err(ApiError::BadRequest(
            "assignee is required (a name, or null to unassign)".into(),
        ));
    };
    let assignee = assignee.map(|a| a.trim().to_owned());
    if let Some(a) = &assignee
        && (a.is_empty() || a.chars().count() > MAX_NAME)
    {
        return Err(ApiError::BadRequest(format!(
            "assignee must be 1 to {MAX_NAME} characters, or null to unassign"
        )));
    }
    let id = prepare_change(
        &state,
        &caller,
        id,
        "alert.assign",
        json!({ "assignee": assignee }),
    )
    .await?;
    let (alert, event) = state
        .store
        .assign_alert(
            id,
            &caller.actor(),
            assignee.as_deref(),
            OffsetDateTime::now_utc(),
        )
        .await?;
    Ok(changed(alert, &event))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommentBody {
    text: String,
}

async fn comment(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    request: Result<Json<CommentBody>, JsonRejection>,
) -> Result<Json<Changed>, ApiError> {
    let request = body(request)?;
    let text = request.text.trim();
    if text.is_empty() || text.chars().count() > MAX_TEXT {
        return Err(ApiError::BadRequest(format!(
            "text must be 1 to {MAX_TEXT} characters"
        )));
    }
    let id = prepare_change(
        &state,
        &caller,
        id,
        "alert.comment",
        json!({ "text": text }),
    )
    .await?;
    let (alert, event) = state
        .store
        .comment_alert(id, &caller.actor(), text, OffsetDateTime::now_utc())
        .await?;
    Ok(changed(alert, &event))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    outcome: String,
    note: Option<String>,
}

async fn resolve(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    request: Result<Json<ResolveBody>, JsonRejection>,
) -> Result<Json<Changed>, ApiError> {
    let request = body(request)?;
    if !OUTCOMES.iter().any(|(o, _)| *o == request.outcome) {
        let known: Vec<&str> = OUTCOMES.iter().map(|(o, _)| *o).collect();
        return Err(ApiError::BadRequest(format!(
            "outcome must be one of {}; got {:?}",
            known.join(", "),
            request.outcome
        )));
    }
    let note = request
        .note
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    if note.is_some_and(|n| n.chars().count() > MAX_TEXT) {
        return Err(ApiError::BadRequest(format!(
            "note must be at most {MAX_TEXT} characters"
        )));
    }
    let id = prepare_change(
        &state,
        &caller,
        id,
        "alert.resolve",
        json!({ "outcome": request.outcome, "note": note }),
    )
    .await?;
    let (alert, event) = state
        .store
        .resolve_alert_after_intervention(
            id,
            &caller.actor(),
            &request.outcome,
            note,
            OffsetDateTime::now_utc(),
        )
        .await?;
    Ok(changed(alert, &event))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lists() {
        assert_eq!(
            parse_status(None).ok(),
            Some(vec![Workflow::New, Workflow::Acknowledged])
        );
        assert_eq!(
            parse_status(Some("resolved, new,resolved")).ok(),
            Some(vec![Workflow::Resolved, Workflow::New])
        );
        assert!(parse_status(Some("open")).is_err());
        assert!(parse_status(Some("")).is_err());
        assert!(parse_status(Some("new,")).is_err());
    }
}
