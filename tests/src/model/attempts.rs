//! What the harness checks and books for the events of second attempts:
//! a retry on another worker, a hedge beside the first attempt, and an
//! attempt that ends without answering its request.

use std::cmp::Reverse;

use foreman_core::{RequestKey, WorkerKey};

use super::books::{too_late_to_start, Context, HedgeBook, Lifecycle, ReqState};
use super::harness::Harness;
use super::operations::Outcome;
use super::trace::TraceEvent;
use super::Failure;

impl Harness {
    /// A retry: during the completion of a request's attempt with a
    /// retryable failure, the policy covering it, attempts left, the pool
    /// running and its deadline ahead, it leaves the worker that failed
    /// (charged with the failure) for another schedulable worker with a
    /// free run slot, whose `Start` follows (booked here as queued there,
    /// pinned, for that `Start` to find).
    pub(super) fn on_retried(
        &mut self,
        request: RequestKey,
        from: WorkerKey,
        to: WorkerKey,
        attempt: u32,
    ) -> Result<(), Failure> {
        let Some(book) = self.requests.get(request.as_u64()).copied() else {
            return Err(Failure(format!("Retried unknown request {request}")));
        };
        ensure!(
            matches!(
                self.context,
                Context::Complete {
                    request: r,
                    outcome: Outcome::Failure { retryable: true },
                } if self.owner(r) == request
            ),
            "#{} retried outside its retryable failure: {:?}",
            book.id,
            self.context
        );
        ensure!(
            book.worker == from && matches!(book.state, ReqState::Running { aborted: false, .. }),
            "#{} retried from {from} but books say {book:?}",
            book.id
        );
        ensure!(
            book.retry && book.attempts < self.limits.max_attempts,
            "#{} retried after {} attempts (covered {}, {} allowed)",
            book.id,
            book.attempts,
            book.retry,
            self.limits.max_attempts
        );
        ensure!(
            attempt == book.attempts + 1,
            "#{} retried as attempt {attempt} after {}",
            book.id,
            book.attempts
        );
        ensure!(
            self.lifecycle == Lifecycle::Running,
            "#{} retried while {:?}",
            book.id,
            self.lifecycle
        );
        ensure!(
            book.deadline.is_none_or(|deadline| deadline > self.seen),
            "#{} retried at {} past its deadline {:?}",
            book.id,
            self.seen,
            book.deadline
        );
        ensure!(to != from, "#{} retried on the worker that failed", book.id);
        let target = self.worker_book(to, "Retried")?;
        let (schedulable, open, _) = self.worker_flags(&target);
        ensure!(
            schedulable && open && target.running < target.max_running,
            "#{} retried onto {to}, which has no free run slot: {target:?}",
            book.id
        );
        if let Some(worker) = self.workers.get_mut(from.as_u64()) {
            worker.health.fail();
        }
        self.touch_health(from);
        // The failed attempt's run is a sample of its worker's latency,
        // which bounds a deferral as any finished run does.
        if let ReqState::Running { started_at, .. } = book.state {
            self.longest_any_run = self.longest_any_run.max(self.seen - started_at);
        }
        self.remove_running(book.run_pos);
        // The failed run is over: as any run's end, it ends the worker's
        // saturation.
        self.recount_worker(from, |b| b.end_run());
        self.recount_worker(to, |b| b.queued += 1);
        // A hedge that ran on alone is over: the retry runs under the
        // request's own key.
        if let Some(hedge) = book.sibling {
            self.hedges.remove(&hedge.as_u64());
        }
        self.queue_grew(to);
        if let Some(b) = self.requests.get_mut(request.as_u64()) {
            b.worker = to;
            b.state = ReqState::Queued;
            b.pinned = true;
            b.run_pos = usize::MAX;
            b.sibling = None;
        }
        self.retried = Some(request);
        self.check_limits(to)?;
        let from_ordinal = self.ordinal(from).unwrap_or(u32::MAX);
        self.trace.push(TraceEvent::Retried {
            id: book.id,
            from: from_ordinal,
            to: target.ordinal,
        });
        Ok(())
    }

    /// The request an attempt's key belongs to: a hedge's request, or
    /// the key itself.
    pub(super) fn owner(&self, key: RequestKey) -> RequestKey {
        self.hedges
            .get(&key.as_u64())
            .map_or(key, |hedge| hedge.request)
    }

    /// A hedge: when the pool's hedge timer fires, a running request the
    /// policy covers, with hedges left and none running, the pool running
    /// and its deadline ahead (by at least the target's last run), not
    /// before the fixed delay since its attempt started, gets a second
    /// attempt on another schedulable worker with a free run slot, whose
    /// `Start` (under the hedge's key) follows.
    pub(super) fn on_hedged(
        &mut self,
        request: RequestKey,
        hedge: RequestKey,
        from: WorkerKey,
        to: WorkerKey,
        attempt: u32,
    ) -> Result<(), Failure> {
        let Some(book) = self.requests.get(request.as_u64()).copied() else {
            return Err(Failure(format!("Hedged unknown request {request}")));
        };
        ensure!(
            self.context == Context::Timeout,
            "#{} hedged outside a timer: {:?}",
            book.id,
            self.context
        );
        let ReqState::Running {
            started_at,
            aborted: false,
        } = book.state
        else {
            return Err(Failure(format!("#{} hedged while {book:?}", book.id)));
        };
        ensure!(
            book.worker == from && book.sibling.is_none(),
            "#{} hedged from {from} but books say {book:?}",
            book.id
        );
        ensure!(
            book.hedge && book.hedges < self.limits.max_hedges,
            "#{} hedged after {} hedges (covered {}, {} allowed)",
            book.id,
            book.hedges,
            book.hedge,
            self.limits.max_hedges
        );
        ensure!(
            self.limits
                .hedge_delay
                .is_none_or(|delay| started_at.saturating_add(delay) <= self.seen),
            "#{} hedged at {}, before its delay from {started_at}",
            book.id,
            self.seen
        );
        ensure!(
            attempt == book.attempts + 1,
            "#{} hedged as attempt {attempt} after {}",
            book.id,
            book.attempts
        );
        ensure!(
            self.lifecycle == Lifecycle::Running,
            "#{} hedged while {:?}",
            book.id,
            self.lifecycle
        );
        ensure!(to != from, "#{} hedged on its own worker", book.id);
        // (Its free run slot is checked at its `Start`: an answer of this
        // input, drained after its events, may have freed it.)
        let target = self.worker_book(to, "Hedged")?;
        let (schedulable, _, _) = self.worker_flags(&target);
        ensure!(
            schedulable,
            "#{} hedged onto unschedulable {to}: {target:?}",
            book.id
        );
        ensure!(
            !too_late_to_start(book.deadline, self.seen, target.last_run),
            "#{} hedged onto {to} at {} with deadline {:?}, but its last run took {:?}",
            book.id,
            self.seen,
            book.deadline,
            target.last_run
        );
        let fresh = self
            .hedges
            .insert(
                hedge.as_u64(),
                HedgeBook {
                    request,
                    worker: to,
                    started_at: self.seen,
                    started: false,
                    alone: false,
                },
            )
            .is_none();
        ensure!(fresh, "hedge {hedge} reuses a running hedge's key");
        if let Some(b) = self.requests.get_mut(request.as_u64()) {
            b.attempts += 1;
            b.hedges += 1;
            b.sibling = Some(hedge);
        }
        // Its run slot is taken now: the same input may end it (a deadline
        // due at the same wake-up) before its `Start` is drained.
        self.recount_worker(to, |b| b.running += 1);
        self.queue_grew(to);
        let from_ordinal = self.ordinal(from).unwrap_or(u32::MAX);
        self.trace.push(TraceEvent::Hedged {
            id: book.id,
            from: from_ordinal,
            to: target.ordinal,
        });
        Ok(())
    }

    /// One of a hedged request's two attempts ended without answering it:
    /// it lost (the other answers in this input), failed retryably (its
    /// worker is charged), or its worker restarted; if it was the
    /// request's own, the hedge runs on alone and the request's books
    /// take its worker and start.
    pub(super) fn on_attempt_ended(
        &mut self,
        request: RequestKey,
        attempt: RequestKey,
        worker: WorkerKey,
    ) -> Result<(), Failure> {
        let Some(book) = self.requests.get(request.as_u64()).copied() else {
            return Err(Failure(format!(
                "AttemptEnded of unknown request {request}"
            )));
        };
        let Some(hedge_key) = book.sibling else {
            return Err(Failure(format!(
                "AttemptEnded of #{} with no hedge",
                book.id
            )));
        };
        let Some(hedge) = self.hedges.get(&hedge_key.as_u64()).copied() else {
            return Err(Failure(format!(
                "#{} names hedge {hedge_key} not booked",
                book.id
            )));
        };
        ensure!(
            !hedge.alone,
            "AttemptEnded of #{} whose hedge runs alone",
            book.id
        );
        // A request's own attempt refused while racing its hedge: the hedge
        // ends first, its request already booked as waiting again.
        let refusing = self.context
            == Context::Refuse {
                request,
                worker: book.worker,
            };
        let running = matches!(book.state, ReqState::Running { .. });
        ensure!(
            running || (refusing && attempt != request),
            "AttemptEnded of #{} while {book:?}",
            book.id
        );
        let (ended_at, own) = if attempt == request {
            let ReqState::Running { started_at, .. } = book.state else {
                return Err(Failure(format!(
                    "AttemptEnded of #{} while {book:?}",
                    book.id
                )));
            };
            ensure!(
                worker == book.worker,
                "#{}'s own attempt ended on {worker}",
                book.id
            );
            (started_at, true)
        } else {
            ensure!(
                attempt == hedge_key && worker == hedge.worker,
                "#{}'s attempt {attempt} ended on {worker}, books: {hedge:?}",
                book.id
            );
            (hedge.started_at, false)
        };
        // A retryable failure of this very attempt is charged to its
        // worker; a loss, a restart or a cancellation is not.
        let failed = matches!(
            self.context,
            Context::Complete {
                request: r,
                outcome: Outcome::Failure { retryable: true },
            } if r == attempt
        );
        if failed {
            if let Some(w) = self.workers.get_mut(worker.as_u64()) {
                w.health.fail();
            }
            self.touch_health(worker);
            self.longest_any_run = self.longest_any_run.max(self.seen - ended_at);
        }
        // A hedge its handler refused is no attempt, and saturates its
        // worker; any other end of a run ends the worker's saturation.
        let refused = self.context
            == Context::Refuse {
                request: attempt,
                worker,
            };
        if refused {
            self.refused_attempt(request, worker);
        } else {
            self.recount_worker(worker, |b| b.end_run());
        }
        self.ended.push((attempt, worker));
        if own {
            if let Some(h) = self.hedges.get_mut(&hedge_key.as_u64()) {
                h.alone = true;
            }
            if let Some(b) = self.requests.get_mut(request.as_u64()) {
                b.worker = hedge.worker;
                b.state = ReqState::Running {
                    started_at: hedge.started_at,
                    aborted: false,
                };
                if let Some(at) = b.run_limit_at() {
                    self.deadlines.push(Reverse((at, request)));
                }
            }
        } else {
            self.hedges.remove(&hedge_key.as_u64());
            if let Some(b) = self.requests.get_mut(request.as_u64()) {
                b.sibling = None;
            }
        }
        Ok(())
    }
}
