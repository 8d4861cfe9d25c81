//! A pool in several lanes behaves as one pool, and the default pool keeps
//! late binding across all its workers.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use foreman_driver::{
    async_trait, Counters, PoolConfig, Runtime, WorkerErrorCode, WorkerHandler, WorkerHealth,
    WorkerHealthStatus, WorkerPool, WorkerPoolError, WorkerPoolOptions, WorkerProtocolError,
    WorkerRequest,
};
use futures::future;
use metrics_util::debugging::DebuggingRecorder;
use serde_json::Value;

use crate::observability::Readings;
use crate::support::{
    handlers_of, lane_pool, options, pending_after_one_poll, pool_in_lanes, request, sleep,
    wait_until, LaneMode, TestWorker,
};

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

/// One run of the slow/fast workload: 16 workers, every other one slow
/// (400 ms a request) and the others fast (10 ms), 200 requests submitted
/// at once, on a pool of `lanes` lanes (`None`: as built by default).
/// Returns how long the last answer took, how many requests the slow
/// workers ran, and the pool's counters.
pub async fn slow_and_fast_workers<R: Runtime + Default + Clone>(
    rt: R,
    lanes: Option<usize>,
) -> (Duration, usize, Counters) {
    slow_and_fast_workers_in(rt, lanes, LaneMode::PoolTasks).await
}

/// [`slow_and_fast_workers`] on a pool run as `mode` says (`lanes`
/// `None` builds the default pool, in the default mode).
pub async fn slow_and_fast_workers_in<R: Runtime + Default + Clone>(
    rt: R,
    lanes: Option<usize>,
    mode: LaneMode,
) -> (Duration, usize, Counters) {
    let pool = slow_and_fast_pool_in(&rt, lanes, mode);
    let started = rt.now();
    let requests = (0..200).map(|i| pool.submit(request(&format!("r{i}"), "paced")));
    let answers = future::join_all(requests).await;
    let elapsed = rt.now().saturating_duration_since(started);
    let slow_runs = answers
        .iter()
        .map(|answer| match answer {
            Ok(response) => response.worker_id.clone(),
            Err(error) => panic!("a paced request failed: {error}"),
        })
        .filter(|worker| {
            let index: usize = worker
                .trim_start_matches("worker-")
                .parse()
                .unwrap_or_else(|_| panic!("unexpected worker id {worker}"));
            index % 2 == 0
        })
        .count();
    pool.shutdown().await;
    (elapsed, slow_runs, pool.stats().counters)
}

/// Sixteen paced workers: the even ones take `slow_ms` a request, the
/// odd ones `fast_ms`.
fn paced_handlers<R: Runtime + Clone>(
    rt: &R,
    slow_ms: u64,
    fast_ms: u64,
) -> Vec<Arc<dyn WorkerHandler>> {
    (0..16)
        .map(|i| {
            let delay = if i % 2 == 0 { slow_ms } else { fast_ms };
            Arc::new(Paced {
                rt: rt.clone(),
                delay: Duration::from_millis(delay),
            }) as Arc<dyn WorkerHandler>
        })
        .collect()
}

/// The pool of the slow/fast workload ([`slow_and_fast_workers`]): 16
/// workers, every other one slow (400 ms a request) and the others fast
/// (10 ms), in `lanes` lanes (`None`: as built by default).
pub(crate) fn slow_and_fast_pool<R: Runtime + Default + Clone>(
    rt: &R,
    lanes: Option<usize>,
) -> WorkerPool<R> {
    slow_and_fast_pool_in(rt, lanes, LaneMode::PoolTasks)
}

/// [`slow_and_fast_pool`] run as `mode` says.
fn slow_and_fast_pool_in<R: Runtime + Default + Clone>(
    rt: &R,
    lanes: Option<usize>,
    mode: LaneMode,
) -> WorkerPool<R> {
    let handlers = paced_handlers(rt, 400, 10);
    let options = WorkerPoolOptions {
        queue_capacity: 64,
        health_probe_interval: Duration::from_secs(60),
        default_request_timeout: Some(Duration::from_secs(30)),
        ..WorkerPoolOptions::default()
    };
    match lanes {
        None => WorkerPool::<R>::new_inprocess(handlers, options, None)
            .unwrap_or_else(|error| panic!("valid pool options refused: {error}")),
        Some(lanes) => lane_pool(handlers, options, lanes, mode),
    }
}

/// The slow half's share that late binding leaves it: each slow worker
/// runs its first request and, at most, one more that is still queued
/// when it finishes (without late binding they run about 100).
fn assert_late_bound(slow_runs: usize, what: &str) {
    assert!(
        (8..=50).contains(&slow_runs),
        "{what}: the 8 slow workers ran {slow_runs} of 200 requests: late binding should \
         leave them one or two each (without it they run about 100)"
    );
}

/// Late binding holds across the whole pool as built by default: with 16
/// workers, every other one slow (400 ms a request) and the others fast
/// (10 ms), 200 requests submitted at once are taken off the queue by the
/// fast workers as they free up. Each slow worker runs its first request
/// and, at most, one more that is still queued when it finishes, so the
/// slow half runs far fewer than the half of the requests it would run if
/// queued requests stayed with the worker they were queued on. Counted by
/// the workers named in the answers, not timed, so a loaded machine does
/// not change the verdict.
pub async fn fast_workers_take_the_queue_from_slow_ones<R: Runtime + Default + Clone>(rt: R) {
    let (_, slow_runs, _) = slow_and_fast_workers(rt, None).await;
    assert_late_bound(slow_runs, "as built by default");
}

/// Late binding holds across lanes: in two lanes (worker-i in lane i % 2,
/// so every slow worker is in lane 0) and in four, the fast workers of the
/// other lanes take lane 0's queue as they free up, so the slow half runs
/// as few requests as in one lane, and the counters summed over the lanes
/// are one lane's (every request accepted once and answered once; every
/// request a lane released, another took in). Counted, not timed (the
/// completion time is compared under tokio's virtual clock).
pub async fn late_binding_holds_across_lanes<R: Runtime + Default + Clone>(rt: R) {
    late_binding_holds_across_lanes_in(rt, LaneMode::PoolTasks).await;
}

/// [`late_binding_holds_across_lanes`] with handlers run in their
/// callers' tasks: a request moved to another lane is started there and
/// its caller completes it in that lane.
pub async fn late_binding_holds_across_lanes_in_caller_task_mode<R: Runtime + Default + Clone>(
    rt: R,
) {
    late_binding_holds_across_lanes_in(rt, LaneMode::CallerTask).await;
}

/// [`late_binding_holds_across_lanes`] in a pool with hooks.
pub async fn late_binding_holds_across_lanes_with_hooks<R: Runtime + Default + Clone>(rt: R) {
    late_binding_holds_across_lanes_in(rt, LaneMode::Hooked).await;
}

async fn late_binding_holds_across_lanes_in<R: Runtime + Default + Clone>(rt: R, mode: LaneMode) {
    let (_, _, one) = slow_and_fast_workers_in(rt.clone(), Some(1), mode).await;
    let counts = |c: &Counters| (c.submitted, c.accepted, c.succeeded, c.answered());
    for lanes in [2, 4] {
        let (_, slow_runs, counters) =
            slow_and_fast_workers_in(rt.clone(), Some(lanes), mode).await;
        assert_late_bound(slow_runs, &format!("{lanes} lanes, {mode:?}"));
        assert_eq!(
            counts(&counters),
            counts(&one),
            "{lanes} lanes, {mode:?}: {counters:?}"
        );
        assert_eq!(counters.moved_in, counters.moved_out, "{counters:?}");
        assert!(counters.moved_in > 0, "nothing moved: {counters:?}");
    }
}

/// Removing every worker of a lane while requests wait there moves them to
/// the other lane's workers: all are answered by those, none `Unavailable`.
pub async fn removing_a_lanes_workers_moves_its_queue<R: Runtime + Default + Clone>(rt: R) {
    removing_a_lanes_workers_moves_its_queue_in(rt, LaneMode::PoolTasks).await;
}

/// [`removing_a_lanes_workers_moves_its_queue`] with handlers run in
/// their callers' tasks.
pub async fn removing_a_lanes_workers_moves_its_queue_in_caller_task_mode<
    R: Runtime + Default + Clone,
>(
    rt: R,
) {
    removing_a_lanes_workers_moves_its_queue_in(rt, LaneMode::CallerTask).await;
}

/// [`removing_a_lanes_workers_moves_its_queue`] in a pool with hooks.
pub async fn removing_a_lanes_workers_moves_its_queue_with_hooks<R: Runtime + Default + Clone>(
    rt: R,
) {
    removing_a_lanes_workers_moves_its_queue_in(rt, LaneMode::Hooked).await;
}

async fn removing_a_lanes_workers_moves_its_queue_in<R: Runtime + Default + Clone>(
    rt: R,
    mode: LaneMode,
) {
    let workers: Vec<_> = (0..4).map(|_| TestWorker::new(&rt)).collect();
    let options = WorkerPoolOptions {
        queue_capacity: 8,
        ..options()
    };
    let pool: WorkerPool<R> = lane_pool(handlers_of(&workers), options, 2, mode);
    // One gated request on each worker, then twelve that queue, spread
    // over both lanes.
    let running: Vec<_> = (0..4)
        .map(|i| pool.submit(request(&format!("run{i}"), "gate")))
        .collect();
    let queued: Vec<_> = (0..12)
        .map(|i| pool.submit(request(&format!("queued{i}"), "echo")))
        .collect();
    let control = async {
        wait_until(&rt, "sixteen accepted", || {
            pool.stats().counters.accepted == 16
        })
        .await;
        let stats = pool.stats();
        // worker-0 and worker-2 are lane 0's.
        let lane_zero = |id: &str| id == "worker-0" || id == "worker-2";
        let waiting: usize = stats
            .workers
            .iter()
            .filter(|w| lane_zero(&w.worker_id))
            .map(|w| w.queued)
            .sum();
        assert!(waiting > 0, "nothing queued in lane 0: {stats:?}");
        assert!(pool.remove_worker("worker-0").is_ok());
        assert!(pool.remove_worker("worker-2").is_ok());
        for worker in &workers {
            worker.open_gate(1);
        }
    };
    let (running, queued, ()) =
        futures::join!(future::join_all(running), future::join_all(queued), control);
    assert!(running.iter().all(Result::is_ok), "{running:?}");
    for answer in &queued {
        match answer {
            Ok(response) => assert!(
                response.worker_id == "worker-1" || response.worker_id == "worker-3",
                "a queued request ran on a removed worker: {response:?}"
            ),
            Err(error) => panic!("a queued request was not served: {error:?}"),
        }
    }
    let counters = pool.stats().counters;
    assert_eq!(counters.unroutable_after_removal, 0, "{counters:?}");
    assert_eq!(counters.moved_in, counters.moved_out, "{counters:?}");
    pool.shutdown().await;
}

/// Callers that give up on requests while the lanes move them get one
/// answer each: after shutdown every accepted request was answered
/// exactly once (the counters summed over the lanes balance) and shutdown
/// returned, so no moved request was lost or left a handler counted live;
/// the metrics count each request's end once (also of one cancelled
/// between two lanes) and every worker's gauges are back to zero.
pub async fn requests_cancelled_while_moving_are_answered_once<R: Runtime + Default + Clone>(
    rt: R,
) {
    let handlers = paced_handlers(&rt, 40, 1);
    let options = WorkerPoolOptions {
        queue_capacity: 64,
        health_probe_interval: Duration::from_secs(60),
        ..WorkerPoolOptions::default()
    };
    let recorder = DebuggingRecorder::new();
    let m = Readings::new(&recorder);
    let pool = metrics::with_local_recorder(&recorder, || {
        WorkerPool::<R>::with_lanes(
            R::default(),
            handlers,
            PoolConfig::new(options),
            None,
            NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
        )
    })
    .unwrap_or_else(|error| panic!("valid pool options refused: {error}"));
    // Every third caller gives up after a few milliseconds, while the
    // fast workers take the slow lane's queue.
    let callers = (0..300u64).map(|i| {
        let pool = &pool;
        let rt = rt.clone();
        async move {
            let submit = pool.submit(request(&format!("r{i}"), "paced"));
            if i % 3 == 0 {
                let give_up = sleep(&rt, Duration::from_millis(1 + i % 7));
                futures::pin_mut!(submit, give_up);
                match future::select(submit, give_up).await {
                    future::Either::Left((answer, _)) => Some(answer),
                    future::Either::Right(_) => None,
                }
            } else {
                Some(submit.await)
            }
        }
    });
    let answers = future::join_all(callers).await;
    for answer in answers.iter().flatten() {
        assert!(answer.is_ok(), "{answer:?}");
    }
    pool.shutdown().await;
    let counters = pool.stats().counters;
    assert_eq!(counters.accepted, 300, "{counters:?}");
    assert_eq!(counters.answered(), 300, "{counters:?}");
    assert_eq!(counters.moved_in, counters.moved_out, "{counters:?}");
    assert_eq!(m.counter("foreman_requests_accepted_total", &[]), 300);
    assert_eq!(m.ended(), 300, "{:?}", m.all());
    m.assert_worker_gauges_zero(16);
}

/// A caller that drops its running request frees that worker, and a
/// request queued in the other lane moves to it at once: the queued
/// request is answered by the freed worker while the request ahead of it
/// in its own lane still runs (no other input reaches that lane).
pub async fn a_cancel_that_frees_a_worker_moves_another_lanes_queue<
    R: Runtime + Default + Clone,
>(
    rt: R,
) {
    let workers: Vec<_> = (0..2).map(|_| TestWorker::new(&rt)).collect();
    let pool: WorkerPool<R> = pool_in_lanes(&workers, options(), 2);
    // worker-i is in lane i; each runs one gated request.
    let mut first = Box::pin(pool.submit(request("run0", "gate")));
    assert!(pending_after_one_poll(&mut first).await);
    wait_until(&rt, "one gated request running", || {
        workers.iter().map(|w| w.calls()).sum::<usize>() == 1
    })
    .await;
    let first_on = usize::from(workers[1].calls() == 1);
    let mut second = Box::pin(pool.submit(request("run1", "gate")));
    assert!(pending_after_one_poll(&mut second).await);
    wait_until(&rt, "both gated requests running", || {
        workers.iter().all(|w| w.calls() == 1)
    })
    .await;
    let mut queued = Box::pin(pool.submit(request("queued", "echo")));
    assert!(pending_after_one_poll(&mut queued).await);
    let stats = pool.stats();
    let waits_at = stats
        .workers
        .iter()
        .position(|w| w.queued == 1)
        .unwrap_or_else(|| panic!("nothing queued: {stats:?}"));
    // Drop the gated request running on the other lane's worker.
    let freed = 1 - waits_at;
    let kept = if first_on == freed {
        drop(first);
        second
    } else {
        drop(second);
        first
    };
    let answer = queued.await;
    assert_eq!(
        answer.as_ref().map(|r| r.worker_id.clone()).ok(),
        Some(format!("worker-{freed}")),
        "{answer:?}"
    );
    assert_eq!(workers[freed].dropped(), 1);
    let counters = pool.stats().counters;
    assert_eq!(
        (counters.moved_in, counters.moved_out),
        (1, 1),
        "{counters:?}"
    );
    workers[waits_at].open_gate(1);
    assert!(kept.await.is_ok());
    pool.shutdown().await;
}
