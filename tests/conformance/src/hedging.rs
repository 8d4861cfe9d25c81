//! Hedging: with a [`HedgePolicy`], an LLM call still running on a slow
//! worker after the delay gets a second attempt on an idle one; the first
//! answer is the caller's only answer and the slow handler is dropped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foreman_driver::{
    handler_fn, BuildError, DriverOptions, ExecutionMode, HedgeDelay, HedgePolicy, PoolConfig,
    Runtime, WorkerHandler, WorkerPool, WorkerRequest, WorkerResult,
};
use metrics_util::debugging::DebuggingRecorder;
use serde_json::json;

use crate::observability::Readings;
use crate::support::{llm, sleep, wait_until};

/// Counts the drops of a handler future that had not finished.
struct Unfinished(Arc<AtomicUsize>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A handler that answers `name` after `delay` on the runtime's clock;
/// `dropped` counts its futures dropped before they answered.
fn after<R: Runtime + Clone>(
    rt: &R,
    name: &'static str,
    delay: Duration,
    dropped: &Arc<AtomicUsize>,
) -> Arc<dyn WorkerHandler> {
    let (rt, dropped) = (rt.clone(), Arc::clone(dropped));
    handler_fn(move |_request: WorkerRequest| {
        let unfinished = Unfinished(Arc::clone(&dropped));
        let nap = sleep(&rt, delay);
        async move {
            nap.await;
            std::mem::forget(unfinished);
            Ok(json!(name))
        }
    })
    .into_arc()
}

/// The first LLM call of a fresh pool goes to the slow first worker; at
/// the 100 ms delay a hedge runs on the fast one and answers: one answer,
/// two attempts, the slow handler dropped, the hedge counted in the stats
/// and the metrics, and every worker's gauges back to zero.
pub async fn a_hedge_answers_once_and_the_slow_attempt_is_dropped<R: Runtime + Default + Clone>(
    rt: R,
) {
    let (slow_dropped, fast_dropped) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let config = PoolConfig::default().with_hedging(Some(
        HedgePolicy::default().with_delay(HedgeDelay::Fixed(Duration::from_millis(100))),
    ));
    let recorder = DebuggingRecorder::new();
    let m = Readings::new(&recorder);
    let pool = metrics::with_local_recorder(&recorder, || {
        WorkerPool::with_config(
            rt.clone(),
            vec![
                after(&rt, "slow", Duration::from_secs(30), &slow_dropped),
                after(&rt, "fast", Duration::from_millis(20), &fast_dropped),
            ],
            config,
            None,
        )
    })
    .unwrap_or_else(|e| panic!("a pool with hedging refused: {e}"));
    let timed = pool.submit_timed(llm("hedged")).await;
    let response = timed.result.unwrap_or_else(|e| panic!("answered {e:?}"));
    assert_eq!(response.worker_id, "worker-1", "the hedge's worker answers");
    assert_eq!(
        response.result,
        WorkerResult::Success {
            output: json!("fast")
        }
    );
    assert_eq!(timed.timings.attempts, 2);
    wait_until(&rt, "the slow attempt dropped", || {
        slow_dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(fast_dropped.load(Ordering::SeqCst), 0);
    let counters = pool.stats().counters;
    assert_eq!(
        (counters.hedged, counters.hedges_won, counters.succeeded),
        (1, 1, 1)
    );
    assert_eq!(m.counter("foreman_requests_hedged_total", &[]), 1);
    assert_eq!(m.counter("foreman_requests_succeeded_total", &[]), 1);
    for worker in ["worker-0", "worker-1"] {
        let labels = [("worker", worker)];
        assert_eq!(
            m.gauge("foreman_worker_in_flight", &labels),
            0.0,
            "{worker}"
        );
        assert_eq!(m.gauge("foreman_worker_queued", &labels), 0.0, "{worker}");
    }
    pool.shutdown().await;
}

/// A pool whose handlers run in their callers' tasks cannot hedge: asked
/// to, it refuses to build, saying what to change.
pub async fn hedging_in_caller_task_mode_is_refused_at_build<R: Runtime + Default + Clone>(rt: R) {
    let dropped = Arc::new(AtomicUsize::new(0));
    let handler = after(&rt, "any", Duration::ZERO, &dropped);
    let refused = WorkerPool::with_driver_options(
        rt,
        vec![handler],
        PoolConfig::default().with_hedging(Some(HedgePolicy::default())),
        None,
        DriverOptions::default().execution(ExecutionMode::CallerTask),
    );
    match refused {
        Err(error @ BuildError::HedgingNeedsPoolTasks) => {
            assert!(
                error.to_string().contains("ExecutionMode::PoolTasks"),
                "{error}"
            );
        }
        Err(other) => panic!("expected HedgingNeedsPoolTasks, got {other}"),
        Ok(_) => panic!("a caller-task pool with hedging was built"),
    }
}
