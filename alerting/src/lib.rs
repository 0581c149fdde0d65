//! The alert engine: care plans turn committed readings into alerts.
//!
//! It depends on the store (readings, alerts, plans, the outbox), the wire protocol (reading
//! kinds and sensor states) and `telemetry`, never on the device side: the composition root
//! (`sentinella::Node`) hands it the batches the gateway commits ([`Committed`]) and forwards
//! its [`RepeatRequest`]s to the gateway.
//!
//! - [`plan`]: the care-plan schema, its validation and the clinical templates.
//! - [`net`] (`plan::net`): the safety net of guideline bands joined to every plan; a part of
//!   the plan schema, since a plan's validation needs the net it may widen.
//! - [`rules`]: pure evaluation of one reading against a plan and the patient's recent
//!   readings (threshold bands with persistence and hysteresis, trends against a baseline,
//!   context suppression).
//! - [`engine`]: the task that feeds committed batches through the rules, runs the
//!   time-driven rules, and writes alerts to the store; see its docs for restarts and late
//!   readings.

pub mod engine;
pub mod plan;
pub mod rules;

pub use plan::net;

pub use engine::{
    AlertsConfig, Clock, Committed, Engine, EngineMetrics, RepeatRequest, system_clock,
};
