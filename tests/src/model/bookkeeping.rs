//! How the harness keeps its books (see [`super::books`]) up to date as
//! requests and workers change.

use foreman_core::{PanicMode, RecoveryState, RequestKey, Time, WorkerHealthStatus, WorkerKey};

use super::books::{timeout_counts, Lifecycle, ReqBook, ReqState, WorkerBook};
use super::harness::Harness;
use super::trace::AnswerKind;
use super::Failure;

impl Harness {
    /// Whether a worker is schedulable, has room, and has a free run slot
    /// that late binding must fill (a worker held at the ejection cap runs
    /// only what was routed to it, and a saturated one starts nothing, so
    /// their free slots do not count).
    pub(super) fn worker_flags(&self, book: &WorkerBook) -> (bool, bool, bool) {
        let schedulable = !book.removing
            && !book.stopped
            && self.lifecycle != Lifecycle::Stopped
            && book.status != WorkerHealthStatus::Unavailable;
        let limit = book.trial_limit();
        (
            schedulable,
            schedulable
                && book.queued + book.running < book.capacity.min(limit)
                && book.queued < self.limits.queue_capacity,
            schedulable
                && book.recovery != RecoveryState::Held
                && book.saturated.is_none()
                && book.running < book.max_running.min(limit),
        )
    }

    /// Changes a worker's book and keeps the schedulable/open counts.
    pub(super) fn recount_worker(
        &mut self,
        worker: WorkerKey,
        change: impl FnOnce(&mut WorkerBook),
    ) {
        let Some(book) = self.workers.get(worker.as_u64()).copied() else {
            return;
        };
        let (s0, o0, f0) = self.worker_flags(&book);
        let mut book = book;
        change(&mut book);
        if book.queued <= self.limits.queue_capacity {
            book.queue_limit = self.limits.queue_capacity;
        }
        let (s1, o1, f1) = self.worker_flags(&book);
        if let Some(slot) = self.workers.get_mut(worker.as_u64()) {
            *slot = book;
        }
        self.schedulable = self.schedulable + usize::from(s1) - usize::from(s0);
        self.open = self.open + usize::from(o1) - usize::from(o0);
        self.free = self.free + usize::from(f1) - usize::from(f0);
    }

    pub(super) fn recount_all(&mut self) {
        self.schedulable = 0;
        self.open = 0;
        self.free = 0;
        for index in 0..self.worker_list.len() {
            let key = self.worker_list[index];
            if let Some(book) = self.workers.get(key.as_u64()).copied() {
                let (s, o, f) = self.worker_flags(&book);
                self.schedulable += usize::from(s);
                self.open += usize::from(o);
                self.free += usize::from(f);
            }
        }
    }

    /// Under outlier detection, reads every worker's recovery state from
    /// the core after an input (it changes by the core's own timers, and
    /// with no status change when a probe's verdict masks it), checks each
    /// change against the machine's invariants, and recounts the workers'
    /// flags, which a half-open worker's permits limit.
    pub(super) fn sync_recovery(&mut self) -> Result<(), Failure> {
        let Some(tuning) = self.limits.outlier else {
            return Ok(());
        };
        let ejected_before = self.ejected_workers();
        let mut new_ejections = 0;
        // Ejected workers the core released during this input (their
        // `StopWorker` is drained after this): the core no longer counts
        // them as ejected.
        let mut released_ejected = 0;
        for index in 0..self.worker_list.len() {
            let key = self.worker_list[index];
            let Some(state) = self.pool.recovery_state(key) else {
                let ejected = self
                    .workers
                    .get(key.as_u64())
                    .is_some_and(|book| matches!(book.recovery, RecoveryState::Ejected { .. }));
                released_ejected += usize::from(ejected);
                continue;
            };
            let Some(book) = self.workers.get_mut(key.as_u64()) else {
                continue;
            };
            if state == book.recovery {
                continue;
            }
            match state {
                // An ejection that reaches the end of time (`Time::MAX`,
                // "never") is cut short by it.
                RecoveryState::Ejected { until, .. } if until < Time::MAX => {
                    new_ejections += 1;
                    let time = until - self.seen;
                    let longest = tuning.longest_ejection();
                    ensure!(
                        time >= tuning.base_ejection && time <= longest,
                        "{key} ejected for {time:?}, outside [{:?}, {longest:?}]",
                        tuning.base_ejection
                    );
                }
                RecoveryState::HalfOpen { .. }
                    if !matches!(book.recovery, RecoveryState::HalfOpen { .. }) =>
                {
                    book.running_at_half_open = book.running;
                }
                _ => {}
            }
            book.recovery = state;
        }
        if new_ejections > 0 {
            let ejected = self.ejected_workers() - released_ejected;
            // The cap over the workers the pool had as the input began,
            // those it released during the input included: one input can
            // eject a worker within the cap and then release another (a
            // removed worker whose last request ended), shrinking the cap
            // below the ejections it allowed, and the books cannot tell in
            // which order the two came.
            let cap = tuning.ejection_cap(self.worker_list.len());
            ensure!(
                tuning.panic_mode == PanicMode::FailFast || ejected <= cap.max(ejected_before),
                "{ejected} workers ejected, over the cap of {cap}"
            );
        }
        self.recount_all();
        Ok(())
    }

    /// Workers the books hold as ejected.
    pub(super) fn ejected_workers(&self) -> usize {
        self.worker_list
            .iter()
            .filter_map(|key| self.workers.get(key.as_u64()))
            .filter(|book| matches!(book.recovery, RecoveryState::Ejected { .. }))
            .count()
    }

    pub(super) fn clear_probe(&mut self, worker: WorkerKey) {
        let Some(book) = self.workers.get_mut(worker.as_u64()) else {
            return;
        };
        if book.probe.take().is_none() {
            return;
        }
        let pos = book.probe_pos;
        book.probe_pos = usize::MAX;
        self.probes.swap_remove(pos);
        if let Some(&moved) = self.probes.get(pos) {
            if let Some(other) = self.workers.get_mut(moved.as_u64()) {
                other.probe_pos = pos;
            }
        }
    }

    pub(super) fn remove_live(&mut self, book: &ReqBook) {
        let pos = book.live_pos;
        self.live.swap_remove(pos);
        if let Some(&moved) = self.live.get(pos) {
            if let Some(other) = self.requests.get_mut(moved.as_u64()) {
                other.live_pos = pos;
            }
        }
    }

    /// Drops `request` from the requests awaiting their breaker.
    pub(super) fn forget_moving(&mut self, request: RequestKey) {
        if let Some(pos) = self.moving.iter().position(|key| *key == request) {
            self.moving.swap_remove(pos);
        }
    }

    pub(super) fn remove_running(&mut self, pos: usize) {
        self.running.swap_remove(pos);
        if let Some(&moved) = self.running.get(pos) {
            if let Some(other) = self.requests.get_mut(moved.as_u64()) {
                other.run_pos = pos;
            }
        }
    }

    pub(super) fn worker_book(&self, worker: WorkerKey, what: &str) -> Result<WorkerBook, Failure> {
        match self.workers.get(worker.as_u64()) {
            Some(book) if !book.stopped => Ok(*book),
            Some(_) => Err(Failure(format!("{what} names stopped worker {worker}"))),
            None => Err(Failure(format!("{what} names unknown worker {worker}"))),
        }
    }

    /// Applies the outcome of a request that ran to its worker's predicted
    /// health: a success clears the failures (and is the worker's last
    /// run), a handler error or panic adds one, a timeout adds one only if
    /// [`timeout_counts`]; a cancellation, restart or drain changes nothing.
    pub(super) fn book_outcome(&mut self, book: &ReqBook, kind: AnswerKind) {
        let ReqState::Running { started_at, .. } = book.state else {
            return;
        };
        let now = self.seen;
        self.longest_any_run = self.longest_any_run.max(now - started_at);
        let Some(worker) = self.workers.get_mut(book.worker.as_u64()) else {
            return;
        };
        match kind {
            AnswerKind::Ok => {
                let run = now - started_at;
                worker.health.failures = 0;
                worker.last_run = Some(run);
                self.longest_run = self.longest_run.max(run);
            }
            AnswerKind::Failed { .. } => worker.health.fail(),
            // A run limit is the worker's whole allowance: it always counts.
            AnswerKind::Timeout => {
                let counts = book.run_limit_at().is_some_and(|at| at <= now)
                    || book.deadline.is_some_and(|deadline| {
                        timeout_counts(book.accepted_at, started_at, deadline)
                    });
                if counts {
                    worker.health.fail();
                }
            }
            _ => return,
        }
        self.touch_health(book.worker);
    }

    /// Notes that `worker`'s queue grew during the current input.
    pub(super) fn queue_grew(&mut self, worker: WorkerKey) {
        if !self.queues_grown.contains(&worker) {
            self.queues_grown.push(worker);
        }
    }

    pub(super) fn touch_health(&mut self, worker: WorkerKey) {
        if !self.health_touched.contains(&worker) {
            self.health_touched.push(worker);
        }
    }
}
