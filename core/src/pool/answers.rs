//! How a request ends: its handler completes, its caller cancels it, or
//! its deadline passes; each ends in its one [`Action::Answer`], which
//! takes the request off its worker's books.

use serde_json::Value;

use super::hedging::{is_hedge, Side};
use super::scheduling::sweep_queue;
use super::timeouts::queue_wait_deadline;
use super::{Pool, Request, RequestState, Sibling};
use crate::deadlines::TimeoutLimit;
use crate::health::HealthCause;
use crate::keys::RequestKey;
use crate::keys::WorkerKey;
use crate::output::{Action, Answer, Phase};
use crate::protocol::{WorkerErrorCode, WorkerPoolError, WorkerProtocolError};
use crate::time::Time;

impl<P: Clone> Pool<P> {
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
            self.finish_waiting(request, Err(error));
        } else {
            self.counters.cancelled_running += 1;
            let run_key = self.run_key(request);
            self.actions.push_back(Action::Abort {
                request: run_key,
                worker,
            });
            self.finish_running(request, Err(error));
        }
        self.after_worker_change(worker, HealthCause::Success);
        true
    }

    /// A handler finished the request it was started with.
    ///
    /// A success clears the worker's failure count; an error counts as one
    /// failure. `request` is the key the `Start` named: a request's own,
    /// or a hedge's ([`Event::Hedged`](crate::Event::Hedged)). While a
    /// request's two attempts run, the first to answer wins (the other is
    /// aborted, charging no worker), but a retryable failure only ends its
    /// own attempt and leaves the request to the other. Returns `false`
    /// (and does nothing) when that attempt is not running (already
    /// answered, aborted, lost to the other attempt, or unknown).
    pub fn handle_completion(
        &mut self,
        now: Time,
        request: RequestKey,
        result: Result<Value, WorkerProtocolError>,
    ) -> bool {
        self.observe(now);
        if is_hedge(request) {
            return self.hedge_completion(request, result);
        }
        let (worker, started_at, sibling) = match self.requests.get(request.0) {
            Some(Request {
                worker,
                state: RequestState::Running { started_at },
                sibling,
                ..
            }) => (*worker, *started_at, *sibling),
            _ => return false,
        };
        let racing = match sibling {
            // Its own attempt ended; its hedge runs on under its own key.
            Some(Sibling { alone: true, .. }) => return false,
            Some(Sibling { alone: false, .. }) => Some(Side::Own),
            None => None,
        };
        self.complete_attempt(request, worker, started_at, result, racing)
    }

    /// Everything that follows a change to a worker's requests or health.
    pub(super) fn after_worker_change(&mut self, worker: WorkerKey, cause: HealthCause) {
        self.refresh_and_pump(worker, cause);
        self.maybe_release(worker);
        self.settle_freed(Some(worker));
        self.maybe_finish_shutdown();
    }

    /// Answers a waiting request (queued, or moving off a removed worker)
    /// and takes it off its worker's books.
    pub(super) fn finish_waiting(
        &mut self,
        request: RequestKey,
        result: Result<Value, WorkerPoolError>,
    ) {
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
            limit: timeout_limit(&result, entry.expired),
            result,
            phase: Phase::Queued,
            queued_for: self.now - entry.accepted_at,
            ran_for: None,
            attempts: entry.attempts,
            payload: entry.payload,
        }));
    }

    /// Answers a running request and takes it off its worker's books.
    pub(super) fn finish_running(
        &mut self,
        request: RequestKey,
        result: Result<Value, WorkerPoolError>,
    ) {
        let worker = match self.requests.get(request.0) {
            Some(entry) => entry.worker,
            None => return,
        };
        let run_key = self.run_key(request);
        if let Some(slot) = self.workers.get_mut(worker.0) {
            slot.end_run(run_key);
        }
        self.answer_running(request, result);
    }

    /// Answers a running request already taken off its worker's run list.
    pub(super) fn answer_running(
        &mut self,
        request: RequestKey,
        result: Result<Value, WorkerPoolError>,
    ) {
        let Some(entry) = self.requests.remove(request.0) else {
            return;
        };
        let RequestState::Running { started_at } = entry.state else {
            unreachable_state();
            return;
        };
        self.forget_sibling(request, entry.sibling);
        self.forget_hedge_at(request, entry.hedge_at);
        self.actions.push_back(Action::Answer(Answer {
            request,
            worker: entry.worker,
            limit: timeout_limit(&result, entry.expired),
            result,
            phase: Phase::Running,
            queued_for: started_at - entry.accepted_at,
            ran_for: Some(self.now - started_at),
            attempts: entry.attempts,
            payload: entry.payload,
        }));
    }

    /// A request's budget ran out: a queued one is answered `Timeout` and
    /// charged to no worker; a running one is aborted, answered `Timeout`,
    /// and counts as a failure of its worker only if that worker had at
    /// least half of its budget (`Recovery::on_timeout`).
    pub(super) fn request_deadline(&mut self, request: RequestKey) {
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
            let run_key = self.run_key(request);
            self.actions.push_back(Action::Abort {
                request: run_key,
                worker,
            });
            self.recover(worker, |health, ctx| health.on_timeout(ran, budget, ctx));
            // At least its run time: it would have run longer still.
            self.sample_latency(worker, started_at, false);
            self.finish_running(request, Err(WorkerPoolError::Timeout));
        } else if cfg!(foreman_planted_bug) {
            self.forget_expired(request, worker);
        } else {
            self.expire_queued(request);
        }
        self.after_worker_change(worker, HealthCause::Timeout);
    }

    /// A waiting request's queue-wait limit passed: it leaves its queue at
    /// once, answered `Timeout`, charging no worker.
    pub(super) fn queue_wait_expired(&mut self, request: RequestKey) {
        let Some(entry) = self.requests.get(request.0) else {
            return;
        };
        let worker = entry.worker;
        self.expire_queued(request);
        self.after_worker_change(worker, HealthCause::Timeout);
    }

    /// A running request's run limit passed: it is aborted, answered
    /// `Timeout`, and counts as one failure of its worker, which had the
    /// whole limit to finish.
    pub(super) fn run_limit_expired(&mut self, request: RequestKey) {
        let Some(entry) = self.requests.get_mut(request.0) else {
            return;
        };
        entry.expired = Some(TimeoutLimit::Run);
        let worker = entry.worker;
        let allowance = entry.limits.run.unwrap_or_default();
        self.counters.timed_out_running += 1;
        let run_key = self.run_key(request);
        self.actions.push_back(Action::Abort {
            request: run_key,
            worker,
        });
        self.recover(worker, |health, ctx| {
            health.on_timeout(allowance, allowance, ctx)
        });
        self.finish_running(request, Err(WorkerPoolError::Timeout));
        self.after_worker_change(worker, HealthCause::Timeout);
    }

    /// Answers `Timeout` to a queued request whose budget or queue-wait
    /// limit has run out (or whose budget is too short to start it),
    /// charging no worker: time spent queued is never held against one.
    /// A passed queue-wait limit is the limit its answer names (a worker
    /// may reach the request before the limit's timer fires).
    pub(super) fn expire_queued(&mut self, request: RequestKey) {
        let now = self.now;
        if let Some(entry) = self.requests.get_mut(request.0) {
            if queue_wait_deadline(entry).is_some_and(|at| at <= now) {
                entry.expired = Some(TimeoutLimit::QueueWait);
            }
        }
        self.counters.timed_out_queued += 1;
        self.finish_waiting(request, Err(WorkerPoolError::Timeout));
    }
}

/// Which limit a request's answer reports: for a `Timeout`, the phase
/// limit whose timer ended it, or else the overall budget.
fn timeout_limit(
    result: &Result<Value, WorkerPoolError>,
    expired: Option<TimeoutLimit>,
) -> Option<TimeoutLimit> {
    matches!(result, Err(WorkerPoolError::Timeout))
        .then(|| expired.unwrap_or(TimeoutLimit::Overall))
}

/// Marks a state the pool's own bookkeeping rules out; checked in debug
/// builds (and by the simulator), ignored in release.
fn unreachable_state() {
    debug_assert!(false, "request state contradicts the pool's bookkeeping");
}
