//! Per-worker latency functions of virtual time ([`LatencyModel`]): what
//! the named scenarios' workers take to answer, shared by the simulator
//! and the tokio adapter's `routing_scenarios` example, so that both run
//! the same workers.

use std::time::Duration;

use crate::rng::Rng;

/// Odd constant that separates the generator streams of workers.
const STREAM_STEP: u64 = 0x9E37_79B9_7F4A_7C15;

/// A worker turning slower from some instant on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slowdown {
    /// The worker, by index.
    pub worker: usize,
    /// From this virtual time on (since the run began)…
    pub from: Duration,
    /// …its latencies are multiplied by this.
    pub factor: u32,
}

/// How long each worker takes to answer a request that starts at a given
/// virtual time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyModel {
    /// Every worker, always this long.
    Fixed(Duration),
    /// Worker `i` of `n` always takes `fastest × (slowest / fastest)^(i / (n − 1))`:
    /// a geometric spread, no noise.
    Spread {
        /// Worker 0's latency.
        fastest: Duration,
        /// The last worker's latency.
        slowest: Duration,
    },
    /// LLM-like heavy tails: worker `i` draws `median_i × e^(σZ)` (`Z`
    /// standard normal), its median spread geometrically as in
    /// [`LatencyModel::Spread`], times the slowdown's factor once it
    /// applies.
    LogNormal {
        /// Worker 0's median.
        fastest_median: Duration,
        /// The last worker's median.
        slowest_median: Duration,
        /// σ of the underlying normal, in thousandths.
        sigma_permille: u32,
        /// A worker turning slower midway, if any.
        slowdown: Option<Slowdown>,
    },
}

/// `fastest × (slowest / fastest)^(worker / (workers − 1))`.
fn geometric(fastest: Duration, slowest: Duration, worker: usize, workers: usize) -> f64 {
    let (lo, hi) = (fastest.as_secs_f64(), slowest.as_secs_f64());
    if workers < 2 || lo <= 0.0 {
        return lo;
    }
    lo * (hi / lo).powf(worker as f64 / (workers - 1) as f64)
}

/// Seconds as a duration, clamped to `0 ..= 1e6` seconds.
fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 1e6))
}

impl LatencyModel {
    /// The slowdown factor for `worker` at `at`.
    fn factor(&self, worker: usize, at: Duration) -> f64 {
        match self {
            LatencyModel::LogNormal {
                slowdown: Some(slow),
                ..
            } if slow.worker == worker && at >= slow.from => f64::from(slow.factor),
            _ => 1.0,
        }
    }

    /// σ of the noise (zero for the noiseless models).
    fn sigma(&self) -> f64 {
        match self {
            LatencyModel::LogNormal { sigma_permille, .. } => f64::from(*sigma_permille) / 1000.0,
            _ => 0.0,
        }
    }

    /// The median latency of `worker` (of `workers`) for a request
    /// starting at `at`, in seconds.
    fn median_secs(&self, worker: usize, workers: usize, at: Duration) -> f64 {
        match *self {
            LatencyModel::Fixed(latency) => latency.as_secs_f64(),
            LatencyModel::Spread { fastest, slowest } => {
                geometric(fastest, slowest, worker, workers)
            }
            LatencyModel::LogNormal {
                fastest_median,
                slowest_median,
                ..
            } => {
                geometric(fastest_median, slowest_median, worker, workers) * self.factor(worker, at)
            }
        }
    }

    /// The median latency of `worker` (of `workers`) for a request
    /// starting at `at`.
    pub fn median(&self, worker: usize, workers: usize, at: Duration) -> Duration {
        secs(self.median_secs(worker, workers, at))
    }

    /// The mean latency of `worker` (of `workers`) for a request starting
    /// at `at`: the worker's true current latency as a clairvoyant
    /// scheduler knows it (the noise of one request is not known).
    pub fn mean(&self, worker: usize, workers: usize, at: Duration) -> Duration {
        let sigma = self.sigma();
        secs(self.median_secs(worker, workers, at) * (sigma * sigma / 2.0).exp())
    }

    /// One draw of the latency of `worker` (of `workers`) for a request
    /// starting at `at`, from that worker's own stream
    /// ([`worker_stream`]), at least a microsecond.
    pub fn sample(&self, worker: usize, workers: usize, at: Duration, rng: &mut Rng) -> Duration {
        let median = self.median_secs(worker, workers, at);
        let sigma = self.sigma();
        let s = if sigma > 0.0 {
            rng.lognormal(median, sigma)
        } else {
            median
        };
        secs(s).max(Duration::from_micros(1))
    }
}

/// The generator of `worker`'s draws of kind `stream` (0: latencies, 1:
/// faults) in a run seeded with `seed`: each worker draws from its own
/// stream, so the `n`-th request a worker runs takes the same draw in
/// every run, whichever policy sent it there.
pub fn worker_stream(seed: u64, worker: usize, stream: u64) -> Rng {
    let index = (worker as u64 + 1).wrapping_mul(2).wrapping_add(stream);
    Rng::new(seed ^ index.wrapping_mul(STREAM_STEP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_runs_geometrically_from_the_fastest_to_the_slowest() {
        let model = LatencyModel::Spread {
            fastest: Duration::from_millis(1),
            slowest: Duration::from_secs(1),
        };
        let at = Duration::ZERO;
        assert_eq!(model.median(0, 10, at), Duration::from_millis(1));
        let third = model.median(3, 10, at).as_secs_f64();
        assert!((third - 0.010).abs() < 1e-9, "{third}");
        let last = model.median(9, 10, at).as_secs_f64();
        assert!((last - 1.0).abs() < 1e-9, "{last}");
        assert_eq!(model.mean(5, 10, at), model.median(5, 10, at));
    }

    #[test]
    fn a_slowdown_applies_to_its_worker_from_its_instant() {
        let model = LatencyModel::LogNormal {
            fastest_median: Duration::from_millis(100),
            slowest_median: Duration::from_millis(100),
            sigma_permille: 0,
            slowdown: Some(Slowdown {
                worker: 2,
                from: Duration::from_secs(5),
                factor: 10,
            }),
        };
        let before = Duration::from_millis(4_999);
        let after = Duration::from_secs(5);
        assert_eq!(model.median(2, 4, before), Duration::from_millis(100));
        assert_eq!(model.median(2, 4, after), Duration::from_secs(1));
        assert_eq!(model.median(1, 4, after), Duration::from_millis(100));
    }

    #[test]
    fn lognormal_draws_centre_on_the_median() {
        let model = LatencyModel::LogNormal {
            fastest_median: Duration::from_millis(200),
            slowest_median: Duration::from_millis(200),
            sigma_permille: 600,
            slowdown: None,
        };
        let mut rng = worker_stream(7, 0, 0);
        let mut draws: Vec<Duration> = (0..4001)
            .map(|_| model.sample(0, 1, Duration::ZERO, &mut rng))
            .collect();
        draws.sort();
        let median = draws[2000].as_secs_f64();
        assert!((0.18..0.22).contains(&median), "median {median}");
        let mean = draws.iter().map(Duration::as_secs_f64).sum::<f64>() / draws.len() as f64;
        let expected = model.mean(0, 1, Duration::ZERO).as_secs_f64();
        assert!((mean / expected - 1.0).abs() < 0.05, "{mean} vs {expected}");
    }

    #[test]
    fn each_worker_draws_from_its_own_stream() {
        let mut a = worker_stream(1, 0, 0);
        let mut b = worker_stream(1, 1, 0);
        let mut c = worker_stream(1, 0, 1);
        let mut again = worker_stream(1, 0, 0);
        let first = a.next_u64();
        assert_ne!(first, b.next_u64());
        assert_ne!(first, c.next_u64());
        assert_eq!(first, again.next_u64());
    }
}
