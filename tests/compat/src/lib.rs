//! Code a user of `simple-agents-workflow` 0.2.34's `worker` module wrote,
//! built on `foreman-tokio`: the `use` lines below are the only ones that
//! name foreman.
//!
//! Everything else is written against the reference's public API as it is
//! published: struct literals of every public type (so a field foreman
//! added or removed fails the build), exhaustive matches on every public
//! enum (so a variant foreman added fails the build), every trait method
//! implemented with the reference's signature, a mock client that builds
//! responses by hand, and the derives the reference's types have (`Clone`,
//! `Debug`, `PartialEq`, serde). If this crate stops compiling, existing
//! users can no longer switch by changing imports.
#![deny(missing_docs)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// The only lines that change when a user switches to foreman.
pub use foreman_tokio::{
    async_trait, CircuitBreakerHooks, WorkerErrorCode, WorkerHandler, WorkerHealth,
    WorkerHealthStatus, WorkerOperation, WorkerPool, WorkerPoolClient, WorkerPoolError,
    WorkerPoolOptions, WorkerProtocolError, WorkerRequest, WorkerResponse, WorkerResult,
    WorkerSecurityPolicy,
};

use serde_json::{json, Value};

/// A tool request as a workflow runtime builds one.
pub fn tool_request(id: &str, timeout_ms: Option<u64>) -> WorkerRequest {
    WorkerRequest {
        request_id: id.to_string(),
        workflow_name: "wf".to_string(),
        node_id: "node-1".to_string(),
        timeout_ms,
        operation: WorkerOperation::Tool {
            tool: "echo".to_string(),
            input: json!({"x": 1}),
            scoped_input: json!({"input": {}}),
        },
    }
}

/// An LLM request as a workflow runtime builds one.
pub fn llm_request(id: &str) -> WorkerRequest {
    WorkerRequest {
        request_id: id.to_string(),
        workflow_name: "wf".to_string(),
        node_id: "node-2".to_string(),
        timeout_ms: None,
        operation: WorkerOperation::Llm {
            model: "model".to_string(),
            prompt: "hello".to_string(),
            scoped_input: Value::Null,
        },
    }
}

/// Options written field by field, as the reference's users do.
pub fn every_option(queue_capacity: usize) -> WorkerPoolOptions {
    WorkerPoolOptions {
        queue_capacity,
        health_probe_interval: Duration::from_millis(50),
        unavailable_after_failures: 2,
        default_request_timeout: Some(Duration::from_secs(1)),
        security_policy: WorkerSecurityPolicy {
            max_request_timeout_ms: 5_000,
            max_request_payload_bytes: 64 * 1024,
            max_identifier_length: 64,
        },
    }
}

/// Answers with the request's node id.
pub struct NodeEcho;

#[async_trait]
impl WorkerHandler for NodeEcho {
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        Ok(json!({ "node": request.node_id }))
    }
}

/// Sleeps on tokio's clock before answering.
pub struct Sleeper {
    /// How long each request takes.
    pub delay: Duration,
}

#[async_trait]
impl WorkerHandler for Sleeper {
    async fn handle(&self, _request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        tokio::time::sleep(self.delay).await;
        Ok(json!({ "status": "ok" }))
    }
}

/// Fails (and says so in its probe) until it is switched on.
pub struct Switchable {
    /// Whether it serves.
    pub up: AtomicBool,
    /// Requests it handled.
    pub calls: AtomicUsize,
}

#[async_trait]
impl WorkerHandler for Switchable {
    async fn handle(&self, _request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.up.load(Ordering::Relaxed) {
            return Ok(json!({ "status": "up" }));
        }
        Err(WorkerProtocolError {
            code: WorkerErrorCode::Unavailable,
            message: "switched off".to_string(),
            retryable: true,
        })
    }

    async fn probe_health(&self) -> WorkerHealthStatus {
        if self.up.load(Ordering::Relaxed) {
            WorkerHealthStatus::Healthy
        } else {
            WorkerHealthStatus::Unavailable
        }
    }
}

/// A circuit breaker that implements every hook and records what it saw.
#[derive(Default)]
pub struct RecordingBreaker {
    /// Workers it refuses.
    pub refuse: Mutex<Vec<String>>,
    /// One line per hook call.
    pub log: Mutex<Vec<String>>,
}

impl RecordingBreaker {
    fn push(&self, line: String) {
        if let Ok(mut log) = self.log.lock() {
            log.push(line);
        }
    }
}

#[async_trait]
impl CircuitBreakerHooks for RecordingBreaker {
    fn allow_request(&self, worker_id: &str, _request: &WorkerRequest) -> bool {
        self.refuse
            .lock()
            .map(|refused| !refused.iter().any(|w| w == worker_id))
            .unwrap_or(true)
    }

    async fn on_request_accepted(&self, worker_id: &str, request: &WorkerRequest) {
        self.push(format!("accepted {} {worker_id}", request.request_id));
    }

    async fn on_request_success(&self, worker_id: &str, response: &WorkerResponse) {
        self.push(format!("success {} {worker_id}", response.request_id));
    }

    async fn on_request_failure(&self, worker_id: &str, error: &WorkerProtocolError) {
        self.push(format!("failure {worker_id} {:?}", error.code));
    }

    async fn on_request_rejected(
        &self,
        worker_id: Option<&str>,
        request: &WorkerRequest,
        reason: WorkerErrorCode,
    ) {
        self.push(format!(
            "rejected {} {worker_id:?} {reason:?}",
            request.request_id
        ));
    }
}

/// A hand-written client, as users write to test their runtimes without a
/// pool: it builds every response itself.
#[derive(Default)]
pub struct ScriptedClient {
    /// Requests seen.
    pub seen: AtomicUsize,
}

#[async_trait]
impl WorkerPoolClient for ScriptedClient {
    async fn submit(&self, request: WorkerRequest) -> Result<WorkerResponse, WorkerPoolError> {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        if request.request_id.is_empty() {
            return Err(WorkerPoolError::InvalidRequest {
                reason: "empty request id".to_string(),
            });
        }
        let result = if n % 2 == 0 {
            WorkerResult::Success {
                output: json!({ "n": n }),
            }
        } else {
            WorkerResult::Error {
                error: WorkerProtocolError {
                    code: WorkerErrorCode::ExecutionFailed,
                    message: "scripted".to_string(),
                    retryable: false,
                },
            }
        };
        Ok(WorkerResponse {
            request_id: request.request_id,
            worker_id: "scripted-0".to_string(),
            result,
            elapsed_ms: 0,
        })
    }

    async fn health_snapshot(&self) -> Vec<WorkerHealth> {
        vec![WorkerHealth {
            worker_id: "scripted-0".to_string(),
            status: WorkerHealthStatus::Healthy,
            consecutive_failures: 0,
            last_probe_unix_ms: None,
        }]
    }
}

/// What a runtime does with an error: an exhaustive match over the
/// reference's variants.
pub fn describe(error: &WorkerPoolError) -> String {
    match error {
        WorkerPoolError::QueueFull => "queue full".to_string(),
        WorkerPoolError::NoHealthyWorker => "no healthy worker".to_string(),
        WorkerPoolError::Worker(inner) => format!("worker: {}", code_name(inner.code)),
        WorkerPoolError::Timeout => "timeout".to_string(),
        WorkerPoolError::ShuttingDown => "shutting down".to_string(),
        WorkerPoolError::CircuitOpen => "circuit open".to_string(),
        WorkerPoolError::InvalidRequest { reason } => format!("invalid: {reason}"),
    }
}

/// An exhaustive match over the reference's error codes.
pub fn code_name(code: WorkerErrorCode) -> &'static str {
    match code {
        WorkerErrorCode::QueueFull => "queue_full",
        WorkerErrorCode::Unavailable => "unavailable",
        WorkerErrorCode::Timeout => "timeout",
        WorkerErrorCode::ExecutionFailed => "execution_failed",
        WorkerErrorCode::CircuitOpen => "circuit_open",
        WorkerErrorCode::Cancelled => "cancelled",
        WorkerErrorCode::InvalidRequest => "invalid_request",
    }
}

/// An exhaustive match over the reference's result and status variants.
pub fn summary(response: &WorkerResponse, health: &[WorkerHealth]) -> String {
    let outcome = match &response.result {
        WorkerResult::Success { output } => format!("ok {output}"),
        WorkerResult::Error { error } => format!("error {}", error.message),
    };
    let schedulable = health
        .iter()
        .filter(|entry| match entry.status {
            WorkerHealthStatus::Healthy | WorkerHealthStatus::Degraded => true,
            WorkerHealthStatus::Unavailable => false,
        })
        .count();
    format!("{outcome}; {schedulable} schedulable")
}

/// The operation's name: an exhaustive match over the reference's kinds.
pub fn operation_name(request: &WorkerRequest) -> &str {
    match &request.operation {
        WorkerOperation::Llm { model, .. } => model,
        WorkerOperation::Tool { tool, .. } => tool,
    }
}

/// Builds a pool the way the reference's users do, behind the client trait.
///
/// # Errors
/// The pool's constructor error (`WorkerPoolError`).
pub fn client_of(
    handlers: Vec<Arc<dyn WorkerHandler>>,
    options: WorkerPoolOptions,
    hooks: Option<Arc<dyn CircuitBreakerHooks>>,
) -> Result<Arc<dyn WorkerPoolClient>, WorkerPoolError> {
    let pool = WorkerPool::new_inprocess(handlers, options.clone(), hooks)?;
    Ok(Arc::new(pool))
}
