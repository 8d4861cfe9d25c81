//! Named scenarios with closed-loop callers ([`ClosedLoop`]), run under
//! every check of the [`Harness`] and judged on their outcome.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use foreman_core::{PoolConfig, ProbeKey, RequestKey, Time, WorkerKey, WorkerPoolOptions};

use super::{next_instant, shut_down_and_check};
use crate::model::{AnswerKind, Failure, Harness, Outcome, Output, Shape, TraceEvent, Verdict};

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
    callers: BTreeMap<RequestKey, usize>,
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
        callers: BTreeMap::new(),
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
