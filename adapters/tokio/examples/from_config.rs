//! A pool built from a settings file:
//! `cargo run -p foreman-tokio --example from_config [path/to/foreman.toml]`.
//!
//! Loads the file (by default `examples/foreman.toml` at the workspace
//! root, which holds every setting at its default), builds a pool of three
//! workers from it, runs a few requests from concurrent callers and prints
//! who served what. An application enables foreman-tokio's `config`
//! feature for `PoolSettings`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use foreman_tokio::{
    async_trait, PoolSettings, TokioRuntime, WorkerHandler, WorkerOperation, WorkerPool,
    WorkerProtocolError, WorkerRequest, WorkerResult,
};
use serde_json::{json, Value};

/// Answers after a short pause with the length of the request's `text`.
struct Counter;

#[async_trait]
impl WorkerHandler for Counter {
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let WorkerOperation::Tool { input, .. } = &request.operation else {
            return Ok(Value::Null);
        };
        let text = input.get("text").and_then(Value::as_str).unwrap_or("");
        Ok(json!({ "chars": text.chars().count() }))
    }
}

fn request(index: usize, text: &str) -> WorkerRequest {
    WorkerRequest {
        request_id: format!("req-{index}"),
        workflow_name: "from_config".into(),
        node_id: "count".into(),
        timeout_ms: None,
        operation: WorkerOperation::Tool {
            tool: "count".into(),
            input: json!({ "text": text }),
            scoped_input: json!({}),
        },
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args_os().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/foreman.toml"),
        PathBuf::from,
    );
    let settings = PoolSettings::from_toml_file(&path)?;
    println!(
        "{}: queue capacity {}, default timeout {:?}, {} lane(s)",
        path.display(),
        settings.queue_capacity,
        settings.default_request_timeout,
        settings.driver.lanes
    );

    let handlers: Vec<Arc<dyn WorkerHandler>> =
        vec![Arc::new(Counter), Arc::new(Counter), Arc::new(Counter)];
    let pool = Arc::new(WorkerPool::from_settings(
        TokioRuntime,
        handlers,
        &settings,
        None,
    )?);

    let words = [
        "settings",
        "from",
        "a",
        "file",
        "with",
        "humane",
        "durations",
    ];
    let callers: Vec<_> = words
        .iter()
        .enumerate()
        .map(|(index, word)| {
            let pool = Arc::clone(&pool);
            let request = request(index, word);
            tokio::spawn(async move { pool.submit(request).await })
        })
        .collect();
    for caller in callers {
        let response = caller.await??;
        match response.result {
            WorkerResult::Success { output } => println!(
                "{} on {} after {} ms: {output}",
                response.request_id, response.worker_id, response.elapsed_ms
            ),
            WorkerResult::Error { error } => {
                println!("{} failed: {}", response.request_id, error.message);
            }
        }
    }
    let stats = pool.stats();
    println!(
        "{} accepted, {} succeeded, {} failed",
        stats.counters.accepted, stats.counters.succeeded, stats.counters.failed
    );
    pool.shutdown().await;
    Ok(())
}
