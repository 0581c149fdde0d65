//! Readings: the ingest batch written by the gateway, and the queries the API and tests read
//! them back with.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, QueryBuilder, Sqlite, SqliteConnection};
use time::OffsetDateTime;

use crate::error::what;
use crate::quarantine::{self, NewQuarantine};
use crate::registry::DeviceKind;
use crate::rows::{Columns, to_ms};
use crate::sql::Tx;
use crate::{Db, Result, Store, StoreError, connect};

/// What a reading measures. Serialized as `"bp"`, `"spo2"`, `"glucose"`, like
/// [`Self::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReadingKind {
    #[serde(rename = "bp")]
    BloodPressure,
    #[serde(rename = "spo2")]
    Spo2,
    #[serde(rename = "glucose")]
    Glucose,
}

impl ReadingKind {
    /// `"bp"`, `"spo2"` or `"glucose"`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadingKind::BloodPressure => "bp",
            ReadingKind::Spo2 => "spo2",
            ReadingKind::Glucose => "glucose",
        }
    }

    /// The inverse of [`Self::as_str`].
    pub fn parse(s: &str) -> Option<ReadingKind> {
        match s {
            "bp" => Some(ReadingKind::BloodPressure),
            "spo2" => Some(ReadingKind::Spo2),
            "glucose" => Some(ReadingKind::Glucose),
            _ => None,
        }
    }
}

impl From<DeviceKind> for ReadingKind {
    fn from(kind: DeviceKind) -> ReadingKind {
        match kind {
            DeviceKind::BloodPressure => ReadingKind::BloodPressure,
            DeviceKind::Spo2 => ReadingKind::Spo2,
            DeviceKind::Glucose => ReadingKind::Glucose,
        }
    }
}

/// A validated reading, values already in canonical units (mmHg, %, /min, mg/dL).
#[derive(Debug, Clone)]
pub struct NewReading {
    pub device_id: String,
    /// The device's own monotonic sequence number; (device_id, seq) identifies the reading.
    pub seq: i64,
    pub patient_id: i64,
    pub kind: ReadingKind,
    /// Measurement time by the device clock (the partitioning column).
    pub measured_at: OffsetDateTime,
    /// When the gateway received it.
    pub received_at: OffsetDateTime,
    /// The device said its clock was not set, so `measured_at` is unreliable.
    pub clock_unset: bool,
    /// IEEE 11073 measurement-status bits.
    pub status: i32,
    /// Kind-specific BLE status bits (e.g. cuff fit, body movement).
    pub sensor: i64,
    pub systolic: Option<f32>,
    pub diastolic: Option<f32>,
    pub mean_arterial: Option<f32>,
    pub pulse: Option<f32>,
    pub spo2: Option<f32>,
    pub perfusion_index: Option<f32>,
    pub glucose_mg_dl: Option<f32>,
    pub glucose_sample: Option<String>,
    pub glucose_meal: Option<String>,
    /// The unit the device reported in, when it was converted (e.g. `mmol/L`).
    pub source_unit: Option<String>,
}

impl NewReading {
    /// A reading with its identity and times but no values, no status bits and a set clock:
    /// callers fill in what was measured, `NewReading { systolic: Some(…), ..NewReading::bare(…) }`.
    pub fn bare(
        device_id: impl Into<String>,
        seq: i64,
        patient_id: i64,
        kind: ReadingKind,
        measured_at: OffsetDateTime,
        received_at: OffsetDateTime,
    ) -> NewReading {
        NewReading {
            device_id: device_id.into(),
            seq,
            patient_id,
            kind,
            measured_at,
            received_at,
            clock_unset: false,
            status: 0,
            sensor: 0,
            systolic: None,
            diastolic: None,
            mean_arterial: None,
            pulse: None,
            spo2: None,
            perfusion_index: None,
            glucose_mg_dl: None,
            glucose_sample: None,
            glucose_meal: None,
            source_unit: None,
        }
    }

    /// Sets what a device measured: the kind, the values in canonical units (mmHg, %, mg/dL)
    /// and the unit the device sent. The one mapping from the wire reading to the row, used
    /// by the gateway's ingest and by the alert benchmarks.
    pub fn set_measurement(&mut self, m: &protocol::reading::Measurement) {
        use protocol::reading::Measurement;
        match m {
            Measurement::BloodPressure(bp) => {
                let (sys, dia, map) = bp.mmhg();
                self.kind = ReadingKind::BloodPressure;
                self.systolic = Some(sys);
                self.diastolic = Some(dia);
                self.mean_arterial = map;
                self.pulse = bp.pulse;
                self.source_unit = Some(bp.unit.as_str().to_owned());
            }
            Measurement::Spo2(ox) => {
                self.kind = ReadingKind::Spo2;
                self.spo2 = Some(ox.percent);
                self.pulse = ox.pulse;
                self.perfusion_index = ox.perfusion_index;
                self.source_unit = Some("%".to_owned());
            }
            Measurement::Glucose(g) => {
                self.kind = ReadingKind::Glucose;
                self.glucose_mg_dl = Some(g.mg_dl());
                self.glucose_sample = Some(g.sample.as_str().to_owned());
                self.glucose_meal = g.meal.map(|m| m.as_str().to_owned());
                self.source_unit = Some(g.unit.as_str().to_owned());
            }
        }
    }
}

/// A stored reading; the same fields as [`NewReading`].
#[derive(Debug, Clone, Serialize)]
pub struct StoredReading {
    pub device_id: String,
    pub seq: i64,
    pub patient_id: i64,
    pub kind: ReadingKind,
    #[serde(with = "time::serde::rfc3339")]
    pub measured_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub clock_unset: bool,
    pub status: i32,
    pub sensor: i64,
    pub systolic: Option<f32>,
    pub diastolic: Option<f32>,
    pub mean_arterial: Option<f32>,
    pub pulse: Option<f32>,
    pub spo2: Option<f32>,
    pub perfusion_index: Option<f32>,
    pub glucose_mg_dl: Option<f32>,
    pub glucose_sample: Option<String>,
    pub glucose_meal: Option<String>,
    pub source_unit: Option<String>,
}

/// Which readings [`Store::readings`] returns.
#[derive(Debug, Clone)]
pub struct ReadingQuery {
    pub patient_id: i64,
    /// Inclusive lower bound on `measured_at`.
    pub from: Option<OffsetDateTime>,
    /// Exclusive upper bound on `measured_at`.
    pub to: Option<OffsetDateTime>,
    pub kind: Option<ReadingKind>,
    /// At most this many rows; clamped to 1..=10,000.
    pub limit: i64,
}

/// A device status report (or an MQTT will saying it went offline).
#[derive(Debug, Clone)]
pub struct DeviceStatusUpdate {
    pub device_id: String,
    /// When the gateway received it; older updates than the stored one are ignored.
    pub at: OffsetDateTime,
    pub online: bool,
    /// `None` keeps the stored value (the device did not report it).
    pub battery: Option<i16>,
    /// `None` keeps the stored value.
    pub firmware: Option<String>,
    /// `None` keeps the stored value.
    pub rssi: Option<i16>,
}

/// Everything one flush of the gateway's batcher writes, in one transaction.
#[derive(Debug, Clone, Default)]
pub struct CommitBatch {
    pub readings: Vec<NewReading>,
    pub quarantine: Vec<NewQuarantine>,
    pub statuses: Vec<DeviceStatusUpdate>,
    /// Also record the batch in the alert engine's outbox (in the same transaction), so a
    /// crash between this commit and the evaluation of its readings loses no evaluation.
    pub outbox: bool,
}

/// What [`Store::commit_batch`] did with the readings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommitOutcome {
    /// Readings stored now.
    pub inserted: u64,
    /// Readings whose (device_id, seq) was already stored, or repeated within the batch.
    pub duplicates: u64,
    /// Per reading of the batch, in order: whether it was stored now (the first of a
    /// repeated key within the batch counts, later ones do not).
    pub fresh: Vec<bool>,
    /// The outbox entry written for the batch (with `outbox` and at least one new reading).
    pub outbox_id: Option<i64>,
}

/// Marks, per reading, whether its key is among those stored now (first occurrence only).
fn fresh_flags(readings: &[NewReading], keys: FreshKeys) -> Vec<bool> {
    let mut keys: std::collections::HashSet<(String, i64)> = keys.into_iter().collect();
    readings
        .iter()
        .map(|r| keys.remove(&(r.device_id.clone(), r.seq)))
        .collect()
}

/// A batch the ingest writer committed, handed to the alert engine: the readings stored now
/// (duplicates left out), with the outbox entry that keeps it until the engine has evaluated it.
#[derive(Debug)]
pub struct Committed {
    /// The readings newly stored.
    pub readings: Vec<NewReading>,
    /// Its outbox entry, deleted once evaluated.
    pub outbox_id: Option<i64>,
    /// When the commit finished (for the commit → alert latency).
    pub committed: std::time::Instant,
}

/// Writes the outbox row of a batch (if asked for and something was stored).
async fn write_outbox(tx: &mut Tx, batch: &CommitBatch, fresh: &FreshKeys) -> Result<Option<i64>> {
    if !batch.outbox || fresh.is_empty() {
        return Ok(None);
    }
    let keys: std::collections::HashSet<(&str, i64)> =
        fresh.iter().map(|(d, s)| (d.as_str(), *s)).collect();
    let stored = batch
        .readings
        .iter()
        .filter(|r| keys.contains(&(r.device_id.as_str(), r.seq)));
    let mut min = None::<OffsetDateTime>;
    let mut max = None::<OffsetDateTime>;
    let mut patients = std::collections::BTreeSet::new();
    for r in stored {
        min = Some(min.map_or(r.received_at, |m| m.min(r.received_at)));
        max = Some(max.map_or(r.received_at, |m| m.max(r.received_at)));
        patients.insert(r.patient_id);
    }
    let (Some(min), Some(max)) = (min, max) else {
        return Ok(None);
    };
    let list: Vec<String> = patients.iter().map(i64::to_string).collect();
    let count = i64::try_from(fresh.len()).unwrap_or(i64::MAX);
    Ok(Some(
        crate::alerts::insert_outbox(tx, min, max, count, &list.join(",")).await?,
    ))
}

pub(crate) const READING_COLUMNS: &str = "device_id, seq, patient_id, kind, measured_at, received_at, \
     clock_unset, status, sensor, systolic, diastolic, mean_arterial, pulse, spo2, \
     perfusion_index, glucose_mg_dl, glucose_sample, glucose_meal, source_unit";

/// Readings per multi-row INSERT on SQLite: 19 parameters each, well under SQLite's limit
/// of 32,766 parameters per statement.
const SQLITE_ROWS_PER_STATEMENT: usize = 500;

const MAX_LIMIT: i64 = 10_000;

/// The PostgreSQL bulk write: one statement, one round trip, for all readings of a batch.
/// `input` unpacks the arrays and dedupes them (the first occurrence of a (device_id, seq)
/// wins), sorted bytewise (cheaper than under a linguistic collation); `fresh` claims the
/// keys not stored yet, and only their readings go into the partitioned table; `touched`
/// moves each device's last_seen_at and last_seq. The counts let the caller check that every
/// device exists: reading_keys has no foreign key (see migrations/postgres/0002_readings.sql).
const PG_INSERT_READINGS: &str = "\
WITH input AS (
    SELECT DISTINCT ON (device_id COLLATE \"C\", seq) *
    FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::timestamptz[],
                $6::timestamptz[], $7::bool[], $8::int4[], $9::int8[], $10::float4[],
                $11::float4[], $12::float4[], $13::float4[], $14::float4[], $15::float4[],
                $16::float4[], $17::text[], $18::text[], $19::text[])
        WITH ORDINALITY AS t(device_id, seq, patient_id, kind, measured_at, received_at,
                             clock_unset, status, sensor, systolic, diastolic, mean_arterial,
                             pulse, spo2, perfusion_index, glucose_mg_dl, glucose_sample,
                             glucose_meal, source_unit, ord)
    ORDER BY device_id COLLATE \"C\", seq, ord
), fresh AS (
    INSERT INTO reading_keys (device_id, seq, measured_at, received_at)
    SELECT device_id, seq, measured_at, received_at FROM input
    ON CONFLICT DO NOTHING
    RETURNING device_id, seq
), stored AS (
    INSERT INTO readings (device_id, seq, patient_id, kind, measured_at, received_at,
                          clock_unset, status, sensor, systolic, diastolic, mean_arterial,
                          pulse, spo2, perfusion_index, glucose_mg_dl, glucose_sample,
                          glucose_meal, source_unit)
    SELECT i.device_id, i.seq, i.patient_id, i.kind, i.measured_at, i.received_at,
           i.clock_unset, i.status, i.sensor, i.systolic, i.diastolic, i.mean_arterial,
           i.pulse, i.spo2, i.perfusion_index, i.glucose_mg_dl, i.glucose_sample,
           i.glucose_meal, i.source_unit
    FROM input i JOIN fresh f USING (device_id, seq)
), seen AS (
    SELECT device_id, max(received_at) AS received_at, max(seq) AS seq
    FROM input GROUP BY device_id
    -- Concurrent batches then lock shared devices in the same order.
    ORDER BY device_id COLLATE \"C\"
), touched AS (
    UPDATE devices d
    SET last_seen_at = GREATEST(d.last_seen_at, s.received_at),
        last_seq = GREATEST(d.last_seq, s.seq)
    FROM seen s
    WHERE d.id = s.device_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM fresh) AS inserted,
       (SELECT count(*) FROM touched) AS touched,
       (SELECT count(*) FROM seen) AS devices,
       (SELECT array_agg(device_id) FROM fresh) AS fresh_devices,
       (SELECT array_agg(seq) FROM fresh) AS fresh_seqs";

/// After a failed [`PG_INSERT_READINGS`] check: the first device of the batch that does
/// not exist.
const PG_MISSING_DEVICE: &str = "\
SELECT b.id FROM unnest($1::text[]) AS b(id)
WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = b.id)
ORDER BY b.id LIMIT 1";

const PG_APPLY_STATUSES: &str = "\
UPDATE devices d
SET online = s.online,
    battery_pct = COALESCE(s.battery, d.battery_pct),
    firmware = COALESCE(s.firmware, d.firmware),
    rssi = COALESCE(s.rssi, d.rssi),
    status_at = s.at,
    last_seen_at = CASE WHEN s.online THEN GREATEST(d.last_seen_at, s.at) ELSE d.last_seen_at END
FROM unnest($1::text[], $2::timestamptz[], $3::bool[], $4::int2[], $5::text[], $6::int2[])
    AS s(device_id, at, online, battery, firmware, rssi)
WHERE d.id = s.device_id AND (d.status_at IS NULL OR d.status_at <= s.at)";

/// Followed by `VALUES (id, seen, seq), …` and [`SQLITE_TOUCH_DEVICES_END`]: one statement
/// per chunk of devices, because one UPDATE per device cost more than the readings insert.
const SQLITE_TOUCH_DEVICES_START: &str = "\
UPDATE devices
SET last_seen_at = max(coalesce(devices.last_seen_at, v.column2), v.column2),
    last_seq = max(coalesce(devices.last_seq, v.column3), v.column3)
FROM (";
const SQLITE_TOUCH_DEVICES_END: &str = ") AS v WHERE devices.id = v.column1";

/// Devices per UPDATE on SQLite (3 parameters each).
const SQLITE_DEVICES_PER_STATEMENT: usize = 500;

const SQLITE_APPLY_STATUS: &str = "\
UPDATE devices
SET online = $3,
    battery_pct = coalesce($4, battery_pct),
    firmware = coalesce($5, firmware),
    rssi = coalesce($6, rssi),
    status_at = $2,
    last_seen_at = CASE WHEN $3 THEN max(coalesce(last_seen_at, $2), $2) ELSE last_seen_at END
WHERE id = $1 AND (status_at IS NULL OR status_at <= $2)";

impl Store {
    /// Writes one ingest batch in ONE transaction: readings (idempotent on
    /// (device_id, seq): already stored or repeated ones are skipped and counted as
    /// duplicates, never an error), quarantine rows, device status updates, and each
    /// reading device's `last_seen_at` (latest `received_at`) and `last_seq` (highest seq).
    /// If anything fails, nothing is written.
    ///
    /// A reading of a device that is not provisioned fails the whole batch with
    /// [`StoreError::NotFound`] naming the device; the reading's `patient_id` is stored as
    /// given (the gateway takes it from the registry). Status updates for unknown devices
    /// are ignored. Concurrent batches are safe; should two of them deadlock on PostgreSQL,
    /// one fails with an error for which [`StoreError::is_transient`] is true, to retry.
    ///
    /// On PostgreSQL the readings go in with one statement (see `PG_INSERT_READINGS`); on
    /// SQLite with multi-row inserts of 500 rows, in one `BEGIN IMMEDIATE` transaction.
    pub async fn commit_batch(&self, batch: &CommitBatch) -> Result<CommitOutcome> {
        for reading in &batch.readings {
            if reading.device_id.is_empty() {
                return Err(StoreError::Invalid(
                    "reading with an empty device id".into(),
                ));
            }
        }
        let statuses = merge_statuses(&batch.statuses);
        let (fresh_keys, outbox_id) = match &self.db {
            Db::Postgres(pg) => {
                let mut tx = Tx::Pg(pg.begin().await?);
                let Tx::Pg(conn) = &mut tx else {
                    unreachable!("a PostgreSQL transaction")
                };
                let fresh = pg_insert_readings(conn, &batch.readings).await?;
                quarantine::pg_insert(conn, &batch.quarantine).await?;
                pg_apply_statuses(conn, &statuses).await?;
                let outbox = write_outbox(&mut tx, batch, &fresh).await?;
                tx.commit().await?;
                (fresh, outbox)
            }
            Db::Sqlite(pool) => {
                let mut tx = Tx::Sqlite(connect::sqlite_write(pool).await?);
                let Tx::Sqlite(conn) = &mut tx else {
                    unreachable!("an SQLite transaction")
                };
                let fresh = sqlite_insert_readings(conn, &batch.readings).await?;
                quarantine::sqlite_insert(conn, &batch.quarantine).await?;
                sqlite_apply_statuses(conn, &statuses).await?;
                sqlite_touch_devices(conn, &touched_devices(&batch.readings)).await?;
                let outbox = write_outbox(&mut tx, batch, &fresh).await?;
                tx.commit().await?;
                (fresh, outbox)
            }
        };
        let inserted = u64::try_from(fresh_keys.len()).unwrap_or(u64::MAX);
        let total = u64::try_from(batch.readings.len()).unwrap_or(u64::MAX);
        Ok(CommitOutcome {
            inserted,
            duplicates: total.saturating_sub(inserted),
            fresh: fresh_flags(&batch.readings, fresh_keys),
            outbox_id,
        })
    }

    /// Marks a device online or offline at `at` (the gateway's clock; an update older than
    /// the stored status is ignored). Going online also counts as being seen.
    /// [`StoreError::NotFound`] if the device does not exist.
    pub async fn set_device_online(
        &self,
        id: &str,
        online: bool,
        at: OffsetDateTime,
    ) -> Result<()> {
        let update = MergedStatus {
            at,
            online,
            battery: None,
            firmware: None,
            rssi: None,
        };
        let statuses = BTreeMap::from([(id, update)]);
        let exists = match &self.db {
            Db::Postgres(pg) => {
                let mut tx = pg.begin().await?;
                pg_apply_statuses(&mut tx, &statuses).await?;
                let exists = sqlx::query("SELECT 1 FROM devices WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
                tx.commit().await?;
                exists
            }
            Db::Sqlite(pool) => {
                let mut tx = connect::sqlite_write(pool).await?;
                sqlite_apply_statuses(&mut tx, &statuses).await?;
                let exists = sqlx::query("SELECT 1 FROM devices WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
                tx.commit().await?;
                exists
            }
        };
        if exists {
            Ok(())
        } else {
            Err(StoreError::NotFound {
                what: what("device", format_args!("{id:?}")),
            })
        }
    }

    /// A patient's readings received in `[from, to]` (inclusive), in measurement order: what
    /// the alert engine re-evaluates from its outbox after a restart.
    pub async fn readings_received_between(
        &self,
        patient_id: i64,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<StoredReading>> {
        let sql = format!(
            "SELECT {READING_COLUMNS} FROM readings WHERE patient_id = $1 \
             AND received_at >= $2 AND received_at <= $3 ORDER BY measured_at, seq"
        );
        self.read(
            &sql,
            &[
                crate::sql::Val::I64(patient_id),
                crate::sql::Val::Ts(from),
                crate::sql::Val::Ts(to),
            ],
        )
        .await?
        .iter()
        .map(reading_from_row)
        .collect()
    }

    /// A patient's readings, ordered by `measured_at`, then device id (bytewise), then seq.
    pub async fn readings(&self, q: &ReadingQuery) -> Result<Vec<StoredReading>> {
        let limit = q.limit.clamp(1, MAX_LIMIT);
        let kind = q.kind.map(ReadingKind::as_str);
        match &self.db {
            Db::Postgres(pg) => {
                let mut query = QueryBuilder::new(format!(
                    "SELECT {READING_COLUMNS} FROM readings WHERE patient_id = "
                ));
                query.push_bind(q.patient_id);
                if let Some(from) = q.from {
                    query.push(" AND measured_at >= ").push_bind(from);
                }
                if let Some(to) = q.to {
                    query.push(" AND measured_at < ").push_bind(to);
                }
                if let Some(kind) = kind {
                    query.push(" AND kind = ").push_bind(kind);
                }
                // Bytewise device order, as on SQLite, whatever the database's collation.
                query
                    .push(" ORDER BY measured_at, device_id COLLATE \"C\", seq LIMIT ")
                    .push_bind(limit);
                let mut c = pg.conn().await?;
                let rows = query.build().fetch_all(&mut *c).await?;
                c.finish().await?;
                rows.iter().map(reading_from_row).collect()
            }
            Db::Sqlite(pool) => {
                let mut query = QueryBuilder::new(format!(
                    "SELECT {READING_COLUMNS} FROM readings WHERE patient_id = "
                ));
                query.push_bind(q.patient_id);
                if let Some(from) = q.from {
                    query.push(" AND measured_at >= ").push_bind(to_ms(from));
                }
                if let Some(to) = q.to {
                    query.push(" AND measured_at < ").push_bind(to_ms(to));
                }
                if let Some(kind) = kind {
                    query.push(" AND kind = ").push_bind(kind);
                }
                query
                    .push(" ORDER BY measured_at, device_id, seq LIMIT ")
                    .push_bind(limit);
                let rows = query.build().fetch_all(pool).await?;
                rows.iter().map(reading_from_row).collect()
            }
        }
    }

    /// How many readings are stored, in all or for one device. On PostgreSQL this counts
    /// the (device_id, seq) keys, which are written in the same statement as the readings.
    pub async fn count_readings(&self, device_id: Option<&str>) -> Result<i64> {
        let filter = if device_id.is_some() {
            " WHERE device_id = $1"
        } else {
            ""
        };
        match &self.db {
            Db::Postgres(pg) => {
                let sql = format!("SELECT count(*) FROM reading_keys{filter}");
                let mut query = sqlx::query_scalar(&sql);
                if let Some(device_id) = device_id {
                    query = query.bind(device_id);
                }
                let mut c = pg.conn().await?;
                let count = query.fetch_one(&mut *c).await?;
                c.finish().await?;
                Ok(count)
            }
            Db::Sqlite(pool) => {
                let sql = format!("SELECT count(*) FROM readings{filter}");
                let mut query = sqlx::query_scalar(&sql);
                if let Some(device_id) = device_id {
                    query = query.bind(device_id);
                }
                Ok(query.fetch_one(pool).await?)
            }
        }
    }

    /// The seqs stored for a device, ascending (tests compare full sets).
    pub async fn stored_seqs(&self, device_id: &str) -> Result<Vec<i64>> {
        match &self.db {
            Db::Postgres(pg) => {
                let sql = "SELECT seq FROM reading_keys WHERE device_id = $1 ORDER BY seq";
                let mut c = pg.conn().await?;
                let seqs = sqlx::query_scalar(sql)
                    .bind(device_id)
                    .fetch_all(&mut *c)
                    .await?;
                c.finish().await?;
                Ok(seqs)
            }
            Db::Sqlite(pool) => {
                let sql = "SELECT seq FROM readings WHERE device_id = $1 ORDER BY seq";
                Ok(sqlx::query_scalar(sql)
                    .bind(device_id)
                    .fetch_all(pool)
                    .await?)
            }
        }
    }
}

/// Per device with readings in the batch (SQLite): latest received_at and highest seq.
fn touched_devices(readings: &[NewReading]) -> BTreeMap<&str, (OffsetDateTime, i64)> {
    let mut touched: BTreeMap<&str, (OffsetDateTime, i64)> = BTreeMap::new();
    for r in readings {
        touched
            .entry(&r.device_id)
            .and_modify(|(seen, seq)| {
                *seen = (*seen).max(r.received_at);
                *seq = (*seq).max(r.seq);
            })
            .or_insert((r.received_at, r.seq));
    }
    touched
}

/// One device's status updates of a batch folded into one, in time order: the latest
/// `online` and time, and the latest reported battery, firmware and rssi.
#[derive(Debug, Clone, PartialEq)]
struct MergedStatus<'a> {
    at: OffsetDateTime,
    online: bool,
    battery: Option<i16>,
    firmware: Option<&'a str>,
    rssi: Option<i16>,
}

fn merge_statuses(updates: &[DeviceStatusUpdate]) -> BTreeMap<&str, MergedStatus<'_>> {
    let mut ordered: Vec<&DeviceStatusUpdate> = updates.iter().collect();
    ordered.sort_by_key(|u| u.at); // stable: equal times keep batch order
    let mut merged: BTreeMap<&str, MergedStatus<'_>> = BTreeMap::new();
    for u in ordered {
        let next = MergedStatus {
            at: u.at,
            online: u.online,
            battery: u.battery,
            firmware: u.firmware.as_deref(),
            rssi: u.rssi,
        };
        merged
            .entry(&u.device_id)
            .and_modify(|m| {
                m.at = next.at;
                m.online = next.online;
                m.battery = next.battery.or(m.battery);
                m.firmware = next.firmware.or(m.firmware);
                m.rssi = next.rssi.or(m.rssi);
            })
            .or_insert(next);
    }
    merged
}

/// Keys of the readings a batch stored now (not duplicates).
type FreshKeys = Vec<(String, i64)>;

async fn pg_insert_readings(conn: &mut PgConnection, readings: &[NewReading]) -> Result<FreshKeys> {
    if readings.is_empty() {
        return Ok(Vec::new());
    }
    let n = readings.len();
    let mut device_id = Vec::with_capacity(n);
    let mut seq = Vec::with_capacity(n);
    let mut patient_id = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let mut measured_at = Vec::with_capacity(n);
    let mut received_at = Vec::with_capacity(n);
    let mut clock_unset = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut sensor = Vec::with_capacity(n);
    let mut systolic = Vec::with_capacity(n);
    let mut diastolic = Vec::with_capacity(n);
    let mut mean_arterial = Vec::with_capacity(n);
    let mut pulse = Vec::with_capacity(n);
    let mut spo2 = Vec::with_capacity(n);
    let mut perfusion_index = Vec::with_capacity(n);
    let mut glucose_mg_dl = Vec::with_capacity(n);
    let mut glucose_sample = Vec::with_capacity(n);
    let mut glucose_meal = Vec::with_capacity(n);
    let mut source_unit = Vec::with_capacity(n);
    for r in readings {
        device_id.push(r.device_id.as_str());
        seq.push(r.seq);
        patient_id.push(r.patient_id);
        kind.push(r.kind.as_str());
        measured_at.push(r.measured_at);
        received_at.push(r.received_at);
        clock_unset.push(r.clock_unset);
        status.push(r.status);
        sensor.push(r.sensor);
        systolic.push(r.systolic);
        diastolic.push(r.diastolic);
        mean_arterial.push(r.mean_arterial);
        pulse.push(r.pulse);
        spo2.push(r.spo2);
        perfusion_index.push(r.perfusion_index);
        glucose_mg_dl.push(r.glucose_mg_dl);
        glucose_sample.push(r.glucose_sample.as_deref());
        glucose_meal.push(r.glucose_meal.as_deref());
        source_unit.push(r.source_unit.as_deref());
    }
    #[allow(clippy::type_complexity)]
    let (_, touched, devices, fresh_devices, fresh_seqs): (
        i64,
        i64,
        i64,
        Option<Vec<String>>,
        Option<Vec<i64>>,
    ) = sqlx::query_as(PG_INSERT_READINGS)
        .bind(device_id)
        .bind(seq)
        .bind(patient_id)
        .bind(kind)
        .bind(measured_at)
        .bind(received_at)
        .bind(clock_unset)
        .bind(status)
        .bind(sensor)
        .bind(systolic)
        .bind(diastolic)
        .bind(mean_arterial)
        .bind(pulse)
        .bind(spo2)
        .bind(perfusion_index)
        .bind(glucose_mg_dl)
        .bind(glucose_sample)
        .bind(glucose_meal)
        .bind(source_unit)
        .fetch_one(&mut *conn)
        .await?;
    if touched < devices {
        let missing: Option<String> = sqlx::query_scalar(PG_MISSING_DEVICE)
            .bind(device_id_list(readings))
            .fetch_optional(&mut *conn)
            .await?;
        return Err(missing_device(missing.as_deref().unwrap_or_default()));
    }
    Ok(fresh_devices
        .unwrap_or_default()
        .into_iter()
        .zip(fresh_seqs.unwrap_or_default())
        .collect())
}

async fn pg_apply_statuses(
    conn: &mut PgConnection,
    statuses: &BTreeMap<&str, MergedStatus<'_>>,
) -> Result<()> {
    if statuses.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = statuses.keys().copied().collect();
    let at: Vec<OffsetDateTime> = statuses.values().map(|s| s.at).collect();
    let online: Vec<bool> = statuses.values().map(|s| s.online).collect();
    let battery: Vec<Option<i16>> = statuses.values().map(|s| s.battery).collect();
    let firmware: Vec<Option<&str>> = statuses.values().map(|s| s.firmware).collect();
    let rssi: Vec<Option<i16>> = statuses.values().map(|s| s.rssi).collect();
    sqlx::query(PG_APPLY_STATUSES)
        .bind(ids)
        .bind(at)
        .bind(online)
        .bind(battery)
        .bind(firmware)
        .bind(rssi)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn sqlite_insert_readings(
    conn: &mut SqliteConnection,
    readings: &[NewReading],
) -> Result<FreshKeys> {
    let mut fresh = Vec::new();
    for chunk in readings.chunks(SQLITE_ROWS_PER_STATEMENT) {
        let mut query =
            QueryBuilder::<Sqlite>::new(format!("INSERT INTO readings ({READING_COLUMNS}) "));
        query.push_values(chunk, |mut row, r| {
            row.push_bind(&r.device_id)
                .push_bind(r.seq)
                .push_bind(r.patient_id)
                .push_bind(r.kind.as_str())
                .push_bind(to_ms(r.measured_at))
                .push_bind(to_ms(r.received_at))
                .push_bind(r.clock_unset)
                .push_bind(r.status)
                .push_bind(r.sensor)
                .push_bind(r.systolic)
                .push_bind(r.diastolic)
                .push_bind(r.mean_arterial)
                .push_bind(r.pulse)
                .push_bind(r.spo2)
                .push_bind(r.perfusion_index)
                .push_bind(r.glucose_mg_dl)
                .push_bind(&r.glucose_sample)
                .push_bind(&r.glucose_meal)
                .push_bind(&r.source_unit);
        });
        query.push(" ON CONFLICT (device_id, seq) DO NOTHING RETURNING device_id, seq");
        // Full chunks share one statement text worth caching; a tail's is one-off.
        let persistent = chunk.len() == SQLITE_ROWS_PER_STATEMENT;
        let done = query
            .build()
            .persistent(persistent)
            .fetch_all(&mut *conn)
            .await;
        match done {
            Ok(rows) => {
                for row in rows {
                    use sqlx::Row;
                    fresh.push((row.try_get("device_id")?, row.try_get("seq")?));
                }
            }
            Err(sqlx::Error::Database(db))
                if db.kind() == sqlx::error::ErrorKind::ForeignKeyViolation =>
            {
                return Err(sqlite_missing_device(conn, chunk).await);
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(fresh)
}

async fn sqlite_touch_devices(
    conn: &mut SqliteConnection,
    touched: &BTreeMap<&str, (OffsetDateTime, i64)>,
) -> Result<()> {
    let touched: Vec<(&str, i64, i64)> = touched
        .iter()
        .map(|(id, (seen, seq))| (*id, to_ms(*seen), *seq))
        .collect();
    for chunk in touched.chunks(SQLITE_DEVICES_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new(SQLITE_TOUCH_DEVICES_START);
        query.push_values(chunk, |mut row, (id, seen, seq)| {
            row.push_bind(*id).push_bind(*seen).push_bind(*seq);
        });
        query.push(SQLITE_TOUCH_DEVICES_END);
        let persistent = chunk.len() == SQLITE_DEVICES_PER_STATEMENT;
        query
            .build()
            .persistent(persistent)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn sqlite_apply_statuses(
    conn: &mut SqliteConnection,
    statuses: &BTreeMap<&str, MergedStatus<'_>>,
) -> Result<()> {
    for (id, s) in statuses {
        sqlx::query(SQLITE_APPLY_STATUS)
            .bind(*id)
            .bind(to_ms(s.at))
            .bind(s.online)
            .bind(s.battery)
            .bind(s.firmware)
            .bind(s.rssi)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

fn device_id_list(readings: &[NewReading]) -> Vec<&str> {
    readings.iter().map(|r| r.device_id.as_str()).collect()
}

/// On SQLite a reading of an unknown device violates the foreign key on readings.device_id;
/// this names the device, like the PostgreSQL path does.
async fn sqlite_missing_device(conn: &mut SqliteConnection, chunk: &[NewReading]) -> StoreError {
    let mut ids: Vec<&str> = chunk.iter().map(|r| r.device_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        let exists = sqlx::query("SELECT 1 FROM devices WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await;
        match exists {
            Ok(Some(_)) => {}
            Ok(None) => return missing_device(id),
            Err(error) => return error.into(),
        }
    }
    missing_device("")
}

fn missing_device(id: &str) -> StoreError {
    StoreError::NotFound {
        what: what("device", format_args!("{id:?} (of a reading in the batch)")),
    }
}

pub(crate) fn reading_from_row(row: &impl Columns) -> Result<StoredReading> {
    let kind = row.text("kind")?;
    Ok(StoredReading {
        device_id: row.text("device_id")?,
        seq: row.bigint("seq")?,
        patient_id: row.bigint("patient_id")?,
        kind: ReadingKind::parse(&kind)
            .ok_or_else(|| StoreError::decode(format!("unknown reading kind {kind:?}")))?,
        measured_at: row.ts("measured_at")?,
        received_at: row.ts("received_at")?,
        clock_unset: row.flag("clock_unset")?,
        status: row.int("status")?,
        sensor: row.bigint("sensor")?,
        systolic: row.real_opt("systolic")?,
        diastolic: row.real_opt("diastolic")?,
        mean_arterial: row.real_opt("mean_arterial")?,
        pulse: row.real_opt("pulse")?,
        spo2: row.real_opt("spo2")?,
        perfusion_index: row.real_opt("perfusion_index")?,
        glucose_mg_dl: row.real_opt("glucose_mg_dl")?,
        glucose_sample: row.text_opt("glucose_sample")?,
        glucose_meal: row.text_opt("glucose_meal")?,
        source_unit: row.text_opt("source_unit")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn status(device: &str, at: OffsetDateTime, online: bool) -> DeviceStatusUpdate {
        DeviceStatusUpdate {
            device_id: device.into(),
            at,
            online,
            battery: None,
            firmware: None,
            rssi: None,
        }
    }

    #[test]
    fn statuses_fold_in_time_order() {
        let t0 = datetime!(2025-01-01 00:00 UTC);
        let t1 = datetime!(2025-01-01 00:01 UTC);
        let t2 = datetime!(2025-01-01 00:02 UTC);
        let updates = vec![
            // Out of order on purpose: the offline will at t2 arrives first.
            status("a", t2, false),
            DeviceStatusUpdate {
                battery: Some(80),
                firmware: Some("1.2.0".into()),
                ..status("a", t0, true)
            },
            DeviceStatusUpdate {
                battery: Some(79),
                ..status("a", t1, true)
            },
            status("b", t1, true),
        ];
        let merged = merge_statuses(&updates);
        assert_eq!(
            merged["a"],
            MergedStatus {
                at: t2,
                online: false,
                battery: Some(79),
                firmware: Some("1.2.0"),
                rssi: None
            }
        );
        assert_eq!(merged["b"].at, t1);
        assert_eq!(merged.len(), 2);
    }

    #[test]
    fn kinds() {
        for kind in [
            ReadingKind::BloodPressure,
            ReadingKind::Spo2,
            ReadingKind::Glucose,
        ] {
            assert_eq!(ReadingKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ReadingKind::from(DeviceKind::Spo2), ReadingKind::Spo2);
        assert_eq!(ReadingKind::parse(""), None);
    }
}
