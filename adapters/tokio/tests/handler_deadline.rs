//! A handler reads the time its request has left (`handler_deadline`): its
//! budget less the time it queued, or its run limit when that comes first,
//! in both execution modes, on the paused clock.

use std::sync::Arc;
use std::time::Duration;

use foreman_tokio::{
    async_trait, handler_deadline, DriverOptions, ExecutionMode, PhaseLimits, PoolConfig,
    TokioRuntime, WorkerHandler, WorkerPool, WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
};
use serde_json::{json, Value};

/// Sleeps for the request's `node_id` in milliseconds, then answers with
/// the milliseconds its request had left when the handler began (`null`
/// when it had no deadline), read in its first poll.
struct TimeLeft;

#[async_trait]
impl WorkerHandler for TimeLeft {
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        let now = tokio::time::Instant::now().into_std();
        let left = handler_deadline().map(|deadline| deadline.saturating_duration_since(now));
        let sleep = request.node_id.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(sleep)).await;
        Ok(json!(left.map(|left| left.as_millis() as u64)))
    }
}

fn request(id: &str, sleep_ms: u64, timeout_ms: Option<u64>) -> WorkerRequest {
    WorkerRequest {
        request_id: id.into(),
        workflow_name: "deadline".into(),
        node_id: sleep_ms.to_string(),
        timeout_ms,
        operation: foreman_tokio::WorkerOperation::Tool {
            tool: "time_left".into(),
            input: json!({}),
            scoped_input: json!({}),
        },
    }
}

fn pool(execution: ExecutionMode, default_timeout: Option<Duration>) -> WorkerPool {
    let options = WorkerPoolOptions {
        default_request_timeout: default_timeout,
        ..WorkerPoolOptions::default()
    };
    WorkerPool::with_driver_options(
        TokioRuntime,
        vec![Arc::new(TimeLeft)],
        PoolConfig::new(options),
        None,
        DriverOptions::default().execution(execution),
    )
    .expect("pool")
}

fn left_ms(answer: Result<foreman_tokio::WorkerResponse, foreman_tokio::WorkerPoolError>) -> Value {
    match answer.expect("answered").result {
        foreman_tokio::WorkerResult::Success { output } => output,
        other => panic!("not a success: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_handler_sees_its_budget_less_the_time_it_queued() {
    for execution in [ExecutionMode::PoolTasks, ExecutionMode::CallerTask] {
        let pool = pool(execution, None);
        // One worker: the second request queues for the first's 2 s.
        let (first, second) = tokio::join!(
            pool.submit(request("first", 2_000, Some(10_000))),
            pool.submit(request("second", 0, Some(5_000))),
        );
        assert_eq!(left_ms(first), json!(10_000), "{execution:?}");
        assert_eq!(left_ms(second), json!(3_000), "{execution:?}");
        pool.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_limit_before_the_deadline_is_the_handlers_deadline() {
    for execution in [ExecutionMode::PoolTasks, ExecutionMode::CallerTask] {
        let pool = pool(execution, None);
        let limits = PhaseLimits::new().with_run(Duration::from_millis(1_500));
        let limited = pool
            .submit_with_limits(request("limited", 0, Some(10_000)), limits)
            .await;
        assert_eq!(left_ms(limited), json!(1_500), "{execution:?}");
        pool.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_without_a_budget_has_no_deadline_and_the_default_applies_otherwise() {
    let unlimited = pool(ExecutionMode::PoolTasks, None);
    let answer = unlimited.submit(request("unlimited", 0, None)).await;
    assert_eq!(left_ms(answer), Value::Null);
    unlimited.shutdown().await;

    let defaulted = pool(ExecutionMode::PoolTasks, Some(Duration::from_secs(30)));
    let answer = defaulted.submit(request("defaulted", 0, None)).await;
    assert_eq!(left_ms(answer), json!(30_000));
    defaulted.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn outside_a_handler_there_is_no_deadline() {
    assert_eq!(handler_deadline(), None);
    let pool = pool(ExecutionMode::PoolTasks, Some(Duration::from_secs(30)));
    pool.submit(request("one", 0, None))
        .await
        .expect("answered");
    assert_eq!(handler_deadline(), None);
    pool.shutdown().await;
}
