//! What the harness checks and books for each event the core emits:
//! acceptances, moves, health changes, vetoes and the end of shutdown
//! (second attempts, retries and hedges, in `attempts.rs`).

use std::cmp::Reverse;

use foreman_core::{
    Event, HealthCause, RequestKey, Time, WorkerErrorCode, WorkerHealthStatus, WorkerKey,
};

use super::books::{phase_limit_at, Context, Lifecycle, ReqBook, ReqState};
use super::checks::allowed_edge;
use super::harness::Harness;
use super::trace::TraceEvent;
use super::Failure;

impl Harness {
    pub(super) fn on_event(&mut self, event: Event) -> Result<(), Failure> {
        match event {
            Event::Accepted { request, worker } => self.on_accepted(request, worker),
            Event::Requeued { request, from, to } => self.on_requeued(request, from, to),
            Event::Retried {
                request,
                from,
                to,
                attempt,
            } => self.on_retried(request, from, to, attempt),
            Event::Hedged {
                request,
                hedge,
                from,
                to,
                attempt,
            } => self.on_hedged(request, hedge, from, to, attempt),
            Event::AttemptEnded {
                request,
                attempt,
                worker,
            } => self.on_attempt_ended(request, attempt, worker),
            Event::HealthChanged {
                worker,
                from,
                to,
                cause,
                at,
            } => self.on_health_changed(worker, from, to, cause, at),
            Event::Rejected { worker, reason } => self.on_rejected(worker, reason),
            Event::ShutdownComplete { at } => self.on_shutdown_complete(at),
            // `Event` is `#[non_exhaustive]`; the workspace pins foreman-core
            // at its exact version, so an event the model has no rule for is
            // a core change the model was not taught: fail.
            unknown => Err(Failure(format!(
                "the model has no rule for the event {unknown:?}"
            ))),
        }
    }

    /// A request accepted by a schedulable worker with room, during its
    /// submit.
    fn on_accepted(&mut self, request: RequestKey, worker: WorkerKey) -> Result<(), Failure> {
        let Context::Submit {
            id,
            deadline,
            vetted,
            retry,
            hedge,
        } = self.context
        else {
            return Err(Failure(format!("Accepted {request} outside a submit")));
        };
        let book = self.worker_book(worker, "Accepted")?;
        let (schedulable, open, _) = self.worker_flags(&book);
        ensure!(
            schedulable,
            "#{id} accepted by unschedulable worker {worker}: {book:?}"
        );
        ensure!(open, "#{id} accepted by full worker {worker}: {book:?}");
        let live_pos = self.live.len();
        let pinned = !self.limits.late_binding || self.vetoed;
        let fresh = self.requests.insert(
            request.as_u64(),
            ReqBook {
                id,
                worker,
                state: ReqState::Queued,
                pinned,
                vetted: vetted && pinned,
                accepted_at: self.seen,
                waiting_since: self.seen,
                deadline,
                attempts: 0,
                retry: retry && !(vetted && pinned),
                hedge: hedge && !(vetted && pinned),
                hedges: 0,
                sibling: None,
                queue_wait_at: self
                    .limits
                    .phases
                    .queue_wait
                    .and_then(|wait| phase_limit_at(self.seen.saturating_add(wait), deadline)),
                run_limit: self.limits.phases.run,
                live_pos,
                run_pos: usize::MAX,
            },
        );
        ensure!(fresh, "{request} reuses the key of a pending request");
        self.live.push(request);
        self.unpinned_queued += usize::from(!pinned);
        // A deadline at `Time::MAX` (where saturated arithmetic lands) is
        // never: the core arms no timer for it.
        if let Some(at) = deadline.filter(|at| *at != Time::MAX) {
            self.deadlines.push(Reverse((at, request)));
        }
        if let Some(at) = self
            .requests
            .get(request.as_u64())
            .and_then(|b| b.queue_wait_at)
        {
            self.deadlines.push(Reverse((at, request)));
        }
        self.recount_worker(worker, |b| b.queued += 1);
        self.queue_grew(worker);
        self.check_limits(worker)?;
        self.trace.push(TraceEvent::Accepted {
            id,
            worker: book.ordinal,
        });
        Ok(())
    }

    /// A request moved off its removed worker (or by its breaker), or by
    /// late binding onto a free worker.
    fn on_requeued(
        &mut self,
        request: RequestKey,
        from: WorkerKey,
        to: WorkerKey,
    ) -> Result<(), Failure> {
        let Some(book) = self.requests.get(request.as_u64()).copied() else {
            return Err(Failure(format!("Requeued unknown request {request}")));
        };
        let state = if self.context == (Context::Revet { request }) {
            ReqState::Moving
        } else {
            ReqState::Queued
        };
        ensure!(
            book.worker == from && book.state == state,
            "Requeued {request} from {from} but books say {book:?}"
        );
        ensure!(to != from, "Requeued {request} onto its own worker");
        let target = self.worker_book(to, "Requeued")?;
        let (schedulable, open, _) = self.worker_flags(&target);
        // Outside its worker's removal, only late binding moves a
        // request: onto a free worker, which starts it at once.
        // A refused request goes to the front of another worker's line,
        // as a removed worker's does.
        let refused = self.context
            == Context::Refuse {
                request,
                worker: from,
            };
        let removal = self.context == Context::Remove { worker: from }
            || self.context == Context::Revet { request }
            || refused;
        ensure!(
            !book.vetted || self.context == Context::Revet { request },
            "{request}, placed by a circuit breaker, moved without it in {:?}",
            self.context
        );
        if removal {
            // A half-open worker's room is its trial permits, which the
            // books cannot follow mid-input (a request moved onto it may
            // have started or been answered already, by actions drained
            // after these events): its runs are checked against its
            // permits once the input is done.
            let half_open = target.trial_limit() != usize::MAX;
            // Likewise a worker with a free run slot starts what is moved
            // onto it at once, so the books still count as queued there
            // the requests moved before this one in the same input: its
            // queue's limit is judged once the input is done
            // (`check_queues`).
            let free = target.running < target.max_running;
            ensure!(
                schedulable && (open || half_open || free),
                "{request} requeued onto {to} without room: {target:?}"
            );
        } else {
            ensure!(
                self.limits.late_binding && !book.pinned,
                "Requeued {request} from {from} outside its removal (pinned {}, late binding {})",
                book.pinned,
                self.limits.late_binding
            );
            // Its run slot may free up later in this input's
            // actions (events are drained first): `Start` checks it.
            ensure!(
                schedulable,
                "{request} moved onto unschedulable {to}: {target:?}"
            );
            self.stolen.push(request);
        }
        self.recount_worker(from, |b| b.queued -= 1);
        if removal {
            self.recount_worker(to, |b| b.queued += 1);
            self.queue_grew(to);
        }
        if let Some(b) = self.requests.get_mut(request.as_u64()) {
            b.worker = to;
            b.state = ReqState::Queued;
        }
        if state == ReqState::Moving {
            self.forget_moving(request);
        }
        if removal {
            self.check_limits(to)?;
        }
        let from_ordinal = self.ordinal(from).unwrap_or(u32::MAX);
        self.trace.push(TraceEvent::Requeued {
            id: book.id,
            from: from_ordinal,
            to: target.ordinal,
        });
        Ok(())
    }

    /// A health change from the status the books hold, along an edge its
    /// cause allows.
    fn on_health_changed(
        &mut self,
        worker: WorkerKey,
        from: WorkerHealthStatus,
        to: WorkerHealthStatus,
        cause: HealthCause,
        at: Time,
    ) -> Result<(), Failure> {
        let book = match self.workers.get(worker.as_u64()) {
            Some(book) => *book,
            None => return Err(Failure(format!("HealthChanged of unknown worker {worker}"))),
        };
        ensure!(!book.stopped, "HealthChanged of stopped worker {worker}");
        ensure!(
            at == self.seen,
            "HealthChanged at {at} while now is {}",
            self.seen
        );
        ensure!(
            from == book.status,
            "{worker} changes from {from:?} but books say {:?}",
            book.status
        );
        ensure!(
            allowed_edge(cause, from, to),
            "{worker}: health edge {from:?} -> {to:?} not allowed for {cause:?}"
        );
        self.check_health_cause(worker, to, cause)?;
        if to == WorkerHealthStatus::Unavailable && cause != HealthCause::Stopped {
            self.ejections += 1;
        }
        self.recount_worker(worker, |b| b.status = to);
        self.trace.push(TraceEvent::Health {
            worker: book.ordinal,
            from,
            to,
            cause,
        });
        Ok(())
    }

    /// A change caused by a probe only in that probe's result, and never
    /// better than its verdict; by a restart only in that restart; by
    /// `Stopped` only once shutdown completed.
    fn check_health_cause(
        &self,
        worker: WorkerKey,
        to: WorkerHealthStatus,
        cause: HealthCause,
    ) -> Result<(), Failure> {
        match (cause, self.context) {
            (
                HealthCause::Probe,
                Context::Probe {
                    worker: probed,
                    verdict,
                },
            ) => {
                ensure!(probed == worker, "probe of {probed} changed {worker}");
                ensure!(
                    to >= verdict,
                    "{worker} is {to:?}, better than its probe's {verdict:?}"
                );
            }
            (HealthCause::Probe, context) => {
                return Err(Failure(format!(
                    "probe-caused change of {worker} in {context:?}"
                )));
            }
            (HealthCause::Restart, context) => {
                ensure!(
                    context == Context::Restart { worker },
                    "restart-caused change of {worker} in {context:?}"
                );
            }
            (HealthCause::EjectionExpired, context) => {
                ensure!(
                    context == Context::Timeout,
                    "ejection of {worker} ended in {context:?}"
                );
            }
            (HealthCause::Stopped, _) => {
                ensure!(
                    self.shutdown_completed_pending(),
                    "Stopped change of {worker} before shutdown completed"
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// A veto, reported by worker, only during a vetted submit or a revet.
    fn on_rejected(
        &mut self,
        worker: Option<WorkerKey>,
        reason: WorkerErrorCode,
    ) -> Result<(), Failure> {
        if let Some(worker) = worker {
            ensure!(
                reason == WorkerErrorCode::CircuitOpen,
                "{worker} refused a request with {reason:?}"
            );
            match self.context {
                Context::Submit { vetted: true, .. } => self.vetoed = true,
                Context::Revet { .. } => {}
                context => {
                    return Err(Failure(format!("veto of {worker} reported in {context:?}")))
                }
            }
            self.vetoes_reported += 1;
        }
        Ok(())
    }

    /// The end of a shutdown, once.
    fn on_shutdown_complete(&mut self, at: Time) -> Result<(), Failure> {
        ensure!(
            matches!(self.lifecycle, Lifecycle::Draining { .. }),
            "ShutdownComplete while {:?}",
            self.lifecycle
        );
        ensure!(
            at == self.seen,
            "ShutdownComplete at {at} while now is {}",
            self.seen
        );
        self.lifecycle = Lifecycle::Stopped;
        self.recount_all();
        self.trace.push(TraceEvent::ShutdownComplete { at });
        Ok(())
    }

    /// Whether a Stopped-caused health change is legitimate now: only once
    /// the pool has completed shutdown (the events come right before
    /// `ShutdownComplete`, so the pool's own flag is what counts).
    fn shutdown_completed_pending(&self) -> bool {
        self.pool.is_stopped()
    }
}
