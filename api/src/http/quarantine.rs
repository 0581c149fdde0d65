//! What the gateway refused: `GET /api/v1/quarantine?limit=N`, newest first, with the reason
//! and a preview of the payload, so a device manager can see why a device's data did not
//! arrive. Scoped: rows of devices of the caller's COTs, plus rows naming no known device.

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, rejection};

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/quarantine", get(list))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<i64>,
}

#[derive(Debug, Serialize)]
struct QuarantineList {
    total: i64,
    entries: Vec<store::QuarantineEntry>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<QuarantineList>, ApiError> {
    let Query(query) = query.map_err(rejection)?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let entries = state
        .store
        .list_quarantine(limit, Some(&caller.cots))
        .await?;
    let total = entries.len() as i64;
    state
        .audit(&caller, "quarantine.list", "quarantine".into())
        .await?;
    Ok(Json(QuarantineList { total, entries }))
}
