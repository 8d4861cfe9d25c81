//! The seed-driven swarm run: simulated callers, workers, probes and chaos
//! around a [`Harness`], on virtual time that jumps to the next event.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use foreman_core::{ProbeKey, RequestKey, Time, WorkerHealthStatus, WorkerKey};

use super::scenario::{secs, Arrival, Latency, Refusals, Scenario, MAX_LATENCY};
use super::{next_instant, shut_down_and_check};
use crate::model::{Failure, Harness, Outcome, Output, Shape, Verdict};
use crate::rng::Rng;

/// Veto masks of the simulated circuit breakers (bit `i`: workers whose
/// ordinal modulo 8 is `i`): none, one in eight, some, most, all.
const VETO_PATTERNS: [u8; 5] = [0, 0b1, 0b110, 0b1010_0101, 0xff];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrival,
    Complete(RequestKey, Outcome),
    /// A handler declines what it was given before starting it.
    Refuse(RequestKey),
    ProbeReply(WorkerKey, ProbeKey, Verdict),
    Cancel(RequestKey),
    /// A request whose worker was removed is placed through its breaker.
    Revet(RequestKey),
    Chaos,
}

pub(super) struct Sim {
    rng: Rng,
    scenario: Scenario,
    pub(super) harness: Harness,
    events: BinaryHeap<Reverse<(Time, u64, Ev)>>,
    seq: u64,
    pub(super) now: Time,
    latencies: Vec<Latency>,
    hung: Vec<RequestKey>,
    requests: u64,
    submitted: u64,
    burst_left: u64,
    quiet: bool,
    skew: Option<(Duration, u32)>,
    buffer: Vec<Output>,
    /// The largest run limit a worker was given (its own, or the pool's).
    max_run_limit: u32,
    /// The scenario's refusals, with the generator of their draws.
    refusals: Option<(Refusals, Rng)>,
    /// Until when each worker (by ordinal) refuses every start.
    refusing_until: Vec<Time>,
}

impl Sim {
    /// A run of `scenario` around `harness`, drawing from `rng` (already
    /// past the scenario's draws), with `requests` arrivals.
    pub(super) fn new(rng: Rng, scenario: Scenario, harness: Harness, requests: u64) -> Self {
        let scenario_refusals = scenario
            .refusals
            .map(|refusals| (refusals, Rng::new(refusals.seed)));
        Sim {
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
            max_run_limit: 0,
            refusals: scenario_refusals,
            refusing_until: Vec::new(),
        }
    }

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

    /// Adds a worker: half of them with the pool's run limit, the others
    /// with their own, from 1 to 4 (so a pool mixes limits), now and then
    /// 0 (refused).
    fn add_worker(&mut self) -> Result<(), Failure> {
        let pool_limit = self.scenario.config.max_concurrency_per_worker;
        let added = if self.rng.chance(0.5) {
            self.max_run_limit = self.max_run_limit.max(pool_limit);
            self.harness.add_worker()?
        } else {
            let limit = if self.rng.chance(0.02) {
                0
            } else {
                self.rng.range(1, 4) as u32
            };
            self.max_run_limit = self.max_run_limit.max(limit);
            self.harness.add_worker_with(None, limit)?
        };
        if let Some(worker) = added {
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
        if self.refuses(ordinal, request) {
            return;
        }
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

    /// Whether the handler of worker `ordinal` declines what it was just
    /// given (outside the quiet phase: during a burst of refusals, or at
    /// the start of one); schedules the refusal, a moment later, if so.
    fn refuses(&mut self, ordinal: usize, request: RequestKey) -> bool {
        let Some((refusals, rng)) = self.refusals.as_mut() else {
            return false;
        };
        if self.quiet {
            return false;
        }
        if self.refusing_until.len() <= ordinal {
            self.refusing_until.resize(ordinal + 1, Time::ZERO);
        }
        let until = &mut self.refusing_until[ordinal];
        if *until <= self.now {
            if !rng.chance(refusals.start) {
                return false;
            }
            *until = self.now + secs(rng.exp(refusals.mean_burst));
        }
        let after = secs(rng.uniform(0.0, 0.05 * self.scenario.mean_latency));
        self.schedule(self.now + after, Ev::Refuse(request));
        true
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
        let run_limit = config.max_concurrency_per_worker.max(self.max_run_limit);
        let capacity = config.options.queue_capacity as u32 + run_limit + 1;
        MAX_LATENCY
            + self.quiet_latency_cap() * capacity
            + config.options.health_probe_interval * 2
            + Duration::from_secs(1)
    }

    /// The liveness bound of recovery: once faults have stopped, every
    /// worker that is not being removed is back in rotation (not
    /// Unavailable) by `due`, the last evidence against it plus
    /// [`Scenario::recovery_bound`].
    fn back_in_rotation(&mut self, due: Time) -> Result<(), Failure> {
        let stats = self.harness.pool().stats();
        for worker in stats.workers {
            if !worker.removing && worker.status == WorkerHealthStatus::Unavailable {
                let worker = worker.worker;
                return Err(Failure(format!(
                    "liveness: {worker} still Unavailable at {due} ({:?} after the last \
                     evidence against it), in {:?}",
                    self.scenario.recovery_bound(),
                    self.harness.pool().recovery_state(worker)
                )));
            }
        }
        Ok(())
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

    pub(super) fn run(&mut self) -> Result<(), Failure> {
        for _ in 0..self.scenario.workers {
            self.add_worker()?;
        }
        self.schedule(Time::ZERO, Ev::Arrival);
        if let Some(gap) = self.scenario.chaos.mean_gap {
            let first = secs(self.rng.exp(gap));
            self.schedule(Time::ZERO + first, Ev::Chaos);
        }
        let mut quiet_end = Time::MAX;
        let mut quiet_start = Time::MAX;
        // When every worker must be back in rotation (set once nothing is
        // pending): see `back_in_rotation`.
        let mut rotation_due: Option<Time> = None;
        loop {
            if !self.quiet && self.submitted >= self.requests {
                self.enter_quiet();
                quiet_start = self.now;
                quiet_end = self.now + self.quiet_bound();
            }
            if self.quiet && self.harness.pending() == 0 {
                if self.harness.is_shutting_down() {
                    break;
                }
                let due = *rotation_due.get_or_insert_with(|| {
                    // The last evidence against a worker: the last answer,
                    // or a probe sent before the quiet phase ending (it
                    // takes at most three probe timeouts).
                    let probes = self.scenario.config.probe_timeout * 3;
                    self.now.max(quiet_start + probes) + self.scenario.recovery_bound()
                });
                let sim_next = self.events.peek().map(|Reverse((at, _, _))| *at);
                let core_next = self.harness.next_timeout();
                let next = match (core_next, sim_next) {
                    (Some(a), Some(b)) => a.min(b),
                    (a, b) => a.or(b).unwrap_or(Time::MAX),
                };
                if next > due {
                    self.now = self.now.max(due);
                    self.back_in_rotation(due)?;
                    break;
                }
            }
            let sim_next = self.events.peek().map(|Reverse((at, _, _))| *at);
            let (core_next, next) = next_instant(&mut self.harness, sim_next)?;
            if self.harness.pending() > 0 && next > quiet_end {
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
                // (A key no longer running is left alone.)
                Ev::Refuse(request) => {
                    if self.harness.refuse(request)? {
                        self.react()?;
                    }
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
