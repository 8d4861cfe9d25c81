//! Hedging: when a still-running request gets a second attempt on another
//! worker ([`HedgePolicy`], [`HedgeDelay`]), and the per-worker run-time
//! quantile estimate a percentile delay reads ([`RunTimes`]).
//!
//! A request is hedged when all of these hold: the pool has a
//! [`HedgePolicy`] and its operation kind is one the policy hedges; no
//! circuit breaker chose its worker (a breaker must approve the worker of
//! every attempt); it has been hedged fewer than
//! [`HedgePolicy::max_hedges`] times; its current attempt has run for the
//! policy's delay and is still running; the pool is not shutting down;
//! another worker is idle (a hedge never waits in a queue); its deadline
//! leaves that worker time to run it; and the retry budget grants an extra
//! attempt (hedges and retries share one budget). The first attempt to
//! answer wins: the other is aborted, which counts against no worker, and a
//! completion it still reports is ignored. An attempt that fails
//! retryably while the other still runs is not an answer: its failure
//! counts against its worker and the request carries on with the other
//! attempt.
//!
//! # The run-time estimate
//! [`HedgeDelay::RunTimePercentile`] reads the first attempt's worker's
//! recent successful run times from a histogram of fixed buckets, four to
//! each doubling of time from 1 µs to about 4.9 h (a run outside is
//! counted in the nearest end bucket). A sample costs one bucket increment;
//! every [`HALF_LIFE`] samples every count is halved, so the estimate
//! follows a worker whose speed changes, the older samples weighing half
//! as much as the newer. The quantile reported is the upper edge of the
//! bucket where the cumulative count reaches the asked share, so for runs
//! within the range it is never below the sample quantile of the counts
//! held and at most a quarter above it (a bucket spans a quarter of its
//! octave's lower edge); a worker with fewer
//! than [`MIN_SAMPLES`] samples has no estimate (its requests are not
//! hedged).

use std::time::Duration;

use crate::protocol::WorkerOperation;
use crate::retries::kind_allowed;

/// When a running request gets a second attempt on another, idle worker.
///
/// Off unless set ([`PoolConfig::hedging`](crate::PoolConfig::hedging) is
/// `None` by default). The default policy hedges LLM calls, which are
/// idempotent, and not tool calls, whose side effects may not be, once an
/// attempt has run for the 95th percentile of its worker's recent run
/// times:
///
/// ```
/// use std::time::Duration;
///
/// use foreman_core::{HedgeDelay, HedgePolicy, PoolConfig};
///
/// let config = PoolConfig::default().with_hedging(Some(
///     HedgePolicy::default().with_delay(HedgeDelay::Fixed(Duration::from_millis(300))),
/// ));
/// assert_eq!(config.validate(), Ok(()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct HedgePolicy {
    /// How long an attempt runs before the request is hedged.
    pub delay: HedgeDelay,
    /// The most hedges one request gets (at least 1).
    pub max_hedges: u32,
    /// Whether LLM calls are hedged (default: yes).
    pub llm: bool,
    /// Whether tool calls are hedged (default: no).
    pub tools: bool,
}

/// How long an attempt runs before its request is hedged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HedgeDelay {
    /// A fixed delay (non-zero).
    Fixed(Duration),
    /// The given quantile, in thousandths (1..=999; 950 is the 95th
    /// percentile), of the recent successful run times of the worker
    /// running the attempt (see the module's docs for its error). A worker
    /// with too few samples yet gets no hedge.
    RunTimePercentile(u32),
}

impl Default for HedgePolicy {
    fn default() -> Self {
        Self {
            delay: HedgeDelay::RunTimePercentile(950),
            max_hedges: 1,
            llm: true,
            tools: false,
        }
    }
}

impl HedgePolicy {
    /// Sets [`delay`](Self::delay).
    #[must_use]
    pub fn with_delay(mut self, delay: HedgeDelay) -> Self {
        self.delay = delay;
        self
    }

    /// Sets [`max_hedges`](Self::max_hedges).
    #[must_use]
    pub fn with_max_hedges(mut self, max_hedges: u32) -> Self {
        self.max_hedges = max_hedges;
        self
    }

    /// Sets [`llm`](Self::llm).
    #[must_use]
    pub fn with_llm(mut self, llm: bool) -> Self {
        self.llm = llm;
        self
    }

    /// Sets [`tools`](Self::tools).
    #[must_use]
    pub fn with_tools(mut self, tools: bool) -> Self {
        self.tools = tools;
        self
    }

    /// Whether a request running `operation` may be hedged at all.
    pub fn covers(&self, operation: &WorkerOperation) -> bool {
        self.max_hedges > 0 && kind_allowed(operation, self.llm, self.tools)
    }

    /// Whether the estimate of [`HedgeDelay::RunTimePercentile`] is used.
    pub(crate) fn wants_run_times(&self) -> bool {
        matches!(self.delay, HedgeDelay::RunTimePercentile(_))
    }
}

/// Buckets per doubling of time.
const PER_OCTAVE: u32 = 4;
/// The first bucket's lower edge: 2^10 ns (about 1 µs).
const FIRST_OCTAVE: u32 = 10;
/// Doublings covered: up to 2^44 ns (about 4.9 h).
const OCTAVES: u32 = 34;
/// Buckets in all.
const BUCKETS: usize = (PER_OCTAVE * OCTAVES) as usize;

/// Samples after which every count is halved.
pub(crate) const HALF_LIFE: u32 = 512;

/// Samples a worker needs before it has an estimate.
pub(crate) const MIN_SAMPLES: u32 = 16;

/// A worker's recent successful run times, as a decaying histogram of
/// fixed, logarithmic buckets (see the module's docs).
#[derive(Debug, Clone)]
pub(crate) struct RunTimes {
    counts: [u32; BUCKETS],
    /// The sum of `counts`.
    total: u32,
    /// Samples since the counts were last halved.
    since_halving: u32,
}

impl Default for RunTimes {
    fn default() -> Self {
        Self {
            counts: [0; BUCKETS],
            total: 0,
            since_halving: 0,
        }
    }
}

impl RunTimes {
    /// Counts one run of `run`: O(1) (the halving every [`HALF_LIFE`]
    /// samples is O(buckets), a constant).
    pub(crate) fn record(&mut self, run: Duration) {
        let index = bucket_of(run);
        if let Some(count) = self.counts.get_mut(index) {
            *count = count.saturating_add(1);
            self.total = self.total.saturating_add(1);
        }
        self.since_halving += 1;
        if self.since_halving >= HALF_LIFE {
            self.since_halving = 0;
            self.total = 0;
            for count in &mut self.counts {
                *count /= 2;
                self.total += *count;
            }
        }
    }

    /// The `permille` quantile's estimate: the upper edge of the bucket
    /// where the cumulative count first reaches `permille / 1000` of the
    /// total; `None` with fewer than [`MIN_SAMPLES`] counted. O(buckets).
    pub(crate) fn quantile(&self, permille: u32) -> Option<Duration> {
        if self.total < MIN_SAMPLES {
            return None;
        }
        let permille = u64::from(permille.clamp(1, 999));
        // The smallest count c with c / total >= permille / 1000.
        let wanted = (u64::from(self.total) * permille).div_ceil(1000).max(1);
        let mut seen = 0u64;
        for (index, count) in self.counts.iter().enumerate() {
            seen += u64::from(*count);
            if seen >= wanted {
                return Some(upper_edge(index));
            }
        }
        Some(upper_edge(BUCKETS - 1))
    }
}

/// The bucket a run falls in (the nearest end bucket outside the range).
fn bucket_of(run: Duration) -> usize {
    let nanos = u64::try_from(run.as_nanos()).unwrap_or(u64::MAX).max(1);
    let octave = 63 - nanos.leading_zeros();
    if octave < FIRST_OCTAVE {
        return 0;
    }
    if octave >= FIRST_OCTAVE + OCTAVES {
        return BUCKETS - 1;
    }
    // The two bits below the leading one pick the quarter of the octave.
    let quarter = ((nanos >> (octave - 2)) & 0b11) as u32;
    ((octave - FIRST_OCTAVE) * PER_OCTAVE + quarter) as usize
}

/// The upper edge of bucket `index`, in nanoseconds: `2^octave × (1 +
/// (quarter + 1) / 4)`.
fn upper_edge(index: usize) -> Duration {
    let index = index as u32;
    let octave = FIRST_OCTAVE + index / PER_OCTAVE;
    let quarter = u64::from(index % PER_OCTAVE);
    let base = 1u64 << octave;
    Duration::from_nanos(base + (base >> 2) * (quarter + 1))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::{bucket_of, upper_edge, RunTimes, BUCKETS, HALF_LIFE, MIN_SAMPLES};

    #[test]
    fn no_estimate_before_enough_samples() {
        let mut times = RunTimes::default();
        for _ in 0..MIN_SAMPLES - 1 {
            times.record(Duration::from_millis(10));
        }
        assert_eq!(times.quantile(950), None);
        times.record(Duration::from_millis(10));
        let estimate = times.quantile(950).expect("enough samples");
        assert!(estimate >= Duration::from_millis(10), "{estimate:?}");
        assert!(estimate <= Duration::from_millis(12), "{estimate:?}");
    }

    #[test]
    fn the_95th_percentile_of_a_known_mix_lands_in_its_bucket() {
        let mut times = RunTimes::default();
        // 90 fast runs, 10 slow ones: p95 is a slow one.
        for _ in 0..90 {
            times.record(Duration::from_millis(5));
        }
        for _ in 0..10 {
            times.record(Duration::from_millis(400));
        }
        let p95 = times.quantile(950).expect("enough samples");
        assert!(p95 >= Duration::from_millis(400) && p95 <= Duration::from_millis(480));
        let p50 = times.quantile(500).expect("enough samples");
        assert!(p50 >= Duration::from_millis(5) && p50 <= Duration::from_millis(6));
    }

    #[test]
    fn old_samples_fade_once_the_worker_changes_speed() {
        let mut times = RunTimes::default();
        for _ in 0..HALF_LIFE {
            times.record(Duration::from_millis(100));
        }
        for _ in 0..4 * HALF_LIFE {
            times.record(Duration::from_millis(1));
        }
        let p95 = times.quantile(950).expect("enough samples");
        assert!(p95 < Duration::from_millis(2), "{p95:?}");
    }

    #[test]
    fn runs_outside_the_range_fall_in_the_end_buckets() {
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_nanos(3)), 0);
        assert_eq!(bucket_of(Duration::MAX), BUCKETS - 1);
        assert_eq!(bucket_of(Duration::from_secs(1 << 20)), BUCKETS - 1);
    }

    proptest! {
        /// Within the range, a run's bucket holds it: its upper edge is
        /// above the run and at most 1.25 times it, and the bucket before
        /// ends at or below it.
        #[test]
        #[cfg_attr(miri, ignore)]
        fn a_bucket_bounds_its_runs_within_a_quarter_octave(nanos in 1u64 << 10..1u64 << 44) {
            let index = bucket_of(Duration::from_nanos(nanos));
            let upper = upper_edge(index).as_nanos() as f64;
            prop_assert!(upper > nanos as f64);
            prop_assert!(upper <= nanos as f64 * 1.25, "{upper} for {nanos}");
            if index > 0 {
                prop_assert!(upper_edge(index - 1).as_nanos() <= u128::from(nanos));
            }
        }

        /// On any sample set within the range (fewer than the half-life, so
        /// nothing fades), the estimate is at least the exact sample
        /// quantile and at most 25 % above it; any durations and quantiles
        /// never panic.
        #[test]
        #[cfg_attr(miri, ignore)]
        fn the_estimate_bounds_the_sample_quantile(
            runs in proptest::collection::vec(1u64 << 10..1u64 << 40, 16..400),
            permille in 1u32..=999,
        ) {
            let mut times = RunTimes::default();
            for run in &runs {
                times.record(Duration::from_nanos(*run));
            }
            let mut sorted = runs.clone();
            sorted.sort_unstable();
            let rank = (sorted.len() as u64 * u64::from(permille)).div_ceil(1000).max(1);
            let exact = sorted[rank as usize - 1] as f64;
            let estimate = times.quantile(permille).expect("enough samples").as_nanos() as f64;
            prop_assert!(estimate >= exact, "{estimate} below {exact}");
            prop_assert!(estimate <= exact * 1.25, "{estimate} far above {exact}");
        }

        /// Whatever the durations, recording and asking never panic and
        /// the total stays the sum of the counts.
        #[test]
        #[cfg_attr(miri, ignore)]
        fn recording_any_runs_never_panics(
            runs in proptest::collection::vec(any::<u64>(), 0..1_200),
            permille in any::<u32>(),
        ) {
            let mut times = RunTimes::default();
            for run in runs {
                times.record(Duration::from_nanos(run));
            }
            let _ = times.quantile(permille);
            prop_assert_eq!(times.total, times.counts.iter().sum::<u32>());
        }
    }
}
