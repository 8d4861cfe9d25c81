//! Latency-aware late binding under [`RoutingPolicy::PeakEwma`]: a worker
//! with a free run slot may leave the backlog's oldest request to a busy
//! worker expected to finish it sooner, or run a younger request that the
//! faster workers would not finish sooner, so that a slow worker stays
//! idle while fast ones take the work, and the work a slow worker does
//! take is a request that waited little.
//!
//! The rule, when a worker `w` could take the backlog's oldest request `r`
//! (accepted at `a`), at `now`, with `e(x)` a worker's latency estimate:
//! - `w` would finish `r` at `now + e(w)`;
//! - the busy worker `f` first in the router's finish order (its key `k`:
//!   the start `s` of its oldest run plus `2 e(f)`) would finish it at
//!   `max(k, now + e(f))` (it frees at `s + e(f)`, or, overdue, not before
//!   `now`, then runs `r`); if that is not earlier, `w` runs `r`;
//! - else, while `f` is *trusted* (`now < k`: not overdue by a whole
//!   estimate), `w` runs the request the faster workers would reach only
//!   once `w` could have finished it: the first live backlog entry from
//!   position `ceil(slower × R)`, `slower` how much later `w` would finish
//!   `r` than `f` and `R` the throughput of the other schedulable workers
//!   (the router's sum of `1 / estimate`, less `w`'s), scaled by the
//!   backlog's share of stale entries, if the backlog holds that many;
//! - else `w` leaves `r` to `f` while `r` has waited less than `e(w)`
//!   (timer at `a + e(w)`), or, `f` trusted, less than
//!   [`unsampled_latency`](crate::PoolConfig::unsampled_latency) (timer at
//!   `min(k, a + unsampled_latency)`); the pool's one deferral timer is set
//!   there (or kept, if set earlier); otherwise `w` runs `r`.
//! - When that timer fires, the free workers holding requests, then the
//!   idle ones (Healthy first), are asked again in slot order, each
//!   running a request or deferring anew, until the backlog is empty or
//!   one defers.
//!
//! So no request is stranded: while a schedulable worker `w` has a free
//! run slot, the backlog's oldest request waits at most
//! `max(e(w), unsampled_latency)` from its acceptance (at most the longest
//! run any worker has reported, or `unsampled_latency`), whether or not the
//! faster worker ever frees (it may hang, or be removed), and whatever
//! becomes of the worker that deferred. The oldest request is passed over
//! for a younger one only while the faster worker is trusted, so a worker
//! that hangs starves no request for longer than twice its estimate. A
//! request that a circuit breaker pinned is never left, and a worker held
//! at the ejection cap takes nothing from the backlog (nor counts in the
//! finish order or the throughput). A decision costs O(1) plus O(log n):
//! one look at the first of the finish order, one index into the backlog
//! and at most [`YOUNGER_SCAN`] entries past it, and at most one timer; a
//! deferral's end walks the router's sets from slot to slot (O(log n)
//! each, nothing collected), asking each free worker once, so that a free
//! worker that can start nothing more (half-open with its trial permits
//! taken, or saturated) leaves the others to be asked.
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
use crate::keys::{RequestKey, WorkerKey};
use crate::routing::ewma::nanos;
use crate::routing::Router;
use crate::time::Time;
use crate::timers::Timer;

/// How many backlog entries a search for a younger request looks at past
/// its starting position before it gives up (stale entries are swept once
/// they outnumber the live ones, so this many are rarely all stale).
const YOUNGER_SCAN: usize = 8;

/// What a free worker does with the backlog's oldest request
/// ([`Pool::head_choice`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HeadChoice {
    /// Runs it.
    Run,
    /// Leaves it to a faster busy worker, within the deferral bound.
    Leave,
    /// Runs this younger waiting request instead.
    Instead(RequestKey),
}

impl<P: Clone> Pool<P> {
    /// Whether free workers may leave waiting requests to faster ones:
    /// `PeakEwma` with late binding.
    pub(super) fn defers_possible(&self) -> bool {
        self.config.routing == RoutingPolicy::PeakEwma && self.late_binding()
    }

    /// What `worker`, free, does with the backlog's oldest request
    /// (accepted at `accepted_at`): runs it, leaves it to a worker expected
    /// to finish it sooner (the pool's deferral timer is then set to end
    /// that in time), or runs a younger waiting request instead, one it
    /// would finish no later after its arrival than that faster worker
    /// would finish the oldest after its own.
    pub(super) fn head_choice(&mut self, worker: WorkerKey, accepted_at: Time) -> HeadChoice {
        if !self.defers_possible() {
            return HeadChoice::Run;
        }
        let now = self.now;
        let Some(own) = self.latency_estimate(worker) else {
            return HeadChoice::Run;
        };
        let Some((key, fast)) = self.router.first_to_finish() else {
            return HeadChoice::Run;
        };
        if fast == worker {
            return HeadChoice::Run;
        }
        let Some(fast_estimate) = self.latency_estimate(fast) else {
            return HeadChoice::Run;
        };
        let now_ns = nanos(now.since_epoch());
        let fast_finish = (key as f64).max(now_ns + fast_estimate);
        let slower_by = now_ns + own - fast_finish;
        if slower_by <= 0.0 {
            return HeadChoice::Run;
        }
        let waited = nanos(now - accepted_at);
        // The faster worker is trusted (the oldest request is passed over
        // for a younger one, or left to it however long it waited) only
        // until it is overdue: past its finish-order instant, which is
        // what a run it took next would take. So a worker that hangs
        // starves no request.
        let trusted = now.since_epoch().as_nanos() < u128::from(key);
        if trusted {
            if let Some(younger) = self.younger_for(worker, slower_by) {
                return HeadChoice::Instead(younger);
            }
        }
        let unsampled = nanos(self.config.unsampled_latency);
        let until = if waited < own {
            // `own` exceeds what the request waited: after `now`.
            accepted_at + Duration::from_nanos(own.ceil() as u64)
        } else if trusted && waited < unsampled {
            // Both after `now`.
            let overdue_at = Time::ZERO + Duration::from_nanos(key);
            overdue_at.min(accepted_at + self.config.unsampled_latency)
        } else {
            return HeadChoice::Run;
        };
        if self.deferral.is_none_or(|set| until < set) {
            self.deferral = Some(until);
            self.arm(until, Timer::Deferral);
        }
        HeadChoice::Leave
    }

    /// A waiting request that `worker`, `slower_by` nanoseconds slower
    /// than the first faster worker to finish, would finish no later than
    /// the faster workers would reach it: the first live backlog entry from
    /// the position they reach in `slower_by` (their summed throughput, the
    /// router's `rate_sum` less this worker's own), scaled by the backlog's
    /// share of stale entries, looking at most [`YOUNGER_SCAN`] entries
    /// on; O(1).
    fn younger_for(&self, worker: WorkerKey, slower_by: f64) -> Option<RequestKey> {
        let own_rate = self.router.rate(worker);
        let faster_rate = (self.router.rate_sum() - own_rate).max(0.0);
        let reached = (slower_by * faster_rate).ceil();
        if !(reached >= 1.0 && reached < self.backlog_live as f64) {
            return None;
        }
        let stale_share = self.backlog.len() as f64 / self.backlog_live.max(1) as f64;
        // Saturates (`as` on a float) rather than wraps.
        let from = (reached * stale_share) as usize;
        let requests = &self.requests;
        self.backlog
            .range(from.min(self.backlog.len())..)
            .take(YOUNGER_SCAN)
            .find(|place| place.is_live(requests, None))
            .map(|place| place.key)
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
        // asked. The sets are walked by slot index, each from where the last
        // worker asked stood, so a worker is asked at most once per set
        // however the sets change meanwhile, and nothing is collected.
        if !self.ask_each(false, |router, from| router.free_holding_from(from)) {
            return;
        }
        // (An idle worker asked with nothing waiting returns at once.)
        for healthy in [true, false] {
            if !self.ask_each(true, |router, from| router.idle_from(healthy, from)) {
                return;
            }
        }
    }

    /// Asks the workers `next` finds (the first at or after a slot index)
    /// in slot order to run what waits, each once, until one defers, or,
    /// when `backlog_only`, the backlog is empty (then `false`).
    fn ask_each(
        &mut self,
        backlog_only: bool,
        next: impl Fn(&Router, u32) -> Option<WorkerKey>,
    ) -> bool {
        let mut from = 0;
        while let Some(worker) = next(&self.router, from) {
            if self.deferral.is_some() || (backlog_only && self.backlog_live == 0) {
                return false;
            }
            self.pump(worker);
            self.refresh_load(worker);
            let Some(after) = worker.index().checked_add(1) else {
                break;
            };
            from = after;
        }
        true
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
        let busy = slot.takes_backlog() && slot.running.len() >= slot.max_running;
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
        let rate = if slot.takes_backlog() {
            slot.latency.rate()
        } else {
            0.0
        };
        self.router.set_rate(worker, rate);
    }
}
