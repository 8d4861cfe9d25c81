//! Hedging: a running request gets a second attempt on another, idle
//! worker once its attempt has run for the policy's delay (see
//! `hedging.rs` at the crate's root for the rules), and the first attempt
//! to answer wins.
//!
//! A hedge runs under a key of its own, so `Start`, `Abort` and
//! `handle_completion` keep their shape: the key's slot index carries
//! [`HEDGE_BIT`] and names an entry of `hedge_runs`, which links it to the
//! request (whose `sibling` names it back). The request keeps its own
//! attempt's worker and start; while both attempts run, the hedge's worker
//! lists the hedge's key. When one attempt ends without answering (a
//! retryable failure, a restart of its worker, a refusal) the other runs
//! on alone; if that is the hedge, the request takes the hedge's worker
//! and start and its key stays the hedge's ([`Sibling::alone`]), so its
//! own key's late completion is ignored.
//!
//! Due hedges wait in `hedge_due`, ordered by instant, under one
//! pool-wide timer armed at the earliest: O(log n) per start and answer.

use super::{HedgeRun, Lifecycle, Pool, RequestState, Sibling};
use crate::health::HealthCause;
use crate::hedging::{HedgeDelay, RunTimes};
use crate::keys::{RequestKey, WorkerKey};
use crate::output::{Action, Event};
use crate::protocol::{WorkerPoolError, WorkerProtocolError};
use crate::routing::Membership;
use crate::slab::SlabKey;
use crate::time::Time;
use crate::timers::Timer;
use serde_json::Value;

/// Set in the slot index of every hedge's key: the requests' slab never
/// holds 2^31 requests at once, so no request's key has it.
pub(super) const HEDGE_BIT: u32 = 1 << 31;

/// Whether `key` names a hedge's attempt.
pub(super) fn is_hedge(key: RequestKey) -> bool {
    key.0.index & HEDGE_BIT != 0
}

/// The `hedge_runs` slot of a hedge's key.
pub(super) fn run_slot(key: RequestKey) -> SlabKey {
    SlabKey {
        index: key.0.index & !HEDGE_BIT,
        generation: key.0.generation,
    }
}

/// Which of a request's two racing attempts ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// The request's own attempt, under its key.
    Own,
    /// Its hedge, under the hedge's key.
    Hedge,
}

impl<P: Clone> Pool<P> {
    /// Whether a request the hedging policy covers (`hedge`) that has been
    /// hedged `hedges` times may be hedged again.
    pub(super) fn may_hedge(&self, hedge: bool, hedges: u32) -> bool {
        hedge
            && self
                .config
                .hedging
                .is_some_and(|policy| hedges < policy.max_hedges)
    }

    /// The key under which `request`'s running attempt reports: its own,
    /// or its hedge's when that runs alone.
    pub(super) fn run_key(&self, request: RequestKey) -> RequestKey {
        match self.requests.get(request.0).and_then(|entry| entry.sibling) {
            Some(Sibling { key, alone: true }) => key,
            _ => request,
        }
    }

    /// The request an attempt key runs for: the key itself for a request's
    /// own key, the hedged request for a live hedge's key (one its request
    /// still names as its sibling); `None` for a stale hedge's key.
    pub(super) fn request_of(&self, attempt: RequestKey) -> Option<RequestKey> {
        if !is_hedge(attempt) {
            return Some(attempt);
        }
        let run = self.hedge_runs.get(run_slot(attempt))?;
        self.requests
            .get(run.request.0)?
            .sibling
            .filter(|sibling| sibling.key == attempt)
            .map(|_| run.request)
    }

    /// Counts a successful run of `ran` on `worker` in its run-time
    /// estimate, when the hedging delay reads one.
    pub(super) fn record_run_time(&mut self, worker: WorkerKey, ran: std::time::Duration) {
        if !self
            .config
            .hedging
            .is_some_and(|policy| policy.wants_run_times())
        {
            return;
        }
        if let Some(slot) = self.workers.get_mut(worker.0) {
            slot.run_times.get_or_insert_with(Box::default).record(ran);
        }
    }

    /// Sets when `request`, just started, is due for a hedge: its start
    /// plus the policy's delay, if it may be hedged, its worker has an
    /// estimate (for a percentile delay) and that comes before its
    /// deadline.
    pub(super) fn arm_hedge(&mut self, request: RequestKey) {
        let at = self.hedge_instant(request);
        self.set_hedge_at(request, at);
    }

    /// When `request` would be due for a hedge (see [`arm_hedge`](Self::arm_hedge)).
    fn hedge_instant(&self, request: RequestKey) -> Option<Time> {
        let policy = self.config.hedging?;
        let entry = self.requests.get(request.0)?;
        if entry.sibling.is_some() || !self.may_hedge(entry.hedge, entry.hedges) {
            return None;
        }
        let RequestState::Running { started_at } = entry.state else {
            return None;
        };
        let delay = match policy.delay {
            HedgeDelay::Fixed(delay) => delay,
            HedgeDelay::RunTimePercentile(permille) => {
                let slot = self.workers.get(entry.worker.0)?;
                slot.run_times
                    .as_deref()
                    .and_then(|times: &RunTimes| times.quantile(permille))?
            }
        };
        let at = started_at.saturating_add(delay);
        let useful = at != Time::MAX && entry.deadline.is_none_or(|deadline| at < deadline);
        useful.then_some(at)
    }

    /// Moves `request`'s place in `hedge_due` to `at` (`None`: out of it),
    /// and arms the pool's hedge timer when the earliest instant changes.
    pub(super) fn set_hedge_at(&mut self, request: RequestKey, at: Option<Time>) {
        let Some(entry) = self.requests.get_mut(request.0) else {
            return;
        };
        let old = std::mem::replace(&mut entry.hedge_at, at);
        if old == at {
            return;
        }
        let before = self.hedge_due.first().map(|(at, _)| *at);
        if let Some(old) = old {
            self.hedge_due.remove(&(old, request));
        }
        if let Some(at) = at {
            self.hedge_due.insert((at, request));
        }
        self.rearm_hedges(before);
    }

    /// Takes an answered request's place out of `hedge_due`.
    pub(super) fn forget_hedge_at(&mut self, request: RequestKey, at: Option<Time>) {
        if let Some(at) = at {
            let before = self.hedge_due.first().map(|(at, _)| *at);
            self.hedge_due.remove(&(at, request));
            self.rearm_hedges(before);
        }
    }

    /// Arms the hedge timer at the earliest due instant if it is not
    /// `before`'s.
    fn rearm_hedges(&mut self, before: Option<Time>) {
        let first = self.hedge_due.first().map(|(at, _)| *at);
        if first != before {
            if let Some(at) = first {
                self.arm(at, Timer::Hedge);
            }
        }
    }

    /// The hedge timer fired: every request due by now is hedged if the
    /// rules allow it (once: a request that cannot be hedged now is not
    /// tried again for the same attempt).
    pub(super) fn hedges_due(&mut self) {
        let now = self.now;
        while let Some(&(at, request)) = self.hedge_due.first() {
            if at > now {
                break;
            }
            self.hedge_due.pop_first();
            if let Some(entry) = self.requests.get_mut(request.0) {
                entry.hedge_at = None;
            }
            self.try_hedge(request);
        }
        if let Some(&(at, _)) = self.hedge_due.first() {
            self.arm(at, Timer::Hedge);
        }
    }

    /// Starts a hedge of running `request` on another idle worker, the
    /// routing policy's pick, if every rule allows it.
    fn try_hedge(&mut self, request: RequestKey) {
        if self.lifecycle != Lifecycle::Running {
            return;
        }
        let Some(entry) = self.requests.get(request.0) else {
            return;
        };
        if !matches!(entry.state, RequestState::Running { .. })
            || entry.sibling.is_some()
            || !self.may_hedge(entry.hedge, entry.hedges)
        {
            return;
        }
        let (from, deadline) = (entry.worker, entry.deadline);
        let now = self.now;
        let Some(to) = self.pick_idle_except(from) else {
            return;
        };
        if !self.may_start_extra(deadline, to)
            || !self.hedge_runs.has_room()
            || self.hedge_runs.len() >= (HEDGE_BIT - 1) as usize
        {
            return;
        }
        if !self.withdraw_extra() {
            self.counters.hedges_over_budget += 1;
            return;
        }
        let slab = self.hedge_runs.insert(HedgeRun {
            request,
            worker: to,
            started_at: now,
        });
        let key = RequestKey(SlabKey {
            index: slab.index | HEDGE_BIT,
            generation: slab.generation,
        });
        let Some(entry) = self.requests.get_mut(request.0) else {
            return;
        };
        entry.attempts = entry.attempts.saturating_add(1);
        entry.hedges = entry.hedges.saturating_add(1);
        entry.sibling = Some(Sibling { key, alone: false });
        let (attempt, retry) = (entry.attempts, entry.retry);
        let payload = entry.payload.clone();
        self.counters.hedged += 1;
        self.events.push_back(Event::Hedged {
            request,
            hedge: key,
            from,
            to,
            attempt,
        });
        // Should the hedge run on alone and fail, it may be retried.
        let may_retry = self.may_run_again(retry, attempt);
        self.start_on(key, to, payload, may_retry);
    }

    /// The routing policy's pick among the idle workers other than
    /// `except` (for a retry or a hedge): `except` leaves the router's
    /// sets for the pick. O(log n).
    pub(super) fn pick_idle_except(&mut self, except: WorkerKey) -> Option<WorkerKey> {
        let was = self
            .workers
            .get(except.0)
            .map_or(Membership::default(), |slot| slot.membership);
        self.router.set(except, was, Membership::default());
        let pick = self.choose_worker();
        self.router.set(except, Membership::default(), was);
        pick.filter(|worker| {
            *worker != except
                && self
                    .workers
                    .get(worker.0)
                    .is_some_and(|slot| slot.membership.idle)
        })
    }

    /// A hedge's handler finished: see [`Pool::handle_completion`].
    pub(super) fn hedge_completion(
        &mut self,
        key: RequestKey,
        result: Result<Value, WorkerProtocolError>,
    ) -> bool {
        let Some(run) = self.hedge_runs.get(run_slot(key)).copied() else {
            return false;
        };
        let sibling = self
            .requests
            .get(run.request.0)
            .and_then(|entry| entry.sibling)
            .filter(|sibling| sibling.key == key);
        match sibling {
            Some(Sibling { alone: true, .. }) => {
                self.complete_attempt(run.request, run.worker, run.started_at, result, None)
            }
            Some(Sibling { alone: false, .. }) => self.complete_attempt(
                run.request,
                run.worker,
                run.started_at,
                result,
                Some(Side::Hedge),
            ),
            None => false,
        }
    }

    /// An attempt of `request` on `worker`, started at `started_at`,
    /// finished with `result`; `racing` names it when the other attempt
    /// still runs. Its worker's health and estimates hear of it; a
    /// retryable failure while the other runs ends only this attempt; any
    /// other result answers the request (the other attempt is aborted) or,
    /// alone and retryable, retries it.
    pub(super) fn complete_attempt(
        &mut self,
        request: RequestKey,
        worker: WorkerKey,
        started_at: Time,
        result: Result<Value, WorkerProtocolError>,
        racing: Option<Side>,
    ) -> bool {
        let now = self.now;
        let cause = if result.is_ok() {
            HealthCause::Success
        } else {
            HealthCause::Failure
        };
        if result.is_ok() {
            if let Some(slot) = self.workers.get_mut(worker.0) {
                slot.last_run = Some(now - started_at);
            }
            self.record_run_time(worker, now - started_at);
        }
        match &result {
            Ok(_) => self.recover(worker, |health, ctx| health.on_success(ctx.now)),
            Err(error) => self.recover(worker, |health, ctx| health.on_error(error.code, ctx)),
        }
        self.sample_latency(worker, started_at, result.is_err());
        let retryable = matches!(&result, Err(error) if error.retryable);
        match racing {
            Some(Side::Hedge) if retryable => {
                self.drop_hedge(request, false);
                self.after_worker_change(worker, cause);
                return true;
            }
            Some(Side::Own) if retryable => {
                self.leave_to_hedge(request, false, true);
                self.after_worker_change(worker, cause);
                return true;
            }
            Some(Side::Hedge) => {
                self.counters.hedges_won += 1;
                self.leave_to_hedge(request, true, true);
            }
            Some(Side::Own) | None => {}
        }
        if let Err(error) = &result {
            if self.retry_elsewhere(request, worker, error) {
                self.after_worker_change(worker, cause);
                return true;
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

    /// Ends `request`'s hedge (aborted if `abort`; its worker is not
    /// charged): its own attempt runs on alone.
    pub(super) fn drop_hedge(&mut self, request: RequestKey, abort: bool) {
        let Some(entry) = self.requests.get_mut(request.0) else {
            return;
        };
        let Some(Sibling { key, alone: false }) = entry.sibling else {
            return;
        };
        entry.sibling = None;
        let Some(run) = self.hedge_runs.remove(run_slot(key)) else {
            return;
        };
        self.unlist_loser(request, key, run.worker, abort);
    }

    /// Ends `request`'s own attempt (aborted if `abort`; taken off its
    /// worker's run list if `unlist`; its worker is not charged): its hedge
    /// runs on alone, and the request takes the hedge's worker and start.
    pub(super) fn leave_to_hedge(&mut self, request: RequestKey, abort: bool, unlist: bool) {
        let Some(entry) = self.requests.get(request.0) else {
            return;
        };
        let Some(Sibling { key, alone: false }) = entry.sibling else {
            return;
        };
        let Some(run) = self.hedge_runs.get(run_slot(key)).copied() else {
            return;
        };
        let own = entry.worker;
        if unlist {
            self.unlist_loser(request, request, own, abort);
        } else {
            self.attempt_ended(request, request, own);
            if abort {
                self.actions.push_back(Action::Abort {
                    request,
                    worker: own,
                });
            }
        }
        if let Some(entry) = self.requests.get_mut(request.0) {
            entry.worker = run.worker;
            entry.state = RequestState::Running {
                started_at: run.started_at,
            };
            entry.sibling = Some(Sibling { key, alone: true });
        }
        // Its run limit times the attempt that runs on.
        self.arm_phase_limit(request);
    }

    /// Takes a losing attempt `key` off `worker`'s run list (aborting it
    /// if `abort`); the worker is refreshed by the next
    /// `after_worker_change`.
    fn unlist_loser(
        &mut self,
        request: RequestKey,
        key: RequestKey,
        worker: WorkerKey,
        abort: bool,
    ) {
        self.attempt_ended(request, key, worker);
        if abort {
            self.actions.push_back(Action::Abort {
                request: key,
                worker,
            });
        }
        if let Some(slot) = self.workers.get_mut(worker.0) {
            slot.end_run(key);
        }
        self.freed.push(worker);
    }

    /// An answered request's hedge: aborted if it still raced the
    /// request's own attempt, forgotten in any case.
    pub(super) fn forget_sibling(&mut self, request: RequestKey, sibling: Option<Sibling>) {
        let Some(Sibling { key, alone }) = sibling else {
            return;
        };
        if let Some(run) = self.hedge_runs.remove(run_slot(key)) {
            if !alone {
                self.unlist_loser(request, key, run.worker, true);
            }
        }
    }

    /// Reports that `request`'s attempt `key` on `worker` ended without
    /// answering it.
    fn attempt_ended(&mut self, request: RequestKey, key: RequestKey, worker: WorkerKey) {
        self.events.push_back(Event::AttemptEnded {
            request,
            attempt: key,
            worker,
        });
    }

    /// Refreshes the workers whose losing attempts ended (but `done`,
    /// refreshed already), and releases removed ones.
    pub(super) fn settle_freed(&mut self, done: Option<WorkerKey>) {
        while let Some(worker) = self.freed.pop() {
            if Some(worker) != done {
                self.refresh_and_pump(worker, HealthCause::Success);
                self.maybe_release(worker);
            }
        }
    }

    /// A restarted `worker` listed `key` as running: a hedge racing its
    /// request's own attempt ends (the request runs on), as does a request's
    /// own attempt racing a hedge (the hedge runs on alone). Returns the
    /// request to answer when `key` was its only attempt.
    pub(super) fn restart_attempt(
        &mut self,
        key: RequestKey,
        worker: WorkerKey,
    ) -> Option<RequestKey> {
        if is_hedge(key) {
            let run = self.hedge_runs.get(run_slot(key)).copied()?;
            let sibling = self.requests.get(run.request.0)?.sibling?;
            if sibling.key != key {
                return None;
            }
            if sibling.alone {
                return Some(run.request);
            }
            self.attempt_ended(run.request, key, worker);
            self.actions.push_back(Action::Abort {
                request: key,
                worker,
            });
            self.hedge_runs.remove(run_slot(key));
            if let Some(entry) = self.requests.get_mut(run.request.0) {
                entry.sibling = None;
            }
            return None;
        }
        let entry = self.requests.get(key.0)?;
        if matches!(entry.sibling, Some(Sibling { alone: false, .. })) {
            self.leave_to_hedge(key, true, false);
            return None;
        }
        Some(key)
    }

    /// A handler declined `key` before starting it: for a hedge racing its
    /// request's own attempt, the hedge ends (`Ok(None)`: handled); for a
    /// hedge running alone, the request's books go back to its own key
    /// (`Ok(Some(request))`: refused as a request); a request's own key
    /// racing a hedge drops the hedge first. `Err(())`: stale.
    pub(super) fn refusal_of(&mut self, key: RequestKey) -> Result<Option<RequestKey>, ()> {
        if !is_hedge(key) {
            let sibling = self.requests.get(key.0).ok_or(())?.sibling;
            match sibling {
                Some(Sibling { alone: true, .. }) => return Err(()),
                Some(Sibling { alone: false, .. }) => self.drop_hedge(key, true),
                None => {}
            }
            self.set_hedge_at(key, None);
            return Ok(Some(key));
        }
        let run = self.hedge_runs.get(run_slot(key)).copied().ok_or(())?;
        let entry = self.requests.get_mut(run.request.0).ok_or(())?;
        let sibling = entry
            .sibling
            .filter(|sibling| sibling.key == key)
            .ok_or(())?;
        entry.sibling = None;
        if !sibling.alone {
            // Declined before it started: not an attempt.
            entry.attempts = entry.attempts.saturating_sub(1);
        }
        self.hedge_runs.remove(run_slot(key));
        if let Some(slot) = self.workers.get_mut(run.worker.0) {
            slot.running.remove(key);
            if sibling.alone {
                // Its books return to the request's own key, on the
                // hedge's worker, whose refusal then counts as the
                // request's.
                slot.running.push(run.request);
                return Ok(Some(run.request));
            }
        }
        self.refused_on(run.worker);
        self.attempt_ended(run.request, key, run.worker);
        self.after_worker_change(run.worker, HealthCause::Success);
        Ok(None)
    }
}
