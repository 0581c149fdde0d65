//! Virtual patients and devices for Sentinella.
//!
//! Fleets of simulated home devices (blood-pressure cuffs, pulse oximeters, glucose meters)
//! that measure realistic values on a daily schedule and publish them to the gateway over MQTT
//! exactly as real devices must: QoS 1 batches from an outbox that only the gateway's
//! end-to-end `ack` empties. The same devices drive the end-to-end tests and the load
//! generator.
//!
//! # Layout
//! - [`physiology`]: virtual patients (conditions, personal baseline, daily drift, noise).
//! - [`schedule`]: daily measurement slots per kind and a compressed simulated clock.
//! - [`device`]: one simulated device: rumqttc client, outbox, batches, acks, back-off.
//! - [`fleet`]: fleet files, provisioning into the store, running a fleet on its schedule.
//! - [`bench`]: the load generator (sustained committed readings/s, ack latency, gateway RSS).
//!
//! Start with [`device::spawn`]: everything else feeds devices.

pub mod bench;
pub mod device;
pub mod fleet;
pub mod physiology;
pub mod schedule;

mod seqset;

pub use device::{DeviceHandle, DeviceSpec, DeviceStats, spawn};
pub use fleet::{FleetDevice, FleetFile, FleetReport, RunOptions, provision, run_fleet};
pub use physiology::{Condition, Patient, Sample};
