//! The OpenAPI contract of `/api/v1` (`api::http::openapi`): the committed document is the
//! one the code generates and serves, and every route of the access-policy table is in it with
//! its parameters, body and answer described.
//!
//! After changing a route: `SENTINELLA_BLESS=1 cargo test -p api --test openapi` rewrites
//! `api/openapi/api-v1.json`; review the diff and commit it.

#![allow(clippy::unwrap_used)] // Test set-up: a failure is the test failing.

use api::app;
use api::http::AppState;
use api::http::openapi::{OPERATIONS, document, undocumented};
use api::http::policy::{Access, ROUTES};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use store::testing::TestDb;
use tower::ServiceExt;

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/api-v1.json");

fn rendered() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap();
    text.push('\n');
    text
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let generated = rendered();
    if std::env::var_os("SENTINELLA_BLESS").is_some() {
        std::fs::write(COMMITTED, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(
        committed == generated,
        "api/openapi/api-v1.json differs from what the code generates; run \
         SENTINELLA_BLESS=1 cargo test -p api --test openapi, review the diff and commit it"
    );
}

#[test]
fn every_api_route_is_described() {
    let missing = undocumented();
    assert!(
        missing.is_empty(),
        "routes of policy::ROUTES without an entry in api::http::openapi::OPERATIONS \
         (add one: summary, query parameters, body schema, answer):\n{}",
        missing
            .iter()
            .map(|(m, p)| format!("  {m} {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let doc = document();
    for (method, path, access) in ROUTES {
        let Some(short) = path.strip_prefix("/api/v1") else {
            continue;
        };
        let op = &doc["paths"][short][method.to_ascii_lowercase()];
        assert!(op.is_object(), "{method} {path} is not in the document");
        assert!(op["summary"].is_string(), "{method} {path} has no summary");
        let security = op["security"].as_array().unwrap();
        assert_eq!(
            security.is_empty(),
            *access == Access::Public,
            "{method} {path}: security does not follow the access policy"
        );
        for name in path.split('{').skip(1).filter_map(|s| s.split('}').next()) {
            assert!(
                op["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == name && p["in"] == "path"),
                "{method} {path}: path parameter {name} not described"
            );
        }
    }
    assert_eq!(
        OPERATIONS.len(),
        ROUTES
            .iter()
            .filter(|(_, p, _)| p.starts_with("/api/v1/"))
            .count()
    );
}

#[tokio::test]
async fn the_api_serves_it_without_a_token() {
    let db = TestDb::sqlite().await;
    let response = app(AppState::new(db.store.clone()))
        .oneshot(
            Request::get("/api/v1/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let served: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(served, document());
    assert_eq!(served["openapi"], "3.1.0");
}
