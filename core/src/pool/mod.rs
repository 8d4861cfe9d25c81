//! [`Pool`]: the sans-IO state machine that makes every decision of the pool.
//!
//! This file holds the type, its contract and the state it keeps; each
//! part of the state machine adds its methods from its own file:
//!
//! | file | holds |
//! |---|---|
//! | `admission.rs` | submits: admission, the first worker, acceptance, refusals |
//! | `vetting.rs` | a circuit breaker's say in a request's worker (`vet`, `revet`) |
//! | `scheduling.rs` | which waiting request a worker runs: the late-binding backlog, status and load refreshes |
//! | `deferral.rs` | latency-aware late binding (`PeakEwma`): when a free worker leaves the oldest request to a faster one, and for how long |
//! | `answers.rs` | how a request ends: completion, cancellation, its deadline, its answer |
//! | `retrying.rs` | a retryable failure running again on another worker, within the budget |
//! | `hedging.rs` | a second attempt of a running request on another worker: its timer, its start, which attempt wins |
//! | `workers.rs` | adding, restarting and removing workers, moving a removed worker's requests |
//! | `lane_moves.rs` | a queued request moving to another pool of the same driver: `release_queued`, `adopt`, `answer_released` |
//! | `probes.rs` | health probes: sending, their answers and timeouts |
//! | `recovering.rs` | recovery: the machine's inputs, the ejection cap and timers, run limits, refusals |
//! | `shutdown.rs` | the drain: `begin_shutdown`, the drain deadline, the stop |
//! | `timeouts.rs` | the time rule and the timers: `handle_timeout`, arming, which timers are live |
//! | `outputs.rs` | what the driver polls: `poll_action`, `poll_event`, `poll_timeout` |
//! | `queries.rs` | read-only views: health, stats, identifiers, lifecycle |
//! | `driver_api.rs` | the driver's interface: what only a driver needs |
//! | `invariants.rs` | `check_invariants`: the bookkeeping rules, one check per rule |
//! | `run_list.rs` | the requests one worker is running |

pub(crate) mod admission;
mod answers;
mod deferral;
mod driver_api;
mod hedging;
pub(crate) mod invariants;
pub(crate) mod lane_moves;
mod outputs;
mod planted_bug;
mod probes;
mod queries;
mod recovering;
mod retrying;
mod run_list;
mod scheduling;
mod shutdown;
mod timeouts;
pub(crate) mod vetting;
pub(crate) mod workers;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use crate::config::{ConfigError, PoolConfig};
use crate::deadlines::{PhaseLimits, TimeoutLimit};
use crate::hedging::RunTimes;
use crate::keys::{ProbeKey, RequestKey, WorkerKey};
use crate::output::{Action, Event};
use crate::protocol::WorkerHealthStatus;
use crate::recovery::Recovery;
use crate::retries::RetryLedger;
use crate::rng::Rng;
use crate::routing::ewma::PeakEwma;
use crate::routing::{Membership, Router};
use crate::slab::Slab;
use crate::stats::Counters;
use crate::time::Time;
use crate::timers::TimerHeap;
use run_list::RunList;

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
///   [`RequestKey`] or a [`Refused`](crate::Refused) (invalid, queue full, no healthy
///   worker, shutting down);
/// - [`vet`](Self::vet): a new request whose worker a circuit breaker
///   approves, asked one candidate at a time (so a driver asks it outside
///   its lock), and [`revet`](Self::revet): such a request whose worker was
///   removed ([`Action::Revet`]); [`submit_with`](Self::submit_with) runs
///   the steps of `vet` with a breaker that answers at once;
/// - [`cancel`](Self::cancel): the caller gave up on a request;
/// - [`handle_completion`](Self::handle_completion): a handler finished;
/// - [`handle_refusal`](Self::handle_refusal): a handler declined a
///   request before starting it (overloaded);
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
/// Every accepted request gets exactly one [`Action::Answer`] (a hedged
/// request too: its two attempts race, the first answer wins and the
/// other is aborted; see [`HedgePolicy`](crate::HedgePolicy)): its result,
/// a worker error, `Timeout` (queue wait plus run time exceeded its budget,
/// or a phase ran past its limit), `Cancelled`, or `ShuttingDown` once a
/// drain deadline passes. Every answer says how long the request queued
/// and ran, and a `Timeout` which limit fired
/// ([`Answer::limit`](crate::Answer::limit)).
///
/// A timeout counts against a worker only for the time the request spent
/// running on it. With the budget measured from acceptance to the deadline:
/// - a request whose deadline comes while it is queued is answered
///   `Timeout` ([`Phase::Queued`](crate::Phase::Queued)) and counts against no worker. So is a
///   queued request that a worker reaches with its budget spent (a worker
///   can free up before the deadline's timer fires) or with less budget
///   left than that worker's last successful request ran for: it is not
///   started, since it could hardly finish, and under overload such runs
///   (the oldest requests, which workers reach first) would hold every
///   worker until their deadlines and leave no request to succeed;
/// - a request whose deadline comes while it runs is aborted and answered
///   `Timeout` ([`Phase::Running`](crate::Phase::Running)); it counts as one failure of its worker
///   if that worker had at least half of its budget (from the request's
///   start to its deadline: it waited for at most half of its budget), and
///   changes nothing otherwise. A request that starts at once is charged
///   in full; one that reaches a worker with less than half of its budget
///   left is never held against it, so overload sheds load by expiry and
///   backpressure (`QueueFull`) and never ejects a worker whose requests
///   take under half the budget.
///
/// A request may also carry [`PhaseLimits`](crate::PhaseLimits) (its own,
/// given with its [`Admission`](crate::Admission), or the pool's defaults,
/// [`PoolConfig::queue_wait_limit`] and [`PoolConfig::run_limit`]); the
/// earliest of its overall deadline and its phase limits fires, and a
/// limit that would fire at or after the overall deadline is not armed:
/// - a queue-wait limit that passes while the request waits takes it out
///   of its queue at once, answered `Timeout`
///   ([`TimeoutLimit::QueueWait`](crate::TimeoutLimit::QueueWait)), and
///   counts against no worker;
/// - a run limit that passes while the request runs (timed from its start)
///   aborts it, answered `Timeout`
///   ([`TimeoutLimit::Run`](crate::TimeoutLimit::Run)), and always counts
///   as one failure of its worker: the limit is the worker's whole
///   allowance for the run, however long the request waited before.
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
    backlog: VecDeque<Place>,
    /// Live entries of `backlog`.
    backlog_live: usize,
    /// Under `RoutingPolicy::PeakEwma`, while free workers leave the
    /// backlog's oldest request to a faster busy worker: when the first
    /// free worker takes it after all (see `deferral.rs`).
    deferral: Option<Time>,
    timers: TimerHeap,
    actions: VecDeque<Action<P>>,
    events: VecDeque<Event>,
    lifecycle: Lifecycle,
    next_probe: u64,
    names_issued: u64,
    counters: Counters,
    /// The source of every random choice, seeded from the configuration.
    rng: Rng,
    /// The retry budget's account, when the pool retries.
    retry_ledger: Option<RetryLedger>,
    /// Workers whose recovery machine has them ejected.
    ejected: usize,
    /// Running hedges, by the key their `Start` named (see `hedging.rs`:
    /// their keys' slot indices carry [`hedging::HEDGE_BIT`]).
    hedge_runs: Slab<HedgeRun>,
    /// Running requests due for a hedge, earliest first; one pool-wide
    /// timer ([`Timer::Hedge`](crate::timers::Timer)) is armed at the first.
    hedge_due: BTreeSet<(Time, RequestKey)>,
    /// Workers whose losing attempt was aborted while another request was
    /// answered: refreshed by the next `after_worker_change`.
    freed: Vec<WorkerKey>,
}

/// A hedge's attempt: the request it runs, where, since when.
#[derive(Debug, Clone, Copy)]
struct HedgeRun {
    request: RequestKey,
    worker: WorkerKey,
    started_at: Time,
}

/// A request's live hedge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sibling {
    /// The key the hedge's `Start` named.
    key: RequestKey,
    /// The request's own attempt ended (it failed retryably, or its worker
    /// restarted) and the hedge runs on alone: the request's `worker` and
    /// `started_at` are the hedge's, and its worker lists the hedge's key.
    alone: bool,
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
    /// Its queue-wait and run limits, each with its own timer while the
    /// request is in that phase (see `timeouts.rs`).
    limits: PhaseLimits,
    /// The limit whose timer ended it, for its answer.
    expired: Option<TimeoutLimit>,
    /// Times it was started (its attempts so far).
    attempts: u32,
    /// Which turn of waiting it is in: a request refused before it
    /// started waits again in a new turn (see [`Place`]).
    turn: u32,
    /// The retry policy covers it ([`Admission::retry`](crate::Admission::retry)).
    retry: bool,
    /// The hedging policy covers it and no circuit breaker placed it.
    hedge: bool,
    /// Hedges it has had.
    hedges: u32,
    /// While it runs and may be hedged: when (its entry in `hedge_due`).
    hedge_at: Option<Time>,
    /// Its hedge, while one runs.
    sibling: Option<Sibling>,
}

/// A request's place in a worker's queue or in the backlog. Places are
/// dropped lazily: one is live while its request waits in the turn the
/// place was made in (and, in a worker's queue, on that worker). A request
/// that left the queues and came back (refused before it started) waits in
/// a new turn, so its places from before stay stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    key: RequestKey,
    turn: u32,
}

impl Place {
    /// Whether this place is live: its request waits in the place's turn,
    /// on `worker` when one is named.
    fn is_live<P>(self, requests: &Slab<Request<P>>, worker: Option<WorkerKey>) -> bool {
        requests.get(self.key.0).is_some_and(|entry| {
            entry.state == RequestState::Queued
                && entry.turn == self.turn
                && worker.is_none_or(|worker| entry.worker == worker)
        })
    }
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
    /// How many requests it may run at once: its own limit
    /// ([`WorkerSpec::max_concurrency`](workers::WorkerSpec)), or the
    /// pool's `max_concurrency_per_worker`.
    max_running: usize,
    /// Requests it may hold, running plus queued: the pool's queue
    /// capacity plus `max_running`.
    capacity: usize,
    health: Recovery,
    /// Cached `health.status()`, to notice changes.
    status: WorkerHealthStatus,
    /// Queued request keys in order; may hold stale keys (cancelled, timed
    /// out, or run by another worker while queued), swept once they
    /// outnumber the live ones.
    queue: VecDeque<Place>,
    /// Live entries of `queue`.
    queued: usize,
    /// Requests that waited here when the worker was removed and wait for
    /// a circuit breaker's approval of another ([`RequestState::Moving`]);
    /// the worker is released only once they have moved or been answered.
    moving: usize,
    running: RunList,
    /// How long its last successful request ran (since it was added or
    /// restarted): a queued request with less budget left is not started
    /// on it (see [`too_late_to_start`](scheduling::too_late_to_start)).
    last_run: Option<Duration>,
    /// Its run-time estimate under [`RoutingPolicy::PeakEwma`] (since it
    /// was added or restarted; fed only under that policy).
    ///
    /// [`RoutingPolicy::PeakEwma`]: crate::RoutingPolicy::PeakEwma
    latency: PeakEwma,
    /// Under `PeakEwma`, while it has no free run slot: the instant it is
    /// expected to finish a request it would take next (its oldest run's
    /// start plus twice its estimate), as the router's finish order holds
    /// it.
    finish_key: Option<u64>,
    /// Cached, as the router holds it: a run slot free and requests
    /// waiting in its queue (only while they are left to faster workers,
    /// under `PeakEwma`).
    free_holding: bool,
    removing: bool,
    /// Cached: its recovery machine has it ejected (counted in the pool's
    /// `ejected`).
    ejected: bool,
    /// While a handler's refusal of a request it had not started holds: the
    /// instant it expires, one probe interval after the last refusal. The
    /// worker starts nothing beyond what it runs until then, or until one
    /// of those ends, a probe answers or it restarts
    /// ([`Pool::handle_refusal`]).
    saturated: Option<Time>,
    /// Cached: takes new requests (not removing, status schedulable, pool
    /// not stopped).
    schedulable: bool,
    /// Cached, as the router holds it: schedulable with room (eligible),
    /// and a run slot free (idle), and Healthy (preferred: routed to
    /// before idle Degraded workers).
    membership: Membership,
    probe: ProbeState,
    /// Its recent successful run times, kept only when the hedging delay
    /// is a percentile of them (since it was added or restarted).
    run_times: Option<Box<RunTimes>>,
}

impl Worker {
    /// Whether it has room for one more request: it holds fewer than
    /// `capacity` (queue plus run slots) and fewer than `queue_capacity`
    /// wait in its queue (which only a worker deferring to a faster one,
    /// with a free run slot, can reach).
    fn has_room(&self, capacity: usize, queue_capacity: usize) -> bool {
        self.running.len() + self.queued < self.room(capacity) && self.queued < queue_capacity
    }

    /// One of its runs (`run`, a request's or a hedge's key) ended, however:
    /// its run slot is free and any saturation it was under ends.
    fn end_run(&mut self, run: RequestKey) {
        self.running.remove(run);
        self.saturated = None;
    }
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
        Ok(Pool {
            router: Router::new(config.routing),
            rng: Rng::new(config.seed),
            retry_ledger: match (config.retries, config.hedging) {
                (Some(policy), _) => Some(RetryLedger::new(policy.budget)),
                (None, Some(_)) => Some(RetryLedger::new(Default::default())),
                (None, None) => None,
            },
            config,
            now,
            requests: Slab::new(),
            workers: Slab::new(),
            ids: BTreeMap::new(),
            schedulable: 0,
            backlog: VecDeque::new(),
            backlog_live: 0,
            deferral: None,
            timers: TimerHeap::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            lifecycle: Lifecycle::Running,
            next_probe: 0,
            names_issued: 0,
            counters: Counters::default(),
            ejected: 0,
            hedge_runs: Slab::new(),
            hedge_due: BTreeSet::new(),
            freed: Vec::new(),
        })
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

/// What the pool's unit tests submit: a tool call with `timeout_ms`.
#[cfg(test)]
pub(crate) fn test_request(timeout_ms: Option<u64>) -> crate::protocol::WorkerRequest {
    use crate::protocol::{WorkerOperation, WorkerRequest};
    WorkerRequest {
        request_id: "r".into(),
        workflow_name: "w".into(),
        node_id: "n".into(),
        timeout_ms,
        operation: WorkerOperation::Tool {
            tool: "t".into(),
            input: serde_json::Value::Null,
            scoped_input: serde_json::Value::Null,
        },
    }
}
