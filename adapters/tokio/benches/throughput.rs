//! Closed-loop end-to-end benchmark: foreman-tokio against a bare
//! mpsc + oneshot pool (the floor) and tower's p2c `Balance` behind a
//! `Buffer`, echo handler, N workers, C concurrent callers, multi-thread
//! runtime with 2 workers (`FOREMAN_BENCH_THREADS`, read here, sets
//! another count). The harness is `foreman_support::bench::ClosedLoop`,
//! shared with the smol and async-std benches; this file supplies tokio's
//! runtime and its peers. Tower runs twice: as the design brief names it, whose N
//! services each take any number of requests at once, and as `tower(1)`,
//! whose services take one at a time (a `ConcurrencyLimit` of 1), as a
//! foreman worker and a floor task do. (Memory per queued request is measured by the
//! `memory` bench, whose counting allocator would skew these timings.)
//! `FOREMAN_BENCH_HANDLER=yield` makes every handler return `Pending` once
//! first, as one waiting on I/O would: requests then queue even with
//! `FOREMAN_BENCH_THREADS=1` (`foreman_support::bench::Knobs` lists the
//! harness's knobs: also `FOREMAN_BENCH_N`, `FOREMAN_BENCH_C`, and
//! `FOREMAN_BENCH_POOLS`, here `foreman`, `caller`, `floor`, `tower`,
//! `tower1`).
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use foreman_support::bench::{BenchHandler, Client, ClosedLoop, Peer};
use foreman_tokio::{TokioRuntime, WorkerHandler, WorkerProtocolError, WorkerRequest};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tower::{Service, ServiceExt};

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

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
    fn new(n: usize, handler: BenchHandler) -> Self {
        let senders = (0..n)
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Job>(64);
                let handler: Arc<dyn WorkerHandler> = handler.handler();
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

impl Client for Floor {
    fn call(self: &Arc<Self>, request: WorkerRequest) -> BoxFut<bool> {
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

impl<S> Client for Tower<S>
where
    S: Send + 'static,
    Balanced<S>: Service<WorkerRequest, Response = Value, Error = tower::BoxError> + Send + 'static,
    <Balanced<S> as Service<WorkerRequest>>::Future: Send,
{
    fn call(self: &Arc<Self>, request: WorkerRequest) -> BoxFut<bool> {
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
fn tower_pool(n: usize, handler: BenchHandler) -> Tower<EchoService> {
    Tower::new(n, || EchoService(handler.handler()))
}

/// The same pool with one request at a time per service, as a foreman
/// worker (and a floor task) runs them.
fn tower_one_pool(
    n: usize,
    handler: BenchHandler,
) -> Tower<tower::limit::ConcurrencyLimit<EchoService>> {
    Tower::new(n, || {
        tower::limit::ConcurrencyLimit::new(EchoService(handler.handler()), 1)
    })
}

// ----- the runtime and the peers ------------------------------------------------

fn main() {
    let threads: usize = std::env::var("FOREMAN_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime");
    let executor = format!("multi-thread runtime with {threads} workers");
    let floor = Peer::new("floor", "floor", |_: &TokioRuntime, n, handler| {
        Floor::new(n, handler)
    });
    ClosedLoop::new(TokioRuntime, executor, floor)
        .peer(Peer::new("tower", "tower", |_, n, handler| {
            tower_pool(n, handler)
        }))
        .peer(Peer::new("tower1", "tower(1)", |_, n, handler| {
            tower_one_pool(n, handler)
        }))
        .main(|bench| rt.block_on(bench));
}
