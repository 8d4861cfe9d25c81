//! Vetting: a circuit breaker's say in which worker takes a request, asked
//! one candidate at a time so that a driver can ask it with its lock
//! released.
//!
//! The pool proposes the next candidate without committing to it
//! ([`Vetted::Ask`], [`Revetted::Ask`]); the driver asks the breaker and
//! records the answer in the [`Vetting`]; the next step commits to an
//! approved candidate if it still has room, or proposes the next one.
//! Every decision stays here: the order of the candidates, which answer
//! counts, the refusal, where a moved request goes.

use std::collections::BTreeSet;

use super::admission::Refused;
use super::{Pool, RequestState};
use crate::config::Admission;
use crate::health::HealthCause;
use crate::keys::{RequestKey, WorkerKey};
use crate::output::Event;
use crate::protocol::{WorkerErrorCode, WorkerPoolError, WorkerRequest};
use crate::time::Time;
use crate::validate::RequestError;

/// One request's vetting by a circuit breaker, carried by the driver from
/// one step of [`Pool::vet`] or [`Pool::revet`] to the next.
///
/// It remembers the workers already asked, so that each is asked at most
/// once and in the pool's order, the candidate awaiting an answer, and
/// whether any worker vetoed the request. One `Vetting` serves one request
/// in one pool: a driver with several pools (lanes) starts a new one for
/// each pool it tries.
#[derive(Debug, Clone, Default)]
pub struct Vetting {
    /// A refusal for want of a worker is declined (see [`Pool::offer`]).
    decline: bool,
    /// Workers asked already (vetoed, or approved when they had no room
    /// any more): never proposed again.
    asked: BTreeSet<WorkerKey>,
    /// The worker proposed last.
    candidate: Option<WorkerKey>,
    /// The breaker's answer about `candidate`, once recorded.
    answer: Option<bool>,
    /// Some worker vetoed the request.
    vetoed: bool,
}

impl Vetting {
    /// A vetting whose final refusal is counted, as by
    /// [`Pool::submit_checked`]; also the one for [`Pool::revet`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A vetting whose refusal for want of a worker (`QueueFull`,
    /// `NoHealthyWorker`, `CircuitOpen`) is declined, as by
    /// [`Pool::offer`]: for every pool but the last that a driver with
    /// several pools tries.
    pub fn offer() -> Self {
        Vetting {
            decline: true,
            ..Self::default()
        }
    }

    /// The worker the last step asked about, if it awaits an answer.
    pub fn candidate(&self) -> Option<WorkerKey> {
        self.candidate.filter(|_| self.answer.is_none())
    }

    /// Records the breaker's answer about [`candidate`](Self::candidate):
    /// `true` if it may take the request.
    pub fn answer(&mut self, allowed: bool) {
        if self.candidate.is_some() {
            self.answer = Some(allowed);
        }
    }

    /// Whether some worker vetoed the request so far.
    pub fn vetoed(&self) -> bool {
        self.vetoed
    }
}

/// One step of [`Pool::vet`].
#[derive(Debug)]
pub enum Vetted<P> {
    /// Ask the breaker whether `worker` may take the request (with no lock
    /// held), record the answer with [`Vetting::answer`], and call
    /// [`Pool::vet`] again with the payload given back here.
    Ask {
        /// The candidate, in the pool's order.
        worker: WorkerKey,
        /// The payload, for the next step.
        payload: P,
    },
    /// The request was accepted by `worker`, the candidate the breaker
    /// approved; it is queued there (or started, in the same step's
    /// actions) and fires [`Event::Accepted`].
    Accepted {
        /// The accepted request.
        request: RequestKey,
        /// The worker that took it.
        worker: WorkerKey,
    },
    /// The request was refused (or declined, see [`Vetting::offer`]).
    Refused(Refused<P>),
}

/// One step of [`Pool::revet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revetted {
    /// Ask the breaker whether `worker` may take the request (with no lock
    /// held), record the answer with [`Vetting::answer`], and call
    /// [`Pool::revet`] again.
    Ask(WorkerKey),
    /// The request now waits on `worker` (or runs there, in the same
    /// step's actions), reported as [`Event::Requeued`].
    Moved(WorkerKey),
    /// No worker the breaker allows could take it: it was answered with a
    /// retryable `Unavailable` error (in the same step's actions).
    Answered,
    /// The request no longer waits for a worker (it was answered since:
    /// cancelled, timed out, or cut off by the drain deadline).
    Gone,
}

impl<P: Clone> Pool<P> {
    /// Submits a request validated beforehand ([`PoolConfig::admit`]),
    /// one step at a time, so that a circuit breaker approves its worker
    /// and the driver asks the breaker with no lock held.
    ///
    /// The first step checks what needs no worker (shutdown, admission)
    /// and proposes the first candidate in the pool's order
    /// ([`Vetted::Ask`]). Each later step reads the breaker's answer from
    /// `vetting`: a veto is reported as [`Event::Rejected`] naming the
    /// worker, and the next candidate not asked yet is proposed; an
    /// approval commits the request to that worker if it still has room
    /// ([`Vetted::Accepted`]; if not, the next candidate is proposed). So
    /// the breaker hears of the candidates in turn until one allows, and
    /// never of a worker after it. Shutdown beginning between steps
    /// refuses the request. Once no candidate is left the request is
    /// refused, like [`submit_checked`](Self::submit_checked), or
    /// declined, like [`offer`](Self::offer), with [`Vetting::offer`].
    ///
    /// The accepted request stays on the worker the breaker approved (with
    /// late binding, one no worker vetoed may run on another, as any
    /// request); should that worker be removed, it moves only to a worker
    /// the breaker approves ([`Action::Revet`](crate::Action::Revet)).
    ///
    /// A refusal ([`Vetted::Refused`]) says `ShuttingDown`,
    /// `InvalidRequest`, `QueueFull` (some schedulable worker had no room),
    /// `CircuitOpen` (the breaker vetoed every worker with room) or
    /// `NoHealthyWorker`. A step costs O(log n + a · log a) for the `a`
    /// workers asked so far.
    ///
    /// [`PoolConfig::admit`]: crate::PoolConfig::admit
    pub fn vet(
        &mut self,
        now: Time,
        admission: &Result<Admission, RequestError>,
        payload: P,
        vetting: &mut Vetting,
    ) -> Vetted<P> {
        let now = self.observe(now);
        let approved = self.take_answer(vetting);
        let admission = match self.admissible(admission.clone()) {
            Ok(admission) => admission,
            Err(error) => return Vetted::Refused(self.refuse_counted(payload, error)),
        };
        if let Some(worker) = approved {
            if self.takes(worker) {
                if !self.requests.has_room() {
                    let error = WorkerPoolError::QueueFull;
                    return Vetted::Refused(self.refuse_or_decline(
                        payload,
                        error,
                        vetting.decline,
                    ));
                }
                let pinned = !self.late_binding() || vetting.vetoed;
                return match self.accept(now, worker, admission, payload, pinned, pinned) {
                    Ok(request) => Vetted::Accepted { request, worker },
                    Err(refused) => Vetted::Refused(refused),
                };
            }
            vetting.asked.insert(worker);
        }
        match self.propose(vetting) {
            Some(worker) => Vetted::Ask { worker, payload },
            None => {
                let error = self.no_worker_error(vetting.vetoed);
                Vetted::Refused(self.refuse_or_decline(payload, error, vetting.decline))
            }
        }
    }

    /// Places a request named by [`Action::Revet`](crate::Action::Revet) (its worker was removed)
    /// on a worker the circuit breaker approves, one step at a time, as
    /// [`vet`](Self::vet) does for a new request: candidates are proposed
    /// in the pool's order ([`Revetted::Ask`]), each veto is reported as
    /// [`Event::Rejected`] naming the worker, and the first approved
    /// candidate with room takes the request ([`Revetted::Moved`],
    /// reported as [`Event::Requeued`] from the removed worker). When no
    /// candidate is left the request is answered with a retryable
    /// `Unavailable` error ([`Revetted::Answered`]). Start each request
    /// with a fresh [`Vetting::new`].
    pub fn revet(&mut self, now: Time, request: RequestKey, vetting: &mut Vetting) -> Revetted {
        self.observe(now);
        let approved = self.take_answer(vetting);
        let from = match self.requests.get(request.0) {
            Some(entry) if entry.state == RequestState::Moving => entry.worker,
            _ => return Revetted::Gone,
        };
        if let Some(to) = approved {
            if self.takes(to) {
                if let Some(slot) = self.workers.get_mut(from.0) {
                    slot.moving = slot.moving.saturating_sub(1);
                }
                self.requeue(request, from, to);
                self.after_worker_change(from, HealthCause::Stopped);
                return Revetted::Moved(to);
            }
            vetting.asked.insert(to);
        }
        if let Some(worker) = self.propose(vetting) {
            return Revetted::Ask(worker);
        }
        let from_id = self.worker_id(from).unwrap_or_default().to_string();
        let why = if vetting.vetoed {
            "no other worker the circuit breaker allows could take the request"
        } else {
            "no other worker could take the request"
        };
        self.unroutable(request, &from_id, why);
        self.after_worker_change(from, HealthCause::Stopped);
        Revetted::Answered
    }

    /// Submits a request, asking `allow` (a circuit breaker that answers at
    /// once) about each candidate worker by id, in the pool's order, until
    /// one allows: the steps of [`vet`](Self::vet) in one call. Its worker
    /// is then the one `allow` approved (see [`vet`](Self::vet) for when it
    /// may move, and [`Action::Revet`](crate::Action::Revet)).
    ///
    /// # Errors
    /// As [`vet`](Self::vet) with [`Vetting::new`].
    pub fn submit_with(
        &mut self,
        now: Time,
        request: &WorkerRequest,
        payload: P,
        mut allow: impl FnMut(&str) -> bool,
    ) -> Result<RequestKey, Refused<P>> {
        let admission = self.config.admit(request);
        let mut vetting = Vetting::new();
        let mut payload = payload;
        loop {
            match self.vet(now, &admission, payload, &mut vetting) {
                Vetted::Ask {
                    worker,
                    payload: back,
                } => {
                    payload = back;
                    let allowed = self.worker_id(worker).is_some_and(&mut allow);
                    vetting.answer(allowed);
                }
                Vetted::Accepted { request, .. } => return Ok(request),
                Vetted::Refused(refused) => return Err(refused),
            }
        }
    }

    /// [`revet`](Self::revet) with a breaker that answers at once: asks
    /// `allow` about each candidate by id, in turn, until the request has
    /// moved or been answered.
    pub fn revet_with(
        &mut self,
        now: Time,
        request: RequestKey,
        mut allow: impl FnMut(&str) -> bool,
    ) -> Revetted {
        let mut vetting = Vetting::new();
        loop {
            match self.revet(now, request, &mut vetting) {
                Revetted::Ask(worker) => {
                    let allowed = self.worker_id(worker).is_some_and(&mut allow);
                    vetting.answer(allowed);
                }
                done => return done,
            }
        }
    }

    /// The candidate approved by the breaker's answer in `vetting`, if it
    /// approved; a veto is recorded and reported.
    fn take_answer(&mut self, vetting: &mut Vetting) -> Option<WorkerKey> {
        let candidate = vetting.candidate.take()?;
        match vetting.answer.take()? {
            true => Some(candidate),
            false => {
                vetting.vetoed = true;
                vetting.asked.insert(candidate);
                self.events.push_back(Event::Rejected {
                    worker: Some(candidate),
                    reason: WorkerErrorCode::CircuitOpen,
                });
                None
            }
        }
    }

    /// The next candidate in the pool's order that `vetting` has not asked
    /// about, now its candidate.
    fn propose(&mut self, vetting: &mut Vetting) -> Option<WorkerKey> {
        let first = self.choose_worker();
        let asked = &vetting.asked;
        let next = match first {
            Some(first) if !asked.contains(&first) => Some(first),
            _ => self
                .router
                .candidates()
                .find(|candidate| !asked.contains(candidate)),
        };
        vetting.candidate = next;
        next
    }

    /// Whether `worker` takes a request now: schedulable with room.
    fn takes(&self, worker: WorkerKey) -> bool {
        self.workers
            .get(worker.0)
            .is_some_and(|slot| slot.membership.eligible)
    }
}
