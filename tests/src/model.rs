//! The shared operation model: core inputs as data ([`Op`]), a driver that
//! applies them ([`Harness`]), and every external check of the pool.
//!
//! One module serves the simulator ([`crate::sim`]), the proptest state
//! machines (`tests/tests/model_proptest.rs`) and the fuzz targets
//! (`fuzz/`, through the `arbitrary` feature, which derives
//! `arbitrary::Arbitrary` for [`Op`] and its parts).
//!
//! # What the harness does on every input
//! 1. It calls one input of [`Pool`] with its own clock (which may have been
//!    stepped backwards: the core must then act at the latest instant it has
//!    seen, which the harness mirrors as `seen`).
//! 2. It drains every output — events first, then actions — and keeps its own
//!    books from them: which requests are pending and where, which are
//!    running, which probes are outstanding, each worker's status as told by
//!    `HealthChanged` events, whether a worker is being removed or stopped.
//! 3. It *settles*: while [`Pool::poll_timeout`] names an instant at or
//!    before `seen`, it calls [`Pool::handle_timeout`] (a driver sleeping
//!    zero seconds). So the harness always wakes the core exactly when it
//!    asked, and time only advances through [`Harness::advance`] /
//!    [`Harness::wake`], which stop at every wake-up on the way.
//! 4. It checks, cheaply (O(1) or O(log n)), after every input:
//!    - every accepted request is answered exactly once: an `Answer` for a
//!      request the books do not hold is a double answer; a request still
//!      pending after its deadline or after shutdown completed is lost;
//!    - `Accepted` (and `Requeued`) only onto a worker that was schedulable
//!      (not removing, not stopped, status not `Unavailable`) and had room at
//!      the time of routing; `Start` only on a live, non-removing worker and
//!      only for a request queued there;
//!    - a circuit breaker (a veto mask over worker ordinals, see
//!      [`Op::SubmitVetted`] and [`Op::Revet`]) is asked about each
//!      candidate at most once, only about schedulable workers with room,
//!      and the request goes to the last one asked, which allowed it; a
//!      request it placed and pinned is not moved by its worker's removal
//!      but named by `Revet`, and moves (by [`Harness::revet`]) only to a
//!      worker the breaker allows, or is answered `Unavailable`;
//!    - late binding (idle-first routing): a `Requeued` outside a removal
//!      only moves an unpinned request (no circuit-breaker veto at its
//!      submit) onto a schedulable worker, and that request starts there in
//!      the same input; and once an input is done no unpinned
//!      request waits while some schedulable worker has a free run slot (a
//!      request never waits behind a slow worker while another is free:
//!      defect 11);
//!    - per worker, queued ≤ `queue_capacity` and running ≤
//!      `max_concurrency_per_worker`;
//!    - a submit's outcome is exactly the one the books predict:
//!      `ShuttingDown` after shutdown began, `InvalidRequest` for a request
//!      that breaks the policy, acceptance when some schedulable worker has
//!      room, `QueueFull` only when schedulable workers exist and none has
//!      room, `NoHealthyWorker` only when none is schedulable;
//!    - deadlines never fire early (a running `Timeout` answer only at `seen ≥
//!      deadline`, a drain-deadline `ShuttingDown` only at `seen ≥ drain
//!      deadline`) and never late (after settling, no pending request and no
//!      outstanding probe has a deadline at or before `seen`);
//!    - health changes only along the edges allowed for their cause (see
//!      [`allowed_edge`]), and each change starts from the status the books
//!      hold;
//!    - health follows the rules exactly: the harness predicts each
//!      worker's consecutive failures and status from what it saw (a
//!      success clears the failures, a handler error or panic adds one, a
//!      timeout adds one only if the worker had at least half of the
//!      request's budget — [`timeout_counts`] — and a queued timeout adds
//!      none; probe verdicts, trials and restarts as in the core) and,
//!      after every input that changed a worker's predicted health,
//!      compares its status and failure count with the core's;
//!    - a queued request starts only with budget left and no less of it than
//!      its worker's last successful run ([`too_late_to_start`]; a request
//!      submitted to a free worker starts whatever its budget), and one
//!      answered `Timeout` while queued had its budget spent or less of it
//!      left than the longest run seen;
//!    - every input's return value (`true`/`false`, `Ok`/`Err`) is the one
//!      the books predict; a spurious `handle_timeout` produces nothing;
//!    - the core's counters agree with the books (accepted, answered,
//!      pending), and once shutdown completed nothing is pending.
//! 5. Every `full_check_every` inputs (default: every input) it also runs
//!    the core's O(n) [`Pool::check_invariants`] and compares
//!    [`Pool::stats`] worker by worker with its books; the simulator raises
//!    the period for speed and forces a full check after every worker
//!    command and at the end of a run.
//!
//! Everything is deterministic: books are indexed by the core's dense key
//! indices or kept in vectors and binary heaps, never iterated in hash order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use foreman_core::{
    Action, Answer, CommandError, Event, HealthCause, Phase, Pool, PoolConfig, ProbeKey,
    RequestKey, Revetted, Time, Vetted, Vetting, WorkerErrorCode, WorkerHealthStatus, WorkerKey,
    WorkerOperation, WorkerPoolError, WorkerProtocolError, WorkerRequest,
};
use serde_json::{json, Value};

/// Most wake-ups one [`Op::Advance`] performs before it stops early (keeps a
/// huge jump over a tiny probe interval bounded).
pub const MAX_WAKES_PER_ADVANCE: usize = 4096;

/// Most consecutive `handle_timeout` calls while settling before the harness
/// declares the core stuck (its `poll_timeout` keeps naming the past).
const MAX_SETTLE_ROUNDS: usize = 100_000;

/// The shape of a submitted request: valid ones and the ways to be invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Shape {
    /// A valid tool call.
    Tool,
    /// A valid LLM call.
    Llm,
    /// Valid: every identifier empty (the reference accepts them).
    Unnamed,
    /// Invalid: a `workflow_name` longer than the identifier limit.
    LongIdentifier,
    /// Invalid: a payload larger than the policy's size limit.
    Oversized,
}

impl Shape {
    /// Every shape, valid ones first.
    pub const ALL: [Shape; 5] = [
        Shape::Tool,
        Shape::Llm,
        Shape::Unnamed,
        Shape::LongIdentifier,
        Shape::Oversized,
    ];

    /// Whether a request of this shape passes the policy (ignoring its
    /// timeout).
    pub fn is_valid(self) -> bool {
        matches!(self, Shape::Tool | Shape::Llm | Shape::Unnamed)
    }
}

/// The `timeout_ms` of a submitted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum TimeoutChoice {
    /// `None`: the pool's default timeout applies.
    Default,
    /// `Some(ms)`: values above the policy maximum are invalid; `0` is
    /// answered `Timeout` on arrival.
    Ms(u32),
}

impl TimeoutChoice {
    /// The request field this choice sets.
    pub fn timeout_ms(self) -> Option<u64> {
        match self {
            TimeoutChoice::Default => None,
            TimeoutChoice::Ms(ms) => Some(u64::from(ms)),
        }
    }
}

/// How a handler finishes a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Outcome {
    /// The handler returned output.
    Success,
    /// The handler returned an error.
    Failure {
        /// Whether the error says the request may be retried.
        retryable: bool,
    },
    /// The handler panicked; a driver reports it as a failed completion.
    Panic,
}

impl Outcome {
    /// The completion a driver feeds to the core for this outcome.
    pub fn result(self) -> Result<Value, WorkerProtocolError> {
        match self {
            Outcome::Success => Ok(Value::Null),
            Outcome::Failure { retryable } => Err(WorkerProtocolError::new(
                WorkerErrorCode::ExecutionFailed,
                "handler failed",
                retryable,
            )),
            Outcome::Panic => Err(WorkerProtocolError::new(
                WorkerErrorCode::ExecutionFailed,
                "handler panicked",
                false,
            )),
        }
    }
}

/// A probe's verdict, as the worker reports it (it may lie).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Verdict {
    /// Reports `Healthy`.
    Healthy,
    /// Reports `Degraded`.
    Degraded,
    /// Reports `Unavailable`.
    Unavailable,
}

impl Verdict {
    /// The wire status.
    pub fn status(self) -> WorkerHealthStatus {
        match self {
            Verdict::Healthy => WorkerHealthStatus::Healthy,
            Verdict::Degraded => WorkerHealthStatus::Degraded,
            Verdict::Unavailable => WorkerHealthStatus::Unavailable,
        }
    }
}

/// One input to the pool, with choices by index so that any sequence is
/// meaningful (an index is taken modulo the number of candidates; with no
/// candidate the op uses a stale key, which the core must ignore).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Op {
    /// Submit a request.
    Submit {
        /// Its shape.
        shape: Shape,
        /// Its timeout.
        timeout: TimeoutChoice,
    },
    /// Offer a request (`Pool::offer`, as a driver of several lanes does):
    /// like `Submit`, but a refusal for want of a worker is declined,
    /// uncounted.
    Offer {
        /// Its shape.
        shape: Shape,
        /// Its timeout.
        timeout: TimeoutChoice,
    },
    /// Submit a request through a circuit breaker (`Pool::vet`, asked one
    /// candidate at a time) that vetoes the workers whose ordinal modulo 8
    /// is a bit set in `veto`.
    SubmitVetted {
        /// Its shape.
        shape: Shape,
        /// Its timeout.
        timeout: TimeoutChoice,
        /// Workers the breaker refuses, by ordinal modulo 8.
        veto: u8,
    },
    /// Place the `index`-th request whose worker was removed while a
    /// circuit breaker held it there (`Action::Revet`), through
    /// `Pool::revet`, with a breaker vetoing as in [`Op::SubmitVetted`].
    Revet {
        /// Which request awaiting its breaker.
        index: u16,
        /// Workers the breaker refuses, by ordinal modulo 8.
        veto: u8,
    },
    /// Cancel the `index`-th pending request.
    Cancel {
        /// Which pending request.
        index: u16,
    },
    /// Complete the `index`-th running request.
    Complete {
        /// Which running request.
        index: u16,
        /// How it ends.
        outcome: Outcome,
    },
    /// Answer the `index`-th outstanding probe.
    ProbeResult {
        /// Which outstanding probe.
        index: u16,
        /// What it says.
        verdict: Verdict,
    },
    /// Add a worker.
    AddWorker,
    /// Remove the `index`-th worker.
    RemoveWorker {
        /// Which worker.
        index: u16,
    },
    /// Restart the `index`-th worker.
    RestartWorker {
        /// Which worker.
        index: u16,
    },
    /// Begin shutdown, with an optional drain deadline in milliseconds.
    Shutdown {
        /// Drain deadline from now, in milliseconds; `None` waits for all.
        drain_ms: Option<u32>,
    },
    /// Move the clock forward by `ms`, waking the core at every
    /// `poll_timeout` on the way (at most [`MAX_WAKES_PER_ADVANCE`]).
    Advance {
        /// Milliseconds to move forward.
        ms: u32,
    },
    /// Step the driver's clock backwards by `ms` (the core must keep its
    /// own notion of time monotonic).
    StepBack {
        /// Milliseconds to step back.
        ms: u32,
    },
    /// Call `handle_timeout` now (spurious after settling: must do nothing).
    Timeout,
}

/// A broken rule, described for a bug report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(Failure(format!($($fmt)+)));
        }
    };
}

/// How an answer ended, as recorded in the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnswerKind {
    /// The handler's output.
    Ok,
    /// The handler's error.
    Failed {
        /// Whether it was retryable.
        retryable: bool,
    },
    /// Cancelled by the caller (`retryable: false`) or a restart (`true`).
    Cancelled {
        /// Whether it was retryable.
        retryable: bool,
    },
    /// The time budget ran out.
    Timeout,
    /// The drain deadline passed.
    ShuttingDown,
    /// The worker was removed and nobody could take the request.
    Unavailable,
    /// Anything else (always a failure of the checks).
    Other,
}

impl AnswerKind {
    fn of(result: &Result<Value, WorkerPoolError>) -> Self {
        match result {
            Ok(_) => AnswerKind::Ok,
            Err(WorkerPoolError::Timeout) => AnswerKind::Timeout,
            Err(WorkerPoolError::ShuttingDown) => AnswerKind::ShuttingDown,
            Err(WorkerPoolError::Worker(error)) => match error.code {
                WorkerErrorCode::ExecutionFailed => AnswerKind::Failed {
                    retryable: error.retryable,
                },
                WorkerErrorCode::Cancelled => AnswerKind::Cancelled {
                    retryable: error.retryable,
                },
                WorkerErrorCode::Unavailable => AnswerKind::Unavailable,
                _ => AnswerKind::Other,
            },
            Err(_) => AnswerKind::Other,
        }
    }
}

/// Why a submit was refused, as recorded in the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `QueueFull`.
    QueueFull,
    /// `NoHealthyWorker`.
    NoHealthyWorker,
    /// `ShuttingDown`.
    ShuttingDown,
    /// `InvalidRequest`.
    Invalid,
    /// `Timeout` on arrival: the request's budget was zero.
    NoBudget,
    /// `CircuitOpen`.
    CircuitOpen,
    /// Anything else.
    Other,
}

impl Refusal {
    fn of(error: &WorkerPoolError) -> Self {
        match error {
            WorkerPoolError::QueueFull => Refusal::QueueFull,
            WorkerPoolError::NoHealthyWorker => Refusal::NoHealthyWorker,
            WorkerPoolError::ShuttingDown => Refusal::ShuttingDown,
            WorkerPoolError::InvalidRequest { .. } => Refusal::Invalid,
            WorkerPoolError::Timeout => Refusal::NoBudget,
            WorkerPoolError::CircuitOpen => Refusal::CircuitOpen,
            _ => Refusal::Other,
        }
    }
}

/// One line of the trace. Requests are named by their payload (the
/// harness's submit counter), workers by their ordinal (the order they were
/// added), so traces compare across runs and against a reference model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceEvent {
    /// A submit; `Ok(worker)` or the refusal.
    Submit {
        /// When (the core's time).
        at: Time,
        /// The request.
        id: u64,
        /// Outcome.
        result: Result<u32, Refusal>,
    },
    /// A cancel; `applied` is the core's return value.
    Cancel {
        /// When.
        at: Time,
        /// The request (0 for a stale key).
        id: u64,
        /// Whether the core acted on it.
        applied: bool,
    },
    /// A completion.
    Complete {
        /// When.
        at: Time,
        /// The request (0 for a stale key).
        id: u64,
        /// How it ended.
        outcome: Outcome,
        /// Whether the core acted on it.
        applied: bool,
    },
    /// A probe answer.
    ProbeResult {
        /// When.
        at: Time,
        /// The worker.
        worker: u32,
        /// What it said.
        verdict: Verdict,
        /// Whether the core acted on it.
        applied: bool,
    },
    /// A worker command: 0 add, 1 remove, 2 restart; `ok` its result.
    Command {
        /// When.
        at: Time,
        /// 0 add, 1 remove, 2 restart.
        kind: u8,
        /// The worker (new ordinal for add).
        worker: u32,
        /// Whether it was accepted.
        ok: bool,
    },
    /// `begin_shutdown`.
    Shutdown {
        /// When.
        at: Time,
        /// The drain limit.
        drain: Option<Duration>,
    },
    /// `handle_timeout` at the driver's clock.
    Wake {
        /// The driver's clock.
        clock: Time,
        /// The core's time.
        at: Time,
    },
    /// The driver's clock stepped backwards.
    ClockBack {
        /// The new driver clock.
        clock: Time,
    },
    /// Output: a request was accepted by a worker.
    Accepted {
        /// The request.
        id: u64,
        /// The worker.
        worker: u32,
    },
    /// A request whose worker was removed was placed through its circuit
    /// breaker: on worker `to`, or answered (`None`).
    Revet {
        /// When.
        at: Time,
        /// The request.
        id: u64,
        /// Where it went.
        to: Option<u32>,
    },
    /// Output: a request moved from a removed worker.
    Requeued {
        /// The request.
        id: u64,
        /// From.
        from: u32,
        /// To.
        to: u32,
    },
    /// Output: start.
    Start {
        /// The request.
        id: u64,
        /// The worker.
        worker: u32,
    },
    /// Output: abort.
    Abort {
        /// The request.
        id: u64,
    },
    /// Output: answer.
    Answer {
        /// The request.
        id: u64,
        /// Where it was.
        phase: Phase,
        /// How it ended.
        kind: AnswerKind,
    },
    /// Output: a health change.
    Health {
        /// The worker.
        worker: u32,
        /// From.
        from: WorkerHealthStatus,
        /// To.
        to: WorkerHealthStatus,
        /// Why.
        cause: HealthCause,
    },
    /// Output: probe sent.
    RunProbe {
        /// The worker.
        worker: u32,
    },
    /// Output: probe aborted.
    AbortProbe {
        /// The worker.
        worker: u32,
    },
    /// Output: worker restarted.
    RestartWorker {
        /// The worker.
        worker: u32,
    },
    /// Output: worker stopped.
    StopWorker {
        /// The worker.
        worker: u32,
    },
    /// Output: shutdown complete.
    ShutdownComplete {
        /// When.
        at: Time,
    },
    /// A simulator note (phase changes and the like).
    Note {
        /// What.
        what: &'static str,
        /// When.
        at: Time,
    },
}

/// Length of the trace's tail kept for failure reports.
pub const TRACE_TAIL: usize = 32;

/// The trace: a running hash of every event, the last [`TRACE_TAIL`]
/// events, and optionally the whole history.
#[derive(Debug, Clone)]
pub struct Trace {
    hash: u64,
    ring: Vec<TraceEvent>,
    next: usize,
    len: u64,
    full: Option<Vec<TraceEvent>>,
}

impl Trace {
    fn new(keep_all: bool) -> Self {
        Trace {
            hash: 0xcbf2_9ce4_8422_2325,
            ring: Vec::with_capacity(TRACE_TAIL),
            next: 0,
            len: 0,
            full: keep_all.then(Vec::new),
        }
    }

    /// Records one event.
    pub fn push(&mut self, event: TraceEvent) {
        let mut hasher = WordHasher(self.hash);
        event.hash(&mut hasher);
        self.hash = hasher.0;
        if self.ring.len() < TRACE_TAIL {
            self.ring.push(event);
        } else {
            self.ring[self.next] = event;
        }
        self.next = (self.next + 1) % TRACE_TAIL;
        self.len += 1;
        if let Some(full) = &mut self.full {
            full.push(event);
        }
    }

    /// The hash of everything recorded (deterministic across runs).
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Events recorded.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The last events, oldest first.
    pub fn tail(&self) -> Vec<TraceEvent> {
        if self.ring.len() < TRACE_TAIL {
            self.ring.clone()
        } else {
            let mut tail = self.ring[self.next..].to_vec();
            tail.extend_from_slice(&self.ring[..self.next]);
            tail
        }
    }

    /// The whole history, when kept.
    pub fn full(&self) -> Option<&[TraceEvent]> {
        self.full.as_deref()
    }
}

/// A fast deterministic word-mixing hasher for the trace hash (FNV-style
/// multiply with an xor-shift per word).
struct WordHasher(u64);

impl WordHasher {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(0x0000_0100_0000_01b3);
        self.0 ^= self.0 >> 29;
    }
}

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }
    fn write_isize(&mut self, i: isize) {
        self.mix(i as u64);
    }
}

/// What the last input asked the driver to do, for a simulator to act on
/// (the harness has already checked and booked it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Run `request` on `worker` (payload `id`).
    Start {
        /// The request.
        request: RequestKey,
        /// Its payload id.
        id: u64,
        /// The worker.
        worker: WorkerKey,
    },
    /// Stop the handler of `request`.
    Abort {
        /// The request.
        request: RequestKey,
    },
    /// `request` (payload `id`) got its answer.
    Answered {
        /// The request.
        request: RequestKey,
        /// Its payload id.
        id: u64,
        /// How it ended.
        kind: AnswerKind,
    },
    /// Run a probe.
    RunProbe {
        /// The worker.
        worker: WorkerKey,
        /// The probe.
        probe: ProbeKey,
    },
    /// Stop a probe.
    AbortProbe {
        /// The worker.
        worker: WorkerKey,
        /// The probe.
        probe: ProbeKey,
    },
    /// Replace the worker's execution context.
    RestartWorker {
        /// The worker.
        worker: WorkerKey,
    },
    /// Release the worker for good.
    StopWorker {
        /// The worker.
        worker: WorkerKey,
    },
    /// Have the circuit breaker place `request` anew ([`Harness::revet`]):
    /// its worker was removed.
    Revet {
        /// The request.
        request: RequestKey,
    },
}

/// Whether a health change `from → to` is allowed for `cause`.
///
/// - `Success`: only an improvement (a success clears failures; a probe's
///   worse verdict may keep the status from improving, never worsen it).
/// - `Failure`, `Timeout`: only a worsening.
/// - `Probe`: any change, but never to a status better than the verdict
///   (checked separately, since the verdict is not part of the edge).
/// - `ProbeTimeout`, `Stopped`: only to `Unavailable`.
/// - `Restart`: only to `Healthy` (health is reset).
pub fn allowed_edge(cause: HealthCause, from: WorkerHealthStatus, to: WorkerHealthStatus) -> bool {
    from != to
        && match cause {
            HealthCause::Success => to < from,
            HealthCause::Failure | HealthCause::Timeout => to > from,
            HealthCause::Probe => true,
            HealthCause::ProbeTimeout | HealthCause::Stopped => {
                to == WorkerHealthStatus::Unavailable
            }
            HealthCause::Restart => to == WorkerHealthStatus::Healthy,
        }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Running,
    Draining { deadline: Option<Time> },
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqState {
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
struct ReqBook {
    id: u64,
    worker: WorkerKey,
    state: ReqState,
    /// Only its worker may run it (late binding is off, or a circuit
    /// breaker vetoed some worker at its submit).
    pinned: bool,
    /// A circuit breaker placed it and it is pinned: its worker's removal
    /// hands it back to the breaker.
    vetted: bool,
    accepted_at: Time,
    deadline: Option<Time>,
    live_pos: usize,
    run_pos: usize,
}

#[derive(Debug, Clone, Copy)]
struct WorkerBook {
    ordinal: u32,
    status: WorkerHealthStatus,
    removing: bool,
    stopped: bool,
    queued: usize,
    running: usize,
    probe: Option<(ProbeKey, Time)>,
    list_pos: usize,
    probe_pos: usize,
    /// The health the rules predict (see [`HealthBook`]).
    health: HealthBook,
    /// How long its last successful request ran, since it was added or
    /// restarted.
    last_run: Option<Duration>,
}

/// A worker's health as the rules predict it, kept from the outcomes the
/// harness sees: consecutive failures (a success clears them; a handler
/// error or panic adds one; a timeout adds one only when the worker had at
/// least half of the request's budget, see [`timeout_counts`]), the last
/// probe verdict, and the failure sequence a probe's trial depends on.
#[derive(Debug, Clone, Copy)]
struct HealthBook {
    failures: u32,
    verdict: WorkerHealthStatus,
    /// Counted failures so far (and restarts), as the core's `failure_seq`.
    seq: u64,
    /// `seq` when the outstanding probe was sent.
    probe_seq: u64,
}

impl HealthBook {
    const FRESH: HealthBook = HealthBook {
        failures: 0,
        verdict: WorkerHealthStatus::Healthy,
        seq: 0,
        probe_seq: 0,
    };

    fn fail(&mut self) {
        self.failures += 1;
        self.seq += 1;
    }

    fn status(&self, threshold: u32) -> WorkerHealthStatus {
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
struct KeyTable<V> {
    slots: Vec<Option<(u64, V)>>,
}

impl<V> KeyTable<V> {
    fn new() -> Self {
        KeyTable { slots: Vec::new() }
    }

    fn index(raw: u64) -> usize {
        (raw & 0xffff_ffff) as usize
    }

    fn get(&self, raw: u64) -> Option<&V> {
        match self.slots.get(Self::index(raw)) {
            Some(Some((key, value))) if *key == raw => Some(value),
            _ => None,
        }
    }

    fn get_mut(&mut self, raw: u64) -> Option<&mut V> {
        match self.slots.get_mut(Self::index(raw)) {
            Some(Some((key, value))) if *key == raw => Some(value),
            _ => None,
        }
    }

    /// Inserts; returns false when the slot holds a live entry of another
    /// generation (which means the core reused a key still booked here).
    fn insert(&mut self, raw: u64, value: V) -> bool {
        let index = Self::index(raw);
        assert!(index < 1 << 26, "core key index {index} is not dense");
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, || None);
        }
        let fresh = self.slots[index].is_none();
        self.slots[index] = Some((raw, value));
        fresh
    }

    fn remove(&mut self, raw: u64) -> Option<V> {
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
enum Context {
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

/// Drives a [`Pool<u64>`] input by input, drains every output, keeps its own
/// books and checks the pool after every input. See the module docs for the
/// checks.
pub struct Harness {
    pool: Pool<u64>,
    capacity: usize,
    queue_capacity: usize,
    max_running: usize,
    max_timeout_ms: u64,
    default_timeout: Option<Duration>,
    probe_timeout: Duration,
    threshold: u32,
    clock: Time,
    seen: Time,
    /// Where a driver that keeps one timer, moved by `Pool::move_timer`,
    /// would have it (`Time::MAX`: not set, or just
    /// fired); never later than `poll_timeout`.
    driver_timer: Time,
    lifecycle: Lifecycle,
    drain_deadline: Option<Time>,
    requests: KeyTable<ReqBook>,
    live: Vec<RequestKey>,
    running: Vec<RequestKey>,
    workers: KeyTable<WorkerBook>,
    worker_list: Vec<WorkerKey>,
    probes: Vec<WorkerKey>,
    deadlines: BinaryHeap<Reverse<(Time, RequestKey)>>,
    probe_deadlines: BinaryHeap<Reverse<(Time, WorkerKey, ProbeKey)>>,
    schedulable: usize,
    open: usize,
    /// Schedulable workers with a free run slot.
    free: usize,
    /// Whether queued requests may move to the first free worker.
    late_binding: bool,
    /// Queued requests that are not pinned.
    unpinned_queued: usize,
    /// A circuit breaker vetoed some worker during the current submit.
    vetoed: bool,
    /// Per-worker vetoes reported (`Rejected` naming a worker) during the
    /// current input.
    vetoes_reported: usize,
    /// Vetoes the breaker gave during the current submit.
    vetoes_pending: usize,
    /// Requests whose worker was removed, awaiting their breaker.
    moving: Vec<RequestKey>,
    /// Requests moved by late binding whose `Start` has not come yet.
    stolen: Vec<RequestKey>,
    next_id: u64,
    next_ordinal: u32,
    accepted: u64,
    answered: u64,
    submitted: u64,
    templates: Vec<WorkerRequest>,
    context: Context,
    outputs: Vec<Output>,
    trace: Trace,
    failure: Option<Failure>,
    inputs: u64,
    full_check_every: u64,
    adaptive: bool,
    since_full: u64,
    stale_request: RequestKey,
    outputs_this_input: usize,
    shutdown_completed: bool,
    /// Workers whose predicted health changed during the current input:
    /// their status is compared with the core's once the input is done.
    health_touched: Vec<WorkerKey>,
    /// The longest successful run seen (bounds when a queued request may
    /// be answered for want of budget).
    longest_run: Duration,
    /// Changes to `Unavailable` for a health reason (not a shutdown).
    ejections: u64,
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness")
            .field("seen", &self.seen)
            .field("pending", &self.live.len())
            .field("workers", &self.worker_list.len())
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl Harness {
    /// A harness around a fresh pool with no workers, at time zero.
    ///
    /// # Errors
    /// The pool's [`foreman_core::ConfigError`] for a nonsense config.
    pub fn new(config: PoolConfig) -> Result<Self, foreman_core::ConfigError> {
        Self::with_trace(config, false)
    }

    /// Like [`Harness::new`], keeping the whole trace when `keep_trace`.
    ///
    /// # Errors
    /// The pool's [`foreman_core::ConfigError`] for a nonsense config.
    pub fn with_trace(
        config: PoolConfig,
        keep_trace: bool,
    ) -> Result<Self, foreman_core::ConfigError> {
        let pool = Pool::new(config.clone(), Time::ZERO)?;
        let options = &config.options;
        let policy = &options.security_policy;
        let max_running = config.max_concurrency_per_worker as usize;
        Ok(Harness {
            pool,
            capacity: options.queue_capacity.saturating_add(max_running),
            queue_capacity: options.queue_capacity,
            max_running,
            max_timeout_ms: policy.max_request_timeout_ms,
            default_timeout: options.default_request_timeout,
            probe_timeout: config.probe_timeout,
            threshold: options.unavailable_after_failures,
            clock: Time::ZERO,
            seen: Time::ZERO,
            driver_timer: Time::MAX,
            lifecycle: Lifecycle::Running,
            drain_deadline: None,
            requests: KeyTable::new(),
            live: Vec::new(),
            running: Vec::new(),
            workers: KeyTable::new(),
            worker_list: Vec::new(),
            probes: Vec::new(),
            deadlines: BinaryHeap::new(),
            probe_deadlines: BinaryHeap::new(),
            schedulable: 0,
            open: 0,
            free: 0,
            late_binding: config.late_binding
                && config.routing == foreman_core::RoutingPolicy::IdleFirst,
            unpinned_queued: 0,
            vetoed: false,
            vetoes_reported: 0,
            vetoes_pending: 0,
            moving: Vec::new(),
            stolen: Vec::new(),
            next_id: 1,
            next_ordinal: 0,
            accepted: 0,
            answered: 0,
            submitted: 0,
            templates: build_templates(
                policy.max_identifier_length,
                policy.max_request_payload_bytes,
            ),
            context: Context::Idle,
            outputs: Vec::new(),
            trace: Trace::new(keep_trace),
            failure: None,
            inputs: 0,
            full_check_every: 1,
            adaptive: false,
            since_full: 0,
            stale_request: RequestKey::from_u64(u64::MAX),
            outputs_this_input: 0,
            shutdown_completed: false,
            health_touched: Vec::new(),
            longest_run: Duration::ZERO,
            ejections: 0,
        })
    }

    /// Runs the full O(n) checks only every `every` inputs (at least 1).
    pub fn set_full_check_every(&mut self, every: u64) {
        self.full_check_every = every.max(1);
        self.adaptive = false;
    }

    /// Runs the full O(n) checks after at least `every` inputs *and* at
    /// least as many inputs as there are pending requests plus workers, so
    /// that their cost stays amortised O(1) per input however big the pool.
    pub fn set_full_check_amortised(&mut self, every: u64) {
        self.full_check_every = every.max(1);
        self.adaptive = true;
    }

    /// The pool under test (read-only).
    pub fn pool(&self) -> &Pool<u64> {
        &self.pool
    }

    /// The trace so far.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// Records a simulator note in the trace.
    pub fn note(&mut self, what: &'static str) {
        self.trace.push(TraceEvent::Note {
            what,
            at: self.seen,
        });
    }

    /// The first failure found, if any.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// What the last input asked the driver to do.
    pub fn outputs(&self) -> &[Output] {
        &self.outputs
    }

    /// The latest instant the core has seen.
    pub fn now(&self) -> Time {
        self.seen
    }

    /// The driver's clock (may lag behind [`Harness::now`]).
    pub fn clock(&self) -> Time {
        self.clock
    }

    /// Requests accepted and not yet answered.
    pub fn pending(&self) -> usize {
        self.live.len()
    }

    /// Requests running now.
    pub fn running(&self) -> &[RequestKey] {
        &self.running
    }

    /// Pending requests, in no meaningful order.
    pub fn live(&self) -> &[RequestKey] {
        &self.live
    }

    /// Requests whose worker was removed and that await their circuit
    /// breaker ([`Harness::revet`]), in no meaningful order.
    pub fn moving(&self) -> &[RequestKey] {
        &self.moving
    }

    /// Live (not stopped) workers, in no meaningful order.
    pub fn workers(&self) -> &[WorkerKey] {
        &self.worker_list
    }

    /// The ordinal (order of addition) of a worker the books know.
    pub fn ordinal(&self, worker: WorkerKey) -> Option<u32> {
        self.workers.get(worker.as_u64()).map(|book| book.ordinal)
    }

    /// The payload id of a pending request.
    pub fn request_id(&self, request: RequestKey) -> Option<u64> {
        self.requests.get(request.as_u64()).map(|book| book.id)
    }

    /// A worker's status as the core last reported it (`HealthChanged`
    /// events), while the books hold the worker.
    pub fn status(&self, worker: WorkerKey) -> Option<WorkerHealthStatus> {
        self.workers.get(worker.as_u64()).map(|book| book.status)
    }

    /// Changes of a worker to `Unavailable` for a health reason (failures,
    /// timeouts, probes), not counting the shutdown's.
    pub fn ejections(&self) -> u64 {
        self.ejections
    }

    /// Submits seen so far, accepted and answered.
    pub fn totals(&self) -> (u64, u64, u64) {
        (self.submitted, self.accepted, self.answered)
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.lifecycle != Lifecycle::Running
    }

    /// Whether shutdown has completed.
    pub fn is_stopped(&self) -> bool {
        self.lifecycle == Lifecycle::Stopped
    }

    /// The next instant the core wants to be woken.
    pub fn next_timeout(&mut self) -> Option<Time> {
        self.pool.poll_timeout().map(|(at, _)| at)
    }

    /// Sets the driver's clock (forwards or backwards) for the next inputs.
    pub fn set_clock(&mut self, clock: Time) {
        if clock < self.seen {
            self.trace.push(TraceEvent::ClockBack { clock });
        }
        self.clock = clock;
    }

    // ----- index-based ops ----------------------------------------------

    /// Applies one [`Op`] and checks the pool.
    ///
    /// # Errors
    /// The first broken rule (also kept in [`Harness::failure`]; once
    /// failed, every later call returns it again).
    pub fn apply(&mut self, op: Op) -> Result<(), Failure> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        match op {
            Op::Submit { shape, timeout } => self.submit(shape, timeout.timeout_ms()).map(drop),
            Op::Offer { shape, timeout } => self.offer(shape, timeout.timeout_ms()).map(drop),
            Op::SubmitVetted {
                shape,
                timeout,
                veto,
            } => self
                .submit_vetted(shape, timeout.timeout_ms(), veto)
                .map(drop),
            Op::Revet { index, veto } => match pick(&self.moving, index) {
                Some(request) => self.revet(request, veto).map(drop),
                None => Ok(()),
            },
            Op::Cancel { index } => {
                let key = pick(&self.live, index).unwrap_or(self.stale_request);
                self.cancel(key).map(drop)
            }
            Op::Complete { index, outcome } => {
                let key = pick(&self.running, index).unwrap_or(self.stale_request);
                self.complete(key, outcome).map(drop)
            }
            Op::ProbeResult { index, verdict } => match pick(&self.probes, index) {
                Some(worker) => {
                    let probe = self
                        .workers
                        .get(worker.as_u64())
                        .and_then(|book| book.probe)
                        .map(|(probe, _)| probe);
                    match probe {
                        Some(probe) => self.probe_result(worker, probe, verdict).map(drop),
                        None => Err(self.fail("probe list names a worker without a probe".into())),
                    }
                }
                None => Ok(()),
            },
            Op::AddWorker => self.add_worker().map(drop),
            Op::RemoveWorker { index } => match pick(&self.worker_list, index) {
                Some(worker) => self.remove_worker(worker).map(drop),
                None => Ok(()),
            },
            Op::RestartWorker { index } => match pick(&self.worker_list, index) {
                Some(worker) => self.restart_worker(worker).map(drop),
                None => Ok(()),
            },
            Op::Shutdown { drain_ms } => {
                self.begin_shutdown(drain_ms.map(|ms| Duration::from_millis(u64::from(ms))))
            }
            Op::Advance { ms } => {
                let target = self.clock + Duration::from_millis(u64::from(ms));
                self.advance(target)
            }
            Op::StepBack { ms } => {
                self.step_back(Duration::from_millis(u64::from(ms)));
                Ok(())
            }
            Op::Timeout => self.spurious_timeout(),
        }
    }

    // ----- key-based inputs ---------------------------------------------

    fn begin_input(&mut self) -> Result<(), Failure> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        self.outputs.clear();
        self.outputs_this_input = 0;
        self.vetoes_reported = 0;
        if self.clock > self.seen {
            self.seen = self.clock;
        }
        Ok(())
    }

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
        self.enter(shape, timeout_ms, false, Some(veto))
    }

    /// Whether a breaker with `veto` (see [`Op::SubmitVetted`]) refuses
    /// `worker`.
    fn vetoes(&self, veto: u8, worker: WorkerKey) -> bool {
        let ordinal = self.ordinal(worker).unwrap_or(0);
        veto & (1 << (ordinal % 8)) != 0
    }

    /// Schedulable workers with room that a breaker with `veto` allows.
    fn allowed_open(&self, veto: u8) -> usize {
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
        veto: u8,
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

    /// Runs the steps of `Pool::vet` for request `id`, asking a breaker
    /// with `veto`; checks each question.
    fn vet_loop(
        &mut self,
        shape: Shape,
        id: u64,
        veto: u8,
    ) -> Result<Result<RequestKey, foreman_core::Refused<u64>>, Failure> {
        let admission = self.pool.config().admit(&self.templates[shape as usize]);
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
        veto: Option<u8>,
    ) -> Result<Option<RequestKey>, Failure> {
        self.begin_input()?;
        let id = self.next_id;
        self.next_id += 1;
        let counters_before = *self.pool.counters();
        let timeout_valid = timeout_ms.is_none_or(|ms| ms <= self.max_timeout_ms);
        let valid = shape.is_valid() && timeout_valid;
        let no_budget = match timeout_ms {
            Some(ms) => ms == 0,
            None => self.default_timeout == Some(Duration::ZERO),
        };
        let expected = if self.lifecycle != Lifecycle::Running {
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
        };
        if self.full_check_due() && self.lifecycle == Lifecycle::Running {
            // The stats-based view of "the queues really are full".
            let stats = self.pool.stats();
            let room = stats.workers.iter().any(|w| {
                w.status != WorkerHealthStatus::Unavailable
                    && !w.removing
                    && w.queued + w.running < self.capacity
            });
            if room != (self.open > 0) {
                return Err(self.fail(format!(
                    "books say {} workers have room but stats say room={room}",
                    self.open
                )));
            }
        }
        let timeout = match timeout_ms {
            Some(ms) => Some(Duration::from_millis(ms)),
            None => self.default_timeout,
        };
        let deadline = timeout.map(|budget| self.seen + budget);
        self.context = Context::Submit {
            id,
            deadline,
            vetted: veto.is_some(),
        };
        self.vetoed = false;
        self.vetoes_pending = 0;
        // An offer declines exactly the refusals for want of a worker.
        let declined =
            offer && matches!(expected, Err(Refusal::QueueFull | Refusal::NoHealthyWorker));
        if !declined {
            self.submitted += 1;
        }
        let template = &mut self.templates[shape as usize];
        template.timeout_ms = timeout_ms;
        let result = if let Some(veto) = veto {
            self.vet_loop(shape, id, veto)?
        } else if offer {
            let admission = self.pool.config().admit(template);
            self.pool.offer(self.clock, admission, id)
        } else {
            self.pool.submit(self.clock, template, id)
        };
        let (outcome, key) = match result {
            Ok(key) => (Ok(()), Some(key)),
            Err(refused) => {
                if refused.payload != id {
                    return Err(self.fail(format!(
                        "refusal of #{id} returned payload {}",
                        refused.payload
                    )));
                }
                (Err(Refusal::of(&refused.error)), None)
            }
        };
        let traced = match key {
            Some(key) => {
                // The Accepted event names the worker; drain first.
                self.drain()?;
                let book = self.requests.get(key.as_u64()).copied();
                match book {
                    Some(book) if book.id == id => {
                        let ordinal = self.ordinal(book.worker).unwrap_or(u32::MAX);
                        Ok(ordinal)
                    }
                    _ => {
                        return Err(
                            self.fail(format!("#{id} accepted as {key} without an Accepted event"))
                        )
                    }
                }
            }
            None => {
                self.drain()?;
                Err(outcome.unwrap_err())
            }
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
            let after = *self.pool.counters();
            if after != counters_before {
                return Err(self.fail(format!(
                    "declined offer #{id} changed the counters: {counters_before:?} -> {after:?}"
                )));
            }
            if self.outputs_this_input != 0 {
                return Err(self.fail(format!("declined offer #{id} emitted outputs")));
            }
        }
        self.finish_input()?;
        Ok(key)
    }

    /// Cancels a request (stale keys allowed); returns the core's answer.
    ///
    /// # Errors
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
        let book = self.requests.get(request.as_u64()).copied();
        let expect = matches!(
            book,
            Some(ReqBook {
                state: ReqState::Running { .. },
                ..
            })
        );
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
        if applied && self.requests.get(request.as_u64()).is_some() {
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
            let threshold = self.threshold;
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
        self.begin_input()?;
        self.context = Context::Add;
        let result = self.pool.add_worker(self.clock);
        let expect_ok = self.lifecycle == Lifecycle::Running;
        let key = match result {
            Ok(key) => {
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
                };
                if !self.workers.insert(key.as_u64(), book) {
                    return Err(self.fail(format!("new worker {key} reuses a booked key")));
                }
                self.next_ordinal += 1;
                self.worker_list.push(key);
                let (schedulable, open, free) = self.worker_flags(&book);
                self.schedulable += usize::from(schedulable);
                self.open += usize::from(open);
                self.free += usize::from(free);
                Some(key)
            }
            Err(CommandError::ShuttingDown) if !expect_ok => None,
            Err(error) => {
                return Err(self.fail(format!("add_worker refused unexpectedly: {error}")))
            }
        };
        if key.is_some() != expect_ok {
            return Err(self.fail("add_worker accepted during shutdown".into()));
        }
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
        self.force_full_check();
        self.finish_input()?;
        Ok(ok)
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
        self.drain()?;
        if ok {
            let running = self.workers.get(worker.as_u64()).map_or(0, |b| b.running);
            let queued = self.workers.get(worker.as_u64()).map_or(0, |b| b.queued);
            // Queued requests move onto the fresh worker's free slots.
            if running > self.max_running || (queued > 0 && running < self.max_running) {
                return Err(self.fail(format!(
                    "after restart {worker} runs {running} with {queued} queued"
                )));
            }
        }
        self.force_full_check();
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
        self.context = Context::Timeout;
        self.trace.push(TraceEvent::Wake {
            clock: self.clock,
            at: self.seen,
        });
        self.driver_timer = Time::MAX;
        self.pool.handle_timeout(self.clock);
        self.drain()?;
        self.finish_input()
    }

    /// Moves the driver's clock forward to `target`, waking the core at
    /// every `poll_timeout` on the way (at most [`MAX_WAKES_PER_ADVANCE`]
    /// times; then the clock stops at the last wake-up).
    ///
    /// # Errors
    /// The first broken rule.
    pub fn advance(&mut self, target: Time) -> Result<(), Failure> {
        for _ in 0..MAX_WAKES_PER_ADVANCE {
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
        self.context = Context::Timeout;
        self.trace.push(TraceEvent::Wake {
            clock: self.clock,
            at: self.seen,
        });
        self.driver_timer = Time::MAX;
        self.pool.handle_timeout(self.clock);
        self.drain()?;
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

    // ----- draining and books --------------------------------------------

    fn fail(&mut self, message: String) -> Failure {
        let failure = Failure(format!(
            "at {} (input {}): {message}",
            self.seen, self.inputs
        ));
        if self.failure.is_none() {
            self.failure = Some(failure.clone());
        }
        failure
    }

    fn record(&mut self, result: Result<(), Failure>) -> Result<(), Failure> {
        result.map_err(|failure| self.fail(failure.0))
    }

    fn drain(&mut self) -> Result<(), Failure> {
        while let Some(event) = self.pool.poll_event() {
            self.outputs_this_input += 1;
            let result = self.on_event(event);
            self.record(result)?;
        }
        while let Some(action) = self.pool.poll_action() {
            self.outputs_this_input += 1;
            let result = self.on_action(action);
            self.record(result)?;
        }
        Ok(())
    }

    /// Settles (wakes the core for every timer already due) and checks.
    fn finish_input(&mut self) -> Result<(), Failure> {
        let mut rounds = 0;
        loop {
            match self.pool.poll_timeout() {
                Some((at, _)) if at <= self.seen => {
                    rounds += 1;
                    if rounds > MAX_SETTLE_ROUNDS {
                        return Err(self.fail(format!(
                            "poll_timeout keeps naming {at} <= now {}",
                            self.seen
                        )));
                    }
                    self.context = Context::Timeout;
                    self.trace.push(TraceEvent::Wake {
                        clock: self.clock,
                        at: self.seen,
                    });
                    self.driver_timer = Time::MAX;
                    self.pool.handle_timeout(self.clock);
                    self.drain()?;
                }
                _ => break,
            }
        }
        let result = self.rearm_driver_timer();
        self.record(result)?;
        let result = self.check_health();
        self.record(result)?;
        self.context = Context::Idle;
        self.inputs += 1;
        self.since_full += 1;
        let result = self.check_step();
        self.record(result)?;
        if self.full_check_due() {
            self.since_full = 0;
            let result = self.check_full();
            self.record(result)?;
        }
        Ok(())
    }

    fn full_check_due(&self) -> bool {
        self.since_full >= self.full_check_every
            && (!self.adaptive
                || self.since_full >= 4 * (self.live.len() + self.worker_list.len()) as u64)
    }

    fn force_full_check(&mut self) {
        self.since_full = u64::MAX / 2;
    }

    /// Whether a worker is schedulable, has room, and has a free run slot.
    fn worker_flags(&self, book: &WorkerBook) -> (bool, bool, bool) {
        let schedulable = !book.removing
            && !book.stopped
            && self.lifecycle != Lifecycle::Stopped
            && book.status != WorkerHealthStatus::Unavailable;
        (
            schedulable,
            schedulable && book.queued + book.running < self.capacity,
            schedulable && book.running < self.max_running,
        )
    }

    /// Changes a worker's book and keeps the schedulable/open counts.
    fn recount_worker(&mut self, worker: WorkerKey, change: impl FnOnce(&mut WorkerBook)) {
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

    fn recount_all(&mut self) {
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

    fn clear_probe(&mut self, worker: WorkerKey) {
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

    fn remove_live(&mut self, book: &ReqBook) {
        let pos = book.live_pos;
        self.live.swap_remove(pos);
        if let Some(&moved) = self.live.get(pos) {
            if let Some(other) = self.requests.get_mut(moved.as_u64()) {
                other.live_pos = pos;
            }
        }
    }

    /// Drops `request` from the requests awaiting their breaker.
    fn forget_moving(&mut self, request: RequestKey) {
        if let Some(pos) = self.moving.iter().position(|key| *key == request) {
            self.moving.swap_remove(pos);
        }
    }

    fn remove_running(&mut self, pos: usize) {
        self.running.swap_remove(pos);
        if let Some(&moved) = self.running.get(pos) {
            if let Some(other) = self.requests.get_mut(moved.as_u64()) {
                other.run_pos = pos;
            }
        }
    }

    fn worker_book(&self, worker: WorkerKey, what: &str) -> Result<WorkerBook, Failure> {
        match self.workers.get(worker.as_u64()) {
            Some(book) if !book.stopped => Ok(*book),
            Some(_) => Err(Failure(format!("{what} names stopped worker {worker}"))),
            None => Err(Failure(format!("{what} names unknown worker {worker}"))),
        }
    }

    fn on_event(&mut self, event: Event) -> Result<(), Failure> {
        match event {
            Event::Accepted { request, worker } => {
                let Context::Submit {
                    id,
                    deadline,
                    vetted,
                } = self.context
                else {
                    return Err(Failure(format!("Accepted {request} outside a submit")));
                };
                let book = self.worker_book(worker, "Accepted")?;
                let (schedulable, open, _) = self.worker_flags(&book);
                ensure!(
                    schedulable,
                    "#{id} accepted by unschedulable worker {worker}: {book:?}"
                );
                ensure!(open, "#{id} accepted by full worker {worker}: {book:?}");
                let live_pos = self.live.len();
                let pinned = !self.late_binding || self.vetoed;
                let fresh = self.requests.insert(
                    request.as_u64(),
                    ReqBook {
                        id,
                        worker,
                        state: ReqState::Queued,
                        pinned,
                        vetted: vetted && pinned,
                        accepted_at: self.seen,
                        deadline,
                        live_pos,
                        run_pos: usize::MAX,
                    },
                );
                ensure!(fresh, "{request} reuses the key of a pending request");
                self.live.push(request);
                self.unpinned_queued += usize::from(!pinned);
                if let Some(at) = deadline {
                    self.deadlines.push(Reverse((at, request)));
                }
                self.recount_worker(worker, |b| b.queued += 1);
                self.check_limits(worker)?;
                self.trace.push(TraceEvent::Accepted {
                    id,
                    worker: book.ordinal,
                });
            }
            Event::Requeued { request, from, to } => {
                let Some(book) = self.requests.get(request.as_u64()).copied() else {
                    return Err(Failure(format!("Requeued unknown request {request}")));
                };
                let state = if self.context == (Context::Revet { request }) {
                    ReqState::Moving
                } else {
                    ReqState::Queued
                };
                ensure!(
                    book.worker == from && book.state == state,
                    "Requeued {request} from {from} but books say {book:?}"
                );
                ensure!(to != from, "Requeued {request} onto its own worker");
                let target = self.worker_book(to, "Requeued")?;
                let (schedulable, open, _) = self.worker_flags(&target);
                // Outside its worker's removal, only late binding moves a
                // request: onto a free worker, which starts it at once.
                let removal = self.context == Context::Remove { worker: from }
                    || self.context == Context::Revet { request };
                ensure!(
                    !book.vetted || self.context == Context::Revet { request },
                    "{request}, placed by a circuit breaker, moved without it in {:?}",
                    self.context
                );
                if removal {
                    ensure!(
                        schedulable && open,
                        "{request} requeued onto {to} without room: {target:?}"
                    );
                } else {
                    ensure!(
                        self.late_binding && !book.pinned,
                        "Requeued {request} from {from} outside its removal (pinned {}, late binding {})",
                        book.pinned,
                        self.late_binding
                    );
                    // Its run slot may free up later in this input's
                    // actions (events are drained first): `Start` checks it.
                    ensure!(
                        schedulable,
                        "{request} moved onto unschedulable {to}: {target:?}"
                    );
                    self.stolen.push(request);
                }
                self.recount_worker(from, |b| b.queued -= 1);
                if removal {
                    self.recount_worker(to, |b| b.queued += 1);
                }
                if let Some(b) = self.requests.get_mut(request.as_u64()) {
                    b.worker = to;
                    b.state = ReqState::Queued;
                }
                if state == ReqState::Moving {
                    self.forget_moving(request);
                }
                if removal {
                    self.check_limits(to)?;
                }
                let from_ordinal = self.ordinal(from).unwrap_or(u32::MAX);
                self.trace.push(TraceEvent::Requeued {
                    id: book.id,
                    from: from_ordinal,
                    to: target.ordinal,
                });
            }
            Event::HealthChanged {
                worker,
                from,
                to,
                cause,
                at,
            } => {
                let book = match self.workers.get(worker.as_u64()) {
                    Some(book) => *book,
                    None => {
                        return Err(Failure(format!("HealthChanged of unknown worker {worker}")))
                    }
                };
                ensure!(!book.stopped, "HealthChanged of stopped worker {worker}");
                ensure!(
                    at == self.seen,
                    "HealthChanged at {at} while now is {}",
                    self.seen
                );
                ensure!(
                    from == book.status,
                    "{worker} changes from {from:?} but books say {:?}",
                    book.status
                );
                ensure!(
                    allowed_edge(cause, from, to),
                    "{worker}: health edge {from:?} -> {to:?} not allowed for {cause:?}"
                );
                match (cause, self.context) {
                    (
                        HealthCause::Probe,
                        Context::Probe {
                            worker: probed,
                            verdict,
                        },
                    ) => {
                        ensure!(probed == worker, "probe of {probed} changed {worker}");
                        ensure!(
                            to >= verdict,
                            "{worker} is {to:?}, better than its probe's {verdict:?}"
                        );
                    }
                    (HealthCause::Probe, context) => {
                        return Err(Failure(format!(
                            "probe-caused change of {worker} in {context:?}"
                        )));
                    }
                    (HealthCause::Restart, context) => {
                        ensure!(
                            context == Context::Restart { worker },
                            "restart-caused change of {worker} in {context:?}"
                        );
                    }
                    (HealthCause::Stopped, _) => {
                        ensure!(
                            self.shutdown_completed_pending(),
                            "Stopped change of {worker} before shutdown completed"
                        );
                    }
                    _ => {}
                }
                if to == WorkerHealthStatus::Unavailable && cause != HealthCause::Stopped {
                    self.ejections += 1;
                }
                self.recount_worker(worker, |b| b.status = to);
                self.trace.push(TraceEvent::Health {
                    worker: book.ordinal,
                    from,
                    to,
                    cause,
                });
            }
            Event::Rejected { worker, reason } => {
                if let Some(worker) = worker {
                    ensure!(
                        reason == WorkerErrorCode::CircuitOpen,
                        "{worker} refused a request with {reason:?}"
                    );
                    match self.context {
                        Context::Submit { vetted: true, .. } => self.vetoed = true,
                        Context::Revet { .. } => {}
                        context => {
                            return Err(Failure(format!(
                                "veto of {worker} reported in {context:?}"
                            )))
                        }
                    }
                    self.vetoes_reported += 1;
                }
            }
            Event::ShutdownComplete { at } => {
                ensure!(
                    matches!(self.lifecycle, Lifecycle::Draining { .. }),
                    "ShutdownComplete while {:?}",
                    self.lifecycle
                );
                ensure!(
                    at == self.seen,
                    "ShutdownComplete at {at} while now is {}",
                    self.seen
                );
                self.lifecycle = Lifecycle::Stopped;
                self.shutdown_completed = true;
                self.recount_all();
                self.trace.push(TraceEvent::ShutdownComplete { at });
            }
        }
        Ok(())
    }

    /// Whether a Stopped-caused health change is legitimate now: only once
    /// the pool has completed shutdown (the events come right before
    /// `ShutdownComplete`, so the pool's own flag is what counts).
    fn shutdown_completed_pending(&self) -> bool {
        self.pool.is_stopped()
    }

    /// Applies the outcome of a request that ran to its worker's predicted
    /// health: a success clears the failures (and is the worker's last
    /// run), a handler error or panic adds one, a timeout adds one only if
    /// [`timeout_counts`]; a cancellation, restart or drain changes nothing.
    fn book_outcome(&mut self, book: &ReqBook, kind: AnswerKind) {
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

    fn touch_health(&mut self, worker: WorkerKey) {
        if !self.health_touched.contains(&worker) {
            self.health_touched.push(worker);
        }
    }

    /// Once an input is done, every worker whose predicted health changed
    /// has the status and failure count the rules predict.
    fn check_health(&mut self) -> Result<(), Failure> {
        let stopped = self.lifecycle == Lifecycle::Stopped;
        while let Some(worker) = self.health_touched.pop() {
            let Some(book) = self.workers.get(worker.as_u64()).copied() else {
                continue;
            };
            if stopped || book.stopped {
                continue;
            }
            let expected = book.health.status(self.threshold);
            ensure!(
                book.status == expected,
                "{worker} is {:?} but the health rules predict {expected:?} from {:?}",
                book.status,
                book.health
            );
            let failures = self
                .pool
                .worker_health(worker)
                .map(|health| health.consecutive_failures);
            ensure!(
                failures == Some(book.health.failures),
                "{worker} has {failures:?} consecutive failures but the health rules predict {}",
                book.health.failures
            );
        }
        Ok(())
    }

    fn check_limits(&self, worker: WorkerKey) -> Result<(), Failure> {
        if let Some(book) = self.workers.get(worker.as_u64()) {
            ensure!(
                book.running + book.queued <= self.capacity,
                "{worker} holds {} + {} > capacity {}",
                book.running,
                book.queued,
                self.capacity
            );
            ensure!(
                book.running <= self.max_running,
                "{worker} runs {} > {}",
                book.running,
                self.max_running
            );
        }
        Ok(())
    }

    fn on_action(&mut self, action: Action<u64>) -> Result<(), Failure> {
        match action {
            Action::Start {
                request,
                worker,
                payload,
            } => {
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
                    wbook.running < self.max_running,
                    "Start on {worker} already running {}",
                    wbook.running
                );
                // A queued request starts only with enough budget left (one
                // submitted to a free worker starts whatever its budget).
                let at_once = matches!(self.context, Context::Submit { id, .. } if id == book.id);
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
                let run_pos = self.running.len();
                self.running.push(request);
                if let Some(b) = self.requests.get_mut(request.as_u64()) {
                    b.state = ReqState::Running {
                        started_at: self.seen,
                        aborted: false,
                    };
                    b.run_pos = run_pos;
                }
                self.recount_worker(worker, |b| {
                    b.queued -= usize::from(moved.is_none());
                    b.running += 1;
                });
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
            }
            Action::Abort { request, worker } => {
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
            }
            Action::Answer(answer) => self.on_answer(answer)?,
            Action::Revet {
                request,
                worker,
                payload,
            } => {
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
            }
            Action::RunProbe { worker, probe } => {
                let book = self.worker_book(worker, "RunProbe")?;
                ensure!(!book.removing, "RunProbe on removing worker {worker}");
                ensure!(
                    self.lifecycle == Lifecycle::Running,
                    "RunProbe during shutdown"
                );
                ensure!(book.probe.is_none(), "second probe on {worker}");
                let deadline = self.seen + self.probe_timeout;
                let pos = self.probes.len();
                self.probes.push(worker);
                if let Some(b) = self.workers.get_mut(worker.as_u64()) {
                    b.probe = Some((probe, deadline));
                    b.probe_pos = pos;
                    b.health.probe_seq = b.health.seq;
                }
                self.probe_deadlines
                    .push(Reverse((deadline, worker, probe)));
                self.trace.push(TraceEvent::RunProbe {
                    worker: book.ordinal,
                });
                self.outputs.push(Output::RunProbe { worker, probe });
            }
            Action::AbortProbe { worker, probe } => {
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
            }
            Action::RestartWorker { worker } => {
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
            }
            Action::StopWorker { worker } => {
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
                    // Released for good: the core may reuse the slot.
                    self.workers.remove(worker.as_u64());
                }
                self.trace.push(TraceEvent::StopWorker {
                    worker: book.ordinal,
                });
                self.outputs.push(Output::StopWorker { worker });
            }
        }
        Ok(())
    }

    fn on_answer(&mut self, answer: Answer<u64>) -> Result<(), Failure> {
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
                let completed =
                    matches!(self.context, Context::Complete { request: r, .. } if r == request);
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
        // Which answers the current input may produce.
        let allowed = match (self.context, kind) {
            (
                Context::Complete {
                    request: r,
                    outcome,
                },
                _,
            ) if r == request => {
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
            (Context::Revet { request: r }, AnswerKind::Unavailable) => {
                r == request && book.state == ReqState::Moving
            }
            (context, AnswerKind::Timeout) => match answer.phase {
                // Aborted at its deadline (the `Abort` is checked above).
                Phase::Running => {
                    ensure!(
                        context == Context::Timeout && book.deadline.is_some_and(|d| d <= now),
                        "#{} timed out while running at {now} during {context:?}, deadline {:?}",
                        book.id,
                        book.deadline
                    );
                    true
                }
                // Expired in its queue, or reached by a worker with less
                // budget left than that worker's last run (whatever frees a
                // worker may answer it; a submit frees none).
                Phase::Queued => {
                    let left = book.deadline.map(|d| d - now);
                    ensure!(
                        !matches!(context, Context::Submit { .. })
                            && left.is_some_and(|left| left.is_zero() || left < self.longest_run),
                        "#{} answered Timeout while queued at {now} during {context:?} with {left:?} \
                         of its budget left (longest run so far {:?})",
                        book.id,
                        self.longest_run
                    );
                    true
                }
            },
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
        self.book_outcome(&book, kind);
        self.remove_live(&book);
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
                self.recount_worker(book.worker, |b| b.running -= 1);
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

    // ----- checks --------------------------------------------------------

    /// Moves the one-timer driver's timer as the adapters do
    /// (`Pool::move_timer`) and checks it would not fire late.
    fn rearm_driver_timer(&mut self) -> Result<(), Failure> {
        if let Some(at) = self.pool.move_timer(self.driver_timer) {
            self.driver_timer = at;
        }
        let exact = self.pool.poll_timeout().map_or(Time::MAX, |(at, _)| at);
        ensure!(
            exact >= self.driver_timer,
            "a driver timer moved by move_timer sits at {}, after the next deadline {exact}",
            self.driver_timer
        );
        Ok(())
    }

    fn check_step(&mut self) -> Result<(), Failure> {
        let now = self.seen;
        ensure!(
            self.stolen.is_empty(),
            "requests moved by late binding but never started: {:?}",
            self.stolen
        );
        // Late binding is work-conserving (defect 11).
        ensure!(
            !self.late_binding || self.unpinned_queued == 0 || self.free == 0,
            "{} requests wait while {} schedulable workers have a free run slot",
            self.unpinned_queued,
            self.free
        );
        // Deadlines never late: after settling nothing pending is past due.
        while let Some(Reverse((at, request))) = self.deadlines.peek().copied() {
            let live = self
                .requests
                .get(request.as_u64())
                .is_some_and(|book| book.deadline == Some(at));
            if !live {
                self.deadlines.pop();
                continue;
            }
            ensure!(
                at > now,
                "request #{} is still pending at {now}, past its deadline {at} (lost or late)",
                self.request_id(request).unwrap_or(0)
            );
            break;
        }
        while let Some(Reverse((at, worker, probe))) = self.probe_deadlines.peek().copied() {
            let live = self
                .workers
                .get(worker.as_u64())
                .is_some_and(|book| book.probe == Some((probe, at)));
            if !live {
                self.probe_deadlines.pop();
                continue;
            }
            ensure!(
                at > now,
                "probe of {worker} still outstanding at {now}, past its deadline {at}"
            );
            break;
        }
        match self.lifecycle {
            Lifecycle::Draining { deadline: Some(at) } => {
                ensure!(
                    at > now,
                    "drain deadline {at} passed at {now} but the pool has not stopped"
                );
            }
            Lifecycle::Stopped => {
                ensure!(
                    self.live.is_empty(),
                    "shutdown completed with {} requests pending",
                    self.live.len()
                );
                ensure!(
                    self.pool.pending() == 0,
                    "stopped pool reports {} pending",
                    self.pool.pending()
                );
            }
            _ => {}
        }
        ensure!(
            self.pool.pending() == self.live.len(),
            "pool has {} pending, books {}",
            self.pool.pending(),
            self.live.len()
        );
        let counters = *self.pool.counters();
        ensure!(
            counters.submitted == self.submitted
                && counters.accepted == self.accepted
                && counters.answered() == self.answered,
            "counters (submitted {}, accepted {}, answered {}) disagree with books ({}, {}, {})",
            counters.submitted,
            counters.accepted,
            counters.answered(),
            self.submitted,
            self.accepted,
            self.answered
        );
        ensure!(
            self.pool.is_stopped() == (self.lifecycle == Lifecycle::Stopped),
            "pool stopped={} but books say {:?}",
            self.pool.is_stopped(),
            self.lifecycle
        );
        Ok(())
    }

    fn check_full(&mut self) -> Result<(), Failure> {
        if let Err(violation) = self.pool.check_invariants() {
            return Err(Failure(violation.to_string()));
        }
        let stats = self.pool.stats();
        let stopped = self.lifecycle == Lifecycle::Stopped;
        let mut count = 0;
        for w in &stats.workers {
            let Some(book) = self.workers.get(w.worker.as_u64()) else {
                return Err(Failure(format!(
                    "stats list {} which the books released",
                    w.worker
                )));
            };
            if !stopped {
                count += 1;
                ensure!(!book.stopped, "stats list stopped worker {}", w.worker);
            }
            let reported = if book.removing || stopped {
                WorkerHealthStatus::Unavailable
            } else {
                book.status
            };
            ensure!(
                w.queued == book.queued && w.running == book.running && w.status == reported && w.removing == book.removing,
                "stats of {} ({:?}, {} queued, {} running, removing {}) disagree with books {book:?}",
                w.worker,
                w.status,
                w.queued,
                w.running,
                w.removing
            );
            ensure!(
                stopped || book.stopped || w.consecutive_failures == book.health.failures,
                "{} has {} consecutive failures but the health rules predict {}",
                w.worker,
                w.consecutive_failures,
                book.health.failures
            );
            ensure!(
                w.queued <= self.queue_capacity,
                "{} queues {} > {}",
                w.worker,
                w.queued,
                self.queue_capacity
            );
        }
        if !stopped {
            ensure!(
                count == self.worker_list.len(),
                "stats list {count} workers, books {}",
                self.worker_list.len()
            );
        }
        let mut schedulable = 0;
        let mut open = 0;
        let mut free = 0;
        for key in &self.worker_list {
            if let Some(book) = self.workers.get(key.as_u64()) {
                let (s, o, f) = self.worker_flags(book);
                schedulable += usize::from(s);
                open += usize::from(o);
                free += usize::from(f);
            }
        }
        ensure!(
            schedulable == self.schedulable && open == self.open && free == self.free,
            "harness counts drifted: schedulable {} vs {schedulable}, open {} vs {open}, free {} vs {free}",
            self.schedulable,
            self.open,
            self.free
        );
        let unpinned = self
            .live
            .iter()
            .filter_map(|key| self.requests.get(key.as_u64()))
            .filter(|book| book.state == ReqState::Queued && !book.pinned)
            .count();
        ensure!(
            unpinned == self.unpinned_queued,
            "harness counts {} unpinned queued requests, books hold {unpinned}",
            self.unpinned_queued
        );
        Ok(())
    }
}

fn pick<T: Copy>(items: &[T], index: u16) -> Option<T> {
    if items.is_empty() {
        None
    } else {
        Some(items[usize::from(index) % items.len()])
    }
}

/// One request per [`Shape`], built once and reused for every submit (the
/// core only borrows the request; the harness sets `timeout_ms` in place).
fn build_templates(max_identifier: usize, max_payload: usize) -> Vec<WorkerRequest> {
    Shape::ALL
        .iter()
        .map(|shape| {
            let mut request = WorkerRequest {
                request_id: "req".to_string(),
                workflow_name: "sim".to_string(),
                node_id: "node".to_string(),
                timeout_ms: None,
                operation: WorkerOperation::Tool {
                    tool: "echo".to_string(),
                    input: json!({"n": 1}),
                    scoped_input: json!({}),
                },
            };
            match shape {
                Shape::Tool => {}
                Shape::Llm => {
                    request.operation = WorkerOperation::Llm {
                        model: "model".to_string(),
                        prompt: "say hi".to_string(),
                        scoped_input: Value::Null,
                    };
                }
                Shape::Unnamed => {
                    request.request_id.clear();
                    request.workflow_name.clear();
                    request.node_id.clear();
                }
                Shape::LongIdentifier => request.workflow_name = "w".repeat(max_identifier + 1),
                Shape::Oversized => {
                    request.operation = WorkerOperation::Tool {
                        tool: "echo".to_string(),
                        input: Value::String("x".repeat(max_payload.min(1 << 20) + 1)),
                        scoped_input: json!({}),
                    };
                }
            }
            request
        })
        .collect()
}
