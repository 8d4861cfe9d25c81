//! Proptest properties of the recovery machine's backoff arithmetic
//! (`foreman_core::recovery`): the ejection time is monotone in the times a
//! worker was ejected until it reaches the cap, stays within
//! `[base, cap]`, jitter lengthens it by at most its permille, and decay
//! only ever lowers the exponent, by one per full span.

use std::time::Duration;

use foreman_core::recovery::{decayed, ejection_time, with_jitter};
use proptest::prelude::*;

fn duration() -> impl Strategy<Value = Duration> {
    (1u64..1_000_000_000_000).prop_map(Duration::from_nanos)
}

proptest! {
    #[test]
    fn ejection_time_doubles_until_the_cap(
        times in 0u32..80,
        base in duration(),
        extra in duration(),
    ) {
        let max = base.saturating_add(extra);
        let now = ejection_time(times, base, max);
        let next = ejection_time(times + 1, base, max);
        prop_assert!(now >= base.min(max) && now <= max);
        prop_assert!(next >= now, "monotone");
        if now < max {
            prop_assert!(next == now.saturating_mul(2).min(max), "doubles below the cap");
        } else {
            prop_assert_eq!(next, max);
        }
    }

    #[test]
    fn jitter_stays_within_its_permille(
        time in duration(),
        permille in 0u32..=1000,
        draw in 0u32..=2000,
    ) {
        let jittered = with_jitter(time, permille, draw);
        prop_assert!(jittered >= time);
        let most = time + time * permille / 1000;
        prop_assert!(jittered <= most, "{jittered:?} > {most:?}");
        prop_assert_eq!(with_jitter(time, permille, permille), most);
    }

    #[test]
    fn decay_lowers_the_exponent_by_one_per_span(
        times in 0u32..64,
        spans in 0u32..100,
        span in duration(),
        within in 0.0f64..1.0,
    ) {
        let healthy = span * spans + span.mul_f64(within).min(span - Duration::from_nanos(1));
        prop_assert_eq!(decayed(times, healthy, span), times.saturating_sub(spans));
        prop_assert!(decayed(times, healthy, span) <= times);
    }
}
