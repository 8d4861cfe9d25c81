//! A [`WorkerPool`]'s commands: restart, add and remove workers, and
//! shut down.

use std::sync::Arc;
use std::time::Duration;

use foreman_core::{CommandError, Time, WorkerKey, WorkerPoolError, WorkerSpec};
use futures_util::future::poll_fn;

use crate::answer::command_error;
use crate::handler::WorkerHandler;
use crate::meter::WorkerMeter;
use crate::names::Names;
use crate::runtime::Runtime;
use crate::shared::Shared;
use crate::state::{Core, WorkerEntry};

use crate::pool::WorkerPool;

impl<R: Runtime> WorkerPool<R> {
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
        self.add_worker_with(WorkerSpec::default(), handler)
            .map_err(command_error)
    }

    /// Adds a worker running `handler` as `spec` describes it: its id (an
    /// endpoint URL, say; `None` takes the next unused `worker-N`) and its
    /// own run limit (`None` takes the pool's
    /// [`max_concurrency_per_worker`](foreman_core::PoolConfig::max_concurrency_per_worker)),
    /// in the lane with the fewest workers; returns its id. It takes new
    /// requests at once and is probed like the others.
    ///
    /// # Errors
    /// [`CommandError::DuplicateWorkerId`] when a worker of any lane has
    /// that id (one being removed keeps it until its running requests
    /// end) or another add of that id is under way;
    /// [`CommandError::InvalidWorkerId`] for an empty or overlong id;
    /// [`CommandError::ZeroConcurrency`] for a run limit of 0;
    /// [`CommandError::ShuttingDown`] once shutdown began;
    /// [`CommandError::TooManyWorkers`] past 2^32 workers in a lane.
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
    /// use foreman_tokio::{CommandError, WorkerPool, WorkerPoolOptions, WorkerSpec};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let pool = WorkerPool::new_inprocess(vec![Arc::new(Echo)], WorkerPoolOptions::default(), None)?;
    /// let spec = WorkerSpec::named("http://10.0.0.5:8080").with_max_concurrency(4);
    /// let id = pool.add_worker_with(spec.clone(), Arc::new(Echo)).expect("a new id");
    /// assert_eq!(id, "http://10.0.0.5:8080");
    /// assert_eq!(
    ///     pool.add_worker_with(spec, Arc::new(Echo)),
    ///     Err(CommandError::DuplicateWorkerId(id)),
    /// );
    /// pool.shutdown().await;
    /// # Ok::<(), foreman_tokio::WorkerPoolError>(())
    /// # }).unwrap();
    /// ```
    pub fn add_worker_with(
        &self,
        spec: WorkerSpec,
        handler: Arc<dyn WorkerHandler>,
    ) -> Result<String, CommandError> {
        let shared = &self.shared;
        // The names lock is held only to choose the lane and the id and to
        // reserve the id: registering the worker's gauges and the input
        // (notes to subscribers and recorders, moves, wakers) are user
        // code, run with no lock held. A refused handler is dropped here,
        // with no lock held too.
        let (lane, id) = match reserve_worker(shared, spec.id.as_deref()) {
            Ok(reserved) => reserved,
            Err(error) => {
                drop(handler);
                return Err(error);
            }
        };
        let mut spec = spec;
        spec.id = Some(id.clone());
        let mut handler = Some(handler);
        let mut meter = Some(WorkerMeter::new(&id));
        let added = shared.input(lane, |core, now| {
            let key = core.pool.add_worker_with(now, spec)?;
            let cell = handler.take().zip(meter.take()).map(|(handler, meter)| {
                let entry = WorkerEntry::new(&id, key, handler, meter);
                let cell = Arc::clone(&entry.cell);
                core.workers.insert(key, entry);
                cell
            });
            Ok(cell)
        });
        let cell = match added {
            Ok(cell) => cell,
            Err(error) => {
                shared.names.lock().release(&id);
                // Refused: the handler and its gauges go with no lock held.
                drop((handler, meter));
                return Err(error);
            }
        };
        {
            let mut names = shared.names.lock();
            names.add(&id, lane);
            forget_removed(shared, &mut names);
        }
        shared.meter.workers_added(1);
        // Requests the core started on it already wait in its inbox.
        if let (true, Some(cell)) = (shared.pool_tasks, cell) {
            shared.spawn_worker(lane, cell);
        }
        Ok(id)
    }

    /// Removes a worker: it takes no new requests, its queued requests move
    /// to other workers of its lane (or, if it was its lane's last worker
    /// to take requests, to the other lanes), its running request
    /// finishes.
    ///
    /// A queued request no other worker can take is answered with a
    /// retryable `Unavailable` error. In a pool with hooks, a request the
    /// circuit breaker placed on the removed worker moves only to a worker
    /// whose `allow_request` approves it (see [`CircuitBreakerHooks`](crate::CircuitBreakerHooks)).
    ///
    /// # Errors
    /// `NoHealthyWorker` for an unknown worker id or one already being
    /// removed; `ShuttingDown` once the pool has stopped.
    ///
    /// # Examples
    /// See [`restart_worker`](Self::restart_worker).
    pub fn remove_worker(&self, worker_id: &str) -> Result<(), WorkerPoolError> {
        let shared = &self.shared;
        let lane = shared.names.lock().lane_of(worker_id);
        for tries in 1..=REMOVAL_TRIES {
            if let Some(lane) = lane {
                shared.move_before_removal(lane, worker_id);
            }
            // A request that reached the lane after its queue moved is
            // seen here, under the lane's lock: it moves before the
            // worker goes (the last try removes it all the same).
            let removed = self.command(worker_id, |core, now, key| {
                let lane = lane.unwrap_or(0);
                if tries < REMOVAL_TRIES && shared.move_before_removing(core, lane, key).is_some() {
                    return Ok(false);
                }
                core.pool.remove_worker(now, key).map(|()| true)
            })?;
            if removed {
                break;
            }
        }
        Ok(())
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
    fn command<T>(
        &self,
        worker_id: &str,
        f: impl FnOnce(&mut Core, Time, WorkerKey) -> Result<T, CommandError>,
    ) -> Result<T, WorkerPoolError> {
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

/// How many times [`WorkerPool::remove_worker`] moves a lane's queue
/// away before it removes the lane's last worker that takes requests
/// regardless (requests that keep arriving in between are answered as in
/// a single pool).
const REMOVAL_TRIES: usize = 4;

/// Under the names lock: the lane with the fewest workers and the id of a
/// worker to add (`id`, or the next unused `worker-N`), reserved.
/// `DuplicateWorkerId` when a worker of any lane has the id or another add
/// under way reserved it.
fn reserve_worker<R: Runtime>(
    shared: &Shared<R>,
    id: Option<&str>,
) -> Result<(usize, String), CommandError> {
    let mut names = shared.names.lock();
    let lane = (0..shared.lanes.len())
        .min_by_key(|&lane| shared.lane(lane).core.lock().workers.len())
        .unwrap_or(0);
    let id = match id {
        Some(id) => id.to_string(),
        None => names.next_numbered(),
    };
    // Each lane's core knows its own workers' ids only.
    let taken = shared.lanes.len() > 1
        && (0..shared.lanes.len()).any(|other| {
            shared
                .lane(other)
                .core
                .lock()
                .pool
                .worker_key(&id)
                .is_some()
        });
    if taken || !names.reserve(&id) {
        return Err(CommandError::DuplicateWorkerId(id));
    }
    Ok((lane, id))
}

/// Forgets the names of removed workers once they outnumber the live ones
/// (and a few more), so a pool whose workers come and go (discovery) keeps
/// a bounded map. Amortised O(1) per added worker.
fn forget_removed<R: Runtime>(shared: &Shared<R>, names: &mut Names) {
    let live: usize = (0..shared.lanes.len())
        .map(|lane| shared.lane(lane).core.lock().workers.len())
        .sum();
    if names.recorded() <= 2 * live + 16 {
        return;
    }
    names.retain(|id| {
        (0..shared.lanes.len())
            .any(|lane| shared.lane(lane).core.lock().pool.worker_key(id).is_some())
    });
}
