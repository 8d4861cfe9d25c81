//! Many callers, every kind of outcome, callers that give up, restarts and
//! a shutdown, on a two-thread runtime, with one lane and with two: every
//! submit returns, and the core's books account for every request once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foreman_tokio::{
    async_trait, PoolConfig, TokioRuntime, WorkerErrorCode, WorkerHandler, WorkerOperation,
    WorkerPool, WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
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

fn stress(workers: usize, lanes: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let pool = Arc::new(
            WorkerPool::with_lanes(
                TokioRuntime,
                (0..workers)
                    .map(|_| Arc::new(Mixed) as Arc<dyn WorkerHandler>)
                    .collect(),
                PoolConfig::new(WorkerPoolOptions {
                    queue_capacity: 4,
                    unavailable_after_failures: 1_000_000,
                    ..WorkerPoolOptions::default()
                }),
                None,
                std::num::NonZeroUsize::new(lanes).expect("lanes"),
            )
            .expect("pool"),
        );
        let returned = Arc::new(AtomicU64::new(0));
        let callers: Vec<_> = (0..64u64)
            .map(|caller| {
                let (pool, returned) = (Arc::clone(&pool), Arc::clone(&returned));
                tokio::spawn(async move {
                    let kinds = ["echo", "echo", "yield", "sleep", "hang", "fail", "panic"];
                    let mut x = caller.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    for i in 0..400u64 {
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
