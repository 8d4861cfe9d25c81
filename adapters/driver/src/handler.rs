//! The user-facing traits: worker handlers, circuit-breaker hooks and the
//! client trait, with the reference's names, methods and defaults.

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use foreman_core::{
    WorkerErrorCode, WorkerHealth, WorkerHealthStatus, WorkerPoolError, WorkerProtocolError,
    WorkerRequest, WorkerResponse,
};
use serde_json::Value;

/// A handler's future, boxed (`'static`: it owns its handler, so it can
/// move between tasks; else borrowed from its caller).
pub(crate) type HandlerFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Value, WorkerProtocolError>> + Send + 'a>>;

/// A handler future that owns its handler, so it can move between tasks.
pub(crate) type OwnedHandlerFuture = HandlerFuture<'static>;

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
///
/// # Examples
/// A handler for LLM calls, with its own health probe; the pool gets one
/// `Arc` per worker (here two workers sharing one client):
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
/// use foreman_tokio::{
///     async_trait, WorkerErrorCode, WorkerHandler, WorkerHealthStatus, WorkerOperation,
///     WorkerPool, WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
/// };
/// use serde_json::{json, Value};
///
/// struct Llm {
///     /// Stands for a connection to a model server.
///     reachable: AtomicBool,
/// }
///
/// #[async_trait]
/// impl WorkerHandler for Llm {
///     async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
///         match request.operation {
///             WorkerOperation::Llm { model, prompt, .. } => {
///                 Ok(json!({ "model": model, "completion": format!("echo: {prompt}") }))
///             }
///             WorkerOperation::Tool { tool, .. } => Err(WorkerProtocolError::new(
///                 WorkerErrorCode::ExecutionFailed,
///                 format!("this worker runs no tools ({tool})"),
///                 false, // the same request would fail again
///             )),
///         }
///     }
///
///     async fn probe_health(&self) -> WorkerHealthStatus {
///         if self.reachable.load(Ordering::Relaxed) {
///             WorkerHealthStatus::Healthy
///         } else {
///             WorkerHealthStatus::Unavailable
///         }
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let llm = Arc::new(Llm { reachable: AtomicBool::new(true) });
/// let handlers: Vec<Arc<dyn WorkerHandler>> = vec![llm.clone(), llm];
/// let pool = WorkerPool::new_inprocess(handlers, WorkerPoolOptions::default(), None)?;
/// let response = pool
///     .submit(WorkerRequest {
///         request_id: "req-1".into(),
///         workflow_name: "demo".into(),
///         node_id: "summarise".into(),
///         timeout_ms: None,
///         operation: WorkerOperation::Llm {
///             model: "small".into(),
///             prompt: "hello".into(),
///             scoped_input: json!({}),
///         },
///     })
///     .await?;
/// assert_eq!(response.worker_id, "worker-0");
/// pool.shutdown().await;
/// # Ok::<(), foreman_tokio::WorkerPoolError>(())
/// # }).unwrap();
/// ```
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
///
/// Hooks that only observe (that leave `allow_request` to its default)
/// are declared so with
/// [`WorkerPool::new_inprocess_observed`](crate::WorkerPool::new_inprocess_observed)
/// or [`HookRole::ObserveOnly`](crate::HookRole::ObserveOnly): step 1 then
/// asks nothing, the request goes where the pool routes it, and late
/// binding stays on, so `on_request_accepted` names the worker it was
/// queued on and the answer's hook the worker that ran it. [`HookRole`](crate::HookRole)
/// says exactly when a request is pinned.
///
/// # Examples
/// A breaker that opens a worker's circuit after two failures in a row
/// and closes it on the next success; here it starts with `worker-0`'s
/// circuit open, so `worker-1` serves:
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::{Arc, Mutex};
/// use foreman_tokio::{
///     async_trait, CircuitBreakerHooks, WorkerHandler, WorkerPool, WorkerPoolOptions,
///     WorkerProtocolError, WorkerRequest, WorkerResponse,
/// };
/// # use serde_json::{json, Value};
/// # struct Echo;
/// # #[async_trait]
/// # impl WorkerHandler for Echo {
/// #     async fn handle(&self, _: WorkerRequest) -> Result<Value, WorkerProtocolError> {
/// #         Ok(json!(null))
/// #     }
/// # }
/// # fn request(id: &str) -> foreman_tokio::WorkerRequest {
/// #     foreman_tokio::WorkerRequest {
/// #         request_id: id.into(),
/// #         workflow_name: "demo".into(),
/// #         node_id: "node".into(),
/// #         timeout_ms: None,
/// #         operation: foreman_tokio::WorkerOperation::Tool {
/// #             tool: "echo".into(),
/// #             input: serde_json::json!({}),
/// #             scoped_input: serde_json::json!({}),
/// #         },
/// #     }
/// # }
///
/// #[derive(Default)]
/// struct Breaker {
///     /// Consecutive failures per worker id.
///     failures: Mutex<HashMap<String, u32>>,
/// }
///
/// impl Breaker {
///     fn set(&self, worker_id: &str, failures: u32) {
///         self.failures.lock().unwrap().insert(worker_id.to_owned(), failures);
///     }
/// }
///
/// #[async_trait]
/// impl CircuitBreakerHooks for Breaker {
///     fn allow_request(&self, worker_id: &str, _request: &WorkerRequest) -> bool {
///         self.failures.lock().unwrap().get(worker_id).copied().unwrap_or(0) < 2
///     }
///
///     async fn on_request_success(&self, worker_id: &str, _response: &WorkerResponse) {
///         self.set(worker_id, 0);
///     }
///
///     async fn on_request_failure(&self, worker_id: &str, _error: &WorkerProtocolError) {
///         *self.failures.lock().unwrap().entry(worker_id.to_owned()).or_default() += 1;
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let breaker = Breaker::default();
/// breaker.set("worker-0", 2); // open
/// let hooks: Arc<dyn CircuitBreakerHooks> = Arc::new(breaker);
/// let handlers: Vec<Arc<dyn WorkerHandler>> = vec![Arc::new(Echo), Arc::new(Echo)];
/// let pool = WorkerPool::new_inprocess(handlers, WorkerPoolOptions::default(), Some(hooks))?;
///
/// let response = pool.submit(request("req-1")).await?;
/// assert_eq!(response.worker_id, "worker-1");
/// assert_eq!(pool.stats().counters.succeeded, 1);
/// pool.shutdown().await;
/// # Ok::<(), foreman_tokio::WorkerPoolError>(())
/// # }).unwrap();
/// ```
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
///
/// Every adapter's `WorkerPool` implements it; code that takes a
/// `&dyn WorkerPoolClient` runs on any of them, or on a stand-in of its
/// own in tests.
///
/// # Examples
/// ```
/// # use std::sync::Arc;
/// # use foreman_tokio::{async_trait, WorkerHandler, WorkerProtocolError, WorkerRequest};
/// # use serde_json::{json, Value};
/// # struct Echo;
/// # #[async_trait]
/// # impl WorkerHandler for Echo {
/// #     async fn handle(&self, _: WorkerRequest) -> Result<Value, WorkerProtocolError> {
/// #         Ok(json!(null))
/// #     }
/// # }
/// # fn request(id: &str) -> foreman_tokio::WorkerRequest {
/// #     foreman_tokio::WorkerRequest {
/// #         request_id: id.into(),
/// #         workflow_name: "demo".into(),
/// #         node_id: "node".into(),
/// #         timeout_ms: None,
/// #         operation: foreman_tokio::WorkerOperation::Tool {
/// #             tool: "echo".into(),
/// #             input: serde_json::json!({}),
/// #             scoped_input: serde_json::json!({}),
/// #         },
/// #     }
/// # }
/// use foreman_tokio::{WorkerPool, WorkerPoolClient, WorkerPoolError, WorkerPoolOptions};
///
/// async fn run_node(client: &dyn WorkerPoolClient) -> Result<String, WorkerPoolError> {
///     Ok(client.submit(request("req-1")).await?.worker_id)
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let pool = WorkerPool::new_inprocess(vec![Arc::new(Echo)], WorkerPoolOptions::default(), None)?;
/// assert_eq!(run_node(&pool).await?, "worker-0");
/// pool.shutdown().await;
/// # Ok::<(), WorkerPoolError>(())
/// # }).unwrap();
/// ```
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
