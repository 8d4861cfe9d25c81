//! The deterministic simulator: one `u64` seed picks a hostile scenario and
//! drives the whole pool through it, checking after every input.
//!
//! In the spirit of TigerBeetle's VOPR and FoundationDB's simulator:
//! - **Everything comes from the seed**, through [`Rng`] (SplitMix64: a tiny,
//!   well-studied generator; no OS seeding, no global state). There is no wall
//!   clock, no thread and no hash-order dependence: [`run_seed`] twice with
//!   the same seed gives the same trace hash (the determinism self-check).
//! - **Virtual time jumps to the next event**: the earlier of the core's
//!   [`foreman_core::Pool::poll_timeout`] and the next simulated worker or
//!   caller event (arrival, completion, probe reply, cancel, chaos).
//! - **Swarm testing**: the seed first picks the scenario ([`Scenario`]) —
//!   1…256 workers, queue capacity, failure threshold, default timeout,
//!   probe interval and timeout, per-worker concurrency, the arrival pattern
//!   (steady, bursts, overload far above capacity), a latency distribution
//!   per worker (fixed, uniform, heavy-tailed), and which faults are on and
//!   how often: failing handlers (retryable or not), hanging handlers,
//!   panicking handlers, slow probes, lying probes, cancelling callers,
//!   restarts, additions and removals of workers, shutdown with or without a
//!   drain deadline, invalid requests, clock steps backwards.
//! - **Checks after every input**: the [`crate::model::Harness`] checks (see
//!   its module docs). The cheap checks run after every input; the O(n)
//!   ones (`check_invariants`, stats against the books) run after every
//!   worker command and shutdown, at the end, and otherwise once at least
//!   [`FULL_CHECK_EVERY`] inputs *and* at least 4 × (pending requests + workers)
//!   inputs have passed since the last one — amortised O(1) per input, which
//!   keeps the simulator above a million requests per wall-clock second.
//! - **A quiet liveness phase**: once the seed's requests are submitted,
//!   faults stop (hung handlers finish, probes answer promptly and
//!   truthfully, no more chaos), time runs on, and every pending request
//!   must be answered within a bound computed from the scenario; then a
//!   shutdown must complete at once with nothing pending.
//!
//! Besides the seeds, named scenarios ([`ClosedLoop`], run by
//! [`run_closed_loop`] and `sim --scenario NAME`) drive one fixed workload
//! under the same checks and judge its outcome: overload of healthy
//! workers must eject none and keep requests succeeding every second.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::time::Duration;

use foreman_core::{
    PoolConfig, ProbeKey, RequestKey, RoutingPolicy, Time, WorkerKey, WorkerPoolOptions,
    WorkerSecurityPolicy,
};

use crate::model::{AnswerKind, Failure, Harness, Outcome, Output, Shape, TraceEvent, Verdict};

/// Full O(n) checks run every this many inputs (and after every command).
pub const FULL_CHECK_EVERY: u64 = 256;

/// Default requests submitted per seed.
pub const DEFAULT_REQUESTS: u64 = 2_000;

/// Longest simulated handler latency (heavy tails are capped here).
const MAX_LATENCY: Duration = Duration::from_secs(600);

/// SplitMix64 (Steele, Lea and Flood, 2014): a 64-bit state incremented by
/// a fixed odd constant and passed through a bijective mixer. Small, fast,
/// statistically solid for simulation, and fully determined by its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform value in `0..n` (`n > 0`), by multiply-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform value in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// A uniform float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform float in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// An exponential sample with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

fn secs(s: f64) -> Duration {
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
    fn sample(self, rng: &mut Rng) -> Duration {
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
        let config = PoolConfig {
            options,
            probe_timeout,
            max_concurrency_per_worker: concurrency,
            routing: if rng.below(2) == 0 {
                RoutingPolicy::RoundRobin
            } else {
                RoutingPolicy::IdleFirst
            },
            // Derived, not drawn, so each seed keeps its scenario: late
            // binding in three idle-first pools of four.
            late_binding: workers % 4 != 0,
            unix_epoch_ms: 0,
            max_request_depth: foreman_core::DEFAULT_MAX_REQUEST_DEPTH,
        };
        let capacity_rate = workers as f64 * f64::from(concurrency) / mean_latency;
        let arrival = match rng.below(3) {
            0 => Arrival::Steady(1.0 / (capacity_rate * rng.uniform(0.2, 0.95))),
            1 => {
                let size = rng.range(2, 200);
                Arrival::Bursts {
                    size,
                    gap: size as f64 / (capacity_rate * rng.uniform(0.3, 1.5)),
                }
            }
            _ => Arrival::Overload(1.0 / (capacity_rate * rng.uniform(2.0, 20.0))),
        };
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
        let chaos = if rng.chance(0.6) {
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
        };
        let shutdown = if rng.chance(0.3) {
            let at = rng.below(requests.max(1));
            let drain = if rng.chance(0.5) {
                Some(secs(mean_latency * rng.uniform(0.0, 20.0)))
            } else {
                None
            };
            Some((at, drain))
        } else {
            None
        };
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
        }
    }
}

/// Veto masks of the simulated circuit breakers (bit `i`: workers whose
/// ordinal modulo 8 is `i`): none, one in eight, some, most, all.
const VETO_PATTERNS: [u8; 5] = [0, 0b1, 0b110, 0b1010_0101, 0xff];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrival,
    Complete(RequestKey, Outcome),
    ProbeReply(WorkerKey, ProbeKey, Verdict),
    Cancel(RequestKey),
    /// A request whose worker was removed is placed through its breaker.
    Revet(RequestKey),
    Chaos,
}

/// What one seed's run produced.
#[derive(Debug, Clone)]
pub struct SimOutcome {
    /// The seed.
    pub seed: u64,
    /// Requests per seed asked for.
    pub requests: u64,
    /// The first broken rule, if any.
    pub failure: Option<String>,
    /// Submits made (accepted or refused).
    pub submitted: u64,
    /// Submits accepted.
    pub accepted: u64,
    /// Simulated time at the end.
    pub sim_time: Duration,
    /// Hash of the whole trace.
    pub trace_hash: u64,
    /// The last events of the trace.
    pub tail: Vec<TraceEvent>,
    /// The whole trace, when asked for.
    pub full: Option<Vec<TraceEvent>>,
    /// A one-line description of the scenario.
    pub scenario: String,
}

impl SimOutcome {
    /// The one-line command that replays this seed with its full trace.
    pub fn replay_command(&self) -> String {
        let planted = if cfg!(foreman_planted_bug) {
            "RUSTFLAGS=\"--cfg foreman_planted_bug\" CARGO_TARGET_DIR=target/planted "
        } else {
            ""
        };
        format!(
            "{planted}cargo run --release -p foreman-tests --bin sim -- --seed {} --requests {} --trace",
            self.seed, self.requests
        )
    }

    /// A failure report: the seed, the replay command, the scenario, the
    /// broken rule and the last events of the trace.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "seed {} FAILED: {}",
            self.seed,
            self.failure.as_deref().unwrap_or("-")
        );
        let _ = writeln!(out, "  replay: {}", self.replay_command());
        let _ = writeln!(out, "  scenario: {}", self.scenario);
        let _ = writeln!(out, "  last {} trace events:", self.tail.len());
        for event in &self.tail {
            let _ = writeln!(out, "    {event:?}");
        }
        out
    }
}

struct Sim {
    rng: Rng,
    scenario: Scenario,
    harness: Harness,
    events: BinaryHeap<Reverse<(Time, u64, Ev)>>,
    seq: u64,
    now: Time,
    latencies: Vec<Latency>,
    hung: Vec<RequestKey>,
    requests: u64,
    submitted: u64,
    burst_left: u64,
    quiet: bool,
    skew: Option<(Duration, u32)>,
    buffer: Vec<Output>,
}

impl Sim {
    fn schedule(&mut self, at: Time, event: Ev) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, event)));
    }

    fn latency_for(&mut self) -> Latency {
        let kind = self.scenario.latency_kinds
            [self.rng.below(self.scenario.latency_kinds.len() as u64) as usize];
        let mut mean = self.scenario.mean_latency * self.rng.uniform(0.5, 2.0);
        if self.rng.chance(self.scenario.slow_workers) {
            mean *= 10.0;
        }
        match kind {
            0 => Latency::Fixed(mean),
            1 => Latency::Uniform(0.0, 2.0 * mean),
            _ => {
                let alpha = self.rng.uniform(1.1, 2.5);
                Latency::HeavyTail {
                    scale: mean * (alpha - 1.0) / alpha,
                    alpha,
                }
            }
        }
    }

    fn add_worker(&mut self) -> Result<(), Failure> {
        if let Some(worker) = self.harness.add_worker()? {
            let ordinal = self.harness.ordinal(worker).unwrap_or(0) as usize;
            while self.latencies.len() <= ordinal {
                let latency = self.latency_for();
                self.latencies.push(latency);
            }
            self.react()?;
        }
        Ok(())
    }

    /// Acts on what the last input asked the driver to do.
    fn react(&mut self) -> Result<(), Failure> {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        buffer.extend_from_slice(self.harness.outputs());
        for output in &buffer {
            match *output {
                Output::Start {
                    request, worker, ..
                } => self.on_start(request, worker),
                Output::RunProbe { worker, probe } => self.on_probe(worker, probe),
                // The caller's task asks its breaker a moment later.
                Output::Revet { request } => {
                    self.schedule(self.now + Duration::from_millis(1), Ev::Revet(request));
                }
                _ => {}
            }
        }
        self.buffer = buffer;
        Ok(())
    }

    fn on_start(&mut self, request: RequestKey, worker: WorkerKey) {
        let ordinal = self.harness.ordinal(worker).unwrap_or(0) as usize;
        let latency = self
            .latencies
            .get(ordinal)
            .copied()
            .unwrap_or(Latency::Fixed(0.001));
        let mut delay = latency.sample(&mut self.rng);
        let outcome = if self.quiet {
            delay = delay.min(self.quiet_latency_cap());
            Outcome::Success
        } else {
            let s = &self.scenario;
            let (hang, panic, fail, retryable) = (s.hang, s.panic, s.fail, s.retryable);
            let roll = self.rng.unit();
            if roll < hang {
                self.hung.push(request);
                return;
            } else if roll < hang + panic {
                Outcome::Panic
            } else if roll < hang + panic + fail {
                Outcome::Failure {
                    retryable: self.rng.chance(retryable),
                }
            } else {
                Outcome::Success
            }
        };
        self.schedule(self.now + delay, Ev::Complete(request, outcome));
    }

    fn on_probe(&mut self, worker: WorkerKey, probe: ProbeKey) {
        let timeout = self.scenario.config.probe_timeout.as_secs_f64();
        let (delay, verdict) = if self.quiet {
            (timeout * self.rng.uniform(0.0, 0.5), Verdict::Healthy)
        } else {
            let delay = if self.rng.chance(self.scenario.slow_probe) {
                timeout * self.rng.uniform(1.0, 3.0)
            } else {
                timeout * self.rng.uniform(0.0, 0.9)
            };
            let verdict = if self.rng.chance(self.scenario.lying_probe) {
                [Verdict::Healthy, Verdict::Degraded, Verdict::Unavailable]
                    [self.rng.below(3) as usize]
            } else {
                Verdict::Healthy
            };
            (delay, verdict)
        };
        self.schedule(
            self.now + secs(delay),
            Ev::ProbeReply(worker, probe, verdict),
        );
    }

    fn quiet_latency_cap(&self) -> Duration {
        secs(self.scenario.mean_latency * 4.0)
            .clamp(Duration::from_millis(1), Duration::from_secs(10))
    }

    fn arrival(&mut self) -> Result<(), Failure> {
        if self.quiet || self.submitted >= self.requests {
            return Ok(());
        }
        self.submitted += 1;
        let s = &self.scenario;
        let max_timeout = s.config.options.security_policy.max_request_timeout_ms;
        let (invalid, own_timeout, mean) = (s.invalid, s.own_timeout, s.mean_latency);
        let (shape, timeout_ms) = if self.rng.chance(invalid) {
            match self.rng.below(5) {
                0 => (Shape::Unnamed, None),
                1 => (Shape::LongIdentifier, None),
                2 => (Shape::Oversized, None),
                3 => (Shape::Tool, Some(0)),
                _ => (Shape::Llm, Some(max_timeout + 1 + self.rng.below(1000))),
            }
        } else {
            let shape = if self.rng.chance(0.5) {
                Shape::Tool
            } else {
                Shape::Llm
            };
            let timeout = if self.rng.chance(own_timeout) {
                Some(((mean * self.rng.uniform(0.5, 30.0) * 1000.0) as u64).clamp(1, max_timeout))
            } else {
                None
            };
            (shape, timeout)
        };
        // Every fourth arrival is offered (`Pool::offer`, as a driver of
        // several lanes does) and every eighth goes through a circuit
        // breaker (`Pool::vet`) with one of a few veto patterns, decided
        // without the RNG so a seed's scenario stays what it was.
        let key = if self.submitted % 4 == 3 {
            self.harness.offer(shape, timeout_ms)?
        } else if self.submitted % 8 == 5 {
            let veto = VETO_PATTERNS[(self.submitted / 8 % 5) as usize];
            self.harness.submit_vetted(shape, timeout_ms, veto)?
        } else {
            self.harness.submit(shape, timeout_ms)?
        };
        self.react()?;
        if let Some(request) = key {
            if self.rng.chance(self.scenario.cancel) {
                let after = secs(self.rng.uniform(0.0, 3.0 * self.scenario.mean_latency));
                self.schedule(self.now + after, Ev::Cancel(request));
            }
        }
        if let Some((at, drain)) = self.scenario.shutdown {
            if self.submitted == at + 1 {
                self.harness.begin_shutdown(drain)?;
                self.react()?;
            }
        }
        // The next arrival.
        let gap = match self.scenario.arrival {
            Arrival::Steady(mean) | Arrival::Overload(mean) => self.rng.exp(mean),
            Arrival::Bursts { size, gap } => {
                if self.burst_left == 0 {
                    self.burst_left = size;
                }
                self.burst_left -= 1;
                if self.burst_left == 0 {
                    self.rng.exp(gap)
                } else {
                    0.0
                }
            }
        };
        if self.submitted < self.requests {
            self.schedule(self.now + secs(gap), Ev::Arrival);
        }
        Ok(())
    }

    fn chaos(&mut self) -> Result<(), Failure> {
        if self.quiet {
            return Ok(());
        }
        let chaos = self.scenario.chaos;
        let Some(mean_gap) = chaos.mean_gap else {
            return Ok(());
        };
        let mut kinds = [0u8; 4];
        let mut n = 0;
        for (on, kind) in [
            (chaos.restarts, 0),
            (chaos.additions, 1),
            (chaos.removals, 2),
            (chaos.clock_steps, 3),
        ] {
            if on {
                kinds[n] = kind;
                n += 1;
            }
        }
        if n > 0 {
            let kind = kinds[self.rng.below(n as u64) as usize];
            let workers = self.harness.workers().len();
            match kind {
                0 if workers > 0 => {
                    let worker = self.harness.workers()[self.rng.below(workers as u64) as usize];
                    self.harness.restart_worker(worker)?;
                    self.react()?;
                }
                1 if workers < 300 => self.add_worker()?,
                2 if workers > 1 || (workers == 1 && self.rng.chance(0.1)) => {
                    let worker = self.harness.workers()[self.rng.below(workers as u64) as usize];
                    self.harness.remove_worker(worker)?;
                    self.react()?;
                }
                3 => {
                    let back = secs(self.rng.uniform(0.0, 5.0 * self.scenario.mean_latency));
                    self.skew = Some((back, self.rng.range(1, 5) as u32));
                }
                _ => {}
            }
        }
        let gap = self.rng.exp(mean_gap);
        self.schedule(self.now + secs(gap), Ev::Chaos);
        Ok(())
    }

    fn enter_quiet(&mut self) {
        self.quiet = true;
        self.skew = None;
        self.harness.note("quiet phase: faults stop");
        let hung = std::mem::take(&mut self.hung);
        let at = self.now + Duration::from_millis(1);
        for request in hung {
            self.schedule(at, Ev::Complete(request, Outcome::Success));
        }
    }

    /// The time by which every request must be answered once faults stop.
    fn quiet_bound(&self) -> Duration {
        let config = &self.scenario.config;
        let capacity = config.options.queue_capacity as u32 + config.max_concurrency_per_worker + 1;
        MAX_LATENCY
            + self.quiet_latency_cap() * capacity
            + config.options.health_probe_interval * 2
            + Duration::from_secs(1)
    }

    /// Sets the driver's clock for the next sim-side input (maybe skewed).
    fn clock_for_input(&mut self) {
        let mut clock = self.now;
        if let Some((back, left)) = self.skew {
            clock = Time::from_nanos(self.now.as_nanos().saturating_sub(back.as_nanos() as u64));
            self.skew = if left > 1 {
                Some((back, left - 1))
            } else {
                None
            };
        }
        self.harness.set_clock(clock);
    }

    fn run(&mut self) -> Result<(), Failure> {
        for _ in 0..self.scenario.workers {
            self.add_worker()?;
        }
        self.schedule(Time::ZERO, Ev::Arrival);
        if let Some(gap) = self.scenario.chaos.mean_gap {
            let first = secs(self.rng.exp(gap));
            self.schedule(Time::ZERO + first, Ev::Chaos);
        }
        let mut quiet_end = Time::MAX;
        loop {
            if !self.quiet && self.submitted >= self.requests {
                self.enter_quiet();
                quiet_end = self.now + self.quiet_bound();
            }
            if self.quiet && self.harness.pending() == 0 {
                break;
            }
            let sim_next = self.events.peek().map(|Reverse((at, _, _))| *at);
            let (core_next, next) = next_instant(&mut self.harness, sim_next)?;
            if next > quiet_end {
                return Err(Failure(format!(
                    "liveness: {} requests still pending {:?} after faults stopped",
                    self.harness.pending(),
                    self.quiet_bound()
                )));
            }
            self.now = self.now.max(next);
            if core_next.is_some_and(|at| at <= next) {
                self.harness.wake(self.now)?;
                self.react()?;
                continue;
            }
            let Some(Reverse((_, _, event))) = self.events.pop() else {
                continue;
            };
            self.clock_for_input();
            match event {
                Ev::Arrival => self.arrival()?,
                Ev::Complete(request, outcome) => {
                    self.harness.complete(request, outcome)?;
                    self.react()?;
                }
                Ev::ProbeReply(worker, probe, verdict) => {
                    self.harness.probe_result(worker, probe, verdict)?;
                    self.react()?;
                }
                Ev::Cancel(request) => {
                    self.harness.cancel(request)?;
                    self.react()?;
                }
                Ev::Revet(request) => {
                    if self.harness.moving().contains(&request) {
                        let veto = VETO_PATTERNS[(request.as_u64() % 5) as usize];
                        self.harness.revet(request, veto)?;
                        self.react()?;
                    }
                }
                Ev::Chaos => self.chaos()?,
            }
        }
        shut_down_and_check(&mut self.harness, self.now)
    }
}

/// Where virtual time jumps next: the core's next wake-up (returned too)
/// and the earlier of it and the simulator's next event, `sim_next`.
///
/// # Errors
/// When there is neither while requests are pending: nothing would ever
/// answer them.
fn next_instant(
    harness: &mut Harness,
    sim_next: Option<Time>,
) -> Result<(Option<Time>, Time), Failure> {
    let core_next = harness.next_timeout();
    let next = match (core_next, sim_next) {
        (None, None) => {
            return Err(Failure(format!(
                "stuck: {} requests pending and nothing will ever happen",
                harness.pending()
            )));
        }
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(Time::MAX),
    };
    Ok((core_next, next))
}

/// Once every request is answered, a shutdown at `now` must complete at
/// once; then every check runs.
///
/// # Errors
/// The first broken rule.
fn shut_down_and_check(harness: &mut Harness, now: Time) -> Result<(), Failure> {
    harness.set_clock(now);
    harness.begin_shutdown(None)?;
    if !harness.is_stopped() {
        return Err(Failure(
            "shutdown with nothing pending did not complete".into(),
        ));
    }
    harness.check()
}

/// Runs one seed with `requests` submits; keeps the full trace when
/// `keep_trace`.
pub fn run_seed(seed: u64, requests: u64, keep_trace: bool) -> SimOutcome {
    let mut rng = Rng::new(seed);
    let scenario = Scenario::generate(&mut rng, requests);
    let description = format!(
        "workers={} mean_latency={:.4}s queue={} conc={} threshold={} timeout={:?} probe={:?}/{:?} \
         arrival={:?} kinds={:?} fail={:.2} retryable={:.2} panic={:.2} hang={:.3} slow_probe={:.2} \
         lying_probe={:.2} cancel={:.2} invalid={:.2} chaos={:?} shutdown={:?}",
        scenario.workers,
        scenario.mean_latency,
        scenario.config.options.queue_capacity,
        scenario.config.max_concurrency_per_worker,
        scenario.config.options.unavailable_after_failures,
        scenario.config.options.default_request_timeout,
        scenario.config.options.health_probe_interval,
        scenario.config.probe_timeout,
        scenario.arrival,
        scenario.latency_kinds,
        scenario.fail,
        scenario.retryable,
        scenario.panic,
        scenario.hang,
        scenario.slow_probe,
        scenario.lying_probe,
        scenario.cancel,
        scenario.invalid,
        scenario.chaos,
        scenario.shutdown,
    );
    let mut harness = match Harness::with_trace(scenario.config.clone(), keep_trace) {
        Ok(harness) => harness,
        Err(error) => {
            return SimOutcome {
                seed,
                requests,
                failure: Some(format!("scenario config refused: {error}")),
                submitted: 0,
                accepted: 0,
                sim_time: Duration::ZERO,
                trace_hash: 0,
                tail: Vec::new(),
                full: None,
                scenario: description,
            };
        }
    };
    harness.set_full_check_amortised(FULL_CHECK_EVERY);
    let mut sim = Sim {
        rng,
        scenario,
        harness,
        events: BinaryHeap::new(),
        seq: 0,
        now: Time::ZERO,
        latencies: Vec::new(),
        hung: Vec::new(),
        requests,
        submitted: 0,
        burst_left: 0,
        quiet: false,
        skew: None,
        buffer: Vec::new(),
    };
    let result = sim.run();
    let failure = match result {
        Ok(()) => None,
        Err(failure) => Some(sim.harness.failure().cloned().unwrap_or(failure).0),
    };
    let (submitted, accepted, _) = sim.harness.totals();
    let trace = sim.harness.trace();
    SimOutcome {
        seed,
        requests,
        failure,
        submitted,
        accepted,
        sim_time: sim.now.since_epoch(),
        trace_hash: trace.hash(),
        tail: trace.tail(),
        full: trace.full().map(<[TraceEvent]>::to_vec),
        scenario: description,
    }
}

// ----- named scenarios ----------------------------------------------------------

/// A named, replayable scenario with closed-loop callers: each caller
/// submits a request, waits for its answer and submits the next at once
/// (after a refusal, after [`ClosedLoop::refusal_backoff`]). Every worker
/// always succeeds after [`ClosedLoop::latency`] and every probe answers
/// Healthy within a millisecond, so any ejection is the pool's own doing.
/// There is no randomness: a run is its own replay.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedLoop {
    /// The name `sim --scenario` knows it by.
    pub name: &'static str,
    /// Workers, all healthy.
    pub workers: usize,
    /// How long every request runs.
    pub latency: Duration,
    /// Closed-loop callers.
    pub callers: usize,
    /// Every request's `timeout_ms`.
    pub budget_ms: u64,
    /// How long callers keep submitting (virtual time).
    pub run_for: Duration,
    /// How long a refused caller waits before it submits again.
    pub refusal_backoff: Duration,
}

impl ClosedLoop {
    /// Overload of healthy workers: two workers at 50 ms, eight callers
    /// with a 120 ms budget, 10 s (five times the offered load the workers
    /// can serve within budget). The pool must shed the excess by expiry
    /// and backpressure and never eject a worker, and requests must keep
    /// succeeding in every second.
    pub const OVERLOAD_OF_HEALTHY_WORKERS: ClosedLoop = ClosedLoop {
        name: "overload-of-healthy-workers",
        workers: 2,
        latency: Duration::from_millis(50),
        callers: 8,
        budget_ms: 120,
        run_for: Duration::from_secs(10),
        refusal_backoff: Duration::from_millis(5),
    };

    /// Every named scenario.
    pub const ALL: [ClosedLoop; 1] = [ClosedLoop::OVERLOAD_OF_HEALTHY_WORKERS];

    /// The named scenario called `name`.
    pub fn named(name: &str) -> Option<ClosedLoop> {
        ClosedLoop::ALL
            .into_iter()
            .find(|scenario| scenario.name == name)
    }
}

/// What a [`ClosedLoop`] run produced.
#[derive(Debug, Clone)]
pub struct ClosedLoopOutcome {
    /// The scenario's name.
    pub name: &'static str,
    /// The first broken rule: a harness check, an ejection, or a second
    /// without a success.
    pub failure: Option<String>,
    /// Requests answered with the handler's output.
    pub ok: u64,
    /// Requests answered `Timeout` while queued (expired, or reached with
    /// too little budget left).
    pub timeouts_queued: u64,
    /// Requests answered `Timeout` while running.
    pub timeouts_running: u64,
    /// Submits refused with `NoHealthyWorker`.
    pub refused_no_healthy_worker: u64,
    /// Submits refused with `QueueFull`.
    pub refused_queue_full: u64,
    /// Changes of a worker to `Unavailable`.
    pub ejections: u64,
    /// Successes in each second of the run.
    pub ok_per_second: Vec<u64>,
    /// Hash of the whole trace.
    pub trace_hash: u64,
    /// The whole trace, when asked for.
    pub full: Option<Vec<TraceEvent>>,
}

impl ClosedLoopOutcome {
    /// The run's figures on one line.
    pub fn figures(&self) -> String {
        format!(
            "scenario={} ok={} timeouts={} (queued {}, running {}) refused_no_healthy_worker={} \
             refused_queue_full={} ejections={} ok_per_second={:?} trace_hash={:016x}",
            self.name,
            self.ok,
            self.timeouts_queued + self.timeouts_running,
            self.timeouts_queued,
            self.timeouts_running,
            self.refused_no_healthy_worker,
            self.refused_queue_full,
            self.ejections,
            self.ok_per_second,
            self.trace_hash
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum LoopEv {
    Submit(usize),
    Complete(RequestKey),
    ProbeReply(WorkerKey, ProbeKey),
}

struct LoopSim<'a> {
    scenario: &'a ClosedLoop,
    harness: Harness,
    events: BinaryHeap<Reverse<(Time, u64, LoopEv)>>,
    seq: u64,
    now: Time,
    /// The caller waiting on each pending request.
    callers: std::collections::BTreeMap<RequestKey, usize>,
    ok_per_second: Vec<u64>,
    buffer: Vec<Output>,
}

impl LoopSim<'_> {
    fn schedule(&mut self, at: Time, event: LoopEv) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, event)));
    }

    /// Acts on what the last input asked the driver to do.
    fn react(&mut self) {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        buffer.extend_from_slice(self.harness.outputs());
        for output in &buffer {
            match *output {
                Output::Start { request, .. } => {
                    let at = self.now + self.scenario.latency;
                    self.schedule(at, LoopEv::Complete(request));
                }
                Output::RunProbe { worker, probe } => {
                    let at = self.now + Duration::from_millis(1);
                    self.schedule(at, LoopEv::ProbeReply(worker, probe));
                }
                Output::Answered { request, kind, .. } => {
                    if kind == AnswerKind::Ok {
                        let second = self.now.since_epoch().as_secs() as usize;
                        if let Some(count) = self.ok_per_second.get_mut(second) {
                            *count += 1;
                        }
                    }
                    if let Some(caller) = self.callers.remove(&request) {
                        self.schedule(self.now, LoopEv::Submit(caller));
                    }
                }
                _ => {}
            }
        }
        self.buffer = buffer;
    }

    fn run(&mut self) -> Result<(), Failure> {
        for _ in 0..self.scenario.workers {
            self.harness.add_worker()?;
            self.react();
        }
        for caller in 0..self.scenario.callers {
            self.schedule(Time::ZERO, LoopEv::Submit(caller));
        }
        let end = Time::ZERO + self.scenario.run_for;
        // Callers stop at `end`; what they left pending must be answered
        // within a budget (plus a probe interval, should a worker be out).
        let limit = end
            + Duration::from_millis(self.scenario.budget_ms)
            + WorkerPoolOptions::default().health_probe_interval;
        loop {
            if self.now >= end && self.harness.pending() == 0 {
                break;
            }
            let sim_next = self.events.peek().map(|Reverse((at, _, _))| *at);
            let (core_next, next) = next_instant(&mut self.harness, sim_next)?;
            if next > limit {
                return Err(Failure(format!(
                    "liveness: {} requests still pending at {limit}",
                    self.harness.pending()
                )));
            }
            self.now = self.now.max(next);
            if core_next.is_some_and(|at| at <= next) {
                self.harness.wake(self.now)?;
                self.react();
                continue;
            }
            let Some(Reverse((_, _, event))) = self.events.pop() else {
                continue;
            };
            self.harness.set_clock(self.now);
            match event {
                LoopEv::Submit(caller) => {
                    if self.now >= end {
                        continue;
                    }
                    let budget = Some(self.scenario.budget_ms);
                    let key = self.harness.submit(Shape::Tool, budget)?;
                    self.react();
                    match key {
                        Some(request) => {
                            self.callers.insert(request, caller);
                        }
                        None => {
                            let at = self.now + self.scenario.refusal_backoff;
                            self.schedule(at, LoopEv::Submit(caller));
                        }
                    }
                }
                LoopEv::Complete(request) => {
                    self.harness.complete(request, Outcome::Success)?;
                    self.react();
                }
                LoopEv::ProbeReply(worker, probe) => {
                    self.harness.probe_result(worker, probe, Verdict::Healthy)?;
                    self.react();
                }
            }
        }
        shut_down_and_check(&mut self.harness, self.now)
    }
}

/// Runs a [`ClosedLoop`] scenario under every check of the
/// [`crate::model::Harness`], and fails it on any ejection or any second
/// of the run without a success. Keeps the full trace when `keep_trace`.
pub fn run_closed_loop(scenario: &ClosedLoop, keep_trace: bool) -> ClosedLoopOutcome {
    let config = PoolConfig::new(WorkerPoolOptions::default());
    let harness = match Harness::with_trace(config, keep_trace) {
        Ok(harness) => harness,
        Err(error) => {
            return ClosedLoopOutcome {
                name: scenario.name,
                failure: Some(format!("scenario config refused: {error}")),
                ok: 0,
                timeouts_queued: 0,
                timeouts_running: 0,
                refused_no_healthy_worker: 0,
                refused_queue_full: 0,
                ejections: 0,
                ok_per_second: Vec::new(),
                trace_hash: 0,
                full: None,
            }
        }
    };
    let seconds = scenario.run_for.as_secs().max(1) as usize;
    let mut sim = LoopSim {
        scenario,
        harness,
        events: BinaryHeap::new(),
        seq: 0,
        now: Time::ZERO,
        callers: std::collections::BTreeMap::new(),
        ok_per_second: vec![0; seconds],
        buffer: Vec::new(),
    };
    let result = sim.run();
    let counters = *sim.harness.pool().counters();
    let ejections = sim.harness.ejections();
    let mut failure = match result {
        Ok(()) => None,
        Err(failure) => Some(sim.harness.failure().cloned().unwrap_or(failure).0),
    };
    if failure.is_none() && ejections > 0 {
        failure = Some(format!("{ejections} workers ejected under overload"));
    }
    if failure.is_none() {
        if let Some(second) = sim.ok_per_second.iter().position(|&ok| ok == 0) {
            failure = Some(format!("no request succeeded in second {second}"));
        }
    }
    let trace = sim.harness.trace();
    ClosedLoopOutcome {
        name: scenario.name,
        failure,
        ok: counters.succeeded,
        timeouts_queued: counters.timed_out_queued,
        timeouts_running: counters.timed_out_running,
        refused_no_healthy_worker: counters.refused_no_healthy_worker,
        refused_queue_full: counters.refused_queue_full,
        ejections,
        ok_per_second: sim.ok_per_second,
        trace_hash: trace.hash(),
        full: trace.full().map(<[TraceEvent]>::to_vec),
    }
}
