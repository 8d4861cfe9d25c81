//! A connection cut under a running request (closed or reset between the
//! frontend and the worker): the request is answered once, at once, with
//! an Unavailable error that is not retryable (it may have run), the
//! worker's server drops its handler, and the next request gets a new
//! connection. A peer that accepts and closes at once fails the request
//! as Unavailable too.

mod common;
mod faults_support;

use std::time::{Duration, Instant};

use faults_support::{
    frontend, llm_request, stats_until, within_limit, Cut, Link, Proxy, WorkerProcess,
};
use foreman_tokio::{
    PoolConfig, WorkerErrorCode, WorkerPoolError, WorkerPoolOptions, WorkerResult,
};

/// How long the worker's handler sleeps.
const RUN_MS: u64 = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_fails_its_request_once_and_the_server_drops_the_handler() {
    within_limit(async {
        let worker = WorkerProcess::start(&["--mode", &format!("sleep:{RUN_MS}")]).await;
        let proxy = Proxy::start(worker.addr).await;
        let options = WorkerPoolOptions {
            // The cuts are the test's; no failure ejects the worker.
            unavailable_after_failures: 10,
            ..WorkerPoolOptions::default()
        };
        let pool = frontend(&[&proxy.endpoint], PoolConfig::new(options));
        for (round, how) in [Cut::Close, Cut::Reset].into_iter().enumerate() {
            let round = round as u64;
            let call = {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let began = Instant::now();
                    let answer = pool.submit(llm_request(&format!("cut{round}"), None)).await;
                    (answer, began.elapsed())
                })
            };
            stats_until(&worker.endpoint, Duration::from_secs(10), "the request runs", |s| {
                s.in_flight == 1 && s.started == round + 1
            })
            .await;
            let cut_at = Instant::now();
            proxy.cut(how);
            let (answer, _) = call.await.expect("joined");
            let answered_after = cut_at.elapsed();
            match &answer {
                Err(WorkerPoolError::Worker(failure)) => {
                    assert_eq!(failure.code, WorkerErrorCode::Unavailable, "{failure:?}");
                    assert!(!failure.retryable, "it may have run: {failure:?}");
                    if how == Cut::Reset {
                        assert!(failure.message.contains("reset"), "{failure:?}");
                    }
                }
                other => panic!("{how:?}: {other:?}"),
            }
            // At once, not at the end of the run.
            assert!(
                answered_after < Duration::from_millis(RUN_MS / 2),
                "{how:?}: answered {answered_after:?} after the cut"
            );
            let stats = stats_until(&worker.endpoint, Duration::from_secs(2), "the handler is dropped", |s| {
                s.in_flight == 0 && s.dropped == round + 1
            })
            .await;
            println!("{how:?}: answered {answered_after:?} after the cut: {answer:?}; server {stats:?}");
            assert_eq!(stats.answered, 0);
        }
        // A new connection serves the next request.
        let response = pool
            .submit(llm_request("after", None))
            .await
            .expect("served on a new connection");
        assert!(matches!(response.result, WorkerResult::Success { .. }));
        assert_eq!(worker.stats().await.answered, 1);
        // A peer that accepts and closes at once (the pooled connection
        // closed too, so the next request needs a new one).
        proxy.set(Link::Refusing);
        proxy.cut(Cut::Close);
        let answer = pool.submit(llm_request("refused", None)).await;
        println!("accepted and closed: {answer:?}");
        assert!(
            matches!(&answer, Err(WorkerPoolError::Worker(failure)) if failure.code == WorkerErrorCode::Unavailable),
            "{answer:?}"
        );
        assert_eq!(worker.stats().await.started, 3, "it never reached the worker");
        let counters = pool.stats().counters;
        assert_eq!((counters.succeeded, counters.failed), (1, 3));
        pool.shutdown().await;
    })
    .await;
}
