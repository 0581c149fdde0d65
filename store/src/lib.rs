//! Sentinella's store: the one schema (migrations) and the queries shared by the gateway,
//! the server, the simulators and the tests, for PostgreSQL/TimescaleDB and the embedded
//! SQLite default.
//!
//! Start at [`Store`]: [`Store::connect`] takes a `postgres://…` or `sqlite:…` URL,
//! [`Store::migrate`] brings the schema up to date and reports how readings are laid out
//! ([`ReadingsLayout`]), and every other method is one operation of the system (provision a
//! device, commit an ingest batch, read a patient's readings, …). All queries are built at run
//! time (`sqlx::query`), so building needs no database.
//!
//! # Layout
//!
//! Modules are private unless noted; their types are re-exported here.
//!
//! - `error`: [`StoreError`], with [`StoreError::is_transient`] for retry decisions.
//! - `connect`: URLs, pools, and the per-transaction `search_path` scoping that isolates
//!   tests in a schema.
//! - `schema`: [`Store::migrate`], readings layout detection, monthly partitions, health
//!   check. The SQL itself lives in `migrations/postgres` and `migrations/sqlite`.
//! - `registry`: COTs, patients, devices (listed all, or within a COT scope), API tokens.
//! - `readings`: the ingest batch ([`Store::commit_batch`]: readings, quarantine and device
//!   status in one transaction) and reading queries.
//! - `readings::bulk`: the ingest batch's bulk writes, per backend (`UNNEST` on PostgreSQL, multi-row
//!   `VALUES` on SQLite).
//! - `alerts::bulk`: the alert engine's grouped writes on PostgreSQL, set by set (`UNNEST`).
//! - `identity`: staff users, roles, COT membership.
//! - `contacts`: patients' contacts and context; interventions recorded on alerts (calls,
//!   advice, GP informed, …), which re-queue an alert when a call does not reach the patient.
//! - `quarantine`, `audit`: rejected device input; who did what (append-only).
//! - `cluster`: wake-ups between nodes on one PostgreSQL database (`LISTEN`/`NOTIFY`): new
//!   alert events ([`Store::alert_feed`]) and devices with a new repeat request
//!   ([`Store::device_wakeups`]).
//! - `throttle`: failed-login counts ([`Store::admit_login`]), so every node throttles alike.
//! - `repeats`: repeat requests waiting for their device ([`Store::put_repeat_request`]).
//! - `fhir`: what the FHIR export reads beyond the API (a reading by its key).
//! - `sql`: one statement text for both backends (bound values, rows of either backend,
//!   transactions), and the few fragments that differ ([`Store::backend`]).
//! - `rows`: column access shared by both backends, millisecond timestamps for SQLite.
//! - [`credentials`] (public): device secrets (generate, hash, verify).
//! - `testing` (public, cargo feature `testing`): fresh migrated databases for tests of this
//!   and other crates; the product does not compile it, test crates enable it in their
//!   dev-dependencies.
//! - `examples/bulk_insert.rs`: measures [`Store::commit_batch`] throughput.
//!
//! # One query, both backends
//!
//! Only `sql.rs` matches on the backend, outside bulk insert and partitions: every query is
//! one SQL text, with values bound through `sql::Val` (a timestamp is bound as `TIMESTAMPTZ`
//! on PostgreSQL and as unix milliseconds on SQLite) and rows read through `sql::AnyRow`.
//! Where the SQL genuinely differs, the text keeps one shape and takes the differing fragment
//! from `Store::dialect` (e.g. `COLLATE "C"`). The exceptions, each in one place: `readings/bulk.rs`
//! (the ingest batch's readings and device statuses: `UNNEST` arrays on PostgreSQL,
//! multi-row `VALUES` on SQLite), `alerts/bulk.rs` (a group of the engine's alert writes,
//! `UNNEST` arrays on PostgreSQL; SQLite writes them one by one through `sql.rs`), `schema.rs` (migrations, readings layout, partitions) and
//! `connect.rs` (pools). A new query goes through `Store::read`/`read_one`/`exec` or a
//! transaction (`Store::tx`, `Tx::exec`/`all`/`one`), never a `match` on the backend.
//!
//! # Backends
//!
//! - **PostgreSQL** with TimescaleDB: readings is a hypertable (7-day chunks, compression
//!   settings segmented by device; compression and retention *policies* are left to the
//!   operator, as they need TimescaleDB's background jobs).
//! - **PostgreSQL** without it: readings is range-partitioned by month on `measured_at`, with a
//!   DEFAULT partition for skewed device clocks; [`Store::ensure_partitions`] keeps partitions
//!   ahead of time. On both PostgreSQL layouts a small unpartitioned table `reading_keys`
//!   enforces one row per (device, seq), because a unique index on a partitioned table must
//!   include the partition column.
//! - **SQLite**: one file, WAL; timestamps are stored as unix milliseconds, so they come back
//!   truncated to the millisecond (PostgreSQL keeps microseconds).

mod alerts;
mod audit;
mod careplans;
mod cluster;
mod connect;
mod contacts;
pub mod credentials;
mod error;
mod fhir;
pub mod handoff;
mod identity;
pub mod leases;
mod pg_hosts;
mod quarantine;
mod readings;
mod registry;
mod repeats;
mod rows;
mod schema;
mod sql;
#[cfg(feature = "testing")]
pub mod testing;
mod throttle;

pub use alerts::{
    Alert, AlertEvent, AlertQuery, AlertReading, AlertWrite, AlertWritten, Confirmation,
    MAX_ALERT_WRITES, OutboxEntry, Severity, Trigger, TriggerOutcome, Workflow,
};
pub use audit::{AuditEntry, AuditQuery, NewAudit};
pub use careplans::{CarePlanRow, NewCarePlan};
pub use cluster::DeviceWakeup;
pub use contacts::{
    CallResult, Intervention, InterventionKind, NewContacts, NewIntervention, PatientContacts,
    Phone,
};
pub use error::{Result, StoreError};
pub use handoff::Handoff;
pub use identity::{NewUser, Role, User, UserKind};
pub use leases::{LeaseChange, Leases};
pub use quarantine::{NewQuarantine, QuarantineEntry};
pub use readings::{
    CommitBatch, CommitOutcome, Committed, DeviceStatusUpdate, NewReading, OutboxRef, ReadingKind,
    ReadingQuery, StoredReading,
};
pub use registry::{
    ApiToken, Cot, Device, DeviceAuth, DeviceKind, NewApiToken, NewDevice, NewPatient, Patient,
    TokenKind,
};
pub use repeats::{PendingRepeat, REPEAT_FRESH_AFTER_DUE};
pub use schema::ReadingsLayout;
pub use throttle::{LoginAttempt, LoginLimits, LoginRefusal};

use connect::Pg;
use sqlx::SqlitePool;

/// A handle on the database: a connection pool, cheap to clone and share between tasks.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    /// The id of the newest alert event this process wrote: the live stream's wake-up.
    alert_feed: std::sync::Arc<tokio::sync::watch::Sender<i64>>,
    /// The node this store works for (see [`Store::with_node`]); empty by default.
    node: std::sync::Arc<str>,
    /// Wake-ups shared with the other nodes on the same PostgreSQL database (`cluster`).
    signals: std::sync::Arc<cluster::Signals>,
}

impl Store {
    /// This store as used by node `node`: the outbox entries it commits name the node, so
    /// that node evaluates them from memory and other nodes from the store (`store::leases`).
    pub fn with_node(mut self, node: &str) -> Store {
        self.node = std::sync::Arc::from(node);
        self
    }

    /// The node this store works for (empty unless set by [`Store::with_node`]).
    pub fn node(&self) -> &str {
        &self.node
    }
}

/// Which database a [`Store`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL, with or without TimescaleDB.
    Postgres,
    /// An SQLite file.
    Sqlite,
}

#[derive(Clone, Debug)]
enum Db {
    Postgres(Pg),
    Sqlite(SqlitePool),
}
