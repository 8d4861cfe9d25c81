//! The ejection-time arithmetic: exponential in the times a worker was
//! ejected, capped, jittered, and decaying with sustained health. Pure
//! functions, so that proptests can check them apart from the machine.

use std::time::Duration;

/// The highest exponent kept: `2^32` times any non-zero base saturates
/// every realistic cap.
pub(crate) const MAX_EXPONENT: u32 = 32;

/// `base × 2^times`, at most `max` (saturating).
pub fn ejection_time(times: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(times.min(MAX_EXPONENT))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

/// `time` lengthened by `draw` thousandths of it, where `draw` is at most
/// `permille` (the jitter actually drawn).
pub fn with_jitter(time: Duration, permille: u32, draw: u32) -> Duration {
    let extra = time.saturating_mul(draw.min(permille)) / 1000;
    time.saturating_add(extra)
}

/// The exponent left after `healthy_for` of sustained health: one doubling
/// fewer per full `decay_after` (a zero `decay_after` never decays).
pub fn decayed(times: u32, healthy_for: Duration, decay_after: Duration) -> u32 {
    if decay_after.is_zero() {
        return times;
    }
    let spans = healthy_for.as_nanos() / decay_after.as_nanos();
    let spans = u32::try_from(spans).unwrap_or(u32::MAX);
    times.saturating_sub(spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_time_doubles_then_caps() {
        let s = Duration::from_secs;
        assert_eq!(ejection_time(0, s(5), s(60)), s(5));
        assert_eq!(ejection_time(1, s(5), s(60)), s(10));
        assert_eq!(ejection_time(3, s(5), s(60)), s(40));
        assert_eq!(ejection_time(4, s(5), s(60)), s(60));
        assert_eq!(ejection_time(u32::MAX, s(5), s(60)), s(60));
        assert_eq!(
            ejection_time(u32::MAX, Duration::MAX, Duration::MAX),
            Duration::MAX
        );
    }

    #[test]
    fn jitter_stays_within_its_permille() {
        let s = Duration::from_secs;
        assert_eq!(with_jitter(s(10), 100, 0), s(10));
        assert_eq!(with_jitter(s(10), 100, 100), s(11));
        assert_eq!(with_jitter(s(10), 100, 500), s(11));
        assert_eq!(with_jitter(Duration::MAX, 1000, 1000), Duration::MAX);
    }

    #[test]
    fn decay_takes_one_doubling_per_span() {
        let s = Duration::from_secs;
        assert_eq!(decayed(3, s(59), s(60)), 3);
        assert_eq!(decayed(3, s(60), s(60)), 2);
        assert_eq!(decayed(3, s(1000), s(60)), 0);
        assert_eq!(decayed(3, s(1000), Duration::ZERO), 3);
    }
}
