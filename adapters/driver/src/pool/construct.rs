//! [`WorkerPool`]'s constructors: from the reference's options, from a
//! core configuration, with lanes or with the driver's own options, and
//! the one that builds the lanes, spawns their tasks and checks it all.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use foreman_core::{
    CommandError, Pool, PoolConfig, Time, WorkerPoolError, WorkerPoolOptions, WorkerSpec,
};
use parking_lot::Mutex;

use super::WorkerPool;
use crate::handler::{CircuitBreakerHooks, WorkerHandler};
use crate::live::Live;
use crate::meter::{PoolMeter, WorkerMeter};
use crate::names::Names;
use crate::runtime::Runtime;
use crate::shared::{Lane, Shared, NEXT_POOL_ID};
use crate::state::{Core, FastMap, LaneSignals, WorkerEntry};
use crate::types::{BuildError, DriverOptions, HookRole};
use crate::worker::ExecutionMode;

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
        config: PoolConfig,
        hooks: Option<Arc<dyn CircuitBreakerHooks>>,
        options: DriverOptions,
    ) -> Result<Self, BuildError> {
        let workers = handlers
            .into_iter()
            .map(|handler| (WorkerSpec::default(), handler))
            .collect();
        Self::with_workers(runtime, workers, config, hooks, options)
    }

    /// Creates a pool whose workers are described one by one: each
    /// handler with its [`WorkerSpec`], that is its id (an endpoint URL,
    /// say; `None` takes the next unused `worker-N`) and its own run limit
    /// (`None` takes the pool's
    /// [`max_concurrency_per_worker`](PoolConfig::max_concurrency_per_worker)).
    /// Otherwise as [`with_driver_options`](Self::with_driver_options):
    /// the `i`-th worker is in lane `i % lanes`.
    ///
    /// # Errors
    /// [`BuildError`] when there is no handler, the configuration is
    /// invalid, the runtime cannot spawn tasks here, or a worker cannot be
    /// added ([`BuildError::Worker`]: two workers with one id, an invalid
    /// id, a run limit of 0).
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
    /// use foreman_tokio::{
    ///     BuildError, CommandError, DriverOptions, PoolConfig, TokioRuntime, WorkerPool, WorkerSpec,
    /// };
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let gpu = WorkerSpec::named("http://10.0.0.5:8080").with_max_concurrency(4);
    /// let cpu = WorkerSpec::named("http://10.0.0.6:8080"); // the pool's limit
    /// let workers: Vec<(WorkerSpec, Arc<dyn WorkerHandler>)> =
    ///     vec![(gpu.clone(), Arc::new(Echo)), (cpu, Arc::new(Echo))];
    /// let pool = WorkerPool::with_workers(
    ///     TokioRuntime,
    ///     workers,
    ///     PoolConfig::default(),
    ///     None,
    ///     DriverOptions::default(),
    /// )?;
    /// assert_eq!(pool.stats().workers[0].worker_id, "http://10.0.0.5:8080");
    /// pool.shutdown().await;
    ///
    /// // One id twice is refused.
    /// let twice: Vec<(WorkerSpec, Arc<dyn WorkerHandler>)> =
    ///     vec![(gpu.clone(), Arc::new(Echo)), (gpu, Arc::new(Echo))];
    /// let refused =
    ///     WorkerPool::with_workers(TokioRuntime, twice, PoolConfig::default(), None, DriverOptions::default());
    /// assert!(matches!(refused, Err(BuildError::Worker(CommandError::DuplicateWorkerId(_)))));
    /// # Ok::<(), BuildError>(())
    /// # }).unwrap();
    /// ```
    pub fn with_workers(
        runtime: R,
        workers: Vec<(WorkerSpec, Arc<dyn WorkerHandler>)>,
        mut config: PoolConfig,
        hooks: Option<Arc<dyn CircuitBreakerHooks>>,
        options: DriverOptions,
    ) -> Result<Self, BuildError> {
        let handlers = workers;
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
        if config.hedging.is_some() && !pool_tasks {
            return Err(BuildError::HedgingNeedsPoolTasks);
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
                live: Arc::new(Live::new(epoch)),
                armed: Time::MAX,
                health_log: Default::default(),
                room_waiters: Vec::new(),
                pool_tasks,
                publish_load: lanes.get() > 1,
                meter: Arc::clone(&meter),
            });
        }
        let mut names = Names::default();
        for (spec, handler) in handlers {
            let lane = names.count() % lanes.get();
            let Some(core) = cores.get_mut(lane) else {
                continue;
            };
            let id = match &spec.id {
                Some(id) => id.clone(),
                None => names.next_numbered(),
            };
            // Each lane's core knows its own workers' ids only.
            if names.lane_of(&id).is_some() {
                return Err(BuildError::Worker(CommandError::DuplicateWorkerId(id)));
            }
            let mut spec = spec;
            spec.id = Some(id.clone());
            let key = core.pool.add_worker_with(Time::ZERO, spec)?;
            names.add(&id, lane);
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
}
