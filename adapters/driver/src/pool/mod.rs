//! [`WorkerPool`]: the reference's API, driving `foreman_core::Pool`.
//!
//! This file holds the type, `submit` and its variants, and what dropping
//! the last handle does; its constructors are in `construct.rs`.

mod construct;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use foreman_core::{PhaseLimits, WorkerHealth, WorkerPoolError, WorkerRequest, WorkerResponse};
use futures_util::FutureExt as _;

use crate::cooperate::cooperate;
use crate::handler::WorkerPoolClient;
use crate::runtime::Runtime;
use crate::shared::Shared;
use crate::slot::Slot;
use crate::trace::Traced;
use crate::types::Timed;
use crate::wakers::Wakers;
#[cfg(doc)]
use crate::worker::ExecutionMode;

/// An in-process worker pool driven by `foreman-core`, generic over the
/// async [`Runtime`] (adapters name it: `foreman_tokio::WorkerPool`).
///
/// Every decision — validation, admission, routing, health, deadlines,
/// probes, restarts, drain — is the core's; this type runs handlers,
/// delivers the core's answers and feeds it completions and the clock.
pub struct WorkerPool<R: Runtime> {
    pub(crate) shared: Arc<Shared<R>>,
}

impl<R: Runtime> WorkerPool<R> {
    /// Submits one request and waits for its answer.
    ///
    /// The request is checked against the security policy, then runs on
    /// the worker the core grants it: on that worker's task by default, or
    /// inside the calling task under [`ExecutionMode::CallerTask`]. Its
    /// time budget (its `timeout_ms`, or the options'
    /// `default_request_timeout`) covers its wait in a queue and its run.
    /// Dropping the returned future cancels the request: it leaves its
    /// queue, or its handler future is dropped.
    ///
    /// # Errors
    /// A refusal (`InvalidRequest`, `QueueFull`, `NoHealthyWorker`,
    /// `CircuitOpen`, `ShuttingDown`) or the request's answer: the worker's
    /// error (`Worker`, also for a panic, a restart or a cancellation),
    /// `Timeout` when its budget ran out while queued or running, or
    /// `ShuttingDown` when a drain deadline cut it off.
    ///
    /// # Examples
    /// ```
    /// use std::sync::Arc;
    /// use foreman_tokio::{
    ///     async_trait, WorkerErrorCode, WorkerHandler, WorkerOperation, WorkerPool,
    ///     WorkerPoolError, WorkerPoolOptions, WorkerProtocolError, WorkerRequest, WorkerResult,
    /// };
    /// use serde_json::{json, Value};
    ///
    /// /// Runs the `upper` tool; every other tool fails.
    /// struct Tools;
    ///
    /// #[async_trait]
    /// impl WorkerHandler for Tools {
    ///     async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
    ///         match request.operation {
    ///             WorkerOperation::Tool { tool, input, .. } if tool == "upper" => {
    ///                 Ok(json!(input.as_str().unwrap_or_default().to_uppercase()))
    ///             }
    ///             _ => Err(WorkerProtocolError::new(
    ///                 WorkerErrorCode::ExecutionFailed,
    ///                 "unknown tool",
    ///                 false,
    ///             )),
    ///         }
    ///     }
    /// }
    ///
    /// fn tool_call(id: &str, tool: &str, input: Value) -> WorkerRequest {
    ///     WorkerRequest {
    ///         request_id: id.into(),
    ///         workflow_name: "demo".into(),
    ///         node_id: "node-1".into(),
    ///         timeout_ms: Some(5_000), // queue wait plus run
    ///         operation: WorkerOperation::Tool { tool: tool.into(), input, scoped_input: json!({}) },
    ///     }
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let pool = WorkerPool::new_inprocess(vec![Arc::new(Tools)], WorkerPoolOptions::default(), None)?;
    ///
    /// let response = pool.submit(tool_call("req-1", "upper", json!("hi"))).await?;
    /// assert_eq!(response.request_id, "req-1");
    /// assert_eq!(response.worker_id, "worker-0");
    /// assert_eq!(response.result, WorkerResult::Success { output: json!("HI") });
    ///
    /// // The handler's error is the request's answer.
    /// match pool.submit(tool_call("req-2", "grep", json!("hi"))).await {
    ///     Err(WorkerPoolError::Worker(error)) => assert_eq!(error.code, WorkerErrorCode::ExecutionFailed),
    ///     other => panic!("expected the worker's error, got {other:?}"),
    /// }
    /// pool.shutdown().await;
    /// # Ok::<(), foreman_tokio::WorkerPoolError>(())
    /// # }).unwrap();
    /// ```
    pub fn submit(
        &self,
        request: WorkerRequest,
    ) -> impl Future<Output = Result<WorkerResponse, WorkerPoolError>> + Send + '_ {
        // A map, not an `async` block awaiting `submit_timed`: such a block
        // would hold the inner future twice (as its capture and as the
        // future it awaits), doubling what every caller stores and moves.
        self.submit_timed(request).map(|timed| timed.result)
    }

    /// Submits one request like [`submit`](Self::submit) and returns its
    /// answer with the pool's [`Timings`](crate::Timings): how long it waited for a worker
    /// and how long its handler ran (the reference's `elapsed_ms` is their
    /// sum).
    ///
    /// A refused request has zero timings. `submit_timed` itself cannot
    /// fail: its [`Timed::result`] holds what [`submit`](Self::submit)
    /// returns, errors included.
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
    /// use foreman_tokio::{WorkerPool, WorkerPoolOptions};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let pool = WorkerPool::new_inprocess(vec![Arc::new(Echo)], WorkerPoolOptions::default(), None)?;
    /// let timed = pool.submit_timed(request("req-1")).await;
    /// let response = timed.result?;
    /// // The reference's `elapsed_ms` is the sum of the two.
    /// let total = timed.timings.queued + timed.timings.ran.unwrap_or_default();
    /// assert_eq!(response.elapsed_ms, total.as_millis() as u64);
    /// pool.shutdown().await;
    /// # Ok::<(), foreman_tokio::WorkerPoolError>(())
    /// # }).unwrap();
    /// ```
    pub fn submit_timed(&self, request: WorkerRequest) -> impl Future<Output = Timed> + Send + '_ {
        self.submit_parked(request, PhaseLimits::new())
    }

    /// Submits one request with its own phase limits, like
    /// [`submit`](Self::submit): how long it may wait for a worker and how
    /// long its handler may run, besides its overall budget (`timeout_ms`
    /// or the default timeout). Each limit set in `limits` replaces the
    /// pool's default for that phase (`PoolConfig::queue_wait_limit`,
    /// `PoolConfig::run_limit`); whichever of the three runs out first
    /// answers `Timeout`. A request past its queue-wait limit leaves its
    /// queue at once and counts against no worker; a run past its run
    /// limit is aborted and counts as one failure of its worker.
    ///
    /// # Errors
    /// As [`submit`](Self::submit); a zero run limit is refused with
    /// `Timeout`, like a zero budget. [`submit_timed_with`](Self::submit_timed_with)
    /// also says which limit fired.
    pub fn submit_with_limits(
        &self,
        request: WorkerRequest,
        limits: PhaseLimits,
    ) -> impl Future<Output = Result<WorkerResponse, WorkerPoolError>> + Send + '_ {
        let timed = self.submit_timed_with(request, limits);
        async move { timed.await.result }
    }

    /// Submits one request with its own phase limits, as
    /// [`submit_with_limits`](Self::submit_with_limits), and returns its
    /// answer with its [`Timings`](crate::Timings), which for a `Timeout`
    /// name the limit that fired.
    ///
    /// # Examples
    /// ```
    /// # use std::sync::Arc;
    /// # use foreman_tokio::{async_trait, WorkerHandler, WorkerProtocolError, WorkerRequest};
    /// # use serde_json::{json, Value};
    /// # struct Slow;
    /// # #[async_trait]
    /// # impl WorkerHandler for Slow {
    /// #     async fn handle(&self, _: WorkerRequest) -> Result<Value, WorkerProtocolError> {
    /// #         tokio::time::sleep(std::time::Duration::from_secs(60)).await;
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
    /// use std::time::Duration;
    /// use foreman_tokio::{PhaseLimits, TimeoutLimit, WorkerPool, WorkerPoolError, WorkerPoolOptions};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
    /// let pool = WorkerPool::new_inprocess(vec![Arc::new(Slow)], WorkerPoolOptions::default(), None)?;
    /// let limits = PhaseLimits::new().with_run(Duration::from_secs(2));
    /// let timed = pool.submit_timed_with(request("req-1"), limits).await;
    /// assert_eq!(timed.result, Err(WorkerPoolError::Timeout));
    /// assert_eq!(timed.timings.limit, Some(TimeoutLimit::Run));
    /// assert_eq!(timed.timings.ran, Some(Duration::from_secs(2)));
    /// pool.shutdown().await;
    /// # Ok::<(), foreman_tokio::WorkerPoolError>(())
    /// # }).unwrap();
    /// ```
    pub fn submit_timed_with(
        &self,
        request: WorkerRequest,
        limits: PhaseLimits,
    ) -> impl Future<Output = Timed> + Send + '_ {
        self.submit_parked(request, limits)
    }

    /// Parks `request` with its own phase limits in its slot (the core's
    /// payload) and runs it to its answer, then yields if this caller has
    /// had its thread long enough (see `cooperate`).
    fn submit_parked(
        &self,
        request: WorkerRequest,
        limits: PhaseLimits,
    ) -> impl Future<Output = Timed> + Send + '_ {
        // The request goes straight into its slot (the core's payload), so
        // the future every caller holds carries a pointer, not the request;
        // so does its span if it gets one (`tracing` feature), for the task
        // that starts its handler and for the request's events, of which
        // the future keeps only whether the span is enabled.
        let slot = Slot::parked(request);
        let traced = Traced::new(&slot);
        if !limits.is_none() {
            slot.lock().limits = limits;
        }
        async move {
            // Whether this request ever waited (see `cooperate`).
            let mut waited = false;
            let outcome = match self.shared.hooks.as_deref() {
                None => self.run(&slot, &mut waited, traced).await,
                // Boxed: the future of a pool without hooks stays small.
                Some(hooks) => {
                    waited = true;
                    Box::pin(self.run_hooked(&slot, hooks, traced)).await
                }
            };
            traced.release(&slot);
            Slot::recycle(slot);
            // Refusals count too: a caller retrying on `QueueFull` must not
            // keep its thread (and the pool's own timers) from running.
            cooperate(&self.shared.runtime, waited).await;
            outcome
        }
    }
}

#[async_trait]
impl<R: Runtime> WorkerPoolClient for WorkerPool<R> {
    async fn submit(&self, request: WorkerRequest) -> Result<WorkerResponse, WorkerPoolError> {
        WorkerPool::submit(self, request).await
    }

    async fn health_snapshot(&self) -> Vec<WorkerHealth> {
        WorkerPool::health_snapshot(self).await
    }
}

impl<R: Runtime> std::fmt::Debug for WorkerPool<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("runtime", &self.shared.runtime)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> Drop for WorkerPool<R> {
    /// Closes the pool (its worker, probe and timer tasks end) when the
    /// last owner of its state goes: this `WorkerPool`, or the last
    /// service handle on it (feature `tower`).
    fn drop(&mut self) {
        if self.shared.owners.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        for lane in self.shared.lanes.iter() {
            let mut core = lane.core.lock();
            let mut wake = Wakers::default();
            let mut notes = crate::notes::Notes::default();
            let meter = Arc::clone(&core.meter);
            for entry in core.workers.values_mut() {
                if let Some((_, handle)) = entry.probe.take() {
                    handle.abort();
                }
                entry.cell.inbox.close(&mut wake);
                // Its workers leave the health-state gauges with it.
                notes.stopped(&meter, entry.status);
            }
            lane.signals.close();
            drop(core);
            notes.emit();
            wake.wake_all();
        }
    }
}
