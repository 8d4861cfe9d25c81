//! foreman-remote on loopback, closed loop.
//!
//! (a) `overhead`: a foreman pool of one `RemoteWorker` against a bare
//!     hyper-util client (the same connector settings: HTTP/1.1, TCP
//!     nodelay) posting the same `WorkerRequest`s to the same in-process
//!     `Server`, whose pool answers at once; C callers each. foreman runs
//!     twice: handlers on the pool's worker tasks (the default) and in the
//!     callers' tasks. Rounds alternate between the three; throughput and
//!     p99 are each the median round's.
//! (b) `scaling`: one frontend pool of `RemoteWorker`s over one to three
//!     `foreman-worker --mode sleep:10ms` processes (W handlers each, the
//!     frontend allows W requests at once per worker), with enough callers
//!     to saturate them (2 × W per process).
//!
//! Run: `cargo bench -p foreman-remote --bench remote` (about 35 s).
//! Knobs: `FOREMAN_BENCH_C` (callers in (a), default 8),
//! `FOREMAN_BENCH_W` (handlers per process in (b), default 4),
//! `FOREMAN_BENCH_ROUND_MS` (default 1000), `FOREMAN_BENCH_ROUNDS`
//! (default 5), `FOREMAN_BENCH_PARTS` (`overhead`, `scaling`; default both).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foreman_remote::protocol::REQUESTS_PATH;
use foreman_remote::{RemoteOptions, RemoteWorker, Server, ServerOptions};
use foreman_tokio::{
    handler_fn, DriverOptions, ExecutionMode, PoolConfig, TokioRuntime, WorkerHandler,
    WorkerOperation, WorkerPool, WorkerPoolOptions, WorkerRequest, WorkerResponse, WorkerResult,
};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn request(n: u64) -> WorkerRequest {
    WorkerRequest {
        request_id: format!("b{n}"),
        workflow_name: "bench".into(),
        node_id: "node".into(),
        timeout_ms: Some(10_000),
        operation: WorkerOperation::Tool {
            tool: "echo".into(),
            input: json!({ "n": n }),
            scoped_input: json!({}),
        },
    }
}

/// One round's figures.
#[derive(Debug, Clone, Copy)]
struct Round {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs `callers` closed loops of `call` for `length`; answers the round.
async fn round<F, Fut>(callers: u64, length: Duration, call: F) -> Round
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let began = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = caller << 32;
                while began.elapsed() < length {
                    let sent = Instant::now();
                    assert!(call(n).await, "every call succeeds");
                    latencies.push(sent.elapsed());
                    n += 1;
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("a caller"));
    }
    let elapsed = began.elapsed();
    all.sort();
    Round {
        per_second: all.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&all, 50),
        p99: percentile(&all, 99),
    }
}

/// The median round by throughput, and the median p99.
fn median(rounds: &mut [Round]) -> Round {
    let middle = rounds.len() / 2;
    rounds.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
    let per_second = rounds[middle].per_second;
    rounds.sort_by_key(|r| r.p99);
    let p99 = rounds[middle].p99;
    rounds.sort_by_key(|r| r.p50);
    Round {
        per_second,
        p50: rounds[middle].p50,
        p99,
    }
}

fn show(name: &str, round: &Round) {
    println!(
        "{name:<28} {:>10.0} req/s   p50 {:>8.3} ms   p99 {:>8.3} ms",
        round.per_second,
        round.p50.as_secs_f64() * 1e3,
        round.p99.as_secs_f64() * 1e3
    );
}

async fn overhead(callers: u64, length: Duration, rounds: u64) {
    let echo: Arc<dyn WorkerHandler> = Arc::new(handler_fn(|request: WorkerRequest| async move {
        Ok(json!({ "node": request.node_id }))
    }));
    let handlers = (0..callers).map(|_| Arc::clone(&echo)).collect();
    let options = WorkerPoolOptions {
        queue_capacity: 4 * callers as usize,
        ..WorkerPoolOptions::default()
    };
    let server_pool = Arc::new(
        WorkerPool::new_inprocess(handlers, options.clone(), None).expect("the server's pool"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let endpoint = format!("http://{}", listener.local_addr().expect("an address"));
    let server = Server::new(server_pool, ServerOptions::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        server
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await
    });

    // foreman: one RemoteWorker that may hold every caller's request.
    let remote: Arc<dyn WorkerHandler> =
        Arc::new(RemoteWorker::new(&endpoint, RemoteOptions::default()).expect("an endpoint"));
    let config = PoolConfig::new(options).with_max_concurrency_per_worker(callers as u32);
    let frontend = Arc::new(
        WorkerPool::with_config(
            TokioRuntime,
            vec![Arc::clone(&remote)],
            config.clone(),
            None,
        )
        .expect("the frontend"),
    );
    // The same, its handler run in each caller's task (no hop to a
    // worker task).
    let in_callers = Arc::new(
        WorkerPool::with_driver_options(
            TokioRuntime,
            vec![remote],
            config,
            None,
            DriverOptions::default().execution(ExecutionMode::CallerTask),
        )
        .expect("the frontend"),
    );
    // bare: hyper-util's client with RemoteWorker's connector settings.
    let defaults = RemoteOptions::default();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_keepalive(Some(defaults.tcp_keepalive));
    connector.set_connect_timeout(Some(defaults.connect_timeout));
    let bare: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(defaults.pool_idle_timeout)
        .build(connector);
    let url: http::Uri = format!("{endpoint}{REQUESTS_PATH}").parse().expect("a URL");

    let via = |frontend: &Arc<WorkerPool>| {
        let frontend = Arc::clone(frontend);
        move |n| {
            let frontend = Arc::clone(&frontend);
            async move {
                matches!(
                    frontend.submit(request(n)).await,
                    Ok(WorkerResponse {
                        result: WorkerResult::Success { .. },
                        ..
                    })
                )
            }
        }
    };
    let foreman_call = via(&frontend);
    let caller_call = via(&in_callers);
    let bare_call = move |n| {
        let bare = bare.clone();
        let url = url.clone();
        async move {
            let body = serde_json::to_vec(&request(n)).expect("JSON");
            let http_request = http::Request::post(url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(foreman_remote::protocol::DEADLINE_HEADER, "10000")
                .body(Full::new(Bytes::from(body)))
                .expect("a request");
            let Ok(response) = bare.request(http_request).await else {
                return false;
            };
            let ok = response.status() == http::StatusCode::OK;
            let Ok(bytes) = response.into_body().collect().await else {
                return false;
            };
            ok && matches!(
                serde_json::from_slice::<WorkerResponse>(&bytes.to_bytes()),
                Ok(WorkerResponse {
                    result: WorkerResult::Success { .. },
                    ..
                })
            )
        }
    };
    // Warm both (connections, allocators).
    round(callers, Duration::from_millis(200), foreman_call.clone()).await;
    round(callers, Duration::from_millis(200), bare_call.clone()).await;
    round(callers, Duration::from_millis(200), caller_call.clone()).await;
    let (mut foreman_rounds, mut bare_rounds, mut caller_rounds) =
        (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        foreman_rounds.push(round(callers, length, foreman_call.clone()).await);
        bare_rounds.push(round(callers, length, bare_call.clone()).await);
        caller_rounds.push(round(callers, length, caller_call.clone()).await);
    }
    let bare = median(&mut bare_rounds);
    println!("(a) one endpoint, in-process server, echo, {callers} callers, HTTP/1.1");
    show("bare hyper-util client", &bare);
    for (name, rounds) in [
        ("foreman + RemoteWorker", &mut foreman_rounds),
        ("  handlers in callers' tasks", &mut caller_rounds),
    ] {
        let figures = median(rounds);
        show(name, &figures);
        println!(
            "  of the bare client: throughput {:.2}x, p99 {:.2}x",
            figures.per_second / bare.per_second,
            figures.p99.as_secs_f64() / bare.p99.as_secs_f64()
        );
    }
    frontend.shutdown().await;
    in_callers.shutdown().await;
    let _ = stop.send(());
    let _ = serving.await;
}

/// A `foreman-worker` process, killed when dropped.
struct Process {
    child: tokio::process::Child,
    endpoint: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.try_wait();
    }
}

async fn start_worker(handlers: u64) -> Process {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_foreman-worker"))
        .args(["--listen", "127.0.0.1:0", "--mode", "sleep:10ms"])
        .args(["--workers", &handlers.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("foreman-worker starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = lines
        .next_line()
        .await
        .expect("its stdout")
        .expect("a first line");
    let address = first
        .strip_prefix("listening on ")
        .expect("`listening on` first")
        .to_string();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Process {
        child,
        endpoint: format!("http://{address}"),
    }
}

async fn scaling(handlers: u64, length: Duration, rounds: u64) {
    let mut processes = Vec::new();
    for _ in 0..3 {
        processes.push(start_worker(handlers).await);
    }
    println!(
        "(b) foreman-worker --mode sleep:10ms --workers {handlers}, one frontend, {} callers per process",
        2 * handlers
    );
    let mut single = None;
    for count in 1..=3usize {
        let workers: Vec<Arc<dyn WorkerHandler>> = processes[..count]
            .iter()
            .map(|p| {
                Arc::new(
                    RemoteWorker::new(&p.endpoint, RemoteOptions::default()).expect("an endpoint"),
                ) as Arc<dyn WorkerHandler>
            })
            .collect();
        let options = WorkerPoolOptions {
            queue_capacity: 1024,
            ..WorkerPoolOptions::default()
        };
        let config = PoolConfig::new(options).with_max_concurrency_per_worker(handlers as u32);
        let frontend = Arc::new(
            WorkerPool::with_config(TokioRuntime, workers, config, None).expect("the frontend"),
        );
        let call = {
            let frontend = Arc::clone(&frontend);
            move |n| {
                let frontend = Arc::clone(&frontend);
                async move { frontend.submit(request(n)).await.is_ok() }
            }
        };
        let callers = 2 * handlers * count as u64;
        round(callers, Duration::from_millis(200), call.clone()).await;
        let mut measured = Vec::new();
        for _ in 0..rounds {
            measured.push(round(callers, length, call.clone()).await);
        }
        let result = median(&mut measured);
        let base = *single.get_or_insert(result.per_second);
        show(&format!("{count} process(es)"), &result);
        println!(
            "  ideal {:.0} req/s ({count} × {handlers} handlers / 10 ms); {:.2}x of one process",
            (count as u64 * handlers) as f64 * 100.0,
            result.per_second / base
        );
        frontend.shutdown().await;
    }
}

fn main() {
    let callers = knob("FOREMAN_BENCH_C", 8);
    let handlers = knob("FOREMAN_BENCH_W", 4);
    let length = Duration::from_millis(knob("FOREMAN_BENCH_ROUND_MS", 1_000));
    let rounds = knob("FOREMAN_BENCH_ROUNDS", 5).max(1);
    let parts = std::env::var("FOREMAN_BENCH_PARTS").unwrap_or_else(|_| "overhead,scaling".into());
    let threads = knob("FOREMAN_BENCH_THREADS", 2) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        if parts.contains("overhead") {
            overhead(callers, length, rounds).await;
        }
        if parts.contains("scaling") {
            scaling(handlers, length, rounds).await;
        }
    });
}
