//! Scheduling: which waiting request a worker runs next (its own queue,
//! or the late-binding backlog shared by every schedulable worker, oldest
//! first), and the refreshes that keep a worker's cached status and the
//! router's sets current after every change.

use std::collections::VecDeque;
use std::time::Duration;

use super::deferral::HeadChoice;
use super::timeouts::queue_wait_deadline;
use super::{Lifecycle, Place, Pool, Request, RequestState, Worker};
use crate::config::{PoolConfig, RoutingPolicy};
use crate::health::HealthCause;
use crate::keys::{RequestKey, WorkerKey};
use crate::output::{Action, Event};
use crate::protocol::WorkerHealthStatus;
use crate::routing::ewma::nanos;
use crate::routing::{Cost, Membership};
use crate::slab::Slab;
use crate::time::Time;

impl<P: Clone> Pool<P> {
    /// Recomputes a worker's status and eligibility after any change,
    /// reporting a status change with `cause`.
    pub(super) fn refresh(&mut self, worker: WorkerKey, cause: HealthCause) {
        self.refresh_status(worker, cause);
        self.refresh_load(worker);
    }

    /// Recomputes a worker's status and whether it is schedulable,
    /// reporting a status change with `cause`.
    pub(super) fn refresh_status(&mut self, worker: WorkerKey, cause: HealthCause) {
        let stopped = self.lifecycle == Lifecycle::Stopped;
        let now = self.now;
        let Some(slot) = self.workers.get_mut(worker.0) else {
            return;
        };
        let status = slot.health.status();
        if status != slot.status {
            self.events.push_back(Event::HealthChanged {
                worker,
                from: slot.status,
                to: status,
                cause,
                at: now,
            });
            slot.status = status;
        }
        let schedulable = !slot.removing && !stopped && status.is_schedulable();
        if schedulable != slot.schedulable {
            slot.schedulable = schedulable;
            if schedulable {
                self.schedulable += 1;
            } else {
                self.schedulable -= 1;
            }
        }
    }

    /// Recomputes a worker's eligibility after a change to its requests
    /// only (its status is as cached).
    pub(super) fn refresh_load(&mut self, worker: WorkerKey) {
        let queue_capacity = self.config.options.queue_capacity;
        let Some(slot) = self.workers.get_mut(worker.0) else {
            return;
        };
        let max_running = slot.max_running;
        let eligible = slot.schedulable && slot.has_room(slot.capacity, queue_capacity);
        let held = eligible && slot.last_resort();
        let idle = eligible && !held && slot.running.len() < slot.run_slots(max_running);
        let now = Membership {
            eligible,
            idle,
            preferred: idle && slot.status == WorkerHealthStatus::Healthy,
            held,
        };
        if now != slot.membership {
            self.router.set(worker, slot.membership, now);
            slot.membership = now;
        }
        let free_holding = slot.running.len() < max_running && slot.queued > 0;
        if free_holding != slot.free_holding {
            self.router
                .set_free_holding(worker, slot.free_holding, free_holding);
            slot.free_holding = free_holding;
        }
        if self.config.routing == RoutingPolicy::PeakEwma {
            self.refresh_finish(worker);
        }
    }

    /// Brings a worker's status up to date and starts the waiting requests
    /// it can take ([`pump`](Self::pump)), reporting a status change with
    /// `cause` before any request moves to it (its status decides whether
    /// it may take them).
    pub(super) fn refresh_and_pump(&mut self, worker: WorkerKey, cause: HealthCause) {
        if self.backlog_live > 0 {
            self.refresh_status(worker, cause);
        }
        self.pump(worker);
        self.refresh(worker, cause);
    }

    /// Starts queued requests while the worker has free run slots: from its
    /// own queue and, if it is schedulable and holds less than its
    /// capacity, the backlog, oldest first; one
    /// that is [too late to start](too_late_to_start) on this worker, or
    /// past its queue-wait limit, is answered `Timeout` instead.
    /// (Its cached `schedulable` flag must be current when the backlog is
    /// not empty: see [`refresh_and_pump`](Self::refresh_and_pump).)
    pub(super) fn pump(&mut self, worker: WorkerKey) {
        self.pump_after_submit(worker, None);
    }

    /// [`pump`](Self::pump), where `fresh` is a request accepted in this
    /// input: like any request submitted to a free worker, it starts
    /// whatever its budget (it is never too late to start).
    pub(super) fn pump_after_submit(&mut self, worker: WorkerKey, fresh: Option<RequestKey>) {
        loop {
            let Some(slot) = self.workers.get_mut(worker.0) else {
                return;
            };
            if slot.running.len() >= slot.run_slots(slot.max_running)
                || (slot.queue.is_empty() && self.backlog_live == 0)
            {
                return;
            }
            let holds_capacity = slot.running.len() + slot.queued >= slot.capacity;
            let requests = &self.requests;
            let queue_head = live_head(&mut slot.queue, requests, Some(worker));
            // A worker held at the ejection cap runs only its own queue.
            let backlog_head = (self.backlog_live > 0 && slot.takes_backlog())
                .then(|| live_head(&mut self.backlog, requests, None))
                .flatten()
                // As does one that holds its capacity (a refused request it
                // kept put its queue past the queue capacity): a request
                // from the backlog would put it past its capacity.
                .filter(|_| !holds_capacity);
            let mut from_backlog = match (queue_head, backlog_head) {
                (None, None) => return,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((_, queued_at)), Some((_, backlogged_at))) => backlogged_at < queued_at,
            };
            // An unpinned request may be left to a faster worker; the
            // backlog's head is the oldest of them.
            let unpinned_head = match (from_backlog, queue_head) {
                (true, _) => backlog_head,
                (false, Some((key, _))) => backlog_head
                    .filter(|_| self.requests.get(key.0).is_some_and(|entry| !entry.pinned)),
                (false, None) => None,
            };
            let mut instead = None;
            if let Some((_, accepted_at)) = unpinned_head {
                match self.head_choice(worker, accepted_at) {
                    HeadChoice::Run => {}
                    HeadChoice::Instead(younger) => instead = Some(younger),
                    HeadChoice::Leave => {
                        // Only what any worker may run is left to another:
                        // a pinned request at the head of its own queue
                        // runs.
                        let pinned = queue_head.is_some_and(|(key, _)| {
                            self.requests.get(key.0).is_some_and(|entry| entry.pinned)
                        });
                        if !pinned {
                            return;
                        }
                        from_backlog = false;
                    }
                }
            }
            let Some(slot) = self.workers.get_mut(worker.0) else {
                return;
            };
            // A younger request leaves its backlog entry behind, stale.
            let request = match instead {
                Some(younger) => {
                    from_backlog = true;
                    younger
                }
                None => {
                    let popped = if from_backlog {
                        self.backlog.pop_front()
                    } else {
                        slot.queue.pop_front()
                    };
                    let Some(Place { key, .. }) = popped else {
                        return;
                    };
                    key
                }
            };
            let last_run = slot.last_run;
            let now = self.now;
            let late = self
                .requests
                .get(request.0)
                .filter(|_| fresh != Some(request))
                .filter(|entry| {
                    too_late_to_start(entry.deadline, now, last_run)
                        || queue_wait_deadline(entry).is_some_and(|at| at <= now)
                })
                .map(|entry| entry.worker);
            match late {
                Some(origin) => {
                    self.expire_queued(request);
                    if origin != worker {
                        self.refresh_load(origin);
                    }
                }
                None => self.start_queued(request, worker, from_backlog),
            }
        }
    }

    /// Starts a queued request on `worker`, just taken off the front of
    /// the backlog or of that worker's queue. Run by another worker than
    /// the one it was queued on, it is reported `Requeued`.
    fn start_queued(&mut self, request: RequestKey, worker: WorkerKey, from_backlog: bool) {
        let now = self.now;
        let Some(entry) = self.requests.get_mut(request.0) else {
            return;
        };
        let from = entry.worker;
        entry.worker = worker;
        entry.state = RequestState::Running { started_at: now };
        entry.attempts = entry.attempts.saturating_add(1);
        let may_retry = (entry.retry, entry.attempts, entry.hedge, entry.hedges);
        let payload = entry.payload.clone();
        if !entry.pinned {
            self.leave_backlog();
        }
        if let Some(origin) = self.workers.get_mut(from.0) {
            origin.queued = origin.queued.saturating_sub(1);
            if from_backlog {
                sweep_queue(&mut origin.queue, origin.queued, &self.requests, from);
            }
        }
        if from != worker {
            self.counters.reassigned += 1;
            self.events.push_back(Event::Requeued {
                request,
                from,
                to: worker,
            });
            self.refresh_load(from);
        }
        if let Some(slot) = self.workers.get_mut(worker.0) {
            slot.running.push(request);
        }
        let may_retry = self.may_run_again(may_retry.0, may_retry.1)
            || self.may_hedge(may_retry.2, may_retry.3);
        self.actions.push_back(Action::Start {
            request,
            worker,
            payload,
            may_retry,
        });
        self.arm_phase_limit(request);
        self.arm_hedge(request);
    }

    /// An unpinned request stopped waiting (started or answered): one live
    /// backlog entry fewer; stale entries are swept once they outnumber the
    /// live ones (amortised O(1) per request).
    pub(super) fn leave_backlog(&mut self) {
        self.backlog_live = self.backlog_live.saturating_sub(1);
        if self.backlog.len() > self.backlog_live.saturating_mul(2).saturating_add(16) {
            let requests = &self.requests;
            self.backlog.retain(|place| place.is_live(requests, None));
        }
    }

    /// Whether queued requests may run on another worker than their own
    /// (every policy but the reference's round robin, unless turned off).
    pub(super) fn late_binding(&self) -> bool {
        self.config.late_binding && self.config.routing != RoutingPolicy::RoundRobin
    }

    /// Feeds a run of `worker` that ended at the current instant, started
    /// at `started_at`, to its latency estimate (under
    /// [`RoutingPolicy::PeakEwma`] only: the other policies never read it).
    /// A run that `failed` is charged at least the worker's estimate: a
    /// worker that fails fast does not look fast.
    pub(super) fn sample_latency(&mut self, worker: WorkerKey, started_at: Time, failed: bool) {
        if self.config.routing != RoutingPolicy::PeakEwma {
            return;
        }
        let (now, tau) = (self.now, self.config.ewma_decay);
        if let Some(slot) = self.workers.get_mut(worker.0) {
            if failed {
                slot.latency.observe_failure(now, now - started_at, tau);
            } else {
                slot.latency.observe(now, now - started_at, tau);
            }
        }
    }

    /// The worker the routing policy picks for a new request, if any is
    /// eligible: a load-aware policy draws two candidates from the pool's
    /// generator and compares their [`routing_cost`].
    pub(super) fn choose_worker(&mut self) -> Option<WorkerKey> {
        let (workers, config, now) = (&self.workers, &self.config, self.now);
        self.router.pick(&mut self.rng, |worker| {
            routing_cost(workers, config, now, worker)
        })
    }
}

/// What `worker` costs as a candidate of a load-aware pick: its load plus
/// one (`LeastLoaded`), or that times its latency estimate at `now`, at
/// least 1 ns (`PeakEwma`); multiplied by `100 / degraded_share_percent`
/// unless it is Healthy. A worker that is gone costs infinitely much.
fn routing_cost(workers: &Slab<Worker>, config: &PoolConfig, now: Time, worker: WorkerKey) -> Cost {
    let Some(slot) = workers.get(worker.0) else {
        return Cost {
            value: f64::INFINITY,
            healthy: false,
        };
    };
    let load = (slot.running.len() + slot.queued) as f64 + 1.0;
    let base = if config.routing == RoutingPolicy::PeakEwma {
        let unsampled = nanos(config.unsampled_latency);
        let latency = slot.latency.estimate(now, config.ewma_decay, unsampled);
        latency.max(1.0) * load
    } else {
        load
    };
    let healthy = slot.status == WorkerHealthStatus::Healthy;
    let value = if healthy {
        base
    } else {
        base * 100.0 / f64::from(config.degraded_share_percent.max(1))
    };
    Cost { value, healthy }
}

/// Whether a queued request with this deadline is answered `Timeout` rather
/// than started, at `now`, on a worker whose last successful request ran for
/// `last_run`: when its budget is spent, or when less of it is left than
/// that run took. Such a run would most likely end in a timeout, which
/// under overload is what the oldest requests (the ones workers reach
/// first) would all do: each would hold a worker until its deadline and
/// none would succeed. Answering them at once leaves the workers to
/// requests that can still finish. A worker with no successful run yet
/// starts any request with budget left.
pub(super) fn too_late_to_start(
    deadline: Option<Time>,
    now: Time,
    last_run: Option<Duration>,
) -> bool {
    deadline.is_some_and(|deadline| {
        let left = deadline - now;
        left.is_zero() || last_run.is_some_and(|run| left < run)
    })
}

/// The first live place of `queue` (a worker's, when `worker` names it;
/// else the backlog) and its request's arrival time, after dropping the
/// stale places before it (requests no longer waiting there, or waiting in
/// a later turn).
fn live_head<P>(
    queue: &mut VecDeque<Place>,
    requests: &Slab<Request<P>>,
    worker: Option<WorkerKey>,
) -> Option<(RequestKey, Time)> {
    while let Some(&place) = queue.front() {
        if place.is_live(requests, worker) {
            let arrived = requests.get(place.key.0).map(|entry| entry.accepted_at)?;
            return Some((place.key, arrived));
        }
        queue.pop_front();
    }
    None
}

/// Drops the stale keys of `worker`'s queue once they outnumber its `live`
/// ones (amortised O(1) per request).
pub(super) fn sweep_queue<P>(
    queue: &mut VecDeque<Place>,
    live: usize,
    requests: &Slab<Request<P>>,
    worker: WorkerKey,
) {
    if queue.len() > live.saturating_mul(2).saturating_add(16) {
        queue.retain(|place| place.is_live(requests, Some(worker)));
    }
}

#[cfg(test)]
mod tests {

    use crate::config::{PoolConfig, WorkerPoolOptions};
    use crate::keys::RequestKey;
    use crate::protocol::WorkerRequest;
    use crate::time::Time;
    use crate::Pool;

    fn request() -> WorkerRequest {
        super::super::test_request(None)
    }

    /// The stale keys a queue may hold for `live` live ones.
    fn stale_bound(live: usize) -> usize {
        2 * live + 16
    }

    #[test]
    fn stale_queue_and_backlog_keys_are_swept_once_they_outnumber_the_live_ones() {
        // One busy worker, late binding on: every queued request is both in
        // the worker's queue and in the backlog. An odd count, so that the
        // queue's length never equals the (even) sweep threshold.
        let config = PoolConfig::new(WorkerPoolOptions {
            queue_capacity: 101,
            ..WorkerPoolOptions::default()
        });
        let mut pool = Pool::new(config, Time::ZERO).unwrap();
        let worker = pool.add_worker(Time::ZERO).unwrap();
        pool.submit(Time::ZERO, &request(), ()).unwrap();
        let queued: Vec<RequestKey> = (0..101)
            .map(|_| pool.submit(Time::ZERO, &request(), ()).unwrap())
            .collect();
        // Cancelled newest first, so that no stale key reaches a queue's
        // front (where a pump would drop it): only the sweeps shorten them.
        // A few stale keys are left in place (the sweep is amortised)...
        let mut keys = queued.into_iter().rev();
        for key in keys.by_ref().take(2) {
            assert!(pool.cancel(Time::ZERO, key));
        }
        let slot = pool.workers.get(worker.0).unwrap();
        assert_eq!((slot.queue.len(), slot.queued), (101, 99));
        assert_eq!((pool.backlog.len(), pool.backlog_live), (101, 99));
        // ... and never more than the live ones allow.
        for key in keys {
            assert!(pool.cancel(Time::ZERO, key));
            pool.check_invariants().unwrap();
            let slot = pool.workers.get(worker.0).unwrap();
            assert!(
                slot.queue.len() <= stale_bound(slot.queued),
                "queue holds {} keys for {} live",
                slot.queue.len(),
                slot.queued
            );
            assert!(
                pool.backlog.len() <= stale_bound(pool.backlog_live),
                "backlog holds {} keys for {} live",
                pool.backlog.len(),
                pool.backlog_live
            );
        }
        let slot = pool.workers.get(worker.0).unwrap();
        assert_eq!((slot.queued, pool.backlog_live), (0, 0));
        assert!(slot.queue.len() <= stale_bound(0));
        assert!(pool.backlog.len() <= stale_bound(0));
    }
}
