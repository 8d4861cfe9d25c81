//! The closed-loop benchmark shared by foreman-smol's and foreman-async-std's
//! benches (included with `#[path]`): foreman against its own runtime's bare
//! channel floor, N tasks fed round-robin by a bounded async-channel (64)
//! with a oneshot reply — no validation, no health, no timeout — echo
//! handler, N = 1, 16, 64 workers, C = 1, 16, 256 callers. foreman runs in
//! both execution modes: `foreman` (the default, handlers on per-worker
//! tasks) and `caller` (handlers in the callers' tasks). Each cell runs the
//! pools in alternation, 3 rounds of 300 ms after a 60 ms warm-up, and
//! reports the median round; compare ratios from one run.
//! `FOREMAN_BENCH_POOLS=foreman,caller,floor` (any of them) picks pools.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foreman_driver::demo::{bench_handler, bench_handler_name, bench_request, bench_sizes, Round};
use foreman_driver::{
    DriverOptions, ExecutionMode, PoolConfig, Runtime, WorkerHandler, WorkerPool,
    WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
};
use futures::channel::oneshot;
use serde_json::Value;

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Something a caller can send a request through.
trait Client: Clone + Send + Sync + 'static {
    fn call(&self, request: WorkerRequest) -> BoxFut<bool>;
}

struct Foreman<R: Runtime>(Arc<WorkerPool<R>>);

impl<R: Runtime> Clone for Foreman<R> {
    fn clone(&self) -> Self {
        Foreman(Arc::clone(&self.0))
    }
}

impl<R: Runtime> Client for Foreman<R> {
    fn call(&self, request: WorkerRequest) -> BoxFut<bool> {
        let pool = Arc::clone(&self.0);
        Box::pin(async move { pool.submit(request).await.is_ok() })
    }
}

type Job = (
    WorkerRequest,
    oneshot::Sender<Result<Value, WorkerProtocolError>>,
);

/// The floor: N tasks fed round-robin by bounded async-channels.
struct Floor {
    senders: Vec<async_channel::Sender<Job>>,
    next: AtomicUsize,
}

impl Floor {
    fn new<R: Runtime>(rt: &R, n: usize) -> Arc<Self> {
        let senders = (0..n)
            .map(|_| {
                let (tx, rx) = async_channel::bounded::<Job>(64);
                let handler: Arc<dyn WorkerHandler> = bench_handler();
                rt.spawn(Box::pin(async move {
                    while let Ok((request, reply)) = rx.recv().await {
                        let _ = reply.send(handler.handle(request).await);
                    }
                }));
                tx
            })
            .collect();
        Arc::new(Floor {
            senders,
            next: AtomicUsize::new(0),
        })
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

async fn sleep<R: Runtime>(rt: &R, duration: Duration) {
    let mut timer = rt.new_timer(rt.now() + duration);
    futures::future::poll_fn(|cx| timer.as_mut().poll(cx)).await;
}

async fn closed_loop<R: Runtime, C: Client>(rt: &R, client: C, callers: usize) -> Round {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut joins = Vec::new();
    for _ in 0..callers {
        let (client, stop, measuring, done) = (
            client.clone(),
            Arc::clone(&stop),
            Arc::clone(&measuring),
            Arc::clone(&done),
        );
        let (tx, rx) = oneshot::channel();
        rt.spawn(Box::pin(async move {
            let request = bench_request();
            let mut latencies = Vec::with_capacity(1 << 16);
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                assert!(client.call(request.clone()).await, "request failed");
                if measuring.load(Ordering::Relaxed) {
                    latencies.push(start.elapsed().as_nanos() as u64);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            let _ = tx.send(latencies);
        }));
        joins.push(rx);
    }
    sleep(rt, Duration::from_millis(60)).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    sleep(rt, Duration::from_millis(300)).await;
    let count = done.load(Ordering::Relaxed);
    let elapsed = start.elapsed();
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for join in joins {
        all.extend(join.await.expect("caller task"));
    }
    Round::new(count, elapsed, all)
}

/// Runs every cell and prints the table (call inside the runtime).
pub async fn run_all<R: Runtime + Default + Clone>(runtime: &str) {
    let rt = R::default();
    println!(
        "{runtime}: closed loop, {}, 2 executor threads, median of 3 rounds of 300ms",
        bench_handler_name()
    );
    println!(
        "| N | C | foreman req/s | caller req/s | floor req/s | foreman/floor | caller/floor | p99 foreman | p99 caller | p99 floor | p99 foreman/floor |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let pools = std::env::var("FOREMAN_BENCH_POOLS").unwrap_or_default();
    let run_pool = |name: &str| pools.is_empty() || pools.split(',').any(|p| p.trim() == name);
    // FOREMAN_BENCH_N / FOREMAN_BENCH_C (comma-separated) pick other cells.
    for n in bench_sizes("FOREMAN_BENCH_N", &[1, 16, 64]) {
        for c in bench_sizes("FOREMAN_BENCH_C", &[1, 16, 256]) {
            let (mut foreman, mut caller, mut floor) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..3 {
                if run_pool("floor") {
                    floor.push(closed_loop(&rt, Floor::new(&rt, n), c).await);
                }
                for (name, mode, rounds) in [
                    ("foreman", ExecutionMode::PoolTasks, &mut foreman),
                    ("caller", ExecutionMode::CallerTask, &mut caller),
                ] {
                    if !run_pool(name) {
                        continue;
                    }
                    let handlers = (0..n).map(|_| bench_handler());
                    let config = PoolConfig::new(WorkerPoolOptions {
                        queue_capacity: 1024,
                        ..WorkerPoolOptions::default()
                    });
                    let options = DriverOptions::default().execution(mode);
                    let pool = WorkerPool::<R>::with_driver_options(
                        R::default(),
                        handlers.collect(),
                        config,
                        None,
                        options,
                    );
                    let pool = Arc::new(pool.expect("pool"));
                    rounds.push(closed_loop(&rt, Foreman(Arc::clone(&pool)), c).await);
                    pool.shutdown().await;
                }
            }
            let [f, ca, fl] = [foreman, caller, floor].map(|rounds| {
                if rounds.is_empty() {
                    Round::default()
                } else {
                    Round::median(&rounds)
                }
            });
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
            println!(
                "| {n} | {c} | {:.0}k | {:.0}k | {:.0}k | {:.2} | {:.2} | {:?} | {:?} | {:?} | {:.2} |",
                f.rps / 1e3,
                ca.rps / 1e3,
                fl.rps / 1e3,
                ratio(f.rps, fl.rps),
                ratio(ca.rps, fl.rps),
                f.p99,
                ca.p99,
                fl.p99,
                ratio(f.p99.as_secs_f64(), fl.p99.as_secs_f64()),
            );
        }
    }
}
