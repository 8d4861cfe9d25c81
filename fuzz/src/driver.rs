//! A checking driver for `Pool`, and the `core_ops` target built on it.

use std::collections::BTreeSet;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use foreman_core::{
    Action, Pool, PoolConfig, RequestKey, Time, WorkerErrorCode, WorkerHealthStatus, WorkerKey,
    WorkerOperation, WorkerProtocolError, WorkerRequest,
};
use serde_json::json;

/// The latest time the harnesses feed the core: [`Time::MAX`] itself.
///
/// The `config` target once found the core livelocking there (a probe's
/// timeout saturated to `now` and re-armed itself forever; reproducer in
/// `tests/replay.rs::core_survives_the_end_of_time`). The core now treats a
/// deadline at `Time::MAX` as "never", so the harnesses go all the way.
pub const END_OF_TIME: Time = Time::MAX;

/// Longest operation sequence one `core_ops` input runs (keeps one execution
/// short; the fuzzer finds longer histories by running more inputs).
const MAX_OPS: usize = 256;

/// One input to the core, chosen by the fuzzer. Indices (`pick`) select among
/// the things the driver currently knows (running requests, workers, …) and
/// wrap around; `Stale*` inputs name keys that may not exist at all.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// `add_worker`.
    AddWorker,
    /// `add_named_worker` with `w<n>`, an empty name (n = 0) or an overlong
    /// one (n = 255).
    AddNamedWorker(u8),
    /// `submit` of a request; see [`TimeoutPick`]. `valid = false` submits
    /// one with an empty `request_id`.
    Submit {
        /// The request's `timeout_ms`.
        timeout: TimeoutPick,
        /// Whether the request passes validation.
        valid: bool,
        /// Veto every worker (a circuit breaker that is open).
        veto: bool,
    },
    /// `handle_completion` of a running request, with success or an error.
    Complete {
        /// Which running request.
        pick: u8,
        /// Success or error.
        ok: bool,
    },
    /// `handle_completion` for an arbitrary key (usually unknown).
    CompleteStale(u64),
    /// `handle_probe_result` of an outstanding probe.
    Probe {
        /// Which outstanding probe.
        pick: u8,
        /// The status it reports (index mod 3).
        status: u8,
    },
    /// `cancel` of an accepted request.
    Cancel {
        /// Which pending request.
        pick: u8,
    },
    /// `cancel` of an arbitrary key.
    CancelStale(u64),
    /// `restart_worker`.
    Restart {
        /// Which worker.
        pick: u8,
    },
    /// `remove_worker`.
    Remove {
        /// Which worker.
        pick: u8,
    },
    /// `restart_worker` and `remove_worker` of an arbitrary key.
    StaleWorker(u64),
    /// Time moves forward, then `handle_timeout`.
    Advance(Step),
    /// Jump to the instant `poll_timeout` names and `handle_timeout` there.
    FireNextTimer,
    /// `handle_timeout` with a time earlier than the latest seen.
    Backwards(u32),
    /// `begin_shutdown` with a drain limit in milliseconds (`None`: none).
    Shutdown(Option<u16>),
}

/// The `timeout_ms` of a submitted request.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum TimeoutPick {
    /// `None`: the pool's default.
    Default,
    /// `Some(0)`: answered `Timeout` on arrival.
    Zero,
    /// A short budget.
    Millis(u16),
    /// The policy's maximum.
    Max,
    /// `Some(u64::MAX)`.
    Huge,
}

/// How far time moves.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Step {
    /// Nanoseconds.
    Nanos(u16),
    /// Milliseconds.
    Millis(u16),
    /// Seconds.
    Secs(u16),
    /// To the end of time.
    ToTheEnd,
}

impl Step {
    fn duration(self) -> Duration {
        match self {
            Step::Nanos(n) => Duration::from_nanos(n.into()),
            Step::Millis(n) => Duration::from_millis(n.into()),
            Step::Secs(n) => Duration::from_secs(n.into()),
            Step::ToTheEnd => Duration::MAX,
        }
    }
}

/// What a run did, for corpus generation and sanity checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Outcome {
    /// Requests accepted.
    pub accepted: u64,
    /// Requests refused by `submit`.
    pub refused: u64,
    /// Requests started on a worker (`core_ops`: completed by their handler).
    pub started: u64,
    /// Answers delivered.
    pub answered: u64,
    /// Workers added.
    pub workers: u64,
    /// Whether shutdown completed.
    pub stopped: bool,
}

/// Drives a `Pool<u64>`, checks every rule after every input and keeps just
/// enough state to choose meaningful next inputs.
pub struct Driver {
    pool: Pool<u64>,
    now: Time,
    /// Accepted and not yet answered.
    pending: BTreeSet<RequestKey>,
    /// Started and neither answered nor aborted.
    running: BTreeSet<RequestKey>,
    /// Outstanding probes.
    probes: Vec<(WorkerKey, foreman_core::ProbeKey)>,
    /// Workers told to stop; no action may name them again.
    stopped_workers: BTreeSet<WorkerKey>,
    next_id: u64,
    shutdown_complete: bool,
    outcome: Outcome,
}

impl Driver {
    /// Wraps a freshly built pool whose clock reads `now`.
    pub fn new(pool: Pool<u64>, now: Time) -> Self {
        assert!(now <= END_OF_TIME, "the driver stops short of Time::MAX (see END_OF_TIME)");
        let mut driver = Driver {
            pool,
            now,
            pending: BTreeSet::new(),
            running: BTreeSet::new(),
            probes: Vec::new(),
            stopped_workers: BTreeSet::new(),
            next_id: 0,
            shutdown_complete: false,
            outcome: Outcome::default(),
        };
        driver.settle("new");
        driver
    }

    /// A pool with the default configuration.
    pub fn with_default_config() -> Self {
        let pool = Pool::new(PoolConfig::default(), Time::ZERO).expect("the default config is valid");
        Self::new(pool, Time::ZERO)
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<u64> {
        &self.pool
    }

    /// What happened so far.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Applies one input, drains every output and checks every rule.
    ///
    /// # Panics
    /// When the pool breaks a rule.
    pub fn apply(&mut self, op: &Op) {
        match *op {
            Op::AddWorker => {
                if self.pool.add_worker(self.now).is_ok() {
                    self.outcome.workers += 1;
                }
            }
            Op::AddNamedWorker(n) => {
                let id = match n {
                    0 => String::new(),
                    255 => "w".repeat(self.pool.config().options.security_policy.max_identifier_length.min(4096) + 1),
                    n => format!("w{n}"),
                };
                if self.pool.add_named_worker(self.now, id).is_ok() {
                    self.outcome.workers += 1;
                }
            }
            Op::Submit { timeout, valid, veto } => self.submit(timeout, valid, veto),
            Op::Complete { pick, ok } => {
                if let Some(key) = nth(&self.running, pick) {
                    self.running.remove(&key);
                    let result = if ok {
                        Ok(json!({ "done": key.as_u64() }))
                    } else {
                        Err(WorkerProtocolError::new(WorkerErrorCode::ExecutionFailed, "boom", true))
                    };
                    assert!(
                        self.pool.handle_completion(self.now, key, result),
                        "completion of running {key} ignored"
                    );
                }
            }
            Op::CompleteStale(raw) => {
                let key = RequestKey::from_u64(raw);
                let was_running = self.running.remove(&key);
                let took = self.pool.handle_completion(self.now, key, Ok(json!(null)));
                assert_eq!(took, was_running, "stale completion of {key}");
            }
            Op::Probe { pick, status } => {
                if !self.probes.is_empty() {
                    let (worker, probe) = self.probes.remove(usize::from(pick) % self.probes.len());
                    let status = [
                        WorkerHealthStatus::Healthy,
                        WorkerHealthStatus::Degraded,
                        WorkerHealthStatus::Unavailable,
                    ][usize::from(status % 3)];
                    assert!(
                        self.pool.handle_probe_result(self.now, worker, probe, status),
                        "outstanding probe {probe:?} of {worker} ignored"
                    );
                }
            }
            Op::Cancel { pick } => {
                if let Some(key) = nth(&self.pending, pick) {
                    assert!(self.pool.cancel(self.now, key), "cancel of pending {key} ignored");
                }
            }
            Op::CancelStale(raw) => {
                let key = RequestKey::from_u64(raw);
                let took = self.pool.cancel(self.now, key);
                assert_eq!(took, self.pending.contains(&key), "stale cancel of {key}");
            }
            Op::Restart { pick } => {
                if let Some(worker) = self.pick_worker(pick) {
                    let _ = self.pool.restart_worker(self.now, worker);
                }
            }
            Op::Remove { pick } => {
                if let Some(worker) = self.pick_worker(pick) {
                    let _ = self.pool.remove_worker(self.now, worker);
                }
            }
            Op::StaleWorker(raw) => {
                let worker = WorkerKey::from_u64(raw);
                let _ = self.pool.restart_worker(self.now, worker);
                self.settle("stale restart");
                let _ = self.pool.remove_worker(self.now, worker);
            }
            Op::Advance(step) => {
                self.now = self.now.saturating_add(step.duration()).min(END_OF_TIME);
                self.pool.handle_timeout(self.now);
            }
            Op::FireNextTimer => {
                if let Some((at, _reason)) = self.pool.poll_timeout() {
                    self.now = self.now.max(at).min(END_OF_TIME);
                    self.pool.handle_timeout(self.now);
                }
            }
            Op::Backwards(nanos) => {
                let earlier = Time::from_nanos(self.now.as_nanos().saturating_sub(nanos.into()));
                self.pool.handle_timeout(earlier);
            }
            Op::Shutdown(drain) => {
                self.pool
                    .begin_shutdown(self.now, drain.map(|ms| Duration::from_millis(ms.into())));
            }
        }
        self.settle("an input");
    }

    /// Runs every op, then the liveness phase ([`Self::finish`]).
    pub fn run(mut self, ops: &[Op]) -> Outcome {
        for op in ops {
            self.apply(op);
        }
        self.finish()
    }

    /// Shuts down with a zero drain limit: everything must be answered at
    /// once and the pool must stop.
    ///
    /// # Panics
    /// When a request is left unanswered or the pool does not stop.
    pub fn finish(mut self) -> Outcome {
        self.pool.begin_shutdown(self.now, Some(Duration::ZERO));
        self.settle("shutdown");
        self.pool.handle_timeout(self.now);
        self.settle("final timeout");
        assert!(self.pending.is_empty(), "unanswered after shutdown: {:?}", self.pending);
        assert_eq!(self.pool.pending(), 0, "pool holds requests after shutdown");
        assert!(self.pool.is_stopped(), "pool not stopped after a zero-drain shutdown");
        assert!(self.shutdown_complete, "no ShutdownComplete event");
        assert!(self.pool.poll_timeout().is_none(), "a stopped pool still wants a timeout");
        self.outcome.stopped = true;
        self.outcome
    }

    fn submit(&mut self, timeout: TimeoutPick, valid: bool, veto: bool) {
        let policy = &self.pool.config().options.security_policy;
        let timeout_ms = match timeout {
            TimeoutPick::Default => None,
            TimeoutPick::Zero => Some(0),
            TimeoutPick::Millis(ms) => Some(u64::from(ms).max(1).min(policy.max_request_timeout_ms)),
            TimeoutPick::Max => Some(policy.max_request_timeout_ms),
            TimeoutPick::Huge => Some(u64::MAX),
        };
        self.next_id += 1;
        let id = self.next_id;
        let request = WorkerRequest {
            request_id: if valid { format!("r{id}") } else { String::new() },
            workflow_name: "w".into(),
            node_id: "n".into(),
            timeout_ms,
            operation: WorkerOperation::Tool {
                tool: "t".into(),
                input: json!(id),
                scoped_input: json!(null),
            },
        };
        let before = self.pool.pending();
        match self.pool.submit_with(self.now, &request, id, |_| !veto) {
            Ok(key) => {
                assert!(self.pending.insert(key), "{key} handed out twice");
                assert_eq!(self.pool.pending(), before + 1, "accepted without pending");
                self.outcome.accepted += 1;
            }
            Err(refused) => {
                assert_eq!(refused.payload, id, "refused submit returned another payload");
                assert_eq!(self.pool.pending(), before, "refused submit changed pending");
                self.outcome.refused += 1;
            }
        }
    }

    fn pick_worker(&self, pick: u8) -> Option<WorkerKey> {
        let workers: Vec<WorkerKey> = self.pool.workers().collect();
        if workers.is_empty() {
            None
        } else {
            Some(workers[usize::from(pick) % workers.len()])
        }
    }

    /// Drains every output, checks it against what the driver knows, then
    /// checks the pool's own invariants and the growth bounds.
    fn settle(&mut self, after: &str) {
        // Requests whose worker was removed while a breaker held them
        // there, placed anew (by a breaker that allows every worker) once
        // the actions of the input are carried out.
        let mut revets = Vec::new();
        loop {
            for request in revets.drain(..) {
                let _ = self.pool.revet_with(self.now, request, |_| true);
            }
            self.carry_out(&mut revets);
            if revets.is_empty() {
                break;
            }
        }
        self.check(after);
    }

    /// Carries out the pending actions; the requests to place anew go to
    /// `revets`.
    fn carry_out(&mut self, revets: &mut Vec<RequestKey>) {
        while let Some(action) = self.pool.poll_action() {
            match action {
                Action::Revet { request, worker, .. } => {
                    assert!(self.pending.contains(&request), "revet of unknown {request}");
                    assert!(!self.running.contains(&request), "revet of running {request}");
                    assert!(!self.stopped_workers.contains(&worker), "revet off stopped {worker}");
                    revets.push(request);
                }
                Action::Start { request, worker, .. } => {
                    assert!(self.pending.contains(&request), "start of unknown {request}");
                    assert!(self.running.insert(request), "{request} started twice");
                    assert!(!self.stopped_workers.contains(&worker), "start on stopped {worker}");
                    self.outcome.started += 1;
                }
                Action::Abort { request, .. } => {
                    assert!(self.running.remove(&request), "abort of {request}, which is not running");
                }
                Action::Answer(answer) => {
                    assert!(
                        self.pending.remove(&answer.request),
                        "answer to {}, which is not pending (answered twice?)",
                        answer.request
                    );
                    assert!(
                        !self.running.remove(&answer.request),
                        "{} answered while its handler runs (no Abort first)",
                        answer.request
                    );
                    self.outcome.answered += 1;
                }
                Action::RunProbe { worker, probe } => {
                    assert!(!self.stopped_workers.contains(&worker), "probe of stopped {worker}");
                    self.probes.retain(|(w, _)| *w != worker);
                    self.probes.push((worker, probe));
                }
                Action::AbortProbe { worker, probe } => {
                    self.probes.retain(|&(w, p)| (w, p) != (worker, probe));
                }
                Action::RestartWorker { worker } => {
                    assert!(!self.stopped_workers.contains(&worker), "restart of stopped {worker}");
                    self.probes.retain(|(w, _)| *w != worker);
                }
                Action::StopWorker { worker } => {
                    assert!(self.stopped_workers.insert(worker), "{worker} stopped twice");
                    self.probes.retain(|(w, _)| *w != worker);
                }
            }
        }
    }

    /// Drains the events, then checks the pool's own invariants and the
    /// growth bounds.
    fn check(&mut self, after: &str) {
        while let Some(event) = self.pool.poll_event() {
            if let foreman_core::Event::ShutdownComplete { .. } = event {
                assert!(!self.shutdown_complete, "ShutdownComplete twice");
                self.shutdown_complete = true;
            }
        }
        if let Err(broken) = self.pool.check_invariants() {
            panic!("after {after}: {broken}");
        }
        // Growth bounds: nothing is held that was not accepted, and queues
        // stay within their configured capacity.
        assert_eq!(self.pool.pending(), self.pending.len(), "after {after}: pending count");
        assert!(
            self.pool.counters().accepted >= self.pending.len() as u64,
            "after {after}: more pending than accepted"
        );
        let stats = self.pool.stats();
        let options = &self.pool.config().options;
        let concurrency = self.pool.config().max_concurrency_per_worker as usize;
        for worker in &stats.workers {
            assert!(worker.queued <= options.queue_capacity, "after {after}: queue over capacity");
            assert!(worker.running <= concurrency, "after {after}: too many running");
        }
        assert_eq!(stats.queued + stats.running, self.pending.len(), "after {after}: held requests");
        assert!(self.running.len() <= stats.running, "after {after}: driver runs more than the pool");
    }
}

fn nth(set: &BTreeSet<RequestKey>, pick: u8) -> Option<RequestKey> {
    if set.is_empty() {
        None
    } else {
        set.iter().nth(usize::from(pick) % set.len()).copied()
    }
}

/// The `core_ops` target, on the shared operation model of `foreman-tests`
/// (the simulator's and the proptest state machines' [`foreman_tests::model`]):
/// bytes → a small configuration (queue capacity 1–4, failure threshold 1–4,
/// concurrency 1–3, so queues fill and workers flip) → up to 256
/// [`foreman_tests::model::Op`]s, each applied by the model's `Harness`, which
/// drains every output and checks the pool after every input → growth bounds
/// checked here after each op → a final zero-drain shutdown that must answer
/// everything and stop the pool.
///
/// # Panics
/// With the model's description of the first broken rule.
pub fn core_ops(data: &[u8]) {
    let _ = core_ops_outcome(data);
}

/// [`core_ops`], returning what the run did.
pub fn core_ops_outcome(data: &[u8]) -> Outcome {
    use foreman_tests::model::{Harness, Op as ModelOp};

    let mut u = Unstructured::new(data);
    let mut options = foreman_core::WorkerPoolOptions::default();
    options.queue_capacity = usize::from(u.arbitrary::<u8>().unwrap_or(0) % 4) + 1;
    options.unavailable_after_failures = u32::from(u.arbitrary::<u8>().unwrap_or(0) % 4) + 1;
    // A 4 KiB payload limit instead of 256 KiB: the model's oversized
    // request is one byte past the limit, and building and copying 256 KiB
    // strings under AddressSanitizer held the target to ~13 exec/s.
    options.security_policy.max_request_payload_bytes = 4096;
    let mut config = PoolConfig::new(options);
    // One byte picks the concurrency (its value mod 3) and the routing (the
    // rest): idle-first with late binding (the default), idle-first
    // without, or round robin; so older corpus files decode the same ops.
    let pick = u.arbitrary::<u8>().unwrap_or(0);
    config.max_concurrency_per_worker = u32::from(pick % 3) + 1;
    match (pick / 3) % 3 {
        0 => {}
        1 => config.late_binding = false,
        _ => config.routing = foreman_core::RoutingPolicy::RoundRobin,
    }
    let capacity = config.options.queue_capacity;
    let concurrency = config.max_concurrency_per_worker as usize;
    let mut harness = Harness::new(config).expect("valid config");
    // The model's cheap checks run after every input; its O(n) ones (the
    // core's `check_invariants` and a stats comparison) after every 16th
    // input (amortised), every worker command and the final shutdown. A
    // long `Advance` wakes the core up to 4096 times, and a full check at
    // every wake-up made the target run at ~13 exec/s.
    harness.set_full_check_amortised(16);
    let mut outcome = Outcome::default();
    let mut ops = 0;
    while ops < MAX_OPS && !u.is_empty() {
        let Ok(mut op) = u.arbitrary::<ModelOp>() else { break };
        // Most clock moves stay within a minute (every kind of timer still
        // fires: probes every 5 s, default timeout 30 s); one in 64 keeps its
        // full range (up to ~50 days, which the model caps at 4096
        // wake-ups). Uniform jumps of up to 2^32 ms made nearly every op
        // cost thousands of wake-ups: ~30 exec/s.
        if let ModelOp::Advance { ms } = &mut op {
            if *ms % 64 != 0 {
                *ms %= 60_000;
            }
        }
        if let Err(failure) = harness.apply(op) {
            panic!("op {ops} ({op:?}): {failure}");
        }
        match op {
            ModelOp::AddWorker => outcome.workers += 1,
            ModelOp::Submit { .. } | ModelOp::Offer { .. } => outcome.refused += 1,
            _ => {}
        }
        // No unbounded growth: nothing held that was not accepted, every
        // queue within its capacity, every worker within its concurrency.
        let pool = harness.pool();
        let counters = pool.counters();
        assert!(pool.pending() as u64 <= counters.accepted, "more pending than accepted");
        let stats = pool.stats();
        for worker in &stats.workers {
            assert!(worker.queued <= capacity, "{}: queue over capacity", worker.worker_id);
            assert!(worker.running <= concurrency, "{}: over concurrency", worker.worker_id);
        }
        assert_eq!(stats.queued + stats.running, pool.pending(), "held requests");
        ops += 1;
    }
    let counters = *harness.pool().counters();
    outcome.accepted = counters.accepted;
    outcome.refused = outcome.refused.saturating_sub(counters.accepted);
    if let Err(failure) = harness
        .begin_shutdown(Some(Duration::ZERO))
        .and_then(|()| harness.check())
    {
        panic!("final shutdown: {failure}");
    }
    assert_eq!(harness.pool().pending(), 0, "requests left after a zero-drain shutdown");
    assert!(harness.is_stopped(), "pool not stopped after a zero-drain shutdown");
    let counters = harness.pool().counters();
    outcome.started = counters.succeeded + counters.failed;
    outcome.answered = counters.accepted;
    outcome.stopped = true;
    outcome
}
