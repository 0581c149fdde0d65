//! Patients and their readings.
//!
//! - `GET /api/v1/patients[?cot=ID]`: the patients of the caller's COTs
//! - `POST /api/v1/patients` `{"cot","code","display_name","birth_year"?,"conditions"?}`:
//!   enroll a patient with one of the caller's COTs (201)
//! - `GET /api/v1/patients/{id}`: the patient with their devices and the care-plan template
//!   the alert engine applies while no plan is stored
//! - `GET /api/v1/patients/{id}/readings?from=&to=&kind=&limit=`: readings by measurement
//!   time, `from` inclusive and `to` exclusive (RFC 3339), `kind` one of bp, spo2, glucose,
//!   `limit` 1–10000 (default 1000), oldest first, in canonical units.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, rejection};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/patients", get(list).post(enroll))
        .route("/patients/{id}", get(show))
        .route("/patients/{id}/readings", get(readings))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    cot: Option<i64>,
}

#[derive(Debug, Serialize)]
struct PatientList {
    patients: Vec<store::Patient>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PatientList>, ApiError> {
    let Query(query) = query.map_err(rejection)?;
    let patients = state
        .store
        .list_patients(Some(&caller.cots), query.cot)
        .await?;
    state
        .audit(
            &caller,
            "patient.list",
            format!("patients cot={:?}", query.cot),
        )
        .await?;
    Ok(Json(PatientList { patients }))
}

#[derive(Debug, Serialize)]
struct PatientDetail {
    #[serde(flatten)]
    patient: store::Patient,
    devices: Vec<store::Device>,
    /// The template the alert engine applies while no care plan is stored (from the
    /// patient's conditions: one name, or several joined with `+` when they compose), so
    /// clients need not repeat the rule.
    care_plan_template: String,
}

/// The patient, if it exists and is enrolled with one of the caller's COTs; else 404, so a
/// patient of another COT is indistinguishable from none.
pub(crate) async fn visible_patient(
    state: &AppState,
    caller: &Caller,
    id: i64,
) -> Result<store::Patient, ApiError> {
    state
        .store
        .get_patient(id)
        .await?
        .filter(|p| caller.sees_cot(p.cot_id))
        .ok_or_else(|| ApiError::NotFound(format!("patient {id}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollBody {
    cot: i64,
    code: String,
    display_name: String,
    birth_year: Option<i32>,
    #[serde(default)]
    conditions: Vec<String>,
}

async fn enroll(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<EnrollBody>, JsonRejection>,
) -> Result<(StatusCode, Json<store::Patient>), ApiError> {
    let Json(body) = body.map_err(rejection)?;
    if !caller.sees_cot(body.cot) {
        return Err(ApiError::NotFound(format!("COT {}", body.cot)));
    }
    let patient = state
        .store
        .add_patient(&store::NewPatient {
            cot_id: body.cot,
            code: body.code,
            display_name: body.display_name,
            birth_year: body.birth_year,
            conditions: body.conditions,
        })
        .await?;
    state
        .audit_patient(
            &caller,
            "patient.enroll",
            format!("patient:{}", patient.id),
            &patient,
            None,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(patient)))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, axum::extract::rejection::PathRejection>,
) -> Result<Json<PatientDetail>, ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let patient = visible_patient(&state, &caller, id).await?;
    let devices = state.store.list_devices(None, Some(id)).await?;
    state
        .audit_patient(
            &caller,
            "patient.read",
            format!("patient:{id}"),
            &patient,
            None,
        )
        .await?;
    let care_plan_template = alerting::plan::template_label(&patient.conditions);
    Ok(Json(PatientDetail {
        patient,
        devices,
        care_plan_template,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadingsQuery {
    from: Option<String>,
    to: Option<String>,
    kind: Option<String>,
    limit: Option<i64>,
}

#[derive(Debug, Serialize)]
struct ReadingList {
    patient_id: i64,
    count: usize,
    readings: Vec<ReadingOut>,
}

/// A stored reading plus what its device time says next to its receive time: `ok`, `late`
/// (a backlog from a device that was offline), `ahead` or `behind` (the device clock is
/// implausible), `unset` (the device had no clock; the receive time stands in).
#[derive(Debug, Serialize)]
pub(super) struct ReadingOut {
    #[serde(flatten)]
    reading: store::StoredReading,
    clock: &'static str,
}

impl From<store::StoredReading> for ReadingOut {
    fn from(reading: store::StoredReading) -> Self {
        let ms = |t: OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
        let clock = protocol::limits::ClockState::assess(
            ms(reading.measured_at),
            ms(reading.received_at),
            reading.clock_unset,
        );
        ReadingOut {
            reading,
            clock: clock.as_str(),
        }
    }
}

pub(crate) fn parse_time(
    name: &str,
    value: Option<&str>,
) -> Result<Option<OffsetDateTime>, ApiError> {
    value
        .map(|v| {
            OffsetDateTime::parse(v, &Rfc3339)
                .map_err(|e| ApiError::BadRequest(format!("{name} must be an RFC 3339 time: {e}")))
        })
        .transpose()
}

async fn readings(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, axum::extract::rejection::PathRejection>,
    query: Result<Query<ReadingsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ReadingList>, ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let Query(query) = query.map_err(rejection)?;
    let from = parse_time("from", query.from.as_deref())?;
    let to = parse_time("to", query.to.as_deref())?;
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(ApiError::BadRequest("from must not be after to".into()));
    }
    let kind = query
        .kind
        .as_deref()
        .map(|k| {
            store::ReadingKind::parse(k)
                .ok_or_else(|| ApiError::BadRequest("kind must be bp, spo2 or glucose".into()))
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 10000".into(),
        ));
    }
    let patient = visible_patient(&state, &caller, id).await?;
    let readings = state
        .store
        .readings(&store::ReadingQuery {
            patient_id: id,
            from,
            to,
            kind,
            limit,
        })
        .await?;
    state
        .audit_patient(
            &caller,
            "readings.read",
            format!(
                "patient:{id} kind={:?} from={:?} to={:?}",
                query.kind, query.from, query.to
            ),
            &patient,
            None,
        )
        .await?;
    let readings: Vec<ReadingOut> = readings.into_iter().map(ReadingOut::from).collect();
    Ok(Json(ReadingList {
        patient_id: id,
        count: readings.len(),
        readings,
    }))
}
