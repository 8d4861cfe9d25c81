//! Dropping a `submit` future cancels its request, with or without hooks.

use std::sync::Arc;

use foreman_driver::{
    async_trait, CircuitBreakerHooks, Runtime, WorkerHandler, WorkerPool, WorkerRequest,
};
use futures::future;

use crate::support::{options, pending_after_one_poll, pool_of, request, wait_until, TestWorker};

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
