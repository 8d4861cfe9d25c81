//! tower middleware in front of the pool (feature `tower`), on tokio's
//! paused clock: a timeout, a concurrency limit, a buffer, load shedding,
//! and readiness woken by what frees room (a queued request's deadline, a
//! worker added).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use foreman_support::bench::bench_request;
use foreman_tokio::{
    handler_fn, PoolConfig, TokioRuntime, WorkerHandler, WorkerPool, WorkerPoolError,
    WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_test::mock::Spawn;

/// Counts handler futures dropped before they finished.
struct DropWatch(Arc<AtomicUsize>, bool);

impl Drop for DropWatch {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A handler whose requests wait for a permit of `gate` (`node_id`
/// "gate") or never finish ("hang"); dropped runs are counted in `dropped`.
fn gated_handler(gate: &Arc<Semaphore>, dropped: &Arc<AtomicUsize>) -> Arc<dyn WorkerHandler> {
    let (gate, dropped) = (Arc::clone(gate), Arc::clone(dropped));
    handler_fn(move |request: WorkerRequest| {
        let (gate, dropped) = (Arc::clone(&gate), Arc::clone(&dropped));
        async move {
            let mut watch = DropWatch(dropped, false);
            match request.node_id.as_str() {
                "hang" => std::future::pending::<()>().await,
                "gate" => {
                    if let Ok(permit) = gate.acquire().await {
                        permit.forget();
                    }
                }
                _ => {}
            }
            watch.1 = true;
            Ok::<Value, WorkerProtocolError>(json!({ "node": request.node_id }))
        }
    })
    .into_arc()
}

/// Lets the pool's tasks run (no time passes) until `condition` holds;
/// panics if it does not within 1000 turns.
async fn yield_until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("still waiting for {what}");
}

fn request(id: &str, node: &str, timeout_ms: Option<u64>) -> WorkerRequest {
    WorkerRequest {
        request_id: id.into(),
        node_id: node.into(),
        timeout_ms,
        ..bench_request()
    }
}

fn pool(workers: usize, queue_capacity: usize) -> (WorkerPool, Arc<Semaphore>, Arc<AtomicUsize>) {
    let gate = Arc::new(Semaphore::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let handlers = (0..workers)
        .map(|_| gated_handler(&gate, &dropped))
        .collect();
    let options = WorkerPoolOptions {
        queue_capacity,
        health_probe_interval: Duration::from_secs(60),
        default_request_timeout: Some(Duration::from_secs(10)),
        ..WorkerPoolOptions::default()
    };
    let pool = WorkerPool::new_inprocess(handlers, options, None).expect("valid options");
    (pool, gate, dropped)
}

/// A `tower::timeout::Timeout` in front of the pool: a handler that hangs
/// is cut off at the timeout's deadline (virtual time), and dropping the
/// response future cancels the request in the pool and drops its handler.
#[tokio::test(start_paused = true)]
async fn a_timeout_in_front_of_the_pool_cancels_a_hanging_request() {
    let (pool, _gate, dropped) = pool(1, 4);
    let service = ServiceBuilder::new()
        .timeout(Duration::from_millis(50))
        .service(pool.service());
    let start = tokio::time::Instant::now();
    let timed_out = service.oneshot(request("slow", "hang", None)).await;
    let error = timed_out.expect_err("cut off by the timeout");
    assert!(
        error.is::<tower::timeout::error::Elapsed>(),
        "the timeout's own error: {error}"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(50));
    // The cancellation reached the worker's task: its handler was dropped.
    yield_until("the handler to be dropped", || {
        dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    let counters = pool.stats().counters;
    assert_eq!(counters.cancelled_running, 1);
    // The worker is free again: an echo through the same stack succeeds.
    let service = ServiceBuilder::new()
        .timeout(Duration::from_millis(50))
        .service(pool.service());
    let echoed = service.oneshot(request("quick", "echo", None)).await;
    assert_eq!(echoed.expect("served").request_id, "quick");
    pool.shutdown().await;
}

/// A `ConcurrencyLimit` of 1 in front of a pool with room for more: the
/// limit, not the pool, holds the second caller back, and its task is
/// woken when the first answer releases the permit.
#[tokio::test(start_paused = true)]
async fn a_concurrency_limit_in_front_of_the_pool_holds_callers_back() {
    let (pool, gate, _dropped) = pool(2, 4);
    let limited = ServiceBuilder::new()
        .concurrency_limit(1)
        .service(pool.service());
    let mut first = Spawn::new(limited.clone());
    let mut second = Spawn::new(limited);
    assert!(matches!(first.poll_ready(), Poll::Ready(Ok(()))));
    let running = first.call(request("first", "gate", None));
    assert!(
        second.poll_ready().is_pending(),
        "the limit's one permit is taken"
    );
    assert_eq!(pool.stats().running, 1);
    gate.add_permits(1);
    let answered = running.await.expect("served");
    assert_eq!(answered.request_id, "first");
    assert!(
        second.is_woken(),
        "the released permit wakes the second caller"
    );
    assert!(matches!(second.poll_ready(), Poll::Ready(Ok(()))));
    let echoed = second.call(request("second", "echo", None)).await;
    assert_eq!(echoed.expect("served").request_id, "second");
    pool.shutdown().await;
}

/// A full pool's `poll_ready` is woken when a queued request's deadline
/// frees its place (virtual time: no wall-clock wait).
#[tokio::test(start_paused = true)]
async fn readiness_is_woken_when_a_queued_request_times_out() {
    let (pool, gate, _dropped) = pool(1, 1);
    let mut service = Spawn::new(pool.service());
    assert!(matches!(service.poll_ready(), Poll::Ready(Ok(()))));
    let running = service.call(request("running", "gate", None));
    let queued = service.call(request("queued", "gate", Some(100)));
    assert!(service.poll_ready().is_pending());
    assert!(!service.is_woken());
    let expired = queued.await;
    assert!(
        matches!(expired, Err(WorkerPoolError::Timeout)),
        "{expired:?}"
    );
    assert!(service.is_woken(), "the expired request's place is free");
    assert!(matches!(service.poll_ready(), Poll::Ready(Ok(()))));
    gate.add_permits(1);
    assert!(running.await.is_ok());
    pool.shutdown().await;
}

/// A full pool's `poll_ready` is woken when a worker is added, and with
/// several lanes it is Ready while any lane has room.
#[tokio::test(start_paused = true)]
async fn readiness_is_woken_when_a_worker_is_added() {
    let (pool, gate, dropped) = pool(1, 1);
    let mut service = Spawn::new(pool.service());
    let running = service.call(request("running", "gate", None));
    let queued = service.call(request("queued", "gate", None));
    assert!(service.poll_ready().is_pending());
    pool.add_worker(gated_handler(&gate, &dropped))
        .expect("added");
    assert!(service.is_woken(), "the new worker has room");
    assert!(matches!(service.poll_ready(), Poll::Ready(Ok(()))));
    gate.add_permits(2);
    assert!(running.await.is_ok() && queued.await.is_ok());
    pool.shutdown().await;
}

/// The pool itself is a service (not Clone): `ready` then `call` on it.
#[tokio::test(start_paused = true)]
async fn the_pool_itself_is_a_service() {
    let (mut pool, _gate, _dropped) = pool(1, 1);
    let answer = pool
        .ready()
        .await
        .expect("ready")
        .call(request("direct", "echo", None))
        .await;
    assert_eq!(answer.expect("served").request_id, "direct");
    pool.shutdown().await;
}

/// A `Buffer` in front of the pool (its worker task needs the service and
/// its futures `Send + 'static`): more callers than the pool holds wait in
/// the buffer for readiness instead of being refused `QueueFull`.
#[tokio::test(start_paused = true)]
async fn a_buffer_in_front_of_the_pool_holds_callers_instead_of_refusing_them() {
    let (pool, gate, _dropped) = pool(1, 1);
    let buffered = ServiceBuilder::new().buffer(16).service(pool.service());
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let caller = buffered.clone();
            tokio::spawn(caller.oneshot(request(&format!("b{i}"), "gate", None)))
        })
        .collect();
    // Two are in the pool (one running, one queued); the rest wait.
    yield_until("a request to queue", || pool.stats().queued == 1).await;
    gate.add_permits(6);
    for call in calls {
        let answer = call.await.expect("the task ran");
        assert!(answer.is_ok(), "{answer:?}");
    }
    assert_eq!(pool.stats().counters.refused_queue_full, 0);
    pool.shutdown().await;
}

/// `LoadShed` in front of the pool turns a Pending `poll_ready` (the pool
/// is full) into an immediate `Overloaded` error, without submitting.
#[tokio::test(start_paused = true)]
async fn load_shedding_in_front_of_a_full_pool_refuses_at_once() {
    let (pool, gate, _dropped) = pool(1, 1);
    let mut service = Spawn::new(pool.service());
    let running = service.call(request("running", "gate", None));
    let queued = service.call(request("queued", "gate", None));
    let shed = ServiceBuilder::new()
        .load_shed()
        .service(pool.service())
        .oneshot(request("shed", "echo", None))
        .await;
    let error = shed.expect_err("the pool is full");
    assert!(error.is::<tower::load_shed::error::Overloaded>(), "{error}");
    let counters = pool.stats().counters;
    assert_eq!((counters.submitted, counters.refused_queue_full), (2, 0));
    gate.add_permits(2);
    assert!(running.await.is_ok() && queued.await.is_ok());
    pool.shutdown().await;
}

/// With two lanes, `poll_ready` is Ready while either lane has room,
/// Pending once both are full, and woken when either frees a place.
#[tokio::test(start_paused = true)]
async fn readiness_spans_every_lane() {
    let gate = Arc::new(Semaphore::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let handlers = vec![
        gated_handler(&gate, &dropped),
        gated_handler(&gate, &dropped),
    ];
    let options = WorkerPoolOptions {
        queue_capacity: 1,
        health_probe_interval: Duration::from_secs(60),
        ..WorkerPoolOptions::default()
    };
    let lanes = std::num::NonZeroUsize::new(2).expect("two");
    let pool = WorkerPool::with_lanes(
        TokioRuntime,
        handlers,
        PoolConfig::new(options),
        None,
        lanes,
    )
    .expect("valid options");
    let mut service = Spawn::new(pool.service());
    let mut calls = Vec::new();
    for i in 0..4 {
        assert!(
            matches!(service.poll_ready(), Poll::Ready(Ok(()))),
            "place {i} of 4"
        );
        calls.push(service.call(request(&format!("l{i}"), "gate", None)));
    }
    let stats = pool.stats();
    assert_eq!((stats.running, stats.queued), (2, 2), "both lanes full");
    assert!(service.poll_ready().is_pending());
    gate.add_permits(1);
    yield_until("the freed place to wake the task", || service.is_woken()).await;
    assert!(matches!(service.poll_ready(), Poll::Ready(Ok(()))));
    gate.add_permits(3);
    for call in calls {
        assert!(call.await.is_ok());
    }
    pool.shutdown().await;
}
