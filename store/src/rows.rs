//! Reading columns the same way from PostgreSQL and SQLite rows.
//!
//! The two schemas agree on column names and types except timestamps (TIMESTAMPTZ vs INTEGER
//! unix milliseconds), so each row type is mapped once, generically over [`Columns`].

use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use time::OffsetDateTime;

use crate::{Result, StoreError};

/// Typed column access shared by [`PgRow`] and [`SqliteRow`].
pub(crate) trait Columns {
    fn text(&self, col: &str) -> Result<String>;
    fn text_opt(&self, col: &str) -> Result<Option<String>>;
    fn bigint(&self, col: &str) -> Result<i64>;
    fn bigint_opt(&self, col: &str) -> Result<Option<i64>>;
    fn int(&self, col: &str) -> Result<i32>;
    fn int_opt(&self, col: &str) -> Result<Option<i32>>;
    fn smallint_opt(&self, col: &str) -> Result<Option<i16>>;
    fn real_opt(&self, col: &str) -> Result<Option<f32>>;
    fn flag(&self, col: &str) -> Result<bool>;
    fn bytes(&self, col: &str) -> Result<Vec<u8>>;
    fn ts(&self, col: &str) -> Result<OffsetDateTime>;
    fn ts_opt(&self, col: &str) -> Result<Option<OffsetDateTime>>;
}

macro_rules! common_columns {
    () => {
        fn text(&self, col: &str) -> Result<String> {
            Ok(self.try_get(col)?)
        }
        fn text_opt(&self, col: &str) -> Result<Option<String>> {
            Ok(self.try_get(col)?)
        }
        fn bigint(&self, col: &str) -> Result<i64> {
            Ok(self.try_get(col)?)
        }
        fn bigint_opt(&self, col: &str) -> Result<Option<i64>> {
            Ok(self.try_get(col)?)
        }
        fn int(&self, col: &str) -> Result<i32> {
            Ok(self.try_get(col)?)
        }
        fn int_opt(&self, col: &str) -> Result<Option<i32>> {
            Ok(self.try_get(col)?)
        }
        fn smallint_opt(&self, col: &str) -> Result<Option<i16>> {
            Ok(self.try_get(col)?)
        }
        fn real_opt(&self, col: &str) -> Result<Option<f32>> {
            Ok(self.try_get(col)?)
        }
        fn flag(&self, col: &str) -> Result<bool> {
            Ok(self.try_get(col)?)
        }
        fn bytes(&self, col: &str) -> Result<Vec<u8>> {
            Ok(self.try_get(col)?)
        }
    };
}

impl Columns for PgRow {
    common_columns!();

    fn ts(&self, col: &str) -> Result<OffsetDateTime> {
        Ok(self.try_get(col)?)
    }
    fn ts_opt(&self, col: &str) -> Result<Option<OffsetDateTime>> {
        Ok(self.try_get(col)?)
    }
}

impl Columns for SqliteRow {
    common_columns!();

    fn ts(&self, col: &str) -> Result<OffsetDateTime> {
        from_ms(self.try_get(col)?)
    }
    fn ts_opt(&self, col: &str) -> Result<Option<OffsetDateTime>> {
        self.try_get::<Option<i64>, _>(col)?
            .map(from_ms)
            .transpose()
    }
}

/// A timestamp as SQLite stores it: unix milliseconds (sub-millisecond digits are dropped,
/// rounding towards the past).
pub(crate) fn to_ms(at: OffsetDateTime) -> i64 {
    let ms = at.unix_timestamp_nanos().div_euclid(1_000_000);
    // OffsetDateTime spans ±9999 years, about 3e14 ms: far inside i64, so this never saturates.
    i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX })
}

/// The inverse of [`to_ms`].
pub(crate) fn from_ms(ms: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| StoreError::decode(format!("timestamp {ms} ms out of range: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn millisecond_round_trip() {
        let at = datetime!(2025-03-01 12:34:56.789 UTC);
        assert_eq!(from_ms(to_ms(at)).unwrap(), at);
        let before_epoch = datetime!(1969-12-31 23:59:59.999_5 UTC);
        assert_eq!(to_ms(before_epoch), -1);
        assert_eq!(from_ms(0).unwrap(), OffsetDateTime::UNIX_EPOCH);
        assert!(from_ms(i64::MAX).is_err());
    }
}
