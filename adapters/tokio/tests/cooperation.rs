//! A caller looping on `submit` with a handler that finishes at once never
//! waits, so foreman must give the thread back on its own (the bug this
//! guards against: such a loop starved every other task, timers included).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use foreman_tokio::{
    async_trait, WorkerHandler, WorkerOperation, WorkerPool, WorkerPoolOptions,
    WorkerProtocolError, WorkerRequest,
};
use serde_json::{json, Value};

struct Instant;

#[async_trait]
impl WorkerHandler for Instant {
    async fn handle(&self, _request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        Ok(Value::Null)
    }
}

fn request() -> WorkerRequest {
    WorkerRequest {
        request_id: "loop".into(),
        workflow_name: "wf".into(),
        node_id: "node".into(),
        timeout_ms: None,
        operation: WorkerOperation::Tool {
            tool: "echo".into(),
            input: json!({}),
            scoped_input: json!({}),
        },
    }
}

/// On a single-threaded runtime the looping caller and the test body share
/// one thread: the body only runs again if `submit` yields now and then.
#[tokio::test(flavor = "current_thread")]
async fn a_submit_loop_yields_to_other_tasks() {
    let pool = Arc::new(
        WorkerPool::new_inprocess(vec![Arc::new(Instant)], WorkerPoolOptions::default(), None)
            .expect("pool"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let caller = {
        let (pool, stop, done) = (Arc::clone(&pool), Arc::clone(&stop), Arc::clone(&done));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                pool.submit(request()).await.expect("echo succeeds");
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Let the caller run; this task is polled again only if it yields.
    while done.load(Ordering::Relaxed) < 1_000 {
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Relaxed);
    caller.await.expect("caller ends");
    assert!(done.load(Ordering::Relaxed) >= 1_000);
    pool.shutdown().await;
}
