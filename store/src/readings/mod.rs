//! Readings: the ingest batch written by the gateway, and the queries the API and tests read
//! them back with.

mod bulk;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::what;
use crate::quarantine::{self, NewQuarantine};
use crate::registry::DeviceKind;
use crate::rows::Columns;
use crate::sql::{Tx, Val};
use crate::{Result, Store, StoreError};

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
    /// The outbox entries written for the batch (with `outbox` and at least one new
    /// reading): one per alert partition of its patients.
    pub outbox: Vec<OutboxRef>,
}

/// One outbox entry of a committed batch: the readings of one alert partition
/// (`store::leases`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxRef {
    /// The partition of the entry's patients.
    pub partition: u32,
    /// The entry's id (`alert_outbox.id`).
    pub id: i64,
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
    /// Its outbox entries (one per alert partition), each deleted once evaluated.
    pub outbox: Vec<OutboxRef>,
    /// When the commit finished (for the commit → alert latency).
    pub committed: std::time::Instant,
}

/// Writes the outbox rows of a batch (if asked for and something was stored): one per alert
/// partition of the stored readings' patients, each with its patients and received-at span.
async fn write_outbox(
    tx: &mut Tx,
    node: &str,
    batch: &CommitBatch,
    fresh: &FreshKeys,
) -> Result<Vec<OutboxRef>> {
    if !batch.outbox || fresh.is_empty() {
        return Ok(Vec::new());
    }
    let keys: std::collections::HashSet<(&str, i64)> =
        fresh.iter().map(|(d, s)| (d.as_str(), *s)).collect();
    struct Part {
        min: OffsetDateTime,
        max: OffsetDateTime,
        count: i64,
        patients: std::collections::BTreeSet<i64>,
    }
    let mut parts: std::collections::BTreeMap<u32, Part> = std::collections::BTreeMap::new();
    for r in batch
        .readings
        .iter()
        .filter(|r| keys.contains(&(r.device_id.as_str(), r.seq)))
    {
        let part = parts
            .entry(crate::leases::partition_of(r.patient_id))
            .or_insert_with(|| Part {
                min: r.received_at,
                max: r.received_at,
                count: 0,
                patients: std::collections::BTreeSet::new(),
            });
        part.min = part.min.min(r.received_at);
        part.max = part.max.max(r.received_at);
        part.count += 1;
        part.patients.insert(r.patient_id);
    }
    let rows: Vec<crate::alerts::OutboxRow> = parts
        .into_iter()
        .map(|(partition, part)| {
            let list: Vec<String> = part.patients.iter().map(i64::to_string).collect();
            crate::alerts::OutboxRow {
                partition,
                min: part.min,
                max: part.max,
                readings: part.count,
                patients: list.join(","),
            }
        })
        .collect();
    let ids = crate::alerts::insert_outbox(tx, node, &rows).await?;
    Ok(rows
        .iter()
        .zip(ids)
        .map(|(row, id)| OutboxRef {
            partition: row.partition,
            id,
        })
        .collect())
}

pub(crate) const READING_COLUMNS: &str = "device_id, seq, patient_id, kind, measured_at, received_at, \
     clock_unset, status, sensor, systolic, diastolic, mean_arterial, pulse, spo2, \
     perfusion_index, glucose_mg_dl, glucose_sample, glucose_meal, source_unit";

const MAX_LIMIT: i64 = 10_000;

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
        let mut tx = self.tx().await?;
        let fresh_keys = bulk::write_readings(&mut tx, &batch.readings).await?;
        quarantine::insert(&mut tx, &batch.quarantine).await?;
        bulk::apply_statuses(&mut tx, &statuses).await?;
        let outbox = write_outbox(&mut tx, &self.node, batch, &fresh_keys).await?;
        tx.commit().await?;
        let inserted = u64::try_from(fresh_keys.len()).unwrap_or(u64::MAX);
        let total = u64::try_from(batch.readings.len()).unwrap_or(u64::MAX);
        Ok(CommitOutcome {
            inserted,
            duplicates: total.saturating_sub(inserted),
            fresh: fresh_flags(&batch.readings, fresh_keys),
            outbox,
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
        let mut tx = self.tx().await?;
        bulk::apply_statuses(&mut tx, &statuses).await?;
        let exists = tx
            .one(
                "SELECT 1 AS found FROM devices WHERE id = $1",
                &[Val::Text(id)],
            )
            .await?
            .is_some();
        tx.commit().await?;
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
        self.read(&sql, &[Val::I64(patient_id), Val::Ts(from), Val::Ts(to)])
            .await?
            .iter()
            .map(reading_from_row)
            .collect()
    }

    /// A patient's readings, ordered by `measured_at`, then device id (bytewise), then seq.
    pub async fn readings(&self, q: &ReadingQuery) -> Result<Vec<StoredReading>> {
        let limit = q.limit.clamp(1, MAX_LIMIT);
        let mut sql = format!("SELECT {READING_COLUMNS} FROM readings WHERE patient_id = $1");
        let mut vals = vec![Val::I64(q.patient_id)];
        let mut and = |condition: &str, val| {
            vals.push(val);
            sql.push_str(&format!(" AND {condition} ${}", vals.len()));
        };
        if let Some(from) = q.from {
            and("measured_at >=", Val::Ts(from));
        }
        if let Some(to) = q.to {
            and("measured_at <", Val::Ts(to));
        }
        if let Some(kind) = q.kind {
            and("kind =", Val::Text(kind.as_str()));
        }
        // Bytewise device order on both, whatever PostgreSQL's collation.
        let bytewise = self.dialect(" COLLATE \"C\"", "");
        vals.push(Val::I64(limit));
        sql.push_str(&format!(
            " ORDER BY measured_at, device_id{bytewise}, seq LIMIT ${}",
            vals.len()
        ));
        let rows = self.read(&sql, &vals).await?;
        rows.iter().map(reading_from_row).collect()
    }

    /// How many readings are stored, in all or for one device. On PostgreSQL this counts
    /// the (device_id, seq) keys, which are written in the same statement as the readings.
    pub async fn count_readings(&self, device_id: Option<&str>) -> Result<i64> {
        let mut sql = format!("SELECT count(*) AS n FROM {}", self.keys_table());
        let mut vals = Vec::new();
        if let Some(device_id) = device_id {
            sql.push_str(" WHERE device_id = $1");
            vals.push(Val::Text(device_id));
        }
        let row = self.read_one(&sql, &vals).await?;
        row.map_or(Ok(0), |r| r.bigint("n"))
    }

    /// The seqs stored for a device, ascending (tests compare full sets).
    pub async fn stored_seqs(&self, device_id: &str) -> Result<Vec<i64>> {
        let sql = format!(
            "SELECT seq FROM {} WHERE device_id = $1 ORDER BY seq",
            self.keys_table()
        );
        let rows = self.read(&sql, &[Val::Text(device_id)]).await?;
        rows.iter().map(|r| r.bigint("seq")).collect()
    }

    /// The table with one row per stored (device_id, seq): on PostgreSQL the small
    /// `reading_keys` (written in the same statement as the readings), on SQLite `readings`.
    fn keys_table(&self) -> &'static str {
        self.dialect("reading_keys", "readings")
    }
}

/// One device's status updates of a batch folded into one, in time order: the latest
/// `online` and time, and the latest reported battery, firmware and rssi.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MergedStatus<'a> {
    pub(crate) at: OffsetDateTime,
    pub(crate) online: bool,
    pub(crate) battery: Option<i16>,
    pub(crate) firmware: Option<&'a str>,
    pub(crate) rssi: Option<i16>,
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
pub(crate) type FreshKeys = Vec<(String, i64)>;

pub(crate) fn missing_device(id: &str) -> StoreError {
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
