//! Shared test helpers. Constants are re-declared from the specifications, not imported from
//! the driver.
#![allow(dead_code)]

use embedded_hal_mock::eh1::serial::{Mock, Transaction};
use meter_uart::{Meter, Nb};

pub(crate) const BP: u16 = 0x2A35;
pub(crate) const GLUCOSE: u16 = 0x2A18;
pub(crate) const CONTEXT: u16 = 0x2A34;

/// CRC-16/CCITT-FALSE, written out again.
pub(crate) fn crc(bytes: &[u8]) -> u16 {
    let mut c = 0xFFFFu16;
    for &b in bytes {
        c ^= u16::from(b) << 8;
        for _ in 0..8 {
            c = if c & 0x8000 != 0 {
                (c << 1) ^ 0x1021
            } else {
                c << 1
            };
        }
    }
    c
}

/// A frame as the meter sends it (delimited, stuffed).
pub(crate) fn frame(uuid: u16, value: &[u8]) -> Vec<u8> {
    let mut body = uuid.to_le_bytes().to_vec();
    body.push(value.len() as u8);
    body.extend_from_slice(value);
    let c = crc(&body);
    body.extend_from_slice(&c.to_le_bytes());
    let mut out = vec![0x7E];
    for b in body {
        if b == 0x7E || b == 0x7D {
            out.extend_from_slice(&[0x7D, b ^ 0x20]);
        } else {
            out.push(b);
        }
    }
    out.push(0x7E);
    out
}

/// The confirmation the host sends.
pub(crate) fn confirmation() -> Vec<u8> {
    frame(0x0000, &[])
}

/// The serial transactions of the host confirming once.
pub(crate) fn confirms() -> Vec<Transaction<u8>> {
    vec![
        Transaction::write_many(confirmation()),
        Transaction::flush(),
    ]
}

pub(crate) fn reads(bytes: &[u8]) -> Transaction<u8> {
    Transaction::read_many(bytes)
}

pub(crate) fn meter(transactions: &[Transaction<u8>]) -> Meter<Nb<Mock<u8>>> {
    Meter::new(Nb(Mock::new(transactions)))
}

pub(crate) fn done(m: Meter<Nb<Mock<u8>>>) {
    m.destroy().into_inner().done();
}

/// Blood Pressure Measurement: 121/81 mmHg, MAP 94, 2025-11-22 08:30:15, pulse 72, user 1,
/// status "body movement".
pub(crate) const BP_FULL: [u8; 19] = [
    0x1E, // flags: mmHg, timestamp, pulse, user id, status
    0x79, 0x00, // systolic 121
    0x51, 0x00, // diastolic 81
    0x5E, 0x00, // MAP 94
    0xE9, 0x07, 0x0B, 0x16, 0x08, 0x1E, 0x0F, // 2025-11-22 08:30:15
    0x48, 0x00, // pulse 72
    0x01, // user 1
    0x01, 0x00, // status: body movement
];

/// Glucose Measurement seq 7, 2025-11-22 07:00:00 + 5 min, 110 × 10⁻⁵ kg/L, capillary whole
/// blood from a finger, no status, context follows.
pub(crate) const GLUCOSE_WITH_CONTEXT: [u8; 12] = [
    0x13, // flags: time offset, concentration (kg/L), context follows
    0x07, 0x00, // sequence 7
    0xE9, 0x07, 0x0B, 0x16, 0x07, 0x00, 0x00, // 2025-11-22 07:00:00
    0x05, 0x00, // +5 minutes
          // concentration and type/location follow
];

pub(crate) fn glucose_with_context() -> Vec<u8> {
    let mut v = GLUCOSE_WITH_CONTEXT.to_vec();
    v.extend_from_slice(&[0x6E, 0xB0, 0x11]); // 110e-5 kg/L; finger (1), capillary WB (1)
    v
}

/// Glucose Measurement Context seq 7: meal = fasting.
pub(crate) const CONTEXT_FASTING: [u8; 4] = [0x02, 0x07, 0x00, 0x03];
