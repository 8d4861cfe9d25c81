//! Retrying: a running request whose handler failed retryably runs again
//! on another worker, when every rule of [`RetryPolicy`](crate::RetryPolicy)
//! allows it (see [`crate::retries`] for the rules).

use super::{Lifecycle, Pool, RequestState};
use crate::health::HealthCause;
use crate::keys::{RequestKey, WorkerKey};
use crate::output::Event;
use crate::protocol::WorkerProtocolError;

impl<P: Clone> Pool<P> {
    /// Whether a request the retry policy covers (`retry`) that has been
    /// started `attempts` times may run again after a failure.
    pub(super) fn may_run_again(&self, retry: bool, attempts: u32) -> bool {
        retry
            && self
                .config
                .retries
                .is_some_and(|policy| attempts < policy.max_attempts)
    }

    /// Queues `request`, whose handler just failed with `error` on
    /// `worker`, on another worker, pinned there, if every rule allows a
    /// retry; returns whether it did. The caller has already charged the
    /// failure to `worker`'s health.
    pub(super) fn retry_elsewhere(
        &mut self,
        request: RequestKey,
        worker: WorkerKey,
        error: &WorkerProtocolError,
    ) -> bool {
        if !error.retryable || self.lifecycle != Lifecycle::Running {
            return false;
        }
        let Some(entry) = self.requests.get(request.0) else {
            return false;
        };
        let attempt = entry.attempts.saturating_add(1);
        if !self.may_run_again(entry.retry, entry.attempts)
            || entry.deadline.is_some_and(|deadline| deadline <= self.now)
        {
            return false;
        }
        let Some(to) = self.router.candidates().find(|&other| other != worker) else {
            return false;
        };
        let now = self.now;
        let granted = self
            .retry_ledger
            .as_mut()
            .is_some_and(|ledger| ledger.try_withdraw(now));
        if !granted {
            self.counters.retries_over_budget += 1;
            return false;
        }
        if let Some(slot) = self.workers.get_mut(worker.0) {
            slot.running.remove(request);
        }
        if let Some(entry) = self.requests.get_mut(request.0) {
            entry.pinned = true;
        }
        self.counters.retried += 1;
        self.events.push_back(Event::Retried {
            request,
            from: worker,
            to,
            attempt,
        });
        self.queue_on(request, to);
        true
    }

    /// Queues a request that waits on no worker's queue (moving off a
    /// removed worker, or off the worker whose attempt failed) on `to`
    /// (eligible), and starts what `to` can take.
    pub(super) fn queue_on(&mut self, request: RequestKey, to: WorkerKey) {
        if let Some(entry) = self.requests.get_mut(request.0) {
            entry.worker = to;
            entry.state = RequestState::Queued;
        }
        // An unpinned request also keeps its place in the backlog.
        if let Some(slot) = self.workers.get_mut(to.0) {
            slot.queue.push_back(request);
            slot.queued += 1;
        }
        self.pump(to);
        self.refresh(to, HealthCause::Success);
    }
}
