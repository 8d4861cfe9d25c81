//! A partition: the worker is silent (the proxy in front of it stalls
//! every byte, or the process is stopped with SIGSTOP) but nothing is
//! refused. Requests running there time out at their deadlines, probes
//! time out, outlier detection ejects the worker; once the partition
//! heals, the worker comes back through half-open. The other worker keeps
//! serving throughout, and every request is answered exactly once.

mod common;
mod faults_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use faults_support::{
    frontend, llm_request, until, wait_for_status, within_limit, Ledger, Link, Proxy, WorkerProcess,
};
use foreman_tokio::{
    HealthCause, OutlierDetection, PoolConfig, RecoveryPolicy, WorkerHealthStatus, WorkerPool,
    WorkerPoolError, WorkerPoolOptions,
};

/// Each request's deadline.
const DEADLINE_MS: u64 = 300;
/// The shortest and longest ejection.
const BASE_EJECTION: Duration = Duration::from_millis(400);
const MAX_EJECTION: Duration = Duration::from_millis(800);
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
const PROBE_TIMEOUT: Duration = Duration::from_millis(150);

fn config() -> PoolConfig {
    let detection = OutlierDetection::default()
        .with_consecutive_failures(1)
        .with_base_ejection(BASE_EJECTION)
        .with_max_ejection(MAX_EJECTION)
        .with_jitter_permille(0)
        .with_trial_permits(1)
        .with_success_threshold(1);
    PoolConfig::new(WorkerPoolOptions {
        health_probe_interval: PROBE_INTERVAL,
        ..WorkerPoolOptions::default()
    })
    .with_probe_timeout(PROBE_TIMEOUT)
    .with_recovery(RecoveryPolicy::OutlierDetection(detection))
}

async fn status_of(pool: &WorkerPool, worker: usize) -> WorkerHealthStatus {
    pool.health_snapshot().await[worker].status
}

/// Submits one request after another until `stop` says so; answers the
/// ledger, with each timed-out request's time.
async fn steady_load(
    pool: Arc<WorkerPool>,
    prefix: &'static str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Ledger, Vec<Duration>) {
    let mut ledger = Ledger::default();
    let mut timeouts = Vec::new();
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        let id = format!("{prefix}{n}");
        n += 1;
        ledger.submitted(&id);
        let began = Instant::now();
        let answer = pool.submit(llm_request(&id, Some(DEADLINE_MS))).await;
        if matches!(answer, Err(WorkerPoolError::Timeout)) {
            timeouts.push(began.elapsed());
        }
        ledger.answered(&id, answer);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (ledger, timeouts)
}

/// Runs the scenario: `partition` silences worker 0, `heal` ends it.
async fn partition_and_heal(
    endpoint_of_worker_0: &str,
    silent: &WorkerProcess,
    other: &WorkerProcess,
    partition: impl FnOnce(),
    heal: impl FnOnce(),
) {
    let pool = frontend(&[endpoint_of_worker_0, &other.endpoint], config());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(steady_load(pool.clone(), "p", Arc::clone(&stop)));
    until(Duration::from_secs(10), "both workers serve", || {
        pool.stats().counters.succeeded >= 6
    })
    .await;
    let silent_since = Instant::now();
    partition();
    // A probe through the partition does not answer.
    let probe = faults_support::remote_worker(endpoint_of_worker_0);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), probe.probe_health())
            .await
            .is_err(),
        "a probe through the partition answers nothing"
    );
    wait_for_status(
        &pool,
        0,
        WorkerHealthStatus::Unavailable,
        Duration::from_secs(5),
    )
    .await;
    let ejected_after = silent_since.elapsed();
    // Stay silent past the longest ejection: the half-open trials (the
    // probes) fail and the worker stays out of rotation.
    tokio::time::sleep(MAX_EJECTION + PROBE_INTERVAL).await;
    assert_eq!(status_of(&pool, 0).await, WorkerHealthStatus::Unavailable);
    let healed_at = pool.health_history().len();
    heal();
    let healed = Instant::now();
    wait_for_status(
        &pool,
        0,
        WorkerHealthStatus::Healthy,
        Duration::from_secs(5),
    )
    .await;
    let back_after = healed.elapsed();
    // It serves again.
    let served_before = silent.stats().await.answered;
    faults_support::stats_until(
        &silent.endpoint,
        Duration::from_secs(5),
        "worker 0 serves again",
        |stats| stats.answered > served_before,
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let (ledger, timeouts) = load.await.expect("joined");
    ledger.check_each_answered_once();
    let history = pool.health_history();
    let worker_0: Vec<_> = history
        .iter()
        .filter(|t| t.worker_id == "worker-0")
        .map(|t| (t.from, t.to, t.cause))
        .collect();
    println!(
        "ejected {ejected_after:?} after the partition began; back {back_after:?} after it healed; {} timeouts {timeouts:?}; worker 0's history {worker_0:?}; successes {:?}",
        timeouts.len(),
        ledger.successes_by_worker()
    );
    // Every failure is a timeout at the deadline, not before, and not much
    // after.
    let failures = ledger.failures();
    assert_eq!(failures.len(), timeouts.len(), "{failures:?}");
    assert!(!timeouts.is_empty());
    for took in &timeouts {
        assert!(*took >= Duration::from_millis(DEADLINE_MS), "{took:?}");
        assert!(
            *took < Duration::from_millis(DEADLINE_MS + 2_000),
            "{took:?}"
        );
    }
    // Ejected by a timeout (or a probe's), back through half-open: the
    // last transitions after healing are Unavailable → Degraded
    // (ejection expired), then Degraded → Healthy.
    let first_ejection = worker_0
        .iter()
        .find(|(_, to, _)| *to == WorkerHealthStatus::Unavailable)
        .expect("an ejection");
    assert!(
        matches!(
            first_ejection.2,
            HealthCause::Timeout | HealthCause::ProbeTimeout
        ),
        "{first_ejection:?}"
    );
    let after_heal: Vec<_> = history[healed_at..]
        .iter()
        .filter(|t| t.worker_id == "worker-0")
        .map(|t| (t.from, t.to, t.cause))
        .collect();
    let half_open = after_heal
        .iter()
        .position(|(from, to, cause)| {
            (*from, *to, *cause)
                == (
                    WorkerHealthStatus::Unavailable,
                    WorkerHealthStatus::Degraded,
                    HealthCause::EjectionExpired,
                )
        })
        .unwrap_or_else(|| panic!("half-open after healing: {after_heal:?}"));
    assert_eq!(
        after_heal.last().map(|(_, to, _)| *to),
        Some(WorkerHealthStatus::Healthy)
    );
    assert!(
        after_heal[half_open..]
            .iter()
            .any(|(from, to, _)| (*from, *to)
                == (WorkerHealthStatus::Degraded, WorkerHealthStatus::Healthy)),
        "{after_heal:?}"
    );
    // The other worker never failed.
    assert!(history
        .iter()
        .filter(|t| t.worker_id == "worker-1")
        .all(|t| t.to == WorkerHealthStatus::Healthy));
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_link_ejects_the_worker_and_it_returns_through_half_open_once_healed() {
    within_limit(async {
        let silent = WorkerProcess::start(&["--mode", "sleep:20"]).await;
        let other = WorkerProcess::start(&["--mode", "sleep:20"]).await;
        let proxy = Proxy::start(silent.addr).await;
        partition_and_heal(
            &proxy.endpoint,
            &silent,
            &other,
            || proxy.set(Link::Stalled),
            || proxy.set(Link::Open),
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_process_is_ejected_and_returns_through_half_open_once_continued() {
    within_limit(async {
        let silent = WorkerProcess::start(&["--mode", "sleep:20"]).await;
        let other = WorkerProcess::start(&["--mode", "sleep:20"]).await;
        partition_and_heal(
            &silent.endpoint,
            &silent,
            &other,
            || silent.signal("STOP"),
            || silent.signal("CONT"),
        )
        .await;
    })
    .await;
}
