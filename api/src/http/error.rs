//! One error type for every handler, mapped to a status code and a stable JSON shape:
//!
//! ```json
//! {"error":{"code":"not_found","message":"patient 42 not found"}}
//! ```
//!
//! Internal errors get a generic message; their detail goes to the log, never to the client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or malformed bearer token.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// The token is expired or revoked.
    #[error("the token is expired or revoked")]
    TokenRejected,
    /// Authenticated, but the caller's role may not do this.
    #[error("your role does not allow this")]
    Forbidden,
    /// Wrong username or password (one message for both, so usernames cannot be probed).
    #[error("wrong username or password")]
    InvalidCredentials,
    /// Too many failed logins from this address or for this user; retry after the seconds given.
    #[error("too many failed logins; retry in {0} s")]
    TooManyAttempts(u64),
    /// The caller sees the resource but does not govern all of it, e.g. a user who also
    /// belongs to a COT the administrator is not an administrator of.
    #[error("{0} belongs to a COT you do not administer")]
    NotGoverned(String),
    /// The bounded password-hashing pool is full; retry in a second.
    #[error("too many logins at once; retry in a second")]
    Busy,
    /// The route exists, not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The resource does not exist (or the caller may not know it does).
    #[error("{0} not found")]
    NotFound(String),
    /// A query parameter or body is invalid.
    #[error("{0}")]
    BadRequest(String),
    /// A body that parsed but does not hold up (400), with every problem found, e.g. an
    /// invalid care plan. The JSON carries them in `error.problems`.
    #[error("{message}")]
    Invalid {
        /// The stable machine code.
        code: &'static str,
        /// A summary.
        message: String,
        /// Each problem, for a human.
        problems: Vec<String>,
    },
    /// The request conflicts with the resource's current state (409), e.g. acknowledging a
    /// resolved alert (`invalid_transition`) or taking a key that exists (`conflict`).
    #[error("{message}")]
    Conflict {
        /// The stable machine code.
        code: &'static str,
        /// What conflicted, for a human.
        message: String,
    },
    /// The store is unavailable or failed.
    #[error("store error")]
    Store(store::StoreError),
}

/// Store errors that describe the request rather than a failure keep their meaning: a missing
/// row is 404, a refused input 400, a refused state change or a taken key 409. Everything else
/// is a store failure (503 when transient, else 500) whose detail stays in the log.
impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> Self {
        match e {
            store::StoreError::NotFound { what } => ApiError::NotFound(what),
            store::StoreError::Invalid(message) => ApiError::BadRequest(message),
            store::StoreError::InvalidTransition(message) => ApiError::Conflict {
                code: "invalid_transition",
                message,
            },
            store::StoreError::Conflict { what } => ApiError::Conflict {
                code: "conflict",
                message: format!("{what} already exists"),
            },
            other => ApiError::Store(other),
        }
    }
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::TokenRejected => (StatusCode::UNAUTHORIZED, "token_rejected"),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotGoverned(_) => (StatusCode::FORBIDDEN, "not_governed"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            ApiError::TooManyAttempts(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"),
            ApiError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Invalid { code, .. } => (StatusCode::BAD_REQUEST, *code),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, *code),
            ApiError::Store(e) if e.is_transient() => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            ApiError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let message = match &self {
            ApiError::Store(e) => {
                tracing::error!(error = %e, "store error while serving a request");
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    "the store is temporarily unavailable".to_owned()
                } else {
                    "internal error".to_owned()
                }
            }
            other => other.to_string(),
        };
        let mut error = json!({"code": code, "message": message});
        if let ApiError::Invalid { problems, .. } = &self {
            error["problems"] = json!(problems);
        }
        let mut response = (status, Json(json!({ "error": error }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            let challenge = axum::http::HeaderValue::from_static("Bearer");
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, challenge);
        }
        let retry_after = match &self {
            ApiError::TooManyAttempts(secs) => Some(*secs),
            ApiError::Busy => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after
            && let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string())
        {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        response
    }
}

/// Maps axum's own rejections (bad query string, bad path) into the same shape.
pub(crate) fn rejection(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

impl From<crate::ops::OpsError> for ApiError {
    fn from(e: crate::ops::OpsError) -> Self {
        use crate::ops::OpsError;
        match e {
            OpsError::Invalid(m) | OpsError::Certificate(m) => ApiError::BadRequest(m),
            OpsError::DeviceIdTaken => ApiError::Conflict {
                code: "conflict",
                message: OpsError::DeviceIdTaken.to_string(),
            },
            OpsError::Store(e) => e.into(),
        }
    }
}
