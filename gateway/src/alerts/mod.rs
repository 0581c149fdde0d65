//! The alert engine: care plans turn committed readings into alerts.
//!
//! - [`plan`]: the care-plan schema, its validation and the clinical templates.
//! - [`net`]: the safety net of guideline bands joined to every plan.
//! - [`rules`]: pure evaluation of one reading against a plan and the patient's recent
//!   readings (threshold bands with persistence and hysteresis, trends against a baseline,
//!   context suppression).
//! - [`engine`]: the task that feeds committed batches through the rules, runs the
//!   time-driven rules, and writes alerts to the store; see its docs for restarts and late
//!   readings.
//! - [`handoff`]: committed batches from the writer to the engine, never waiting; a lagging
//!   engine catches up from the store's outbox.

pub mod engine;
pub mod handoff;
pub mod net;
pub mod plan;
pub mod rules;

pub use engine::{
    AlertsConfig, Clock, Committed, Engine, EngineMetrics, RepeatRequest, system_clock,
};
pub use handoff::Handoff;
