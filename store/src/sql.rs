//! One statement text for both backends: values bound through [`Val`] (timestamps become
//! `TIMESTAMPTZ` on PostgreSQL and unix milliseconds on SQLite) and rows read through
//! [`Columns`]. Used where the SQL itself is the same on both, which keeps the care-plan and
//! alert queries written once.

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Postgres, Sqlite, Transaction};
use time::OffsetDateTime;

use crate::rows::{Columns, to_ms};
use crate::{Db, Result, Store, connect};

/// A bound value.
#[derive(Debug, Clone)]
pub(crate) enum Val<'a> {
    I64(i64),
    OptI64(Option<i64>),
    F64(Option<f64>),
    Text(&'a str),
    OptText(Option<&'a str>),
    Ts(OffsetDateTime),
    OptTs(Option<OffsetDateTime>),
}

fn bind_pg<'q>(
    mut q: Query<'q, Postgres, PgArguments>,
    vals: &'q [Val<'q>],
) -> Query<'q, Postgres, PgArguments> {
    for v in vals {
        q = match v {
            Val::I64(x) => q.bind(*x),
            Val::OptI64(x) => q.bind(*x),
            Val::F64(x) => q.bind(*x),
            Val::Text(x) => q.bind(*x),
            Val::OptText(x) => q.bind(*x),
            Val::Ts(x) => q.bind(*x),
            Val::OptTs(x) => q.bind(*x),
        };
    }
    q
}

fn bind_sqlite<'q>(
    mut q: Query<'q, Sqlite, SqliteArguments<'q>>,
    vals: &'q [Val<'q>],
) -> Query<'q, Sqlite, SqliteArguments<'q>> {
    for v in vals {
        q = match v {
            Val::I64(x) => q.bind(*x),
            Val::OptI64(x) => q.bind(*x),
            Val::F64(x) => q.bind(*x),
            Val::Text(x) => q.bind(*x),
            Val::OptText(x) => q.bind(*x),
            Val::Ts(x) => q.bind(to_ms(*x)),
            Val::OptTs(x) => q.bind(x.map(to_ms)),
        };
    }
    q
}

/// A row of either backend.
pub(crate) enum AnyRow {
    Pg(PgRow),
    Sqlite(SqliteRow),
}

macro_rules! delegate {
    ($($name:ident -> $ty:ty),* $(,)?) => {
        $(fn $name(&self, col: &str) -> Result<$ty> {
            match self {
                AnyRow::Pg(r) => r.$name(col),
                AnyRow::Sqlite(r) => r.$name(col),
            }
        })*
    };
}

impl Columns for AnyRow {
    delegate!(
        text -> String,
        text_opt -> Option<String>,
        bigint -> i64,
        bigint_opt -> Option<i64>,
        int -> i32,
        int_opt -> Option<i32>,
        smallint_opt -> Option<i16>,
        real_opt -> Option<f32>,
        flag -> bool,
        bytes -> Vec<u8>,
        ts -> OffsetDateTime,
        ts_opt -> Option<OffsetDateTime>,
    );
}

impl AnyRow {
    /// A nullable DOUBLE PRECISION / REAL column.
    pub(crate) fn double_opt(&self, col: &str) -> Result<Option<f64>> {
        use sqlx::Row;
        Ok(match self {
            AnyRow::Pg(r) => r.try_get(col)?,
            AnyRow::Sqlite(r) => r.try_get(col)?,
        })
    }
}

/// A write transaction on either backend (`BEGIN IMMEDIATE` on SQLite).
pub(crate) enum Tx {
    Pg(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

impl Tx {
    pub(crate) async fn exec(&mut self, sql: &str, vals: &[Val<'_>]) -> Result<u64> {
        Ok(match self {
            Tx::Pg(tx) => bind_pg(sqlx::query(sql), vals)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
            Tx::Sqlite(tx) => bind_sqlite(sqlx::query(sql), vals)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }

    pub(crate) async fn all(&mut self, sql: &str, vals: &[Val<'_>]) -> Result<Vec<AnyRow>> {
        Ok(match self {
            Tx::Pg(tx) => bind_pg(sqlx::query(sql), vals)
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(AnyRow::Pg)
                .collect(),
            Tx::Sqlite(tx) => bind_sqlite(sqlx::query(sql), vals)
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(AnyRow::Sqlite)
                .collect(),
        })
    }

    pub(crate) async fn one(&mut self, sql: &str, vals: &[Val<'_>]) -> Result<Option<AnyRow>> {
        Ok(self.all(sql, vals).await?.into_iter().next())
    }

    /// Serializes the transactions that append alert events, so ids become visible in
    /// order (a stream reader asking for "after id N" never misses a smaller id that
    /// committed later). SQLite writers are serialized already.
    pub(crate) async fn lock_events(&mut self) -> Result<()> {
        if let Tx::Pg(tx) = self {
            sqlx::query("SELECT pg_advisory_xact_lock(7417001)")
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    pub(crate) async fn commit(self) -> Result<()> {
        match self {
            Tx::Pg(tx) => tx.commit().await?,
            Tx::Sqlite(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

impl Store {
    pub(crate) async fn tx(&self) -> Result<Tx> {
        Ok(match &self.db {
            Db::Postgres(pg) => Tx::Pg(pg.begin().await?),
            Db::Sqlite(pool) => Tx::Sqlite(connect::sqlite_write(pool).await?),
        })
    }

    /// Runs a read-only statement outside any write transaction.
    pub(crate) async fn read(&self, sql: &str, vals: &[Val<'_>]) -> Result<Vec<AnyRow>> {
        match &self.db {
            Db::Postgres(pg) => {
                let mut c = pg.conn().await?;
                let rows = bind_pg(sqlx::query(sql), vals).fetch_all(&mut *c).await?;
                c.finish().await?;
                Ok(rows.into_iter().map(AnyRow::Pg).collect())
            }
            Db::Sqlite(pool) => Ok(bind_sqlite(sqlx::query(sql), vals)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(AnyRow::Sqlite)
                .collect()),
        }
    }
}
