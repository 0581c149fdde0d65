//! The whole application: the REST API under `/api/v1`, the FHIR API under `/fhir/r4`, the
//! console and the operational endpoints, behind one access policy and the headers every
//! response carries. This is the only module that knows all three surfaces; `http`, `fhir`
//! and `console` each know only their own (and `fhir` and `console` the shared state).

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::http::error::ApiError;
use crate::http::{self, AppState, policy};
use crate::{console, fhir};

/// A refusal in the shape of the API the path belongs to: an OperationOutcome under
/// `/fhir/`, the JSON error elsewhere.
fn refuse(path: &str, error: ApiError) -> Response {
    if path.starts_with("/fhir/") {
        fhir::FhirError::from(error).into_response()
    } else {
        error.into_response()
    }
}

/// The whole application.
pub fn app(state: AppState) -> Router {
    let (api, operations) = http::routes();
    let hsts = state.auth.tls.then(|| {
        SetResponseHeaderLayer::overriding(
            HeaderName::from_static("strict-transport-security"),
            HeaderValue::from_static("max-age=31536000"),
        )
    });
    Router::new()
        .nest("/api/v1", api)
        .nest("/fhir/r4", fhir::router())
        .merge(operations)
        .merge(console::router())
        .route_layer(axum::middleware::from_fn_with_state(
            (state.clone(), refuse as policy::Refusal),
            policy::enforce,
        ))
        .fallback(|uri: axum::http::Uri| async move {
            refuse(uri.path(), ApiError::NotFound("route".into()))
        })
        .layer(tower::util::option_layer(hsts))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("content-security-policy"),
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                 connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            ),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("x-frame-options"),
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("cache-control"),
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("referrer-policy"),
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(DefaultBodyLimit::max(http::MAX_BODY))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
