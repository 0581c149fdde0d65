//! The uplink state machine: when to connect, what is in flight, when to send again.
//!
//! Pure and synchronous: it is told what happened (connected, lost, sent, acked) and the time,
//! and answers what to do. [`crate::device::Device`] does the IO. The rules, the same as the
//! reference simulator (`simulators/src/device.rs`):
//! - **Back-off.** After a failed or lost connection, wait a delay drawn from `[d/2, d]`, `d`
//!   doubling from `backoff_min_ms` to `backoff_max_ms`; a connection that stayed up for
//!   `stable_after_ms`, or any ack, resets it. Jitter keeps a fleet from reconnecting in step
//!   after a gateway restart.
//! - **Window.** At most `max_in_flight` batches of at most `max_batch` readings wait for an
//!   ack at once.
//! - **Resend.** A batch without a (complete) ack within the resend timeout is forgotten, so its
//!   unsettled readings go out again; after a reconnection everything in flight goes out again
//!   (the session is clean, so the old publishes may be lost). The gateway dedupes on
//!   (device, seq). The timeout starts at `resend_after_ms` and doubles, up to
//!   `resend_max_ms`, every time a batch expires; an ack brings it back (TCP's retransmission
//!   timeout, without the RTT estimate): a gateway slowed down by a storm is not sent every
//!   batch again every 5 s, which would only add to its load.

use protocol::ack::Ack;

use crate::{MAX_BATCH, MAX_IN_FLIGHT};

/// Uplink tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UplinkConfig {
    /// Most readings per batch (1 to [`MAX_BATCH`]).
    pub max_batch: usize,
    /// Most batches awaiting an ack (1 to [`MAX_IN_FLIGHT`]).
    pub max_in_flight: usize,
    /// How long a batch waits for its ack before it is sent again (the first time).
    pub resend_after_ms: u64,
    /// The longest wait, as it doubles while acks do not come.
    pub resend_max_ms: u64,
    /// How long a connection attempt may take.
    pub connect_timeout_ms: u64,
    /// First back-off delay.
    pub backoff_min_ms: u64,
    /// Longest back-off delay.
    pub backoff_max_ms: u64,
    /// A connection up this long resets the back-off.
    pub stable_after_ms: u64,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            max_batch: MAX_BATCH,
            max_in_flight: MAX_IN_FLIGHT,
            resend_after_ms: 5_000,
            resend_max_ms: 60_000,
            connect_timeout_ms: 10_000,
            backoff_min_ms: 200,
            backoff_max_ms: 30_000,
            stable_after_ms: 10_000,
        }
    }
}

/// The connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Not connected; try again at `retry_at_ms`.
    Down {
        /// Monotonic time of the next attempt.
        retry_at_ms: u64,
    },
    /// Connected and subscribed since `since_ms`.
    Up {
        /// Monotonic time the connection came up.
        since_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Batch {
    seqs: heapless::Vec<u32, MAX_BATCH>,
    deadline_ms: u64,
}

/// The uplink state machine.
#[derive(Debug, Clone)]
pub struct Uplink {
    config: UplinkConfig,
    link: Link,
    batches: heapless::Vec<Batch, MAX_IN_FLIGHT>,
    backoff: Backoff,
    /// The resend timeout now (see the module docs).
    resend_ms: u64,
}

impl Uplink {
    /// A disconnected uplink that tries at once. `seed` varies the jitter between devices
    /// (e.g. a hash of the device id mixed with something random at boot).
    pub fn new(config: UplinkConfig, seed: u64) -> Self {
        let config = UplinkConfig {
            max_batch: config.max_batch.clamp(1, MAX_BATCH),
            max_in_flight: config.max_in_flight.clamp(1, MAX_IN_FLIGHT),
            backoff_min_ms: config.backoff_min_ms.max(1),
            backoff_max_ms: config.backoff_max_ms.max(config.backoff_min_ms.max(1)),
            resend_after_ms: config.resend_after_ms.max(1),
            resend_max_ms: config.resend_max_ms.max(config.resend_after_ms.max(1)),
            ..config
        };
        Uplink {
            resend_ms: config.resend_after_ms,
            backoff: Backoff::new(config.backoff_min_ms, config.backoff_max_ms, seed),
            config,
            link: Link::Down { retry_at_ms: 0 },
            batches: heapless::Vec::new(),
        }
    }

    /// The (clamped) configuration.
    pub fn config(&self) -> &UplinkConfig {
        &self.config
    }

    /// The connection state.
    pub fn link(&self) -> Link {
        self.link
    }

    /// Whether the session is up.
    pub fn is_up(&self) -> bool {
        matches!(self.link, Link::Up { .. })
    }

    /// Whether a connection attempt is due.
    pub fn should_connect(&self, now_ms: u64) -> bool {
        matches!(self.link, Link::Down { retry_at_ms } if retry_at_ms <= now_ms)
    }

    /// The session came up: everything in flight is forgotten, to be sent again.
    pub fn connected(&mut self, now_ms: u64) {
        self.link = Link::Up { since_ms: now_ms };
        self.batches.clear();
    }

    /// A connection attempt failed, or the session was lost: back off. Returns the delay.
    pub fn down(&mut self, now_ms: u64) -> u64 {
        if let Link::Up { since_ms } = self.link
            && now_ms.saturating_sub(since_ms) >= self.config.stable_after_ms
        {
            self.backoff.reset();
        }
        let delay = self.backoff.next_delay();
        self.link = Link::Down {
            retry_at_ms: now_ms.saturating_add(delay),
        };
        self.batches.clear();
        delay
    }

    /// Whether another batch may be sent now.
    pub fn can_send(&self) -> bool {
        self.is_up() && self.batches.len() < self.config.max_in_flight
    }

    /// Whether `seq` is in a batch awaiting its ack.
    pub fn in_flight(&self, seq: u32) -> bool {
        self.batches.iter().any(|b| b.seqs.contains(&seq))
    }

    /// Number of batches awaiting an ack.
    pub fn batches_in_flight(&self) -> usize {
        self.batches.len()
    }

    /// A batch of `seqs` was published at `now_ms`. Seqs beyond `max_batch` are not tracked
    /// (the caller never sends more).
    pub fn sent(&mut self, seqs: impl IntoIterator<Item = u32>, now_ms: u64) {
        let mut batch = Batch {
            seqs: heapless::Vec::new(),
            deadline_ms: now_ms.saturating_add(self.resend_ms),
        };
        for seq in seqs.into_iter().take(self.config.max_batch) {
            let _ = batch.seqs.push(seq);
        }
        if !batch.seqs.is_empty() {
            // The caller checks `can_send` first; a full window drops the oldest batch, whose
            // readings are then simply sent again.
            if self.batches.is_full() {
                self.batches.remove(0);
            }
            let _ = self.batches.push(batch);
        }
    }

    /// Forgets batches whose deadline passed, so their readings are sent again, and doubles
    /// the resend timeout if any did. Returns how many batches expired.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let before = self.batches.len();
        self.batches.retain(|b| b.deadline_ms > now_ms);
        let expired = before - self.batches.len();
        if expired > 0 {
            self.resend_ms = self
                .resend_ms
                .saturating_mul(2)
                .min(self.config.resend_max_ms);
        }
        expired
    }

    /// How long a batch sent now would wait for its ack.
    pub fn resend_timeout_ms(&self) -> u64 {
        self.resend_ms
    }

    /// An ack arrived: settled seqs leave their batches; the back-off resets (the whole path
    /// to the store works).
    pub fn acked(&mut self, ack: &Ack) {
        for b in self.batches.iter_mut() {
            b.seqs.retain(|s| !ack.settles(*s));
        }
        self.batches.retain(|b| !b.seqs.is_empty());
        self.backoff.reset();
        self.resend_ms = self.config.resend_after_ms;
    }

    /// The next time something is due: a connection attempt or a resend deadline.
    pub fn next_deadline(&self) -> Option<u64> {
        match self.link {
            Link::Down { retry_at_ms } => Some(retry_at_ms),
            Link::Up { .. } => self.batches.iter().map(|b| b.deadline_ms).min(),
        }
    }
}

/// Exponential back-off with jitter, no allocator, no float.
#[derive(Debug, Clone)]
pub struct Backoff {
    min_ms: u64,
    max_ms: u64,
    next_ms: u64,
    rng: u64,
}

impl Backoff {
    /// Delays from `min_ms` doubling to `max_ms`, jitter seeded by `seed`.
    pub fn new(min_ms: u64, max_ms: u64, seed: u64) -> Self {
        Backoff {
            min_ms,
            max_ms,
            next_ms: min_ms,
            rng: splitmix64(seed),
        }
    }

    /// Back to the shortest delay.
    pub fn reset(&mut self) {
        self.next_ms = self.min_ms;
    }

    /// The next delay, drawn from `[d/2, d]`.
    pub fn next_delay(&mut self) -> u64 {
        let d = self.next_ms;
        self.next_ms = d.saturating_mul(2).min(self.max_ms);
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let half = d / 2;
        half + r % (d - half + 1)
    }
}

/// Spreads a seed over all bits (and never returns 0, which xorshift cannot leave).
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ack::SeqRange;

    fn config() -> UplinkConfig {
        UplinkConfig {
            max_batch: 3,
            max_in_flight: 2,
            resend_after_ms: 1000,
            ..UplinkConfig::default()
        }
    }

    #[test]
    fn window_ack_and_resend_deadline() {
        let mut u = Uplink::new(config(), 7);
        assert!(u.should_connect(0));
        assert!(!u.can_send());
        u.connected(0);
        assert!(u.can_send());
        u.sent([1, 2, 3], 0);
        u.sent([4, 5, 6], 10);
        assert!(!u.can_send(), "window full");
        assert!(u.in_flight(5) && !u.in_flight(7));
        assert_eq!(u.next_deadline(), Some(1000));

        let mut ack = Ack::default();
        ack.committed.push(SeqRange(1, 2)).unwrap();
        ack.rejected.push(SeqRange(3, 3)).unwrap();
        u.acked(&ack);
        assert!(u.can_send(), "first batch settled");
        assert_eq!(u.next_deadline(), Some(1010));

        assert_eq!(u.expire(1009), 0);
        assert_eq!(u.expire(1010), 1);
        assert!(!u.in_flight(5), "expired readings are eligible again");
    }

    #[test]
    fn reconnection_forgets_batches_and_backs_off() {
        let mut u = Uplink::new(config(), 7);
        u.connected(0);
        u.sent([1], 0);
        let d1 = u.down(100);
        assert!((100..=200).contains(&d1), "{d1}");
        assert!(!u.in_flight(1));
        assert!(!u.should_connect(100));
        assert!(u.should_connect(100 + d1));
        let d2 = u.down(100 + d1);
        assert!((200..=400).contains(&d2), "{d2}");
        // A stable connection resets the back-off.
        u.connected(1_000);
        let d3 = u.down(1_000 + 10_000);
        assert!(d3 <= 200, "{d3}");
    }

    #[test]
    fn backoff_caps_with_jitter() {
        let mut b = Backoff::new(100, 1_000, 42);
        let delays: heapless::Vec<u64, 16> = (0..16).map(|_| b.next_delay()).collect();
        assert!((50..=100).contains(&delays[0]));
        assert!(delays.iter().all(|d| *d <= 1_000));
        assert!(delays[15] >= 500);
        let mut other = Backoff::new(100, 1_000, 43);
        let others: heapless::Vec<u64, 16> = (0..16).map(|_| other.next_delay()).collect();
        assert_ne!(delays, others, "different seeds, different jitter");
    }

    #[test]
    fn the_resend_timeout_doubles_until_an_ack() {
        let mut u = Uplink::new(
            UplinkConfig {
                resend_max_ms: 5_000,
                ..config()
            },
            7,
        );
        u.connected(0);
        u.sent([1], 0);
        assert_eq!(u.next_deadline(), Some(1_000));
        assert_eq!(u.expire(1_000), 1);
        // Sent again: it waits twice as long, then four times, up to the cap.
        u.sent([1], 1_000);
        assert_eq!(u.next_deadline(), Some(3_000));
        assert_eq!(u.expire(3_000), 1);
        u.sent([1], 3_000);
        assert_eq!(u.next_deadline(), Some(7_000));
        assert_eq!(u.expire(7_000), 1);
        assert_eq!(u.resend_timeout_ms(), 5_000, "capped");
        assert_eq!(u.expire(7_000), 0, "nothing expired, nothing doubles");
        assert_eq!(u.resend_timeout_ms(), 5_000);
        // Any ack: the path works again, the first timeout applies.
        u.sent([1], 7_000);
        let mut ack = Ack::default();
        ack.committed.push(SeqRange(1, 1)).unwrap();
        u.acked(&ack);
        assert_eq!(u.resend_timeout_ms(), 1_000);
        u.sent([2], 8_000);
        assert_eq!(u.next_deadline(), Some(9_000));
    }

    #[test]
    fn garbage_acks_are_harmless() {
        let mut u = Uplink::new(config(), 1);
        u.connected(0);
        u.sent([7, 8], 0);
        let mut ack = Ack::default();
        ack.committed.push(SeqRange(9, 2)).unwrap();
        u.acked(&ack);
        assert!(u.in_flight(7) && u.in_flight(8));
        u.sent(core::iter::empty(), 0);
        assert_eq!(u.batches_in_flight(), 1);
    }
}
