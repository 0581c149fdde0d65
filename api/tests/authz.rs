//! The authorization matrix: every API route × every role × (own COT, other COT, no token,
//! expired token, tampered token). Each cell asserts the status the policy and tenancy
//! promise, and that no body (the alert stream included) carries anything of the other COT.
//!
//! The matrix's own route list must equal the access policy's table, and every `.route(…)`
//! written in server/src must be in that table: a route added without an entry fails here.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use api::app;
use api::http::AppState;
use api::http::auth::{self, allows};
use api::http::policy::{Access, ROUTES};
use axum::http::StatusCode;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use store::testing::TestDb;
use store::{
    CommitBatch, DeviceKind, NewApiToken, NewDevice, NewPatient, NewUser, Role, TokenKind, UserKind,
};
use time::OffsetDateTime;
use tower::ServiceExt;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// One COT's data, with markers that must never reach a caller of the other COT.
struct Side {
    cot: i64,
    patient: i64,
    device: String,
    alert: i64,
    user: i64,
    markers: Vec<String>,
}

struct World {
    db: TestDb,
    state: AppState,
    a: Side,
    b: Side,
    /// A service account per role in COT A.
    tokens: Vec<(Role, String)>,
    /// An expired token per role in COT A.
    expired: Vec<(Role, String)>,
}

const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

async fn side(db: &TestDb, name: &str) -> Side {
    let store = &db.store;
    let cot = store
        .add_cot(&format!("COT-{name}"), &format!("COT {name}"))
        .await
        .unwrap();
    let code = format!("PAT-{name}-SECRET");
    let display = format!("Paziente {name} Riservato");
    let patient = store
        .add_patient(&NewPatient {
            cot_id: cot.id,
            code: code.clone(),
            display_name: display.clone(),
            birth_year: Some(1944),
            conditions: vec!["hypertension".into()],
        })
        .await
        .unwrap();
    let device = format!("dev-{name}-secret");
    store
        .add_device(&NewDevice {
            id: device.clone(),
            patient_id: patient.id,
            kind: DeviceKind::BloodPressure,
            secret_hash: store::credentials::hash_secret("s"),
            model: Some(format!("model-{name}-secret")),
        })
        .await
        .unwrap();
    let mut batch = CommitBatch::default();
    for seq in 0..3 {
        batch
            .readings
            .push(common::bp_reading(&device, patient.id, seq));
    }
    store.commit_batch(&batch).await.unwrap();
    let alert = fresh_alert(store, patient.id).await;
    let comment = format!("commento-{name}-riservato");
    store
        .comment_alert(alert, "user:x", &comment, OffsetDateTime::now_utc())
        .await
        .unwrap();
    store
        .add_care_plan(&store::NewCarePlan {
            patient_id: patient.id,
            template: Some("hypertension".into()),
            plan: serde_json::to_string(&alerting::plan::template("hypertension").unwrap())
                .unwrap(),
            author: "user:x".into(),
            reason: format!("piano-{name}-riservato"),
        })
        .await
        .unwrap();
    let note = format!("nota-{name}-riservata");
    store
        .set_patient_contacts(
            &store::NewContacts {
                patient_id: patient.id,
                clinical_note: Some(note.clone()),
                gp_name: Some(format!("medico-{name}-riservato")),
                ..Default::default()
            },
            "user:x",
            OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    let call_note = format!("chiamata-{name}-riservata");
    store
        .record_intervention(&store::NewIntervention {
            alert_id: alert,
            kind: store::InterventionKind::PhoneCall,
            call_result: Some(store::CallResult::Reached),
            note: Some(&call_note),
            actor: "user:x",
            at: OffsetDateTime::now_utc(),
            retry_at: None,
        })
        .await
        .unwrap();
    let user = fresh_user(
        store,
        cot.id,
        UserKind::Person,
        &format!("utente-{name}-riservato"),
    )
    .await;
    Side {
        cot: cot.id,
        patient: patient.id,
        device: device.clone(),
        alert,
        user,
        markers: vec![
            code,
            display,
            device,
            comment,
            format!("utente-{name}-riservato"),
            note,
            format!("medico-{name}-riservato"),
            call_note,
        ],
    }
}

async fn fresh_alert(store: &store::Store, patient: i64) -> i64 {
    let mut t = common::trigger(patient, &unique("rule-"), store::Severity::High, 1, &[]);
    t.readings.clear();
    match store.trigger_alert(&t).await.unwrap() {
        store::TriggerOutcome::Opened { alert_id } => alert_id,
        other => panic!("{other:?}"),
    }
}

async fn fresh_user(store: &store::Store, cot: i64, kind: UserKind, name: &str) -> i64 {
    store
        .add_user(&NewUser {
            username: name,
            display_name: name,
            role: Role::Nurse,
            kind,
            password_hash: (kind == UserKind::Person).then_some(DUMMY_HASH),
            cot_ids: &[cot],
        })
        .await
        .unwrap()
        .id
}

async fn fresh_device(store: &store::Store, patient: i64) -> String {
    let id = unique("dev-fresh-");
    store
        .add_device(&NewDevice {
            id: id.clone(),
            patient_id: patient,
            kind: DeviceKind::Spo2,
            secret_hash: store::credentials::hash_secret("s"),
            model: None,
        })
        .await
        .unwrap();
    id
}

async fn world() -> World {
    let db = TestDb::sqlite().await;
    let a = side(&db, "A").await;
    let b = side(&db, "B").await;
    let mut tokens = Vec::new();
    let mut expired = Vec::new();
    for role in Role::ALL {
        let name = format!("svc-{}", role.as_str());
        let token = api::ops::identity::service_account(&db.store, &name, role, &[a.cot])
            .await
            .unwrap();
        tokens.push((role, token));
        let user = db.store.user_by_username(&name).await.unwrap().unwrap();
        let (old, hash) = auth::new_token();
        db.store
            .add_api_token(&NewApiToken {
                user_id: user.id,
                name: "old",
                kind: TokenKind::Session,
                token_hash: &hash,
                expires_at: Some(OffsetDateTime::now_utc() - time::Duration::minutes(1)),
            })
            .await
            .unwrap();
        expired.push((role, old));
    }
    let state = AppState::new(db.store.clone());
    World {
        db,
        state,
        a,
        b,
        tokens,
        expired,
    }
}

/// The request of a route aimed at one side's resources (a fresh one where the call changes
/// or consumes it), and the status it answers when allowed.
async fn request(
    w: &World,
    method: &str,
    path: &str,
    side: &Side,
) -> (String, Option<Value>, StatusCode) {
    let store = &w.db.store;
    let ok = StatusCode::OK;
    let created = StatusCode::CREATED;
    let p = side.patient;
    let fill = |p: &str, id: &str| p.replace("{id}", id);
    match (method, path) {
        ("GET", "/fhir/r4/Patient/{id}") | ("GET", "/fhir/r4/Task/{id}") => {
            let id = if path.contains("Task") { side.alert } else { p };
            (fill(path, &id.to_string()), None, ok)
        }
        ("GET", "/fhir/r4/Device/{id}") => (fill(path, &side.device), None, ok),
        ("GET", "/fhir/r4/DiagnosticReport/{id}" | "/fhir/r4/DocumentReference/{id}") => {
            (fill(path, &format!("tm-{p}-20261101-20261130")), None, ok)
        }
        ("GET", "/fhir/r4/Observation/{id}") => {
            (fill(path, &format!("bp-0-{}", side.device)), None, ok)
        }
        ("GET", "/fhir/r4/CarePlan/{id}") => (fill(path, &format!("{p}-1")), None, ok),
        ("GET", "/fhir/r4/ObservationDefinition/{id}") => {
            (fill(path, &format!("{p}-1-sys")), None, ok)
        }
        (
            "GET",
            "/fhir/r4/Observation"
            | "/fhir/r4/Device"
            | "/fhir/r4/CarePlan"
            | "/fhir/r4/Task"
            | "/fhir/r4/DiagnosticReport"
            | "/fhir/r4/DocumentReference",
        ) => (format!("{path}?patient={p}"), None, ok),
        ("POST", "/api/v1/auth/login") => (
            path.into(),
            Some(json!({"username": unique("nobody-"), "password": "wrong password"})),
            StatusCode::UNAUTHORIZED,
        ),
        ("POST", "/api/v1/auth/logout") => (path.into(), None, StatusCode::NO_CONTENT),
        ("POST", "/api/v1/cots") => (
            path.into(),
            Some(json!({"code": unique("COT-NEW-"), "name": "Nuova"})),
            created,
        ),
        ("POST", "/api/v1/users") => (
            path.into(),
            Some(
                json!({"username": unique("new-user-"), "display_name": "N", "role": "nurse",
                        "cots": [side.cot], "password": "a long enough password"}),
            ),
            created,
        ),
        ("GET", "/api/v1/users/{id}") => (fill(path, &side.user.to_string()), None, ok),
        ("POST", "/api/v1/users/{id}/disable") => {
            let u = fresh_user(store, side.cot, UserKind::Person, &unique("dis-")).await;
            (fill(path, &u.to_string()), None, ok)
        }
        ("POST", "/api/v1/users/{id}/password") => {
            let u = fresh_user(store, side.cot, UserKind::Person, &unique("pw-")).await;
            (
                fill(path, &u.to_string()),
                Some(json!({"password": "another long password"})),
                StatusCode::NO_CONTENT,
            )
        }
        ("PUT", "/api/v1/users/{id}/cots") => {
            let u = fresh_user(store, side.cot, UserKind::Person, &unique("cots-")).await;
            (
                fill(path, &u.to_string()),
                Some(json!({"cots": [w.a.cot]})),
                ok,
            )
        }
        ("POST", "/api/v1/users/{id}/api-keys") => {
            let u = fresh_user(store, side.cot, UserKind::Service, &unique("key-")).await;
            (
                fill(path, &u.to_string()),
                Some(json!({"name": "export"})),
                created,
            )
        }
        ("POST", "/api/v1/patients") => (
            path.into(),
            Some(json!({"cot": side.cot, "code": unique("NEW-P-"), "display_name": "Nuovo"})),
            created,
        ),
        ("GET", "/api/v1/patients/{id}/care-plan/versions/{version}") => (
            path.replace("{id}", &p.to_string())
                .replace("{version}", "1"),
            None,
            ok,
        ),
        ("POST", "/api/v1/patients/{id}/care-plan") => (
            fill(path, &p.to_string()),
            Some(json!({"template": "hypertension", "reason": "matrix"})),
            created,
        ),
        ("PUT", "/api/v1/patients/{id}/contacts") => (
            fill(path, &p.to_string()),
            Some(
                json!({"phones": [{"label": "casa", "number": "+39 02 555 0101"}],
                        "gp_name": "Dott. Rossi", "clinical_note": "vive sola"}),
            ),
            ok,
        ),
        (_, path) if path.starts_with("/api/v1/patients/{id}") => {
            (fill(path, &p.to_string()), None, ok)
        }
        ("GET", "/api/v1/devices/{id}") => (fill(path, &side.device), None, ok),
        ("POST", "/api/v1/devices") => (
            path.into(),
            Some(json!({"patient": p, "kind": "spo2", "id": unique("dev-new-")})),
            created,
        ),
        ("POST", "/api/v1/devices/{id}/revoke") => {
            let d = fresh_device(store, p).await;
            (fill(path, &d), None, ok)
        }
        ("GET", "/api/v1/alerts/{id}") => (fill(path, &side.alert.to_string()), None, ok),
        ("POST", _) if path.starts_with("/api/v1/alerts/{id}/") => {
            let alert = fresh_alert(store, p).await;
            let (body, status) = match path.rsplit('/').next() {
                Some("assign") => (json!({"assignee": "svc"}), ok),
                Some("comments") => (json!({"text": "ok"}), ok),
                Some("resolve") => {
                    // A high alert is resolved only after an intervention is on record.
                    store
                        .record_intervention(&store::NewIntervention {
                            alert_id: alert,
                            kind: store::InterventionKind::AdviceGiven,
                            call_result: None,
                            note: None,
                            actor: "user:x",
                            at: OffsetDateTime::now_utc(),
                            retry_at: None,
                        })
                        .await
                        .unwrap();
                    (json!({"outcome": "no_action_needed"}), ok)
                }
                Some("interventions") => (
                    json!({"kind": "phone_call", "result": "not_reached", "note": "segreteria"}),
                    created,
                ),
                _ => (json!({}), ok),
            };
            (fill(path, &alert.to_string()), Some(body), status)
        }
        ("GET", "/api/v1/alerts/stream") => (format!("{path}?after=0"), None, ok),
        ("GET", path) if !path.contains('{') => (path.into(), None, ok),
        other => panic!("the matrix has no request for {other:?}: add one"),
    }
}

/// Whether the route names one COT's resource (so the other COT's answers 404), rather than
/// listing within the caller's scope or touching no patient data.
fn tenant_scoped(method: &str, path: &str) -> bool {
    path.contains("{id}")
        || (method, path) == ("POST", "/api/v1/patients")
        || (method, path) == ("POST", "/api/v1/devices")
        || (method, path) == ("POST", "/api/v1/users")
}

async fn call(
    w: &World,
    method: &str,
    uri: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (StatusCode, String) {
    let req = common::request(method, uri, body, token);
    let resp = app(w.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let streaming = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut body = resp.into_body();
    let mut text = Vec::new();
    if streaming {
        // The stream never ends: take what the replay sends in a moment.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
            if let Some(data) = frame.data_ref() {
                text.extend_from_slice(data);
            }
        }
    } else {
        text = body.collect().await.unwrap().to_bytes().to_vec();
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

fn tampered(token: &str) -> String {
    let mut t = token.to_owned();
    let last = if t.ends_with('0') { '1' } else { '0' };
    t.pop();
    t.push(last);
    t
}

#[tokio::test]
async fn every_route_every_role_every_tenancy_case() {
    let w = world().await;
    let mut cells = 0;
    for &(method, path, access) in ROUTES {
        if !path.starts_with("/api/") && access == Access::Public {
            // Probes and the console's static files (or the redirect to them): open, no
            // patient data.
            let uri = path.replace("{file}", "app.js");
            let (status, body) = call(&w, method, &uri, None, None).await;
            assert!(
                status.is_success() || status.is_redirection(),
                "{method} {uri}: {status}"
            );
            for m in w.a.markers.iter().chain(&w.b.markers) {
                assert!(!body.contains(m.as_str()), "{path} leaks {m}");
            }
            continue;
        }
        for &(role, ref token) in &w.tokens {
            let allowed = match access {
                Access::Public | Access::Authenticated => true,
                Access::Allowed(p) => allows(role, p),
            };
            for (case, side) in [("own COT", &w.a), ("other COT", &w.b)] {
                let (uri, body, success) = request(&w, method, path, side).await;
                let token = if path == "/api/v1/auth/logout" {
                    // Logging out revokes the token: use a fresh one of the same role.
                    api::ops::identity::service_account(
                        &w.db.store,
                        &unique("logout-"),
                        role,
                        &[w.a.cot],
                    )
                    .await
                    .unwrap()
                } else {
                    token.clone()
                };
                let (status, text) = call(&w, method, &uri, body, Some(&token)).await;
                let expected = if !allowed {
                    StatusCode::FORBIDDEN
                } else if case == "other COT" && tenant_scoped(method, path) {
                    StatusCode::NOT_FOUND
                } else {
                    success
                };
                assert_eq!(status, expected, "{role:?} {method} {uri} ({case}): {text}");
                // (A 404 may echo what the caller asked for; that is not a leak.)
                for m in w.b.markers.iter().filter(|m| !uri.contains(m.as_str())) {
                    assert!(
                        !text.contains(m.as_str()),
                        "{role:?} of COT A got COT B's {m:?} from {method} {uri}: {text}"
                    );
                }
                cells += 1;
            }
            if access == Access::Public {
                continue;
            }
            let (uri, body, _) = request(&w, method, path, &w.a).await;
            let expired = &w.expired.iter().find(|(r, _)| *r == role).unwrap().1;
            for (case, token) in [
                ("no token", None),
                ("expired token", Some(expired.clone())),
                ("tampered token", Some(tampered(token))),
                ("not a bearer token", Some(format!("x{token}"))),
            ] {
                let (status, text) = call(&w, method, &uri, body.clone(), token.as_deref()).await;
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{role:?} {method} {uri} ({case}): {text}"
                );
                assert!(!text.contains("PAT-"), "{case} got data: {text}");
                cells += 1;
            }
        }
    }
    assert!(cells > 500, "only {cells} cells");

    // The checks above can fail: COT B's own staff do see COT B's markers.
    let nurse_b =
        api::ops::identity::service_account(&w.db.store, "nurse-b", Role::Nurse, &[w.b.cot])
            .await
            .unwrap();
    let (_, patients) = call(&w, "GET", "/api/v1/patients", None, Some(&nurse_b)).await;
    assert!(patients.contains(&w.b.markers[0]) && !patients.contains(&w.a.markers[0]));
    let (_, stream) = call(
        &w,
        "GET",
        "/api/v1/alerts/stream?after=0",
        None,
        Some(&nurse_b),
    )
    .await;
    assert!(
        stream.contains(&w.b.markers[3]),
        "B's comment on B's stream: {stream}"
    );
    assert!(
        !stream.contains(&w.a.markers[3]),
        "A's comment on B's stream: {stream}"
    );
}

#[test]
fn the_matrix_covers_every_route_in_the_source() {
    // Every `.route("…", get(…).post(…))` under server/src, with its nest prefix.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = BTreeSet::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let prefix = match rel.as_str() {
                "http/health.rs" => "",
                r if r.starts_with("http/") => "/api/v1",
                r if r.starts_with("fhir") => "/fhir/r4",
                _ => "",
            };
            let mut rest = text.as_str();
            while let Some(at) = rest.find(".route(") {
                rest = &rest[at + ".route(".len()..];
                // The call's arguments, up to the matching parenthesis.
                let mut depth = 1;
                let end = rest
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '(' => 1,
                            ')' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map(|(i, _)| i)
                    .unwrap();
                let args = &rest[..end];
                let Some(route) = args.split('"').nth(1) else {
                    continue;
                };
                for m in ["get", "post", "put", "delete", "patch"] {
                    let called = args.match_indices(&format!("{m}(")).any(|(i, _)| {
                        i == 0
                            || !args.as_bytes()[i - 1].is_ascii_alphanumeric()
                                && args.as_bytes()[i - 1] != b'_'
                    });
                    if called {
                        found.insert((m.to_uppercase(), format!("{prefix}{route}")));
                    }
                }
            }
        }
    }
    let table: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    let missing: Vec<_> = found.difference(&table).collect();
    assert!(
        missing.is_empty(),
        "routes without an access rule (add them to policy::ROUTES and the matrix): {missing:?}"
    );
    let stale: Vec<_> = table.difference(&found).collect();
    assert!(
        stale.is_empty(),
        "access rules for routes that do not exist: {stale:?}"
    );
    assert!(
        found.len() >= 35,
        "the source scan found only {} routes",
        found.len()
    );
}

#[tokio::test]
async fn a_user_of_two_cots_sees_both_and_a_user_of_none_sees_nothing() {
    let w = world().await;
    let both =
        api::ops::identity::service_account(&w.db.store, "both", Role::Nurse, &[w.a.cot, w.b.cot])
            .await
            .unwrap();
    let (status, body) = call(&w, "GET", "/api/v1/patients", None, Some(&both)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(&w.a.markers[0]) && body.contains(&w.b.markers[0]));
    // A disabled user's tokens stop working at once.
    let user = w.db.store.user_by_username("both").await.unwrap().unwrap();
    w.db.store
        .disable_user(user.id, OffsetDateTime::now_utc())
        .await
        .unwrap();
    let (status, _) = call(&w, "GET", "/api/v1/patients", None, Some(&both)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// A user of several COTs: an admin changes them (password, disabling, COTs, API keys) only
/// when they administer EVERY COT of that user. Sharing one COT lets the admin see the user,
/// never take them over: that was a path from COT A's admin to COT B's patients (reset a
/// shared nurse's password, log in as her) and to COT B's staff (through a shared admin).
#[tokio::test]
async fn shared_users_are_changed_only_by_admins_of_all_their_cots() {
    let w = world().await;
    let store = &w.db.store;
    let admin_a = &w.tokens.iter().find(|(r, _)| *r == Role::Admin).unwrap().1;
    let admin_ab =
        api::ops::identity::service_account(store, "admin-ab", Role::Admin, &[w.a.cot, w.b.cot])
            .await
            .unwrap();
    let shared = |name: &'static str, role: Role, kind: UserKind| async move {
        store
            .add_user(&NewUser {
                username: name,
                display_name: name,
                role,
                kind,
                password_hash: (kind == UserKind::Person).then_some(DUMMY_HASH),
                cot_ids: &[w.a.cot, w.b.cot],
            })
            .await
            .unwrap()
            .id
    };
    let nurse_ab = shared("nurse-ab", Role::Nurse, UserKind::Person).await;
    let person_admin_ab = shared("admin-ab-person", Role::Admin, UserKind::Person).await;
    let svc_ab = shared("svc-ab", Role::Nurse, UserKind::Service).await;
    let password = json!({"password": "a takeover password"});
    let cots = json!({"cots": [w.a.cot]});
    let key = json!({"name": "takeover"});
    // (who, method, path, body, expected)
    let rows: Vec<(&str, &str, String, Option<Value>, StatusCode)> = vec![
        // Admin of A: sees the shared users, changes none of them.
        (
            "admin A",
            "GET",
            format!("/api/v1/users/{nurse_ab}"),
            None,
            StatusCode::OK,
        ),
        (
            "admin A",
            "POST",
            format!("/api/v1/users/{nurse_ab}/password"),
            Some(password.clone()),
            StatusCode::FORBIDDEN,
        ),
        (
            "admin A",
            "POST",
            format!("/api/v1/users/{nurse_ab}/disable"),
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            "admin A",
            "PUT",
            format!("/api/v1/users/{nurse_ab}/cots"),
            Some(cots.clone()),
            StatusCode::FORBIDDEN,
        ),
        (
            "admin A",
            "POST",
            format!("/api/v1/users/{svc_ab}/api-keys"),
            Some(key.clone()),
            StatusCode::FORBIDDEN,
        ),
        (
            "admin A",
            "POST",
            format!("/api/v1/users/{person_admin_ab}/password"),
            Some(password.clone()),
            StatusCode::FORBIDDEN,
        ),
        (
            "admin A",
            "POST",
            format!("/api/v1/users/{person_admin_ab}/disable"),
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            "admin A",
            "PUT",
            format!("/api/v1/users/{person_admin_ab}/cots"),
            Some(cots.clone()),
            StatusCode::FORBIDDEN,
        ),
        // Admin of A and B governs them.
        (
            "admin AB",
            "POST",
            format!("/api/v1/users/{nurse_ab}/password"),
            Some(password.clone()),
            StatusCode::NO_CONTENT,
        ),
        (
            "admin AB",
            "POST",
            format!("/api/v1/users/{svc_ab}/api-keys"),
            Some(key.clone()),
            StatusCode::CREATED,
        ),
        (
            "admin AB",
            "PUT",
            format!("/api/v1/users/{person_admin_ab}/cots"),
            Some(json!({"cots": [w.a.cot, w.b.cot]})),
            StatusCode::OK,
        ),
    ];
    for (who, method, uri, body, expected) in rows {
        let token = if who == "admin A" {
            admin_a.as_str()
        } else {
            admin_ab.as_str()
        };
        let (status, text) = call(&w, method, &uri, body, Some(token)).await;
        assert_eq!(status, expected, "{who} {method} {uri}: {text}");
    }
    // Nothing the admin of A tried took effect.
    for id in [nurse_ab, person_admin_ab] {
        let user = store.get_user(id).await.unwrap().unwrap();
        assert!(user.disabled_at.is_none(), "{}", user.username);
        assert_eq!(user.cot_ids, vec![w.a.cot, w.b.cot], "{}", user.username);
    }
    let keys = store.user_tokens(svc_ab).await.unwrap();
    assert_eq!(keys.len(), 1, "only admin AB's key: {keys:?}");
}
