//! Closures as worker handlers: [`handler_fn`] and its optional probe.

use std::fmt;
use std::future::{Future, Ready};
use std::sync::Arc;

use async_trait::async_trait;
use foreman_core::{WorkerHealthStatus, WorkerProtocolError, WorkerRequest};
use serde_json::Value;

use crate::handler::WorkerHandler;

/// The probe of a handler built without one: answers Healthy at once, as
/// [`WorkerHandler::probe_health`]'s default does.
pub type HealthyProbe = fn() -> Ready<WorkerHealthStatus>;

/// [`HealthyProbe`]'s function.
pub(crate) fn healthy() -> Ready<WorkerHealthStatus> {
    std::future::ready(WorkerHealthStatus::Healthy)
}

/// Makes a worker handler of a closure: `handle` runs for every request,
/// like [`WorkerHandler::handle`] (panics included: a panic is answered
/// `ExecutionFailed`, like any handler's).
///
/// The probe answers Healthy unless one is given with
/// [`HandlerFn::with_probe`]. Pools take the handler as
/// `Arc<dyn WorkerHandler>`: [`HandlerFn::into_arc`] (or `Arc::new`).
///
/// ```
/// use foreman_driver::{handler_fn, WorkerHandler, WorkerHealthStatus, WorkerOperation};
/// use foreman_driver::{WorkerProtocolError, WorkerRequest};
/// use serde_json::json;
///
/// let handler = handler_fn(|request: WorkerRequest| async move {
///     Ok::<_, WorkerProtocolError>(json!({ "node": request.node_id }))
/// })
/// .with_probe(|| async { WorkerHealthStatus::Degraded })
/// .into_arc();
///
/// let request = WorkerRequest {
///     request_id: "req-1".into(),
///     workflow_name: "demo".into(),
///     node_id: "node-1".into(),
///     timeout_ms: None,
///     operation: WorkerOperation::Tool {
///         tool: "echo".into(),
///         input: json!({}),
///         scoped_input: json!({}),
///     },
/// };
/// futures::executor::block_on(async {
///     assert_eq!(handler.handle(request).await, Ok(json!({ "node": "node-1" })));
///     assert_eq!(handler.probe_health().await, WorkerHealthStatus::Degraded);
/// });
/// ```
pub fn handler_fn<F, Fut>(handle: F) -> HandlerFn<F>
where
    F: Fn(WorkerRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, WorkerProtocolError>> + Send + 'static,
{
    HandlerFn {
        handle,
        probe: healthy,
    }
}

/// A worker handler made of a closure and a probe closure; built by
/// [`handler_fn`].
#[derive(Clone)]
pub struct HandlerFn<F, P = HealthyProbe> {
    handle: F,
    probe: P,
}

impl<F, P> HandlerFn<F, P> {
    /// Sets the probe: `probe` runs for every health probe, like
    /// [`WorkerHandler::probe_health`] (with the pool's probe timeout; a
    /// panic counts as Unavailable).
    pub fn with_probe<Q, QFut>(self, probe: Q) -> HandlerFn<F, Q>
    where
        Q: Fn() -> QFut + Send + Sync + 'static,
        QFut: Future<Output = WorkerHealthStatus> + Send + 'static,
    {
        HandlerFn {
            handle: self.handle,
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

impl<F, P> fmt::Debug for HandlerFn<F, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerFn").finish_non_exhaustive()
    }
}

#[async_trait]
impl<F, Fut, P, PFut> WorkerHandler for HandlerFn<F, P>
where
    F: Fn(WorkerRequest) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Value, WorkerProtocolError>> + Send,
    P: Fn() -> PFut + Send + Sync,
    PFut: Future<Output = WorkerHealthStatus> + Send,
{
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        (self.handle)(request).await
    }

    async fn probe_health(&self) -> WorkerHealthStatus {
        (self.probe)().await
    }
}
