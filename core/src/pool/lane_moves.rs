//! Moving a queued request between pools: for a driver that runs several
//! pools as one ("lanes", see [`lanes`](crate::lanes)), a queued request
//! leaves one pool unanswered ([`Pool::release_queued`]) and another takes
//! it in ([`Pool::adopt`]) with its acceptance time, deadline and limits,
//! so it is answered exactly once and its queue time counts from its first
//! acceptance. The pools' clocks must be the same clock (a driver feeds
//! every lane the same `now`).

use std::fmt;

use super::scheduling::{sweep_queue, too_late_to_start};
use super::{Lifecycle, Pool, Request, RequestState};
use crate::deadlines::PhaseLimits;
use crate::health::HealthCause;
use crate::keys::{RequestKey, WorkerKey};
use crate::output::{Action, Answer, Event, Phase};
use crate::protocol::{WorkerErrorCode, WorkerPoolError, WorkerProtocolError};
use crate::time::Time;

/// A queued request a pool released unanswered
/// ([`Pool::release_queued`]): another pool of the same driver adopts it
/// ([`Pool::adopt`]), or, when none can, the pool that released it answers
/// it ([`Pool::answer_released`]). Dropping it loses the request's answer.
#[must_use = "a released request is answered only once a pool adopts it or answers it"]
pub struct Released<P> {
    key: RequestKey,
    worker: WorkerKey,
    payload: P,
    accepted_at: Time,
    deadline: Option<Time>,
    limits: PhaseLimits,
    retry: bool,
    hedge: bool,
    hedges: u32,
}

impl<P> Released<P> {
    /// Its key in the pool that released it (no longer live there).
    pub fn key(&self) -> RequestKey {
        self.key
    }

    /// The payload given at its submit.
    pub fn payload(&self) -> &P {
        &self.payload
    }

    /// When it was first accepted; its queue time counts from here.
    pub fn accepted_at(&self) -> Time {
        self.accepted_at
    }

    /// The worker whose queue it left in the pool that released it.
    pub fn worker(&self) -> WorkerKey {
        self.worker
    }

    /// Its overall deadline, unchanged by the move.
    pub fn deadline(&self) -> Option<Time> {
        self.deadline
    }
}

impl<P> Released<P> {
    /// A request taken off its pool's books, released as `key` of `worker`.
    fn of(entry: Request<P>, key: RequestKey, worker: WorkerKey) -> Self {
        Released {
            key,
            worker,
            accepted_at: entry.accepted_at,
            deadline: entry.deadline,
            limits: entry.limits,
            retry: entry.retry,
            hedge: entry.hedge,
            hedges: entry.hedges,
            payload: entry.payload,
        }
    }
}

impl<P> fmt::Debug for Released<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Released")
            .field("key", &self.key)
            .field("accepted_at", &self.accepted_at)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<P: Clone> Pool<P> {
    /// Unpinned requests waiting in a queue, which any schedulable worker
    /// may run and [`release_queued`](Self::release_queued) may move.
    pub fn movable_requests(&self) -> usize {
        self.backlog_live
    }

    /// Workers that take new requests (not removing, status schedulable),
    /// whether or not they have room.
    pub fn schedulable_workers(&self) -> usize {
        self.schedulable
    }

    /// Schedulable workers other than `worker`: how many would be left
    /// once it is removed.
    pub fn schedulable_besides(&self, worker: WorkerKey) -> usize {
        let counted = self
            .workers
            .get(worker.0)
            .is_some_and(|slot| slot.schedulable);
        self.schedulable.saturating_sub(usize::from(counted))
    }

    /// Takes the oldest unpinned queued request out of this pool without
    /// answering it, for another pool of the same driver to
    /// [`adopt`](Self::adopt): it leaves its queue and the backlog, its
    /// worker's room is freed, and it is counted in
    /// [`Counters::moved_out`](crate::Counters::moved_out). Only a request
    /// some worker could still start moves (budget left, its queue-wait
    /// limit not passed); a pinned request (a circuit breaker chose its
    /// worker, or late binding is off) never moves.
    ///
    /// Returns `None` (and does nothing) when no request qualifies or the
    /// pool is shutting down.
    pub fn release_queued(&mut self, now: Time) -> Option<Released<P>> {
        let now = self.observe(now);
        if self.lifecycle != Lifecycle::Running {
            return None;
        }
        let key = self.backlog.iter().find_map(|place| {
            let entry = self.requests.get(place.key.0)?;
            let movable = place.is_live(&self.requests, None)
                && !entry.pinned
                && !entry.vetted
                && !too_late_to_start(entry.deadline, now, None)
                && queue_wait_open(entry.accepted_at, entry.limits, now);
            movable.then_some(place.key)
        })?;
        let entry = self.requests.remove(key.0)?;
        self.leave_backlog();
        if let Some(slot) = self.workers.get_mut(entry.worker.0) {
            slot.queued = slot.queued.saturating_sub(1);
            sweep_queue(&mut slot.queue, slot.queued, &self.requests, entry.worker);
        }
        self.counters.moved_out += 1;
        self.after_worker_change(entry.worker, HealthCause::Success);
        let worker = entry.worker;
        Some(Released::of(entry, key, worker))
    }

    /// Takes in a request another pool of the same driver released: it
    /// goes to a worker as a new request would (started at once on a free
    /// worker while its budget allows, else queued and late-bound; a free
    /// worker that may not start it, its budget too short for the worker's
    /// last run or its queue-wait limit passed, answers it `Timeout` as it
    /// answers such a request of its own queue), keeping
    /// its acceptance time, deadline and limits, and is counted in
    /// [`Counters::moved_in`](crate::Counters::moved_in), not as submitted
    /// or accepted (the releasing pool counted it); [`Event::Adopted`]
    /// (not `Accepted`) names the worker that took it.
    ///
    /// # Errors
    /// Hands the request back when this pool cannot take it (shutting
    /// down, or no schedulable worker with room): the driver offers it to
    /// another pool or has the releasing pool
    /// [`answer_released`](Self::answer_released) it.
    pub fn adopt(&mut self, now: Time, released: Released<P>) -> Result<RequestKey, Released<P>> {
        let now = self.observe(now.max(released.accepted_at));
        if self.lifecycle != Lifecycle::Running || !self.requests.has_room() {
            return Err(released);
        }
        let chosen = self
            .choose_worker()
            .or_else(|| self.router.candidates().next());
        let Some((worker, last_run)) =
            chosen.and_then(|worker| Some((worker, self.workers.get(worker.0)?.last_run)))
        else {
            return Err(released);
        };
        let (released_key, released_worker) = (released.key, released.worker);
        let may_start = !too_late_to_start(released.deadline, now, last_run)
            && queue_wait_open(released.accepted_at, released.limits, now);
        let entry = Request {
            worker,
            state: RequestState::Queued,
            pinned: !self.late_binding(),
            vetted: false,
            payload: released.payload,
            accepted_at: released.accepted_at,
            deadline: released.deadline,
            attempts: 0,
            turn: 0,
            retry: released.retry,
            hedge: released.hedge,
            hedges: released.hedges,
            hedge_at: None,
            sibling: None,
            limits: released.limits,
            expired: None,
        };
        let (key, pump) = match self.enter(now, entry, may_start) {
            Ok(entered) => entered,
            Err(entry) => return Err(Released::of(entry, released_key, released_worker)),
        };
        self.counters.moved_in += 1;
        self.router.picked(worker);
        self.events.push_back(Event::Adopted {
            request: key,
            worker,
        });
        self.settle_entered(worker, key, pump);
        // A free worker that reaches a request it could not start answers
        // it, as it answers one from its own queue.
        let free = self
            .workers
            .get(worker.0)
            .is_some_and(|slot| slot.running.len() < slot.run_slots(slot.max_running));
        if !may_start && free {
            self.expire_queued(key);
            self.after_worker_change(worker, HealthCause::Success);
        }
        Ok(key)
    }

    /// Answers a request this pool released that no pool adopted: as a
    /// single pool answers a queued request no worker can take over (a
    /// retryable `Unavailable` error, counted in
    /// [`Counters::unroutable_after_removal`](crate::Counters::unroutable_after_removal)),
    /// or, if `cancelled` (its caller gave up while it moved), `Cancelled`,
    /// counted in [`Counters::cancelled_queued`](crate::Counters::cancelled_queued).
    /// Counted in `moved_in` too, balancing its `moved_out`. The answer
    /// names the request's key and worker from before its release
    /// (`released.key()`).
    pub fn answer_released(&mut self, now: Time, released: Released<P>, cancelled: bool) {
        let now = self.observe(now.max(released.accepted_at));
        self.counters.moved_in += 1;
        let error = if cancelled {
            self.counters.cancelled_queued += 1;
            WorkerProtocolError::new(
                WorkerErrorCode::Cancelled,
                "request cancelled by the caller",
                false,
            )
        } else {
            self.counters.unroutable_after_removal += 1;
            WorkerProtocolError::new(
                WorkerErrorCode::Unavailable,
                "no worker of the pool could take the queued request",
                true,
            )
        };
        self.actions.push_back(Action::Answer(Answer {
            request: released.key,
            worker: released.worker,
            limit: None,
            result: Err(WorkerPoolError::Worker(error)),
            phase: Phase::Queued,
            queued_for: now - released.accepted_at,
            ran_for: None,
            attempts: 0,
            payload: released.payload,
        }));
    }
}

/// Whether a request accepted at `accepted_at` with `limits` may still
/// wait (its queue-wait limit, if any, has not passed at `now`).
fn queue_wait_open(accepted_at: Time, limits: PhaseLimits, now: Time) -> bool {
    limits
        .queue_wait
        .is_none_or(|limit| accepted_at.saturating_add(limit) > now)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Value;

    use crate::config::{PoolConfig, WorkerPoolOptions};
    use crate::output::{Action, Answer, Event, Phase};
    use crate::time::Time;
    use crate::{Pool, RequestKey, WorkerKey};

    fn ms(ms: u64) -> Time {
        Time::ZERO + Duration::from_millis(ms)
    }

    fn pool(workers: usize) -> (Pool<u32>, Vec<WorkerKey>) {
        let config =
            PoolConfig::new(WorkerPoolOptions::default()).with_max_concurrency_per_worker(1);
        let mut pool = Pool::new(config, Time::ZERO).expect("valid options");
        let keys = (0..workers)
            .map(|_| pool.add_worker(Time::ZERO).expect("a worker"))
            .collect();
        (pool, keys)
    }

    fn submit(pool: &mut Pool<u32>, at: Time, timeout_ms: u64, payload: u32) -> RequestKey {
        let request = super::super::test_request(Some(timeout_ms));
        let key = pool.submit(at, &request, payload).expect("accepted");
        pool.check_invariants().expect("invariants");
        key
    }

    /// The starts (request, payload) and answers a pool asked for.
    fn drain(pool: &mut Pool<u32>) -> (Vec<(RequestKey, u32)>, Vec<Answer<u32>>) {
        let (mut starts, mut answers) = (Vec::new(), Vec::new());
        while let Some(action) = pool.poll_action() {
            match action {
                Action::Start {
                    request, payload, ..
                } => starts.push((request, payload)),
                Action::Answer(answer) => answers.push(answer),
                _ => {}
            }
        }
        while pool.poll_event().is_some() {}
        pool.check_invariants().expect("invariants");
        (starts, answers)
    }

    #[test]
    fn a_moved_request_runs_in_the_adopting_pool_and_keeps_its_queue_time() {
        let (mut a, a_workers) = pool(1);
        let (mut b, b_workers) = pool(1);
        submit(&mut a, ms(0), 10_000, 1);
        submit(&mut a, ms(0), 10_000, 2);
        drain(&mut a);
        assert_eq!(a.movable_requests(), 1);

        let released = a.release_queued(ms(10)).expect("the queued request");
        assert_eq!(*released.payload(), 2);
        assert_eq!(released.accepted_at(), ms(0));
        assert_eq!(released.deadline(), Some(ms(10_000)));
        assert_eq!(released.worker(), a_workers[0]);
        let (starts, answers) = drain(&mut a);
        assert!(
            starts.is_empty() && answers.is_empty(),
            "released unanswered"
        );
        assert_eq!((a.pending(), a.movable_requests()), (1, 0));

        let key = b.adopt(ms(10), released).expect("an idle worker");
        let events: Vec<Event> = std::iter::from_fn(|| b.poll_event()).collect();
        assert!(
            events.contains(&Event::Adopted {
                request: key,
                worker: b_workers[0],
            }),
            "the adoption is reported, naming its worker: {events:?}"
        );
        assert!(
            !events
                .iter()
                .any(|event| matches!(event, Event::Accepted { .. })),
            "an adopted request is not accepted again: {events:?}"
        );
        let (starts, _) = drain(&mut b);
        assert_eq!(starts, [(key, 2)], "started at once on the idle worker");
        assert!(b.handle_completion(ms(30), key, Ok(Value::Null)));
        let (_, answers) = drain(&mut b);
        let [answer] = answers.as_slice() else {
            panic!("one answer: {answers:?}");
        };
        assert_eq!(answer.payload, 2);
        assert_eq!(answer.queued_for, Duration::from_millis(10));
        assert_eq!(answer.ran_for, Some(Duration::from_millis(20)));

        // Summed over both pools the counters are a single pool's.
        let mut sum = *a.counters();
        sum.add(b.counters());
        assert_eq!((sum.submitted, sum.accepted, sum.succeeded), (2, 2, 1));
        assert_eq!((sum.moved_out, sum.moved_in), (1, 1));
        assert_eq!(
            sum.accepted,
            sum.answered() + (a.pending() + b.pending()) as u64
        );
    }

    #[test]
    fn an_adopted_request_keeps_its_deadline() {
        let (mut a, _) = pool(1);
        let (mut b, _) = pool(1);
        submit(&mut a, ms(0), 10_000, 1);
        submit(&mut a, ms(0), 50, 2);
        submit(&mut b, ms(0), 10_000, 3);
        drain(&mut a);
        drain(&mut b);
        let released = a.release_queued(ms(5)).expect("the queued request");
        // B's worker is busy: the request waits there, late-bound.
        let key = b.adopt(ms(5), released).expect("room on the busy worker");
        assert_eq!(b.movable_requests(), 1);
        assert_eq!(b.poll_timeout().map(|(at, _)| at), Some(ms(50)));
        b.handle_timeout(ms(50));
        let (_, answers) = drain(&mut b);
        let [answer] = answers.as_slice() else {
            panic!("one answer: {answers:?}");
        };
        assert_eq!((answer.request, answer.phase), (key, Phase::Queued));
        assert_eq!(answer.queued_for, Duration::from_millis(50));
        assert_eq!(b.counters().timed_out_queued, 1);
    }

    #[test]
    fn only_unpinned_requests_with_budget_left_move() {
        let (mut a, _) = pool(1);
        assert!(a.release_queued(ms(0)).is_none(), "nothing queued");
        submit(&mut a, ms(0), 10_000, 1);
        submit(&mut a, ms(0), 20, 2);
        drain(&mut a);
        // Its budget is spent: its own pool answers it.
        assert!(a.release_queued(ms(20)).is_none());
        let pinned = PoolConfig::new(WorkerPoolOptions::default()).with_late_binding(false);
        let mut p: Pool<u32> = Pool::new(pinned, Time::ZERO).expect("valid");
        p.add_worker(Time::ZERO).expect("a worker");
        for payload in 0..3 {
            submit(&mut p, ms(0), 10_000, payload);
        }
        drain(&mut p);
        assert!(p.release_queued(ms(1)).is_none(), "pinned requests stay");
        assert_eq!(p.counters().moved_out, 0);
    }

    #[test]
    fn a_request_no_pool_adopts_is_answered_once_by_its_own() {
        let (mut a, _) = pool(1);
        let (mut empty, _) = pool(0);
        submit(&mut a, ms(0), 10_000, 1);
        let queued = submit(&mut a, ms(0), 10_000, 2);
        drain(&mut a);
        let released = a.release_queued(ms(1)).expect("the queued request");
        let released = empty.adopt(ms(1), released).expect_err("no worker");
        drain(&mut empty);
        a.answer_released(ms(2), released, false);
        let (_, answers) = drain(&mut a);
        let [answer] = answers.as_slice() else {
            panic!("one answer: {answers:?}");
        };
        assert_eq!((answer.request, answer.payload), (queued, 2));
        assert!(answer.result.is_err());
        let counters = a.counters();
        assert_eq!(counters.unroutable_after_removal, 1);
        assert_eq!(counters.accepted, counters.answered() + a.pending() as u64);

        // A pool shutting down neither releases nor adopts.
        let (mut b, _) = pool(2);
        submit(&mut b, ms(0), 10_000, 3);
        submit(&mut b, ms(0), 10_000, 4);
        submit(&mut b, ms(0), 10_000, 5);
        drain(&mut b);
        b.begin_shutdown(ms(1), None);
        assert!(b.release_queued(ms(1)).is_none());
    }
}
