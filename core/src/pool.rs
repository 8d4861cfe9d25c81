//! [`Pool`]: the sans-IO state machine that makes every decision of the pool.

mod invariants;
mod run_list;
mod vetting;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

use crate::config::{Admission, ConfigError, PoolConfig, RoutingPolicy};
use crate::health::{Health, HealthCause};
use crate::keys::{ProbeKey, RequestKey, Slab, WorkerKey};
use crate::output::{Action, Answer, Event, Phase};
use crate::protocol::{
    WorkerErrorCode, WorkerHealth, WorkerHealthStatus, WorkerPoolError, WorkerProtocolError,
    WorkerRequest,
};
use crate::routing::{Membership, Router};
use crate::stats::{Counters, Stats, WorkerStats};
use crate::time::Time;
use crate::timers::{TimeoutReason, Timer, TimerHeap};
use crate::validate::RequestError;
use run_list::RunList;

pub use invariants::InvariantViolation;
pub use vetting::{Revetted, Vetted, Vetting};

/// The worker pool as a pure state machine: inputs in, decisions out.
///
/// `Pool` owns every policy of foreman — validation, admission and
/// backpressure, routing, health, deadlines, probes, restarts, removal and
/// drain — and performs no I/O. A driver (the tokio or async-std adapter, a
/// simulator, a test) feeds it inputs and carries out what it asks.
///
/// # Inputs
/// Every input takes `now`, the current [`Time`]:
/// - [`submit`](Self::submit) / [`submit_checked`](Self::submit_checked) /
///   [`offer`](Self::offer): a new request, answered at once with a
///   [`RequestKey`] or a [`Refused`] (invalid, queue full, no healthy
///   worker, shutting down);
/// - [`vet`](Self::vet): a new request whose worker a circuit breaker
///   approves, asked one candidate at a time (so a driver asks it outside
///   its lock), and [`revet`](Self::revet): such a request whose worker was
///   removed ([`Action::Revet`]); [`submit_with`](Self::submit_with) runs
///   the steps of `vet` with a breaker that answers at once;
/// - [`cancel`](Self::cancel): the caller gave up on a request;
/// - [`handle_completion`](Self::handle_completion): a handler finished;
/// - [`handle_probe_result`](Self::handle_probe_result): a probe answered;
/// - [`handle_timeout`](Self::handle_timeout): the instant from
///   [`poll_timeout`](Self::poll_timeout) was reached (a spurious call is a
///   no-op);
/// - commands that can be refused return `Result`:
///   [`add_worker`](Self::add_worker), [`remove_worker`](Self::remove_worker),
///   [`restart_worker`](Self::restart_worker); and
///   [`begin_shutdown`](Self::begin_shutdown).
///
/// Inputs naming something that no longer exists (a completion for an
/// answered request, a stale probe, a double cancel) are ignored and return
/// `false`. No input sequence makes the core panic.
///
/// # Outputs and the drain rule
/// After every input, the driver drains [`poll_action`](Self::poll_action)
/// until it returns `None` and carries the [`Action`]s out **in order** (an
/// `Abort` precedes the `Answer` of the same request; a `RestartWorker`
/// precedes the `Start`s on the fresh worker). It may drain
/// [`poll_event`](Self::poll_event) for hooks and tracing; events queue up
/// until drained. Then it asks [`poll_timeout`](Self::poll_timeout) when to
/// call `handle_timeout` next; the answer changes only after an input. A
/// driver that keeps one timer may instead ask
/// [`move_timer`](Self::move_timer), which is cheaper: its timer then fires
/// early at worst (a spurious `handle_timeout`), never late.
///
/// # The time rule
/// The core never reads a clock. Time only moves forward: an input whose
/// `now` is earlier than one seen before is treated as happening at the
/// latest instant seen. Every deadline is an absolute [`Time`]; a timer fires
/// at the first `handle_timeout` whose `now` is at or after it, never before.
///
/// # Answers
/// Every accepted request gets exactly one [`Action::Answer`]: its result,
/// a worker error, `Timeout` (queue wait plus run time exceeded its budget),
/// `Cancelled`, or `ShuttingDown` once a drain deadline passes.
///
/// A timeout counts against a worker only for the time the request spent
/// running on it. With the budget measured from acceptance to the deadline:
/// - a request whose deadline comes while it is queued is answered
///   `Timeout` ([`Phase::Queued`]) and counts against no worker. So is a
///   queued request that a worker reaches with its budget spent (a worker
///   can free up before the deadline's timer fires) or with less budget
///   left than that worker's last successful request ran for: it is not
///   started, since it could hardly finish, and under overload such runs
///   (the oldest requests, which workers reach first) would hold every
///   worker until their deadlines and leave no request to succeed;
/// - a request whose deadline comes while it runs is aborted and answered
///   `Timeout` ([`Phase::Running`]); it counts as one failure of its worker
///   if that worker had at least half of its budget (from the request's
///   start to its deadline: it waited for at most half of its budget), and
///   changes nothing otherwise. A request that starts at once is charged
///   in full; one that reaches a worker with less than half of its budget
///   left is never held against it, so overload sheds load by expiry and
///   backpressure (`QueueFull`) and never ejects a worker whose requests
///   take under half the budget.
///
/// # Shutdown
/// [`begin_shutdown`](Self::begin_shutdown) refuses new work with
/// `ShuttingDown`, stops probing, and lets queued and running requests finish
/// until the optional drain deadline; then it aborts and answers the rest.
/// When nothing is left it emits [`Action::StopWorker`] for every worker and
/// [`Event::ShutdownComplete`]; from then on every worker reports
/// `Unavailable`.
pub struct Pool<P> {
    config: PoolConfig,
    /// Requests one worker may hold: running plus queued.
    capacity: usize,
    now: Time,
    requests: Slab<Request<P>>,
    workers: Slab<Worker>,
    ids: BTreeMap<String, WorkerKey>,
    router: Router,
    /// Workers that are schedulable (whether or not they have room).
    schedulable: usize,
    /// Unpinned queued requests, which any schedulable worker may run (late
    /// binding), in the order they arrived (each is also in its worker's
    /// queue, for that worker to run should it stop being schedulable); may
    /// hold stale keys (started, or answered while queued), swept once they
    /// outnumber the live ones.
    backlog: VecDeque<RequestKey>,
    /// Live entries of `backlog`.
    backlog_live: usize,
    timers: TimerHeap,
    actions: VecDeque<Action<P>>,
    events: VecDeque<Event>,
    lifecycle: Lifecycle,
    next_probe: u64,
    names_issued: u64,
    counters: Counters,
}

/// The longest worker identifier [`Pool::add_named_worker`] takes, in bytes
/// (room for an endpoint URL).
pub const MAX_WORKER_ID_LEN: usize = 1024;

/// A submit the pool refused; the payload comes back untouched.
pub struct Refused<P> {
    /// Why the request was refused.
    pub error: WorkerPoolError,
    /// The payload given to `submit`.
    pub payload: P,
}

impl<P> fmt::Debug for Refused<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refused")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// A worker command the pool refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CommandError {
    /// No worker has that key (it never existed or was removed).
    #[error("no worker with key {0}")]
    UnknownWorker(WorkerKey),
    /// No worker has that identifier (it never existed or was removed).
    #[error("no worker named {0:?}")]
    UnknownWorkerId(String),
    /// The worker is being removed and takes no more commands.
    #[error("worker {0} is being removed")]
    WorkerRemoving(String),
    /// Another worker already uses that identifier.
    #[error("a worker named {0:?} already exists")]
    DuplicateWorkerId(String),
    /// The identifier is empty or too long.
    #[error("invalid worker id: {reason}")]
    InvalidWorkerId {
        /// What is wrong with it.
        reason: String,
    },
    /// The pool is shutting down (or has stopped) and takes no new workers.
    #[error("the worker pool is shutting down")]
    ShuttingDown,
    /// The pool already holds the largest number of workers it can track.
    #[error("too many workers")]
    TooManyWorkers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Running,
    Draining { deadline: Option<Time> },
    Stopped,
}

struct Request<P> {
    /// The worker running it, or the one it is queued on (whose room it
    /// takes up).
    worker: WorkerKey,
    state: RequestState,
    /// Only its worker may run it (it is not in the backlog).
    pinned: bool,
    /// A circuit breaker chose its worker, and it is pinned there: should
    /// that worker be removed while it waits, it moves only to a worker
    /// the breaker approves ([`Action::Revet`], [`Pool::revet`]).
    vetted: bool,
    /// The submit payload, held until the answer gives it back.
    payload: P,
    accepted_at: Time,
    deadline: Option<Time>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestState {
    Queued,
    /// Vetted, its worker removed: it waits on no worker's queue (its
    /// removed worker counts it in `moving`) for [`Pool::revet`].
    Moving,
    Running {
        started_at: Time,
    },
}

impl RequestState {
    /// Waiting for a run slot: queued, or moving off a removed worker.
    fn is_waiting(self) -> bool {
        matches!(self, RequestState::Queued | RequestState::Moving)
    }
}

struct Worker {
    id: String,
    health: Health,
    /// Cached `health.status(threshold)`, to notice changes.
    status: WorkerHealthStatus,
    /// Queued request keys in order; may hold stale keys (cancelled, timed
    /// out, or run by another worker while queued), swept once they
    /// outnumber the live ones.
    queue: VecDeque<RequestKey>,
    /// Live entries of `queue`.
    queued: usize,
    /// Requests that waited here when the worker was removed and wait for
    /// a circuit breaker's approval of another ([`RequestState::Moving`]);
    /// the worker is released only once they have moved or been answered.
    moving: usize,
    running: RunList,
    /// How long its last successful request ran (since it was added or
    /// restarted): a queued request with less budget left is not started
    /// on it (see [`too_late_to_start`]).
    last_run: Option<Duration>,
    removing: bool,
    /// Cached: takes new requests (not removing, status schedulable, pool
    /// not stopped).
    schedulable: bool,
    /// Cached, as the router holds it: schedulable with room (eligible),
    /// and a run slot free (idle), and Healthy (preferred: routed to
    /// before idle Degraded workers).
    membership: Membership,
    probe: ProbeState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeState {
    /// Not probing (removing, or the pool is shutting down).
    Idle,
    /// Next probe is due at this instant.
    Due(Time),
    /// A probe is running.
    Outstanding {
        key: ProbeKey,
        sent_at: Time,
        deadline: Time,
        failure_seq: u64,
    },
}

impl<P: Clone> Pool<P> {
    /// Creates an empty pool; add workers with [`add_worker`](Self::add_worker).
    ///
    /// # Errors
    /// Returns the first [`ConfigError`] of `config` (zero queue capacity,
    /// zero probe interval, a default timeout above the policy maximum, …).
    pub fn new(config: impl Into<PoolConfig>, now: Time) -> Result<Self, ConfigError> {
        let config = config.into();
        config.validate()?;
        let capacity = config
            .options
            .queue_capacity
            .saturating_add(config.max_concurrency_per_worker as usize);
        Ok(Pool {
            router: Router::new(config.routing),
            config,
            capacity,
            now,
            requests: Slab::new(),
            workers: Slab::new(),
            ids: BTreeMap::new(),
            schedulable: 0,
            backlog: VecDeque::new(),
            backlog_live: 0,
            timers: TimerHeap::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            lifecycle: Lifecycle::Running,
            next_probe: 0,
            names_issued: 0,
            counters: Counters::default(),
        })
    }

    // ----- inputs -------------------------------------------------------

    /// Submits a request; see [`submit_checked`](Self::submit_checked).
    ///
    /// # Errors
    /// Returns [`Refused`] with the payload when the request is not accepted.
    pub fn submit(
        &mut self,
        now: Time,
        request: &WorkerRequest,
        payload: P,
    ) -> Result<RequestKey, Refused<P>> {
        let admission = self.config.admit(request);
        self.submit_checked(now, admission, payload)
    }

    /// Submits a request, asking `allow` (a circuit breaker that answers at
    /// once) about each candidate worker by id, in the pool's order, until
    /// one allows: the steps of [`vet`](Self::vet) in one call. Its worker
    /// is then the one `allow` approved (see [`vet`](Self::vet) for when it
    /// may move, and [`Action::Revet`]).
    ///
    /// # Errors
    /// As [`vet`](Self::vet) with [`Vetting::new`].
    pub fn submit_with(
        &mut self,
        now: Time,
        request: &WorkerRequest,
        payload: P,
        mut allow: impl FnMut(&str) -> bool,
    ) -> Result<RequestKey, Refused<P>> {
        let admission = self.config.admit(request);
        let mut vetting = Vetting::new();
        let mut payload = payload;
        loop {
            match self.vet(now, &admission, payload, &mut vetting) {
                Vetted::Ask {
                    worker,
                    payload: back,
                } => {
                    payload = back;
                    let allowed = self.worker_id(worker).is_some_and(&mut allow);
                    vetting.answer(allowed);
                }
                Vetted::Accepted { request, .. } => return Ok(request),
                Vetted::Refused(refused) => return Err(refused),
            }
        }
    }

    /// Submits a request validated beforehand with [`PoolConfig::admit`] on
    /// this pool's configuration ([`Pool::config`]). Drivers use it to
    /// validate before taking the lock around the pool.
    ///
    /// On success the request is bound to a worker and queued there (and
    /// started at once if the worker is free; with late binding, whichever
    /// schedulable worker frees up first may run it); its answer comes
    /// later as an [`Action::Answer`].
    ///
    /// # Errors
    /// Returns [`Refused`] with the payload and the reason: `ShuttingDown`
    /// once shutdown began; `InvalidRequest` when the admission failed;
    /// `QueueFull` when a schedulable worker exists but none has room;
    /// `NoHealthyWorker` when no worker is schedulable.
    pub fn submit_checked(
        &mut self,
        now: Time,
        admission: Result<Admission, RequestError>,
        payload: P,
    ) -> Result<RequestKey, Refused<P>> {
        self.admit_request(now, admission, payload, false)
    }

    /// Offers a request validated beforehand, for a driver that spreads its
    /// workers over several pools ("lanes") and tries them in turn: exactly
    /// like [`submit_checked`](Self::submit_checked), except that a refusal
    /// for want of a worker (`QueueFull`, `NoHealthyWorker`) is *declined*:
    /// it is not counted and emits no pool-level [`Event::Rejected`], so
    /// the request is counted once, by the pool that takes it or by the
    /// last one tried (with `submit_checked`).
    ///
    /// # Errors
    /// As [`submit_checked`](Self::submit_checked).
    pub fn offer(
        &mut self,
        now: Time,
        admission: Result<Admission, RequestError>,
        payload: P,
    ) -> Result<RequestKey, Refused<P>> {
        self.admit_request(now, admission, payload, true)
    }

    /// Workers that would start a request at once (schedulable, with a free
    /// run slot).
    pub fn idle_workers(&self) -> usize {
        self.router.idle_len()
    }

    /// Workers that would take a request (schedulable, with room).
    pub fn eligible_workers(&self) -> usize {
        self.router.eligible_len()
    }

    /// `submit_checked` and `offer`: `decline` says whether a refusal for
    /// want of a worker is declined (uncounted) rather than final.
    fn admit_request(
        &mut self,
        now: Time,
        admission: Result<Admission, RequestError>,
        payload: P,
        decline: bool,
    ) -> Result<RequestKey, Refused<P>> {
        let now = self.observe(now);
        let admission = match self.admissible(admission) {
            Ok(admission) => admission,
            Err(error) => return Err(self.refuse_counted(payload, error)),
        };
        // The policy's first choice is taken: found without building the
        // candidate iterator, which is only the fallback.
        let chosen = self
            .router
            .first_candidate()
            .or_else(|| self.router.candidates().next());
        let Some(worker) = chosen else {
            let error = self.no_worker_error(false);
            return Err(self.refuse_or_decline(payload, error, decline));
        };
        if !self.requests.has_room() {
            return Err(self.refuse_or_decline(payload, WorkerPoolError::QueueFull, decline));
        }
        let pinned = !self.late_binding();
        self.accept(now, worker, admission, payload, pinned, false)
    }

    /// Whether the pool takes new requests and the admission passed: its
    /// checks that do not depend on workers, in their order of precedence.
    fn admissible(
        &self,
        admission: Result<Admission, RequestError>,
    ) -> Result<Admission, WorkerPoolError> {
        if self.lifecycle != Lifecycle::Running {
            return Err(WorkerPoolError::ShuttingDown);
        }
        let admission = admission.map_err(WorkerPoolError::from)?;
        if admission.timeout() == Some(Duration::ZERO) {
            // A zero budget has run out on arrival: no worker could finish
            // in time, so none is asked and none is held responsible.
            return Err(WorkerPoolError::Timeout);
        }
        Ok(admission)
    }

    /// Why no worker takes a request: `QueueFull` when some schedulable
    /// worker has no room, else `CircuitOpen` when a breaker vetoed some
    /// worker, else `NoHealthyWorker`.
    fn no_worker_error(&self, vetoed: bool) -> WorkerPoolError {
        if self.schedulable > self.router.eligible_len() {
            WorkerPoolError::QueueFull
        } else if vetoed {
            WorkerPoolError::CircuitOpen
        } else {
            WorkerPoolError::NoHealthyWorker
        }
    }

    /// Accepts a new request on `worker` (eligible; the request slab has
    /// room): queues it there, and starts it at once if the worker is free.
    /// `pinned`: only that worker may run it; `vetted`: a circuit breaker
    /// chose the worker (see [`Request::vetted`]).
    fn accept(
        &mut self,
        now: Time,
        worker: WorkerKey,
        admission: Admission,
        payload: P,
        pinned: bool,
        vetted: bool,
    ) -> Result<RequestKey, Refused<P>> {
        let deadline = admission.timeout().map(|budget| now + budget);
        let max_running = self.config.max_concurrency_per_worker as usize;
        let Some(slot) = self.workers.get_mut(worker.0) else {
            debug_assert!(false, "router chose a missing worker");
            return Err(self.refuse_counted(payload, WorkerPoolError::NoHealthyWorker));
        };
        self.counters.submitted += 1;
        // A free worker with nothing waiting starts the request at once,
        // without a trip through its queue.
        let start_now = slot.queued == 0 && slot.running.len() < max_running;
        let state = if start_now {
            RequestState::Running { started_at: now }
        } else {
            RequestState::Queued
        };
        let started = start_now.then(|| payload.clone());
        let key = RequestKey(self.requests.insert(Request {
            worker,
            state,
            pinned,
            vetted,
            payload,
            accepted_at: now,
            deadline,
        }));
        match started {
            Some(payload) => {
                slot.running.push(key);
                self.actions.push_back(Action::Start {
                    request: key,
                    worker,
                    payload,
                });
            }
            None => {
                slot.queue.push_back(key);
                slot.queued += 1;
                if !pinned {
                    self.backlog.push_back(key);
                    self.backlog_live += 1;
                }
            }
        }
        if let Some(at) = deadline {
            self.arm(at, Timer::Request(key));
        }
        self.counters.accepted += 1;
        self.router.picked(worker);
        self.events.push_back(Event::Accepted {
            request: key,
            worker,
        });
        self.refresh_load(worker);
        Ok(key)
    }

    /// The caller gave up on a request: it leaves its queue at once, or its
    /// handler is aborted, and it is answered `Cancelled` (which does not
    /// count against the worker).
    ///
    /// Returns `false` (and does nothing) if the request was already
    /// answered or never existed.
    pub fn cancel(&mut self, now: Time, request: RequestKey) -> bool {
        self.observe(now);
        let Some(entry) = self.requests.get(request.0) else {
            return false;
        };
        let worker = entry.worker;
        let error = WorkerPoolError::Worker(WorkerProtocolError::new(
            WorkerErrorCode::Cancelled,
            "request cancelled by the caller",
            false,
        ));
        if entry.state.is_waiting() {
            self.counters.cancelled_queued += 1;
            self.finish_queued(request, Err(error));
        } else {
            self.counters.cancelled_running += 1;
            self.actions.push_back(Action::Abort { request, worker });
            self.finish_running(request, Err(error));
        }
        self.after_worker_change(worker, HealthCause::Success);
        true
    }

    /// A handler finished the request it was started with.
    ///
    /// A success clears the worker's failure count; an error counts as one
    /// failure. Returns `false` (and does nothing) when the request is not
    /// running (already answered, aborted, or unknown).
    pub fn handle_completion(
        &mut self,
        now: Time,
        request: RequestKey,
        result: Result<Value, WorkerProtocolError>,
    ) -> bool {
        let now = self.observe(now);
        let (worker, started_at) = match self.requests.get(request.0) {
            Some(Request {
                worker,
                state: RequestState::Running { started_at },
                ..
            }) => (*worker, *started_at),
            _ => return false,
        };
        let cause = if result.is_ok() {
            HealthCause::Success
        } else {
            HealthCause::Failure
        };
        if let Some(slot) = self.workers.get_mut(worker.0) {
            match result {
                Ok(_) => {
                    slot.health.on_success();
                    slot.last_run = Some(now - started_at);
                }
                Err(_) => slot.health.on_failure(),
            }
        }
        match result {
            Ok(_) => self.counters.succeeded += 1,
            Err(_) => self.counters.failed += 1,
        }
        self.finish_running(request, result.map_err(WorkerPoolError::Worker));
        self.after_worker_change(worker, cause);
        true
    }

    /// A health probe answered with the worker's own view of its status.
    ///
    /// Returns `false` (and does nothing) for a probe that is no longer
    /// outstanding (it timed out, the worker restarted or was removed).
    pub fn handle_probe_result(
        &mut self,
        now: Time,
        worker: WorkerKey,
        probe: ProbeKey,
        status: WorkerHealthStatus,
    ) -> bool {
        let now = self.observe(now);
        let threshold = self.config.failure_threshold();
        let Some(slot) = self.workers.get_mut(worker.0) else {
            return false;
        };
        let ProbeState::Outstanding {
            key,
            sent_at,
            failure_seq,
            ..
        } = slot.probe
        else {
            return false;
        };
        if key != probe {
            return false;
        }
        slot.health.on_probe(status, failure_seq, threshold, now);
        self.schedule_next_probe(worker, sent_at);
        // A worker the probe brought back takes waiting requests.
        self.settle(worker, HealthCause::Probe);
        true
    }

    /// Fires every timer due at or before `now`: request deadlines, probes
    /// and probe timeouts, the drain deadline. Calling it early is harmless.
    pub fn handle_timeout(&mut self, now: Time) {
        let now = self.observe(now);
        loop {
            let (requests, workers, lifecycle) = (&self.requests, &self.workers, self.lifecycle);
            let Some((at, timer)) = self.timers.pop_due(now, |at, timer| {
                timer_is_live(requests, workers, lifecycle, at, timer)
            }) else {
                break;
            };
            match timer {
                Timer::Request(key) => self.request_deadline(key),
                Timer::ProbeDue(worker) => self.send_probe(worker),
                Timer::ProbeTimeout(worker) => self.probe_deadline(worker),
                Timer::Drain => {
                    debug_assert!(at <= now);
                    self.drain_deadline();
                }
            }
        }
    }

    /// Adds a worker named `worker-N` (N counts the workers added so far,
    /// skipping names in use) and starts probing it.
    ///
    /// # Errors
    /// [`CommandError::ShuttingDown`] once shutdown began;
    /// [`CommandError::TooManyWorkers`] past 2^32 workers.
    pub fn add_worker(&mut self, now: Time) -> Result<WorkerKey, CommandError> {
        loop {
            let id = format!("worker-{}", self.names_issued);
            self.names_issued += 1;
            if !self.ids.contains_key(&id) {
                return self.add_named_worker(now, id);
            }
        }
    }

    /// Adds a worker with the given identifier and starts probing it.
    ///
    /// # Errors
    /// [`CommandError::InvalidWorkerId`] for an empty id or one longer than
    /// [`MAX_WORKER_ID_LEN`] bytes (the security policy bounds requests'
    /// identifiers, not workers'); [`CommandError::DuplicateWorkerId`];
    /// [`CommandError::ShuttingDown`]; [`CommandError::TooManyWorkers`].
    pub fn add_named_worker(
        &mut self,
        now: Time,
        id: impl Into<String>,
    ) -> Result<WorkerKey, CommandError> {
        let now = self.observe(now);
        let id = id.into();
        if self.lifecycle != Lifecycle::Running {
            return Err(CommandError::ShuttingDown);
        }
        if id.is_empty() || id.len() > MAX_WORKER_ID_LEN {
            return Err(CommandError::InvalidWorkerId {
                reason: format!(
                    "worker id must be 1 to {MAX_WORKER_ID_LEN} bytes long, got {}",
                    id.len()
                ),
            });
        }
        if self.ids.contains_key(&id) {
            return Err(CommandError::DuplicateWorkerId(id));
        }
        let due = now + self.config.options.health_probe_interval;
        let worker = Worker {
            id: id.clone(),
            health: Health::new(),
            status: WorkerHealthStatus::Healthy,
            queue: VecDeque::new(),
            queued: 0,
            moving: 0,
            running: RunList::default(),
            last_run: None,
            removing: false,
            schedulable: false,
            membership: Membership::default(),
            probe: ProbeState::Due(due),
        };
        if !self.workers.has_room() {
            return Err(CommandError::TooManyWorkers);
        }
        let key = WorkerKey(self.workers.insert(worker));
        self.ids.insert(id, key);
        self.arm(due, Timer::ProbeDue(key));
        // A new worker takes waiting requests at once.
        self.settle(key, HealthCause::Restart);
        Ok(key)
    }

    /// Restarts a worker: its running requests are aborted and answered with
    /// a `Cancelled` error saying so (retryable), its health is reset, the
    /// driver is told to replace its execution context, and its queued
    /// requests stay queued and run on the fresh worker (with late binding,
    /// on whichever worker frees up first).
    ///
    /// # Errors
    /// [`CommandError::UnknownWorker`], [`CommandError::WorkerRemoving`], or
    /// [`CommandError::ShuttingDown`] once the pool has stopped.
    pub fn restart_worker(&mut self, now: Time, worker: WorkerKey) -> Result<(), CommandError> {
        let now = self.observe(now);
        if self.lifecycle == Lifecycle::Stopped {
            return Err(CommandError::ShuttingDown);
        }
        let slot = self
            .workers
            .get_mut(worker.0)
            .ok_or(CommandError::UnknownWorker(worker))?;
        if slot.removing {
            return Err(CommandError::WorkerRemoving(slot.id.clone()));
        }
        let message = format!(
            "worker {} was restarted while running this request",
            slot.id
        );
        let running = std::mem::take(&mut slot.running);
        if let ProbeState::Outstanding { key, .. } = slot.probe {
            self.actions
                .push_back(Action::AbortProbe { worker, probe: key });
        }
        for request in running {
            self.actions.push_back(Action::Abort { request, worker });
            self.counters.aborted_by_restart += 1;
            let error = WorkerProtocolError::new(WorkerErrorCode::Cancelled, message.clone(), true);
            self.answer_running(request, Err(WorkerPoolError::Worker(error)));
        }
        let probing = self.lifecycle == Lifecycle::Running;
        if let Some(slot) = self.workers.get_mut(worker.0) {
            slot.health.reset();
            slot.last_run = None;
            slot.probe = ProbeState::Idle;
        }
        self.actions.push_back(Action::RestartWorker { worker });
        if probing {
            let due = now + self.config.options.health_probe_interval;
            self.set_probe_due(worker, due);
        }
        self.after_worker_change(worker, HealthCause::Restart);
        Ok(())
    }

    /// Removes a worker: it takes no new requests, its queued requests move
    /// to other workers (or are answered with a retryable `Unavailable`
    /// error when none can take them), its running requests finish, and
    /// then [`Action::StopWorker`] releases it. A queued request a circuit
    /// breaker placed there ([`vet`](Self::vet)) is not moved here: an
    /// [`Action::Revet`] asks the driver to have the breaker approve its
    /// next worker ([`revet`](Self::revet)), and the worker is released
    /// only once every such request has moved or been answered.
    ///
    /// # Errors
    /// [`CommandError::ShuttingDown`] once the pool has stopped;
    /// [`CommandError::UnknownWorker`], or [`CommandError::WorkerRemoving`]
    /// when removal is already under way.
    pub fn remove_worker(&mut self, now: Time, worker: WorkerKey) -> Result<(), CommandError> {
        self.observe(now);
        if self.lifecycle == Lifecycle::Stopped {
            return Err(CommandError::ShuttingDown);
        }
        let slot = self
            .workers
            .get_mut(worker.0)
            .ok_or(CommandError::UnknownWorker(worker))?;
        if slot.removing {
            return Err(CommandError::WorkerRemoving(slot.id.clone()));
        }
        slot.removing = true;
        if let ProbeState::Outstanding { key, .. } = slot.probe {
            self.actions
                .push_back(Action::AbortProbe { worker, probe: key });
        }
        slot.probe = ProbeState::Idle;
        let queue = std::mem::take(&mut slot.queue);
        slot.queued = 0;
        let worker_id = slot.id.clone();
        self.refresh(worker, HealthCause::Stopped);
        for request in queue {
            if !self.is_queued_on(request, worker) {
                continue;
            }
            if self
                .requests
                .get(request.0)
                .is_some_and(|entry| entry.vetted)
            {
                self.await_revet(request, worker);
            } else {
                self.requeue_or_answer(request, worker, &worker_id);
            }
        }
        self.after_worker_change(worker, HealthCause::Stopped);
        Ok(())
    }

    /// Begins a graceful shutdown: new submits are refused with
    /// `ShuttingDown`, probing stops, and queued and running requests finish
    /// until `drain` has passed (no limit when `None`); then the rest are
    /// aborted and answered `ShuttingDown`. Calling it again can only bring
    /// the deadline closer.
    pub fn begin_shutdown(&mut self, now: Time, drain: Option<Duration>) {
        let now = self.observe(now);
        let requested = drain.map(|limit| now + limit);
        let deadline = match self.lifecycle {
            Lifecycle::Stopped => return,
            Lifecycle::Running => {
                let probing: Vec<(WorkerKey, ProbeKey)> = self
                    .workers
                    .iter()
                    .filter_map(|(key, slot)| match slot.probe {
                        ProbeState::Outstanding { key: probe, .. } => Some((WorkerKey(key), probe)),
                        _ => None,
                    })
                    .collect();
                for (worker, probe) in probing {
                    self.actions.push_back(Action::AbortProbe { worker, probe });
                }
                let keys: Vec<WorkerKey> =
                    self.workers.iter().map(|(key, _)| WorkerKey(key)).collect();
                for key in keys {
                    if let Some(slot) = self.workers.get_mut(key.0) {
                        slot.probe = ProbeState::Idle;
                    }
                }
                requested
            }
            Lifecycle::Draining { deadline } => match (deadline, requested) {
                (Some(old), Some(new)) => Some(old.min(new)),
                (old, new) => old.or(new),
            },
        };
        self.lifecycle = Lifecycle::Draining { deadline };
        if let Some(at) = deadline {
            if at <= now {
                self.drain_deadline();
            } else {
                self.arm(at, Timer::Drain);
            }
        }
        self.maybe_finish_shutdown();
    }

    // ----- outputs ------------------------------------------------------

    /// The next thing the driver must do, in order; `None` when there is
    /// nothing left. See the drain rule in the type's docs.
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.actions.pop_front()
    }

    /// The next event to report (hooks, tracing); `None` when there is
    /// nothing left.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next, and why;
    /// `None` when no timer is armed.
    pub fn poll_timeout(&mut self) -> Option<(Time, TimeoutReason)> {
        let (requests, workers, lifecycle) = (&self.requests, &self.workers, self.lifecycle);
        self.timers
            .peek_live(|at, timer| timer_is_live(requests, workers, lifecycle, at, timer))
            .map(|(at, timer)| (at, timer.reason()))
    }

    /// Where a driver that keeps one timer must move it after an input:
    /// `Some(at)` when `at` is earlier than `timer`, where the timer is set
    /// now (`Time::MAX`: not set, or it just fired).
    ///
    /// Cheaper than [`poll_timeout`](Self::poll_timeout) on every input,
    /// and never late: a set timer only moves earlier, to the earliest
    /// deadline armed since the last call; one not set is set from
    /// `poll_timeout`. A timer may then fire for a deadline that is no
    /// longer live (its request was answered): `handle_timeout` does
    /// nothing, and the next call, with `Time::MAX`, gives the exact next
    /// deadline. Call it after every input.
    pub fn move_timer(&mut self, timer: Time) -> Option<Time> {
        let armed = self.timers.take_armed();
        let next = if timer == Time::MAX {
            self.poll_timeout().map(|(at, _)| at)
        } else {
            armed
        };
        next.filter(|&at| at < timer)
    }

    // ----- queries ------------------------------------------------------

    /// Health of every worker, in worker order, in the reference's shape.
    /// Workers being removed, and every worker once the pool has stopped,
    /// report `Unavailable`.
    pub fn health(&self) -> Vec<WorkerHealth> {
        self.workers
            .iter()
            .map(|(_, slot)| self.health_of(slot))
            .collect()
    }

    /// Health of one worker, if it exists.
    pub fn worker_health(&self, worker: WorkerKey) -> Option<WorkerHealth> {
        self.workers.get(worker.0).map(|slot| self.health_of(slot))
    }

    /// Counters, queue depths and in-flight requests.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats {
            counters: self.counters,
            ..Stats::default()
        };
        for (key, slot) in self.workers.iter() {
            let waiting = slot.queued + slot.moving;
            stats.queued += waiting;
            stats.running += slot.running.len();
            stats.workers.push(WorkerStats {
                worker: WorkerKey(key),
                worker_id: slot.id.clone(),
                status: self.reported_status(slot),
                consecutive_failures: slot.health.failures(),
                queued: waiting,
                running: slot.running.len(),
                removing: slot.removing,
            });
        }
        stats
    }

    /// The counters alone (cheap: no allocation).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The key of the worker with this identifier.
    pub fn worker_key(&self, id: &str) -> Option<WorkerKey> {
        self.ids.get(id).copied()
    }

    /// The key of the worker a command (restart, remove) names by
    /// identifier, checked as the command itself would first.
    ///
    /// # Errors
    /// [`CommandError::ShuttingDown`] once the pool has stopped (whatever
    /// the identifier); [`CommandError::UnknownWorkerId`] when no worker
    /// has it.
    pub fn command_target(&self, id: &str) -> Result<WorkerKey, CommandError> {
        if self.lifecycle == Lifecycle::Stopped {
            return Err(CommandError::ShuttingDown);
        }
        self.worker_key(id)
            .ok_or_else(|| CommandError::UnknownWorkerId(id.to_string()))
    }

    /// The identifier of a worker.
    pub fn worker_id(&self, worker: WorkerKey) -> Option<&str> {
        self.workers.get(worker.0).map(|slot| slot.id.as_str())
    }

    /// Keys of every worker, in worker order.
    pub fn workers(&self) -> impl Iterator<Item = WorkerKey> + '_ {
        self.workers.iter().map(|(key, _)| WorkerKey(key))
    }

    /// Requests accepted and not yet answered.
    pub fn pending(&self) -> usize {
        self.requests.len()
    }

    /// Whether shutdown has begun (new submits are refused).
    pub fn is_shutting_down(&self) -> bool {
        self.lifecycle != Lifecycle::Running
    }

    /// Whether shutdown has completed: everything answered, workers stopped.
    pub fn is_stopped(&self) -> bool {
        self.lifecycle == Lifecycle::Stopped
    }

    /// The latest instant the core has seen.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The configuration the pool runs with.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    // ----- internals ----------------------------------------------------

    fn observe(&mut self, now: Time) -> Time {
        if now > self.now {
            self.now = now;
        }
        self.now
    }

    fn refuse_or_decline(
        &mut self,
        payload: P,
        error: WorkerPoolError,
        decline: bool,
    ) -> Refused<P> {
        if decline {
            Refused { error, payload }
        } else {
            self.refuse_counted(payload, error)
        }
    }

    /// Refuses a submit for good: counted once, reported.
    fn refuse_counted(&mut self, payload: P, error: WorkerPoolError) -> Refused<P> {
        self.counters.submitted += 1;
        self.refuse(payload, error)
    }

    fn refuse(&mut self, payload: P, error: WorkerPoolError) -> Refused<P> {
        let counter = match error {
            WorkerPoolError::InvalidRequest { .. } => &mut self.counters.refused_invalid,
            WorkerPoolError::QueueFull => &mut self.counters.refused_queue_full,
            WorkerPoolError::CircuitOpen => &mut self.counters.refused_circuit_open,
            WorkerPoolError::ShuttingDown => &mut self.counters.refused_shutting_down,
            WorkerPoolError::Timeout => &mut self.counters.refused_no_budget,
            _ => &mut self.counters.refused_no_healthy_worker,
        };
        *counter += 1;
        self.events.push_back(Event::Rejected {
            worker: None,
            reason: error.code(),
        });
        Refused { error, payload }
    }

    fn arm(&mut self, at: Time, timer: Timer) {
        // `Time::MAX` is where saturated arithmetic lands: it means "never".
        // Arming it would let a timer re-arm itself at the instant it fires.
        if at == Time::MAX {
            return;
        }
        if self.timers.arm(at, timer) {
            let (requests, workers, lifecycle) = (&self.requests, &self.workers, self.lifecycle);
            self.timers
                .sweep(|at, timer| timer_is_live(requests, workers, lifecycle, at, timer));
        }
    }

    fn is_queued_on(&self, request: RequestKey, worker: WorkerKey) -> bool {
        matches!(
            self.requests.get(request.0),
            Some(Request { worker: w, state: RequestState::Queued, .. }) if *w == worker
        )
    }

    fn reported_status(&self, slot: &Worker) -> WorkerHealthStatus {
        if slot.removing || self.lifecycle == Lifecycle::Stopped {
            WorkerHealthStatus::Unavailable
        } else {
            slot.status
        }
    }

    fn health_of(&self, slot: &Worker) -> WorkerHealth {
        WorkerHealth {
            worker_id: slot.id.clone(),
            status: self.reported_status(slot),
            consecutive_failures: slot.health.failures(),
            last_probe_unix_ms: slot.health.last_probe.map(|at| {
                self.config
                    .unix_epoch_ms
                    .saturating_add(at.as_nanos() / 1_000_000)
            }),
        }
    }

    /// Recomputes a worker's status and eligibility after any change,
    /// reporting a status change with `cause`.
    fn refresh(&mut self, worker: WorkerKey, cause: HealthCause) {
        self.refresh_status(worker, cause);
        self.refresh_load(worker);
    }

    /// Recomputes a worker's status and whether it is schedulable,
    /// reporting a status change with `cause`.
    fn refresh_status(&mut self, worker: WorkerKey, cause: HealthCause) {
        let threshold = self.config.failure_threshold();
        let stopped = self.lifecycle == Lifecycle::Stopped;
        let now = self.now;
        let Some(slot) = self.workers.get_mut(worker.0) else {
            return;
        };
        let status = slot.health.status(threshold);
        if status != slot.status {
            self.events.push_back(Event::HealthChanged {
                worker,
                from: slot.status,
                to: status,
                cause,
                at: now,
            });
            slot.status = status;
        }
        let schedulable = !slot.removing && !stopped && status.is_schedulable();
        if schedulable != slot.schedulable {
            slot.schedulable = schedulable;
            if schedulable {
                self.schedulable += 1;
            } else {
                self.schedulable -= 1;
            }
        }
    }

    /// Recomputes a worker's eligibility after a change to its requests
    /// only (its status is as cached).
    fn refresh_load(&mut self, worker: WorkerKey) {
        let capacity = self.capacity;
        let max_running = self.config.max_concurrency_per_worker as usize;
        let Some(slot) = self.workers.get_mut(worker.0) else {
            return;
        };
        let eligible = slot.schedulable && slot.running.len() + slot.queued < capacity;
        let idle = eligible && slot.running.len() < max_running;
        let now = Membership {
            eligible,
            idle,
            preferred: idle && slot.status == WorkerHealthStatus::Healthy,
        };
        if now != slot.membership {
            self.router.set(worker, slot.membership, now);
            slot.membership = now;
        }
    }

    /// Starts what the worker can take ([`pump`](Self::pump)) and brings
    /// its status up to date, reporting a change with `cause` before any
    /// request moves to it (its status decides whether it may take them).
    fn settle(&mut self, worker: WorkerKey, cause: HealthCause) {
        if self.backlog_live > 0 {
            self.refresh_status(worker, cause);
        }
        self.pump(worker);
        self.refresh(worker, cause);
    }

    /// Starts queued requests while the worker has free run slots: from its
    /// own queue and, if it is schedulable, the backlog, oldest first; one
    /// that is [too late to start](too_late_to_start) on this worker is
    /// answered `Timeout` instead.
    /// (Its cached `schedulable` flag must be current when the backlog is
    /// not empty: see [`settle`](Self::settle).)
    fn pump(&mut self, worker: WorkerKey) {
        let max = self.config.max_concurrency_per_worker as usize;
        loop {
            let Some(slot) = self.workers.get_mut(worker.0) else {
                return;
            };
            if slot.running.len() >= max || (slot.queue.is_empty() && self.backlog_live == 0) {
                return;
            }
            let requests = &self.requests;
            let own = live_head(&mut slot.queue, requests, |entry| entry.worker == worker);
            let shared = (self.backlog_live > 0 && slot.schedulable)
                .then(|| live_head(&mut self.backlog, requests, |_| true))
                .flatten();
            let from_backlog = match (own, shared) {
                (None, None) => return,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((_, own_at)), Some((_, shared_at))) => shared_at < own_at,
            };
            let popped = if from_backlog {
                self.backlog.pop_front()
            } else {
                slot.queue.pop_front()
            };
            let Some(request) = popped else {
                return;
            };
            let last_run = slot.last_run;
            let now = self.now;
            let late = self
                .requests
                .get(request.0)
                .filter(|entry| too_late_to_start(entry.deadline, now, last_run))
                .map(|entry| entry.worker);
            match late {
                Some(origin) => {
                    self.expire_queued(request);
                    if origin != worker {
                        self.refresh_load(origin);
                    }
                }
                None => self.start_queued(request, worker, from_backlog),
            }
        }
    }

    /// Starts a queued request on `worker`, just taken off the front of
    /// the backlog or of that worker's queue. Run by another worker than
    /// the one it was queued on, it is reported `Requeued`.
    fn start_queued(&mut self, request: RequestKey, worker: WorkerKey, from_backlog: bool) {
        let now = self.now;
        let Some(entry) = self.requests.get_mut(request.0) else {
            return;
        };
        let from = entry.worker;
        entry.worker = worker;
        entry.state = RequestState::Running { started_at: now };
        let payload = entry.payload.clone();
        if !entry.pinned {
            self.leave_backlog();
        }
        if let Some(origin) = self.workers.get_mut(from.0) {
            origin.queued = origin.queued.saturating_sub(1);
            if from_backlog {
                sweep_queue(&mut origin.queue, origin.queued, &self.requests, from);
            }
        }
        if from != worker {
            self.counters.reassigned += 1;
            self.events.push_back(Event::Requeued {
                request,
                from,
                to: worker,
            });
            self.refresh_load(from);
        }
        if let Some(slot) = self.workers.get_mut(worker.0) {
            slot.running.push(request);
        }
        self.actions.push_back(Action::Start {
            request,
            worker,
            payload,
        });
    }

    /// An unpinned request stopped waiting (started or answered): one live
    /// backlog entry fewer; stale entries are swept once they outnumber the
    /// live ones (amortised O(1) per request).
    fn leave_backlog(&mut self) {
        self.backlog_live = self.backlog_live.saturating_sub(1);
        if self.backlog.len() > self.backlog_live.saturating_mul(2).saturating_add(16) {
            let requests = &self.requests;
            self.backlog.retain(|key| {
                matches!(
                    requests.get(key.0),
                    Some(Request {
                        state: RequestState::Queued,
                        ..
                    })
                )
            });
        }
    }

    /// Whether queued requests may run on another worker than their own.
    fn late_binding(&self) -> bool {
        self.config.late_binding && self.config.routing == RoutingPolicy::IdleFirst
    }

    /// Everything that follows a change to a worker's requests or health.
    fn after_worker_change(&mut self, worker: WorkerKey, cause: HealthCause) {
        self.settle(worker, cause);
        self.maybe_release(worker);
        self.maybe_finish_shutdown();
    }

    /// Answers a queued request and takes it off its worker's books.
    fn finish_queued(&mut self, request: RequestKey, result: Result<Value, WorkerPoolError>) {
        let Some(entry) = self.requests.remove(request.0) else {
            return;
        };
        if !entry.state.is_waiting() {
            unreachable_state();
        }
        if !entry.pinned {
            self.leave_backlog();
        }
        if let Some(slot) = self.workers.get_mut(entry.worker.0) {
            if entry.state == RequestState::Moving {
                slot.moving = slot.moving.saturating_sub(1);
            } else {
                slot.queued = slot.queued.saturating_sub(1);
                sweep_queue(&mut slot.queue, slot.queued, &self.requests, entry.worker);
            }
        }
        self.actions.push_back(Action::Answer(Answer {
            request,
            worker: entry.worker,
            result,
            phase: Phase::Queued,
            queued_for: self.now - entry.accepted_at,
            ran_for: None,
            payload: entry.payload,
        }));
    }

    /// Answers a running request and takes it off its worker's books.
    fn finish_running(&mut self, request: RequestKey, result: Result<Value, WorkerPoolError>) {
        let worker = match self.requests.get(request.0) {
            Some(entry) => entry.worker,
            None => return,
        };
        if let Some(slot) = self.workers.get_mut(worker.0) {
            slot.running.remove(request);
        }
        self.answer_running(request, result);
    }

    /// Answers a running request already taken off its worker's run list.
    fn answer_running(&mut self, request: RequestKey, result: Result<Value, WorkerPoolError>) {
        let Some(entry) = self.requests.remove(request.0) else {
            return;
        };
        let RequestState::Running { started_at } = entry.state else {
            unreachable_state();
            return;
        };
        self.actions.push_back(Action::Answer(Answer {
            request,
            worker: entry.worker,
            result,
            phase: Phase::Running,
            queued_for: started_at - entry.accepted_at,
            ran_for: Some(self.now - started_at),
            payload: entry.payload,
        }));
    }

    /// A request's budget ran out: a queued one is answered `Timeout` and
    /// charged to no worker; a running one is aborted, answered `Timeout`,
    /// and counts as a failure of its worker only if that worker had at
    /// least half of its budget (`Health::on_timeout`).
    fn request_deadline(&mut self, request: RequestKey) {
        let Some(entry) = self.requests.get(request.0) else {
            return;
        };
        let worker = entry.worker;
        if let RequestState::Running { started_at } = entry.state {
            // The deadline, not `now`: a timer that fires late does not
            // lengthen the worker's share.
            let deadline = entry.deadline.unwrap_or(self.now);
            let ran = deadline - started_at;
            let budget = deadline - entry.accepted_at;
            self.counters.timed_out_running += 1;
            self.actions.push_back(Action::Abort { request, worker });
            if let Some(slot) = self.workers.get_mut(worker.0) {
                slot.health.on_timeout(ran, budget);
            }
            self.finish_running(request, Err(WorkerPoolError::Timeout));
        } else if cfg!(feature = "planted-bug") {
            // Planted bug (test-only feature): forget to answer a request
            // that timed out while waiting. The simulator must catch this.
            self.counters.timed_out_queued += 1;
            if let Some(slot) = self.workers.get_mut(worker.0) {
                slot.queued = slot.queued.saturating_sub(1);
            }
            let _ = self.requests.remove(request.0);
        } else {
            self.expire_queued(request);
        }
        self.after_worker_change(worker, HealthCause::Timeout);
    }

    /// Answers `Timeout` to a queued request whose budget has run out (or
    /// is too short to start it), charging no worker: time spent queued is
    /// never held against one.
    fn expire_queued(&mut self, request: RequestKey) {
        self.counters.timed_out_queued += 1;
        self.finish_queued(request, Err(WorkerPoolError::Timeout));
    }

    fn send_probe(&mut self, worker: WorkerKey) {
        let deadline = self.now + self.config.probe_timeout;
        let now = self.now;
        let Some(slot) = self.workers.get_mut(worker.0) else {
            return;
        };
        let probe = ProbeKey(self.next_probe);
        self.next_probe += 1;
        slot.probe = ProbeState::Outstanding {
            key: probe,
            sent_at: now,
            deadline,
            failure_seq: slot.health.failure_seq(),
        };
        self.counters.probes_sent += 1;
        self.actions.push_back(Action::RunProbe { worker, probe });
        self.arm(deadline, Timer::ProbeTimeout(worker));
    }

    fn probe_deadline(&mut self, worker: WorkerKey) {
        let now = self.now;
        let Some(slot) = self.workers.get_mut(worker.0) else {
            return;
        };
        let ProbeState::Outstanding { key, sent_at, .. } = slot.probe else {
            return;
        };
        slot.health.on_probe_timeout(now);
        self.counters.probes_timed_out += 1;
        self.actions
            .push_back(Action::AbortProbe { worker, probe: key });
        self.schedule_next_probe(worker, sent_at);
        self.refresh(worker, HealthCause::ProbeTimeout);
    }

    /// After a probe ends: the next one is due one interval after the last
    /// was sent, or now if that has passed (one probe at a time).
    fn schedule_next_probe(&mut self, worker: WorkerKey, sent_at: Time) {
        if self.lifecycle != Lifecycle::Running {
            if let Some(slot) = self.workers.get_mut(worker.0) {
                slot.probe = ProbeState::Idle;
            }
            return;
        }
        let due = (sent_at + self.config.options.health_probe_interval).max(self.now);
        self.set_probe_due(worker, due);
    }

    fn set_probe_due(&mut self, worker: WorkerKey, due: Time) {
        if let Some(slot) = self.workers.get_mut(worker.0) {
            slot.probe = ProbeState::Due(due);
            self.arm(due, Timer::ProbeDue(worker));
        }
    }

    /// Moves a request off a removed worker, or answers it when no other
    /// worker has room.
    fn requeue_or_answer(&mut self, request: RequestKey, from: WorkerKey, from_id: &str) {
        let target = self
            .router
            .candidates()
            .find(|candidate| *candidate != from);
        match target {
            Some(to) => self.requeue(request, from, to),
            None => {
                // Put it back on the removed worker's books, then answer it.
                if let Some(slot) = self.workers.get_mut(from.0) {
                    slot.queued += 1;
                }
                self.unroutable(request, from_id, "no other worker could take the request");
            }
        }
    }

    /// Queues a request of removed worker `from` on `to` (eligible).
    fn requeue(&mut self, request: RequestKey, from: WorkerKey, to: WorkerKey) {
        if let Some(entry) = self.requests.get_mut(request.0) {
            entry.worker = to;
            entry.state = RequestState::Queued;
        }
        // An unpinned request also keeps its place in the backlog.
        if let Some(slot) = self.workers.get_mut(to.0) {
            slot.queue.push_back(request);
            slot.queued += 1;
        }
        self.counters.requeued += 1;
        self.events.push_back(Event::Requeued { request, from, to });
        self.pump(to);
        self.refresh(to, HealthCause::Success);
    }

    /// Answers a waiting request of a removed worker with a retryable
    /// `Unavailable` error saying `why` it could not move.
    fn unroutable(&mut self, request: RequestKey, from_id: &str, why: &str) {
        self.counters.unroutable_after_removal += 1;
        let error = WorkerProtocolError::new(
            WorkerErrorCode::Unavailable,
            format!("worker {from_id} was removed and {why}"),
            true,
        );
        self.finish_queued(request, Err(WorkerPoolError::Worker(error)));
    }

    /// Takes a vetted request queued on removed worker `worker` off its
    /// queue (the worker keeps counting it as `moving`) and asks the driver
    /// to have the breaker approve its next worker.
    fn await_revet(&mut self, request: RequestKey, worker: WorkerKey) {
        let Some(entry) = self.requests.get_mut(request.0) else {
            return;
        };
        entry.state = RequestState::Moving;
        let payload = entry.payload.clone();
        if let Some(slot) = self.workers.get_mut(worker.0) {
            slot.moving += 1;
        }
        self.actions.push_back(Action::Revet {
            request,
            worker,
            payload,
        });
    }

    /// Releases a removed worker once its last running request is answered.
    fn maybe_release(&mut self, worker: WorkerKey) {
        let done = matches!(
            self.workers.get(worker.0),
            Some(slot) if slot.removing && slot.running.is_empty() && slot.queued == 0 && slot.moving == 0
        );
        if !done || self.lifecycle == Lifecycle::Stopped {
            return;
        }
        if let Some(slot) = self.workers.remove(worker.0) {
            if slot.schedulable {
                self.schedulable -= 1;
            }
            self.router
                .set(worker, slot.membership, Membership::default());
            self.ids.remove(&slot.id);
        }
        self.actions.push_back(Action::StopWorker { worker });
    }

    fn drain_deadline(&mut self) {
        if !matches!(self.lifecycle, Lifecycle::Draining { .. }) {
            return;
        }
        let (queued, running): (Vec<_>, Vec<_>) = self
            .requests
            .iter()
            .map(|(key, entry)| (RequestKey(key), entry.worker, entry.state.is_waiting()))
            .partition(|(_, _, queued)| *queued);
        for (request, _, _) in queued {
            self.counters.aborted_by_shutdown += 1;
            self.finish_queued(request, Err(WorkerPoolError::ShuttingDown));
        }
        for (request, worker, _) in running {
            self.counters.aborted_by_shutdown += 1;
            self.actions.push_back(Action::Abort { request, worker });
            self.finish_running(request, Err(WorkerPoolError::ShuttingDown));
        }
        let removed: Vec<WorkerKey> = self.workers().collect();
        for worker in removed {
            self.maybe_release(worker);
        }
        self.maybe_finish_shutdown();
    }

    fn maybe_finish_shutdown(&mut self) {
        if !matches!(self.lifecycle, Lifecycle::Draining { .. }) || self.requests.len() > 0 {
            return;
        }
        self.lifecycle = Lifecycle::Stopped;
        let keys: Vec<WorkerKey> = self.workers().collect();
        for worker in keys {
            self.refresh(worker, HealthCause::Stopped);
            if let Some(slot) = self.workers.get_mut(worker.0) {
                slot.probe = ProbeState::Idle;
                if slot.status != WorkerHealthStatus::Unavailable && !slot.removing {
                    self.events.push_back(Event::HealthChanged {
                        worker,
                        from: slot.status,
                        to: WorkerHealthStatus::Unavailable,
                        cause: HealthCause::Stopped,
                        at: self.now,
                    });
                }
            }
            self.actions.push_back(Action::StopWorker { worker });
        }
        self.events
            .push_back(Event::ShutdownComplete { at: self.now });
    }
}

impl<P> fmt::Debug for Pool<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("now", &self.now)
            .field("lifecycle", &self.lifecycle)
            .field("workers", &self.workers.len())
            .field("pending", &self.requests.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// Whether a timer entry is still wanted by its owner.
fn timer_is_live<P>(
    requests: &Slab<Request<P>>,
    workers: &Slab<Worker>,
    lifecycle: Lifecycle,
    at: Time,
    timer: Timer,
) -> bool {
    match timer {
        Timer::Request(key) => requests
            .get(key.0)
            .is_some_and(|entry| entry.deadline == Some(at)),
        Timer::ProbeDue(key) => workers
            .get(key.0)
            .is_some_and(|slot| slot.probe == ProbeState::Due(at)),
        Timer::ProbeTimeout(key) => workers.get(key.0).is_some_and(
            |slot| matches!(slot.probe, ProbeState::Outstanding { deadline, .. } if deadline == at),
        ),
        Timer::Drain => lifecycle == Lifecycle::Draining { deadline: Some(at) },
    }
}

/// Whether a queued request with this deadline is answered `Timeout` rather
/// than started, at `now`, on a worker whose last successful request ran for
/// `last_run`: when its budget is spent, or when less of it is left than
/// that run took. Such a run would most likely end in a timeout, which
/// under overload is what the oldest requests (the ones workers reach
/// first) would all do: each would hold a worker until its deadline and
/// none would succeed. Answering them at once leaves the workers to
/// requests that can still finish. A worker with no successful run yet
/// starts any request with budget left.
fn too_late_to_start(deadline: Option<Time>, now: Time, last_run: Option<Duration>) -> bool {
    deadline.is_some_and(|deadline| {
        let left = deadline - now;
        left.is_zero() || last_run.is_some_and(|run| left < run)
    })
}

/// Marks a state the pool's own bookkeeping rules out; checked in debug
/// builds (and by the simulator), ignored in release.
fn unreachable_state() {
    debug_assert!(false, "request state contradicts the pool's bookkeeping");
}

/// The first live key of `queue` and its arrival time, after dropping the
/// stale keys before it (requests no longer queued, or for which `mine`
/// says no: queued on another worker since).
fn live_head<P>(
    queue: &mut VecDeque<RequestKey>,
    requests: &Slab<Request<P>>,
    mine: impl Fn(&Request<P>) -> bool,
) -> Option<(RequestKey, Time)> {
    while let Some(&key) = queue.front() {
        match requests.get(key.0) {
            Some(entry) if entry.state == RequestState::Queued && mine(entry) => {
                return Some((key, entry.accepted_at));
            }
            _ => {
                queue.pop_front();
            }
        }
    }
    None
}

/// Drops the stale keys of `worker`'s queue once they outnumber its `live`
/// ones (amortised O(1) per request).
fn sweep_queue<P>(
    queue: &mut VecDeque<RequestKey>,
    live: usize,
    requests: &Slab<Request<P>>,
    worker: WorkerKey,
) {
    if queue.len() > live.saturating_mul(2).saturating_add(16) {
        queue.retain(|key| {
            matches!(
                requests.get(key.0),
                Some(Request { worker: w, state: RequestState::Queued, .. }) if *w == worker
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WorkerPoolOptions;
    use crate::protocol::WorkerOperation;

    fn request() -> WorkerRequest {
        WorkerRequest {
            request_id: "r".into(),
            workflow_name: "w".into(),
            node_id: "n".into(),
            timeout_ms: None,
            operation: WorkerOperation::Tool {
                tool: "t".into(),
                input: Value::Null,
                scoped_input: Value::Null,
            },
        }
    }

    /// The stale keys a queue may hold for `live` live ones.
    fn stale_bound(live: usize) -> usize {
        2 * live + 16
    }

    #[test]
    fn stale_queue_and_backlog_keys_are_swept_once_they_outnumber_the_live_ones() {
        // One busy worker, late binding on: every queued request is both in
        // the worker's queue and in the backlog. An odd count, so that the
        // queue's length never equals the (even) sweep threshold.
        let config = PoolConfig::new(WorkerPoolOptions {
            queue_capacity: 101,
            ..WorkerPoolOptions::default()
        });
        let mut pool = Pool::new(config, Time::ZERO).unwrap();
        let worker = pool.add_worker(Time::ZERO).unwrap();
        pool.submit(Time::ZERO, &request(), ()).unwrap();
        let queued: Vec<RequestKey> = (0..101)
            .map(|_| pool.submit(Time::ZERO, &request(), ()).unwrap())
            .collect();
        // Cancelled newest first, so that no stale key reaches a queue's
        // front (where a pump would drop it): only the sweeps shorten them.
        // A few stale keys are left in place (the sweep is amortised)...
        let mut keys = queued.into_iter().rev();
        for key in keys.by_ref().take(2) {
            assert!(pool.cancel(Time::ZERO, key));
        }
        let slot = pool.workers.get(worker.0).unwrap();
        assert_eq!((slot.queue.len(), slot.queued), (101, 99));
        assert_eq!((pool.backlog.len(), pool.backlog_live), (101, 99));
        // ... and never more than the live ones allow.
        for key in keys {
            assert!(pool.cancel(Time::ZERO, key));
            pool.check_invariants().unwrap();
            let slot = pool.workers.get(worker.0).unwrap();
            assert!(
                slot.queue.len() <= stale_bound(slot.queued),
                "queue holds {} keys for {} live",
                slot.queue.len(),
                slot.queued
            );
            assert!(
                pool.backlog.len() <= stale_bound(pool.backlog_live),
                "backlog holds {} keys for {} live",
                pool.backlog.len(),
                pool.backlog_live
            );
        }
        let slot = pool.workers.get(worker.0).unwrap();
        assert_eq!((slot.queued, pool.backlog_live), (0, 0));
        assert!(slot.queue.len() <= stale_bound(0));
        assert!(pool.backlog.len() <= stale_bound(0));
    }
}
