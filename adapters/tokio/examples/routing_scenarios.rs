//! Scenarios 1 and 2 of the simulator's named scenarios on tokio's paused
//! clock: `cargo run --release -p foreman-tokio --example routing_scenarios`.
//!
//! The same workers as the simulator's (`foreman_tests::sim`: ten workers
//! whose latency is a function of virtual time, each drawing from its own
//! seeded stream), fifty closed-loop callers, 5 000 requests, a 30 s
//! budget, every handler a `tokio::time::sleep` of its draw. Measured, in
//! virtual time, caller-observed (submit to answer):
//! - foreman's tokio pool under every routing policy of the simulator's
//!   contender list (`CONTENDERS`; the oracle runs only in the simulator,
//!   whose rows are printed alongside);
//! - tower's `balance::p2c::Balance` over `load::PeakEwma`-wrapped
//!   services, each limited to one request at a time
//!   (`limit::ConcurrencyLimit` of 1), behind a `buffer::Buffer`, with
//!   linkerd's peak-EWMA defaults (30 ms for a service with no sample, a
//!   10 s decay) and its p2c draws from a seeded generator; callers give
//!   up on a request after the budget.
//!
//! Every cell is run twice and its figures (the simulator's: its trace
//! hash) compared (`deterministic`).
//! Prints one markdown table per scenario. `--requests N` shortens the
//! runs.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use foreman_tests::rng::Rng;
use foreman_tests::sim::latency::{worker_stream, LatencyModel};
use foreman_tests::sim::report::human;
use foreman_tests::sim::{quantile, run_closed_loop, ClosedLoop, Kind, Stop, CONTENDERS};
use foreman_tokio::{
    handler_fn, PoolConfig, TokioRuntime, WorkerHandler, WorkerOperation, WorkerPool,
    WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
};
use serde_json::{json, Value};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// A peak-EWMA service's latency before its first sample (linkerd's).
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// The peak-EWMA decay time (Finagle's and linkerd's 10 s).
const DECAY: Duration = Duration::from_secs(10);

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
struct Figures {
    p50: Duration,
    p99: Duration,
    p999: Duration,
    completion: Duration,
    ok: u64,
    errors: u64,
}

/// Every caller's latencies and answers, and the instant of the last one.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    ok: u64,
    errors: u64,
    last: Duration,
}

impl Tally {
    fn figures(mut self) -> Figures {
        self.latencies.sort_unstable();
        Figures {
            p50: quantile(&self.latencies, 0.5),
            p99: quantile(&self.latencies, 0.99),
            p999: quantile(&self.latencies, 0.999),
            completion: self.last,
            ok: self.ok,
            errors: self.errors,
        }
    }
}

/// One worker's latency: its draw from its own stream at the instant the
/// request starts, measured from the run's epoch.
#[derive(Clone)]
struct Latency {
    model: LatencyModel,
    worker: usize,
    workers: usize,
    draws: Arc<Mutex<Rng>>,
    epoch: Instant,
}

impl Latency {
    fn every_worker(scenario: &ClosedLoop, epoch: Instant) -> Vec<Latency> {
        (0..scenario.workers)
            .map(|worker| Latency {
                model: scenario.latency,
                worker,
                workers: scenario.workers,
                draws: Arc::new(Mutex::new(worker_stream(scenario.seed, worker, 0))),
                epoch,
            })
            .collect()
    }

    fn next(&self) -> Duration {
        let at = Instant::now() - self.epoch;
        let mut draws = self.draws.lock().unwrap_or_else(|e| e.into_inner());
        self.model.sample(self.worker, self.workers, at, &mut draws)
    }
}

fn request(budget: Duration) -> WorkerRequest {
    WorkerRequest {
        request_id: "scenario".into(),
        workflow_name: "scenarios".into(),
        node_id: "node".into(),
        timeout_ms: Some(budget.as_millis() as u64),
        operation: WorkerOperation::Tool {
            tool: "sleep".into(),
            input: json!({}),
            scoped_input: json!({}),
        },
    }
}

/// Requests of `scenario` (its own count unless `--requests` asked).
fn requests_of(scenario: &ClosedLoop) -> u64 {
    match scenario.stop {
        Stop::Requests(requests) => requests,
        Stop::RunFor(_) => 0,
    }
}

/// Runs `scenario`'s closed-loop callers against `call` (true: answered
/// with output) and tallies them.
async fn closed_loop<F, Fut>(scenario: &ClosedLoop, epoch: Instant, call: F) -> Figures
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let remaining = Arc::new(AtomicU64::new(requests_of(scenario)));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let callers: Vec<_> = (0..scenario.callers)
        .map(|_| {
            let (remaining, tally, call) =
                (Arc::clone(&remaining), Arc::clone(&tally), call.clone());
            tokio::spawn(async move {
                while remaining
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let sent = Instant::now();
                    let ok = call().await;
                    let now = Instant::now();
                    let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
                    tally.latencies.push(now - sent);
                    tally.last = tally.last.max(now - epoch);
                    if ok {
                        tally.ok += 1;
                    } else {
                        tally.errors += 1;
                    }
                }
            })
        })
        .collect();
    for caller in callers {
        let _ = caller.await;
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    tally.figures()
}

/// foreman's tokio pool on `config`, one handler per worker sleeping its
/// draw.
async fn foreman(scenario: &ClosedLoop, config: PoolConfig) -> Figures {
    let epoch = Instant::now();
    let handlers: Vec<Arc<dyn WorkerHandler>> = Latency::every_worker(scenario, epoch)
        .into_iter()
        .map(|latency| {
            handler_fn(move |_: WorkerRequest| {
                let sleep = tokio::time::sleep(latency.next());
                async move {
                    sleep.await;
                    Ok::<Value, WorkerProtocolError>(Value::Null)
                }
            })
            .into_arc()
        })
        .collect();
    let pool = match WorkerPool::with_config(TokioRuntime, handlers, config, None) {
        Ok(pool) => Arc::new(pool),
        Err(error) => {
            eprintln!("pool refused its configuration: {error}");
            return Tally::default().figures();
        }
    };
    let budget = scenario.budget;
    let caller_pool = Arc::clone(&pool);
    let figures = closed_loop(scenario, epoch, move || {
        let pool = Arc::clone(&caller_pool);
        async move { pool.submit(request(budget)).await.is_ok() }
    })
    .await;
    pool.shutdown().await;
    figures
}

/// One worker as a tower service: sleeps its draw.
#[derive(Clone)]
struct Sleeper(Latency);

impl Service<()> for Sleeper {
    type Response = ();
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<(), Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        let sleep = tokio::time::sleep(self.0.next());
        Box::pin(async move {
            sleep.await;
            Ok(())
        })
    }
}

/// The p2c balancer's generator: the simulator's, seeded.
struct Seeded(Rng);

impl tower::util::rng::Rng for Seeded {
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
}

/// tower's p2c + peak-EWMA balancer over one-at-a-time services.
async fn tower_p2c_peak_ewma(scenario: &ClosedLoop) -> Figures {
    let epoch = Instant::now();
    let services: Vec<_> = Latency::every_worker(scenario, epoch)
        .into_iter()
        .map(|latency| {
            tower::load::PeakEwma::new(
                tower::limit::ConcurrencyLimit::new(Sleeper(latency), 1),
                DEFAULT_RTT,
                DECAY.as_nanos() as f64,
                tower::load::CompleteOnResponse::default(),
            )
        })
        .collect();
    let balance = tower::balance::p2c::Balance::from_rng(
        tower::discover::ServiceList::new(services),
        Seeded(Rng::new(scenario.seed)),
    );
    let front: Front = tower::buffer::Buffer::new(balance, 1024);
    let budget = scenario.budget;
    closed_loop(scenario, epoch, move || tower_call(front.clone(), budget)).await
}

/// A worker as the balancer sees it.
type Balanced = tower::balance::p2c::Balance<
    tower::discover::ServiceList<
        Vec<
            tower::load::PeakEwma<
                tower::limit::ConcurrencyLimit<Sleeper>,
                tower::load::CompleteOnResponse,
            >,
        >,
    >,
    (),
>;

/// The balancer behind the buffer the callers share.
type Front = tower::buffer::Buffer<(), <Balanced as Service<()>>::Future>;

/// One call through the balancer, given up after `budget` (boxed: its
/// type names the future `Send` plainly).
fn tower_call(mut front: Front, budget: Duration) -> Pin<Box<dyn Future<Output = bool> + Send>> {
    Box::pin(async move {
        let call = async move {
            match front.ready().await {
                Ok(ready) => ready.call(()).await.is_ok(),
                Err(_) => false,
            }
        };
        tokio::time::timeout(budget, call).await.unwrap_or(false)
    })
}

/// Runs `run` twice on fresh paused current-thread runtimes; returns the
/// first figures and whether the second agreed.
fn twice<F, Fut>(run: F) -> (Figures, bool)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Figures>,
{
    let once = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .map(|runtime| runtime.block_on(run()))
    };
    match (once(), once()) {
        (Ok(first), Ok(second)) => {
            let same = first == second;
            (first, same)
        }
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("no runtime: {error}");
            (Tally::default().figures(), false)
        }
    }
}

fn row(name: &str, figures: &Figures, deterministic: &str) -> String {
    format!(
        "| {name} | {} | {} | {} | {} | {} | {} | {deterministic} |",
        human(figures.p50),
        human(figures.p99),
        human(figures.p999),
        human(figures.completion),
        figures.ok,
        figures.errors
    )
}

fn main() {
    let mut requests = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (
            arg.as_str(),
            args.next().and_then(|n| n.parse::<u64>().ok()),
        ) {
            ("--requests", Some(n)) => requests = Some(n),
            _ => {
                eprintln!("usage: routing_scenarios [--requests N]");
                std::process::exit(2);
            }
        }
    }
    let mut all_deterministic = true;
    for scenario in [ClosedLoop::SPREAD_LATENCIES, ClosedLoop::LLM_LIKE_SLOWDOWN] {
        let scenario = match requests {
            Some(n) => scenario.with_requests(n),
            None => scenario,
        };
        println!("#### `{}`: {}\n", scenario.name, scenario.about);
        println!(
            "| pool | p50 | p99 | p999 | completion | ok | errors and timeouts | deterministic |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---|");
        for contender in CONTENDERS {
            if let Kind::Pool(_) = contender.kind {
                let config = contender.configure(
                    PoolConfig::new(WorkerPoolOptions::default()).with_seed(scenario.seed),
                );
                let (figures, same) = twice(|| foreman(&scenario, config.clone()));
                all_deterministic &= same;
                let name = format!("foreman {} (tokio)", contender.name);
                println!("{}", row(&name, &figures, if same { "yes" } else { "NO" }));
            }
        }
        let (figures, same) = twice(|| tower_p2c_peak_ewma(&scenario));
        all_deterministic &= same;
        let tower = "tower p2c + peak-EWMA, one at a time (tokio)";
        println!("{}", row(tower, &figures, if same { "yes" } else { "NO" }));
        for contender in CONTENDERS {
            let outcome = run_closed_loop(&scenario, contender, false);
            let again = run_closed_loop(&scenario, contender, false);
            let same = again.trace_hash == outcome.trace_hash;
            all_deterministic &= same;
            let figures = Figures {
                p50: outcome.p50,
                p99: outcome.p99,
                p999: outcome.p999,
                completion: outcome.completion,
                ok: outcome.ok,
                errors: outcome.answered - outcome.ok,
            };
            let name = format!("{} (simulator)", contender.name);
            let verdict = match (&outcome.failure, same) {
                (Some(_), _) => "FAILED",
                (None, true) => "yes",
                (None, false) => "NO",
            };
            println!("{}", row(&name, &figures, verdict));
        }
        println!();
    }
    println!(
        "every cell run twice: {}",
        if all_deterministic {
            "same figures"
        } else {
            "FIGURES DIFFER"
        }
    );
    if !all_deterministic {
        std::process::exit(1);
    }
}
