//! Repeat requests waiting for their device, shared by every node on the database.
//!
//! The alert engine of any node asks for a repeat measurement; the gateway stores it here
//! (the device's latest request replaces the one before), which wakes the node holding the
//! device's connection (`store::cluster`, channel `sentinella_devices`), and any node the
//! device connects to later reads it for the config message it sends at connect.

use time::{Duration, OffsetDateTime};

use crate::readings::ReadingKind;
use crate::rows::Columns;
use crate::sql::{AnyRow, Val};
use crate::{Result, Store, StoreError};

/// A request stays deliverable this long after its measurement was due.
pub const REPEAT_FRESH_AFTER_DUE: Duration = Duration::hours(1);

/// A repeat request for a device.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingRepeat {
    /// The device to ask.
    pub device_id: String,
    /// What to measure again.
    pub kind: ReadingKind,
    /// In how many minutes, counted from `received_at`.
    pub in_minutes: u32,
    /// When the engine asked (its clock): the request's id on the wire.
    pub asked_at: OffsetDateTime,
    /// When it was stored (the storing node's clock).
    pub received_at: OffsetDateTime,
}

impl PendingRepeat {
    /// When the repeat measurement is due.
    pub fn due_at(&self) -> OffsetDateTime {
        self.received_at + Duration::minutes(i64::from(self.in_minutes))
    }

    /// When it stops being worth delivering: [`REPEAT_FRESH_AFTER_DUE`] after it was due.
    pub fn expires_at(&self) -> OffsetDateTime {
        self.due_at() + REPEAT_FRESH_AFTER_DUE
    }
}

const COLUMNS: &str = "device_id, kind, in_minutes, asked_at, received_at";

fn from_row(r: &AnyRow) -> Result<PendingRepeat> {
    let kind = r.text("kind")?;
    Ok(PendingRepeat {
        device_id: r.text("device_id")?,
        kind: ReadingKind::parse(&kind)
            .ok_or_else(|| StoreError::decode(format!("repeat request kind {kind:?}")))?,
        in_minutes: u32::try_from(r.int("in_minutes")?).unwrap_or(0),
        asked_at: r.ts("asked_at")?,
        received_at: r.ts("received_at")?,
    })
}

impl Store {
    /// Stores `request` as its device's pending repeat request (replacing an older one) and
    /// wakes the node holding the device (see [`Store::device_wakeups`]). Also forgets the
    /// requests that expired.
    pub async fn put_repeat_request(&self, request: &PendingRepeat) -> Result<()> {
        let mut tx = self.tx().await?;
        tx.exec(
            "DELETE FROM device_repeat_requests WHERE expires_at <= $1",
            &[Val::Ts(request.received_at)],
        )
        .await?;
        tx.exec(
            "INSERT INTO device_repeat_requests \
             (device_id, kind, in_minutes, asked_at, received_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (device_id) DO UPDATE SET kind = excluded.kind, \
             in_minutes = excluded.in_minutes, asked_at = excluded.asked_at, \
             received_at = excluded.received_at, expires_at = excluded.expires_at",
            &[
                Val::Text(&request.device_id),
                Val::Text(request.kind.as_str()),
                Val::OptI32(Some(i32::try_from(request.in_minutes).unwrap_or(i32::MAX))),
                Val::Ts(request.asked_at),
                Val::Ts(request.received_at),
                Val::Ts(request.expires_at()),
            ],
        )
        .await?;
        tx.commit().await?;
        self.wake_device(&request.device_id);
        Ok(())
    }

    /// The device's pending repeat request, if one has not expired at `now`.
    pub async fn pending_repeat(
        &self,
        device_id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<PendingRepeat>> {
        self.read_one(
            &format!(
                "SELECT {COLUMNS} FROM device_repeat_requests \
                 WHERE device_id = $1 AND expires_at > $2"
            ),
            &[Val::Text(device_id), Val::Ts(now)],
        )
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
    }

    /// Every pending repeat request that has not expired at `now`, by device id.
    pub async fn pending_repeats(&self, now: OffsetDateTime) -> Result<Vec<PendingRepeat>> {
        self.read(
            &format!(
                "SELECT {COLUMNS} FROM device_repeat_requests WHERE expires_at > $1 \
                 ORDER BY device_id"
            ),
            &[Val::Ts(now)],
        )
        .await?
        .iter()
        .map(from_row)
        .collect()
    }
}
