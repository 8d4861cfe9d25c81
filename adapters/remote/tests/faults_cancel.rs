//! A caller that drops its `submit` while its request runs on a worker
//! process: the frontend cancels the call, the connection closes, and the
//! worker's server drops the handler within a bounded time (its stats
//! count it as dropped), long before the handler would have finished.

mod common;
mod faults_support;

use std::time::{Duration, Instant};

use faults_support::{frontend, llm_request, stats_until, within_limit, WorkerProcess};
use foreman_tokio::{PoolConfig, WorkerPoolOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_submit_drops_the_handler_in_the_worker_process() {
    within_limit(async {
        let worker = WorkerProcess::start(&["--mode", "sleep:10s"]).await;
        let pool = frontend(
            &[&worker.endpoint],
            PoolConfig::new(WorkerPoolOptions::default()),
        );
        for round in 0..3u64 {
            let caller = {
                let pool = pool.clone();
                let id = format!("dropped{round}");
                tokio::spawn(async move { pool.submit(llm_request(&id, None)).await })
            };
            stats_until(
                &worker.endpoint,
                Duration::from_secs(10),
                "the request runs",
                |s| s.in_flight == 1 && s.started == round + 1,
            )
            .await;
            let dropped_at = Instant::now();
            caller.abort();
            let stats = stats_until(
                &worker.endpoint,
                Duration::from_secs(2),
                "the handler is dropped",
                |s| s.in_flight == 0 && s.dropped == round + 1,
            )
            .await;
            println!(
                "round {round}: dropped by the server {:?} after the caller's drop; {stats:?}",
                dropped_at.elapsed()
            );
            assert_eq!(stats.answered, 0);
        }
        let counters = pool.stats().counters;
        assert_eq!(counters.cancelled_running, 3);
        pool.shutdown().await;
    })
    .await;
}
