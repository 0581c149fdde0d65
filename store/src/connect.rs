//! Connection URLs, pools, and the PostgreSQL `search_path` scoping.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgConnection, PgPool, Postgres, Sqlite, SqlitePool, Transaction};

use crate::{Db, Result, Store, StoreError, pg_hosts};

const PG_MAX_CONNECTIONS: u32 = 16;
const SQLITE_MAX_CONNECTIONS: u32 = 8;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl Store {
    /// Connects to the database named by `url`:
    ///
    /// - `postgres://…` or `postgresql://…`: a pool of up to 16 connections (5 s acquire
    ///   timeout). If the URL sets a `search_path` through `options` (e.g.
    ///   `?options=-c%20search_path%3Dmy_schema`), every operation also sets it for its own
    ///   transaction, which keeps the schema even on servers that share one session between
    ///   connections (the PGlite TimescaleDB used by the tests).
    /// - `sqlite:PATH` or `sqlite://PATH`: the file (and its folder) is created if missing;
    ///   WAL journal, `synchronous=NORMAL`, 5 s busy timeout, foreign keys on, up to
    ///   8 connections. In-memory databases are refused: each pooled connection would see a
    ///   different one (use `store::testing::TestDb::sqlite`, feature `testing`, for a throwaway file).
    ///
    /// - `postgres://user:pw@h1:p1,h2:p2/db?target_session_attrs=read-write`: libpq's
    ///   multi-host form. The hosts are tried in order and the pool writes to the first that
    ///   is up (with `read-write` or `primary`: that is not a standby); a watcher moves the
    ///   pool to another host when that one fails or turns read-only (a standby promoted
    ///   after a primary failure). See `pg_hosts`.
    ///
    /// One connection is opened right away, so an unreachable database fails here, with an
    /// error for which [`StoreError::is_transient`] is true.
    pub async fn connect(url: &str) -> Result<Store> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let list = pg_hosts::parse(url)
                .map_err(|e| StoreError::InvalidUrl(format!("{}: {e}", scheme(url))))?;
            let search_path = list.hosts[0].get_options().and_then(search_path_option);
            if list.is_plain() {
                let pool = PgPoolOptions::new()
                    .max_connections(PG_MAX_CONNECTIONS)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(list.hosts[0].clone())
                    .await?;
                return Ok(Store::from_pg(pool, search_path));
            }
            connect_pg_hosts(list, search_path).await
        } else if url.starts_with("sqlite:") {
            connect_sqlite(url).await
        } else {
            Err(StoreError::InvalidUrl(format!(
                "expected postgres://, postgresql:// or sqlite:, got {}",
                scheme(url)
            )))
        }
    }

    /// Most file descriptors this store's pool may hold: one socket per PostgreSQL
    /// connection; the database, WAL and shared-memory files per SQLite connection. The
    /// gateway counts them in the process's descriptor budget.
    pub fn max_descriptors(&self) -> usize {
        match &self.db {
            Db::Postgres(pg) => {
                pg.pool.options().get_max_connections() as usize + usize::from(pg.watcher.is_some())
            }
            Db::Sqlite(pool) => 3 * pool.options().get_max_connections() as usize,
        }
    }

    /// A store on an existing PostgreSQL pool. With `search_path`, every operation runs in a
    /// transaction that sets it locally first.
    pub(crate) fn from_pg(pool: PgPool, search_path: Option<String>) -> Store {
        Store {
            signals: Default::default(),
            db: Db::Postgres(Pg {
                pool,
                search_path: search_path.map(Arc::from),
                watcher: None,
            }),
            alert_feed: Arc::new(tokio::sync::watch::Sender::new(0)),
            node: Arc::from(""),
        }
    }
}

/// A pool on the first suitable host of `list`, with the watcher that moves it (see
/// `pg_hosts`).
async fn connect_pg_hosts(list: pg_hosts::HostList, search_path: Option<String>) -> Result<Store> {
    let (current, own) = pg_hosts::find(&list).await?;
    let moved = Arc::new(pg_hosts::Moved::default());
    let read_write = list.read_write;
    let before = moved.clone();
    let pool = PgPoolOptions::new()
        .max_connections(PG_MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if read_write {
                    pg_hosts::check_writable(conn).await?;
                }
                Ok(())
            })
        })
        .before_acquire(move |_, meta| {
            let stale = before.predates(meta.age);
            Box::pin(async move { Ok(!stale) })
        })
        .connect_with(list.hosts[current].clone())
        .await?;
    let watcher = pg_hosts::spawn_watcher(pool.clone(), list, current, own, moved);
    let mut store = Store::from_pg(pool, search_path);
    if let Db::Postgres(pg) = &mut store.db {
        pg.watcher = Some(Arc::new(watcher));
    }
    Ok(store)
}

async fn connect_sqlite(url: &str) -> Result<Store> {
    let invalid = |message: String| StoreError::InvalidUrl(message);
    let options =
        SqliteConnectOptions::from_str(url).map_err(|e| invalid(format!("sqlite: {e}")))?;
    let file = options.get_filename().to_path_buf();
    let name = file.to_string_lossy();
    if name.is_empty() || name.starts_with("file:sqlx-in-memory") || url.contains("mode=memory") {
        return Err(invalid(
            "sqlite: an in-memory database is not supported, name a file".into(),
        ));
    }
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir(parent).await?;
    }
    private_database_files(&file)?;
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(SQLITE_MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await?;
    Ok(Store {
        signals: Default::default(),
        db: Db::Sqlite(pool),
        alert_feed: Arc::new(tokio::sync::watch::Sender::new(0)),
        node: Arc::from(""),
    })
}

/// Creates the database's folder (and missing parents) readable by its owner only: it holds
/// health data, the audit log and password hashes.
async fn create_dir(dir: &Path) -> Result<()> {
    let io = |e| StoreError::Database(sqlx::Error::Io(e));
    let mut builder = tokio::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(dir).await.map_err(io)
}

/// Creates the SQLite file with mode 0600 before SQLite does (SQLite would use 0644 less the
/// umask), and brings an existing one and its `-wal`/`-shm` down to 0600. SQLite creates the
/// `-wal` and `-shm` files with the database file's mode, so they follow.
fn private_database_files(file: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let io = |e| StoreError::Database(sqlx::Error::Io(e));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(file)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        let mut name = file.as_os_str().to_owned();
        let base = name.clone();
        for path in [
            file.to_path_buf(),
            {
                name.push("-wal");
                std::path::PathBuf::from(&name)
            },
            {
                let mut shm = base;
                shm.push("-shm");
                std::path::PathBuf::from(shm)
            },
        ] {
            match std::fs::metadata(&path) {
                Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                        .map_err(io)?;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// The part of a URL before `:` (never the credentials), for error messages.
fn scheme(url: &str) -> &str {
    url.split(':').next().unwrap_or_default()
}

/// The `search_path` set by a libpq `options` string (`-c search_path=x`, `-csearch_path=x`
/// or `--search_path=x`), if any; the last one wins, as in PostgreSQL.
pub(crate) fn search_path_option(options: &str) -> Option<String> {
    let mut found = None;
    let mut tokens = options.split_whitespace();
    while let Some(token) = tokens.next() {
        let setting = match token {
            "-c" => tokens.next(),
            _ => token
                .strip_prefix("--")
                .or_else(|| token.strip_prefix("-c")),
        };
        if let Some(value) = setting.and_then(|s| s.strip_prefix("search_path=")) {
            found = Some(value.to_owned());
        }
    }
    found
}

/// PostgreSQL pool plus the optional schema scoping.
#[derive(Clone, Debug)]
pub(crate) struct Pg {
    pub(crate) pool: PgPool,
    pub(crate) search_path: Option<Arc<str>>,
    /// Multi-host URLs: the task that moves the pool to the read-write server.
    watcher: Option<Arc<crate::pg_hosts::Watcher>>,
}

impl Pg {
    /// Whether every operation sets a `search_path` in its own transaction.
    pub(crate) fn is_scoped(&self) -> bool {
        self.search_path.is_some()
    }

    /// Begins a transaction; on a scoped store, sets the `search_path` for it first.
    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await?;
        if let Some(path) = &self.search_path {
            sqlx::query("SELECT set_config('search_path', $1, true)")
                .bind(&**path)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// A connection for statements that need no transaction of their own: a pooled
    /// connection, or on a scoped store a transaction carrying the `search_path`. Call
    /// [`PgConn::finish`] when done (it commits the scoped transaction).
    pub(crate) async fn conn(&self) -> Result<PgConn> {
        if self.search_path.is_some() {
            Ok(PgConn::Scoped(self.begin().await?))
        } else {
            Ok(PgConn::Pooled(self.pool.acquire().await?))
        }
    }
}

/// See [`Pg::conn`].
pub(crate) enum PgConn {
    Pooled(PoolConnection<Postgres>),
    Scoped(Transaction<'static, Postgres>),
}

impl PgConn {
    pub(crate) async fn finish(self) -> Result<()> {
        match self {
            PgConn::Pooled(_) => Ok(()),
            PgConn::Scoped(tx) => Ok(tx.commit().await?),
        }
    }
}

impl Deref for PgConn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match self {
            PgConn::Pooled(conn) => conn,
            PgConn::Scoped(tx) => tx,
        }
    }
}

impl DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            PgConn::Pooled(conn) => conn,
            PgConn::Scoped(tx) => tx,
        }
    }
}

/// Begins an SQLite write transaction. `BEGIN IMMEDIATE` takes the write lock up front, so
/// a busy database makes it wait (busy timeout) instead of failing half-way through.
pub(crate) async fn sqlite_write(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>> {
    Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_path_from_options() {
        let check = |options: &str, expected: Option<&str>| {
            assert_eq!(
                search_path_option(options).as_deref(),
                expected,
                "{options}"
            );
        };
        check("-c search_path=abc", Some("abc"));
        check("-csearch_path=abc", Some("abc"));
        check("--search_path=abc", Some("abc"));
        check("-c geqo=off -c search_path=x_1", Some("x_1"));
        check("-c geqo=off", None);
        check("", None);
    }

    #[tokio::test]
    async fn rejects_other_urls() {
        for url in [
            "mysql://u:secret@h/db",
            "sqlite::memory:",
            "sqlite:",
            "nonsense",
        ] {
            match Store::connect(url).await {
                Err(StoreError::InvalidUrl(message)) => {
                    assert!(!message.contains("secret"), "{message}");
                }
                other => panic!("{url}: expected InvalidUrl, got {other:?}"),
            }
        }
    }
}
