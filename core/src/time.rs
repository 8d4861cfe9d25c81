//! Time as the core sees it: a monotonic instant it is handed, never reads.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// An instant on the pool's own monotonic clock, in nanoseconds since the
/// driver's chosen epoch.
///
/// The core never reads a clock: every input carries a `Time`. Drivers usually
/// take `Instant::now() - epoch`. Arithmetic saturates instead of
/// overflowing, so no input can make the core panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(u64);

impl Time {
    /// The epoch.
    pub const ZERO: Time = Time(0);
    /// The largest representable instant. The core treats a deadline that
    /// lands here (by saturation) as "never": no timer fires at it.
    pub const MAX: Time = Time(u64::MAX);

    /// An instant `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Time(nanos)
    }

    /// An instant `millis` milliseconds after the epoch (saturating).
    pub const fn from_millis(millis: u64) -> Self {
        Time(millis.saturating_mul(1_000_000))
    }

    /// An instant `since_epoch` after the epoch (saturating at [`Time::MAX`]).
    pub fn from_duration(since_epoch: Duration) -> Self {
        Time(u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time since the epoch.
    pub const fn since_epoch(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// `self + duration`, saturating at [`Time::MAX`].
    pub fn saturating_add(self, duration: Duration) -> Time {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(nanos))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, rhs: Duration) -> Time {
        self.saturating_add(rhs)
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    fn sub(self, rhs: Time) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.since_epoch())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Time::MAX + Duration::from_secs(1), Time::MAX);
        assert_eq!(Time::ZERO + Duration::MAX, Time::MAX);
        assert_eq!(Time::ZERO - Time::from_millis(5), Duration::ZERO);
        assert_eq!(
            Time::from_millis(7) - Time::from_millis(5),
            Duration::from_millis(2)
        );
        assert_eq!(Time::from_millis(u64::MAX), Time::MAX);
        assert_eq!(Time::from_duration(Duration::MAX), Time::MAX);
    }

    #[test]
    fn displays_as_the_duration_since_the_epoch() {
        assert_eq!(Time::from_millis(1500).to_string(), "1.5s");
        assert_eq!(Time::from_nanos(250).to_string(), "250ns");
    }
}
