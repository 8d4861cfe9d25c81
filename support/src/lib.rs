//! foreman-support: what foreman's examples and benches share, kept out of
//! the library crates.
//!
//! - [`demo`]: the quickstart (LLM-like and tool-like workers, concurrent
//!   callers, a live progress bar, a per-worker report, an SVG chart, the
//!   command-line flags), run by every adapter's `quickstart` example.
//! - [`bench`](mod@bench): the benches' handlers and request, and the one closed-loop
//!   throughput harness that every adapter's throughput bench runs on its
//!   own runtime. The harness reads its knobs (`FOREMAN_BENCH_*`) from the
//!   environment; see [`bench::Knobs`].
//! - [`Rng`]: the one random number generator of both, always built from a
//!   seed.
//! - the `bench_table` binary: prints the markdown tables of
//!   `docs/BENCHMARKS.md` from criterion's results and the throughput
//!   benches' output.
//!
//! The adapters use this crate as a dev-dependency only; it is not
//! published.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::time::Duration;

use foreman_driver::Runtime;

pub mod bench;
pub mod demo;

/// A small deterministic random number generator (fastrand's wyrand),
/// always built from an explicit seed, never from the OS.
#[derive(Debug, Clone)]
pub struct Rng(fastrand::Rng);

impl Rng {
    /// A generator seeded with `seed`: the same seed gives the same numbers.
    pub fn new(seed: u64) -> Self {
        Rng(fastrand::Rng::with_seed(seed))
    }

    /// A uniform value in `0..n` (`0` when `n` is `0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.0.u64(..n)
        }
    }

    /// A uniform value in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.0.f64()
    }

    /// A log-normal duration with the given median and shape (a heavy
    /// right tail), by the Box-Muller transform.
    pub fn lognormal(&mut self, median_ms: f64, sigma: f64) -> Duration {
        let (u1, u2) = (self.unit().max(1e-12), self.unit());
        let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        Duration::from_secs_f64(median_ms * (sigma * normal).exp() / 1000.0)
    }
}

/// Waits `duration` on `runtime`'s timer.
pub async fn sleep<R: Runtime>(runtime: &R, duration: Duration) {
    let mut timer = runtime.new_timer(runtime.now() + duration);
    futures::future::poll_fn(|cx| timer.as_mut().poll(cx)).await;
}

/// The value at percentile `p` (0 to 100) of `sorted` (ascending), by
/// nearest rank rounded down; `None` when it is empty.
pub fn percentile(sorted: &[u64], p: usize) -> Option<u64> {
    sorted
        .get(sorted.len().saturating_sub(1) * p.min(100) / 100)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_numbers_and_another_seed_others() {
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..8).map(|_| rng.below(1 << 40)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn draws_stay_in_their_ranges() {
        let mut rng = Rng::new(1);
        for _ in 0..1000 {
            assert!(rng.below(20) < 20);
            assert!((0.0..1.0).contains(&rng.unit()));
            assert!(rng.lognormal(40.0, 0.9) > Duration::ZERO);
        }
        assert_eq!(rng.below(0), 0);
    }

    #[test]
    fn percentiles_are_nearest_ranks_rounded_down() {
        let values: Vec<u64> = (1..=101).collect();
        assert_eq!(percentile(&values, 0), Some(1));
        assert_eq!(percentile(&values, 50), Some(51));
        assert_eq!(percentile(&values, 99), Some(100));
        assert_eq!(percentile(&values, 100), Some(101));
        assert_eq!(percentile(&values, 250), Some(101));
        assert_eq!(percentile(&[], 50), None);
    }
}
