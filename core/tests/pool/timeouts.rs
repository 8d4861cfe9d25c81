//! Deadlines: what a timeout answers and whom it blames, the budget a queued
//! request needs to start, the default timeout, and the time rule (the one
//! timer, time going backwards, the end of time).

use std::time::Duration;

use foreman_core::{
    Action, HealthCause, Phase, Time, TimeoutReason, WorkerHealthStatus, WorkerPoolError,
    WorkerPoolOptions,
};
use serde_json::{json, Value};

use crate::harness::{failure, ms, options, request, with_timeout, Harness};

#[test]
fn a_running_timeout_aborts_the_handler_and_counts_one_failure() {
    let mut h = Harness::new(options(), 1);
    let slow = h.submit(ms(0), &with_timeout("slow", 100)).unwrap();
    let next = h.submit(ms(0), &request("next")).unwrap();
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(100), TimeoutReason::RequestDeadline))
    );
    h.take_actions();
    h.tick(ms(99));
    assert!(h.actions.is_empty(), "a deadline never fires early");
    h.tick(ms(100));
    let actions = h.take_actions();
    assert!(matches!(actions[0], Action::Abort { request, .. } if request == slow));
    assert!(matches!(&actions[1], Action::Answer(a) if a.request == slow
        && a.result == Err(WorkerPoolError::Timeout) && a.phase == Phase::Running));
    assert!(
        matches!(actions[2], Action::Start { request, .. } if request == next),
        "the worker is free again"
    );
    assert_eq!(
        h.status(0),
        WorkerHealthStatus::Degraded,
        "one timeout is one failure, not an ejection"
    );
    assert!(
        !h.complete(ms(150), slow, Ok(json!(null))),
        "a late completion is ignored"
    );
    assert_eq!(h.pool.counters().timed_out_running, 1);
}

#[test]
fn a_queued_timeout_answers_without_blaming_the_worker() {
    let mut h = Harness::new(options(), 1);
    let busy = h.submit(ms(0), &request("busy")).unwrap();
    let waiting = h.submit(ms(0), &with_timeout("waiting", 50)).unwrap();
    h.take_actions();
    h.tick(ms(50));
    let answers = h.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].request, waiting);
    assert_eq!(answers[0].result, Err(WorkerPoolError::Timeout));
    assert_eq!(answers[0].phase, Phase::Queued);
    assert_eq!(
        answers[0].payload, 2,
        "the payload comes back with the answer"
    );
    assert_eq!(answers[0].queued_for, Duration::from_millis(50));
    assert_eq!(h.status(0), WorkerHealthStatus::Healthy);
    h.complete(ms(60), busy, Ok(json!(null)));
    assert!(h.started().is_empty(), "the timed-out request never starts");
}

/// One worker that a single counted failure ejects (threshold 1).
fn one_strict_worker() -> Harness {
    Harness::new(
        WorkerPoolOptions {
            queue_capacity: 8,
            unavailable_after_failures: 1,
            ..options()
        },
        1,
    )
}

#[test]
fn requests_that_expire_while_queued_never_count_against_the_worker() {
    let mut h = one_strict_worker();
    let busy = h.submit(ms(0), &request("busy")).unwrap();
    let waiting: Vec<_> = (0..4)
        .map(|i| {
            h.submit(ms(0), &with_timeout(&format!("w{i}"), 100 + i))
                .unwrap()
        })
        .collect();
    h.take_actions();
    h.take_events();
    for i in 0..3 {
        h.tick(ms(100 + i));
        let answers = h.answers();
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].request, waiting[i as usize]);
        assert_eq!(answers[0].result, Err(WorkerPoolError::Timeout));
        assert_eq!(answers[0].phase, Phase::Queued);
    }
    // The busy request finishes at 103 ms, the last waiting request's
    // deadline, before the driver's timer fired for it: its budget is
    // spent, so it is answered, not started.
    h.complete(ms(103), busy, Ok(json!(null)));
    let answers = h.answers();
    assert_eq!(answers.len(), 2, "the completion and the expiry");
    let expired = answers
        .iter()
        .find(|answer| answer.request == waiting[3])
        .expect("the last waiting request is answered");
    assert_eq!(expired.result, Err(WorkerPoolError::Timeout));
    assert_eq!(expired.phase, Phase::Queued);
    assert_eq!(expired.ran_for, None);
    assert!(h.started().is_empty(), "no expired request is started");
    assert_eq!(h.pool.counters().timed_out_queued, 4);
    assert_eq!(h.pool.counters().timed_out_running, 0);
    assert_eq!(h.status(0), WorkerHealthStatus::Healthy);
    assert_eq!(h.pool.health()[0].consecutive_failures, 0);
    assert_eq!(h.health_changes(), vec![]);
    h.tick(ms(200));
    assert!(h.take_actions().is_empty(), "nothing left to fire");
}

#[test]
fn a_short_run_at_the_end_of_a_mostly_queued_budget_does_not_count() {
    let mut h = one_strict_worker();
    let busy = h.submit(ms(0), &request("busy")).unwrap();
    let late = h.submit(ms(0), &with_timeout("late", 120)).unwrap();
    h.take_actions();
    h.take_events();
    // It waits 100 ms of its 120 ms budget, then runs for the last 20 (the
    // busy request's caller gives up, so the worker has no successful run
    // to judge the 20 ms by and starts it).
    assert!(h.cancel(ms(100), busy));
    assert_eq!(h.started(), vec![(late, h.worker(0))]);
    h.take_actions();
    h.tick(ms(120));
    let actions = h.take_actions();
    assert!(matches!(actions[0], Action::Abort { request, .. } if request == late));
    assert!(matches!(&actions[1], Action::Answer(a) if a.request == late
        && a.result == Err(WorkerPoolError::Timeout)
        && a.phase == Phase::Running
        && a.queued_for == Duration::from_millis(100)
        && a.ran_for == Some(Duration::from_millis(20))));
    assert_eq!(h.pool.counters().timed_out_running, 1);
    assert_eq!(
        h.status(0),
        WorkerHealthStatus::Healthy,
        "20 ms of a 120 ms budget is no evidence against the worker"
    );
    assert_eq!(h.pool.health()[0].consecutive_failures, 0);
    assert_eq!(h.health_changes(), vec![]);
    assert!(h.submit(ms(121), &request("next")).is_ok());
}

#[test]
fn a_running_timeout_counts_once_the_worker_had_half_the_budget() {
    // Queued 61 of 120 ms (ran 59): not counted. Queued 60 (ran 60,
    // exactly half): counted.
    for (queued, counted) in [(61, false), (60, true)] {
        let mut h = one_strict_worker();
        let busy = h.submit(ms(0), &request("busy")).unwrap();
        let waiting = h.submit(ms(0), &with_timeout("waiting", 120)).unwrap();
        h.take_actions();
        assert!(h.cancel(ms(queued), busy));
        assert_eq!(h.started(), vec![(waiting, h.worker(0))]);
        h.take_actions();
        h.take_events();
        h.tick(ms(120));
        let answers = h.answers();
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].request, waiting);
        assert_eq!(answers[0].phase, Phase::Running);
        assert_eq!(
            answers[0].ran_for,
            Some(Duration::from_millis(120 - queued))
        );
        let expected = if counted {
            vec![(
                WorkerHealthStatus::Healthy,
                WorkerHealthStatus::Unavailable,
                HealthCause::Timeout,
            )]
        } else {
            vec![]
        };
        assert_eq!(h.health_changes(), expected, "queued {queued} ms");
        assert_eq!(h.pool.health()[0].consecutive_failures, u32::from(counted));
    }
}

#[test]
fn a_queued_request_with_less_budget_left_than_the_last_run_is_answered_not_started() {
    let mut h = one_strict_worker();
    let first = h.submit(ms(0), &request("first")).unwrap();
    let fits = h.submit(ms(0), &with_timeout("fits", 120)).unwrap();
    let short = h.submit(ms(0), &with_timeout("short", 140)).unwrap();
    let next = h.submit(ms(0), &with_timeout("next", 300)).unwrap();
    h.take_actions();
    h.take_events();
    // The first run takes 50 ms; `fits` has 70 ms left: it starts.
    h.complete(ms(50), first, Ok(json!(null)));
    assert_eq!(h.started(), vec![(fits, h.worker(0))]);
    h.take_actions();
    // It also takes 50 ms; `short` has 40 ms left, less than that: it is
    // answered at once, and `next` (200 ms left) starts instead.
    h.complete(ms(100), fits, Ok(json!(null)));
    assert_eq!(h.started(), vec![(next, h.worker(0))]);
    let answers = h.answers();
    let shed = answers
        .iter()
        .find(|answer| answer.request == short)
        .expect("the short request is answered");
    assert_eq!(shed.result, Err(WorkerPoolError::Timeout));
    assert_eq!(shed.phase, Phase::Queued);
    assert_eq!(shed.queued_for, Duration::from_millis(100));
    assert_eq!(h.pool.counters().timed_out_queued, 1);
    assert_eq!(h.status(0), WorkerHealthStatus::Healthy);
    assert_eq!(h.health_changes(), vec![]);
    // A request submitted to an idle worker starts whatever its budget.
    h.complete(ms(150), next, Ok(json!(null)));
    h.take_actions();
    let tiny = h.submit(ms(150), &with_timeout("tiny", 1)).unwrap();
    assert_eq!(h.started(), vec![(tiny, h.worker(0))]);
}

#[test]
fn a_hung_worker_that_runs_whole_budgets_is_ejected_after_the_threshold() {
    let mut h = Harness::new(options(), 1);
    h.take_events();
    for round in 0..3u64 {
        let start = round * 1_000;
        let key = h.submit(ms(start), &with_timeout("hang", 100)).unwrap();
        assert_eq!(h.started(), vec![(key, h.worker(0))], "starts at once");
        h.take_actions();
        // The handler never answers; its whole budget runs out on the worker.
        h.tick(ms(start + 100));
        let answers = h.answers();
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].phase, Phase::Running);
        assert_eq!(answers[0].ran_for, Some(Duration::from_millis(100)));
        assert_eq!(h.pool.health()[0].consecutive_failures, round as u32 + 1);
    }
    assert_eq!(
        h.health_changes(),
        vec![
            (
                WorkerHealthStatus::Healthy,
                WorkerHealthStatus::Degraded,
                HealthCause::Timeout
            ),
            (
                WorkerHealthStatus::Degraded,
                WorkerHealthStatus::Unavailable,
                HealthCause::Timeout
            ),
        ]
    );
    assert_eq!(
        h.submit(ms(3_000), &request("x")),
        Err(WorkerPoolError::NoHealthyWorker)
    );
}

#[test]
fn the_default_timeout_applies_and_none_means_no_deadline() {
    let mut h = Harness::new(
        WorkerPoolOptions {
            default_request_timeout: None,
            ..options()
        },
        1,
    );
    h.submit(ms(0), &request("forever")).unwrap();
    assert_eq!(
        h.pool.poll_timeout().map(|(_, reason)| reason),
        Some(TimeoutReason::ProbeDue)
    );
    let mut h = Harness::new(options(), 1);
    h.submit(ms(0), &request("default")).unwrap();
    let mut h2 = h.pool.poll_timeout();
    // The probe (5 s) comes before the default deadline (30 s).
    assert_eq!(h2.take(), Some((ms(5_000), TimeoutReason::ProbeDue)));
}

#[test]
fn a_one_timer_driver_moves_its_timer_only_earlier_and_never_late() {
    let mut h = Harness::new(
        WorkerPoolOptions {
            default_request_timeout: None,
            ..options()
        },
        2,
    );
    // Nothing set: the exact next deadline (the first probe, at 5 s).
    let mut timer = h.pool.move_timer(Time::MAX).expect("a probe is due");
    assert_eq!(timer, ms(5_000));
    // A later deadline leaves the timer where it is.
    h.submit(ms(1), &with_timeout("late", 9_000)).unwrap();
    assert_eq!(h.pool.move_timer(timer), None);
    // An earlier one moves it.
    let early = h.submit(ms(2), &with_timeout("early", 100)).unwrap();
    timer = h.pool.move_timer(timer).expect("an earlier deadline");
    assert_eq!(timer, ms(102));
    // Answered before its deadline: the timer stays, and fires early.
    assert!(h.complete(ms(3), early, Ok(Value::Null)));
    assert_eq!(h.pool.move_timer(timer), None);
    h.take_actions();
    h.tick(ms(102));
    assert!(
        h.take_actions().is_empty(),
        "a spurious wake-up does nothing"
    );
    // Once it fired, the timer is set from the exact next deadline.
    assert_eq!(h.pool.move_timer(Time::MAX), Some(ms(5_000)));
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(5_000), TimeoutReason::ProbeDue))
    );
}

#[test]
fn time_going_backwards_is_treated_as_the_latest_instant() {
    let mut h = Harness::new(options(), 1);
    let key = h.submit(ms(1_000), &with_timeout("a", 100)).unwrap();
    h.tick(ms(10));
    assert!(h.answers().is_empty());
    h.complete(ms(500), key, Ok(json!(null)));
    let answer = h.answers().pop().unwrap();
    assert_eq!(answer.ran_for, Some(Duration::ZERO));
    assert_eq!(h.pool.now(), ms(1_000));
}

#[test]
fn the_end_of_time_is_never_and_does_not_livelock() {
    // At Time::MAX, probe deadlines saturate to `now`: such a deadline
    // means never, so it must not re-arm itself at the same instant
    // forever (the `config` fuzz target's finding, kept in its corpus).
    let mut h = Harness::new(options(), 1);
    h.tick(Time::MAX);
    assert!(h.actions.len() < 4, "bounded work: {:?}", h.actions);
    let key = h.submit(Time::MAX, &with_timeout("late", 1)).unwrap();
    h.tick(Time::MAX);
    h.pool
        .begin_shutdown(Time::MAX, Some(Duration::from_secs(1)));
    h.drain();
    assert!(
        h.pool.poll_timeout().is_none(),
        "nothing is due before the end of time"
    );
    h.complete(Time::MAX, key, Ok(json!(null)));
    assert!(h.pool.is_stopped());
}

#[test]
fn a_queued_request_with_exactly_the_last_runs_time_left_starts_and_one_with_none_left_does_not() {
    let mut h = one_strict_worker();
    let first = h.submit(ms(0), &request("first")).unwrap();
    let exact = h.submit(ms(0), &with_timeout("exact", 100)).unwrap();
    h.take_actions();
    // The first run takes 50 ms; `exact` has 50 ms left: enough.
    h.complete(ms(50), first, Ok(json!(null)));
    assert_eq!(h.started(), vec![(exact, h.worker(0))]);

    // A worker with no successful run yet (its first request failed).
    let mut h = Harness::new(
        WorkerPoolOptions {
            queue_capacity: 8,
            ..options()
        },
        1,
    );
    let first = h.submit(ms(0), &request("first")).unwrap();
    let spent = h.submit(ms(0), &with_timeout("spent", 50)).unwrap();
    let next = h.submit(ms(0), &request("next")).unwrap();
    h.take_actions();
    // `spent` reaches the worker at its deadline, before its timer fired:
    // answered, not started, and `next` starts.
    h.complete(ms(50), first, Err(failure()));
    assert_eq!(h.started(), vec![(next, h.worker(0))]);
    let answers = h.answers();
    let shed = answers.iter().find(|a| a.request == spent).unwrap();
    assert_eq!(
        (&shed.result, shed.phase),
        (&Err(WorkerPoolError::Timeout), Phase::Queued)
    );
}
