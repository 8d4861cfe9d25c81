//! Recovery in the pool: feeding a worker's recovery machine
//! ([`crate::recovery`]) with the ejection cap's say, the ejection timers,
//! each worker's run limit (a half-open worker's trial permits, a
//! saturated worker's refusal), and requests a handler refused before
//! starting them ([`Pool::handle_refusal`]).

use super::{Place, Pool, RequestState, Worker};
use crate::health::HealthCause;
use crate::keys::{RequestKey, WorkerKey};
use crate::output::Event;
use crate::recovery::{Ctx, PanicMode, Recovery, RecoveryPolicy, RecoveryState, Step};
use crate::time::Time;
use crate::timers::Timer;

impl Worker {
    /// How many requests the worker may run at once now: its own run
    /// limit (`max_running`), at most its trial permits while half-open, and none
    /// beyond those it runs while saturated (a handler refused a request).
    pub(super) fn run_slots(&self, max_running: usize) -> usize {
        let limit = max_running.min(self.health.run_limit());
        if self.saturated.is_some() {
            limit.min(self.running.len())
        } else {
            limit
        }
    }

    /// Whether routing takes the worker only as a last resort (when no
    /// other worker is eligible): held at the ejection cap, or saturated
    /// (a handler refused a request it had not started, so a request
    /// routed to it would wait until it frees a slot, a probe answers or
    /// the saturation expires).
    pub(super) fn last_resort(&self) -> bool {
        self.saturated.is_some() || self.health.is_held()
    }

    /// Whether the worker runs requests from the late-binding backlog:
    /// schedulable and not held at the ejection cap (a held worker runs
    /// only what was routed to it, as a last resort).
    pub(super) fn takes_backlog(&self) -> bool {
        self.schedulable && !self.health.is_held()
    }

    /// How many requests the worker may hold (running plus queued) before
    /// routing passes it by: its `capacity`, at most its trial
    /// permits while half-open.
    pub(super) fn room(&self, capacity: usize) -> usize {
        capacity.min(self.health.run_limit())
    }
}

impl<P: Clone> Pool<P> {
    /// Where a worker is in its recovery machine (`None` for an unknown
    /// worker): what the simulator, the proptests and a dashboard of
    /// per-worker state read.
    pub fn recovery_state(&self, worker: WorkerKey) -> Option<RecoveryState> {
        self.workers.get(worker.0).map(|slot| slot.health.state())
    }

    /// A handler declined a running request before starting any work on it
    /// (it is overloaded): the request waits again, without a health
    /// penalty, and is counted in [`Counters::refused_not_started`](crate::Counters).
    ///
    /// Its worker is *saturated*: it starts no request beyond those it runs
    /// until one of them ends, a probe answers, it is restarted, or one
    /// probe interval (`health_probe_interval`) has passed since its last
    /// refusal, whichever comes first; the expiry has a timer
    /// ([`TimeoutReason::SaturationExpiry`](crate::TimeoutReason)), which
    /// also lets a drain finish once probing has stopped. The
    /// request goes to the front of the line: to another worker with room
    /// (the first the router would pick, at the front of its queue), or
    /// back to the front of its own worker's queue when none has room; an
    /// unpinned one also goes to the front of the backlog, so whichever
    /// schedulable worker frees first runs it. A request a circuit breaker
    /// placed stays on its worker (the breaker approved no other); one whose
    /// worker is being removed and that no other worker can take is
    /// answered with a retryable `Unavailable` error. Its deadline still
    /// applies, and it still gets exactly one answer.
    ///
    /// Returns `false` (and does nothing) when the request is not running.
    pub fn handle_refusal(&mut self, now: Time, request: RequestKey) -> bool {
        self.observe(now);
        let request = match self.refusal_of(request) {
            Ok(Some(request)) => request,
            Ok(None) => return true,
            Err(()) => return false,
        };
        let Some(entry) = self.requests.get_mut(request.0) else {
            return false;
        };
        let from = entry.worker;
        let Some(slot) = self.workers.get_mut(from.0) else {
            return false;
        };
        if !matches!(entry.state, RequestState::Running { .. }) {
            return false;
        }
        entry.state = RequestState::Queued;
        // Declined before it started: not an attempt. It waits in a new
        // turn, so places it held before it started stay stale.
        entry.attempts = entry.attempts.saturating_sub(1);
        entry.turn = entry.turn.wrapping_add(1);
        let place = Place {
            key: request,
            turn: entry.turn,
        };
        let (pinned, vetted) = (entry.pinned, entry.vetted);
        slot.running.remove(request);
        let removing = slot.removing;
        let from_id = slot.id.clone();
        self.refused_on(from);
        self.refresh(from, HealthCause::Success);
        let target = if vetted {
            None
        } else {
            self.router
                .candidates()
                .find(|candidate| *candidate != from)
        };
        let to = target.unwrap_or(from);
        // Waiting again: its queue-wait limit (from its acceptance) applies.
        self.arm_phase_limit(request);
        if let Some(entry) = self.requests.get_mut(request.0) {
            entry.worker = to;
        }
        if let Some(slot) = self.workers.get_mut(to.0) {
            slot.queue.push_front(place);
            slot.queued += 1;
        }
        if !pinned {
            self.backlog.push_front(place);
            self.backlog_live += 1;
        }
        if to != from {
            self.events.push_back(Event::Requeued { request, from, to });
            self.refresh_and_pump(to, HealthCause::Success);
        } else if removing {
            self.unroutable(request, &from_id, "no other worker could take the request");
        }
        if !pinned {
            let idle = self.router.iter_idle().next();
            if let Some(idle) = idle {
                self.refresh_and_pump(idle, HealthCause::Success);
            }
        }
        self.after_worker_change(from, HealthCause::Success);
        true
    }

    /// A handler refused an attempt on `worker` before starting it: counts
    /// the refusal and saturates the worker for one probe interval from
    /// now (the timer of its expiry is armed).
    pub(super) fn refused_on(&mut self, worker: WorkerKey) {
        self.counters.refused_not_started += 1;
        let until = self.now + self.config.options.health_probe_interval;
        if let Some(slot) = self.workers.get_mut(worker.0) {
            slot.saturated = Some(until);
            self.arm(until, Timer::Saturation(worker));
        }
    }

    /// A worker's saturation expired: it takes waiting requests again.
    pub(super) fn saturation_expired(&mut self, worker: WorkerKey) {
        if let Some(slot) = self.workers.get_mut(worker.0) {
            slot.saturated = None;
            self.refresh_and_pump(worker, HealthCause::Success);
        }
    }

    /// Runs one input of a worker's recovery machine, with the ejection
    /// cap's say: arms the timer of an ejection and counts ejections and
    /// panics (an ejection that found the cap reached).
    pub(super) fn recover(
        &mut self,
        worker: WorkerKey,
        input: impl FnOnce(&mut Recovery, &mut Ctx<'_>) -> Step,
    ) {
        let within_cap = self.within_ejection_cap();
        let may_eject = within_cap || self.panic_mode() == Some(PanicMode::FailFast);
        let Some(slot) = self.workers.get_mut(worker.0) else {
            return;
        };
        let mut ctx = Ctx {
            now: self.now,
            rng: &mut self.rng,
            may_eject,
        };
        let step = input(&mut slot.health, &mut ctx);
        let until = slot.health.ejected_until();
        match step {
            Step::Quiet => {}
            Step::Ejected => {
                self.counters.ejections += 1;
                if !within_cap {
                    self.counters.ejection_panics += 1;
                }
                if let Some(until) = until {
                    self.arm(until, Timer::Ejection(worker));
                }
            }
            Step::Held => self.counters.ejection_panics += 1,
        }
        self.sync_ejected(worker);
    }

    /// A worker's ejection timer fired: it turns half-open and takes
    /// waiting requests within its trial permits.
    pub(super) fn ejection_expired(&mut self, worker: WorkerKey) {
        let now = self.now;
        let Some(slot) = self.workers.get_mut(worker.0) else {
            return;
        };
        if slot.health.on_expiry(now) {
            self.sync_ejected(worker);
            self.refresh_and_pump(worker, HealthCause::EjectionExpired);
        }
    }

    /// Brings the pool's count of ejected workers in line with a worker's
    /// machine.
    pub(super) fn sync_ejected(&mut self, worker: WorkerKey) {
        let Some(slot) = self.workers.get_mut(worker.0) else {
            return;
        };
        let ejected = slot.health.ejected_until().is_some();
        if ejected != slot.ejected {
            slot.ejected = ejected;
            if ejected {
                self.ejected += 1;
            } else {
                self.ejected = self.ejected.saturating_sub(1);
            }
        }
    }

    /// Whether one more ejection stays within the cap (always, under the
    /// reference, which has none).
    fn within_ejection_cap(&self) -> bool {
        match &self.config.recovery {
            RecoveryPolicy::OutlierDetection(tuning) => {
                self.ejected < tuning.ejection_cap(self.workers.len())
            }
            _ => true,
        }
    }

    fn panic_mode(&self) -> Option<PanicMode> {
        match &self.config.recovery {
            RecoveryPolicy::OutlierDetection(tuning) => Some(tuning.panic_mode),
            _ => None,
        }
    }
}
