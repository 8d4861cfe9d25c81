//! Submits: what the pool checks before any worker (shutdown, the
//! admission, the budget), the worker a new request goes to, its
//! acceptance, and the refusals (counted, or declined for a driver that
//! tries several pools).

use std::fmt;
use std::time::Duration;

use super::{Lifecycle, Place, Pool, Request, RequestState};
use crate::config::Admission;
use crate::deadlines::PhaseLimits;
use crate::keys::{RequestKey, WorkerKey};
use crate::output::{Action, Event};
use crate::protocol::{WorkerPoolError, WorkerRequest};
use crate::time::Time;
use crate::timers::Timer;
use crate::validate::RequestError;

/// A submit the pool refused; the payload comes back untouched.
#[non_exhaustive]
pub struct Refused<P> {
    /// Why the request was refused.
    pub error: WorkerPoolError,
    /// The payload given to `submit`.
    pub payload: P,
}

impl<P> fmt::Debug for Refused<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refused")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<P: Clone> Pool<P> {
    /// Submits a request; see [`submit_checked`](Self::submit_checked).
    ///
    /// # Errors
    /// Returns [`Refused`] with the payload when the request is not accepted.
    pub fn submit(
        &mut self,
        now: Time,
        request: &WorkerRequest,
        payload: P,
    ) -> Result<RequestKey, Refused<P>> {
        let admission = self.config.admit(request);
        self.submit_checked(now, admission, payload)
    }

    /// Submits a request with its own phase limits (each one set replaces
    /// the pool's default for that phase); see
    /// [`submit_checked`](Self::submit_checked).
    ///
    /// # Errors
    /// Returns [`Refused`] with the payload when the request is not
    /// accepted; a zero run limit, like a zero budget, is refused with
    /// `Timeout`.
    pub fn submit_limited(
        &mut self,
        now: Time,
        request: &WorkerRequest,
        limits: PhaseLimits,
        payload: P,
    ) -> Result<RequestKey, Refused<P>> {
        let admission = self
            .config
            .admit(request)
            .map(|admission| admission.with_limits(limits));
        self.submit_checked(now, admission, payload)
    }

    /// Submits a request validated beforehand with
    /// [`PoolConfig::admit`](crate::PoolConfig::admit) on this pool's
    /// configuration ([`Pool::config`]). Drivers use it to validate before
    /// taking the lock around the pool.
    ///
    /// On success the request is bound to a worker and queued there (and
    /// started at once if the worker is free; with late binding, whichever
    /// schedulable worker frees up first may run it); its answer comes
    /// later as an [`Action::Answer`].
    ///
    /// # Errors
    /// Returns [`Refused`] with the payload and the reason: `ShuttingDown`
    /// once shutdown began; `InvalidRequest` when the admission failed;
    /// `QueueFull` when a schedulable worker exists but none has room;
    /// `NoHealthyWorker` when no worker is schedulable.
    pub fn submit_checked(
        &mut self,
        now: Time,
        admission: Result<Admission, RequestError>,
        payload: P,
    ) -> Result<RequestKey, Refused<P>> {
        self.admit_request(now, admission, payload, false)
    }

    /// `submit_checked` and `offer`: `decline` says whether a refusal for
    /// want of a worker is declined (uncounted) rather than final.
    pub(super) fn admit_request(
        &mut self,
        now: Time,
        admission: Result<Admission, RequestError>,
        payload: P,
        decline: bool,
    ) -> Result<RequestKey, Refused<P>> {
        let now = self.observe(now);
        let admission = match self.admissible(admission) {
            Ok(admission) => admission,
            Err(error) => return Err(self.refuse_counted(payload, error)),
        };
        // The policy's first choice is taken: found without building the
        // candidate iterator, which is only the fallback.
        let chosen = self
            .choose_worker()
            .or_else(|| self.router.candidates().next());
        let Some(worker) = chosen else {
            let error = self.no_worker_error(false);
            return Err(self.refuse_or_decline(payload, error, decline));
        };
        if !self.requests.has_room() {
            return Err(self.refuse_or_decline(payload, WorkerPoolError::QueueFull, decline));
        }
        let pinned = !self.late_binding();
        self.accept(now, worker, admission, payload, pinned, false)
    }

    /// Whether the pool takes new requests and the admission passed: its
    /// checks that do not depend on workers, in their order of precedence.
    pub(super) fn admissible(
        &self,
        admission: Result<Admission, RequestError>,
    ) -> Result<Admission, WorkerPoolError> {
        if self.lifecycle != Lifecycle::Running {
            return Err(WorkerPoolError::ShuttingDown);
        }
        let admission = admission.map_err(WorkerPoolError::from)?;
        if admission.timeout() == Some(Duration::ZERO)
            || admission.limits().run == Some(Duration::ZERO)
        {
            // A zero budget (or run limit) has run out on arrival: no
            // worker could finish in time, so none is asked and none is
            // held responsible.
            return Err(WorkerPoolError::Timeout);
        }
        Ok(admission)
    }

    /// Why no worker takes a request: `QueueFull` when some schedulable
    /// worker has no room, else `CircuitOpen` when a breaker vetoed some
    /// worker, else `NoHealthyWorker`.
    pub(super) fn no_worker_error(&self, vetoed: bool) -> WorkerPoolError {
        if self.schedulable > self.router.eligible_len() {
            WorkerPoolError::QueueFull
        } else if vetoed {
            WorkerPoolError::CircuitOpen
        } else {
            WorkerPoolError::NoHealthyWorker
        }
    }

    /// Accepts a new request on `worker` (eligible; the request slab has
    /// room): queues it there, and starts it at once if the worker is free.
    /// `pinned`: only that worker may run it; `vetted`: a circuit breaker
    /// chose the worker (see [`Request::vetted`]).
    pub(super) fn accept(
        &mut self,
        now: Time,
        worker: WorkerKey,
        admission: Admission,
        payload: P,
        pinned: bool,
        vetted: bool,
    ) -> Result<RequestKey, Refused<P>> {
        let entry = Request {
            worker,
            state: RequestState::Queued,
            pinned,
            vetted,
            payload,
            accepted_at: now,
            deadline: admission.timeout().map(|budget| now + budget),
            attempts: 0,
            turn: 0,
            retry: admission.retry() && !vetted,
            hedge: admission.hedge() && !vetted,
            hedges: 0,
            hedge_at: None,
            sibling: None,
            limits: admission.limits(),
            expired: None,
        };
        let (key, pump) = match self.enter(now, entry, true) {
            Ok(entered) => entered,
            Err(entry) => {
                debug_assert!(false, "router chose a missing worker");
                return Err(self.refuse_counted(entry.payload, WorkerPoolError::NoHealthyWorker));
            }
        };
        self.counters.submitted += 1;
        self.counters.accepted += 1;
        if let Some(ledger) = &mut self.retry_ledger {
            ledger.deposit(now);
        }
        self.router.picked(worker);
        self.events.push_back(Event::Accepted {
            request: key,
            worker,
        });
        self.settle_entered(worker, key, pump);
        Ok(key)
    }

    /// Puts a request that waits in no queue yet on its worker (eligible;
    /// the request slab has room): queues it there, and starts it at once
    /// if `may_start`, the worker is free and nothing waits there; arms its
    /// timers. Returns its key and whether the worker must then be pumped
    /// ([`settle_entered`](Self::settle_entered)).
    ///
    /// # Errors
    /// Hands the request back, untouched, if its worker is missing.
    #[inline(always)]
    pub(super) fn enter(
        &mut self,
        now: Time,
        mut entry: Request<P>,
        may_start: bool,
    ) -> Result<(RequestKey, bool), Request<P>> {
        let worker = entry.worker;
        let pinned = entry.pinned;
        let deadline = entry.deadline;
        let limits = entry.limits;
        let may_retry =
            self.may_run_again(entry.retry, 1) || self.may_hedge(entry.hedge, entry.hedges);
        // Under latency-aware late binding an unpinned request joins the
        // backlog even on a free worker, which then takes the backlog's
        // oldest request (this one, or an older one) or leaves it to a
        // faster worker (`deferral.rs`).
        let behind = !pinned && self.defers_possible();
        let Some(slot) = self.workers.get_mut(worker.0) else {
            return Err(entry);
        };
        // Otherwise a free worker with nothing waiting starts the request
        // at once, without a trip through its queue.
        let free = slot.running.len() < slot.run_slots(slot.max_running);
        let start_now = may_start && slot.queued == 0 && free && !behind;
        if start_now {
            entry.state = RequestState::Running { started_at: now };
            entry.attempts = 1;
        }
        let started = start_now.then(|| entry.payload.clone());
        let key = RequestKey(self.requests.insert(entry));
        match started {
            Some(payload) => {
                slot.running.push(key);
                self.actions.push_back(Action::Start {
                    request: key,
                    worker,
                    payload,
                    may_retry,
                });
            }
            None => {
                let place = Place { key, turn: 0 };
                slot.queue.push_back(place);
                slot.queued += 1;
                if !pinned {
                    self.backlog.push_back(place);
                    self.backlog_live += 1;
                }
            }
        }
        if let Some(at) = deadline {
            self.arm(at, Timer::Request(key));
        }
        if limits.queue_wait.is_some() || limits.run.is_some() {
            self.arm_phase_limit(key);
        }
        // Without a hedging policy no request is ever due for a hedge.
        if start_now && self.config.hedging.is_some() {
            self.arm_hedge(key);
        }
        Ok((key, behind && free))
    }

    /// After [`enter`](Self::enter): the worker's load, and, if `pump`,
    /// the backlog's oldest request started on it (or left to a faster
    /// worker).
    #[inline]
    pub(super) fn settle_entered(&mut self, worker: WorkerKey, key: RequestKey, pump: bool) {
        self.refresh_load(worker);
        if pump {
            self.pump_after_submit(worker, Some(key));
            self.refresh_load(worker);
        }
    }

    /// Refuses a submit for good, or, if `decline`, hands the payload
    /// back uncounted and unreported.
    pub(super) fn refuse_or_decline(
        &mut self,
        payload: P,
        error: WorkerPoolError,
        decline: bool,
    ) -> Refused<P> {
        if decline {
            Refused { error, payload }
        } else {
            self.refuse_counted(payload, error)
        }
    }

    /// Refuses a submit for good: counted once, reported.
    pub(super) fn refuse_counted(&mut self, payload: P, error: WorkerPoolError) -> Refused<P> {
        self.counters.submitted += 1;
        self.refuse(payload, error)
    }

    /// Counts a refusal under its reason and reports it.
    fn refuse(&mut self, payload: P, error: WorkerPoolError) -> Refused<P> {
        let counter = match error {
            WorkerPoolError::InvalidRequest { .. } => &mut self.counters.refused_invalid,
            WorkerPoolError::QueueFull => &mut self.counters.refused_queue_full,
            WorkerPoolError::CircuitOpen => &mut self.counters.refused_circuit_open,
            WorkerPoolError::ShuttingDown => &mut self.counters.refused_shutting_down,
            WorkerPoolError::Timeout => &mut self.counters.refused_no_budget,
            _ => &mut self.counters.refused_no_healthy_worker,
        };
        *counter += 1;
        self.events.push_back(Event::Rejected {
            worker: None,
            reason: error.code(),
        });
        Refused { error, payload }
    }
}
