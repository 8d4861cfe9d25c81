//! Closed-loop end-to-end benchmark: foreman-tokio against a bare
//! mpsc + oneshot pool (the floor) and tower's p2c `Balance` behind a
//! `Buffer`, echo handler, N workers, C concurrent callers, multi-thread
//! runtime with 2 workers. Tower runs twice: as issue 3 names it, whose N
//! services each take any number of requests at once, and as `tower(1)`,
//! whose services take one at a time (a `ConcurrencyLimit` of 1), as a
//! foreman worker and a floor task do. (Memory per queued request is measured by the
//! `memory` bench, whose counting allocator would skew these timings.)
//! `FOREMAN_BENCH_HANDLER=yield` makes every handler return `Pending` once
//! first, as one waiting on I/O would: requests then queue even with
//! `FOREMAN_BENCH_THREADS=1`.
//!
//! foreman runs in both execution modes: `foreman` is the default (handlers
//! on per-worker tasks), `caller` runs handlers in the callers' tasks.
//!
//! Run: `cargo bench -p foreman-tokio --bench throughput` (≈2 minutes).
//! Each cell runs the pools in alternation, 3 rounds of 300 ms, and
//! reports the median round; compare ratios from one run.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use foreman_driver::demo::{bench_handler, bench_handler_name, bench_request, bench_sizes, Round};
use foreman_tokio::{
    DriverOptions, ExecutionMode, PoolConfig, TokioRuntime, WorkerHandler, WorkerPool,
    WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tower::{Service, ServiceExt};

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Something a caller can send a request through.
trait Client: Send + Sync + 'static {
    fn call(&self, request: WorkerRequest) -> BoxFut<bool>;
}

// ----- foreman ---------------------------------------------------------------

struct Foreman(WorkerPool);

impl Client for Arc<Foreman> {
    fn call(&self, request: WorkerRequest) -> BoxFut<bool> {
        let this = Arc::clone(self);
        Box::pin(async move { this.0.submit(request).await.is_ok() })
    }
}

// ----- floor: N tasks fed round-robin by bounded mpsc, oneshot reply ----------

type Job = (
    WorkerRequest,
    oneshot::Sender<Result<Value, WorkerProtocolError>>,
);

struct Floor {
    senders: Vec<mpsc::Sender<Job>>,
    next: AtomicUsize,
}

impl Floor {
    fn new(n: usize) -> Self {
        let senders = (0..n)
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Job>(64);
                let handler: Arc<dyn WorkerHandler> = bench_handler();
                tokio::spawn(async move {
                    while let Some((request, reply)) = rx.recv().await {
                        let _ = reply.send(handler.handle(request).await);
                    }
                });
                tx
            })
            .collect();
        Floor {
            senders,
            next: AtomicUsize::new(0),
        }
    }
}

impl Client for Arc<Floor> {
    fn call(&self, request: WorkerRequest) -> BoxFut<bool> {
        let this = Arc::clone(self);
        Box::pin(async move {
            let index = this.next.fetch_add(1, Ordering::Relaxed) % this.senders.len();
            let (tx, rx) = oneshot::channel();
            if this.senders[index].send((request, tx)).await.is_err() {
                return false;
            }
            matches!(rx.await, Ok(Ok(_)))
        })
    }
}

// ----- tower: p2c Balance over PendingRequests, behind a Buffer ---------------

#[derive(Clone)]
struct EchoService(Arc<dyn WorkerHandler>);

impl Service<WorkerRequest> for EchoService {
    type Response = Value;
    type Error = Infallible;
    type Future = BoxFut<Result<Value, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: WorkerRequest) -> Self::Future {
        let handler = Arc::clone(&self.0);
        Box::pin(async move { Ok(handler.handle(request).await.unwrap_or(Value::Null)) })
    }
}

/// The p2c balancer over `S`s, each tracked by its pending requests.
type Balanced<S> = tower::balance::p2c::Balance<
    tower::discover::ServiceList<Vec<tower::load::PendingRequests<S>>>,
    WorkerRequest,
>;

struct Tower<S>(
    tower::buffer::Buffer<WorkerRequest, <Balanced<S> as Service<WorkerRequest>>::Future>,
)
where
    Balanced<S>: Service<WorkerRequest>;

impl<S> Tower<S>
where
    S: Service<WorkerRequest, Response = Value, Error = Infallible> + Send + 'static,
    S::Future: Send,
    Balanced<S>: Service<WorkerRequest, Response = Value, Error = tower::BoxError> + Send + 'static,
    <Balanced<S> as Service<WorkerRequest>>::Future: Send,
{
    fn new(n: usize, service: impl Fn() -> S) -> Self {
        let services: Vec<_> = (0..n)
            .map(|_| {
                tower::load::PendingRequests::new(
                    service(),
                    tower::load::CompleteOnResponse::default(),
                )
            })
            .collect();
        let balance =
            tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(services));
        Tower(tower::buffer::Buffer::new(balance, 1024))
    }
}

impl<S> Client for Arc<Tower<S>>
where
    S: Send + 'static,
    Balanced<S>: Service<WorkerRequest, Response = Value, Error = tower::BoxError> + Send + 'static,
    <Balanced<S> as Service<WorkerRequest>>::Future: Send,
{
    fn call(&self, request: WorkerRequest) -> BoxFut<bool> {
        let mut service = self.0.clone();
        Box::pin(async move {
            match service.ready().await {
                Ok(ready) => ready.call(request).await.is_ok(),
                Err(_) => false,
            }
        })
    }
}

/// Tower's pool as the issue names it: every service takes any number of
/// requests at once (so with N = 1 the callers' handlers still run side by
/// side).
fn tower_pool(n: usize) -> Tower<EchoService> {
    Tower::new(n, || EchoService(bench_handler()))
}

/// The same pool with one request at a time per service, as a foreman
/// worker (and a floor task) runs them.
fn tower_one_pool(n: usize) -> Tower<tower::limit::ConcurrencyLimit<EchoService>> {
    Tower::new(n, || {
        tower::limit::ConcurrencyLimit::new(EchoService(bench_handler()), 1)
    })
}

// ----- harness -----------------------------------------------------------------

async fn closed_loop<C: Client + Clone>(client: C, callers: usize, run: Duration) -> Round {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (client, stop, measuring, done) = (
            client.clone(),
            Arc::clone(&stop),
            Arc::clone(&measuring),
            Arc::clone(&done),
        );
        tasks.push(tokio::spawn(async move {
            let request = bench_request();
            let mut latencies = Vec::with_capacity(1 << 16);
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let ok = client.call(request.clone()).await;
                assert!(ok, "request failed");
                if measuring.load(Ordering::Relaxed) {
                    latencies.push(start.elapsed().as_nanos() as u64);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(run).await;
    let count = done.load(Ordering::Relaxed);
    let elapsed = start.elapsed();
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("caller task"));
    }
    Round::new(count, elapsed, all)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let threads: usize = std::env::var("FOREMAN_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime");
    let run = Duration::from_millis(300);
    println!(
        "closed loop, {}, multi-thread runtime with {threads} workers, median of 3 rounds of {run:?}",
        bench_handler_name()
    );
    println!(
        "| N | C | foreman req/s | caller req/s | floor req/s | tower req/s | tower(1) req/s | foreman/floor | caller/floor | foreman/tower | foreman/tower(1) | p99 foreman | p99 caller | p99 floor | p99 foreman/floor |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // FOREMAN_BENCH_N / FOREMAN_BENCH_C (comma-separated) pick other cells;
    // FOREMAN_BENCH_POOLS=foreman (or caller, floor, tower, tower1; comma-separated)
    // runs only those pools, for profiling; each row then lists the
    // throughput and p99 of each pool that ran.
    let pools = std::env::var("FOREMAN_BENCH_POOLS").unwrap_or_default();
    let run_pool = |name: &str| pools.is_empty() || pools.split(',').any(|p| p.trim() == name);
    let only_some = !pools.is_empty();
    for n in bench_sizes("FOREMAN_BENCH_N", &[1, 16, 64]) {
        for c in bench_sizes("FOREMAN_BENCH_C", &[1, 16, 256]) {
            let (mut f, mut ca, mut fl, mut tw, mut t1) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..3 {
                if run_pool("floor") {
                    fl.push(
                        rt.block_on(async { closed_loop(Arc::new(Floor::new(n)), c, run).await }),
                    );
                }
                if run_pool("tower") {
                    tw.push(
                        rt.block_on(async { closed_loop(Arc::new(tower_pool(n)), c, run).await }),
                    );
                }
                if run_pool("tower1") {
                    t1.push(rt.block_on(async {
                        closed_loop(Arc::new(tower_one_pool(n)), c, run).await
                    }));
                }
                for (name, mode, rounds) in [
                    ("foreman", ExecutionMode::PoolTasks, &mut f),
                    ("caller", ExecutionMode::CallerTask, &mut ca),
                ] {
                    if !run_pool(name) {
                        continue;
                    }
                    rounds.push(rt.block_on(async {
                        let pool = WorkerPool::with_driver_options(
                            TokioRuntime,
                            (0..n).map(|_| bench_handler()).collect(),
                            PoolConfig::new(WorkerPoolOptions {
                                queue_capacity: 1024,
                                ..WorkerPoolOptions::default()
                            }),
                            None,
                            DriverOptions::default().execution(mode),
                        )
                        .expect("pool");
                        let pool = Arc::new(Foreman(pool));
                        let round = closed_loop(Arc::clone(&pool), c, run).await;
                        pool.0.shutdown().await;
                        round
                    }));
                }
            }
            if only_some {
                // The pools that ran, each as req/s and p99.
                let cells: Vec<String> = [
                    ("foreman", f),
                    ("caller", ca),
                    ("floor", fl),
                    ("tower", tw),
                    ("tower1", t1),
                ]
                .into_iter()
                .filter(|(_, rounds)| !rounds.is_empty())
                .map(|(name, rounds)| {
                    let round = Round::median(&rounds);
                    format!("{name} {:.0}k p99 {:?}", round.rps / 1e3, round.p99)
                })
                .collect();
                println!("| {n} | {c} | {} |", cells.join(" | "));
                continue;
            }
            let [f, ca, fl, tw, t1] = [f, ca, fl, tw, t1].map(|rounds| Round::median(&rounds));
            println!(
                "| {n} | {c} | {:.0}k | {:.0}k | {:.0}k | {:.0}k | {:.0}k | {:.2} | {:.2} | {:.2} | {:.2} | {:?} | {:?} | {:?} | {:.2} |",
                f.rps / 1e3,
                ca.rps / 1e3,
                fl.rps / 1e3,
                tw.rps / 1e3,
                t1.rps / 1e3,
                f.rps / fl.rps,
                ca.rps / fl.rps,
                f.rps / tw.rps,
                f.rps / t1.rps,
                f.p99,
                ca.p99,
                fl.p99,
                f.p99.as_secs_f64() / fl.p99.as_secs_f64().max(1e-9),
            );
        }
    }
}
