//! Wire types shared with `simple-agents-workflow` 0.2.34's `worker` module.
//!
//! Every type here serialises to the same JSON as the reference, byte for
//! byte; fields foreman adds are optional and skipped when absent, so old JSON
//! still parses and old readers still work (see `core/tests/wire.rs`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

/// One unit of work handed to the pool by a workflow runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRequest {
    /// Caller-chosen identifier used to correlate the response.
    pub request_id: String,
    /// Name of the workflow this request belongs to.
    pub workflow_name: String,
    /// Workflow node that issued the request.
    pub node_id: String,
    /// Time budget in milliseconds (queue wait plus run); `None` uses the
    /// pool's default.
    pub timeout_ms: Option<u64>,
    /// What the worker should do.
    pub operation: WorkerOperation,
}

/// The operation a request asks a worker to perform, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkerOperation {
    /// A call to a language model.
    Llm {
        /// Model to call.
        model: String,
        /// Prompt text.
        prompt: String,
        /// Input scoped to the calling node.
        scoped_input: Value,
    },
    /// A call to a tool.
    Tool {
        /// Tool to call.
        tool: String,
        /// The node's static input for the tool.
        input: Value,
        /// Input scoped to the calling node.
        scoped_input: Value,
    },
}

/// The answer to one request, as produced by the worker that served it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerResponse {
    /// The request's `request_id`.
    pub request_id: String,
    /// Identifier of the worker that served the request.
    pub worker_id: String,
    /// What the worker produced.
    pub result: WorkerResult,
    /// Milliseconds from acceptance to answer: queue wait plus run time
    /// (the split is in the driver's `Timings`).
    pub elapsed_ms: u64,
}

/// Outcome carried by a [`WorkerResponse`], tagged by `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum WorkerResult {
    /// The worker succeeded.
    Success {
        /// The worker's output.
        output: Value,
    },
    /// The worker failed.
    Error {
        /// What went wrong.
        error: WorkerProtocolError,
    },
}

/// A structured error reported by a worker or by the pool.
///
/// It is a `std::error::Error` (displayed as `ExecutionFailed: message`), so
/// it travels boxed through error types such as tower's `BoxError` and can
/// be recovered by downcasting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error)]
#[error("{code:?}: {message}")]
pub struct WorkerProtocolError {
    /// Machine-readable error code.
    pub code: WorkerErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// Whether the caller may safely retry the request.
    pub retryable: bool,
}

impl WorkerProtocolError {
    /// Builds an error from its three parts.
    pub fn new(code: WorkerErrorCode, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            code,
            message: message.into(),
            retryable,
        }
    }
}

/// Stable error codes, serialised in `snake_case`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerErrorCode {
    /// The pool's queues could not take the request.
    QueueFull,
    /// The worker was not available.
    Unavailable,
    /// The request ran out of time.
    Timeout,
    /// The worker failed while executing the request.
    ExecutionFailed,
    /// A circuit breaker refused the request.
    CircuitOpen,
    /// The request was cancelled before it completed.
    Cancelled,
    /// The request broke the pool's security policy.
    InvalidRequest,
}

/// Errors the pool reports to a caller of `submit` and friends.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WorkerPoolError {
    /// Every eligible worker's queue was full.
    #[error("worker queue is full")]
    QueueFull,
    /// No worker could take the request (none exist, or all are unavailable).
    #[error("no healthy worker available")]
    NoHealthyWorker,
    /// The worker reported an error.
    #[error("worker execution failed: {0:?}")]
    Worker(WorkerProtocolError),
    /// The request's time budget ran out, while queued or while running.
    #[error("worker request timed out")]
    Timeout,
    /// The pool is shutting down and does not take or finish this request.
    #[error("worker pool is shutting down")]
    ShuttingDown,
    /// A circuit breaker refused the request on every eligible worker.
    #[error("request rejected by circuit breaker")]
    CircuitOpen,
    /// The request broke the security policy.
    #[error("worker request rejected: {reason}")]
    InvalidRequest {
        /// Why the request was refused.
        reason: String,
    },
}

impl WorkerPoolError {
    /// The wire error code that best describes this error.
    pub fn code(&self) -> WorkerErrorCode {
        match self {
            Self::QueueFull => WorkerErrorCode::QueueFull,
            Self::NoHealthyWorker | Self::ShuttingDown => WorkerErrorCode::Unavailable,
            Self::Worker(error) => error.code,
            Self::Timeout => WorkerErrorCode::Timeout,
            Self::CircuitOpen => WorkerErrorCode::CircuitOpen,
            Self::InvalidRequest { .. } => WorkerErrorCode::InvalidRequest,
        }
    }
}

/// Health of one worker, as reported by a health snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerHealth {
    /// The worker's identifier.
    pub worker_id: String,
    /// Its current status.
    pub status: WorkerHealthStatus,
    /// Consecutive failures counted against it.
    pub consecutive_failures: u32,
    /// When its last probe answered, in unix milliseconds.
    pub last_probe_unix_ms: Option<u64>,
}

impl WorkerHealth {
    /// Whether routing may send new requests to this worker.
    pub fn is_schedulable(&self) -> bool {
        self.status.is_schedulable()
    }
}

/// Coarse health status used for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerHealthStatus {
    /// Takes traffic.
    Healthy,
    /// Has recent failures but still takes traffic.
    Degraded,
    /// Takes no new traffic.
    Unavailable,
}

impl WorkerHealthStatus {
    /// Whether a worker in this status may receive new requests.
    pub fn is_schedulable(self) -> bool {
        !matches!(self, Self::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pool_error_has_its_wire_code() {
        let worker = WorkerProtocolError::new(WorkerErrorCode::ExecutionFailed, "boom", true);
        let cases = [
            (WorkerPoolError::QueueFull, WorkerErrorCode::QueueFull),
            (
                WorkerPoolError::NoHealthyWorker,
                WorkerErrorCode::Unavailable,
            ),
            (WorkerPoolError::ShuttingDown, WorkerErrorCode::Unavailable),
            (
                WorkerPoolError::Worker(worker),
                WorkerErrorCode::ExecutionFailed,
            ),
            (WorkerPoolError::Timeout, WorkerErrorCode::Timeout),
            (WorkerPoolError::CircuitOpen, WorkerErrorCode::CircuitOpen),
            (
                WorkerPoolError::InvalidRequest { reason: "r".into() },
                WorkerErrorCode::InvalidRequest,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error:?}");
        }
    }

    #[test]
    fn only_unavailable_workers_are_not_schedulable() {
        use WorkerHealthStatus::*;
        for (status, schedulable) in [(Healthy, true), (Degraded, true), (Unavailable, false)] {
            assert_eq!(status.is_schedulable(), schedulable, "{status:?}");
            let health = WorkerHealth {
                worker_id: "w".into(),
                status,
                consecutive_failures: 0,
                last_probe_unix_ms: None,
            };
            assert_eq!(health.is_schedulable(), schedulable, "{status:?}");
        }
    }
}
