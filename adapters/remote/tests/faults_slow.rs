//! A slow worker process: late binding keeps it from holding the other
//! workers' share of the queue, so the requests the fast workers answer
//! keep their latency; and a request with a 200 ms deadline on the slow
//! worker times out at its deadline, not at the end of the slow run, and
//! the worker's server drops its handler.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use faults_support::{
    frontend, llm_request, percentile, stats_until, within_limit, Ledger, WorkerProcess,
};
use foreman_remote::protocol::StatsBody;
use foreman_tokio::{PoolConfig, WorkerPool, WorkerPoolError, WorkerPoolOptions};

mod faults_support;

/// The fast workers' run time.
const FAST_MS: u64 = 20;
/// The slow worker's run time.
const SLOW_MS: u64 = 1_000;
/// Callers, each submitting its requests one after another.
const CALLERS: usize = 4;
/// Requests per caller.
const PER_CALLER: usize = 10;

/// Runs the closed loop on `pool`; answers the latency of each request
/// answered by a worker other than `worker-0` when `skip_first`, and the
/// number `worker-0` answered.
async fn closed_loop(
    pool: &Arc<WorkerPool>,
    run: &str,
    skip_first: bool,
) -> (Vec<Duration>, usize) {
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let pool = Arc::clone(pool);
            let run = run.to_string();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for n in 0..PER_CALLER {
                    let id = format!("{run}-{caller}-{n}");
                    let began = Instant::now();
                    let answer = pool.submit(llm_request(&id, Some(10_000))).await;
                    answers.push((id, began.elapsed(), answer));
                }
                answers
            })
        })
        .collect();
    let mut ledger = Ledger::default();
    let mut latencies = Vec::new();
    let mut first_worker = 0;
    for caller in callers {
        for (id, latency, answer) in caller.await.expect("joined") {
            ledger.submitted(&id);
            let response = answer.as_ref().expect("every request succeeds");
            if skip_first && response.worker_id == "worker-0" {
                first_worker += 1;
            } else {
                latencies.push(latency);
            }
            ledger.answered(&id, answer);
        }
    }
    ledger.check_each_answered_once();
    (latencies, first_worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_binding_keeps_the_fast_workers_p99_flat_beside_a_slow_worker() {
    within_limit(async {
        let fast_mode = format!("sleep:{FAST_MS}");
        let slow_mode = format!("sleep:{SLOW_MS}");
        let slow = WorkerProcess::start(&["--mode", &slow_mode]).await;
        let fast = [
            WorkerProcess::start(&["--mode", &fast_mode]).await,
            WorkerProcess::start(&["--mode", &fast_mode]).await,
        ];
        let options = WorkerPoolOptions::default;
        let baseline_pool = frontend(
            &[&fast[0].endpoint, &fast[1].endpoint],
            PoolConfig::new(options()),
        );
        // Warm the connections, then measure.
        closed_loop(&baseline_pool, "warm", false).await;
        let (baseline, _) = closed_loop(&baseline_pool, "baseline", false).await;
        baseline_pool.shutdown().await;
        let mixed_pool = frontend(
            &[&slow.endpoint, &fast[0].endpoint, &fast[1].endpoint],
            PoolConfig::new(options()),
        );
        let began = Instant::now();
        let (others, slow_answered) = closed_loop(&mixed_pool, "mixed", true).await;
        let took = began.elapsed();
        let requeued = mixed_pool.stats().counters.requeued;
        mixed_pool.shutdown().await;
        let (base_p99, mixed_p99) = (percentile(&baseline, 99), percentile(&others, 99));
        println!(
            "baseline p50 {:?} p99 {base_p99:?} ({} requests); beside the slow worker p50 {:?} p99 {mixed_p99:?} ({} requests), the slow worker ran {slow_answered}, requeued {requeued}, run took {took:?}",
            percentile(&baseline, 50),
            baseline.len(),
            percentile(&others, 50),
            others.len(),
        );
        // The slow worker runs a request only when it is free (none waits
        // for it): at most one per slow run of the whole loop, plus one.
        let slow_stats = slow.stats().await;
        assert_eq!(slow_stats.started as usize, slow_answered);
        let slow_runs = (took.as_millis() / u128::from(SLOW_MS)) as usize;
        assert!(
            (1..=slow_runs + 1).contains(&slow_answered),
            "{slow_answered} slow runs in {took:?}"
        );
        // Nothing waits behind the slow run: the fast workers' p99 stays
        // within a generous factor of the run without the slow worker, and
        // far below the slow run.
        assert!(
            mixed_p99 <= base_p99 * 3 + Duration::from_millis(100),
            "p99 {mixed_p99:?} against {base_p99:?}"
        );
        assert!(mixed_p99 < Duration::from_millis(SLOW_MS / 2), "{mixed_p99:?}");
    })
    .await;
}

/// Submits `request` (a 200 ms deadline) to `pool`, whose one worker is
/// `slow`: asserts it times out at 200 ms (not before, and long before
/// the slow run ends) and that `slow`'s server ends the run within 2 s;
/// answers the time taken and the server's stats then.
async fn times_out_at_200ms(
    pool: &WorkerPool,
    slow: &WorkerProcess,
    request: foreman_tokio::WorkerRequest,
) -> (Duration, StatsBody) {
    let started = slow.stats().await.started;
    let began = Instant::now();
    let answer = pool.submit(request).await;
    let took = began.elapsed();
    assert!(
        matches!(answer, Err(WorkerPoolError::Timeout)),
        "{answer:?}"
    );
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_millis(1_500), "{took:?}");
    let stats = stats_until(
        &slow.endpoint,
        Duration::from_secs(2),
        "the server ends the run",
        |s| s.in_flight == 0 && s.started == started + 1,
    )
    .await;
    (took, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200ms_deadline_on_a_slow_worker_times_out_at_200ms_and_the_server_drops_the_handler() {
    within_limit(async {
        let slow = WorkerProcess::start(&["--mode", "sleep:3000ms"]).await;
        let pool = frontend(
            &[&slow.endpoint],
            PoolConfig::new(WorkerPoolOptions::default()),
        );
        // A first request opens the connection, so the timed one measures
        // the deadline alone.
        pool.submit(llm_request("warm", Some(100)))
            .await
            .expect_err("times out");
        stats_until(
            &slow.endpoint,
            Duration::from_secs(5),
            "the warm-up ends",
            |s| s.in_flight == 0,
        )
        .await;
        let before = slow.stats().await;
        // The server ends the run too, long before its 3 s sleep: the
        // deadline header stops it there, or the frontend's closed
        // connection does, whichever it sees first.
        let (took, after) =
            times_out_at_200ms(&pool, &slow, llm_request("deadline", Some(200))).await;
        println!("timed out after {took:?}; server stats before {before:?}, after {after:?}");
        assert_eq!(
            (after.dropped - before.dropped) + (after.answered - before.answered),
            1
        );
        // A request with no `timeout_ms` gets the pool's default budget,
        // and the header carries what is left of it too: the same race.
        let default_only = frontend(
            &[&slow.endpoint],
            PoolConfig::new(WorkerPoolOptions {
                default_request_timeout: Some(Duration::from_millis(200)),
                ..WorkerPoolOptions::default()
            }),
        );
        let (took, last) =
            times_out_at_200ms(&default_only, &slow, llm_request("default-deadline", None)).await;
        println!("pool default deadline: timed out after {took:?}; server stats {last:?}");
        assert_eq!(
            (last.dropped - after.dropped) + (last.answered - after.answered),
            1
        );
        default_only.shutdown().await;
        let counters = pool.stats().counters;
        assert_eq!(counters.timed_out_running, 2);
        pool.shutdown().await;
    })
    .await;
}
