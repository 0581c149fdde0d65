//! The gateway's end-to-end ack: which seqs are now durably stored.
//!
//! The broker's PUBACK only means the broker holds a publish in memory. After the store commits
//! a batch, the gateway publishes on the device's `ack` topic:
//!
//! ```json
//! {"committed":[[1,40],[42,57]],"rejected":[[41,41]]}
//! ```
//!
//! `committed` ranges (inclusive) are stored: the device may drop them from its outbox.
//! `rejected` ranges were refused for their content (implausible value, unknown unit…) and kept
//! in the gateway's quarantine for review; resending them can never succeed, so the device drops
//! them too instead of clogging its outbox. Anything in neither list must be kept and resent.

use serde::{Deserialize, Serialize};

use crate::codec::{DecodeError, EncodeError, check_size, from_slice_exact};

/// Most ranges of each list one ack message carries; the gateway splits longer lists.
pub const MAX_ACK_RANGES: usize = 32;

/// An inclusive range of seqs, `[first, last]` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange(pub u32, pub u32);

impl SeqRange {
    /// Whether `seq` lies in the range.
    pub fn contains(&self, seq: u32) -> bool {
        self.0 <= seq && seq <= self.1
    }
}

/// One ack message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// Seqs durably stored.
    #[serde(default)]
    pub committed: heapless::Vec<SeqRange, MAX_ACK_RANGES>,
    /// Seqs refused for their content and quarantined; they must not be resent.
    #[serde(default)]
    pub rejected: heapless::Vec<SeqRange, MAX_ACK_RANGES>,
}

impl Ack {
    /// Whether the device may drop `seq` from its outbox.
    pub fn settles(&self, seq: u32) -> bool {
        self.committed
            .iter()
            .chain(self.rejected.iter())
            .any(|r| r.contains(seq))
    }

    /// Encodes into `buf`, returning the length written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        serde_json_core::to_slice(self, buf).map_err(|_| EncodeError::BufferFull)
    }

    /// Decodes an ack payload.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        check_size(payload)?;
        from_slice_exact(payload)
    }
}

/// Collapses sorted seqs (duplicates allowed) into inclusive ranges.
///
/// ```
/// use protocol::ack::{ranges, SeqRange};
/// let r: Vec<_> = ranges([1, 2, 2, 3, 7, 9, 10].into_iter()).collect();
/// assert_eq!(r, [SeqRange(1, 3), SeqRange(7, 7), SeqRange(9, 10)]);
/// ```
pub fn ranges<I: Iterator<Item = u32>>(sorted: I) -> impl Iterator<Item = SeqRange> {
    let mut iter = sorted.peekable();
    core::iter::from_fn(move || {
        let first = iter.next()?;
        let mut last = first;
        while let Some(&next) = iter.peek() {
            if next == last || Some(next) == last.checked_add(1) {
                last = next;
                iter.next();
            } else {
                break;
            }
        }
        Some(SeqRange(first, last))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_settles() {
        let mut ack = Ack::default();
        ack.committed.push(SeqRange(1, 40)).unwrap();
        ack.committed.push(SeqRange(42, 57)).unwrap();
        ack.rejected.push(SeqRange(41, 41)).unwrap();
        let mut buf = [0u8; 256];
        let n = ack.encode(&mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            br#"{"committed":[[1,40],[42,57]],"rejected":[[41,41]]}"#
        );
        let back = Ack::decode(&buf[..n]).unwrap();
        assert_eq!(back, ack);
        for seq in [1, 40, 41, 42, 57] {
            assert!(back.settles(seq), "{seq}");
        }
        for seq in [0, 58, u32::MAX] {
            assert!(!back.settles(seq), "{seq}");
        }
    }

    #[test]
    fn decode_is_strict() {
        assert!(Ack::decode(br#"{"committed":[[1,2]]}"#).is_ok());
        assert!(Ack::decode(br#"{"committed":[[1,2,3]]}"#).is_err());
        assert!(Ack::decode(br#"{"committed":[[1]]}"#).is_err());
        assert!(Ack::decode(br#"{"acked":[[1,2]]}"#).is_err());
        assert!(Ack::decode(b"").is_err());
    }

    #[test]
    fn ranges_table() {
        fn check(input: &[u32], expected: &[SeqRange]) {
            let got: heapless::Vec<SeqRange, 16> = ranges(input.iter().copied()).collect();
            assert_eq!(got.as_slice(), expected, "{input:?}");
        }
        check(&[], &[]);
        check(&[5], &[SeqRange(5, 5)]);
        check(&[5, 5, 5], &[SeqRange(5, 5)]);
        check(
            &[1, 2, 3, 5, 6, 9],
            &[SeqRange(1, 3), SeqRange(5, 6), SeqRange(9, 9)],
        );
        check(
            &[u32::MAX - 1, u32::MAX],
            &[SeqRange(u32::MAX - 1, u32::MAX)],
        );
    }
}
