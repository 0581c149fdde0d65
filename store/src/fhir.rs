//! Queries the FHIR export needs beyond the API's: one reading by its key.

use crate::readings::{ReadingKind, StoredReading};
use crate::rows::Columns;
use crate::sql::Val;
use crate::{Result, Store, StoreError};

const COLUMNS: &str = "device_id, seq, patient_id, kind, measured_at, received_at, \
     clock_unset, status, sensor, systolic, diastolic, mean_arterial, pulse, spo2, \
     perfusion_index, glucose_mg_dl, glucose_sample, glucose_meal, source_unit";

impl Store {
    /// The reading stored under (device, seq), if any.
    pub async fn reading_by_key(&self, device_id: &str, seq: i64) -> Result<Option<StoredReading>> {
        let sql = format!("SELECT {COLUMNS} FROM readings WHERE device_id = $1 AND seq = $2");
        self.read(&sql, &[Val::Text(device_id), Val::I64(seq)])
            .await?
            .first()
            .map(row_to_reading)
            .transpose()
    }
}

fn row_to_reading(row: &impl Columns) -> Result<StoredReading> {
    let kind = row.text("kind")?;
    Ok(StoredReading {
        device_id: row.text("device_id")?,
        seq: row.bigint("seq")?,
        patient_id: row.bigint("patient_id")?,
        kind: ReadingKind::parse(&kind)
            .ok_or_else(|| StoreError::decode(format!("unknown reading kind {kind:?}")))?,
        measured_at: row.ts("measured_at")?,
        received_at: row.ts("received_at")?,
        clock_unset: row.flag("clock_unset")?,
        status: row.int("status")?,
        sensor: row.bigint("sensor")?,
        systolic: row.real_opt("systolic")?,
        diastolic: row.real_opt("diastolic")?,
        mean_arterial: row.real_opt("mean_arterial")?,
        pulse: row.real_opt("pulse")?,
        spo2: row.real_opt("spo2")?,
        perfusion_index: row.real_opt("perfusion_index")?,
        glucose_mg_dl: row.real_opt("glucose_mg_dl")?,
        glucose_sample: row.text_opt("glucose_sample")?,
        glucose_meal: row.text_opt("glucose_meal")?,
        source_unit: row.text_opt("source_unit")?,
    })
}
