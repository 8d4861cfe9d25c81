//! What the harness checks and books for each answer: one per accepted
//! request, with the times the books hold, of a kind the current input may
//! produce.

use foreman_core::{Answer, Phase};

use super::books::{Context, ReqBook, ReqState};
use super::harness::Harness;
use super::operations::Outcome;
use super::output::Output;
use super::trace::{AnswerKind, TraceEvent};
use super::Failure;

impl Harness {
    pub(super) fn on_answer(&mut self, answer: Answer<u64>) -> Result<(), Failure> {
        let request = answer.request;
        let Some(book) = self.requests.remove(request.as_u64()) else {
            return Err(Failure(format!(
                "Answer for {request} which is not pending (answered twice or never accepted): {:?}",
                answer.result
            )));
        };
        let kind = AnswerKind::of(&answer.result);
        ensure!(
            answer.worker == book.worker,
            "{request} answered by {} but bound to {}",
            answer.worker,
            book.worker
        );
        ensure!(
            answer.attempts == book.attempts,
            "#{} answered after {} attempts, books say {}",
            book.id,
            answer.attempts,
            book.attempts
        );
        self.check_answer_times(&answer, &book)?;
        self.check_answer_allowed(&answer, &book, kind)?;
        let limit = (kind == AnswerKind::Timeout).then(|| book.expected_limit(self.seen));
        ensure!(
            answer.limit == limit,
            "#{} answered {kind:?} naming limit {:?}, expected {limit:?}",
            book.id,
            answer.limit
        );
        self.book_outcome(&book, kind);
        self.remove_live(&book);
        // A hedge still booked runs alone: the request's only attempt.
        if let Some(hedge) = book.sibling {
            self.hedges.remove(&hedge.as_u64());
        }
        match book.state {
            ReqState::Queued => {
                self.unpinned_queued -= usize::from(!book.pinned);
                self.recount_worker(book.worker, |b| b.queued -= 1);
            }
            ReqState::Moving => {
                self.forget_moving(request);
                self.recount_worker(book.worker, |b| b.queued -= 1);
            }
            ReqState::Running { .. } => {
                self.remove_running(book.run_pos);
                self.recount_worker(book.worker, |b| b.end_run());
            }
        }
        self.answered += 1;
        self.stale_request = request;
        self.trace.push(TraceEvent::Answer {
            id: book.id,
            phase: answer.phase,
            kind,
        });
        self.outputs.push(Output::Answered {
            request,
            id: book.id,
            kind,
        });
        Ok(())
    }

    /// The answer's phase, payload and times agree with the books: a queued
    /// answer carries the time since acceptance, a running one the queue
    /// and run times, and came from a completion or after an `Abort`.
    fn check_answer_times(&self, answer: &Answer<u64>, book: &ReqBook) -> Result<(), Failure> {
        let request = answer.request;
        let now = self.seen;
        let elapsed = now - book.accepted_at;
        match (answer.phase, book.state) {
            (Phase::Queued, ReqState::Queued | ReqState::Moving) => {
                ensure!(
                    answer.payload == book.id,
                    "queued answer of #{} returns payload {}",
                    book.id,
                    answer.payload
                );
                ensure!(
                    answer.ran_for.is_none(),
                    "queued answer of #{} has a run time",
                    book.id
                );
                ensure!(
                    answer.queued_for == elapsed,
                    "#{} queued_for {:?} != {elapsed:?}",
                    book.id,
                    answer.queued_for
                );
            }
            (
                Phase::Running,
                ReqState::Running {
                    started_at,
                    aborted,
                },
            ) => {
                ensure!(
                    answer.payload == book.id,
                    "running answer of #{} returns payload {}",
                    book.id,
                    answer.payload
                );
                ensure!(
                    answer.queued_for == started_at - book.accepted_at
                        && answer.ran_for == Some(now - started_at),
                    "#{} times queued {:?} ran {:?} disagree with the books",
                    book.id,
                    answer.queued_for,
                    answer.ran_for
                );
                let completed = matches!(
                    self.context,
                    Context::Complete { request: r, .. } if self.owner(r) == request
                );
                ensure!(
                    completed || aborted,
                    "#{} answered while running without Abort or completion",
                    book.id
                );
                ensure!(
                    !(completed && aborted),
                    "#{} completed after it was aborted",
                    book.id
                );
            }
            (phase, state) => {
                return Err(Failure(format!(
                    "#{} answered in phase {phase:?} but books say {state:?}",
                    book.id
                )));
            }
        }
        Ok(())
    }

    /// Which answers the current input may produce.
    fn check_answer_allowed(
        &self,
        answer: &Answer<u64>,
        book: &ReqBook,
        kind: AnswerKind,
    ) -> Result<(), Failure> {
        let request = answer.request;
        let now = self.seen;
        let allowed = match (self.context, kind) {
            (
                Context::Complete {
                    request: r,
                    outcome,
                },
                _,
            ) if self.owner(r) == request => {
                kind == match outcome {
                    Outcome::Success => AnswerKind::Ok,
                    Outcome::Failure { retryable } => AnswerKind::Failed { retryable },
                    Outcome::Panic => AnswerKind::Failed { retryable: false },
                }
            }
            (Context::Cancel { request: r }, AnswerKind::Cancelled { retryable: false }) => {
                r == request
            }
            (Context::Restart { worker }, AnswerKind::Cancelled { retryable: true }) => {
                worker == book.worker && answer.phase == Phase::Running
            }
            (Context::Remove { worker }, AnswerKind::Unavailable) => {
                worker == book.worker && answer.phase == Phase::Queued && !book.vetted
            }
            (Context::Refuse { request: r, worker }, AnswerKind::Unavailable) => {
                // Refused on a removing worker no other worker could take.
                r == request && worker == book.worker && answer.phase == Phase::Queued
            }
            (Context::Revet { request: r }, AnswerKind::Unavailable) => {
                r == request && book.state == ReqState::Moving
            }
            (context, AnswerKind::Timeout) => {
                self.check_timeout_answer(context, answer.phase, book)?;
                true
            }
            (Context::Timeout | Context::Shutdown, AnswerKind::ShuttingDown) => {
                let deadline = self.drain_deadline;
                ensure!(
                    deadline.is_some_and(|d| d <= now),
                    "#{} answered ShuttingDown at {now} before the drain deadline {deadline:?}",
                    book.id
                );
                true
            }
            _ => false,
        };
        ensure!(
            allowed,
            "#{} answered {kind:?} ({:?}) during {:?}",
            book.id,
            answer.result,
            self.context
        );
        Ok(())
    }

    /// A `Timeout` answer neither early nor out of place: a running request
    /// only at a wake-up at or after its deadline; a queued one (expired,
    /// or reached by a worker with less budget left than that worker's last
    /// run) by whatever frees a worker, never by a submit (but under a
    /// `PeakEwma` deferral, when the submit asks a free worker).
    fn check_timeout_answer(
        &self,
        context: Context,
        phase: Phase,
        book: &ReqBook,
    ) -> Result<(), Failure> {
        let now = self.seen;
        match phase {
            // Aborted at its deadline or its run limit (the `Abort` is
            // checked above).
            Phase::Running => {
                let due = book.deadline.is_some_and(|d| d <= now)
                    || book.run_limit_at().is_some_and(|at| at <= now);
                ensure!(
                    context == Context::Timeout && due,
                    "#{} timed out while running at {now} during {context:?}, deadline {:?}, \
                     run limit {:?}",
                    book.id,
                    book.deadline,
                    book.run_limit_at()
                );
            }
            // Expired in its queue, or reached by a worker with less
            // budget left than that worker's last run (whatever frees a
            // worker may answer it; a submit frees none, but under a
            // deferral it asks a free worker, which may reach one).
            // Or past its queue-wait limit.
            Phase::Queued => {
                let left = book.deadline.map(|d| d - now);
                let waited_too_long = book.queue_wait_at.is_some_and(|at| at <= now);
                ensure!(
                    (self.limits.deferral || !matches!(context, Context::Submit { .. }))
                        && (waited_too_long
                            || left.is_some_and(|left| left.is_zero() || left < self.longest_run)),
                    "#{} answered Timeout while queued at {now} during {context:?} with {left:?} \
                     of its budget left (longest run so far {:?})",
                    book.id,
                    self.longest_run
                );
            }
        }
        Ok(())
    }
}
