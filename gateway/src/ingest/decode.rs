//! Topic + payload → store rows, or a quarantine record saying why not.

use protocol::reading::Reading;
use protocol::status::Status;
use store::{DeviceStatusUpdate, NewQuarantine, NewReading, ReadingKind};
use time::OffsetDateTime;

/// What one readings message became.
#[derive(Debug)]
pub(crate) struct DecodedReadings {
    pub(crate) accepted: Vec<NewReading>,
    /// Readings refused for their content, with their quarantine record.
    pub(crate) rejected: Vec<(u32, NewQuarantine)>,
}

/// The device a message came from, as the registry knows it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source<'a> {
    pub(crate) topic: &'a str,
    pub(crate) device_id: &'a str,
    pub(crate) patient_id: i64,
    pub(crate) received_at: OffsetDateTime,
}

/// Decodes a readings payload. A structurally broken message is one quarantine record.
pub(crate) fn readings(
    src: Source<'_>,
    payload: &[u8],
) -> Result<DecodedReadings, Box<NewQuarantine>> {
    let batch = protocol::decode_batch(payload).map_err(|e| {
        Box::new(quarantine(
            src.topic,
            Some(src.device_id),
            None,
            e.code(),
            e.to_string(),
            payload,
            src.received_at,
        ))
    })?;
    let mut out = DecodedReadings {
        accepted: Vec::with_capacity(batch.len()),
        rejected: Vec::new(),
    };
    for item in batch {
        match item {
            Ok(reading) => out.accepted.push(to_row(src, &reading)),
            Err((seq, e)) => out.rejected.push((
                seq,
                quarantine(
                    src.topic,
                    Some(src.device_id),
                    Some(seq),
                    e.code(),
                    format!("seq {seq}: {e}"),
                    payload,
                    src.received_at,
                ),
            )),
        }
    }
    Ok(out)
}

/// Decodes a status payload.
pub(crate) fn status(
    src: Source<'_>,
    payload: &[u8],
) -> Result<DeviceStatusUpdate, Box<NewQuarantine>> {
    let status = Status::decode(payload).map_err(|e| {
        Box::new(quarantine(
            src.topic,
            Some(src.device_id),
            None,
            e.code(),
            e.to_string(),
            payload,
            src.received_at,
        ))
    })?;
    Ok(DeviceStatusUpdate {
        device_id: src.device_id.to_owned(),
        at: src.received_at,
        online: status.online,
        battery: status.battery.map(i16::from),
        firmware: status.fw.map(str::to_owned),
        rssi: status.rssi,
    })
}

/// One reading as a store row, in canonical units.
///
/// A reading made while the device clock was not set has no trustworthy time; it is stored
/// at its receive time and keeps the `clock_unset` flag, so charts stay usable and the flag
/// tells a reader why.
pub(crate) fn to_row(src: Source<'_>, r: &Reading) -> NewReading {
    let measured_at = if r.clock_unset {
        src.received_at
    } else {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.ts_ms) * 1_000_000)
            .unwrap_or(src.received_at)
    };
    let mut row = NewReading {
        clock_unset: r.clock_unset,
        status: i32::from(r.status.0),
        sensor: i64::from(r.sensor),
        ..NewReading::bare(
            src.device_id,
            i64::from(r.seq),
            src.patient_id,
            ReadingKind::BloodPressure,
            measured_at,
            src.received_at,
        )
    };
    row.set_measurement(&r.measurement);
    row
}

/// A quarantine record; the payload is kept up to `protocol::MAX_PAYLOAD` bytes.
pub(crate) fn quarantine(
    topic: &str,
    device_id: Option<&str>,
    seq: Option<u32>,
    reason: &str,
    detail: String,
    payload: &[u8],
    received_at: OffsetDateTime,
) -> NewQuarantine {
    NewQuarantine {
        received_at,
        topic: topic.to_owned(),
        device_id: device_id.map(str::to_owned),
        seq: seq.map(i64::from),
        reason: reason.to_owned(),
        detail,
        payload: payload[..payload.len().min(protocol::MAX_PAYLOAD)].to_vec(),
        payload_size: payload.len() as i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> Source<'static> {
        Source {
            topic: "sentinella/v1/devices/d1/readings",
            device_id: "d1",
            patient_id: 7,
            received_at: OffsetDateTime::from_unix_timestamp(1_763_800_000).unwrap(),
        }
    }

    #[test]
    fn canonical_units_and_clock() {
        let payload = br#"{"v":1,"readings":[
            {"seq":1,"ts":1763798400000,"kind":"bp","sys":16,"dia":10,"unit":"kPa"},
            {"seq":2,"ts":5,"clock_unset":true,"kind":"glucose","value":5.5,"unit":"mmol/L","meal":"fasting"},
            {"seq":3,"ts":1763798400000,"kind":"glucose","value":900,"unit":"mmol/L"}]}"#;
        let out = readings(src(), payload).unwrap();
        assert_eq!(out.accepted.len(), 2);
        let bp = &out.accepted[0];
        assert!((bp.systolic.unwrap() - 120.01).abs() < 0.01);
        assert_eq!(bp.measured_at.unix_timestamp(), 1_763_798_400);
        assert_eq!(bp.source_unit.as_deref(), Some("kPa"));
        let g = &out.accepted[1];
        assert!((g.glucose_mg_dl.unwrap() - 99.088).abs() < 0.01);
        assert_eq!(g.measured_at, src().received_at);
        assert!(g.clock_unset);
        assert_eq!(out.rejected.len(), 1);
        assert_eq!(out.rejected[0].0, 3);
        assert_eq!(out.rejected[0].1.reason, "reading.implausible");
        assert_eq!(out.rejected[0].1.seq, Some(3));
    }

    #[test]
    fn broken_messages_are_quarantined_whole() {
        for (payload, reason) in [
            (&b"{oops"[..], "payload.malformed"),
            (&b""[..], "payload.empty"),
            (
                &b"{\"v\":9,\"readings\":[]}"[..],
                "payload.unsupported_version",
            ),
        ] {
            let q = readings(src(), payload).unwrap_err();
            assert_eq!(q.reason, reason);
            assert_eq!(q.payload, payload);
            assert_eq!(q.device_id.as_deref(), Some("d1"));
        }
        let big = vec![b'x'; protocol::MAX_PAYLOAD + 10];
        let q = readings(src(), &big).unwrap_err();
        assert_eq!(q.reason, "payload.too_large");
        assert_eq!(q.payload.len(), protocol::MAX_PAYLOAD);
        assert_eq!(q.payload_size, big.len() as i64);
    }

    #[test]
    fn status_round_trip() {
        let s = status(src(), br#"{"online":true,"battery":12,"fw":"2.0.1"}"#).unwrap();
        assert_eq!(s.battery, Some(12));
        assert_eq!(s.firmware.as_deref(), Some("2.0.1"));
        assert!(status(src(), br#"{"online":"yes"}"#).is_err());
    }
}
