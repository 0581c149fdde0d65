//! Migrations, the readings layout, monthly partitions and the health check.

use std::fmt;

use serde::Serialize;
use sqlx::migrate::Migrator;
use time::{Date, Month, OffsetDateTime, UtcOffset};

use crate::{Db, Result, Store, StoreError};

static PG_MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How the readings table is laid out, decided by the migration from what the database offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ReadingsLayout {
    /// One SQLite table keyed by (device_id, seq).
    Sqlite,
    /// PostgreSQL declarative range partitions on `measured_at`, one per UTC month, plus a
    /// DEFAULT partition; see [`Store::ensure_partitions`].
    PostgresPartitioned,
    /// A TimescaleDB hypertable on `measured_at` with 7-day chunks.
    TimescaleHypertable,
}

impl fmt::Display for ReadingsLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReadingsLayout::Sqlite => "SQLite table",
            ReadingsLayout::PostgresPartitioned => "PostgreSQL native range partitions (monthly)",
            ReadingsLayout::TimescaleHypertable => "TimescaleDB hypertable",
        })
    }
}

/// Months before and after the given one that [`Store::ensure_partitions`] covers.
const MONTHS_BEFORE: i32 = 2;
const MONTHS_AFTER: i32 = 3;

const PG_READINGS_TABLE: &str = "\
SELECT n.nspname::text AS schema,
       EXISTS (SELECT 1 FROM pg_partitioned_table p WHERE p.partrelid = c.oid) AS partitioned
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass('readings')";

const PG_IS_HYPERTABLE: &str = "\
SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
               WHERE hypertable_schema = $1 AND hypertable_name = 'readings')";

impl Store {
    /// Applies pending migrations (safe to run concurrently and repeatedly), creates the
    /// readings partitions around now (see [`Store::ensure_partitions`]) and returns the
    /// readings layout.
    pub async fn migrate(&self) -> Result<ReadingsLayout> {
        match &self.db {
            Db::Postgres(pg) if pg.is_scoped() => {
                // The migrator's own transactions become savepoints of this one, which
                // carries the search_path.
                let mut tx = pg.begin().await?;
                PG_MIGRATOR.run(&mut *tx).await?;
                tx.commit().await?;
            }
            Db::Postgres(pg) => PG_MIGRATOR.run(&pg.pool).await?,
            Db::Sqlite(pool) => SQLITE_MIGRATOR.run(pool).await?,
        }
        self.ensure_partitions(OffsetDateTime::now_utc()).await?;
        self.readings_layout().await
    }

    /// How readings are laid out, read from the catalog.
    pub async fn readings_layout(&self) -> Result<ReadingsLayout> {
        let missing = || StoreError::NotFound {
            what: "readings table (run the migrations first)".into(),
        };
        match &self.db {
            Db::Sqlite(pool) => {
                let tables: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'readings'",
                )
                .fetch_one(pool)
                .await?;
                if tables == 0 {
                    return Err(missing());
                }
                Ok(ReadingsLayout::Sqlite)
            }
            Db::Postgres(pg) => {
                let mut c = pg.conn().await?;
                let table: Option<(String, bool)> = sqlx::query_as(PG_READINGS_TABLE)
                    .fetch_optional(&mut *c)
                    .await?;
                let Some((schema, partitioned)) = table else {
                    return Err(missing());
                };
                let layout = if partitioned {
                    Some(ReadingsLayout::PostgresPartitioned)
                } else {
                    let has_tsdb: bool = sqlx::query_scalar(
                        "SELECT to_regclass('timescaledb_information.hypertables') IS NOT NULL",
                    )
                    .fetch_one(&mut *c)
                    .await?;
                    let hypertable = has_tsdb
                        && sqlx::query_scalar::<_, bool>(PG_IS_HYPERTABLE)
                            .bind(&schema)
                            .fetch_one(&mut *c)
                            .await?;
                    hypertable.then_some(ReadingsLayout::TimescaleHypertable)
                };
                c.finish().await?;
                layout.ok_or_else(|| {
                    StoreError::decode(format!(
                        "{schema}.readings is neither partitioned nor a hypertable"
                    ))
                })
            }
        }
    }

    /// On natively partitioned PostgreSQL, makes sure the monthly partitions from 2 months
    /// before to 3 months after `around` exist (UTC months), moving rows of a new month out
    /// of the DEFAULT partition; a no-op on TimescaleDB and SQLite. Idempotent and safe to
    /// call concurrently (the SQL function serializes callers on an advisory lock); call it
    /// daily. Each month is its own short transaction.
    pub async fn ensure_partitions(&self, around: OffsetDateTime) -> Result<()> {
        let Db::Postgres(pg) = &self.db else {
            return Ok(());
        };
        if self.readings_layout().await? != ReadingsLayout::PostgresPartitioned {
            return Ok(());
        }
        for month in months_around(around.to_offset(UtcOffset::UTC).date()) {
            let mut tx = pg.begin().await?;
            let created: bool = sqlx::query_scalar("SELECT sentinella_ensure_month_partition($1)")
                .bind(month)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            if created {
                tracing::info!(%month, "created readings partition");
            }
        }
        Ok(())
    }

    /// A cheap query on a real table, for start-up and readiness checks: it fails if the
    /// database is unreachable or not migrated.
    pub async fn health_check(&self) -> Result<()> {
        let sql = "SELECT id FROM devices LIMIT 1";
        match &self.db {
            Db::Postgres(pg) => {
                let mut c = pg.conn().await?;
                sqlx::query(sql).fetch_optional(&mut *c).await?;
                c.finish().await?;
            }
            Db::Sqlite(pool) => {
                sqlx::query(sql).fetch_optional(pool).await?;
            }
        }
        Ok(())
    }
}

/// First days of the months from [`MONTHS_BEFORE`] before to [`MONTHS_AFTER`] after `day`'s.
fn months_around(day: Date) -> Vec<Date> {
    let base = day.year() * 12 + i32::from(u8::from(day.month())) - 1;
    (-MONTHS_BEFORE..=MONTHS_AFTER)
        .filter_map(|offset| {
            let index = base + offset;
            let month = u8::try_from(index.rem_euclid(12) + 1).ok()?;
            let month = Month::try_from(month).ok()?;
            Date::from_calendar_date(index.div_euclid(12), month, 1).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn months_cross_years() {
        assert_eq!(
            months_around(date!(2025 - 01 - 31)),
            vec![
                date!(2024 - 11 - 01),
                date!(2024 - 12 - 01),
                date!(2025 - 01 - 01),
                date!(2025 - 02 - 01),
                date!(2025 - 03 - 01),
                date!(2025 - 04 - 01),
            ]
        );
        assert_eq!(
            months_around(date!(2090 - 11 - 15))[5],
            date!(2091 - 02 - 01)
        );
    }

    #[test]
    fn layout_names() {
        assert_eq!(ReadingsLayout::Sqlite.to_string(), "SQLite table");
        assert_eq!(
            ReadingsLayout::TimescaleHypertable.to_string(),
            "TimescaleDB hypertable"
        );
    }
}
