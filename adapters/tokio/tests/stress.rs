//! Many callers, every kind of outcome, callers that give up, restarts and
//! a shutdown, on a two-thread runtime, with one lane and with two: every
//! submit returns, and the core's books account for every request once.
//! With a circuit breaker, also workers removed and added under load: every
//! hook fires once per event.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use foreman_tokio::{
    async_trait, CircuitBreakerHooks, PoolConfig, TokioRuntime, WorkerErrorCode, WorkerHandler,
    WorkerOperation, WorkerPool, WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
    WorkerResponse,
};
use serde_json::{json, Value};

struct Mixed;

#[async_trait]
impl WorkerHandler for Mixed {
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        match request.node_id.as_str() {
            "echo" => Ok(json!(1)),
            "yield" => {
                tokio::task::yield_now().await;
                Ok(json!(2))
            }
            "sleep" => {
                tokio::time::sleep(Duration::from_micros(200)).await;
                Ok(json!(3))
            }
            "hang" => std::future::pending().await,
            "fail" => Err(WorkerProtocolError::new(
                WorkerErrorCode::ExecutionFailed,
                "failed on purpose",
                true,
            )),
            _ => panic!("handler exploded on purpose"),
        }
    }
}

fn request(id: u64, node: &str) -> WorkerRequest {
    WorkerRequest {
        request_id: format!("r{id}"),
        workflow_name: "stress".into(),
        node_id: node.into(),
        timeout_ms: (node == "hang").then_some(2),
        operation: WorkerOperation::Tool {
            tool: "t".into(),
            input: json!({}),
            scoped_input: json!({}),
        },
    }
}

/// A pool of `workers` [`Mixed`] workers over `lanes` lanes, with `hooks`
/// (and then no late binding, as `new_inprocess` does).
fn mixed_pool(
    workers: usize,
    lanes: usize,
    hooks: Option<Arc<dyn CircuitBreakerHooks>>,
) -> Arc<WorkerPool> {
    let config = PoolConfig::new(WorkerPoolOptions {
        queue_capacity: 4,
        unavailable_after_failures: 1_000_000,
        ..WorkerPoolOptions::default()
    })
    .vetted_by_breaker(hooks.is_some());
    let handlers = (0..workers)
        .map(|_| Arc::new(Mixed) as Arc<dyn WorkerHandler>)
        .collect();
    let lanes = std::num::NonZeroUsize::new(lanes).expect("lanes");
    Arc::new(WorkerPool::with_lanes(TokioRuntime, handlers, config, hooks, lanes).expect("pool"))
}

/// Spawns `callers` tasks that each submit `each` requests of the `kinds`
/// in a pseudo-random order, giving up on one in seven after 50 µs; the
/// counter says how many submits returned.
fn spawn_callers(
    pool: &Arc<WorkerPool>,
    callers: u64,
    each: u64,
    kinds: [&'static str; 7],
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<AtomicU64>) {
    let returned = Arc::new(AtomicU64::new(0));
    let tasks = (0..callers)
        .map(|caller| {
            let (pool, returned) = (Arc::clone(pool), Arc::clone(&returned));
            tokio::spawn(async move {
                let mut x = caller.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for i in 0..each {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let kind = kinds[(x % kinds.len() as u64) as usize];
                    let submit = pool.submit(request(caller * 1_000 + i, kind));
                    if x % 7 == 0 {
                        // This caller gives up after a moment.
                        let _ = tokio::time::timeout(Duration::from_micros(50), submit).await;
                    } else {
                        let _ = submit.await;
                    }
                    returned.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    (tasks, returned)
}

/// A multi-thread runtime with two workers.
fn two_threads() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn stress(workers: usize, lanes: usize) {
    let runtime = two_threads();
    runtime.block_on(async {
        let pool = mixed_pool(workers, lanes, None);
        let kinds = ["echo", "echo", "yield", "sleep", "hang", "fail", "panic"];
        let (callers, returned) = spawn_callers(&pool, 64, 400, kinds);
        let restarts = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                for k in 0.. {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let _ = pool
                        .restart_worker(&format!("worker-{}", k % workers))
                        .await;
                }
            })
        };
        for caller in callers {
            caller.await.expect("caller ends");
        }
        restarts.abort();
        pool.shutdown().await;
        let c = pool.stats().counters;
        assert_eq!(returned.load(Ordering::Relaxed), 64 * 400);
        assert_eq!(c.submitted, 64 * 400, "{c:?}");
        assert_eq!(c.accepted + c.refused(), c.submitted, "{c:?}");
        assert_eq!(
            c.answered(),
            c.accepted,
            "every accepted request ended once: {c:?}"
        );
        assert!(
            c.succeeded > 0 && c.failed > 0 && c.timed_out_running > 0,
            "{c:?}"
        );
        // Late binding ran: queued requests moved to the first free worker.
        assert!(c.reassigned > 0, "{c:?}");
    });
}

#[test]
fn stress_one_lane_with_refusals() {
    stress(4, 1);
}

#[test]
fn stress_two_lanes() {
    stress(32, 2);
}

/// A circuit breaker under load: it refuses about one worker in four for
/// each request (the same answer for the same pair every time), reads its
/// pool's stats on every question, and counts every hook.
#[derive(Default)]
struct Breaker {
    pool: OnceLock<Weak<WorkerPool>>,
    vetoes: AtomicU64,
    rejected_by_worker: AtomicU64,
    refused: AtomicU64,
    accepted: AtomicU64,
    ended: AtomicU64,
}

#[async_trait]
impl CircuitBreakerHooks for Breaker {
    fn allow_request(&self, worker_id: &str, request: &WorkerRequest) -> bool {
        if let Some(pool) = self.pool.get().and_then(Weak::upgrade) {
            let _ = pool.stats();
        }
        let mut hasher = DefaultHasher::new();
        (worker_id, &request.request_id).hash(&mut hasher);
        let allowed = hasher.finish() % 4 != 0;
        if !allowed {
            self.vetoes.fetch_add(1, Ordering::SeqCst);
        }
        allowed
    }

    async fn on_request_accepted(&self, _worker_id: &str, _request: &WorkerRequest) {
        self.accepted.fetch_add(1, Ordering::SeqCst);
    }

    async fn on_request_success(&self, _worker_id: &str, _response: &WorkerResponse) {
        self.ended.fetch_add(1, Ordering::SeqCst);
    }

    async fn on_request_failure(&self, _worker_id: &str, _error: &WorkerProtocolError) {
        self.ended.fetch_add(1, Ordering::SeqCst);
    }

    async fn on_request_rejected(
        &self,
        worker_id: Option<&str>,
        _request: &WorkerRequest,
        _reason: WorkerErrorCode,
    ) {
        let counter = match worker_id {
            Some(_) => &self.rejected_by_worker,
            None => &self.refused,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// [`stress`] with a circuit breaker, and a worker removed and another
/// added every few milliseconds besides the restarts: requests queued on a
/// removed worker move only where the breaker allows.
fn stress_hooked(workers: usize, lanes: usize) {
    const CALLERS: u64 = 32;
    const EACH: u64 = 200;
    let runtime = two_threads();
    runtime.block_on(async {
        let breaker = Arc::new(Breaker::default());
        let hooks = Arc::clone(&breaker) as Arc<dyn CircuitBreakerHooks>;
        let pool = mixed_pool(workers, lanes, Some(hooks));
        let _ = breaker.pool.set(Arc::downgrade(&pool));
        let kinds = ["echo", "echo", "yield", "sleep", "sleep", "hang", "fail"];
        let (callers, returned) = spawn_callers(&pool, CALLERS, EACH, kinds);
        let churn = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                for k in 0.. {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    let ids: Vec<String> = pool
                        .stats()
                        .workers
                        .iter()
                        .filter(|w| !w.removing)
                        .map(|w| w.worker_id.clone())
                        .collect();
                    if ids.is_empty() {
                        continue;
                    }
                    let _ = pool.remove_worker(&ids[k % ids.len()]);
                    let _ = pool.add_worker(Arc::new(Mixed));
                    let _ = pool.restart_worker(&ids[(k + 1) % ids.len()]).await;
                }
            })
        };
        for caller in callers {
            caller.await.expect("caller ends");
        }
        churn.abort();
        pool.shutdown().await;
        let c = pool.stats().counters;
        assert_eq!(returned.load(Ordering::Relaxed), CALLERS * EACH);
        assert_eq!(c.submitted, CALLERS * EACH, "{c:?}");
        assert_eq!(c.accepted + c.refused(), c.submitted, "{c:?}");
        assert_eq!(
            c.answered(),
            c.accepted,
            "every accepted request ended once: {c:?}"
        );
        // The last hook of a caller that gave up runs in a task of its own.
        for _ in 0..5_000 {
            if breaker.ended.load(Ordering::SeqCst) >= c.accepted {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let hooks = |counter: &AtomicU64| counter.load(Ordering::SeqCst);
        assert_eq!(
            hooks(&breaker.ended),
            c.accepted,
            "one last hook per request: {c:?}"
        );
        assert_eq!(hooks(&breaker.refused), c.refused(), "{c:?}");
        assert_eq!(hooks(&breaker.rejected_by_worker), hooks(&breaker.vetoes));
        // Every acceptance, and every move off a removed worker, once.
        assert_eq!(hooks(&breaker.accepted), c.accepted + c.requeued, "{c:?}");
        assert_eq!(
            c.reassigned, 0,
            "no request moved without its breaker: {c:?}"
        );
        assert!(
            c.succeeded > 0 && c.timed_out_running > 0 && hooks(&breaker.vetoes) > 0,
            "{c:?}"
        );
        assert!(c.requeued + c.unroutable_after_removal > 0, "{c:?}");
    });
}

#[test]
fn stress_with_a_circuit_breaker() {
    stress_hooked(8, 1);
}

#[test]
fn stress_with_a_circuit_breaker_in_two_lanes() {
    stress_hooked(32, 2);
}
