//! The Sentinella node and the `sentinella` binary's commands.
//!
//! # Layout
//! - [`node`]: [`Node::start`], the only place that composes the gateway, the alert engine
//!   and the API (the binary, the end-to-end tests and the firmware runner's tests all go
//!   through it).
//! - [`config`]: the configuration file, environment and defaults; [`config_check`]: every
//!   value checked (`sentinella config check`, and before `run` starts, same messages).
//! - [`notify`]: systemd readiness (`Type=notify`).
//! - [`cli`]: one module per subcommand (`run`, `migrate`, `cot`, `patient`, `device`,
//!   `user`, `token`, `config`).
//! - `demo` (feature `demo`): a simulated fleet inside the binary, so the production build
//!   links no simulator and no MQTT client.
//!
//! Dependencies point down: this crate depends on `api`, `gateway`, `alerting`, `store`;
//! `api` never depends on `gateway`, and `gateway` and `alerting` never on each other
//! (checked in CI by `scripts/check-layout.py` over `cargo metadata`).

pub mod cli;
pub mod config;
pub mod config_check;
#[cfg(feature = "demo")]
mod demo;
pub mod node;
pub mod notify;

pub use config::Config;
pub use node::{Node, NodeTls};
