//! One input: a handler declines a running request before starting it
//! (`Pool::handle_refusal`).

use std::cmp::Reverse;

use foreman_core::{RequestKey, Time, WorkerKey};

use super::books::{Context, ReqState};
use super::harness::Harness;
use super::trace::TraceEvent;
use super::Failure;

impl Harness {
    /// Reports that the handler of running attempt `key` (a request's own,
    /// or a hedge's) declined it before starting; returns the core's
    /// answer. A request's attempt (a hedge running alone is its request's
    /// only one) waits again (on another worker or its own), unanswered,
    /// its attempt uncounted; a request's own attempt racing a hedge ends
    /// the hedge first (aborted), then waits again the same way; a hedge
    /// racing its request's own attempt just ends, uncounted. The worker is
    /// saturated: it starts nothing until one of its runs ends, a probe
    /// answers, it is restarted or one probe interval has passed. A key
    /// that names no running attempt is left alone (returns `false`
    /// without calling the core).
    ///
    /// # Errors
    /// The first broken rule.
    pub fn refuse(&mut self, key: RequestKey) -> Result<bool, Failure> {
        let request = match self.hedges.get(&key.as_u64()).copied() {
            Some(hedge) if !hedge.started => return Ok(false),
            Some(hedge) if !hedge.alone => return self.refuse_racing_hedge(key, hedge.worker),
            Some(hedge) => hedge.request,
            None => key,
        };
        let Some(book) = self.requests.get(request.as_u64()).copied() else {
            return Ok(false);
        };
        if !matches!(book.state, ReqState::Running { aborted: false, .. }) {
            return Ok(false);
        }
        // A request's own key once its hedge runs alone names no attempt.
        let alone = book
            .sibling
            .and_then(|hedge| self.hedges.get(&hedge.as_u64()))
            .is_some_and(|hedge| hedge.alone);
        if alone && key == request {
            return Ok(false);
        }
        self.begin_input()?;
        let worker = book.worker;
        self.context = Context::Refuse { request, worker };
        let applied = self.pool.handle_refusal(self.clock, key);
        if !applied {
            return Err(self.fail(format!(
                "refusal of running #{} returned false, books: {book:?}",
                book.id
            )));
        }
        if alone {
            // The hedge's books return to its request, refused as such.
            if let Some(hedge) = book.sibling {
                self.hedges.remove(&hedge.as_u64());
            }
            if let Some(b) = self.requests.get_mut(request.as_u64()) {
                b.sibling = None;
            }
        }
        self.refused += 1;
        self.trace_refusal(request, false, worker);
        // Back in its worker's line (the front of it) until an event says
        // it moved; a `Start` there is checked against the saturation.
        self.remove_running(book.run_pos);
        let until = self.saturate_at(worker);
        self.recount_worker(worker, |b| {
            b.running -= 1;
            b.queued += 1;
            b.saturated = Some(until);
            // Its own queue may pass its capacity if it keeps the request.
            b.queue_limit = b.queue_limit.max(b.queued);
        });
        // A retry is pinned to the worker it started on; refused, it waits
        // as it was admitted: pinned only without late binding or when a
        // circuit breaker placed it.
        let pinned = !self.limits.late_binding || book.vetted;
        self.unpinned_queued += usize::from(!pinned);
        if !pinned {
            self.last_refusal = Some(self.seen);
        }
        let attempts = book.attempts.saturating_sub(1);
        if let Some(b) = self.requests.get_mut(request.as_u64()) {
            b.state = ReqState::Queued;
            b.pinned = pinned;
            b.waiting_since = self.seen;
            b.run_pos = usize::MAX;
            b.attempts = attempts;
        }
        // Its queue-wait limit applies again.
        if let Some(at) = book.queue_wait_at {
            self.deadlines.push(Reverse((at, request)));
        }
        self.drain()?;
        if let Some(after) = self.requests.get(request.as_u64()).copied() {
            let expected = match after.state {
                ReqState::Running { .. } => attempts + 1,
                _ => attempts,
            };
            if after.attempts != expected {
                return Err(self.fail(format!(
                    "refused #{} counts {} attempts, expected {expected} (refusals are not attempts)",
                    book.id, after.attempts
                )));
            }
        }
        self.finish_input()?;
        Ok(applied)
    }

    /// Which attempt of running `request`, picked by `index`, an
    /// [`Op::Refuse`](super::Op::Refuse) declines: its hedge when it runs
    /// alone, and every other time `index` wraps around the running list
    /// when it races the request's own attempt; else the request's own.
    pub(super) fn attempt_to_refuse(&self, request: RequestKey, index: u16) -> RequestKey {
        let Some(hedge) = self
            .requests
            .get(request.as_u64())
            .and_then(|book| book.sibling)
        else {
            return request;
        };
        let alone = self
            .hedges
            .get(&hedge.as_u64())
            .is_some_and(|run| run.alone);
        let wraps = usize::from(index) / self.running.len().max(1);
        if alone || wraps % 2 == 1 {
            hedge
        } else {
            request
        }
    }

    /// The refusal of a hedge racing its request's own attempt: the
    /// hedge ends (its `AttemptEnded` books it, see
    /// [`Harness::refused_attempt`]), the request runs on.
    fn refuse_racing_hedge(
        &mut self,
        hedge: RequestKey,
        worker: WorkerKey,
    ) -> Result<bool, Failure> {
        self.begin_input()?;
        self.context = Context::Refuse {
            request: hedge,
            worker,
        };
        if !self.pool.handle_refusal(self.clock, hedge) {
            return Err(self.fail(format!("refusal of racing hedge {hedge} returned false")));
        }
        self.refused += 1;
        self.trace_refusal(hedge, true, worker);
        self.drain()?;
        if self.hedges.contains_key(&hedge.as_u64()) {
            return Err(self.fail(format!("refused hedge {hedge} did not end")));
        }
        self.finish_input()?;
        Ok(true)
    }

    /// Books the end of a hedge's attempt on `worker` that its handler
    /// refused: not an attempt of its request's, and its worker is
    /// saturated.
    pub(super) fn refused_attempt(&mut self, request: RequestKey, worker: WorkerKey) {
        let until = self.saturate_at(worker);
        self.recount_worker(worker, |b| {
            b.running -= 1;
            b.saturated = Some(until);
        });
        if let Some(b) = self.requests.get_mut(request.as_u64()) {
            b.attempts -= 1;
        }
    }

    /// When a saturation from a refusal now expires, booked for
    /// [`Harness::expire_saturations`] (an expiry at `Time::MAX`, where
    /// saturated arithmetic lands, is never, as in the core).
    fn saturate_at(&mut self, worker: WorkerKey) -> Time {
        let until = self.seen + self.limits.probe_interval;
        if until != Time::MAX {
            self.saturations.push(Reverse((until, worker)));
        }
        until
    }

    /// Records a refusal of `key`'s attempt on `worker` in the trace.
    fn trace_refusal(&mut self, key: RequestKey, hedge: bool, worker: WorkerKey) {
        let request = self.owner(key);
        self.trace.push(TraceEvent::Refuse {
            at: self.seen,
            id: self.request_id(request).unwrap_or(0),
            hedge,
            worker: self.ordinal(worker).unwrap_or(u32::MAX),
        });
    }

    /// Ends, in the books, every saturation that expires by now: the
    /// wake-up about to be given to the core fires their timers.
    pub(super) fn expire_saturations(&mut self) {
        while let Some(Reverse((at, worker))) = self.saturations.peek().copied() {
            if at > self.seen {
                break;
            }
            self.saturations.pop();
            let live = self
                .workers
                .get(worker.as_u64())
                .is_some_and(|book| book.saturated == Some(at));
            if live {
                self.recount_worker(worker, |b| b.saturated = None);
            }
        }
    }
}
