//! Graceful shutdown: the drain, its deadline, and every command after it.

use std::sync::Arc;
use std::time::Duration;

use foreman_driver::{Runtime, WorkerHealthStatus, WorkerPoolError};
use futures::FutureExt;

use crate::support::{options, pending_after_one_poll, pool_of, request, wait_until, TestWorker};

/// Shutdown is graceful (new submits get `ShuttingDown` at once,
/// queued and running requests finish, it returns after they did); with a
/// drain deadline the rest are answered `ShuttingDown`; afterwards every
/// worker is Unavailable.
pub async fn shutdown_drains_queued_and_running_requests<R: Runtime + Default + Clone>(rt: R) {
    let workers = [TestWorker::new(&rt), TestWorker::new(&rt)];
    let pool = pool_of(&workers, options());
    let running = pool.submit(request("running", "gate"));
    let queued = pool.submit(request("queued", "gate"));
    let queued2 = pool.submit(request("queued2", "gate"));
    let shutdown = async {
        wait_until(&rt, "accepted", || pool.stats().counters.accepted == 3).await;
        let mut stop = Box::pin(pool.shutdown());
        assert!(pending_after_one_poll(&mut stop).await);
        let late = pool.submit(request("late", "echo")).now_or_never();
        assert!(matches!(late, Some(Err(WorkerPoolError::ShuttingDown))));
        for worker in &workers {
            worker.open_gate(2);
        }
        stop.await;
    };
    let (a, b, c, ()) = futures::join!(running, queued, queued2, shutdown);
    assert!(a.is_ok() && b.is_ok() && c.is_ok(), "{a:?} {b:?} {c:?}");
    let health = pool.health_snapshot().await;
    assert!(health
        .iter()
        .all(|h| h.status == WorkerHealthStatus::Unavailable));

    let worker = TestWorker::new(&rt);
    let pool = pool_of(&[Arc::clone(&worker)], options());
    let hanging = pool.submit(request("hang", "hang"));
    let queued = pool.submit(request("queued", "echo"));
    let stop = async {
        wait_until(&rt, "accepted", || pool.stats().counters.accepted == 2).await;
        pool.shutdown_with_deadline(Duration::from_millis(5)).await;
    };
    let (hanging, queued, ()) = futures::join!(hanging, queued, stop);
    assert!(matches!(hanging, Err(WorkerPoolError::ShuttingDown)));
    assert!(matches!(queued, Err(WorkerPoolError::ShuttingDown)));
    assert_eq!(
        worker.dropped(),
        1,
        "shutdown returned after the handler ended"
    );
    assert!(pool
        .health_snapshot()
        .await
        .iter()
        .all(|h| h.status == WorkerHealthStatus::Unavailable));
}

/// After shutdown every command answers `ShuttingDown`: remove (twice),
/// restart, add, submit, for known and unknown worker ids alike; the
/// workers stay listed.
pub async fn commands_after_shutdown_answer_shutting_down<R: Runtime + Default + Clone>(rt: R) {
    let workers: Vec<_> = (0..2).map(|_| TestWorker::new(&rt)).collect();
    let pool = pool_of(&workers, options());
    pool.shutdown().await;
    let answers = [
        ("remove", pool.remove_worker("worker-0")),
        ("remove again", pool.remove_worker("worker-0")),
        ("restart", pool.restart_worker("worker-1").await),
        ("remove unknown", pool.remove_worker("worker-9")),
        ("restart unknown", pool.restart_worker("worker-9").await),
        ("add", pool.add_worker(TestWorker::new(&rt)).map(drop)),
        (
            "submit",
            pool.submit(request("late", "echo")).await.map(drop),
        ),
    ];
    for (command, answer) in answers {
        assert!(
            matches!(answer, Err(WorkerPoolError::ShuttingDown)),
            "{command}: {answer:?}"
        );
    }
    let ids: Vec<String> = pool
        .health_snapshot()
        .await
        .into_iter()
        .map(|h| h.worker_id)
        .collect();
    assert_eq!(ids, ["worker-0", "worker-1"]);
}
