//! Re-entrant calls: hooks, handlers and probes may call every method of
//! their own pool (the pool holds no lock while user code runs).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use foreman_driver::{
    async_trait, CircuitBreakerHooks, PoolConfig, Runtime, WorkerErrorCode, WorkerHandler,
    WorkerHealthStatus, WorkerPool, WorkerPoolError, WorkerPoolOptions, WorkerProtocolError,
    WorkerRequest, WorkerResponse, WorkerResult,
};
use futures::FutureExt;
use serde_json::{json, Value};

use crate::support::{
    assert_served_by, handlers_of, options, request, wait_until, worker_error, RecordingHooks,
    TestWorker,
};

/// The pool a hook, handler or probe calls back into, set once the pool is
/// built (held weakly: the pool holds the hook).
pub struct PoolRef<R: Runtime>(OnceLock<Weak<WorkerPool<R>>>);

impl<R: Runtime> Default for PoolRef<R> {
    fn default() -> Self {
        PoolRef(OnceLock::new())
    }
}

impl<R: Runtime> PoolRef<R> {
    /// Points at `pool`.
    pub fn set(&self, pool: &Arc<WorkerPool<R>>) {
        let _ = self.0.set(Arc::downgrade(pool));
    }

    fn get(&self) -> Arc<WorkerPool<R>> {
        match self.0.get().and_then(Weak::upgrade) {
            Some(pool) => pool,
            None => panic!("the pool is gone or was never set"),
        }
    }
}

/// Calls the pool's synchronous methods, and its async ones that never
/// wait (polled once), from code that cannot await (`allow_request`):
/// stats, health history and snapshot, and add, restart and remove of a
/// worker of its own. Says what each answered.
fn call_the_pool_sync<R: Runtime + Clone>(pool: &WorkerPool<R>, rt: &R) -> Vec<String> {
    let _ = pool.health_history();
    let mut answers = vec![
        format!("stats {}", pool.stats().workers.len()),
        "history".to_string(),
        format!(
            "health {:?}",
            pool.health_snapshot().now_or_never().map(|h| h.len())
        ),
    ];
    match add_restart_remove(pool, rt).now_or_never() {
        Some(mut steps) => answers.append(&mut steps),
        None => answers.push("add, restart or remove waited".to_string()),
    }
    answers
}

/// Adds a worker, restarts it and removes it again; says what each
/// answered.
async fn add_restart_remove<R: Runtime + Clone>(pool: &WorkerPool<R>, rt: &R) -> Vec<String> {
    match pool.add_worker(TestWorker::new(rt)) {
        Ok(id) => vec![
            "added".to_string(),
            format!("restart {:?}", pool.restart_worker(&id).await),
            format!("remove {:?}", pool.remove_worker(&id)),
        ],
        Err(error) => vec![format!("add {error:?}")],
    }
}

/// Calls every pool method from a hook, handler or probe of the same
/// pool: a nested `submit` (named `nested`), stats, health history and
/// snapshot, and add, restart and remove of a worker of its own. Says what
/// each answered.
async fn call_the_pool<R: Runtime + Clone>(
    pool: &WorkerPool<R>,
    rt: &R,
    nested: &str,
) -> Vec<String> {
    // The nested request first: the pool's own workers must serve it.
    let submitted = pool.submit(request(nested, "echo")).await;
    let _ = pool.health_history();
    let mut answers = vec![
        format!("submit {:?}", submitted.map(|r| r.worker_id)),
        format!("stats {}", pool.stats().workers.len()),
        "history".to_string(),
        format!("health {}", pool.health_snapshot().await.len()),
    ];
    answers.append(&mut add_restart_remove(pool, rt).await);
    answers
}

/// Which hook calls back into the pool next (once), and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reenter {
    /// `allow_request` calls [`call_the_pool_sync`].
    Allow,
    /// `on_request_accepted` calls [`call_the_pool`].
    Accepted,
    /// `on_request_success` calls [`call_the_pool`].
    Success,
    /// `on_request_failure` calls [`call_the_pool`].
    Failure,
    /// `on_request_rejected` calls [`call_the_pool`].
    Rejected,
    /// `on_request_accepted` shuts the pool down.
    ShutdownOnAccepted,
}

/// Hooks that call back into their own pool from the hook armed with
/// [`Reenter`] (once), and record every hook call (as [`RecordingHooks`]
/// that log their questions) and what the pool answered.
struct ReentrantHooks<R: Runtime> {
    rt: R,
    pool: PoolRef<R>,
    armed: Mutex<Option<Reenter>>,
    record: RecordingHooks,
}

impl<R: Runtime + Clone> ReentrantHooks<R> {
    pub(crate) fn new(rt: &R) -> Arc<Self> {
        Arc::new(ReentrantHooks {
            rt: rt.clone(),
            pool: PoolRef::default(),
            armed: Mutex::new(None),
            record: RecordingHooks::asking(),
        })
    }

    fn arm(&self, hook: Reenter) {
        *self.armed.lock().unwrap_or_else(PoisonError::into_inner) = Some(hook);
    }

    /// Whether `hook` is armed; disarms it.
    fn fire(&self, hook: Reenter) -> bool {
        let mut armed = self.armed.lock().unwrap_or_else(PoisonError::into_inner);
        if *armed == Some(hook) {
            *armed = None;
            return true;
        }
        false
    }

    pub(crate) fn log(&self) -> Vec<String> {
        self.record.log()
    }

    async fn reenter(&self, hook: Reenter) {
        if self.fire(hook) {
            let answers = call_the_pool(&self.pool.get(), &self.rt, "nested").await;
            self.record
                .push(format!("{hook:?}: {}", answers.join(", ")));
        }
    }
}

#[async_trait]
impl<R: Runtime + Clone> CircuitBreakerHooks for ReentrantHooks<R> {
    fn allow_request(&self, worker_id: &str, request: &WorkerRequest) -> bool {
        let allowed = self.record.allow_request(worker_id, request);
        if self.fire(Reenter::Allow) {
            let answers = call_the_pool_sync(&self.pool.get(), &self.rt);
            self.record.push(format!("Allow: {}", answers.join(", ")));
        }
        allowed
    }

    async fn on_request_accepted(&self, worker_id: &str, request: &WorkerRequest) {
        self.record.on_request_accepted(worker_id, request).await;
        if self.fire(Reenter::ShutdownOnAccepted) {
            self.pool.get().shutdown().await;
            self.record.push("shutdown returned".to_string());
        }
        self.reenter(Reenter::Accepted).await;
    }

    async fn on_request_success(&self, worker_id: &str, response: &WorkerResponse) {
        self.record.on_request_success(worker_id, response).await;
        self.reenter(Reenter::Success).await;
    }

    async fn on_request_failure(&self, worker_id: &str, error: &WorkerProtocolError) {
        self.record.on_request_failure(worker_id, error).await;
        self.reenter(Reenter::Failure).await;
    }

    async fn on_request_rejected(
        &self,
        worker_id: Option<&str>,
        request: &WorkerRequest,
        reason: WorkerErrorCode,
    ) {
        self.record
            .on_request_rejected(worker_id, request, reason)
            .await;
        self.reenter(Reenter::Rejected).await;
    }
}

/// A pool of `workers` echo workers with [`ReentrantHooks`], shared.
fn reentrant_pool<R: Runtime + Default + Clone>(
    rt: &R,
    workers: usize,
) -> (Arc<WorkerPool<R>>, Arc<ReentrantHooks<R>>) {
    let hooks = ReentrantHooks::new(rt);
    let workers: Vec<_> = (0..workers).map(|_| TestWorker::new(rt)).collect();
    let pool = match WorkerPool::<R>::new_inprocess(
        handlers_of(&workers),
        WorkerPoolOptions {
            // A nested submit that waited for a worker held by its own
            // caller would end here, not hang.
            default_request_timeout: Some(Duration::from_secs(1)),
            ..options()
        },
        Some(Arc::clone(&hooks) as Arc<dyn CircuitBreakerHooks>),
    ) {
        Ok(pool) => Arc::new(pool),
        Err(error) => panic!("valid pool options refused: {error}"),
    };
    hooks.pool.set(&pool);
    (pool, hooks)
}

/// The answers of [`call_the_pool`] on a pool of `workers` (plus the one
/// it adds) whose nested request ran on `nested_on`.
fn called_the_pool(workers: usize, nested_on: &str) -> String {
    format!(
        "submit Ok({nested_on:?}), stats {workers}, history, health {workers}, added, \
         restart Ok(()), remove Ok(())"
    )
}

/// `allow_request` runs outside the pool's lock: it may call the pool's
/// stats, health, and add, restart and remove workers (a call that took
/// the pool's lock again would deadlock), and the request still goes to
/// the worker it approved.
pub async fn allow_request_may_call_the_pool<R: Runtime + Default + Clone>(rt: R) {
    let (pool, hooks) = reentrant_pool(&rt, 2);
    hooks.arm(Reenter::Allow);
    assert_served_by(&pool, "outer", "worker-0").await;
    assert_eq!(
        hooks.log(),
        [
            "ask outer worker-0",
            "Allow: stats 2, history, health Some(2), added, restart Ok(()), remove Ok(())",
            "accepted outer worker-0",
            "success outer worker-0",
        ]
    );
    pool.shutdown().await;
}

/// `on_request_accepted` may submit to its own pool of one worker: the
/// started handler of its request runs while the hook waits, so the
/// nested request gets the worker next (it does not wait out its
/// deadline). The hook may also call every other pool method; the hooks
/// of each request still fire once each, accepted before success.
pub async fn on_request_accepted_may_call_the_pool<R: Runtime + Default + Clone>(rt: R) {
    let (pool, hooks) = reentrant_pool(&rt, 1);
    hooks.arm(Reenter::Accepted);
    assert_served_by(&pool, "outer", "worker-0").await;
    let log = hooks.log();
    let called = format!("Accepted: {}", called_the_pool(1, "worker-0"));
    assert!(log.contains(&called), "{log:?}");
    let outer: Vec<&String> = log.iter().filter(|l| l.contains(" outer ")).collect();
    assert_eq!(
        outer,
        [
            "ask outer worker-0",
            "accepted outer worker-0",
            "success outer worker-0"
        ]
    );
    let nested: Vec<&String> = log.iter().filter(|l| l.contains(" nested ")).collect();
    assert_eq!(
        nested,
        [
            "ask nested worker-0",
            "accepted nested worker-0",
            "success nested worker-0"
        ]
    );
    pool.shutdown().await;
}

/// `on_request_success`, `on_request_failure` and `on_request_rejected`
/// may call every pool method, a nested submit included.
pub async fn every_other_hook_may_call_the_pool<R: Runtime + Default + Clone>(rt: R) {
    let (pool, hooks) = reentrant_pool(&rt, 1);
    hooks.arm(Reenter::Success);
    assert!(pool.submit(request("ok", "echo")).await.is_ok());
    hooks.arm(Reenter::Failure);
    let failed = pool.submit(request("fails", "fail")).await;
    assert_eq!(worker_error(&failed), WorkerErrorCode::ExecutionFailed);
    hooks.arm(Reenter::Rejected);
    let refused = pool.submit(request(&"r".repeat(200), "echo")).await;
    assert!(
        matches!(refused, Err(WorkerPoolError::InvalidRequest { .. })),
        "{refused:?}"
    );
    let log = hooks.log();
    for hook in ["Success", "Failure", "Rejected"] {
        let called = format!("{hook}: {}", called_the_pool(1, "worker-0"));
        assert!(log.contains(&called), "{hook}: {log:?}");
    }
    pool.shutdown().await;
}

/// `on_request_accepted` may shut the pool down: the drain lets the
/// hook's own request finish (its handler runs while the hook waits), and
/// the request is answered with its output.
pub async fn on_request_accepted_may_shut_the_pool_down<R: Runtime + Default + Clone>(rt: R) {
    let (pool, hooks) = reentrant_pool(&rt, 1);
    hooks.arm(Reenter::ShutdownOnAccepted);
    assert_served_by(&pool, "outer", "worker-0").await;
    assert_eq!(
        hooks.log(),
        [
            "ask outer worker-0",
            "accepted outer worker-0",
            "shutdown returned",
            "success outer worker-0",
        ]
    );
    assert!(matches!(
        pool.submit(request("late", "echo")).await,
        Err(WorkerPoolError::ShuttingDown)
    ));
}

/// A handler that calls back into its own pool (node `reenter`), and a
/// probe that does so once.
struct ReentrantWorker<R: Runtime> {
    rt: R,
    pool: PoolRef<R>,
    probed: Mutex<Option<Vec<String>>>,
    probe_armed: AtomicBool,
}

#[async_trait]
impl<R: Runtime + Clone> WorkerHandler for ReentrantWorker<R> {
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        if request.node_id != "reenter" {
            return Ok(json!({"node": request.node_id}));
        }
        let answers = call_the_pool(&self.pool.get(), &self.rt, "nested").await;
        Ok(json!(answers.join(", ")))
    }

    async fn probe_health(&self) -> WorkerHealthStatus {
        if self.probe_armed.swap(false, Ordering::SeqCst) {
            let answers = call_the_pool(&self.pool.get(), &self.rt, "probed").await;
            *self.probed.lock().unwrap_or_else(PoisonError::into_inner) = Some(answers);
        }
        WorkerHealthStatus::Healthy
    }
}

/// A handler and a probe may call every pool method of their own pool,
/// a nested submit included (served by the other worker).
pub async fn handlers_and_probes_may_call_the_pool<R: Runtime + Default + Clone>(rt: R) {
    let reentrant = Arc::new(ReentrantWorker {
        rt: rt.clone(),
        pool: PoolRef::default(),
        probed: Mutex::new(None),
        probe_armed: AtomicBool::new(false),
    });
    let other = TestWorker::new(&rt);
    // Probes every 10 ms, each with 5 s to answer (the re-entrant one
    // submits and waits for the answer).
    let config = PoolConfig::new(WorkerPoolOptions {
        health_probe_interval: Duration::from_millis(10),
        ..options()
    })
    .with_probe_timeout(Duration::from_secs(5));
    let pool = match WorkerPool::with_config(
        R::default(),
        vec![
            Arc::clone(&reentrant) as Arc<dyn WorkerHandler>,
            other as Arc<dyn WorkerHandler>,
        ],
        config,
        None,
    ) {
        Ok(pool) => Arc::new(pool),
        Err(error) => panic!("valid pool options refused: {error}"),
    };
    reentrant.pool.set(&pool);
    let served = pool.submit(request("outer", "reenter")).await;
    let served = served.unwrap_or_else(|e| panic!("the re-entrant handler answers: {e}"));
    assert_eq!(served.worker_id, "worker-0");
    let expected = called_the_pool(2, "worker-1");
    assert_eq!(
        served.result,
        WorkerResult::Success {
            output: json!(expected)
        }
    );
    reentrant.probe_armed.store(true, Ordering::SeqCst);
    wait_until(&rt, "the probe called the pool", || {
        reentrant
            .probed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    })
    .await;
    let probed = reentrant
        .probed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .unwrap_or_default();
    assert!(
        probed.first().is_some_and(|s| s.starts_with("submit Ok(")),
        "{probed:?}"
    );
    assert_eq!(
        probed.last().map(String::as_str),
        Some("remove Ok(())"),
        "{probed:?}"
    );
    pool.shutdown().await;
}
