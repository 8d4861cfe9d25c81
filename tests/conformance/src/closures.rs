//! Closures as worker handlers (`handler_fn`), on every runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foreman_driver::{
    handler_fn, Runtime, WorkerErrorCode, WorkerHandler, WorkerHealthStatus, WorkerPool,
    WorkerPoolOptions, WorkerProtocolError, WorkerRequest, WorkerResult,
};
use serde_json::json;

use crate::support::{request, wait_until, worker_error};

/// A closure handler serves requests (its output and its errors reach the
/// caller), and its probe closure is what the pool's probes run: its
/// verdict reaches the worker's health.
pub async fn a_closure_handler_and_its_probe_serve_the_pool<R: Runtime + Default + Clone>(rt: R) {
    let calls = Arc::new(AtomicUsize::new(0));
    let probes = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = Arc::clone(&calls);
        let probes = Arc::clone(&probes);
        handler_fn(move |request: WorkerRequest| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match request.node_id.as_str() {
                    "fail" => Err(WorkerProtocolError::new(
                        WorkerErrorCode::ExecutionFailed,
                        "failed on purpose",
                        true,
                    )),
                    node => Ok(json!({ "closure": node })),
                }
            }
        })
        .with_probe(move || {
            probes.fetch_add(1, Ordering::SeqCst);
            async { WorkerHealthStatus::Degraded }
        })
        .into_arc()
    };
    let options = WorkerPoolOptions {
        queue_capacity: 4,
        health_probe_interval: Duration::from_millis(5),
        ..WorkerPoolOptions::default()
    };
    let pool = WorkerPool::<R>::new_inprocess(vec![handler], options, None)
        .unwrap_or_else(|e| panic!("valid pool options refused: {e}"));
    let served = pool
        .submit(request("c1", "node-1"))
        .await
        .unwrap_or_else(|e| panic!("the closure serves: {e}"));
    assert_eq!(
        served.result,
        WorkerResult::Success {
            output: json!({ "closure": "node-1" })
        }
    );
    let failed = pool.submit(request("c2", "fail")).await;
    assert_eq!(worker_error(&failed), WorkerErrorCode::ExecutionFailed);
    assert!(format!("{failed:?}").contains("failed on purpose"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The probe closure's Degraded verdict becomes the worker's status
    // once the failure above is cleared by a success.
    assert!(pool.submit(request("c3", "node-1")).await.is_ok());
    wait_until(&rt, "the probe closure's verdict", || {
        pool.stats().workers[0].status == WorkerHealthStatus::Degraded
    })
    .await;
    assert!(probes.load(Ordering::SeqCst) >= 1);
    pool.shutdown().await;
}

/// A closure that panics is answered `ExecutionFailed`, like any handler,
/// and its worker keeps serving; a closure handler works beside a handler
/// written with `#[async_trait]`, built with `Arc::new`.
pub async fn a_panicking_closure_handler_is_answered_execution_failed<
    R: Runtime + Default + Clone,
>(
    rt: R,
) {
    let closure: Arc<dyn WorkerHandler> =
        Arc::new(handler_fn(|request: WorkerRequest| async move {
            if request.node_id == "panic" {
                panic!("closure exploded on purpose");
            }
            Ok::<_, WorkerProtocolError>(json!({ "closure": request.node_id }))
        }));
    let written_worker = crate::support::TestWorker::new(&rt);
    let written = Arc::clone(&written_worker) as Arc<dyn WorkerHandler>;
    let options = WorkerPoolOptions {
        queue_capacity: 4,
        health_probe_interval: Duration::from_secs(60),
        ..WorkerPoolOptions::default()
    };
    let pool = WorkerPool::<R>::new_inprocess(vec![closure, written], options, None)
        .unwrap_or_else(|e| panic!("valid pool options refused: {e}"));
    // Idle-first routing: the first request goes to worker-0, the closure.
    let panicked = pool.submit(request("boom", "panic")).await;
    assert_eq!(worker_error(&panicked), WorkerErrorCode::ExecutionFailed);
    assert!(format!("{panicked:?}").contains("closure exploded on purpose"));
    let health = pool.health_snapshot().await;
    assert_eq!(health[0].consecutive_failures, 1);
    // Both workers serve: while the `#[async_trait]` handler (Healthy)
    // holds a request at its gate, the next one goes to the closure
    // (Degraded, still schedulable).
    let gated = Arc::clone(&written_worker);
    let (held, closure_again) = futures::join!(pool.submit(request("held", "gate")), async {
        let served = pool.submit(request("again", "echo")).await;
        gated.open_gate(1);
        served
    });
    let held = held.unwrap_or_else(|e| panic!("served: {e}"));
    assert_eq!(held.worker_id, "worker-1");
    let closure_again = closure_again.unwrap_or_else(|e| panic!("served: {e}"));
    assert_eq!(closure_again.worker_id, "worker-0");
    assert_eq!(
        closure_again.result,
        WorkerResult::Success {
            output: json!({ "closure": "echo" })
        }
    );
    pool.shutdown().await;
}
