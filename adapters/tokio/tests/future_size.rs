//! Every caller holds (and its runtime moves) the future `submit` returns:
//! it carries its state once.

use foreman_tokio::{
    handler_fn, WorkerOperation, WorkerPool, WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
};
use serde_json::{json, Value};

fn request() -> WorkerRequest {
    WorkerRequest {
        request_id: "req".into(),
        workflow_name: "sizes".into(),
        node_id: "node".into(),
        timeout_ms: None,
        operation: WorkerOperation::Tool {
            tool: "echo".into(),
            input: json!({}),
            scoped_input: json!({}),
        },
    }
}

#[tokio::test]
async fn the_submit_future_is_no_larger_than_the_timed_one_it_maps() {
    let handler = handler_fn(|_request: WorkerRequest| async {
        Ok::<Value, WorkerProtocolError>(Value::Null)
    });
    let pool =
        WorkerPool::new_inprocess(vec![handler.into_arc()], WorkerPoolOptions::default(), None)
            .expect("a runtime is running");
    let timed = pool.submit_timed(request());
    let plain = pool.submit(request());
    let (timed_size, plain_size) = (size_of_val(&timed), size_of_val(&plain));
    // A map over `submit_timed` adds at most its state word; an `async`
    // block awaiting it would hold it twice.
    assert!(
        plain_size <= timed_size + 16,
        "submit future {plain_size} bytes, submit_timed future {timed_size} bytes"
    );
    drop((timed, plain));
    pool.shutdown().await;
}
