//! The ingest batch's bulk writes, one of the few places besides `sql.rs` and `schema.rs`
//! that match on the backend (the other: `alerts/bulk.rs`): on PostgreSQL all readings of a batch go in with one `UNNEST`
//! statement that also moves each device's `last_seen_at`/`last_seq`, and device statuses
//! with one `UNNEST` update; on SQLite readings go in as multi-row `VALUES` of 500 rows,
//! devices are touched with one `UPDATE … FROM (VALUES …)` per 500 devices, and statuses
//! are applied one device at a time. Everything else in the store is written once, through
//! `sql.rs`.

use std::collections::BTreeMap;

use sqlx::{PgConnection, QueryBuilder, Sqlite, SqliteConnection};
use time::OffsetDateTime;

use super::{FreshKeys, MergedStatus, NewReading, READING_COLUMNS, missing_device};
use crate::rows::to_ms;
use crate::sql::Tx;
use crate::{Result, StoreError};

/// Writes a batch's readings in the transaction (idempotent on (device_id, seq)) and moves
/// each device's `last_seen_at` (latest `received_at`) and `last_seq` (highest seq); returns
/// the keys stored now. [`StoreError::NotFound`] names the first unknown device.
pub(crate) async fn write_readings(tx: &mut Tx, readings: &[NewReading]) -> Result<FreshKeys> {
    match tx {
        Tx::Pg(conn) => pg_insert_readings(conn, readings).await,
        Tx::Sqlite(conn) => {
            let fresh = sqlite_insert_readings(conn, readings).await?;
            sqlite_touch_devices(conn, &touched_devices(readings)).await?;
            Ok(fresh)
        }
    }
}

/// Applies merged device status updates (older than the stored status: ignored; unknown
/// devices: ignored).
pub(crate) async fn apply_statuses(
    tx: &mut Tx,
    statuses: &BTreeMap<&str, MergedStatus<'_>>,
) -> Result<()> {
    match tx {
        Tx::Pg(conn) => pg_apply_statuses(conn, statuses).await,
        Tx::Sqlite(conn) => sqlite_apply_statuses(conn, statuses).await,
    }
}

/// Readings per multi-row INSERT on SQLite: 19 parameters each, well under SQLite's limit
/// of 32,766 parameters per statement.
const SQLITE_ROWS_PER_STATEMENT: usize = 500;

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
