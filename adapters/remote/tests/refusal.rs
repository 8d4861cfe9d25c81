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

fn caller_task_pool(handlers: Vec<Arc<dyn WorkerHandler>>) -> WorkerPool {
    WorkerPool::with_driver_options(
        foreman_tokio::TokioRuntime,
        handlers,
        foreman_tokio::PoolConfig::default(),
        None,
        foreman_tokio::DriverOptions::default().execution(foreman_tokio::ExecutionMode::CallerTask),
    )
    .expect("a valid pool")
}

/// In caller-task mode the caller runs its own request's handler: declined
/// there, the request runs on the other worker, with no health penalty.
#[tokio::test(start_paused = true)]
async fn a_refusal_in_caller_task_mode_runs_the_request_on_another_worker() {
    let runs = Arc::new(AtomicUsize::new(0));
    let pool = caller_task_pool(vec![
        Refuser::new("first", 1, &runs),
        Refuser::new("second", 0, &runs),
    ]);
    let before = pool.health_snapshot().await;
    let response = tokio::time::timeout(Duration::from_secs(5), pool.submit(request("r1", None)))
        .await
        .expect("answered in time")
        .expect("answered with success");
    assert_eq!(response.worker_id, "worker-1");
    assert_eq!(runs.load(Ordering::Acquire), 1, "ran exactly once");
    let counters = pool.stats().counters;
    assert_eq!(counters.refused_not_started, 1, "{counters:?}");
    assert_eq!(
        (counters.failed, counters.succeeded),
        (0, 1),
        "{counters:?}"
    );
    assert_eq!(pool.health_snapshot().await, before, "no health change");
    pool.shutdown().await;
}

/// Declines `r1` the first time any worker runs it; runs everything else
/// (and `r1` after that) for 10 ms.
struct DeclinesR1Once {
    declined: Arc<AtomicUsize>,
    runs: Arc<AtomicUsize>,
}

#[async_trait]
impl WorkerHandler for DeclinesR1Once {
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        if request.request_id == "r1" && self.declined.fetch_add(1, Ordering::AcqRel) == 0 {
            return Err(refuse_not_started(request, "busy"));
        }
        self.runs.fetch_add(1, Ordering::AcqRel);
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(json!({ "node": request.node_id }))
    }
}

/// In caller-task mode a caller whose request ended runs the next queued
/// request itself (it claims it): declined there, that request still runs
/// once, on the other worker, and every caller gets one answer.
#[tokio::test(start_paused = true)]
async fn a_refusal_in_a_claimed_run_sends_the_request_back_to_its_caller() {
    let (declined, runs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let handler: Arc<dyn WorkerHandler> = Arc::new(DeclinesR1Once {
        declined: Arc::clone(&declined),
        runs: Arc::clone(&runs),
    });
    let pool = caller_task_pool(vec![Arc::clone(&handler), handler]);
    // r0 and r2 start at once on the two workers; r1 waits, and the caller
    // of whichever ends first runs it.
    let (r0, r2, r1) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(
            pool.submit(request("r0", None)),
            pool.submit(request("r2", None)),
            pool.submit(request("r1", None)),
        )
    })
    .await
    .expect("answered in time");
    for (id, answer) in [("r0", r0), ("r1", r1), ("r2", r2)] {
        let response = answer.unwrap_or_else(|error| panic!("{id}: {error:?}"));
        assert_eq!(response.request_id, id);
    }
    assert_eq!(
        declined.load(Ordering::Acquire),
        2,
        "declined once, then ran"
    );
    assert_eq!(runs.load(Ordering::Acquire), 3, "each ran exactly once");
    let counters = pool.stats().counters;
    assert_eq!(counters.refused_not_started, 1, "{counters:?}");
    assert_eq!(
        (counters.failed, counters.succeeded),
        (0, 3),
        "{counters:?}"
    );
    pool.shutdown().await;
}
