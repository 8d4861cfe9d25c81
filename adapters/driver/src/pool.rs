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
    lanes, Admission, CommandError, Pool, PoolConfig, RequestError, RequestKey, Revetted, Stats,
    Time, Vetted, Vetting, WorkerHealth, WorkerHealthStatus, WorkerKey, WorkerPoolError,
    WorkerPoolOptions, WorkerProtocolError, WorkerRequest, WorkerResponse,
};
use futures_util::future::{poll_fn, Abortable};
use futures_util::FutureExt;
use parking_lot::Mutex;
use serde_json::Value;

use crate::answer::{ask_breaker, command_error, lost_answer, notify, respond};
use crate::cooperate::cooperate;
use crate::handler::{CircuitBreakerHooks, WorkerHandler, WorkerPoolClient};
use crate::live::{Live, LiveGuard};
use crate::runtime::Runtime;
use crate::state::{
    worker_id, Claimed, Core, Delivered, FastMap, HeldRequest, LaneSignals, Own,
    OwnedHandlerFuture, ProbeJob, Run, Slot, Started, WorkerCell, WorkerEntry,
};
use crate::types::{BuildError, DriverOptions, HealthTransition, Timed};
use crate::wakers::Wakers;
use crate::worker::{panic_error, worker_task, Completer, ExecutionMode, Job};

/// An in-process worker pool driven by `foreman-core`, generic over the
/// async [`Runtime`] (adapters name it: `foreman_tokio::WorkerPool`).
///
/// Every decision — validation, admission, routing, health, deadlines,
/// probes, restarts, drain — is the core's; this type runs handlers,
/// delivers the core's answers and feeds it completions and the clock.
pub struct WorkerPool<R: Runtime> {
    shared: Arc<Shared<R>>,
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
        Self::with_driver_options(runtime, handlers, config, hooks, DriverOptions::default())
    }

    /// Creates a pool whose workers are spread over `lanes` cores (see the
    /// crate docs: each lane is a `foreman_core::Pool` with its own lock;
    /// [`with_config`](Self::with_config) uses one lane).
    /// Worker `worker-i` is in lane `i % lanes`.
    ///
    /// # Errors
    /// [`BuildError`] when there is no handler, the configuration is
    /// invalid, or the runtime cannot spawn tasks here.
    pub fn with_lanes(
        runtime: R,
        handlers: Vec<Arc<dyn WorkerHandler>>,
        config: PoolConfig,
        hooks: Option<Arc<dyn CircuitBreakerHooks>>,
        lanes: NonZeroUsize,
    ) -> Result<Self, BuildError> {
        let options = DriverOptions::default().lanes(lanes);
        Self::with_driver_options(runtime, handlers, config, hooks, options)
    }

    /// Creates a pool with the core's configuration and the driver's own
    /// [`DriverOptions`] (where handlers run, how many lanes).
    ///
    /// # Errors
    /// [`BuildError`] when there is no handler, the configuration is
    /// invalid, or the runtime cannot spawn tasks here.
    pub fn with_driver_options(
        runtime: R,
        handlers: Vec<Arc<dyn WorkerHandler>>,
        mut config: PoolConfig,
        hooks: Option<Arc<dyn CircuitBreakerHooks>>,
        options: DriverOptions,
    ) -> Result<Self, BuildError> {
        let lanes = options.lanes;
        // With hooks, handlers always run on worker tasks: the caller runs
        // the hooks while its handler runs.
        let pool_tasks = options.execution == ExecutionMode::PoolTasks || hooks.is_some();
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
                live: Arc::new(Live::default()),
                armed: Time::MAX,
                health_log: Default::default(),
                pool_tasks,
                publish_load: lanes.get() > 1,
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
            core.workers
                .insert(key, WorkerEntry::new(&id, key, handler));
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
            pool_tasks,
        });
        for lane in 0..shared.lanes.len() {
            spawn_timer(&shared, lane);
            if pool_tasks {
                let cells: Vec<_> = {
                    let core = shared.lane(lane).core.lock();
                    core.workers.values().map(|e| Arc::clone(&e.cell)).collect()
                };
                for cell in cells {
                    shared.spawn_worker(lane, cell);
                }
            }
            shared.input(lane, |_, _| ());
        }
        Ok(WorkerPool { shared })
    }

    /// Submits one request and waits for its answer.
    ///
    /// The handler runs in the calling task once the core grants it a
    /// worker. Dropping the returned future cancels the request: it leaves
    /// its queue, or its handler is dropped.
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

    /// `submit` without the cooperative yield. The request, and its start
    /// or answer, wait in the slot rather than in this future, which every
    /// caller holds: it stays small.
    async fn run(&self, slot: &Arc<Slot>, waited: &mut bool) -> Timed {
        let shared = &self.shared;
        // Everything up to the first await is one synchronous step, so
        // none of its locals lives in this future. A request started at
        // once (with no hooks to wait for) gets its handler future here
        // (caller-task mode) or is already on its worker's task: the
        // request never goes back to its slot, nor into this future.
        let fast_worker: Arc<WorkerCell>;
        let mut live: Option<LiveGuard> = None;
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
                Some((
                    Started {
                        worker,
                        live: guard,
                    },
                    request,
                )) => {
                    fast_worker = worker;
                    live = Some(guard);
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
        // From here on, dropping this future cancels the request, also
        // while the hooks below run.
        let mut guard = PendingGuard::new(shared, lane, key, slot);
        if shared.pool_tasks {
            let answer = wait_for_answer(slot, key, waited).await;
            guard.done = true;
            return respond(answer, request_id);
        }
        let worker: Arc<WorkerCell>;
        let future: HandlerFuture<'_> = match started_at_once {
            Some(future) => future,
            None => match wait_for_start(slot, waited).await {
                Wake::Started(Started {
                    worker: granted,
                    live: guard,
                }) => {
                    live = Some(guard);
                    let Some(request) = slot.lock().parked.take() else {
                        return Timed::refused(lost_answer());
                    };
                    worker = granted;
                    worker.handler.handle(request)
                }
                Wake::Handed(future, guard) => {
                    live = Some(guard);
                    future
                }
                Wake::Answered(answer) => {
                    guard.answered_without_run();
                    return respond(answer, request_id);
                }
            },
        };
        let ran = run_handler(future, slot, waited).await;
        // The handler future is dropped: it no longer counts as live.
        drop(live);
        let answer = match ran {
            Some(result) => {
                let mut own = Own::default();
                shared.complete(lane, key, result, Some(key), CLAIM_BUDGET, &mut own);
                guard.done = true;
                let answer = own.answer.take();
                shared.run_claimed(lane, own.claimed);
                answer.or_else(|| slot.lock().answer.take())
            }
            None => {
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
    /// (`on_request_accepted`) while its handler already runs on its
    /// worker's task; should the worker be removed while the request waits
    /// there, the breaker places it anew the same way; the answer is
    /// reported (`on_request_success` or `on_request_failure`) before it
    /// is returned. A refusal is reported as `on_request_rejected(None, …)`.
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
        // aborts its handler), also while the hooks below run.
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
    /// `NoHealthyWorker` for an unknown (or removed) worker id;
    /// `ShuttingDown` once the pool has stopped.
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
        let mut names = shared.names.lock();
        let lane = (0..shared.lanes.len())
            .min_by_key(|&lane| shared.lane(lane).core.lock().workers.len())
            .unwrap_or(0);
        let id = names.peek();
        // Refused, the handler is dropped (user code) with no lock held.
        let mut handler = Some(handler);
        let added = shared.input(lane, |core, now| {
            let key = core.pool.add_named_worker(now, id.as_str())?;
            let cell = handler.take().map(|handler| {
                let entry = WorkerEntry::new(&id, key, handler);
                let cell = Arc::clone(&entry.cell);
                core.workers.insert(key, entry);
                cell
            });
            Ok(cell)
        });
        let added = match added {
            Ok(cell) => {
                // Requests the core started on it already wait in its inbox.
                if let (true, Some(cell)) = (shared.pool_tasks, cell) {
                    shared.spawn_worker(lane, cell);
                }
                Ok(names.add(lane))
            }
            Err(error) => Err(command_error(error)),
        };
        drop(names);
        drop(handler);
        added
    }

    /// Removes a worker: it takes no new requests, its queued requests move
    /// to other workers of its lane, its running request finishes.
    ///
    /// # Errors
    /// `NoHealthyWorker` for an unknown worker id or one already being
    /// removed.
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
            waiters.push(self.shared.input(lane, |core, now| {
                core.pool.begin_shutdown(now, Some(drain));
                Arc::clone(&core.live)
            }));
        }
        for live in waiters {
            poll_fn(|cx| live.poll_idle(cx.waker())).await;
        }
    }

    /// An input about one worker, in its lane.
    fn command(
        &self,
        worker_id: &str,
        f: impl FnOnce(&mut Core, Time, WorkerKey) -> Result<(), CommandError>,
    ) -> Result<(), WorkerPoolError> {
        // An id no lane knows goes to the first lane, whose core refuses it
        // as it refuses any command (`ShuttingDown` once shutdown began).
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
            let mut wake = Wakers::default();
            for entry in core.workers.values_mut() {
                if let Some((_, handle)) = entry.probe.take() {
                    handle.abort();
                }
                entry.cell.inbox.close(&mut wake);
            }
            lane.signals.close();
            drop(core);
            wake.wake_all();
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
    /// Handlers run on worker tasks ([`ExecutionMode::PoolTasks`]).
    pool_tasks: bool,
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

/// A request its worker started at once, with no hooks to run first: the
/// caller runs it straight away.
type StartedAtOnce = Option<(Started, WorkerRequest)>;

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

    /// Submits the request parked in `slot`, with the slot as its payload:
    /// validates it, offers it to the lanes in turn (see
    /// [`lane_order`](Self::lane_order); the last one tried refuses for
    /// real), carries out the actions and wakes whom they concern. The
    /// request goes back to the slot, unless hooks must see it first.
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
        // The request, until a worker task takes it (pool-task mode).
        let mut held = Some(request);
        let (lane, submitted) = loop {
            let (index, last) = tries.next_try();
            let lane = self.lane(index);
            let mut probes = Vec::new();
            let mut core = lane.core.lock();
            let submitted = if last {
                core.pool
                    .submit_checked(now, admission.clone(), Arc::clone(slot))
            } else {
                core.pool.offer(now, admission.clone(), Arc::clone(slot))
            };
            let key = submitted.as_ref().ok().copied();
            let mut own = Own::default();
            core.after_input(key, &mut own, &mut probes, &lane.signals, 0);
            // Under the lock, so an abort of the request finds it on its
            // worker's task.
            if let (true, Some(key)) = (self.pool_tasks, key) {
                if let Some(start) = own.started.take() {
                    match held.take() {
                        Some(request) => start.dispatch(key, request, &mut own.wake),
                        None => own.started = Some(start),
                    }
                }
            }
            drop(core);
            own.wake_all();
            started = own.started.take().or(started);
            answered = own.answer.take().or(answered);
            self.spawn_probes(index, probes);
            match submitted {
                Err(refused) if !last && lanes::try_next_lane(&refused.error) => {}
                submitted => break (index, submitted.map_err(|refused| refused.error)),
            }
        };
        // An answer this early (never in practice) waits in the slot.
        if let Some(answer) = answered {
            slot.lock().answer = Some(answer);
        }
        let entered = Entered {
            lane,
            submitted,
            request_id,
        };
        // `None`: on its worker's task already.
        let start = match (held, started) {
            (Some(request), Some(started)) => Some((started, request)),
            (Some(request), None) => {
                slot.lock().parked = HeldRequest::new(request);
                None
            }
            (None, _) => None,
        };
        Ok((entered, start))
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
    /// out the actions, unlock, spawn probes.
    fn input<T>(self: &Arc<Self>, lane: usize, f: impl FnOnce(&mut Core, Time) -> T) -> T {
        let mut probes = Vec::new();
        let signals = &self.lane(lane).signals;
        let mut own = Own::default();
        let out = {
            let mut core = self.lane(lane).core.lock();
            let now = self.now();
            let out = f(&mut core, now);
            core.after_input(None, &mut own, &mut probes, signals, 0);
            out
        };
        own.wake_all();
        self.spawn_probes(lane, probes);
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
        let mut probes = Vec::new();
        let now = self.now();
        {
            let mut core = lane.core.lock();
            core.pool.handle_completion(now, key, result);
            core.after_input(own, out, &mut probes, &lane.signals, claim);
        }
        out.wake_all();
        self.spawn_probes(lane.index, probes);
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
                live,
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
                            (Some((future, live)), None)
                        } else {
                            inner.run = Run::Handed(future, live);
                            (None, inner.take_waker())
                        }
                    };
                    // Dropped with no lock held: the future before its guard.
                    if let Some((dropped, live)) = keep {
                        drop(dropped);
                        drop(live);
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
            drop(live);
            slot.lock().run = Run::Ended;
            // Claims nothing: with no claim budget, every request this
            // completion starts is granted to its own caller.
            self.complete(lane, key, result, None, 0, &mut Own::default());
        }
    }

    /// Spawns the task of a worker ([`ExecutionMode::PoolTasks`]).
    fn spawn_worker(self: &Arc<Self>, lane: usize, cell: Arc<WorkerCell>) {
        let weak = Arc::downgrade(self);
        let (handler, inbox) = (Arc::clone(&cell.handler), Arc::clone(&cell.inbox));
        let task = worker_task(weak, lane, cell.key, handler, inbox);
        self.runtime.spawn(Box::pin(task));
    }

    /// Spawns the probes an input asked for (usually none: the check is
    /// inlined, the spawning is not).
    #[inline(always)]
    fn spawn_probes(self: &Arc<Self>, lane: usize, probes: Vec<ProbeJob>) {
        if !probes.is_empty() {
            self.spawn_probe_jobs(lane, probes);
        }
    }

    #[inline(never)]
    fn spawn_probe_jobs(self: &Arc<Self>, lane: usize, probes: Vec<ProbeJob>) {
        for job in probes {
            let weak = Arc::downgrade(self);
            self.runtime.spawn(Box::pin(probe_task(weak, lane, job)));
        }
    }
}

impl<R: Runtime> Completer for Shared<R> {
    fn complete_on_worker(
        self: &Arc<Self>,
        lane: usize,
        worker: WorkerKey,
        key: RequestKey,
        result: Result<Value, WorkerProtocolError>,
        next: &mut Vec<Job>,
    ) {
        let lane = self.lane(lane);
        // `next` lends its capacity: no allocation per completion.
        let mut own = Own {
            here: Some(worker),
            jobs: std::mem::take(next),
            ..Own::default()
        };
        let mut probes = Vec::new();
        let now = self.now();
        {
            let mut core = lane.core.lock();
            core.pool.handle_completion(now, key, result);
            core.after_input(None, &mut own, &mut probes, &lane.signals, 0);
        }
        own.wake_all();
        *next = std::mem::take(&mut own.jobs);
        self.spawn_probes(lane.index, probes);
    }
}

async fn probe_task<R: Runtime>(weak: Weak<Shared<R>>, lane: usize, job: ProbeJob) {
    let ProbeJob {
        worker,
        probe,
        handler,
        registration,
        live,
    } = job;
    let probing = AssertUnwindSafe(handler.probe_health()).catch_unwind();
    let outcome = Abortable::new(probing, registration).await;
    drop(live);
    let status = match outcome {
        Ok(Ok(status)) => Some(status),
        Ok(Err(_panic)) => Some(WorkerHealthStatus::Unavailable),
        Err(_aborted) => None,
    };
    let Some(shared) = weak.upgrade() else {
        return;
    };
    shared.input(lane, |core, now| {
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
            done: false,
        }
    }

    /// The request was answered before its handler ran (or after it was
    /// started but before this task ran it).
    fn answered_without_run(&mut self) {
        self.done = true;
        drop(self.slot.lock().give_up());
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
        let mut probes = Vec::new();
        let handed;
        let parked;
        let mut own = Own::default();
        {
            let mut core = self.lane.core.lock();
            {
                let mut inner = slot.lock();
                // Dropped once the locks are released.
                parked = std::mem::take(&mut inner.parked);
                handed = inner.give_up();
            }
            let now = shared.now();
            core.pool.cancel(now, key);
            core.after_input(Some(key), &mut own, &mut probes, &self.lane.signals, 0);
        }
        let answer = own.answer.take();
        drop(handed);
        drop(parked);
        own.wake_all();
        drop(std::mem::take(&mut own.release));
        shared.spawn_probes(self.lane.index, probes);
        answer.or_else(|| slot.lock().answer.take())
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

/// How many of the queued requests that one completion starts the task
/// that completed it claims (see [`Shared::run_claimed`]); the rest are
/// granted to their callers.
const CLAIM_BUDGET: usize = 16;

enum Wake {
    Started(Started),
    Handed(OwnedHandlerFuture, LiveGuard),
    Answered(Delivered),
}

/// Waits for the answer of a request whose handler runs on its worker's
/// task ([`ExecutionMode::PoolTasks`]); `waited` is set if it had to. A
/// request started while its caller ran its hooks is dispatched to its
/// worker here, once the request is back in the slot.
fn wait_for_answer<'a>(
    slot: &'a Slot,
    key: RequestKey,
    waited: &'a mut bool,
) -> impl Future<Output = Delivered> + 'a {
    poll_fn(move |cx| {
        let mut wake = Wakers::default();
        let polled = {
            let mut inner = slot.lock();
            if let Some(answer) = inner.answer.take() {
                Poll::Ready(answer)
            } else {
                if matches!(inner.run, Run::Granted(_)) && inner.parked.get().is_some() {
                    if let (Run::Granted(start), Some(request)) = (
                        std::mem::replace(&mut inner.run, Run::Ended),
                        inner.parked.take(),
                    ) {
                        start.dispatch(key, request, &mut wake);
                    }
                }
                *waited = true;
                inner.register(cx.waker());
                Poll::Pending
            }
        };
        wake.wake_all();
        polled
    })
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
            Run::Handed(future, live) => return Poll::Ready(Wake::Handed(future, live)),
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
