//! Deadlines by phase: a queue-wait limit takes a waiting request out of
//! its queue, a run limit aborts a running one and charges its worker, the
//! earliest of them and the overall deadline fires, and the pool's defaults
//! apply unless a request sets its own.

use std::time::Duration;

use foreman_core::{
    Action, Answer, Phase, PhaseLimits, PoolConfig, Time, TimeoutLimit, TimeoutReason,
    WorkerHealthStatus, WorkerPoolError, WorkerPoolOptions,
};
use serde_json::json;

use crate::harness::{ms, options, request, with_timeout, Harness};

fn queue_wait(millis: u64) -> PhaseLimits {
    PhaseLimits::new().with_queue_wait(Duration::from_millis(millis))
}

fn run(millis: u64) -> PhaseLimits {
    PhaseLimits::new().with_run(Duration::from_millis(millis))
}

/// The one answer among the actions so far, which must be a `Timeout`.
fn timed_out(h: &mut Harness) -> Answer<u32> {
    let mut answers = h.answers();
    assert_eq!(answers.len(), 1, "{answers:?}");
    let answer = answers.remove(0);
    assert_eq!(answer.result, Err(WorkerPoolError::Timeout));
    answer
}

#[test]
fn a_queue_wait_limit_takes_the_request_out_of_its_queue_and_charges_no_worker() {
    let mut h = Harness::new(options(), 1);
    let busy = h.submit(ms(0), &request("busy")).unwrap();
    let waiting = h
        .submit_limited(ms(10), &request("waiting"), queue_wait(50))
        .unwrap();
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(60), TimeoutReason::QueueWaitLimit))
    );
    h.take_actions();
    h.take_events();
    h.tick(ms(59));
    assert!(h.actions.is_empty(), "a limit never fires early");
    h.tick(ms(60));
    let answer = timed_out(&mut h);
    assert_eq!(answer.request, waiting);
    assert_eq!(answer.phase, Phase::Queued);
    assert_eq!(answer.limit, Some(TimeoutLimit::QueueWait));
    assert_eq!(answer.queued_for, Duration::from_millis(50));
    assert_eq!(answer.ran_for, None);
    assert_eq!(h.status(0), WorkerHealthStatus::Healthy);
    assert!(h.health_changes().is_empty(), "no worker is charged");
    assert_eq!(h.pool.counters().timed_out_queued, 1);
    assert_eq!(h.pool.health()[0].consecutive_failures, 0);
    // It left the queue at once: its room is free again (2 queued fit)...
    h.submit(ms(61), &request("a")).unwrap();
    h.submit(ms(61), &request("b")).unwrap();
    // ...and the worker, once free, never sees it.
    h.take_actions();
    h.complete(ms(70), busy, Ok(json!(null)));
    let started = h.started();
    assert_eq!(started.len(), 1);
    assert_ne!(started[0].0, waiting);
}

#[test]
fn a_run_limit_aborts_the_handler_and_counts_one_failure_of_its_worker() {
    let mut h = Harness::new(options(), 1);
    let key = h.submit_limited(ms(0), &request("slow"), run(100)).unwrap();
    let next = h.submit(ms(0), &request("next")).unwrap();
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(100), TimeoutReason::RunLimit))
    );
    h.take_actions();
    h.tick(ms(100));
    let actions = h.take_actions();
    assert!(matches!(actions[0], Action::Abort { request, .. } if request == key));
    assert!(matches!(&actions[1], Action::Answer(a) if a.request == key
        && a.result == Err(WorkerPoolError::Timeout)
        && a.phase == Phase::Running
        && a.limit == Some(TimeoutLimit::Run)
        && a.queued_for == Duration::ZERO
        && a.ran_for == Some(Duration::from_millis(100))));
    assert!(
        matches!(actions[2], Action::Start { request, .. } if request == next),
        "the worker is free again"
    );
    assert_eq!(h.status(0), WorkerHealthStatus::Degraded);
    assert_eq!(h.pool.counters().timed_out_running, 1);
    assert!(
        !h.complete(ms(120), key, Ok(json!(null))),
        "a late completion is ignored"
    );
}

#[test]
fn a_run_limit_counts_against_the_worker_however_long_the_request_queued() {
    // 60 s budget; it queues for 20 s, then its 1 s run limit passes. A
    // timeout at the overall deadline charges a worker only when it had
    // half the budget; the run limit is the worker's whole allowance, so it does.
    let quiet = WorkerPoolOptions {
        health_probe_interval: Duration::from_secs(600),
        ..options()
    };
    let mut h = Harness::new(quiet, 1);
    let busy = h.submit(ms(0), &request("busy")).unwrap();
    let key = h
        .submit_limited(ms(0), &with_timeout("late", 60_000), run(1_000))
        .unwrap();
    h.complete(ms(20_000), busy, Ok(json!(null)));
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(21_000), TimeoutReason::RunLimit))
    );
    h.take_actions();
    h.tick(ms(21_000));
    let answer = timed_out(&mut h);
    assert_eq!(answer.request, key);
    assert_eq!(answer.limit, Some(TimeoutLimit::Run));
    assert_eq!(answer.queued_for, Duration::from_secs(20));
    assert_eq!(answer.ran_for, Some(Duration::from_secs(1)));
    assert_eq!(h.pool.health()[0].consecutive_failures, 1);
}

#[test]
fn the_earliest_of_the_overall_deadline_and_the_phase_limits_fires() {
    // Queue wait (80 ms) before the overall deadline (100 ms).
    let mut h = Harness::new(options(), 1);
    h.submit(ms(0), &request("busy")).unwrap();
    h.submit_limited(ms(0), &with_timeout("q", 100), queue_wait(80))
        .unwrap();
    h.take_actions();
    h.tick(ms(80));
    let answer = timed_out(&mut h);
    assert_eq!(answer.limit, Some(TimeoutLimit::QueueWait));
    assert_eq!(answer.queued_for, Duration::from_millis(80));

    // Run limit (starts at 50 ms, runs 100 ms) before the overall deadline
    // (300 ms); its queue-wait limit (500 ms) never matters.
    let mut h = Harness::new(options(), 1);
    let busy = h.submit(ms(0), &request("busy")).unwrap();
    let limits = queue_wait(500).with_run(Duration::from_millis(100));
    h.submit_limited(ms(0), &with_timeout("r", 300), limits)
        .unwrap();
    h.complete(ms(50), busy, Ok(json!(null)));
    h.take_actions();
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(150), TimeoutReason::RunLimit))
    );
    h.tick(ms(150));
    let answer = timed_out(&mut h);
    assert_eq!(answer.limit, Some(TimeoutLimit::Run));
    assert_eq!(
        (answer.queued_for, answer.ran_for),
        (Duration::from_millis(50), Some(Duration::from_millis(100)))
    );

    // The overall deadline (100 ms) before the run limit (from 0 ms, 200 ms).
    let mut h = Harness::new(options(), 1);
    h.submit_limited(ms(0), &with_timeout("o", 100), run(200))
        .unwrap();
    h.take_actions();
    h.tick(ms(100));
    let answer = timed_out(&mut h);
    assert_eq!(answer.limit, Some(TimeoutLimit::Overall));
    assert_eq!(answer.phase, Phase::Running);
}

#[test]
fn limits_at_or_above_the_overall_budget_change_nothing() {
    let limits = queue_wait(100).with_run(Duration::from_secs(5));
    let mut h = Harness::new(options(), 1);
    h.submit(ms(0), &request("busy")).unwrap();
    h.submit_limited(ms(0), &with_timeout("q", 100), limits)
        .unwrap();
    // No timer for a limit that cannot fire first: the overall deadline
    // is the next one.
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(100), TimeoutReason::RequestDeadline))
    );
    h.take_actions();
    h.tick(ms(100));
    let answer = timed_out(&mut h);
    assert_eq!(answer.limit, Some(TimeoutLimit::Overall));
    assert_eq!(answer.phase, Phase::Queued);
    assert_eq!(h.pool.counters().timed_out_queued, 1);
}

#[test]
fn the_pool_defaults_apply_and_a_request_s_own_limits_override_them() {
    let config = PoolConfig::new(options())
        .with_queue_wait_limit(Some(Duration::from_millis(50)))
        .with_run_limit(Some(Duration::from_millis(100)));
    let mut h = Harness::with_config(config, 2);
    let plain = h.submit(ms(0), &request("plain")).unwrap();
    let own = h.submit_limited(ms(0), &request("own"), run(30)).unwrap();
    let queued = h.submit(ms(0), &request("queued")).unwrap();
    h.take_actions();
    h.tick(ms(30));
    let answer = timed_out(&mut h);
    assert_eq!(
        (answer.request, answer.limit),
        (own, Some(TimeoutLimit::Run))
    );
    // The freed worker started the queued request at 30 ms, before its
    // default queue-wait limit (50 ms); its default run limit ends it at
    // 130 ms, after the plain one's at 100 ms.
    h.take_actions();
    h.tick(ms(100));
    let answer = timed_out(&mut h);
    assert_eq!(
        (answer.request, answer.limit),
        (plain, Some(TimeoutLimit::Run))
    );
    h.take_actions();
    h.tick(ms(130));
    let answer = timed_out(&mut h);
    assert_eq!(
        (answer.request, answer.limit),
        (queued, Some(TimeoutLimit::Run))
    );
    assert_eq!(answer.queued_for, Duration::from_millis(30));
}

#[test]
fn a_zero_run_limit_is_refused_like_a_zero_budget() {
    let mut h = Harness::new(options(), 1);
    let refused = h.submit_limited(ms(0), &request("r"), run(0));
    assert_eq!(refused, Err(WorkerPoolError::Timeout));
    assert_eq!(h.pool.counters().refused_no_budget, 1);
}

#[test]
fn only_a_timeout_names_a_limit() {
    let mut h = Harness::new(options(), 1);
    let key = h.submit_limited(ms(0), &request("ok"), run(100)).unwrap();
    h.complete(ms(10), key, Ok(json!(1)));
    let answers = h.answers();
    assert_eq!(answers[0].result, Ok(json!(1)));
    assert_eq!(answers[0].limit, None);
    // A cancelled request names none either.
    let key = h
        .submit_limited(ms(20), &request("c"), queue_wait(5))
        .unwrap();
    h.cancel(ms(21), key);
    assert_eq!(h.answers()[0].limit, None);
    // A request that runs past nothing but its overall budget names it.
    h.submit(ms(30), &with_timeout("t", 10)).unwrap();
    h.take_actions();
    h.tick(ms(40));
    assert_eq!(timed_out(&mut h).limit, Some(TimeoutLimit::Overall));
}

#[test]
fn a_worker_that_frees_after_the_queue_wait_limit_does_not_start_the_request() {
    // The limit passes at 50 ms; the worker frees at 60 ms, before any
    // `handle_timeout` (a driver whose timer is late).
    let mut h = Harness::new(options(), 1);
    let busy = h.submit(ms(0), &request("busy")).unwrap();
    let waiting = h
        .submit_limited(ms(0), &request("waiting"), queue_wait(50))
        .unwrap();
    h.take_actions();
    h.complete(ms(60), busy, Ok(json!(null)));
    assert!(h.started().is_empty(), "{:?}", h.actions);
    let answers = h.answers();
    let answer = answers
        .iter()
        .find(|answer| answer.request == waiting)
        .expect("the waiting request is answered");
    assert_eq!(answer.result, Err(WorkerPoolError::Timeout));
    assert_eq!(answer.limit, Some(TimeoutLimit::QueueWait));
    assert_eq!(h.status(0), WorkerHealthStatus::Healthy);
}

#[test]
fn a_limit_that_saturates_at_the_end_of_time_never_passes() {
    // Accepted at `Time::MAX`, its 1 ms queue-wait limit lands there too,
    // which means "never", as for a deadline.
    let end = Time::from_nanos(u64::MAX);
    let no_budget = WorkerPoolOptions {
        default_request_timeout: None,
        ..options()
    };
    let mut h = Harness::new(no_budget, 1);
    let busy = h.submit(end, &request("busy")).unwrap();
    let waiting = h
        .submit_limited(end, &request("waiting"), queue_wait(1))
        .unwrap();
    h.take_actions();
    h.complete(end, busy, Ok(json!(null)));
    assert_eq!(h.started(), vec![(waiting, h.worker(0))]);
}
