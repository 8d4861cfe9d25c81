//! The inputs of the model as data: [`Op`] and its parts.

use std::time::Duration;

use foreman_core::{WorkerErrorCode, WorkerHealthStatus, WorkerProtocolError, MAX_WORKER_ID_LEN};
use serde_json::Value;

/// The shape of a submitted request: valid ones and the ways to be invalid
/// (whether the pool admits each depends on its security policy: the
/// harness predicts it from the policy's limits).
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
    /// Every shape, the ones valid under the default policy first.
    pub const ALL: [Shape; 5] = [
        Shape::Tool,
        Shape::Llm,
        Shape::Unnamed,
        Shape::LongIdentifier,
        Shape::Oversized,
    ];
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
    /// `Some` of the policy's maximum.
    Max,
    /// `Some(u64::MAX)`: invalid unless the policy allows any timeout.
    Huge,
}

impl TimeoutChoice {
    /// The request field this choice sets, under a policy whose maximum
    /// timeout is `max_ms`.
    pub fn timeout_ms(self, max_ms: u64) -> Option<u64> {
        match self {
            TimeoutChoice::Default => None,
            TimeoutChoice::Ms(ms) => Some(u64::from(ms)),
            TimeoutChoice::Max => Some(max_ms),
            TimeoutChoice::Huge => Some(u64::MAX),
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
    /// The handler of an attempt of the `index`-th running request (its
    /// own, or its hedge's: see `Harness::refuse`) declines it before
    /// starting (`Pool::handle_refusal`): the attempt is uncounted, the
    /// request waits again (a racing hedge just ends), and the worker is
    /// saturated.
    Refuse {
        /// Which running request.
        index: u16,
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
    /// `poll_timeout` on the way (at most
    /// [`Harness::set_max_wakes_per_advance`](super::Harness::set_max_wakes_per_advance)
    /// times, [`super::MAX_WAKES_PER_ADVANCE`] unless set).
    Advance {
        /// Milliseconds to move forward.
        ms: u32,
    },
    /// Distance the driver's clock backwards by `ms` (the core must keep its
    /// own notion of time monotonic).
    StepBack {
        /// Milliseconds to step back.
        ms: u32,
    },
    /// Call `handle_timeout` now (spurious after settling: must do nothing).
    Timeout,
    /// Add a worker named by [`worker_name`]: empty, overlong, or `w<n>`
    /// (refused while a worker of that name is in the pool).
    AddNamedWorker {
        /// Which name.
        name: u8,
    },
    /// Add a worker with its own run limit (0 is refused), named by
    /// [`worker_name`] or numbered.
    AddSizedWorker {
        /// Which name, if any.
        name: Option<u8>,
        /// Its run limit.
        max_concurrency: u8,
    },
    /// An input naming a key the harness did not pick (usually unknown:
    /// the core must ignore it, or refuse it as unknown).
    RawKey {
        /// The key, as `RequestKey::from_u64` / `WorkerKey::from_u64`.
        raw: u64,
        /// Which input.
        input: RawInput,
    },
    /// A late driver: move the clock forward `by`, then wake the core once
    /// (everything due on the way fires in that one call).
    Leap {
        /// How far.
        by: Distance,
    },
    /// Move the clock to the core's next wake-up and wake it there.
    NextTimer,
}

/// The inputs of [`Op::RawKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum RawInput {
    /// `cancel` of the request key.
    Cancel,
    /// `handle_completion` (a success) of the request key.
    Complete,
    /// `restart_worker` of the worker key.
    Restart,
    /// `remove_worker` of the worker key.
    Remove,
}

/// How far an [`Op::Leap`] moves the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Distance {
    /// Nanoseconds.
    Nanos(u16),
    /// Milliseconds.
    Millis(u16),
    /// Seconds.
    Secs(u16),
    /// To the end of time (`Time::MAX`).
    ToTheEnd,
}

impl Distance {
    /// The distance.
    pub fn duration(self) -> Duration {
        match self {
            Distance::Nanos(n) => Duration::from_nanos(n.into()),
            Distance::Millis(n) => Duration::from_millis(n.into()),
            Distance::Secs(n) => Duration::from_secs(n.into()),
            Distance::ToTheEnd => Duration::MAX,
        }
    }
}

/// The name [`Op::AddNamedWorker`] gives: `0` is empty and `255` one byte
/// longer than [`MAX_WORKER_ID_LEN`] (both refused), any other `n` is
/// `w<n>`.
pub fn worker_name(name: u8) -> String {
    match name {
        0 => String::new(),
        255 => "w".repeat(MAX_WORKER_ID_LEN + 1),
        n => format!("w{n}"),
    }
}

pub(super) fn pick<T: Copy>(items: &[T], index: u16) -> Option<T> {
    if items.is_empty() {
        None
    } else {
        Some(items[usize::from(index) % items.len()])
    }
}
