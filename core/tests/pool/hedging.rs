//! Hedging: a running request the policy covers gets a second attempt on
//! another, idle worker after the delay; the first answer wins, the loser
//! is aborted and its late completion ignored; every request still gets
//! exactly one answer, whatever ends its attempts.

use std::time::Duration;

use foreman_core::{
    Action, Event, HedgeDelay, HedgePolicy, PhaseLimits, PoolConfig, RequestKey, RetryBudget,
    RetryPolicy, RoutingPolicy, TimeoutLimit, TimeoutReason, WorkerErrorCode, WorkerKey,
    WorkerPoolError, WorkerProtocolError,
};
use serde_json::json;

use crate::harness::{failure, llm, ms, options, request, Harness};

fn fixed(delay_ms: u64) -> HedgePolicy {
    HedgePolicy::default().with_delay(HedgeDelay::Fixed(Duration::from_millis(delay_ms)))
}

fn hedging(policy: HedgePolicy, workers: usize) -> Harness {
    Harness::with_config(
        PoolConfig::new(options()).with_hedging(Some(policy)),
        workers,
    )
}

/// The hedges started so far: (request, hedge key, from, to).
fn hedges(h: &mut Harness) -> Vec<(RequestKey, RequestKey, WorkerKey, WorkerKey)> {
    h.take_events()
        .into_iter()
        .filter_map(|event| match event {
            Event::Hedged {
                request,
                hedge,
                from,
                to,
                ..
            } => Some((request, hedge, from, to)),
            _ => None,
        })
        .collect()
}

fn aborts(h: &Harness) -> Vec<(RequestKey, WorkerKey)> {
    h.actions
        .iter()
        .filter_map(|action| match action {
            Action::Abort { request, worker } => Some((*request, *worker)),
            _ => None,
        })
        .collect()
}

/// Both attempts were aborted, each under its key on its worker.
fn assert_both_aborted(h: &Harness, own: (RequestKey, WorkerKey), hedge: (RequestKey, WorkerKey)) {
    let mut aborted = aborts(h);
    aborted.sort();
    let mut expected = vec![own, hedge];
    expected.sort();
    assert_eq!(aborted, expected);
}

/// A request started at 0 on worker 0 of two, hedged at 100 ms on
/// worker 1: (request, hedge, own worker, hedge's worker).
fn hedged_at_100ms(h: &mut Harness) -> (RequestKey, RequestKey, WorkerKey, WorkerKey) {
    hedged_100ms_after(h, 0, "a")
}

/// Submits LLM request `id` at `at_ms` and ticks 100 ms later, when its
/// one hedge starts: (its key, the hedge's key, the hedge's from and to
/// workers).
fn hedged_100ms_after(
    h: &mut Harness,
    at_ms: u64,
    id: &str,
) -> (RequestKey, RequestKey, WorkerKey, WorkerKey) {
    let key = h.submit(ms(at_ms), &llm(id)).unwrap();
    h.take_actions();
    h.take_events();
    h.tick(ms(at_ms + 100));
    let started = hedges(h);
    assert_eq!(started.len(), 1, "one hedge at the delay");
    let (request, hedge, from, to) = started[0];
    assert_eq!(request, key);
    (key, hedge, from, to)
}

#[test]
fn a_hedge_starts_on_another_worker_at_the_fixed_delay_and_not_before() {
    let mut h = hedging(fixed(100), 2);
    let key = h.submit(ms(0), &llm("a")).unwrap();
    let first = h.started();
    assert_eq!(first.len(), 1);
    assert!(
        matches!(
            h.actions[0],
            Action::Start {
                may_retry: true,
                ..
            }
        ),
        "the driver keeps the request for the hedge"
    );
    h.take_actions();
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(100), TimeoutReason::HedgeDue))
    );
    h.tick(ms(99));
    assert!(h.started().is_empty(), "not before the delay");
    assert!(hedges(&mut h).is_empty());
    h.tick(ms(100));
    let started = h.started();
    assert_eq!(started.len(), 1);
    let (hedge, to) = started[0];
    assert_ne!(hedge, key, "the hedge runs under a key of its own");
    assert_ne!(to, first[0].1, "on another worker");
    assert_eq!(hedges(&mut h), vec![(key, hedge, first[0].1, to)]);
    assert_eq!(h.pool.stats().counters.hedged, 1);
    assert!(h.answers().is_empty());
}

#[test]
fn the_hedge_that_answers_first_wins_and_the_first_attempt_is_aborted() {
    let mut h = hedging(fixed(100), 2);
    let (key, hedge, own, other) = hedged_at_100ms(&mut h);
    h.take_actions();
    assert!(h.complete(ms(130), hedge, Ok(json!("fast"))));
    assert_eq!(aborts(&h), vec![(key, own)], "the loser is aborted");
    assert!(h.take_events().iter().any(|event| matches!(
        event,
        Event::AttemptEnded { request, attempt, worker }
            if *request == key && *attempt == key && *worker == own
    )));
    let answers = h.answers();
    assert_eq!(answers.len(), 1, "exactly one answer");
    assert_eq!(answers[0].request, key, "under the caller's key");
    assert_eq!(answers[0].result, Ok(json!("fast")));
    assert_eq!(answers[0].worker, other);
    assert_eq!(answers[0].attempts, 2, "the hedge is an attempt");
    assert_eq!(answers[0].ran_for, Some(Duration::from_millis(30)));
    // The loser's late completion is ignored, and its abort charged to no
    // worker.
    assert!(!h.complete(ms(400), key, Err(failure())));
    assert!(h.answers().is_empty());
    let counters = h.pool.stats().counters;
    assert_eq!((counters.hedged, counters.hedges_won), (1, 1));
    assert_eq!((counters.succeeded, counters.failed), (1, 0));
    assert_eq!(h.pool.worker_health(own).unwrap().consecutive_failures, 0);
    // Both workers are free again.
    assert_eq!(h.pool.idle_workers(), 2);
}

#[test]
fn the_first_attempt_that_answers_first_wins_and_the_hedge_is_aborted() {
    let mut h = hedging(fixed(100), 2);
    let (key, hedge, own, other) = hedged_at_100ms(&mut h);
    h.take_actions();
    assert!(h.complete(ms(150), key, Ok(json!("first"))));
    assert_eq!(aborts(&h), vec![(hedge, other)]);
    let answers = h.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!((answers[0].request, answers[0].worker), (key, own));
    assert_eq!(answers[0].attempts, 2);
    assert!(!h.complete(ms(160), hedge, Ok(json!("late"))));
    assert!(h.answers().is_empty());
    assert_eq!(h.pool.stats().counters.hedges_won, 0);
    assert_eq!(h.pool.idle_workers(), 2);
}

#[test]
fn a_retryable_failure_of_one_attempt_leaves_the_request_to_the_other() {
    let mut h = hedging(fixed(100), 2);
    let (key, hedge, own, _) = hedged_at_100ms(&mut h);
    h.take_actions();
    assert!(h.complete(ms(120), key, Err(failure())));
    assert!(h.answers().is_empty(), "the hedge still runs");
    assert!(h.take_events().iter().any(|event| matches!(
        event,
        Event::AttemptEnded { attempt, worker, .. } if *attempt == key && *worker == own
    )));
    assert!(aborts(&h).is_empty(), "the failed attempt ended by itself");
    assert_eq!(h.pool.worker_health(own).unwrap().consecutive_failures, 1);
    // Its own key is spent; the hedge answers.
    assert!(!h.complete(ms(121), key, Ok(json!("stale"))));
    assert!(h.complete(ms(140), hedge, Ok(json!("hedge"))));
    let answers = h.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].result, Ok(json!("hedge")));

    // The other way round: the hedge fails, the first attempt answers.
    let (key, hedge, _, other) = hedged_100ms_after(&mut h, 200, "b");
    h.take_actions();
    let before = h.pool.worker_health(other).unwrap().consecutive_failures;
    assert!(h.complete(ms(310), hedge, Err(failure())));
    assert!(h.answers().is_empty());
    assert_eq!(
        h.pool.worker_health(other).unwrap().consecutive_failures,
        before + 1
    );
    assert!(h.complete(ms(320), key, Ok(json!("own"))));
    assert_eq!(h.answers().len(), 1);
}

#[test]
fn a_permanent_failure_that_comes_first_is_the_answer() {
    let mut h = hedging(fixed(100), 2);
    let (key, hedge, _, other) = hedged_at_100ms(&mut h);
    h.take_actions();
    let permanent = WorkerProtocolError::new(WorkerErrorCode::ExecutionFailed, "bad", false);
    assert!(h.complete(ms(110), key, Err(permanent.clone())));
    assert_eq!(aborts(&h), vec![(hedge, other)]);
    let answers = h.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].result, Err(WorkerPoolError::Worker(permanent)));
}

#[test]
fn no_hedge_once_the_budget_is_spent() {
    let budget = RetryBudget::default()
        .with_share_percent(0)
        .with_reserve_per_second(0);
    let config = PoolConfig::new(options())
        .with_retries(Some(RetryPolicy::default().with_budget(budget)))
        .with_hedging(Some(fixed(100)));
    let mut h = Harness::with_config(config, 2);
    h.submit(ms(0), &llm("a")).unwrap();
    h.take_actions();
    h.tick(ms(100));
    assert!(h.started().is_empty());
    let counters = h.pool.stats().counters;
    assert_eq!((counters.hedged, counters.hedges_over_budget), (0, 1));
}

#[test]
fn tool_calls_are_not_hedged_unless_the_policy_says_so() {
    let mut h = hedging(fixed(100), 2);
    h.submit(ms(0), &request("tool")).unwrap();
    assert!(
        matches!(
            h.actions[0],
            Action::Start {
                may_retry: false,
                ..
            }
        ),
        "nothing to keep for a hedge"
    );
    h.take_actions();
    assert_eq!(
        h.pool.poll_timeout().map(|(_, why)| why),
        Some(TimeoutReason::ProbeDue)
    );
    h.tick(ms(100));
    assert!(h.started().is_empty());

    let mut tools = hedging(fixed(100).with_tools(true), 2);
    tools.submit(ms(0), &request("tool")).unwrap();
    tools.take_actions();
    tools.tick(ms(100));
    assert_eq!(tools.started().len(), 1);
}

#[test]
fn no_hedge_without_an_idle_worker_nor_on_a_lone_worker() {
    let mut lone = hedging(fixed(100), 1);
    lone.submit(ms(0), &llm("a")).unwrap();
    lone.take_actions();
    lone.tick(ms(100));
    assert!(lone.started().is_empty());

    let mut busy = hedging(fixed(100), 2);
    busy.submit(ms(0), &llm("a")).unwrap();
    busy.submit(ms(0), &llm("b")).unwrap();
    busy.take_actions();
    busy.tick(ms(100));
    assert!(busy.started().is_empty(), "a hedge never queues");
}

#[test]
fn a_cancel_aborts_both_attempts_and_answers_once() {
    let mut h = hedging(fixed(100), 2);
    let (key, hedge, own, other) = hedged_at_100ms(&mut h);
    h.take_actions();
    assert!(h.cancel(ms(120), key));
    assert_both_aborted(&h, (key, own), (hedge, other));
    assert_eq!(h.answers().len(), 1);
    assert!(!h.complete(ms(130), hedge, Ok(json!("late"))));
    assert!(!h.complete(ms(130), key, Ok(json!("late"))));
    assert_eq!(h.pool.idle_workers(), 2);
}

#[test]
fn the_drain_deadline_aborts_both_attempts_and_answers_once() {
    let mut h = hedging(fixed(100), 2);
    let (key, hedge, own, other) = hedged_at_100ms(&mut h);
    h.take_actions();
    h.pool
        .begin_shutdown(ms(110), Some(Duration::from_millis(50)));
    h.drain();
    assert!(h.answers().is_empty(), "both still run while draining");
    h.tick(ms(160));
    assert_both_aborted(&h, (key, own), (hedge, other));
    let answers = h.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].result, Err(WorkerPoolError::ShuttingDown));
    assert!(h
        .take_events()
        .iter()
        .any(|event| matches!(event, Event::ShutdownComplete { .. })));
}

#[test]
fn no_hedge_starts_once_shutdown_began() {
    let mut h = hedging(fixed(100), 2);
    h.submit(ms(0), &llm("a")).unwrap();
    h.take_actions();
    h.pool.begin_shutdown(ms(50), None);
    h.drain();
    h.tick(ms(100));
    assert!(h.started().is_empty());
}

#[test]
fn restarting_the_first_attempts_worker_leaves_the_request_to_its_hedge() {
    let mut h = hedging(fixed(100), 2);
    let (key, hedge, own, _) = hedged_at_100ms(&mut h);
    h.take_actions();
    h.pool.restart_worker(ms(110), own).unwrap();
    h.drain();
    assert_eq!(aborts(&h), vec![(key, own)]);
    assert!(h.answers().is_empty(), "the hedge runs on");
    assert_eq!(h.pool.stats().counters.aborted_by_restart, 0);
    assert!(h.complete(ms(120), hedge, Ok(json!("hedge"))));
    assert_eq!(h.answers().len(), 1);
}

#[test]
fn restarting_the_hedges_worker_leaves_the_request_to_its_first_attempt() {
    let mut h = hedging(fixed(100), 2);
    let (key, hedge, _, other) = hedged_at_100ms(&mut h);
    h.take_actions();
    h.pool.restart_worker(ms(110), other).unwrap();
    h.drain();
    assert_eq!(aborts(&h), vec![(hedge, other)]);
    assert!(h.answers().is_empty());
    assert!(!h.complete(ms(115), hedge, Ok(json!("late"))));
    assert!(h.complete(ms(120), key, Ok(json!("own"))));
    assert_eq!(h.answers().len(), 1);
}

#[test]
fn a_restart_of_the_worker_a_hedge_runs_alone_on_answers_the_request() {
    let mut h = hedging(fixed(100), 2);
    let (key, _, own, other) = hedged_at_100ms(&mut h);
    h.take_actions();
    h.complete(ms(110), key, Err(failure()));
    assert!(h.answers().is_empty());
    let _ = own;
    h.pool.restart_worker(ms(120), other).unwrap();
    h.drain();
    let answers = h.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].request, key);
    assert_eq!(h.pool.stats().counters.aborted_by_restart, 1);
}

#[test]
fn removing_a_worker_lets_both_attempts_run_and_answers_once() {
    let mut h = hedging(fixed(100), 3);
    let (key, hedge, own, other) = hedged_at_100ms(&mut h);
    h.take_actions();
    h.pool.remove_worker(ms(110), own).unwrap();
    h.drain();
    assert!(h.answers().is_empty());
    assert!(h.complete(ms(120), hedge, Ok(json!("hedge"))));
    assert_eq!(aborts(&h), vec![(key, own)]);
    let answers = h.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].worker, other);
    // The removed worker, its loser aborted, is released.
    assert!(h
        .actions
        .iter()
        .any(|action| matches!(action, Action::StopWorker { worker } if *worker == own)));
}

#[test]
fn a_percentile_delay_waits_for_the_workers_estimate() {
    let mut h = hedging(HedgePolicy::default(), 2);
    // No estimate yet: no hedge timer.
    let key = h.submit(ms(0), &llm("cold")).unwrap();
    h.take_actions();
    assert_eq!(
        h.pool.poll_timeout().map(|(_, why)| why),
        Some(TimeoutReason::ProbeDue)
    );
    h.complete(ms(10), key, Ok(json!(1)));
    // Sixteen runs of 10 ms on every worker.
    let mut now = 10;
    for _ in 0..40 {
        let key = h.submit(ms(now), &llm("warm")).unwrap();
        now += 10;
        h.complete(ms(now), key, Ok(json!(1)));
    }
    h.take_actions();
    let start = now;
    h.submit(ms(start), &llm("slow")).unwrap();
    h.take_actions();
    let (due, why) = h.pool.poll_timeout().expect("a hedge timer");
    assert_eq!(why, TimeoutReason::HedgeDue);
    // The 95th percentile of 10 ms runs, within the estimate's quarter
    // octave.
    assert!(due >= ms(start + 10) && due <= ms(start + 13), "{due:?}");
    h.tick(due);
    assert_eq!(h.started().len(), 1);
}

#[test]
fn a_retry_goes_to_the_routing_policys_pick_among_the_idle_workers() {
    let config = PoolConfig::new(options())
        .with_routing(RoutingPolicy::IdleFirst)
        .with_retries(Some(RetryPolicy::default()));
    let mut h = Harness::with_config(config, 3);
    let a = h.submit(ms(0), &llm("a")).unwrap();
    let b = h.submit(ms(0), &llm("b")).unwrap();
    h.complete(ms(1), b, Ok(json!(1)));
    h.take_actions();
    // Workers 1 and 2 are idle; idle-first's cursor points past worker 1,
    // which took the last request: the retry goes to worker 2.
    h.complete(ms(2), a, Err(failure()));
    let started = h.started();
    assert_eq!(started, vec![(a, h.worker(2))]);
}

#[test]
fn a_request_a_circuit_breaker_placed_is_never_hedged() {
    let mut h = hedging(fixed(100), 2);
    h.pool
        // Vetoed for worker-0: placed on worker-1 by the breaker, pinned.
        .submit_with(ms(0), &llm("vetted"), 9, |id| id != "worker-0")
        .expect("accepted");
    h.drain();
    let start = h.take_actions();
    assert!(
        matches!(
            start[..],
            [Action::Start {
                may_retry: false,
                ..
            }]
        ),
        "nothing kept for a hedge: {start:?}"
    );
    h.tick(ms(100));
    assert!(h.started().is_empty());
    assert_eq!(h.pool.stats().counters.hedged, 0);
}

#[test]
fn a_run_limit_aborts_both_attempts_and_answers_once() {
    let mut h = hedging(fixed(100), 2);
    let limits = PhaseLimits::new().with_run(Duration::from_millis(150));
    let key = h.submit_limited(ms(0), &llm("limited"), limits).unwrap();
    let own = h.started()[0].1;
    h.take_actions();
    h.tick(ms(100));
    let (hedge, other) = h.started()[0];
    h.take_actions();
    // The run limit times the request's own attempt, from its start.
    h.tick(ms(150));
    assert_both_aborted(&h, (key, own), (hedge, other));
    let answers = h.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].result, Err(WorkerPoolError::Timeout));
    assert_eq!(answers[0].limit, Some(TimeoutLimit::Run));
    // Charged to the attempt whose limit passed, not to the hedge's worker.
    assert_eq!(h.pool.worker_health(own).unwrap().consecutive_failures, 1);
    assert_eq!(h.pool.worker_health(other).unwrap().consecutive_failures, 0);
}

#[test]
fn a_refused_hedge_leaves_the_request_to_its_first_attempt() {
    let mut h = hedging(fixed(100), 2);
    let (key, hedge, _, other) = hedged_at_100ms(&mut h);
    h.take_actions();
    assert!(h.pool.handle_refusal(ms(101), hedge));
    h.drain();
    assert!(h.answers().is_empty());
    assert!(h.take_events().iter().any(|event| matches!(
        event,
        Event::AttemptEnded { attempt, worker, .. } if *attempt == hedge && *worker == other
    )));
    // Not charged; the hedge is over, so its late completion is ignored.
    assert_eq!(h.pool.worker_health(other).unwrap().consecutive_failures, 0);
    assert!(!h.complete(ms(102), hedge, Ok(json!("late"))));
    assert!(h.complete(ms(110), key, Ok(json!("own"))));
    let answers = h.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].attempts, 1, "a refused hedge never started");
}

#[test]
fn a_refused_hedge_counts_as_refused_not_started() {
    let mut h = hedging(fixed(100), 2);
    let (key, hedge, _, _) = hedged_at_100ms(&mut h);
    h.take_actions();
    assert!(h.pool.handle_refusal(ms(101), hedge));
    h.drain();
    assert_eq!(h.pool.stats().counters.refused_not_started, 1);
    // Its request's own attempt is refused too: counted once more.
    assert!(h.pool.handle_refusal(ms(102), key));
    h.drain();
    assert_eq!(h.pool.stats().counters.refused_not_started, 2);
}

#[test]
fn a_refused_hedge_running_alone_puts_the_request_back_in_line() {
    let mut h = hedging(fixed(100), 2);
    let (key, hedge, _, _) = hedged_at_100ms(&mut h);
    h.take_actions();
    // Its own attempt fails retryably: the hedge runs on alone.
    assert!(h.complete(ms(110), key, Err(failure())));
    assert!(h.answers().is_empty());
    // The hedge's worker declines it: the request waits again and is
    // started anew under its own key, answered once.
    assert!(h.pool.handle_refusal(ms(111), hedge));
    h.drain();
    let started = h.started();
    assert_eq!(started.len(), 1, "started again on the free worker");
    assert_eq!(started[0].0, key);
    assert!(h.complete(ms(120), key, Ok(json!("again"))));
    let answers = h.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].result, Ok(json!("again")));
    assert_eq!(h.pool.stats().counters.refused_not_started, 1);
}

#[test]
fn attempt_payload_maps_a_live_hedge_to_its_requests_payload_and_stale_keys_to_none() {
    let mut h = hedging(fixed(100), 2);
    let (key, hedge, _, _) = hedged_at_100ms(&mut h);
    let payload = *h.pool.payload(key).expect("accepted");
    assert_eq!(h.pool.attempt_payload(key), Some(&payload), "its own key");
    assert_eq!(h.pool.attempt_payload(hedge), Some(&payload), "racing");
    assert_eq!(h.pool.payload(hedge), None, "a hedge's key is no request's");
    let cutoff = h.pool.cutoff(key);
    assert!(cutoff.is_some());
    assert_eq!(h.pool.cutoff(hedge), cutoff, "cut off with its request");
    // Its own attempt fails retryably: the hedge runs on alone, still the
    // request's attempt.
    assert!(h.complete(ms(110), key, Err(failure())));
    assert_eq!(h.pool.attempt_payload(hedge), Some(&payload), "alone");
    // Answered: both keys are stale.
    assert!(h.complete(ms(120), hedge, Ok(json!("hedge"))));
    assert_eq!(h.answers().len(), 1);
    assert_eq!(h.pool.attempt_payload(hedge), None);
    assert_eq!(h.pool.attempt_payload(key), None);

    // A hedge that ended while its request runs on is stale, its request's
    // own key is not; a later request's hedge names only its own request.
    let (key, hedge, _, _) = hedged_100ms_after(&mut h, 200, "b");
    let payload = *h.pool.payload(key).expect("accepted");
    assert!(h.complete(ms(310), hedge, Err(failure())));
    assert_eq!(h.pool.attempt_payload(hedge), None, "the hedge ended");
    assert_eq!(h.pool.attempt_payload(key), Some(&payload));
    assert!(h.complete(ms(320), key, Ok(json!("own"))));
    assert_eq!(h.pool.attempt_payload(key), None);
}

#[test]
fn a_refusal_of_a_request_running_alone_before_its_hedge_requeues_it() {
    let mut h = hedging(fixed(100), 2);
    let alone = h.submit(ms(0), &llm("alone")).unwrap();
    assert_eq!(h.started().len(), 1);
    assert!(h.pool.refusal_requeues(alone));
    assert!(h.complete(ms(50), alone, Ok(json!("alone"))));
    assert!(!h.pool.refusal_requeues(alone), "answered");
}

#[test]
fn refusal_requeues_only_for_a_requests_sole_or_own_attempt() {
    let mut h = hedging(fixed(100), 2);
    let (key, hedge, _, _) = hedged_at_100ms(&mut h);
    // Racing: a declined hedge just ends; a declined own attempt drops
    // the hedge and waits again.
    assert!(!h.pool.refusal_requeues(hedge));
    assert!(h.pool.refusal_requeues(key));
    // Its own attempt fails retryably: the hedge runs alone, its request's
    // own key is stale.
    assert!(h.complete(ms(110), key, Err(failure())));
    assert!(h.pool.refusal_requeues(hedge));
    assert!(!h.pool.refusal_requeues(key));
    assert!(h.complete(ms(120), hedge, Ok(json!("hedge"))));
    assert!(!h.pool.refusal_requeues(hedge), "answered");
    assert!(!h.pool.refusal_requeues(key), "answered");
}
