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
/// The hooks of a request run in the task of the caller that submitted it,
/// one at a time, in the order below, and never under a lock of the pool,
/// so each may call the pool: the async hooks any method (`submit`,
/// `stats`, `health_snapshot`, `health_history`, `add_worker`,
/// `remove_worker`, `restart_worker`, `shutdown`); `allow_request`, which
/// cannot await, those that answer at once (all but `submit` and
/// `shutdown`; the async `health_snapshot` and `restart_worker` complete
/// on their first poll).
///
/// 1. **Choosing a worker.** `allow_request` is asked about the candidate
///    workers (schedulable, with queue room) in the pool's order (under the
///    default idle-first routing: idle Healthy workers, then idle Degraded
///    ones, then busy ones; with several lanes, lane by lane), one at a
///    time, until one allows. Each veto is reported as
///    `on_request_rejected(Some(worker), CircuitOpen)` before the next
///    candidate is asked; a worker after the one that allows is never
///    asked, nor is any worker asked twice in one choice. A candidate that
///    allows but has filled up meanwhile is passed over for the next one.
/// 2. **Accepted or refused.** The worker that allowed takes the request:
///    `on_request_accepted(worker)`. The request runs on that worker only;
///    its handler starts as soon as the worker is free, on the worker's
///    task, and runs while this hook and the next ones do. If no candidate
///    takes it, `on_request_rejected(None, reason)` reports the refusal
///    (`CircuitOpen` when vetoes alone refused it) and `submit` returns it.
/// 3. **Its worker removed.** Should that worker be removed while the
///    request waits in its queue, the request moves only where the breaker
///    allows: step 1 runs again over the other workers (vetoes reported as
///    `on_request_rejected(Some(worker), CircuitOpen)`), and the worker
///    that allows takes it: `on_request_accepted(worker)` again. If none
///    does, the request is answered with a retryable `Unavailable` error.
/// 4. **Answered.** `on_request_success` or `on_request_failure` with the
///    answer, before `submit` returns it. A caller that drops `submit`
///    cancels the request; its failure hook then runs in a task of its own.
///
/// `allow_request` is synchronous: keep it short, it runs between two
/// steps of the pool's choice.
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
