//! What every scenario builds on: waits on the runtime's clock, the
//! configurable [`TestWorker`], the [`RecordingHooks`], and the pools they make.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use foreman_driver::{
    async_trait, CircuitBreakerHooks, DriverOptions, ExecutionMode, HookRole, PoolConfig, Runtime,
    WorkerErrorCode, WorkerHandler, WorkerHealthStatus, WorkerOperation, WorkerPool,
    WorkerPoolError, WorkerPoolOptions, WorkerProtocolError, WorkerRequest, WorkerResponse,
};
use futures::future;
use futures::FutureExt;
use serde_json::{json, Value};

/// Sleeps on the runtime's own timer.
pub fn sleep<R: Runtime>(rt: &R, duration: Duration) -> impl Future<Output = ()> + Send {
    let mut timer = rt.new_timer(rt.now() + duration);
    future::poll_fn(move |cx| timer.as_mut().poll(cx))
}

/// Waits, in 1 ms steps of the runtime's clock, until `condition` holds;
/// panics after 10 s.
pub async fn wait_until<R: Runtime>(rt: &R, what: &str, mut condition: impl FnMut() -> bool) {
    let start = rt.now();
    while !condition() {
        assert!(
            rt.now().saturating_duration_since(start) < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        sleep(rt, Duration::from_millis(1)).await;
    }
}

/// Spawns `future` on the runtime; the returned future yields its output.
pub fn spawn<R: Runtime, T: Send + 'static>(
    rt: &R,
    future: impl Future<Output = T> + Send + 'static,
) -> impl Future<Output = T> {
    let (tx, rx) = futures::channel::oneshot::channel();
    rt.spawn(Box::pin(async move {
        let _ = tx.send(future.await);
    }));
    rx.map(|joined| joined.unwrap_or_else(|_| panic!("spawned task ended without output")))
}

/// Polls `future` once; `true` if it is still pending.
pub(crate) async fn pending_after_one_poll<F: Future + Unpin>(future: &mut F) -> bool {
    let mut once = Some(());
    future::poll_fn(|cx| {
        if once.take().is_some() {
            Poll::Ready(future.poll_unpin(cx).is_pending())
        } else {
            Poll::Ready(false)
        }
    })
    .await
}

/// A tool request whose `node_id` tells [`TestWorker`] what to do.
pub fn request(id: &str, node: &str) -> WorkerRequest {
    WorkerRequest {
        request_id: id.to_string(),
        workflow_name: "wf".to_string(),
        node_id: node.to_string(),
        timeout_ms: None,
        operation: WorkerOperation::Tool {
            tool: "echo".to_string(),
            input: json!({"x": 1}),
            scoped_input: json!({"input": {}}),
        },
    }
}

/// An LLM call (which retry and hedging policies cover by default).
pub(crate) fn llm(id: &str) -> WorkerRequest {
    WorkerRequest {
        operation: WorkerOperation::Llm {
            model: "model".into(),
            prompt: "prompt".into(),
            scoped_input: json!({}),
        },
        ..request(id, "llm")
    }
}

/// How a [`TestWorker`]'s probe answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeMode {
    /// Answers Healthy.
    Healthy,
    /// Never answers.
    Hang,
}

/// A worker whose behaviour is chosen by the request's `node_id`: `echo`,
/// `fail`, `panic`, `hang` (never finishes), `gate` (waits until the test
/// opens its gate once), `sleep:<ms>` (sleeps on the runtime's timer).
pub struct TestWorker<R> {
    pub(crate) rt: R,
    pub(crate) calls: AtomicUsize,
    pub(crate) dropped: AtomicUsize,
    pub(crate) probes: AtomicUsize,
    gate: (async_channel::Sender<()>, async_channel::Receiver<()>),
    pub(crate) probe_mode: Mutex<ProbeMode>,
    pub(crate) fail_all: AtomicBool,
}

impl<R: Runtime + Clone> TestWorker<R> {
    /// A new worker sleeping on `rt`'s timer.
    pub fn new(rt: &R) -> Arc<Self> {
        Arc::new(TestWorker {
            rt: rt.clone(),
            calls: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            probes: AtomicUsize::new(0),
            gate: async_channel::unbounded(),
            probe_mode: Mutex::new(ProbeMode::Healthy),
            fail_all: AtomicBool::new(false),
        })
    }

    /// Lets `count` more `gate` requests through.
    pub fn open_gate(&self, count: usize) {
        for _ in 0..count {
            let _ = self.gate.0.try_send(());
        }
    }

    /// Handler calls so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Handler futures dropped before they finished.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }

    /// Probes so far.
    pub fn probes(&self) -> usize {
        self.probes.load(Ordering::SeqCst)
    }
}

struct DropWatch<'a>(&'a AtomicUsize, bool);

impl Drop for DropWatch<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl<R: Runtime + Clone> WorkerHandler for TestWorker<R> {
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut watch = DropWatch(&self.dropped, false);
        let node = request.node_id.as_str();
        let result = if self.fail_all.load(Ordering::SeqCst) || node == "fail" {
            Err(WorkerProtocolError::new(
                WorkerErrorCode::ExecutionFailed,
                "failed on purpose",
                true,
            ))
        } else if node == "panic" {
            panic!("handler exploded on purpose");
        } else if node == "hang" {
            future::pending::<()>().await;
            Ok(Value::Null)
        } else if node == "gate" {
            let _ = self.gate.1.recv().await;
            Ok(json!({"gate": "passed"}))
        } else if let Some(ms) = node.strip_prefix("block:") {
            // CPU-bound: holds its thread without yielding.
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
            Ok(json!({"blocked": ms}))
        } else if let Some(ms) = node.strip_prefix("sleep:") {
            let ms: u64 = ms.parse().unwrap_or(0);
            sleep(&self.rt, Duration::from_millis(ms)).await;
            Ok(json!({"slept": ms}))
        } else {
            Ok(json!({"node": node}))
        };
        watch.1 = true;
        result
    }

    async fn probe_health(&self) -> WorkerHealthStatus {
        self.probes.fetch_add(1, Ordering::SeqCst);
        let mode = *self
            .probe_mode
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match mode {
            ProbeMode::Healthy => WorkerHealthStatus::Healthy,
            ProbeMode::Hang => future::pending().await,
        }
    }
}

/// Hooks that record every call, with a per-worker open circuit and
/// per-request refusals.
#[derive(Default)]
pub struct RecordingHooks {
    pub(crate) log: Mutex<Vec<String>>,
    pub(crate) open: Mutex<Vec<String>>,
    /// (request id, worker id) pairs `allow_request` refuses.
    pub(crate) refuse: Mutex<Vec<(String, String)>>,
    /// Whether `allow_request` records its questions too ("ask …").
    log_asks: AtomicBool,
}

impl RecordingHooks {
    /// Hooks that record the breaker's questions too.
    pub fn asking() -> Self {
        RecordingHooks {
            log_asks: AtomicBool::new(true),
            ..RecordingHooks::default()
        }
    }

    /// Every hook call so far.
    pub fn log(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The calls about request `id`.
    pub fn about(&self, id: &str) -> Vec<String> {
        let needle = format!(" {id} ");
        self.log()
            .into_iter()
            .filter(|line| line.contains(&needle))
            .collect()
    }

    /// Makes `allow_request` refuse `worker_id` for request `request_id`.
    pub fn refuse(&self, request_id: &str, worker_id: &str) {
        self.refuse
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((request_id.to_string(), worker_id.to_string()));
    }

    pub(crate) fn push(&self, entry: String) {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
    }
}

#[async_trait]
impl CircuitBreakerHooks for RecordingHooks {
    fn allow_request(&self, worker_id: &str, request: &WorkerRequest) -> bool {
        if self.log_asks.load(Ordering::SeqCst) {
            self.push(format!("ask {} {worker_id}", request.request_id));
        }
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let refuse = self.refuse.lock().unwrap_or_else(PoisonError::into_inner);
        !open.iter().any(|id| id == worker_id)
            && !refuse
                .iter()
                .any(|(r, w)| *r == request.request_id && w == worker_id)
    }

    async fn on_request_accepted(&self, worker_id: &str, request: &WorkerRequest) {
        self.push(format!("accepted {} {worker_id}", request.request_id));
    }

    async fn on_request_success(&self, worker_id: &str, response: &WorkerResponse) {
        self.push(format!("success {} {worker_id}", response.request_id));
    }

    async fn on_request_failure(&self, worker_id: &str, error: &WorkerProtocolError) {
        self.push(format!("failure {worker_id} {:?}", error.code));
    }

    async fn on_request_rejected(
        &self,
        worker_id: Option<&str>,
        request: &WorkerRequest,
        reason: WorkerErrorCode,
    ) {
        let worker = worker_id.unwrap_or("-");
        self.push(format!(
            "rejected {} {worker} {reason:?}",
            request.request_id
        ));
    }
}

pub(crate) fn options() -> WorkerPoolOptions {
    WorkerPoolOptions {
        queue_capacity: 4,
        health_probe_interval: Duration::from_secs(60),
        default_request_timeout: Some(Duration::from_secs(10)),
        ..WorkerPoolOptions::default()
    }
}

pub(crate) fn handlers_of<R: Runtime + Clone>(
    workers: &[Arc<TestWorker<R>>],
) -> Vec<Arc<dyn WorkerHandler>> {
    workers
        .iter()
        .map(|w| Arc::clone(w) as Arc<dyn WorkerHandler>)
        .collect()
}

pub(crate) fn pool_of<R: Runtime + Default + Clone>(
    workers: &[Arc<TestWorker<R>>],
    options: WorkerPoolOptions,
) -> WorkerPool<R> {
    match WorkerPool::new_inprocess(handlers_of(workers), options, None) {
        Ok(pool) => pool,
        Err(error) => panic!("valid pool options refused: {error}"),
    }
}

pub(crate) fn pool_with<R: Runtime + Default + Clone>(
    workers: &[Arc<TestWorker<R>>],
    options: WorkerPoolOptions,
    driver: DriverOptions,
) -> WorkerPool<R> {
    let config = PoolConfig::new(options);
    match WorkerPool::with_driver_options(R::default(), handlers_of(workers), config, None, driver)
    {
        Ok(pool) => pool,
        Err(error) => panic!("valid pool options refused: {error}"),
    }
}

pub(crate) fn pool_in_lanes<R: Runtime + Default + Clone>(
    workers: &[Arc<TestWorker<R>>],
    options: WorkerPoolOptions,
    lanes: usize,
) -> WorkerPool<R> {
    lane_pool(handlers_of(workers), options, lanes, LaneMode::PoolTasks)
}

/// How a pool of several lanes runs its handlers, and whether it has hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneMode {
    /// Handlers on worker tasks, no hooks (the default).
    PoolTasks,
    /// Handlers in their callers' tasks (`ExecutionMode::CallerTask`).
    CallerTask,
    /// Handlers on worker tasks, with [`RecordingHooks`] that observe
    /// (`HookRole::ObserveOnly`).
    Hooked,
}

/// A pool of `handlers` in `lanes` lanes (worker-i in lane i % lanes),
/// run as `mode` says.
pub(crate) fn lane_pool<R: Runtime + Default + Clone>(
    handlers: Vec<Arc<dyn WorkerHandler>>,
    options: WorkerPoolOptions,
    lanes: usize,
    mode: LaneMode,
) -> WorkerPool<R> {
    let lanes = NonZeroUsize::new(lanes).unwrap_or(NonZeroUsize::MIN);
    let driver = DriverOptions::default().lanes(lanes);
    let (driver, hooks) = match mode {
        LaneMode::PoolTasks => (driver, None),
        LaneMode::CallerTask => (driver.execution(ExecutionMode::CallerTask), None),
        LaneMode::Hooked => (
            driver.hooks(HookRole::ObserveOnly),
            Some(Arc::new(RecordingHooks::default()) as Arc<dyn CircuitBreakerHooks>),
        ),
    };
    let config = PoolConfig::new(options);
    match WorkerPool::with_driver_options(R::default(), handlers, config, hooks, driver) {
        Ok(pool) => pool,
        Err(error) => panic!("valid pool options refused: {error}"),
    }
}

/// Submits an echo request `id` and checks that `worker` served it.
pub(crate) async fn assert_served_by<R: Runtime>(pool: &WorkerPool<R>, id: &str, worker: &str) {
    let served = pool.submit(request(id, "echo")).await;
    assert_eq!(
        served.as_ref().map(|r| r.worker_id.as_str()).ok(),
        Some(worker),
        "{served:?}"
    );
}

pub(crate) fn worker_error(result: &Result<WorkerResponse, WorkerPoolError>) -> WorkerErrorCode {
    match result {
        Err(WorkerPoolError::Worker(error)) => error.code,
        other => panic!("expected a worker error, got {other:?}"),
    }
}
