//! A pool in several lanes behaves as one pool, and the default pool keeps
//! late binding across all its workers.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use foreman_driver::{
    async_trait, PoolConfig, Runtime, WorkerErrorCode, WorkerHandler, WorkerHealth,
    WorkerHealthStatus, WorkerPool, WorkerPoolError, WorkerPoolOptions, WorkerProtocolError,
    WorkerRequest,
};
use futures::future;
use serde_json::Value;

use crate::support::{options, pool_in_lanes, request, sleep, wait_until, TestWorker};

/// A pool whose workers are spread over two lanes behaves as one pool:
/// worker order and ids, idle-first routing over every worker, a refusal
/// counted once, restart, add and remove by id, merged stats, shutdown.
pub async fn lanes_behave_as_one_pool<R: Runtime + Default + Clone>(rt: R) {
    let workers: Vec<_> = (0..4).map(|_| TestWorker::new(&rt)).collect();
    let pool = pool_in_lanes(
        &workers,
        WorkerPoolOptions {
            queue_capacity: 1,
            ..options()
        },
        2,
    );
    let ids = |health: Vec<WorkerHealth>| -> Vec<String> {
        health.into_iter().map(|h| h.worker_id).collect()
    };
    let expected: Vec<String> = (0..4).map(|i| format!("worker-{i}")).collect();
    assert_eq!(ids(pool.health_snapshot().await), expected);

    // Four gated requests take the four workers (idle first, whatever the
    // lane); four more queue one per worker; the ninth is refused, once.
    let running: Vec<_> = (0..4)
        .map(|i| pool.submit(request(&format!("run{i}"), "gate")))
        .collect();
    let queued: Vec<_> = (0..4)
        .map(|i| pool.submit(request(&format!("queued{i}"), "echo")))
        .collect();
    let control = async {
        wait_until(&rt, "eight accepted", || {
            pool.stats().counters.accepted == 8
        })
        .await;
        let stats = pool.stats();
        assert_eq!((stats.running, stats.queued), (4, 4), "{stats:?}");
        assert!(
            stats
                .workers
                .iter()
                .all(|w| w.running == 1 && w.queued == 1),
            "{stats:?}"
        );
        assert_eq!(
            stats
                .workers
                .iter()
                .map(|w| w.worker_id.clone())
                .collect::<Vec<_>>(),
            expected
        );
        let refused = pool.submit(request("ninth", "echo")).await;
        assert!(
            matches!(refused, Err(WorkerPoolError::QueueFull)),
            "{refused:?}"
        );
        let counters = pool.stats().counters;
        assert_eq!(
            (counters.submitted, counters.refused_queue_full),
            (9, 1),
            "a refusal is counted once over the lanes: {counters:?}"
        );
        // worker-3 lives in the second lane: restart it by id.
        assert!(pool.restart_worker("worker-3").await.is_ok());
        for worker in &workers {
            worker.open_gate(1);
        }
    };
    let (running, queued, ()) =
        futures::join!(future::join_all(running), future::join_all(queued), control);
    let restarted = running
        .iter()
        .filter(|r| matches!(r, Err(WorkerPoolError::Worker(e)) if e.code == WorkerErrorCode::Cancelled))
        .count();
    assert_eq!(restarted, 1, "{running:?}");
    assert_eq!(running.iter().filter(|r| r.is_ok()).count(), 3);
    assert!(queued.iter().all(Result::is_ok), "{queued:?}");

    // Add and remove by id; ids keep counting; order is kept.
    let added = pool
        .add_worker(TestWorker::new(&rt))
        .unwrap_or_else(|e| panic!("add: {e}"));
    assert_eq!(added, "worker-4");
    assert!(pool.remove_worker("worker-1").is_ok());
    assert!(matches!(
        pool.remove_worker("worker-9"),
        Err(WorkerPoolError::NoHealthyWorker)
    ));
    wait_until(&rt, "worker-1 removed", || {
        pool.stats()
            .workers
            .iter()
            .all(|w| w.worker_id != "worker-1")
    })
    .await;
    assert_eq!(
        ids(pool.health_snapshot().await),
        ["worker-0", "worker-2", "worker-3", "worker-4"]
    );
    let answered =
        future::join_all((0..8).map(|i| pool.submit(request(&format!("e{i}"), "echo")))).await;
    assert!(answered.iter().all(Result::is_ok), "{answered:?}");

    pool.shutdown().await;
    let counters = pool.stats().counters;
    assert_eq!(counters.succeeded, 3 + 4 + 8);
    assert_eq!(counters.accepted + counters.refused(), counters.submitted);
    assert!(pool
        .health_snapshot()
        .await
        .iter()
        .all(|h| h.status == WorkerHealthStatus::Unavailable));
    assert!(matches!(
        pool.submit(request("late", "echo")).await,
        Err(WorkerPoolError::ShuttingDown)
    ));
}

/// A worker that sleeps `delay` on the runtime's timer per request.
struct Paced<R> {
    rt: R,
    delay: Duration,
}

#[async_trait]
impl<R: Runtime + Clone> WorkerHandler for Paced<R> {
    async fn handle(&self, _request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        sleep(&self.rt, self.delay).await;
        Ok(Value::Null)
    }
}

/// Late binding holds across the whole pool as built by default: with 16
/// workers, every other one slow, 200 requests finish within 1.2x the time
/// of an explicit single lane (fast workers take the queue; before, a
/// default split into lanes left one lane's share with its slow workers,
/// ten times slower).
pub async fn slow_and_fast_workers_share_the_queue_as_in_one_lane<R: Runtime + Default + Clone>(
    rt: R,
) {
    let handlers = || -> Vec<Arc<dyn WorkerHandler>> {
        (0..16)
            .map(|i| {
                let delay = if i % 2 == 0 { 400 } else { 10 };
                Arc::new(Paced {
                    rt: rt.clone(),
                    delay: Duration::from_millis(delay),
                }) as Arc<dyn WorkerHandler>
            })
            .collect()
    };
    let options = WorkerPoolOptions {
        queue_capacity: 64,
        health_probe_interval: Duration::from_secs(60),
        default_request_timeout: Some(Duration::from_secs(30)),
        ..WorkerPoolOptions::default()
    };
    let run = |pool: WorkerPool<R>| {
        let rt = rt.clone();
        async move {
            let start = rt.now();
            let requests = (0..200).map(|i| pool.submit(request(&format!("r{i}"), "paced")));
            let answers = future::join_all(requests).await;
            let took = rt.now().saturating_duration_since(start);
            assert!(answers.iter().all(Result::is_ok));
            pool.shutdown().await;
            took
        }
    };
    let default = match WorkerPool::new_inprocess(handlers(), options.clone(), None) {
        Ok(pool) => run(pool).await,
        Err(error) => panic!("valid pool options refused: {error}"),
    };
    let single = match WorkerPool::with_lanes(
        R::default(),
        handlers(),
        PoolConfig::new(options),
        None,
        NonZeroUsize::MIN,
    ) {
        Ok(pool) => run(pool).await,
        Err(error) => panic!("valid pool options refused: {error}"),
    };
    assert!(
        default.as_secs_f64() <= 1.2 * single.as_secs_f64(),
        "default pool took {default:?}, a single lane {single:?}"
    );
}
