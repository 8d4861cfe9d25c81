//! Health: failures degrade and eject a worker, successes restore it, and
//! probes vote (every interval, timing out, never whitewashing failures).

use std::time::Duration;

use foreman_core::{
    Action, HealthCause, PoolConfig, TimeoutReason, WorkerHealthStatus, WorkerKey, WorkerPoolError,
    WorkerPoolOptions,
};

use crate::harness::{failure, ms, options, request, run_probe, Harness};

#[test]
fn consecutive_failures_degrade_then_eject_and_success_restores() {
    let mut h = Harness::new(options(), 1);
    for round in 0..3 {
        let key = h.submit(ms(round), &request("f")).unwrap();
        h.complete(ms(round), key, Err(failure()));
        let answer = h.answers().pop().unwrap();
        assert_eq!(answer.result, Err(WorkerPoolError::Worker(failure())));
        let expected = if round < 2 {
            WorkerHealthStatus::Degraded
        } else {
            WorkerHealthStatus::Unavailable
        };
        assert_eq!(h.status(0), expected);
    }
    assert_eq!(h.pool.health()[0].consecutive_failures, 3);
    assert_eq!(
        h.submit(ms(5), &request("x")),
        Err(WorkerPoolError::NoHealthyWorker)
    );
    let transitions = h.health_changes();
    assert_eq!(
        transitions,
        vec![
            (
                WorkerHealthStatus::Healthy,
                WorkerHealthStatus::Degraded,
                HealthCause::Failure
            ),
            (
                WorkerHealthStatus::Degraded,
                WorkerHealthStatus::Unavailable,
                HealthCause::Failure
            ),
        ]
    );
}

#[test]
fn probes_run_every_interval_and_report_their_time() {
    let mut config = PoolConfig::new(options());
    config.unix_epoch_ms = 1_000_000;
    let mut h = Harness::with_config(config, 1);
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(5_000), TimeoutReason::ProbeDue))
    );
    h.tick(ms(5_000));
    let (worker, probe) = run_probe(&mut h);
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(10_000), TimeoutReason::ProbeTimeout))
    );
    assert!(h
        .pool
        .handle_probe_result(ms(5_010), worker, probe, WorkerHealthStatus::Healthy));
    h.drain();
    assert!(
        !h.pool
            .handle_probe_result(ms(5_011), worker, probe, WorkerHealthStatus::Unavailable),
        "answered once"
    );
    assert_eq!(h.pool.health()[0].last_probe_unix_ms, Some(1_005_010));
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(10_000), TimeoutReason::ProbeDue))
    );
}

/// One worker whose first probe (sent at 5 s) timed out at 6 s, its
/// actions still in the harness.
fn timed_out_probe() -> (Harness, WorkerKey, foreman_core::ProbeKey) {
    let mut config = PoolConfig::new(options());
    config.probe_timeout = Duration::from_secs(1);
    let mut h = Harness::with_config(config, 1);
    h.tick(ms(5_000));
    let (worker, probe) = run_probe(&mut h);
    h.tick(ms(6_000));
    (h, worker, probe)
}

#[test]
fn a_hanging_probe_times_out_counts_as_failed_and_probing_goes_on() {
    let (mut h, worker, probe) = timed_out_probe();
    let actions = h.take_actions();
    assert!(
        matches!(actions[0], Action::AbortProbe { worker: w, probe: p } if w == worker && p == probe)
    );
    assert_eq!(h.status(0), WorkerHealthStatus::Unavailable);
    assert_eq!(h.pool.counters().probes_timed_out, 1);
    assert!(
        !h.pool
            .handle_probe_result(ms(6_001), worker, probe, WorkerHealthStatus::Healthy),
        "too late"
    );
    h.tick(ms(10_000));
    let (worker, probe) = run_probe(&mut h);
    h.pool
        .handle_probe_result(ms(10_001), worker, probe, WorkerHealthStatus::Healthy);
    h.drain();
    assert_eq!(
        h.status(0),
        WorkerHealthStatus::Healthy,
        "a later healthy probe restores it"
    );
}

#[test]
fn a_healthy_probe_gives_an_ejected_worker_one_trial_not_a_clean_slate() {
    let mut h = Harness::new(options(), 1);
    for i in 0..3 {
        let key = h.submit(ms(i), &request("f")).unwrap();
        h.complete(ms(i), key, Err(failure()));
    }
    assert_eq!(h.status(0), WorkerHealthStatus::Unavailable);
    h.tick(ms(5_000));
    let (worker, probe) = run_probe(&mut h);
    h.pool
        .handle_probe_result(ms(5_001), worker, probe, WorkerHealthStatus::Healthy);
    h.drain();
    assert_eq!(h.status(0), WorkerHealthStatus::Degraded);
    let key = h.submit(ms(5_002), &request("trial")).unwrap();
    h.complete(ms(5_003), key, Err(failure()));
    assert_eq!(
        h.status(0),
        WorkerHealthStatus::Unavailable,
        "one more failure ejects it again"
    );
}

#[test]
fn a_probe_cannot_erase_failures_that_happened_after_it_was_sent() {
    let mut h = Harness::new(
        WorkerPoolOptions {
            unavailable_after_failures: 1,
            ..options()
        },
        1,
    );
    h.tick(ms(5_000));
    let (worker, probe) = run_probe(&mut h);
    let key = h.submit(ms(5_001), &request("f")).unwrap();
    h.complete(ms(5_002), key, Err(failure()));
    assert_eq!(h.status(0), WorkerHealthStatus::Unavailable);
    h.pool
        .handle_probe_result(ms(5_003), worker, probe, WorkerHealthStatus::Healthy);
    h.drain();
    assert_eq!(h.status(0), WorkerHealthStatus::Unavailable);
}

#[test]
fn a_probe_saying_unavailable_ejects_until_a_probe_says_otherwise() {
    let mut h = Harness::new(options(), 1);
    h.tick(ms(5_000));
    let (worker, probe) = run_probe(&mut h);
    h.pool
        .handle_probe_result(ms(5_001), worker, probe, WorkerHealthStatus::Unavailable);
    h.drain();
    assert_eq!(
        h.submit(ms(5_002), &request("x")),
        Err(WorkerPoolError::NoHealthyWorker)
    );
}

#[test]
fn a_late_answer_to_a_timed_out_probe_is_ignored_while_the_next_one_runs() {
    let (mut h, worker, first) = timed_out_probe();
    h.take_actions();
    h.tick(ms(10_000));
    let (_, second) = run_probe(&mut h);
    assert_ne!(first, second, "every probe has its own key");
    assert!(!h
        .pool
        .handle_probe_result(ms(10_001), worker, first, WorkerHealthStatus::Healthy));
    h.drain();
    assert_eq!(h.status(0), WorkerHealthStatus::Unavailable, "still");
    assert!(h
        .pool
        .handle_probe_result(ms(10_002), worker, second, WorkerHealthStatus::Healthy));
    h.drain();
    assert_eq!(h.status(0), WorkerHealthStatus::Healthy);
    let counters = h.pool.counters();
    assert_eq!((counters.probes_sent, counters.probes_timed_out), (2, 1));
}
