//! One input: a handler declines a running request before starting it
//! (`Pool::handle_refusal`).

use std::cmp::Reverse;

use foreman_core::{RequestKey, Time};

use super::books::{Context, ReqState};
use super::harness::Harness;
use super::Failure;

impl Harness {
    /// Reports that the handler of running `request` declined it before
    /// starting; returns the core's answer. The request waits again (on
    /// another worker or its own), unanswered, its attempt uncounted, and
    /// its worker is saturated: it starts nothing until one of its runs
    /// ends, a probe answers or it is restarted. A hedge's run, a request
    /// racing a hedge, and a key that is not running are left alone
    /// (returns `false` without calling the core).
    ///
    /// # Errors
    /// The first broken rule.
    pub fn refuse(&mut self, request: RequestKey) -> Result<bool, Failure> {
        if self.hedges.contains_key(&request.as_u64()) {
            return Ok(false);
        }
        let Some(book) = self.requests.get(request.as_u64()).copied() else {
            return Ok(false);
        };
        if book.sibling.is_some() || !matches!(book.state, ReqState::Running { aborted: false, .. })
        {
            return Ok(false);
        }
        self.begin_input()?;
        let worker = book.worker;
        self.context = Context::Refuse { request, worker };
        let applied = self.pool.handle_refusal(self.clock, request);
        if !applied {
            return Err(self.fail(format!(
                "refusal of running #{} returned false, books: {book:?}",
                book.id
            )));
        }
        self.refused += 1;
        // Back in its worker's line (the front of it) until an event says
        // it moved; a `Start` there is checked against the saturation.
        self.remove_running(book.run_pos);
        // An expiry at `Time::MAX` (where saturated arithmetic lands) is
        // never, as in the core.
        let until = self.seen + self.limits.probe_interval;
        if until != Time::MAX {
            self.saturations.push(Reverse((until, worker)));
        }
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
