//! Provisioning a device: its row with a fresh MQTT secret, and its client certificate from
//! the device CA with the fingerprint the edge will accept from then on.

use pki::{DeviceCa, IssuedCert};
use store::{Device, DeviceKind, NewDevice, Store, StoreError};
use time::OffsetDateTime;

use super::OpsError;

/// A device just provisioned, with its secret (shown once, stored only hashed).
#[derive(Debug)]
pub struct Provisioned {
    /// The stored device.
    pub device: Device,
    /// The MQTT password of the plain listener. Never log it.
    pub secret: String,
}

/// A device id for `kind`: the kind and 8 random hex digits (`bp-1f2e3d4c`).
pub fn generated_id(kind: DeviceKind) -> String {
    format!(
        "{}-{}",
        kind.as_str(),
        hex::encode(rand::random::<[u8; 4]>())
    )
}

/// Adds a device of `kind` for patient `patient_id` with a fresh secret; `id` is generated
/// when absent and must be a valid device id (protocol's rule) otherwise.
pub async fn provision(
    store: &Store,
    patient_id: i64,
    kind: DeviceKind,
    id: Option<String>,
    model: Option<String>,
) -> Result<Provisioned, OpsError> {
    let id = id.unwrap_or_else(|| generated_id(kind));
    protocol::DeviceId::parse(&id)
        .map_err(|e| OpsError::Invalid(format!("device id {id:?}: {e}")))?;
    let secret = store::credentials::generate_secret();
    let device = store
        .add_device(&NewDevice {
            id,
            patient_id,
            kind,
            secret_hash: store::credentials::hash_secret(&secret),
            model,
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict { .. } => OpsError::DeviceIdTaken,
            other => other.into(),
        })?;
    Ok(Provisioned { device, secret })
}

/// Issues device `id` a client certificate from `ca` and records its fingerprint, so only
/// this certificate connects from now on (a live connection with an older one is closed by
/// the gateway's revocation poll).
pub async fn issue_cert(store: &Store, ca: &DeviceCa, id: &str) -> Result<IssuedCert, OpsError> {
    let issued = ca
        .issue_device(id)
        .map_err(|e| OpsError::Certificate(e.to_string()))?;
    store
        .set_device_cert(
            id,
            &issued.serial,
            &issued.sha256,
            OffsetDateTime::now_utc(),
        )
        .await?;
    Ok(issued)
}
