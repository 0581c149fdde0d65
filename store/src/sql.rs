//! One statement text for both backends: values bound through [`Val`] (timestamps become
//! `TIMESTAMPTZ` on PostgreSQL and unix milliseconds on SQLite) and rows read through
//! [`Columns`]. Every query of the store goes through here, except the ingest batch's bulk
//! writes (`bulk.rs`) and migrations and partitions (`schema.rs`): this is the one module
//! that matches on the backend for them. Where the SQL genuinely differs (a collation, a
//! function name, a table), the statement stays one text and picks the fragment with
//! [`Store::dialect`].

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Postgres, Sqlite, Transaction};
use time::OffsetDateTime;

use crate::rows::{Columns, to_ms};
use crate::{Backend, Db, Result, Store, connect};

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
    OptI32(Option<i32>),
    Bytes(&'a [u8]),
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
            Val::OptI32(x) => q.bind(*x),
            Val::Bytes(x) => q.bind(*x),
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
            Val::OptI32(x) => q.bind(*x),
            Val::Bytes(x) => q.bind(*x),
        };
    }
    q
}

/// The rows of a multi-row `VALUES`: `($1, $2), ($3, $4)` for 2 rows of 2 columns.
pub(crate) fn values_list(rows: usize, columns: usize) -> String {
    let row = |r: usize| {
        let cells: Vec<String> = (1..=columns)
            .map(|c| format!("${}", r * columns + c))
            .collect();
        format!("({})", cells.join(", "))
    };
    (0..rows).map(row).collect::<Vec<_>>().join(", ")
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
    /// Which database this store talks to.
    pub fn backend(&self) -> Backend {
        match &self.db {
            Db::Postgres(_) => Backend::Postgres,
            Db::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Closes the pool: waits for connections in use to come back, then closes them all.
    /// Later operations fail with a pool-closed error.
    pub async fn close(&self) {
        match &self.db {
            Db::Postgres(pg) => pg.pool.close().await,
            Db::Sqlite(pool) => pool.close().await,
        }
    }

    /// The fragment of a statement that differs between the backends: `pg` on PostgreSQL,
    /// `sqlite` on SQLite (e.g. `COLLATE "C"` for bytewise order, which is SQLite's default).
    pub(crate) fn dialect<'s>(&self, pg: &'s str, sqlite: &'s str) -> &'s str {
        match self.backend() {
            Backend::Postgres => pg,
            Backend::Sqlite => sqlite,
        }
    }

    pub(crate) async fn tx(&self) -> Result<Tx> {
        Ok(match &self.db {
            Db::Postgres(pg) => Tx::Pg(pg.begin().await?),
            Db::Sqlite(pool) => Tx::Sqlite(connect::sqlite_write(pool).await?),
        })
    }

    /// Runs one statement outside any write transaction and returns its rows: a read, or a
    /// single-statement write such as `INSERT … RETURNING` (it commits on its own).
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

    /// [`Store::read`] for a statement that returns at most one row.
    pub(crate) async fn read_one(&self, sql: &str, vals: &[Val<'_>]) -> Result<Option<AnyRow>> {
        Ok(self.read(sql, vals).await?.into_iter().next())
    }

    /// Runs one writing statement outside any write transaction (it commits on its own);
    /// returns the number of rows it changed.
    pub(crate) async fn exec(&self, sql: &str, vals: &[Val<'_>]) -> Result<u64> {
        match &self.db {
            Db::Postgres(pg) => {
                let mut c = pg.conn().await?;
                let done = bind_pg(sqlx::query(sql), vals).execute(&mut *c).await?;
                c.finish().await?;
                Ok(done.rows_affected())
            }
            Db::Sqlite(pool) => Ok(bind_sqlite(sqlx::query(sql), vals)
                .execute(pool)
                .await?
                .rows_affected()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_lists() {
        assert_eq!(super::values_list(2, 2), "($1, $2), ($3, $4)");
        assert_eq!(super::values_list(1, 3), "($1, $2, $3)");
        assert_eq!(super::values_list(0, 3), "");
    }
}
