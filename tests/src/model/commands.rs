//! One input each: cancels, completions, probe results, worker commands,
//! shutdown, and the passing of time (wake-ups, advances, clock steps).

use std::time::Duration;

use foreman_core::{
    CommandError, Pool, ProbeKey, RecoveryState, RequestKey, Time, WorkerHealthStatus, WorkerKey,
    WorkerSpec, MAX_WORKER_ID_LEN,
};

use super::books::{Context, HealthBook, Lifecycle, ReqBook, ReqState, WorkerBook};
use super::harness::Harness;
use super::operations::{worker_name, Outcome, RawInput, Verdict};
use super::trace::TraceEvent;
use super::Failure;

impl Harness {
    /// The first broken rule.
    pub fn cancel(&mut self, request: RequestKey) -> Result<bool, Failure> {
        self.begin_input()?;
        let book = self.requests.get(request.as_u64()).copied();
        self.context = Context::Cancel { request };
        let applied = self.pool.cancel(self.clock, request);
        self.trace.push(TraceEvent::Cancel {
            at: self.seen,
            id: book.map_or(0, |b| b.id),
            applied,
        });
        if applied != book.is_some() {
            return Err(self.fail(format!(
                "cancel of {request} returned {applied}, books: {book:?}"
            )));
        }
        self.drain()?;
        if applied && self.requests.get(request.as_u64()).is_some() {
            return Err(self.fail(format!("cancel of {request} did not answer it")));
        }
        self.finish_input()?;
        Ok(applied)
    }

    /// Completes a request (stale keys allowed); returns the core's answer.
    ///
    /// # Errors
    /// The first broken rule.
    pub fn complete(&mut self, request: RequestKey, outcome: Outcome) -> Result<bool, Failure> {
        self.begin_input()?;
        let owner = self.owner(request);
        let book = self.requests.get(owner.as_u64()).copied();
        // A hedge's key while it runs (once started); a request's own key
        // while its own attempt runs (not while its hedge runs alone).
        let expect = match self.hedges.get(&request.as_u64()) {
            Some(hedge) => hedge.started,
            None => matches!(
                book,
                Some(ReqBook {
                    state: ReqState::Running { .. },
                    sibling,
                    ..
                }) if sibling.is_none_or(|hedge| {
                    self.hedges.get(&hedge.as_u64()).is_some_and(|h| !h.alone)
                })
            ),
        };
        self.context = Context::Complete { request, outcome };
        let applied = self
            .pool
            .handle_completion(self.clock, request, outcome.result());
        self.trace.push(TraceEvent::Complete {
            at: self.seen,
            id: book.map_or(0, |b| b.id),
            outcome,
            applied,
        });
        if applied != expect {
            return Err(self.fail(format!(
                "completion of {request} returned {applied}, books: {book:?}"
            )));
        }
        self.drain()?;
        let ended = self.ended.iter().any(|(attempt, _)| *attempt == request);
        if applied
            && self.requests.get(owner.as_u64()).is_some()
            && self.retried != Some(owner)
            && !ended
        {
            return Err(self.fail(format!("completion of {request} did not answer it")));
        }
        self.finish_input()?;
        Ok(applied)
    }

    /// Reports a probe's verdict; returns the core's answer.
    ///
    /// # Errors
    /// The first broken rule.
    pub fn probe_result(
        &mut self,
        worker: WorkerKey,
        probe: ProbeKey,
        verdict: Verdict,
    ) -> Result<bool, Failure> {
        self.begin_input()?;
        let expect = self
            .workers
            .get(worker.as_u64())
            .is_some_and(|book| book.probe.is_some_and(|(p, _)| p == probe));
        self.context = Context::Probe {
            worker,
            verdict: verdict.status(),
        };
        let applied = self
            .pool
            .handle_probe_result(self.clock, worker, probe, verdict.status());
        self.trace.push(TraceEvent::ProbeResult {
            at: self.seen,
            worker: self.ordinal(worker).unwrap_or(u32::MAX),
            verdict,
            applied,
        });
        if applied != expect {
            return Err(self.fail(format!(
                "probe result for {worker} probe {} returned {applied}, expected {expect}",
                probe.as_u64()
            )));
        }
        if applied {
            let threshold = self.limits.threshold;
            if let Some(book) = self.workers.get_mut(worker.as_u64()) {
                // A Healthy verdict gives an ejected worker one trial, unless
                // a failure was counted since the probe was sent.
                let health = &mut book.health;
                health.verdict = verdict.status();
                if verdict == Verdict::Healthy
                    && health.probe_seq == health.seq
                    && health.failures >= threshold
                {
                    health.failures = threshold - 1;
                }
            }
            self.touch_health(worker);
            self.clear_probe(worker);
            // An answered probe ends its worker's saturation.
            self.recount_worker(worker, |b| b.saturated = None);
        }
        self.drain()?;
        self.finish_input()?;
        Ok(applied)
    }

    /// Adds a worker; returns its key when the pool took it.
    ///
    /// # Errors
    /// The first broken rule.
    pub fn add_worker(&mut self) -> Result<Option<WorkerKey>, Failure> {
        self.add(None)
    }

    /// Adds a worker named [`worker_name`]`(name)`; returns its key when
    /// the pool took it.
    ///
    /// # Errors
    /// The first broken rule.
    pub fn add_named_worker(&mut self, name: u8) -> Result<Option<WorkerKey>, Failure> {
        self.add(Some(name))
    }

    /// Adds a worker with its own run limit `max_concurrency` (0 is
    /// refused), named [`worker_name`]`(name)` or numbered; returns its
    /// key when the pool took it.
    ///
    /// # Errors
    /// The first broken rule.
    pub fn add_worker_with(
        &mut self,
        name: Option<u8>,
        max_concurrency: u32,
    ) -> Result<Option<WorkerKey>, Failure> {
        self.add_spec(name, Some(max_concurrency))
    }

    fn add(&mut self, name: Option<u8>) -> Result<Option<WorkerKey>, Failure> {
        self.add_spec(name, None)
    }

    fn add_spec(
        &mut self,
        name: Option<u8>,
        max_concurrency: Option<u32>,
    ) -> Result<Option<WorkerKey>, Failure> {
        self.begin_input()?;
        self.context = Context::Add;
        let (result, mut expected) = match (name, max_concurrency) {
            (None, None) => (self.pool.add_worker(self.clock), self.expected_add(None)),
            (Some(name), None) => {
                let id = worker_name(name);
                let expected = self.expected_add(Some((name, &id)));
                (self.pool.add_named_worker(self.clock, id), expected)
            }
            (name, Some(limit)) => {
                let mut spec = WorkerSpec::default().with_max_concurrency(limit);
                let expected = match name {
                    Some(name) => {
                        let id = worker_name(name);
                        let expected = self.expected_add(Some((name, &id)));
                        spec.id = Some(id);
                        expected
                    }
                    None => self.expected_add(None),
                };
                (self.pool.add_worker_with(self.clock, spec), expected)
            }
        };
        if expected.is_none() && max_concurrency == Some(0) {
            expected = Some(AddRefusal::ZeroConcurrency);
        }
        let key = match (result, expected) {
            (Ok(key), None) => {
                let limit = max_concurrency.map_or(self.limits.max_running, |n| n as usize);
                self.book_worker(key, name, limit)?;
                Some(key)
            }
            (Err(error), Some(refusal)) if refusal.is(&error) => None,
            (result, expected) => {
                return Err(self.fail(format!(
                    "adding worker {name:?} returned {result:?}; the books expect {expected:?}"
                )))
            }
        };
        self.trace.push(TraceEvent::Command {
            at: self.seen,
            kind: 0,
            worker: key.map_or(u32::MAX, |k| self.ordinal(k).unwrap_or(u32::MAX)),
            ok: key.is_some(),
        });
        self.drain()?;
        self.finish_input()?;
        Ok(key)
    }

    /// Why the books expect an add to be refused, if they do: shutdown
    /// began, the name (choice and text) is empty or too long, or a worker
    /// of that name is in the pool.
    fn expected_add(&self, name: Option<(u8, &str)>) -> Option<AddRefusal> {
        if self.lifecycle != Lifecycle::Running {
            return Some(AddRefusal::ShuttingDown);
        }
        let (choice, id) = name?;
        if id.is_empty() || id.len() > MAX_WORKER_ID_LEN {
            Some(AddRefusal::InvalidId)
        } else if self.names.iter().any(|&(_, taken)| taken == choice) {
            Some(AddRefusal::DuplicateId)
        } else {
            None
        }
    }

    /// Books a worker the pool just added.
    fn book_worker(
        &mut self,
        key: WorkerKey,
        name: Option<u8>,
        max_running: usize,
    ) -> Result<(), Failure> {
        let book = WorkerBook {
            ordinal: self.next_ordinal,
            status: WorkerHealthStatus::Healthy,
            removing: false,
            stopped: false,
            queued: 0,
            running: 0,
            probe: None,
            list_pos: self.worker_list.len(),
            probe_pos: usize::MAX,
            health: HealthBook::FRESH,
            last_run: None,
            recovery: RecoveryState::Closed,
            running_at_half_open: 0,
            saturated: None,
            queue_limit: self.limits.queue_capacity,
            max_running,
            capacity: self.limits.queue_capacity.saturating_add(max_running),
        };
        if !self.workers.insert(key.as_u64(), book) {
            return Err(self.fail(format!("new worker {key} reuses a booked key")));
        }
        self.next_ordinal += 1;
        self.worker_list.push(key);
        if let Some(name) = name {
            self.names.push((key, name));
        }
        let (schedulable, open, free) = self.worker_flags(&book);
        self.schedulable += usize::from(schedulable);
        self.open += usize::from(open);
        self.free += usize::from(free);
        Ok(())
    }

    /// Gives the pool an input naming `raw` as a request or worker key
    /// ([`Op::RawKey`](super::Op::RawKey)); the books say whether it names
    /// anything.
    ///
    /// # Errors
    /// The first broken rule.
    pub fn raw_key(&mut self, raw: u64, input: RawInput) -> Result<(), Failure> {
        match input {
            RawInput::Cancel => self.cancel(RequestKey::from_u64(raw)).map(drop),
            RawInput::Complete => self
                .complete(RequestKey::from_u64(raw), Outcome::Success)
                .map(drop),
            RawInput::Restart => self.restart_worker(WorkerKey::from_u64(raw)).map(drop),
            RawInput::Remove => self.remove_worker(WorkerKey::from_u64(raw)).map(drop),
        }
    }

    /// Runs a remove (`kind` 1) or restart (`kind` 2) command on the pool
    /// and traces it; returns the worker's book from before and the result.
    #[allow(clippy::type_complexity)]
    fn worker_command(
        &mut self,
        worker: WorkerKey,
        kind: u8,
        command: fn(&mut Pool<u64>, Time, WorkerKey) -> Result<(), CommandError>,
    ) -> Result<(Option<WorkerBook>, Result<(), CommandError>), Failure> {
        self.begin_input()?;
        let book = self.workers.get(worker.as_u64()).copied();
        self.context = if kind == 1 {
            Context::Remove { worker }
        } else {
            Context::Restart { worker }
        };
        let result = command(&mut self.pool, self.clock, worker);
        self.trace.push(TraceEvent::Command {
            at: self.seen,
            kind,
            worker: book.map_or(u32::MAX, |b| b.ordinal),
            ok: result.is_ok(),
        });
        Ok((book, result))
    }

    /// Removes a worker; returns whether the pool took the command.
    ///
    /// # Errors
    /// The first broken rule.
    pub fn remove_worker(&mut self, worker: WorkerKey) -> Result<bool, Failure> {
        let (book, result) = self.worker_command(worker, 1, Pool::remove_worker)?;
        let stopped = self.is_stopped();
        let ok = match (&result, book) {
            (Err(CommandError::ShuttingDown), _) if stopped => false,
            (Err(CommandError::UnknownWorker(_)), None) if !stopped => false,
            (Err(CommandError::UnknownWorker(_)), Some(b)) if b.stopped && !stopped => false,
            (Err(CommandError::WorkerRemoving(_)), Some(b)) if b.removing && !stopped => false,
            (Ok(()), Some(b)) if !b.removing && !stopped => true,
            _ => {
                return Err(self.fail(format!(
                    "remove_worker({worker}) returned {result:?}, books: {book:?}"
                )));
            }
        };
        if ok {
            self.recount_worker(worker, |b| b.removing = true);
        }
        self.drain()?;
        if ok && !self.is_stopped() {
            if let Some(b) = self.workers.get(worker.as_u64()) {
                let moving = self
                    .moving
                    .iter()
                    .filter_map(|key| self.requests.get(key.as_u64()))
                    .filter(|book| book.worker == worker)
                    .count();
                if b.queued != moving {
                    let queued = b.queued;
                    return Err(self.fail(format!(
                        "removed {worker} still holds {queued} queued requests, {moving} of them awaiting their breaker"
                    )));
                }
            }
        }
        self.finish_command(ok)
    }

    /// Restarts a worker; returns whether the pool took the command.
    ///
    /// # Errors
    /// The first broken rule.
    pub fn restart_worker(&mut self, worker: WorkerKey) -> Result<bool, Failure> {
        let (book, result) = self.worker_command(worker, 2, Pool::restart_worker)?;
        let stopped = self.lifecycle == Lifecycle::Stopped;
        let ok = match (&result, book) {
            (Err(CommandError::ShuttingDown), _) if stopped => false,
            (Err(CommandError::UnknownWorker(_)), None) if !stopped => false,
            (Err(CommandError::WorkerRemoving(_)), Some(b)) if b.removing && !stopped => false,
            (Ok(()), Some(b)) if !b.removing && !b.stopped && !stopped => true,
            _ => {
                return Err(self.fail(format!(
                    "restart_worker({worker}) returned {result:?}, books: {book:?}"
                )));
            }
        };
        if ok {
            // A restart ends its worker's saturation.
            self.recount_worker(worker, |b| b.saturated = None);
        }
        self.drain()?;
        if ok {
            let running = self.workers.get(worker.as_u64()).map_or(0, |b| b.running);
            let queued = self.workers.get(worker.as_u64()).map_or(0, |b| b.queued);
            let max_running = self
                .workers
                .get(worker.as_u64())
                .map_or(self.limits.max_running, |b| b.max_running);
            // Queued requests move onto the fresh worker's free slots
            // (unless it leaves them to a faster worker, for a bounded
            // time: see `check_step`).
            if running > max_running
                || (queued > 0 && running < max_running && !self.limits.deferral)
            {
                return Err(self.fail(format!(
                    "after restart {worker} runs {running} with {queued} queued"
                )));
            }
        }
        self.finish_command(ok)
    }

    /// Finishes a worker command's input; after one the pool took, the
    /// O(n) checks run too (a refused command changed nothing the cheap
    /// checks miss).
    fn finish_command(&mut self, ok: bool) -> Result<bool, Failure> {
        if ok {
            self.force_full_check();
        }
        self.finish_input()?;
        Ok(ok)
    }

    /// Begins shutdown with an optional drain limit.
    ///
    /// # Errors
    /// The first broken rule.
    pub fn begin_shutdown(&mut self, drain: Option<Duration>) -> Result<(), Failure> {
        self.begin_input()?;
        self.context = Context::Shutdown;
        self.trace.push(TraceEvent::Shutdown {
            at: self.seen,
            drain,
        });
        let requested = drain.map(|limit| self.seen + limit);
        match self.lifecycle {
            Lifecycle::Running => {
                self.lifecycle = Lifecycle::Draining {
                    deadline: requested,
                };
                self.drain_deadline = requested;
            }
            Lifecycle::Draining { deadline } => {
                let deadline = match (deadline, requested) {
                    (Some(old), Some(new)) => Some(old.min(new)),
                    (old, new) => old.or(new),
                };
                self.lifecycle = Lifecycle::Draining { deadline };
                self.drain_deadline = deadline;
            }
            Lifecycle::Stopped => {}
        }
        self.pool.begin_shutdown(self.clock, drain);
        self.drain()?;
        self.force_full_check();
        self.finish_input()
    }

    /// Wakes the core at `at` (the driver's clock becomes `at`): calls
    /// `handle_timeout` and settles.
    ///
    /// # Errors
    /// The first broken rule.
    pub fn wake(&mut self, at: Time) -> Result<(), Failure> {
        self.clock = at;
        self.begin_input()?;
        self.fire_timeout()?;
        self.finish_input()
    }

    /// Moves the driver's clock forward to `target`, waking the core at
    /// every `poll_timeout` on the way (at most
    /// [`set_max_wakes_per_advance`](Self::set_max_wakes_per_advance)
    /// times, [`super::MAX_WAKES_PER_ADVANCE`] unless set; then the clock
    /// stops at the last wake-up).
    ///
    /// # Errors
    /// The first broken rule.
    pub fn advance(&mut self, target: Time) -> Result<(), Failure> {
        for _ in 0..self.max_wakes_per_advance {
            match self.next_timeout() {
                Some(at) if at <= target => {
                    let at = at.max(self.clock);
                    self.wake(at)?;
                }
                _ => {
                    self.clock = self.clock.max(target);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Steps the driver's clock backwards by `by`.
    pub fn step_back(&mut self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.clock = Time::from_nanos(self.clock.as_nanos().saturating_sub(by));
        self.trace.push(TraceEvent::ClockBack { clock: self.clock });
    }

    /// Calls `handle_timeout` at the driver's clock when nothing is due
    /// (the harness has settled): it must produce nothing.
    ///
    /// # Errors
    /// The first broken rule.
    pub fn spurious_timeout(&mut self) -> Result<(), Failure> {
        self.begin_input()?;
        let due = self.next_timeout().is_some_and(|at| at <= self.seen);
        self.fire_timeout()?;
        if !due && self.outputs_this_input > 0 {
            return Err(self.fail(format!(
                "a spurious handle_timeout at {} produced {} outputs",
                self.seen, self.outputs_this_input
            )));
        }
        self.finish_input()
    }

    /// Runs every check now, including the O(n) ones.
    ///
    /// # Errors
    /// The first broken rule.
    pub fn check(&mut self) -> Result<(), Failure> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let result = self.check_step().and_then(|()| self.check_full());
        if let Err(failure) = &result {
            self.failure = Some(failure.clone());
        }
        result
    }
}

/// Why an add is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddRefusal {
    ShuttingDown,
    InvalidId,
    DuplicateId,
    ZeroConcurrency,
}

impl AddRefusal {
    /// Whether the pool's `error` is this refusal.
    fn is(self, error: &CommandError) -> bool {
        matches!(
            (self, error),
            (AddRefusal::ShuttingDown, CommandError::ShuttingDown)
                | (AddRefusal::InvalidId, CommandError::InvalidWorkerId { .. })
                | (AddRefusal::DuplicateId, CommandError::DuplicateWorkerId(_))
                | (
                    AddRefusal::ZeroConcurrency,
                    CommandError::ZeroConcurrency { .. }
                )
        )
    }
}
