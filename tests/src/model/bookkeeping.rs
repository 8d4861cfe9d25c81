//! What the harness remembers of requests and workers (its books), and
//! the health the rules predict for each worker.

use std::time::Duration;

use foreman_core::{
    PoolConfig, ProbeKey, RequestKey, RoutingPolicy, Time, WorkerHealthStatus, WorkerKey,
};

use super::harness::Harness;
use super::operations::Outcome;
use super::trace::AnswerKind;
use super::Failure;

/// What a pool's configuration allows, as the harness's checks use it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Requests a worker may hold: its queue plus its run slots.
    pub(super) capacity: usize,
    pub(super) queue_capacity: usize,
    pub(super) max_running: usize,
    pub(super) max_timeout_ms: u64,
    pub(super) default_timeout: Option<Duration>,
    pub(super) probe_timeout: Duration,
    /// Consecutive failures that make a worker unavailable (a threshold of
    /// zero acts as one).
    pub(super) threshold: u32,
    /// Whether queued requests may move to the first free worker.
    pub(super) late_binding: bool,
}

impl Limits {
    pub(super) fn new(config: &PoolConfig) -> Self {
        let options = &config.options;
        let max_running = config.max_concurrency_per_worker as usize;
        Limits {
            capacity: options.queue_capacity.saturating_add(max_running),
            queue_capacity: options.queue_capacity,
            max_running,
            max_timeout_ms: options.security_policy.max_request_timeout_ms,
            default_timeout: options.default_request_timeout,
            probe_timeout: config.probe_timeout,
            threshold: options.unavailable_after_failures.max(1),
            late_binding: config.late_binding && config.routing == RoutingPolicy::IdleFirst,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lifecycle {
    Running,
    Draining { deadline: Option<Time> },
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReqState {
    Queued,
    /// Its worker was removed; it awaits its circuit breaker (`Revet`),
    /// still counted as queued on that worker.
    Moving,
    Running {
        started_at: Time,
        aborted: bool,
    },
}

#[derive(Debug, Clone, Copy)]
pub(super) struct ReqBook {
    pub(super) id: u64,
    pub(super) worker: WorkerKey,
    pub(super) state: ReqState,
    /// Only its worker may run it (late binding is off, or a circuit
    /// breaker vetoed some worker at its submit).
    pub(super) pinned: bool,
    /// A circuit breaker placed it and it is pinned: its worker's removal
    /// hands it back to the breaker.
    pub(super) vetted: bool,
    pub(super) accepted_at: Time,
    pub(super) deadline: Option<Time>,
    pub(super) live_pos: usize,
    pub(super) run_pos: usize,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct WorkerBook {
    pub(super) ordinal: u32,
    pub(super) status: WorkerHealthStatus,
    pub(super) removing: bool,
    pub(super) stopped: bool,
    pub(super) queued: usize,
    pub(super) running: usize,
    pub(super) probe: Option<(ProbeKey, Time)>,
    pub(super) list_pos: usize,
    pub(super) probe_pos: usize,
    /// The health the rules predict (see [`HealthBook`]).
    pub(super) health: HealthBook,
    /// How long its last successful request ran, since it was added or
    /// restarted.
    pub(super) last_run: Option<Duration>,
}

/// A worker's health as the rules predict it, kept from the outcomes the
/// harness sees: consecutive failures (a success clears them; a handler
/// error or panic adds one; a timeout adds one only when the worker had at
/// least half of the request's budget, see [`timeout_counts`]), the last
/// probe verdict, and the failure sequence a probe's trial depends on.
#[derive(Debug, Clone, Copy)]
pub(super) struct HealthBook {
    pub(super) failures: u32,
    pub(super) verdict: WorkerHealthStatus,
    /// Counted failures so far (and restarts), as the core's `failure_seq`.
    pub(super) seq: u64,
    /// `seq` when the outstanding probe was sent.
    pub(super) probe_seq: u64,
}

impl HealthBook {
    pub(super) const FRESH: HealthBook = HealthBook {
        failures: 0,
        verdict: WorkerHealthStatus::Healthy,
        seq: 0,
        probe_seq: 0,
    };

    pub(super) fn fail(&mut self) {
        self.failures += 1;
        self.seq += 1;
    }

    pub(super) fn status(&self, threshold: u32) -> WorkerHealthStatus {
        let from_failures = if self.failures == 0 {
            WorkerHealthStatus::Healthy
        } else if self.failures < threshold {
            WorkerHealthStatus::Degraded
        } else {
            WorkerHealthStatus::Unavailable
        };
        from_failures.max(self.verdict)
    }
}

/// Whether a request that ran out of time while running counts as a
/// failure of its worker: only when the worker had at least half of its
/// budget, `2 × (deadline − start) ≥ deadline − acceptance` (time spent
/// queued is never held against a worker).
pub fn timeout_counts(accepted_at: Time, started_at: Time, deadline: Time) -> bool {
    let ran = (deadline - started_at).as_nanos();
    let budget = (deadline - accepted_at).as_nanos();
    2 * ran >= budget
}

/// Whether a queued request with this deadline must be answered `Timeout`
/// rather than started at `now` on a worker whose last successful request
/// ran for `last_run`: its budget is spent, or less of it is left than that
/// run took.
pub fn too_late_to_start(deadline: Option<Time>, now: Time, last_run: Option<Duration>) -> bool {
    deadline.is_some_and(|deadline| {
        let left = deadline - now;
        left.is_zero() || last_run.is_some_and(|run| left < run)
    })
}

/// A table indexed by the dense slot index of a core key (the low 32 bits
/// of `as_u64`), holding the full key to tell generations apart: O(1)
/// bookkeeping without hashing.
#[derive(Debug, Clone)]
pub(super) struct KeyTable<V> {
    slots: Vec<Option<(u64, V)>>,
}

impl<V> KeyTable<V> {
    pub(super) fn new() -> Self {
        KeyTable { slots: Vec::new() }
    }

    fn index(raw: u64) -> usize {
        (raw & 0xffff_ffff) as usize
    }

    pub(super) fn get(&self, raw: u64) -> Option<&V> {
        match self.slots.get(Self::index(raw)) {
            Some(Some((key, value))) if *key == raw => Some(value),
            _ => None,
        }
    }

    pub(super) fn get_mut(&mut self, raw: u64) -> Option<&mut V> {
        match self.slots.get_mut(Self::index(raw)) {
            Some(Some((key, value))) if *key == raw => Some(value),
            _ => None,
        }
    }

    /// Inserts; returns false when the slot holds a live entry of another
    /// generation (which means the core reused a key still booked here).
    pub(super) fn insert(&mut self, raw: u64, value: V) -> bool {
        let index = Self::index(raw);
        assert!(index < 1 << 26, "core key index {index} is not dense");
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, || None);
        }
        let fresh = self.slots[index].is_none();
        self.slots[index] = Some((raw, value));
        fresh
    }

    pub(super) fn remove(&mut self, raw: u64) -> Option<V> {
        let slot = self.slots.get_mut(Self::index(raw))?;
        if slot.as_ref().is_some_and(|(key, _)| *key == raw) {
            slot.take().map(|(_, value)| value)
        } else {
            None
        }
    }
}

/// What the current input may legitimately cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Context {
    Idle,
    Submit {
        id: u64,
        deadline: Option<Time>,
        vetted: bool,
    },
    Revet {
        request: RequestKey,
    },
    Complete {
        request: RequestKey,
        outcome: Outcome,
    },
    Cancel {
        request: RequestKey,
    },
    Probe {
        worker: WorkerKey,
        verdict: WorkerHealthStatus,
    },
    Restart {
        worker: WorkerKey,
    },
    Remove {
        worker: WorkerKey,
    },
    Add,
    Shutdown,
    Timeout,
}

impl Harness {
    /// Whether a worker is schedulable, has room, and has a free run slot.
    pub(super) fn worker_flags(&self, book: &WorkerBook) -> (bool, bool, bool) {
        let schedulable = !book.removing
            && !book.stopped
            && self.lifecycle != Lifecycle::Stopped
            && book.status != WorkerHealthStatus::Unavailable;
        (
            schedulable,
            schedulable && book.queued + book.running < self.limits.capacity,
            schedulable && book.running < self.limits.max_running,
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
            AnswerKind::Timeout => {
                let counts = book
                    .deadline
                    .is_some_and(|deadline| timeout_counts(book.accepted_at, started_at, deadline));
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
