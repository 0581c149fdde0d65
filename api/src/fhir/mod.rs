//! The read-only FHIR R4 API under `/fhir/r4`: the same bearer tokens, COT scope and audit
//! trail as `/api/v1`, resources mapped from the store by [`mapping`] with the codes in
//! [`codes`].
//!
//! - `GET /fhir/r4/metadata`: the CapabilityStatement (open, no patient data).
//! - `GET /fhir/r4/Patient[?_id=&identifier=]`, `GET /fhir/r4/Patient/{id}`
//! - `GET /fhir/r4/Device[?patient=]`, `GET /fhir/r4/Device/{id}`: PHD-style devices with
//!   their IEEE 11073 specialisation.
//! - `GET /fhir/r4/Observation?patient=&code=&date=&category=`, `GET /fhir/r4/Observation/{id}`:
//!   one or two Observations per reading (vital-signs profiles, MDC primary coding, UCUM,
//!   interpretation and reference range from the care plan in force, status bits as the PHD
//!   IG maps them).
//! - `GET /fhir/r4/CarePlan?patient=[&status=]`, `GET /fhir/r4/CarePlan/{patient}-{version}`,
//!   `GET /fhir/r4/ObservationDefinition/{patient}-{version}-{metric}`: the care plan and its
//!   thresholds, as the HL7 Italia telemonitoring IG models them.
//! - `GET /fhir/r4/Task[?patient=&status=]`, `GET /fhir/r4/Task/{id}`: alerts as Tasks.
//! - `GET /fhir/r4/DiagnosticReport[?patient=]`, `GET /fhir/r4/DiagnosticReport/{id}`,
//!   `GET /fhir/r4/DocumentReference[?patient=]`, `GET /fhir/r4/DocumentReference/{id}`: the
//!   telemonitoring report of a period and its PDF (see [`report`]).
//!
//! Every search answers a `searchset` Bundle with `total` and `self`/`next` links; paging is
//! `_count` (1–1000, default 100) and `_offset`. Errors are OperationOutcomes: 401 without a
//! valid token, 404 for an unknown resource and for one of a COT the caller does not see,
//! 400 for a search parameter that is unknown or malformed. Responses are
//! `application/fhir+json`.

pub(crate) mod codes;
pub(crate) mod mapping;
pub(crate) mod report;

use std::collections::HashMap;

use alerting::plan::{self, CarePlan};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::error::ApiError;
use mapping::Limits;

/// The FHIR router, to nest at `/fhir/r4`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/metadata", get(metadata))
        .route("/Patient", get(patient_search))
        .route("/Patient/{id}", get(patient_read))
        .route("/Device", get(device_search))
        .route("/Device/{id}", get(device_read))
        .route("/Observation", get(observation_search))
        .route("/Observation/{id}", get(observation_read))
        .route("/CarePlan", get(care_plan_search))
        .route("/CarePlan/{id}", get(care_plan_read))
        .route(
            "/ObservationDefinition/{id}",
            get(observation_definition_read),
        )
        .route("/Task", get(task_search))
        .route("/Task/{id}", get(task_read))
        .route("/DiagnosticReport", get(report::diagnostic_report_search))
        .route(
            "/DiagnosticReport/{id}",
            get(report::diagnostic_report_read),
        )
        .route("/DocumentReference", get(report::document_reference_search))
        .route(
            "/DocumentReference/{id}",
            get(report::document_reference_read),
        )
}

const FHIR_JSON: &str = "application/fhir+json";
const DEFAULT_COUNT: usize = 100;
const MAX_COUNT: usize = 1000;
/// Readings one Observation search may scan; beyond, the search must be narrowed by date.
const MAX_READINGS: i64 = 10_000;
/// Alerts one Task search may scan.
const MAX_ALERTS: i64 = 10_000;

// ----- errors and responses ----------------------------------------------------------------

/// An error, answered as an OperationOutcome.
#[derive(Debug)]
pub enum FhirError {
    /// No valid token (401).
    Unauthorized(String),
    /// The caller's role may not read this (403).
    Forbidden(String),
    /// Unknown, or of a COT the caller does not see (404).
    NotFound(String),
    /// A bad search parameter or id (400).
    BadRequest(String),
    /// The search would scan too much (400, `too-costly`).
    TooCostly(String),
    /// The store failed (503 when transient, else 500).
    Store(store::StoreError),
}

impl From<ApiError> for FhirError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Unauthorized | ApiError::TokenRejected => {
                FhirError::Unauthorized(e.to_string())
            }
            ApiError::NotFound(what) => FhirError::NotFound(format!("{what} not found")),
            ApiError::Forbidden => FhirError::Forbidden(e.to_string()),
            ApiError::Store(e) => FhirError::Store(e),
            other => FhirError::BadRequest(other.to_string()),
        }
    }
}

impl From<store::StoreError> for FhirError {
    fn from(e: store::StoreError) -> Self {
        FhirError::from(ApiError::from(e))
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let (status, code, text) = match &self {
            FhirError::Unauthorized(t) => (StatusCode::UNAUTHORIZED, "login", t.clone()),
            FhirError::Forbidden(t) => (StatusCode::FORBIDDEN, "forbidden", t.clone()),
            FhirError::NotFound(t) => (StatusCode::NOT_FOUND, "not-found", t.clone()),
            FhirError::BadRequest(t) => (StatusCode::BAD_REQUEST, "invalid", t.clone()),
            FhirError::TooCostly(t) => (StatusCode::BAD_REQUEST, "too-costly", t.clone()),
            FhirError::Store(e) if e.is_transient() => {
                tracing::error!(error = %e, "store error while serving a FHIR request");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "transient",
                    "the store is temporarily unavailable".to_owned(),
                )
            }
            FhirError::Store(e) => {
                tracing::error!(error = %e, "store error while serving a FHIR request");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "exception",
                    "internal error".to_owned(),
                )
            }
        };
        let mut response = fhir(status, mapping::operation_outcome("error", code, &text));
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

fn fhir(status: StatusCode, body: Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

type FhirResult = Result<Response, FhirError>;
type Token = Result<Caller, ApiError>;
type Params = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

fn ok(body: Value) -> FhirResult {
    Ok(fhir(StatusCode::OK, body))
}

/// The base URL the client used (for `fullUrl` and links): from the Host header, when it
/// looks like a host.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .unwrap_or("localhost");
    format!("http://{host}/fhir/r4")
}

// ----- search parameters -------------------------------------------------------------------

/// Parsed search parameters: each name with its values (a name may repeat).
struct Search {
    params: Vec<(String, String)>,
    count: usize,
    offset: usize,
}

impl Search {
    /// Parses `params`, refusing names outside `allowed` (besides `_count`, `_offset`,
    /// `_format`).
    fn parse(params: Params, allowed: &[&str]) -> Result<Search, FhirError> {
        let Query(params) = params.map_err(|e| FhirError::BadRequest(e.to_string()))?;
        let mut count = DEFAULT_COUNT;
        let mut offset = 0;
        let mut kept = Vec::new();
        for (name, value) in params {
            match name.as_str() {
                "_count" => {
                    count = value
                        .parse()
                        .ok()
                        .filter(|c| (1..=MAX_COUNT).contains(c))
                        .ok_or_else(|| {
                            FhirError::BadRequest(format!("_count must be 1 to {MAX_COUNT}"))
                        })?;
                }
                "_offset" => {
                    offset = value.parse().map_err(|_| {
                        FhirError::BadRequest("_offset must be a number ≥ 0".into())
                    })?;
                }
                "_format" if value.contains("json") => {}
                n if allowed.contains(&n) => kept.push((name, value)),
                n => {
                    return Err(FhirError::BadRequest(format!(
                        "unknown search parameter {n:?}; this search knows {}",
                        allowed.join(", ")
                    )));
                }
            }
        }
        Ok(Search {
            params: kept,
            count,
            offset,
        })
    }

    fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.params
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The one value of `name`, if given (twice is an error).
    fn one(&self, name: &str) -> Result<Option<&str>, FhirError> {
        let mut values = self.all(name);
        let first = values.next();
        if values.next().is_some() {
            return Err(FhirError::BadRequest(format!("{name} may be given once")));
        }
        Ok(first)
    }

    /// A `patient`/`subject` reference: `Patient/{id}` or `{id}`.
    fn patient(&self) -> Result<Option<i64>, FhirError> {
        let a = self.one("patient")?;
        let b = self.one("subject")?;
        let Some(v) = a.or(b) else { return Ok(None) };
        if a.is_some() && b.is_some() {
            return Err(FhirError::BadRequest(
                "give patient or subject, not both".into(),
            ));
        }
        let id = v.strip_prefix("Patient/").unwrap_or(v);
        id.parse().map(Some).map_err(|_| {
            FhirError::BadRequest(format!(
                "patient must be Patient/{{id}} or {{id}}; got {v:?}"
            ))
        })
    }

    /// The page of `all` with the Bundle around it.
    fn bundle(&self, base: &str, ty: &str, all: Vec<Value>, total: Option<usize>) -> Value {
        let total_known = total.unwrap_or(all.len());
        let page: Vec<Value> = all.into_iter().skip(self.offset).take(self.count).collect();
        let url = |offset: usize| {
            let mut q: Vec<String> = self
                .params
                .iter()
                .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
                .collect();
            q.push(format!("_count={}", self.count));
            q.push(format!("_offset={offset}"));
            format!("{base}/{ty}?{}", q.join("&"))
        };
        let after = self.offset.saturating_add(self.count);
        let next = (after < total_known).then(|| url(after));
        mapping::searchset(
            base,
            page,
            Some(total_known),
            &url(self.offset),
            next.as_deref(),
        )
    }
}

/// Percent-encodes a query component (everything but RFC 3986 unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A FHIR `date` search value → the half-open interval [from, to) it matches.
/// Accepts a day (`2026-11-01`) or an RFC 3339 date-time, with an optional prefix
/// `eq` (default), `ge`, `gt`, `le`, `lt`.
fn date_bounds(value: &str) -> Result<(Option<OffsetDateTime>, Option<OffsetDateTime>), FhirError> {
    let bad = || {
        FhirError::BadRequest(format!(
            "date must be [eq|ge|gt|le|lt]YYYY-MM-DD or an RFC 3339 date-time; got {value:?}"
        ))
    };
    let (prefix, rest) = match value.get(..2) {
        Some(p @ ("eq" | "ge" | "gt" | "le" | "lt")) => (p, &value[2..]),
        _ => ("eq", value),
    };
    // The instant a value starts at, and the instant after its precision ends.
    let (start, end) = if rest.len() == 10 {
        let day = time::Date::parse(
            rest,
            time::macros::format_description!("[year]-[month]-[day]"),
        )
        .map_err(|_| bad())?;
        let start = day.midnight().assume_utc();
        (
            start,
            start.checked_add(time::Duration::days(1)).ok_or_else(bad)?,
        )
    } else {
        let at = OffsetDateTime::parse(rest, &Rfc3339).map_err(|_| bad())?;
        (
            at,
            at.checked_add(time::Duration::milliseconds(1))
                .ok_or_else(bad)?,
        )
    };
    Ok(match prefix {
        "ge" => (Some(start), None),
        "gt" => (Some(end), None),
        "le" => (None, Some(end)),
        "lt" => (None, Some(start)),
        _ => (Some(start), Some(end)),
    })
}

// ----- shared look-ups ---------------------------------------------------------------------

/// The patient, if it exists and the caller sees its COT (else "not found", so another
/// COT's patients do not leak).
async fn visible_patient(
    state: &AppState,
    caller: &Caller,
    id: i64,
) -> Result<store::Patient, FhirError> {
    crate::http::patients::visible_patient(state, caller, id)
        .await
        .map_err(|e| match e {
            ApiError::NotFound(_) => FhirError::NotFound(format!("Patient/{id} not found")),
            other => other.into(),
        })
}

/// The thresholds that applied to the patient's readings over time: every stored plan
/// version (newest first) with when it started, and the template for the patient's
/// conditions, which the alert engine uses before the first version.
struct PlanHistory {
    versions: Vec<(OffsetDateTime, Limits)>,
    template: Limits,
}

impl PlanHistory {
    async fn load(state: &AppState, patient: &store::Patient) -> Result<PlanHistory, FhirError> {
        let rows = state.store.list_care_plans(patient.id).await?;
        let versions = rows
            .iter()
            .filter_map(|row| {
                // A stored plan that no longer parses gives no thresholds rather than an error.
                CarePlan::from_json(&row.plan).ok().map(|p| {
                    let p = alerting::net::effective(&p.normalized());
                    (row.created_at, Limits::of(&p, Some(row.version)))
                })
            })
            .collect();
        let composed = plan::for_conditions(&patient.conditions).normalized();
        let template = Limits::of(&alerting::net::effective(&composed), None);
        Ok(PlanHistory { versions, template })
    }

    /// The thresholds in force when a reading arrived (the engine evaluates on arrival).
    fn at(&self, at: OffsetDateTime) -> &Limits {
        self.versions
            .iter()
            .find(|(since, _)| *since <= at)
            .map_or(&self.template, |(_, l)| l)
    }
}

/// The patient a search names, when the caller sees them: the subject of its audit entry.
async fn searched_patient(
    state: &AppState,
    caller: &Caller,
    id: Option<i64>,
) -> Result<Option<store::Patient>, FhirError> {
    let Some(id) = id else { return Ok(None) };
    match visible_patient(state, caller, id).await {
        Ok(p) => Ok(Some(p)),
        Err(FhirError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

// ----- handlers ----------------------------------------------------------------------------

async fn metadata() -> FhirResult {
    ok(mapping::capability_statement())
}

async fn patient_read(
    State(state): State<AppState>,
    caller: Token,
    Path(id): Path<String>,
) -> FhirResult {
    let caller = caller?;
    let id: i64 = id
        .parse()
        .map_err(|_| FhirError::NotFound(format!("Patient/{id} not found")))?;
    let patient = visible_patient(&state, &caller, id).await?;
    state
        .audit_patient(
            &caller,
            "fhir.patient.read",
            format!("patient:{id}"),
            &patient,
            None,
        )
        .await?;
    ok(mapping::patient(&patient))
}

async fn patient_search(
    State(state): State<AppState>,
    caller: Token,
    headers: HeaderMap,
    params: Params,
) -> FhirResult {
    let caller = caller?;
    let search = Search::parse(params, &["_id", "identifier"])?;
    let id = search.one("_id")?;
    let identifier = search
        .one("identifier")?
        .map(|v| v.rsplit_once('|').map_or(v, |(_, code)| code));
    let patients: Vec<Value> = state
        .store
        .list_patients(Some(&caller.cots), None)
        .await?
        .iter()
        .filter(|p| id.is_none_or(|id| p.id.to_string() == id))
        .filter(|p| identifier.is_none_or(|code| p.code == code))
        .map(mapping::patient)
        .collect();
    state
        .audit(
            &caller,
            "fhir.patient.search",
            format!("patients _id={id:?} identifier={identifier:?}"),
        )
        .await?;
    ok(search.bundle(&base_url(&headers), "Patient", patients, None))
}

async fn device_read(
    State(state): State<AppState>,
    caller: Token,
    Path(id): Path<String>,
) -> FhirResult {
    let caller = caller?;
    let device_id = mapping::device_from_fhir_id(&id);
    let not_found = || FhirError::NotFound(format!("Device/{id} not found"));
    let device = state
        .store
        .get_device(&device_id)
        .await?
        .ok_or_else(not_found)?;
    let patient = visible_patient(&state, &caller, device.patient_id)
        .await
        .map_err(|_| not_found())?;
    state
        .audit_patient(
            &caller,
            "fhir.device.read",
            format!("device:{device_id}"),
            &patient,
            None,
        )
        .await?;
    ok(mapping::device(&device))
}

async fn device_search(
    State(state): State<AppState>,
    caller: Token,
    headers: HeaderMap,
    params: Params,
) -> FhirResult {
    let caller = caller?;
    let search = Search::parse(params, &["patient"])?;
    let patient = search.patient()?;
    let devices = state
        .store
        .list_devices(Some(&caller.cots), patient)
        .await?;
    state
        .audit_about(
            &caller,
            "fhir.device.search",
            format!("devices patient={patient:?}"),
            devices
                .first()
                .map(|d| d.patient_id)
                .filter(|_| patient.is_some()),
            None,
            None,
        )
        .await?;
    let devices = devices.iter().map(mapping::device).collect();
    ok(search.bundle(&base_url(&headers), "Device", devices, None))
}

async fn observation_read(
    State(state): State<AppState>,
    caller: Token,
    Path(id): Path<String>,
) -> FhirResult {
    let caller = caller?;
    let not_found = || FhirError::NotFound(format!("Observation/{id} not found"));
    let (part, device_id, seq) = mapping::parse_observation_id(&id).ok_or_else(not_found)?;
    let reading = state
        .store
        .reading_by_key(&device_id, seq)
        .await?
        .ok_or_else(not_found)?;
    let patient = visible_patient(&state, &caller, reading.patient_id)
        .await
        .map_err(|_| not_found())?;
    let plans = PlanHistory::load(&state, &patient).await?;
    let observation = mapping::observation(&reading, Some(plans.at(reading.received_at)), part)
        .ok_or_else(not_found)?;
    state
        .audit_patient(
            &caller,
            "fhir.observation.read",
            format!("patient:{} observation:{id}", patient.id),
            &patient,
            None,
        )
        .await?;
    ok(observation)
}

/// The reading kinds whose Observations could match the `code` tokens (`None`: any).
fn kinds_for_codes(tokens: &[String]) -> Option<store::ReadingKind> {
    let mut kinds = Vec::new();
    for t in tokens {
        let code = t.rsplit_once('|').map_or(t.as_str(), |(_, c)| c);
        let kind = match code {
            "85354-9" | "150020" => Some(store::ReadingKind::BloodPressure),
            "2708-6" | "59408-5" | "150456" => Some(store::ReadingKind::Spo2),
            c if codes::glucose(None).iter().any(|g| g.1 == c)
                || c.starts_with("1601")
                || c.starts_with("1602")
                || ["41653-7", "2345-7", "99504-3"].contains(&c) =>
            {
                Some(store::ReadingKind::Glucose)
            }
            _ => None,
        };
        match kind {
            Some(k) if !kinds.contains(&k) => kinds.push(k),
            Some(_) => {}
            None => return None,
        }
    }
    match kinds.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

async fn observation_search(
    State(state): State<AppState>,
    caller: Token,
    headers: HeaderMap,
    params: Params,
) -> FhirResult {
    let caller = caller?;
    let search = Search::parse(params, &["patient", "subject", "code", "date", "category"])?;
    let base = base_url(&headers);
    let patient_id = search.patient()?.ok_or_else(|| {
        FhirError::BadRequest("an Observation search needs patient=Patient/{id}".into())
    })?;
    let tokens: Vec<String> = search
        .all("code")
        .flat_map(|v| v.split(','))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let mut from: Option<OffsetDateTime> = None;
    let mut to: Option<OffsetDateTime> = None;
    for value in search.all("date") {
        let (f, t) = date_bounds(value)?;
        if let Some(f) = f {
            from = Some(from.map_or(f, |x| x.max(f)));
        }
        if let Some(t) = t {
            to = Some(to.map_or(t, |x| x.min(t)));
        }
    }
    let categories: Vec<&str> = search.all("category").flat_map(|v| v.split(',')).collect();
    for c in &categories {
        let code = c.rsplit_once('|').map_or(*c, |(_, c)| c);
        if code != "vital-signs" {
            return Err(FhirError::BadRequest(format!(
                "category must be vital-signs; got {c:?}"
            )));
        }
    }
    let patient = match visible_patient(&state, &caller, patient_id).await {
        Ok(p) => p,
        // Another COT's patient: an empty result, as for a patient that does not exist.
        Err(FhirError::NotFound(_)) => {
            return ok(search.bundle(&base, "Observation", Vec::new(), None));
        }
        Err(e) => return Err(e),
    };
    let empty_range = matches!((from, to), (Some(f), Some(t)) if f >= t);
    let readings = if empty_range {
        Vec::new()
    } else {
        state
            .store
            .readings(&store::ReadingQuery {
                patient_id,
                from,
                to,
                kind: kinds_for_codes(&tokens),
                limit: MAX_READINGS,
            })
            .await?
    };
    if i64::try_from(readings.len()).unwrap_or(i64::MAX) >= MAX_READINGS {
        return Err(FhirError::TooCostly(format!(
            "more than {MAX_READINGS} readings match; narrow the search with date=ge…&date=lt…"
        )));
    }
    let plans = PlanHistory::load(&state, &patient).await?;
    let observations: Vec<Value> = readings
        .iter()
        .flat_map(|r| mapping::observations(r, Some(plans.at(r.received_at))))
        .map(|(_, o)| o)
        .filter(|o| tokens.is_empty() || tokens.iter().any(|t| mapping::code_matches(o, t)))
        .filter(|o| categories.is_empty() || o.get("category").is_some())
        .collect();
    state
        .audit_patient(
            &caller,
            "fhir.observation.search",
            format!(
                "patient:{patient_id} code={tokens:?} from={:?} to={:?}",
                from.map(mapping::time),
                to.map(mapping::time)
            ),
            &patient,
            None,
        )
        .await?;
    ok(search.bundle(&base, "Observation", observations, None))
}

/// A care-plan version with when the next one replaced it.
async fn plan_version(
    state: &AppState,
    patient_id: i64,
    version: i64,
) -> Result<Option<(store::CarePlanRow, Option<OffsetDateTime>)>, FhirError> {
    let Some(row) = state.store.care_plan_version(patient_id, version).await? else {
        return Ok(None);
    };
    let next = state
        .store
        .care_plan_version(patient_id, version + 1)
        .await?
        .map(|n| n.created_at);
    Ok(Some((row, next)))
}

fn parse_plan(row: &store::CarePlanRow) -> Result<CarePlan, FhirError> {
    // Plans are validated when stored; one that no longer parses is a server-side fault.
    CarePlan::from_json(&row.plan).map_err(|e| {
        FhirError::Store(store::StoreError::Invalid(format!(
            "stored care plan {}/{} does not parse: {e}",
            row.patient_id, row.version
        )))
    })
}

async fn care_plan_read(
    State(state): State<AppState>,
    caller: Token,
    Path(id): Path<String>,
) -> FhirResult {
    let caller = caller?;
    let not_found = || FhirError::NotFound(format!("CarePlan/{id} not found"));
    let (patient_id, version) = mapping::parse_plan_id(&id).ok_or_else(not_found)?;
    let patient = visible_patient(&state, &caller, patient_id)
        .await
        .map_err(|_| not_found())?;
    let (row, superseded) = plan_version(&state, patient_id, version)
        .await?
        .ok_or_else(not_found)?;
    let plan = parse_plan(&row)?;
    state
        .audit_patient(
            &caller,
            "fhir.careplan.read",
            format!("patient:{patient_id} version:{version}"),
            &patient,
            None,
        )
        .await?;
    ok(mapping::care_plan(&row, &plan, superseded))
}

async fn care_plan_search(
    State(state): State<AppState>,
    caller: Token,
    headers: HeaderMap,
    params: Params,
) -> FhirResult {
    let caller = caller?;
    let search = Search::parse(params, &["patient", "subject", "status"])?;
    let base = base_url(&headers);
    let patient_id = search
        .patient()?
        .ok_or_else(|| FhirError::BadRequest("a CarePlan search needs patient=".into()))?;
    let status = search.one("status")?;
    if let Some(s) = status
        && s != "active"
        && s != "revoked"
    {
        return Err(FhirError::BadRequest(format!(
            "status must be active or revoked; got {s:?}"
        )));
    }
    let Ok(patient) = visible_patient(&state, &caller, patient_id).await else {
        return ok(search.bundle(&base, "CarePlan", Vec::new(), None));
    };
    // Newest first; each version was superseded when the one before it in the list began.
    let rows = state.store.list_care_plans(patient_id).await?;
    let mut plans = Vec::new();
    let mut next_start: Option<OffsetDateTime> = None;
    for row in &rows {
        let plan = parse_plan(row)?;
        let resource = mapping::care_plan(row, &plan, next_start);
        next_start = Some(row.created_at);
        if status.is_none_or(|s| resource["status"] == s) {
            plans.push(resource);
        }
    }
    state
        .audit_patient(
            &caller,
            "fhir.careplan.search",
            format!("patient:{patient_id} status={status:?}"),
            &patient,
            None,
        )
        .await?;
    ok(search.bundle(&base, "CarePlan", plans, None))
}

async fn observation_definition_read(
    State(state): State<AppState>,
    caller: Token,
    Path(id): Path<String>,
) -> FhirResult {
    let caller = caller?;
    let not_found = || FhirError::NotFound(format!("ObservationDefinition/{id} not found"));
    let (patient_id, version, metric) = mapping::parse_definition_id(&id).ok_or_else(not_found)?;
    let patient = visible_patient(&state, &caller, patient_id)
        .await
        .map_err(|_| not_found())?;
    let row = state
        .store
        .care_plan_version(patient_id, version)
        .await?
        .ok_or_else(not_found)?;
    let plan = parse_plan(&row)?;
    let definition = mapping::observation_definition(patient_id, version, &plan, metric)
        .ok_or_else(not_found)?;
    state
        .audit_patient(
            &caller,
            "fhir.observationdefinition.read",
            format!("patient:{patient_id} version:{version}"),
            &patient,
            None,
        )
        .await?;
    ok(definition)
}

/// The reading kind of each of a patient's devices.
async fn device_kinds(
    state: &AppState,
    patient_id: i64,
) -> Result<HashMap<String, store::ReadingKind>, FhirError> {
    Ok(state
        .store
        .list_devices(None, Some(patient_id))
        .await?
        .into_iter()
        .map(|d| (d.id, store::ReadingKind::from(d.kind)))
        .collect())
}

async fn task_resource(state: &AppState, alert: &store::Alert) -> Result<Value, FhirError> {
    let readings = state.store.alert_readings(alert.id).await?;
    let kinds = device_kinds(state, alert.patient_id).await?;
    let plan_stored = match alert.plan_version {
        Some(v) => state
            .store
            .care_plan_version(alert.patient_id, v)
            .await?
            .is_some(),
        None => false,
    };
    Ok(mapping::task(
        alert,
        &readings,
        &|d: &str| kinds.get(d).copied(),
        plan_stored,
    ))
}

async fn task_read(
    State(state): State<AppState>,
    caller: Token,
    Path(id): Path<String>,
) -> FhirResult {
    let caller = caller?;
    let not_found = || FhirError::NotFound(format!("Task/{id} not found"));
    let alert_id: i64 = id.parse().map_err(|_| not_found())?;
    let alert = state
        .store
        .get_alert(alert_id)
        .await?
        .filter(|a| caller.sees_cot(a.cot_id))
        .ok_or_else(not_found)?;
    let task = task_resource(&state, &alert).await?;
    state
        .audit_about(
            &caller,
            "fhir.task.read",
            format!("patient:{} alert:{alert_id}", alert.patient_id),
            Some(alert.patient_id),
            Some(alert.cot_id),
            None,
        )
        .await?;
    ok(task)
}

async fn task_search(
    State(state): State<AppState>,
    caller: Token,
    headers: HeaderMap,
    params: Params,
) -> FhirResult {
    let caller = caller?;
    let search = Search::parse(params, &["patient", "subject", "status"])?;
    let patient = search.patient()?;
    let statuses: Vec<&str> = search.all("status").flat_map(|v| v.split(',')).collect();
    let mut workflow = Vec::new();
    for s in &statuses {
        let w = match *s {
            "requested" => store::Workflow::New,
            "accepted" | "in-progress" => store::Workflow::Acknowledged,
            "completed" => store::Workflow::Resolved,
            other => {
                return Err(FhirError::BadRequest(format!(
                    "status must be requested, accepted, in-progress or completed; got {other:?}"
                )));
            }
        };
        if !workflow.contains(&w) {
            workflow.push(w);
        }
    }
    let mut alerts = Vec::new();
    loop {
        let page = state
            .store
            .list_alerts(&store::AlertQuery {
                cot_ids: caller.cot_scope(),
                patient_id: patient,
                workflow: workflow.clone(),
                limit: 1000,
                offset: i64::try_from(alerts.len()).unwrap_or(i64::MAX),
                ..store::AlertQuery::default()
            })
            .await?;
        let full = page.len() == 1000;
        alerts.extend(page);
        if !full {
            break;
        }
        if i64::try_from(alerts.len()).unwrap_or(i64::MAX) >= MAX_ALERTS {
            return Err(FhirError::TooCostly(format!(
                "more than {MAX_ALERTS} alerts match; narrow the search with patient= or status="
            )));
        }
    }
    // Only the page is expanded into Tasks (each needs its readings), so filter and page on
    // the alerts themselves; accepted and in-progress differ by the assignee.
    let matches: Vec<&store::Alert> = alerts
        .iter()
        .filter(|a| {
            statuses.is_empty() || {
                let s = if a.workflow == store::Workflow::Acknowledged {
                    if a.assignee.is_some() {
                        "in-progress"
                    } else {
                        "accepted"
                    }
                } else if a.workflow == store::Workflow::New {
                    "requested"
                } else {
                    "completed"
                };
                statuses.contains(&s)
            }
        })
        .collect();
    let total = matches.len();
    let subject = searched_patient(&state, &caller, patient).await?;
    let mut page = Vec::new();
    for a in matches.iter().skip(search.offset).take(search.count) {
        page.push(task_resource(&state, a).await?);
    }
    state
        .audit_about(
            &caller,
            "fhir.task.search",
            format!("alerts patient={patient:?} status={statuses:?}"),
            subject.as_ref().map(|p| p.id),
            subject.as_ref().map(|p| p.cot_id),
            None,
        )
        .await?;
    // `bundle` pages its input: hand it the page at its offset.
    let mut padded = vec![Value::Null; search.offset.min(total)];
    padded.extend(page);
    let mut bundle = search.bundle(&base_url(&headers), "Task", padded, Some(total));
    if let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) {
        entries.retain(|e| !e["resource"].is_null());
    }
    ok(bundle)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use time::macros::datetime;

    #[test]
    fn date_prefixes() {
        let d = datetime!(2026-11-01 00:00 UTC);
        let next = datetime!(2026-11-02 00:00 UTC);
        assert_eq!(date_bounds("2026-11-01").unwrap(), (Some(d), Some(next)));
        assert_eq!(date_bounds("ge2026-11-01").unwrap(), (Some(d), None));
        assert_eq!(date_bounds("gt2026-11-01").unwrap(), (Some(next), None));
        assert_eq!(date_bounds("le2026-11-01").unwrap(), (None, Some(next)));
        assert_eq!(date_bounds("lt2026-11-01").unwrap(), (None, Some(d)));
        let t = datetime!(2026-11-01 08:30 UTC);
        assert_eq!(
            date_bounds("ge2026-11-01T08:30:00Z").unwrap(),
            (Some(t), None)
        );
        for bad in [
            "",
            "ge",
            "2026-13-01",
            "xx2026-11-01",
            "2026-11-01T08:30",
            "é",
            // Past the end of time: 400, not an overflow panic.
            "9999-12-31",
            "le9999-12-31T23:59:59.9999Z",
        ] {
            assert!(date_bounds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn codes_narrow_the_reading_kind() {
        let k = |t: &[&str]| kinds_for_codes(&t.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            k(&["http://loinc.org|85354-9"]),
            Some(store::ReadingKind::BloodPressure)
        );
        assert_eq!(k(&["59408-5", "2708-6"]), Some(store::ReadingKind::Spo2));
        assert_eq!(k(&["41653-7"]), Some(store::ReadingKind::Glucose));
        assert_eq!(k(&["8867-4"]), None);
        assert_eq!(k(&["85354-9", "41653-7"]), None);
        assert_eq!(k(&[]), None);
    }

    #[test]
    fn query_components_are_encoded() {
        assert_eq!(
            encode("http://loinc.org|8867-4"),
            "http%3A%2F%2Floinc.org%7C8867-4"
        );
        assert_eq!(
            encode("ge2026-11-01T08:00:00+01:00"),
            "ge2026-11-01T08%3A00%3A00%2B01%3A00"
        );
    }
}
