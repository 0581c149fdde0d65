//! Devices with their last-seen time, battery and firmware.
//!
//! - `GET /api/v1/devices[?patient=ID]`: the devices of the caller's COTs' patients
//! - `GET /api/v1/devices/{id}`
//! - `POST /api/v1/devices/{id}/revoke`: the device's connection is closed and it cannot
//!   connect again (device managers). Provisioning, which hands out secrets and
//!   certificates, is the CLI's (`sentinella device add`).

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
        .route("/devices/{id}/revoke", axum::routing::post(revoke))
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
    let devices = state
        .store
        .devices_in(Some(&caller.cots), query.patient)
        .await?;
    state
        .audit(
            &caller,
            "device.list",
            format!("devices patient={:?}", query.patient),
        )
        .await?;
    Ok(Json(DeviceList { devices }))
}

/// The device, if its patient is in one of the caller's COTs; else 404.
async fn visible_device(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(store::Device, i64), ApiError> {
    let not_found = || ApiError::NotFound(format!("device {id}"));
    let cot = state
        .store
        .device_cot(id)
        .await?
        .filter(|c| caller.sees_cot(*c))
        .ok_or_else(not_found)?;
    let device = state.store.get_device(id).await?.ok_or_else(not_found)?;
    Ok((device, cot))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<store::Device>, ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let (device, cot) = visible_device(&state, &caller, &id).await?;
    state
        .audit_about(
            &caller,
            "device.read",
            format!("device:{id}"),
            Some(device.patient_id),
            Some(cot),
            None,
        )
        .await?;
    Ok(Json(device))
}

async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<store::Device>, ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let (device, cot) = visible_device(&state, &caller, &id).await?;
    if device.revoked_at.is_none() {
        state
            .store
            .revoke_device(&id, time::OffsetDateTime::now_utc())
            .await?;
    }
    state
        .audit_about(
            &caller,
            "device.revoke",
            format!("device:{id}"),
            Some(device.patient_id),
            Some(cot),
            None,
        )
        .await?;
    let (device, _) = visible_device(&state, &caller, &id).await?;
    Ok(Json(device))
}
