//! Recovery under outlier detection: ejection on consecutive failures or a
//! failure rate, backoff, half-open trials, the ejection cap and its panic
//! modes, failure classification; and requests a handler refused before
//! starting them.

use std::time::Duration;

use foreman_core::{
    Action, Event, FailureClasses, OutlierDetection, PanicMode, PoolConfig, RecoveryPolicy,
    RequestKey, Time, TimeoutReason, WorkerErrorCode, WorkerHealthStatus, WorkerKey,
    WorkerPoolError, WorkerPoolOptions, WorkerProtocolError,
};
use serde_json::json;

use crate::harness::{failure, ms, options, request, run_probe, with_timeout, Harness};

use WorkerHealthStatus::{Degraded, Healthy, Unavailable};

/// Outlier detection with no jitter, 1 s base and 8 s cap, ejecting after
/// `consecutive` failures, the rate rule out of reach, one success closing.
fn tuning(consecutive: u32) -> OutlierDetection {
    OutlierDetection::default()
        .with_consecutive_failures(consecutive)
        .with_window(64)
        .with_min_volume(64)
        .with_failure_rate_percent(100)
        .with_base_ejection(Duration::from_secs(1))
        .with_max_ejection(Duration::from_secs(8))
        .with_jitter_permille(0)
        .with_success_threshold(1)
        .with_max_ejected_percent(100)
}

/// `workers` workers under `tuning`, probes far apart (1000 s).
fn pool(tuning: OutlierDetection, workers: usize) -> Harness {
    let options = WorkerPoolOptions {
        health_probe_interval: Duration::from_secs(1000),
        ..options()
    };
    let config = PoolConfig::new(options).with_recovery(RecoveryPolicy::OutlierDetection(tuning));
    Harness::with_config(config, workers)
}

/// Submits a request at `now` and returns it with the worker it started on.
fn start(h: &mut Harness, now: Time) -> (RequestKey, WorkerKey) {
    h.take_actions();
    let key = h.submit(now, &request("r")).expect("accepted");
    let started = h.started();
    let (_, worker) = started
        .into_iter()
        .find(|(request, _)| *request == key)
        .expect("started at once");
    (key, worker)
}

/// Runs one request at `now` that fails with `code`.
fn fail_with(h: &mut Harness, now: Time, code: WorkerErrorCode) -> WorkerKey {
    let (key, worker) = start(h, now);
    let error = WorkerProtocolError::new(code, "boom", true);
    assert!(h.complete(now, key, Err(error)));
    worker
}

/// Runs one request at `now` that fails.
fn fail(h: &mut Harness, now: Time) -> WorkerKey {
    fail_with(h, now, WorkerErrorCode::ExecutionFailed)
}

/// Runs one request at `now` that succeeds.
fn succeed(h: &mut Harness, now: Time) -> WorkerKey {
    let (key, worker) = start(h, now);
    assert!(h.complete(now, key, Ok(json!(1))));
    worker
}

fn next_expiry(h: &mut Harness) -> Option<Time> {
    match h.pool.poll_timeout() {
        Some((at, TimeoutReason::EjectionExpiry)) => Some(at),
        _ => None,
    }
}

#[test]
fn consecutive_failures_eject_a_worker_for_the_base_time() {
    let mut h = pool(tuning(3), 1);
    fail(&mut h, ms(0));
    fail(&mut h, ms(0));
    assert_eq!(h.status(0), Degraded);
    fail(&mut h, ms(10));
    assert_eq!(h.status(0), Unavailable);
    assert_eq!(h.pool.stats().counters.ejections, 1);
    assert_eq!(next_expiry(&mut h), Some(ms(1_010)));
    assert_eq!(
        h.submit(ms(20), &request("x")),
        Err(WorkerPoolError::NoHealthyWorker)
    );
    h.tick(ms(1_009));
    assert_eq!(h.status(0), Unavailable, "not before its time");
    h.tick(ms(1_010));
    assert_eq!(h.status(0), Degraded, "half-open");
}

#[test]
fn a_success_between_failures_resets_the_streak() {
    let mut h = pool(tuning(3), 1);
    fail(&mut h, ms(0));
    fail(&mut h, ms(0));
    succeed(&mut h, ms(0));
    fail(&mut h, ms(0));
    fail(&mut h, ms(0));
    assert_eq!(h.status(0), Degraded, "the window still holds failures");
    assert_eq!(h.pool.stats().counters.ejections, 0);
}

#[test]
fn a_failure_rate_ejects_only_once_the_window_holds_the_minimum_volume() {
    let tuning = tuning(100)
        .with_window(10)
        .with_min_volume(6)
        .with_failure_rate_percent(50);
    let mut h = pool(tuning, 1);
    for _ in 0..5 {
        fail(&mut h, ms(0));
    }
    assert_eq!(h.status(0), Degraded, "5 of 5 failed, below the volume");
    fail(&mut h, ms(0));
    assert_eq!(h.status(0), Unavailable, "6 of 6 failed");
    assert_eq!(h.pool.stats().counters.ejections, 1);
}

#[test]
fn a_failure_rate_below_the_threshold_never_ejects() {
    let tuning = tuning(100)
        .with_window(10)
        .with_min_volume(6)
        .with_failure_rate_percent(50);
    let mut h = pool(tuning, 1);
    for _ in 0..50 {
        fail(&mut h, ms(0));
        succeed(&mut h, ms(0));
        succeed(&mut h, ms(0));
    }
    assert_eq!(h.status(0), Degraded);
    assert_eq!(h.pool.stats().counters.ejections, 0);
}

#[test]
fn each_failed_trial_doubles_the_ejection_time_up_to_the_cap() {
    let mut h = pool(tuning(1), 1);
    let mut now = ms(0);
    let mut times = Vec::new();
    for _ in 0..6 {
        fail(&mut h, now);
        let until = next_expiry(&mut h).expect("ejected");
        times.push((until - now).as_millis());
        now = until;
        h.tick(now);
        assert_eq!(h.status(0), Degraded, "half-open at {now:?}");
    }
    assert_eq!(times, vec![1_000, 2_000, 4_000, 8_000, 8_000, 8_000]);
    assert_eq!(h.pool.stats().counters.ejections, 6);
}

#[test]
fn a_successful_trial_closes_the_worker() {
    let mut h = pool(tuning(1).with_success_threshold(2), 1);
    fail(&mut h, ms(0));
    h.tick(ms(1_000));
    assert_eq!(h.status(0), Degraded);
    succeed(&mut h, ms(1_000));
    assert_eq!(h.status(0), Degraded, "one of two successes");
    succeed(&mut h, ms(1_000));
    assert_eq!(h.status(0), Healthy);
    assert_eq!(h.pool.health()[0].consecutive_failures, 0);
}

#[test]
fn a_half_open_worker_holds_no_more_requests_than_its_permits() {
    let options = WorkerPoolOptions {
        health_probe_interval: Duration::from_secs(1000),
        queue_capacity: 8,
        ..options()
    };
    let config = PoolConfig::new(options)
        .with_max_concurrency_per_worker(4)
        .with_recovery(RecoveryPolicy::OutlierDetection(
            tuning(1).with_trial_permits(2).with_success_threshold(3),
        ));
    let mut h = Harness::with_config(config, 1);
    fail(&mut h, ms(0));
    h.tick(ms(1_000));
    let (first, _) = start(&mut h, ms(1_000));
    let (second, _) = start(&mut h, ms(1_000));
    assert_eq!(
        h.submit(ms(1_000), &request("third")),
        Err(WorkerPoolError::QueueFull),
        "two permits, both in use"
    );
    assert!(h.complete(ms(1_001), first, Ok(json!(1))));
    start(&mut h, ms(1_001));
    assert!(h.complete(ms(1_002), second, Ok(json!(1))));
    assert_eq!(h.status(0), Degraded);
}

#[test]
fn a_failed_trial_ejects_again_for_the_next_backoff() {
    let mut h = pool(tuning(1).with_success_threshold(2), 1);
    fail(&mut h, ms(0));
    h.tick(ms(1_000));
    succeed(&mut h, ms(1_000));
    fail(&mut h, ms(1_500));
    assert_eq!(h.status(0), Unavailable);
    assert_eq!(next_expiry(&mut h), Some(ms(3_500)));
}

#[test]
fn the_multiplier_decays_after_sustained_health() {
    let tuning = tuning(1).with_decay_after(Duration::from_secs(10));
    let mut h = pool(tuning, 1);
    fail(&mut h, ms(0));
    h.tick(ms(1_000));
    fail(&mut h, ms(1_000));
    assert_eq!(next_expiry(&mut h), Some(ms(3_000)), "2 s: second ejection");
    h.tick(ms(3_000));
    succeed(&mut h, ms(3_000));
    assert_eq!(h.status(0), Healthy);
    // 20 s closed: two doublings off the exponent of 2.
    fail(&mut h, ms(23_000));
    assert_eq!(next_expiry(&mut h), Some(ms(24_000)), "back to the base");
}

#[test]
fn jitter_lengthens_an_ejection_by_at_most_its_permille() {
    for seed in 0..50 {
        let options = WorkerPoolOptions {
            health_probe_interval: Duration::from_secs(1000),
            ..options()
        };
        let config = PoolConfig::new(options).with_seed(seed).with_recovery(
            RecoveryPolicy::OutlierDetection(tuning(1).with_jitter_permille(200)),
        );
        let mut h = Harness::with_config(config, 1);
        fail(&mut h, ms(0));
        let until = next_expiry(&mut h).expect("ejected");
        assert!(until >= ms(1_000) && until <= ms(1_200), "{until:?}");
    }
}

#[test]
fn at_the_cap_route_to_all_keeps_the_worker_in_rotation() {
    let tuning = tuning(1).with_max_ejected_percent(50);
    let mut h = pool(tuning, 4);
    let mut ejected = Vec::new();
    for _ in 0..2 {
        ejected.push(fail(&mut h, ms(0)));
    }
    let held = fail(&mut h, ms(0));
    assert!(!ejected.contains(&held));
    let health = h.pool.health();
    let statuses: Vec<_> = health.iter().map(|worker| worker.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == Unavailable).count(),
        2,
        "{statuses:?}"
    );
    let counters = h.pool.stats().counters;
    assert_eq!((counters.ejections, counters.ejection_panics), (2, 1));
    assert_eq!(h.pool.worker_health(held).map(|w| w.status), Some(Degraded));
    // The held worker still takes requests.
    h.take_actions();
    h.submit(ms(1), &request("a")).unwrap();
    h.submit(ms(1), &request("b")).unwrap();
    let workers: Vec<_> = h.started().into_iter().map(|(_, w)| w).collect();
    assert!(workers.contains(&held), "{workers:?}");
}

#[test]
fn at_the_cap_fail_fast_ejects_beyond_it_and_refuses_submits() {
    let tuning = tuning(1)
        .with_max_ejected_percent(50)
        .with_panic_mode(PanicMode::FailFast);
    let mut h = pool(tuning, 2);
    fail(&mut h, ms(0));
    fail(&mut h, ms(0));
    let statuses: Vec<_> = h.pool.health().iter().map(|w| w.status).collect();
    assert_eq!(statuses, vec![Unavailable, Unavailable]);
    let counters = h.pool.stats().counters;
    assert_eq!((counters.ejections, counters.ejection_panics), (2, 1));
    assert_eq!(
        h.submit(ms(1), &request("x")),
        Err(WorkerPoolError::NoHealthyWorker)
    );
    // The ejections end by themselves: the pool is not stranded.
    h.tick(ms(1_000));
    succeed(&mut h, ms(1_000));
}

#[test]
fn invalid_requests_cancellations_and_shutdown_never_count_against_a_worker() {
    let mut h = pool(tuning(1), 1);
    fail_with(&mut h, ms(0), WorkerErrorCode::InvalidRequest);
    fail_with(&mut h, ms(0), WorkerErrorCode::Cancelled);
    let (key, _) = start(&mut h, ms(0));
    assert!(h.cancel(ms(1), key));
    start(&mut h, ms(2));
    h.pool.begin_shutdown(ms(2), Some(Duration::ZERO));
    h.tick(ms(2));
    assert_eq!(h.pool.stats().counters.ejections, 0);
    assert_eq!(h.pool.health()[0].consecutive_failures, 0);
}

#[test]
fn only_the_configured_error_codes_count() {
    let counted = FailureClasses::NONE.with(WorkerErrorCode::Timeout);
    let mut h = pool(tuning(1).with_counted(counted), 1);
    fail_with(&mut h, ms(0), WorkerErrorCode::ExecutionFailed);
    assert_eq!(h.status(0), Healthy);
    fail_with(&mut h, ms(0), WorkerErrorCode::Timeout);
    assert_eq!(h.status(0), Unavailable);
}

#[test]
fn the_reference_policy_counts_every_handler_error() {
    let mut h = Harness::new(options(), 1);
    fail_with(&mut h, ms(0), WorkerErrorCode::InvalidRequest);
    assert_eq!(h.pool.health()[0].consecutive_failures, 1);
    assert_eq!(h.status(0), Degraded);
    assert_eq!(next_expiry(&mut h), None, "no ejection timer");
}

#[test]
fn a_healthy_probe_counts_as_a_successful_trial() {
    let options = WorkerPoolOptions {
        health_probe_interval: Duration::from_secs(5),
        ..options()
    };
    let config =
        PoolConfig::new(options).with_recovery(RecoveryPolicy::OutlierDetection(tuning(1)));
    let mut h = Harness::with_config(config, 1);
    fail(&mut h, ms(0));
    h.tick(ms(1_000));
    assert_eq!(h.status(0), Degraded);
    h.tick(ms(5_000));
    let (worker, probe) = run_probe(&mut h);
    assert!(h
        .pool
        .handle_probe_result(ms(5_001), worker, probe, Healthy));
    h.drain();
    assert_eq!(h.status(0), Healthy);
}

#[test]
fn a_refused_request_moves_to_another_worker_without_a_penalty() {
    let mut h = Harness::new(options(), 2);
    let (key, first) = start(&mut h, ms(0));
    h.take_events();
    h.take_actions();
    assert!(h.pool.handle_refusal(ms(1), key));
    h.drain();
    let restarted = h.started();
    assert_eq!(restarted.len(), 1);
    let (again, second) = restarted[0];
    assert_eq!(again, key);
    assert_ne!(second, first);
    assert!(h.take_events().iter().any(|event| matches!(
        event,
        Event::Requeued { request, from, to } if *request == key && *from == first && *to == second
    )));
    assert!(h.answers().is_empty(), "not answered yet");
    assert!(h.complete(ms(2), key, Ok(json!(1))));
    assert_eq!(h.answers().len(), 1, "exactly one answer");
    let stats = h.pool.stats();
    assert_eq!(stats.counters.refused_not_started, 1);
    assert!(h.pool.health().iter().all(|w| w.consecutive_failures == 0));
    assert!(h.pool.health().iter().all(|w| w.status == Healthy));
}

#[test]
fn a_refusing_worker_takes_no_new_request_until_a_probe_answers() {
    let mut h = Harness::new(options(), 1);
    let (key, worker) = start(&mut h, ms(0));
    h.take_actions();
    assert!(h.pool.handle_refusal(ms(1), key));
    h.drain();
    assert!(h.started().is_empty(), "the saturated worker waits");
    assert!(!h.pool.handle_refusal(ms(1), key), "no longer running");
    h.tick(ms(5_000));
    let (probed, probe) = run_probe(&mut h);
    assert_eq!(probed, worker);
    h.take_actions();
    assert!(h
        .pool
        .handle_probe_result(ms(5_001), probed, probe, Healthy));
    h.drain();
    assert_eq!(h.started(), vec![(key, worker)]);
    assert_eq!(h.status(0), Healthy);
}

#[test]
fn a_refused_request_still_times_out_at_its_deadline() {
    let mut h = Harness::new(options(), 1);
    h.take_actions();
    let key = h.submit(ms(0), &with_timeout("t", 100)).unwrap();
    h.take_actions();
    assert!(h.pool.handle_refusal(ms(1), key));
    h.drain();
    h.tick(ms(100));
    let answers = h.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].result, Err(WorkerPoolError::Timeout));
    assert_eq!(h.pool.health()[0].consecutive_failures, 0);
    assert!(!h
        .take_actions()
        .iter()
        .any(|action| matches!(action, Action::Start { .. })));
}

#[test]
fn outlier_detection_settings_out_of_range_are_refused_by_name() {
    let config = PoolConfig::default().with_recovery(RecoveryPolicy::OutlierDetection(
        OutlierDetection::default().with_min_volume(100),
    ));
    let error = config.validate().unwrap_err();
    assert!(error.to_string().contains("min_volume"), "{error}");
    let _ = failure();
}

#[test]
fn a_refused_request_pinned_by_round_robin_moves_to_the_next_worker() {
    let config = PoolConfig::new(options()).with_routing(foreman_core::RoutingPolicy::RoundRobin);
    let mut h = Harness::with_config(config, 2);
    let (key, first) = start(&mut h, ms(0));
    h.take_actions();
    assert!(h.pool.handle_refusal(ms(1), key));
    h.drain();
    let started = h.started();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].0, key);
    assert_ne!(started[0].1, first);
    assert_eq!(h.pool.stats().counters.refused_not_started, 1);
}

#[test]
fn a_refused_request_that_late_binding_moved_is_queued_once() {
    // r4 waits on worker 0 and worker 1 frees first: late binding starts
    // it there, leaving worker 0's queue entry behind; worker 1 then
    // refuses it.
    let mut h = Harness::new(options(), 2);
    let keys: Vec<_> = (0..3)
        .map(|i| h.submit(ms(0), &request(&format!("r{i}"))).unwrap())
        .collect();
    let started = h.started();
    let on = |key| started.iter().find(|(k, _)| *k == key).map(|(_, w)| *w);
    // The request queued behind a busy worker; the other one frees first.
    let (first, second) = (on(keys[0]).unwrap(), on(keys[1]).unwrap());
    let queued_on = h
        .pool
        .stats()
        .workers
        .iter()
        .position(|w| w.queued == 1)
        .unwrap();
    let (busy, freed, free_key) = if h.worker(queued_on) == first {
        (first, second, keys[1])
    } else {
        (second, first, keys[0])
    };
    h.complete(ms(1), free_key, Ok(serde_json::Value::Null));
    assert_eq!(h.started().last(), Some(&(keys[2], freed)));
    // Refused there, it goes back to the worker it first queued on.
    assert!(h.pool.handle_refusal(ms(2), keys[2]));
    h.drain();
    h.pool
        .check_invariants()
        .expect("the refused request is queued once");
    let _ = busy;
    assert!(h.pool.cancel(ms(3), keys[2]));
    h.drain();
    assert_eq!(h.answers().len(), 2);
}

#[test]
fn a_request_keeps_its_payload_for_the_driver_until_its_answer() {
    let mut h = Harness::new(options(), 2);
    let (key, _) = start(&mut h, ms(0));
    let payload = h.pool.payload(key).copied();
    assert!(payload.is_some(), "a running request's payload");
    assert!(h.pool.handle_refusal(ms(1), key));
    assert_eq!(
        h.pool.payload(key).copied(),
        payload,
        "kept while it waits again"
    );
    h.drain();
    assert!(h.complete(ms(2), key, Ok(json!(1))));
    assert_eq!(h.pool.payload(key), None, "given back with the answer");
}
