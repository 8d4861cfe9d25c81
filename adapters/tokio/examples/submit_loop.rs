//! One caller submitting `N` requests in a row to a pool of `W` echo
//! workers on a current-thread runtime, for counting the instructions a
//! request costs (deterministic under valgrind, unlike timings):
//!
//! ```sh
//! cargo build --release -p foreman-tokio --example submit_loop
//! valgrind --tool=callgrind target/release/examples/submit_loop 20000 1
//! valgrind --tool=callgrind target/release/examples/submit_loop 60000 1
//! ```
//!
//! The difference of the two totals over 40 000 is the cost of one
//! request, start-up excluded. It prints the size of the `submit` future.

use foreman_tokio::{
    handler_fn, WorkerOperation, WorkerPool, WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
};
use serde_json::{json, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let requests: usize = args.next().map_or(Ok(100_000), |n| n.parse())?;
    let workers: usize = args.next().map_or(Ok(1), |w| w.parse())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let handlers = (0..workers)
            .map(|_| {
                handler_fn(|_request: WorkerRequest| async {
                    Ok::<Value, WorkerProtocolError>(Value::Null)
                })
                .into_arc()
            })
            .collect();
        let pool = WorkerPool::new_inprocess(handlers, WorkerPoolOptions::default(), None)?;
        let request = WorkerRequest {
            request_id: "req".into(),
            workflow_name: "loop".into(),
            node_id: "node".into(),
            timeout_ms: None,
            operation: WorkerOperation::Tool {
                tool: "echo".into(),
                input: json!({}),
                scoped_input: json!({}),
            },
        };
        let future = pool.submit(request.clone());
        eprintln!("submit future: {} bytes", std::mem::size_of_val(&future));
        drop(future);
        for _ in 0..requests {
            pool.submit(request.clone()).await?;
        }
        pool.shutdown().await;
        Ok(())
    })
}
