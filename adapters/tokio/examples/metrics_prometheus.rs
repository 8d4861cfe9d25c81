//! The pool's metrics as Prometheus text:
//! `cargo run -p foreman-tokio --features metrics --example metrics_prometheus`.
//!
//! Installs `metrics-exporter-prometheus`'s recorder (no HTTP listener:
//! the scrape text is rendered in process), builds a pool of two workers
//! (one of which fails every fifth request) with a short queue, runs a few
//! hundred requests from concurrent callers (successes, failures, a few
//! timeouts and refusals for a full queue), and prints what a scrape of
//! `/metrics` would return then.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foreman_tokio::{
    async_trait, WorkerErrorCode, WorkerHandler, WorkerOperation, WorkerPool, WorkerPoolOptions,
    WorkerProtocolError, WorkerRequest,
};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::{json, Value};

/// Answers after a few ms; every `fail_every`-th call fails; `slow` nodes
/// take 50 ms.
struct Worker {
    calls: AtomicU64,
    fail_every: u64,
}

#[async_trait]
impl WorkerHandler for Worker {
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let ms = if request.node_id == "slow" { 50 } else { 2 };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        if self.fail_every > 0 && call % self.fail_every == 0 {
            return Err(WorkerProtocolError::new(
                WorkerErrorCode::ExecutionFailed,
                "upstream tool failed",
                true,
            ));
        }
        Ok(json!({ "node": request.node_id }))
    }
}

fn request(n: u64) -> WorkerRequest {
    let slow = n % 25 == 0;
    WorkerRequest {
        request_id: format!("req-{n}"),
        workflow_name: "demo".to_string(),
        node_id: if slow { "slow" } else { "fast" }.to_string(),
        // The slow ones run out of time.
        timeout_ms: Some(if slow { 20 } else { 1_000 }),
        operation: WorkerOperation::Tool {
            tool: "echo".to_string(),
            input: json!({ "n": n }),
            scoped_input: json!({}),
        },
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The recorder first: the pool registers its metrics when it is built.
    let handle = PrometheusBuilder::new().install_recorder()?;
    let handlers: Vec<Arc<dyn WorkerHandler>> = vec![
        Arc::new(Worker {
            calls: AtomicU64::new(0),
            fail_every: 0,
        }),
        Arc::new(Worker {
            calls: AtomicU64::new(0),
            fail_every: 5,
        }),
    ];
    let options = WorkerPoolOptions {
        queue_capacity: 4,
        // Failures make a worker Degraded, never Unavailable here.
        unavailable_after_failures: 1_000,
        ..WorkerPoolOptions::default()
    };
    let pool = Arc::new(WorkerPool::new_inprocess(handlers, options, None)?);
    // 16 callers, 25 requests each: more callers than the queues hold, so
    // some submits are refused with `QueueFull`.
    let mut callers = Vec::new();
    for caller in 0..16u64 {
        let pool = Arc::clone(&pool);
        callers.push(tokio::spawn(async move {
            for i in 0..25u64 {
                let _ = pool.submit(request(caller * 25 + i)).await;
            }
        }));
    }
    for caller in callers {
        caller.await?;
    }
    // Scraped before shutdown, so the gauges still show both workers.
    print!("{}", handle.render());
    pool.shutdown().await;
    Ok(())
}
