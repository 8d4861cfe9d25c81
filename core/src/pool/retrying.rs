//! Retrying: a running request whose handler failed retryably runs again
//! at once on another, idle worker, when every rule of
//! [`RetryPolicy`](crate::RetryPolicy) allows it (see `retries.rs` for the
//! rules).

use super::scheduling::too_late_to_start;
use super::{Lifecycle, Pool, RequestState};
use crate::keys::{RequestKey, WorkerKey};
use crate::output::{Action, Event};
use crate::protocol::WorkerProtocolError;
use crate::time::Time;

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

    /// Starts `request`, whose handler just failed with `error` on
    /// `worker`, at once on another worker with a free run slot, if every
    /// rule allows a retry; returns whether it did. The caller has already
    /// charged the failure to `worker`'s health.
    ///
    /// A retry never waits in a queue: it goes to an idle worker or not at
    /// all (the failure is then the answer). So retries never delay
    /// requests that are waiting, add no queueing under overload (when no
    /// worker is idle), and a request never returns to a queue once it has
    /// left one.
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
        let (deadline, attempts) = (entry.deadline, entry.attempts);
        if !self.may_run_again(entry.retry, attempts) {
            return false;
        }
        let now = self.now;
        let Some(to) = self.pick_idle_except(worker) else {
            return false;
        };
        if !self.may_start_extra(deadline, to) {
            return false;
        }
        if !self.withdraw_extra() {
            self.counters.retries_over_budget += 1;
            return false;
        }
        let attempt = attempts.saturating_add(1);
        let run_key = self.run_key(request);
        let Some(entry) = self.requests.get_mut(request.0) else {
            return false;
        };
        // A hedge that ran on alone is over: the retry runs under the
        // request's own key.
        if let Some(sibling) = entry.sibling.take() {
            self.hedge_runs
                .remove(super::hedging::run_slot(sibling.key));
        }
        let Some(entry) = self.requests.get_mut(request.0) else {
            return false;
        };
        entry.worker = to;
        entry.state = RequestState::Running { started_at: now };
        entry.attempts = attempt;
        let payload = entry.payload.clone();
        // The failed attempt was the worker's run, now over: as any run's
        // end, it ends the worker's saturation.
        if let Some(slot) = self.workers.get_mut(worker.0) {
            slot.end_run(run_key);
        }
        self.counters.retried += 1;
        self.events.push_back(Event::Retried {
            request,
            from: worker,
            to,
            attempt,
        });
        let (hedge, hedges) = (entry.hedge, entry.hedges);
        let may_retry = self.may_run_again(true, attempt) || self.may_hedge(hedge, hedges);
        self.start_on(request, to, payload, may_retry);
        // The run limit counts from this attempt's start.
        self.arm_phase_limit(request);
        self.arm_hedge(request);
        true
    }

    /// Whether an extra attempt (a retry or a hedge) of a request with
    /// `deadline` may start on `to` now: it has budget enough left for the
    /// worker's last run.
    pub(super) fn may_start_extra(&self, deadline: Option<Time>, to: WorkerKey) -> bool {
        let last_run = self.workers.get(to.0).and_then(|slot| slot.last_run);
        !too_late_to_start(deadline, self.now, last_run)
    }

    /// Takes a token for an extra attempt (a retry or a hedge) from the
    /// retry budget; `false` when the budget has none (or there is no
    /// budget).
    pub(super) fn withdraw_extra(&mut self) -> bool {
        let now = self.now;
        self.retry_ledger
            .as_mut()
            .is_some_and(|ledger| ledger.try_withdraw(now))
    }

    /// Starts an extra attempt (a retry, or a hedge under its own key) on
    /// idle worker `to`: it joins the worker's run list and the driver is
    /// told to run it.
    pub(super) fn start_on(&mut self, key: RequestKey, to: WorkerKey, payload: P, may_retry: bool) {
        if let Some(slot) = self.workers.get_mut(to.0) {
            slot.running.push(key);
        }
        self.actions.push_back(Action::Start {
            request: key,
            worker: to,
            payload,
            may_retry,
        });
        self.refresh_load(to);
    }
}
