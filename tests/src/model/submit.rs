//! Submits, offers and submits through a circuit breaker, and the placing
//! of a request whose worker was removed under its breaker (`revet`): each
//! outcome checked against the one the books predict.

use std::time::Duration;

use foreman_core::{
    Admission, Refused, RequestError, RequestKey, Revetted, Vetted, Vetting, WorkerHealthStatus,
    WorkerKey,
};

use super::books::{Context, Lifecycle, ReqState};
use super::harness::Harness;
use super::operations::Shape;
use super::output::Output;
use super::trace::{AnswerKind, Refusal, TraceEvent};
use super::Failure;

impl Harness {
    /// Submits a request of `shape` with `timeout_ms`; returns its key when
    /// accepted.
    ///
    /// # Errors
    /// The first broken rule.
    pub fn submit(
        &mut self,
        shape: Shape,
        timeout_ms: Option<u64>,
    ) -> Result<Option<RequestKey>, Failure> {
        self.enter(shape, timeout_ms, false, None)
    }

    /// Offers a request of `shape` with `timeout_ms` (`Pool::offer`): as
    /// [`submit`](Self::submit), except that a refusal for want of a
    /// worker is declined: not counted, no pool-level `Rejected` event.
    ///
    /// # Errors
    /// The first broken rule.
    pub fn offer(
        &mut self,
        shape: Shape,
        timeout_ms: Option<u64>,
    ) -> Result<Option<RequestKey>, Failure> {
        self.enter(shape, timeout_ms, true, None)
    }

    /// Submits a request of `shape` with `timeout_ms` through a circuit
    /// breaker (`Pool::vet`) that vetoes the workers whose ordinal modulo
    /// 8 is a bit set in `veto`; returns its key when accepted.
    ///
    /// # Errors
    /// The first broken rule.
    pub fn submit_vetted(
        &mut self,
        shape: Shape,
        timeout_ms: Option<u64>,
        veto: u8,
    ) -> Result<Option<RequestKey>, Failure> {
        self.enter(shape, timeout_ms, false, Some(spread(veto)))
    }

    /// Submits like [`submit_vetted`](Self::submit_vetted) through a
    /// breaker that vetoes the workers whose ordinal modulo 64 is a bit
    /// set in `veto` (a simulator's breaker that approves one worker of
    /// up to 64: every bit but that worker's).
    ///
    /// # Errors
    /// The first broken rule.
    pub fn submit_vetted_wide(
        &mut self,
        shape: Shape,
        timeout_ms: Option<u64>,
        veto: u64,
    ) -> Result<Option<RequestKey>, Failure> {
        self.enter(shape, timeout_ms, false, Some(veto))
    }

    /// Whether a breaker with `veto` (a mask over ordinals modulo 64, see
    /// [`spread`]) refuses `worker`.
    pub(super) fn vetoes(&self, veto: u64, worker: WorkerKey) -> bool {
        let ordinal = self.ordinal(worker).unwrap_or(0);
        veto & (1 << (ordinal % 64)) != 0
    }

    /// Schedulable workers with room that a breaker with `veto` allows.
    fn allowed_open(&self, veto: u64) -> usize {
        self.worker_list
            .iter()
            .filter(|&&worker| !self.vetoes(veto, worker))
            .filter_map(|worker| self.workers.get(worker.as_u64()))
            .filter(|book| self.worker_flags(book).1)
            .count()
    }

    /// Checks one question of a vetting step: about a schedulable worker
    /// with room, asked for the first time; returns the breaker's answer.
    fn vet_question(
        &mut self,
        worker: WorkerKey,
        asked: &mut Vec<WorkerKey>,
        veto: u64,
    ) -> Result<bool, Failure> {
        let book = match self.worker_book(worker, "a breaker's question") {
            Ok(book) => book,
            Err(failure) => return Err(self.fail(failure.0)),
        };
        if asked.contains(&worker) {
            return Err(self.fail(format!("the breaker was asked about {worker} twice")));
        }
        if !self.worker_flags(&book).1 {
            return Err(self.fail(format!(
                "the breaker was asked about {worker}, which takes no request: {book:?}"
            )));
        }
        asked.push(worker);
        Ok(!self.vetoes(veto, worker))
    }

    /// Places a request whose worker was removed (`Action::Revet`) through
    /// its circuit breaker (`Pool::revet`), vetoing as
    /// [`submit_vetted`](Self::submit_vetted); returns where it went
    /// (`None`: answered `Unavailable`).
    ///
    /// # Errors
    /// The first broken rule.
    pub fn revet(&mut self, request: RequestKey, veto: u8) -> Result<Option<WorkerKey>, Failure> {
        let veto = spread(veto);
        self.begin_input()?;
        let Some(book) = self.requests.get(request.as_u64()).copied() else {
            return Err(self.fail(format!("revet of {request}, which is not pending")));
        };
        if book.state != ReqState::Moving {
            return Err(self.fail(format!("revet of {request}, which is not moving: {book:?}")));
        }
        let expect_moved = self.allowed_open(veto) > 0;
        self.context = Context::Revet { request };
        let mut vetting = Vetting::new();
        let mut asked = Vec::new();
        let mut vetoes = 0;
        let done = loop {
            match self.pool.revet(self.clock, request, &mut vetting) {
                Revetted::Ask(worker) => {
                    let allowed = self.vet_question(worker, &mut asked, veto)?;
                    vetoes += usize::from(!allowed);
                    vetting.answer(allowed);
                }
                done => break done,
            }
        };
        let to = match done {
            Revetted::Moved(to) if expect_moved && asked.last() == Some(&to) => Some(to),
            Revetted::Answered if !expect_moved => None,
            other => {
                return Err(self.fail(format!(
                    "revet of #{} ended {other:?} after asking {asked:?} (moves: {expect_moved})",
                    book.id
                )))
            }
        };
        self.drain()?;
        if self.vetoes_reported != vetoes {
            return Err(self.fail(format!(
                "revet of #{}: {vetoes} vetoes, {} reported",
                book.id, self.vetoes_reported
            )));
        }
        let placed = self.requests.get(request.as_u64()).copied();
        // A request moved to a free worker that has less budget left than
        // that worker's last run is answered `Timeout` in the same input
        // (the answer itself was checked when it was drained).
        let timed_out_on_arrival = self.outputs.iter().any(|output| {
            matches!(output, Output::Answered { request: r, kind: AnswerKind::Timeout, .. } if *r == request)
        });
        match (to, placed) {
            (Some(to), Some(after)) if after.worker == to && after.state != ReqState::Moving => {}
            (Some(_), None) if timed_out_on_arrival => {}
            (None, None) => {}
            _ => {
                return Err(self.fail(format!(
                    "revet of #{} to {to:?} left the books at {placed:?}",
                    book.id
                )))
            }
        }
        let to_ordinal = to.map(|to| self.ordinal(to).unwrap_or(u32::MAX));
        self.trace.push(TraceEvent::Revet {
            at: self.seen,
            id: book.id,
            to: to_ordinal,
        });
        self.force_full_check();
        self.finish_input()?;
        Ok(to)
    }

    /// Runs the steps of `Pool::vet` for request `id` (admitted or not as
    /// `admission` says), asking a breaker with `veto`; checks each
    /// question.
    fn vet_loop(
        &mut self,
        admission: Result<Admission, RequestError>,
        id: u64,
        veto: u64,
    ) -> Result<Result<RequestKey, Refused<u64>>, Failure> {
        let mut vetting = Vetting::new();
        let mut asked = Vec::new();
        let mut vetoes = 0;
        let mut payload = id;
        let result = loop {
            match self.pool.vet(self.clock, &admission, payload, &mut vetting) {
                Vetted::Ask {
                    worker,
                    payload: back,
                } => {
                    payload = back;
                    let allowed = self.vet_question(worker, &mut asked, veto)?;
                    vetoes += usize::from(!allowed);
                    vetting.answer(allowed);
                }
                Vetted::Accepted { request, worker } => {
                    if asked.last() != Some(&worker) || self.vetoes(veto, worker) {
                        return Err(self.fail(format!(
                            "#{id} accepted by {worker}, which the breaker did not approve last (asked {asked:?})"
                        )));
                    }
                    break Ok(request);
                }
                Vetted::Refused(refused) => break Err(refused),
            }
        };
        if vetting.vetoed() != (vetoes > 0) {
            return Err(self.fail(format!("#{id}: {vetoes} vetoes, vetting says otherwise")));
        }
        self.vetoes_pending = vetoes;
        Ok(result)
    }

    fn enter(
        &mut self,
        shape: Shape,
        timeout_ms: Option<u64>,
        offer: bool,
        veto: Option<u64>,
    ) -> Result<Option<RequestKey>, Failure> {
        self.begin_input()?;
        let id = self.next_id;
        self.next_id += 1;
        let counters_before = *self.pool.counters();
        let expected = self.expected_submit(shape, timeout_ms, veto);
        if self.full_check_due() && self.lifecycle == Lifecycle::Running {
            self.check_room_in_stats()?;
        }
        let timeout = match timeout_ms {
            Some(ms) => Some(Duration::from_millis(ms)),
            None => self.limits.default_timeout,
        };
        let deadline = timeout.map(|budget| self.seen + budget);
        let retries = self.pool.config().retries;
        let operation = &self.templates.request(shape, timeout_ms).operation;
        let retry = retries.is_some_and(|policy| policy.covers(operation));
        self.context = Context::Submit {
            id,
            deadline,
            vetted: veto.is_some(),
            retry,
        };
        self.vetoed = false;
        self.vetoes_pending = 0;
        // An offer declines exactly the refusals for want of a worker.
        let declined =
            offer && matches!(expected, Err(Refusal::QueueFull | Refusal::NoHealthyWorker));
        if !declined {
            self.submitted += 1;
        }
        let result = self.call_submit(shape, timeout_ms, id, offer, veto)?;
        let drained = self.drain_submit(id, result)?;
        let (outcome, key) = (drained.map(drop), drained.ok());
        if outcome != expected {
            return Err(self.fail(format!(
                "submit #{id} ({shape:?}, timeout {timeout_ms:?}): expected {expected:?}, got {outcome:?} \
                 (schedulable {}, with room {})",
                self.schedulable, self.open
            )));
        }
        if key.is_some() {
            self.accepted += 1;
        }
        if declined {
            self.check_declined(id, counters_before)?;
        }
        self.finish_input()?;
        Ok(key)
    }

    /// The outcome the books predict for a submit (through a breaker with
    /// `veto`, if any).
    fn expected_submit(
        &mut self,
        shape: Shape,
        timeout_ms: Option<u64>,
        veto: Option<u64>,
    ) -> Result<(), Refusal> {
        let valid = self.templates.admits(shape, timeout_ms);
        let no_budget = match timeout_ms {
            Some(ms) => ms == 0,
            None => self.limits.default_timeout == Some(Duration::ZERO),
        };
        if self.lifecycle != Lifecycle::Running {
            Err(Refusal::ShuttingDown)
        } else if !valid {
            Err(Refusal::Invalid)
        } else if no_budget {
            Err(Refusal::NoBudget)
        } else if veto.map_or(self.open, |veto| self.allowed_open(veto)) > 0 {
            Ok(())
        } else if self.schedulable > self.open {
            Err(Refusal::QueueFull)
        } else if self.open > 0 {
            Err(Refusal::CircuitOpen)
        } else {
            Err(Refusal::NoHealthyWorker)
        }
    }

    /// The stats-based view of "the queues really are full" agrees with
    /// the books' count of workers with room.
    fn check_room_in_stats(&mut self) -> Result<(), Failure> {
        let stats = self.pool.stats();
        let room = stats.workers.iter().any(|w| {
            let limit = self
                .workers
                .get(w.worker.as_u64())
                .map_or(self.limits.capacity, |book| {
                    book.capacity.min(book.trial_limit())
                });
            w.status != WorkerHealthStatus::Unavailable
                && !w.removing
                && w.queued + w.running < limit
        });
        if room != (self.open > 0) {
            return Err(self.fail(format!(
                "books say {} workers have room but stats say room={room}",
                self.open
            )));
        }
        Ok(())
    }

    /// Hands request `id` to the pool: through a breaker's vetting, as an
    /// offer, or as a plain submit.
    fn call_submit(
        &mut self,
        shape: Shape,
        timeout_ms: Option<u64>,
        id: u64,
        offer: bool,
        veto: Option<u64>,
    ) -> Result<Result<RequestKey, Refused<u64>>, Failure> {
        let request = self.templates.request(shape, timeout_ms);
        Ok(if let Some(veto) = veto {
            let admission = self.pool.config().admit(request);
            self.vet_loop(admission, id, veto)?
        } else if offer {
            let admission = self.pool.config().admit(request);
            self.pool.offer(self.clock, admission, id)
        } else {
            self.pool.submit(self.clock, request, id)
        })
    }

    /// Drains the outputs of submit `id` and traces it; returns its key or
    /// the refusal.
    fn drain_submit(
        &mut self,
        id: u64,
        result: Result<RequestKey, Refused<u64>>,
    ) -> Result<Result<RequestKey, Refusal>, Failure> {
        let outcome = match result {
            Ok(key) => Ok(key),
            Err(refused) => {
                if refused.payload != id {
                    return Err(self.fail(format!(
                        "refusal of #{id} returned payload {}",
                        refused.payload
                    )));
                }
                Err(Refusal::of(&refused.error))
            }
        };
        // The Accepted event names the worker: drain first.
        self.drain()?;
        let traced = match outcome {
            Ok(key) => match self.requests.get(key.as_u64()).copied() {
                Some(book) if book.id == id => Ok(self.ordinal(book.worker).unwrap_or(u32::MAX)),
                _ => {
                    return Err(
                        self.fail(format!("#{id} accepted as {key} without an Accepted event"))
                    )
                }
            },
            Err(refusal) => Err(refusal),
        };
        if self.vetoes_reported != self.vetoes_pending {
            return Err(self.fail(format!(
                "submit #{id}: the breaker vetoed {} workers, {} vetoes reported",
                self.vetoes_pending, self.vetoes_reported
            )));
        }
        self.trace.push(TraceEvent::Submit {
            at: self.seen,
            id,
            result: traced,
        });
        Ok(outcome)
    }

    /// A declined offer leaves no trace in the pool: no counter moved, no
    /// output emitted.
    fn check_declined(
        &mut self,
        id: u64,
        counters_before: foreman_core::Counters,
    ) -> Result<(), Failure> {
        let after = *self.pool.counters();
        if after != counters_before {
            return Err(self.fail(format!(
                "declined offer #{id} changed the counters: {counters_before:?} -> {after:?}"
            )));
        }
        if self.outputs_this_input != 0 {
            return Err(self.fail(format!("declined offer #{id} emitted outputs")));
        }
        Ok(())
    }
}

/// A veto mask over ordinals modulo 8 as one over ordinals modulo 64: the
/// byte repeated, so bit `k` is bit `k % 8` of `veto`.
fn spread(veto: u8) -> u64 {
    u64::from_ne_bytes([veto; 8])
}
