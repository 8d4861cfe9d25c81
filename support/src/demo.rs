//! The quickstart's workload, shared by every adapter's example: LLM-like
//! and tool-like workers with heavy-tailed latencies, a flaky one, one that
//! hangs and one that panics, driven by concurrent callers; then a report.
//!
//! Deterministic workers (each has its own seeded [`Rng`]), no network;
//! written against [`Runtime`], so it runs on every adapter's runtime.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use foreman_driver::{
    async_trait, Runtime, WorkerErrorCode, WorkerHandler, WorkerHealthStatus, WorkerOperation,
    WorkerPool, WorkerPoolError, WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
};
use futures::channel::mpsc;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::{percentile, sleep, Rng};

/// Real latencies are divided by this so the demo ends in seconds.
pub const TIME_SCALE: u32 = 20;

/// What a demo worker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Tuned for LLM calls: median 600 ms (tool calls 40 ms), heavy tail.
    Llm,
    /// Tuned for tool calls: median 40 ms (LLM calls 900 ms).
    Tool,
    /// A tool that fails 40% of its calls.
    Flaky,
    /// A tool that hangs on every call after its 20th (the pool's deadline
    /// stops it).
    Hangs,
    /// A tool that panics on 15% of its calls.
    Panics,
}

/// A simulated worker, sleeping on the runtime's timer.
#[derive(Debug)]
pub struct DemoWorker<R: Runtime> {
    runtime: Arc<R>,
    behaviour: Behaviour,
    rng: Mutex<Rng>,
    calls: AtomicUsize,
}

impl<R: Runtime> DemoWorker<R> {
    /// A worker with the given behaviour and seed.
    pub fn new(runtime: Arc<R>, behaviour: Behaviour, seed: u64) -> Self {
        DemoWorker {
            runtime,
            behaviour,
            rng: Mutex::new(Rng::new(seed)),
            calls: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl<R: Runtime> WorkerHandler for DemoWorker<R> {
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let (latency, roll) = {
            let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            let slow = matches!(request.operation, WorkerOperation::Llm { .. });
            let latency = match (slow, self.behaviour) {
                (true, Behaviour::Llm) => rng.lognormal(600.0, 0.6),
                (true, _) => rng.lognormal(900.0, 0.6),
                (false, Behaviour::Tool) => rng.lognormal(40.0, 0.9),
                (false, _) => rng.lognormal(80.0, 0.9),
            };
            (latency, rng.unit())
        };
        match self.behaviour {
            Behaviour::Hangs if call >= 20 => std::future::pending::<()>().await,
            Behaviour::Panics if roll < 0.15 => panic!("tool crashed on {}", request.request_id),
            _ => {}
        }
        sleep(&*self.runtime, latency / TIME_SCALE).await;
        if self.behaviour == Behaviour::Flaky && roll < 0.4 {
            return Err(WorkerProtocolError::new(
                WorkerErrorCode::ExecutionFailed,
                "upstream 503",
                true,
            ));
        }
        Ok(json!({"request": request.request_id, "latency_ms": latency.as_millis() as u64}))
    }

    async fn probe_health(&self) -> WorkerHealthStatus {
        WorkerHealthStatus::Healthy
    }
}

/// Builds the demo pool, runs `requests` requests from `callers` concurrent
/// callers, and prints a live progress line (stderr) and the report
/// (stdout). Call it inside the runtime.
///
/// # Errors
/// Returns the pool's error if it cannot be built.
pub async fn run<R: Runtime + Clone>(
    runtime: R,
    requests: usize,
    callers: usize,
) -> Result<(), WorkerPoolError> {
    let shared_rt = Arc::new(runtime.clone());
    let layout = [
        (Behaviour::Llm, 4),
        (Behaviour::Tool, 3),
        (Behaviour::Flaky, 1),
        (Behaviour::Hangs, 1),
        (Behaviour::Panics, 1),
    ];
    let mut handlers: Vec<Arc<dyn WorkerHandler>> = Vec::new();
    let mut kinds = Vec::new();
    for (behaviour, count) in layout {
        for _ in 0..count {
            let seed = 0x5eed_u64 + handlers.len() as u64;
            handlers.push(Arc::new(DemoWorker::new(
                Arc::clone(&shared_rt),
                behaviour,
                seed,
            )));
            kinds.push(behaviour);
        }
    }
    let options = WorkerPoolOptions {
        queue_capacity: 16,
        health_probe_interval: Duration::from_millis(500),
        default_request_timeout: Some(Duration::from_millis(500)),
        ..WorkerPoolOptions::default()
    };
    let pool = Arc::new(
        WorkerPool::with_config(runtime.clone(), handlers, options.into(), None)
            .map_err(WorkerPoolError::from)?,
    );
    for (index, kind) in kinds.iter().enumerate() {
        eprintln!("worker-{index}: {kind:?}");
    }

    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded::<Outcome>();
    for caller in 0..callers {
        let (pool, next, tx, runtime2) = (
            Arc::clone(&pool),
            Arc::clone(&next),
            tx.clone(),
            Arc::clone(&shared_rt),
        );
        runtime.spawn(Box::pin(async move {
            let mut rng = Rng::new(caller as u64 + 1);
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= requests {
                    return;
                }
                let request = demo_request(index, &mut rng);
                let submitted = runtime2.now();
                let timed = pool.submit_timed(request).await;
                let total = runtime2.now().saturating_duration_since(submitted);
                let outcome = match timed.result {
                    Ok(_) => Outcome {
                        label: "ok".into(),
                        queue_ms: Some(millis(timed.timings.queued)),
                        run_ms: timed.timings.ran.map(millis),
                        total,
                    },
                    Err(error) => Outcome {
                        label: label(&error),
                        queue_ms: None,
                        run_ms: None,
                        total,
                    },
                };
                if tx.unbounded_send(outcome).is_err() {
                    return;
                }
                // Think time between a caller's requests.
                sleep(&*runtime2, Duration::from_millis(rng.below(20))).await;
            }
        }));
    }
    drop(tx);

    let mut outcomes = Vec::with_capacity(requests);
    while let Some(outcome) = rx.next().await {
        outcomes.push(outcome);
        if outcomes.len() % 50 == 0 || outcomes.len() == requests {
            let stats = pool.stats();
            eprint!(
                "\r{:>5}/{requests} answered  running {:>2}  queued {:>3}  {:>5.1}s ",
                outcomes.len(),
                stats.running,
                stats.queued,
                started.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!();
    let elapsed = started.elapsed();
    pool.shutdown().await;
    report(&pool, &outcomes, elapsed);
    Ok(())
}

struct Outcome {
    label: String,
    queue_ms: Option<u64>,
    run_ms: Option<u64>,
    total: Duration,
}

fn demo_request(index: usize, rng: &mut Rng) -> WorkerRequest {
    let operation = if rng.unit() < 0.4 {
        WorkerOperation::Llm {
            model: "demo-llm".into(),
            prompt: format!("step {index}"),
            scoped_input: json!({}),
        }
    } else {
        WorkerOperation::Tool {
            tool: "search".into(),
            input: json!({"q": index}),
            scoped_input: json!({}),
        }
    };
    WorkerRequest {
        request_id: format!("req-{index}"),
        workflow_name: "quickstart".into(),
        node_id: format!("node-{}", index % 7),
        timeout_ms: None,
        operation,
    }
}

fn label(error: &WorkerPoolError) -> String {
    match error {
        WorkerPoolError::Worker(inner) => format!("worker error: {:?}", inner.code),
        WorkerPoolError::InvalidRequest { .. } => "refused: InvalidRequest".into(),
        WorkerPoolError::QueueFull => "refused: QueueFull".into(),
        WorkerPoolError::NoHealthyWorker => "refused: NoHealthyWorker".into(),
        WorkerPoolError::CircuitOpen => "refused: CircuitOpen".into(),
        WorkerPoolError::ShuttingDown => "ShuttingDown".into(),
        WorkerPoolError::Timeout => "timeout".into(),
    }
}

fn percentiles(mut values: Vec<u64>) -> String {
    if values.is_empty() {
        return "-".into();
    }
    values.sort_unstable();
    let at = |p: usize| percentile(&values, p).unwrap_or(0);
    format!(
        "p50 {:>5} ms  p90 {:>5} ms  p99 {:>5} ms  max {:>5} ms",
        at(50),
        at(90),
        at(99),
        at(100)
    )
}

fn report<R: Runtime>(pool: &WorkerPool<R>, outcomes: &[Outcome], elapsed: Duration) {
    println!("== foreman quickstart report ==");
    println!(
        "{} requests in {:.2} s: {:.0} requests/s (latencies are real ones divided by {TIME_SCALE})",
        outcomes.len(),
        elapsed.as_secs_f64(),
        outcomes.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "queued   {}",
        percentiles(outcomes.iter().filter_map(|o| o.queue_ms).collect())
    );
    println!(
        "running  {}",
        percentiles(outcomes.iter().filter_map(|o| o.run_ms).collect())
    );
    println!(
        "total    {}",
        percentiles(
            outcomes
                .iter()
                .map(|o| o.total.as_millis() as u64)
                .collect()
        )
    );
    let mut by_label = BTreeMap::<&str, usize>::new();
    for outcome in outcomes {
        *by_label.entry(outcome.label.as_str()).or_default() += 1;
    }
    println!("outcomes:");
    for (label, count) in by_label {
        println!("  {label:<28} {count:>6}");
    }
    let counters = pool.stats().counters;
    println!(
        "core counters: accepted {} succeeded {} failed {} timed out (queued/running) {}/{} refused {} run by the first free worker {} probes {} (timed out {})",
        counters.accepted,
        counters.succeeded,
        counters.failed,
        counters.timed_out_queued,
        counters.timed_out_running,
        counters.refused(),
        counters.reassigned,
        counters.probes_sent,
        counters.probes_timed_out
    );
    println!("health transitions:");
    for change in pool.health_history() {
        println!(
            "  {:>8.3} s  {:<9} {:?} -> {:?} ({:?})",
            change.at.as_secs_f64(),
            change.worker_id,
            change.from,
            change.to,
            change.cause
        );
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
