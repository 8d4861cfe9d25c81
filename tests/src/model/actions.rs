//! What the harness checks and books for each action the core asks of its
//! driver: starts, aborts, revets, probes and worker restarts and stops
//! (answers have their own file).

use std::cmp::Reverse;

use foreman_core::{Action, ProbeKey, RequestKey, Time, WorkerHealthStatus, WorkerKey};

use super::books::{too_late_to_start, Context, HealthBook, Lifecycle, ReqState};
use super::harness::Harness;
use super::output::Output;
use super::trace::TraceEvent;
use super::Failure;

impl Harness {
    pub(super) fn on_action(&mut self, action: Action<u64>) -> Result<(), Failure> {
        match action {
            Action::Start {
                request,
                worker,
                payload,
                may_retry,
                ..
            } if self.hedges.contains_key(&request.as_u64()) => {
                self.on_hedge_start(request, worker, payload, may_retry)
            }
            // A hedge started and ended in the same input (its `Abort`
            // follows): nothing to run.
            Action::Start {
                request, worker, ..
            } if self.ended.contains(&(request, worker)) => Ok(()),
            Action::Start {
                request,
                worker,
                payload,
                may_retry,
                ..
            } => self.on_start(request, worker, payload, may_retry),
            Action::Abort { request, worker } => self.on_abort(request, worker),
            Action::Answer(answer) => self.on_answer(answer),
            Action::Revet {
                request,
                worker,
                payload,
            } => self.on_revet(request, worker, payload),
            Action::RunProbe { worker, probe } => self.on_run_probe(worker, probe),
            Action::AbortProbe { worker, probe } => self.on_abort_probe(worker, probe),
            Action::RestartWorker { worker } => self.on_restart_worker(worker),
            Action::StopWorker { worker } => self.on_stop_worker(worker),
            // `Action` is `#[non_exhaustive]`; the workspace pins
            // foreman-core at its exact version, so an action the model has
            // no rule for is a core change the model was not taught: fail.
            unknown => Err(Failure(format!(
                "the model has no rule for the action {unknown:?}"
            ))),
        }
    }

    /// A start of a request queued on a live, non-removing worker with a
    /// free run slot, with budget enough to start, saying whether its
    /// failure may retry it (the policy covers it and attempts remain).
    fn on_start(
        &mut self,
        request: RequestKey,
        worker: WorkerKey,
        payload: u64,
        may_retry: bool,
    ) -> Result<(), Failure> {
        let wbook = self.worker_book(worker, "Start")?;
        ensure!(
            !wbook.removing,
            "Start of {request} on removing worker {worker}"
        );
        let Some(book) = self.requests.get(request.as_u64()).copied() else {
            return Err(Failure(format!("Start of unknown request {request}")));
        };
        ensure!(
            book.id == payload,
            "Start of {request} carries payload {payload}, booked #{}",
            book.id
        );
        ensure!(
            book.worker == worker && book.state == ReqState::Queued,
            "Start of {request} on {worker} but books say {book:?}"
        );
        ensure!(
            wbook.running < wbook.max_running,
            "Start on {worker} already running {}",
            wbook.running
        );
        ensure!(
            wbook.saturated.is_none(),
            "Start of {request} on saturated {worker} (a handler refused a request there)"
        );
        // A queued request starts only with enough budget left (one
        // submitted to a free worker starts whatever its budget).
        let at_once = matches!(self.context, Context::Submit { id, .. } if id == book.id);
        // A retry starts at once too: its queue-wait limit was for its
        // first wait.
        let retry = self.retried == Some(request);
        ensure!(
            at_once || retry || book.queue_wait_at.is_none_or(|at| at > self.seen),
            "#{} started on {worker} at {} past its queue-wait limit {:?}",
            book.id,
            self.seen,
            book.queue_wait_at
        );
        ensure!(
            at_once || !too_late_to_start(book.deadline, self.seen, wbook.last_run),
            "#{} started on {worker} at {} with deadline {:?}, but the worker's last run took {:?}",
            book.id,
            self.seen,
            book.deadline,
            wbook.last_run
        );
        // (Whether the worker was schedulable then is not known
        // here: this input's events, health changes included, were
        // all drained before its actions.)
        self.unpinned_queued -= usize::from(!book.pinned);
        // A request late binding moved was taken off its old
        // worker's books then, and never counted as queued on this
        // one (this input's answers, which free run slots, are
        // drained after its events).
        let moved = self.stolen.iter().position(|stolen| *stolen == request);
        if let Some(position) = moved {
            self.stolen.swap_remove(position);
        }
        let attempts = book.attempts + 1;
        ensure!(
            attempts <= self.limits.max_attempts + book.hedges,
            "#{} started {attempts} times, more than the {} allowed with {} hedges",
            book.id,
            self.limits.max_attempts,
            book.hedges
        );
        let expect_retry = (book.retry && attempts < self.limits.max_attempts)
            || (book.hedge && book.hedges < self.limits.max_hedges);
        ensure!(
            may_retry == expect_retry,
            "Start of #{} (attempt {attempts}) says may_retry {may_retry}, expected {expect_retry}",
            book.id
        );
        let run_pos = self.running.len();
        self.running.push(request);
        if let Some(b) = self.requests.get_mut(request.as_u64()) {
            b.state = ReqState::Running {
                started_at: self.seen,
                aborted: false,
            };
            b.run_pos = run_pos;
            b.attempts = attempts;
            if let Some(at) = b.run_limit_at() {
                self.deadlines.push(Reverse((at, request)));
            }
        }
        self.recount_worker(worker, |b| {
            b.queued -= usize::from(moved.is_none());
            b.running += 1;
        });
        if moved.is_some() {
            self.queue_grew(worker);
        }
        self.check_limits(worker)?;
        self.trace.push(TraceEvent::Start {
            id: book.id,
            worker: wbook.ordinal,
        });
        self.outputs.push(Output::Start {
            request,
            id: book.id,
            worker,
        });
        Ok(())
    }

    /// The start of a hedge the `Hedged` event of this input announced,
    /// on its worker, carrying its request's payload; its failure may
    /// retry the request once the hedge runs alone.
    fn on_hedge_start(
        &mut self,
        hedge: RequestKey,
        worker: WorkerKey,
        payload: u64,
        may_retry: bool,
    ) -> Result<(), Failure> {
        let Some(run) = self.hedges.get(&hedge.as_u64()).copied() else {
            return Err(Failure(format!("Start of unknown hedge {hedge}")));
        };
        let wbook = self.worker_book(worker, "Start")?;
        ensure!(
            !wbook.removing,
            "Start of hedge {hedge} on removing {worker}"
        );
        ensure!(
            !run.started && run.worker == worker && run.started_at == self.seen,
            "Start of hedge {hedge} on {worker} at {}, books: {run:?}",
            self.seen
        );
        let Some(book) = self.requests.get(run.request.as_u64()).copied() else {
            return Err(Failure(format!("hedge {hedge} of unknown {}", run.request)));
        };
        ensure!(
            payload == book.id,
            "Start of hedge {hedge} carries payload {payload}, its request is #{}",
            book.id
        );
        let expect_retry = book.retry && book.attempts < self.limits.max_attempts;
        ensure!(
            may_retry == expect_retry,
            "hedge of #{} (attempt {}) says may_retry {may_retry}, expected {expect_retry}",
            book.id,
            book.attempts
        );
        if let Some(h) = self.hedges.get_mut(&hedge.as_u64()) {
            h.started = true;
        }
        // Counted as running since its `Hedged` event.
        self.check_limits(worker)?;
        self.trace.push(TraceEvent::Start {
            id: book.id,
            worker: wbook.ordinal,
        });
        self.outputs.push(Output::Start {
            request: hedge,
            id: book.id,
            worker,
        });
        Ok(())
    }

    /// An abort of a running request, once; or of an attempt of a hedged
    /// request that ended in this input; or of a hedge running alone (its
    /// request's only attempt).
    fn on_abort(&mut self, request: RequestKey, worker: WorkerKey) -> Result<(), Failure> {
        if self.ended.contains(&(request, worker)) {
            self.outputs.push(Output::Abort { request });
            return Ok(());
        }
        let request = match self.hedges.get(&request.as_u64()) {
            Some(hedge) if hedge.alone => {
                let owner = hedge.request;
                self.outputs.push(Output::Abort { request });
                owner
            }
            Some(_) => {
                return Err(Failure(format!(
                    "Abort of hedge {request} on {worker} that still races"
                )))
            }
            None => request,
        };
        let Some(book) = self.requests.get_mut(request.as_u64()) else {
            return Err(Failure(format!("Abort of unknown request {request}")));
        };
        let id = book.id;
        match &mut book.state {
            ReqState::Running { aborted, .. } if book.worker == worker && !*aborted => {
                *aborted = true
            }
            _ => {
                return Err(Failure(format!(
                    "Abort of {request} on {worker}, books: {book:?}"
                )))
            }
        }
        self.trace.push(TraceEvent::Abort { id });
        self.outputs.push(Output::Abort { request });
        Ok(())
    }

    /// A request placed by a breaker handed back to it, only in its
    /// worker's removal.
    fn on_revet(
        &mut self,
        request: RequestKey,
        worker: WorkerKey,
        payload: u64,
    ) -> Result<(), Failure> {
        ensure!(
            self.context == Context::Remove { worker },
            "Revet of {request} off {worker} in {:?}",
            self.context
        );
        let Some(book) = self.requests.get_mut(request.as_u64()) else {
            return Err(Failure(format!("Revet of unknown request {request}")));
        };
        ensure!(
            book.worker == worker && book.state == ReqState::Queued && book.vetted,
            "Revet of {request} off {worker}, books: {book:?}"
        );
        ensure!(
            payload == book.id,
            "Revet of #{} carries payload {payload}",
            book.id
        );
        book.state = ReqState::Moving;
        self.moving.push(request);
        self.outputs.push(Output::Revet { request });
        Ok(())
    }

    /// A probe of a live, non-removing worker with none outstanding, while
    /// the pool runs.
    fn on_run_probe(&mut self, worker: WorkerKey, probe: ProbeKey) -> Result<(), Failure> {
        let book = self.worker_book(worker, "RunProbe")?;
        ensure!(!book.removing, "RunProbe on removing worker {worker}");
        ensure!(
            self.lifecycle == Lifecycle::Running,
            "RunProbe during shutdown"
        );
        ensure!(book.probe.is_none(), "second probe on {worker}");
        let deadline = self.seen + self.limits.probe_timeout;
        let pos = self.probes.len();
        self.probes.push(worker);
        if let Some(b) = self.workers.get_mut(worker.as_u64()) {
            b.probe = Some((probe, deadline));
            b.probe_pos = pos;
            b.health.probe_seq = b.health.seq;
        }
        // A deadline at `Time::MAX` is never (see `on_accepted`).
        if deadline != Time::MAX {
            self.probe_deadlines
                .push(Reverse((deadline, worker, probe)));
        }
        self.trace.push(TraceEvent::RunProbe {
            worker: book.ordinal,
        });
        self.outputs.push(Output::RunProbe { worker, probe });
        Ok(())
    }

    /// An abort of the outstanding probe: at its deadline (a vote for
    /// `Unavailable`), or early by a restart, removal or shutdown.
    fn on_abort_probe(&mut self, worker: WorkerKey, probe: ProbeKey) -> Result<(), Failure> {
        let book = self.worker_book(worker, "AbortProbe")?;
        ensure!(
            book.probe.is_some_and(|(p, _)| p == probe),
            "AbortProbe of {worker} probe {} not outstanding",
            probe.as_u64()
        );
        if let Some((_, deadline)) = book.probe {
            if self.context == Context::Timeout && deadline > self.seen {
                // Only restart/remove/shutdown abort a probe early.
                return Err(Failure(format!(
                    "probe of {worker} aborted at {} before its deadline {deadline}",
                    self.seen
                )));
            }
        }
        if self.context == Context::Timeout {
            // A probe that times out votes Unavailable.
            if let Some(b) = self.workers.get_mut(worker.as_u64()) {
                b.health.verdict = WorkerHealthStatus::Unavailable;
            }
            self.touch_health(worker);
        }
        self.clear_probe(worker);
        self.trace.push(TraceEvent::AbortProbe {
            worker: book.ordinal,
        });
        self.outputs.push(Output::AbortProbe { worker, probe });
        Ok(())
    }

    /// A restart of an idle worker, in its restart command: health reset.
    fn on_restart_worker(&mut self, worker: WorkerKey) -> Result<(), Failure> {
        let book = self.worker_book(worker, "RestartWorker")?;
        ensure!(
            self.context == Context::Restart { worker },
            "RestartWorker {worker} in {:?}",
            self.context
        );
        ensure!(
            book.running == 0,
            "RestartWorker {worker} while it runs {}",
            book.running
        );
        if let Some(b) = self.workers.get_mut(worker.as_u64()) {
            b.health = HealthBook {
                seq: b.health.seq + 1,
                ..HealthBook::FRESH
            };
            b.last_run = None;
        }
        self.touch_health(worker);
        self.trace.push(TraceEvent::RestartWorker {
            worker: book.ordinal,
        });
        self.outputs.push(Output::RestartWorker { worker });
        Ok(())
    }

    /// The release of an empty worker without a probe, removed or shut
    /// down.
    fn on_stop_worker(&mut self, worker: WorkerKey) -> Result<(), Failure> {
        let book = self.worker_book(worker, "StopWorker")?;
        ensure!(
            book.queued == 0 && book.running == 0,
            "StopWorker {worker} while it holds {} queued, {} running",
            book.queued,
            book.running
        );
        ensure!(
            book.removing || self.lifecycle == Lifecycle::Stopped,
            "StopWorker {worker} neither removed nor shut down"
        );
        ensure!(
            book.probe.is_none(),
            "StopWorker {worker} with a probe outstanding"
        );
        self.recount_worker(worker, |b| b.stopped = true);
        let pos = book.list_pos;
        self.worker_list.swap_remove(pos);
        if let Some(&moved) = self.worker_list.get(pos) {
            if let Some(other) = self.workers.get_mut(moved.as_u64()) {
                other.list_pos = pos;
            }
        }
        if book.removing && self.lifecycle != Lifecycle::Stopped {
            // Released for good: the core may reuse the slot and the name.
            self.workers.remove(worker.as_u64());
            self.names.retain(|&(named, _)| named != worker);
        }
        self.trace.push(TraceEvent::StopWorker {
            worker: book.ordinal,
        });
        self.outputs.push(Output::StopWorker { worker });
        Ok(())
    }
}
