//! What both observability test binaries share: a paused current-thread
//! runtime, a worker that logs inside every request, and a pool of them.

use std::sync::Arc;
use std::time::Duration;

use foreman_tokio::{
    async_trait, DriverOptions, ExecutionMode, PoolConfig, WorkerErrorCode, WorkerHandler,
    WorkerPool, WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
};
use serde_json::{json, Value};

/// Runs `body` on a paused current-thread runtime.
pub fn paused<F: std::future::Future<Output = ()>>(body: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("tokio runtime")
        .block_on(body);
}
/// Echoes, fails (`fail`), sleeps (`sleep:<ms>`) or hangs (`hang`); logs
/// an event of its own inside every request.
struct Worker;

#[async_trait]
impl WorkerHandler for Worker {
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        tracing::info!(node = request.node_id.as_str(), "inside the handler");
        let node = request.node_id.as_str();
        if node == "fail" {
            return Err(WorkerProtocolError::new(
                WorkerErrorCode::ExecutionFailed,
                "failed on purpose",
                false,
            ));
        }
        if node == "hang" {
            std::future::pending::<()>().await;
        }
        if let Some(ms) = node.strip_prefix("sleep:") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        }
        Ok(json!({ "node": node }))
    }
}

pub fn options(queue_capacity: usize) -> WorkerPoolOptions {
    WorkerPoolOptions {
        queue_capacity,
        health_probe_interval: Duration::from_secs(600),
        unavailable_after_failures: 2,
        ..WorkerPoolOptions::default()
    }
}

pub fn pool(workers: usize, queue_capacity: usize, execution: ExecutionMode) -> WorkerPool {
    let handlers: Vec<Arc<dyn WorkerHandler>> = (0..workers)
        .map(|_| Arc::new(Worker) as Arc<dyn WorkerHandler>)
        .collect();
    WorkerPool::with_driver_options(
        foreman_tokio::TokioRuntime,
        handlers,
        PoolConfig::new(options(queue_capacity)),
        None,
        DriverOptions::default().execution(execution),
    )
    .expect("valid options")
}
