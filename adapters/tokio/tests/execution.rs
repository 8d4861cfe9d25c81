//! Where handlers run: on the pool's runtime, whatever executor the caller
//! is on, and whether or not the caller polls.

use std::sync::Arc;
use std::time::Duration;

use foreman_support::bench::bench_request;
use foreman_tokio::{
    async_trait, PoolConfig, TokioRuntime, WorkerHandler, WorkerPool, WorkerPoolOptions,
    WorkerProtocolError, WorkerRequest,
};
use serde_json::Value;

/// A handler that needs tokio: its timer only works in a tokio context.
struct TokioTimer(Duration);

#[async_trait]
impl WorkerHandler for TokioTimer {
    async fn handle(&self, _request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        tokio::time::sleep(self.0).await;
        Ok(Value::Null)
    }
}

/// A caller on another executor (`futures::executor::block_on` on a thread
/// of its own) gets the answer of a handler that uses tokio's timer: the
/// handler runs on the pool's runtime, not in the caller's context.
#[test]
fn a_handler_that_needs_tokio_works_for_a_caller_on_another_executor() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pool = {
        let _context = runtime.enter();
        WorkerPool::new_inprocess(
            vec![Arc::new(TokioTimer(Duration::from_millis(1)))],
            WorkerPoolOptions::default(),
            None,
        )
        .expect("pool")
    };
    let pool = Arc::new(pool);
    let caller = {
        let pool = Arc::clone(&pool);
        std::thread::spawn(move || futures::executor::block_on(pool.submit(bench_request())))
    };
    let answer = caller.join().expect("caller thread");
    assert!(answer.is_ok(), "{answer:?}");
    runtime.block_on(pool.shutdown());
}

/// 16 workers, every other one slow (2 s) and the others fast (10 ms): 200
/// requests take no longer with the pool as built by default, or split
/// explicitly into 2 or 4 lanes (so the check holds on a one-CPU machine,
/// where the default is one lane), than with a single lane (the fast
/// workers take the whole queue), on the paused clock.
#[tokio::test(start_paused = true)]
async fn slow_and_fast_workers_finish_as_fast_as_one_lane() {
    let handlers = || -> Vec<Arc<dyn WorkerHandler>> {
        (0..16)
            .map(|i| {
                let delay = if i % 2 == 0 { 2_000 } else { 10 };
                Arc::new(TokioTimer(Duration::from_millis(delay))) as Arc<dyn WorkerHandler>
            })
            .collect()
    };
    let options = WorkerPoolOptions {
        queue_capacity: 64,
        default_request_timeout: Some(Duration::from_secs(60)),
        ..WorkerPoolOptions::default()
    };
    async fn run(pool: WorkerPool) -> Duration {
        let start = tokio::time::Instant::now();
        let requests = (0..200).map(|i| {
            pool.submit(WorkerRequest {
                request_id: format!("r{i}"),
                ..bench_request()
            })
        });
        let answers = futures::future::join_all(requests).await;
        let took = start.elapsed();
        assert!(answers.iter().all(Result::is_ok));
        pool.shutdown().await;
        took
    }
    let in_lanes = |lanes: usize| {
        WorkerPool::with_lanes(
            TokioRuntime,
            handlers(),
            PoolConfig::new(options.clone()),
            None,
            std::num::NonZeroUsize::new(lanes).unwrap_or(std::num::NonZeroUsize::MIN),
        )
        .expect("pool")
    };
    let single = run(in_lanes(1)).await;
    let default =
        run(WorkerPool::new_inprocess(handlers(), options.clone(), None).expect("pool")).await;
    eprintln!("16 workers, half slow: default pool {default:?}, one lane {single:?}");
    assert!(
        default.as_secs_f64() <= 1.2 * single.as_secs_f64(),
        "default pool took {default:?}, a single lane {single:?}"
    );
    for lanes in [2, 4] {
        let split = run(in_lanes(lanes)).await;
        eprintln!("16 workers, half slow: {lanes} lanes {split:?}");
        assert!(
            split.as_secs_f64() <= 1.2 * single.as_secs_f64(),
            "{lanes} lanes took {split:?}, a single lane {single:?}"
        );
    }
}
