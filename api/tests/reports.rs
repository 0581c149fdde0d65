//! The telemonitoring report through the API (`GET /api/v1/patients/{id}/report`) on SQLite
//! and PostgreSQL: a PDF in Italian and in English with the patient, the period, the plan's
//! thresholds, the alerts with their interventions; bad periods and languages refused;
//! tenancy and audit. And the scheduled monthly reports: written once per patient and
//! language, audited. (The FHIR form is in fhir.rs; every role in authz.rs.)
#![allow(clippy::unwrap_used)]

mod common;

use api::app;
use axum::http::StatusCode;
use common::{fixture, open, trigger};
use http_body_util::BodyExt;
use store::testing::TestDb;
use store::{Role, Severity};
use tower::ServiceExt;

#[tokio::test]
async fn report_pdf_sqlite() {
    report_pdf(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn report_pdf_postgres() {
    report_pdf(TestDb::postgres().await).await;
}

/// GET `uri` with `token`: status, content type, content disposition, body bytes.
async fn fetch(
    f: &common::Fixture,
    uri: &str,
    token: &str,
) -> (StatusCode, String, String, Vec<u8>) {
    let req = common::request("GET", uri, None, Some(token));
    let resp = app(f.state()).oneshot(req).await.unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (status, ct, cd) = (
        resp.status(),
        header("content-type"),
        header("content-disposition"),
    );
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, ct, cd, body)
}

/// Whether the PDF shows `text` (given as WinAnsi code points). Its content streams are not
/// compressed: text is in literal strings (`(…)`, with `\(`, `\)`, `\\` and octal
/// escapes) or, when it has bytes above 127, hex strings (`<…>`); both are decoded here.
fn shows(pdf: &[u8], text: &str) -> bool {
    let mut plain = Vec::with_capacity(pdf.len());
    let mut i = 0;
    while i < pdf.len() {
        let b = pdf[i];
        if b == b'<' && pdf.get(i + 1).is_some_and(u8::is_ascii_hexdigit) {
            let end = pdf[i..]
                .iter()
                .position(|&c| c == b'>')
                .map_or(pdf.len(), |p| i + p);
            let hex = std::str::from_utf8(&pdf[i + 1..end]).unwrap_or("");
            for pair in hex.as_bytes().chunks(2) {
                let pair = std::str::from_utf8(pair).unwrap_or("3f");
                plain.push(u8::from_str_radix(pair, 16).unwrap_or(b'?'));
            }
            i = end + 1;
        } else if b == b'\\' && i + 1 < pdf.len() {
            let digits = pdf[i + 1..]
                .iter()
                .take(3)
                .take_while(|b| (b'0'..=b'7').contains(b))
                .count();
            if digits > 0 {
                let octal = std::str::from_utf8(&pdf[i + 1..i + 1 + digits]).unwrap();
                plain.push(u8::from_str_radix(octal, 8).unwrap_or(b'?'));
                i += 1 + digits;
            } else {
                plain.push(pdf[i + 1]);
                i += 2;
            }
        } else {
            plain.push(b);
            i += 1;
        }
    }
    let needle: Vec<u8> = text
        .chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect();
    plain.windows(needle.len()).any(|w| w == needle.as_slice())
}

async fn report_pdf(db: TestDb) {
    let f = fixture(db).await;
    let store = &f.db.store;
    // An alert with a call not reached then reached, resolved.
    let a = open(&f, &trigger(f.p1, "bp-high", Severity::High, 10, &[3, 4])).await;
    for result in ["not_reached", "reached"] {
        let (status, body) = f
            .post(
                &format!("/api/v1/alerts/{a}/interventions"),
                serde_json::json!({"kind": "phone_call", "result": result}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, _) = f
        .post(
            &format!("/api/v1/alerts/{a}/resolve"),
            serde_json::json!({"outcome": "called_patient"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let nurse = api::ops::identity::service_account(store, "nurse-r", Role::Nurse, &[f.cot_id])
        .await
        .unwrap();
    let audit_before = store.list_audit(10_000).await.unwrap().len();

    let uri = format!(
        "/api/v1/patients/{}/report?from=2026-11-01&to=2026-11-30",
        f.p1
    );
    let (status, ct, cd, it) = fetch(&f, &uri, &nurse).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&it));
    assert_eq!(ct, "application/pdf");
    assert_eq!(
        cd,
        "attachment; filename=\"report-P-1-2026-11-01-2026-11-30-it.pdf\""
    );
    assert!(it.starts_with(b"%PDF-"), "not a PDF");
    for text in [
        "Relazione di telemonitoraggio",
        "Maria Rossi",
        "Periodo: 01/11/2026 \u{96} 30/11/2026",
        "Pressione arteriosa (mmHg)",
        ">= 180 sistolica CRITICO",
        "sistolica: 20 misure, min 150, media 159,5, max 169",
        "Telefonata (non raggiunto)",
        "Telefonata (raggiunto)",
        "risolto: paziente chiamato",
    ] {
        assert!(shows(&it, text), "the Italian report lacks {text:?}");
    }
    let (status, _, _, en) = fetch(&f, &format!("{uri}&lang=en"), &nurse).await;
    assert_eq!(status, StatusCode::OK);
    for text in [
        "Telemonitoring report",
        "Period: 2026-11-01 \u{96} 2026-11-30",
        "systolic: 20 readings, min 150, mean 159.5, max 169",
        "Phone call (not reached)",
        "resolved: patient called",
    ] {
        assert!(shows(&en, text), "the English report lacks {text:?}");
    }
    // The default period is the last 30 days up to today.
    let (status, _, cd, _) = fetch(&f, &format!("/api/v1/patients/{}/report", f.p1), &nurse).await;
    assert_eq!(status, StatusCode::OK);
    let today = time::OffsetDateTime::now_utc().date();
    assert!(cd.contains(&format!("-{today}-it.pdf")), "{cd}");

    // Bad requests.
    for (query, needle) in [
        ("from=2026-11-31", "from"),
        ("from=2026-12-01&to=2026-11-01", "after"),
        ("from=2020-01-01&to=2026-11-01", "366"),
        ("lang=de", "lang"),
        ("format=docx", "format"),
    ] {
        let req = common::request(
            "GET",
            &format!("/api/v1/patients/{}/report?{query}", f.p1),
            None,
            Some(&nurse),
        );
        let resp = app(f.state()).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{query}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains(needle), "{query}: {text}");
    }

    // Tenancy: another COT's nurse gets 404, and no report of another COT's patient exists.
    let other_cot = store.add_cot("COT-R", "Altra").await.unwrap();
    let other_nurse =
        api::ops::identity::service_account(store, "nurse-other", Role::Nurse, &[other_cot.id])
            .await
            .unwrap();
    let (status, ct, _, body) = fetch(&f, &uri, &other_nurse).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(ct.starts_with("application/json"));
    assert!(!String::from_utf8_lossy(&body).contains("Maria"));

    // Audit: each download, by whom, about the patient, with the period and language; the
    // refused ones are not.
    let audit = f.audit_since(audit_before).await;
    let downloads: Vec<_> = audit.iter().filter(|e| e.action == "report.pdf").collect();
    assert_eq!(downloads.len(), 3, "{audit:?}");
    assert!(
        downloads
            .iter()
            .all(|e| e.actor == "user:nurse-r" && e.patient_id == Some(f.p1))
    );
    let detail: serde_json::Value =
        serde_json::from_str(downloads[1].detail.as_deref().unwrap()).unwrap();
    assert_eq!(detail["from"], "2026-11-01");
    assert_eq!(detail["lang"], "en");
}

#[tokio::test]
async fn monthly_reports_are_written_once_and_audited() {
    let f = fixture(TestDb::sqlite().await).await;
    let dir = tempfile::tempdir().unwrap();
    // On 3 December 2026 the previous month is November, where the fixture's readings are.
    let now = time::macros::datetime!(2026-12-03 02:00 UTC);
    let written = api::report::monthly::generate_due(&f.db.store, dir.path(), now)
        .await
        .unwrap();
    assert_eq!(written, 4, "two patients, two languages");
    let it = dir.path().join("COT-A/P-1/2026-11-it.pdf");
    let pdf = std::fs::read(&it).unwrap();
    assert!(pdf.starts_with(b"%PDF-"));
    assert!(shows(&pdf, "Maria Rossi") && shows(&pdf, "01/11/2026 \u{96} 30/11/2026"));
    assert!(dir.path().join("COT-A/P-2/2026-11-en.pdf").exists());
    // A second pass (or a restart) writes nothing again.
    let again = api::report::monthly::generate_due(&f.db.store, dir.path(), now)
        .await
        .unwrap();
    assert_eq!(again, 0);
    let audit = f.db.store.list_audit(10_000).await.unwrap();
    let monthly: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "report.monthly")
        .collect();
    assert_eq!(monthly.len(), 4);
    assert!(monthly.iter().all(|e| e.actor == "system:reports"));
    assert!(monthly.iter().any(|e| e.patient_id == Some(f.p1)));
}
