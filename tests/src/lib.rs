//! End-to-end tests of Sentinella: simulated and independent devices → edge → broker →
//! ingest → store → API, on SQLite, PostgreSQL and TimescaleDB.
//!
//! [`harness`] starts the whole stack in-process on free ports against a fresh database;
//! [`faults`] cuts real services off on demand; [`kit`] holds the helpers shared with
//! `sentinella`'s process tests (HAProxy, the SSE reader); the scenarios live in `tests/`.

pub mod faults;
pub mod harness;
pub mod kit;
