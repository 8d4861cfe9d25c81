//! Overload of healthy workers sheds load (queue expiry, backpressure) and
//! never ejects them: two workers whose handler always succeeds after
//! 50 ms, eight closed-loop callers with a 120 ms budget, ten seconds of
//! paused (virtual) time, through the public API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foreman_tokio::{
    async_trait, WorkerHandler, WorkerHealthStatus, WorkerOperation, WorkerPool, WorkerPoolError,
    WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
};
use serde_json::{json, Value};
use tokio::time::Instant;

const WORKERS: usize = 2;
const LATENCY: Duration = Duration::from_millis(50);
const CALLERS: u64 = 8;
const BUDGET_MS: u64 = 120;
const RUN_FOR: Duration = Duration::from_secs(10);
/// How long a caller waits before it submits again after a refusal.
const REFUSAL_BACKOFF: Duration = Duration::from_millis(5);

/// Always healthy: every request succeeds after [`LATENCY`].
struct FiftyMillis;

#[async_trait]
impl WorkerHandler for FiftyMillis {
    async fn handle(&self, _request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        tokio::time::sleep(LATENCY).await;
        Ok(json!("done"))
    }
}

fn request(caller: u64, n: u64) -> WorkerRequest {
    WorkerRequest {
        request_id: format!("c{caller}-{n}"),
        workflow_name: "overload".into(),
        node_id: "node".into(),
        timeout_ms: Some(BUDGET_MS),
        operation: WorkerOperation::Tool {
            tool: "sleep".into(),
            input: json!({}),
            scoped_input: json!({}),
        },
    }
}

#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    timeouts: AtomicU64,
    no_healthy_worker: AtomicU64,
    queue_full: AtomicU64,
    other: AtomicU64,
    /// Successes per second of the run.
    ok_per_second: Mutex<Vec<u64>>,
}

#[tokio::test(start_paused = true)]
async fn overload_of_healthy_workers_sheds_load_without_ejecting_them() {
    let handlers: Vec<Arc<dyn WorkerHandler>> = (0..WORKERS)
        .map(|_| Arc::new(FiftyMillis) as Arc<dyn WorkerHandler>)
        .collect();
    let pool = Arc::new(
        WorkerPool::new_inprocess(handlers, WorkerPoolOptions::default(), None).expect("pool"),
    );
    let tally = Arc::new(Tally {
        ok_per_second: Mutex::new(vec![0; RUN_FOR.as_secs() as usize]),
        ..Tally::default()
    });
    let begin = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (pool, tally) = (Arc::clone(&pool), Arc::clone(&tally));
            tokio::spawn(async move {
                let mut n = 0;
                while begin.elapsed() < RUN_FOR {
                    n += 1;
                    match pool.submit(request(caller, n)).await {
                        Ok(_) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            let second = begin.elapsed().as_secs() as usize;
                            if let Some(count) =
                                tally.ok_per_second.lock().expect("tally").get_mut(second)
                            {
                                *count += 1;
                            }
                        }
                        Err(WorkerPoolError::Timeout) => {
                            tally.timeouts.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(refusal) => {
                            let counter = match refusal {
                                WorkerPoolError::NoHealthyWorker => &tally.no_healthy_worker,
                                WorkerPoolError::QueueFull => &tally.queue_full,
                                _ => &tally.other,
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(REFUSAL_BACKOFF).await;
                        }
                    }
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.expect("caller ends");
    }
    let history = pool.health_history();
    let snapshot = pool.health_snapshot().await;
    let counters = pool.stats().counters;
    pool.shutdown().await;

    let ok = tally.ok.load(Ordering::Relaxed);
    let timeouts = tally.timeouts.load(Ordering::Relaxed);
    let no_healthy_worker = tally.no_healthy_worker.load(Ordering::Relaxed);
    let queue_full = tally.queue_full.load(Ordering::Relaxed);
    let other = tally.other.load(Ordering::Relaxed);
    let per_second = tally.ok_per_second.lock().expect("tally").clone();
    let ejections = history
        .iter()
        .filter(|change| change.to == WorkerHealthStatus::Unavailable)
        .count();
    let figures = format!(
        "ok={ok} timeouts={timeouts} (queued {}, running {}) refused_no_healthy_worker={no_healthy_worker} \
         refused_queue_full={queue_full} other={other} ejections={ejections} ok_per_second={per_second:?} \
         health_changes={history:?}",
        counters.timed_out_queued, counters.timed_out_running
    );
    eprintln!("{figures}");

    assert_eq!(no_healthy_worker, 0, "a healthy pool refused: {figures}");
    assert_eq!(
        ejections, 0,
        "a healthy worker was ejected under overload: {figures}"
    );
    assert!(
        snapshot.iter().all(|worker| matches!(
            worker.status,
            WorkerHealthStatus::Healthy | WorkerHealthStatus::Degraded
        )),
        "{snapshot:?}: {figures}"
    );
    assert_eq!(other, 0, "{figures}");
    assert!(
        per_second.iter().all(|&count| count > 0),
        "goodput fell to zero in some second: {figures}"
    );
    // Two workers at 50 ms can answer at most 400 requests in 10 s; the
    // rest of the offered load is shed by expiry. A pool that ejects its
    // workers, or spends them on requests that cannot finish in time,
    // answers a handful.
    assert!(ok >= 360, "too few successes: {figures}");
}
