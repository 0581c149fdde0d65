//! Measures `Store::commit_batch` throughput on a fresh test database.
//!
//! ```text
//! cargo run --release -p store --example bulk_insert -- [postgres|sqlite|timescale] [batch] [rows] [writers]
//! ```
//!
//! Defaults: postgres, 1000 readings per batch, 200,000 readings, 1 writer. Readings come
//! from 2,000 devices (blood pressure, SpO2, glucose) interleaved the way a gateway's batcher
//! flushes them; batches are built before the clock starts. A second pass resends everything
//! to time the all-duplicates path. On PostgreSQL a third pass measures the ceiling the
//! device path is compared with: the same readings as narrow rows (device, seq, time, one
//! value) into a table of their own, one `UNNEST … ON CONFLICT DO NOTHING` statement per
//! batch, autocommit (`scripts/bench.sh` reports both ratios).

use std::time::Instant;

use store::testing::TestDb;
use store::{
    CommitBatch, DeviceKind, NewDevice, NewPatient, NewReading, ReadingKind, Store, credentials,
};
use time::{Duration, OffsetDateTime};

const DEVICES: usize = 2_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let backend = args.next().unwrap_or_else(|| "postgres".into());
    let batch_size: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let total: usize = args.next().map_or(Ok(200_000), |a| a.parse())?;
    let writers: usize = args.next().map_or(Ok(1), |a| a.parse())?;

    let db = match backend.as_str() {
        "postgres" => TestDb::postgres().await,
        "sqlite" => TestDb::sqlite().await,
        "timescale" => TestDb::timescale().await,
        other => return Err(format!("unknown backend {other}").into()),
    };
    let layout = db.store.readings_layout().await?;
    println!(
        "backend: {backend} ({layout}), batch {batch_size}, {total} readings, {writers} writer(s)"
    );

    let devices = provision(&db.store).await?;
    let batches = build_batches(&devices, batch_size, total);
    // Whose CPU time counts as the database's: PostgreSQL backends of the test database, or
    // PGlite's node process (its pg_stat_activity pids are not Linux pids).
    let monitor = match backend.as_str() {
        "postgres" => Some(sqlx::PgPool::connect(&db.url).await?),
        _ => None,
    };

    for pass in ["insert", "resend (all duplicates)"] {
        let started = Instant::now();
        let cpu_before = cpu_seconds(monitor.as_ref(), backend == "timescale").await;
        let mut handles = Vec::new();
        for w in 0..writers {
            let store = db.store.clone();
            let mine: Vec<CommitBatch> = batches.iter().skip(w).step_by(writers).cloned().collect();
            handles.push(tokio::spawn(async move {
                let (mut inserted, mut duplicates) = (0, 0);
                for batch in &mine {
                    let outcome = store.commit_batch(batch).await?;
                    inserted += outcome.inserted;
                    duplicates += outcome.duplicates;
                }
                Ok::<_, store::StoreError>((inserted, duplicates))
            }));
        }
        let (mut inserted, mut duplicates) = (0, 0);
        for handle in handles {
            let (i, d) = handle.await??;
            inserted += i;
            duplicates += d;
        }
        let secs = started.elapsed().as_secs_f64();
        let rows = (inserted + duplicates) as f64;
        println!(
            "{pass}: {inserted} inserted, {duplicates} duplicates in {secs:.2} s = {:.0} rows/s",
            rows / secs
        );
        if let (Some((db0, us0)), Some((db1, us1))) = (
            cpu_before,
            cpu_seconds(monitor.as_ref(), backend == "timescale").await,
        ) {
            // On a shared machine CPU time is a steadier measure of cost than wall time.
            // SQLite runs inside this process, so its cost is "this process".
            let (server, client) = (db1 - db0, us1 - us0);
            println!(
                "  cpu: database server {server:.2} s, this process {client:.2} s = {:.0} rows per cpu-second",
                rows / (server + client)
            );
        }
    }
    assert_eq!(db.store.count_readings(None).await?, total as i64);
    if let Some(pool) = &monitor {
        narrow_ceiling(pool, &batches, writers).await?;
    }
    Ok(())
}

/// The narrow-row ceiling: every reading as (device_id, seq, measured_at, value) into a
/// table keyed on (device_id, seq), batch by batch with `UNNEST … ON CONFLICT DO NOTHING`.
async fn narrow_ceiling(
    pool: &sqlx::PgPool,
    batches: &[CommitBatch],
    writers: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    sqlx::query(
        "CREATE TABLE narrow_readings (device_id text NOT NULL, seq int8 NOT NULL,
         measured_at timestamptz NOT NULL, value float4, PRIMARY KEY (device_id, seq))",
    )
    .execute(pool)
    .await?;
    type Columns = (Vec<String>, Vec<i64>, Vec<OffsetDateTime>, Vec<Option<f32>>);
    let columns: Vec<Columns> = batches
        .iter()
        .map(|b| {
            let r = &b.readings;
            (
                r.iter().map(|r| r.device_id.clone()).collect(),
                r.iter().map(|r| r.seq).collect(),
                r.iter().map(|r| r.measured_at).collect(),
                r.iter()
                    .map(|r| r.systolic.or(r.spo2).or(r.glucose_mg_dl))
                    .collect(),
            )
        })
        .collect();
    let started = Instant::now();
    let mut handles = Vec::new();
    for w in 0..writers {
        let pool = pool.clone();
        let mine: Vec<Columns> = columns.iter().skip(w).step_by(writers).cloned().collect();
        handles.push(tokio::spawn(async move {
            let mut inserted = 0u64;
            for (ids, seqs, times, values) in &mine {
                inserted += sqlx::query(
                    "INSERT INTO narrow_readings (device_id, seq, measured_at, value)
                     SELECT * FROM unnest($1::text[], $2::int8[], $3::timestamptz[], $4::float4[])
                     ON CONFLICT DO NOTHING",
                )
                .bind(ids)
                .bind(seqs)
                .bind(times)
                .bind(values)
                .execute(&pool)
                .await?
                .rows_affected();
            }
            Ok::<_, sqlx::Error>(inserted)
        }));
    }
    let mut inserted = 0;
    for handle in handles {
        inserted += handle.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "narrow ceiling (UNNEST + ON CONFLICT, narrow row): {inserted} inserted in {secs:.2} s = {:.0} rows/s",
        inserted as f64 / secs
    );
    Ok(())
}

async fn provision(store: &Store) -> Result<Vec<(String, i64, DeviceKind)>, store::StoreError> {
    let cot = store.add_cot("BENCH", "Bench COT").await?;
    let hash = credentials::hash_secret(&credentials::generate_secret());
    let kinds = [
        DeviceKind::BloodPressure,
        DeviceKind::Spo2,
        DeviceKind::Glucose,
    ];
    let mut devices = Vec::with_capacity(DEVICES);
    for i in 0..DEVICES {
        let patient_id = if i % 3 == 0 {
            store
                .add_patient(&NewPatient {
                    cot_id: cot.id,
                    code: format!("BENCH-{i}"),
                    display_name: format!("Patient {i}"),
                    birth_year: Some(1950),
                    conditions: vec!["hypertension".into()],
                })
                .await?
                .id
        } else {
            devices
                .last()
                .map_or(0, |(_, p, _): &(String, i64, DeviceKind)| *p)
        };
        let kind = kinds[i % 3];
        let id = format!("bench-{i:05}");
        store
            .add_device(&NewDevice {
                id: id.clone(),
                patient_id,
                kind,
                secret_hash: hash.clone(),
                model: None,
            })
            .await?;
        devices.push((id, patient_id, kind));
    }
    Ok(devices)
}

fn build_batches(
    devices: &[(String, i64, DeviceKind)],
    batch_size: usize,
    total: usize,
) -> Vec<CommitBatch> {
    let now = OffsetDateTime::now_utc();
    let readings: Vec<NewReading> = (0..total)
        .map(|n| {
            let (id, patient_id, kind) = &devices[n % devices.len()];
            let seq = (n / devices.len()) as i64 + 1;
            let kind = ReadingKind::from(*kind);
            // Spread over the last ~3 weeks, all inside existing partitions.
            let measured_at = now - Duration::minutes(((total - n) % 30_000) as i64);
            let bp = kind == ReadingKind::BloodPressure;
            NewReading {
                systolic: bp.then_some(128.0),
                diastolic: bp.then_some(84.0),
                mean_arterial: bp.then_some(98.7),
                pulse: Some(71.0),
                spo2: (kind == ReadingKind::Spo2).then_some(96.5),
                perfusion_index: (kind == ReadingKind::Spo2).then_some(2.1),
                glucose_mg_dl: (kind == ReadingKind::Glucose).then_some(112.0),
                glucose_sample: (kind == ReadingKind::Glucose).then(|| "capillary".into()),
                ..NewReading::bare(id, seq, *patient_id, kind, measured_at, now)
            }
        })
        .collect();
    readings
        .chunks(batch_size)
        .map(|chunk| CommitBatch {
            readings: chunk.to_vec(),
            ..Default::default()
        })
        .collect()
}

/// CPU seconds used so far by the server processes working for this database (PostgreSQL
/// backends and autovacuum of the test database, found through pg_stat_activity; else
/// with `pglite`, PGlite's node process `TSDB_PID`) and by this process, from /proc (Linux only).
/// SQLite runs in this process.
async fn cpu_seconds(monitor: Option<&sqlx::PgPool>, pglite: bool) -> Option<(f64, f64)> {
    let me = proc_cpu("self")?;
    let mut server = 0.0;
    if let Some(monitor) = monitor {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(monitor)
        .await
        .ok()?;
        for pid in pids {
            server += proc_cpu(&pid.to_string()).unwrap_or(0.0);
        }
    } else if let Some(pid) = std::env::var("TSDB_PID").ok().filter(|_| pglite) {
        server += proc_cpu(&pid).unwrap_or(0.0);
    }
    Some((server, me))
}

fn proc_cpu(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0) // USER_HZ
}
