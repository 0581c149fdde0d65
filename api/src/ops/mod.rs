//! Use cases shared by every adapter: the REST handlers, the `sentinella` commands, the
//! simulators and the tests call these instead of writing the steps again. Each takes the
//! store (and what else it needs) and returns typed results; access checks and audit records
//! stay with the caller, who knows who is acting.

pub mod devices;
pub mod identity;

/// Why a use case failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// An argument is not acceptable (said why).
    #[error("{0}")]
    Invalid(String),
    /// The device id is taken (somewhere: ids are unique across every COT, so the message
    /// never says where).
    #[error("this device id cannot be used; choose another, or leave id out for a generated one")]
    DeviceIdTaken,
    /// The device CA could not issue a certificate.
    #[error("cannot issue a certificate: {0}")]
    Certificate(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}
