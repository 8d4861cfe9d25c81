//! Admission: a request accepted, run and answered, or refused with a reason
//! (full queues, no worker, invalid requests, a declined offer).

use std::time::Duration;

use foreman_core::{
    Action, Event, Phase, Pool, PoolConfig, Time, TimeoutReason, WorkerErrorCode, WorkerPoolError,
};
use serde_json::json;

use crate::harness::{ms, options, request, with_timeout, Harness};

#[test]
fn a_request_runs_and_is_answered_with_queue_and_run_times() {
    let mut h = Harness::new(options(), 1);
    let key = h.submit(ms(10), &request("a")).unwrap();
    let started = h.started();
    assert_eq!(started, vec![(key, h.worker(0))]);
    assert!(matches!(h.events.first(), Some(Event::Accepted { request, .. }) if *request == key));
    h.take_actions();
    assert!(h.complete(ms(25), key, Ok(json!({"ok": true}))));
    let answers = h.answers();
    assert_eq!(answers.len(), 1);
    let answer = &answers[0];
    assert_eq!(answer.request, key);
    assert_eq!(answer.result, Ok(json!({"ok": true})));
    assert_eq!(answer.phase, Phase::Running);
    assert_eq!(answer.queued_for, Duration::ZERO);
    assert_eq!(answer.ran_for, Some(Duration::from_millis(15)));
    assert_eq!(answer.payload, 1, "the payload comes back with the answer");
    assert_eq!(h.pool.pending(), 0);
    assert_eq!(h.pool.counters().succeeded, 1);
}

#[test]
fn start_hands_over_the_payload_and_queue_time_is_reported() {
    let mut h = Harness::new(options(), 1);
    let first = h.submit(ms(0), &request("a")).unwrap();
    let second = h.submit(ms(1), &request("b")).unwrap();
    let payloads: Vec<u32> = h
        .take_actions()
        .into_iter()
        .filter_map(|action| match action {
            Action::Start { payload, .. } => Some(payload),
            _ => None,
        })
        .collect();
    assert_eq!(
        payloads,
        vec![1],
        "only the first starts: one request at a time per worker"
    );
    h.complete(ms(40), first, Ok(json!(1)));
    let started: Vec<_> = h.started();
    assert_eq!(started, vec![(second, h.worker(0))]);
    h.take_actions();
    h.complete(ms(50), second, Ok(json!(2)));
    let answer = h.answers().pop().unwrap();
    assert_eq!(answer.queued_for, Duration::from_millis(39));
    assert_eq!(answer.ran_for, Some(Duration::from_millis(10)));
}

#[test]
fn full_queues_fall_through_then_refuse_queue_full() {
    // capacity per worker: 1 running + 2 queued. Without late binding, each
    // request waits for the worker it was queued on.
    let config = PoolConfig::new(options()).with_late_binding(false);
    let mut h = Harness::with_config(config, 2);
    for i in 0..6 {
        h.submit(ms(0), &request(&format!("r{i}"))).unwrap();
    }
    assert_eq!(
        h.submit(ms(0), &request("overflow")),
        Err(WorkerPoolError::QueueFull)
    );
    assert_eq!(h.pool.counters().refused_queue_full, 1);
    let stats = h.pool.stats();
    assert_eq!(stats.queued, 4);
    assert_eq!(stats.running, 2);
    // Free one slot on worker 1 only: the next submit falls through to it.
    let running_on_w1 = h
        .started()
        .into_iter()
        .find(|(_, worker)| *worker == h.worker(1))
        .unwrap()
        .0;
    h.complete(ms(5), running_on_w1, Ok(json!(null)));
    h.take_events();
    h.submit(ms(6), &request("fits")).unwrap();
    assert!(h
        .take_events()
        .iter()
        .any(|event| matches!(event, Event::Accepted { worker, .. } if *worker == h.worker(1))));
}

#[test]
fn an_offer_for_want_of_a_worker_is_declined_uncounted() {
    // capacity: 1 running + 2 queued on one worker.
    let mut h = Harness::new(options(), 1);
    let config = h.pool.config().clone();
    assert_eq!((h.pool.idle_workers(), h.pool.eligible_workers()), (1, 1));
    let accepted = h
        .pool
        .offer(ms(0), config.admit(&request("a")), 1)
        .expect("an offer with room is taken");
    h.drain();
    assert_eq!(h.started(), [(accepted, h.worker(0))]);
    assert_eq!((h.pool.idle_workers(), h.pool.eligible_workers()), (0, 1));
    for i in 0..2 {
        h.submit(ms(0), &request(&format!("q{i}"))).unwrap();
    }
    assert_eq!((h.pool.idle_workers(), h.pool.eligible_workers()), (0, 0));
    h.take_events();
    let before = *h.pool.counters();
    let declined = h
        .pool
        .offer(ms(1), config.admit(&request("full")), 7)
        .expect_err("no room");
    assert_eq!(
        (declined.error, declined.payload),
        (WorkerPoolError::QueueFull, 7)
    );
    h.drain();
    assert_eq!(
        *h.pool.counters(),
        before,
        "a declined offer is not counted"
    );
    assert!(h.take_events().is_empty(), "and reports no refusal");
    // The last pool tried refuses for real, once.
    assert_eq!(
        h.submit(ms(1), &request("full")),
        Err(WorkerPoolError::QueueFull)
    );
    let after = *h.pool.counters();
    assert_eq!(after.submitted, before.submitted + 1);
    assert_eq!(after.refused_queue_full, before.refused_queue_full + 1);
    // Final refusals are counted by an offer too.
    h.pool.begin_shutdown(ms(2), None);
    h.drain();
    let refused = h
        .pool
        .offer(ms(2), config.admit(&request("late")), 9)
        .expect_err("shutting down");
    assert_eq!(refused.error, WorkerPoolError::ShuttingDown);
    assert_eq!(h.pool.counters().refused_shutting_down, 1);
    assert_eq!(h.pool.counters().submitted, after.submitted + 1);
}

#[test]
fn no_workers_means_no_healthy_worker() {
    let mut h = Harness::new(options(), 0);
    assert_eq!(
        h.submit(ms(0), &request("a")),
        Err(WorkerPoolError::NoHealthyWorker)
    );
    assert!(h.events.iter().any(|event| matches!(
        event,
        Event::Rejected {
            worker: None,
            reason: WorkerErrorCode::Unavailable
        }
    )));
}

#[test]
fn invalid_requests_are_refused_with_a_reason() {
    let mut h = Harness::new(options(), 1);
    let mut bad = request(&"r".repeat(129));
    let error = h.submit(ms(0), &bad).unwrap_err();
    assert!(
        matches!(&error, WorkerPoolError::InvalidRequest { reason } if reason.contains("request_id")),
        "{error}"
    );
    bad = with_timeout("x", 120_001);
    assert!(matches!(
        h.submit(ms(0), &bad),
        Err(WorkerPoolError::InvalidRequest { .. })
    ));
    assert_eq!(h.pool.counters().refused_invalid, 2);
    assert_eq!(h.pool.pending(), 0);
}

#[test]
fn requests_validated_ahead_submit_like_any_other() {
    let mut h = Harness::new(options(), 1);
    let config = h.pool.config().clone();
    let good = config.admit(&with_timeout("a", 250)).expect("valid");
    assert_eq!(good.timeout(), Some(Duration::from_millis(250)));
    let key = h.pool.submit_checked(ms(0), Ok(good), 1).unwrap();
    h.drain();
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(250), TimeoutReason::RequestDeadline))
    );
    let bad = config.admit(&request(&"r".repeat(129)));
    let refused = h.pool.submit_checked(ms(0), bad.clone(), 2).unwrap_err();
    assert!(matches!(
        refused.error,
        WorkerPoolError::InvalidRequest { .. }
    ));
    h.pool.begin_shutdown(ms(1), None);
    let refused = h.pool.submit_checked(ms(1), bad, 3).unwrap_err();
    assert_eq!(
        refused.error,
        WorkerPoolError::ShuttingDown,
        "shutting down takes precedence"
    );
    h.drain();
    h.complete(ms(2), key, Ok(json!(null)));
    assert!(h.pool.is_stopped());
}

#[test]
fn a_refusal_debugs_its_error_but_not_its_payload() {
    let mut pool = Pool::<&str>::new(options(), Time::ZERO).expect("valid config");
    let refused = pool
        .submit(ms(0), &request("a"), "secret payload")
        .expect_err("no worker");
    let shown = format!("{refused:?}");
    assert!(shown.starts_with("Refused"), "{shown}");
    assert!(shown.contains("NoHealthyWorker"), "{shown}");
    assert!(!shown.contains("secret payload"), "{shown}");
}
