//! The store's error type.

use sqlx::error::{DatabaseError, ErrorKind};
use sqlx::postgres::PgDatabaseError;
use sqlx::sqlite::SqliteError;

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or could not be reached; see [`StoreError::is_transient`].
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// Applying the migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A unique key is taken, e.g. a device id that already exists.
    #[error("{what} already exists")]
    Conflict {
        /// What collided, e.g. `device "bp-0001"`.
        what: String,
    },
    /// The row the operation needs does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What is missing, e.g. `patient 42`.
        what: String,
    },
    /// The connection URL is neither `postgres://…` nor `sqlite:…`.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// The caller passed a value the store does not accept (e.g. a malformed device id).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The operation does not apply to the row's current state, e.g. acknowledging an
    /// alert that is already resolved.
    #[error("{0}")]
    InvalidTransition(String),
}

/// `Result` with [`StoreError`] as the default error.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::Database(error)
    }
}

impl StoreError {
    /// Whether retrying the same operation later can succeed: the database was unreachable,
    /// busy, restarting or shed the connection. Constraint, decode and input errors are final.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(error) => sqlx_is_transient(error),
            StoreError::Migrate(sqlx::migrate::MigrateError::Execute(error)) => {
                sqlx_is_transient(error)
            }
            StoreError::Migrate(_)
            | StoreError::Conflict { .. }
            | StoreError::NotFound { .. }
            | StoreError::InvalidUrl(_)
            | StoreError::Invalid(_)
            | StoreError::InvalidTransition(_) => false,
        }
    }

    /// Maps a unique violation to [`StoreError::Conflict`] and a foreign-key violation to
    /// [`StoreError::NotFound`] (the referenced row is missing); other errors pass through.
    pub(crate) fn on_constraint(
        error: sqlx::Error,
        conflict: impl FnOnce() -> String,
        missing: impl FnOnce() -> String,
    ) -> StoreError {
        if let sqlx::Error::Database(db) = &error {
            match db.kind() {
                ErrorKind::UniqueViolation => return StoreError::Conflict { what: conflict() },
                ErrorKind::ForeignKeyViolation => return StoreError::NotFound { what: missing() },
                _ => {}
            }
        }
        StoreError::Database(error)
    }

    /// [`StoreError::on_constraint`] for an error that already came back as a
    /// [`StoreError`] (from [`crate::Store`]'s statement helpers in `sql.rs`).
    pub(crate) fn or_constraint(
        self,
        conflict: impl FnOnce() -> String,
        missing: impl FnOnce() -> String,
    ) -> StoreError {
        match self {
            StoreError::Database(error) => StoreError::on_constraint(error, conflict, missing),
            other => other,
        }
    }

    /// A value read from the database that the store cannot interpret.
    pub(crate) fn decode(message: String) -> StoreError {
        StoreError::Database(sqlx::Error::Decode(message.into()))
    }
}

fn sqlx_is_transient(error: &sqlx::Error) -> bool {
    match error {
        // Connection refused or reset, broken pipe, timeouts: all surface as IO errors.
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => database_is_transient(db.as_ref()),
        _ => false,
    }
}

fn database_is_transient(db: &dyn DatabaseError) -> bool {
    if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
        return pg_code_is_transient(pg.code());
    }
    if db.try_downcast_ref::<SqliteError>().is_some() {
        return db.code().as_deref().is_some_and(sqlite_code_is_transient);
    }
    false
}

/// SQLSTATEs after which a retry can succeed.
fn pg_code_is_transient(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || matches!(
            code,
            "57P01" // admin_shutdown
            | "57P02" // crash_shutdown
            | "57P03" // cannot_connect_now
            | "53300" // too_many_connections
            | "53100" // disk_full: space can be freed; the batch waits, it is not refused
            | "53200" // out_of_memory
            | "40001" // serialization_failure
            | "40P01" // deadlock_detected
            | "25006" // read_only_sql_transaction: a standby, or a primary being demoted; the
                      // store moves to the new primary (multi-host URL) and the retry succeeds
        )
}

/// SQLite reports extended result codes; the primary code is the low byte.
fn sqlite_code_is_transient(code: &str) -> bool {
    const SQLITE_BUSY: i32 = 5;
    const SQLITE_LOCKED: i32 = 6;
    const SQLITE_NOMEM: i32 = 7;
    const SQLITE_IOERR: i32 = 10;
    const SQLITE_FULL: i32 = 13;
    // A full disk or a failing write is the operator's to fix; until then the batch waits
    // (and devices keep their readings) instead of being refused as bad input.
    code.parse::<i32>().is_ok_and(|code| {
        matches!(
            code & 0xff,
            SQLITE_BUSY | SQLITE_LOCKED | SQLITE_NOMEM | SQLITE_IOERR | SQLITE_FULL
        )
    })
}

/// Describes a key for [`StoreError::Conflict`] and [`StoreError::NotFound`] messages.
pub(crate) fn what(kind: &str, key: impl std::fmt::Display) -> String {
    format!("{kind} {key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_codes() {
        for code in [
            "57P01", "57P03", "08006", "08001", "40P01", "40001", "53100",
        ] {
            assert!(pg_code_is_transient(code), "{code}");
        }
        for code in ["23505", "23503", "22P02", "42P01", "XX000"] {
            assert!(!pg_code_is_transient(code), "{code}");
        }
    }

    #[test]
    fn sqlite_codes() {
        for code in ["5", "6", "261", "517", "262", "13", "10", "266"] {
            assert!(sqlite_code_is_transient(code), "{code}");
        }
        for code in ["19", "2067", "1555", "1", "x"] {
            assert!(!sqlite_code_is_transient(code), "{code}");
        }
    }

    #[test]
    fn classes() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(StoreError::from(sqlx::Error::Io(io)).is_transient());
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_transient());
        assert!(StoreError::from(sqlx::Error::PoolClosed).is_transient());
        assert!(!StoreError::from(sqlx::Error::RowNotFound).is_transient());
        assert!(!StoreError::decode("bad".into()).is_transient());
        assert!(!StoreError::Conflict { what: "x".into() }.is_transient());
        assert!(!StoreError::Invalid("x".into()).is_transient());
    }
}
