//! A worker process restarted on the same port: the frontend connects to
//! the new process and the worker returns to rotation. A worker process
//! told to stop with SIGTERM drains: its running request finishes, its
//! health says unavailable (so the frontend stops sending it work, and
//! what it still sends is declined unstarted and runs elsewhere), and it
//! exits with status 0.

mod common;
mod faults_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use faults_support::{frontend, llm_request, stats_until, within_limit, Ledger, WorkerProcess};
use foreman_tokio::{
    PoolConfig, WorkerErrorCode, WorkerHealthStatus, WorkerPool, WorkerPoolError, WorkerPoolOptions,
};

fn config() -> PoolConfig {
    PoolConfig::new(WorkerPoolOptions {
        health_probe_interval: Duration::from_millis(200),
        unavailable_after_failures: 2,
        ..WorkerPoolOptions::default()
    })
    .with_probe_timeout(Duration::from_millis(150))
}

/// Submits requests one after another (10 ms apart) until `stop`.
fn steady_load(
    pool: Arc<WorkerPool>,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Ledger> {
    tokio::spawn(async move {
        let mut ledger = Ledger::default();
        let mut n = 0;
        while !stop.load(Ordering::Acquire) {
            let id = format!("{prefix}{n}");
            n += 1;
            ledger.submitted(&id);
            let answer = pool.submit(llm_request(&id, Some(5_000))).await;
            ledger.answered(&id, answer);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ledger
    })
}

async fn wait_for_status(pool: &WorkerPool, worker: usize, status: WorkerHealthStatus) {
    faults_support::wait_for_status(pool, worker, status, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_restarted_on_the_same_port_is_reconnected_and_returns_to_rotation() {
    within_limit(async {
        let mut first = WorkerProcess::start(&["--mode", "sleep:20"]).await;
        let other = WorkerProcess::start(&["--mode", "sleep:20"]).await;
        let address = first.addr.to_string();
        let endpoint = first.endpoint.clone();
        let pool = frontend(&[&endpoint, &other.endpoint], config());
        let stop = Arc::new(AtomicBool::new(false));
        // Two callers: a worker with a failure on its record (Degraded)
        // gets work only while the Healthy one is busy.
        let loads = [
            steady_load(pool.clone(), "a", Arc::clone(&stop)),
            steady_load(pool.clone(), "b", Arc::clone(&stop)),
        ];
        stats_until(&endpoint, Duration::from_secs(10), "the first process serves", |s| {
            s.answered >= 3
        })
        .await;
        first.kill9().await;
        wait_for_status(&pool, 0, WorkerHealthStatus::Unavailable).await;
        let second = WorkerProcess::start_on(&address, &["--mode", "sleep:20"]).await;
        assert_eq!(second.endpoint, endpoint, "the same port");
        // Back in rotation once a probe reaches the new process; a
        // success there clears its record.
        let began = tokio::time::Instant::now();
        while !pool.health_snapshot().await[0].is_schedulable() {
            assert!(began.elapsed() < Duration::from_secs(10), "worker 0 returns to rotation");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let served = stats_until(&endpoint, Duration::from_secs(10), "the new process serves", |s| {
            s.answered >= 3
        })
        .await;
        wait_for_status(&pool, 0, WorkerHealthStatus::Healthy).await;
        stop.store(true, Ordering::Release);
        let mut ledger = Ledger::default();
        for load in loads {
            ledger.merge(load.await.expect("joined"));
        }
        ledger.check_each_answered_once();
        let failures = ledger.failures();
        let by_worker = ledger.successes_by_worker();
        println!(
            "restart: {} failures while down {failures:?}; successes {by_worker:?}; the new process's stats {served:?}",
            failures.len()
        );
        // What failed, failed on the dead worker as Unavailable: a refused
        // connection, or a pooled connection the old process left.
        for (id, error) in &failures {
            assert!(
                matches!(error, WorkerPoolError::Worker(failure)
                    if failure.code == WorkerErrorCode::Unavailable && failure.message.contains(&endpoint)),
                "{id}: {error:?}"
            );
        }
        // Unavailable after two failures (or a probe's verdict), and a
        // request queued on it then still runs there: at most three.
        assert!(failures.len() <= 3, "{failures:?}");
        assert!(by_worker.get("worker-0").copied().unwrap_or(0) >= 6);
        pool.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_worker_process_under_load_and_it_exits_cleanly() {
    within_limit(async {
        let mut draining = WorkerProcess::start(&["--mode", "sleep:800", "--drain", "5s"]).await;
        let other = WorkerProcess::start(&["--mode", "sleep:20"]).await;
        let pool = frontend(&[&draining.endpoint, &other.endpoint], config());
        // Two at once: one on each idle worker; the long one on worker 0.
        let long = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.submit(llm_request("long", Some(5_000))).await })
        };
        stats_until(
            &draining.endpoint,
            Duration::from_secs(10),
            "the long request runs",
            |s| s.in_flight == 1,
        )
        .await;
        let stop = Arc::new(AtomicBool::new(false));
        let load = steady_load(pool.clone(), "r", Arc::clone(&stop));
        draining.signal("TERM");
        // The frontend's probe reads "unavailable" while it drains.
        wait_for_status(&pool, 0, WorkerHealthStatus::Unavailable).await;
        let long = long
            .await
            .expect("joined")
            .expect("the running request finishes");
        assert_eq!(long.worker_id, "worker-0");
        let status = draining.wait_exit(Duration::from_secs(10)).await;
        assert!(status.success(), "exits cleanly: {status:?}");
        stop.store(true, Ordering::Release);
        let ledger = load.await.expect("joined");
        ledger.check_each_answered_once();
        // Nothing failed: what reached the draining worker was declined
        // unstarted (503) and ran on the other.
        assert_eq!(ledger.failures().len(), 0, "{:?}", ledger.failures());
        let counters = pool.stats().counters;
        let output = draining.output();
        println!(
            "drain: successes {:?}, refused not started {}, the worker's last words {output:?}",
            ledger.successes_by_worker(),
            counters.refused_not_started
        );
        assert!(
            output.iter().any(|line| line.starts_with("drained: ")
                && line.contains("0 cut off at the drain deadline")),
            "{output:?}"
        );
        pool.shutdown().await;
    })
    .await;
}
