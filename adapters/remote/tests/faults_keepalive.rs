//! A connection that goes silent (no FIN, no RST: a peer or a NAT entry
//! gone) is found dead by HTTP/2 keep-alive pings: the request running on
//! it is answered as a lost connection long before its deadline, and the
//! next request gets a new connection.

mod common;
mod faults_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use faults_support::{llm_request, within_limit, Proxy, WorkerProcess};
use foreman_remote::{RemoteOptions, RemoteWorker};
use foreman_tokio::{
    PoolConfig, TokioRuntime, WorkerErrorCode, WorkerHandler, WorkerPool, WorkerPoolError,
    WorkerPoolOptions, WorkerResult,
};

/// The deadline of the request caught on the silent connection: far
/// longer than the pings need to find it dead.
const DEADLINE_MS: u64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_pings_fail_a_request_on_a_silent_connection_before_its_deadline() {
    within_limit(async {
        let worker = WorkerProcess::start(&["--mode", "echo"]).await;
        let proxy = Proxy::start(worker.addr).await;
        let remote = RemoteWorker::new(
            &proxy.endpoint,
            RemoteOptions {
                http2: true,
                http2_keep_alive_interval: Duration::from_millis(200),
                http2_keep_alive_timeout: Duration::from_millis(200),
                ..RemoteOptions::default()
            },
        )
        .expect("a valid endpoint");
        let options = WorkerPoolOptions {
            // The lost connection is the test's; no failure ejects the
            // worker.
            unavailable_after_failures: 10,
            ..WorkerPoolOptions::default()
        };
        let handlers: Vec<Arc<dyn WorkerHandler>> = vec![Arc::new(remote)];
        let pool = WorkerPool::with_config(TokioRuntime, handlers, PoolConfig::new(options), None)
            .expect("a valid pool");

        let first = pool
            .submit(llm_request("first", None))
            .await
            .expect("served");
        assert!(matches!(first.result, WorkerResult::Success { .. }));
        assert_eq!(worker.stats().await.answered, 1);

        // The pooled connection goes silent: the next request is written
        // to it and nothing ever comes back.
        proxy.stall_current();
        let began = Instant::now();
        let answer = pool.submit(llm_request("silent", Some(DEADLINE_MS))).await;
        let answered_after = began.elapsed();
        println!("answered after {answered_after:?}: {answer:?}");
        match &answer {
            Err(WorkerPoolError::Worker(failure)) => {
                assert_eq!(failure.code, WorkerErrorCode::Unavailable, "{failure:?}");
                assert!(!failure.retryable, "it may have run: {failure:?}");
            }
            // A `Timeout` here is the deadline firing: the pings never
            // found the connection dead.
            other => panic!("expected a lost connection, got {other:?} after {answered_after:?}"),
        }
        assert_eq!(
            worker.stats().await.started,
            1,
            "it never reached the worker"
        );

        // A new connection serves the next request.
        let after = pool
            .submit(llm_request("after", None))
            .await
            .expect("served on a new connection");
        assert!(matches!(after.result, WorkerResult::Success { .. }));
        assert_eq!(worker.stats().await.answered, 2);
        pool.shutdown().await;
    })
    .await;
}
