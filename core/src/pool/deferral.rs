//! Latency-aware late binding under [`RoutingPolicy::PeakEwma`]: a worker
//! with a free run slot may leave the backlog's oldest request to a busy
//! worker expected to finish it sooner, so that a slow worker stays idle
//! while fast ones take the work.
//!
//! The rule, when a worker `w` could take the backlog's oldest request `r`
//! (accepted at `a`), at `now`, with `e(x)` a worker's latency estimate:
//! - `w` would finish `r` at `now + e(w)`;
//! - the busy worker `f` first in the router's finish order would finish it
//!   at `max(s + 2 e(f), now + e(f))`, `s` the start of its oldest run (it
//!   frees at `s + e(f)`, or, overdue, not before `now`, then runs `r`);
//! - `w` leaves `r` to `f` if `f` would finish it earlier **and** `r` has
//!   waited less than `e(w)` (`now - a < e(w)`); the pool's deferral timer
//!   is then set at `a + e(w)` (or kept, if set earlier).
//! - When that timer fires, the free schedulable workers are asked again
//!   in routing order (idle Healthy first), each taking the backlog's
//!   oldest request or deferring it anew, until the backlog is empty, none
//!   is free, or one defers. A worker's estimate only decays between
//!   samples, so by then it is at most what `r` has waited: `r` is taken
//!   unless it was taken already and the next oldest is better left.
//!
//! So no request is stranded: while a schedulable worker has a free run
//! slot, the backlog's oldest request waits at most `e(w)` from its
//! acceptance for some free worker `w` (at most the longest run any
//! worker has reported, or `unsampled_latency`), whether or not the faster
//! worker ever frees (it may hang, or be removed), and whatever becomes of
//! the worker that deferred. A request that a circuit breaker pinned is
//! never left. A decision costs O(log n): one look at the first of the
//! finish order and at most one timer; a deferral's end asks each free
//! worker once (O(free workers), plus O(log n) per request it starts), so
//! that a free worker that can start nothing more (half-open with its
//! trial permits taken, or saturated) leaves the others to be asked.
//!
//! A worker that is free while another defers may be idle although it was
//! not asked (a new request asks only the worker it is routed to): it is
//! asked at the latest when the deferral ends, and a new request routed
//! to it asks it at once.
//!
//! [`RoutingPolicy::PeakEwma`]: crate::RoutingPolicy::PeakEwma

use std::time::Duration;

use super::Pool;
use crate::config::RoutingPolicy;
use crate::keys::WorkerKey;
use crate::routing::ewma::nanos;
use crate::time::Time;
use crate::timers::Timer;

impl<P: Clone> Pool<P> {
    /// Whether free workers may leave waiting requests to faster ones:
    /// `PeakEwma` with late binding.
    pub(super) fn defers_possible(&self) -> bool {
        self.config.routing == RoutingPolicy::PeakEwma && self.late_binding()
    }

    /// Whether `worker`, free, leaves the backlog's oldest request
    /// (accepted at `accepted_at`) to a worker expected to finish it
    /// sooner; if so, the pool's deferral timer is set to end it in time.
    pub(super) fn defers(&mut self, worker: WorkerKey, accepted_at: Time) -> bool {
        if !self.defers_possible() {
            return false;
        }
        let now = self.now;
        let Some(own) = self.latency_estimate(worker) else {
            return false;
        };
        if nanos(now - accepted_at) >= own {
            return false;
        }
        let Some((key, fast)) = self.router.first_to_finish() else {
            return false;
        };
        if fast == worker {
            return false;
        }
        let Some(fast_estimate) = self.latency_estimate(fast) else {
            return false;
        };
        let now_ns = nanos(now.since_epoch());
        let fast_finish = (key as f64).max(now_ns + fast_estimate);
        if fast_finish >= now_ns + own {
            return false;
        }
        // `own` exceeds what the request waited, so this is after `now`.
        let until = accepted_at + Duration::from_nanos(own.ceil() as u64);
        if self.deferral.is_none_or(|set| until < set) {
            self.deferral = Some(until);
            self.arm(until, Timer::Deferral);
        }
        true
    }

    /// The deferral timer fired: the free workers holding waiting
    /// requests, then (while the backlog is not empty) the idle ones, in
    /// routing order, look at what waits again, until none is left or one
    /// defers anew.
    pub(super) fn end_deferral(&mut self) {
        self.deferral = None;
        // Free workers holding requests first (they may be out of the idle
        // sets: their queue full, or not schedulable), then the idle ones,
        // each asked once, until one defers anew or nothing waits. A
        // worker that starts nothing (it may run no more: half-open with
        // its permits taken, or saturated) does not stop the others being
        // asked.
        let holding: Vec<WorkerKey> = self.router.iter_free_holding().collect();
        for worker in holding {
            if self.deferral.is_some() {
                return;
            }
            self.pump(worker);
            self.refresh_load(worker);
        }
        // (An idle worker asked with nothing waiting returns at once.)
        let idle: Vec<WorkerKey> = self.router.iter_idle().collect();
        for worker in idle {
            if self.deferral.is_some() {
                return;
            }
            self.pump(worker);
            self.refresh_load(worker);
        }
    }

    /// `worker`'s latency estimate at the current instant, in nanoseconds.
    fn latency_estimate(&self, worker: WorkerKey) -> Option<f64> {
        let slot = self.workers.get(worker.0)?;
        let unsampled = nanos(self.config.unsampled_latency);
        Some(
            slot.latency
                .estimate(self.now, self.config.ewma_decay, unsampled),
        )
    }

    /// Puts `worker` in the router's finish order while it is schedulable
    /// with no free run slot, at its oldest run's start plus twice its
    /// estimate; takes it out otherwise. O(log n + c) for `c` runs.
    pub(super) fn refresh_finish(&mut self, worker: WorkerKey) {
        let estimate = self.latency_estimate(worker);
        let requests = &self.requests;
        let Some(slot) = self.workers.get_mut(worker.0) else {
            return;
        };
        let busy = slot.schedulable && slot.running.len() >= slot.max_running;
        let key = busy
            .then(|| {
                let oldest = slot
                    .running
                    .iter()
                    .filter_map(|request| requests.get(request.0))
                    .filter_map(|entry| match entry.state {
                        super::RequestState::Running { started_at } => Some(started_at),
                        _ => None,
                    })
                    .min()?;
                let estimate = estimate?;
                // Saturates (`as` on a float) rather than wraps.
                Some((nanos(oldest.since_epoch()) + 2.0 * estimate) as u64)
            })
            .flatten();
        if key != slot.finish_key {
            self.router.set_finish(worker, slot.finish_key, key);
            slot.finish_key = key;
        }
    }
}
