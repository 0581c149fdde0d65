//! The API through its router (no sockets): authentication, error shape, queries, audit.
#![allow(clippy::unwrap_used)]

use api::app;
use api::http::{AppState, auth};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use store::testing::TestDb;
use store::{CommitBatch, DeviceKind, NewDevice, NewPatient, NewReading, ReadingKind};
use time::OffsetDateTime;
use time::macros::datetime;
use tower::ServiceExt;

struct Fixture {
    db: TestDb,
    token: String,
    patient_id: i64,
}

async fn fixture() -> Fixture {
    let db = TestDb::sqlite().await;
    let store = &db.store;
    let cot = store.add_cot("COT-T", "COT di test").await.unwrap();
    let patient = store
        .add_patient(&NewPatient {
            cot_id: cot.id,
            code: "P-1".into(),
            display_name: "Maria Rossi".into(),
            birth_year: Some(1948),
            conditions: vec!["copd".into()],
        })
        .await
        .unwrap();
    store
        .add_device(&NewDevice {
            id: "ox-1".into(),
            patient_id: patient.id,
            kind: DeviceKind::Spo2,
            secret_hash: store::credentials::hash_secret("s"),
            model: None,
        })
        .await
        .unwrap();
    let mut batch = CommitBatch::default();
    let base = datetime!(2026-11-01 08:00 UTC);
    for i in 0..10i64 {
        let kind = if i % 2 == 0 {
            ReadingKind::Spo2
        } else {
            ReadingKind::BloodPressure
        };
        batch.readings.push(NewReading {
            systolic: (kind == ReadingKind::BloodPressure).then_some(130.0),
            diastolic: (kind == ReadingKind::BloodPressure).then_some(80.0),
            pulse: Some(70.0),
            spo2: (kind == ReadingKind::Spo2).then_some(90.0 + i as f32 / 2.0),
            ..NewReading::bare(
                "ox-1",
                i,
                patient.id,
                kind,
                base + time::Duration::hours(i),
                OffsetDateTime::now_utc(),
            )
        });
    }
    store.commit_batch(&batch).await.unwrap();
    let token =
        api::ops::identity::service_account(store, "nurse-console", store::Role::Nurse, &[cot.id])
            .await
            .unwrap();
    Fixture {
        db,
        token,
        patient_id: patient.id,
    }
}

async fn get(f: &Fixture, uri: &str, token: Option<&str>) -> (StatusCode, serde_json::Value) {
    let mut req = Request::get(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = app(AppState::new(f.db.store.clone()))
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, body)
}

#[tokio::test]
async fn every_api_route_needs_a_valid_token() {
    let f = fixture().await;
    let (expired, hash) = auth::new_token();
    let user =
        f.db.store
            .user_by_username("nurse-console")
            .await
            .unwrap()
            .unwrap();
    f.db.store
        .add_api_token(&store::NewApiToken {
            user_id: user.id,
            name: "old",
            kind: store::TokenKind::ApiKey,
            token_hash: &hash,
            expires_at: Some(OffsetDateTime::now_utc() - time::Duration::hours(1)),
        })
        .await
        .unwrap();
    let routes = [
        "/api/v1/patients".to_owned(),
        format!("/api/v1/patients/{}", f.patient_id),
        format!("/api/v1/patients/{}/readings", f.patient_id),
        "/api/v1/devices".to_owned(),
        "/api/v1/devices/ox-1".to_owned(),
        "/api/v1/alerts".to_owned(),
    ];
    let forged = format!("{}{}", auth::TOKEN_PREFIX, "0".repeat(64));
    for route in &routes {
        for (token, code) in [
            (None, "unauthorized"),
            (Some("Basic abc"), "unauthorized"),
            (Some(forged.as_str()), "unauthorized"),
            (Some(expired.as_str()), "token_rejected"),
        ] {
            let (status, body) = get(&f, route, token).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{route} with {token:?}");
            assert_eq!(body["error"]["code"], code, "{route}: {body}");
        }
        let (status, _) = get(&f, route, Some(&f.token)).await;
        assert_eq!(status, StatusCode::OK, "{route} with a valid token");
    }
    // Probes are open and carry no patient data.
    assert_eq!(get(&f, "/healthz", None).await.0, StatusCode::OK);
    assert_eq!(get(&f, "/readyz", None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn readings_by_range_and_kind() {
    let f = fixture().await;
    let base = format!("/api/v1/patients/{}/readings", f.patient_id);
    let (status, body) = get(&f, &base, Some(&f.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["count"], 10);
    let seqs: Vec<i64> = body["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (0..10).collect::<Vec<_>>());

    let (_, body) = get(&f, &format!("{base}?kind=spo2"), Some(&f.token)).await;
    assert_eq!(body["count"], 5);
    assert!(
        body["readings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["kind"] == "spo2")
    );

    let (_, body) = get(
        &f,
        &format!("{base}?from=2026-11-01T10:00:00Z&to=2026-11-01T13:00:00Z"),
        Some(&f.token),
    )
    .await;
    let seqs: Vec<i64> = body["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 3, 4]);

    let (_, body) = get(&f, &format!("{base}?limit=3"), Some(&f.token)).await;
    assert_eq!(body["count"], 3);

    for (query, what) in [
        ("?kind=weight", "kind"),
        ("?from=yesterday", "from"),
        ("?limit=0", "limit"),
        ("?from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z", "from"),
        ("?colour=red", "colour"),
    ] {
        let (status, body) = get(&f, &format!("{base}{query}"), Some(&f.token)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(body["error"]["code"], "bad_request");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(what),
            "{query}: {body}"
        );
    }
    let (status, body) = get(&f, "/api/v1/patients/999/readings", Some(&f.token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = get(&f, "/api/v1/patients/abc", Some(&f.token)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = get(&f, "/api/v1/nothing-here", Some(&f.token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn patient_and_device_views() {
    let f = fixture().await;
    let (_, body) = get(
        &f,
        &format!("/api/v1/patients/{}", f.patient_id),
        Some(&f.token),
    )
    .await;
    assert_eq!(body["display_name"], "Maria Rossi");
    assert_eq!(
        body["care_plan_template"], "copd",
        "from the conditions: {body}"
    );
    assert_eq!(body["devices"][0]["id"], "ox-1");
    assert!(
        body["devices"][0].get("secret_hash").is_none(),
        "secret hash exposed: {body}"
    );
    let (_, body) = get(&f, "/api/v1/devices/ox-1", Some(&f.token)).await;
    assert_eq!(body["last_seq"], 9);
    assert!(body["last_seen_at"].is_string(), "{body}");
    let (status, _) = get(&f, "/api/v1/devices/nope", Some(&f.token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn reads_of_patient_data_are_audited() {
    let f = fixture().await;
    let before = f.db.store.list_audit(1000).await.unwrap().len();
    get(
        &f,
        &format!("/api/v1/patients/{}/readings?kind=spo2", f.patient_id),
        Some(&f.token),
    )
    .await;
    let audit = f.db.store.list_audit(1000).await.unwrap();
    assert_eq!(audit.len(), before + 1);
    let entry = &audit[0];
    assert_eq!(entry.actor, "user:nurse-console");
    assert_eq!(entry.action, "readings.read");
    assert!(
        entry
            .target
            .starts_with(&format!("patient:{}", f.patient_id)),
        "{entry:?}"
    );
    // A refused request reads nothing and audits nothing.
    get(
        &f,
        &format!("/api/v1/patients/{}/readings", f.patient_id),
        None,
    )
    .await;
    assert_eq!(f.db.store.list_audit(1000).await.unwrap().len(), before + 1);
}
