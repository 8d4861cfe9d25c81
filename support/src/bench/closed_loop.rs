//! The closed-loop throughput harness: C callers, each sending the next
//! request as soon as its last one is answered, to foreman (in both
//! execution modes: `foreman`, handlers on per-worker tasks, and `caller`,
//! handlers in the callers' tasks) and to the peers the bench names, on
//! its runtime. Each cell runs the pools in alternation, 3 rounds of
//! 300 ms after a 60 ms warm-up each, and reports the median round.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foreman_driver::{
    DriverOptions, ExecutionMode, PoolConfig, Runtime, WorkerHandler, WorkerPool,
    WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
};
use futures::channel::oneshot;
use futures::future::BoxFuture;
use serde_json::Value;

use super::{bench_request, BenchHandler, Knobs, Round};
use crate::sleep;

/// Rounds measured per pool and cell (the median is reported).
const ROUNDS: usize = 3;

/// How long the callers run before a round starts counting.
const WARM_UP: Duration = Duration::from_millis(60);

/// How long a round counts.
const ROUND: Duration = Duration::from_millis(300);

/// Something the callers send requests through: foreman or a peer.
pub trait Client: Send + Sync + 'static {
    /// Sends `request`; resolves to whether it was answered with a success.
    fn call(self: &Arc<Self>, request: WorkerRequest) -> BoxFuture<'static, bool>;
}

/// Measures one round of a peer: runtime, workers (N), callers (C), handler.
type Measure<R> = dyn Fn(&R, usize, usize, BenchHandler) -> Pin<Box<dyn Future<Output = Round>>>;

/// A pool measured beside foreman, such as a bare channel floor.
pub struct Peer<R> {
    name: &'static str,
    column: &'static str,
    measure: Box<Measure<R>>,
}

impl<R: Runtime + Clone> Peer<R> {
    /// The peer `name` (as `FOREMAN_BENCH_POOLS` names it), headed
    /// `column` in the table, that `build(runtime, n, handler)` builds with
    /// `n` workers, each running a `handler.handler()`, for each round.
    pub fn new<C: Client>(
        name: &'static str,
        column: &'static str,
        build: impl Fn(&R, usize, BenchHandler) -> C + 'static,
    ) -> Self {
        Peer {
            name,
            column,
            measure: Box::new(move |runtime, workers, callers, handler| {
                let client = Arc::new(build(runtime, workers, handler));
                let runtime = runtime.clone();
                Box::pin(async move { closed_loop(&runtime, client, callers).await })
            }),
        }
    }

    /// The bare channel floor ([`ChannelFloor`]), named `floor`.
    pub fn channel_floor() -> Self {
        Peer::new("floor", "floor", ChannelFloor::new)
    }
}

type Job = (
    WorkerRequest,
    oneshot::Sender<Result<Value, WorkerProtocolError>>,
);

/// The floor on any runtime: N tasks fed round-robin by bounded
/// async-channels (64) with a oneshot reply; no validation, no health, no
/// timeout.
pub struct ChannelFloor {
    senders: Vec<async_channel::Sender<Job>>,
    next: AtomicUsize,
}

impl ChannelFloor {
    /// Spawns `n` floor tasks on `rt`, each running a `handler.handler()`.
    pub fn new<R: Runtime>(rt: &R, n: usize, handler: BenchHandler) -> Self {
        let senders = (0..n)
            .map(|_| {
                let (tx, rx) = async_channel::bounded::<Job>(64);
                let handler: Arc<dyn WorkerHandler> = handler.handler();
                rt.spawn(Box::pin(async move {
                    while let Ok((request, reply)) = rx.recv().await {
                        let _ = reply.send(handler.handle(request).await);
                    }
                }));
                tx
            })
            .collect();
        ChannelFloor {
            senders,
            next: AtomicUsize::new(0),
        }
    }
}

impl Client for ChannelFloor {
    fn call(self: &Arc<Self>, request: WorkerRequest) -> BoxFuture<'static, bool> {
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

/// foreman as a [`Client`].
struct Foreman<R: Runtime>(WorkerPool<R>);

impl<R: Runtime> Client for Foreman<R> {
    fn call(self: &Arc<Self>, request: WorkerRequest) -> BoxFuture<'static, bool> {
        let this = Arc::clone(self);
        Box::pin(async move { this.0.submit(request).await.is_ok() })
    }
}

/// One round: `callers` callers send requests through `client` in a closed
/// loop on `rt`; requests answered during the round count.
///
/// # Panics
/// If a request fails: every pool here answers every bench request.
async fn closed_loop<R: Runtime, C: Client>(rt: &R, client: Arc<C>, callers: usize) -> Round {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut joins = Vec::new();
    for _ in 0..callers {
        let (client, stop, measuring, done) = (
            Arc::clone(&client),
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
    sleep(rt, WARM_UP).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    sleep(rt, ROUND).await;
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

/// One round of foreman in `mode` with `workers` workers.
async fn foreman_round<R: Runtime + Clone>(
    rt: &R,
    mode: ExecutionMode,
    workers: usize,
    callers: usize,
    handler: BenchHandler,
) -> Round {
    let pool = WorkerPool::with_driver_options(
        rt.clone(),
        (0..workers).map(|_| handler.handler()).collect(),
        PoolConfig::new(WorkerPoolOptions {
            queue_capacity: 1024,
            ..WorkerPoolOptions::default()
        }),
        None,
        DriverOptions::default().execution(mode),
    )
    .expect("pool");
    let pool = Arc::new(Foreman(pool));
    let round = closed_loop(rt, Arc::clone(&pool), callers).await;
    pool.0.shutdown().await;
    round
}

/// The closed-loop throughput bench of one runtime: foreman in both
/// execution modes against a floor and any other peers, printed as a
/// Markdown table (one row per N and C).
pub struct ClosedLoop<R> {
    runtime: R,
    name: Option<&'static str>,
    executor: String,
    peers: Vec<Peer<R>>,
}

impl<R: Runtime + Clone> ClosedLoop<R> {
    /// The bench on `runtime`, whose threads `executor` describes for the
    /// header (such as "2 executor threads"), measured against `floor`
    /// (the ratios' denominator).
    pub fn new(runtime: R, executor: impl Into<String>, floor: Peer<R>) -> Self {
        ClosedLoop {
            runtime,
            name: None,
            executor: executor.into(),
            peers: vec![floor],
        }
    }

    /// Names the runtime at the head of the header ("smol 2: closed loop").
    pub fn named(mut self, runtime: &'static str) -> Self {
        self.name = Some(runtime);
        self
    }

    /// Measures `peer` too, after the floor and the peers added before.
    pub fn peer(mut self, peer: Peer<R>) -> Self {
        self.peers.push(peer);
        self
    }

    /// The bench's `main`: returns at once when cargo lists the benches
    /// (`--list`); otherwise hands `block_on` the future that runs every
    /// cell the environment picks ([`Knobs::from_env`]) and prints the
    /// table, to run inside the runtime (a spawn there must work).
    pub fn main(self, block_on: impl FnOnce(Pin<Box<dyn Future<Output = ()>>>)) {
        if std::env::args().any(|arg| arg == "--list") {
            return;
        }
        block_on(Box::pin(self.run(Knobs::from_env())));
    }

    /// Runs every cell that `knobs` picks and prints the table.
    async fn run(self, knobs: Knobs) {
        let ClosedLoop {
            runtime,
            name,
            executor,
            peers,
        } = self;
        let handler = knobs.handler;
        println!(
            "{}closed loop, {}, {executor}, median of {ROUNDS} rounds of {ROUND:?}",
            name.map(|name| format!("{name}: ")).unwrap_or_default(),
            handler.name(),
        );
        let floor = peers.first().map_or("floor", |peer| peer.column);
        let mut header = vec![
            "N".to_owned(),
            "C".to_owned(),
            "foreman req/s".to_owned(),
            "caller req/s".to_owned(),
        ];
        header.extend(peers.iter().map(|peer| format!("{} req/s", peer.column)));
        header.push(format!("foreman/{floor}"));
        header.push(format!("caller/{floor}"));
        header.extend(
            peers
                .iter()
                .skip(1)
                .map(|peer| format!("foreman/{}", peer.column)),
        );
        header.extend(["foreman", "caller", floor].map(|pool| format!("p99 {pool}")));
        header.push(format!("p99 foreman/{floor}"));
        println!("| {} |", header.join(" | "));
        println!("|{}", "---:|".repeat(header.len()));
        let modes = [
            ("foreman", ExecutionMode::PoolTasks),
            ("caller", ExecutionMode::CallerTask),
        ];
        for &n in &knobs.workers {
            for &c in &knobs.callers {
                // Each pool's rounds: foreman's modes, then the peers.
                let mut rounds: Vec<(&str, Vec<Round>)> = modes
                    .iter()
                    .map(|(name, _)| *name)
                    .chain(peers.iter().map(|peer| peer.name))
                    .map(|name| (name, Vec::new()))
                    .collect();
                for _ in 0..ROUNDS {
                    for (peer, (_, peer_rounds)) in peers.iter().zip(&mut rounds[modes.len()..]) {
                        if knobs.runs(peer.name) {
                            peer_rounds.push((peer.measure)(&runtime, n, c, handler).await);
                        }
                    }
                    for ((name, mode), (_, mode_rounds)) in modes.iter().zip(&mut rounds) {
                        if knobs.runs(name) {
                            mode_rounds.push(foreman_round(&runtime, *mode, n, c, handler).await);
                        }
                    }
                }
                println!("| {n} | {c} | {} |", row(&rounds, !knobs.pools.is_empty()));
            }
        }
    }
}

/// A table row's cells after N and C, from each pool's rounds (foreman,
/// caller, the floor, the other peers); with `only_some`, the throughput
/// and p99 of each pool that ran.
fn row(rounds: &[(&str, Vec<Round>)], only_some: bool) -> String {
    let medians: Vec<(&str, Round)> = rounds
        .iter()
        .filter(|(_, rounds)| !only_some || !rounds.is_empty())
        .map(|(name, rounds)| (*name, Round::median(rounds)))
        .collect();
    if only_some {
        let cells: Vec<String> = medians
            .iter()
            .map(|(name, round)| format!("{name} {:.0}k p99 {:?}", round.rps / 1e3, round.p99))
            .collect();
        return cells.join(" | ");
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let round = |index: usize| medians.get(index).map_or(Round::default(), |(_, r)| *r);
    let (foreman, caller, floor) = (round(0), round(1), round(2));
    let mut cells: Vec<String> = medians
        .iter()
        .map(|(_, round)| format!("{:.0}k", round.rps / 1e3))
        .collect();
    cells.push(format!("{:.2}", ratio(foreman.rps, floor.rps)));
    cells.push(format!("{:.2}", ratio(caller.rps, floor.rps)));
    cells.extend(
        medians
            .iter()
            .skip(3)
            .map(|(_, peer)| format!("{:.2}", ratio(foreman.rps, peer.rps))),
    );
    cells.extend([foreman, caller, floor].map(|round| format!("{:?}", round.p99)));
    cells.push(format!(
        "{:.2}",
        ratio(foreman.p99.as_secs_f64(), floor.p99.as_secs_f64())
    ));
    cells.join(" | ")
}
