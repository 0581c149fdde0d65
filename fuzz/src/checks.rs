//! The oracles of the protocol fuzz targets.
//!
//! Each function takes the fuzzer's raw input, must never panic on behalf of the decoder, and
//! panics (an `assert!`) when a property of the wire contract does not hold:
//!
//! - [`decode_batch`]: decoding never panics; the readings it accepts re-encode into
//!   [`MAX_PAYLOAD`] bytes and decode back to the very same readings, bit for bit.
//! - [`topic`]: a parsed topic displays as its input; [`filter_within_device`] accepts exactly
//!   the filters under the device's own literal prefix, never a wildcard before it nor another
//!   device's topics.
//! - [`ack_status`]: acks, statuses and device configs decode without panicking and round-trip
//!   encode → decode.
//!
//! This file is compiled twice: into the fuzz crate (`fuzz/src/lib.rs`) and, through a `#[path]`
//! module, into `protocol/tests/corpus.rs`, which replays every committed corpus file on plain
//! `cargo test`. So it may use only `std` and `protocol`, and must satisfy the workspace's lints.

use std::fmt::Write as _;
use std::string::String;
use std::sync::OnceLock;
use std::vec::Vec;

use protocol::ack::Ack;
use protocol::status::{DeviceConfig, Status};
use protocol::topic::{self, DeviceId, PREFIX, Topic, filter_within_device};
use protocol::{MAX_BATCH, MAX_PAYLOAD, Reading};

/// Target `decode_batch`: `protocol::decode_batch` as an oracle, not just a crash finder.
pub fn decode_batch(data: &[u8]) {
    let Ok(batch) = protocol::decode_batch(data) else {
        return;
    };
    assert!(
        !batch.is_empty() && batch.len() <= MAX_BATCH,
        "decoded batch of {} items",
        batch.len()
    );
    let readings: Vec<Reading> = batch.iter().filter_map(|item| item.ok()).collect();
    if readings.is_empty() {
        return;
    }
    for r in &readings {
        assert_finite(r);
    }
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let n = protocol::encode_batch(&readings, &mut buf).unwrap_or_else(|e| {
        panic!(
            "{} accepted readings do not re-encode into MAX_PAYLOAD bytes: {e}",
            readings.len()
        )
    });
    let encoded = &buf[..n];
    let again = protocol::decode_batch(encoded)
        .unwrap_or_else(|e| panic!("re-encoded batch refused: {e}\n{}", lossy(encoded)));
    assert_eq!(again.len(), readings.len(), "{}", lossy(encoded));
    let mut decoded_again = Vec::with_capacity(again.len());
    for (got, want) in again.iter().zip(&readings) {
        let got = got.as_ref().unwrap_or_else(|(seq, e)| {
            panic!(
                "re-encoded reading seq {seq} refused: {e}\nwas {want:?}\n{}",
                lossy(encoded)
            )
        });
        assert_eq!(
            got,
            want,
            "round trip changed a reading\n{}",
            lossy(encoded)
        );
        // `==` takes -0.0 for 0.0; Debug tells every distinct f32 apart, so this is bit-exact.
        assert_eq!(
            debug(got),
            debug(want),
            "round trip changed a reading's bits\n{}",
            lossy(encoded)
        );
        decoded_again.push(*got);
    }
    // The encoding is canonical: encoding what was decoded gives the same bytes again.
    let mut buf2 = vec![0u8; MAX_PAYLOAD];
    let n2 = protocol::encode_batch(&decoded_again, &mut buf2)
        .unwrap_or_else(|e| panic!("second re-encode failed: {e}"));
    assert_eq!(
        lossy(&buf2[..n2]),
        lossy(encoded),
        "encoding is not canonical"
    );
}

/// Every float of an accepted reading is finite (the plausibility limits refuse NaN and ±inf).
fn assert_finite(r: &Reading) {
    use protocol::Measurement;
    let values: [Option<f32>; 4] = match r.measurement {
        Measurement::BloodPressure(bp) => {
            [Some(bp.systolic), Some(bp.diastolic), bp.mean, bp.pulse]
        }
        Measurement::Spo2(ox) => [Some(ox.percent), ox.pulse, ox.perfusion_index, None],
        Measurement::Glucose(g) => [Some(g.value), None, None, None],
    };
    for v in values.into_iter().flatten() {
        assert!(v.is_finite(), "accepted a non-finite value: {r:?}");
    }
}

/// Target `topic`: topic parsing and the subscription-filter guard, on any UTF-8 string.
///
/// The input is used whole as a topic and as a filter. If it holds a newline, the part before
/// the first one is also tried as a device id and the part after as a filter for it.
pub fn topic(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Topic::parse(s) {
        let shown = t.to_string();
        assert_eq!(shown, s, "Display of a parsed topic differs from its input");
        assert!(is_device_id(t.device.as_str()), "accepted device id {t:?}");
        assert_eq!(Topic::parse(&shown), Ok(t));
    }
    if let Ok(id) = DeviceId::parse(s) {
        assert!(is_device_id(id.as_str()), "accepted device id {s:?}");
    }
    check_filter_all(s, None);
    if let Some((device, filter)) = s.split_once('\n') {
        check_filter_all(filter, Some(device));
    }
}

/// Checks `filter` against `device` (if given), a few fixed ids, its own device level and
/// every prefix of that level (`dev1` against a filter for `dev10`).
fn check_filter_all(filter: &str, device: Option<&str>) {
    let mut candidates: Vec<&str> = vec!["dev1", "d", "bp-001"];
    candidates.extend(device);
    if let Some(level) = filter.split('/').nth(3) {
        for end in 1..=level.len().min(topic::MAX_DEVICE_ID + 1) {
            if let Some(prefix) = level.get(..end) {
                candidates.push(prefix);
            }
        }
    }
    for candidate in candidates {
        if let Ok(id) = DeviceId::parse(candidate) {
            check_filter(filter, id);
        }
    }
}

/// The specification of `filter_within_device`, written over MQTT topic levels.
fn check_filter(filter: &str, device: DeviceId<'_>) {
    let got = filter_within_device(filter, device);
    let levels: Vec<&str> = filter.split('/').collect();
    let has_wildcard = |level: &&str| level.contains(['+', '#']);
    let own_prefix = levels.len() >= 5
        && levels[..3] == ["sentinella", "v1", "devices"]
        && levels[3] == device.as_str()
        && !levels[..4].iter().any(has_wildcard);
    let tail = levels
        .get(4..)
        .map(|rest| rest.join("/"))
        .unwrap_or_default();
    let expected = own_prefix && !tail.is_empty();
    if got {
        // Spelled out, though implied by `expected` below: these are the guard's promises.
        assert!(
            filter.starts_with(PREFIX),
            "accepted {filter:?} for {device}: not under {PREFIX}"
        );
        assert!(
            !levels.iter().take(4).any(has_wildcard),
            "accepted {filter:?} for {device}: wildcard before the device prefix"
        );
        assert_eq!(
            levels.get(3).copied(),
            Some(device.as_str()),
            "accepted {filter:?} for {device}: another device's topics"
        );
    }
    assert_eq!(
        got, expected,
        "filter_within_device({filter:?}, {device}) = {got}, specification says {expected}"
    );
}

fn is_device_id(id: &str) -> bool {
    (1..=topic::MAX_DEVICE_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Target `ack_status`: the three small gateway/device messages.
pub fn ack_status(data: &[u8]) {
    if let Ok(ack) = Ack::decode(data) {
        let mut buf = vec![0u8; MAX_PAYLOAD];
        let n = ack
            .encode(&mut buf)
            .unwrap_or_else(|e| panic!("decoded ack does not re-encode: {e}"));
        let back = Ack::decode(&buf[..n])
            .unwrap_or_else(|e| panic!("re-encoded ack refused: {e}\n{}", lossy(&buf[..n])));
        assert_eq!(back, ack, "ack round trip\n{}", lossy(&buf[..n]));
    }
    if let Ok(status) = Status::decode(data) {
        let mut buf = vec![0u8; MAX_PAYLOAD];
        let encoded = status.encode(&mut buf).map(|n| &buf[..n]);
        let back = encoded.map(Status::decode);
        if status.fw.is_some_and(string_issue_applies) {
            // Known issue F1 (FINDINGS.md): compare everything but the string.
            if let Ok(Ok(back)) = back {
                let mask = |s: Status<'_>| (s.online, s.battery, s.fw.is_some(), s.rssi);
                assert_eq!(mask(back), mask(status), "status round trip (fw masked)");
            }
        } else {
            let encoded = encoded.unwrap_or_else(|e| panic!("decoded status: {e}"));
            assert_eq!(
                back,
                Ok(Ok(status)),
                "status round trip\n{}",
                lossy(encoded)
            );
        }
    }
    if let Ok(config) = DeviceConfig::decode(data) {
        let mut buf = vec![0u8; MAX_PAYLOAD];
        let encoded = config.encode(&mut buf).map(|n| &buf[..n]);
        let back = encoded.map(DeviceConfig::decode);
        if config.schedule.iter().any(|e| string_issue_applies(e.kind)) {
            // Known issues F1 and F2 (FINDINGS.md): compare everything but the strings.
            if let Ok(Ok(back)) = back {
                let mask = |c: &DeviceConfig<'_>| {
                    let every: Vec<u32> = c.schedule.iter().map(|e| e.every_s).collect();
                    (c.time_ms, every)
                };
                assert_eq!(
                    mask(&back),
                    mask(&config),
                    "config round trip (kinds masked)"
                );
            }
        } else {
            let encoded = encoded.unwrap_or_else(|e| panic!("decoded config: {e}"));
            assert_eq!(
                back,
                Ok(Ok(config)),
                "config round trip\n{}",
                lossy(encoded)
            );
        }
    }
}

/// Whether a decoded string falls under a known, reported round-trip defect of `protocol`
/// (fuzz/FINDINGS.md), so that the fuzzer can keep looking for other bugs meanwhile:
///
/// - F1: escape sequences (`\\`, `\"`, `\n`, `\u0041`...) are not undone by the decoder, so
///   the decoded `&str` holds the backslashes, which encoding escapes once more;
/// - F2: raw control characters (U+0000-U+001F, invalid in JSON strings) are accepted and
///   come out of the encoder as `\u00XX` escapes.
///
/// Each exemption holds only while `protocol` still shows that defect (probed once on a
/// fixed input), so it lapses by itself when the defect is fixed; `SENTINELLA_FUZZ_STRICT=1`
/// turns both off now.
fn string_issue_applies(s: &str) -> bool {
    static ISSUES: OnceLock<(bool, bool)> = OnceLock::new();
    let (raw_escapes, raw_controls) = *ISSUES.get_or_init(|| {
        if std::env::var_os("SENTINELLA_FUZZ_STRICT").is_some_and(|v| v == "1") {
            return (false, false);
        }
        let probe = |payload: &[u8], bad: &str| {
            DeviceConfig::decode(payload)
                .is_ok_and(|c| c.schedule.first().map(|e| e.kind) == Some(bad))
        };
        (
            probe(
                br#"{"time_ms":0,"schedule":[{"kind":"a\\b","every_s":1}]}"#,
                r"a\\b",
            ),
            probe(
                b"{\"time_ms\":0,\"schedule\":[{\"kind\":\"a\x01b\",\"every_s\":1}]}",
                "a\x01b",
            ),
        )
    });
    (raw_escapes && s.contains('\\')) || (raw_controls && s.chars().any(|c| c < ' '))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn debug<T: std::fmt::Debug>(value: &T) -> String {
    let mut s = String::new();
    let _ = write!(s, "{value:?}");
    s
}
