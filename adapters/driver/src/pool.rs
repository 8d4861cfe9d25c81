//! [`WorkerPool`]: the reference's API, driving `foreman_core::Pool`.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use foreman_core::{
    lanes, Admission, CommandError, ConfigError, HealthCause, Pool, PoolConfig, RequestError,
    RequestKey, Revetted, Stats, Time, Vetted, Vetting, WorkerErrorCode, WorkerHealth,
    WorkerHealthStatus, WorkerKey, WorkerPoolError, WorkerPoolOptions, WorkerProtocolError,
    WorkerRequest, WorkerResponse, WorkerResult,
};
use futures_channel::oneshot;
use futures_util::future::{poll_fn, Abortable};
use futures_util::FutureExt;
use parking_lot::Mutex;
use serde_json::Value;
use thiserror::Error;

use crate::handler::{CircuitBreakerHooks, WorkerHandler, WorkerPoolClient};
use crate::runtime::{yield_once, Runtime};
use crate::state::{
    worker_id, Claimed, Core, Delivered, FastMap, HandlerJob, HeldRequest, Job, LaneSignals, Own,
    OwnedHandlerFuture, ProbeJob, Run, Slot, Started, WorkerCell, WorkerEntry,
};

/// An in-process worker pool driven by `foreman-core`, generic over the
/// async [`Runtime`] (adapters name it: `foreman_tokio::WorkerPool`).
///
/// Every decision — validation, admission, routing, health, deadlines,
/// probes, restarts, drain — is the core's; this type runs handlers,
/// delivers the core's answers and feeds it completions and the clock.
pub struct WorkerPool<R: Runtime> {
    shared: Arc<Shared<R>>,
}

/// Why a pool could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No handler was given.
    #[error("a worker pool needs at least one worker handler")]
    NoWorkers,
    /// The options make no sense.
    #[error("invalid worker pool options: {0}")]
    Config(#[from] ConfigError),
    /// A worker could not be added.
    #[error("cannot add worker: {0}")]
    Worker(#[from] CommandError),
    /// The pool was built where its runtime cannot spawn tasks (for
    /// foreman-tokio: outside a tokio runtime).
    #[error("the worker pool cannot start: {0}")]
    NoRuntime(String),
}

impl From<BuildError> for WorkerPoolError {
    fn from(error: BuildError) -> Self {
        match error {
            BuildError::NoWorkers => WorkerPoolError::NoHealthyWorker,
            other => WorkerPoolError::InvalidRequest {
                reason: other.to_string(),
            },
        }
    }
}

/// How long a request waited for a worker and how long its handler ran, as
/// the pool measured them on its runtime's clock.
///
/// A foreman extension: the reference's `WorkerResponse` carries only
/// `elapsed_ms`, their sum. Returned by [`WorkerPool::submit_timed`], for
/// errors too (a `Timeout` says where the budget went).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Timings {
    /// From acceptance until a worker started the request, or until it was
    /// answered if it never started (zero for a refused request).
    pub queued: Duration,
    /// How long its handler ran, if it started.
    pub ran: Option<Duration>,
}

/// A request's answer with its [`Timings`], from
/// [`WorkerPool::submit_timed`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Timed {
    /// What [`WorkerPool::submit`] returns.
    pub result: Result<WorkerResponse, WorkerPoolError>,
    /// Where the request's time went.
    pub timings: Timings,
}

impl Timed {
    /// A request answered before it was accepted (zero timings).
    fn refused(error: WorkerPoolError) -> Self {
        Self {
            result: Err(error),
            timings: Timings::default(),
        }
    }
}

/// One health status change of a worker, as the core reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTransition {
    /// The worker.
    pub worker_id: String,
    /// Its status before.
    pub from: WorkerHealthStatus,
    /// Its status after.
    pub to: WorkerHealthStatus,
    /// What caused it.
    pub cause: HealthCause,
    /// When, since the pool was created.
    pub at: Duration,
}

impl<R: Runtime + Default> WorkerPool<R> {
    /// Creates a pool with one worker (`worker-0`, `worker-1`, …) per
    /// handler, on the default instance of the runtime; call it from inside
    /// that runtime (it spawns the pool's timer task).
    ///
    /// A queued request runs on the first worker to free up (late binding:
    /// see `PoolConfig::late_binding`), except with `hooks`: then it runs
    /// on the worker whose `allow_request` approved it and that
    /// `on_request_accepted` named, as in the reference. Build the
    /// configuration yourself and call [`with_config`](Self::with_config)
    /// to choose otherwise.
    ///
    /// # Errors
    /// `NoHealthyWorker` when `handlers` is empty; `InvalidRequest` naming
    /// the field when `options` make no sense (a zero queue capacity or
    /// probe interval, …).
    pub fn new_inprocess(
        handlers: Vec<Arc<dyn WorkerHandler>>,
        options: WorkerPoolOptions,
        hooks: Option<Arc<dyn CircuitBreakerHooks>>,
    ) -> Result<Self, WorkerPoolError> {
        let config = PoolConfig::new(options).vetted_by_breaker(hooks.is_some());
        Self::with_config(R::default(), handlers, config, hooks).map_err(WorkerPoolError::from)
    }
}

impl<R: Runtime> WorkerPool<R> {
    /// Creates a pool with full control over the core's configuration.
    ///
    /// # Errors
    /// [`BuildError`] when there is no handler, the configuration is
    /// invalid, or the runtime cannot spawn tasks here.
    pub fn with_config(
        runtime: R,
        handlers: Vec<Arc<dyn WorkerHandler>>,
        config: PoolConfig,
        hooks: Option<Arc<dyn CircuitBreakerHooks>>,
    ) -> Result<Self, BuildError> {
        let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let lanes = lanes::lane_count(&config, handlers.len(), cpus);
        Self::with_lanes(runtime, handlers, config, hooks, lanes)
    }

    /// Creates a pool whose workers are spread over `lanes` cores (see the
    /// crate docs: each lane is a `foreman_core::Pool` with its own lock;
    /// [`with_config`](Self::with_config) picks one lane per CPU for pools
    /// of at least 16 workers under idle-first routing, one lane otherwise).
    /// Worker `worker-i` is in lane `i % lanes`.
    ///
    /// # Errors
    /// [`BuildError`] when there is no handler, the configuration is
    /// invalid, or the runtime cannot spawn tasks here.
    pub fn with_lanes(
        runtime: R,
        handlers: Vec<Arc<dyn WorkerHandler>>,
        mut config: PoolConfig,
        hooks: Option<Arc<dyn CircuitBreakerHooks>>,
        lanes: NonZeroUsize,
    ) -> Result<Self, BuildError> {
        if handlers.is_empty() {
            return Err(BuildError::NoWorkers);
        }
        config.validate()?;
        if let Err(reason) = runtime.check_context() {
            return Err(BuildError::NoRuntime(reason));
        }
        let epoch = runtime.now();
        config.unix_epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        let mut cores = Vec::with_capacity(lanes.get());
        for _ in 0..lanes.get() {
            cores.push(Core {
                pool: Pool::new(config.clone(), Time::ZERO)?,
                workers: FastMap::default(),
                live: 0,
                armed: Time::MAX,
                health_log: Default::default(),
                stop_waiters: Vec::new(),
                stopped: false,
                publish_load: lanes.get() > 1,
                spawn_handlers: hooks.is_some(),
                tasks: FastMap::default(),
            });
        }
        let mut names = Names::default();
        for handler in handlers {
            let lane = names.next % lanes.get();
            let Some(core) = cores.get_mut(lane) else {
                continue;
            };
            let id = names.add(lane);
            let key = core.pool.add_named_worker(Time::ZERO, id.as_str())?;
            core.workers.insert(key, WorkerEntry::new(&id, handler));
        }
        let shared = Arc::new(Shared {
            config,
            lanes: cores
                .into_iter()
                .enumerate()
                .map(|(index, core)| Lane {
                    index,
                    core: Mutex::new(core),
                    signals: Arc::new(LaneSignals::new()),
                })
                .collect(),
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            next_home: AtomicUsize::new(0),
            names: Mutex::new(names),
            runtime,
            epoch,
            hooks,
        });
        for lane in 0..shared.lanes.len() {
            spawn_timer(&shared, lane);
            shared.input(lane, |_, _| ());
        }
        Ok(WorkerPool { shared })
    }

    /// Submits one request and waits for its answer.
    ///
    /// The handler runs in the calling task once the core grants it a
    /// worker (in a pool with hooks, in a task of its own, so that it runs
    /// while the caller runs the hooks). Dropping the returned future
    /// cancels the request: it leaves its queue, or its handler is dropped.
    ///
    /// # Errors
    /// A refusal (`InvalidRequest`, `QueueFull`, `NoHealthyWorker`,
    /// `CircuitOpen`, `ShuttingDown`) or the request's answer: the worker's
    /// error (`Worker`, also for a panic, a restart or a cancellation),
    /// `Timeout` when its budget ran out while queued or running, or
    /// `ShuttingDown` when a drain deadline cut it off.
    pub fn submit(
        &self,
        request: WorkerRequest,
    ) -> impl Future<Output = Result<WorkerResponse, WorkerPoolError>> + Send + '_ {
        let timed = self.submit_timed(request);
        async move { timed.await.result }
    }

    /// Submits one request like [`submit`](Self::submit) and returns its
    /// answer with the pool's [`Timings`]: how long it waited for a worker
    /// and how long its handler ran (the reference's `elapsed_ms` is their
    /// sum).
    ///
    /// A refused request has zero timings.
    pub fn submit_timed(&self, request: WorkerRequest) -> impl Future<Output = Timed> + Send + '_ {
        // The request goes straight into its slot (the core's payload), so
        // the future every caller holds carries a pointer, not the request.
        let slot = Slot::parked(request);
        async move {
            // Whether this request ever waited (see `cooperate`).
            let mut waited = false;
            let outcome = match self.shared.hooks.as_deref() {
                None => self.run(&slot, &mut waited).await,
                // Boxed: the future of a pool without hooks stays small.
                Some(hooks) => {
                    waited = true;
                    Box::pin(self.run_hooked(&slot, hooks)).await
                }
            };
            Slot::recycle(slot);
            // Refusals count too: a caller retrying on `QueueFull` must not
            // keep its thread (and the pool's own timers) from running.
            cooperate(&self.shared.runtime, waited).await;
            outcome
        }
    }

    /// `submit` without hooks and without the cooperative yield. The
    /// request, and its start or answer, wait in the slot rather than in
    /// this future, which every caller holds: it stays small.
    async fn run(&self, slot: &Arc<Slot>, waited: &mut bool) -> Timed {
        let shared = &self.shared;
        // Everything up to the first await is one synchronous step, so
        // none of its locals lives in this future. A request started at
        // once gets its handler future here: the request never goes back
        // to its slot, nor into this future.
        let fast_worker: Arc<WorkerCell>;
        let (
            Entered {
                lane,
                submitted,
                request_id,
            },
            started_at_once,
        ) = {
            let (entered, start) = match shared.enter(slot) {
                Ok(entered) => entered,
                Err(error) => return Timed::refused(error),
            };
            let future: Option<HandlerFuture<'_>> = match start {
                Some((Started { worker }, request)) => {
                    fast_worker = worker;
                    Some(fast_worker.handler.handle(request))
                }
                None => None,
            };
            (entered, future)
        };
        let key = match submitted {
            Ok(key) => key,
            Err(refused) => return Timed::refused(refused),
        };
        let lane = shared.lane(lane);
        // From here on, dropping this future cancels the request.
        let mut guard = PendingGuard::new(shared, lane, key, slot);
        let worker: Arc<WorkerCell>;
        let future: HandlerFuture<'_> = match started_at_once {
            Some(future) => {
                guard.runs_here = true;
                future
            }
            None => match wait_for_start(slot, waited).await {
                Wake::Started(Started { worker: granted }) => {
                    let Some(request) = slot.lock().parked.take() else {
                        return Timed::refused(lost_answer());
                    };
                    worker = granted;
                    worker.handler.handle(request)
                }
                Wake::Handed(future) => future,
                Wake::Answered(answer) => {
                    guard.answered_without_run();
                    return respond(answer, request_id);
                }
            },
        };
        let answer = match run_handler(future, slot, waited).await {
            Some(result) => {
                let mut own = Own::default();
                shared.complete(lane, key, result, Some(key), CLAIM_BUDGET, &mut own);
                guard.done = true;
                let answer = own.answer.take();
                shared.run_claimed(lane, own.claimed);
                answer.or_else(|| slot.lock().answer.take())
            }
            None => {
                lane.core.lock().ended();
                guard.done = true;
                let answer = slot.lock().answer.take();
                answer
            }
        };
        match answer {
            Some(answer) => respond(answer, request_id),
            None => Timed::refused(lost_answer()),
        }
    }

    /// `submit` in a pool with hooks, in the reference's order: the
    /// breaker is asked about the candidates in turn, with no lock held,
    /// each veto reported (`on_request_rejected`) before the next question;
    /// the worker that takes the request is reported
    /// (`on_request_accepted`) while its handler runs in a task of its own;
    /// should the worker be removed while the request waits there, the
    /// breaker places it anew the same way; the answer is reported
    /// (`on_request_success` or `on_request_failure`) before it is
    /// returned. A refusal is reported as `on_request_rejected(None, …)`.
    async fn run_hooked(&self, slot: &Arc<Slot>, hooks: &dyn CircuitBreakerHooks) -> Timed {
        let shared = &self.shared;
        // The slot keeps the handler's copy of the request (the handler
        // may run while the hooks still read this one). A request that
        // fails admission is not copied: it may be nested arbitrarily deep,
        // and it is dropped without recursion.
        let (admission, copy) = {
            let mut inner = slot.lock();
            let Some(parked) = inner.parked.get() else {
                return Timed::refused(lost_answer());
            };
            let admission = shared.config.admit(parked);
            let copy = match admission {
                Ok(_) => HeldRequest::new(parked.clone()),
                Err(_) => std::mem::take(&mut inner.parked),
            };
            (admission, copy)
        };
        let Some(request) = copy.get() else {
            return Timed::refused(lost_answer());
        };
        let mut tries = shared.lane_order();
        let (lane, key, accepted_by) = 'lanes: loop {
            let (index, last) = tries.next_try();
            let mut vetting = if last {
                Vetting::new()
            } else {
                Vetting::offer()
            };
            loop {
                match shared.vet(index, &admission, slot, &mut vetting) {
                    VetStep::Ask(worker_id) => {
                        let allowed = ask_breaker(hooks, &worker_id, request).await;
                        vetting.answer(allowed);
                    }
                    VetStep::Accepted(key, worker_id) => break 'lanes (index, key, worker_id),
                    VetStep::Refused(error) if !last && lanes::try_next_lane(&error) => break,
                    VetStep::Refused(error) => {
                        let parked = std::mem::take(&mut slot.lock().parked);
                        drop(parked);
                        hooks.on_request_rejected(None, request, error.code()).await;
                        return Timed::refused(error);
                    }
                }
            }
        };
        let lane = shared.lane(lane);
        // From here on, dropping this future cancels the request (and
        // aborts its handler task), also while the hooks below run.
        let mut guard = HookedGuard {
            pending: PendingGuard::new(shared, lane, key, slot),
            request_id: &request.request_id,
        };
        hooks.on_request_accepted(&accepted_by, request).await;
        let answer = loop {
            match wait_for_notice(slot).await {
                Notice::Answered(answer) => break answer,
                Notice::Revet => shared.revet(lane, key, request, hooks).await,
            }
        };
        guard.pending.done = true;
        let worker = answer.worker.clone();
        let timed = respond(answer, request.request_id.clone());
        notify(hooks, worker_id(worker.as_deref()), &timed.result).await;
        timed
    }

    /// Health of every worker, in worker order. Never waits for a handler.
    pub async fn health_snapshot(&self) -> Vec<WorkerHealth> {
        let mut all = Vec::new();
        for lane in self.shared.lanes.iter() {
            all.extend(lane.core.lock().pool.health());
        }
        self.shared.in_worker_order(all, |health| &health.worker_id)
    }

    /// Counters by outcome and refusal reason, queue depths and per-worker
    /// state (in worker order). Never waits for a handler. With several
    /// lanes, worker keys are per lane: tell workers apart by id.
    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for lane in self.shared.lanes.iter() {
            let stats = lane.core.lock().pool.stats();
            total.counters.add(&stats.counters);
            total.queued += stats.queued;
            total.running += stats.running;
            total.workers.extend(stats.workers);
        }
        total.workers = self
            .shared
            .in_worker_order(total.workers, |worker| &worker.worker_id);
        total
    }

    /// Every health status change so far (the latest 4096 per lane),
    /// oldest first.
    pub fn health_history(&self) -> Vec<HealthTransition> {
        let mut all: Vec<HealthTransition> = Vec::new();
        for lane in self.shared.lanes.iter() {
            all.extend(lane.core.lock().health_log.iter().cloned());
        }
        all.sort_by_key(|transition| transition.at);
        all
    }

    /// Restarts a worker: its running request is aborted (answered with a
    /// retryable `Cancelled` error naming the restart), its health is reset,
    /// and its queued requests stay queued and run next.
    ///
    /// # Errors
    /// `ShuttingDown` once the pool has stopped; `NoHealthyWorker` for an
    /// unknown (or removed) worker id.
    pub async fn restart_worker(&self, worker_id: &str) -> Result<(), WorkerPoolError> {
        self.command(worker_id, |core, now, key| {
            core.pool.restart_worker(now, key)
        })
    }

    /// Adds a worker running `handler` (to the lane with the fewest
    /// workers); returns its id.
    ///
    /// # Errors
    /// `ShuttingDown` once shutdown began.
    pub fn add_worker(&self, handler: Arc<dyn WorkerHandler>) -> Result<String, WorkerPoolError> {
        let shared = &self.shared;
        // Refused, the handler is dropped (user code) with no lock held.
        let mut handler = Some(handler);
        let mut names = shared.names.lock();
        let lane = (0..shared.lanes.len())
            .min_by_key(|&lane| shared.lane(lane).core.lock().workers.len())
            .unwrap_or(0);
        let id = names.peek();
        let added = shared.input(lane, |core, now| {
            let key = core.pool.add_named_worker(now, id.as_str())?;
            if let Some(handler) = handler.take() {
                core.workers.insert(key, WorkerEntry::new(&id, handler));
            }
            Ok(())
        });
        let added = added.map(|()| names.add(lane)).map_err(command_error);
        drop(names);
        drop(handler);
        added
    }

    /// Removes a worker: it takes no new requests, its queued requests move
    /// to other workers of its lane, its running request finishes.
    ///
    /// # Errors
    /// `ShuttingDown` once the pool has stopped; `NoHealthyWorker` for an
    /// unknown worker id or one already being removed.
    pub fn remove_worker(&self, worker_id: &str) -> Result<(), WorkerPoolError> {
        self.command(worker_id, |core, now, key| {
            core.pool.remove_worker(now, key)
        })
    }

    /// Graceful shutdown: new submits get `ShuttingDown` at once; queued and
    /// running requests finish (for at most the security policy's maximum
    /// request timeout, after which the rest are aborted and answered
    /// `ShuttingDown`). Returns once every handler and probe has ended;
    /// afterwards every worker reports `Unavailable`.
    pub async fn shutdown(&self) {
        self.shutdown_inner(self.shared.config.default_drain())
            .await;
    }

    /// Like [`shutdown`](Self::shutdown), with a drain deadline: requests
    /// still queued or running after `drain` are aborted and answered
    /// `ShuttingDown`. A zero `drain` aborts everything at once.
    pub async fn shutdown_with_deadline(&self, drain: Duration) {
        self.shutdown_inner(drain).await;
    }

    async fn shutdown_inner(&self, drain: Duration) {
        let mut waiters = Vec::new();
        for lane in 0..self.shared.lanes.len() {
            let waiter = self.shared.input(lane, |core, now| {
                core.pool.begin_shutdown(now, Some(drain));
                if core.stopped && core.live == 0 {
                    None
                } else {
                    let (sender, receiver) = oneshot::channel();
                    core.stop_waiters.push(sender);
                    Some(receiver)
                }
            });
            waiters.extend(waiter);
        }
        for waiter in waiters {
            let _ = waiter.await;
        }
    }

    /// A command about one worker, in its lane (an id no lane knows goes
    /// to the first, whose core refuses it as it refuses any command).
    fn command(
        &self,
        worker_id: &str,
        f: impl FnOnce(&mut Core, Time, WorkerKey) -> Result<(), CommandError>,
    ) -> Result<(), WorkerPoolError> {
        let lane = self.shared.names.lock().lane_of(worker_id).unwrap_or(0);
        self.shared
            .input(lane, |core, now| {
                let key = core.pool.command_target(worker_id)?;
                f(core, now, key)
            })
            .map_err(command_error)
    }
}

#[async_trait]
impl<R: Runtime> WorkerPoolClient for WorkerPool<R> {
    async fn submit(&self, request: WorkerRequest) -> Result<WorkerResponse, WorkerPoolError> {
        WorkerPool::submit(self, request).await
    }

    async fn health_snapshot(&self) -> Vec<WorkerHealth> {
        WorkerPool::health_snapshot(self).await
    }
}

impl<R: Runtime> std::fmt::Debug for WorkerPool<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("runtime", &self.shared.runtime)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> Drop for WorkerPool<R> {
    fn drop(&mut self) {
        for lane in self.shared.lanes.iter() {
            let mut core = lane.core.lock();
            for entry in core.workers.values_mut() {
                if let Some((_, handle)) = entry.probe.take() {
                    handle.abort();
                }
            }
            for (_, task) in core.tasks.drain() {
                task.abort();
            }
            lane.signals.close();
        }
    }
}

// ----- internals -----------------------------------------------------------

pub(crate) struct Shared<R> {
    /// The core's configuration, for validating requests outside the lock.
    config: PoolConfig,
    /// At least one.
    lanes: Box<[Lane]>,
    /// This pool's id, for [`HOME_LANE`].
    id: u64,
    /// The home lane of the next thread that submits.
    next_home: AtomicUsize,
    names: Mutex<Names>,
    runtime: R,
    epoch: Instant,
    hooks: Option<Arc<dyn CircuitBreakerHooks>>,
}

/// One core with its own lock, owning some of the pool's workers.
#[repr(align(128))]
struct Lane {
    /// Its place in [`Shared::lanes`].
    index: usize,
    core: Mutex<Core>,
    /// Its timer task's deadline, and its idle and eligible worker counts
    /// for choosing a lane without its lock.
    signals: Arc<LaneSignals>,
}

/// Worker ids, handed out in order (`worker-0`, `worker-1`, …), and the
/// lane and rank (the order of creation) of each.
#[derive(Default)]
struct Names {
    next: usize,
    lanes: HashMap<String, (usize, usize)>,
}

impl Names {
    /// The id the next worker gets.
    fn peek(&self) -> String {
        format!("worker-{}", self.next)
    }

    /// Records the next worker, in `lane`; returns its id.
    fn add(&mut self, lane: usize) -> String {
        let id = self.peek();
        self.lanes.insert(id.clone(), (lane, self.next));
        self.next += 1;
        id
    }

    fn lane_of(&self, id: &str) -> Option<usize> {
        self.lanes.get(id).map(|&(lane, _)| lane)
    }

    fn rank_of(&self, id: &str) -> Option<usize> {
        self.lanes.get(id).map(|&(_, rank)| rank)
    }
}

/// What [`Shared::enter`] did with a request.
struct Entered {
    lane: usize,
    submitted: Result<RequestKey, WorkerPoolError>,
    request_id: String,
}

/// A request its worker started at once: the caller runs it straight away.
type StartedAtOnce = Option<(Started, WorkerRequest)>;

/// What one step of vetting a new request ([`Shared::vet`]) leaves to its
/// caller.
enum VetStep {
    /// Ask the breaker about this worker.
    Ask(Arc<str>),
    /// The request was accepted by this worker.
    Accepted(RequestKey, Arc<str>),
    /// The lane refused (or declined) the request.
    Refused(WorkerPoolError),
}

/// What one step of placing a request anew ([`Shared::revet`]) leaves to
/// its caller.
enum RevetStep {
    /// Ask the breaker about this worker.
    Ask(Arc<str>),
    /// The request moved to this worker.
    Moved(Arc<str>),
    /// The request was answered (or had been): its answer is in its slot.
    Done,
}

thread_local! {
    /// The pool this thread last submitted to, and its home lane there.
    static HOME_LANE: std::cell::Cell<(u64, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// Pool ids for [`HOME_LANE`] (0 is never used).
static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

/// The lanes a submit tries, in order.
struct LaneOrder {
    first: usize,
    count: usize,
    tried: usize,
}

impl LaneOrder {
    /// The next lane to try, and whether it is the last.
    fn next_try(&mut self) -> (usize, bool) {
        let lane = (self.first + self.tried) % self.count;
        self.tried += 1;
        (lane, self.tried >= self.count)
    }
}

impl<R: Runtime> Shared<R> {
    fn lane(&self, index: usize) -> &Lane {
        // `index` always comes from this pool (`< lanes.len()`, which is
        // at least 1); the modulo only keeps the access in bounds.
        &self.lanes[index % self.lanes.len()]
    }

    /// Submits the request parked in `slot`, with the slot as its payload
    /// (a pool without hooks): validates it, offers it to the lanes in turn
    /// (see [`lane_order`](Self::lane_order); the last one tried refuses
    /// for real), carries out the actions and wakes whom they concern. The
    /// request goes back to the slot, unless its worker started it at once.
    ///
    /// # Errors
    /// `lost_answer` if the slot holds no request (never happens).
    fn enter(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
    ) -> Result<(Entered, StartedAtOnce), WorkerPoolError> {
        let Some(request) = slot.lock().parked.take() else {
            return Err(lost_answer());
        };
        let request_id = request.request_id.clone();
        // Validation needs only the configuration: do it, and read the
        // clock, before taking a lock.
        let admission = self.config.admit(&request);
        let now = self.now();
        let mut tries = self.lane_order();
        let mut started = None;
        let mut answered = None;
        let (lane, submitted) = loop {
            let (index, last) = tries.next_try();
            let lane = self.lane(index);
            let mut jobs = Vec::new();
            let mut core = lane.core.lock();
            let submitted = if last {
                core.pool
                    .submit_checked(now, admission.clone(), Arc::clone(slot))
            } else {
                core.pool.offer(now, admission.clone(), Arc::clone(slot))
            };
            let key = submitted.as_ref().ok().copied();
            let mut own = Own::default();
            core.after_input(key, &mut own, &mut jobs, &lane.signals, 0);
            drop(core);
            own.wake_all();
            started = own.started.take().or(started);
            answered = own.answer.take().or(answered);
            self.spawn_jobs(index, jobs);
            match submitted {
                Err(refused) if !last && lanes::try_next_lane(&refused.error) => {}
                submitted => break (index, submitted.map_err(|refused| refused.error)),
            }
        };
        // An answer this early (never in practice) waits in the slot.
        if let Some(answer) = answered {
            slot.lock().answer = Some(answer);
        }
        let start = match started {
            Some(started) => Some((started, request)),
            None => {
                slot.lock().parked = HeldRequest::new(request);
                None
            }
        };
        Ok((
            Entered {
                lane,
                submitted,
                request_id,
            },
            start,
        ))
    }

    /// One step of vetting a request (a pool with hooks) in lane `lane`:
    /// the core proposes the next candidate, or commits the request to the
    /// one the breaker approved (its answer is in `vetting`), or refuses.
    /// The breaker is asked by the caller, with the lock released.
    fn vet(
        self: &Arc<Self>,
        lane: usize,
        admission: &Result<Admission, RequestError>,
        slot: &Arc<Slot>,
        vetting: &mut Vetting,
    ) -> VetStep {
        self.input(lane, |core, now| {
            match core.pool.vet(now, admission, Arc::clone(slot), vetting) {
                Vetted::Ask { worker, .. } => VetStep::Ask(core.id_of(worker)),
                Vetted::Accepted { request, worker } => {
                    VetStep::Accepted(request, core.id_of(worker))
                }
                Vetted::Refused(refused) => VetStep::Refused(refused.error),
            }
        })
    }

    /// Has the breaker place anew a request whose worker was removed while
    /// it waited there (`Action::Revet`), as at submit: candidates in
    /// turn, asked with no lock held, each veto reported before the next
    /// question, the worker that takes it reported as accepting it. When
    /// none does, the core answers the request (its answer reaches the
    /// slot).
    async fn revet(
        self: &Arc<Self>,
        lane: &Lane,
        key: RequestKey,
        request: &WorkerRequest,
        hooks: &dyn CircuitBreakerHooks,
    ) {
        let mut vetting = Vetting::new();
        loop {
            let step = self.input(lane.index, |core, now| {
                match core.pool.revet(now, key, &mut vetting) {
                    Revetted::Ask(worker) => RevetStep::Ask(core.id_of(worker)),
                    Revetted::Moved(worker) => RevetStep::Moved(core.id_of(worker)),
                    Revetted::Answered | Revetted::Gone => RevetStep::Done,
                }
            });
            match step {
                RevetStep::Ask(worker_id) => {
                    let allowed = ask_breaker(hooks, &worker_id, request).await;
                    vetting.answer(allowed);
                }
                RevetStep::Moved(worker_id) => {
                    hooks.on_request_accepted(&worker_id, request).await;
                    return;
                }
                RevetStep::Done => return,
            }
        }
    }

    /// Where a submit starts: this thread's home lane if it has an idle
    /// worker; else a lane with an idle worker; else the lane with room
    /// and the fewest requests per worker (the home lane on a tie). The
    /// counts are read without the lanes' locks, so this is a hint: the
    /// chosen lane's core decides, and the others are tried after it.
    fn lane_order(&self) -> LaneOrder {
        let count = self.lanes.len();
        let home = if count == 1 {
            0
        } else {
            // Threads get home lanes in the order they first submit, so a
            // runtime's worker threads spread over the lanes.
            HOME_LANE.with(|cached| match cached.get() {
                (pool, lane) if pool == self.id => lane,
                _ => {
                    let lane = self.next_home.fetch_add(1, Ordering::Relaxed) % count;
                    cached.set((self.id, lane));
                    lane
                }
            })
        };
        let first = lanes::first_lane(home, count, |lane| self.lane(lane).signals.load());
        LaneOrder {
            first,
            count,
            tried: 0,
        }
    }

    /// Puts per-lane items in worker order (by id).
    fn in_worker_order<T>(&self, items: Vec<T>, id: impl Fn(&T) -> &String) -> Vec<T> {
        if self.lanes.len() == 1 {
            return items;
        }
        let names = self.names.lock();
        let mut keyed: Vec<(usize, T)> = items
            .into_iter()
            .map(|item| (names.rank_of(id(&item)).unwrap_or(usize::MAX), item))
            .collect();
        keyed.sort_by_key(|(rank, _)| *rank);
        keyed.into_iter().map(|(_, item)| item).collect()
    }

    fn now(&self) -> Time {
        Time::from_duration(self.runtime.now().saturating_duration_since(self.epoch))
    }

    /// One input that names no request of the caller: lock, apply, carry
    /// out the actions, unlock, wake, spawn probes and handler tasks.
    fn input<T>(self: &Arc<Self>, lane: usize, f: impl FnOnce(&mut Core, Time) -> T) -> T {
        let mut jobs = Vec::new();
        let signals = &self.lane(lane).signals;
        let mut own = Own::default();
        let out = {
            let mut core = self.lane(lane).core.lock();
            let now = self.now();
            let out = f(&mut core, now);
            core.after_input(None, &mut own, &mut jobs, signals, 0);
            out
        };
        own.wake_all();
        self.spawn_jobs(lane, jobs);
        out
    }

    fn on_timer(self: &Arc<Self>, lane: usize) {
        let signals = &self.lane(lane).signals;
        self.input(lane, |core, now| {
            core.armed = Time::MAX;
            signals.target.store(u64::MAX, Ordering::Release);
            core.pool.handle_timeout(now);
        });
    }

    /// A handler finished: feeds its result to the core, carries out the
    /// actions and wakes whom they concern. `own` is the calling task's own
    /// request, if the handler was its; up to `claim` queued requests the
    /// freed worker starts are claimed for this task to run. What concerns
    /// this task goes to `out`.
    fn complete(
        self: &Arc<Self>,
        lane: &Lane,
        key: RequestKey,
        result: Result<Value, WorkerProtocolError>,
        own: Option<RequestKey>,
        claim: usize,
        out: &mut Own,
    ) {
        let mut jobs = Vec::new();
        let now = self.now();
        {
            let mut core = lane.core.lock();
            core.live = core.live.saturating_sub(1);
            core.pool.handle_completion(now, key, result);
            core.after_input(own, out, &mut jobs, &lane.signals, claim);
        }
        out.wake_all();
        self.spawn_jobs(lane.index, jobs);
    }

    /// Runs requests of other callers that this task claimed when it freed
    /// their worker: polls each handler once, in this task, which saves its
    /// caller a wake-up. A handler that has to wait is handed back to its
    /// caller, whose waker it has already registered. One that finishes is
    /// completed here, but the request that starts next is left to its own
    /// caller: this task's caller, whose answer is ready, waits for at most
    /// one other request. (Chaining claims let one task run up to
    /// [`CLAIM_BUDGET`] requests that finish at once before answering its
    /// own: on tokio with one worker and 16 callers, a p99 latency 1.4–1.8x
    /// the channel floor's, against 1.0–1.1x now.)
    fn run_claimed(self: &Arc<Self>, lane: &Lane, claimed: Vec<Claimed>) {
        for job in claimed {
            let Claimed {
                key,
                slot,
                worker,
                request,
                waker,
            } = job;
            let mut future: OwnedHandlerFuture =
                Box::pin(async move { worker.handler.handle(request).await });
            let waker = waker.unwrap_or_else(futures_util::task::noop_waker);
            let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
                future.as_mut().poll(&mut Context::from_waker(&waker))
            }));
            let result = match polled {
                Ok(Poll::Pending) => {
                    let (keep, wake) = {
                        let mut inner = slot.lock();
                        if inner.abandoned || inner.answer.is_some() {
                            inner.run = Run::Ended;
                            (Some(future), None)
                        } else {
                            inner.run = Run::Handed(future);
                            (None, inner.take_waker())
                        }
                    };
                    if let Some(dropped) = keep {
                        drop(dropped);
                        lane.core.lock().ended();
                    }
                    if let Some(waker) = wake {
                        waker.wake();
                    }
                    continue;
                }
                Ok(Poll::Ready(result)) => result,
                Err(panic) => Err(panic_error(&*panic)),
            };
            drop(future);
            slot.lock().run = Run::Ended;
            // Claims nothing: with no claim budget, every request this
            // completion starts is granted to its own caller.
            self.complete(lane, key, result, None, 0, &mut Own::default());
        }
    }

    /// Spawns the probes and handler tasks an input asked for, and drops
    /// the handlers of the workers it stopped (usually none: the check is
    /// inlined, the rest is not).
    #[inline(always)]
    fn spawn_jobs(self: &Arc<Self>, lane: usize, jobs: Vec<Job>) {
        if !jobs.is_empty() {
            self.spawn_each(lane, jobs);
        }
    }

    #[inline(never)]
    fn spawn_each(self: &Arc<Self>, lane: usize, jobs: Vec<Job>) {
        for job in jobs {
            let weak = Arc::downgrade(self);
            match job {
                Job::Probe(job) => self.runtime.spawn(Box::pin(probe_task(weak, lane, job))),
                Job::Handler(job) => self.runtime.spawn(Box::pin(handler_task(weak, lane, job))),
                Job::Release(worker) => drop(worker),
            }
        }
    }
}

/// Runs a started request's handler as a task of its own (a pool with
/// hooks) and completes the request, unless the core aborted it first.
async fn handler_task<R: Runtime>(weak: Weak<Shared<R>>, lane: usize, job: HandlerJob) {
    let HandlerJob {
        key,
        worker,
        request,
        registration,
    } = job;
    let outcome = match request {
        Some(request) => {
            let running = AssertUnwindSafe(worker.handler.handle(request)).catch_unwind();
            Abortable::new(running, registration)
                .await
                .map(|result| result.unwrap_or_else(|panic| Err(panic_error(&*panic))))
        }
        None => Ok(Err(lost_handler())),
    };
    drop(worker);
    let Some(shared) = weak.upgrade() else {
        return;
    };
    let lane = shared.lane(lane);
    match outcome {
        Ok(result) => {
            // Finished: nothing to abort any more.
            lane.core.lock().tasks.remove(&key);
            shared.complete(lane, key, result, None, 0, &mut Own::default());
        }
        Err(_aborted) => lane.core.lock().ended(),
    }
}

async fn probe_task<R: Runtime>(weak: Weak<Shared<R>>, lane: usize, job: ProbeJob) {
    let ProbeJob {
        worker,
        probe,
        handler,
        registration,
    } = job;
    let probing = AssertUnwindSafe(handler.probe_health()).catch_unwind();
    let outcome = Abortable::new(probing, registration).await;
    let status = match outcome {
        Ok(Ok(status)) => Some(status),
        Ok(Err(_panic)) => Some(WorkerHealthStatus::Unavailable),
        Err(_aborted) => None,
    };
    let Some(shared) = weak.upgrade() else {
        return;
    };
    shared.input(lane, |core, now| {
        core.live = core.live.saturating_sub(1);
        if let Some(entry) = core.workers.get_mut(&worker) {
            if entry.probe.as_ref().is_some_and(|(key, _)| *key == probe) {
                entry.probe = None;
            }
        }
        if let Some(status) = status {
            core.pool.handle_probe_result(now, worker, probe, status);
        }
    });
}

fn spawn_timer<R: Runtime>(shared: &Arc<Shared<R>>, lane: usize) {
    let weak = Arc::downgrade(shared);
    let state = Arc::clone(&shared.lane(lane).signals);
    let epoch = shared.epoch;
    let mut timer = shared.runtime.new_timer(epoch);
    shared.runtime.spawn(Box::pin(async move {
        let mut current = u64::MAX;
        loop {
            let fired = poll_fn(|cx| {
                state.waker.register(cx.waker());
                if state.closed.load(Ordering::Acquire) {
                    return Poll::Ready(false);
                }
                let target = state.target.load(Ordering::Acquire);
                if target != current {
                    current = target;
                    if target != u64::MAX {
                        timer.as_mut().reset(epoch + Duration::from_nanos(target));
                    }
                }
                if current == u64::MAX {
                    return Poll::Pending;
                }
                timer.as_mut().poll(cx).map(|()| true)
            })
            .await;
            if !fired {
                return;
            }
            current = u64::MAX;
            let Some(shared) = weak.upgrade() else {
                return;
            };
            shared.on_timer(lane);
        }
    }));
}

/// Cancels the request if `submit`'s future is dropped before its answer.
struct PendingGuard<'a, R: Runtime> {
    shared: &'a Arc<Shared<R>>,
    lane: &'a Lane,
    key: RequestKey,
    slot: &'a Arc<Slot>,
    /// The caller runs the handler, started at once (the slot never saw it).
    runs_here: bool,
    done: bool,
}

impl<'a, R: Runtime> PendingGuard<'a, R> {
    fn new(
        shared: &'a Arc<Shared<R>>,
        lane: &'a Lane,
        key: RequestKey,
        slot: &'a Arc<Slot>,
    ) -> Self {
        PendingGuard {
            shared,
            lane,
            key,
            slot,
            runs_here: false,
            done: false,
        }
    }

    /// Cancels the request unless the caller is done with it; returns its
    /// answer if the caller had not taken it.
    fn cancel(&mut self) -> Option<Delivered> {
        if self.done {
            return None;
        }
        self.done = true;
        let shared = self.shared;
        let (slot, key) = (self.slot, self.key);
        let mut jobs = Vec::new();
        let mut handed = None;
        let parked;
        let mut own = Own::default();
        {
            let mut core = self.lane.core.lock();
            {
                let mut inner = slot.lock();
                inner.abandoned = true;
                // Dropped once the locks are released.
                parked = std::mem::take(&mut inner.parked);
                if self.runs_here || inner.run.caller_ends() {
                    core.live = core.live.saturating_sub(1);
                    if let Run::Handed(future) = std::mem::replace(&mut inner.run, Run::Ended) {
                        handed = Some(future);
                    }
                }
            }
            let now = shared.now();
            core.pool.cancel(now, key);
            core.after_input(Some(key), &mut own, &mut jobs, &self.lane.signals, 0);
        }
        let answer = own.answer.take();
        drop(handed);
        drop(parked);
        own.wake_all();
        shared.spawn_jobs(self.lane.index, jobs);
        answer.or_else(|| slot.lock().answer.take())
    }

    /// The request was answered before its handler ran (or after it was
    /// started but before this task ran it).
    fn answered_without_run(&mut self) {
        self.done = true;
        let (ends, handed) = {
            let mut inner = self.slot.lock();
            let ends = inner.run.caller_ends();
            match std::mem::replace(&mut inner.run, Run::Ended) {
                Run::Handed(future) => (ends, Some(future)),
                Run::Claimed => {
                    // The claiming task ends it, and must not hand it back:
                    // this caller has its answer and is gone.
                    inner.run = Run::Claimed;
                    inner.abandoned = true;
                    (false, None)
                }
                _ => (ends, None),
            }
        };
        drop(handed);
        if ends {
            self.lane.core.lock().ended();
        }
    }
}

impl<R: Runtime> Drop for PendingGuard<'_, R> {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// [`PendingGuard`] of a pool with hooks: a caller that gives up after its
/// request was accepted cancels it, and the request's last hook
/// (`on_request_failure`, or `on_request_success` if it had just
/// succeeded) runs in a task of its own.
struct HookedGuard<'a, R: Runtime> {
    pending: PendingGuard<'a, R>,
    request_id: &'a str,
}

impl<R: Runtime> Drop for HookedGuard<'_, R> {
    fn drop(&mut self) {
        let Some(answer) = self.pending.cancel() else {
            return;
        };
        let shared = self.pending.shared;
        let Some(hooks) = shared.hooks.clone() else {
            return;
        };
        let worker = answer.worker.clone();
        let outcome = respond(answer, self.request_id.to_string()).result;
        shared.runtime.spawn(Box::pin(async move {
            notify(&*hooks, worker_id(worker.as_deref()), &outcome).await;
        }));
    }
}

/// How many of the queued requests that one completion starts the task
/// that completed it claims (see [`Shared::run_claimed`]); the rest are
/// granted to their callers.
const CLAIM_BUDGET: usize = 16;

/// Requests a caller that has a thread to itself may finish in a row
/// without ever waiting before `submit` yields once to the runtime: the
/// number of ready operations tokio's own coop budget lets a task make.
/// (A yield costs microseconds on a multi-threaded runtime, where it wakes
/// another worker that steals the task: at 32, one yield every 32 requests
/// made a lone caller's requests 35% slower than at 1024.)
const SOLO_BUDGET: u32 = 128;

thread_local! {
    /// The task that last finished a request on this thread (its waker's
    /// data pointer), and how many requests in a row it finished without
    /// waiting.
    static LAST_INLINE: std::cell::Cell<(usize, u32)> = const { std::cell::Cell::new((0, 0)) };
}

/// Yields to the scheduler after a request that never waited, when
/// another task finished a request on this thread since this one's last
/// (callers sharing a thread then take turns request by request, as they
/// would on a channel), or after [`SOLO_BUDGET`] such requests in a row by
/// one task, through [`Runtime::yield_now`] (so a caller alone on its
/// thread still lets the runtime's timers and I/O run).
///
/// A handler that finishes at once never makes `submit` wait, so a caller
/// looping on `submit` would otherwise never give its thread back and could
/// starve other tasks and the runtime itself, and callers sharing a thread
/// would run in bursts, one caller's requests queued behind another's (a
/// p99 latency tens of times the channel floor's). A request that did wait
/// (its handler awaited, or it queued) already yielded: it resets the
/// count, so real workloads never pay for a forced yield. The yield comes
/// after the answer, so the first poll of `submit` always submits.
/// (tokio's own coop budget was measured and rejected: its forced yields
/// park the task until the worker's next maintenance tick, which cut
/// throughput 3x with 16 or more callers. The turn between callers sharing
/// a thread is a plain self-wake for the same reason: tokio's deferred
/// yield there put p99 at 2x the channel floor's with 64 workers and 16
/// callers.)
async fn cooperate<R: Runtime>(runtime: &R, waited: bool) {
    match poll_fn(|cx| Poll::Ready(turn(cx, waited))).await {
        Turn::Keep => {}
        Turn::Share => yield_once().await,
        Turn::Solo => runtime.yield_now().await,
    }
}

/// What [`cooperate`] does after a request.
enum Turn {
    /// Nothing: carry on.
    Keep,
    /// Another task finished a request on this thread since: let it run.
    Share,
    /// This task ran [`SOLO_BUDGET`] requests in a row alone: give the
    /// runtime its thread back once.
    Solo,
}

/// Decides the [`Turn`] of the task polling with `cx` (the waker's data
/// pointer tells tasks apart: a task's wakers share it; nothing is ever
/// read through it).
fn turn(cx: &Context<'_>, waited: bool) -> Turn {
    let task = cx.waker().data() as usize;
    LAST_INLINE.with(|last| {
        let (previous, count) = last.get();
        if waited {
            last.set((task, 0));
            return Turn::Keep;
        }
        if previous != task {
            last.set((task, 0));
            return Turn::Share;
        }
        if count + 1 >= SOLO_BUDGET {
            last.set((task, 0));
            return Turn::Solo;
        }
        last.set((task, count + 1));
        Turn::Keep
    })
}

enum Wake {
    Started(Started),
    Handed(OwnedHandlerFuture),
    Answered(Delivered),
}

/// Waits until the request is started or answered (`waited` is set if it
/// had to).
fn wait_for_start<'a>(slot: &'a Slot, waited: &'a mut bool) -> impl Future<Output = Wake> + 'a {
    poll_fn(move |cx| {
        let mut inner = slot.lock();
        if let Some(answer) = inner.answer.take() {
            return Poll::Ready(Wake::Answered(answer));
        }
        match std::mem::replace(&mut inner.run, Run::Caller) {
            Run::Granted(started) => return Poll::Ready(Wake::Started(started)),
            Run::Handed(future) => return Poll::Ready(Wake::Handed(future)),
            other => inner.run = other,
        }
        *waited = true;
        inner.register(cx.waker());
        Poll::Pending
    })
}

type HandlerFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Value, WorkerProtocolError>> + Send + 'a>>;

/// Runs the handler until it finishes (`Some`) or the core aborts it
/// (`None`; the handler future is dropped before this returns).
/// (`waited` is set once the handler has returned `Pending`.)
async fn run_handler(
    future: HandlerFuture<'_>,
    slot: &Slot,
    waited: &mut bool,
) -> Option<Result<Value, WorkerProtocolError>> {
    let mut future = AssertUnwindSafe(future).catch_unwind();
    poll_fn(move |cx: &mut Context<'_>| {
        if let Poll::Ready(outcome) = future.poll_unpin(cx) {
            return Poll::Ready(Some(
                outcome.unwrap_or_else(|panic| Err(panic_error(&*panic))),
            ));
        }
        *waited = true;
        let mut inner = slot.lock();
        if inner.answer.is_some() {
            return Poll::Ready(None);
        }
        inner.register(cx.waker());
        Poll::Pending
    })
    .await
}

/// Asks the breaker whether the worker named `worker_id` may take the
/// request; a veto is reported (`on_request_rejected`) before this returns.
async fn ask_breaker(
    hooks: &dyn CircuitBreakerHooks,
    worker_id: &str,
    request: &WorkerRequest,
) -> bool {
    let allowed = hooks.allow_request(worker_id, request);
    if !allowed {
        hooks
            .on_request_rejected(Some(worker_id), request, WorkerErrorCode::CircuitOpen)
            .await;
    }
    allowed
}

/// What a caller in a pool with hooks waits for.
enum Notice {
    /// Its answer.
    Answered(Delivered),
    /// Its worker was removed: it has the breaker place the request anew.
    Revet,
}

/// Waits until the request is answered or must be placed anew.
fn wait_for_notice(slot: &Slot) -> impl Future<Output = Notice> + '_ {
    poll_fn(move |cx| {
        let mut inner = slot.lock();
        if let Some(answer) = inner.answer.take() {
            return Poll::Ready(Notice::Answered(answer));
        }
        if std::mem::take(&mut inner.revet) {
            return Poll::Ready(Notice::Revet);
        }
        inner.register(cx.waker());
        Poll::Pending
    })
}

/// The caller's answer, from the core's.
fn respond(answer: Delivered, request_id: String) -> Timed {
    let timings = Timings {
        queued: answer.queued_for,
        ran: answer.ran_for,
    };
    let result = answer.result.map(|output| WorkerResponse {
        request_id,
        worker_id: String::from(worker_id(answer.worker.as_deref())),
        result: WorkerResult::Success { output },
        elapsed_ms: millis(
            timings
                .queued
                .saturating_add(timings.ran.unwrap_or_default()),
        ),
    });
    Timed { result, timings }
}

/// Fires the success or failure hook of an answered request.
async fn notify(
    hooks: &dyn CircuitBreakerHooks,
    worker_id: &str,
    outcome: &Result<WorkerResponse, WorkerPoolError>,
) {
    match outcome {
        Ok(response) => hooks.on_request_success(worker_id, response).await,
        Err(error) => {
            hooks
                .on_request_failure(worker_id, &protocol_error(error))
                .await;
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The wire form of a pool error, for `on_request_failure`.
fn protocol_error(error: &WorkerPoolError) -> WorkerProtocolError {
    match error {
        WorkerPoolError::Worker(inner) => inner.clone(),
        other => WorkerProtocolError::new(
            other.code(),
            other.to_string(),
            other.code() != WorkerErrorCode::InvalidRequest,
        ),
    }
}

fn panic_error(panic: &(dyn std::any::Any + Send)) -> WorkerProtocolError {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string());
    WorkerProtocolError::new(
        WorkerErrorCode::ExecutionFailed,
        format!("worker handler panicked: {detail}"),
        false,
    )
}

/// The error of a started request whose handler lost its request (never
/// happens).
fn lost_handler() -> WorkerProtocolError {
    debug_assert!(false, "a started request has no request for its handler");
    WorkerProtocolError::new(
        WorkerErrorCode::Unavailable,
        "the pool lost this request before its handler ran",
        true,
    )
}

fn lost_answer() -> WorkerPoolError {
    debug_assert!(false, "a request ended without its answer");
    WorkerPoolError::Worker(WorkerProtocolError::new(
        WorkerErrorCode::Unavailable,
        "the pool lost track of this request",
        true,
    ))
}

fn command_error(error: CommandError) -> WorkerPoolError {
    match error {
        CommandError::ShuttingDown => WorkerPoolError::ShuttingDown,
        CommandError::UnknownWorker(_)
        | CommandError::UnknownWorkerId(_)
        | CommandError::WorkerRemoving(_) => WorkerPoolError::NoHealthyWorker,
        other => WorkerPoolError::InvalidRequest {
            reason: other.to_string(),
        },
    }
}
