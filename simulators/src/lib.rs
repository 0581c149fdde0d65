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
//! - [`device`]: one simulated device: rumqttc client, outbox, batches, acks, back-off, the
//!   gateway's repeat requests (measured by [`fleet::feed`]).
//! - [`fleet`]: fleet files, provisioning into the store, running a fleet on its schedule.
//! - [`scenario`]: clinical scenarios injected into a patient's measurements (crisis,
//!   desaturation, spurious lows, hypoglycaemia, missed measurements, silent devices, low
//!   battery), each with its ground truth.
//! - [`alert_quality`]: a cohort with injected events run through the real alert engine in
//!   compressed time, scored against the ground truth; [`alert_latency`]: commit → alert event
//!   latency at a given readings/s.
//! - [`bench`](mod@bench): the load generator (sustained committed readings/s, ack latency,
//!   gateway RSS).
//! - [`chaos`]: reliability runs: a steady load while a script hurts the gateway, then every
//!   generated seq checked against the store ([`verify`]); [`storm`]: many devices with a
//!   backlog connecting at once; [`observe`]: `/proc` sampling, `/readyz`, fault times;
//!   [`idle`]: many idle mutual-TLS connections held open (what one costs a broker).
//! - `src/main.rs`: the `sentinella-sim` binary (`provision`, `run`, `bench`, `chaos`,
//!   `storm`).
//!
//! Start with [`device::spawn`]: everything else feeds devices.
//!
//! # Things to know
//! - Seqs must never repeat against the same store, or the store dedupes new readings away as
//!   duplicates: a device starts at [`DeviceSpec::first_seq`], and fleet runs take it from
//!   [`fleet::SeqFloor`] (a file beside the fleet file) or the clock.
//! - Without `backdate`, simulated time starts at the real now and runs ahead of it: at speed
//!   1440, a one-minute run dates readings up to a day in the future.

pub mod alert_latency;
pub mod alert_quality;
pub mod bench;
pub mod chaos;
pub mod device;
pub mod fleet;
pub mod idle;
pub mod observe;
pub mod physiology;
pub mod scenario;
pub mod schedule;
pub mod storm;
pub mod verify;

mod seqset;

pub use device::{DeviceHandle, DeviceSpec, DeviceStats, spawn};
pub use fleet::{FleetDevice, FleetFile, FleetReport, RunOptions, provision, run_fleet};
pub use physiology::{Condition, Patient, Sample};
