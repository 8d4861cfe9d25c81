//! A request nested arbitrarily deep never crashes the process, wherever
//! the pool lets go of it: refused for its depth (with and without hooks),
//! refused for a full queue, cancelled, timed out or cut off by shutdown
//! while queued.
//!
//! `serde_json::Value`'s own drop recurses once per level, so dropping such
//! a request the ordinary way overflows the stack and aborts the process
//! (SIGABRT), test harness included. Each scenario therefore runs in a
//! child process, this test binary run again with [`SCENARIO_ENV`] set and
//! filtered to [`scenario_in_child`]; the parent test asserts the child
//! exited successfully and ran the scenario to its end.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use foreman_tokio::{
    async_trait, CircuitBreakerHooks, PoolConfig, TokioRuntime, WorkerErrorCode, WorkerHandler,
    WorkerOperation, WorkerPool, WorkerPoolError, WorkerPoolOptions, WorkerProtocolError,
    WorkerRequest, WorkerResponse, WorkerSecurityPolicy,
};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Names the scenario a child process runs.
const SCENARIO_ENV: &str = "FOREMAN_DEEP_REQUEST_SCENARIO";

/// What a child prints once its scenario has run to the end.
const FINISHED: &str = "deep request scenario finished";

/// The stack of the thread a scenario runs on: the test harness's default,
/// stated so the outcome does not depend on `RUST_MIN_STACK`.
const STACK_BYTES: usize = 2 << 20;

/// Runs `scenario` in a child process and asserts that it exited
/// successfully (a stack overflow aborts it instead) after running the
/// scenario to its end.
fn run_in_child(scenario: &str) {
    let binary = std::env::current_exe().expect("the test binary's path");
    let output = Command::new(binary)
        .args([
            "scenario_in_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SCENARIO_ENV, scenario)
        .output()
        .expect("the child process runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "scenario {scenario} crashed its process ({}):\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains(&format!("{FINISHED}: {scenario}")),
        "scenario {scenario} did not run to its end:\n{stdout}\n{stderr}"
    );
}

/// The child's entry point: runs the scenario [`SCENARIO_ENV`] names, on a
/// paused current-thread runtime in a thread of [`STACK_BYTES`]; does
/// nothing when the variable is unset (in the parent's run).
#[test]
fn scenario_in_child() {
    let Ok(scenario) = std::env::var(SCENARIO_ENV) else {
        return;
    };
    std::thread::Builder::new()
        .stack_size(STACK_BYTES)
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("a runtime");
            runtime.block_on(run_scenario(&scenario));
            println!("{FINISHED}: {scenario}");
        })
        .expect("a scenario thread")
        .join()
        .expect("the scenario passes");
}

async fn run_scenario(scenario: &str) {
    match scenario {
        "refused_for_depth" => refused_for_depth(None).await,
        "refused_for_depth_with_hooks" => refused_for_depth(Some(Arc::new(Hooks))).await,
        "cancelled_while_queued" => cancelled_while_queued().await,
        "refused_for_a_full_queue" => refused_for_a_full_queue().await,
        "timed_out_while_queued" => timed_out_while_queued().await,
        "cut_off_by_shutdown" => cut_off_by_shutdown().await,
        other => panic!("unknown scenario {other}"),
    }
}

#[test]
fn a_million_levels_deep_request_is_refused_without_crashing() {
    run_in_child("refused_for_depth");
}

#[test]
fn a_million_levels_deep_request_is_refused_with_hooks_without_crashing() {
    run_in_child("refused_for_depth_with_hooks");
}

#[test]
fn cancelling_a_deep_queued_request_does_not_crash() {
    run_in_child("cancelled_while_queued");
}

#[test]
fn refusing_a_deep_request_for_a_full_queue_does_not_crash() {
    run_in_child("refused_for_a_full_queue");
}

#[test]
fn a_deep_request_timing_out_in_the_queue_does_not_crash() {
    run_in_child("timed_out_while_queued");
}

#[test]
fn shutdown_cutting_off_a_deep_queued_request_does_not_crash() {
    run_in_child("cut_off_by_shutdown");
}

// ----- scenarios -------------------------------------------------------------

/// Nesting of the requests refused for their depth.
const MILLION: usize = 1_000_000;

/// Nesting of the requests a raised depth limit accepts: 100 000 levels of
/// `[…]` are 200 KB of JSON, within the default payload limit.
const HUNDRED_THOUSAND: usize = 100_000;

/// A tool request whose `input` is `levels` arrays deep (`[[…[null]…]]`),
/// built without recursion.
fn deep_request(id: &str, levels: usize) -> WorkerRequest {
    let mut input = Value::Null;
    for _ in 0..levels {
        input = Value::Array(vec![input]);
    }
    WorkerRequest {
        request_id: id.into(),
        workflow_name: "deep".into(),
        node_id: "node".into(),
        timeout_ms: None,
        operation: WorkerOperation::Tool {
            tool: "echo".into(),
            input,
            scoped_input: json!({}),
        },
    }
}

fn shallow_request(id: &str) -> WorkerRequest {
    deep_request(id, 1)
}

/// Runs each request until [`Gate::open`] lets it finish.
#[derive(Default)]
struct Gate(Notify);

impl Gate {
    fn open(&self) {
        self.0.notify_one();
    }
}

#[async_trait]
impl WorkerHandler for Gate {
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        self.0.notified().await;
        Ok(json!({ "id": request.request_id }))
    }
}

/// Hooks that only watch (their default methods), so the pool's hook path
/// holds the request while they run.
struct Hooks;

impl CircuitBreakerHooks for Hooks {}

/// One worker behind a [`Gate`]; requests may nest [`HUNDRED_THOUSAND`]
/// levels deep and queue one per worker.
fn gated_pool(gate: &Arc<Gate>) -> WorkerPool {
    let options = WorkerPoolOptions {
        queue_capacity: 1,
        security_policy: WorkerSecurityPolicy {
            max_request_payload_bytes: 1 << 20,
            ..WorkerSecurityPolicy::default()
        },
        ..WorkerPoolOptions::default()
    };
    let config = PoolConfig::new(options).with_max_request_depth(2 * HUNDRED_THOUSAND);
    let handler: Arc<dyn WorkerHandler> = gate.clone();
    WorkerPool::with_config(TokioRuntime, vec![handler], config, None).expect("pool")
}

/// A [`gated_pool`] whose worker runs the first of `requests` with the rest
/// queued behind it, each submitted from a task of its own.
async fn busy_pool(gate: &Arc<Gate>, requests: Vec<WorkerRequest>) -> (Arc<WorkerPool>, Callers) {
    let pool = Arc::new(gated_pool(gate));
    let queued = requests.len().saturating_sub(1);
    let callers = requests
        .into_iter()
        .map(|request| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.submit(request).await })
        })
        .collect();
    // Wait (in virtual time) until they are all in.
    loop {
        let stats = pool.stats();
        if (stats.running, stats.queued) == (1, queued) {
            return (pool, callers);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The tasks of [`busy_pool`]'s callers.
type Callers = Vec<JoinHandle<Result<WorkerResponse, WorkerPoolError>>>;

/// Lets the gated requests of `callers` finish, one by one, and checks that
/// each was answered.
async fn finish(gate: &Gate, callers: Callers) {
    for caller in callers {
        gate.open();
        caller.await.expect("task").expect("answered");
    }
}

async fn refused_for_depth(hooks: Option<Arc<dyn CircuitBreakerHooks>>) {
    let gate = Arc::new(Gate::default());
    let handler: Arc<dyn WorkerHandler> = gate.clone();
    let pool = WorkerPool::new_inprocess(vec![handler], WorkerPoolOptions::default(), hooks)
        .expect("pool");
    let error = pool
        .submit(deep_request("deep", MILLION))
        .await
        .expect_err("refused");
    let WorkerPoolError::InvalidRequest { reason } = error else {
        panic!("refused as invalid, not {error:?}");
    };
    assert!(
        reason.starts_with("operation.input nesting depth exceeds max 128"),
        "{reason}"
    );
    pool.shutdown().await;
}

async fn cancelled_while_queued() {
    let gate = Arc::new(Gate::default());
    let (pool, callers) = busy_pool(&gate, vec![shallow_request("running")]).await;
    // Queued behind the running request, then given up on.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(5),
        pool.submit(deep_request("deep", HUNDRED_THOUSAND)),
    )
    .await;
    assert!(cancelled.is_err(), "the deep request waited in the queue");
    assert_eq!(pool.stats().queued, 0);
    finish(&gate, callers).await;
    pool.shutdown().await;
}

async fn refused_for_a_full_queue() {
    let gate = Arc::new(Gate::default());
    let requests = vec![shallow_request("running"), shallow_request("queued")];
    let (pool, callers) = busy_pool(&gate, requests).await;
    let refused = pool.submit(deep_request("deep", HUNDRED_THOUSAND)).await;
    assert_eq!(refused.map(|_| ()), Err(WorkerPoolError::QueueFull));
    finish(&gate, callers).await;
    pool.shutdown().await;
}

async fn timed_out_while_queued() {
    let gate = Arc::new(Gate::default());
    let (pool, callers) = busy_pool(&gate, vec![shallow_request("running")]).await;
    let mut deep = deep_request("deep", HUNDRED_THOUSAND);
    deep.timeout_ms = Some(10);
    let error = pool.submit(deep).await.expect_err("timed out");
    assert_eq!(error.code(), WorkerErrorCode::Timeout);
    finish(&gate, callers).await;
    pool.shutdown().await;
}

async fn cut_off_by_shutdown() {
    let gate = Arc::new(Gate::default());
    let requests = vec![
        shallow_request("running"),
        deep_request("deep", HUNDRED_THOUSAND),
    ];
    let (pool, callers) = busy_pool(&gate, requests).await;
    pool.shutdown_with_deadline(Duration::ZERO).await;
    for caller in callers {
        let error = caller.await.expect("task").expect_err("cut off");
        assert_eq!(error, WorkerPoolError::ShuttingDown);
    }
    // Refused once the pool has stopped.
    let refused = pool.submit(deep_request("late", HUNDRED_THOUSAND)).await;
    assert_eq!(refused.map(|_| ()), Err(WorkerPoolError::ShuttingDown));
}
