//! Deadlines by phase: a request's queue-wait limit takes it out of its
//! queue without charging its worker, its run limit aborts its handler and
//! charges the worker, the pool's defaults apply to plain submits, and
//! every such `Timeout` says which limit fired and where the time went.

use std::sync::Arc;
use std::time::Duration;

use foreman_driver::{
    PhaseLimits, PoolConfig, Runtime, TimeoutLimit, WorkerHealthStatus, WorkerPool, WorkerPoolError,
};

use crate::support::{handlers_of, options, pool_of, request, wait_until, TestWorker};

/// A request queued behind a busy worker leaves its queue when its
/// queue-wait limit passes (its worker never runs it and is not charged);
/// a hanging request is aborted when its run limit passes, and its worker
/// is charged one failure. Each `Timeout` names its limit.
pub async fn phase_limits_end_requests_and_name_the_limit<R: Runtime + Default + Clone>(rt: R) {
    let worker = TestWorker::new(&rt);
    let pool = pool_of(&[Arc::clone(&worker)], options());
    let gated = pool.submit(request("gated", "gate"));
    let waiting = async {
        wait_until(&rt, "the gated request runs", || worker.calls() == 1).await;
        let limits = PhaseLimits::new().with_queue_wait(Duration::from_millis(5));
        let timed = pool
            .submit_timed_with(request("waiting", "echo"), limits)
            .await;
        worker.open_gate(1);
        timed
    };
    let (gated, waiting) = futures::join!(gated, waiting);
    assert!(gated.is_ok(), "{gated:?}");
    assert_eq!(waiting.result, Err(WorkerPoolError::Timeout));
    assert_eq!(waiting.timings.limit, Some(TimeoutLimit::QueueWait));
    assert_eq!(waiting.timings.ran, None);
    assert!(waiting.timings.queued >= Duration::from_millis(5));
    let message = waiting.timings.timeout_message().unwrap_or_default();
    assert!(message.contains("queue_wait_limit"), "{message}");
    assert_eq!(worker.calls(), 1, "the expired request never ran");
    assert_eq!(pool.stats().counters.timed_out_queued, 1);
    let health = pool.health_snapshot().await;
    assert_eq!(health[0].consecutive_failures, 0, "no worker is charged");

    let limits = PhaseLimits::new().with_run(Duration::from_millis(5));
    let hung = pool
        .submit_timed_with(request("hung", "hang"), limits)
        .await;
    assert_eq!(hung.result, Err(WorkerPoolError::Timeout));
    assert_eq!(hung.timings.limit, Some(TimeoutLimit::Run));
    assert!(hung.timings.ran >= Some(Duration::from_millis(5)));
    let message = hung.timings.timeout_message().unwrap_or_default();
    assert!(message.contains("run_limit"), "{message}");
    wait_until(&rt, "the hung handler dropped", || worker.dropped() == 1).await;
    let health = pool.health_snapshot().await;
    assert_eq!(health[0].consecutive_failures, 1);
    assert_eq!(health[0].status, WorkerHealthStatus::Degraded);
    pool.shutdown().await;
}

/// The pool's default run limit ends a plain `submit`; a request's own,
/// longer limit replaces it.
pub async fn pool_phase_limits_apply_unless_a_request_sets_its_own<R: Runtime + Default + Clone>(
    rt: R,
) {
    let worker = TestWorker::new(&rt);
    let config = PoolConfig::new(options()).with_run_limit(Some(Duration::from_millis(5)));
    let pool = WorkerPool::with_config(
        R::default(),
        handlers_of(&[Arc::clone(&worker)]),
        config,
        None,
    )
    .unwrap_or_else(|e| panic!("valid pool: {e}"));
    let plain = pool.submit_timed(request("plain", "hang")).await;
    assert_eq!(plain.result, Err(WorkerPoolError::Timeout));
    assert_eq!(plain.timings.limit, Some(TimeoutLimit::Run));
    wait_until(&rt, "the hung handler dropped", || worker.dropped() == 1).await;
    let limits = PhaseLimits::new().with_run(Duration::from_secs(5));
    let own = pool
        .submit_with_limits(request("own", "sleep:20"), limits)
        .await;
    assert!(
        own.is_ok(),
        "its own 5 s limit replaces the pool's 5 ms: {own:?}"
    );
    let ok = pool.submit_timed(request("quick", "echo")).await;
    assert!(ok.result.is_ok());
    assert_eq!(ok.timings.limit, None, "only a timeout names a limit");
    pool.shutdown().await;
}
