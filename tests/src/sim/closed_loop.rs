//! Runs a named scenario ([`ClosedLoop`]) for one contender under every
//! check of the [`Harness`], and measures it ([`ClosedLoopOutcome`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::Duration;

use foreman_core::{
    HealthCause, PoolConfig, ProbeKey, RequestKey, Time, WorkerHealthStatus, WorkerKey,
    WorkerPoolOptions,
};

use super::contenders::Contender;
use super::latency::worker_stream;
use super::named::{ClosedLoop, Stop};
use super::oracle::{approving_only, choose, plan_late, Knowledge, WorkerView};
use super::outcome::{ClosedLoopOutcome, Tally};
use super::{next_instant, shut_down_and_check, FULL_CHECK_EVERY};
use crate::model::{Failure, Harness, Outcome, Output, Shape, TraceEvent, Verdict};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum LoopEv {
    Submit(usize),
    /// The late-binding oracle looks at its line again.
    Dispatch,
    Complete(RequestKey, Outcome),
    ProbeReply(WorkerKey, ProbeKey),
}

struct LoopSim<'a> {
    scenario: &'a ClosedLoop,
    contender: &'a Contender,
    harness: Harness,
    /// Queued and running requests a worker holds at most.
    capacity: usize,
    events: BinaryHeap<Reverse<(Time, u64, LoopEv)>>,
    seq: u64,
    now: Time,
    /// Worker keys by index (order of addition).
    keys: Vec<WorkerKey>,
    /// Each worker's latency draws and fault draws.
    latency_draws: Vec<Rng>,
    fault_draws: Vec<Rng>,
    /// The caller waiting on each pending request, and when it submitted.
    callers: BTreeMap<RequestKey, (usize, Time)>,
    /// Each pending request's attempts (starts) so far, hedges included.
    attempts: BTreeMap<RequestKey, u64>,
    /// The request each running hedge (by its key) belongs to.
    hedge_of: BTreeMap<RequestKey, RequestKey>,
    /// Each worker's running requests, with when each started and when
    /// it will end.
    running: Vec<Vec<(RequestKey, Time, Time)>>,
    /// Under the late-binding oracle: callers' requests not yet placed, in
    /// arrival order, with when each was submitted.
    line: VecDeque<(usize, Time)>,
    /// Submits made so far, and the instant of the last.
    submitted: u64,
    last_submit: Time,
    tally: Tally,
    buffer: Vec<Output>,
}

impl LoopSim<'_> {
    fn schedule(&mut self, at: Time, event: LoopEv) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, event)));
    }

    fn index_of(&self, worker: WorkerKey) -> Option<usize> {
        self.keys.iter().position(|&key| key == worker)
    }

    fn forget_running(&mut self, request: RequestKey) {
        for runs in &mut self.running {
            runs.retain(|&(key, _, _)| key != request);
        }
    }

    /// A request starts on worker `index`: when it ends and how, from the
    /// worker's own draws (both drawn every time, so the `n`-th run of a
    /// worker takes the same draws whichever policy sent it there).
    fn start(&mut self, request: RequestKey, index: usize) {
        let at = self.now.since_epoch();
        let workers = self.scenario.workers;
        let latency = match self.latency_draws.get_mut(index) {
            Some(rng) => self.scenario.latency.sample(index, workers, at, rng),
            None => Duration::ZERO,
        };
        let roll = self
            .fault_draws
            .get_mut(index)
            .map_or(0, |rng| rng.below(1000));
        let (after, outcome) = match self.scenario.fault(index, at) {
            Some(fault) if roll < u64::from(fault.permille) => (
                self.scenario.fail_after,
                Outcome::Failure {
                    retryable: fault.retryable,
                },
            ),
            _ => (latency, Outcome::Success),
        };
        if let Some(runs) = self.running.get_mut(index) {
            runs.push((request, self.now, self.now + after));
        }
        let owner = self.harness.attempt_owner(request);
        if owner != request {
            self.hedge_of.insert(request, owner);
        }
        *self.attempts.entry(owner).or_insert(0) += 1;
        self.tally.started(index);
        self.schedule(self.now + after, LoopEv::Complete(request, outcome));
    }

    /// Acts on what the last input asked the driver to do.
    fn react(&mut self) {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        buffer.extend_from_slice(self.harness.outputs());
        for output in &buffer {
            match *output {
                Output::Start {
                    request, worker, ..
                } => {
                    let index = self.index_of(worker).unwrap_or(usize::MAX);
                    self.start(request, index);
                }
                Output::Abort { request } => self.forget_running(request),
                Output::RunProbe { worker, probe } => {
                    let at = self.now + Duration::from_millis(1);
                    self.schedule(at, LoopEv::ProbeReply(worker, probe));
                }
                Output::Answered { request, kind, .. } => {
                    self.forget_running(request);
                    // Its hedge's run, if the hedge answered it.
                    let hedges: Vec<RequestKey> = self
                        .hedge_of
                        .iter()
                        .filter(|(_, owner)| **owner == request)
                        .map(|(hedge, _)| *hedge)
                        .collect();
                    for hedge in hedges {
                        self.hedge_of.remove(&hedge);
                        self.forget_running(hedge);
                    }
                    let attempts = self.attempts.remove(&request).unwrap_or(0);
                    if let Some((caller, since)) = self.callers.remove(&request) {
                        let latency = self.now.since_epoch() - since.since_epoch();
                        self.tally
                            .answered(kind, latency, attempts, self.now.since_epoch());
                        self.schedule(self.now, LoopEv::Submit(caller));
                    }
                }
                _ => {}
            }
        }
        self.buffer = buffer;
    }

    /// Whether callers have stopped submitting.
    fn stopped(&self) -> bool {
        match self.scenario.stop {
            Stop::Requests(requests) => self.submitted >= requests,
            Stop::RunFor(run_for) => self.now >= Time::ZERO + run_for,
        }
    }

    /// The latest instant the run may reach with requests pending: a
    /// budget (plus a probe interval, should a worker be out) after the
    /// callers stopped.
    fn limit(&self) -> Time {
        let grace = self.scenario.budget + WorkerPoolOptions::default().health_probe_interval;
        match self.scenario.stop {
            Stop::RunFor(run_for) => Time::ZERO + run_for + grace,
            Stop::Requests(_) if self.stopped() => self.last_submit + grace,
            Stop::Requests(_) => Time::MAX,
        }
    }

    /// What the oracle sees of each worker now: whether it is open, its
    /// queue, its runs, its latency stream.
    fn oracle_views<'v>(&'v self, runs: &'v [Vec<(Time, Time)>]) -> Vec<WorkerView<'v>> {
        let stats = self.harness.pool().stats();
        self.keys
            .iter()
            .zip(runs)
            .zip(&self.latency_draws)
            .map(|((&key, running), draws)| {
                let (open, queued) = match stats.workers.iter().find(|w| w.worker == key) {
                    Some(w) => (
                        w.status != WorkerHealthStatus::Unavailable
                            && !w.removing
                            && w.queued + w.running < self.capacity,
                        w.queued,
                    ),
                    None => (false, 0),
                };
                WorkerView {
                    open,
                    queued,
                    running,
                    draws,
                }
            })
            .collect()
    }

    /// Each worker's running requests: when each started and will end.
    fn runs(&self) -> Vec<Vec<(Time, Time)>> {
        self.running
            .iter()
            .map(|runs| runs.iter().map(|&(_, start, end)| (start, end)).collect())
            .collect()
    }

    /// The choice of an oracle knowing this much for a request submitted
    /// now.
    fn oracle_choice(&self, knowledge: Knowledge) -> Option<usize> {
        let runs = self.runs();
        let views = self.oracle_views(&runs);
        choose(&self.scenario.latency, knowledge, &views, self.now)
    }

    /// Under the late-binding oracle: starts the requests of its line that
    /// its plan ([`plan_late`]) starts now, each on its worker through a
    /// breaker approving only that one; a refused one goes back to the
    /// front of the line and the line is looked at again after the
    /// refusal back-off.
    fn dispatch_late(&mut self) -> Result<(), Failure> {
        if self.line.is_empty() {
            return Ok(());
        }
        let runs = self.runs();
        let plan = {
            let views = self.oracle_views(&runs);
            plan_late(&self.scenario.latency, &views, self.line.len(), self.now)
        };
        let budget = Some(self.scenario.budget.as_millis() as u64);
        for &(position, worker) in plan.iter().rev() {
            let Some((caller, since)) = self.line.remove(position) else {
                continue;
            };
            let key =
                self.harness
                    .submit_vetted_wide(Shape::Llm, budget, approving_only(worker))?;
            self.react();
            match key {
                Some(request) => {
                    self.callers.insert(request, (caller, since));
                }
                None => {
                    self.line.push_front((caller, since));
                    let at = self.now + self.scenario.refusal_backoff;
                    self.schedule(at, LoopEv::Dispatch);
                }
            }
        }
        Ok(())
    }

    /// Whether this run is the late-binding oracle's.
    fn late(&self) -> bool {
        self.contender.oracle() == Some(Knowledge::MeansLate)
    }

    fn submit(&mut self, caller: usize) -> Result<(), Failure> {
        if self.stopped() {
            return Ok(());
        }
        self.submitted += 1;
        self.last_submit = self.now;
        if self.late() {
            self.line.push_back((caller, self.now));
            return Ok(());
        }
        let budget = Some(self.scenario.budget.as_millis() as u64);
        let choice = self
            .contender
            .oracle()
            .and_then(|knowledge| self.oracle_choice(knowledge));
        let key = match choice {
            Some(worker) => {
                self.harness
                    .submit_vetted_wide(Shape::Llm, budget, approving_only(worker))?
            }
            None => self.harness.submit(Shape::Llm, budget)?,
        };
        self.react();
        match key {
            Some(request) => {
                self.callers.insert(request, (caller, self.now));
            }
            None => {
                let at = self.now + self.scenario.refusal_backoff;
                self.schedule(at, LoopEv::Submit(caller));
            }
        }
        Ok(())
    }

    fn run(&mut self) -> Result<(), Failure> {
        for _ in 0..self.scenario.workers {
            if let Some(key) = self.harness.add_worker()? {
                self.keys.push(key);
            }
            self.react();
        }
        for caller in 0..self.scenario.callers {
            self.schedule(Time::ZERO, LoopEv::Submit(caller));
        }
        loop {
            if self.stopped() && self.harness.pending() == 0 && self.line.is_empty() {
                break;
            }
            let sim_next = self.events.peek().map(|Reverse((at, _, _))| *at);
            let (core_next, next) = next_instant(&mut self.harness, sim_next)?;
            let limit = self.limit();
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
                if self.late() {
                    self.dispatch_late()?;
                }
                continue;
            }
            let Some(Reverse((_, _, event))) = self.events.pop() else {
                continue;
            };
            self.harness.set_clock(self.now);
            match event {
                LoopEv::Submit(caller) => self.submit(caller)?,
                LoopEv::Dispatch => {}
                LoopEv::Complete(request, outcome) => {
                    self.harness.complete(request, outcome)?;
                    self.react();
                }
                LoopEv::ProbeReply(worker, probe) => {
                    self.harness.probe_result(worker, probe, Verdict::Healthy)?;
                    self.react();
                }
            }
            if self.late() {
                self.dispatch_late()?;
            }
        }
        shut_down_and_check(&mut self.harness, self.now)
    }
}

/// The configuration every contender starts from: the reference's
/// default options, the scenario's seed.
fn base_config(scenario: &ClosedLoop) -> PoolConfig {
    PoolConfig::new(WorkerPoolOptions::default()).with_seed(scenario.seed)
}

/// Runs a [`ClosedLoop`] scenario with one contender under every check of
/// the [`Harness`]; a healthy scenario ([`ClosedLoop::healthy`]) also
/// fails on any ejection or any second of the run without a success.
/// Keeps the full trace in the outcome when `keep_trace`.
pub fn run_closed_loop(
    scenario: &ClosedLoop,
    contender: &Contender,
    keep_trace: bool,
) -> ClosedLoopOutcome {
    let config = contender.configure(base_config(scenario));
    let capacity = config
        .options
        .queue_capacity
        .saturating_add(config.max_concurrency_per_worker as usize);
    // The trace is always kept: the health transitions are counted from it.
    let mut harness = match Harness::with_trace(config, true) {
        Ok(harness) => harness,
        Err(error) => {
            let mut outcome = ClosedLoopOutcome::new(scenario, contender);
            outcome.failure = Some(format!("scenario config refused: {error}"));
            return outcome;
        }
    };
    harness.set_full_check_amortised(FULL_CHECK_EVERY);
    let seconds = match scenario.stop {
        Stop::RunFor(run_for) => run_for.as_secs().max(1) as usize,
        Stop::Requests(_) => 0,
    };
    let workers = scenario.workers;
    let mut sim = LoopSim {
        scenario,
        contender,
        harness,
        capacity,
        events: BinaryHeap::new(),
        seq: 0,
        now: Time::ZERO,
        keys: Vec::with_capacity(workers),
        latency_draws: (0..workers)
            .map(|worker| worker_stream(scenario.seed, worker, 0))
            .collect(),
        fault_draws: (0..workers)
            .map(|worker| worker_stream(scenario.seed, worker, 1))
            .collect(),
        callers: BTreeMap::new(),
        attempts: BTreeMap::new(),
        hedge_of: BTreeMap::new(),
        running: vec![Vec::new(); workers],
        line: VecDeque::new(),
        submitted: 0,
        last_submit: Time::ZERO,
        tally: Tally::new(workers, seconds),
        buffer: Vec::new(),
    };
    let result = sim.run();
    let mut outcome = ClosedLoopOutcome::new(scenario, contender);
    outcome.failure = match result {
        Ok(()) => None,
        Err(failure) => Some(sim.harness.failure().cloned().unwrap_or(failure).0),
    };
    let counters = *sim.harness.pool().counters();
    outcome.submitted = sim.submitted;
    outcome.accepted = counters.accepted;
    outcome.refused_queue_full = counters.refused_queue_full;
    outcome.refused_no_healthy_worker = counters.refused_no_healthy_worker;
    outcome.refused_circuit_open = counters.refused_circuit_open;
    outcome.refused_other =
        counters.refused_invalid + counters.refused_shutting_down + counters.refused_no_budget;
    outcome.hedged = counters.hedged;
    outcome.hedges_won = counters.hedges_won;
    outcome.timeouts_queued = counters.timed_out_queued;
    outcome.timeouts_running = counters.timed_out_running;
    outcome.ejections = sim.harness.ejections();
    let trace = sim.harness.trace();
    let events = trace.full().unwrap_or_default();
    outcome.transitions_per_worker = vec![0; workers];
    for event in events {
        if let TraceEvent::Health { worker, cause, .. } = event {
            if *cause != HealthCause::Stopped {
                outcome.transitions += 1;
                if let Some(count) = outcome.transitions_per_worker.get_mut(*worker as usize) {
                    *count += 1;
                }
            }
        }
    }
    outcome.trace_hash = trace.hash();
    if keep_trace {
        outcome.full = Some(events.to_vec());
    }
    outcome.absorb(sim.tally);
    if outcome.failure.is_none() && scenario.healthy {
        outcome.failure = outcome.unhealthy_verdict();
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_counts_one_attempt_per_start() {
        let scenario = ClosedLoop::RETRY_STORM.with_requests(60);
        let contender = Contender::named("idle_first").expect("listed");
        let outcome = run_closed_loop(&scenario, &contender, false);
        assert_eq!(outcome.failure, None, "{}", outcome.figures());
        assert_eq!(outcome.submitted, 60);
        let answered_after_start = outcome.answered - outcome.timeouts_queued;
        assert_eq!(outcome.attempts, answered_after_start);
        assert_eq!(
            outcome.starts_per_worker.iter().sum::<u64>(),
            outcome.attempts
        );
    }

    #[test]
    fn answer_kinds_cover_every_answer() {
        let scenario = ClosedLoop::FLAKY_AND_DEAD.with_requests(200);
        let contender = Contender::named("round_robin").expect("listed");
        let outcome = run_closed_loop(&scenario, &contender, false);
        assert_eq!(outcome.failure, None, "{}", outcome.figures());
        assert!(outcome.failed > 0, "{}", outcome.figures());
        assert_eq!(
            outcome.ok
                + outcome.failed
                + outcome.timeouts_queued
                + outcome.timeouts_running
                + outcome.other_answers,
            outcome.answered
        );
        assert_eq!(outcome.answered, outcome.accepted);
    }
}
