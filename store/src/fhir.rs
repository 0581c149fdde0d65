//! Queries the FHIR export needs beyond the API's: one reading by its key.

use crate::readings::{READING_COLUMNS, StoredReading, reading_from_row};
use crate::sql::Val;
use crate::{Result, Store};

impl Store {
    /// The reading stored under (device, seq), if any.
    pub async fn reading_by_key(&self, device_id: &str, seq: i64) -> Result<Option<StoredReading>> {
        let sql =
            format!("SELECT {READING_COLUMNS} FROM readings WHERE device_id = $1 AND seq = $2");
        self.read(&sql, &[Val::Text(device_id), Val::I64(seq)])
            .await?
            .first()
            .map(reading_from_row)
            .transpose()
    }
}
