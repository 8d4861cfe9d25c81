//! What the harness remembers of requests and workers (its books), and
//! the health the rules predict for each worker; [`super::bookkeeping`]
//! keeps them up to date.

use std::time::Duration;

use foreman_core::{
    HedgeDelay, OutlierDetection, PhaseLimits, PoolConfig, ProbeKey, RecoveryPolicy, RecoveryState,
    RequestKey, RoutingPolicy, Time, TimeoutLimit, WorkerHealthStatus, WorkerKey,
};

use super::operations::Outcome;

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
    /// How long a refusal saturates its worker at most.
    pub(super) probe_interval: Duration,
    /// Consecutive failures that make a worker unavailable (a threshold of
    /// zero acts as one).
    pub(super) threshold: u32,
    /// Whether queued requests may move to the first free worker.
    pub(super) late_binding: bool,
    /// The most times one request may start (1 without a retry policy),
    /// hedges aside.
    pub(super) max_attempts: u32,
    /// The most hedges one request may get (0 without a hedging policy).
    pub(super) max_hedges: u32,
    /// A fixed hedging delay: no hedge starts earlier after its attempt's
    /// start.
    pub(super) hedge_delay: Option<Duration>,
    /// The outlier-detection tuning, when the pool runs that recovery
    /// machine (whose invariants the harness checks instead of predicting
    /// the reference's health).
    pub(super) outlier: Option<OutlierDetection>,
    /// Every request's queue-wait and run limits (the pool's defaults).
    pub(super) phases: PhaseLimits,
    /// Whether a free worker may leave waiting requests to a faster one
    /// for a bounded time (`PeakEwma` with late binding).
    pub(super) deferral: bool,
    /// The latency `PeakEwma` assumes of a worker with no sample: with the
    /// longest run seen, the bound of a deferral.
    pub(super) unsampled_latency: Duration,
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
            probe_interval: options.health_probe_interval,
            threshold: options.unavailable_after_failures.max(1),
            late_binding: config.late_binding && config.routing != RoutingPolicy::RoundRobin,
            deferral: config.late_binding && config.routing == RoutingPolicy::PeakEwma,
            unsampled_latency: config.unsampled_latency,
            max_attempts: config
                .retries
                .map_or(1, |policy| policy.max_attempts.max(1)),
            max_hedges: config.hedging.map_or(0, |policy| policy.max_hedges),
            hedge_delay: config.hedging.and_then(|policy| match policy.delay {
                HedgeDelay::Fixed(delay) => Some(delay),
                _ => None,
            }),
            outlier: match config.recovery {
                RecoveryPolicy::OutlierDetection(tuning) => Some(tuning),
                _ => None,
            },
            phases: config.phase_limits(),
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
    /// When it last began to wait: its acceptance, or a refusal before
    /// its start (`Op::Refuse`).
    pub(super) waiting_since: Time,
    pub(super) deadline: Option<Time>,
    /// Times it was started.
    pub(super) attempts: u32,
    /// The retry policy covers it (its kind, and no breaker placed it).
    pub(super) retry: bool,
    /// The hedging policy covers it (its kind, and no breaker placed it).
    pub(super) hedge: bool,
    /// Hedges it has had.
    pub(super) hedges: u32,
    /// The key of its running hedge, if it has one.
    pub(super) sibling: Option<RequestKey>,
    /// When its queue-wait limit passes, if before its deadline.
    pub(super) queue_wait_at: Option<Time>,
    /// Its run limit.
    pub(super) run_limit: Option<std::time::Duration>,
    pub(super) live_pos: usize,
    pub(super) run_pos: usize,
}

/// A hedge's attempt: the request it runs, where, since when.
#[derive(Debug, Clone, Copy)]
pub(super) struct HedgeBook {
    pub(super) request: RequestKey,
    pub(super) worker: WorkerKey,
    pub(super) started_at: Time,
    /// `Start` seen.
    pub(super) started: bool,
    /// The request's own attempt ended: the hedge is the request's only
    /// attempt, and the request's books name its worker and start.
    pub(super) alone: bool,
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
    /// Where the core's recovery machine had it after the last input.
    pub(super) recovery: RecoveryState,
    /// Requests it ran when it last turned half-open.
    pub(super) running_at_half_open: usize,
    /// Requests it may run at once: its own limit, or the pool's.
    pub(super) max_running: usize,
    /// Requests it may hold: the queue capacity plus `max_running`.
    pub(super) capacity: usize,
    /// While a handler's refusal on it holds (`Op::Refuse`): the instant
    /// it expires, one probe interval after the last refusal. It starts
    /// nothing until then, or until one of its runs ends, a probe answers
    /// or it is restarted.
    pub(super) saturated: Option<Time>,
    /// The most requests it may queue: the queue capacity, or more while
    /// requests refused on it wait at the front of its own full queue (no
    /// other worker had room); back to the capacity once its queue is.
    pub(super) queue_limit: usize,
}

impl WorkerBook {
    /// One of its runs ended: it runs one fewer, and is no longer
    /// saturated.
    pub(super) fn end_run(&mut self) {
        self.running -= 1;
        self.saturated = None;
    }

    /// The requests it may hold, and run, at once by its recovery state
    /// (a half-open worker's trial permits).
    pub(super) fn trial_limit(&self) -> usize {
        match self.recovery {
            RecoveryState::HalfOpen { permits, .. } => permits as usize,
            _ => usize::MAX,
        }
    }
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

/// A phase limit's instant, if it comes before the overall `deadline` (a
/// limit at or after it is never armed) and is not `Time::MAX` ("never").
pub(super) fn phase_limit_at(at: Time, deadline: Option<Time>) -> Option<Time> {
    (at != Time::MAX && deadline.is_none_or(|deadline| at < deadline)).then_some(at)
}

impl ReqBook {
    /// When its run limit passes, if it runs and the limit comes before
    /// its deadline.
    pub(super) fn run_limit_at(&self) -> Option<Time> {
        let ReqState::Running { started_at, .. } = self.state else {
            return None;
        };
        phase_limit_at(started_at.saturating_add(self.run_limit?), self.deadline)
    }

    /// The phase limit of its current phase: the queue-wait limit while it
    /// waits, the run limit while it runs.
    pub(super) fn phase_limit(&self) -> Option<Time> {
        match self.state {
            ReqState::Queued | ReqState::Moving => self.queue_wait_at,
            ReqState::Running { .. } => self.run_limit_at(),
        }
    }

    /// The limit a `Timeout` answered at `now` names: the phase limit of
    /// its phase if that has passed (it comes before the deadline, so its
    /// timer fires first), else the overall budget.
    pub(super) fn expected_limit(&self, now: Time) -> TimeoutLimit {
        match self.phase_limit() {
            Some(at) if at <= now => match self.state {
                ReqState::Running { .. } => TimeoutLimit::Run,
                _ => TimeoutLimit::QueueWait,
            },
            _ => TimeoutLimit::Overall,
        }
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
        /// The retry policy covers the request's kind.
        retry: bool,
        /// The hedging policy covers the request's kind.
        hedge: bool,
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
    Refuse {
        request: RequestKey,
        worker: WorkerKey,
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
