//! A worker process killed with SIGKILL while it runs a request: that
//! request is answered once (an error, since it may have run, and not run
//! again under a retry policy), and every request sent to the dead
//! endpoint afterwards (connection refused: it never started) is declined
//! as "refused, not started" and runs on another worker. Every request id
//! is answered exactly once.

mod common;
mod faults_support;

use std::time::Duration;

use faults_support::{frontend, llm_request, until, within_limit, Ledger, WorkerProcess};
use foreman_tokio::{
    PoolConfig, RetryPolicy, RoutingPolicy, WorkerErrorCode, WorkerHealthStatus, WorkerPoolError,
    WorkerPoolOptions,
};

/// How long each worker process's handler sleeps.
const RUN_MS: u64 = 400;

fn options(unavailable_after_failures: u32, probe_interval: Duration) -> WorkerPoolOptions {
    WorkerPoolOptions {
        unavailable_after_failures,
        health_probe_interval: probe_interval,
        ..WorkerPoolOptions::default()
    }
}

async fn three_workers() -> [WorkerProcess; 3] {
    let sleep = format!("sleep:{RUN_MS}");
    let args = ["--mode", sleep.as_str(), "--workers", "2"];
    [
        WorkerProcess::start(&args).await,
        WorkerProcess::start(&args).await,
        WorkerProcess::start(&args).await,
    ]
}

fn is_unavailable_after_sending(error: &WorkerPoolError) -> bool {
    matches!(error, WorkerPoolError::Worker(failure)
        if failure.code == WorkerErrorCode::Unavailable
            && !failure.retryable
            && failure.message.contains("may have run"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_fails_its_running_request_once_and_the_waiting_ones_run_elsewhere() {
    within_limit(async {
        let mut workers = three_workers().await;
        let endpoints: Vec<&str> = workers.iter().map(|w| w.endpoint.as_str()).collect();
        // One failure makes a worker Unavailable; no probe heals the dead
        // one during the test.
        let pool = frontend(
            &endpoints,
            PoolConfig::new(options(1, Duration::from_secs(60))),
        );
        let mut ledger = Ledger::default();
        let total = 9;
        let calls: Vec<_> = (0..total)
            .map(|n| {
                let id = format!("k{n}");
                ledger.submitted(&id);
                let pool = pool.clone();
                tokio::spawn(async move {
                    let answer = pool.submit(llm_request(&id, Some(10_000))).await;
                    (id, answer)
                })
            })
            .collect();
        // Three run (one per worker), six wait in the pool's backlog.
        faults_support::stats_until(&workers[0].endpoint, Duration::from_secs(10), "worker 0 runs a request", |s| {
            s.in_flight == 1
        })
        .await;
        until(Duration::from_secs(10), "six requests wait", || {
            pool.stats().counters.accepted == total
        })
        .await;
        let status = workers[0].kill9().await;
        assert!(!status.success(), "killed: {status:?}");
        for call in calls {
            let (id, answer) = call.await.expect("joined");
            ledger.answered(&id, answer);
        }
        ledger.check_each_answered_once();
        // The dead worker's running request fails, an Unavailable error
        // naming its endpoint that says it may have run. A request it was
        // handed afterwards (a worker out of rotation still runs the
        // requests queued on it) either found no connection, was declined
        // as not started and ran elsewhere, or went out on a connection the
        // dead process had left open and fails the same way (the reset
        // cannot tell whether it arrived). None fails for want of a
        // connection. Everything else ran on the live workers.
        let failures = ledger.failures();
        let dead = workers[0].endpoint.clone();
        assert!(!failures.is_empty() && failures.len() <= 3, "{failures:?}");
        for (id, error) in &failures {
            assert!(
                matches!(error, WorkerPoolError::Worker(failure)
                    if failure.code == WorkerErrorCode::Unavailable && failure.message.contains(&dead)),
                "{id}: {error:?}"
            );
            assert!(is_unavailable_after_sending(error), "{id}: {error:?}");
        }
        let by_worker = ledger.successes_by_worker();
        assert_eq!(by_worker.get("worker-0"), None, "{by_worker:?}");
        let succeeded = by_worker.values().sum::<usize>() as u64;
        assert_eq!(succeeded + failures.len() as u64, total);
        // The survivors' own counters agree.
        let answered = workers[1].stats().await.answered + workers[2].stats().await.answered;
        assert_eq!(answered, succeeded);
        let counters = pool.stats().counters;
        assert_eq!(
            (counters.succeeded, counters.failed),
            (succeeded, failures.len() as u64)
        );
        let health = pool.health_snapshot().await;
        assert_eq!(health[0].status, WorkerHealthStatus::Unavailable);
        assert!(health[1..].iter().all(|h| h.status == WorkerHealthStatus::Healthy));
        println!(
            "killed worker: {} failures, successes {by_worker:?}, requeued {}, refused not started {}",
            failures.len(),
            counters.requeued,
            counters.refused_not_started
        );
        pool.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_retry_policy_requests_the_dead_worker_never_started_run_elsewhere_once() {
    within_limit(async {
        let mut workers = three_workers().await;
        let endpoints: Vec<&str> = workers.iter().map(|w| w.endpoint.as_str()).collect();
        // Round robin places a request on the dead worker (ten failures
        // before it is Unavailable); it is declined (the connection was
        // refused: not started) and runs on a live worker, whatever the
        // retry policy, and the saturated dead worker is skipped until a
        // probe finds it gone. The calls after the kill go one at a time.
        // (The first probe comes 3 s in, after round robin reached the
        // dead worker: the third call after the kill goes there.)
        let config = PoolConfig::new(options(10, Duration::from_secs(3)))
            .with_routing(RoutingPolicy::RoundRobin)
            .with_retries(Some(RetryPolicy::default().with_max_attempts(2)));
        let pool = frontend(&endpoints, config);
        let mut ledger = Ledger::default();
        let first: Vec<_> = (0..3)
            .map(|n| {
                let id = format!("first{n}");
                ledger.submitted(&id);
                let pool = pool.clone();
                tokio::spawn(async move {
                    let timed = pool.submit_timed(llm_request(&id, Some(10_000))).await;
                    (id, timed)
                })
            })
            .collect();
        faults_support::stats_until(
            &workers[0].endpoint,
            Duration::from_secs(10),
            "worker 0 runs a request",
            |s| s.in_flight == 1,
        )
        .await;
        workers[0].kill9().await;
        let mut killed_runs = 0;
        for call in first {
            let (id, timed) = call.await.expect("joined");
            if let Err(error) = &timed.result {
                // It may have run: the policy does not run it again.
                assert!(is_unavailable_after_sending(error), "{error:?}");
                assert_eq!(timed.timings.attempts, 1);
                killed_runs += 1;
            }
            ledger.answered(&id, timed.result);
        }
        assert_eq!(killed_runs, 1);
        for n in 0..6 {
            let id = format!("after{n}");
            ledger.submitted(&id);
            let timed = pool.submit_timed(llm_request(&id, Some(10_000))).await;
            let response = timed.result.as_ref().expect("runs on a live worker");
            assert_ne!(response.worker_id, "worker-0");
            // Declined before it started: not an attempt.
            assert_eq!(timed.timings.attempts, 1);
            ledger.answered(&id, timed.result);
        }
        ledger.check_each_answered_once();
        let counters = pool.stats().counters;
        assert!(counters.refused_not_started >= 1, "{counters:?}");
        assert_eq!(counters.retried, 0, "{counters:?}");
        assert_eq!(counters.succeeded, 2 + 6);
        assert_eq!(counters.failed, 1);
        let answered = workers[1].stats().await.answered + workers[2].stats().await.answered;
        assert_eq!(
            answered,
            2 + 6,
            "each retried request ran once, on a live worker"
        );
        println!(
            "retry policy: {} of 6 requests after the kill declined by the dead endpoint, {} retried",
            counters.refused_not_started, counters.retried
        );
        pool.shutdown().await;
    })
    .await;
}
