//! Retries: with a [`RetryPolicy`], a retryable failure of an LLM call runs
//! again on another worker and its caller gets one answer, the retried
//! one; a tool call's failure is its answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use foreman_driver::{
    handler_fn, BuildError, CircuitBreakerHooks, DriverOptions, ExecutionMode, HookRole,
    PoolConfig, RetryPolicy, Runtime, WorkerErrorCode, WorkerHandler, WorkerPool, WorkerPoolError,
    WorkerPoolOptions, WorkerProtocolError, WorkerRequest, WorkerResult,
};
use metrics_util::debugging::DebuggingRecorder;
use serde_json::json;

use crate::observability::Readings;
use crate::support::{llm, request, RecordingHooks};

/// A handler that fails every request retryably, counting its calls.
fn failing(calls: &Arc<AtomicUsize>) -> Arc<dyn WorkerHandler> {
    let calls = Arc::clone(calls);
    handler_fn(move |_request: WorkerRequest| {
        calls.fetch_add(1, Ordering::SeqCst);
        async {
            Err(WorkerProtocolError::new(
                WorkerErrorCode::ExecutionFailed,
                "overloaded upstream",
                true,
            ))
        }
    })
    .into_arc()
}

/// A handler that answers every request with its worker's name.
fn serving(calls: &Arc<AtomicUsize>) -> Arc<dyn WorkerHandler> {
    let calls = Arc::clone(calls);
    handler_fn(move |_request: WorkerRequest| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok(json!("served")) }
    })
    .into_arc()
}

/// Every LLM call that lands on the failing worker runs again on the
/// serving one and succeeds, answered once with two attempts; a tool
/// call's failure is answered as it is; the stats count each retry.
pub async fn retryable_llm_failures_run_again_on_another_worker<R: Runtime + Default + Clone>(
    rt: R,
) {
    let (failed, served) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let options = WorkerPoolOptions {
        // Enough failures in a row never eject the failing worker here.
        unavailable_after_failures: 1_000,
        ..WorkerPoolOptions::default()
    };
    let config = PoolConfig::new(options).with_retries(Some(RetryPolicy::default()));
    let recorder = DebuggingRecorder::new();
    let m = Readings::new(&recorder);
    let pool = metrics::with_local_recorder(&recorder, || {
        WorkerPool::with_config(
            rt.clone(),
            vec![failing(&failed), serving(&served)],
            config.clone(),
            None,
        )
    })
    .unwrap_or_else(|e| panic!("a pool with retries refused: {e}"));
    let mut retried = 0;
    for i in 0..20 {
        let timed = pool.submit_timed(llm(&format!("llm-{i}"))).await;
        let response = timed
            .result
            .unwrap_or_else(|e| panic!("llm-{i} answered {e:?}"));
        assert_eq!(response.request_id, format!("llm-{i}"));
        assert_eq!(response.worker_id, "worker-1", "the serving worker answers");
        assert_eq!(
            response.result,
            WorkerResult::Success {
                output: json!("served")
            }
        );
        assert!(matches!(timed.timings.attempts, 1 | 2));
        retried += usize::from(timed.timings.attempts == 2);
    }
    assert_eq!(failed.load(Ordering::SeqCst), retried);
    assert_eq!(served.load(Ordering::SeqCst), 20);
    assert!(
        retried > 0,
        "some requests went to the failing worker first"
    );
    assert_eq!(pool.stats().counters.retried, retried as u64);
    // The metrics count each retry once and each answer once, and the
    // failed attempt leaves its worker's in-flight gauge.
    assert_eq!(
        m.counter("foreman_requests_retried_total", &[]),
        retried as u64
    );
    assert_eq!(m.counter("foreman_requests_succeeded_total", &[]), 20);
    assert_eq!(m.counter("foreman_requests_failed_total", &[]), 0);
    // A retry never queued: its start leaves the queued gauge alone.
    m.assert_worker_gauges_zero(2);
    pool.shutdown().await;

    // On a fresh pool, the first request goes to the first worker, the
    // failing one. A tool call is not retried (the policy's default leaves
    // tools alone: their side effects may not be idempotent): its error is
    // its answer.
    let pool = WorkerPool::with_config(rt, vec![failing(&failed), serving(&served)], config, None)
        .unwrap_or_else(|e| panic!("a pool with retries refused: {e}"));
    match pool.submit(request("tool", "echo")).await {
        Err(WorkerPoolError::Worker(error)) => {
            assert_eq!(error.code, WorkerErrorCode::ExecutionFailed);
            assert_eq!(error.message, "overloaded upstream");
        }
        other => panic!("the tool call answered {other:?}"),
    }
    assert_eq!(failed.load(Ordering::SeqCst), retried + 1);
    assert_eq!(pool.stats().counters.retried, 0);
    pool.shutdown().await;
}

/// A pool whose handlers run in their callers' tasks cannot retry: asked
/// to, it refuses to build, saying what to change.
pub async fn retries_in_caller_task_mode_are_refused_at_build<R: Runtime + Default + Clone>(rt: R) {
    let calls = Arc::new(AtomicUsize::new(0));
    let config = PoolConfig::default().with_retries(Some(RetryPolicy::default()));
    let refused = WorkerPool::with_driver_options(
        rt,
        vec![serving(&calls)],
        config,
        None,
        DriverOptions::default().execution(ExecutionMode::CallerTask),
    );
    match refused {
        Err(error @ BuildError::RetriesNeedPoolTasks) => {
            assert!(
                error.to_string().contains("ExecutionMode::PoolTasks"),
                "{error}"
            );
        }
        Err(other) => panic!("expected RetriesNeedPoolTasks, got {other}"),
        Ok(_) => panic!("a caller-task pool with retries was built"),
    }
}

/// Hooks that only observe leave retries on: the first LLM call of a
/// fresh pool fails on the first worker and runs again on the other, and
/// the hooks hear of it once as accepted (by the first worker) and once as
/// a success (from the worker that answered).
pub async fn observe_only_hooks_see_a_retried_request_once<R: Runtime + Default + Clone>(rt: R) {
    let (failed, served) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let hooks = Arc::new(RecordingHooks::default());
    let config = PoolConfig::default().with_retries(Some(RetryPolicy::default()));
    let pool = WorkerPool::with_driver_options(
        rt,
        vec![failing(&failed), serving(&served)],
        config,
        Some(Arc::clone(&hooks) as Arc<dyn CircuitBreakerHooks>),
        DriverOptions::default().hooks(HookRole::ObserveOnly),
    )
    .unwrap_or_else(|e| panic!("a pool with observing hooks and retries refused: {e}"));
    let timed = pool.submit_timed(llm("observed")).await;
    let response = timed
        .result
        .unwrap_or_else(|e| panic!("the retried call answered {e:?}"));
    assert_eq!(response.worker_id, "worker-1");
    assert_eq!(timed.timings.attempts, 2);
    assert_eq!(
        (failed.load(Ordering::SeqCst), served.load(Ordering::SeqCst)),
        (1, 1)
    );
    assert_eq!(
        hooks.about("observed"),
        vec![
            "accepted observed worker-0".to_string(),
            "success observed worker-1".to_string(),
        ]
    );
    pool.shutdown().await;
}
