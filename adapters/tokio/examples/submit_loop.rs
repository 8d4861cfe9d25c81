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
//!
//! A third argument picks what is measured: `foreman` (the default:
//! handlers on the pool's worker tasks), `caller` (the same pool with
//! [`ExecutionMode::CallerTask`]) or `floor`, the throughput bench's
//! peer — a task per worker fed by a bounded tokio `mpsc` channel,
//! answering through a `oneshot`, with no validation, admission, routing,
//! deadline or health — so the three costs can be compared. A fourth,
//! `C` (default 1), splits the `N` requests over `C` caller tasks that
//! submit at once, as the throughput bench's cells with several callers
//! do (still on one thread, so the count stays deterministic).

use foreman_tokio::{
    handler_fn, DriverOptions, ExecutionMode, PoolConfig, TokioRuntime, WorkerHandler,
    WorkerOperation, WorkerPool, WorkerPoolError, WorkerPoolOptions, WorkerProtocolError,
    WorkerRequest,
};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let requests: usize = args.next().map_or(Ok(100_000), |n| n.parse())?;
    let workers: usize = args.next().map_or(Ok(1), |w| w.parse())?;
    let what = args.next().unwrap_or_else(|| "foreman".into());
    let callers: usize = args.next().map_or(Ok(1), |c| c.parse())?;
    let callers = callers.max(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let handlers: Vec<Arc<dyn WorkerHandler>> = (0..workers)
            .map(|_| {
                handler_fn(|_request: WorkerRequest| async {
                    Ok::<Value, WorkerProtocolError>(Value::Null)
                })
                .into_arc()
            })
            .collect();
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
        let execution = match what.as_str() {
            "foreman" => ExecutionMode::PoolTasks,
            "caller" => ExecutionMode::CallerTask,
            "floor" => return floor(handlers, request, requests, callers).await,
            other => return Err(format!("unknown mode {other:?}: foreman, caller or floor").into()),
        };
        let pool = Arc::new(WorkerPool::with_driver_options(
            TokioRuntime,
            handlers,
            PoolConfig::new(WorkerPoolOptions::default()),
            None,
            DriverOptions::default().execution(execution),
        )?);
        let future = pool.submit(request.clone());
        eprintln!("submit future: {} bytes", std::mem::size_of_val(&future));
        drop(future);
        let tasks: Vec<_> = (0..callers)
            .map(|caller| {
                let pool = Arc::clone(&pool);
                let request = request.clone();
                tokio::spawn(async move {
                    for _ in 0..share(requests, callers, caller) {
                        pool.submit(request.clone()).await?;
                    }
                    Ok::<(), WorkerPoolError>(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        pool.shutdown().await;
        Ok(())
    })
}

/// How many of `requests` caller `caller` of `callers` submits.
fn share(requests: usize, callers: usize, caller: usize) -> usize {
    requests / callers + usize::from(caller < requests % callers)
}

/// A request and where its answer goes.
type Job = (
    WorkerRequest,
    oneshot::Sender<Result<Value, WorkerProtocolError>>,
);

/// The same loop through the floor: each worker a task draining its own
/// channel, requests sent to the workers in turn.
async fn floor(
    handlers: Vec<Arc<dyn WorkerHandler>>,
    request: WorkerRequest,
    requests: usize,
    callers: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let senders: Arc<Vec<mpsc::Sender<Job>>> = Arc::new(
        handlers
            .into_iter()
            .map(|handler| {
                let (tx, mut rx) = mpsc::channel::<Job>(64);
                tokio::spawn(async move {
                    while let Some((request, reply)) = rx.recv().await {
                        let _ = reply.send(handler.handle(request).await);
                    }
                });
                tx
            })
            .collect(),
    );
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let senders = Arc::clone(&senders);
            let request = request.clone();
            tokio::spawn(async move {
                let turns = (0..share(requests, callers, caller)).zip(senders.iter().cycle());
                for (_, sender) in turns {
                    let (tx, rx) = oneshot::channel();
                    sender.send((request.clone(), tx)).await.ok()?;
                    rx.await.ok()?.ok()?;
                }
                Some(())
            })
        })
        .collect();
    for task in tasks {
        task.await?.ok_or("the floor lost a request")?;
    }
    Ok(())
}
