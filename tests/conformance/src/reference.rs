//! The reference module's seven scenarios, with its configurations.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use foreman_driver::{
    Runtime, WorkerHealthStatus, WorkerOperation, WorkerPoolError, WorkerPoolOptions,
    WorkerRequest, WorkerResult, WorkerSecurityPolicy,
};
use futures::future;
use serde_json::json;

use crate::support::{pool_of, request, spawn, wait_until, TestWorker};

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
