//! [`WorkerPool`]: the reference's API, driving `foreman_core::Pool`.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use foreman_core::{
    lanes, CommandError, Pool, PoolConfig, RequestKey, Stats, Time, WorkerHealth, WorkerKey,
    WorkerPoolError, WorkerPoolOptions, WorkerProtocolError, WorkerRequest, WorkerResponse,
};
use futures_util::future::poll_fn;
use parking_lot::Mutex;
use serde_json::Value;

use crate::answer::command_error;
use crate::cooperate::cooperate;
use crate::handler::{CircuitBreakerHooks, WorkerHandler, WorkerPoolClient};
use crate::live::Live;
use crate::meter::{PoolMeter, WorkerMeter};
use crate::names::Names;
use crate::runtime::Runtime;
use crate::slot::Slot;
use crate::state::{Core, FastMap, LaneSignals, Own, WorkerEntry};
use crate::trace::RequestSpan;
use crate::types::{BuildError, DriverOptions, HealthTransition, Timed};
use crate::wakers::Wakers;
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

impl<R: Runtime + Default> WorkerPool<R> {
    /// Creates a pool with one worker (`worker-0`, `worker-1`, …) per
    /// handler, on the default instance of the runtime; call it from inside
    /// that runtime (it spawns the pool's timer task).
    ///
    /// A queued request runs on the first worker to free up (late binding:
    /// see `PoolConfig::late_binding`), except with `hooks`: then it runs
    /// on the worker whose `allow_request` approved it and that
    /// `on_request_accepted` named, as in the reference. Build the
    /// configuration yourself and call [`with_config`](Self::with_config)
    /// to choose otherwise.
    ///
    /// # Errors
    /// `NoHealthyWorker` when `handlers` is empty; `InvalidRequest` naming
    /// the field when `options` make no sense (a zero queue capacity or
    /// probe interval, …), or saying so when the runtime cannot spawn tasks
    /// here (for foreman-tokio: outside a tokio runtime).
    ///
    /// # Examples
    /// Every example in this crate runs on foreman-tokio, whose
    /// `WorkerPool` is this type on tokio; the other adapters' are the
    /// same.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use foreman_tokio::{
    ///     async_trait, WorkerHandler, WorkerPool, WorkerPoolError, WorkerPoolOptions,
    ///     WorkerProtocolError, WorkerRequest,
    /// };
    /// use serde_json::{json, Value};
    ///
    /// struct Echo;
    ///
    /// #[async_trait]
    /// impl WorkerHandler for Echo {
    ///     async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
    ///         Ok(json!({ "node": request.node_id }))
    ///     }
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let handlers: Vec<Arc<dyn WorkerHandler>> = vec![Arc::new(Echo), Arc::new(Echo)];
    /// let pool = WorkerPool::new_inprocess(handlers, WorkerPoolOptions::default(), None)?;
    /// assert_eq!(pool.stats().workers.len(), 2); // worker-0 and worker-1
    /// pool.shutdown().await;
    ///
    /// // No handler, no pool.
    /// let none = WorkerPool::new_inprocess(Vec::new(), WorkerPoolOptions::default(), None);
    /// assert!(matches!(none, Err(WorkerPoolError::NoHealthyWorker)));
    /// # Ok::<(), WorkerPoolError>(())
    /// # }).unwrap();
    /// ```
    pub fn new_inprocess(
        handlers: Vec<Arc<dyn WorkerHandler>>,
        options: WorkerPoolOptions,
        hooks: Option<Arc<dyn CircuitBreakerHooks>>,
    ) -> Result<Self, WorkerPoolError> {
        let config = PoolConfig::new(options).vetted_by_breaker(hooks.is_some());
        Self::with_config(R::default(), handlers, config, hooks).map_err(WorkerPoolError::from)
    }
}

impl<R: Runtime> WorkerPool<R> {
    /// Creates a pool with full control over the core's configuration.
    ///
    /// [`PoolConfig::new`] wraps the reference's options with foreman's
    /// defaults; set its fields to choose the routing policy, late binding,
    /// requests per worker, the probe timeout or the nesting limit. Unlike
    /// [`new_inprocess`](Self::new_inprocess), the configuration is used as
    /// given: with `hooks`, call [`PoolConfig::vetted_by_breaker`] to have
    /// each request run on the worker that `allow_request` approved.
    ///
    /// # Errors
    /// [`BuildError`] when there is no handler, the configuration is
    /// invalid, or the runtime cannot spawn tasks here.
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
    /// use std::time::Duration;
    /// use foreman_tokio::{
    ///     BuildError, PoolConfig, RoutingPolicy, TokioRuntime, WorkerPool, WorkerPoolOptions,
    /// };
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let mut options = WorkerPoolOptions::default();
    /// options.queue_capacity = 16;
    /// options.default_request_timeout = Some(Duration::from_secs(10));
    ///
    /// let mut config = PoolConfig::new(options);
    /// config.routing = RoutingPolicy::RoundRobin; // the reference's rule
    /// config.max_concurrency_per_worker = 2;
    /// config.probe_timeout = Duration::from_secs(1);
    ///
    /// let handlers: Vec<Arc<dyn WorkerHandler>> = vec![Arc::new(Echo), Arc::new(Echo)];
    /// let pool = WorkerPool::with_config(TokioRuntime, handlers, config.clone(), None)?;
    /// pool.shutdown().await;
    ///
    /// // A configuration the pool cannot run with is refused, naming the field.
    /// config.max_concurrency_per_worker = 0;
    /// let refused = WorkerPool::with_config(TokioRuntime, vec![Arc::new(Echo)], config, None);
    /// assert!(matches!(refused, Err(BuildError::Config(_))));
    /// # Ok::<(), BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn with_config(
        runtime: R,
        handlers: Vec<Arc<dyn WorkerHandler>>,
        config: PoolConfig,
        hooks: Option<Arc<dyn CircuitBreakerHooks>>,
    ) -> Result<Self, BuildError> {
        Self::with_driver_options(runtime, handlers, config, hooks, DriverOptions::default())
    }

    /// Creates a pool whose workers are spread over `lanes` cores (see the
    /// crate docs: each lane is a `foreman_core::Pool` with its own lock;
    /// [`with_config`](Self::with_config) uses one lane).
    /// Worker `worker-i` is in lane `i % lanes`.
    ///
    /// # Errors
    /// [`BuildError`] when there is no handler, the configuration is
    /// invalid, or the runtime cannot spawn tasks here.
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
    /// use std::num::NonZeroUsize;
    /// use foreman_tokio::{PoolConfig, TokioRuntime, WorkerPool};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let handlers: Vec<Arc<dyn WorkerHandler>> = (0..4).map(|_| Arc::new(Echo) as _).collect();
    /// let lanes = NonZeroUsize::new(2).expect("two lanes");
    /// let pool = WorkerPool::with_lanes(TokioRuntime, handlers, PoolConfig::default(), None, lanes)?;
    /// assert_eq!(pool.stats().workers.len(), 4);
    /// pool.shutdown().await;
    /// # Ok::<(), foreman_tokio::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn with_lanes(
        runtime: R,
        handlers: Vec<Arc<dyn WorkerHandler>>,
        config: PoolConfig,
        hooks: Option<Arc<dyn CircuitBreakerHooks>>,
        lanes: NonZeroUsize,
    ) -> Result<Self, BuildError> {
        let options = DriverOptions::default().lanes(lanes);
        Self::with_driver_options(runtime, handlers, config, hooks, options)
    }

    /// Creates a pool with the core's configuration and the driver's own
    /// [`DriverOptions`] (where handlers run, how many lanes).
    ///
    /// # Errors
    /// [`BuildError`] when there is no handler, the configuration is
    /// invalid, or the runtime cannot spawn tasks here.
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
    /// use foreman_tokio::{DriverOptions, ExecutionMode, PoolConfig, TokioRuntime, WorkerPool};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// // Handlers run inside the callers' tasks (see `ExecutionMode::CallerTask`'s caveats).
    /// let options = DriverOptions::default().execution(ExecutionMode::CallerTask);
    /// let pool = WorkerPool::with_driver_options(
    ///     TokioRuntime,
    ///     vec![Arc::new(Echo)],
    ///     PoolConfig::default(),
    ///     None,
    ///     options,
    /// )?;
    /// pool.shutdown().await;
    /// # Ok::<(), foreman_tokio::BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn with_driver_options(
        runtime: R,
        handlers: Vec<Arc<dyn WorkerHandler>>,
        mut config: PoolConfig,
        hooks: Option<Arc<dyn CircuitBreakerHooks>>,
        options: DriverOptions,
    ) -> Result<Self, BuildError> {
        let lanes = options.lanes;
        // With hooks, handlers always run on worker tasks: the caller runs
        // the hooks while its handler runs.
        let pool_tasks = options.execution == ExecutionMode::PoolTasks || hooks.is_some();
        if handlers.is_empty() {
            return Err(BuildError::NoWorkers);
        }
        config.validate()?;
        if let Err(reason) = runtime.check_context() {
            return Err(BuildError::NoRuntime(reason));
        }
        let epoch = runtime.now();
        config.unix_epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        // Registered with the recorder in effect here (`metrics` feature).
        let meter = Arc::new(PoolMeter::new());
        let mut cores = Vec::with_capacity(lanes.get());
        for _ in 0..lanes.get() {
            cores.push(Core {
                pool: Pool::new(config.clone(), Time::ZERO)?,
                workers: FastMap::default(),
                live: Arc::new(Live::default()),
                armed: Time::MAX,
                health_log: Default::default(),
                room_waiters: Vec::new(),
                pool_tasks,
                publish_load: lanes.get() > 1,
                meter: Arc::clone(&meter),
            });
        }
        let mut names = Names::default();
        for handler in handlers {
            let lane = names.count() % lanes.get();
            let Some(core) = cores.get_mut(lane) else {
                continue;
            };
            let id = names.add(lane);
            let key = core.pool.add_named_worker(Time::ZERO, id.as_str())?;
            let entry = WorkerEntry::new(&id, key, handler, WorkerMeter::new(&id));
            core.workers.insert(key, entry);
        }
        meter.workers_added(names.count());
        let shared = Arc::new(Shared {
            config,
            lanes: cores
                .into_iter()
                .enumerate()
                .map(|(index, core)| Lane {
                    index,
                    core: Mutex::new(core),
                    signals: Arc::new(LaneSignals::new()),
                })
                .collect(),
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            owners: AtomicUsize::new(1),
            next_home: AtomicUsize::new(0),
            names: Mutex::new(names),
            runtime,
            epoch,
            hooks,
            pool_tasks,
            meter,
        });
        for lane in 0..shared.lanes.len() {
            shared.start_timer(lane);
            if pool_tasks {
                let cells: Vec<_> = {
                    let core = shared.lane(lane).core.lock();
                    core.workers.values().map(|e| Arc::clone(&e.cell)).collect()
                };
                for cell in cells {
                    shared.spawn_worker(lane, cell);
                }
            }
            shared.input(lane, |_, _| ());
        }
        Ok(WorkerPool { shared })
    }

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
        let timed = self.submit_timed(request);
        async move { timed.await.result }
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
        // The request goes straight into its slot (the core's payload), so
        // the future every caller holds carries a pointer, not the request;
        // with it goes a copy of its span (`tracing` feature), for the task
        // that starts its handler.
        let span = RequestSpan::new(&request);
        let slot = Slot::parked(request, span.clone());
        async move {
            // Whether this request ever waited (see `cooperate`).
            let mut waited = false;
            let outcome = match self.shared.hooks.as_deref() {
                None => self.run(&slot, &mut waited, &span).await,
                // Boxed: the future of a pool without hooks stays small.
                Some(hooks) => {
                    waited = true;
                    Box::pin(self.run_hooked(&slot, hooks, &span)).await
                }
            };
            Slot::recycle(slot);
            // Refusals count too: a caller retrying on `QueueFull` must not
            // keep its thread (and the pool's own timers) from running.
            cooperate(&self.shared.runtime, waited).await;
            outcome
        }
    }

    /// Health of every worker, in worker order. Never waits for a handler.
    ///
    /// A worker's status is the worse of two verdicts: its consecutive
    /// failures (none: `Healthy`; fewer than the options'
    /// `unavailable_after_failures`: `Degraded`; that many: `Unavailable`,
    /// given no new work) and its last probe's answer. After shutdown every
    /// worker is `Unavailable`.
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
    /// use foreman_tokio::{WorkerHealthStatus, WorkerPool, WorkerPoolOptions};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let pool = WorkerPool::new_inprocess(vec![Arc::new(Echo)], WorkerPoolOptions::default(), None)?;
    /// for health in pool.health_snapshot().await {
    ///     assert_eq!(health.worker_id, "worker-0");
    ///     assert_eq!(health.status, WorkerHealthStatus::Healthy);
    ///     assert_eq!(health.consecutive_failures, 0);
    /// }
    /// pool.shutdown().await;
    /// assert!(pool.health_snapshot().await.iter().all(|h| h.status == WorkerHealthStatus::Unavailable));
    /// # Ok::<(), foreman_tokio::WorkerPoolError>(())
    /// # }).unwrap();
    /// ```
    pub async fn health_snapshot(&self) -> Vec<WorkerHealth> {
        let mut all = Vec::new();
        for lane in self.shared.lanes.iter() {
            all.extend(lane.core.lock().pool.health());
        }
        self.shared.in_worker_order(all, |health| &health.worker_id)
    }

    /// Counters by outcome and refusal reason, queue depths and per-worker
    /// state (in worker order). Never waits for a handler. With several
    /// lanes, worker keys are per lane: tell workers apart by id.
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
    /// pool.submit(request("req-1")).await?;
    /// let stats = pool.stats();
    /// assert_eq!((stats.counters.accepted, stats.counters.succeeded), (1, 1));
    /// assert_eq!((stats.queued, stats.running), (0, 0));
    /// assert_eq!(stats.workers[0].worker_id, "worker-0");
    /// pool.shutdown().await;
    /// # Ok::<(), foreman_tokio::WorkerPoolError>(())
    /// # }).unwrap();
    /// ```
    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for lane in self.shared.lanes.iter() {
            let stats = lane.core.lock().pool.stats();
            total.counters.add(&stats.counters);
            total.queued += stats.queued;
            total.running += stats.running;
            total.workers.extend(stats.workers);
        }
        total.workers = self
            .shared
            .in_worker_order(total.workers, |worker| &worker.worker_id);
        total
    }

    /// Every health status change so far (the latest 4096 per lane),
    /// oldest first.
    ///
    /// # Examples
    /// ```
    /// use std::sync::Arc;
    /// use foreman_tokio::{
    ///     async_trait, HealthCause, WorkerErrorCode, WorkerHandler, WorkerHealthStatus,
    ///     WorkerPool, WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
    /// };
    /// use serde_json::Value;
    /// # fn request(id: &str) -> WorkerRequest {
    /// #     WorkerRequest {
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
    /// struct Failing;
    ///
    /// #[async_trait]
    /// impl WorkerHandler for Failing {
    ///     async fn handle(&self, _: WorkerRequest) -> Result<Value, WorkerProtocolError> {
    ///         Err(WorkerProtocolError::new(WorkerErrorCode::ExecutionFailed, "down", true))
    ///     }
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let pool = WorkerPool::new_inprocess(vec![Arc::new(Failing)], WorkerPoolOptions::default(), None)?;
    /// assert!(pool.submit(request("req-1")).await.is_err());
    ///
    /// let history = pool.health_history();
    /// let first = &history[0];
    /// assert_eq!((first.worker_id.as_str(), first.cause), ("worker-0", HealthCause::Failure));
    /// assert_eq!((first.from, first.to), (WorkerHealthStatus::Healthy, WorkerHealthStatus::Degraded));
    /// pool.shutdown().await;
    /// # Ok::<(), foreman_tokio::WorkerPoolError>(())
    /// # }).unwrap();
    /// ```
    pub fn health_history(&self) -> Vec<HealthTransition> {
        let mut all: Vec<HealthTransition> = Vec::new();
        for lane in self.shared.lanes.iter() {
            all.extend(lane.core.lock().health_log.iter().cloned());
        }
        all.sort_by_key(|transition| transition.at);
        all
    }

    /// Restarts a worker: its running request is aborted (answered with a
    /// retryable `Cancelled` error naming the restart), its health is reset,
    /// and its queued requests stay queued and run next.
    ///
    /// # Errors
    /// `NoHealthyWorker` for an unknown (or removed) worker id;
    /// `ShuttingDown` once the pool has stopped.
    ///
    /// # Examples
    /// Adding, restarting and removing a worker:
    ///
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
    /// use foreman_tokio::{WorkerPool, WorkerPoolError, WorkerPoolOptions};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let pool = WorkerPool::new_inprocess(vec![Arc::new(Echo)], WorkerPoolOptions::default(), None)?;
    /// let id = pool.add_worker(Arc::new(Echo))?;
    /// assert_eq!(id, "worker-1");
    ///
    /// pool.restart_worker(&id).await?; // health reset, queue kept
    /// pool.remove_worker(&id)?; // its queue moves to worker-0
    /// assert_eq!(pool.stats().workers.len(), 1);
    ///
    /// // An id the pool does not know (any more).
    /// assert_eq!(pool.restart_worker(&id).await, Err(WorkerPoolError::NoHealthyWorker));
    /// pool.shutdown().await;
    /// assert_eq!(pool.add_worker(Arc::new(Echo)), Err(WorkerPoolError::ShuttingDown));
    /// # Ok::<(), foreman_tokio::WorkerPoolError>(())
    /// # }).unwrap();
    /// ```
    pub async fn restart_worker(&self, worker_id: &str) -> Result<(), WorkerPoolError> {
        self.command(worker_id, |core, now, key| {
            core.pool.restart_worker(now, key)
        })
    }

    /// Adds a worker running `handler` (to the lane with the fewest
    /// workers); returns its id (`worker-N`, the next unused number). It
    /// takes new requests at once and is probed like the others.
    ///
    /// # Errors
    /// `ShuttingDown` once shutdown began; `InvalidRequest` when the pool
    /// already tracks the largest number of workers it can (2^32).
    ///
    /// # Examples
    /// See [`restart_worker`](Self::restart_worker).
    pub fn add_worker(&self, handler: Arc<dyn WorkerHandler>) -> Result<String, WorkerPoolError> {
        let shared = &self.shared;
        let mut names = shared.names.lock();
        let lane = (0..shared.lanes.len())
            .min_by_key(|&lane| shared.lane(lane).core.lock().workers.len())
            .unwrap_or(0);
        let id = names.peek();
        // Refused, the handler is dropped (user code) with no lock held; so
        // are its gauges, registered here (a recorder is user code too),
        // when this function returns.
        let mut handler = Some(handler);
        let mut meter = Some(WorkerMeter::new(&id));
        let added = shared.input(lane, |core, now| {
            let key = core.pool.add_named_worker(now, id.as_str())?;
            let cell = handler.take().zip(meter.take()).map(|(handler, meter)| {
                let entry = WorkerEntry::new(&id, key, handler, meter);
                let cell = Arc::clone(&entry.cell);
                core.workers.insert(key, entry);
                cell
            });
            Ok(cell)
        });
        let added = match added {
            Ok(cell) => {
                shared.meter.workers_added(1);
                // Requests the core started on it already wait in its inbox.
                if let (true, Some(cell)) = (shared.pool_tasks, cell) {
                    shared.spawn_worker(lane, cell);
                }
                Ok(names.add(lane))
            }
            Err(error) => Err(command_error(error)),
        };
        drop(names);
        drop(handler);
        added
    }

    /// Removes a worker: it takes no new requests, its queued requests move
    /// to other workers of its lane, its running request finishes.
    ///
    /// A queued request no other worker can take is answered with a
    /// retryable `Unavailable` error. In a pool with hooks, a request the
    /// circuit breaker placed on the removed worker moves only to a worker
    /// whose `allow_request` approves it (see [`CircuitBreakerHooks`]).
    ///
    /// # Errors
    /// `NoHealthyWorker` for an unknown worker id or one already being
    /// removed; `ShuttingDown` once the pool has stopped.
    ///
    /// # Examples
    /// See [`restart_worker`](Self::restart_worker).
    pub fn remove_worker(&self, worker_id: &str) -> Result<(), WorkerPoolError> {
        self.command(worker_id, |core, now, key| {
            core.pool.remove_worker(now, key)
        })
    }

    /// Graceful shutdown: new submits get `ShuttingDown` at once; queued and
    /// running requests finish (for at most the security policy's maximum
    /// request timeout, after which the rest are aborted and answered
    /// `ShuttingDown`). Returns once every handler and probe has ended;
    /// afterwards every worker reports `Unavailable`.
    ///
    /// # Examples
    /// See [`shutdown_with_deadline`](Self::shutdown_with_deadline).
    pub async fn shutdown(&self) {
        self.shutdown_inner(self.shared.config.default_drain())
            .await;
    }

    /// Like [`shutdown`](Self::shutdown), with a drain deadline: requests
    /// still queued or running after `drain` are aborted and answered
    /// `ShuttingDown`. A zero `drain` aborts everything at once.
    ///
    /// # Examples
    /// A request that would run for a minute, cut off by a one-second
    /// drain (on tokio's paused test clock, so the example takes no time):
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use foreman_tokio::{
    ///     async_trait, WorkerHandler, WorkerOperation, WorkerPool, WorkerPoolError,
    ///     WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
    /// };
    /// use serde_json::{json, Value};
    ///
    /// struct Slow;
    ///
    /// #[async_trait]
    /// impl WorkerHandler for Slow {
    ///     async fn handle(&self, _: WorkerRequest) -> Result<Value, WorkerProtocolError> {
    ///         tokio::time::sleep(Duration::from_secs(60)).await;
    ///         Ok(json!("done"))
    ///     }
    /// }
    /// # fn request(id: &str) -> WorkerRequest {
    /// #     WorkerRequest {
    /// #         request_id: id.into(),
    /// #         workflow_name: "demo".into(),
    /// #         node_id: "node".into(),
    /// #         timeout_ms: None,
    /// #         operation: WorkerOperation::Tool {
    /// #             tool: "slow".into(),
    /// #             input: json!({}),
    /// #             scoped_input: json!({}),
    /// #         },
    /// #     }
    /// # }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
    /// let pool = Arc::new(WorkerPool::new_inprocess(
    ///     vec![Arc::new(Slow)],
    ///     WorkerPoolOptions::default(),
    ///     None,
    /// )?);
    /// let caller = {
    ///     let pool = Arc::clone(&pool);
    ///     tokio::spawn(async move { pool.submit(request("req-1")).await })
    /// };
    /// while pool.stats().running == 0 {
    ///     tokio::task::yield_now().await; // let the request start
    /// }
    ///
    /// pool.shutdown_with_deadline(Duration::from_secs(1)).await;
    /// assert_eq!(caller.await.unwrap(), Err(WorkerPoolError::ShuttingDown));
    /// assert_eq!(pool.submit(request("req-2")).await, Err(WorkerPoolError::ShuttingDown));
    /// assert_eq!(pool.stats().counters.aborted_by_shutdown, 1);
    /// # Ok::<(), foreman_tokio::WorkerPoolError>(())
    /// # }).unwrap();
    /// ```
    pub async fn shutdown_with_deadline(&self, drain: Duration) {
        self.shutdown_inner(drain).await;
    }

    async fn shutdown_inner(&self, drain: Duration) {
        let mut waiters = Vec::new();
        for lane in 0..self.shared.lanes.len() {
            waiters.push(self.shared.input(lane, |core, now| {
                core.pool.begin_shutdown(now, Some(drain));
                Arc::clone(&core.live)
            }));
        }
        for live in waiters {
            poll_fn(|cx| live.poll_idle(cx.waker())).await;
        }
    }

    /// An input about one worker, in its lane.
    fn command(
        &self,
        worker_id: &str,
        f: impl FnOnce(&mut Core, Time, WorkerKey) -> Result<(), CommandError>,
    ) -> Result<(), WorkerPoolError> {
        // An id no lane knows goes to the first lane, whose core refuses it
        // as it refuses any command (`ShuttingDown` once shutdown began).
        let lane = self.shared.names.lock().lane_of(worker_id).unwrap_or(0);
        self.shared
            .input(lane, |core, now| {
                let key = core.pool.command_target(worker_id)?;
                f(core, now, key)
            })
            .map_err(command_error)
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

// ----- internals -----------------------------------------------------------

pub(crate) struct Shared<R> {
    /// The core's configuration, for validating requests outside the lock.
    pub(crate) config: PoolConfig,
    /// At least one.
    pub(crate) lanes: Box<[Lane]>,
    /// This pool's id, for [`HOME_LANE`].
    pub(crate) id: u64,
    /// The `WorkerPool` values sharing this state (the user's and the
    /// service handles'); the last one dropped closes the pool.
    pub(crate) owners: AtomicUsize,
    /// The home lane of the next thread that submits.
    pub(crate) next_home: AtomicUsize,
    names: Mutex<Names>,
    pub(crate) runtime: R,
    pub(crate) epoch: Instant,
    pub(crate) hooks: Option<Arc<dyn CircuitBreakerHooks>>,
    /// Handlers run on worker tasks ([`ExecutionMode::PoolTasks`]).
    pub(crate) pool_tasks: bool,
    /// The pool's metric handles (`metrics` feature; each lane's core
    /// holds them too).
    pub(crate) meter: Arc<PoolMeter>,
}

/// One core with its own lock, owning some of the pool's workers.
#[repr(align(128))]
pub(crate) struct Lane {
    /// Its place in [`Shared::lanes`].
    pub(crate) index: usize,
    pub(crate) core: Mutex<Core>,
    /// Its timer task's deadline, and its idle and eligible worker counts
    /// for choosing a lane without its lock.
    pub(crate) signals: Arc<LaneSignals>,
}

thread_local! {
    /// The pool this thread last submitted to, and its home lane there.
    static HOME_LANE: std::cell::Cell<(u64, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// Pool ids for [`HOME_LANE`] (0 is never used).
static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

/// The lanes a submit tries, in order.
pub(crate) struct LaneOrder {
    first: usize,
    count: usize,
    tried: usize,
}

impl LaneOrder {
    /// The next lane to try, and whether it is the last.
    pub(crate) fn next_try(&mut self) -> (usize, bool) {
        let lane = (self.first + self.tried) % self.count;
        self.tried += 1;
        (lane, self.tried >= self.count)
    }
}

impl<R: Runtime> Shared<R> {
    pub(crate) fn lane(&self, index: usize) -> &Lane {
        // `index` always comes from this pool (`< lanes.len()`, which is
        // at least 1); the modulo only keeps the access in bounds.
        &self.lanes[index % self.lanes.len()]
    }

    /// Where a submit starts: this thread's home lane if it has an idle
    /// worker; else a lane with an idle worker; else the lane with room
    /// and the fewest requests per worker (the home lane on a tie). The
    /// counts are read without the lanes' locks, so this is a hint: the
    /// chosen lane's core decides, and the others are tried after it.
    pub(crate) fn lane_order(&self) -> LaneOrder {
        let count = self.lanes.len();
        let home = if count == 1 {
            0
        } else {
            // Threads get home lanes in the order they first submit, so a
            // runtime's worker threads spread over the lanes.
            HOME_LANE.with(|cached| match cached.get() {
                (pool, lane) if pool == self.id => lane,
                _ => {
                    let lane = self.next_home.fetch_add(1, Ordering::Relaxed) % count;
                    cached.set((self.id, lane));
                    lane
                }
            })
        };
        let first = lanes::first_lane(home, count, |lane| self.lane(lane).signals.load());
        LaneOrder {
            first,
            count,
            tried: 0,
        }
    }

    /// Puts per-lane items in worker order (by id).
    pub(crate) fn in_worker_order<T>(&self, items: Vec<T>, id: impl Fn(&T) -> &String) -> Vec<T> {
        if self.lanes.len() == 1 {
            return items;
        }
        let names = self.names.lock();
        let mut keyed: Vec<(usize, T)> = items
            .into_iter()
            .map(|item| (names.rank_of(id(&item)).unwrap_or(usize::MAX), item))
            .collect();
        keyed.sort_by_key(|(rank, _)| *rank);
        keyed.into_iter().map(|(_, item)| item).collect()
    }

    pub(crate) fn now(&self) -> Time {
        Time::from_duration(self.runtime.now().saturating_duration_since(self.epoch))
    }

    /// One input that names no request of the caller: lock, apply, carry
    /// out the actions, unlock, spawn probes.
    pub(crate) fn input<T>(
        self: &Arc<Self>,
        lane: usize,
        f: impl FnOnce(&mut Core, Time) -> T,
    ) -> T {
        let mut probes = Vec::new();
        let signals = &self.lane(lane).signals;
        let mut own = Own::default();
        let out = {
            let mut core = self.lane(lane).core.lock();
            let now = self.now();
            let out = f(&mut core, now);
            core.after_input(None, &mut own, &mut probes, signals, 0);
            out
        };
        own.wake_all();
        self.spawn_probes(lane, probes);
        out
    }

    /// A handler finished: feeds its result to the core, carries out the
    /// actions and wakes whom they concern. `own` is the calling task's own
    /// request, if the handler was its; up to `claim` queued requests the
    /// freed worker starts are claimed for this task to run. What concerns
    /// this task goes to `out`.
    pub(crate) fn complete(
        self: &Arc<Self>,
        lane: &Lane,
        key: RequestKey,
        result: Result<Value, WorkerProtocolError>,
        own: Option<RequestKey>,
        claim: usize,
        out: &mut Own,
    ) {
        let mut probes = Vec::new();
        let now = self.now();
        {
            let mut core = lane.core.lock();
            core.pool.handle_completion(now, key, result);
            core.after_input(own, out, &mut probes, &lane.signals, claim);
        }
        out.wake_all();
        self.spawn_probes(lane.index, probes);
    }
}
