//! Staff identity end to end through the router: password login, sessions, logout, throttling,
//! users and API keys created by an administrator, identity-provider JWTs verified against a
//! JWKS, a patient's access history, and HTTPS on a real socket.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use api::http::oidc::{Oidc, OidcConfig};
use api::http::session::LoginLimiter;
use api::http::{AppState, AuthState};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Fixture, fixture};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use store::Role;
use store::testing::TestDb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "una password lunga";

/// An admin of the fixture's COT with a password, and a call helper with any token.
async fn with_admin() -> (Fixture, String) {
    let f = fixture(TestDb::sqlite().await).await;
    let hash = api::http::session::hash_password(PASSWORD).unwrap();
    f.db.store
        .add_user(&store::NewUser {
            username: "admin.a",
            display_name: "Admin A",
            role: Role::Admin,
            kind: store::UserKind::Person,
            password_hash: Some(&hash),
            cot_ids: &[f.cot_id],
        })
        .await
        .unwrap();
    let token = login(&f, "admin.a", PASSWORD).await.1["token"]
        .as_str()
        .unwrap()
        .to_owned();
    (f, token)
}

async fn login(f: &Fixture, username: &str, password: &str) -> (StatusCode, Value) {
    f.call(
        "POST",
        "/api/v1/auth/login",
        Some(json!({"username": username, "password": password})),
        None,
    )
    .await
}

#[tokio::test]
async fn login_session_logout_and_users_created_by_an_admin() {
    let (f, admin) = with_admin().await;
    let (status, me) = f.call("GET", "/api/v1/auth/me", None, Some(&admin)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["user"]["role"], "admin");
    assert_eq!(me["user"]["cots"][0]["code"], "COT-A");
    assert_eq!(me["user"]["via"], "session");

    // The admin creates a nurse, who logs in and works; the admin cannot read clinical data.
    let (status, nurse) = f
        .call(
            "POST",
            "/api/v1/users",
            Some(
                json!({"username": "anna", "display_name": "Anna", "role": "nurse",
                        "cots": [f.cot_id], "password": "short"}),
            ),
            Some(&admin),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{nurse}");
    let (status, nurse) = f
        .call(
            "POST",
            "/api/v1/users",
            Some(
                json!({"username": "anna", "display_name": "Anna", "role": "nurse",
                        "cots": [f.cot_id], "password": PASSWORD}),
            ),
            Some(&admin),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{nurse}");
    assert!(!nurse.to_string().contains("argon2"), "{nurse}");
    let (status, session) = login(&f, "anna", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    let token = session["token"].as_str().unwrap().to_owned();
    let expires: time::OffsetDateTime = time::OffsetDateTime::parse(
        session["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let ttl = expires - time::OffsetDateTime::now_utc();
    assert!(ttl > time::Duration::hours(7) && ttl <= time::Duration::hours(8));
    let patient = format!("/api/v1/patients/{}/readings", f.p1);
    assert_eq!(
        f.call("GET", &patient, None, Some(&token)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        f.call("GET", &patient, None, Some(&admin)).await.0,
        StatusCode::FORBIDDEN
    );

    // Logout ends the session at once.
    assert_eq!(
        f.call("POST", "/api/v1/auth/logout", None, Some(&token))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let (status, body) = f.call("GET", &patient, None, Some(&token)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_rejected"))
    );

    // A service account gets an API key (shown once); people do not.
    let (_, svc) = f
        .call(
            "POST",
            "/api/v1/users",
            Some(
                json!({"username": "fse-export", "display_name": "FSE", "role": "nurse",
                        "cots": [f.cot_id], "service": true}),
            ),
            Some(&admin),
        )
        .await;
    let (status, key) = f
        .call(
            "POST",
            &format!("/api/v1/users/{}/api-keys", svc["id"]),
            Some(json!({"name": "fse", "expires_in_days": 30})),
            Some(&admin),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let api_key = key["token"].as_str().unwrap();
    let (_, me) = f.call("GET", "/api/v1/auth/me", None, Some(api_key)).await;
    assert_eq!(
        (me["user"]["username"].as_str(), me["user"]["via"].as_str()),
        (Some("fse-export"), Some("api_key"))
    );
    assert_eq!(
        login(&f, "fse-export", "anything at all").await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = f
        .call(
            "POST",
            &format!("/api/v1/users/{}/api-keys", nurse["id"]),
            Some(json!({"name": "x"})),
            Some(&admin),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Disabling revokes every token of the user.
    let (_, again) = login(&f, "anna", PASSWORD).await;
    let again = again["token"].as_str().unwrap().to_owned();
    f.call(
        "POST",
        &format!("/api/v1/users/{}/disable", nurse["id"]),
        None,
        Some(&admin),
    )
    .await;
    assert_eq!(
        f.call("GET", &patient, None, Some(&again)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&f, "anna", PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Logins, failures and the admin's changes are audited.
    let (_, audit) = f
        .call(
            "GET",
            "/api/v1/audit?action=auth.&limit=100",
            None,
            Some(&admin),
        )
        .await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"auth.login") && actions.contains(&"auth.login.failed"),
        "{actions:?}"
    );
    let (_, audit) = f
        .call(
            "GET",
            "/api/v1/audit?action=user.&limit=100",
            None,
            Some(&admin),
        )
        .await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in ["user.create", "user.api_key", "user.disable"] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
}

#[tokio::test]
async fn wrong_passwords_are_throttled_and_unknown_users_answer_the_same() {
    let (f, _) = with_admin().await;
    let (status, unknown) = login(&f, "nobody", PASSWORD).await;
    let (status2, wrong) = login(&f, "admin.a", "not the password").await;
    assert_eq!(
        (status, status2),
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    assert_eq!(unknown, wrong, "one answer for both");
    for _ in 0..4 {
        login(&f, "admin.a", "not the password").await;
    }
    // Five failures from one address: even the right password waits now, from there.
    let (status, body) = login(&f, "admin.a", PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "too_many_attempts");
    // With a fresh limiter (window passed) the right password works again.
    let state = AppState {
        auth: Arc::new(AuthState {
            limiter: LoginLimiter::new(Duration::from_millis(1), 5, 20),
            ..AuthState::default()
        }),
        ..f.state()
    };
    let resp = api::app(state)
        .oneshot_json(
            "POST",
            "/api/v1/auth/login",
            json!({"username": "admin.a", "password": PASSWORD}),
        )
        .await;
    assert_eq!(resp, StatusCode::OK);
}

/// `oneshot` with a JSON body, answering the status.
trait OneShot {
    async fn oneshot_json(self, method: &str, uri: &str, body: Value) -> StatusCode;
}

impl OneShot for axum::Router {
    async fn oneshot_json(self, method: &str, uri: &str, body: Value) -> StatusCode {
        use tower::ServiceExt;
        let req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        self.oneshot(req).await.unwrap().status()
    }
}

#[tokio::test]
async fn reading_a_patient_shows_in_their_access_history() {
    let (f, admin) = with_admin().await;
    let before = f
        .call(
            "GET",
            &format!("/api/v1/patients/{}/access-history", f.p1),
            None,
            Some(&admin),
        )
        .await
        .1["entries"]
        .as_array()
        .unwrap()
        .len();
    f.get(&format!("/api/v1/patients/{}/readings?kind=bp", f.p1))
        .await;
    f.get(&format!("/api/v1/patients/{}/care-plan/versions", f.p1))
        .await;
    // FHIR reads are in the history too.
    f.get(&format!("/fhir/r4/Patient/{}", f.p1)).await;
    let (status, history) = f
        .call(
            "GET",
            &format!("/api/v1/patients/{}/access-history", f.p1),
            None,
            Some(&admin),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let entries = history["entries"].as_array().unwrap();
    assert_eq!(entries.len(), before + 3, "{history}");
    assert_eq!(entries[0]["action"], "fhir.patient.read");
    assert_eq!(entries[1]["action"], "careplan.versions");
    assert_eq!(entries[2]["action"], "readings.read");
    assert_eq!(entries[2]["actor"], format!("user:{}", common::TOKEN_NAME));
    assert!(entries[2]["at"].is_string());
    // The other patient's history does not list these reads.
    let (_, other) = f
        .call(
            "GET",
            &format!("/api/v1/patients/{}/access-history", f.p2),
            None,
            Some(&admin),
        )
        .await;
    assert!(
        other["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["patient_id"] == f.p2)
    );
    // Nurses and physicians cannot read the audit log.
    assert_eq!(
        f.get(&format!("/api/v1/patients/{}/access-history", f.p1))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(f.get("/api/v1/audit").await.0, StatusCode::FORBIDDEN);
}

// ----- identity-provider JWTs ---------------------------------------------------------------

struct Idp {
    key: EncodingKey,
    jwks: tempfile::NamedTempFile,
    config: OidcConfig,
}

fn idp() -> Idp {
    let pair = rcgen::KeyPair::generate().unwrap();
    let raw = pair.public_key_raw();
    assert_eq!(raw.len(), 65);
    let jwk = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..]),
    }]});
    let jwks = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(jwks.path(), jwk.to_string()).unwrap();
    Idp {
        key: EncodingKey::from_ec_der(&pair.serialize_der()),
        config: OidcConfig {
            issuer: "https://idp.regione.example/realms/sanita".into(),
            audience: "sentinella".into(),
            jwks_file: jwks.path().to_owned(),
            role_claim: "sentinella_role".into(),
            cots_claim: "sentinella_cots".into(),
        },
        jwks,
    }
}

fn claims(idp: &Idp, role: &str, cots: &[&str], exp_in: i64) -> Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    json!({
        "iss": idp.config.issuer, "aud": "sentinella", "sub": "f3c1-77",
        "preferred_username": "dott.verdi", "name": "Dott. Verdi",
        "exp": now + exp_in, "iat": now,
        "sentinella_role": role, "sentinella_cots": cots,
    })
}

fn sign(idp: &Idp, claims: &Value, kid: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &idp.key).unwrap()
}

#[tokio::test]
async fn identity_provider_tokens_are_verified_and_mapped() {
    let f = fixture(TestDb::sqlite().await).await;
    let idp = idp();
    let state = AppState {
        auth: Arc::new(AuthState {
            oidc: Some(Oidc::load(idp.config.clone()).unwrap()),
            ..AuthState::default()
        }),
        ..f.state()
    };
    let call = |token: String| {
        let state = state.clone();
        async move {
            use tower::ServiceExt;
            let req = axum::http::Request::get("/api/v1/patients")
                .header("authorization", format!("Bearer {token}"))
                .body(axum::body::Body::empty())
                .unwrap();
            let resp = api::app(state).oneshot(req).await.unwrap();
            let status = resp.status();
            use http_body_util::BodyExt;
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let good = sign(&idp, &claims(&idp, "physician", &["COT-A"], 300), "k1");
    let (status, body) = call(good).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("Maria Rossi"), "{body}");
    // The actor is recorded as the provider's user.
    let audit = f.db.store.list_audit(1).await.unwrap();
    assert_eq!(audit[0].actor, "idp:dott.verdi");

    // A COT the user does not belong to: nothing of it.
    let (status, body) = call(sign(
        &idp,
        &claims(&idp, "physician", &["COT-Z"], 300),
        "k1",
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains("Maria Rossi"), "{body}");
    // A role without the permission: 403.
    let (status, _) = call(sign(&idp, &claims(&idp, "admin", &["COT-A"], 300), "k1")).await;
    assert_eq!(status, StatusCode::OK, "admins list the registry");

    let mut wrong_aud = claims(&idp, "nurse", &["COT-A"], 300);
    wrong_aud["aud"] = json!("another-app");
    let mut wrong_iss = claims(&idp, "nurse", &["COT-A"], 300);
    wrong_iss["iss"] = json!("https://evil.example");
    let mut bad_role = claims(&idp, "nurse", &["COT-A"], 300);
    bad_role["sentinella_role"] = json!("superuser");
    let good = sign(&idp, &claims(&idp, "nurse", &["COT-A"], 300), "k1");
    let mut tampered_payload = good.split('.').map(str::to_owned).collect::<Vec<_>>();
    tampered_payload[1] =
        URL_SAFE_NO_PAD.encode(claims(&idp, "physician", &["COT-A", "COT-B"], 300).to_string());
    // The public key used as an HMAC secret (algorithm confusion), and an unsigned token.
    let hs = jsonwebtoken::encode(
        &Header {
            kid: Some("k1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &claims(&idp, "nurse", &["COT-A"], 300),
        &EncodingKey::from_secret(std::fs::read(idp.jwks.path()).unwrap().as_slice()),
    )
    .unwrap();
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#),
        URL_SAFE_NO_PAD.encode(claims(&idp, "nurse", &["COT-A"], 300).to_string())
    );
    for (case, token) in [
        (
            "expired",
            sign(&idp, &claims(&idp, "nurse", &["COT-A"], -120), "k1"),
        ),
        ("wrong audience", sign(&idp, &wrong_aud, "k1")),
        ("wrong issuer", sign(&idp, &wrong_iss, "k1")),
        ("unknown role", sign(&idp, &bad_role, "k1")),
        (
            "unknown key id",
            sign(&idp, &claims(&idp, "nurse", &["COT-A"], 300), "k2"),
        ),
        ("tampered payload", tampered_payload.join(".")),
        ("HS256 with the public key", hs),
        ("alg none", unsigned),
        ("garbage", "a.b.c".into()),
    ] {
        let (status, body) = call(token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}: {body}");
        assert!(!body.contains("Maria"), "{case}");
    }

    // A JWT is refused when no identity provider is configured.
    let token = sign(&idp, &claims(&idp, "nurse", &["COT-A"], 300), "k1");
    let (status, _) = f.call("GET", "/api/v1/patients", None, Some(&token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

// ----- HTTPS ---------------------------------------------------------------------------------

#[tokio::test]
async fn https_serves_the_api_and_silent_sockets_block_nobody() {
    let f = fixture(TestDb::sqlite().await).await;
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("api.crt"), dir.path().join("api.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let acceptor = api::tls::acceptor(&cert_path, &key_path).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let state = AppState {
        auth: Arc::new(AuthState {
            tls: true,
            ..AuthState::default()
        }),
        ..f.state()
    };
    let server = tokio::spawn(api::serve_tls(listener, acceptor, state, cancel.clone()));

    // Twenty clients connect and say nothing.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let started = std::time::Instant::now();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let request = format!(
        "GET /api/v1/patients HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        f.token
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap_or_default();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response
            .to_lowercase()
            .contains("strict-transport-security: max-age=31536000")
    );
    assert!(
        response
            .to_lowercase()
            .contains("content-security-policy: default-src 'self'")
    );
    assert!(response.contains("Maria Rossi"));

    // Plain HTTP to the TLS port gets no answer from the API.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    drop(silent);
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
}

#[tokio::test]
async fn device_managers_provision_devices_with_certificates() {
    let f = fixture(TestDb::sqlite().await).await;
    let manager = api::ops::identity::service_account(
        &f.db.store,
        "tecnico",
        Role::DeviceManager,
        &[f.cot_id],
    )
    .await
    .unwrap();
    let state = AppState {
        device_ca: Some(Arc::new(pki::DeviceCa::generate("test CA").unwrap())),
        ..f.state()
    };
    use tower::ServiceExt;
    let req = axum::http::Request::post("/api/v1/devices")
        .header("authorization", format!("Bearer {manager}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            json!({"patient": f.p2, "kind": "glucose", "id": "glu-new"}).to_string(),
        ))
        .unwrap();
    let resp = api::app(state).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    use http_body_util::BodyExt;
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["device"]["id"], "glu-new");
    assert!(body["mqtt"]["password"].as_str().unwrap().len() >= 32);
    assert!(
        body["tls"]["key_pem"]
            .as_str()
            .unwrap()
            .contains("PRIVATE KEY")
    );
    assert!(
        body["tls"]["cert_pem"]
            .as_str()
            .unwrap()
            .contains("CERTIFICATE")
    );
    let auth = f.db.store.device_auth("glu-new").await.unwrap().unwrap();
    assert!(
        auth.cert_sha256.is_some(),
        "only the issued certificate is accepted"
    );
    assert!(store::credentials::verify_secret(
        body["mqtt"]["password"].as_str().unwrap(),
        &auth.secret_hash
    ));
    let audit = f.db.store.list_audit(1).await.unwrap();
    assert_eq!(
        (audit[0].action.as_str(), audit[0].patient_id),
        ("device.provision", Some(f.p2))
    );
    assert!(
        !audit[0]
            .detail
            .clone()
            .unwrap_or_default()
            .contains("PRIVATE")
    );
    // Clinicians cannot provision.
    let (status, _) = f
        .call(
            "POST",
            "/api/v1/devices",
            Some(json!({"patient": f.p2, "kind": "bp"})),
            Some(&f.token),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn identity_provider_logout_and_time_claims_sqlite() {
    identity_provider_logout_and_time_claims(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn identity_provider_logout_and_time_claims_postgres() {
    identity_provider_logout_and_time_claims(TestDb::postgres().await).await;
}

/// A JWT whose `nbf` is a string in the future is refused (CVE-2026-25537: jsonwebtoken
/// before 10.3 skipped the check), and logging out with a JWT ends it until it expires (it
/// answered 204 and left the token valid).
async fn identity_provider_logout_and_time_claims(db: TestDb) {
    let f = fixture(db).await;
    let idp = idp();
    let state = AppState {
        auth: Arc::new(AuthState {
            oidc: Some(Oidc::load(idp.config.clone()).unwrap()),
            ..AuthState::default()
        }),
        ..f.state()
    };
    let call = |method: &'static str, uri: &'static str, token: String| {
        let state = state.clone();
        async move {
            use tower::ServiceExt;
            let req = axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .header("authorization", format!("Bearer {token}"))
                .body(axum::body::Body::empty())
                .unwrap();
            api::app(state).oneshot(req).await.unwrap().status()
        }
    };
    let future = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
    for nbf in [json!(future.to_string()), json!(future)] {
        let mut early = claims(&idp, "nurse", &["COT-A"], 7200);
        early["nbf"] = nbf.clone();
        let status = call("GET", "/api/v1/patients", sign(&idp, &early, "k1")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "nbf {nbf}");
    }
    let mut text_exp = claims(&idp, "nurse", &["COT-A"], 300);
    text_exp["exp"] = json!(future.to_string());
    let status = call("GET", "/api/v1/patients", sign(&idp, &text_exp, "k1")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a string exp");

    let token = sign(&idp, &claims(&idp, "nurse", &["COT-A"], 300), "k1");
    assert_eq!(
        call("GET", "/api/v1/patients", token.clone()).await,
        StatusCode::OK
    );
    assert_eq!(
        call("POST", "/api/v1/auth/logout", token.clone()).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call("GET", "/api/v1/patients", token.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    // Another token of the same user still works.
    let mut other = claims(&idp, "nurse", &["COT-A"], 300);
    other["jti"] = json!("second");
    assert_eq!(
        call("GET", "/api/v1/patients", sign(&idp, &other, "k1")).await,
        StatusCode::OK
    );
}
