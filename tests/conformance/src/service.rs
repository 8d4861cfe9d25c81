//! tower both ways, on every runtime: the pool as a `tower::Service`
//! (`PoolService`: readiness, refusals, ownership) and a
//! `tower::Service` as a worker handler (`ServiceHandler`), driven with
//! tower-test's mocks and `tower::ServiceExt`.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use foreman_driver::{
    Runtime, ServiceHandler, WorkerErrorCode, WorkerHealthStatus, WorkerPool, WorkerPoolError,
    WorkerPoolOptions, WorkerProtocolError, WorkerRequest, WorkerResult,
};
use futures::StreamExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use tower_test::mock::{self, Spawn};

use crate::support::{
    options, pending_after_one_poll, pool_of, request, wait_until, worker_error, TestWorker,
};

fn one_place_in_queue() -> WorkerPoolOptions {
    WorkerPoolOptions {
        queue_capacity: 1,
        ..options()
    }
}

/// The next request the mock service was called with, and its reply.
async fn next_request(
    handle: &mut mock::Handle<WorkerRequest, Value>,
) -> (WorkerRequest, mock::SendResponse<Value>) {
    match handle.next_request().await {
        Some(next) => next,
        None => panic!("the mock's handle closed"),
    }
}

fn is_ready<E>(polled: Poll<Result<(), E>>) -> bool {
    matches!(polled, Poll::Ready(Ok(())))
}

/// `poll_ready` is Ready while the pool would admit a request; with the
/// worker busy and its queue full it is Pending, and the task is woken
/// (not before) when a completion frees room; `call` counts at once.
/// Shutdown wakes a pending task and answers `ShuttingDown`.
pub async fn the_pool_service_waits_for_room_and_is_woken_when_it_frees<
    R: Runtime + Default + Clone,
>(
    rt: R,
) {
    let worker = TestWorker::new(&rt);
    let pool = pool_of(&[Arc::clone(&worker)], one_place_in_queue());
    let mut service = Spawn::new(pool.service());
    assert!(is_ready(service.poll_ready()));
    let running = service.call(request("s1", "gate"));
    assert!(
        is_ready(service.poll_ready()),
        "one place left in the queue"
    );
    let queued = service.call(request("s2", "gate"));
    // Both were admitted by `call`: the pool is full.
    assert_eq!((pool.stats().running, pool.stats().queued), (1, 1));
    assert!(service.poll_ready().is_pending());
    assert!(service.poll_ready().is_pending(), "still full");
    assert!(!service.is_woken(), "nothing freed room yet");
    worker.open_gate(1);
    wait_until(&rt, "the service's task to be woken", || service.is_woken()).await;
    assert!(
        is_ready(service.poll_ready()),
        "s2 runs: the queue has room"
    );
    let running = running.await;
    assert_eq!(running.map(|r| r.request_id).ok().as_deref(), Some("s1"));
    // Full again; shutdown wakes the waiting task with `ShuttingDown`.
    let third = service.call(request("s3", "gate"));
    assert!(service.poll_ready().is_pending());
    assert!(!service.is_woken());
    pool.shutdown_with_deadline(Duration::ZERO).await;
    assert!(service.is_woken(), "shutdown wakes a task waiting for room");
    assert!(matches!(
        service.poll_ready(),
        Poll::Ready(Err(WorkerPoolError::ShuttingDown))
    ));
    let (queued, third) = futures::join!(queued, third);
    for cut in [&queued, &third] {
        assert!(matches!(cut, Err(WorkerPoolError::ShuttingDown)), "{cut:?}");
    }
    let late = service.call(request("late", "echo")).await;
    assert!(
        matches!(late, Err(WorkerPoolError::ShuttingDown)),
        "{late:?}"
    );
}

/// Readiness reserves nothing: two handles both told Ready for the last
/// place race for it, and the one that loses gets the pool's refusal
/// (`QueueFull`) as its call's error.
pub async fn a_call_that_raced_past_poll_ready_gets_the_pools_refusal<
    R: Runtime + Default + Clone,
>(
    rt: R,
) {
    let worker = TestWorker::new(&rt);
    let pool = pool_of(&[Arc::clone(&worker)], one_place_in_queue());
    let mut first = Spawn::new(pool.service());
    let mut second = Spawn::new(pool.service());
    assert!(is_ready(first.poll_ready()));
    let running = first.call(request("r1", "gate"));
    assert!(is_ready(first.poll_ready()));
    assert!(is_ready(second.poll_ready()), "both see the last place");
    let taken = first.call(request("r2", "gate"));
    let refused = second.call(request("r3", "gate")).await;
    assert!(
        matches!(refused, Err(WorkerPoolError::QueueFull)),
        "{refused:?}"
    );
    worker.open_gate(2);
    let (running, taken) = futures::join!(running, taken);
    assert!(running.is_ok() && taken.is_ok(), "{running:?} {taken:?}");
    pool.shutdown().await;
}

/// `call_all` waits for readiness before each call, so many more requests
/// than the pool holds all succeed through one worker with one queue
/// place, none refused `QueueFull`; `oneshot` goes through the same way.
pub async fn call_all_through_the_pool_service_never_overflows_its_queue<
    R: Runtime + Default + Clone,
>(
    rt: R,
) {
    let worker = TestWorker::new(&rt);
    let pool = pool_of(&[Arc::clone(&worker)], one_place_in_queue());
    let requests: Vec<WorkerRequest> = (0..12)
        .map(|i| request(&format!("all-{i}"), "sleep:2"))
        .collect();
    let answers: Vec<_> = pool
        .service()
        .call_all(futures::stream::iter(requests))
        .collect()
        .await;
    assert_eq!(answers.len(), 12);
    for (i, answer) in answers.iter().enumerate() {
        let answer = answer
            .as_ref()
            .unwrap_or_else(|e| panic!("request {i} refused: {e}"));
        assert_eq!(answer.request_id, format!("all-{i}"));
    }
    assert_eq!(pool.stats().counters.refused_queue_full, 0);
    let once = pool.service().oneshot(request("once", "echo")).await;
    assert_eq!(once.map(|r| r.request_id).ok().as_deref(), Some("once"));
    pool.shutdown().await;
}

/// A service handle keeps its pool running after the `WorkerPool` is
/// dropped; the pool's tasks end once the last handle goes.
pub async fn a_service_handle_keeps_its_pool_running<R: Runtime + Default + Clone>(rt: R) {
    let worker = TestWorker::new(&rt);
    let pool = pool_of(&[Arc::clone(&worker)], options());
    let service = pool.service();
    drop(pool);
    let served = service.clone().oneshot(request("kept", "echo")).await;
    assert_eq!(
        served.map(|r| r.worker_id).ok().as_deref(),
        Some("worker-0")
    );
    drop(service);
    // Its worker's task ended and let go of the handler.
    wait_until(&rt, "the pool's tasks to end", || {
        Arc::strong_count(&worker) == 1
    })
    .await;
}

/// A tower-test mock service as a worker handler: its responses are the
/// requests' outputs; a `WorkerProtocolError` it fails with passes
/// through, any other error is `ExecutionFailed` with its message; while
/// it is not ready the request waits on its worker, and runs once it is;
/// the probe closure is the worker's probe.
pub async fn a_tower_service_serves_as_a_worker_handler<R: Runtime + Default + Clone>(rt: R) {
    let (service, mut handle) = mock::pair::<WorkerRequest, Value>();
    let handler = ServiceHandler::new(service)
        .with_probe(|| async { WorkerHealthStatus::Healthy })
        .into_arc();
    let pool = WorkerPool::<R>::new_inprocess(vec![handler], options(), None)
        .unwrap_or_else(|e| panic!("valid pool options refused: {e}"));
    // A response.
    let (served, ()) = futures::join!(pool.submit(request("m1", "node-1")), async {
        let (request, reply) = next_request(&mut handle).await;
        reply.send_response(json!({ "mock": request.node_id }));
    });
    let served = served.unwrap_or_else(|e| panic!("served: {e}"));
    assert_eq!(
        served.result,
        WorkerResult::Success {
            output: json!({ "mock": "node-1" })
        }
    );

    // A protocol error passes through; another error is ExecutionFailed.
    let (passed, ()) = futures::join!(pool.submit(request("m2", "x")), async {
        let (_, reply) = next_request(&mut handle).await;
        reply.send_error(WorkerProtocolError::new(
            WorkerErrorCode::Unavailable,
            "upstream is down",
            true,
        ));
    });
    match passed {
        Err(WorkerPoolError::Worker(error)) => {
            assert_eq!(error.code, WorkerErrorCode::Unavailable);
            assert_eq!(error.message, "upstream is down");
            assert!(error.retryable);
        }
        other => panic!("expected the service's own error, got {other:?}"),
    }
    let (other, ()) = futures::join!(pool.submit(request("m3", "x")), async {
        let (_, reply) = next_request(&mut handle).await;
        reply.send_error("plain failure");
    });
    assert_eq!(worker_error(&other), WorkerErrorCode::ExecutionFailed);
    assert!(format!("{other:?}").contains("plain failure"), "{other:?}");

    // Backpressure: not ready, the request waits on its worker.
    handle.allow(0);
    let held = pool.submit(request("m4", "held"));
    futures::pin_mut!(held);
    assert!(pending_after_one_poll(&mut held).await);
    wait_until(&rt, "the request to start", || pool.stats().running == 1).await;
    assert!(
        handle.poll_request().is_pending(),
        "the service is not ready"
    );
    handle.allow(1);
    let (held, ()) = futures::join!(held, async {
        let (request, reply) = next_request(&mut handle).await;
        reply.send_response(json!({ "released": request.request_id }));
    });
    let held = held.unwrap_or_else(|e| panic!("served once ready: {e}"));
    assert_eq!(
        held.result,
        WorkerResult::Success {
            output: json!({ "released": "m4" })
        }
    );

    // A readiness error answers the request too.
    handle.send_error("not ready, ever");
    let failed = pool.submit(request("m5", "x")).await;
    assert_eq!(worker_error(&failed), WorkerErrorCode::ExecutionFailed);
    assert!(format!("{failed:?}").contains("not ready, ever"));
    pool.shutdown().await;
}
