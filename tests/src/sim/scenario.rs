//! What a seed decides before the run ([`Scenario`]): the pool's
//! configuration, the workers' latencies, the arrival pattern and which
//! faults are on, and how often.

use std::time::Duration;

use foreman_core::{
    FailureClasses, HedgeDelay, HedgePolicy, OutlierDetection, PanicMode, PoolConfig,
    RecoveryPolicy, RetryBudget, RetryPolicy, RoutingPolicy, WorkerErrorCode, WorkerPoolOptions,
    WorkerSecurityPolicy,
};

use crate::rng::Rng;

/// Longest simulated handler latency (heavy tails are capped here).
pub(super) const MAX_LATENCY: Duration = Duration::from_secs(600);

/// `s` seconds as a duration, clamped to `0 ..= 1e9` seconds.
pub(super) fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 1e9))
}

/// A worker's handler latency distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    /// Always this many seconds.
    Fixed(f64),
    /// Uniform between two bounds, in seconds.
    Uniform(f64, f64),
    /// Pareto with this minimum (seconds) and shape: LLM-like heavy tail.
    HeavyTail {
        /// Scale (minimum latency), seconds.
        scale: f64,
        /// Shape (smaller is heavier).
        alpha: f64,
    },
}

impl Latency {
    pub(super) fn sample(self, rng: &mut Rng) -> Duration {
        let s = match self {
            Latency::Fixed(s) => s,
            Latency::Uniform(lo, hi) => rng.uniform(lo, hi),
            Latency::HeavyTail { scale, alpha } => scale / (1.0 - rng.unit()).powf(1.0 / alpha),
        };
        secs(s).min(MAX_LATENCY)
    }
}

/// How callers submit requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrival {
    /// Exponential gaps with this mean (seconds): below capacity.
    Steady(f64),
    /// Bursts of `size` requests at one instant, bursts `gap` seconds apart.
    Bursts {
        /// Requests per burst.
        size: u64,
        /// Mean seconds between bursts.
        gap: f64,
    },
    /// Exponential gaps far below the service time: far above capacity.
    Overload(f64),
}

/// Which chaos the scenario unleashes, and how often.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chaos {
    /// Mean seconds between chaos events; `None`: no chaos.
    pub mean_gap: Option<f64>,
    /// Restart a random worker.
    pub restarts: bool,
    /// Add a worker.
    pub additions: bool,
    /// Remove a random worker.
    pub removals: bool,
    /// Step the driver's clock backwards for a few inputs.
    pub clock_steps: bool,
}

/// Handlers that answer "refused, not started" (overloaded), in bursts:
/// each start on a worker not in a burst begins one with probability
/// `start`, and every start on it during the burst is refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refusals {
    /// Probability that a start begins a burst of refusals.
    pub start: f64,
    /// Mean length of a burst, in seconds (exponential).
    pub mean_burst: f64,
    /// The seed of the generator of the refusal draws during the run (its
    /// own, so the other draws of a seed are the same with refusals off).
    pub seed: u64,
}

/// Everything a seed decides before the run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The pool's configuration.
    pub config: PoolConfig,
    /// Initial workers.
    pub workers: usize,
    /// Mean handler latency in seconds (the scenario's time scale).
    pub mean_latency: f64,
    /// Arrival pattern.
    pub arrival: Arrival,
    /// Latency kinds workers draw from (0 fixed, 1 uniform, 2 heavy-tailed).
    pub latency_kinds: Vec<u8>,
    /// Share of slow workers (10× the mean latency).
    pub slow_workers: f64,
    /// Handler failure probability.
    pub fail: f64,
    /// Share of failures that are retryable.
    pub retryable: f64,
    /// Handler panic probability.
    pub panic: f64,
    /// Handler hang probability (never completes until the quiet phase).
    pub hang: f64,
    /// Probe replies slower than the probe timeout.
    pub slow_probe: f64,
    /// Probe replies with a random verdict.
    pub lying_probe: f64,
    /// Callers that cancel.
    pub cancel: f64,
    /// Invalid submits.
    pub invalid: f64,
    /// Share of requests with their own `timeout_ms` (else the default).
    pub own_timeout: f64,
    /// Chaos events.
    pub chaos: Chaos,
    /// Begin shutdown after this many submits, with this drain limit.
    pub shutdown: Option<(u64, Option<Duration>)>,
    /// Handlers refusing requests before starting them, in bursts.
    pub refusals: Option<Refusals>,
}
impl Scenario {
    /// The scenario a seed picks (swarm testing: each fault is on or off,
    /// and its rate is drawn, per seed).
    pub fn generate(rng: &mut Rng, requests: u64) -> Scenario {
        let workers = match rng.below(10) {
            0..=3 => rng.range(1, 4),
            4..=7 => rng.range(5, 32),
            _ => rng.range(33, 256),
        } as usize;
        // Time scale: mean latency log-uniform in 1 ms .. 2 s.
        let mean_latency = 0.001 * 2000f64.powf(rng.unit());
        let config = draw_config(rng, workers, mean_latency);
        let concurrency = config.max_concurrency_per_worker;
        let arrival = draw_arrival(rng, workers, concurrency, mean_latency);
        let mut latency_kinds: Vec<u8> = (0..3).filter(|_| rng.chance(0.6)).collect();
        if latency_kinds.is_empty() {
            latency_kinds.push(rng.below(3) as u8);
        }
        let rate = |rng: &mut Rng, on: f64, max: f64| {
            if rng.chance(on) {
                rng.uniform(0.0, max)
            } else {
                0.0
            }
        };
        let fail = rate(rng, 0.5, 0.5);
        let retryable = rng.unit();
        let panic = rate(rng, 0.3, 0.1);
        let hang = rate(rng, 0.3, 0.05);
        let slow_probe = rate(rng, 0.4, 0.5);
        let lying_probe = rate(rng, 0.4, 0.5);
        let cancel = rate(rng, 0.4, 0.3);
        let invalid = rate(rng, 0.4, 0.1);
        let slow_workers = rate(rng, 0.3, 0.3);
        let own_timeout = rng.unit();
        let chaos = draw_chaos(rng, requests, workers, concurrency, mean_latency);
        let shutdown = draw_shutdown(rng, requests, mean_latency);
        // Drawn from a generator of its own, seeded from a copy of `rng`, so
        // that every other draw of a seed stays what it was.
        let mut side = Rng::new(rng.clone().next_u64() ^ RECOVERY_SALT);
        let config = config.with_recovery(draw_recovery(&mut side, mean_latency));
        let mut side = Rng::new(rng.clone().next_u64() ^ REFUSALS_SALT);
        let refusals = draw_refusals(&mut side, mean_latency);
        Scenario {
            config,
            workers,
            mean_latency,
            arrival,
            latency_kinds,
            slow_workers,
            fail,
            retryable,
            panic,
            hang,
            slow_probe,
            lying_probe,
            cancel,
            invalid,
            own_timeout,
            chaos,
            shutdown,
            refusals,
        }
    }

    /// The scenario on one line, for failure reports.
    pub fn describe(&self) -> String {
        format!(
            "workers={} mean_latency={:.4}s queue={} conc={} threshold={} timeout={:?} probe={:?}/{:?} \
             limits={:?}/{:?} arrival={:?} kinds={:?} fail={:.2} retryable={:.2} panic={:.2} hang={:.3} \
             slow_probe={:.2} lying_probe={:.2} cancel={:.2} invalid={:.2} chaos={:?} shutdown={:?} \
             recovery={:?} retries={:?} hedging={:?} refusals={:?}",
            self.workers,
            self.mean_latency,
            self.config.options.queue_capacity,
            self.config.max_concurrency_per_worker,
            self.config.options.unavailable_after_failures,
            self.config.options.default_request_timeout,
            self.config.options.health_probe_interval,
            self.config.probe_timeout,
            self.config.queue_wait_limit,
            self.config.run_limit,
            self.arrival,
            self.latency_kinds,
            self.fail,
            self.retryable,
            self.panic,
            self.hang,
            self.slow_probe,
            self.lying_probe,
            self.cancel,
            self.invalid,
            self.chaos,
            self.shutdown,
            self.config.recovery,
            self.config.retries,
            self.config.hedging,
            self.refusals,
        )
    }

    /// How long after the last evidence against a worker (a failure, a
    /// probe voting Unavailable or timing out) it is back in rotation once
    /// it is healthy again: its ejection's longest time (none under the
    /// reference), then a probe interval for its next probe to be sent and
    /// two probe timeouts for an outstanding one to end and the next to
    /// answer.
    pub fn recovery_bound(&self) -> Duration {
        let config = &self.config;
        let ejection = match config.recovery {
            RecoveryPolicy::OutlierDetection(tuning) => tuning.longest_ejection(),
            _ => Duration::ZERO,
        };
        ejection + config.options.health_probe_interval + config.probe_timeout * 2
    }
}

/// Salts the seed of [`draw_recovery`]'s generator.
const RECOVERY_SALT: u64 = 0x005E_ED0F_2EC0_7E2A;

/// Salts the seed of [`draw_refusals`]'s generator.
const REFUSALS_SALT: u64 = 0x2EF0_5A15_0B05_7A27;

/// Refusals in bursts in 40% of the seeds: a burst begins at up to one
/// start in 20, and lasts from a fraction of the workers' mean latency to
/// longer than the longest probe interval a seed draws (50 of them).
fn draw_refusals(rng: &mut Rng, mean_latency: f64) -> Option<Refusals> {
    rng.chance(0.4).then(|| Refusals {
        start: rng.uniform(0.0, 0.05),
        mean_burst: mean_latency * 100f64.powf(rng.unit()) * 0.6,
        seed: rng.next_u64(),
    })
}

/// The recovery machine: the reference in half the seeds, outlier
/// detection with tuning on the scenario's time scale in the others.
fn draw_recovery(rng: &mut Rng, mean_latency: f64) -> RecoveryPolicy {
    if rng.chance(0.5) {
        return RecoveryPolicy::reference();
    }
    let window = rng.range(1, 64) as u32;
    let base = secs(mean_latency * rng.uniform(1.0, 20.0)).max(Duration::from_millis(1));
    let counted = if rng.chance(0.8) {
        FailureClasses::DEFAULT
    } else {
        FailureClasses::DEFAULT.without(WorkerErrorCode::Timeout)
    };
    RecoveryPolicy::OutlierDetection(
        OutlierDetection::default()
            .with_consecutive_failures(rng.range(1, 8) as u32)
            .with_window(window)
            .with_min_volume(rng.range(1, u64::from(window)) as u32)
            .with_failure_rate_percent(rng.range(1, 100) as u32)
            .with_base_ejection(base)
            .with_max_ejection(base * (1u32 << rng.below(6)))
            .with_jitter_permille(rng.below(1001) as u32)
            .with_decay_after(base * rng.range(1, 50) as u32)
            .with_trial_permits(rng.range(1, 4) as u32)
            .with_success_threshold(rng.range(1, 4) as u32)
            .with_max_ejected_percent(rng.below(101) as u32)
            .with_panic_mode(if rng.chance(0.5) {
                PanicMode::RouteToAll
            } else {
                PanicMode::FailFast
            })
            .with_counted(counted),
    )
}

/// The pool's configuration: queue capacity, concurrency, failure
/// threshold, default timeout, probe interval and timeout, policy limits
/// and routing.
fn draw_config(rng: &mut Rng, workers: usize, mean_latency: f64) -> PoolConfig {
    let queue_capacity = [1usize, 2, 4, 8, 16, 64, 256][rng.below(7) as usize];
    let concurrency = if rng.chance(0.6) {
        1
    } else {
        rng.range(2, 8) as u32
    };
    let threshold = rng.range(1, 5) as u32;
    let max_timeout_ms = 120_000u64;
    let default_timeout = if rng.chance(0.3) {
        None
    } else {
        let s = mean_latency * rng.uniform(1.0, 30.0);
        Some(Duration::from_millis(
            ((s * 1000.0) as u64).clamp(1, max_timeout_ms),
        ))
    };
    let interval = secs(mean_latency * rng.uniform(2.0, 50.0)).max(Duration::from_millis(1));
    let probe_timeout =
        secs(interval.as_secs_f64() * rng.uniform(0.05, 1.0)).max(Duration::from_micros(100));
    let tight = rng.chance(0.5);
    let options = WorkerPoolOptions {
        queue_capacity,
        health_probe_interval: interval,
        unavailable_after_failures: threshold,
        default_request_timeout: default_timeout,
        security_policy: WorkerSecurityPolicy {
            max_request_timeout_ms: max_timeout_ms,
            max_request_payload_bytes: if tight { 2048 } else { 256 * 1024 },
            max_identifier_length: if tight { 32 } else { 128 },
        },
    };
    // Phase limits from a generator of their own, so each seed keeps the
    // rest of its scenario: a queue-wait limit in a third of the pools, a
    // run limit in a third (hanging and heavy-tailed handlers meet it).
    let mut phases = Rng::new(mean_latency.to_bits() ^ workers as u64);
    let queue_wait_limit = phases
        .chance(1.0 / 3.0)
        .then(|| secs(mean_latency * phases.uniform(0.5, 20.0)).max(Duration::from_micros(1)));
    let run_limit = phases
        .chance(1.0 / 3.0)
        .then(|| secs(mean_latency * phases.uniform(1.0, 10.0)).max(Duration::from_micros(1)));
    // Hedging from a generator of its own too: in half the pools, after a
    // fixed delay around the mean latency or a percentile of each
    // worker's run times, one or two hedges, tools too in some.
    let mut hedges = Rng::new(mean_latency.to_bits().rotate_left(17) ^ queue_capacity as u64);
    let hedging = hedges.chance(0.5).then(|| {
        let delay = if hedges.chance(0.5) {
            HedgeDelay::Fixed(
                secs(mean_latency * hedges.uniform(0.2, 3.0)).max(Duration::from_micros(1)),
            )
        } else {
            HedgeDelay::RunTimePercentile(hedges.range(500, 990) as u32)
        };
        HedgePolicy::default()
            .with_delay(delay)
            .with_max_hedges(1 + u32::from(hedges.chance(0.3)))
            .with_tools(hedges.chance(0.3))
    });
    PoolConfig::new(options)
        .with_hedging(hedging)
        .with_queue_wait_limit(queue_wait_limit)
        .with_run_limit(run_limit)
        .with_probe_timeout(probe_timeout)
        .with_max_concurrency_per_worker(concurrency)
        // Every policy, from the one draw that chose between the first two.
        .with_routing(RoutingPolicy::ALL[rng.below(RoutingPolicy::ALL.len() as u64) as usize])
        // Derived, not drawn, so each seed keeps its scenario: late
        // binding in three pools of four (but round robin's), retries in
        // one pool of three (two or three attempts, tools too in pools with
        // long queues, a budget with a small reserve), the seed of the
        // core's choices, and the latency-aware tuning scaled to the
        // workers' mean latency.
        .with_late_binding(workers % 4 != 0)
        .with_retries((workers % 3 == 1).then(|| {
            RetryPolicy::default()
                .with_max_attempts(2 + (workers % 2) as u32)
                .with_tools(queue_capacity > 8)
                .with_budget(RetryBudget::default().with_reserve_per_second(1))
        }))
        .with_seed(workers as u64 ^ (queue_capacity as u64) << 8)
        .with_unsampled_latency(secs(mean_latency * 2.0).max(Duration::from_micros(1)))
        .with_ewma_decay(secs(mean_latency * 100.0).max(Duration::from_millis(1)))
}

/// How callers submit, scaled to the pool's capacity.
fn draw_arrival(rng: &mut Rng, workers: usize, concurrency: u32, mean_latency: f64) -> Arrival {
    let capacity_rate = workers as f64 * f64::from(concurrency) / mean_latency;
    match rng.below(3) {
        0 => Arrival::Steady(1.0 / (capacity_rate * rng.uniform(0.2, 0.95))),
        1 => {
            let size = rng.range(2, 200);
            Arrival::Bursts {
                size,
                gap: size as f64 / (capacity_rate * rng.uniform(0.3, 1.5)),
            }
        }
        _ => Arrival::Overload(1.0 / (capacity_rate * rng.uniform(2.0, 20.0))),
    }
}

/// Whether chaos is on, how often, and of which kinds.
fn draw_chaos(
    rng: &mut Rng,
    requests: u64,
    workers: usize,
    concurrency: u32,
    mean_latency: f64,
) -> Chaos {
    if rng.chance(0.6) {
        let span = requests as f64 * mean_latency / (workers as f64 * f64::from(concurrency));
        Chaos {
            mean_gap: Some(span.max(mean_latency) / rng.uniform(2.0, 60.0)),
            restarts: rng.chance(0.6),
            additions: rng.chance(0.6),
            removals: rng.chance(0.6),
            clock_steps: rng.chance(0.5),
        }
    } else {
        Chaos {
            mean_gap: None,
            restarts: false,
            additions: false,
            removals: false,
            clock_steps: false,
        }
    }
}

/// Whether shutdown begins, after how many submits, with what drain limit.
fn draw_shutdown(
    rng: &mut Rng,
    requests: u64,
    mean_latency: f64,
) -> Option<(u64, Option<Duration>)> {
    if rng.chance(0.3) {
        let at = rng.below(requests.max(1));
        let drain = if rng.chance(0.5) {
            Some(secs(mean_latency * rng.uniform(0.0, 20.0)))
        } else {
            None
        };
        Some((at, drain))
    } else {
        None
    }
}
