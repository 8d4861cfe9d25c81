//! [`WorkerPool`]: the reference's API, driving `foreman_core::Pool`.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use foreman_core::{
    PhaseLimits, Pool, PoolConfig, Time, WorkerHealth, WorkerPoolError, WorkerPoolOptions,
    WorkerRequest, WorkerResponse,
};
use futures_util::FutureExt as _;
use parking_lot::Mutex;

use crate::cooperate::cooperate;
use crate::handler::{CircuitBreakerHooks, WorkerHandler, WorkerPoolClient};
use crate::live::Live;
use crate::meter::{PoolMeter, WorkerMeter};
use crate::names::Names;
use crate::runtime::Runtime;
use crate::shared::{Lane, Shared, NEXT_POOL_ID};
use crate::slot::Slot;
use crate::state::{Core, FastMap, LaneSignals, WorkerEntry};
use crate::trace::RequestSpan;
use crate::types::{BuildError, DriverOptions, HookRole, Timed};
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
    /// see `PoolConfig::late_binding`), except with `hooks`: they are a
    /// circuit breaker ([`HookRole::CircuitBreaker`]), so every request is
    /// pinned and runs on the worker whose `allow_request` approved it and
    /// that `on_request_accepted` named, as in the reference. Hooks that
    /// only observe keep late binding with
    /// [`new_inprocess_observed`](Self::new_inprocess_observed); build the
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

    /// Creates a pool like [`new_inprocess`](Self::new_inprocess) whose
    /// `hooks` only observe ([`HookRole::ObserveOnly`]): their
    /// `allow_request` is never asked, late binding stays on (a queued
    /// request runs on the first worker to free up), and every other hook
    /// fires as with a circuit breaker. `on_request_accepted` names the
    /// worker the request was queued on; `on_request_success` and
    /// `on_request_failure` name the worker that answered it.
    ///
    /// # Errors
    /// As [`new_inprocess`](Self::new_inprocess).
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
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use foreman_tokio::{CircuitBreakerHooks, WorkerPool, WorkerPoolOptions, WorkerResponse};
    ///
    /// /// Counts successes; never vetoes a worker.
    /// #[derive(Default)]
    /// struct Successes(AtomicUsize);
    ///
    /// #[async_trait]
    /// impl CircuitBreakerHooks for Successes {
    ///     async fn on_request_success(&self, _worker_id: &str, _response: &WorkerResponse) {
    ///         self.0.fetch_add(1, Ordering::SeqCst);
    ///     }
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let hooks = Arc::new(Successes::default());
    /// let handlers: Vec<Arc<dyn WorkerHandler>> = vec![Arc::new(Echo), Arc::new(Echo)];
    /// let pool = WorkerPool::new_inprocess_observed(
    ///     handlers,
    ///     WorkerPoolOptions::default(),
    ///     Arc::clone(&hooks) as Arc<dyn CircuitBreakerHooks>,
    /// )?;
    /// # let request = WorkerRequest {
    /// #     request_id: "r".into(), workflow_name: "w".into(), node_id: "n".into(), timeout_ms: None,
    /// #     operation: foreman_tokio::WorkerOperation::Tool { tool: "t".into(), input: json!({}), scoped_input: json!({}) },
    /// # };
    /// pool.submit(request).await?;
    /// assert_eq!(hooks.0.load(Ordering::SeqCst), 1);
    /// pool.shutdown().await;
    /// # Ok::<(), foreman_tokio::WorkerPoolError>(())
    /// # }).unwrap();
    /// ```
    pub fn new_inprocess_observed(
        handlers: Vec<Arc<dyn WorkerHandler>>,
        options: WorkerPoolOptions,
        hooks: Arc<dyn CircuitBreakerHooks>,
    ) -> Result<Self, WorkerPoolError> {
        let driver = DriverOptions::default().hooks(HookRole::ObserveOnly);
        Self::with_driver_options(
            R::default(),
            handlers,
            PoolConfig::new(options),
            Some(hooks),
            driver,
        )
        .map_err(WorkerPoolError::from)
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
        if config.retries.is_some() && !pool_tasks {
            return Err(BuildError::RetriesNeedPoolTasks);
        }
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
            observe_only: options.hooks == HookRole::ObserveOnly,
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
        // with it goes a copy of its span (`tracing` feature), for the task
        // that starts its handler.
        let span = RequestSpan::new(&request);
        let slot = Slot::parked(request, span.clone());
        if !limits.is_none() {
            slot.lock().limits = limits;
        }
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
