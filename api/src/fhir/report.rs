//! The telemonitoring report ([`crate::report`]) as FHIR: a `DiagnosticReport` whose
//! `result` are the Observations it summarises (the main Observation of every reading of the
//! period) and whose `presentedForm` links the PDF, and a `DocumentReference` carrying the PDF
//! itself in Italian and English (for the FSE 2.0, which collects documents).
//!
//! - `GET /fhir/r4/DiagnosticReport/{id}`, `GET /fhir/r4/DocumentReference/{id}`: `id` is
//!   `tm-{patient}-{yyyymmdd}-{yyyymmdd}` (the period's first and last day, UTC).
//! - `GET /fhir/r4/DiagnosticReport?patient=`, `GET /fhir/r4/DocumentReference?patient=`: the
//!   report of the last 30 days and the one of the previous calendar month.
//!
//! Nothing is stored: each answer is computed from the store, like every other resource here.
//! The report's code is a local one (`urn:sentinella:report|telemonitoring`): the document
//! type the FSE's affinity domain expects for telemonitoring is for the integration to map.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use base64::Engine;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::mapping::{Part, observation_id};
use super::{FhirError, FhirResult, Params, Search, Token, base_url, ok, visible_patient};
use crate::http::AppState;
use crate::report::{Lang, Period, Report, pdf};

/// The `result` references one DiagnosticReport lists at most.
const MAX_RESULTS: usize = 2_000;
const REPORT_SYSTEM: &str = "urn:sentinella:report";

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn code(lang: Lang) -> Value {
    let text = match lang {
        Lang::It => "Relazione di telemonitoraggio",
        Lang::En => "Telemonitoring report",
    };
    json!({
        "coding": [{"system": REPORT_SYSTEM, "code": "telemonitoring", "display": "Telemonitoring report"}],
        "text": text
    })
}

fn effective_period(period: Period) -> Value {
    json!({
        "start": rfc3339(period.start()),
        "end": rfc3339(period.end() - time::Duration::seconds(1)),
    })
}

/// The URL of the PDF in `lang` through the API (the FHIR base's host).
fn pdf_url(fhir_base: &str, report: &Report, lang: Lang) -> String {
    let api = fhir_base.trim_end_matches("/fhir/r4");
    format!(
        "{api}/api/v1/patients/{}/report?from={}&to={}&lang={}",
        report.patient.id,
        report.period.from,
        report.period.to,
        lang.as_str()
    )
}

fn status(report: &Report) -> &'static str {
    if report.period.end() > report.generated_at {
        "partial"
    } else {
        "final"
    }
}

/// A short conclusion: readings, adherence, alerts.
fn conclusion(r: &Report) -> String {
    let adherence: Vec<String> = r
        .adherence
        .iter()
        .map(|a| format!("{} {}/{}", a.kind.as_str(), a.taken, a.expected))
        .collect();
    let resolved = r
        .alerts
        .iter()
        .filter(|a| a.alert.workflow == store::Workflow::Resolved)
        .count();
    let interventions: usize = r.alerts.iter().map(|a| a.interventions.len()).sum();
    format!(
        "{} readings; adherence (taken/expected): {}; {} alerts ({resolved} resolved), {interventions} interventions.",
        r.readings.len(),
        if adherence.is_empty() {
            "no schedule".to_owned()
        } else {
            adherence.join(", ")
        },
        r.alerts.len()
    )
}

/// The DiagnosticReport of `report`.
pub(crate) fn diagnostic_report(report: &Report, fhir_base: &str) -> Value {
    let id = report.period.fhir_id(report.patient.id);
    let results: Vec<Value> = report
        .readings
        .iter()
        .take(MAX_RESULTS)
        .map(|r| {
            let part = match r.kind {
                store::ReadingKind::BloodPressure => Part::Bp,
                store::ReadingKind::Spo2 => Part::Spo2,
                store::ReadingKind::Glucose => Part::Glu,
            };
            json!({"reference": format!("Observation/{}", observation_id(part, &r.device_id, r.seq))})
        })
        .collect();
    let presented: Vec<Value> = [Lang::It, Lang::En]
        .iter()
        .map(|&l| {
            let title = match l {
                Lang::It => "Relazione di telemonitoraggio",
                Lang::En => "Telemonitoring report",
            };
            json!({
                "contentType": "application/pdf",
                "language": l.as_str(),
                "url": pdf_url(fhir_base, report, l),
                "title": format!("{title} {} – {}", report.period.from, report.period.to),
            })
        })
        .collect();
    let mut out = json!({
        "resourceType": "DiagnosticReport",
        "id": id,
        "status": status(report),
        "code": code(Lang::It),
        "subject": {"reference": format!("Patient/{}", report.patient.id), "display": report.patient.display_name},
        "effectivePeriod": effective_period(report.period),
        "issued": rfc3339(report.generated_at),
        "conclusion": conclusion(report),
        "presentedForm": presented,
    });
    if let Some(cot) = &report.cot_name {
        out["performer"] = json!([{"display": cot}]);
    }
    if !results.is_empty() {
        out["result"] = Value::Array(results);
    }
    out
}

/// The DocumentReference of `report`, with the PDF in Italian and in English.
pub(crate) fn document_reference(report: &Report, fhir_base: &str) -> Value {
    let id = report.period.fhir_id(report.patient.id);
    let content: Vec<Value> = [Lang::It, Lang::En]
        .iter()
        .map(|&l| {
            let bytes = pdf::render(report, l);
            json!({"attachment": {
                "contentType": "application/pdf",
                "language": l.as_str(),
                "data": base64::engine::general_purpose::STANDARD.encode(&bytes),
                "url": pdf_url(fhir_base, report, l),
                "size": bytes.len(),
                "title": format!("report-{}-{}-{}.pdf", report.period.from, report.period.to, l.as_str()),
                "creation": rfc3339(report.generated_at),
            }})
        })
        .collect();
    json!({
        "resourceType": "DocumentReference",
        "id": id,
        "status": "current",
        "docStatus": if status(report) == "final" { "final" } else { "preliminary" },
        "type": code(Lang::It),
        "subject": {"reference": format!("Patient/{}", report.patient.id), "display": report.patient.display_name},
        "date": rfc3339(report.generated_at),
        "description": conclusion(report),
        "content": content,
        "context": {
            "period": effective_period(report.period),
            "related": [{"reference": format!("DiagnosticReport/{id}")}],
        },
    })
}

/// The patient and period an id names, when the caller sees the patient.
async fn load(
    state: &AppState,
    caller: &crate::http::auth::Caller,
    kind: &str,
    id: &str,
) -> Result<Report, FhirError> {
    let not_found = || FhirError::NotFound(format!("{kind}/{id} not found"));
    let (patient_id, period) = Period::parse_fhir_id(id).ok_or_else(not_found)?;
    let patient = visible_patient(state, caller, patient_id)
        .await
        .map_err(|_| not_found())?;
    Ok(Report::gather(&state.store, &patient, period, OffsetDateTime::now_utc()).await?)
}

pub(super) async fn diagnostic_report_read(
    State(state): State<AppState>,
    caller: Token,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> FhirResult {
    let caller = caller?;
    let report = load(&state, &caller, "DiagnosticReport", &id).await?;
    state
        .audit_patient(
            &caller,
            "fhir.diagnosticreport.read",
            format!("patient:{} report:{id}", report.patient.id),
            &report.patient,
            None,
        )
        .await?;
    ok(diagnostic_report(&report, &base_url(&headers)))
}

pub(super) async fn document_reference_read(
    State(state): State<AppState>,
    caller: Token,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> FhirResult {
    let caller = caller?;
    let report = load(&state, &caller, "DocumentReference", &id).await?;
    state
        .audit_patient(
            &caller,
            "fhir.documentreference.read",
            format!("patient:{} report:{id}", report.patient.id),
            &report.patient,
            None,
        )
        .await?;
    let base = base_url(&headers);
    let body = tokio::task::spawn_blocking(move || document_reference(&report, &base))
        .await
        .map_err(|e| FhirError::BadRequest(format!("report rendering failed: {e}")))?;
    ok(body)
}

/// The reports a search lists: the last 30 days and the previous calendar month.
async fn search_reports(
    state: &AppState,
    caller: &crate::http::auth::Caller,
    params: Params,
    kind: &str,
) -> Result<(Search, Vec<Report>), FhirError> {
    let search = Search::parse(params, &["patient", "subject"])?;
    let patient_id = search.patient()?.ok_or_else(|| {
        FhirError::BadRequest(format!("a {kind} search needs patient=Patient/{{id}}"))
    })?;
    let mut reports = Vec::new();
    let now = OffsetDateTime::now_utc();
    match visible_patient(state, caller, patient_id).await {
        Ok(patient) => {
            for period in [
                Period::last_days(now.date()),
                Period::previous_month(now.date()),
            ] {
                reports.push(Report::gather(&state.store, &patient, period, now).await?);
            }
            state
                .audit_patient(
                    caller,
                    &format!("fhir.{}.search", kind.to_lowercase()),
                    format!("patient:{patient_id}"),
                    &patient,
                    None,
                )
                .await?;
        }
        Err(FhirError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    Ok((search, reports))
}

pub(super) async fn diagnostic_report_search(
    State(state): State<AppState>,
    caller: Token,
    headers: HeaderMap,
    params: Params,
) -> FhirResult {
    let caller = caller?;
    let (search, reports) = search_reports(&state, &caller, params, "DiagnosticReport").await?;
    let base = base_url(&headers);
    let all = reports
        .iter()
        .map(|r| diagnostic_report(r, &base))
        .collect();
    ok(search.bundle(&base, "DiagnosticReport", all, None))
}

pub(super) async fn document_reference_search(
    State(state): State<AppState>,
    caller: Token,
    headers: HeaderMap,
    params: Params,
) -> FhirResult {
    let caller = caller?;
    let (search, reports) = search_reports(&state, &caller, params, "DocumentReference").await?;
    let base = base_url(&headers);
    let all = tokio::task::spawn_blocking(move || {
        reports
            .iter()
            .map(|r| document_reference(r, &base))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| FhirError::BadRequest(format!("report rendering failed: {e}")))?;
    ok(search.bundle(&base_url(&headers), "DocumentReference", all, None))
}
