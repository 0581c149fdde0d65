//! JSON numbers as JSON Schema reads them: `93.0` is the integer 93 (the OpenAPI contract's
//! `integer`), while serde refuses it for an `i64`. A client that writes every number as a
//! float (some JSON libraries do) must not get 400 for a schema-valid body, so request bodies
//! of `/api/v1` have integral floats within the `i64` range rewritten as integers before the
//! handlers parse them. Bodies without such numbers, or that are not JSON, pass untouched (the
//! handler's own parsing reports the error); bodies over [`super::MAX_BODY`] get 413 as before.
//! Found by schemathesis (scripts/contract-test.sh).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// The middleware.
pub(crate) async fn normalize(request: Request, next: Next) -> Response {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, super::MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            let mut response = super::error::ApiError::BadRequest(format!(
                "the body is over the {}-byte limit or could not be read",
                super::MAX_BODY
            ))
            .into_response();
            *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return response;
        }
    };
    let rewritten = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|mut value| integral_floats(&mut value).then_some(value))
        .and_then(|value| serde_json::to_vec(&value).ok());
    let body = match rewritten {
        Some(rewritten) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            Body::from(rewritten)
        }
        None => Body::from(bytes),
    };
    next.run(Request::from_parts(parts, body)).await
}

/// Rewrites every float with no fractional part within the `i64` range as an integer;
/// returns whether any was.
fn integral_floats(value: &mut Value) -> bool {
    // 2^63 is the first float beyond i64::MAX.
    const I64_RANGE: std::ops::Range<f64> =
        -9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0;
    match value {
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && I64_RANGE.contains(&f) => {
                *value = Value::from(f as i64);
                true
            }
            _ => false,
        },
        Value::Array(items) => {
            let mut any = false;
            for item in items {
                any |= integral_floats(item);
            }
            any
        }
        Value::Object(map) => {
            let mut any = false;
            for item in map.values_mut() {
                any |= integral_floats(item);
            }
            any
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integral_floats_become_integers() {
        let mut v: Value =
            serde_json::from_str(r#"{"cots":[93.0,-2.0,1],"x":{"t":37.5,"n":4.0},"big":1e300}"#)
                .unwrap();
        assert!(integral_floats(&mut v));
        assert_eq!(
            v,
            json!({"cots": [93, -2, 1], "x": {"t": 37.5, "n": 4}, "big": 1e300})
        );
        let mut unchanged = json!({"a": 1, "b": [2, 3.5], "c": "4.0"});
        assert!(!integral_floats(&mut unchanged));
    }
}
