//! tower both ways (feature `tower`): the pool as a
//! `tower_service::Service` ([`PoolService`], and [`WorkerPool`] itself),
//! and any such service as a worker handler ([`ServiceHandler`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use async_trait::async_trait;
use foreman_core::{
    WorkerErrorCode, WorkerHealthStatus, WorkerPoolError, WorkerProtocolError, WorkerRequest,
    WorkerResponse,
};
use futures_util::future::poll_fn;
use serde_json::Value;
use tower_service::Service;

use crate::closure::{healthy, HealthyProbe};
use crate::handler::WorkerHandler;
use crate::pool::WorkerPool;
use crate::runtime::Runtime;
use crate::shared::Shared;
use crate::state::Core;

/// The boxed error tower's middleware speaks.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A cheap, cloneable handle on a [`WorkerPool`] that is a
/// `tower::Service<WorkerRequest>`, from [`WorkerPool::service`]: stack
/// tower middleware (timeouts, rate limits, retries) in front of the pool.
///
/// A handle keeps the pool running: the pool's tasks stop once the
/// `WorkerPool` and every handle are dropped (and every response future,
/// which holds a handle too).
///
/// # Readiness
/// `poll_ready` reports what the pool would do with a valid request at the
/// moment it is asked:
/// - `Ready(Ok(()))` while the pool would admit one (a schedulable worker
///   with a free run slot or queue room, in some lane);
/// - `Pending` while it would not (every schedulable worker's queue is
///   full, or no worker is schedulable), with the task's waker registered:
///   it is woken by the first input after which the pool would admit one
///   again (a completion, a queued request's timeout or cancellation, a
///   worker added or back to health) or after which it is shutting down.
///   Nothing is buffered and nothing polls meanwhile;
/// - `Ready(Err(ShuttingDown))` once shutdown has begun.
///
/// `call` submits the request at once: the pool admits or refuses it
/// before `call` returns (in a pool with hooks, unless a hook that the
/// choice of a worker awaits has to wait), so the next `poll_ready`
/// counts it; the response future waits for its answer. In
/// [`ExecutionMode::CallerTask`](crate::ExecutionMode::CallerTask) a
/// request started at once begins its handler inside `call`.
///
/// Readiness reserves nothing: admission is decided when `call` submits
/// the request. A request that raced past `poll_ready` (another caller
/// took the room first), or that the pool refuses for itself
/// (`InvalidRequest`, a zero budget, a circuit breaker's vetoes), gets the
/// pool's refusal as the call's error, as [`WorkerPool::submit`] returns
/// it. So unlike the permit of tower's `ConcurrencyLimit`, `Ready` is
/// advisory: it guarantees only that, when it was returned, a valid
/// request would have been admitted, and `Pending` that it would not have
/// been and that the task will be woken when that changes. Calling
/// without `poll_ready` is allowed and submits all the same.
///
/// Dropping the response future cancels the request, as dropping
/// `submit`'s future does.
pub struct PoolService<R: Runtime> {
    pool: WorkerPool<R>,
}

impl<R: Runtime> PoolService<R> {
    /// The pool this handle serves.
    pub fn pool(&self) -> &WorkerPool<R> {
        &self.pool
    }
}

impl<R: Runtime> Clone for PoolService<R> {
    fn clone(&self) -> Self {
        PoolService {
            pool: self.pool.handle(),
        }
    }
}

impl<R: Runtime> fmt::Debug for PoolService<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolService")
            .field("pool", &self.pool)
            .finish()
    }
}

/// A submit that owns its handle on the pool.
type OwnedSubmit = Pin<Box<dyn Future<Output = Result<WorkerResponse, WorkerPoolError>> + Send>>;

/// The response future of [`PoolService`] (and of [`WorkerPool`] as a
/// service): `'static` and `Send`, it owns a handle on the pool. The
/// request was submitted by `call`; this future waits for its answer.
/// Dropping it cancels the request.
pub struct PoolServiceFuture {
    /// The submit, until it answers.
    submit: Option<OwnedSubmit>,
    /// An answer that came during `call` (a refusal, or a handler that
    /// finished at once).
    early: Option<Result<WorkerResponse, WorkerPoolError>>,
}

impl Future for PoolServiceFuture {
    type Output = Result<WorkerResponse, WorkerPoolError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(answer) = self.early.take() {
            return Poll::Ready(answer);
        }
        match self.submit.as_mut() {
            Some(submit) => {
                let answer = std::task::ready!(submit.as_mut().poll(cx));
                self.submit = None;
                Poll::Ready(answer)
            }
            // Polled again after its answer: tower's futures may panic
            // here; this one answers an error instead.
            None => Poll::Ready(Err(WorkerPoolError::Worker(WorkerProtocolError::new(
                WorkerErrorCode::Cancelled,
                "the response future was polled after it completed",
                false,
            )))),
        }
    }
}

impl fmt::Debug for PoolServiceFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolServiceFuture").finish_non_exhaustive()
    }
}

impl<R: Runtime> WorkerPool<R> {
    /// A cloneable handle on this pool that is a
    /// `tower::Service<WorkerRequest>` (see [`PoolService`] for what its
    /// readiness means).
    ///
    /// ```
    /// use foreman_tokio::{handler_fn, WorkerOperation, WorkerPool, WorkerPoolOptions};
    /// use foreman_tokio::{WorkerProtocolError, WorkerRequest};
    /// use serde_json::json;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let echo = handler_fn(|request: WorkerRequest| async move {
    ///     Ok::<_, WorkerProtocolError>(json!({ "node": request.node_id }))
    /// });
    /// let pool = WorkerPool::new_inprocess(vec![echo.into_arc()], WorkerPoolOptions::default(), None)?;
    ///
    /// // Any tower middleware goes in front: here, at most 4 requests in flight.
    /// let mut service = ServiceBuilder::new()
    ///     .concurrency_limit(4)
    ///     .service(pool.service());
    /// let request = WorkerRequest {
    ///     request_id: "req-1".into(),
    ///     workflow_name: "demo".into(),
    ///     node_id: "node-1".into(),
    ///     timeout_ms: Some(5_000),
    ///     operation: WorkerOperation::Tool {
    ///         tool: "echo".into(),
    ///         input: json!({}),
    ///         scoped_input: json!({}),
    ///     },
    /// };
    /// let response = service.ready().await?.call(request).await?;
    /// assert_eq!(response.worker_id, "worker-0");
    /// pool.shutdown().await;
    /// # Ok::<(), foreman_tokio::WorkerPoolError>(())
    /// # }).unwrap();
    /// ```
    pub fn service(&self) -> PoolService<R> {
        PoolService {
            pool: self.handle(),
        }
    }

    /// Another owner of this pool's state: the pool is closed when the
    /// last one is dropped.
    pub(crate) fn handle(&self) -> WorkerPool<R> {
        self.shared.owners.fetch_add(1, Ordering::Relaxed);
        WorkerPool {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Submits `request` on a handle of its own (the future is `'static`),
    /// now: the submit is polled once, with a waker that does nothing, so
    /// the pool admits or refuses the request before `call` returns and the
    /// next `poll_ready` counts it. Its caller's first poll registers the
    /// real waker (every wait in the submit checks its slot before it
    /// registers, so nothing that happened in between is missed).
    fn submit_owned(&self, request: WorkerRequest) -> PoolServiceFuture {
        let pool = self.handle();
        let mut submit: OwnedSubmit = Box::pin(async move { pool.submit(request).await });
        let waker = futures_util::task::noop_waker();
        match submit.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(answer) => PoolServiceFuture {
                submit: None,
                early: Some(answer),
            },
            Poll::Pending => PoolServiceFuture {
                submit: Some(submit),
                early: None,
            },
        }
    }
}

impl<R: Runtime> Service<WorkerRequest> for PoolService<R> {
    type Response = WorkerResponse;
    type Error = WorkerPoolError;
    type Future = PoolServiceFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WorkerPoolError>> {
        self.pool.shared.poll_admit(cx.waker())
    }

    fn call(&mut self, request: WorkerRequest) -> PoolServiceFuture {
        self.pool.submit_owned(request)
    }
}

/// The pool itself is a service too, with [`PoolService`]'s readiness;
/// use [`WorkerPool::service`] where a cloneable service is needed.
impl<R: Runtime> Service<WorkerRequest> for WorkerPool<R> {
    type Response = WorkerResponse;
    type Error = WorkerPoolError;
    type Future = PoolServiceFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WorkerPoolError>> {
        self.shared.poll_admit(cx.waker())
    }

    fn call(&mut self, request: WorkerRequest) -> PoolServiceFuture {
        self.submit_owned(request)
    }
}

impl<R: Runtime> Shared<R> {
    /// Whether some lane would admit a valid request now; if none would,
    /// `waker` is registered in each lane to be woken when it would.
    fn poll_admit(&self, waker: &Waker) -> Poll<Result<(), WorkerPoolError>> {
        for lane in self.lanes.iter() {
            let mut core = lane.core.lock();
            if core.pool.is_shutting_down() {
                return Poll::Ready(Err(WorkerPoolError::ShuttingDown));
            }
            if core.pool.would_admit() {
                return Poll::Ready(Ok(()));
            }
            core.wait_for_room(waker);
        }
        Poll::Pending
    }
}

impl Core {
    /// Registers a task to wake once the lane would admit a request or is
    /// shutting down (see `after_input`). A task polling again is listed
    /// once; the list holds at most one waker per task that found the lane
    /// full since it last had room.
    fn wait_for_room(&mut self, waker: &Waker) {
        if !self.room_waiters.iter().any(|w| w.will_wake(waker)) {
            self.room_waiters.push(waker.clone());
        }
    }
}

/// A `tower::Service<WorkerRequest>` whose response is the handler's JSON
/// output, as a worker handler.
///
/// Each request runs on a clone of the service, made ready and then
/// called (as tower's `oneshot` does), so a service that applies
/// backpressure in `poll_ready` holds its request, on its worker, until it
/// is ready. Errors, from `poll_ready` or the call, answer the request
/// with a [`WorkerProtocolError`]: the error itself if it is one (boxed by
/// middleware or not), else one with code `ExecutionFailed`, the error's
/// message and `retryable: false`.
///
/// The probe answers Healthy unless one is given with
/// [`with_probe`](Self::with_probe).
///
/// ```
/// use std::sync::Arc;
///
/// use foreman_tokio::{ServiceHandler, WorkerOperation, WorkerPool, WorkerPoolOptions};
/// use foreman_tokio::{WorkerProtocolError, WorkerRequest, WorkerResult};
/// use serde_json::{json, Value};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// // A tower service answering JSON: here one made of a closure.
/// let service = tower::service_fn(|request: WorkerRequest| async move {
///     Ok::<Value, WorkerProtocolError>(json!({ "served": request.node_id }))
/// });
/// let pool = WorkerPool::new_inprocess(
///     vec![Arc::new(ServiceHandler::new(service))],
///     WorkerPoolOptions::default(),
///     None,
/// )?;
/// let response = pool
///     .submit(WorkerRequest {
///         request_id: "req-1".into(),
///         workflow_name: "demo".into(),
///         node_id: "node-1".into(),
///         timeout_ms: None,
///         operation: WorkerOperation::Tool {
///             tool: "echo".into(),
///             input: json!({}),
///             scoped_input: json!({}),
///         },
///     })
///     .await?;
/// let WorkerResult::Success { output } = response.result else { panic!("not a success") };
/// assert_eq!(output, json!({ "served": "node-1" }));
/// pool.shutdown().await;
/// # Ok::<(), foreman_tokio::WorkerPoolError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct ServiceHandler<S, P = HealthyProbe> {
    service: S,
    probe: P,
}

impl<S> ServiceHandler<S> {
    /// A handler calling `service` for every request.
    pub fn new(service: S) -> Self
    where
        S: Service<WorkerRequest, Response = Value> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send,
    {
        ServiceHandler {
            service,
            probe: healthy,
        }
    }
}

impl<S, P> ServiceHandler<S, P> {
    /// Sets the probe: `probe` runs for every health probe, like
    /// [`WorkerHandler::probe_health`].
    pub fn with_probe<Q, QFut>(self, probe: Q) -> ServiceHandler<S, Q>
    where
        Q: Fn() -> QFut + Send + Sync + 'static,
        QFut: Future<Output = WorkerHealthStatus> + Send + 'static,
    {
        ServiceHandler {
            service: self.service,
            probe,
        }
    }

    /// The handler as pools take it.
    pub fn into_arc(self) -> Arc<dyn WorkerHandler>
    where
        Self: WorkerHandler + 'static,
    {
        Arc::new(self)
    }
}

impl<S, P> fmt::Debug for ServiceHandler<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceHandler").finish_non_exhaustive()
    }
}

#[async_trait]
impl<S, P, PFut> WorkerHandler for ServiceHandler<S, P>
where
    S: Service<WorkerRequest, Response = Value> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    P: Fn() -> PFut + Send + Sync,
    PFut: Future<Output = WorkerHealthStatus> + Send,
{
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        let mut service = self.service.clone();
        poll_fn(|cx| service.poll_ready(cx))
            .await
            .map_err(protocol_error)?;
        service.call(request).await.map_err(protocol_error)
    }

    async fn probe_health(&self) -> WorkerHealthStatus {
        (self.probe)().await
    }
}

/// A service's error as a worker's: a [`WorkerProtocolError`] passes
/// through, anything else is `ExecutionFailed` with its message.
fn protocol_error(error: impl Into<BoxError>) -> WorkerProtocolError {
    match error.into().downcast::<WorkerProtocolError>() {
        Ok(error) => *error,
        Err(other) => {
            WorkerProtocolError::new(WorkerErrorCode::ExecutionFailed, other.to_string(), false)
        }
    }
}
