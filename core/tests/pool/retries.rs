//! Retries: a retryable failure runs again on another worker when the
//! policy covers the request's kind, attempts and budget remain and the
//! deadline has not passed; otherwise the failure is the answer.

use std::time::Duration;

use foreman_core::{
    Action, Event, PoolConfig, RetryBudget, RetryPolicy, WorkerErrorCode, WorkerPoolError,
    WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
};
use serde_json::json;

use crate::harness::{failure, llm, ms, options, request, Harness};

fn retrying(policy: RetryPolicy, workers: usize) -> Harness {
    Harness::with_config(
        PoolConfig::new(options()).with_retries(Some(policy)),
        workers,
    )
}

fn permanent() -> WorkerProtocolError {
    WorkerProtocolError::new(WorkerErrorCode::ExecutionFailed, "bad input", false)
}

/// The `may_retry` flag of every `Start` taken so far.
fn start_flags(h: &mut Harness) -> Vec<bool> {
    h.take_actions()
        .into_iter()
        .filter_map(|action| match action {
            Action::Start { may_retry, .. } => Some(may_retry),
            _ => None,
        })
        .collect()
}

#[test]
fn a_retryable_llm_failure_runs_again_on_another_worker_and_answers_once() {
    let mut h = retrying(RetryPolicy::default(), 2);
    let key = h.submit(ms(0), &llm("a")).unwrap();
    let first = h.started();
    assert_eq!(first.len(), 1);
    let failed_on = first[0].1;
    assert_eq!(
        start_flags(&mut h),
        vec![true],
        "the first attempt may retry"
    );
    h.take_events();

    h.complete(ms(10), key, Err(failure()));
    assert!(h.answers().is_empty(), "a retry, not an answer");
    let again = h.started();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, key);
    assert_ne!(again[0].1, failed_on, "another worker runs the retry");
    assert_eq!(start_flags(&mut h), vec![false], "the last attempt");
    assert!(h.take_events().iter().any(|event| matches!(
        event,
        Event::Retried { request, from, attempt: 2, .. } if *request == key && *from == failed_on
    )));

    h.complete(ms(20), key, Ok(json!("done")));
    let answers = h.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].result, Ok(json!("done")));
    assert_eq!(answers[0].attempts, 2);
    let counters = h.pool.stats().counters;
    assert_eq!(
        (counters.retried, counters.succeeded, counters.failed),
        (1, 1, 0)
    );
    // The failure still counts against the worker that failed.
    let failed_health = h.pool.worker_health(failed_on).unwrap();
    assert_eq!(failed_health.consecutive_failures, 1);
}

#[test]
fn the_last_attempts_failure_is_the_answer() {
    let mut h = retrying(RetryPolicy::default().with_max_attempts(2), 3);
    let key = h.submit(ms(0), &llm("a")).unwrap();
    h.complete(ms(1), key, Err(failure()));
    h.complete(ms(2), key, Err(failure()));
    let answers = h.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].result, Err(WorkerPoolError::Worker(failure())));
    assert_eq!(answers[0].attempts, 2);
    assert_eq!(h.pool.stats().counters.failed, 1);
}

#[test]
fn tool_calls_permanent_errors_and_pools_without_a_policy_are_not_retried() {
    // Tools: not by default.
    let mut h = retrying(RetryPolicy::default(), 2);
    let key = h.submit(ms(0), &request("tool")).unwrap();
    assert_eq!(start_flags(&mut h), vec![false]);
    h.complete(ms(1), key, Err(failure()));
    assert_eq!(h.answers().len(), 1);

    // A failure not marked retryable.
    let key = h.submit(ms(2), &llm("permanent")).unwrap();
    h.complete(ms(3), key, Err(permanent()));
    assert_eq!(h.answers().len(), 1);

    // No policy: the reference's behaviour.
    let mut plain = Harness::new(options(), 2);
    let key = plain.submit(ms(0), &llm("plain")).unwrap();
    plain.complete(ms(1), key, Err(failure()));
    let answers = plain.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].attempts, 1);
    assert_eq!(plain.pool.stats().counters.retried, 0);

    // Tools, once the policy allows them.
    let mut tools = retrying(RetryPolicy::default().with_tools(true), 2);
    let key = tools.submit(ms(0), &request("tool")).unwrap();
    tools.complete(ms(1), key, Err(failure()));
    assert!(tools.answers().is_empty());
}

#[test]
fn a_lone_worker_answers_the_failure_rather_than_retrying_on_itself() {
    let mut h = retrying(RetryPolicy::default(), 1);
    let key = h.submit(ms(0), &llm("a")).unwrap();
    h.complete(ms(1), key, Err(failure()));
    let answers = h.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].attempts, 1);
}

#[test]
fn a_request_whose_deadline_has_passed_is_not_retried() {
    let mut h = retrying(RetryPolicy::default(), 2);
    let key = h
        .submit(
            ms(0),
            &WorkerRequest {
                timeout_ms: Some(50),
                ..llm("late")
            },
        )
        .unwrap();
    // The completion arrives at the deadline, before its timer is handled.
    h.complete(ms(50), key, Err(failure()));
    assert_eq!(h.answers().len(), 1);
}

#[test]
fn retries_stop_at_the_budget_and_the_refusals_are_counted() {
    let budget = RetryBudget::default()
        .with_share_percent(50)
        .with_reserve_per_second(0)
        .with_window(Duration::from_secs(10));
    let options = WorkerPoolOptions {
        unavailable_after_failures: 100,
        ..options()
    };
    let mut h = Harness::with_config(
        PoolConfig::new(options).with_retries(Some(
            RetryPolicy::default()
                .with_max_attempts(5)
                .with_budget(budget),
        )),
        2,
    );
    // Four requests, one after the other, deposit two tokens; every
    // attempt fails, and a retry goes to the other (idle) worker.
    let mut now = 0;
    for _ in 0..4 {
        h.submit(ms(now), &llm("a")).unwrap();
        loop {
            let running = h.started();
            h.take_actions();
            let Some(&(key, _)) = running.first() else {
                break;
            };
            now += 1;
            h.complete(ms(now), key, Err(failure()));
        }
    }
    let counters = h.pool.stats().counters;
    assert_eq!(
        counters.retried, 2,
        "half a token per request, four requests"
    );
    assert!(counters.retries_over_budget >= 1);
    assert_eq!(counters.failed, 4);
}

#[test]
fn a_shutting_down_pool_answers_failures_without_retrying() {
    let mut h = retrying(RetryPolicy::default(), 2);
    let key = h.submit(ms(0), &llm("a")).unwrap();
    h.pool.begin_shutdown(ms(1), None);
    h.drain();
    h.complete(ms(2), key, Err(failure()));
    let answers = h.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].attempts, 1);
}

#[test]
fn a_retry_policy_with_no_attempt_or_a_zero_window_is_refused_with_its_key() {
    let config =
        PoolConfig::default().with_retries(Some(RetryPolicy::default().with_max_attempts(0)));
    let error = config.validate().unwrap_err();
    assert!(
        error.to_string().contains("retries.max_attempts"),
        "{error}"
    );
    let config = PoolConfig::default().with_retries(Some(
        RetryPolicy::default().with_budget(RetryBudget::default().with_window(Duration::ZERO)),
    ));
    let error = config.validate().unwrap_err();
    assert!(
        error.to_string().contains("retries.budget.window"),
        "{error}"
    );
}

#[test]
fn a_refused_retry_waits_in_line_with_its_failed_attempt_counted() {
    let mut h = retrying(RetryPolicy::default(), 2);
    let key = h.submit(ms(0), &llm("a")).unwrap();
    let failed_on = h.started()[0].1;
    h.take_actions();
    h.complete(ms(10), key, Err(failure()));
    let retried_on = h.started()[0].1;
    assert_ne!(retried_on, failed_on);
    h.take_actions();
    // The worker that failed takes another request, so the refused retry
    // has to wait in its queue.
    let other = h.submit(ms(11), &llm("b")).unwrap();
    assert_eq!(h.started(), vec![(other, failed_on)]);
    h.take_actions();
    h.take_events();

    assert!(h.pool.handle_refusal(ms(12), key));
    h.drain();
    assert!(h.started().is_empty(), "both workers are busy or saturated");
    assert!(h.answers().is_empty(), "a refusal is not an answer");
    h.take_actions();

    h.complete(ms(20), other, Ok(json!("b")));
    assert_eq!(h.started(), vec![(key, failed_on)]);
    h.take_actions();
    h.complete(ms(30), key, Ok(json!("a")));
    let answers = h.answers();
    let answer = answers
        .iter()
        .find(|answer| answer.request == key)
        .expect("the retried request is answered");
    assert_eq!(answer.result, Ok(json!("a")));
    assert_eq!(answer.attempts, 2, "the refused start is not an attempt");
    assert_eq!(h.pool.stats().counters.refused_not_started, 1);
}
