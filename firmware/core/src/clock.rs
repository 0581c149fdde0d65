//! Time: the board's monotonic clock, and the wall clock the gateway sets.
//!
//! Home devices often have no battery-backed real-time clock. The gateway publishes its own
//! time (`time_ms`) on the device's retained `config` topic every time the device connects;
//! [`WallClock`] keeps the offset between that and the monotonic clock. Until it is set (after
//! a reboot, before the first connection), readings carry the time since boot and
//! `clock_unset = true`, and the gateway stores its receive time instead (PLX "device clock
//! not set" semantics).

/// A monotonic millisecond clock and a timer, provided by the board.
pub trait Clock {
    /// Milliseconds since an arbitrary origin (usually boot); never goes backwards.
    fn now_ms(&self) -> u64;

    /// Completes once [`Clock::now_ms`] has reached `at_ms` (at once if it has already).
    /// Must be cancel-safe: dropping the future has no effect.
    async fn sleep_until(&mut self, at_ms: u64);
}

/// Wall-clock time derived from the monotonic clock and the last time the gateway (or an RTC)
/// told us.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WallClock {
    /// Unix ms minus monotonic ms, once known.
    offset: Option<i64>,
}

impl WallClock {
    /// A clock that is not set.
    pub const fn unset() -> Self {
        WallClock { offset: None }
    }

    /// Sets the clock: at monotonic time `mono_ms` the Unix time is `unix_ms`. Later calls
    /// correct drift. Times before 2000 are ignored (a gateway with a broken clock must not
    /// make readings look set when they are not).
    pub fn set(&mut self, unix_ms: i64, mono_ms: u64) -> bool {
        if !(protocol::limits::EARLIEST_TS_MS..=protocol::limits::LATEST_TS_MS).contains(&unix_ms) {
            return false;
        }
        let mono = i64::try_from(mono_ms).unwrap_or(i64::MAX);
        self.offset = Some(unix_ms.saturating_sub(mono));
        true
    }

    /// Whether the clock has been set.
    pub fn is_set(&self) -> bool {
        self.offset.is_some()
    }

    /// The timestamp of a reading taken at monotonic time `mono_ms`: `(ts_ms, clock_unset)`.
    /// Unset, it is the monotonic time itself.
    pub fn timestamp(&self, mono_ms: u64) -> (i64, bool) {
        let mono = i64::try_from(mono_ms).unwrap_or(i64::MAX);
        match self.offset {
            Some(offset) => (mono.saturating_add(offset), false),
            None => (mono, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_then_set_then_corrected() {
        let mut c = WallClock::unset();
        assert_eq!(c.timestamp(5_000), (5_000, true));
        assert!(!c.set(12, 5_000), "a time before 2000 is refused");
        assert!(!c.is_set());
        assert!(c.set(1_763_798_400_000, 10_000));
        assert_eq!(c.timestamp(10_500), (1_763_798_400_500, false));
        assert!(c.set(1_763_798_401_000, 10_600));
        assert_eq!(c.timestamp(10_600), (1_763_798_401_000, false));
    }
}
