//! The named scenarios ([`ClosedLoop`]): closed-loop callers, workers
//! whose latency is a function of virtual time ([`LatencyModel`]) and
//! faults ([`Fault`]), each fixed down to its seed, so a run is its own
//! replay.

use std::time::Duration;

use super::latency::{LatencyModel, Slowdown};

/// A worker failing a share of the requests it runs, from some instant on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The worker, by index.
    pub worker: usize,
    /// Thousandths of its requests that fail.
    pub permille: u32,
    /// From this virtual time on.
    pub from: Duration,
    /// Whether its errors say the request may be retried.
    pub retryable: bool,
}

/// When the callers stop submitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this many submits (accepted or refused).
    Requests(u64),
    /// At this virtual time.
    RunFor(Duration),
}

/// A named, replayable scenario with closed-loop callers: each caller
/// submits a request, waits for its answer and submits the next at once
/// (after a refusal, after [`ClosedLoop::refusal_backoff`]). A worker
/// answers a request that starts at `t` after its latency at `t`
/// ([`LatencyModel`], drawn from the worker's own stream), or, when a
/// [`Fault`] makes it fail, with an error after [`ClosedLoop::fail_after`].
/// Every probe answers Healthy within a millisecond (a liveness check that
/// does not see the faults), so any ejection is the pool's own judgement
/// of the requests' outcomes.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedLoop {
    /// The name `sim --scenario` knows it by.
    pub name: &'static str,
    /// What it shows, in a sentence (the report's heading).
    pub about: &'static str,
    /// Workers.
    pub workers: usize,
    /// How long each worker takes.
    pub latency: LatencyModel,
    /// Which workers fail, how often, from when.
    pub faults: &'static [Fault],
    /// How soon a failing request's error comes back.
    pub fail_after: Duration,
    /// Closed-loop callers.
    pub callers: usize,
    /// When callers stop.
    pub stop: Stop,
    /// Every request's budget (its `timeout_ms`).
    pub budget: Duration,
    /// How long a refused caller waits before it submits again.
    pub refusal_backoff: Duration,
    /// The seed of the workers' draws (and the pool's generator).
    pub seed: u64,
    /// Every worker is healthy: any ejection fails the run, and so does a
    /// second of the run without a success.
    pub healthy: bool,
}

/// The LLM-like workers of scenarios 2–5: lognormal latencies with σ = 0.6
/// (p99 ≈ 4 × median), medians spread geometrically from 150 ms (worker 0)
/// to 450 ms (worker 9).
pub const LLM_LIKE: LatencyModel = llm_like(None);

/// [`LLM_LIKE`] with `slowdown`.
const fn llm_like(slowdown: Option<Slowdown>) -> LatencyModel {
    LatencyModel::LogNormal {
        fastest_median: Duration::from_millis(150),
        slowest_median: Duration::from_millis(450),
        sigma_permille: 600,
        slowdown,
    }
}

/// Requests of scenarios 1–5.
pub const REQUESTS: u64 = 5_000;

/// What scenarios 1–5 share: ten LLM-like workers, errors after 10 ms,
/// fifty callers, 5 000 requests, a 30 s budget, a 5 ms back-off after a
/// refusal.
const FIFTY_CALLERS_TEN_WORKERS: ClosedLoop = ClosedLoop {
    name: "",
    about: "",
    workers: 10,
    latency: LLM_LIKE,
    faults: &[],
    fail_after: Duration::from_millis(10),
    callers: 50,
    stop: Stop::Requests(REQUESTS),
    budget: Duration::from_secs(30),
    refusal_backoff: Duration::from_millis(5),
    seed: 0,
    healthy: false,
};

/// Workers `0..N`, each failing `permille` thousandths of its requests
/// from `from` on.
const fn first_workers_failing<const N: usize>(
    permille: u32,
    from: Duration,
    retryable: bool,
) -> [Fault; N] {
    let mut faults = [Fault {
        worker: 0,
        permille,
        from,
        retryable,
    }; N];
    let mut worker = 0;
    while worker < N {
        faults[worker].worker = worker;
        worker += 1;
    }
    faults
}

/// Ten workers failing half of their requests, retryably, from the start.
const EVERY_WORKER_HALF_RETRYABLE: [Fault; 10] = first_workers_failing(500, Duration::ZERO, true);

/// Workers 0–5 failing every request from 20 s on.
const SIX_OF_TEN_DOWN: [Fault; 6] = first_workers_failing(1000, Duration::from_secs(20), false);

impl ClosedLoop {
    /// Scenario 0, overload of healthy workers: two workers at 50 ms,
    /// eight callers with a 120 ms budget, 10 s (five times the offered
    /// load the workers can serve within budget). The pool must shed the
    /// excess by expiry and backpressure and never eject a worker, and
    /// requests must keep succeeding in every second.
    pub const OVERLOAD_OF_HEALTHY_WORKERS: ClosedLoop = ClosedLoop {
        name: "overload-of-healthy-workers",
        about: "two healthy 50 ms workers, eight callers with a 120 ms budget, 10 s",
        workers: 2,
        latency: LatencyModel::Fixed(Duration::from_millis(50)),
        faults: &[],
        fail_after: Duration::from_millis(10),
        callers: 8,
        stop: Stop::RunFor(Duration::from_secs(10)),
        budget: Duration::from_millis(120),
        refusal_backoff: Duration::from_millis(5),
        seed: 0,
        healthy: true,
    };

    /// Scenario 1: ten workers whose latencies spread geometrically from
    /// 1 ms to 1 s (1, 2.15, 4.6, 10, 21.5, 46, 100, 215, 464, 1000 ms,
    /// no noise), fifty callers, 5 000 requests, a 30 s budget.
    pub const SPREAD_LATENCIES: ClosedLoop = ClosedLoop {
        name: "spread-latencies",
        about: "ten workers at 1 ms … 1 s (geometric), fifty callers, 5 000 requests, 30 s budget",
        latency: LatencyModel::Spread {
            fastest: Duration::from_millis(1),
            slowest: Duration::from_secs(1),
        },
        seed: 1,
        ..FIFTY_CALLERS_TEN_WORKERS
    };

    /// Scenario 2: the LLM-like workers ([`LLM_LIKE`]), worker 0 (the
    /// fastest) turning ten times slower at 80 s (about midway for the
    /// late-binding policies), fifty callers, 5 000 requests, a 30 s
    /// budget.
    pub const LLM_LIKE_SLOWDOWN: ClosedLoop = ClosedLoop {
        name: "llm-like-slowdown",
        about:
            "ten lognormal workers (medians 150–450 ms, σ 0.6), the fastest 10× slower from 80 s, \
                fifty callers, 5 000 requests, 30 s budget",
        latency: llm_like(Some(Slowdown {
            worker: 0,
            from: Duration::from_secs(80),
            factor: 10,
        })),
        seed: 2,
        ..FIFTY_CALLERS_TEN_WORKERS
    };

    /// Scenario 3: the LLM-like workers, worker 0 failing 20 % of its
    /// requests and worker 1 all of them (each error after 10 ms) while
    /// its probe says Healthy; fifty callers, 5 000 requests, 30 s budget.
    pub const FLAKY_AND_DEAD: ClosedLoop = ClosedLoop {
        name: "flaky-and-dead",
        about: "ten LLM-like workers, worker 0 failing 20 %, worker 1 failing 100 % with Healthy probes, \
                errors after 10 ms, fifty callers, 5 000 requests, 30 s budget",
        faults: &[
            Fault {
                worker: 0,
                permille: 200,
                from: Duration::ZERO,
                retryable: false,
            },
            Fault {
                worker: 1,
                permille: 1000,
                from: Duration::ZERO,
                retryable: false,
            },
        ],
        seed: 3,
        ..FIFTY_CALLERS_TEN_WORKERS
    };

    /// Scenario 4: the LLM-like workers, six of ten (0–5) failing every
    /// request from 20 s on (errors after 10 ms, probes Healthy); fifty
    /// callers, 5 000 requests, 30 s budget.
    pub const SIX_OF_TEN_FAIL: ClosedLoop = ClosedLoop {
        name: "six-of-ten-fail",
        about: "ten LLM-like workers, six failing every request from 20 s (errors after 10 ms, \
                probes Healthy), fifty callers, 5 000 requests, 30 s budget",
        faults: &SIX_OF_TEN_DOWN,
        seed: 4,
        ..FIFTY_CALLERS_TEN_WORKERS
    };

    /// Scenario 5, a retry storm: the LLM-like workers, every one failing
    /// half of its requests retryably (errors after 10 ms); fifty
    /// callers, 5 000 requests, 30 s budget. Attempts are counted per
    /// request.
    pub const RETRY_STORM: ClosedLoop = ClosedLoop {
        name: "retry-storm",
        about: "ten LLM-like workers each failing 50 % retryably (errors after 10 ms), \
                fifty callers, 5 000 requests, 30 s budget",
        faults: &EVERY_WORKER_HALF_RETRYABLE,
        seed: 5,
        ..FIFTY_CALLERS_TEN_WORKERS
    };

    /// Hedging's scenario: ten workers with heavy-tailed lognormal
    /// latencies (medians 150–450 ms, σ 1.0: p99 ≈ 10 × median, p999 ≈ 22
    /// ×), five callers (so workers are often idle, which a hedge needs),
    /// 5 000 requests, a 30 s budget. Hedging at each worker's p95 should
    /// cut the tail; attempts show what it costs.
    pub const LLM_LIKE_HEAVY_TAIL: ClosedLoop = ClosedLoop {
        name: "llm-like-heavy-tail",
        about: "ten lognormal workers (medians 150–450 ms, σ 1.0), five callers, \
                5 000 requests, 30 s budget",
        latency: LatencyModel::LogNormal {
            fastest_median: Duration::from_millis(150),
            slowest_median: Duration::from_millis(450),
            sigma_permille: 1000,
            slowdown: None,
        },
        callers: 5,
        seed: 6,
        ..FIFTY_CALLERS_TEN_WORKERS
    };

    /// Every named scenario, in the order, then the hedging one.
    pub const ALL: [ClosedLoop; 7] = [
        ClosedLoop::OVERLOAD_OF_HEALTHY_WORKERS,
        ClosedLoop::SPREAD_LATENCIES,
        ClosedLoop::LLM_LIKE_SLOWDOWN,
        ClosedLoop::FLAKY_AND_DEAD,
        ClosedLoop::SIX_OF_TEN_FAIL,
        ClosedLoop::RETRY_STORM,
        ClosedLoop::LLM_LIKE_HEAVY_TAIL,
    ];

    /// The named scenario called `name`.
    pub fn named(name: &str) -> Option<ClosedLoop> {
        ClosedLoop::ALL
            .into_iter()
            .find(|scenario| scenario.name == name)
    }

    /// The same scenario with its callers stopping after `requests`
    /// submits (a shorter run, for debug builds); a time-bound scenario
    /// is left as it is.
    pub fn with_requests(mut self, requests: u64) -> ClosedLoop {
        if let Stop::Requests(_) = self.stop {
            self.stop = Stop::Requests(requests);
        }
        self
    }

    /// The fault, if any, that applies to `worker` at `at`.
    pub fn fault(&self, worker: usize, at: Duration) -> Option<&Fault> {
        self.faults
            .iter()
            .find(|fault| fault.worker == worker && at >= fault.from)
    }
}
