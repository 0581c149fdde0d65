//! Migrations, layout detection, partitions, health, and reaching the same data by URL.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

mod common;

use common::{T0, fixture, reading};

use sqlx::Row;
use store::testing::TestDb;
use store::{CommitBatch, ReadingQuery, ReadingsLayout, Store, StoreError};
use time::OffsetDateTime;
use time::macros::datetime;

on_all_backends!(
    migrate_is_idempotent,
    url_reaches_same_data,
    skewed_clocks_are_stored
);

async fn migrate_is_idempotent(db: TestDb, layout: ReadingsLayout) {
    // TestDb already migrated once.
    assert_eq!(db.store.readings_layout().await.unwrap(), layout);
    assert_eq!(db.store.migrate().await.unwrap(), layout);
    assert_eq!(db.store.migrate().await.unwrap(), layout);
    db.store
        .ensure_partitions(OffsetDateTime::now_utc())
        .await
        .unwrap();
    db.store.health_check().await.unwrap();
    assert_eq!(db.store.count_readings(None).await.unwrap(), 0);
}

async fn url_reaches_same_data(db: TestDb, _layout: ReadingsLayout) {
    let f = fixture(&db.store, "url").await;
    let other = Store::connect(db.url()).await.unwrap();
    assert_eq!(other.backend(), db.store.backend());
    let device = other.get_device(&f.bp.id).await.unwrap().unwrap();
    assert_eq!(device.patient_id, f.patient.id);
    other.health_check().await.unwrap();
    // Writes through the second pool are visible through the first.
    other
        .commit_batch(&CommitBatch {
            readings: vec![reading(&f.bp, 1, T0)],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(db.store.stored_seqs(&f.bp.id).await.unwrap(), vec![1]);
    other.close().await;
}

/// Readings dated far from now (a device clock in 1999 or 2090) are stored and readable on
/// every backend; on native partitions they sit in the DEFAULT partition until
/// ensure_partitions creates their month, which moves them out.
async fn skewed_clocks_are_stored(db: TestDb, layout: ReadingsLayout) {
    let f = fixture(&db.store, "skew").await;
    let past = datetime!(1999-06-15 10:00 UTC);
    let future = datetime!(2090-01-31 23:59:59.999 UTC);
    // Whole seconds: SQLite keeps milliseconds, PostgreSQL microseconds.
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let this_month = format!("readings_y{:04}m{:02}", now.year(), u8::from(now.month()));
    let batch = CommitBatch {
        readings: vec![
            reading(&f.bp, 1, past),
            reading(&f.bp, 2, future),
            reading(&f.bp, 3, now),
        ],
        ..Default::default()
    };
    let outcome = db.store.commit_batch(&batch).await.unwrap();
    assert_eq!(outcome.inserted, 3);

    let pg = if layout == ReadingsLayout::PostgresPartitioned {
        Some(sqlx::PgPool::connect(db.url()).await.unwrap())
    } else {
        None
    };
    if let Some(pg) = &pg {
        assert_eq!(partition_of(pg, &f.bp.id, 1).await, "readings_default");
        assert_eq!(partition_of(pg, &f.bp.id, 2).await, "readings_default");
        assert_eq!(partition_of(pg, &f.bp.id, 3).await, this_month);
    }

    db.store.ensure_partitions(past).await.unwrap();
    db.store.ensure_partitions(future).await.unwrap();
    // Idempotent, and safe when callers race.
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let store = db.store.clone();
            tokio::spawn(async move { store.ensure_partitions(future).await })
        })
        .collect();
    for racer in racers {
        racer.await.unwrap().unwrap();
    }

    if let Some(pg) = &pg {
        assert_eq!(partition_of(pg, &f.bp.id, 1).await, "readings_y1999m06");
        assert_eq!(partition_of(pg, &f.bp.id, 2).await, "readings_y2090m01");
        let defaults: i64 = sqlx::query_scalar("SELECT count(*) FROM readings_default")
            .fetch_one(pg)
            .await
            .unwrap();
        assert_eq!(defaults, 0);
        // Months around each date exist too, e.g. 2 before and 3 after.
        for name in [
            "readings_y1999m04",
            "readings_y1999m09",
            "readings_y2089m11",
            "readings_y2090m04",
        ] {
            let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(name)
                .fetch_one(pg)
                .await
                .unwrap();
            assert!(exists, "{name}");
        }
        pg.close().await;
    }

    // Still exactly one row each, with their data intact.
    assert_eq!(db.store.count_readings(Some(&f.bp.id)).await.unwrap(), 3);
    let all = db
        .store
        .readings(&ReadingQuery {
            patient_id: f.patient.id,
            from: None,
            to: None,
            kind: None,
            limit: 100,
        })
        .await
        .unwrap();
    let seqs: Vec<i64> = all.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 3, 2], "ordered by measured_at");
    assert_eq!(all[0].measured_at, past);
    assert_eq!(all[2].measured_at, future);
    assert_eq!(all[0].systolic, batch.readings[0].systolic);
    let future_only = db
        .store
        .readings(&ReadingQuery {
            patient_id: f.patient.id,
            from: Some(datetime!(2090-01-01 0:00 UTC)),
            to: Some(datetime!(2090-02-01 0:00 UTC)),
            kind: None,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(future_only.len(), 1);
    assert_eq!(future_only[0].seq, 2);

    // Resending after the move is still a duplicate.
    let again = db.store.commit_batch(&batch).await.unwrap();
    assert_eq!((again.inserted, again.duplicates), (0, 3));
}

async fn partition_of(pg: &sqlx::PgPool, device: &str, seq: i64) -> String {
    sqlx::query(
        "SELECT tableoid::regclass::text AS part FROM readings WHERE device_id = $1 AND seq = $2",
    )
    .bind(device)
    .bind(seq)
    .fetch_one(pg)
    .await
    .unwrap()
    .get("part")
}

#[tokio::test]
async fn postgres_partitions_cover_now() {
    let db = TestDb::postgres().await;
    let pg = sqlx::PgPool::connect(db.url()).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let name = format!("readings_y{:04}m{:02}", now.year(), u8::from(now.month()));
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&name)
        .fetch_one(&pg)
        .await
        .unwrap();
    assert!(exists, "{name} created by migrate");
    let partitions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'readings'::regclass",
    )
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!(partitions, 7, "6 months and the default");
    pg.close().await;
}

#[tokio::test]
async fn unmigrated_database_fails_health_check() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite:{}",
        dir.path().join("nested/dir/empty.db").display()
    );
    let store = Store::connect(&url).await.unwrap();
    assert!(dir.path().join("nested/dir/empty.db").exists());
    let error = store.health_check().await.unwrap_err();
    assert!(!error.is_transient(), "{error}");
    assert!(matches!(
        store.readings_layout().await,
        Err(StoreError::NotFound { .. })
    ));
    store.migrate().await.unwrap();
    store.health_check().await.unwrap();
}

#[tokio::test]
async fn unreachable_postgres_is_transient() {
    // Nothing listens on port 1.
    let error = Store::connect("postgres://postgres@127.0.0.1:1/postgres")
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error:?}");
}
