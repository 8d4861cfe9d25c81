//! Which worker runs a request: a slow worker does not hold the queue,
//! Degraded workers get less work, and the time a request spent queued is
//! reported apart from its run.

use std::sync::Arc;
use std::time::Duration;

use foreman_driver::{Runtime, WorkerHealthStatus, WorkerPoolError, WorkerResponse};

use crate::support::{options, pool_of, request, sleep, wait_until, TestWorker};

/// A slow worker does not keep its share of the queue. Both
/// workers are busy (gated); two requests queue, one on each. When the
/// fast worker frees up it runs both, oldest first — the one queued on the
/// slow worker too — while the slow worker is still stuck.
pub async fn a_slow_worker_does_not_hold_the_queue<R: Runtime + Default + Clone>(rt: R) {
    let slow = TestWorker::new(&rt);
    let fast = TestWorker::new(&rt);
    let pool = pool_of(&[Arc::clone(&slow), Arc::clone(&fast)], options());
    let control = async {
        wait_until(&rt, "two running and two queued", || {
            let stats = pool.stats();
            (stats.running, stats.queued) == (2, 2)
        })
        .await;
        fast.open_gate(1);
        wait_until(&rt, "the fast worker ran both queued requests", || {
            pool.stats().counters.succeeded == 3
        })
        .await;
        let stats = pool.stats();
        // The slow worker still runs its first request: nothing waited for it.
        assert_eq!((stats.running, stats.queued), (1, 0), "{stats:?}");
        assert_eq!(slow.calls(), 1);
        assert_eq!(stats.counters.reassigned, 1, "{:?}", stats.counters);
        slow.open_gate(1);
    };
    let (stuck, freed, first, second, ()) = futures::join!(
        pool.submit(request("stuck", "gate")),
        pool.submit(request("freed", "gate")),
        pool.submit(request("first", "echo")),
        pool.submit(request("second", "echo")),
        control,
    );
    let worker_of = |result: Result<WorkerResponse, WorkerPoolError>| match result {
        Ok(response) => response.worker_id,
        Err(error) => panic!("request failed: {error}"),
    };
    assert_eq!(worker_of(stuck), "worker-0");
    assert_eq!(worker_of(freed), "worker-1");
    assert_eq!(worker_of(first), "worker-1");
    assert_eq!(worker_of(second), "worker-1");
    pool.shutdown().await;
}

/// Degraded workers get less work. After one failure (of three
/// allowed) worker-0 is Degraded: one request at a time goes to the idle
/// Healthy workers only, where plain round robin would give it every third.
pub async fn degraded_workers_get_less_work<R: Runtime + Default + Clone>(rt: R) {
    let workers = [
        TestWorker::new(&rt),
        TestWorker::new(&rt),
        TestWorker::new(&rt),
    ];
    let pool = pool_of(&workers, options());
    let failed = pool.submit(request("fails", "fail")).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(pool.stats().workers[0].status, WorkerHealthStatus::Degraded);
    for i in 0..6 {
        let served = pool.submit(request(&format!("r{i}"), "echo")).await;
        let served = served.unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(served.worker_id, "worker-0", "a Degraded worker was chosen");
    }
    assert_eq!(workers[0].calls(), 1);
    pool.shutdown().await;
}

/// `elapsed_ms` includes the time spent queued, and
/// `submit_timed`'s timings say which is which. The second request queues behind a
/// gated one while the test sleeps 20 ms, then sleeps 20 ms itself; only
/// lower bounds are asserted (timers never fire early).
pub async fn elapsed_includes_queue_time<R: Runtime + Default + Clone>(rt: R) {
    let worker = TestWorker::new(&rt);
    let pool = pool_of(&[Arc::clone(&worker)], options());
    let release = async {
        wait_until(&rt, "the second request queued", || {
            pool.stats().queued == 1
        })
        .await;
        sleep(&rt, Duration::from_millis(20)).await;
        worker.open_gate(1);
    };
    let (first, second, ()) = futures::join!(
        pool.submit_timed(request("first", "gate")),
        pool.submit_timed(request("second", "sleep:20")),
        release,
    );
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (first_times, second_times) = (first.timings, second.timings);
    assert!(first.result.is_ok(), "{first:?}");
    let second = second.result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first_times.queued, Duration::ZERO, "{first_times:?}");
    assert!(
        first_times.ran.is_some_and(|r| ms(r) >= 20),
        "{first_times:?}"
    );
    assert!(ms(second_times.queued) >= 20, "{second_times:?}");
    assert!(
        second_times.ran.is_some_and(|r| ms(r) >= 20),
        "{second_times:?}"
    );
    assert_eq!(
        second.elapsed_ms,
        ms(second_times.queued + second_times.ran.unwrap_or_default())
    );
    assert!(second.elapsed_ms >= 40);
    pool.shutdown().await;
}
