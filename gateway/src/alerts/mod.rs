//! The alert engine: care plans turn committed readings into alerts.
//!
//! - [`plan`]: the care-plan schema, its validation and the clinical templates.
pub mod plan;
