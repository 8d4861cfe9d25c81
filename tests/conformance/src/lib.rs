//! The cross-adapter conformance suite: one set of behaviour scenarios,
//! written once against [`foreman_driver::Runtime`], run against every
//! adapter (`foreman-tokio`, `foreman-async-std`, `foreman-smol`).
//!
//! An adapter test file implements [`Target`] (how to run an async body on
//! its runtime) and invokes [`conformance_suite!`](crate::conformance_suite),
//! which makes one `#[test]` per scenario:
//!
//! ```text
//! struct Smol;
//! impl foreman_conformance::Target for Smol {
//!     type Runtime = foreman_smol::SmolRuntime;
//!     fn block_on(body: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>) {
//!         smol::block_on(body);
//!     }
//! }
//! foreman_conformance::conformance_suite!(Smol);
//! ```
//!
//! The scenarios are the reference module's seven tests and at least one
//! test per defect of the reference (`docs/COMPATIBILITY.md` maps each
//! defect to its tests: bad configuration, panics, hooks, timeouts,
//! cancellation on drop, restart, graceful shutdown and drain, probes,
//! payload size, health never blocks, queue time), plus a mixed-load
//! scenario checking that every request gets exactly one answer.
//!
//! Timing rules, so the suite is exact on runtimes without virtual time
//! (async-std, smol) and on tokio's paused clock alike: every wait is on a
//! condition ([`wait_until`], a gate the test opens, a hanging future cut
//! off by a deadline of a few ms); a test that needs a deadline to pass
//! asserts only the outcome and ordering, never wall time. Each scenario
//! runs under a 30 s watchdog of the runtime's clock, so a hang fails
//! instead of blocking the test run.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::task::Poll;
use std::time::Duration;

use foreman_driver::{
    async_trait, CircuitBreakerHooks, DriverOptions, ExecutionMode, HealthCause, PoolConfig,
    Runtime, WorkerErrorCode, WorkerHandler, WorkerHealth, WorkerHealthStatus, WorkerOperation,
    WorkerPool, WorkerPoolError, WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
    WorkerResponse, WorkerResult, WorkerSecurityPolicy,
};
use futures::future::{self, Either};
use futures::FutureExt;
use serde_json::{json, Value};

mod observability;

pub use observability::{metrics_count_each_outcome_and_follow_the_queues, Reading, Readings};

/// An adapter under test: its runtime type and how to run an async body on it.
pub trait Target: 'static {
    /// The adapter's runtime (`foreman_tokio::TokioRuntime`, …).
    type Runtime: Runtime + Default + Clone;

    /// Runs `body` to completion on the runtime, from a plain `#[test]`.
    fn block_on(body: Pin<Box<dyn Future<Output = ()> + '_>>);
}

/// Defines one `#[test]` per conformance scenario for a [`Target`] type.
#[macro_export]
macro_rules! conformance_suite {
    ($target:ty) => {
        $crate::conformance_suite!(@each $target;
            worker_protocol_roundtrip,
            routes_requests_across_worker_pool,
            enforces_queue_backpressure_limits,
            marks_worker_unavailable_after_failures_and_recovers_on_restart,
            returns_timeout_for_slow_worker,
            rejects_request_when_security_contract_is_violated,
            handles_parallel_submissions_without_deadlock,
            bad_configuration_is_an_error_from_the_constructor,
            a_panicking_handler_leaves_its_worker_serving,
            accept_and_reject_hooks_fire_once_after_the_fact,
            a_timeout_frees_the_worker_and_counts_once,
            dropping_submit_cancels_the_request,
            dropping_submit_while_hooks_run_cancels_the_request,
            restart_keeps_the_queued_requests,
            shutdown_drains_queued_and_running_requests,
            probes_cannot_whitewash_failures_and_cannot_hang,
            a_huge_payload_is_refused_without_serialising_it,
            health_never_blocks_on_a_busy_worker,
            a_slow_worker_does_not_hold_the_queue,
            degraded_workers_get_less_work,
            with_a_circuit_breaker_requests_stay_put,
            elapsed_includes_queue_time,
            every_request_answered_once,
            every_request_answered_once_in_two_lanes,
            queued_requests_run_by_the_finishing_task,
            queued_requests_run_on_the_worker_task,
            lanes_behave_as_one_pool,
            a_caller_that_stalls_after_one_poll_does_not_hold_its_worker,
            a_slow_first_poll_does_not_delay_another_callers_answer,
            slow_and_fast_workers_share_the_queue_as_in_one_lane,
            allow_request_may_call_the_pool,
            on_request_accepted_may_call_the_pool,
            every_other_hook_may_call_the_pool,
            on_request_accepted_may_shut_the_pool_down,
            handlers_and_probes_may_call_the_pool,
            allow_request_is_asked_in_turn_until_one_allows,
            a_moved_request_goes_only_where_the_breaker_allows,
            a_moved_request_allowed_nowhere_is_answered,
            a_breaker_over_two_lanes_counts_each_request_once,
            commands_after_shutdown_answer_shutting_down,
            metrics_count_each_outcome_and_follow_the_queues,
        );
    };
    (@each $target:ty; $($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            $crate::run::<$target, _>($crate::$name);
        }
    )*};
}

/// Runs one scenario on `T`'s runtime under the watchdog.
pub fn run<T: Target, F: Future<Output = ()>>(scenario: fn(T::Runtime) -> F) {
    T::block_on(Box::pin(async move {
        // Made inside the runtime: a runtime may need its context for timers.
        let rt = T::Runtime::default();
        let watchdog = sleep(&rt, Duration::from_secs(30));
        let body = scenario(rt.clone());
        futures::pin_mut!(body, watchdog);
        if let Either::Right(((), _)) = future::select(body, watchdog).await {
            panic!("scenario still running after 30 s of runtime time");
        }
    }));
}

// ----- helpers ----------------------------------------------------------------

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
async fn pending_after_one_poll<F: Future + Unpin>(future: &mut F) -> bool {
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
    rt: R,
    calls: AtomicUsize,
    dropped: AtomicUsize,
    probes: AtomicUsize,
    gate: (async_channel::Sender<()>, async_channel::Receiver<()>),
    probe_mode: Mutex<ProbeMode>,
    fail_all: AtomicBool,
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
    log: Mutex<Vec<String>>,
    open: Mutex<Vec<String>>,
    /// (request id, worker id) pairs `allow_request` refuses.
    refuse: Mutex<Vec<(String, String)>>,
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

    fn push(&self, entry: String) {
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

fn options() -> WorkerPoolOptions {
    WorkerPoolOptions {
        queue_capacity: 4,
        health_probe_interval: Duration::from_secs(60),
        default_request_timeout: Some(Duration::from_secs(10)),
        ..WorkerPoolOptions::default()
    }
}

fn handlers_of<R: Runtime + Clone>(workers: &[Arc<TestWorker<R>>]) -> Vec<Arc<dyn WorkerHandler>> {
    workers
        .iter()
        .map(|w| Arc::clone(w) as Arc<dyn WorkerHandler>)
        .collect()
}

fn pool_of<R: Runtime + Default + Clone>(
    workers: &[Arc<TestWorker<R>>],
    options: WorkerPoolOptions,
) -> WorkerPool<R> {
    match WorkerPool::new_inprocess(handlers_of(workers), options, None) {
        Ok(pool) => pool,
        Err(error) => panic!("valid pool options refused: {error}"),
    }
}

fn pool_with<R: Runtime + Default + Clone>(
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

fn pool_in_lanes<R: Runtime + Default + Clone>(
    workers: &[Arc<TestWorker<R>>],
    options: WorkerPoolOptions,
    lanes: usize,
) -> WorkerPool<R> {
    let lanes = NonZeroUsize::new(lanes).unwrap_or(NonZeroUsize::MIN);
    match WorkerPool::with_lanes(
        R::default(),
        handlers_of(workers),
        PoolConfig::new(options),
        None,
        lanes,
    ) {
        Ok(pool) => pool,
        Err(error) => panic!("valid pool options refused: {error}"),
    }
}

/// Submits an echo request `id` and checks that `worker` served it.
async fn assert_served_by<R: Runtime>(pool: &WorkerPool<R>, id: &str, worker: &str) {
    let served = pool.submit(request(id, "echo")).await;
    assert_eq!(
        served.as_ref().map(|r| r.worker_id.as_str()).ok(),
        Some(worker),
        "{served:?}"
    );
}

fn worker_error(result: &Result<WorkerResponse, WorkerPoolError>) -> WorkerErrorCode {
    match result {
        Err(WorkerPoolError::Worker(error)) => error.code,
        other => panic!("expected a worker error, got {other:?}"),
    }
}

// ----- the reference module's seven scenarios, with its configurations -----

/// Reference: a request survives a JSON round trip.
pub async fn worker_protocol_roundtrip<R: Runtime + Default + Clone>(_rt: R) {
    let original = request("req-1", "node-1");
    let text = serde_json::to_string(&original).unwrap_or_else(|e| panic!("{e}"));
    let back: WorkerRequest = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, original);
}

/// Reference: two echo workers answer, and both are schedulable.
pub async fn routes_requests_across_worker_pool<R: Runtime + Default + Clone>(rt: R) {
    let workers = [TestWorker::new(&rt), TestWorker::new(&rt)];
    let pool = pool_of(
        &workers,
        WorkerPoolOptions {
            queue_capacity: 4,
            health_probe_interval: Duration::from_millis(10),
            ..WorkerPoolOptions::default()
        },
    );
    let response = pool.submit(request("req-2", "node-1")).await;
    let response = response.unwrap_or_else(|e| panic!("request should succeed: {e}"));
    assert_eq!(response.request_id, "req-2");
    assert_eq!(
        response.result,
        WorkerResult::Success {
            output: json!({"node": "node-1"})
        }
    );
    let health = pool.health_snapshot().await;
    assert_eq!(health.len(), 2);
    assert!(health.iter().all(|entry| entry.is_schedulable()));
    pool.shutdown().await;
}

/// Reference: with one busy worker and a queue of one, a third request is
/// refused `QueueFull` (the busy handler waits on a gate, not on a timer).
pub async fn enforces_queue_backpressure_limits<R: Runtime + Default + Clone>(rt: R) {
    let worker = TestWorker::new(&rt);
    let pool = pool_of(
        &[Arc::clone(&worker)],
        WorkerPoolOptions {
            queue_capacity: 1,
            health_probe_interval: Duration::from_millis(100),
            default_request_timeout: Some(Duration::from_secs(1)),
            ..WorkerPoolOptions::default()
        },
    );
    let first = pool.submit(request("q1", "gate"));
    let second = pool.submit(request("q2", "gate"));
    let third = async {
        let refused = pool.submit(request("q3", "gate")).await;
        worker.open_gate(2);
        refused
    };
    let (first, second, third) = futures::join!(first, second, third);
    let results = [&first, &second, &third];
    let failures = results
        .iter()
        .filter(|result| matches!(result, Err(WorkerPoolError::QueueFull)))
        .count();
    let successes = results.iter().filter(|result| result.is_ok()).count();
    assert_eq!((failures, successes), (1, 2), "{results:?}");
    assert!(matches!(third, Err(WorkerPoolError::QueueFull)));
    pool.shutdown().await;
}

/// Reference: one failure (threshold 1) makes the worker Unavailable; a
/// restart brings it back and it serves again.
pub async fn marks_worker_unavailable_after_failures_and_recovers_on_restart<
    R: Runtime + Default + Clone,
>(
    rt: R,
) {
    let worker = TestWorker::new(&rt);
    worker.fail_all.store(true, Ordering::SeqCst);
    let pool = pool_of(
        &[Arc::clone(&worker)],
        WorkerPoolOptions {
            queue_capacity: 2,
            unavailable_after_failures: 1,
            health_probe_interval: Duration::from_millis(15),
            default_request_timeout: Some(Duration::from_secs(1)),
            ..WorkerPoolOptions::default()
        },
    );
    let error = pool.submit(request("down", "echo")).await;
    assert!(
        matches!(error, Err(WorkerPoolError::Worker(_))),
        "{error:?}"
    );
    let health = pool.health_snapshot().await;
    assert_eq!(health[0].status, WorkerHealthStatus::Unavailable);

    worker.fail_all.store(false, Ordering::SeqCst);
    let restarted = pool.restart_worker("worker-0").await;
    assert!(restarted.is_ok(), "{restarted:?}");
    wait_until(&rt, "the restarted worker is schedulable", || {
        pool.stats().workers[0].status != WorkerHealthStatus::Unavailable
    })
    .await;
    let response = pool.submit(request("up", "echo")).await;
    let response = response.unwrap_or_else(|e| panic!("served after restart: {e}"));
    assert_eq!(
        response.result,
        WorkerResult::Success {
            output: json!({"node": "echo"})
        }
    );
    pool.shutdown().await;
}

/// Reference: a handler that outlives the request's 5 ms budget answers
/// `Timeout` (it hangs, so only the deadline can end it).
pub async fn returns_timeout_for_slow_worker<R: Runtime + Default + Clone>(rt: R) {
    let worker = TestWorker::new(&rt);
    let pool = pool_of(
        &[Arc::clone(&worker)],
        WorkerPoolOptions {
            queue_capacity: 2,
            default_request_timeout: Some(Duration::from_millis(5)),
            ..WorkerPoolOptions::default()
        },
    );
    let error = pool.submit(request("timeout", "hang")).await;
    assert!(matches!(error, Err(WorkerPoolError::Timeout)), "{error:?}");
    pool.shutdown().await;
}

/// Reference: a request over the security policy's limits is refused, with
/// the reference's configuration (a 10 ms ceiling on what a request asks
/// for beside the default 30 s default timeout, which still applies to
/// requests that ask for none).
pub async fn rejects_request_when_security_contract_is_violated<R: Runtime + Default + Clone>(
    rt: R,
) {
    let worker = TestWorker::new(&rt);
    let pool = pool_of(
        &[Arc::clone(&worker)],
        WorkerPoolOptions {
            security_policy: WorkerSecurityPolicy {
                max_request_timeout_ms: 10,
                max_request_payload_bytes: 256,
                max_identifier_length: 12,
            },
            ..WorkerPoolOptions::default()
        },
    );
    let mut too_large = request("req-too-large", "echo");
    too_large.timeout_ms = Some(99);
    too_large.operation = WorkerOperation::Tool {
        tool: "echo".to_string(),
        input: json!({"payload": "x".repeat(1024)}),
        scoped_input: json!({"input": {}}),
    };
    let error = pool.submit(too_large).await;
    assert!(
        matches!(error, Err(WorkerPoolError::InvalidRequest { .. })),
        "{error:?}"
    );
    assert_eq!(worker.calls(), 0);
    let served = pool.submit(request("small", "echo")).await;
    assert!(served.is_ok(), "{served:?}");
    pool.shutdown().await;
}

/// Reference: 32 submits from spawned tasks all succeed (a deadlock trips
/// the watchdog).
pub async fn handles_parallel_submissions_without_deadlock<R: Runtime + Default + Clone>(rt: R) {
    let workers = [TestWorker::new(&rt), TestWorker::new(&rt)];
    let pool = Arc::new(pool_of(
        &workers,
        WorkerPoolOptions {
            queue_capacity: 32,
            health_probe_interval: Duration::from_millis(5),
            default_request_timeout: Some(Duration::from_secs(1)),
            ..WorkerPoolOptions::default()
        },
    ));
    let tasks: Vec<_> = (0..32)
        .map(|idx| {
            let pool = Arc::clone(&pool);
            spawn(&rt, async move {
                pool.submit(request(&format!("parallel-{idx}"), "echo"))
                    .await
            })
        })
        .collect();
    for result in future::join_all(tasks).await {
        assert!(result.is_ok(), "submit should succeed: {result:?}");
    }
    pool.shutdown().await;
}

// ----- one scenario per defect of the reference ---------------------------------

/// Bad configuration is a clear error from the constructor.
pub async fn bad_configuration_is_an_error_from_the_constructor<R: Runtime + Default + Clone>(
    rt: R,
) {
    let handlers = || vec![TestWorker::new(&rt) as Arc<dyn WorkerHandler>];
    let zero_queue = WorkerPoolOptions {
        queue_capacity: 0,
        ..options()
    };
    match WorkerPool::<R>::new_inprocess(handlers(), zero_queue, None) {
        Err(WorkerPoolError::InvalidRequest { reason }) => {
            assert!(reason.contains("queue_capacity"), "{reason}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let zero_probe = WorkerPoolOptions {
        health_probe_interval: Duration::ZERO,
        ..options()
    };
    match WorkerPool::<R>::new_inprocess(handlers(), zero_probe, None) {
        Err(WorkerPoolError::InvalidRequest { reason }) => {
            assert!(reason.contains("health_probe_interval"), "{reason}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(matches!(
        WorkerPool::<R>::new_inprocess(Vec::new(), options(), None),
        Err(WorkerPoolError::NoHealthyWorker)
    ));
}

/// A panicking handler is answered `ExecutionFailed`, counts one
/// failure, and its worker keeps serving (the request queued behind it too).
pub async fn a_panicking_handler_leaves_its_worker_serving<R: Runtime + Default + Clone>(rt: R) {
    let worker = TestWorker::new(&rt);
    let pool = pool_of(&[Arc::clone(&worker)], options());
    let (panicked, queued) = futures::join!(
        pool.submit(request("boom", "panic")),
        pool.submit(request("after", "echo")),
    );
    assert_eq!(worker_error(&panicked), WorkerErrorCode::ExecutionFailed);
    assert!(format!("{panicked:?}").contains("panicked"));
    let queued = queued.unwrap_or_else(|e| panic!("queued request survives: {e}"));
    assert_eq!(queued.worker_id, "worker-0");
    let stats = pool.stats();
    assert_eq!((stats.counters.failed, stats.counters.succeeded), (1, 1));
    let _ = pool.submit(request("boom2", "panic")).await;
    let health = pool.health_snapshot().await;
    assert_eq!(health[0].consecutive_failures, 1);
    assert_eq!(health[0].status, WorkerHealthStatus::Degraded);
    assert!(pool.submit(request("again", "echo")).await.is_ok());
    pool.shutdown().await;
}

/// Hooks fire once per event, after the fact; a request is never
/// both accepted and rejected by one worker.
pub async fn accept_and_reject_hooks_fire_once_after_the_fact<R: Runtime + Default + Clone>(rt: R) {
    let hooks = Arc::new(RecordingHooks::default());
    hooks
        .open
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push("worker-0".to_string());
    let workers = [TestWorker::new(&rt), TestWorker::new(&rt)];
    let handlers = workers
        .iter()
        .map(|w| Arc::clone(w) as Arc<dyn WorkerHandler>)
        .collect();
    let pool = WorkerPool::<R>::new_inprocess(
        handlers,
        WorkerPoolOptions {
            queue_capacity: 1,
            ..options()
        },
        Some(Arc::clone(&hooks) as Arc<dyn CircuitBreakerHooks>),
    )
    .unwrap_or_else(|e| panic!("valid pool: {e}"));
    let response = pool.submit(request("r1", "echo")).await;
    let response = response.unwrap_or_else(|e| panic!("worker-1 serves: {e}"));
    assert_eq!(response.worker_id, "worker-1");
    assert_eq!(
        hooks.log(),
        [
            "rejected r1 worker-0 CircuitOpen",
            "accepted r1 worker-1",
            "success r1 worker-1",
        ]
    );
    hooks
        .log
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    let gate1 = pool.submit(request("g1", "gate"));
    let gate2 = pool.submit(request("g2", "gate"));
    let full = async {
        let refused = pool.submit(request("full", "echo")).await;
        workers[1].open_gate(2);
        refused
    };
    let (g1, g2, refused) = futures::join!(gate1, gate2, full);
    assert!(g1.is_ok() && g2.is_ok(), "{g1:?} {g2:?}");
    assert!(matches!(refused, Err(WorkerPoolError::QueueFull)));
    let log = hooks.log();
    assert_eq!(
        hooks.about("full"),
        [
            "rejected full worker-0 CircuitOpen",
            "rejected full - QueueFull"
        ]
    );
    let g1_accepted = hooks.about("g1");
    assert_eq!(
        g1_accepted
            .iter()
            .filter(|l| l.starts_with("accepted"))
            .count(),
        1
    );
    assert!(!log.iter().any(|line| line.starts_with("accepted full")));
    assert_eq!(log.iter().filter(|l| l.starts_with("success")).count(), 2);
    pool.shutdown().await;
}

/// A timeout counts as one failure and drops the handler, so the
/// worker is free at once.
pub async fn a_timeout_frees_the_worker_and_counts_once<R: Runtime + Default + Clone>(rt: R) {
    let worker = TestWorker::new(&rt);
    let pool = pool_of(&[Arc::clone(&worker)], options());
    let mut hang = request("hang", "hang");
    hang.timeout_ms = Some(5);
    let result = pool.submit(hang).await;
    assert!(
        matches!(result, Err(WorkerPoolError::Timeout)),
        "{result:?}"
    );
    // The worker's task drops the handler future.
    wait_until(&rt, "the handler future dropped", || worker.dropped() == 1).await;
    let health = pool.health_snapshot().await;
    assert_eq!(health[0].status, WorkerHealthStatus::Degraded);
    assert_eq!(health[0].consecutive_failures, 1);
    let next = pool.submit(request("next", "echo")).await;
    let next = next.unwrap_or_else(|e| panic!("the worker is free: {e}"));
    assert_eq!(next.worker_id, "worker-0");
    pool.shutdown().await;
}

/// Dropping the submit future cancels the request, running or queued.
pub async fn dropping_submit_cancels_the_request<R: Runtime + Default + Clone>(rt: R) {
    let worker = TestWorker::new(&rt);
    let pool = pool_of(&[Arc::clone(&worker)], options());
    {
        let mut running = Box::pin(pool.submit(request("run", "hang")));
        assert!(pending_after_one_poll(&mut running).await);
        assert_eq!(pool.stats().running, 1);
        wait_until(&rt, "the handler started", || worker.calls() == 1).await;
    }
    // The request is cancelled at once; its worker's task drops the future.
    assert_eq!(pool.stats().running, 0);
    wait_until(&rt, "the handler future dropped", || worker.dropped() == 1).await;
    assert_eq!(pool.stats().counters.cancelled_running, 1);
    let mut first = Box::pin(pool.submit(request("first", "gate")));
    assert!(pending_after_one_poll(&mut first).await);
    {
        let mut queued = Box::pin(pool.submit(request("queued", "echo")));
        assert!(pending_after_one_poll(&mut queued).await);
        assert_eq!(pool.stats().queued, 1);
    }
    assert_eq!(pool.stats().queued, 0);
    assert_eq!(pool.stats().counters.cancelled_queued, 1);
    worker.open_gate(1);
    assert!(first.await.is_ok());
    assert_eq!(worker.calls(), 2, "the cancelled queued request never ran");
    pool.shutdown().await;
}

/// Hooks whose accept hook never returns for the request `stuck`.
struct StuckHooks;

#[async_trait]
impl CircuitBreakerHooks for StuckHooks {
    async fn on_request_accepted(&self, _worker_id: &str, request: &WorkerRequest) {
        if request.request_id == "stuck" {
            future::pending::<()>().await;
        }
    }
}

/// With hooks: dropping the `submit` future while its accept hook
/// runs cancels the request too: its handler, started on the worker and
/// running in a task of its own, is dropped, the worker is free, and
/// shutdown does not wait for it.
pub async fn dropping_submit_while_hooks_run_cancels_the_request<R: Runtime + Default + Clone>(
    rt: R,
) {
    let worker = TestWorker::new(&rt);
    let pool = match WorkerPool::<R>::new_inprocess(
        vec![Arc::clone(&worker) as Arc<dyn WorkerHandler>],
        options(),
        Some(Arc::new(StuckHooks) as Arc<dyn CircuitBreakerHooks>),
    ) {
        Ok(pool) => pool,
        Err(error) => panic!("valid pool options refused: {error}"),
    };
    {
        let mut stuck = Box::pin(pool.submit(request("stuck", "hang")));
        assert!(pending_after_one_poll(&mut stuck).await);
    }
    let counters = pool.stats().counters;
    assert_eq!(counters.cancelled_running, 1, "{counters:?}");
    let after = pool.submit(request("after", "echo")).await;
    assert!(after.is_ok(), "the worker is free: {after:?}");
    pool.shutdown().await;
    assert_eq!(
        worker.calls() - 1,
        worker.dropped(),
        "the stuck request's handler, if it ever ran, was dropped"
    );
}

/// `restart_worker` aborts the running handler with a clear,
/// retryable error and keeps the queued requests, which then run.
pub async fn restart_keeps_the_queued_requests<R: Runtime + Default + Clone>(rt: R) {
    let worker = TestWorker::new(&rt);
    let pool = pool_of(&[Arc::clone(&worker)], options());
    let running = pool.submit(request("running", "hang"));
    let queued = pool.submit(request("queued", "echo"));
    let restart = async {
        wait_until(&rt, "both requests accepted, the first one running", || {
            pool.stats().counters.accepted == 2 && worker.calls() == 1
        })
        .await;
        pool.restart_worker("worker-0").await
    };
    let (running, queued, restarted) = futures::join!(running, queued, restart);
    assert!(restarted.is_ok(), "{restarted:?}");
    match running {
        Err(WorkerPoolError::Worker(error)) => {
            assert_eq!(error.code, WorkerErrorCode::Cancelled);
            assert!(error.message.contains("restarted"), "{}", error.message);
            assert!(error.retryable);
        }
        other => panic!("expected a restart error, got {other:?}"),
    }
    let queued = queued.unwrap_or_else(|e| panic!("queued request runs after restart: {e}"));
    assert_eq!(queued.worker_id, "worker-0");
    wait_until(&rt, "the restarted handler dropped", || {
        worker.dropped() == 1
    })
    .await;
    assert!(matches!(
        pool.restart_worker("nope").await,
        Err(WorkerPoolError::NoHealthyWorker)
    ));
    pool.shutdown().await;
}

/// Shutdown is graceful (new submits get `ShuttingDown` at once,
/// queued and running requests finish, it returns after they did); with a
/// drain deadline the rest are answered `ShuttingDown`; afterwards every
/// worker is Unavailable.
pub async fn shutdown_drains_queued_and_running_requests<R: Runtime + Default + Clone>(rt: R) {
    let workers = [TestWorker::new(&rt), TestWorker::new(&rt)];
    let pool = pool_of(&workers, options());
    let running = pool.submit(request("running", "gate"));
    let queued = pool.submit(request("queued", "gate"));
    let queued2 = pool.submit(request("queued2", "gate"));
    let shutdown = async {
        wait_until(&rt, "accepted", || pool.stats().counters.accepted == 3).await;
        let mut stop = Box::pin(pool.shutdown());
        assert!(pending_after_one_poll(&mut stop).await);
        let late = pool.submit(request("late", "echo")).now_or_never();
        assert!(matches!(late, Some(Err(WorkerPoolError::ShuttingDown))));
        for worker in &workers {
            worker.open_gate(2);
        }
        stop.await;
    };
    let (a, b, c, ()) = futures::join!(running, queued, queued2, shutdown);
    assert!(a.is_ok() && b.is_ok() && c.is_ok(), "{a:?} {b:?} {c:?}");
    let health = pool.health_snapshot().await;
    assert!(health
        .iter()
        .all(|h| h.status == WorkerHealthStatus::Unavailable));

    let worker = TestWorker::new(&rt);
    let pool = pool_of(&[Arc::clone(&worker)], options());
    let hanging = pool.submit(request("hang", "hang"));
    let queued = pool.submit(request("queued", "echo"));
    let stop = async {
        wait_until(&rt, "accepted", || pool.stats().counters.accepted == 2).await;
        pool.shutdown_with_deadline(Duration::from_millis(5)).await;
    };
    let (hanging, queued, ()) = futures::join!(hanging, queued, stop);
    assert!(matches!(hanging, Err(WorkerPoolError::ShuttingDown)));
    assert!(matches!(queued, Err(WorkerPoolError::ShuttingDown)));
    assert_eq!(
        worker.dropped(),
        1,
        "shutdown returned after the handler ended"
    );
    assert!(pool
        .health_snapshot()
        .await
        .iter()
        .all(|h| h.status == WorkerHealthStatus::Unavailable));
}

/// A Healthy probe cannot erase the failures of a worker that
/// fails every request (one trial per probe), and a hanging probe times
/// out without stopping probing.
pub async fn probes_cannot_whitewash_failures_and_cannot_hang<R: Runtime + Default + Clone>(rt: R) {
    let worker = TestWorker::new(&rt);
    worker.fail_all.store(true, Ordering::SeqCst);
    let pool = pool_of(
        &[Arc::clone(&worker)],
        WorkerPoolOptions {
            unavailable_after_failures: 2,
            health_probe_interval: Duration::from_millis(10),
            ..options()
        },
    );
    for id in ["f1", "f2"] {
        let _ = pool.submit(request(id, "echo")).await;
    }
    // Each failure that ejects the worker is one transition to Unavailable
    // in the history. A probe may give the worker its trial at any moment
    // (the interval is short and time is real), so the history, not the
    // current status, is what shows each ejection.
    let ejections = || {
        pool.health_history()
            .iter()
            .filter(|t| t.cause == HealthCause::Failure && t.to == WorkerHealthStatus::Unavailable)
            .count()
    };
    assert_eq!(ejections(), 1, "the second failure ejects the worker");
    for round in 0..3 {
        let probes = worker.probes();
        wait_until(&rt, "a probe", || worker.probes() > probes).await;
        wait_until(&rt, "the probe applied", || {
            pool.stats().workers[0].status != WorkerHealthStatus::Unavailable
        })
        .await;
        let trial = pool.submit(request(&format!("trial{round}"), "echo")).await;
        assert!(trial.is_err());
        assert_eq!(ejections(), round + 2, "one failed trial ejects again");
        // A probe since the trial leaves the worker one failure short of
        // ejection (threshold - 1 = 1), never with a clean slate.
        assert!(
            pool.health_snapshot().await[0].consecutive_failures >= 1,
            "a probe never erases the failures"
        );
    }
    pool.shutdown().await;

    let hanging = TestWorker::new(&rt);
    *hanging
        .probe_mode
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = ProbeMode::Hang;
    let pool = pool_of(
        &[Arc::clone(&hanging)],
        WorkerPoolOptions {
            health_probe_interval: Duration::from_millis(10),
            ..options()
        },
    );
    wait_until(&rt, "probes keep being sent", || {
        pool.stats().counters.probes_timed_out >= 3
    })
    .await;
    assert_eq!(
        pool.health_snapshot().await[0].status,
        WorkerHealthStatus::Unavailable
    );
    *hanging
        .probe_mode
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = ProbeMode::Healthy;
    wait_until(&rt, "a later probe recovers the worker", || {
        pool.stats().workers[0].status == WorkerHealthStatus::Healthy
    })
    .await;
    pool.shutdown().await;
}

/// A 100 MB payload is refused `InvalidRequest` without running.
pub async fn a_huge_payload_is_refused_without_serialising_it<R: Runtime + Default + Clone>(rt: R) {
    let worker = TestWorker::new(&rt);
    let pool = pool_of(&[Arc::clone(&worker)], options());
    let mut huge = request("huge", "echo");
    huge.operation = WorkerOperation::Llm {
        model: "m".into(),
        prompt: "x".repeat(100 * 1024 * 1024),
        scoped_input: json!({}),
    };
    let result = pool.submit(huge).await;
    assert!(
        matches!(result, Err(WorkerPoolError::InvalidRequest { .. })),
        "{result:?}"
    );
    assert_eq!(worker.calls(), 0);
    pool.shutdown().await;
}

/// With 64 workers all busy, health and stats answer at once
/// and a 65th request queues without waiting.
pub async fn health_never_blocks_on_a_busy_worker<R: Runtime + Default + Clone>(rt: R) {
    let workers: Vec<_> = (0..64).map(|_| TestWorker::new(&rt)).collect();
    let pool = pool_of(&workers, options());
    let mut busy = Vec::new();
    for i in 0..64 {
        let mut submit = Box::pin(pool.submit(request(&format!("b{i}"), "gate")));
        assert!(pending_after_one_poll(&mut submit).await);
        busy.push(submit);
    }
    assert_eq!(pool.stats().running, 64);
    let health = pool.health_snapshot().now_or_never();
    assert_eq!(health.map(|h| h.len()), Some(64), "health never waits");
    let mut extra = Box::pin(pool.submit(request("extra", "echo")));
    assert!(pending_after_one_poll(&mut extra).await);
    assert_eq!(pool.stats().queued, 1);
    for worker in &workers {
        worker.open_gate(1);
    }
    for result in future::join_all(busy).await {
        assert!(result.is_ok(), "{result:?}");
    }
    assert!(extra.await.is_ok());
    pool.shutdown().await;
}

/// A slow worker does not keep its share of the queue. Both
/// workers are busy (gated); two requests queue, one on each. When the
/// fast worker frees up it runs both, oldest first — the one queued on the
/// slow worker too — while the slow worker is still stuck.
pub async fn a_slow_worker_does_not_hold_the_queue<R: Runtime + Default + Clone>(rt: R) {
    let slow = TestWorker::new(&rt);
    let fast = TestWorker::new(&rt);
    let pool = pool_of(&[Arc::clone(&slow), Arc::clone(&fast)], options());
    let control = async {
        wait_until(&rt, "two running and two queued", || {
            let stats = pool.stats();
            (stats.running, stats.queued) == (2, 2)
        })
        .await;
        fast.open_gate(1);
        wait_until(&rt, "the fast worker ran both queued requests", || {
            pool.stats().counters.succeeded == 3
        })
        .await;
        let stats = pool.stats();
        // The slow worker still runs its first request: nothing waited for it.
        assert_eq!((stats.running, stats.queued), (1, 0), "{stats:?}");
        assert_eq!(slow.calls(), 1);
        assert_eq!(stats.counters.reassigned, 1, "{:?}", stats.counters);
        slow.open_gate(1);
    };
    let (stuck, freed, first, second, ()) = futures::join!(
        pool.submit(request("stuck", "gate")),
        pool.submit(request("freed", "gate")),
        pool.submit(request("first", "echo")),
        pool.submit(request("second", "echo")),
        control,
    );
    let worker_of = |result: Result<WorkerResponse, WorkerPoolError>| match result {
        Ok(response) => response.worker_id,
        Err(error) => panic!("request failed: {error}"),
    };
    assert_eq!(worker_of(stuck), "worker-0");
    assert_eq!(worker_of(freed), "worker-1");
    assert_eq!(worker_of(first), "worker-1");
    assert_eq!(worker_of(second), "worker-1");
    pool.shutdown().await;
}

/// Degraded workers get less work. After one failure (of three
/// allowed) worker-0 is Degraded: one request at a time goes to the idle
/// Healthy workers only, where plain round robin would give it every third.
pub async fn degraded_workers_get_less_work<R: Runtime + Default + Clone>(rt: R) {
    let workers = [
        TestWorker::new(&rt),
        TestWorker::new(&rt),
        TestWorker::new(&rt),
    ];
    let pool = pool_of(&workers, options());
    let failed = pool.submit(request("fails", "fail")).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(pool.stats().workers[0].status, WorkerHealthStatus::Degraded);
    for i in 0..6 {
        let served = pool.submit(request(&format!("r{i}"), "echo")).await;
        let served = served.unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(served.worker_id, "worker-0", "a Degraded worker was chosen");
    }
    assert_eq!(workers[0].calls(), 1);
    pool.shutdown().await;
}

/// With a circuit breaker (hooks), a request runs on the worker whose
/// `allow_request` approved it and that fired `on_request_accepted`: the
/// free worker does not take the one queued on the busy worker.
pub async fn with_a_circuit_breaker_requests_stay_put<R: Runtime + Default + Clone>(rt: R) {
    let busy = TestWorker::new(&rt);
    let freed = TestWorker::new(&rt);
    let hooks = Arc::new(RecordingHooks::default());
    let pool = match WorkerPool::<R>::new_inprocess(
        handlers_of(&[Arc::clone(&busy), Arc::clone(&freed)]),
        options(),
        Some(Arc::clone(&hooks) as Arc<dyn CircuitBreakerHooks>),
    ) {
        Ok(pool) => pool,
        Err(error) => panic!("valid pool options refused: {error}"),
    };
    let control = async {
        wait_until(&rt, "two running and one queued", || {
            let stats = pool.stats();
            (stats.running, stats.queued) == (2, 1)
        })
        .await;
        freed.open_gate(1);
        wait_until(&rt, "the freed worker's request answered", || {
            pool.stats().counters.succeeded == 1
        })
        .await;
        let stats = pool.stats();
        assert_eq!((stats.running, stats.queued), (1, 1), "{stats:?}");
        busy.open_gate(1);
    };
    let (first, _, queued, ()) = futures::join!(
        pool.submit(request("busy", "gate")),
        pool.submit(request("freed", "gate")),
        pool.submit(request("queued", "echo")),
        control,
    );
    assert!(first.is_ok(), "{first:?}");
    let queued = queued.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(queued.worker_id, "worker-0");
    assert!(
        hooks
            .log()
            .contains(&"accepted queued worker-0".to_string()),
        "{:?}",
        hooks.log()
    );
    assert_eq!(pool.stats().counters.reassigned, 0);
    pool.shutdown().await;
}

/// `elapsed_ms` includes the time spent queued, and
/// `submit_timed`'s timings say which is which. The second request queues behind a
/// gated one while the test sleeps 20 ms, then sleeps 20 ms itself; only
/// lower bounds are asserted (timers never fire early).
pub async fn elapsed_includes_queue_time<R: Runtime + Default + Clone>(rt: R) {
    let worker = TestWorker::new(&rt);
    let pool = pool_of(&[Arc::clone(&worker)], options());
    let release = async {
        wait_until(&rt, "the second request queued", || {
            pool.stats().queued == 1
        })
        .await;
        sleep(&rt, Duration::from_millis(20)).await;
        worker.open_gate(1);
    };
    let (first, second, ()) = futures::join!(
        pool.submit_timed(request("first", "gate")),
        pool.submit_timed(request("second", "sleep:20")),
        release,
    );
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (first_times, second_times) = (first.timings, second.timings);
    assert!(first.result.is_ok(), "{first:?}");
    let second = second.result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first_times.queued, Duration::ZERO, "{first_times:?}");
    assert!(
        first_times.ran.is_some_and(|r| ms(r) >= 20),
        "{first_times:?}"
    );
    assert!(ms(second_times.queued) >= 20, "{second_times:?}");
    assert!(
        second_times.ran.is_some_and(|r| ms(r) >= 20),
        "{second_times:?}"
    );
    assert_eq!(
        second.elapsed_ms,
        ms(second_times.queued + second_times.ran.unwrap_or_default())
    );
    assert!(second.elapsed_ms >= 40);
    pool.shutdown().await;
}

/// No request is lost: 200 requests of every kind (success, failure,
/// panic, timeout, gate) from spawned callers, a restart and a caller that
/// gives up mid-way, then a graceful shutdown; every submit returns exactly
/// once and the core's counters account for every accepted request.
pub async fn every_request_answered_once<R: Runtime + Default + Clone>(rt: R) {
    answered_once(rt, 1).await;
}

/// [`every_request_answered_once`] with the workers spread over two lanes.
pub async fn every_request_answered_once_in_two_lanes<R: Runtime + Default + Clone>(rt: R) {
    answered_once(rt, 2).await;
}

async fn answered_once<R: Runtime + Default + Clone>(rt: R, lanes: usize) {
    let workers: Vec<_> = (0..4).map(|_| TestWorker::new(&rt)).collect();
    let pool = Arc::new(pool_in_lanes(
        &workers,
        WorkerPoolOptions {
            queue_capacity: 64,
            unavailable_after_failures: 1000,
            ..options()
        },
        lanes,
    ));
    let kinds = ["echo", "fail", "panic", "hang", "gate", "sleep:1"];
    let answered = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for i in 0..200usize {
        let (pool, answered) = (Arc::clone(&pool), Arc::clone(&answered));
        let kind = kinds[i % kinds.len()];
        callers.push(spawn(&rt, async move {
            let mut req = request(&format!("r{i}"), kind);
            if kind == "hang" {
                req.timeout_ms = Some(5);
            }
            let result = pool.submit(req).await;
            answered.fetch_add(1, Ordering::SeqCst);
            result
        }));
    }
    // One caller that gives up: it is cancelled, not lost.
    {
        let mut gone = Box::pin(pool.submit(request("gone", "hang")));
        let _ = pending_after_one_poll(&mut gone).await;
    }
    wait_until(&rt, "every caller submitted", || {
        let c = pool.stats().counters;
        c.submitted >= 201
    })
    .await;
    let _ = pool.restart_worker("worker-0").await;
    for worker in &workers {
        worker.open_gate(200);
    }
    let results = future::join_all(callers).await;
    assert_eq!(answered.load(Ordering::SeqCst), 200);
    assert_eq!(results.len(), 200);
    pool.shutdown().await;
    let c = pool.stats().counters;
    let refused = c.refused();
    assert_eq!(c.submitted, 201);
    assert_eq!(c.accepted + refused, c.submitted, "{c:?}");
    let ended = c.succeeded
        + c.failed
        + c.timed_out_queued
        + c.timed_out_running
        + c.cancelled_queued
        + c.cancelled_running
        + c.aborted_by_restart
        + c.aborted_by_shutdown
        + c.unroutable_after_removal;
    assert_eq!(
        ended, c.accepted,
        "every accepted request ended once: {c:?}"
    );
    let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
    assert_eq!(ok, c.succeeded, "{c:?}");
}

/// The finishing task runs the next queued request (the driver's claim
/// path): a claimed handler that has to wait is handed back to its own
/// caller and finishes there; a claimed handler that panics is one failure
/// and the next claimed one still runs; a handed-back handler is dropped
/// when its caller gives up or its deadline passes, and the worker is free
/// again at once. Each request's handler runs exactly once.
pub async fn queued_requests_run_by_the_finishing_task<R: Runtime + Default + Clone>(rt: R) {
    let caller_task = DriverOptions::default().execution(ExecutionMode::CallerTask);
    queued_requests_run_once_each(rt, caller_task).await;
}

/// The worker's task runs the queued requests (the default execution
/// mode): a queued handler that waits finishes on it; a queued handler that
/// panics is one failure and the request behind it still runs; a queued
/// handler is dropped when its caller gives up or its deadline passes, and
/// the worker is free again at once. Each request's handler runs exactly
/// once.
pub async fn queued_requests_run_on_the_worker_task<R: Runtime + Default + Clone>(rt: R) {
    queued_requests_run_once_each(rt, DriverOptions::default()).await;
}

/// The scenario of the two tests above, in either execution mode.
async fn queued_requests_run_once_each<R: Runtime + Default + Clone>(rt: R, driver: DriverOptions) {
    let worker = TestWorker::new(&rt);
    let pool = pool_with(&[Arc::clone(&worker)], options(), driver);
    let pool = &pool;
    let accepted = |n: u64| move || pool.stats().counters.accepted == n;

    // A claimed handler that waits is handed back and finishes.
    let first = pool.submit(request("first", "gate"));
    let waits = pool.submit_timed(request("waits", "sleep:5"));
    let open = async {
        wait_until(&rt, "two accepted", accepted(2)).await;
        worker.open_gate(1);
    };
    let (first, waits, ()) = futures::join!(first, waits, open);
    assert!(first.is_ok(), "{first:?}");
    let ran = waits.timings.ran;
    let waits = waits
        .result
        .unwrap_or_else(|e| panic!("handed-back handler finishes: {e}"));
    assert_eq!(
        waits.result,
        WorkerResult::Success {
            output: json!({"slept": 5})
        }
    );
    assert!(
        ran.is_some_and(|ran| ran >= Duration::from_millis(5)),
        "{ran:?}"
    );
    assert_eq!((worker.calls(), worker.dropped()), (2, 0));

    // A claimed panic is one failure; the request behind it still runs.
    let gate = pool.submit(request("gate", "gate"));
    let boom = pool.submit(request("boom", "panic"));
    let echo = pool.submit(request("echo", "echo"));
    let open = async {
        wait_until(&rt, "three more accepted", accepted(5)).await;
        worker.open_gate(1);
    };
    let (gate, boom, echo, ()) = futures::join!(gate, boom, echo, open);
    assert!(gate.is_ok(), "{gate:?}");
    assert_eq!(worker_error(&boom), WorkerErrorCode::ExecutionFailed);
    assert_eq!(echo.map(|r| r.worker_id).ok().as_deref(), Some("worker-0"));
    let counters = pool.stats().counters;
    assert_eq!((counters.succeeded, counters.failed), (4, 1));
    // (The panic unwound through the handler: its watch counts a drop.)
    assert_eq!((worker.calls(), worker.dropped()), (5, 1));

    // A handed-back handler is dropped when its caller gives up.
    let gate = pool.submit(request("gate2", "gate"));
    let mut hangs = Box::pin(pool.submit(request("hangs", "hang")));
    let open = async {
        wait_until(&rt, "two more accepted", accepted(7)).await;
        worker.open_gate(1);
        wait_until(&rt, "the hanging handler started", || worker.calls() == 7).await;
    };
    match future::select(Box::pin(future::join(gate, open)), hangs.as_mut()).await {
        Either::Left(((gate, ()), _)) => assert!(gate.is_ok(), "{gate:?}"),
        Either::Right((hung, _)) => panic!("a hanging handler answered: {hung:?}"),
    }
    drop(hangs);
    wait_until(&rt, "the hanging handler dropped", || worker.dropped() == 2).await;
    assert_eq!(pool.stats().counters.cancelled_running, 1);
    let free = pool.submit(request("free", "echo")).await;
    assert!(free.is_ok(), "the worker is free again: {free:?}");

    // A handed-back handler is dropped at its deadline.
    let gate = pool.submit(request("gate3", "gate"));
    let mut late = request("late", "hang");
    late.timeout_ms = Some(50);
    let late = pool.submit(late);
    let open = async {
        wait_until(&rt, "two more accepted", accepted(10)).await;
        worker.open_gate(1);
    };
    let (gate, late, ()) = futures::join!(gate, late, open);
    assert!(gate.is_ok(), "{gate:?}");
    assert!(matches!(late, Err(WorkerPoolError::Timeout)), "{late:?}");
    wait_until(&rt, "the late handler dropped", || worker.dropped() == 3).await;
    assert_eq!(pool.stats().counters.timed_out_running, 1);
    assert!(pool.submit(request("after", "echo")).await.is_ok());
    pool.shutdown().await;
}

/// A pool whose workers are spread over two lanes behaves as one pool:
/// worker order and ids, idle-first routing over every worker, a refusal
/// counted once, restart, add and remove by id, merged stats, shutdown.
pub async fn lanes_behave_as_one_pool<R: Runtime + Default + Clone>(rt: R) {
    let workers: Vec<_> = (0..4).map(|_| TestWorker::new(&rt)).collect();
    let pool = pool_in_lanes(
        &workers,
        WorkerPoolOptions {
            queue_capacity: 1,
            ..options()
        },
        2,
    );
    let ids = |health: Vec<WorkerHealth>| -> Vec<String> {
        health.into_iter().map(|h| h.worker_id).collect()
    };
    let expected: Vec<String> = (0..4).map(|i| format!("worker-{i}")).collect();
    assert_eq!(ids(pool.health_snapshot().await), expected);

    // Four gated requests take the four workers (idle first, whatever the
    // lane); four more queue one per worker; the ninth is refused, once.
    let running: Vec<_> = (0..4)
        .map(|i| pool.submit(request(&format!("run{i}"), "gate")))
        .collect();
    let queued: Vec<_> = (0..4)
        .map(|i| pool.submit(request(&format!("queued{i}"), "echo")))
        .collect();
    let control = async {
        wait_until(&rt, "eight accepted", || {
            pool.stats().counters.accepted == 8
        })
        .await;
        let stats = pool.stats();
        assert_eq!((stats.running, stats.queued), (4, 4), "{stats:?}");
        assert!(
            stats
                .workers
                .iter()
                .all(|w| w.running == 1 && w.queued == 1),
            "{stats:?}"
        );
        assert_eq!(
            stats
                .workers
                .iter()
                .map(|w| w.worker_id.clone())
                .collect::<Vec<_>>(),
            expected
        );
        let refused = pool.submit(request("ninth", "echo")).await;
        assert!(
            matches!(refused, Err(WorkerPoolError::QueueFull)),
            "{refused:?}"
        );
        let counters = pool.stats().counters;
        assert_eq!(
            (counters.submitted, counters.refused_queue_full),
            (9, 1),
            "a refusal is counted once over the lanes: {counters:?}"
        );
        // worker-3 lives in the second lane: restart it by id.
        assert!(pool.restart_worker("worker-3").await.is_ok());
        for worker in &workers {
            worker.open_gate(1);
        }
    };
    let (running, queued, ()) =
        futures::join!(future::join_all(running), future::join_all(queued), control);
    let restarted = running
        .iter()
        .filter(|r| matches!(r, Err(WorkerPoolError::Worker(e)) if e.code == WorkerErrorCode::Cancelled))
        .count();
    assert_eq!(restarted, 1, "{running:?}");
    assert_eq!(running.iter().filter(|r| r.is_ok()).count(), 3);
    assert!(queued.iter().all(Result::is_ok), "{queued:?}");

    // Add and remove by id; ids keep counting; order is kept.
    let added = pool
        .add_worker(TestWorker::new(&rt))
        .unwrap_or_else(|e| panic!("add: {e}"));
    assert_eq!(added, "worker-4");
    assert!(pool.remove_worker("worker-1").is_ok());
    assert!(matches!(
        pool.remove_worker("worker-9"),
        Err(WorkerPoolError::NoHealthyWorker)
    ));
    wait_until(&rt, "worker-1 removed", || {
        pool.stats()
            .workers
            .iter()
            .all(|w| w.worker_id != "worker-1")
    })
    .await;
    assert_eq!(
        ids(pool.health_snapshot().await),
        ["worker-0", "worker-2", "worker-3", "worker-4"]
    );
    let answered =
        future::join_all((0..8).map(|i| pool.submit(request(&format!("e{i}"), "echo")))).await;
    assert!(answered.iter().all(Result::is_ok), "{answered:?}");

    pool.shutdown().await;
    let counters = pool.stats().counters;
    assert_eq!(counters.succeeded, 3 + 4 + 8);
    assert_eq!(counters.accepted + counters.refused(), counters.submitted);
    assert!(pool
        .health_snapshot()
        .await
        .iter()
        .all(|h| h.status == WorkerHealthStatus::Unavailable));
    assert!(matches!(
        pool.submit(request("late", "echo")).await,
        Err(WorkerPoolError::ShuttingDown)
    ));
}

/// A caller that polls `submit` once and then does other work (here: is
/// not polled at all) does not hold its worker: its handler runs on the
/// pool's runtime, and another caller's request queued behind it is
/// answered while the first caller still stalls.
pub async fn a_caller_that_stalls_after_one_poll_does_not_hold_its_worker<
    R: Runtime + Default + Clone,
>(
    rt: R,
) {
    let worker = TestWorker::new(&rt);
    let pool = pool_of(&[Arc::clone(&worker)], options());
    let mut stalled = Box::pin(pool.submit(request("stalled", "sleep:10")));
    assert!(pending_after_one_poll(&mut stalled).await);
    let other = Box::pin(pool.submit(request("other", "sleep:10")));
    let cutoff = Box::pin(sleep(&rt, Duration::from_secs(2)));
    match future::select(other, cutoff).await {
        Either::Left((answer, _)) => {
            assert!(answer.is_ok(), "{answer:?}");
        }
        Either::Right(((), _)) => {
            panic!("the other caller's request waited for the stalled caller to poll")
        }
    }
    // The stalled caller's answer waited for it.
    let answer = stalled.await;
    assert!(answer.is_ok(), "{answer:?}");
    pool.shutdown().await;
}

/// A caller's answer is not held back while another caller's handler,
/// queued behind it on the same worker, makes a long CPU-bound first poll:
/// the caller (here on its own thread and executor) has its answer before
/// that handler finishes.
pub async fn a_slow_first_poll_does_not_delay_another_callers_answer<
    R: Runtime + Default + Clone,
>(
    rt: R,
) {
    let worker = TestWorker::new(&rt);
    let pool = Arc::new(pool_of(&[Arc::clone(&worker)], options()));
    let log = Arc::new(Mutex::new(Vec::new()));
    let push = |log: &Mutex<Vec<&'static str>>, entry| {
        log.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
    };
    let (first_pool, first_log) = (Arc::clone(&pool), Arc::clone(&log));
    let first = std::thread::spawn(move || {
        let answer = futures::executor::block_on(first_pool.submit(request("first", "sleep:20")));
        push(&first_log, "first answered");
        answer
    });
    wait_until(&rt, "the first request accepted", || {
        pool.stats().counters.accepted == 1
    })
    .await;
    let slow = pool.submit(request("slow", "block:250")).await;
    push(&log, "slow answered");
    assert!(slow.is_ok(), "{slow:?}");
    let first = first
        .join()
        .unwrap_or_else(|_| panic!("the first caller panicked"));
    assert!(first.is_ok(), "{first:?}");
    let log = log.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert_eq!(log, ["first answered", "slow answered"]);
    pool.shutdown().await;
}

/// A worker that sleeps `delay` on the runtime's timer per request.
struct Paced<R> {
    rt: R,
    delay: Duration,
}

#[async_trait]
impl<R: Runtime + Clone> WorkerHandler for Paced<R> {
    async fn handle(&self, _request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        sleep(&self.rt, self.delay).await;
        Ok(Value::Null)
    }
}

/// Late binding holds across the whole pool as built by default: with 16
/// workers, every other one slow, 200 requests finish within 1.2x the time
/// of an explicit single lane (fast workers take the queue; before, a
/// default split into lanes left one lane's share with its slow workers,
/// ten times slower).
pub async fn slow_and_fast_workers_share_the_queue_as_in_one_lane<R: Runtime + Default + Clone>(
    rt: R,
) {
    let handlers = || -> Vec<Arc<dyn WorkerHandler>> {
        (0..16)
            .map(|i| {
                let delay = if i % 2 == 0 { 400 } else { 10 };
                Arc::new(Paced {
                    rt: rt.clone(),
                    delay: Duration::from_millis(delay),
                }) as Arc<dyn WorkerHandler>
            })
            .collect()
    };
    let options = WorkerPoolOptions {
        queue_capacity: 64,
        health_probe_interval: Duration::from_secs(60),
        default_request_timeout: Some(Duration::from_secs(30)),
        ..WorkerPoolOptions::default()
    };
    let run = |pool: WorkerPool<R>| {
        let rt = rt.clone();
        async move {
            let start = rt.now();
            let requests = (0..200).map(|i| pool.submit(request(&format!("r{i}"), "paced")));
            let answers = future::join_all(requests).await;
            let took = rt.now().saturating_duration_since(start);
            assert!(answers.iter().all(Result::is_ok));
            pool.shutdown().await;
            took
        }
    };
    let default = match WorkerPool::new_inprocess(handlers(), options.clone(), None) {
        Ok(pool) => run(pool).await,
        Err(error) => panic!("valid pool options refused: {error}"),
    };
    let single = match WorkerPool::with_lanes(
        R::default(),
        handlers(),
        PoolConfig::new(options),
        None,
        NonZeroUsize::MIN,
    ) {
        Ok(pool) => run(pool).await,
        Err(error) => panic!("valid pool options refused: {error}"),
    };
    assert!(
        default.as_secs_f64() <= 1.2 * single.as_secs_f64(),
        "default pool took {default:?}, a single lane {single:?}"
    );
}

// ----- re-entrant calls, the circuit breaker's say, commands after shutdown ------

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
    fn new(rt: &R) -> Arc<Self> {
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

    fn log(&self) -> Vec<String> {
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
    let config = PoolConfig {
        probe_timeout: Duration::from_secs(5),
        ..PoolConfig::new(WorkerPoolOptions {
            health_probe_interval: Duration::from_millis(10),
            ..options()
        })
    };
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

fn picky_pool<R: Runtime + Default + Clone>(
    workers: &[Arc<TestWorker<R>>],
    breaker: &Arc<RecordingHooks>,
) -> WorkerPool<R> {
    match WorkerPool::<R>::new_inprocess(
        handlers_of(workers),
        options(),
        Some(Arc::clone(breaker) as Arc<dyn CircuitBreakerHooks>),
    ) {
        Ok(pool) => pool,
        Err(error) => panic!("valid pool options refused: {error}"),
    }
}

/// `allow_request` is asked about the candidates in the pool's order,
/// one at a time, until one allows: a worker after the one that took the
/// request is never asked; each veto is reported.
pub async fn allow_request_is_asked_in_turn_until_one_allows<R: Runtime + Default + Clone>(rt: R) {
    let workers: Vec<_> = (0..3).map(|_| TestWorker::new(&rt)).collect();
    let breaker = Arc::new(RecordingHooks::asking());
    breaker.refuse("r", "worker-0");
    let pool = picky_pool(&workers, &breaker);
    assert_served_by(&pool, "r", "worker-1").await;
    assert_eq!(
        breaker.about("r"),
        [
            "ask r worker-0",
            "rejected r worker-0 CircuitOpen",
            "ask r worker-1",
            "accepted r worker-1",
            "success r worker-1",
        ]
    );
    for worker in ["worker-0", "worker-1", "worker-2"] {
        breaker.refuse("nowhere", worker);
    }
    let refused = pool.submit(request("nowhere", "echo")).await;
    assert!(
        matches!(refused, Err(WorkerPoolError::CircuitOpen)),
        "{refused:?}"
    );
    let counters = pool.stats().counters;
    assert_eq!((counters.submitted, counters.refused_circuit_open), (2, 1));
    pool.shutdown().await;
}

/// `count` workers and a breaker that refuses worker-1 for request `q`.
fn busy_breaker_pool<R: Runtime + Default + Clone>(
    rt: &R,
    count: usize,
) -> (Vec<Arc<TestWorker<R>>>, Arc<RecordingHooks>, WorkerPool<R>) {
    let workers: Vec<_> = (0..count).map(|_| TestWorker::new(rt)).collect();
    let breaker = Arc::new(RecordingHooks::asking());
    breaker.refuse("q", "worker-1");
    let pool = picky_pool(&workers, &breaker);
    (workers, breaker, pool)
}

/// A caller's pending `submit`.
type Pending<'a> =
    Pin<Box<dyn Future<Output = Result<WorkerResponse, WorkerPoolError>> + Send + 'a>>;

/// Once all `busy` workers run a request, queues `q` (an echo) on
/// worker-0, the first candidate, and removes worker-0; returns `q`'s
/// pending submit.
async fn queue_q_then_remove_worker_0<'a, R: Runtime>(
    rt: &R,
    pool: &'a WorkerPool<R>,
    busy: usize,
) -> Pending<'a> {
    wait_until(rt, "every worker busy", || pool.stats().running == busy).await;
    let mut queued: Pending<'a> = Box::pin(pool.submit(request("q", "echo")));
    assert!(pending_after_one_poll(&mut queued).await);
    wait_until(rt, "q queued", || pool.stats().queued == 1).await;
    assert!(pool.remove_worker("worker-0").is_ok());
    queued
}

/// Three gated workers are busy; `q` is queued on worker-0, the only
/// candidate asked. When worker-0 is removed, `q` moves only where the
/// breaker allows: worker-1 (next in turn) refuses it, worker-2 takes it,
/// and the hooks hear of each step.
pub async fn a_moved_request_goes_only_where_the_breaker_allows<R: Runtime + Default + Clone>(
    rt: R,
) {
    let (workers, breaker, pool) = busy_breaker_pool(&rt, 3);
    let gated: Vec<_> = (0..3)
        .map(|i| pool.submit(request(&format!("g{i}"), "gate")))
        .collect();
    let control = async {
        let queued = queue_q_then_remove_worker_0(&rt, &pool, 3).await;
        let moved = async {
            wait_until(&rt, "q moved", || {
                breaker
                    .about("q")
                    .iter()
                    .any(|l| l.starts_with("accepted q worker-2"))
            })
            .await;
            for worker in &workers {
                worker.open_gate(1);
            }
        };
        let (queued, ()) = futures::join!(queued, moved);
        queued
    };
    let (gated, queued) = futures::join!(future::join_all(gated), control);
    assert!(gated.iter().all(Result::is_ok), "{gated:?}");
    assert_eq!(
        queued.map(|r| r.worker_id).ok().as_deref(),
        Some("worker-2")
    );
    assert_eq!(
        breaker.about("q"),
        [
            "ask q worker-0",
            "accepted q worker-0",
            "ask q worker-1",
            "rejected q worker-1 CircuitOpen",
            "ask q worker-2",
            "accepted q worker-2",
            "success q worker-2",
        ]
    );
    assert_eq!(pool.stats().counters.requeued, 1);
    pool.shutdown().await;
}

/// A request queued on a removed worker that the breaker allows nowhere
/// else is answered with a retryable `Unavailable`, and the veto reported.
pub async fn a_moved_request_allowed_nowhere_is_answered<R: Runtime + Default + Clone>(rt: R) {
    let (workers, breaker, pool) = busy_breaker_pool(&rt, 2);
    let gated: Vec<_> = (0..2)
        .map(|i| pool.submit(request(&format!("g{i}"), "gate")))
        .collect();
    let control = async {
        let answered = queue_q_then_remove_worker_0(&rt, &pool, 2).await.await;
        for worker in &workers {
            worker.open_gate(1);
        }
        answered
    };
    let (gated, queued) = futures::join!(future::join_all(gated), control);
    assert!(gated.iter().all(Result::is_ok), "{gated:?}");
    match queued {
        Err(WorkerPoolError::Worker(error)) => {
            assert_eq!(error.code, WorkerErrorCode::Unavailable);
            assert!(error.retryable);
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(
        breaker.about("q"),
        [
            "ask q worker-0",
            "accepted q worker-0",
            "ask q worker-1",
            "rejected q worker-1 CircuitOpen",
        ]
    );
    let counters = pool.stats().counters;
    assert_eq!(
        (counters.requeued, counters.unroutable_after_removal),
        (0, 1)
    );
    pool.shutdown().await;
}

/// With a breaker, a pool of two lanes asks each worker once, in turn
/// over the lanes, and counts each request once.
pub async fn a_breaker_over_two_lanes_counts_each_request_once<R: Runtime + Default + Clone>(
    rt: R,
) {
    let workers: Vec<_> = (0..4).map(|_| TestWorker::new(&rt)).collect();
    let breaker = Arc::new(RecordingHooks::asking());
    for worker in ["worker-0", "worker-1", "worker-2"] {
        breaker.refuse("r", worker);
    }
    for worker in ["worker-0", "worker-1", "worker-2", "worker-3"] {
        breaker.refuse("none", worker);
    }
    let pool = match WorkerPool::with_lanes(
        R::default(),
        handlers_of(&workers),
        PoolConfig::new(options()).vetted_by_breaker(true),
        Some(Arc::clone(&breaker) as Arc<dyn CircuitBreakerHooks>),
        NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
    ) {
        Ok(pool) => pool,
        Err(error) => panic!("valid pool options refused: {error}"),
    };
    assert_served_by(&pool, "r", "worker-3").await;
    let mut asked: Vec<String> = breaker
        .about("r")
        .into_iter()
        .filter(|l| l.starts_with("ask"))
        .collect();
    asked.sort();
    assert_eq!(
        asked,
        [
            "ask r worker-0",
            "ask r worker-1",
            "ask r worker-2",
            "ask r worker-3"
        ]
    );
    let refused = pool.submit(request("none", "echo")).await;
    assert!(
        matches!(refused, Err(WorkerPoolError::CircuitOpen)),
        "{refused:?}"
    );
    let vetoes = breaker
        .about("none")
        .iter()
        .filter(|l| l.ends_with("CircuitOpen") && !l.contains(" - "))
        .count();
    assert_eq!(vetoes, 4);
    assert_eq!(
        breaker.about("none").last().map(String::as_str),
        Some("rejected none - CircuitOpen")
    );
    let counters = pool.stats().counters;
    assert_eq!(
        (
            counters.submitted,
            counters.accepted,
            counters.refused_circuit_open
        ),
        (2, 1, 1),
        "{counters:?}"
    );
    pool.shutdown().await;
}

/// After shutdown every command answers `ShuttingDown`: remove (twice),
/// restart, add, submit, for known and unknown worker ids alike; the
/// workers stay listed.
pub async fn commands_after_shutdown_answer_shutting_down<R: Runtime + Default + Clone>(rt: R) {
    let workers: Vec<_> = (0..2).map(|_| TestWorker::new(&rt)).collect();
    let pool = pool_of(&workers, options());
    pool.shutdown().await;
    let answers = [
        ("remove", pool.remove_worker("worker-0")),
        ("remove again", pool.remove_worker("worker-0")),
        ("restart", pool.restart_worker("worker-1").await),
        ("remove unknown", pool.remove_worker("worker-9")),
        ("restart unknown", pool.restart_worker("worker-9").await),
        ("add", pool.add_worker(TestWorker::new(&rt)).map(drop)),
        (
            "submit",
            pool.submit(request("late", "echo")).await.map(drop),
        ),
    ];
    for (command, answer) in answers {
        assert!(
            matches!(answer, Err(WorkerPoolError::ShuttingDown)),
            "{command}: {answer:?}"
        );
    }
    let ids: Vec<String> = pool
        .health_snapshot()
        .await
        .into_iter()
        .map(|h| h.worker_id)
        .collect();
    assert_eq!(ids, ["worker-0", "worker-1"]);
}
