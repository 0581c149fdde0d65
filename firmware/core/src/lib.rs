//! The logic of a Sentinella home device, independent of any board: `no_std`, no allocator.
//!
//! A device measures on a schedule (or when a meter reports a reading on its own), keeps every
//! reading in a flash outbox that survives power loss, publishes the outbox in batches at
//! QoS 1, and drops a reading only once the gateway's end-to-end `ack` says it is stored (or
//! refused for its content). Board crates and the Linux runner (`firmware/runner`) implement
//! the traits below over real or simulated hardware; everything here runs in plain host
//! `#[test]`s.
//!
//! # Layout
//! - [`sampling`]: sensor traits per measurement kind ([`sampling::PulseOximeter`],
//!   [`sampling::BloodPressureMonitor`], [`sampling::GlucoseMeter`]), the [`sampling::Sensors`]
//!   set a device carries, and the measurement [`sampling::Schedule`] the gateway's `config`
//!   topic can change (and add one-shot repeat measurements to).
//! - [`clock`]: the monotonic [`clock::Clock`] a board provides and the [`clock::WallClock`]
//!   set from the gateway's `time_ms` (readings say `clock_unset` until then).
//! - [`record`]: the fixed binary layout of one reading in flash.
//! - [`outbox`]: the store-and-forward queue on NOR flash (`sequential-storage`), with the
//!   persistent seq counter.
//! - [`flash`]: an adapter from blocking `embedded-storage` flashes to the async traits, and a
//!   RAM flash model that can lose power mid-write (for tests and simulators).
//! - [`uplink`]: the pure uplink state machine: connection, back-off with jitter, batches in
//!   flight, resend deadlines.
//! - [`transport`]: the [`transport::Transport`] trait (an MQTT session) the board implements.
//! - [`device`]: [`device::Device`], which ties them together in one event loop.
//!
//! Start with [`device::Device::step`]: one turn of the loop, as a reader would follow a
//! reading from the sensor to the gateway and back.
//!
//! # Invariants
//! - A reading leaves the outbox only when an ack settles its seq (`Ack::settles`); the
//!   broker's PUBACK means nothing durable.
//! - The seq counter never goes backwards, across reboots and power cuts (seqs are reserved in
//!   flash before they are used; a power cut may leave a gap, never a repeat).
//! - Nothing here panics on input from the gateway, the sensors or the flash; failures wait
//!   and retry.
#![no_std]
#![deny(missing_docs)]
// The async traits here are used with single-threaded executors (embassy on a board, a
// current-thread runtime on Linux), where the futures' `Send`-ness does not matter; this is the
// same choice `embedded-hal-async` makes.
#![allow(async_fn_in_trait)]

#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod clock;
pub mod device;
pub mod flash;
pub mod outbox;
pub mod record;
pub mod sampling;
pub mod transport;
pub mod uplink;

pub use clock::{Clock, WallClock};
pub use device::{Device, DeviceSettings, Event, Observer};
pub use outbox::{Outbox, OutboxError, OutboxLayout};
pub use sampling::{Sample, Schedule, Sensors};
pub use transport::{Incoming, Transport};
pub use uplink::{Uplink, UplinkConfig};

/// Most readings the device puts in one published batch (the protocol allows more; 32 keeps a
/// batch's payload under 8 KiB).
pub const MAX_BATCH: usize = 32;

/// Most batches waiting for the gateway's ack at once.
pub const MAX_IN_FLIGHT: usize = 4;

/// Size of the buffer a batch is encoded into. 32 readings of the longest kind (glucose with
/// every field) take about 5.5 KiB; a batch that does not fit is split.
pub const PAYLOAD_BUF: usize = 8 * 1024;

/// Size of the buffer incoming messages (acks, config) are received into. An ack with the
/// maximum 2 × 32 ranges of 10-digit seqs is under 1.5 KiB.
pub const RX_BUF: usize = 2 * 1024;
