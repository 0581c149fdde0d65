//! An instant as the rules compare it: UTC nanoseconds since the Unix epoch, in an `i64`.
//!
//! `time`'s `OffsetDateTime` brings both sides to UTC on every comparison, and a window's
//! binary searches and look-backs compare many instants per reading: profiled under the
//! engine ceiling, those conversions were a fifth of the engine's evaluation. An `At`
//! compares as an integer. Instants before 1677 or after 2262 saturate; the rules never see
//! one, because a device clock that far off is implausible and its reading takes the time it
//! was received instead (see `clock_bad`).

use std::fmt;
use std::ops::{Add, AddAssign, Sub};

use time::{Duration, OffsetDateTime};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct At(i64);

const NANOS_PER_DAY: i64 = 86_400 * 1_000_000_000;

fn saturate(nanos: i128) -> i64 {
    i64::try_from(nanos).unwrap_or(if nanos < 0 { i64::MIN } else { i64::MAX })
}

impl At {
    /// The instant as a date-time in UTC.
    pub fn to_datetime(self) -> OffsetDateTime {
        // Every i64 of nanoseconds is within `OffsetDateTime`'s range.
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// The UTC day it falls on, as days since the Unix epoch.
    pub fn day(self) -> i64 {
        self.0.div_euclid(NANOS_PER_DAY)
    }
}

impl From<OffsetDateTime> for At {
    fn from(t: OffsetDateTime) -> At {
        At(saturate(t.unix_timestamp_nanos()))
    }
}

impl Sub for At {
    type Output = Duration;

    fn sub(self, earlier: At) -> Duration {
        Duration::nanoseconds(self.0.saturating_sub(earlier.0))
    }
}

impl Sub<Duration> for At {
    type Output = At;

    fn sub(self, d: Duration) -> At {
        At(self.0.saturating_sub(saturate(d.whole_nanoseconds())))
    }
}

impl Add<Duration> for At {
    type Output = At;

    fn add(self, d: Duration) -> At {
        At(self.0.saturating_add(saturate(d.whole_nanoseconds())))
    }
}

impl AddAssign<Duration> for At {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl fmt::Debug for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_datetime())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn compares_and_subtracts_as_the_date_times_do() {
        let a = datetime!(2026-03-29 01:30 UTC);
        let b = datetime!(2026-03-29 03:30 +02:00);
        assert_eq!(At::from(a), At::from(b), "the same instant in two offsets");
        let c = datetime!(2026-03-29 01:30:00.000_000_700 UTC);
        assert!(At::from(c) > At::from(a));
        assert_eq!(At::from(c) - At::from(a), c - a);
        assert_eq!(
            At::from(a) - Duration::days(15),
            At::from(a - Duration::days(15))
        );
        assert_eq!(
            (At::from(a) + Duration::minutes(3)).to_datetime(),
            a + Duration::minutes(3)
        );
        assert_eq!(At::from(b).to_datetime(), a);
    }

    #[test]
    fn days_are_utc_days() {
        let late = At::from(datetime!(2026-01-10 23:59:59.999 UTC));
        let next = At::from(datetime!(2026-01-11 00:00 UTC));
        assert_eq!(next.day() - late.day(), 1);
        assert_eq!(At::from(datetime!(1969-12-31 12:00 UTC)).day(), -1);
        // The same UTC day, whatever the offset it was written in.
        assert_eq!(
            At::from(datetime!(2026-01-11 00:30 +01:00)).day(),
            late.day()
        );
    }

    #[test]
    fn far_instants_saturate_instead_of_wrapping() {
        let far = At::from(datetime!(9999-12-31 23:59 UTC));
        let early = At::from(datetime!(-9999-01-01 00:00 UTC));
        assert!(far > At::from(datetime!(2262-01-01 00:00 UTC)));
        assert!(early < At::from(datetime!(1678-01-01 00:00 UTC)));
        assert_eq!(far + Duration::days(1), far);
        assert!(far - early > Duration::ZERO);
    }
}
