//! Shared set-up for the alert and care-plan API tests: a COT with two patients, a
//! blood-pressure device with stored readings, a token, and request helpers (through the
//! router, no sockets).
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use api::app;
use api::http::AppState;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use store::testing::TestDb;
use store::{
    AlertReading, CommitBatch, DeviceKind, NewDevice, NewPatient, NewReading, ReadingKind,
    Severity, Trigger,
};
use time::OffsetDateTime;
use time::macros::datetime;
use tower::ServiceExt;

pub const T0: OffsetDateTime = datetime!(2026-11-01 08:00 UTC);
pub const TOKEN_NAME: &str = "nurse-console";

pub struct Fixture {
    pub db: TestDb,
    pub token: String,
    pub cot_id: i64,
    pub p1: i64,
    pub p2: i64,
    /// One authentication state for every request, as one server has (login throttling).
    pub auth: std::sync::Arc<api::http::AuthState>,
}

/// Readings `0..20` of device `bp-1` (patient 1), one a minute from [`T0`], systolic
/// `150 + seq`.
pub async fn fixture(db: TestDb) -> Fixture {
    let store = &db.store;
    let cot = store.add_cot("COT-A", "COT di test").await.unwrap();
    let mut patients = Vec::new();
    for (code, name) in [("P-1", "Maria Rossi"), ("P-2", "Luigi Bianchi")] {
        let p = store
            .add_patient(&NewPatient {
                cot_id: cot.id,
                code: code.into(),
                display_name: name.into(),
                birth_year: Some(1950),
                conditions: vec!["hypertension".into()],
            })
            .await
            .unwrap();
        patients.push(p.id);
    }
    store
        .add_device(&NewDevice {
            id: "bp-1".into(),
            patient_id: patients[0],
            kind: DeviceKind::BloodPressure,
            secret_hash: store::credentials::hash_secret("s"),
            model: None,
        })
        .await
        .unwrap();
    let mut batch = CommitBatch::default();
    for seq in 0..20i64 {
        batch.readings.push(bp_reading("bp-1", patients[0], seq));
    }
    store.commit_batch(&batch).await.unwrap();
    let token =
        api::ops::identity::service_account(store, TOKEN_NAME, store::Role::Physician, &[cot.id])
            .await
            .unwrap();
    Fixture {
        db,
        token,
        cot_id: cot.id,
        p1: patients[0],
        p2: patients[1],
        auth: std::sync::Arc::default(),
    }
}

/// Reading `seq` of blood-pressure device `device`: at `T0 + seq` minutes, systolic
/// `150 + seq`.
pub fn bp_reading(device: &str, patient: i64, seq: i64) -> NewReading {
    NewReading {
        systolic: Some(150.0 + seq as f32),
        diastolic: Some(90.0),
        pulse: Some(70.0),
        ..NewReading::bare(
            device,
            seq,
            patient,
            ReadingKind::BloodPressure,
            T0 + time::Duration::minutes(seq),
            T0 + time::Duration::minutes(seq),
        )
    }
}

/// A trigger of `rule` for `patient` at `T0 + minutes`, linking readings `seqs` of `bp-1`.
pub fn trigger(
    patient: i64,
    rule: &str,
    severity: Severity,
    minutes: i64,
    seqs: &[i64],
) -> Trigger {
    let at = T0 + time::Duration::minutes(minutes);
    Trigger {
        patient_id: patient,
        rule_id: rule.into(),
        rule_kind: "threshold".into(),
        title: format!("{rule} for patient {patient}"),
        severity,
        plan_version: None,
        metric: Some("systolic".into()),
        unit: Some("mm[Hg]".into()),
        value: seqs.last().map(|&s| 150.0 + s as f64),
        higher_is_worse: true,
        readings: seqs
            .iter()
            .map(|&seq| AlertReading {
                device_id: "bp-1".into(),
                seq,
                measured_at: T0 + time::Duration::minutes(seq),
                value: Some(150.0 + seq as f64),
            })
            .collect(),
        at,
        due_at: Some(at + time::Duration::minutes(30)),
        detail: None,
        unconfirmed: false,
    }
}

/// Opens an alert and returns its id.
pub async fn open(f: &Fixture, t: &Trigger) -> i64 {
    match f.db.store.trigger_alert(t).await.unwrap() {
        store::TriggerOutcome::Opened { alert_id } => alert_id,
        other => panic!("expected a new alert, got {other:?}"),
    }
}

/// A request with an optional JSON body and bearer token.
pub fn request(method: &str, uri: &str, body: Option<Value>, token: Option<&str>) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string()))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    }
}

impl Fixture {
    pub fn state(&self) -> AppState {
        AppState {
            auth: self.auth.clone(),
            ..AppState::new(self.db.store.clone())
        }
    }

    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let req = request(method, uri, body, token);
        let resp = app(self.state()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call("GET", uri, None, Some(&self.token.clone())).await
    }

    pub async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", uri, Some(body), Some(&self.token.clone()))
            .await
    }

    /// The audit entries written since `before` entries existed, oldest first.
    pub async fn audit_since(&self, before: usize) -> Vec<store::AuditEntry> {
        let mut all = self.db.store.list_audit(10_000).await.unwrap();
        all.reverse();
        all.split_off(before)
    }
}
