//! The user-facing traits: worker handlers, circuit-breaker hooks and the
//! client trait, with the reference's names, methods and defaults.

use async_trait::async_trait;
use foreman_core::{
    WorkerErrorCode, WorkerHealth, WorkerHealthStatus, WorkerPoolError, WorkerProtocolError,
    WorkerRequest, WorkerResponse,
};
use serde_json::Value;

/// The code a worker runs for each request (one per worker of the pool).
///
/// Object-safe: pools take `Arc<dyn WorkerHandler>`. A panic inside
/// `handle` is caught and reported as `ExecutionFailed`; a handler that
/// runs past its request's deadline, is cancelled or is restarted has its
/// future dropped.
///
/// Where `handle` runs depends on the pool's
/// [`ExecutionMode`](crate::ExecutionMode): by default on its worker's task,
/// on the pool's runtime (so it may use that runtime's timers and I/O
/// whatever executor the caller is on, and it progresses whether or not the
/// caller polls); in `CallerTask` mode in the task of the caller that
/// submitted the request, except that a request that queued may get its
/// first poll from the task that just freed its worker. Do not rely on
/// task-local values in `handle`; pass what it needs in the request.
#[async_trait]
pub trait WorkerHandler: Send + Sync {
    /// Handles one request.
    ///
    /// # Errors
    /// Returns the worker's own [`WorkerProtocolError`]; it counts as one
    /// failure of the worker.
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError>;

    /// Reports the worker's own view of its health (default: Healthy). It
    /// runs with the pool's probe timeout; a probe that does not answer in
    /// time counts as Unavailable and is dropped.
    async fn probe_health(&self) -> WorkerHealthStatus {
        WorkerHealthStatus::Healthy
    }
}

/// Circuit-breaker integration: a veto per worker and after-the-fact
/// notifications, each fired exactly once per event.
///
/// `allow_request` runs while the pool chooses a worker (keep it short: it
/// runs under the pool's lock). The `on_*` hooks run after the event they
/// report, in the submitting caller's task and before `submit` returns, so
/// they are ordered per request (accepted before success or failure).
#[async_trait]
pub trait CircuitBreakerHooks: Send + Sync {
    /// Returns `false` to keep the request off this worker.
    fn allow_request(&self, _worker_id: &str, _request: &WorkerRequest) -> bool {
        true
    }

    /// A worker took the request into its queue.
    async fn on_request_accepted(&self, _worker_id: &str, _request: &WorkerRequest) {}

    /// A request was answered with the handler's output.
    async fn on_request_success(&self, _worker_id: &str, _response: &WorkerResponse) {}

    /// An accepted request ended without output (handler error, panic,
    /// timeout, restart, cancellation or shutdown).
    async fn on_request_failure(&self, _worker_id: &str, _error: &WorkerProtocolError) {}

    /// A request was refused, by one worker's circuit breaker (`Some`) or
    /// by the pool (`None`).
    async fn on_request_rejected(
        &self,
        _worker_id: Option<&str>,
        _request: &WorkerRequest,
        _reason: WorkerErrorCode,
    ) {
    }
}

/// What a workflow runtime needs from a worker pool.
#[async_trait]
pub trait WorkerPoolClient: Send + Sync {
    /// Submits one request and waits for its answer.
    ///
    /// # Errors
    /// Every [`WorkerPoolError`] the pool can answer with.
    async fn submit(&self, request: WorkerRequest) -> Result<WorkerResponse, WorkerPoolError>;

    /// Health of every worker.
    async fn health_snapshot(&self) -> Vec<WorkerHealth>;
}
