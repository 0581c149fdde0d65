//! The telemonitoring report as a PDF (see [`crate::report`]).
//!
//! - `GET /api/v1/patients/{id}/report?from=&to=&lang=`: `from` and `to` are dates
//!   (`YYYY-MM-DD`, UTC days, both included; default the last 30 days up to today, at most 366
//!   days), `lang` `it` (default) or `en`. Answers `application/pdf` as an attachment.
//!
//! Same access as the patient's readings (clinical roles, the caller's COTs, 404 otherwise);
//! every download is audited (`report.pdf`, naming the patient and the period).

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, rejection};
use super::patients::visible_patient;
use crate::report::{Lang, Period, Report, pdf};

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/patients/{id}/report", get(download))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportQuery {
    from: Option<String>,
    to: Option<String>,
    lang: Option<String>,
}

fn parse_date(name: &str, value: &str) -> Result<time::Date, ApiError> {
    time::Date::parse(
        value,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .map_err(|_| ApiError::BadRequest(format!("{name} must be a date (YYYY-MM-DD)")))
}

/// The period a query asks for: both dates, one of them (with 30 days on the other side),
/// or neither (the last 30 days up to `today`).
pub(crate) fn period(
    from: Option<&str>,
    to: Option<&str>,
    today: time::Date,
) -> Result<Period, ApiError> {
    let days = time::Duration::days(crate::report::DEFAULT_DAYS - 1);
    let from = from.map(|v| parse_date("from", v)).transpose()?;
    let to = to.map(|v| parse_date("to", v)).transpose()?;
    let (from, to) = match (from, to) {
        (Some(f), Some(t)) => (f, t),
        (Some(f), None) => (f, f + days),
        (None, Some(t)) => (t - days, t),
        (None, None) => return Ok(Period::last_days(today)),
    };
    Period::new(from, to).map_err(ApiError::BadRequest)
}

pub(crate) fn lang(value: Option<&str>) -> Result<Lang, ApiError> {
    value.map_or(Ok(Lang::It), |v| {
        Lang::parse(v).ok_or_else(|| ApiError::BadRequest("lang must be it or en".into()))
    })
}

async fn download(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let Query(query) = query.map_err(rejection)?;
    let now = OffsetDateTime::now_utc();
    let period = period(query.from.as_deref(), query.to.as_deref(), now.date())?;
    let lang = lang(query.lang.as_deref())?;
    let patient = visible_patient(&state, &caller, id).await?;
    let report = Report::gather(&state.store, &patient, period, now).await?;
    state
        .audit_patient(
            &caller,
            "report.pdf",
            format!("patient:{id}"),
            &patient,
            Some(
                json!({ "from": period.from.to_string(), "to": period.to.to_string(),
                        "lang": lang.as_str() })
                .to_string(),
            ),
        )
        .await?;
    let bytes = tokio::task::spawn_blocking(move || pdf::render(&report, lang))
        .await
        .map_err(|e| {
            ApiError::Store(store::StoreError::Invalid(format!(
                "report rendering failed: {e}"
            )))
        })?;
    let code: String = patient
        .code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let name = format!(
        "attachment; filename=\"report-{code}-{}-{}-{}.pdf\"",
        period.from,
        period.to,
        lang.as_str()
    );
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pdf"),
    );
    if let Ok(v) = HeaderValue::from_str(&name) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn periods_from_queries() {
        let today = date!(2026 - 12 - 04);
        let p = period(None, None, today).unwrap();
        assert_eq!((p.from, p.to), (date!(2026 - 11 - 05), today));
        let p = period(Some("2026-11-01"), Some("2026-11-30"), today).unwrap();
        assert_eq!(p.days(), 30);
        let p = period(None, Some("2026-11-30"), today).unwrap();
        assert_eq!(p.from, date!(2026 - 11 - 01));
        assert!(period(Some("2026-11-31"), None, today).is_err());
        assert!(period(Some("2026-12-01"), Some("2026-11-01"), today).is_err());
        assert!(period(Some("2020-01-01"), Some("2026-11-01"), today).is_err());
        assert!(lang(Some("de")).is_err());
        assert_eq!(lang(None).unwrap(), Lang::It);
    }
}
