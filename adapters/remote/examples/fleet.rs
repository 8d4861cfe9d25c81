//! Three workers and a frontend in one command:
//! `cargo run -p foreman-remote --example fleet`.
//!
//! The workers are `foreman-worker` processes when that binary sits beside
//! the examples' directory (`cargo build -p foreman-remote` puts it there),
//! else three in-process servers on three loopback listeners. The frontend
//! is a foreman pool of three `RemoteWorker`s (the third over HTTP/2); it
//! sends a burst of demo requests and prints who served what, then stops
//! the workers gracefully.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foreman_remote::{RemoteOptions, RemoteWorker, Server, ServerOptions};
use foreman_support::demo::workload::demo_request;
use foreman_tokio::{
    handler_fn, WorkerHandler, WorkerOperation, WorkerPool, WorkerPoolOptions, WorkerRequest,
    WorkerResult,
};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A worker the example started, and how to stop it.
enum Worker {
    Process(Child),
    InProcess(oneshot::Sender<()>, tokio::task::JoinHandle<()>),
}

/// `foreman-worker` beside the examples' directory, if built.
fn worker_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let binary = profile_dir.join(format!("foreman-worker{}", std::env::consts::EXE_SUFFIX));
    binary.is_file().then_some(binary)
}

async fn spawn_process(binary: &PathBuf) -> Result<(String, Worker), Error> {
    let mut child = Command::new(binary)
        .args(["--listen", "127.0.0.1:0", "--mode", "demo", "--drain", "2s"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("the worker has no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await??
        .ok_or("the worker exited before listening")?;
    let address = first
        .strip_prefix("listening on ")
        .ok_or_else(|| format!("unexpected first line {first:?}"))?
        .to_string();
    // Keep reading its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((format!("http://{address}"), Worker::Process(child)))
}

async fn spawn_in_process(index: usize) -> Result<(String, Worker), Error> {
    let handler: Arc<dyn WorkerHandler> =
        Arc::new(handler_fn(|request: WorkerRequest| async move {
            let wait = match request.operation {
                WorkerOperation::Llm { .. } => 30,
                WorkerOperation::Tool { .. } => 2,
            };
            tokio::time::sleep(Duration::from_millis(wait)).await;
            Ok(json!({ "node": request.node_id }))
        }));
    let pool = WorkerPool::new_inprocess(
        vec![Arc::clone(&handler), handler],
        WorkerPoolOptions::default(),
        None,
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let server = Server::new(
        Arc::new(pool),
        ServerOptions {
            worker_id: format!("in-process-{index}"),
            ..ServerOptions::default()
        },
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = server
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await;
    });
    Ok((endpoint, Worker::InProcess(stop, task)))
}

async fn stop(worker: Worker) {
    match worker {
        Worker::Process(mut child) => {
            // SIGTERM for a graceful drain where `kill` exists; else kill.
            let terminated = match child.id() {
                Some(pid) => std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .is_ok_and(|status| status.success()),
                None => false,
            };
            if !terminated {
                let _ = child.start_kill();
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
        Worker::InProcess(stop, task) => {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let binary = worker_binary();
    let mut workers = Vec::new();
    let mut endpoints = Vec::new();
    for index in 0..3 {
        let (endpoint, worker) = match &binary {
            Some(binary) => spawn_process(binary).await?,
            None => spawn_in_process(index).await?,
        };
        endpoints.push(endpoint);
        workers.push(worker);
    }
    match &binary {
        Some(binary) => println!("started 3 worker processes ({})", binary.display()),
        None => {
            println!("started 3 in-process worker servers (build `foreman-worker` for processes)")
        }
    }
    let mut handlers: Vec<Arc<dyn WorkerHandler>> = Vec::new();
    for (index, endpoint) in endpoints.iter().enumerate() {
        let options = RemoteOptions {
            http2: index == 2,
            ..RemoteOptions::default()
        };
        handlers.push(Arc::new(RemoteWorker::new(endpoint, options)?));
        println!(
            "  worker-{index}: {endpoint} ({})",
            if index == 2 { "HTTP/2" } else { "HTTP/1.1" }
        );
    }
    let frontend = Arc::new(WorkerPool::new_inprocess(
        handlers,
        WorkerPoolOptions::default(),
        None,
    )?);
    let began = Instant::now();
    // The quickstart's requests: 40 % LLM calls, the rest tool calls.
    let mut rng = foreman_support::Rng::new(7);
    let calls = (0..60).map(|index| {
        let frontend = Arc::clone(&frontend);
        let mut request = demo_request(index, &mut rng);
        request.timeout_ms = Some(5_000);
        tokio::spawn(async move { frontend.submit(request).await })
    });
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = 0;
    for call in calls.collect::<Vec<_>>() {
        match call.await? {
            Ok(response) if matches!(response.result, WorkerResult::Success { .. }) => {
                *served.entry(response.worker_id).or_default() += 1;
            }
            _ => failed += 1,
        }
    }
    println!("60 requests in {:?}: {failed} failed", began.elapsed());
    for (worker, count) in &served {
        println!("  {worker} served {count}");
    }
    let counters = frontend.stats().counters;
    println!(
        "frontend: {} succeeded, {} refused-not-started and moved",
        counters.succeeded, counters.refused_not_started
    );
    frontend.shutdown().await;
    for worker in workers {
        stop(worker).await;
    }
    println!("workers stopped");
    Ok(())
}
