//! What is refused up front (bad configuration, a huge payload) and what
//! never waits for a worker (health and stats).

use std::sync::Arc;
use std::time::Duration;

use foreman_driver::{
    Runtime, WorkerHandler, WorkerOperation, WorkerPool, WorkerPoolError, WorkerPoolOptions,
};
use futures::future;
use futures::FutureExt;
use serde_json::json;

use crate::support::{options, pending_after_one_poll, pool_of, request, TestWorker};

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
