//! A `no_std` driver for home blood-pressure monitors and glucose meters on a UART, speaking
//! the Bluetooth health record layouts over a simple framing.
//!
//! Many home meters are Bluetooth devices built around a UART module, or expose a UART for
//! service; either way their data are the Bluetooth SIG characteristic values. This crate reads
//! them from any `embedded-io` byte stream (an `embedded-hal-nb` serial port through [`Nb`]).
//!
//! # Capabilities
//! - [`sfloat`]: IEEE 11073-20601 SFLOAT with every special value (NaN, NRes, ±INF, reserved).
//! - [`record`]: Blood Pressure Measurement (0x2A35), Glucose Measurement (0x2A18) and Glucose
//!   Measurement Context (0x2A34), parsed and encoded, with their status bits; Bluetooth Date
//!   Time to Unix time.
//! - [`frame`]: the UART framing (delimited, byte-stuffed, CRC-16) and the record hand-over
//!   (one record at a time, confirmed once stored). **Read its docs for the wire format.**
//! - [`Meter`]: blocks for the next record (pairing a glucose measurement with its context),
//!   confirms it, recognises resends of a record already confirmed.
//! - With the `protocol` feature (default), [`reading`] maps records to Sentinella readings:
//!   units, sample type, meal, status and sensor bits.
//!
//! Specifications: Bluetooth GATT Specification Supplement (Blood Pressure Measurement,
//! Glucose Measurement, Glucose Measurement Context, Date Time); IEEE 11073-20601 (SFLOAT).
//!
//! No allocator, no panics.
#![no_std]
#![deny(unsafe_code, missing_docs)]

pub mod frame;
mod meter;
mod nb;
pub mod record;
pub mod sfloat;

#[cfg(feature = "protocol")]
pub mod reading;

pub use meter::{Counters, Error, Meter, Record};
pub use nb::{Nb, NbError};
pub use sfloat::{SFloat, Value};
