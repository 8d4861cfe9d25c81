//! The reference module's seven scenarios, written against its public API
//! with its configurations, on foreman-tokio. Only the `use` lines name
//! foreman; the clock is tokio's paused test clock, so every sleep is
//! virtual and the outcomes do not depend on the machine's speed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foreman_compat::{
    describe, operation_name, summary, tool_request, NodeEcho, ScriptedClient, Sleeper, Switchable,
};
use foreman_compat::{
    WorkerHandler, WorkerHealthStatus, WorkerOperation, WorkerPool, WorkerPoolClient,
    WorkerPoolError, WorkerPoolOptions, WorkerRequest, WorkerResult, WorkerSecurityPolicy,
};
use serde_json::json;

#[test]
fn a_request_survives_a_json_round_trip() {
    let request = tool_request("req-1", None);
    let text = serde_json::to_string(&request).expect("serializes");
    let back: WorkerRequest = serde_json::from_str(&text).expect("deserializes");
    assert_eq!(back, request);
}

#[tokio::test(start_paused = true)]
async fn two_echo_workers_answer_and_stay_schedulable() {
    let pool = WorkerPool::new_inprocess(
        vec![Arc::new(NodeEcho), Arc::new(NodeEcho)],
        WorkerPoolOptions {
            queue_capacity: 4,
            health_probe_interval: Duration::from_millis(10),
            ..WorkerPoolOptions::default()
        },
        None,
    )
    .expect("the pool builds");
    let response = pool
        .submit(tool_request("req-2", None))
        .await
        .expect("echo answers");
    assert_eq!(response.request_id, "req-2");
    assert_eq!(
        response.result,
        WorkerResult::Success {
            output: json!({"node": "node-1"})
        }
    );
    let health = pool.health_snapshot().await;
    assert_eq!(health.len(), 2);
    assert!(health
        .iter()
        .all(|entry| entry.status != WorkerHealthStatus::Unavailable));
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_with_queue_full() {
    let pool = WorkerPool::new_inprocess(
        vec![Arc::new(Sleeper {
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
    .expect("the pool builds");
    let (a, b, c) = tokio::join!(
        pool.submit(tool_request("q1", None)),
        pool.submit(tool_request("q2", None)),
        pool.submit(tool_request("q3", None)),
    );
    let outcomes = [&a, &b, &c];
    let full = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Err(WorkerPoolError::QueueFull)))
        .count();
    let served = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert!(full >= 1, "{outcomes:?}");
    assert!(served >= 1, "{outcomes:?}");
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_worker_becomes_unavailable_and_serves_after_a_restart() {
    let worker = Arc::new(Switchable {
        up: AtomicBool::new(false),
        calls: AtomicUsize::new(0),
    });
    let pool = WorkerPool::new_inprocess(
        vec![Arc::clone(&worker) as Arc<dyn WorkerHandler>],
        WorkerPoolOptions {
            queue_capacity: 2,
            unavailable_after_failures: 1,
            health_probe_interval: Duration::from_millis(15),
            default_request_timeout: Some(Duration::from_secs(1)),
            ..WorkerPoolOptions::default()
        },
        None,
    )
    .expect("the pool builds");
    let error = pool
        .submit(tool_request("down", None))
        .await
        .expect_err("the worker is down");
    assert!(matches!(error, WorkerPoolError::Worker(_)), "{error:?}");
    tokio::time::sleep(Duration::from_millis(25)).await;
    let health = pool.health_snapshot().await;
    assert_eq!(health[0].status, WorkerHealthStatus::Unavailable);

    worker.up.store(true, Ordering::Relaxed);
    pool.restart_worker("worker-0")
        .await
        .expect("the worker exists");
    tokio::time::sleep(Duration::from_millis(25)).await;
    let response = pool
        .submit(tool_request("up", None))
        .await
        .expect("served after the restart");
    assert_eq!(
        response.result,
        WorkerResult::Success {
            output: json!({"status": "up"})
        }
    );
    assert_eq!(worker.calls.load(Ordering::Relaxed), 2);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_worker_answers_timeout() {
    let pool = WorkerPool::new_inprocess(
        vec![Arc::new(Sleeper {
            delay: Duration::from_millis(100),
        })],
        WorkerPoolOptions {
            queue_capacity: 2,
            default_request_timeout: Some(Duration::from_millis(5)),
            ..WorkerPoolOptions::default()
        },
        None,
    )
    .expect("the pool builds");
    let error = pool
        .submit(tool_request("timeout", None))
        .await
        .expect_err("the budget runs out");
    assert!(matches!(error, WorkerPoolError::Timeout), "{error:?}");
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_request_over_the_security_policy_is_invalid() {
    // The policy's 10 ms ceiling sits beside the default 30 s default
    // timeout, exactly as in the reference's own test.
    let pool = WorkerPool::new_inprocess(
        vec![Arc::new(NodeEcho)],
        WorkerPoolOptions {
            security_policy: WorkerSecurityPolicy {
                max_request_timeout_ms: 10,
                max_request_payload_bytes: 256,
                max_identifier_length: 12,
            },
            ..WorkerPoolOptions::default()
        },
        None,
    )
    .expect("the reference's configuration builds");
    let mut request = tool_request("req-too-large", Some(99));
    request.operation = WorkerOperation::Tool {
        tool: "echo".to_string(),
        input: json!({"payload": "x".repeat(1024)}),
        scoped_input: json!({"input": {}}),
    };
    let error = pool.submit(request).await.expect_err("refused");
    assert!(
        matches!(error, WorkerPoolError::InvalidRequest { .. }),
        "{error:?}"
    );
    // A request that asks for no timeout gets the 30 s default.
    let response = pool
        .submit(WorkerRequest {
            node_id: "n".to_string(),
            ..tool_request("small", None)
        })
        .await
        .expect("a small request with the default timeout is served");
    assert_eq!(response.request_id, "small");
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn thirty_two_parallel_submits_all_succeed() {
    let pool = Arc::new(
        WorkerPool::new_inprocess(
            vec![Arc::new(NodeEcho), Arc::new(NodeEcho)],
            WorkerPoolOptions {
                queue_capacity: 32,
                health_probe_interval: Duration::from_millis(5),
                default_request_timeout: Some(Duration::from_secs(1)),
                ..WorkerPoolOptions::default()
            },
            None,
        )
        .expect("the pool builds"),
    );
    let tasks: Vec<_> = (0..32)
        .map(|n| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.submit(tool_request(&format!("p-{n}"), None)).await })
        })
        .collect();
    let all = tokio::time::timeout(Duration::from_secs(3), async {
        for task in tasks {
            let outcome = task.await.expect("the task ran");
            assert!(outcome.is_ok(), "{outcome:?}");
        }
    })
    .await;
    assert!(all.is_ok(), "parallel submits finished");
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_hand_written_client_stands_in_for_the_pool() {
    let client: Arc<dyn WorkerPoolClient> = Arc::new(ScriptedClient::default());
    let first = client
        .submit(tool_request("a", None))
        .await
        .expect("scripted");
    let health = client.health_snapshot().await;
    assert_eq!(summary(&first, &health), "ok {\"n\":0}; 1 schedulable");
    let refused = client
        .submit(tool_request("", None))
        .await
        .expect_err("scripted refusal");
    assert_eq!(describe(&refused), "invalid: empty request id");
    assert_eq!(operation_name(&tool_request("a", None)), "echo");
    assert_eq!(
        serde_json::to_value(&first).expect("serializes"),
        json!({
            "request_id": "a",
            "worker_id": "scripted-0",
            "result": {"status": "success", "output": {"n": 0}},
            "elapsed_ms": 0
        })
    );
}

#[tokio::test(start_paused = true)]
async fn a_pool_behind_the_client_trait_writes_the_references_json() {
    let client = foreman_compat::client_of(
        vec![Arc::new(NodeEcho)],
        foreman_compat::every_option(4),
        Some(Arc::new(foreman_compat::RecordingBreaker::default())),
    )
    .expect("the pool builds");
    let response = client
        .submit(foreman_compat::llm_request("r"))
        .await
        .expect("echo answers");
    let value = serde_json::to_value(&response).expect("serializes");
    let keys: Vec<&str> = value
        .as_object()
        .map(|object| object.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(keys, ["elapsed_ms", "request_id", "result", "worker_id"]);
}
