//! Devices with their last-seen time, battery and firmware.
//!
//! - `GET /api/v1/devices[?patient=ID]`
//! - `GET /api/v1/devices/{id}`

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, rejection};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/devices", get(list))
        .route("/devices/{id}", get(show))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    patient: Option<i64>,
}

#[derive(Debug, Serialize)]
struct DeviceList {
    devices: Vec<store::Device>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeviceList>, ApiError> {
    let Query(query) = query.map_err(rejection)?;
    let devices = state.store.list_devices(query.patient).await?;
    state
        .audit(
            &caller,
            "device.list",
            format!("devices patient={:?}", query.patient),
        )
        .await?;
    Ok(Json(DeviceList { devices }))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<store::Device>, ApiError> {
    let device = state
        .store
        .get_device(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("device {id}")))?;
    state
        .audit(&caller, "device.read", format!("device:{id}"))
        .await?;
    Ok(Json(device))
}
