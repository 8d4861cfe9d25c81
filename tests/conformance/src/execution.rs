//! Where handlers run: every request answered exactly once under mixed load,
//! queued requests run once each in either execution mode, and a caller
//! that stalls or a slow first poll holds no one else up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use foreman_driver::{
    DriverOptions, ExecutionMode, Runtime, WorkerErrorCode, WorkerPoolError, WorkerPoolOptions,
    WorkerResult,
};
use futures::future::{self, Either};
use serde_json::json;

use crate::support::{
    options, pending_after_one_poll, pool_in_lanes, pool_of, pool_with, request, sleep, spawn,
    wait_until, worker_error, TestWorker,
};

/// No request is lost: 200 requests of every kind (success, failure,
/// panic, timeout, gate) from spawned callers, a restart and a caller that
/// gives up mid-way, then a graceful shutdown; every submit returns exactly
/// once and the core's counters account for every accepted request.
pub async fn every_request_answered_once<R: Runtime + Default + Clone>(rt: R) {
    answered_once(rt, 1).await;
}

/// [`every_request_answered_once`] with the workers spread over two lanes.
pub async fn every_request_answered_once_in_two_lanes<R: Runtime + Default + Clone>(rt: R) {
    answered_once(rt, 2).await;
}

async fn answered_once<R: Runtime + Default + Clone>(rt: R, lanes: usize) {
    let workers: Vec<_> = (0..4).map(|_| TestWorker::new(&rt)).collect();
    let pool = Arc::new(pool_in_lanes(
        &workers,
        WorkerPoolOptions {
            queue_capacity: 64,
            unavailable_after_failures: 1000,
            ..options()
        },
        lanes,
    ));
    let kinds = ["echo", "fail", "panic", "hang", "gate", "sleep:1"];
    let answered = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for i in 0..200usize {
        let (pool, answered) = (Arc::clone(&pool), Arc::clone(&answered));
        let kind = kinds[i % kinds.len()];
        callers.push(spawn(&rt, async move {
            let mut req = request(&format!("r{i}"), kind);
            if kind == "hang" {
                req.timeout_ms = Some(5);
            }
            let result = pool.submit(req).await;
            answered.fetch_add(1, Ordering::SeqCst);
            result
        }));
    }
    // One caller that gives up: it is cancelled, not lost.
    {
        let mut gone = Box::pin(pool.submit(request("gone", "hang")));
        let _ = pending_after_one_poll(&mut gone).await;
    }
    wait_until(&rt, "every caller submitted", || {
        let c = pool.stats().counters;
        c.submitted >= 201
    })
    .await;
    let _ = pool.restart_worker("worker-0").await;
    for worker in &workers {
        worker.open_gate(200);
    }
    let results = future::join_all(callers).await;
    assert_eq!(answered.load(Ordering::SeqCst), 200);
    assert_eq!(results.len(), 200);
    pool.shutdown().await;
    let c = pool.stats().counters;
    let refused = c.refused();
    assert_eq!(c.submitted, 201);
    assert_eq!(c.accepted + refused, c.submitted, "{c:?}");
    let ended = c.succeeded
        + c.failed
        + c.timed_out_queued
        + c.timed_out_running
        + c.cancelled_queued
        + c.cancelled_running
        + c.aborted_by_restart
        + c.aborted_by_shutdown
        + c.unroutable_after_removal;
    assert_eq!(
        ended, c.accepted,
        "every accepted request ended once: {c:?}"
    );
    let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
    assert_eq!(ok, c.succeeded, "{c:?}");
}

/// The finishing task runs the next queued request (the driver's claim
/// path): a claimed handler that has to wait is handed back to its own
/// caller and finishes there; a claimed handler that panics is one failure
/// and the next claimed one still runs; a handed-back handler is dropped
/// when its caller gives up or its deadline passes, and the worker is free
/// again at once. Each request's handler runs exactly once.
pub async fn queued_requests_run_by_the_finishing_task<R: Runtime + Default + Clone>(rt: R) {
    let caller_task = DriverOptions::default().execution(ExecutionMode::CallerTask);
    queued_requests_run_once_each(rt, caller_task).await;
}

/// The worker's task runs the queued requests (the default execution
/// mode): a queued handler that waits finishes on it; a queued handler that
/// panics is one failure and the request behind it still runs; a queued
/// handler is dropped when its caller gives up or its deadline passes, and
/// the worker is free again at once. Each request's handler runs exactly
/// once.
pub async fn queued_requests_run_on_the_worker_task<R: Runtime + Default + Clone>(rt: R) {
    queued_requests_run_once_each(rt, DriverOptions::default()).await;
}

/// The scenario of the two tests above, in either execution mode.
async fn queued_requests_run_once_each<R: Runtime + Default + Clone>(rt: R, driver: DriverOptions) {
    let worker = TestWorker::new(&rt);
    let pool = pool_with(&[Arc::clone(&worker)], options(), driver);
    let pool = &pool;
    let accepted = |n: u64| move || pool.stats().counters.accepted == n;

    // A claimed handler that waits is handed back and finishes.
    let first = pool.submit(request("first", "gate"));
    let waits = pool.submit_timed(request("waits", "sleep:5"));
    let open = async {
        wait_until(&rt, "two accepted", accepted(2)).await;
        worker.open_gate(1);
    };
    let (first, waits, ()) = futures::join!(first, waits, open);
    assert!(first.is_ok(), "{first:?}");
    let ran = waits.timings.ran;
    let waits = waits
        .result
        .unwrap_or_else(|e| panic!("handed-back handler finishes: {e}"));
    assert_eq!(
        waits.result,
        WorkerResult::Success {
            output: json!({"slept": 5})
        }
    );
    assert!(
        ran.is_some_and(|ran| ran >= Duration::from_millis(5)),
        "{ran:?}"
    );
    assert_eq!((worker.calls(), worker.dropped()), (2, 0));

    // A claimed panic is one failure; the request behind it still runs.
    let gate = pool.submit(request("gate", "gate"));
    let boom = pool.submit(request("boom", "panic"));
    let echo = pool.submit(request("echo", "echo"));
    let open = async {
        wait_until(&rt, "three more accepted", accepted(5)).await;
        worker.open_gate(1);
    };
    let (gate, boom, echo, ()) = futures::join!(gate, boom, echo, open);
    assert!(gate.is_ok(), "{gate:?}");
    assert_eq!(worker_error(&boom), WorkerErrorCode::ExecutionFailed);
    assert_eq!(echo.map(|r| r.worker_id).ok().as_deref(), Some("worker-0"));
    let counters = pool.stats().counters;
    assert_eq!((counters.succeeded, counters.failed), (4, 1));
    // (The panic unwound through the handler: its watch counts a drop.)
    assert_eq!((worker.calls(), worker.dropped()), (5, 1));

    // A handed-back handler is dropped when its caller gives up.
    let gate = pool.submit(request("gate2", "gate"));
    let mut hangs = Box::pin(pool.submit(request("hangs", "hang")));
    let open = async {
        wait_until(&rt, "two more accepted", accepted(7)).await;
        worker.open_gate(1);
        wait_until(&rt, "the hanging handler started", || worker.calls() == 7).await;
    };
    match future::select(Box::pin(future::join(gate, open)), hangs.as_mut()).await {
        Either::Left(((gate, ()), _)) => assert!(gate.is_ok(), "{gate:?}"),
        Either::Right((hung, _)) => panic!("a hanging handler answered: {hung:?}"),
    }
    drop(hangs);
    wait_until(&rt, "the hanging handler dropped", || worker.dropped() == 2).await;
    assert_eq!(pool.stats().counters.cancelled_running, 1);
    let free = pool.submit(request("free", "echo")).await;
    assert!(free.is_ok(), "the worker is free again: {free:?}");

    // A handed-back handler is dropped at its deadline.
    let gate = pool.submit(request("gate3", "gate"));
    let mut late = request("late", "hang");
    late.timeout_ms = Some(50);
    let late = pool.submit(late);
    let open = async {
        wait_until(&rt, "two more accepted", accepted(10)).await;
        worker.open_gate(1);
    };
    let (gate, late, ()) = futures::join!(gate, late, open);
    assert!(gate.is_ok(), "{gate:?}");
    assert!(matches!(late, Err(WorkerPoolError::Timeout)), "{late:?}");
    wait_until(&rt, "the late handler dropped", || worker.dropped() == 3).await;
    assert_eq!(pool.stats().counters.timed_out_running, 1);
    assert!(pool.submit(request("after", "echo")).await.is_ok());
    pool.shutdown().await;
}

/// A caller that polls `submit` once and then does other work (here: is
/// not polled at all) does not hold its worker: its handler runs on the
/// pool's runtime, and another caller's request queued behind it is
/// answered while the first caller still stalls.
pub async fn a_caller_that_stalls_after_one_poll_does_not_hold_its_worker<
    R: Runtime + Default + Clone,
>(
    rt: R,
) {
    let worker = TestWorker::new(&rt);
    let pool = pool_of(&[Arc::clone(&worker)], options());
    let mut stalled = Box::pin(pool.submit(request("stalled", "sleep:10")));
    assert!(pending_after_one_poll(&mut stalled).await);
    let other = Box::pin(pool.submit(request("other", "sleep:10")));
    let cutoff = Box::pin(sleep(&rt, Duration::from_secs(2)));
    match future::select(other, cutoff).await {
        Either::Left((answer, _)) => {
            assert!(answer.is_ok(), "{answer:?}");
        }
        Either::Right(((), _)) => {
            panic!("the other caller's request waited for the stalled caller to poll")
        }
    }
    // The stalled caller's answer waited for it.
    let answer = stalled.await;
    assert!(answer.is_ok(), "{answer:?}");
    pool.shutdown().await;
}

/// A caller's answer is not held back while another caller's handler,
/// queued behind it on the same worker, makes a long CPU-bound first poll:
/// the caller (here on its own thread and executor) has its answer before
/// that handler finishes.
pub async fn a_slow_first_poll_does_not_delay_another_callers_answer<
    R: Runtime + Default + Clone,
>(
    rt: R,
) {
    let worker = TestWorker::new(&rt);
    let pool = Arc::new(pool_of(&[Arc::clone(&worker)], options()));
    let log = Arc::new(Mutex::new(Vec::new()));
    let push = |log: &Mutex<Vec<&'static str>>, entry| {
        log.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
    };
    let (first_pool, first_log) = (Arc::clone(&pool), Arc::clone(&log));
    let first = std::thread::spawn(move || {
        let answer = futures::executor::block_on(first_pool.submit(request("first", "sleep:20")));
        push(&first_log, "first answered");
        answer
    });
    wait_until(&rt, "the first request accepted", || {
        pool.stats().counters.accepted == 1
    })
    .await;
    let slow = pool.submit(request("slow", "block:250")).await;
    push(&log, "slow answered");
    assert!(slow.is_ok(), "{slow:?}");
    let first = first
        .join()
        .unwrap_or_else(|_| panic!("the first caller panicked"));
    assert!(first.is_ok(), "{first:?}");
    let log = log.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert_eq!(log, ["first answered", "slow answered"]);
    pool.shutdown().await;
}
