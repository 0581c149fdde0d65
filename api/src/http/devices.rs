//! Devices with their last-seen time, battery and firmware.
//!
//! - `GET /api/v1/devices[?patient=ID]`: the devices of the caller's COTs' patients
//! - `GET /api/v1/devices/{id}`
//! - `POST /api/v1/devices` `{"patient","kind","id"?,"model"?}` (device managers): provision
//!   a device for a patient of the caller's COTs. The answer (201) holds the MQTT password
//!   and, when this process holds the device CA, the client certificate, its private key and
//!   the CA bundle: shown this once, stored nowhere but as a hash and a fingerprint.
//! - `POST /api/v1/devices/{id}/revoke`: the device's connection is closed and it cannot
//!   connect again (device managers).

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, rejection};
use crate::ops;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/devices", get(list).post(provision))
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
        .list_devices(Some(&caller.cots), query.patient)
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvisionBody {
    patient: i64,
    kind: String,
    id: Option<String>,
    model: Option<String>,
}

async fn provision(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<ProvisionBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<serde_json::Value>), ApiError> {
    let Json(body) = body.map_err(rejection)?;
    let patient = super::patients::visible_patient(&state, &caller, body.patient).await?;
    let kind = store::DeviceKind::parse(&body.kind)
        .ok_or_else(|| ApiError::BadRequest("kind must be bp, spo2 or glucose".into()))?;
    // Device ids are unique across every COT: a refusal must not say whether the id is taken
    // in the caller's COT or another one (nor name it).
    let ops::devices::Provisioned { device, secret } =
        ops::devices::provision(&state.store, patient.id, kind, body.id, body.model).await?;
    let id = device.id.clone();
    let tls = match &state.device_ca {
        Some(ca) => {
            let issued = ops::devices::issue_cert(&state.store, ca, &id).await?;
            Some(serde_json::json!({
                "cert_pem": issued.cert_pem,
                "key_pem": issued.key_pem,
                "ca_pem": ca.cert_pem(),
            }))
        }
        None => None,
    };
    state
        .audit_about(
            &caller,
            "device.provision",
            format!("device:{id}"),
            Some(patient.id),
            Some(patient.cot_id),
            Some(
                serde_json::json!({"kind": kind.as_str(), "certificate": tls.is_some()})
                    .to_string(),
            ),
        )
        .await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(serde_json::json!({
            "device": device,
            "mqtt": {"client_id": id, "username": id, "password": secret},
            "tls": tls,
            "topics": {
                "readings": format!("sentinella/v1/devices/{id}/readings"),
                "ack": format!("sentinella/v1/devices/{id}/ack"),
            },
        })),
    ))
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
