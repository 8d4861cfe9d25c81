//! The reference module's six tests (plus its round-trip), ported to
//! foreman-tokio: same scenarios, same assertions, on both runtimes.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foreman_tokio::{
    async_trait, WorkerErrorCode, WorkerHandler, WorkerHealthStatus, WorkerOperation, WorkerPool,
    WorkerPoolError, WorkerPoolOptions, WorkerProtocolError, WorkerRequest, WorkerResult,
    WorkerSecurityPolicy,
};
use serde_json::{json, Value};
use tokio::time::sleep;

struct EchoWorker;

#[async_trait]
impl WorkerHandler for EchoWorker {
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        Ok(json!({"node": request.node_id}))
    }
}

struct SlowWorker {
    delay: Duration,
}

#[async_trait]
impl WorkerHandler for SlowWorker {
    async fn handle(&self, _request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        sleep(self.delay).await;
        Ok(json!({"status": "ok"}))
    }
}

struct FlakyWorker {
    available: AtomicBool,
    calls: AtomicUsize,
}

#[async_trait]
impl WorkerHandler for FlakyWorker {
    async fn handle(&self, _request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.available.load(Ordering::Relaxed) {
            Ok(json!({"status": "up"}))
        } else {
            Err(WorkerProtocolError {
                code: WorkerErrorCode::Unavailable,
                message: "worker unavailable".to_string(),
                retryable: true,
            })
        }
    }

    async fn probe_health(&self) -> WorkerHealthStatus {
        if self.available.load(Ordering::Relaxed) {
            WorkerHealthStatus::Healthy
        } else {
            WorkerHealthStatus::Unavailable
        }
    }
}

fn sample_request(id: &str) -> WorkerRequest {
    WorkerRequest {
        request_id: id.to_string(),
        workflow_name: "wf".to_string(),
        node_id: "node-1".to_string(),
        timeout_ms: None,
        operation: WorkerOperation::Tool {
            tool: "echo".to_string(),
            input: json!({"x": 1}),
            scoped_input: json!({"input": {}}),
        },
    }
}

#[test]
fn worker_protocol_roundtrip() {
    let request = sample_request("req-1");
    let serialized = serde_json::to_string(&request).expect("request serialization should work");
    let decoded: WorkerRequest =
        serde_json::from_str(&serialized).expect("request deserialization should work");
    assert_eq!(request, decoded);
}

async fn routes_requests_across_worker_pool() {
    let pool = WorkerPool::new_inprocess(
        vec![Arc::new(EchoWorker), Arc::new(EchoWorker)],
        WorkerPoolOptions {
            queue_capacity: 4,
            health_probe_interval: Duration::from_millis(10),
            ..WorkerPoolOptions::default()
        },
        None,
    )
    .expect("pool should initialize");

    let response = pool
        .submit(sample_request("req-2"))
        .await
        .expect("request should succeed");
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

async fn enforces_queue_backpressure_limits() {
    let pool = WorkerPool::new_inprocess(
        vec![Arc::new(SlowWorker {
            delay: Duration::from_millis(80),
        })],
        WorkerPoolOptions {
            queue_capacity: 1,
            health_probe_interval: Duration::from_millis(100),
            default_request_timeout: Some(Duration::from_secs(1)),
            ..WorkerPoolOptions::default()
        },
        None,
    )
    .expect("pool should initialize");

    let first = pool.submit(sample_request("q1"));
    let second = pool.submit(sample_request("q2"));
    let third = pool.submit(sample_request("q3"));

    let (first_result, second_result, third_result) = tokio::join!(first, second, third);
    let results = [&first_result, &second_result, &third_result];
    let failures = results
        .iter()
        .filter(|result| matches!(result, Err(WorkerPoolError::QueueFull)))
        .count();
    let successes = results.iter().filter(|result| result.is_ok()).count();
    assert!(failures >= 1);
    assert!(successes >= 1);

    pool.shutdown().await;
}

async fn marks_worker_unavailable_after_failures_and_recovers_on_restart() {
    let flaky = Arc::new(FlakyWorker {
        available: AtomicBool::new(false),
        calls: AtomicUsize::new(0),
    });
    let pool = WorkerPool::new_inprocess(
        vec![Arc::clone(&flaky) as Arc<dyn WorkerHandler>],
        WorkerPoolOptions {
            queue_capacity: 2,
            unavailable_after_failures: 1,
            health_probe_interval: Duration::from_millis(15),
            default_request_timeout: Some(Duration::from_secs(1)),
            ..WorkerPoolOptions::default()
        },
        None,
    )
    .expect("pool should initialize");

    let error = pool
        .submit(sample_request("down"))
        .await
        .expect_err("request should fail while worker is unavailable");
    assert!(matches!(error, WorkerPoolError::Worker(_)));

    sleep(Duration::from_millis(25)).await;
    let health_before = pool.health_snapshot().await;
    assert_eq!(health_before[0].status, WorkerHealthStatus::Unavailable);

    flaky.available.store(true, Ordering::Relaxed);
    pool.restart_worker("worker-0")
        .await
        .expect("restart should succeed");

    sleep(Duration::from_millis(25)).await;
    let response = pool
        .submit(sample_request("up"))
        .await
        .expect("request should succeed after restart");
    assert_eq!(
        response.result,
        WorkerResult::Success {
            output: json!({"status": "up"})
        }
    );

    pool.shutdown().await;
}

async fn returns_timeout_for_slow_worker() {
    let pool = WorkerPool::new_inprocess(
        vec![Arc::new(SlowWorker {
            delay: Duration::from_millis(100),
        })],
        WorkerPoolOptions {
            queue_capacity: 2,
            default_request_timeout: Some(Duration::from_millis(5)),
            ..WorkerPoolOptions::default()
        },
        None,
    )
    .expect("pool should initialize");

    let error = pool
        .submit(sample_request("timeout"))
        .await
        .expect_err("request should time out");
    assert!(matches!(error, WorkerPoolError::Timeout));

    pool.shutdown().await;
}

async fn rejects_request_when_security_contract_is_violated() {
    let pool = WorkerPool::new_inprocess(
        vec![Arc::new(EchoWorker)],
        WorkerPoolOptions {
            security_policy: WorkerSecurityPolicy {
                max_request_timeout_ms: 10,
                max_request_payload_bytes: 256,
                max_identifier_length: 12,
            },
            default_request_timeout: Some(Duration::from_millis(10)),
            ..WorkerPoolOptions::default()
        },
        None,
    )
    .expect("pool should initialize");

    let mut request = sample_request("req-too-large");
    request.timeout_ms = Some(99);
    request.operation = WorkerOperation::Tool {
        tool: "echo".to_string(),
        input: json!({"payload": "x".repeat(1024)}),
        scoped_input: json!({"input": {}}),
    };

    let error = pool
        .submit(request)
        .await
        .expect_err("request should be rejected by security policy");

    assert!(matches!(error, WorkerPoolError::InvalidRequest { .. }));
    pool.shutdown().await;
}

async fn handles_parallel_submissions_without_deadlock() {
    let pool = Arc::new(
        WorkerPool::new_inprocess(
            vec![Arc::new(EchoWorker), Arc::new(EchoWorker)],
            WorkerPoolOptions {
                queue_capacity: 32,
                health_probe_interval: Duration::from_millis(5),
                default_request_timeout: Some(Duration::from_secs(1)),
                ..WorkerPoolOptions::default()
            },
            None,
        )
        .expect("pool should initialize"),
    );

    let mut tasks = Vec::new();
    for idx in 0..32usize {
        let pool = Arc::clone(&pool);
        tasks.push(tokio::spawn(async move {
            pool.submit(sample_request(&format!("parallel-{idx}")))
                .await
        }));
    }

    let joined = tokio::time::timeout(Duration::from_secs(3), async {
        for task in tasks {
            let result = task.await.expect("join should succeed");
            assert!(result.is_ok(), "submit should succeed under parallel load");
        }
    })
    .await;

    assert!(joined.is_ok(), "parallel submissions should not deadlock");
    pool.shutdown().await;
}

both_runtimes!(
    routes_requests_across_worker_pool,
    enforces_queue_backpressure_limits,
    marks_worker_unavailable_after_failures_and_recovers_on_restart,
    returns_timeout_for_slow_worker,
    rejects_request_when_security_contract_is_violated,
    handles_parallel_submissions_without_deadlock,
);
