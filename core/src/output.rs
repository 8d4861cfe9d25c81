//! What the core tells its driver: actions to carry out and events to report.

use std::time::Duration;

use serde_json::Value;

use crate::deadlines::TimeoutLimit;
use crate::health::HealthCause;
use crate::keys::{ProbeKey, RequestKey, WorkerKey};
use crate::protocol::{WorkerErrorCode, WorkerHealthStatus, WorkerPoolError};
use crate::time::Time;

/// Something the driver must do, drained in order with
/// [`crate::Pool::poll_action`].
///
/// New kinds of action may be added: a match on it outside foreman-core
/// needs a wildcard arm, which a driver built with the exact version of
/// the core it was written for never reaches.
#[derive(Debug)]
#[non_exhaustive]
pub enum Action<P> {
    /// Run the request on the worker and report the outcome with
    /// [`crate::Pool::handle_completion`]. Carries a clone of the payload
    /// given to `submit` (the core keeps the original until the answer).
    ///
    /// A hedge ([`Event::Hedged`]) is started under a key of its own, which
    /// no submit returned: its payload is the hedged request's, and the
    /// driver runs it like any start and reports its completion under
    /// that key. The hedged request's [`Action::Answer`] carries the
    /// winning attempt's result; the losing attempt is aborted
    /// ([`Action::Abort`] under its own key).
    Start {
        /// The request to run.
        request: RequestKey,
        /// The worker to run it on.
        worker: WorkerKey,
        /// The payload given to `submit`.
        payload: P,
        /// Whether the request may be started once more after this start:
        /// this attempt's failure may run it again (the pool's
        /// [`RetryPolicy`](crate::RetryPolicy) covers it and it has
        /// attempts left), or it may be hedged while this attempt runs
        /// ([`HedgePolicy`](crate::HedgePolicy)). The driver then keeps
        /// what it needs to start it once more. `false` for every start of
        /// a pool with neither retries nor hedging.
        may_retry: bool,
    },
    /// Stop the running request now (drop its handler future). Its answer
    /// always follows in the same batch as an [`Action::Answer`], unless
    /// the request was hedged: an abort of one of its two attempts (the
    /// loser, under the key its `Start` named) is reported as
    /// [`Event::AttemptEnded`], and the request is answered by the other.
    /// A completion that still arrives for it is ignored.
    Abort {
        /// The request to stop.
        request: RequestKey,
        /// The worker running it.
        worker: WorkerKey,
    },
    /// Deliver the final answer of an accepted request. Every accepted
    /// request gets exactly one.
    Answer(Answer<P>),
    /// Ask the circuit breaker again where a request may go: its worker
    /// was removed while the request waited there, and the breaker chose
    /// that worker for it, so it moves only to a worker the breaker
    /// approves. Drive the choice with [`crate::Pool::revet`], now or
    /// later: until then the request waits on no worker (its deadline still
    /// runs; a cancel or the drain deadline still answers it).
    Revet {
        /// The request to place.
        request: RequestKey,
        /// The removed worker it waited on.
        worker: WorkerKey,
        /// The payload given to `submit` (a clone, as for `Start`).
        payload: P,
    },
    /// Run a health probe on the worker and report it with
    /// [`crate::Pool::handle_probe_result`].
    RunProbe {
        /// The worker to probe.
        worker: WorkerKey,
        /// Names this probe in the answer.
        probe: ProbeKey,
    },
    /// Stop a probe that ran out of time or is no longer wanted.
    AbortProbe {
        /// The probed worker.
        worker: WorkerKey,
        /// The probe to stop.
        probe: ProbeKey,
    },
    /// Replace the worker's execution context (a fresh handler task). Any
    /// request it was running has already been aborted; new `Start`s for it
    /// follow.
    RestartWorker {
        /// The worker to restart.
        worker: WorkerKey,
    },
    /// The worker is gone for good (removed, or the pool shut down): release
    /// everything the driver holds for it. No action names it again.
    StopWorker {
        /// The worker to stop.
        worker: WorkerKey,
    },
}

/// The final answer to an accepted request.
#[derive(Debug)]
#[non_exhaustive]
pub struct Answer<P> {
    /// The request answered.
    pub request: RequestKey,
    /// The worker the request was last bound to.
    pub worker: WorkerKey,
    /// The handler's output, or why there is none.
    pub result: Result<Value, WorkerPoolError>,
    /// Where the request was when it was answered.
    pub phase: Phase,
    /// Time from acceptance to start (or to the answer, if it never started).
    pub queued_for: Duration,
    /// Time the handler ran, if it started (its last attempt's run).
    pub ran_for: Option<Duration>,
    /// Times the request was started, retries and hedges included: 0 if
    /// it never ran, 1 without a retry or a hedge.
    pub attempts: u32,
    /// For a `Timeout`, the limit that fired: the overall budget, the
    /// queue-wait limit or the run limit; `None` for every other answer.
    pub limit: Option<TimeoutLimit>,
    /// The payload given to `submit`, handed back with the answer.
    pub payload: P,
}

/// Where a request was when it was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Waiting in a worker's queue.
    Queued,
    /// Running on a worker.
    Running,
}

/// Something that happened, for hooks, tracing and reports; drained with
/// [`crate::Pool::poll_event`]. The pool's correctness does not depend on
/// anyone reading them, but they queue up until drained. New kinds of
/// event may be added (a match on it needs a wildcard arm).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A worker took the request into its queue (fired once per request).
    Accepted {
        /// The request.
        request: RequestKey,
        /// The worker that took it.
        worker: WorkerKey,
    },
    /// A request another pool of the same driver released was taken in
    /// by a worker of this pool ([`crate::Pool::adopt`]): it joined that
    /// worker's queue (and may start at once) as an accepted request
    /// does, but it was accepted once, by the pool that released it, so
    /// no `Accepted` reports it.
    Adopted {
        /// Its key in this pool.
        request: RequestKey,
        /// The worker that took it.
        worker: WorkerKey,
    },
    /// A submit was refused, by one worker (`worker` is `Some`: a circuit
    /// breaker vetoed it) or by the pool (`worker` is `None`: the final
    /// refusal returned by `submit`).
    Rejected {
        /// The worker that refused, if the refusal was one worker's.
        worker: Option<WorkerKey>,
        /// Why.
        reason: WorkerErrorCode,
    },
    /// A queued request moved to another worker: its worker was removed
    /// (for a request a circuit breaker placed, once [`crate::Pool::revet`]
    /// found a worker the breaker approves), or (late binding) another
    /// worker freed up first and runs it now.
    Requeued {
        /// The request.
        request: RequestKey,
        /// Where it was.
        from: WorkerKey,
        /// Where it is now.
        to: WorkerKey,
    },
    /// A running request failed retryably and runs again on another
    /// worker ([`RetryPolicy`](crate::RetryPolicy)).
    Retried {
        /// The request.
        request: RequestKey,
        /// The worker whose attempt failed.
        from: WorkerKey,
        /// The worker that runs the next attempt.
        to: WorkerKey,
        /// Which attempt comes next (2 for the first retry).
        attempt: u32,
    },
    /// A running request got a second attempt on another worker
    /// ([`HedgePolicy`](crate::HedgePolicy)): `hedge` is the key its
    /// [`Action::Start`] names.
    Hedged {
        /// The request.
        request: RequestKey,
        /// The key of the hedge's attempt.
        hedge: RequestKey,
        /// The worker running the attempt that was hedged.
        from: WorkerKey,
        /// The worker that runs the hedge.
        to: WorkerKey,
        /// Which attempt the hedge is (2 for a first attempt's hedge).
        attempt: u32,
    },
    /// One of a hedged request's two attempts ended without answering it
    /// (it lost to the other, which answered; it failed retryably, was
    /// refused or its worker restarted while the other ran on): its
    /// worker no longer runs it. The request's answer, when it comes,
    /// names the worker of the attempt that answered.
    AttemptEnded {
        /// The request.
        request: RequestKey,
        /// The key the attempt ran under (the request's own, or its
        /// hedge's).
        attempt: RequestKey,
        /// The worker that ran it.
        worker: WorkerKey,
    },
    /// A worker's health status changed.
    HealthChanged {
        /// The worker.
        worker: WorkerKey,
        /// Its status before.
        from: WorkerHealthStatus,
        /// Its status now.
        to: WorkerHealthStatus,
        /// What caused the change.
        cause: HealthCause,
        /// When.
        at: Time,
    },
    /// Shutdown finished: every request is answered, every worker stopped.
    ShutdownComplete {
        /// When.
        at: Time,
    },
}
