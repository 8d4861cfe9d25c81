//! A worker's health: panics, timeouts and failures count once each, a
//! restart keeps the queue, probes neither whitewash failures nor hang.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use foreman_driver::{
    HealthCause, Runtime, WorkerErrorCode, WorkerHealthStatus, WorkerPoolError, WorkerPoolOptions,
};

use crate::support::{options, pool_of, request, wait_until, worker_error, ProbeMode, TestWorker};

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
    // The worker's task drops the handler future. On a busy machine the
    // timeout can come before the task first polls the handler: then the
    // handler never started (no call) and is dropped unpolled.
    wait_until(&rt, "the handler future dropped", || {
        worker.dropped() == worker.calls()
    })
    .await;
    assert!(worker.calls() <= 1, "the hanging request ran once at most");
    let health = pool.health_snapshot().await;
    assert_eq!(health[0].status, WorkerHealthStatus::Degraded);
    assert_eq!(health[0].consecutive_failures, 1);
    let next = pool.submit(request("next", "echo")).await;
    let next = next.unwrap_or_else(|e| panic!("the worker is free: {e}"));
    assert_eq!(next.worker_id, "worker-0");
    pool.shutdown().await;
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
