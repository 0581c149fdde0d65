//! Fresh, migrated databases for tests, in this crate and in the crates built on it.
//!
//! Each constructor panics with a clear message when its database cannot be reached: a test
//! that needs PostgreSQL or TimescaleDB must fail where they are missing, never skip.
//!
//! - [`TestDb::sqlite`]: a file in a temporary folder, deleted on drop.
//! - [`TestDb::postgres`]: a new database `sentinella_test_<pid>_<n>_<random>` on the server
//!   named by `SENTINELLA_TEST_PG`, else `DATABASE_URL`, else
//!   `postgres://postgres@127.0.0.1:5432/postgres`. Databases are not dropped on drop (that
//!   would need async); instead the first `postgres()` of a process drops the databases left
//!   by test processes that are no longer running, when the server is on this machine.
//! - [`TestDb::timescale`]: a new schema of that name on the TimescaleDB named by
//!   `TSDB_DATABASE_URL` (PGlite + TimescaleDB, started by `scripts/test.sh` through
//!   `start-tsdb.sh`). That server has a single database and a single backend whose session
//!   state, `search_path` included, is shared by all connections; so the store sets the
//!   schema inside every transaction instead of once per connection (see
//!   [`Store::connect`]).

use std::env;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection};
use tempfile::TempDir;

use crate::Store;

/// A migrated database for one test. Keep it alive for the test's duration.
#[derive(Debug)]
pub struct TestDb {
    pub store: Store,
    /// See [`TestDb::url`].
    pub url: String,
    /// Keeps the SQLite file's folder alive.
    _dir: Option<TempDir>,
}

const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const TSDB_MISSING: &str =
    "TSDB_DATABASE_URL is not set: run scripts/test.sh, which starts TimescaleDB on PGlite";
const NAME_PREFIX: &str = "sentinella_test_";

static NEXT: AtomicU32 = AtomicU32::new(0);
static CLEANED_DATABASES: AtomicBool = AtomicBool::new(false);
static CLEANED_SCHEMAS: AtomicBool = AtomicBool::new(false);

impl TestDb {
    /// A fresh SQLite file in a temporary folder, migrated.
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("cannot create a temporary folder for SQLite");
        let url = format!("sqlite://{}", dir.path().join("sentinella.db").display());
        let store = Store::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot open the SQLite test database {url}: {e}"));
        migrate(&store, &url).await;
        TestDb {
            store,
            url,
            _dir: Some(dir),
        }
    }

    /// A fresh PostgreSQL database, migrated (native partitions on a server without
    /// TimescaleDB). Panics if PostgreSQL is unreachable.
    pub async fn postgres() -> TestDb {
        let base = env::var("SENTINELLA_TEST_PG")
            .or_else(|_| env::var("DATABASE_URL"))
            .unwrap_or_else(|_| DEFAULT_PG.to_owned());
        let server = describe(&base);
        let mut admin = PgConnection::connect(&base).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is unreachable at {server}: {e}. Start it, or point \
                 SENTINELLA_TEST_PG (or DATABASE_URL) at a server where we may create databases"
            )
        });
        if !CLEANED_DATABASES.swap(true, Ordering::SeqCst) && is_local(&base) {
            drop_stale_databases(&mut admin).await;
        }
        let name = unique_name();
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name} on {server}: {e}"));
        let _ = admin.close().await;
        let url = with_database(&base, &name);
        let store = Store::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {name} on {server}: {e}"));
        migrate(&store, &name).await;
        TestDb {
            store,
            url,
            _dir: None,
        }
    }

    /// The database at `url`, which the caller made (e.g. on PostgreSQL clusters of its
    /// own), migrated. Panics if it is unreachable.
    pub async fn at(url: &str) -> TestDb {
        let store = Store::connect(url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", describe(url)));
        migrate(&store, "the given database").await;
        TestDb {
            store,
            url: url.to_owned(),
            _dir: None,
        }
    }

    /// A fresh schema on the TimescaleDB named by `TSDB_DATABASE_URL`, migrated (readings
    /// is a hypertable). Panics if the variable is unset or the server unreachable.
    pub async fn timescale() -> TestDb {
        let base = env::var("TSDB_DATABASE_URL").unwrap_or_else(|_| panic!("{TSDB_MISSING}"));
        let server = describe(&base);
        // One backend serves every connection in turn, so a couple of connections suffice,
        // and waiting for it can take a while when other tests hold it.
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(60))
            .connect(&base)
            .await
            .unwrap_or_else(|e| {
                panic!("TimescaleDB is unreachable at {server} (TSDB_DATABASE_URL): {e}")
            });
        if !CLEANED_SCHEMAS.swap(true, Ordering::SeqCst) {
            drop_stale_schemas(&pool).await;
        }
        let schema = unique_name();
        pool.execute(format!("CREATE SCHEMA {schema}").as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot create schema {schema} on {server}: {e}"));
        let url = with_search_path(&base, &schema);
        let store = Store::from_pg(pool, Some(schema.clone()));
        migrate(&store, &schema).await;
        TestDb {
            store,
            url,
            _dir: None,
        }
    }

    /// Another store on the same database, with its own pool and its own wake-ups, as a
    /// second node (or process) would open it: for tests of what nodes share through the
    /// database. Keep `self` alive as long (it owns SQLite's folder).
    pub async fn another_node(&self) -> TestDb {
        // On TimescaleDB the URL carries the schema, which Store::connect scopes to.
        let store = Store::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot open a second store on {}: {e}", self.url));
        TestDb {
            store,
            url: self.url.clone(),
            _dir: None,
        }
    }

    /// A URL another pool or process can open with [`Store::connect`] to reach the same
    /// data. For SQLite it names the file, for PostgreSQL the test database. For TimescaleDB
    /// it carries the schema as `?options=-c search_path=<schema>`: `Store::connect` turns
    /// that into a per-transaction `search_path`, which is what works on the shared PGlite
    /// session; other clients (psql, plain sqlx) must set the search_path themselves, since
    /// PGlite ignores startup options.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs one statement in a write transaction, as the application's own connection would:
    /// for tests that must show what the schema itself refuses (e.g. the append-only audit log).
    pub async fn exec(&self, sql: &str) -> crate::Result<u64> {
        let mut tx = self.store.tx().await?;
        let n = tx.exec(sql, &[]).await?;
        tx.commit().await?;
        Ok(n)
    }
}

async fn migrate(store: &Store, name: &str) {
    store
        .migrate()
        .await
        .unwrap_or_else(|e| panic!("cannot migrate test database {name}: {e}"));
}

/// `sentinella_test_<pid>_<n>_<random>`: unique across processes and runs, and a valid
/// unquoted identifier.
fn unique_name() -> String {
    format!(
        "{NAME_PREFIX}{}_{}_{:08x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

/// Host and port of a PostgreSQL URL, without credentials, for messages.
fn describe(url: &str) -> String {
    match PgConnectOptions::from_str(url) {
        Ok(options) => format!("{}:{}", options.get_host(), options.get_port()),
        Err(_) => "an unparseable URL".to_owned(),
    }
}

fn is_local(url: &str) -> bool {
    PgConnectOptions::from_str(url).is_ok_and(|options| {
        options.get_socket().is_some()
            || matches!(options.get_host(), "localhost" | "127.0.0.1" | "::1")
    })
}

/// The pid in a name made by [`unique_name`], if that process is gone (Linux only).
fn dead_owner(name: &str) -> bool {
    let Some(pid) = name
        .strip_prefix(NAME_PREFIX)
        .and_then(|rest| rest.split('_').next())
        .and_then(|pid| pid.parse::<u32>().ok())
    else {
        return false;
    };
    Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists()
}

/// Best effort: drops databases of test processes that no longer run.
async fn drop_stale_databases(admin: &mut PgConnection) {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datname LIKE 'sentinella\\_test\\_%'",
    )
    .fetch_all(&mut *admin)
    .await
    .unwrap_or_default();
    for name in names.iter().filter(|name| dead_owner(name)) {
        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        if let Err(error) = admin.execute(sql.as_str()).await {
            tracing::debug!(%name, %error, "cannot drop stale test database");
        }
    }
}

/// Best effort: drops schemas of test processes that no longer run.
async fn drop_stale_schemas(pool: &sqlx::PgPool) {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'sentinella\\_test\\_%'",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    for name in names.iter().filter(|name| dead_owner(name)) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
        if let Err(error) = pool.execute(sql.as_str()).await {
            tracing::debug!(%name, %error, "cannot drop stale test schema");
        }
    }
}

/// `url` with its database (the path) replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let mut out = format!("{}/{database}", &base[..path]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// `url` with `options=-c search_path=<schema>` added.
fn with_search_path(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            with_database("postgresql://h/db?sslmode=disable", "x"),
            "postgresql://h/x?sslmode=disable"
        );
    }

    #[test]
    fn search_path_urls_round_trip() {
        let url = with_search_path("postgres://h:1/postgres", "s_1");
        let options = PgConnectOptions::from_str(&url).unwrap();
        assert_eq!(
            options
                .get_options()
                .and_then(crate::connect::search_path_option)
                .as_deref(),
            Some("s_1")
        );
        assert!(with_search_path("postgres://h/p?a=b", "s").contains("?a=b&options="));
    }

    #[test]
    fn names() {
        let a = unique_name();
        assert!(a.starts_with(NAME_PREFIX));
        assert_ne!(a, unique_name());
        assert!(!dead_owner(&a), "our own process is alive");
        assert!(!dead_owner("other_name"));
    }
}
