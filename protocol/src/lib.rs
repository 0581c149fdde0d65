//! The wire contract shared by devices, simulators and the gateway.
//!
//! `no_std` and allocation-free, so firmware on a microcontroller and the gateway on a server
//! link the very same code and can never disagree about a byte.
//!
//! # Layout
//! - [`topic`]: the topic scheme `sentinella/v1/devices/{device}/{channel}` and device ids.
//! - [`reading`]: typed readings (blood pressure, SpO2, glucose), units, status bits.
//! - [`limits`]: physiological plausibility limits applied while decoding.
//! - [`codec`]: the JSON batch envelope: strict decoding with typed errors, and encoding.
//! - [`ack`]: the gateway's end-to-end commit ack (seq ranges durably stored).
//! - [`status`]: device status (battery, firmware, online) and the gateway's device config.
//!
//! Start with [`codec::decode_batch`]: it is what the gateway runs on every publish.
#![no_std]
#![deny(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

pub mod ack;
pub mod codec;
pub mod limits;
pub mod reading;
pub mod status;
pub mod topic;

pub use ack::{Ack, SeqRange};
pub use codec::{BatchItem, DecodeError, DecodedBatch, ReadingError, decode_batch, encode_batch};
pub use reading::{
    BloodPressure, Glucose, GlucoseUnit, Kind, MealContext, Measurement, MeasurementStatus,
    PressureUnit, Reading, SampleType, Spo2,
};
pub use topic::{Channel, DeviceId, Topic, TopicError};

/// Largest payload (bytes) a device may publish on any of its topics.
pub const MAX_PAYLOAD: usize = 16 * 1024;

/// Most readings one batch message may carry.
pub const MAX_BATCH: usize = 64;

/// Protocol version carried in every batch envelope (`"v": 1`).
pub const VERSION: u8 = 1;
