//! Findings of the API pentest, one regression test each: login work counted and bounded
//! before hashing, no lockout by strangers, trusted proxies, one audit row per throttled
//! (username, address) and window, sessions ended by a password reset, the audit log scoped
//! to the users of an admin's COTs, bounded free text and bodies, device-id conflicts that do
//! not tell COTs apart, and a private data dir.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use api::app;
use api::http::session::{Hasher, LoginLimiter};
use api::http::{AppState, AuthState};
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use common::{Fixture, fixture};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use store::Role;
use store::testing::TestDb;
use tower::ServiceExt;

const PASSWORD: &str = "una password lunga";
const PROXY: &str = "127.0.0.9";

async fn person(f: &Fixture, username: &str, role: Role, cots: &[i64]) -> i64 {
    let hash = api::http::session::hash_password(PASSWORD).unwrap();
    f.db.store
        .add_user(&store::NewUser {
            username,
            display_name: username,
            role,
            kind: store::UserKind::Person,
            password_hash: Some(&hash),
            cot_ids: cots,
        })
        .await
        .unwrap()
        .id
}

/// A login as sent by `peer`, with an optional `X-Forwarded-For`.
async fn login_from(
    state: &AppState,
    peer: &str,
    forwarded_for: Option<&str>,
    username: &str,
    password: &str,
) -> (StatusCode, Value) {
    let mut req = common::request(
        "POST",
        "/api/v1/auth/login",
        Some(json!({"username": username, "password": password})),
        None,
    );
    let addr: SocketAddr = format!("{peer}:40000").parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(addr));
    if let Some(xff) = forwarded_for {
        req.headers_mut()
            .insert("x-forwarded-for", xff.parse().unwrap());
    }
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn actions(f: &Fixture, action: &str) -> usize {
    f.db.store
        .list_audit(10_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.action == action)
        .count()
}

/// M1: 50 parallel wrong guesses for one user from one address: at most the limit (5) are
/// hashed; the rest are refused before any Argon2id work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_wrong_logins_hash_at_most_the_limit() {
    let f = fixture(TestDb::sqlite().await).await;
    person(&f, "anna", Role::Nurse, &[f.cot_id]).await;
    let state = f.state();
    let guesses = (0..50).map(|i| {
        let state = state.clone();
        tokio::spawn(async move {
            login_from(
                &state,
                "10.1.1.1",
                None,
                "anna",
                &format!("wrong guess {i}"),
            )
            .await
            .0
        })
    });
    let statuses: Vec<StatusCode> = futures_util::future::join_all(guesses)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let hashed = f.auth.hasher.performed();
    assert!(hashed <= 5, "{hashed} hashes for 50 guesses");
    assert_eq!(actions(&f, "auth.login.failed").await, hashed as usize);
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS || **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!(refused, 50 - hashed as usize, "{statuses:?}");
    // The figure is on /metrics too.
    let resp = app(f.state())
        .oneshot(common::request("GET", "/metrics", None, None))
        .await
        .unwrap();
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains(&format!("sentinella_api_password_hashes_total {hashed}\n")),
        "{text}"
    );
}

/// M1: the hashing pool is bounded: with one permit and no wait, a second hash at the same
/// time is refused with 503 `busy` and `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_hashing_pool_answers_busy() {
    let f = fixture(TestDb::sqlite().await).await;
    let state = AppState {
        auth: Arc::new(AuthState {
            hasher: Hasher::new(1, Duration::ZERO),
            limiter: LoginLimiter::new(Duration::from_secs(60), 1000, 1000),
            ..AuthState::default()
        }),
        ..f.state()
    };
    let guesses = (0..16).map(|i| {
        let state = state.clone();
        tokio::spawn(async move {
            login_from(
                &state,
                &format!("10.2.0.{i}"),
                None,
                "nobody",
                "wrong password",
            )
            .await
        })
    });
    let answers: Vec<(StatusCode, Value)> = futures_util::future::join_all(guesses)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let busy: Vec<_> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(!busy.is_empty(), "{answers:?}");
    assert!(busy.iter().all(|(_, b)| b["error"]["code"] == "busy"));
    assert_eq!(
        state.auth.hasher.performed() as usize,
        answers.len() - busy.len()
    );
}

/// M4: failures from one address never lock the user out of another; behind a trusted
/// proxy the address is the forwarded client's; a client that is not a trusted proxy
/// cannot pick its address with `X-Forwarded-For`.
#[tokio::test]
async fn a_stranger_cannot_lock_a_user_out() {
    let f = fixture(TestDb::sqlite().await).await;
    person(&f, "anna", Role::Nurse, &[f.cot_id]).await;
    let state = AppState {
        auth: Arc::new(AuthState {
            trusted_proxies: vec![PROXY.parse().unwrap()],
            ..AuthState::default()
        }),
        ..f.state()
    };
    // A stranger at 203.0.113.7, behind the proxy, tries 30 passwords.
    for _ in 0..30 {
        let (status, _) = login_from(
            &state,
            PROXY,
            Some("203.0.113.7"),
            "anna",
            "not her password",
        )
        .await;
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::TOO_MANY_REQUESTS,
            "{status}"
        );
    }
    let (status, _) = login_from(&state, PROXY, Some("203.0.113.7"), "anna", PASSWORD).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the stranger is throttled"
    );
    // Anna, at 198.51.100.20 behind the same proxy, logs in.
    let (status, body) = login_from(&state, PROXY, Some("198.51.100.20"), "anna", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Directly (no proxy), too.
    let (status, _) = login_from(&state, "198.51.100.21", None, "anna", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    // A forged header from an untrusted peer is ignored: the stranger stays throttled.
    let (status, _) = login_from(
        &state,
        "203.0.113.7",
        Some("198.51.100.20"),
        "anna",
        "guess",
    )
    .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "counted as 203.0.113.7, not as the address it wrote"
    );
    let entries = f.db.store.list_audit(10_000).await.unwrap();
    let login = entries.iter().find(|e| e.action == "auth.login").unwrap();
    assert_eq!(login.source.as_deref(), Some("198.51.100.21"));
    assert!(
        entries
            .iter()
            .any(|e| e.action == "auth.login" && e.source.as_deref() == Some("198.51.100.20")),
        "the audit log names the forwarded client"
    );
}

/// M6: a flood of throttled logins writes one audit row per (username, address) and window,
/// not one per attempt; the refusals are still counted.
#[tokio::test]
async fn throttled_logins_are_audited_once_per_window() {
    let f = fixture(TestDb::sqlite().await).await;
    let state = f.state();
    for _ in 0..300 {
        login_from(&state, "10.3.3.3", None, "anna", "wrong password").await;
    }
    assert_eq!(actions(&f, "auth.login.throttled").await, 1);
    assert!(actions(&f, "auth.login.failed").await <= 5);
    assert_eq!(f.auth.limiter.refused(), 295);
    // The next window's first refusal carries the count of the previous one.
    let state = AppState {
        auth: Arc::new(AuthState {
            limiter: LoginLimiter::new(Duration::from_secs(2), 2, 100),
            ..AuthState::default()
        }),
        ..f.state()
    };
    for _ in 0..12 {
        login_from(&state, "10.3.3.4", None, "bruno", "wrong password").await;
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for _ in 0..3 {
        login_from(&state, "10.3.3.4", None, "bruno", "wrong password").await;
    }
    let rows: Vec<_> =
        f.db.store
            .list_audit(10_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "auth.login.throttled" && e.target == "user:bruno")
            .collect();
    assert!(rows.len() <= 3, "{rows:?}");
    assert!(
        rows.iter().any(|e| e
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("\"refused_in_previous_window_unlogged\":9")),
        "{rows:?}"
    );
}

/// Low: a password reset by an admin ends every session of the user.
#[tokio::test]
async fn a_password_reset_ends_the_users_sessions() {
    let f = fixture(TestDb::sqlite().await).await;
    let nurse = person(&f, "anna", Role::Nurse, &[f.cot_id]).await;
    let admin =
        api::ops::identity::service_account(&f.db.store, "admin-a", Role::Admin, &[f.cot_id])
            .await
            .unwrap();
    let state = f.state();
    let (_, session) = login_from(&state, "10.4.4.4", None, "anna", PASSWORD).await;
    let old = session["token"].as_str().unwrap().to_owned();
    assert_eq!(
        f.call("GET", "/api/v1/auth/me", None, Some(&old)).await.0,
        StatusCode::OK
    );
    let (status, _) = f
        .call(
            "POST",
            &format!("/api/v1/users/{nurse}/password"),
            Some(json!({"password": "a brand new password"})),
            Some(&admin),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        f.call("GET", "/api/v1/auth/me", None, Some(&old)).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn audit_is_scoped_to_the_users_of_an_admins_cots_sqlite() {
    audit_is_scoped_to_the_users_of_an_admins_cots(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn audit_is_scoped_to_the_users_of_an_admins_cots_postgres() {
    audit_is_scoped_to_the_users_of_an_admins_cots(TestDb::postgres().await).await;
}

/// Low: entries about a user (logins, user changes) reach the administrators of that user's
/// COTs only; entries about no COT at all only an administrator of every COT.
async fn audit_is_scoped_to_the_users_of_an_admins_cots(db: TestDb) {
    let f = fixture(db).await;
    let other = f.db.store.add_cot("COT-B", "B").await.unwrap();
    person(&f, "anna", Role::Nurse, &[f.cot_id]).await;
    person(&f, "bice", Role::Nurse, &[other.id]).await;
    let state = f.state();
    login_from(&state, "10.5.5.5", None, "anna", PASSWORD).await;
    login_from(&state, "10.5.5.5", None, "bice", PASSWORD).await;
    login_from(&state, "10.5.5.5", None, "nessuno", "wrong password").await;
    let admin_a =
        api::ops::identity::service_account(&f.db.store, "admin-a", Role::Admin, &[f.cot_id])
            .await
            .unwrap();
    let admin_b =
        api::ops::identity::service_account(&f.db.store, "admin-b", Role::Admin, &[other.id])
            .await
            .unwrap();
    let admin_all = api::ops::identity::service_account(
        &f.db.store,
        "admin-all",
        Role::Admin,
        &[f.cot_id, other.id],
    )
    .await
    .unwrap();
    let targets = |token: String| {
        let f = &f;
        async move {
            let (status, body) = f
                .call(
                    "GET",
                    "/api/v1/audit?action=auth.&limit=1000",
                    None,
                    Some(&token),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let mut t: Vec<String> = body["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["target"].as_str().unwrap().to_owned())
                .collect();
            t.sort();
            t
        }
    };
    assert_eq!(targets(admin_a).await, ["user:anna"]);
    assert_eq!(targets(admin_b).await, ["user:bice"]);
    assert_eq!(
        targets(admin_all).await,
        ["user:anna", "user:bice", "user:nessuno"]
    );
}

/// Low: free text is bounded (a 1.5 MB display name was accepted), and so is the body.
#[tokio::test]
async fn free_text_and_bodies_are_bounded() {
    let f = fixture(TestDb::sqlite().await).await;
    let admin =
        api::ops::identity::service_account(&f.db.store, "admin-a", Role::Admin, &[f.cot_id])
            .await
            .unwrap();
    let cases = [
        (
            "/api/v1/users",
            json!({"username": "lunga", "display_name": "x".repeat(201), "role": "nurse",
                   "cots": [f.cot_id], "service": true}),
        ),
        (
            "/api/v1/patients",
            json!({"cot": f.cot_id, "code": "P-LONG", "display_name": "x".repeat(201)}),
        ),
        (
            "/api/v1/patients",
            json!({"cot": f.cot_id, "code": "P".repeat(65), "display_name": "Ok"}),
        ),
        (
            "/api/v1/cots",
            json!({"code": "COT-L", "name": "x".repeat(201)}),
        ),
    ];
    for (uri, body) in cases {
        let (status, answer) = f.call("POST", uri, Some(body), Some(&admin)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("at most"),
            "{answer}"
        );
    }
    // 1.5 MB: refused before the handler, with a clear error.
    let (status, answer) = f
        .call(
            "POST",
            "/api/v1/users",
            Some(
                json!({"username": "enorme", "display_name": "x".repeat(1_500_000),
                        "role": "nurse", "cots": [f.cot_id], "service": true}),
            ),
            Some(&admin),
        )
        .await;
    assert!(status.is_client_error(), "{status}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit"),
        "{answer}"
    );
    assert!(
        f.db.store
            .user_by_username("enorme")
            .await
            .unwrap()
            .is_none()
    );
    // Within the bounds: accepted.
    let (status, _) = f
        .call(
            "POST",
            "/api/v1/users",
            Some(
                json!({"username": "giusta", "display_name": "x".repeat(200), "role": "nurse",
                        "cots": [f.cot_id], "service": true}),
            ),
            Some(&admin),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

/// Low: taking a device id answers the same whether the id is used in the caller's COT or
/// in another one, and names neither.
#[tokio::test]
async fn a_device_id_conflict_does_not_tell_cots_apart() {
    let f = fixture(TestDb::sqlite().await).await;
    let other = f.db.store.add_cot("COT-B", "B").await.unwrap();
    let patient_b =
        f.db.store
            .add_patient(&store::NewPatient {
                cot_id: other.id,
                code: "PB".into(),
                display_name: "B".into(),
                birth_year: None,
                conditions: vec![],
            })
            .await
            .unwrap();
    f.db.store
        .add_device(&store::NewDevice {
            id: "bp-other-cot".into(),
            patient_id: patient_b.id,
            kind: store::DeviceKind::BloodPressure,
            secret_hash: store::credentials::hash_secret("s"),
            model: None,
        })
        .await
        .unwrap();
    let manager = api::ops::identity::service_account(
        &f.db.store,
        "tecnico",
        Role::DeviceManager,
        &[f.cot_id],
    )
    .await
    .unwrap();
    let mut answers = Vec::new();
    for id in ["bp-1", "bp-other-cot"] {
        let (status, body) = f
            .call(
                "POST",
                "/api/v1/devices",
                Some(json!({"patient": f.p2, "kind": "bp", "id": id})),
                Some(&manager),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(!body.to_string().contains(id), "{body}");
        answers.push(body);
    }
    assert_eq!(answers[0], answers[1]);
}

/// M5, in the store: a database opened where nothing exists yet is private from the start,
/// its `-wal` and `-shm` included (SQLite gives them the database's mode).
#[cfg(unix)]
#[tokio::test]
async fn the_store_creates_private_sqlite_files() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("new").join("data");
    let file = dir.join("db.sqlite");
    let store = store::Store::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store.add_cot("COT-M", "modes").await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&file), 0o600);
    let wal = dir.join("db.sqlite-wal");
    let shm = dir.join("db.sqlite-shm");
    assert!(wal.exists() && shm.exists());
    assert_eq!((mode(&wal), mode(&shm)), (0o600, 0o600));
    store.close().await;
}
