//! Hooks and the circuit breaker's say: hooks fire once each after the fact,
//! `allow_request` is asked in turn, a request stays where it allowed, and
//! moves off a removed worker only where it allows.

use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};

use foreman_driver::{
    CircuitBreakerHooks, PoolConfig, Runtime, WorkerErrorCode, WorkerHandler, WorkerPool,
    WorkerPoolError, WorkerPoolOptions, WorkerResponse,
};
use futures::future;

use crate::support::{
    assert_served_by, handlers_of, options, pending_after_one_poll, request, wait_until,
    RecordingHooks, TestWorker,
};

/// Hooks fire once per event, after the fact; a request is never
/// both accepted and rejected by one worker.
pub async fn accept_and_reject_hooks_fire_once_after_the_fact<R: Runtime + Default + Clone>(rt: R) {
    let hooks = Arc::new(RecordingHooks::default());
    hooks
        .open
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push("worker-0".to_string());
    let workers = [TestWorker::new(&rt), TestWorker::new(&rt)];
    let handlers = workers
        .iter()
        .map(|w| Arc::clone(w) as Arc<dyn WorkerHandler>)
        .collect();
    let pool = WorkerPool::<R>::new_inprocess(
        handlers,
        WorkerPoolOptions {
            queue_capacity: 1,
            ..options()
        },
        Some(Arc::clone(&hooks) as Arc<dyn CircuitBreakerHooks>),
    )
    .unwrap_or_else(|e| panic!("valid pool: {e}"));
    let response = pool.submit(request("r1", "echo")).await;
    let response = response.unwrap_or_else(|e| panic!("worker-1 serves: {e}"));
    assert_eq!(response.worker_id, "worker-1");
    assert_eq!(
        hooks.log(),
        [
            "rejected r1 worker-0 CircuitOpen",
            "accepted r1 worker-1",
            "success r1 worker-1",
        ]
    );
    hooks
        .log
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    let gate1 = pool.submit(request("g1", "gate"));
    let gate2 = pool.submit(request("g2", "gate"));
    let full = async {
        let refused = pool.submit(request("full", "echo")).await;
        workers[1].open_gate(2);
        refused
    };
    let (g1, g2, refused) = futures::join!(gate1, gate2, full);
    assert!(g1.is_ok() && g2.is_ok(), "{g1:?} {g2:?}");
    assert!(matches!(refused, Err(WorkerPoolError::QueueFull)));
    let log = hooks.log();
    assert_eq!(
        hooks.about("full"),
        [
            "rejected full worker-0 CircuitOpen",
            "rejected full - QueueFull"
        ]
    );
    let g1_accepted = hooks.about("g1");
    assert_eq!(
        g1_accepted
            .iter()
            .filter(|l| l.starts_with("accepted"))
            .count(),
        1
    );
    assert!(!log.iter().any(|line| line.starts_with("accepted full")));
    assert_eq!(log.iter().filter(|l| l.starts_with("success")).count(), 2);
    pool.shutdown().await;
}

/// With a circuit breaker (hooks), a request runs on the worker whose
/// `allow_request` approved it and that fired `on_request_accepted`: the
/// free worker does not take the one queued on the busy worker.
pub async fn with_a_circuit_breaker_requests_stay_put<R: Runtime + Default + Clone>(rt: R) {
    let busy = TestWorker::new(&rt);
    let freed = TestWorker::new(&rt);
    let hooks = Arc::new(RecordingHooks::default());
    let pool = match WorkerPool::<R>::new_inprocess(
        handlers_of(&[Arc::clone(&busy), Arc::clone(&freed)]),
        options(),
        Some(Arc::clone(&hooks) as Arc<dyn CircuitBreakerHooks>),
    ) {
        Ok(pool) => pool,
        Err(error) => panic!("valid pool options refused: {error}"),
    };
    let control = async {
        wait_until(&rt, "two running and one queued", || {
            let stats = pool.stats();
            (stats.running, stats.queued) == (2, 1)
        })
        .await;
        freed.open_gate(1);
        wait_until(&rt, "the freed worker's request answered", || {
            pool.stats().counters.succeeded == 1
        })
        .await;
        let stats = pool.stats();
        assert_eq!((stats.running, stats.queued), (1, 1), "{stats:?}");
        busy.open_gate(1);
    };
    let (first, _, queued, ()) = futures::join!(
        pool.submit(request("busy", "gate")),
        pool.submit(request("freed", "gate")),
        pool.submit(request("queued", "echo")),
        control,
    );
    assert!(first.is_ok(), "{first:?}");
    let queued = queued.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(queued.worker_id, "worker-0");
    assert!(
        hooks
            .log()
            .contains(&"accepted queued worker-0".to_string()),
        "{:?}",
        hooks.log()
    );
    assert_eq!(pool.stats().counters.reassigned, 0);
    pool.shutdown().await;
}

fn picky_pool<R: Runtime + Default + Clone>(
    workers: &[Arc<TestWorker<R>>],
    breaker: &Arc<RecordingHooks>,
) -> WorkerPool<R> {
    match WorkerPool::<R>::new_inprocess(
        handlers_of(workers),
        options(),
        Some(Arc::clone(breaker) as Arc<dyn CircuitBreakerHooks>),
    ) {
        Ok(pool) => pool,
        Err(error) => panic!("valid pool options refused: {error}"),
    }
}

/// `allow_request` is asked about the candidates in the pool's order,
/// one at a time, until one allows: a worker after the one that took the
/// request is never asked; each veto is reported.
pub async fn allow_request_is_asked_in_turn_until_one_allows<R: Runtime + Default + Clone>(rt: R) {
    let workers: Vec<_> = (0..3).map(|_| TestWorker::new(&rt)).collect();
    let breaker = Arc::new(RecordingHooks::asking());
    breaker.refuse("r", "worker-0");
    let pool = picky_pool(&workers, &breaker);
    assert_served_by(&pool, "r", "worker-1").await;
    assert_eq!(
        breaker.about("r"),
        [
            "ask r worker-0",
            "rejected r worker-0 CircuitOpen",
            "ask r worker-1",
            "accepted r worker-1",
            "success r worker-1",
        ]
    );
    for worker in ["worker-0", "worker-1", "worker-2"] {
        breaker.refuse("nowhere", worker);
    }
    let refused = pool.submit(request("nowhere", "echo")).await;
    assert!(
        matches!(refused, Err(WorkerPoolError::CircuitOpen)),
        "{refused:?}"
    );
    let counters = pool.stats().counters;
    assert_eq!((counters.submitted, counters.refused_circuit_open), (2, 1));
    pool.shutdown().await;
}

/// `count` workers and a breaker that refuses worker-1 for request `q`.
fn busy_breaker_pool<R: Runtime + Default + Clone>(
    rt: &R,
    count: usize,
) -> (Vec<Arc<TestWorker<R>>>, Arc<RecordingHooks>, WorkerPool<R>) {
    let workers: Vec<_> = (0..count).map(|_| TestWorker::new(rt)).collect();
    let breaker = Arc::new(RecordingHooks::asking());
    breaker.refuse("q", "worker-1");
    let pool = picky_pool(&workers, &breaker);
    (workers, breaker, pool)
}

/// A caller's pending `submit`.
type Pending<'a> =
    Pin<Box<dyn Future<Output = Result<WorkerResponse, WorkerPoolError>> + Send + 'a>>;

/// Once all `busy` workers run a request, queues `q` (an echo) on
/// worker-0, the first candidate, and removes worker-0; returns `q`'s
/// pending submit.
async fn queue_q_then_remove_worker_0<'a, R: Runtime>(
    rt: &R,
    pool: &'a WorkerPool<R>,
    busy: usize,
) -> Pending<'a> {
    wait_until(rt, "every worker busy", || pool.stats().running == busy).await;
    let mut queued: Pending<'a> = Box::pin(pool.submit(request("q", "echo")));
    assert!(pending_after_one_poll(&mut queued).await);
    wait_until(rt, "q queued", || pool.stats().queued == 1).await;
    assert!(pool.remove_worker("worker-0").is_ok());
    queued
}

/// Three gated workers are busy; `q` is queued on worker-0, the only
/// candidate asked. When worker-0 is removed, `q` moves only where the
/// breaker allows: worker-1 (next in turn) refuses it, worker-2 takes it,
/// and the hooks hear of each step.
pub async fn a_moved_request_goes_only_where_the_breaker_allows<R: Runtime + Default + Clone>(
    rt: R,
) {
    let (workers, breaker, pool) = busy_breaker_pool(&rt, 3);
    let gated: Vec<_> = (0..3)
        .map(|i| pool.submit(request(&format!("g{i}"), "gate")))
        .collect();
    let control = async {
        let queued = queue_q_then_remove_worker_0(&rt, &pool, 3).await;
        let moved = async {
            wait_until(&rt, "q moved", || {
                breaker
                    .about("q")
                    .iter()
                    .any(|l| l.starts_with("accepted q worker-2"))
            })
            .await;
            for worker in &workers {
                worker.open_gate(1);
            }
        };
        let (queued, ()) = futures::join!(queued, moved);
        queued
    };
    let (gated, queued) = futures::join!(future::join_all(gated), control);
    assert!(gated.iter().all(Result::is_ok), "{gated:?}");
    assert_eq!(
        queued.map(|r| r.worker_id).ok().as_deref(),
        Some("worker-2")
    );
    assert_eq!(
        breaker.about("q"),
        [
            "ask q worker-0",
            "accepted q worker-0",
            "ask q worker-1",
            "rejected q worker-1 CircuitOpen",
            "ask q worker-2",
            "accepted q worker-2",
            "success q worker-2",
        ]
    );
    assert_eq!(pool.stats().counters.requeued, 1);
    pool.shutdown().await;
}

/// A request queued on a removed worker that the breaker allows nowhere
/// else is answered with a retryable `Unavailable`, and the veto reported.
pub async fn a_moved_request_allowed_nowhere_is_answered<R: Runtime + Default + Clone>(rt: R) {
    let (workers, breaker, pool) = busy_breaker_pool(&rt, 2);
    let gated: Vec<_> = (0..2)
        .map(|i| pool.submit(request(&format!("g{i}"), "gate")))
        .collect();
    let control = async {
        let answered = queue_q_then_remove_worker_0(&rt, &pool, 2).await.await;
        for worker in &workers {
            worker.open_gate(1);
        }
        answered
    };
    let (gated, queued) = futures::join!(future::join_all(gated), control);
    assert!(gated.iter().all(Result::is_ok), "{gated:?}");
    match queued {
        Err(WorkerPoolError::Worker(error)) => {
            assert_eq!(error.code, WorkerErrorCode::Unavailable);
            assert!(error.retryable);
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(
        breaker.about("q"),
        [
            "ask q worker-0",
            "accepted q worker-0",
            "ask q worker-1",
            "rejected q worker-1 CircuitOpen",
        ]
    );
    let counters = pool.stats().counters;
    assert_eq!(
        (counters.requeued, counters.unroutable_after_removal),
        (0, 1)
    );
    pool.shutdown().await;
}

/// With a breaker, a pool of two lanes asks each worker once, in turn
/// over the lanes, and counts each request once.
pub async fn a_breaker_over_two_lanes_counts_each_request_once<R: Runtime + Default + Clone>(
    rt: R,
) {
    let workers: Vec<_> = (0..4).map(|_| TestWorker::new(&rt)).collect();
    let breaker = Arc::new(RecordingHooks::asking());
    for worker in ["worker-0", "worker-1", "worker-2"] {
        breaker.refuse("r", worker);
    }
    for worker in ["worker-0", "worker-1", "worker-2", "worker-3"] {
        breaker.refuse("none", worker);
    }
    let pool = match WorkerPool::with_lanes(
        R::default(),
        handlers_of(&workers),
        PoolConfig::new(options()).vetted_by_breaker(true),
        Some(Arc::clone(&breaker) as Arc<dyn CircuitBreakerHooks>),
        NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
    ) {
        Ok(pool) => pool,
        Err(error) => panic!("valid pool options refused: {error}"),
    };
    assert_served_by(&pool, "r", "worker-3").await;
    let mut asked: Vec<String> = breaker
        .about("r")
        .into_iter()
        .filter(|l| l.starts_with("ask"))
        .collect();
    asked.sort();
    assert_eq!(
        asked,
        [
            "ask r worker-0",
            "ask r worker-1",
            "ask r worker-2",
            "ask r worker-3"
        ]
    );
    let refused = pool.submit(request("none", "echo")).await;
    assert!(
        matches!(refused, Err(WorkerPoolError::CircuitOpen)),
        "{refused:?}"
    );
    let vetoes = breaker
        .about("none")
        .iter()
        .filter(|l| l.ends_with("CircuitOpen") && !l.contains(" - "))
        .count();
    assert_eq!(vetoes, 4);
    assert_eq!(
        breaker.about("none").last().map(String::as_str),
        Some("rejected none - CircuitOpen")
    );
    let counters = pool.stats().counters;
    assert_eq!(
        (
            counters.submitted,
            counters.accepted,
            counters.refused_circuit_open
        ),
        (2, 1, 1),
        "{counters:?}"
    );
    pool.shutdown().await;
}
