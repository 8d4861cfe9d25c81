//! [`PeakEwma`]: one worker's run-time estimate for
//! [`RoutingPolicy::PeakEwma`](crate::RoutingPolicy::PeakEwma), after
//! Finagle's and tower's peak-EWMA balancers.
//!
//! The estimate is a moving average of the worker's run times, in
//! nanoseconds, with a "peak" rule and a decay by elapsed time:
//! - a sample **above** the estimate replaces it at once, so a worker that
//!   turns slow is avoided from its first slow run;
//! - a sample at or **below** it pulls it towards the sample with weight
//!   `1 - exp(-dt / tau)`, `dt` the time since the previous sample and
//!   `tau` the time constant ([`PoolConfig::ewma_decay`](crate::PoolConfig::ewma_decay)):
//!   two samples at the same instant leave the estimate as it was, and
//!   a long quiet spell lets one fast run count fully;
//! - a read at `now` ([`PeakEwma::estimate`]) decays the stored value
//!   towards zero by `exp(-(now - last sample) / tau)` without changing it
//!   (what Finagle's read does), so a worker that stopped getting work
//!   because it was slow looks cheaper as time passes and is tried again.
//!
//! Floating point is used inside this state only; the configuration holds
//! durations.

use std::time::Duration;

use crate::time::Time;

/// One worker's peak-EWMA run-time estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PeakEwma {
    /// The estimate in nanoseconds at `stamp`; `None` before the first
    /// sample.
    estimate: Option<f64>,
    /// When the last sample was taken.
    stamp: Time,
}

impl Default for PeakEwma {
    fn default() -> Self {
        PeakEwma {
            estimate: None,
            stamp: Time::ZERO,
        }
    }
}

impl PeakEwma {
    /// Whether a sample was taken.
    #[cfg(test)]
    pub(crate) fn is_sampled(&self) -> bool {
        self.estimate.is_some()
    }

    /// Takes a run of `run` that ended at `now` into the estimate: a
    /// longer run than the estimate replaces it, a shorter one pulls it
    /// towards itself by the time elapsed since the last sample.
    pub(crate) fn observe(&mut self, now: Time, run: Duration, tau: Duration) {
        let sample = nanos(run);
        let next = match self.estimate {
            None => sample,
            Some(current) if sample >= current => sample,
            Some(current) => {
                let weight = decay(now.saturating_duration_since(self.stamp), tau);
                current * weight + sample * (1.0 - weight)
            }
        };
        self.estimate = Some(next.max(0.0));
        if now > self.stamp {
            self.stamp = now;
        }
    }

    /// Runs per nanosecond at the stored estimate (at least
    /// [`MIN_ESTIMATE`] nanoseconds a run): 0 before any sample.
    pub(crate) fn rate(&self) -> f64 {
        self.estimate
            .map_or(0.0, |estimate| 1.0 / estimate.max(MIN_ESTIMATE))
    }

    /// Takes a failed run of `run` that ended at `now`: charged as a run
    /// at least as long as the estimate, so that failing fast never makes
    /// a worker look faster (Finagle's failure penalty); the first
    /// sample, a failure, counts as it ran.
    pub(crate) fn observe_failure(&mut self, now: Time, run: Duration, tau: Duration) {
        let charged = match self.estimate {
            Some(current) if current > nanos(run) => Duration::from_nanos(current.ceil() as u64),
            _ => run,
        };
        self.observe(now, charged, tau);
    }

    /// The estimate at `now` in nanoseconds, decayed towards zero since the
    /// last sample; `unsampled` (in nanoseconds) before any sample.
    pub(crate) fn estimate(&self, now: Time, tau: Duration, unsampled: f64) -> f64 {
        match self.estimate {
            None => unsampled,
            Some(value) => value * decay(now.saturating_duration_since(self.stamp), tau),
        }
    }
}

/// The shortest run time, in nanoseconds, a throughput is computed from
/// (a microsecond), so that zero-length runs do not swamp the sum.
const MIN_ESTIMATE: f64 = 1_000.0;

/// `exp(-elapsed / tau)`: 1 for no time, towards 0 for a long time.
fn decay(elapsed: Duration, tau: Duration) -> f64 {
    let tau = nanos(tau);
    if tau <= 0.0 {
        return 0.0;
    }
    (-nanos(elapsed) / tau).exp()
}

/// A duration in nanoseconds, as a float.
pub(crate) fn nanos(duration: Duration) -> f64 {
    duration.as_nanos() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TAU: Duration = Duration::from_secs(10);

    fn at(ms: u64) -> Time {
        Time::ZERO + Duration::from_millis(ms)
    }

    fn sampled(ms: u64, when: Time) -> PeakEwma {
        let mut ewma = PeakEwma::default();
        ewma.observe(when, Duration::from_millis(ms), TAU);
        ewma
    }

    #[test]
    fn an_unsampled_worker_costs_the_penalty_and_a_first_sample_replaces_it() {
        let mut ewma = PeakEwma::default();
        assert!(!ewma.is_sampled());
        assert_eq!(ewma.estimate(at(5), TAU, 7.0), 7.0);
        ewma.observe(at(5), Duration::from_millis(3), TAU);
        assert!(ewma.is_sampled());
        assert_eq!(ewma.estimate(at(5), TAU, 7.0), 3e6);
    }

    #[test]
    fn a_faster_run_after_one_time_constant_pulls_the_estimate_most_of_the_way() {
        let mut ewma = sampled(1_000, at(0));
        ewma.observe(at(10_000), Duration::from_millis(0), TAU);
        let expected = 1e9 * (-1.0f64).exp();
        let got = ewma.estimate(at(10_000), TAU, 0.0);
        assert!((got - expected).abs() < 1.0, "{got} != {expected}");
    }

    #[test]
    fn reading_later_decays_towards_zero_without_changing_the_state() {
        let ewma = sampled(1_000, at(0));
        let later = ewma.estimate(at(10_000), TAU, 0.0);
        assert!((later - 1e9 * (-1.0f64).exp()).abs() < 1.0);
        assert_eq!(ewma.estimate(at(0), TAU, 0.0), 1e9);
    }

    #[test]
    fn a_fast_failure_is_charged_the_estimate_not_its_run() {
        let mut ewma = sampled(400, at(0));
        ewma.observe_failure(at(20_000), Duration::from_millis(10), TAU);
        assert_eq!(ewma.estimate(at(20_000), TAU, 0.0), 4e8);
        // A slower failure is taken at once, as a slower run is.
        ewma.observe_failure(at(20_000), Duration::from_millis(900), TAU);
        assert_eq!(ewma.estimate(at(20_000), TAU, 0.0), 9e8);
        // A first sample that fails counts as it ran.
        let mut fresh = PeakEwma::default();
        fresh.observe_failure(at(0), Duration::from_millis(10), TAU);
        assert_eq!(fresh.estimate(at(0), TAU, 0.0), 1e7);
    }

    #[test]
    fn the_rate_is_the_inverse_of_the_stored_estimate() {
        assert_eq!(PeakEwma::default().rate(), 0.0);
        let ewma = sampled(4, at(0));
        assert!((ewma.rate() - 1.0 / 4e6).abs() < 1e-18);
        // Zero-length runs count as a microsecond.
        let instant = sampled(0, at(0));
        assert_eq!(instant.rate(), 1.0 / MIN_ESTIMATE);
    }

    proptest! {
        #[test]
        #[cfg_attr(miri, ignore)]
        fn failures_never_lower_the_estimate(
            start in 1u64..1_000_000,
            failures in proptest::collection::vec((0u64..2_000_000, 1u64..60_000), 1..30),
        ) {
            let mut ewma = sampled(start, at(0));
            let mut now = 0;
            for (run, gap) in failures {
                now += gap;
                let before = ewma.estimate(at(now), TAU, 0.0);
                ewma.observe_failure(at(now), Duration::from_millis(run), TAU);
                let after = ewma.estimate(at(now), TAU, 0.0);
                prop_assert!(after >= before * (1.0 - 1e-12), "{} fell below {}", after, before);
            }
        }

        #[test]
        fn the_estimate_is_never_negative(
            runs in proptest::collection::vec((0u64..5_000_000_000, 0u64..60_000), 1..40),
            read_after in 0u64..1_000_000,
        ) {
            let mut ewma = PeakEwma::default();
            let mut now = 0;
            for (run, gap) in runs {
                now += gap;
                ewma.observe(at(now), Duration::from_nanos(run), TAU);
                prop_assert!(ewma.estimate(at(now), TAU, 0.0) >= 0.0);
            }
            prop_assert!(ewma.estimate(at(now + read_after), TAU, 0.0) >= 0.0);
        }

        #[test]
        fn a_higher_sample_is_taken_at_once(
            first in 0u64..1_000_000, extra in 1u64..1_000_000, gap in 0u64..100_000,
        ) {
            let mut ewma = sampled(first, at(0));
            let higher = first + extra;
            ewma.observe(at(gap), Duration::from_millis(higher), TAU);
            prop_assert_eq!(ewma.estimate(at(gap), TAU, 0.0), higher as f64 * 1e6);
        }

        #[test]
        fn repeated_lower_samples_decay_monotonically_towards_them_and_never_below(
            start in 1u64..1_000_000, low_share in 0u64..100,
            gaps in proptest::collection::vec(1u64..30_000, 1..30),
        ) {
            let low = start * low_share / 100;
            let mut ewma = sampled(start, at(0));
            let mut now = 0;
            let mut previous = ewma.estimate(at(0), TAU, 0.0);
            for gap in gaps {
                now += gap;
                ewma.observe(at(now), Duration::from_millis(low), TAU);
                let value = ewma.estimate(at(now), TAU, 0.0);
                // Within float rounding: a convex combination of the two.
                prop_assert!(value <= previous * (1.0 + 1e-12), "{} rose above {}", value, previous);
                let floor = low as f64 * 1e6 * (1.0 - 1e-12);
                prop_assert!(value >= floor, "{} fell below {}", value, low);
                previous = value;
            }
        }

        #[test]
        fn a_lower_sample_at_the_same_instant_changes_nothing(
            start in 1u64..1_000_000, low_share in 0u64..100, when in 0u64..100_000,
        ) {
            let low = start * low_share / 100;
            let mut ewma = sampled(start, at(when));
            let before = ewma;
            ewma.observe(at(when), Duration::from_millis(low), TAU);
            prop_assert_eq!(ewma, before);
        }
    }
}
