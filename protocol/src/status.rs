//! Device status (device → gateway) and device config (gateway → device).
//!
//! Status: `{"online":true,"battery":87,"fw":"1.4.2","rssi":-67}`; a device sets
//! `{"online":false}` as its MQTT will so the gateway learns when it drops off.
//!
//! Config (retained, republished by the gateway whenever the device connects):
//! `{"time_ms":1763798400000,"schedule":[{"kind":"bp","every_s":43200}]}`.
//!
//! A config may also ask for one repeat measurement, when a reading fell in a band of a care
//! plan that a repeat confirms or downgrades (see the alert engine):
//! `{"time_ms":1763798400000,"repeat":{"id":1763798399000,"kind":"spo2","in_s":300}}`. The
//! device measures that kind once, `in_s` seconds after it received the config; `id` tells
//! one request from another, so a retained config delivered again is not measured twice.
//! The gateway keeps one request per device and republishes it at every connection with
//! `in_s` shortened by the time gone by; a device that already has the id pending keeps its
//! first due time. Firmware (`firmware_core::device`) measures in a one-shot slot beside its
//! regular schedule and remembers the last measured id in flash; a `repeat` that fails
//! [`DeviceConfig::decode`] makes the whole config invalid (time and schedule included).

use serde::{Deserialize, Serialize};

use crate::codec::{DecodeError, EncodeError, check_size, from_slice_exact};

/// A device's status report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status<'a> {
    /// Whether the device is connected (false in the will message).
    pub online: bool,
    /// Battery charge, percent (0-100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub battery: Option<u8>,
    /// Firmware version.
    #[serde(skip_serializing_if = "Option::is_none", borrow)]
    pub fw: Option<&'a str>,
    /// Received signal strength, dBm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rssi: Option<i16>,
}

/// Longest firmware version string accepted.
pub const MAX_FW_LEN: usize = 32;

impl<'a> Status<'a> {
    /// Decodes and validates a status payload.
    pub fn decode(payload: &'a [u8]) -> Result<Self, DecodeError> {
        check_size(payload)?;
        let status: Status<'a> = from_slice_exact(payload)?;
        if status.battery.is_some_and(|b| b > 100) {
            return Err(DecodeError::Json("battery must be 0-100"));
        }
        if let Some(fw) = status.fw {
            // No `\`: the decoder cannot undo JSON escapes without an allocator, so an escape
            // would be stored as its raw text (fuzz finding F1).
            let printable = fw.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
            if fw.is_empty() || fw.len() > MAX_FW_LEN || !printable {
                return Err(DecodeError::Json(
                    "fw must be 1-32 printable ASCII characters, without '\\'",
                ));
            }
        }
        Ok(status)
    }

    /// Encodes into `buf`, returning the length written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        serde_json_core::to_slice(self, buf).map_err(|_| EncodeError::BufferFull)
    }
}

/// How often the device should measure one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleEntry<'a> {
    /// Measurement kind (`bp`, `spo2`, `glucose`).
    pub kind: &'a str,
    /// Interval between measurements, seconds.
    pub every_s: u32,
}

/// The gateway's configuration for a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig<'a> {
    /// The gateway's wall-clock time when it sent this, ms since the Unix epoch; a device
    /// without a real-time clock sets its clock from it.
    pub time_ms: i64,
    /// Measurement schedule.
    #[serde(borrow, default)]
    pub schedule: heapless::Vec<ScheduleEntry<'a>, 4>,
    /// One repeat measurement asked for (absent: none).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<RepeatRequest<'a>>,
}

/// "Measure `kind` again in `in_s` seconds", once per `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepeatRequest<'a> {
    /// Tells requests apart (the gateway uses the request time, ms since the Unix epoch).
    pub id: i64,
    /// Measurement kind (`bp`, `spo2`, `glucose`).
    pub kind: &'a str,
    /// Seconds to wait before measuring (rest before a repeat BP or SpO2; 15 min after
    /// treating a low glucose).
    pub in_s: u32,
}

/// Longest wait a repeat request may ask for (a request is about now, not tomorrow).
pub const MAX_REPEAT_IN_S: u32 = 6 * 3600;

impl<'a> DeviceConfig<'a> {
    /// A config carrying only the gateway's time, with an empty schedule (the device keeps
    /// its own).
    pub fn with_time(time_ms: i64) -> Self {
        DeviceConfig {
            time_ms,
            schedule: heapless::Vec::new(),
            repeat: None,
        }
    }

    /// Decodes a config payload. Every schedule kind must be a known measurement kind
    /// (which also refuses escapes and control characters, fuzz findings F1 and F2).
    pub fn decode(payload: &'a [u8]) -> Result<Self, DecodeError> {
        check_size(payload)?;
        let config: DeviceConfig<'a> = from_slice_exact(payload)?;
        if config
            .schedule
            .iter()
            .any(|e| crate::reading::Kind::parse(e.kind).is_none())
        {
            return Err(DecodeError::Json(
                "schedule kind must be bp, spo2 or glucose",
            ));
        }
        if let Some(r) = &config.repeat
            && (crate::reading::Kind::parse(r.kind).is_none() || r.in_s > MAX_REPEAT_IN_S)
        {
            return Err(DecodeError::Json(
                "repeat kind must be bp, spo2 or glucose, in_s at most 21600",
            ));
        }
        Ok(config)
    }

    /// Encodes into `buf`, returning the length written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        serde_json_core::to_slice(self, buf).map_err(|_| EncodeError::BufferFull)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_kinds_are_checked() {
        let ok = br#"{"time_ms":0,"schedule":[{"kind":"bp","every_s":43200}]}"#;
        assert_eq!(DeviceConfig::decode(ok).map(|c| c.schedule.len()), Ok(1));
        // Fuzz findings F1 (escape) and F2 (raw control character).
        for bad in [
            &br#"{"time_ms":0,"schedule":[{"kind":"\\","every_s":0}]}"#[..],
            b"{\"time_ms\":0,\"schedule\":[{\"kind\":\"\x01\",\"every_s\":0}]}",
            br#"{"time_ms":0,"schedule":[{"kind":"weight","every_s":0}]}"#,
        ] {
            assert!(
                DeviceConfig::decode(bad).is_err(),
                "{:?}",
                core::str::from_utf8(bad)
            );
        }
    }

    #[test]
    fn status_table() {
        fn check(payload: &str, ok: bool) {
            assert_eq!(Status::decode(payload.as_bytes()).is_ok(), ok, "{payload}");
        }
        check(
            r#"{"online":true,"battery":87,"fw":"1.4.2","rssi":-67}"#,
            true,
        );
        check(r#"{"online":false}"#, true);
        check(r#"{"online":true,"battery":187}"#, false);
        check(r#"{"online":true,"battery":-1}"#, false);
        check(r#"{"online":true,"fw":""}"#, false);
        check(r#"{"online":true,"fw":"a b"}"#, false);
        // Fuzz finding F1: escapes would be kept as raw text, so they are refused.
        check(r#"{"online":true,"fw":"\\"}"#, false);
        check(r#"{"online":true,"fw":"\u5"}"#, false);
        check(r#"{"online":true,"fw":"1.4\"2"}"#, false);
        check(r#"{"battery":50}"#, false);
        check(r#"{"online":true,"cpu":3}"#, false);
    }

    #[test]
    fn config_round_trip() {
        let mut cfg = DeviceConfig {
            time_ms: 1_763_798_400_000,
            schedule: heapless::Vec::new(),
            repeat: None,
        };
        cfg.schedule
            .push(ScheduleEntry {
                kind: "bp",
                every_s: 43_200,
            })
            .unwrap();
        let mut buf = [0u8; 256];
        let n = cfg.encode(&mut buf).unwrap();
        assert_eq!(DeviceConfig::decode(&buf[..n]).unwrap(), cfg);
        cfg.repeat = Some(RepeatRequest {
            id: 1_763_798_399_000,
            kind: "spo2",
            in_s: 300,
        });
        let n = cfg.encode(&mut buf).unwrap();
        assert_eq!(DeviceConfig::decode(&buf[..n]).unwrap(), cfg);
    }

    #[test]
    fn repeat_requests_are_checked() {
        for (payload, ok) in [
            (
                r#"{"time_ms":0,"repeat":{"id":1,"kind":"bp","in_s":300}}"#,
                true,
            ),
            (
                r#"{"time_ms":0,"repeat":{"id":1,"kind":"weight","in_s":300}}"#,
                false,
            ),
            (
                r#"{"time_ms":0,"repeat":{"id":1,"kind":"bp","in_s":90000}}"#,
                false,
            ),
            (r#"{"time_ms":0,"repeat":{"id":1,"kind":"bp"}}"#, false),
            (
                r#"{"time_ms":0,"repeat":{"id":1,"kind":"bp","in_s":1,"x":2}}"#,
                false,
            ),
        ] {
            assert_eq!(
                DeviceConfig::decode(payload.as_bytes()).is_ok(),
                ok,
                "{payload}"
            );
        }
    }
}
