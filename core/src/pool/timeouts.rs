//! The time rule and the timers: `now` only moves forward, every timer
//! fires at the first `handle_timeout` at or after its instant, and a
//! timer whose owner no longer wants it (an answered request, a changed
//! probe, a shutdown that ended) is not live and never fires.
//!
//! A request's phase limits each have a timer while the request is in that
//! phase, armed only when it would fire before the overall deadline (so
//! the earliest of the three fires, and a tie goes to the overall one):
//! the queue-wait timer from acceptance, the run timer from its start.

use super::{Lifecycle, Pool, ProbeState, Request, RequestState, Worker};
use crate::keys::RequestKey;
use crate::slab::Slab;
use crate::time::Time;
use crate::timers::Timer;

impl<P: Clone> Pool<P> {
    /// Fires every timer due at or before `now`: request deadlines and
    /// phase limits, probes and probe timeouts, the drain deadline. Calling
    /// it early is harmless.
    pub fn handle_timeout(&mut self, now: Time) {
        let now = self.observe(now);
        loop {
            let live = LiveTimers {
                requests: &self.requests,
                workers: &self.workers,
                lifecycle: self.lifecycle,
                deferral: self.deferral,
                hedge_first: self.hedge_due.first().map(|(at, _)| *at),
            };
            let Some((at, timer)) = self
                .timers
                .pop_due(now, |at, timer| live.is_live(at, timer))
            else {
                break;
            };
            match timer {
                Timer::Request(key) => self.request_deadline(key),
                Timer::QueueWait(key) => self.queue_wait_expired(key),
                Timer::RunLimit(key) => self.run_limit_expired(key),
                Timer::ProbeDue(worker) => self.send_probe(worker),
                Timer::ProbeTimeout(worker) => self.probe_deadline(worker),
                Timer::Ejection(worker) => self.ejection_expired(worker),
                Timer::Drain => {
                    debug_assert!(at <= now);
                    self.drain_deadline();
                }
                Timer::Deferral => self.end_deferral(),
                Timer::Hedge => self.hedges_due(),
                Timer::Saturation(worker) => self.saturation_expired(worker),
            }
        }
    }

    /// Arms the timer of the phase limit of `request`'s current phase, if
    /// it has one that fires before its overall deadline: called when the
    /// request is accepted and when it starts.
    pub(super) fn arm_phase_limit(&mut self, request: RequestKey) {
        let Some(entry) = self.requests.get(request.0) else {
            return;
        };
        if let Some(at) = queue_wait_deadline(entry) {
            self.arm(at, Timer::QueueWait(request));
        } else if let Some(at) = run_deadline(entry) {
            self.arm(at, Timer::RunLimit(request));
        }
    }

    /// Applies the time rule to an input's `now`: returns the latest
    /// instant seen, `now` itself unless it is earlier.
    pub(super) fn observe(&mut self, now: Time) -> Time {
        if now > self.now {
            self.now = now;
        }
        self.now
    }

    /// Arms `timer` at `at`, and sweeps the heap's stale entries once it has
    /// doubled since the last sweep.
    pub(super) fn arm(&mut self, at: Time, timer: Timer) {
        // `Time::MAX` is where saturated arithmetic lands: it means "never".
        // Arming it would let a timer re-arm itself at the instant it fires.
        if at == Time::MAX {
            return;
        }
        if self.timers.arm(at, timer) {
            let live = LiveTimers {
                requests: &self.requests,
                workers: &self.workers,
                lifecycle: self.lifecycle,
                deferral: self.deferral,
                hedge_first: self.hedge_due.first().map(|(at, _)| *at),
            };
            self.timers.sweep(|at, timer| live.is_live(at, timer));
        }
    }
}

/// The parts of the pool that say which timers are live.
pub(super) struct LiveTimers<'a, P> {
    pub(super) requests: &'a Slab<Request<P>>,
    pub(super) workers: &'a Slab<Worker>,
    pub(super) lifecycle: Lifecycle,
    pub(super) deferral: Option<Time>,
    /// When the earliest request due for a hedge is.
    pub(super) hedge_first: Option<Time>,
}

impl<P> LiveTimers<'_, P> {
    /// Whether a timer entry is still wanted by its owner.
    pub(super) fn is_live(&self, at: Time, timer: Timer) -> bool {
        timer_is_live(self, at, timer)
    }
}

/// Whether a timer entry is still wanted by its owner.
fn timer_is_live<P>(live: &LiveTimers<'_, P>, at: Time, timer: Timer) -> bool {
    let LiveTimers {
        requests,
        workers,
        lifecycle,
        deferral,
        hedge_first,
    } = *live;
    match timer {
        Timer::Request(key) => requests
            .get(key.0)
            .is_some_and(|entry| entry.deadline == Some(at)),
        Timer::QueueWait(key) => requests
            .get(key.0)
            .is_some_and(|entry| queue_wait_deadline(entry) == Some(at)),
        Timer::RunLimit(key) => requests
            .get(key.0)
            .is_some_and(|entry| run_deadline(entry) == Some(at)),
        Timer::ProbeDue(key) => workers
            .get(key.0)
            .is_some_and(|slot| slot.probe == ProbeState::Due(at)),
        Timer::ProbeTimeout(key) => workers.get(key.0).is_some_and(
            |slot| matches!(slot.probe, ProbeState::Outstanding { deadline, .. } if deadline == at),
        ),
        Timer::Drain => lifecycle == Lifecycle::Draining { deadline: Some(at) },
        Timer::Ejection(key) => {
            lifecycle != Lifecycle::Stopped
                && workers
                    .get(key.0)
                    .is_some_and(|slot| slot.health.ejected_until() == Some(at))
        }
        Timer::Deferral => deferral == Some(at),
        Timer::Hedge => hedge_first == Some(at),
        Timer::Saturation(key) => {
            lifecycle != Lifecycle::Stopped
                && workers
                    .get(key.0)
                    .is_some_and(|slot| slot.saturated == Some(at))
        }
    }
}

/// When a waiting request's queue-wait limit passes, if it has one that
/// passes before its overall deadline; `None` once it started.
pub(super) fn queue_wait_deadline<P>(entry: &Request<P>) -> Option<Time> {
    if !entry.state.is_waiting() {
        return None;
    }
    let at = entry.accepted_at.saturating_add(entry.limits.queue_wait?);
    before_deadline(at, entry.deadline)
}

/// When a running request's run limit passes, if it has one that passes
/// before its overall deadline; `None` while it waits.
pub(super) fn run_deadline<P>(entry: &Request<P>) -> Option<Time> {
    let RequestState::Running { started_at } = entry.state else {
        return None;
    };
    let at = started_at.saturating_add(entry.limits.run?);
    before_deadline(at, entry.deadline)
}

/// `at`, if it comes before `deadline` (or there is none) and is not
/// `Time::MAX`, where saturated arithmetic lands: "never".
fn before_deadline(at: Time, deadline: Option<Time>) -> Option<Time> {
    match deadline {
        _ if at == Time::MAX => None,
        Some(deadline) if deadline <= at => None,
        _ => Some(at),
    }
}
