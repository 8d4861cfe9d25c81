//! Shared test workers and helpers.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foreman_tokio::{
    async_trait, CircuitBreakerHooks, WorkerErrorCode, WorkerHandler, WorkerHealthStatus,
    WorkerOperation, WorkerProtocolError, WorkerRequest, WorkerResponse,
};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// Runs one async test body on a paused current-thread runtime and on a
/// two-thread runtime (real time; bodies wait on events, never on margins).
#[macro_export]
macro_rules! both_runtimes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "current_thread", start_paused = true)]
            async fn current_thread() {
                super::$name().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn multi_thread() {
                super::$name().await;
            }
        }
    )*};
}

pub fn request(id: &str, node: &str) -> WorkerRequest {
    WorkerRequest {
        request_id: id.to_string(),
        workflow_name: "wf".to_string(),
        node_id: node.to_string(),
        timeout_ms: None,
        operation: WorkerOperation::Tool {
            tool: "echo".to_string(),
            input: json!({"x": 1}),
            scoped_input: json!({"input": {}}),
        },
    }
}

/// How a [`TestWorker`]'s probe answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeMode {
    Healthy,
    Unavailable,
    Hang,
}

/// A worker whose behaviour is chosen by the request's `node_id`:
/// `echo`, `fail`, `panic`, `hang` (never finishes), `gate` (waits for a
/// permit), `sleep:<ms>`.
pub struct TestWorker {
    pub calls: AtomicUsize,
    pub finished: AtomicUsize,
    /// Handler futures dropped before finishing (aborted).
    pub dropped: AtomicUsize,
    pub probes: AtomicUsize,
    pub gate: Semaphore,
    pub probe_mode: Mutex<ProbeMode>,
    pub fail_all: AtomicBool,
}

impl TestWorker {
    pub fn new() -> Arc<Self> {
        Arc::new(TestWorker {
            calls: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            probes: AtomicUsize::new(0),
            gate: Semaphore::new(0),
            probe_mode: Mutex::new(ProbeMode::Healthy),
            fail_all: AtomicBool::new(false),
        })
    }

    pub fn set_probe(&self, mode: ProbeMode) {
        *self.probe_mode.lock().unwrap() = mode;
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

struct DropWatch<'a> {
    worker: &'a TestWorker,
    done: bool,
}

impl Drop for DropWatch<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.worker.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl WorkerHandler for TestWorker {
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut watch = DropWatch {
            worker: self,
            done: false,
        };
        let node = request.node_id.as_str();
        let result = if self.fail_all.load(Ordering::SeqCst) || node == "fail" {
            Err(WorkerProtocolError::new(
                WorkerErrorCode::ExecutionFailed,
                "failed on purpose",
                true,
            ))
        } else if node == "panic" {
            panic!("handler exploded on purpose");
        } else if node == "hang" {
            std::future::pending::<()>().await;
            Ok(json!(null))
        } else if node == "gate" {
            if let Ok(permit) = self.gate.acquire().await {
                permit.forget();
            }
            Ok(json!({"gate": "passed"}))
        } else if let Some(ms) = node.strip_prefix("sleep:") {
            let ms: u64 = ms.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json!({"slept": ms}))
        } else {
            Ok(json!({"node": node}))
        };
        watch.done = true;
        self.finished.fetch_add(1, Ordering::SeqCst);
        result
    }

    async fn probe_health(&self) -> WorkerHealthStatus {
        self.probes.fetch_add(1, Ordering::SeqCst);
        let mode = *self.probe_mode.lock().unwrap();
        match mode {
            ProbeMode::Healthy => WorkerHealthStatus::Healthy,
            ProbeMode::Unavailable => WorkerHealthStatus::Unavailable,
            ProbeMode::Hang => std::future::pending().await,
        }
    }
}

/// Hooks that record every call.
#[derive(Default)]
pub struct RecordingHooks {
    pub log: Mutex<Vec<String>>,
    /// Worker ids whose circuit is open.
    pub open: Mutex<Vec<String>>,
}

impl RecordingHooks {
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn push(&self, entry: String) {
        self.log.lock().unwrap().push(entry);
    }
}

#[async_trait]
impl CircuitBreakerHooks for RecordingHooks {
    fn allow_request(&self, worker_id: &str, _request: &WorkerRequest) -> bool {
        !self
            .open
            .lock()
            .unwrap()
            .iter()
            .any(|open| open == worker_id)
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
            "rejected {} {} {reason:?}",
            request.request_id,
            worker_id.unwrap_or("-")
        ));
    }
}

/// Waits (in small steps of the runtime's clock) until `condition` holds;
/// panics after 10 s of runtime time.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
