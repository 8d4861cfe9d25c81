//! "Refused, not started" through the driver: a handler that hands its
//! request back with `refuse_not_started` has it run elsewhere, with no
//! health penalty, on tokio's paused clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foreman_tokio::{
    async_trait, refuse_not_started, WorkerHandler, WorkerOperation, WorkerPool, WorkerPoolError,
    WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
};
use serde_json::{json, Value};

/// Refuses its first `refusals` requests, then answers with its name.
struct Refuser {
    name: &'static str,
    refusals: AtomicUsize,
    runs: Arc<AtomicUsize>,
}

impl Refuser {
    fn new(name: &'static str, refusals: usize, runs: &Arc<AtomicUsize>) -> Arc<Self> {
        Arc::new(Refuser {
            name,
            refusals: AtomicUsize::new(refusals),
            runs: Arc::clone(runs),
        })
    }
}

#[async_trait]
impl WorkerHandler for Refuser {
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        let left = self.refusals.load(Ordering::Acquire);
        if left > 0 {
            self.refusals.store(left - 1, Ordering::Release);
            return Err(refuse_not_started(request, "busy"));
        }
        self.runs.fetch_add(1, Ordering::AcqRel);
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(json!({ "ran_on": self.name, "node": request.node_id }))
    }
}

fn request(id: &str, timeout_ms: Option<u64>) -> WorkerRequest {
    WorkerRequest {
        request_id: id.into(),
        workflow_name: "refusal".into(),
        node_id: "node".into(),
        timeout_ms,
        operation: WorkerOperation::Tool {
            tool: "echo".into(),
            input: json!({}),
            scoped_input: json!({}),
        },
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_request_runs_on_another_worker_without_a_health_penalty() {
    let runs = Arc::new(AtomicUsize::new(0));
    let handlers: Vec<Arc<dyn WorkerHandler>> = vec![
        Refuser::new("first", 1, &runs),
        Refuser::new("second", 0, &runs),
    ];
    let pool = WorkerPool::new_inprocess(handlers, WorkerPoolOptions::default(), None)
        .expect("a valid pool");
    let before = pool.health_snapshot().await;
    let response = tokio::time::timeout(Duration::from_secs(5), pool.submit(request("r1", None)))
        .await
        .expect("answered in time")
        .expect("answered with success");
    assert_eq!(response.worker_id, "worker-1");
    assert_eq!(runs.load(Ordering::Acquire), 1, "ran exactly once");
    let stats = pool.stats();
    assert_eq!(stats.counters.refused_not_started, 1);
    assert_eq!(stats.counters.failed, 0);
    assert_eq!(stats.counters.succeeded, 1);
    assert_eq!(pool.health_snapshot().await, before, "no health change");
    // The refusing worker takes work again once it answered a probe or a
    // request of its own ended; the pool as a whole keeps serving.
    let again = pool.submit(request("r2", None)).await.expect("answered");
    assert!(again.worker_id.starts_with("worker-"));
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_pool_whose_every_worker_refuses_answers_once_by_the_deadline() {
    let runs = Arc::new(AtomicUsize::new(0));
    let handlers: Vec<Arc<dyn WorkerHandler>> = vec![
        Refuser::new("first", usize::MAX, &runs),
        Refuser::new("second", usize::MAX, &runs),
    ];
    let options = WorkerPoolOptions {
        health_probe_interval: Duration::from_millis(50),
        ..WorkerPoolOptions::default()
    };
    let pool = WorkerPool::new_inprocess(handlers, options, None).expect("a valid pool");
    let started = tokio::time::Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        pool.submit(request("r1", Some(200))),
    )
    .await
    .expect("answered in time");
    let waited = started.elapsed();
    assert!(
        matches!(answer, Err(WorkerPoolError::Timeout)),
        "answered {answer:?}"
    );
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_millis(300),
        "answered after {waited:?}"
    );
    assert_eq!(runs.load(Ordering::Acquire), 0, "never ran");
    let counters = pool.stats().counters;
    assert!(counters.refused_not_started >= 2, "{counters:?}");
    assert_eq!(counters.failed, 0);
    assert_eq!(
        counters.timed_out_queued + counters.timed_out_running,
        1,
        "exactly one answer: {counters:?}"
    );
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_refusal_in_caller_task_mode_is_one_ordinary_failure() {
    let runs = Arc::new(AtomicUsize::new(0));
    let handlers: Vec<Arc<dyn WorkerHandler>> = vec![
        Refuser::new("first", 1, &runs),
        Refuser::new("second", 0, &runs),
    ];
    let pool = WorkerPool::with_driver_options(
        foreman_tokio::TokioRuntime,
        handlers,
        foreman_tokio::PoolConfig::default(),
        None,
        foreman_tokio::DriverOptions::default().execution(foreman_tokio::ExecutionMode::CallerTask),
    )
    .expect("a valid pool");
    let answer = tokio::time::timeout(Duration::from_secs(5), pool.submit(request("r1", None)))
        .await
        .expect("answered in time");
    match answer {
        Err(WorkerPoolError::Worker(error)) => {
            assert_eq!(error.code, foreman_tokio::WorkerErrorCode::Unavailable);
            assert!(error.retryable);
            assert!(error.message.contains("refused, not started"), "{error:?}");
        }
        other => panic!("answered {other:?}"),
    }
    let counters = pool.stats().counters;
    assert_eq!(counters.refused_not_started, 0, "{counters:?}");
    assert_eq!(counters.failed, 1, "{counters:?}");
    assert_eq!(runs.load(Ordering::Acquire), 0);
    // The next request runs (the refused request left nothing behind).
    let response = pool.submit(request("r2", None)).await.expect("answered");
    assert!(response.worker_id.starts_with("worker-"));
    assert_eq!(runs.load(Ordering::Acquire), 1);
    pool.shutdown().await;
}
