//! The [`Harness`]: applies inputs to a `Pool`, drains every output into
//! its books and checks, and settles the core's timers after each input.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::time::Duration;

use foreman_core::{Pool, PoolConfig, ProbeKey, RequestKey, Time, WorkerHealthStatus, WorkerKey};

use super::books::{Context, HedgeBook, KeyTable, Lifecycle, Limits, ReqBook, WorkerBook};
use super::operations::{pick, Op};
use super::output::Output;
use super::requests::Templates;
use super::trace::{Trace, TraceEvent};
use super::Failure;

/// Most wake-ups one [`Op::Advance`] performs before it stops early (keeps a
/// huge jump over a tiny probe interval bounded).
pub const MAX_WAKES_PER_ADVANCE: usize = 4096;

/// Most consecutive `handle_timeout` calls while settling before the harness
/// declares the core stuck (its `poll_timeout` keeps naming the past).
const MAX_SETTLE_ROUNDS: usize = 100_000;

/// Drives a [`Pool<u64>`] input by input, drains every output, keeps its own
/// books and checks the pool after every input. See the module docs for the
/// checks.
pub struct Harness {
    pub(super) pool: Pool<u64>,
    /// What the configuration allows.
    pub(super) limits: Limits,
    pub(super) clock: Time,
    pub(super) seen: Time,
    /// Where a driver that keeps one timer, moved by `Pool::move_timer`,
    /// would have it (`Time::MAX`: not set, or just
    /// fired); never later than `poll_timeout`.
    pub(super) driver_timer: Time,
    pub(super) lifecycle: Lifecycle,
    pub(super) drain_deadline: Option<Time>,
    pub(super) requests: KeyTable<ReqBook>,
    pub(super) live: Vec<RequestKey>,
    pub(super) running: Vec<RequestKey>,
    pub(super) workers: KeyTable<WorkerBook>,
    pub(super) worker_list: Vec<WorkerKey>,
    /// Workers added by name ([`Op::AddNamedWorker`]) and still in the
    /// pool, with the name's choice.
    pub(super) names: Vec<(WorkerKey, u8)>,
    pub(super) probes: Vec<WorkerKey>,
    pub(super) deadlines: BinaryHeap<Reverse<(Time, RequestKey)>>,
    pub(super) probe_deadlines: BinaryHeap<Reverse<(Time, WorkerKey, ProbeKey)>>,
    /// When each saturation expires (stale entries are skipped).
    pub(super) saturations: BinaryHeap<Reverse<(Time, WorkerKey)>>,
    pub(super) schedulable: usize,
    pub(super) open: usize,
    /// Schedulable workers with a free run slot.
    pub(super) free: usize,
    /// Queued requests that are not pinned.
    pub(super) unpinned_queued: usize,
    /// A circuit breaker vetoed some worker during the current submit.
    pub(super) vetoed: bool,
    /// Per-worker vetoes reported (`Rejected` naming a worker) during the
    /// current input.
    pub(super) vetoes_reported: usize,
    /// Vetoes the breaker gave during the current submit.
    pub(super) vetoes_pending: usize,
    /// Requests whose worker was removed, awaiting their breaker.
    pub(super) moving: Vec<RequestKey>,
    /// Requests moved by late binding whose `Start` has not come yet.
    pub(super) stolen: Vec<RequestKey>,
    /// The request the current completion sent to another worker.
    pub(super) retried: Option<RequestKey>,
    /// Running hedges, by the key their `Start` names.
    pub(super) hedges: BTreeMap<u64, HedgeBook>,
    /// Attempts of hedged requests that ended without answering during the
    /// current input (their key, their worker): an `Abort` may name them.
    pub(super) ended: Vec<(RequestKey, WorkerKey)>,
    pub(super) next_id: u64,
    pub(super) next_ordinal: u32,
    pub(super) accepted: u64,
    pub(super) answered: u64,
    /// Requests refused before they started (`Op::Refuse`), as the core's
    /// `refused_not_started` counts them.
    pub(super) refused: u64,
    pub(super) submitted: u64,
    pub(super) templates: Templates,
    pub(super) context: Context,
    pub(super) outputs: Vec<Output>,
    pub(super) trace: Trace,
    pub(super) failure: Option<Failure>,
    pub(super) inputs: u64,
    pub(super) full_check_every: u64,
    pub(super) adaptive: bool,
    pub(super) since_full: u64,
    /// Most wake-ups per [`Op::Advance`].
    pub(super) max_wakes_per_advance: usize,
    pub(super) stale_request: RequestKey,
    pub(super) outputs_this_input: usize,
    /// Workers whose predicted health changed during the current input:
    /// their status is compared with the core's once the input is done.
    pub(super) health_touched: Vec<WorkerKey>,
    /// Workers whose queue or load grew during the current input: checked
    /// against their limits once the input is done.
    pub(super) queues_grown: Vec<WorkerKey>,
    /// The longest successful run seen (bounds when a queued request may
    /// be answered for want of budget).
    pub(super) longest_run: Duration,
    /// The longest run seen, however it ended: no latency estimate exceeds
    /// it (or the unsampled latency), which bounds a deferral.
    pub(super) longest_any_run: Duration,
    /// Changes to `Unavailable` for a health reason (not a shutdown).
    pub(super) ejections: u64,
    /// When a refused request last went back to the line's front.
    pub(super) last_refusal: Option<Time>,
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness")
            .field("seen", &self.seen)
            .field("pending", &self.live.len())
            .field("workers", &self.worker_list.len())
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl Harness {
    /// A harness around a fresh pool with no workers, at time zero.
    ///
    /// # Errors
    /// The pool's [`foreman_core::ConfigError`] for a nonsense config.
    pub fn new(config: PoolConfig) -> Result<Self, foreman_core::ConfigError> {
        Self::build(config, Time::ZERO, false)
    }

    /// Like [`Harness::new`], keeping the whole trace when `keep_trace`.
    ///
    /// # Errors
    /// The pool's [`foreman_core::ConfigError`] for a nonsense config.
    pub fn with_trace(
        config: PoolConfig,
        keep_trace: bool,
    ) -> Result<Self, foreman_core::ConfigError> {
        Self::build(config, Time::ZERO, keep_trace)
    }

    /// Like [`Harness::new`], with the pool created (and the driver's
    /// clock set) at `now`, which may be as late as `Time::MAX`.
    ///
    /// # Errors
    /// The pool's [`foreman_core::ConfigError`] for a nonsense config.
    pub fn starting_at(config: PoolConfig, now: Time) -> Result<Self, foreman_core::ConfigError> {
        Self::build(config, now, false)
    }

    fn build(
        config: PoolConfig,
        now: Time,
        keep_trace: bool,
    ) -> Result<Self, foreman_core::ConfigError> {
        let pool = Pool::new(config.clone(), now)?;
        Ok(Harness {
            pool,
            limits: Limits::new(&config),
            clock: now,
            seen: now,
            driver_timer: Time::MAX,
            lifecycle: Lifecycle::Running,
            drain_deadline: None,
            requests: KeyTable::new(),
            live: Vec::new(),
            running: Vec::new(),
            workers: KeyTable::new(),
            worker_list: Vec::new(),
            names: Vec::new(),
            probes: Vec::new(),
            deadlines: BinaryHeap::new(),
            probe_deadlines: BinaryHeap::new(),
            saturations: BinaryHeap::new(),
            schedulable: 0,
            open: 0,
            free: 0,
            unpinned_queued: 0,
            vetoed: false,
            vetoes_reported: 0,
            vetoes_pending: 0,
            moving: Vec::new(),
            stolen: Vec::new(),
            retried: None,
            hedges: BTreeMap::new(),
            ended: Vec::new(),
            next_id: 1,
            next_ordinal: 0,
            accepted: 0,
            answered: 0,
            refused: 0,
            submitted: 0,
            templates: Templates::new(&config),
            context: Context::Idle,
            outputs: Vec::new(),
            trace: Trace::new(keep_trace),
            failure: None,
            inputs: 0,
            full_check_every: 1,
            adaptive: false,
            since_full: 0,
            max_wakes_per_advance: MAX_WAKES_PER_ADVANCE,
            stale_request: RequestKey::from_u64(u64::MAX),
            outputs_this_input: 0,
            health_touched: Vec::new(),
            queues_grown: Vec::new(),
            longest_run: Duration::ZERO,
            longest_any_run: Duration::ZERO,
            ejections: 0,
            last_refusal: None,
        })
    }

    /// Wakes the core at most `wakes` times (at least 1) per
    /// [`Op::Advance`] (default [`MAX_WAKES_PER_ADVANCE`]): a fuzzer's
    /// bound on the cost of one input over a long stretch of time.
    pub fn set_max_wakes_per_advance(&mut self, wakes: usize) {
        self.max_wakes_per_advance = wakes.max(1);
    }

    /// Stops recording the trace: what a fuzz target, which reads only the
    /// [`Failure`], does to save the hashing and copying of every event.
    pub fn stop_tracing(&mut self) {
        self.trace.stop();
    }

    /// Inputs the pool has been given so far (wake-ups included).
    pub fn inputs(&self) -> u64 {
        self.inputs
    }

    /// Runs the full O(n) checks only every `every` inputs (at least 1).
    pub fn set_full_check_every(&mut self, every: u64) {
        self.full_check_every = every.max(1);
        self.adaptive = false;
    }

    /// Runs the full O(n) checks after at least `every` inputs *and* at
    /// least as many inputs as there are pending requests plus workers, so
    /// that their cost stays amortised O(1) per input however big the pool.
    pub fn set_full_check_amortised(&mut self, every: u64) {
        self.full_check_every = every.max(1);
        self.adaptive = true;
    }

    /// The pool under test (read-only).
    pub fn pool(&self) -> &Pool<u64> {
        &self.pool
    }

    /// The trace so far.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// Records a simulator note in the trace.
    pub fn note(&mut self, what: &'static str) {
        self.trace.push(TraceEvent::Note {
            what,
            at: self.seen,
        });
    }

    /// The first failure found, if any.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// What the last input asked the driver to do.
    pub fn outputs(&self) -> &[Output] {
        &self.outputs
    }

    /// The latest instant the core has seen.
    pub fn now(&self) -> Time {
        self.seen
    }

    /// The driver's clock (may lag behind [`Harness::now`]).
    pub fn clock(&self) -> Time {
        self.clock
    }

    /// Requests accepted and not yet answered.
    pub fn pending(&self) -> usize {
        self.live.len()
    }

    /// Requests running now.
    pub fn running(&self) -> &[RequestKey] {
        &self.running
    }

    /// Pending requests, in no meaningful order.
    pub fn live(&self) -> &[RequestKey] {
        &self.live
    }

    /// Requests whose worker was removed and that await their circuit
    /// breaker ([`Harness::revet`]), in no meaningful order.
    pub fn moving(&self) -> &[RequestKey] {
        &self.moving
    }

    /// Live (not stopped) workers, in no meaningful order.
    pub fn workers(&self) -> &[WorkerKey] {
        &self.worker_list
    }

    /// The ordinal (order of addition) of a worker the books know.
    pub fn ordinal(&self, worker: WorkerKey) -> Option<u32> {
        self.workers.get(worker.as_u64()).map(|book| book.ordinal)
    }

    /// The payload id of a pending request.
    pub fn request_id(&self, request: RequestKey) -> Option<u64> {
        self.requests.get(request.as_u64()).map(|book| book.id)
    }

    /// A worker's status as the core last reported it (`HealthChanged`
    /// events), while the books hold the worker.
    pub fn status(&self, worker: WorkerKey) -> Option<WorkerHealthStatus> {
        self.workers.get(worker.as_u64()).map(|book| book.status)
    }

    /// Changes of a worker to `Unavailable` for a health reason (failures,
    /// timeouts, probes), not counting the shutdown's.
    pub fn ejections(&self) -> u64 {
        self.ejections
    }

    /// The request an attempt's key belongs to: a running hedge's request,
    /// or the key itself.
    pub fn attempt_owner(&self, key: RequestKey) -> RequestKey {
        self.owner(key)
    }

    /// Submitted, accepted and answered so far.
    pub fn totals(&self) -> (u64, u64, u64) {
        (self.submitted, self.accepted, self.answered)
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.lifecycle != Lifecycle::Running
    }

    /// Whether shutdown has completed.
    pub fn is_stopped(&self) -> bool {
        self.lifecycle == Lifecycle::Stopped
    }

    /// The next instant the core wants to be woken.
    pub fn next_timeout(&mut self) -> Option<Time> {
        self.pool.poll_timeout().map(|(at, _)| at)
    }

    /// Sets the driver's clock (forwards or backwards) for the next inputs.
    pub fn set_clock(&mut self, clock: Time) {
        if clock < self.seen {
            self.trace.push(TraceEvent::ClockBack { clock });
        }
        self.clock = clock;
    }

    // ----- index-based ops ----------------------------------------------

    /// Applies one [`Op`] and checks the pool.
    ///
    /// # Errors
    /// The first broken rule (also kept in [`Harness::failure`]; once
    /// failed, every later call returns it again).
    pub fn apply(&mut self, op: Op) -> Result<(), Failure> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let max_ms = self.limits.max_timeout_ms;
        match op {
            Op::Submit { shape, timeout } => {
                self.submit(shape, timeout.timeout_ms(max_ms)).map(drop)
            }
            Op::Offer { shape, timeout } => self.offer(shape, timeout.timeout_ms(max_ms)).map(drop),
            Op::SubmitVetted {
                shape,
                timeout,
                veto,
            } => self
                .submit_vetted(shape, timeout.timeout_ms(max_ms), veto)
                .map(drop),
            Op::AddWorker => self.add_worker().map(drop),
            Op::AddNamedWorker { name } => self.add_named_worker(name).map(drop),
            Op::AddSizedWorker {
                name,
                max_concurrency,
            } => self
                .add_worker_with(name, u32::from(max_concurrency))
                .map(drop),
            Op::RawKey { raw, input } => self.raw_key(raw, input),
            Op::Shutdown { drain_ms } => {
                self.begin_shutdown(drain_ms.map(|ms| Duration::from_millis(u64::from(ms))))
            }
            Op::Advance { .. }
            | Op::StepBack { .. }
            | Op::Timeout
            | Op::Leap { .. }
            | Op::NextTimer => self.apply_time(op),
            Op::Revet { .. }
            | Op::Cancel { .. }
            | Op::Complete { .. }
            | Op::Refuse { .. }
            | Op::ProbeResult { .. }
            | Op::RemoveWorker { .. }
            | Op::RestartWorker { .. } => self.apply_picked(op),
        }
    }

    /// Applies an op that names what it acts on by index.
    fn apply_picked(&mut self, op: Op) -> Result<(), Failure> {
        match op {
            Op::Revet { index, veto } => match pick(&self.moving, index) {
                Some(request) => self.revet(request, veto).map(drop),
                None => Ok(()),
            },
            Op::Cancel { index } => {
                let key = pick(&self.live, index).unwrap_or(self.stale_request);
                self.cancel(key).map(drop)
            }
            Op::Complete { index, outcome } => {
                let key = pick(&self.running, index).unwrap_or(self.stale_request);
                self.complete(key, outcome).map(drop)
            }
            Op::Refuse { index } => match pick(&self.running, index) {
                Some(key) => {
                    let attempt = self.attempt_to_refuse(key, index);
                    self.refuse(attempt).map(drop)
                }
                None => Ok(()),
            },
            Op::ProbeResult { index, verdict } => match pick(&self.probes, index) {
                Some(worker) => {
                    let probe = self
                        .workers
                        .get(worker.as_u64())
                        .and_then(|book| book.probe)
                        .map(|(probe, _)| probe);
                    match probe {
                        Some(probe) => self.probe_result(worker, probe, verdict).map(drop),
                        None => Err(self.fail("probe list names a worker without a probe".into())),
                    }
                }
                None => Ok(()),
            },
            Op::RemoveWorker { index } => match pick(&self.worker_list, index) {
                Some(worker) => self.remove_worker(worker).map(drop),
                None => Ok(()),
            },
            Op::RestartWorker { index } => match pick(&self.worker_list, index) {
                Some(worker) => self.restart_worker(worker).map(drop),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Applies an op that moves the clock or wakes the core.
    fn apply_time(&mut self, op: Op) -> Result<(), Failure> {
        match op {
            Op::Advance { ms } => {
                let target = self.clock + Duration::from_millis(u64::from(ms));
                self.advance(target)
            }
            Op::StepBack { ms } => {
                self.step_back(Duration::from_millis(u64::from(ms)));
                Ok(())
            }
            Op::Timeout => self.spurious_timeout(),
            Op::Leap { by } => self.wake(self.clock + by.duration()),
            Op::NextTimer => match self.next_timeout() {
                Some(at) => self.wake(at.max(self.clock)),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    // ----- key-based inputs ---------------------------------------------

    pub(super) fn begin_input(&mut self) -> Result<(), Failure> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        self.outputs.clear();
        self.outputs_this_input = 0;
        self.retried = None;
        self.ended.clear();
        self.vetoes_reported = 0;
        if self.clock > self.seen {
            self.seen = self.clock;
        }
        Ok(())
    }

    // ----- draining and books --------------------------------------------

    pub(super) fn fail(&mut self, message: String) -> Failure {
        let failure = Failure(format!(
            "at {} (input {}): {message}",
            self.seen, self.inputs
        ));
        if self.failure.is_none() {
            self.failure = Some(failure.clone());
        }
        failure
    }

    pub(super) fn record(&mut self, result: Result<(), Failure>) -> Result<(), Failure> {
        result.map_err(|failure| self.fail(failure.0))
    }

    pub(super) fn drain(&mut self) -> Result<(), Failure> {
        let result = self.sync_recovery();
        self.record(result)?;
        while let Some(event) = self.pool.poll_event() {
            self.outputs_this_input += 1;
            let result = self.on_event(event);
            self.record(result)?;
        }
        while let Some(action) = self.pool.poll_action() {
            self.outputs_this_input += 1;
            let result = self.on_action(action);
            self.record(result)?;
        }
        Ok(())
    }

    /// Calls `handle_timeout` at the driver's clock (the one timer a
    /// driver keeps has fired) and drains its outputs.
    pub(super) fn fire_timeout(&mut self) -> Result<(), Failure> {
        self.context = Context::Timeout;
        self.trace.push(TraceEvent::Wake {
            clock: self.clock,
            at: self.seen,
        });
        self.driver_timer = Time::MAX;
        self.expire_saturations();
        self.pool.handle_timeout(self.clock);
        self.drain()
    }

    /// Settles (wakes the core for every timer already due) and checks.
    pub(super) fn finish_input(&mut self) -> Result<(), Failure> {
        let mut rounds = 0;
        loop {
            match self.pool.poll_timeout() {
                Some((at, _)) if at <= self.seen => {
                    rounds += 1;
                    if rounds > MAX_SETTLE_ROUNDS {
                        return Err(self.fail(format!(
                            "poll_timeout keeps naming {at} <= now {}",
                            self.seen
                        )));
                    }
                    self.fire_timeout()?;
                }
                _ => break,
            }
        }
        let result = self.rearm_driver_timer();
        self.record(result)?;
        let result = self.check_health().and_then(|()| self.check_queues());
        self.record(result)?;
        self.context = Context::Idle;
        self.inputs += 1;
        self.since_full += 1;
        let result = self.check_step();
        self.record(result)?;
        if self.full_check_due() {
            self.since_full = 0;
            let result = self.check_full();
            self.record(result)?;
        }
        Ok(())
    }

    pub(super) fn full_check_due(&self) -> bool {
        self.since_full >= self.full_check_every
            && (!self.adaptive
                || self.since_full >= 4 * (self.live.len() + self.worker_list.len()) as u64)
    }

    pub(super) fn force_full_check(&mut self) {
        self.since_full = u64::MAX / 2;
    }
}
