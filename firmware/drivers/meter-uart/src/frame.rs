//! The UART framing: Bluetooth characteristic values, one per frame.
//!
//! A Bluetooth meter sends its records as indications of a characteristic; on a UART there is
//! no GATT, so each value travels in a frame named by the characteristic's 16-bit UUID:
//!
//! ```text
//! 0x7E | stuffed( UUID lo | UUID hi | LEN | VALUE[LEN] | CRC lo | CRC hi ) | 0x7E
//! ```
//!
//! - **Delimiters and stuffing** (HDLC-like, RFC 1662 §4.2): every frame starts and ends with
//!   `0x7E`; inside, `0x7E` is sent as `0x7D 0x5E` and `0x7D` as `0x7D 0x5D`. A receiver that
//!   lost sync (noise, a frame cut short) recovers at the next `0x7E`; two frames may share a
//!   delimiter.
//! - **UUID**: `0x2A35` Blood Pressure Measurement, `0x2A18` Glucose Measurement, `0x2A34`
//!   Glucose Measurement Context, `0x0000` confirmation (host → meter, empty value).
//! - **LEN**: length of VALUE, at most [`MAX_VALUE`]; checked against the frame's size.
//! - **CRC**: CRC-16/CCITT-FALSE (poly `0x1021`, init `0xFFFF`, no reflection, no final xor)
//!   over UUID, LEN and VALUE, little endian.
//!
//! Frames that fail any check are dropped ([`Pushed::Discarded`]).
//!
//! **Hand-over** (mirrors an indication and its confirmation): the meter sends one *record*
//! (a BP Measurement; a Glucose Measurement; or a Glucose Measurement with the "context
//! follows" flag immediately followed by its Context) and waits for a confirmation frame. The
//! host confirms only once the record is stored durably. Without a confirmation the meter sends
//! the same record again after its own timeout, so no reading is lost between meter and host;
//! the host recognises a resend of the record it confirmed last and confirms it again without
//! storing it twice.

/// Frame delimiter.
pub const FLAG: u8 = 0x7E;
/// Escape byte.
pub const ESCAPE: u8 = 0x7D;
/// XORed into an escaped byte.
const ESCAPE_XOR: u8 = 0x20;

/// UUID of the confirmation frame.
pub const UUID_CONFIRM: u16 = 0x0000;

/// Longest value a frame carries.
pub const MAX_VALUE: usize = 32;

/// Longest unstuffed frame body: UUID, LEN, value, CRC.
pub const MAX_BODY: usize = 2 + 1 + MAX_VALUE + 2;

/// Longest frame on the wire: two delimiters and every body byte escaped.
pub const MAX_FRAME: usize = 2 + 2 * MAX_BODY;

/// CRC-16/CCITT-FALSE.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Why a frame cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The value is longer than [`MAX_VALUE`].
    ValueTooLong,
    /// The output buffer is too small.
    BufferTooSmall,
}

/// Builds the frame carrying `value` under `uuid` into `out`; returns its length.
pub fn encode(uuid: u16, value: &[u8], out: &mut [u8]) -> Result<usize, FrameError> {
    let len = u8::try_from(value.len())
        .ok()
        .filter(|l| usize::from(*l) <= MAX_VALUE)
        .ok_or(FrameError::ValueTooLong)?;
    let mut body = [0u8; MAX_BODY];
    let [u0, u1] = uuid.to_le_bytes();
    body[0] = u0;
    body[1] = u1;
    body[2] = len;
    let end = 3 + value.len();
    body.get_mut(3..end)
        .ok_or(FrameError::ValueTooLong)?
        .copy_from_slice(value);
    let crc = crc16(body.get(..end).unwrap_or_default());
    let [c0, c1] = crc.to_le_bytes();
    body[end] = c0;
    body[end + 1] = c1;

    let mut at = 0;
    let mut put = |b: u8| -> Result<(), FrameError> {
        *out.get_mut(at).ok_or(FrameError::BufferTooSmall)? = b;
        at += 1;
        Ok(())
    };
    put(FLAG)?;
    for &b in body.get(..end + 2).unwrap_or_default() {
        if b == FLAG || b == ESCAPE {
            put(ESCAPE)?;
            put(b ^ ESCAPE_XOR)?;
        } else {
            put(b)?;
        }
    }
    put(FLAG)?;
    Ok(at)
}

/// A received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Characteristic UUID.
    pub uuid: u16,
    /// The characteristic value.
    pub value: &'a [u8],
}

/// What one byte did to the [`Deframer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Nothing complete yet.
    Nothing,
    /// A valid frame is ready: read it with [`Deframer::frame`] before the next push.
    Frame,
    /// A frame failed a check (size, length field, CRC) and was dropped.
    Discarded,
}

/// Reassembles frames from bytes.
#[derive(Debug, Clone)]
pub struct Deframer {
    body: [u8; MAX_BODY],
    len: usize,
    escaped: bool,
    overflow: bool,
    ready: bool,
}

impl Default for Deframer {
    fn default() -> Self {
        Self::new()
    }
}

impl Deframer {
    /// Waiting for a frame.
    pub const fn new() -> Self {
        Deframer {
            body: [0; MAX_BODY],
            len: 0,
            escaped: false,
            overflow: false,
            ready: false,
        }
    }

    /// Feeds one received byte.
    pub fn push(&mut self, byte: u8) -> Pushed {
        if self.ready {
            self.ready = false;
            self.len = 0;
        }
        if byte == FLAG {
            let outcome = if self.len == 0 && !self.overflow {
                Pushed::Nothing
            } else if self.check() {
                self.ready = true;
                Pushed::Frame
            } else {
                self.len = 0;
                Pushed::Discarded
            };
            self.escaped = false;
            self.overflow = false;
            return outcome;
        }
        if byte == ESCAPE {
            self.escaped = true;
            return Pushed::Nothing;
        }
        let b = if core::mem::take(&mut self.escaped) {
            byte ^ ESCAPE_XOR
        } else {
            byte
        };
        match self.body.get_mut(self.len) {
            Some(slot) => {
                *slot = b;
                self.len += 1;
            }
            None => self.overflow = true,
        }
        Pushed::Nothing
    }

    /// The frame completed by the last push, if it returned [`Pushed::Frame`].
    pub fn frame(&self) -> Option<Frame<'_>> {
        if !self.ready {
            return None;
        }
        let value_len = usize::from(*self.body.get(2)?);
        Some(Frame {
            uuid: u16::from_le_bytes([*self.body.first()?, *self.body.get(1)?]),
            value: self.body.get(3..3 + value_len)?,
        })
    }

    fn check(&self) -> bool {
        if self.overflow || self.len < 5 {
            return false;
        }
        let value_len = usize::from(self.body[2]);
        if value_len > MAX_VALUE || self.len != 3 + value_len + 2 {
            return false;
        }
        let end = 3 + value_len;
        let got = u16::from_le_bytes([self.body[end], self.body[end + 1]]);
        crc16(self.body.get(..end).unwrap_or_default()) == got
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::vec::Vec;

    #[derive(Default)]
    struct Frames {
        frames: Vec<(u16, Vec<u8>)>,
        discarded: usize,
    }

    fn feed(d: &mut Deframer, bytes: &[u8]) -> Frames {
        let mut out = Frames::default();
        for &b in bytes {
            match d.push(b) {
                Pushed::Frame => {
                    let f = d.frame().expect("ready");
                    out.frames.push((f.uuid, f.value.to_vec()));
                }
                Pushed::Discarded => out.discarded += 1,
                Pushed::Nothing => {}
            }
        }
        out
    }

    #[test]
    fn crc_check_value() {
        // The standard check value of CRC-16/CCITT-FALSE.
        assert_eq!(crc16(b"123456789"), 0x29B1);
    }

    #[test]
    fn round_trip_with_stuffing() {
        let value = [0x7E, 0x7D, 0x00, 0xFF, 0x7E];
        let mut buf = [0u8; MAX_FRAME];
        let n = encode(0x2A35, &value, &mut buf).expect("fits");
        assert_eq!(buf[0], FLAG);
        assert_eq!(buf[n - 1], FLAG);
        assert!(!buf[1..n - 1].contains(&FLAG), "no delimiter inside");
        let mut d = Deframer::new();
        let got = feed(&mut d, &buf[..n]);
        assert_eq!(got.discarded, 0);
        assert_eq!(got.frames, [(0x2A35, value.to_vec())]);
    }

    #[test]
    fn confirmation_frame_bytes() {
        let mut buf = [0u8; MAX_FRAME];
        let n = encode(UUID_CONFIRM, &[], &mut buf).expect("fits");
        let crc = crc16(&[0, 0, 0]).to_le_bytes();
        assert_eq!(buf[..n], [FLAG, 0, 0, 0, crc[0], crc[1], FLAG]);
    }

    #[test]
    fn resyncs_after_noise_and_bad_frames() {
        let mut a = [0u8; MAX_FRAME];
        let na = encode(0x2A18, &[1, 2, 3], &mut a).expect("fits");
        let mut b = [0u8; MAX_FRAME];
        let nb = encode(0x2A34, &[4, 5], &mut b).expect("fits");
        let mut stream = [0u8; 3 * MAX_FRAME];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            stream[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&[0x13, 0x37]); // line noise before any frame
        put(&a[..na - 3]); // a frame cut short ...
        put(&a[..na]); // ... then the same frame whole (its opening flag ends the cut one)
        let mut corrupt = b;
        corrupt[4] ^= 0x01; // a flipped bit: CRC fails
        put(&corrupt[..nb]);
        put(&b[..nb]);
        let mut d = Deframer::new();
        let got = feed(&mut d, &stream[..at]);
        assert_eq!(
            got.frames,
            [(0x2A18, std::vec![1u8, 2, 3]), (0x2A34, std::vec![4u8, 5])]
        );
        assert_eq!(got.discarded, 3, "noise, the cut frame, the corrupt frame");
    }

    #[test]
    fn refuses_oversized_values_and_frames() {
        let mut buf = [0u8; MAX_FRAME];
        assert_eq!(
            encode(1, &[0; MAX_VALUE + 1], &mut buf),
            Err(FrameError::ValueTooLong)
        );
        assert_eq!(
            encode(1, &[0; 4], &mut buf[..5]),
            Err(FrameError::BufferTooSmall)
        );
        // A body longer than any frame is dropped at the next delimiter.
        let mut d = Deframer::new();
        let mut long = [0x55u8; MAX_BODY + 10];
        long[0] = FLAG;
        let got = feed(&mut d, &long);
        assert!(got.frames.is_empty());
        assert_eq!(d.push(FLAG), Pushed::Discarded);
        // A length field that disagrees with the frame's size.
        let n = encode(0x2A35, &[9, 9], &mut buf).expect("fits");
        buf[3] = 3; // LEN says 3, only 2 follow (CRC unchanged, fails too)
        assert_eq!(feed(&mut Deframer::new(), &buf[..n]).discarded, 1);
        assert_eq!(d.frame(), None);
    }
}
