//! The inputs of the model as data: [`Op`] and its parts, and the request
//! each [`Shape`] submits.

use foreman_core::{
    WorkerErrorCode, WorkerHealthStatus, WorkerOperation, WorkerProtocolError, WorkerRequest,
};
use serde_json::{json, Value};

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
    /// `poll_timeout` on the way (at most [`super::MAX_WAKES_PER_ADVANCE`]).
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

pub(super) fn pick<T: Copy>(items: &[T], index: u16) -> Option<T> {
    if items.is_empty() {
        None
    } else {
        Some(items[usize::from(index) % items.len()])
    }
}

/// One request per [`Shape`], built once and reused for every submit (the
/// core only borrows the request; the harness sets `timeout_ms` in place).
pub(super) fn build_templates(max_identifier: usize, max_payload: usize) -> Vec<WorkerRequest> {
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
