//! Hedging on tokio's paused clock: a request stuck on a slow worker is
//! hedged on a fast one at the delay, the hedge's answer is the caller's
//! only answer, and the slow handler is dropped; a declined hedge that
//! ran alone puts its request back in line; a hedge's handler reads its
//! request's deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foreman_tokio::{
    handler_deadline, handler_fn, refuse_not_started, HedgeDelay, HedgePolicy, PoolConfig,
    WorkerErrorCode, WorkerHandler, WorkerOperation, WorkerPool, WorkerPoolOptions,
    WorkerProtocolError, WorkerRequest, WorkerResult,
};
use serde_json::json;

/// Counts drops of the slow handler's future before it finished.
struct DropProbe(Arc<AtomicUsize>);

impl Drop for DropProbe {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn llm(id: &str) -> WorkerRequest {
    WorkerRequest {
        request_id: id.into(),
        workflow_name: "w".into(),
        node_id: "n".into(),
        timeout_ms: Some(60_000),
        operation: WorkerOperation::Llm {
            model: "m".into(),
            prompt: "p".into(),
            scoped_input: json!({}),
        },
    }
}

/// A handler that sleeps `delay` then answers `name`; `dropped` counts its
/// futures dropped before they finished.
fn sleeping(
    name: &'static str,
    delay: Duration,
    dropped: &Arc<AtomicUsize>,
) -> Arc<dyn WorkerHandler> {
    let dropped = Arc::clone(dropped);
    handler_fn(move |_request: WorkerRequest| {
        let probe = DropProbe(Arc::clone(&dropped));
        async move {
            tokio::time::sleep(delay).await;
            std::mem::forget(probe);
            Ok(json!(name))
        }
    })
    .into_arc()
}

#[tokio::test(start_paused = true)]
async fn the_hedge_on_a_fast_worker_wins_at_the_delay_and_the_slow_handler_is_dropped() {
    let slow_dropped = Arc::new(AtomicUsize::new(0));
    let fast_dropped = Arc::new(AtomicUsize::new(0));
    let config = PoolConfig::new(WorkerPoolOptions::default()).with_hedging(Some(
        HedgePolicy::default().with_delay(HedgeDelay::Fixed(Duration::from_millis(200))),
    ));
    let pool = WorkerPool::with_config(
        Default::default(),
        vec![
            sleeping("slow", Duration::from_secs(10), &slow_dropped),
            sleeping("fast", Duration::from_millis(50), &fast_dropped),
        ],
        config,
        None,
    )
    .expect("a pool with hedging");
    let start = tokio::time::Instant::now();
    let timed = pool.submit_timed(llm("a")).await;
    let took = start.elapsed();
    let response = timed.result.expect("answered");
    assert_eq!(
        response.result,
        WorkerResult::Success {
            output: json!("fast")
        }
    );
    assert_eq!(response.worker_id, "worker-1", "the hedge's worker answers");
    assert_eq!(timed.timings.attempts, 2);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(300),
        "answered at the delay plus the fast run: {took:?}"
    );
    // The slow handler is dropped (the abort reaches its worker's task).
    for _ in 0..100 {
        if slow_dropped.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        slow_dropped.load(Ordering::SeqCst),
        1,
        "the loser was dropped"
    );
    assert_eq!(fast_dropped.load(Ordering::SeqCst), 0);
    let counters = pool.stats().counters;
    assert_eq!((counters.hedged, counters.hedges_won), (1, 1));
    assert_eq!(counters.succeeded, 1);
    pool.shutdown().await;
}

/// A hedge running alone (its request's own attempt failed retryably)
/// whose handler declines it puts the request back in line: it runs again
/// on the first worker and answers, instead of waiting for its deadline.
#[tokio::test(start_paused = true)]
async fn a_declined_hedge_running_alone_runs_its_request_again() {
    let runs = Arc::new(AtomicUsize::new(0));
    let own = {
        let runs = Arc::clone(&runs);
        handler_fn(move |_request: WorkerRequest| {
            let first = runs.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    return Err(WorkerProtocolError::new(
                        WorkerErrorCode::ExecutionFailed,
                        "failed on purpose",
                        true,
                    ));
                }
                Ok(json!("again"))
            }
        })
        .into_arc()
    };
    let declining = handler_fn(move |request: WorkerRequest| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Err(refuse_not_started(request, "busy"))
    })
    .into_arc();
    let config = PoolConfig::new(WorkerPoolOptions::default()).with_hedging(Some(
        HedgePolicy::default().with_delay(HedgeDelay::Fixed(Duration::from_millis(200))),
    ));
    let pool = WorkerPool::with_config(Default::default(), vec![own, declining], config, None)
        .expect("a pool with hedging");
    let start = tokio::time::Instant::now();
    let timed = pool.submit_timed(llm("a")).await;
    // Hedged at 200 ms; its own attempt fails at 250 ms; the hedge,
    // alone, is declined at 300 ms and the request runs again at once.
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    let response = timed.result.expect("answered");
    assert_eq!(
        response.result,
        WorkerResult::Success {
            output: json!("again")
        }
    );
    assert_eq!(response.worker_id, "worker-0");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let counters = pool.stats().counters;
    assert_eq!((counters.hedged, counters.refused_not_started), (1, 1));
    assert_eq!((counters.succeeded, counters.timed_out_running), (1, 0));
    pool.shutdown().await;
}

/// A hedge's handler reads the time its request has left, as the first
/// attempt's does: its budget less the delay it was hedged at.
#[tokio::test(start_paused = true)]
async fn a_hedges_handler_reads_the_time_its_request_has_left() {
    let time_left = |sleep: Duration| {
        handler_fn(move |_request: WorkerRequest| async move {
            let now = tokio::time::Instant::now().into_std();
            let left = handler_deadline().map(|deadline| deadline.saturating_duration_since(now));
            tokio::time::sleep(sleep).await;
            Ok(json!(left.map(|left| left.as_millis() as u64)))
        })
        .into_arc()
    };
    let config = PoolConfig::new(WorkerPoolOptions::default()).with_hedging(Some(
        HedgePolicy::default().with_delay(HedgeDelay::Fixed(Duration::from_millis(200))),
    ));
    let pool = WorkerPool::with_config(
        Default::default(),
        vec![
            time_left(Duration::from_secs(10)),
            time_left(Duration::from_millis(50)),
        ],
        config,
        None,
    )
    .expect("a pool with hedging");
    let response = pool.submit(llm("a")).await.expect("answered");
    assert_eq!(response.worker_id, "worker-1", "the hedge answers");
    assert_eq!(
        response.result,
        WorkerResult::Success {
            output: json!(59_800)
        },
        "60 s less the 200 ms before the hedge"
    );
    pool.shutdown().await;
}
