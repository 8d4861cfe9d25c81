//! A saturated worker (its handler refused a request it had not started)
//! is a last resort for routing under every policy: new requests go to the
//! other workers while any of them has room, and queue on a saturated one
//! only when none has.

use foreman_core::{
    Event, PoolConfig, RequestKey, RetryPolicy, RoutingPolicy, Time, TimeoutReason,
    WorkerHealthStatus, WorkerKey, WorkerPoolOptions, WorkerRequest,
};
use serde_json::json;

use crate::harness::{failure, llm, ms, options, probes_started, request, Harness};

fn roomy() -> WorkerPoolOptions {
    WorkerPoolOptions {
        queue_capacity: 16,
        ..options()
    }
}

fn pool(policy: RoutingPolicy, workers: usize) -> Harness {
    Harness::with_config(PoolConfig::new(roomy()).with_routing(policy), workers)
}

/// The worker each request accepted since events were last taken went to.
fn accepted(h: &mut Harness) -> Vec<(RequestKey, WorkerKey)> {
    h.take_events()
        .into_iter()
        .filter_map(|event| match event {
            Event::Accepted { request, worker } => Some((request, worker)),
            _ => None,
        })
        .collect()
}

/// Submits `count` requests at `now`; returns where each was accepted.
fn submit_many(h: &mut Harness, now: Time, count: usize) -> Vec<(RequestKey, WorkerKey)> {
    h.take_events();
    for i in 0..count {
        h.submit(now, &request(&format!("n{i}"))).expect("accepted");
    }
    accepted(h)
}

/// Submits one request at `now` and returns it with the worker it started on.
fn start(h: &mut Harness, now: Time) -> (RequestKey, WorkerKey) {
    start_one(h, now, &request("r"))
}

/// Submits one LLM call (which a retry policy covers) at `now` and returns
/// it with the worker it started on.
fn start_llm(h: &mut Harness, now: Time) -> (RequestKey, WorkerKey) {
    start_one(h, now, &llm("r"))
}

/// Submits `req` at `now` and returns it with the worker it started on.
fn start_one(h: &mut Harness, now: Time, req: &WorkerRequest) -> (RequestKey, WorkerKey) {
    h.take_actions();
    let key = h.submit(now, req).expect("accepted");
    let started = h.started();
    let worker = started
        .into_iter()
        .find_map(|(request, worker)| (request == key).then_some(worker))
        .expect("started at once");
    (key, worker)
}

#[test]
fn round_robin_binds_no_new_request_to_a_saturated_worker_until_a_probe_answers() {
    let mut h = pool(RoutingPolicy::RoundRobin, 3);
    let (key, saturated) = start(&mut h, ms(0));
    assert!(h.pool.handle_refusal(ms(1), key));
    h.drain();
    let placed = submit_many(&mut h, ms(2), 8);
    assert_eq!(placed.len(), 8);
    assert!(
        placed.iter().all(|(_, worker)| *worker != saturated),
        "round robin skips the saturated worker: {placed:?}"
    );
    // A probe answering frees it: the rotation takes it again.
    h.tick(ms(5_000));
    for (worker, probe) in probes_started(&mut h) {
        assert!(h
            .pool
            .handle_probe_result(ms(5_001), worker, probe, WorkerHealthStatus::Healthy));
    }
    h.drain();
    let placed = submit_many(&mut h, ms(5_002), 3);
    assert!(
        placed.iter().any(|(_, worker)| *worker == saturated),
        "back in the rotation: {placed:?}"
    );
}

#[test]
fn a_saturated_worker_takes_new_requests_again_once_one_of_its_runs_ends() {
    // Two run slots per worker: the saturated worker still runs one
    // request; when it ends, the worker is back in the rotation.
    let config = PoolConfig::new(roomy())
        .with_routing(RoutingPolicy::RoundRobin)
        .with_max_concurrency_per_worker(2);
    let mut h = Harness::with_config(config, 2);
    let (running, a) = start(&mut h, ms(0));
    let (_, b) = start(&mut h, ms(0));
    assert_ne!(a, b, "round robin took the next worker");
    let (refused, on) = start(&mut h, ms(0));
    assert_eq!(on, a, "round robin came back to the first worker");
    assert!(h.pool.handle_refusal(ms(1), refused));
    h.drain();
    let placed = submit_many(&mut h, ms(2), 4);
    assert!(placed.iter().all(|(_, to)| *to == b), "{placed:?}");
    assert!(h.complete(ms(3), running, Ok(json!(1))));
    let placed = submit_many(&mut h, ms(4), 2);
    assert!(placed.iter().any(|(_, to)| *to == a), "{placed:?}");
}

/// Two workers under `policy`, each running one request; the first
/// worker then refuses its request, which moves behind the other's.
/// Returns the pool, the refused request and the saturated worker, and the
/// other request and its worker.
fn one_of_two_refuses(
    policy: RoutingPolicy,
) -> (Harness, (RequestKey, WorkerKey), (RequestKey, WorkerKey)) {
    let mut h = pool(policy, 2);
    let (first, a) = start(&mut h, ms(0));
    let (second, b) = start(&mut h, ms(0));
    assert_ne!(a, b, "{policy:?}: one request per worker");
    assert!(h.pool.handle_refusal(ms(1), first));
    h.drain();
    (h, (first, a), (second, b))
}

#[test]
fn no_policy_routes_a_new_request_to_a_saturated_worker_while_another_has_room() {
    for policy in RoutingPolicy::ALL {
        let (mut h, _, (_, b)) = one_of_two_refuses(policy);
        // Every worker is busy; only `b` is not saturated, with room.
        let placed = submit_many(&mut h, ms(2), 6);
        assert_eq!(placed.len(), 6, "{policy:?}");
        assert!(
            placed.iter().all(|(_, worker)| *worker == b),
            "{policy:?} placed on the saturated worker: {placed:?}"
        );
    }
}

#[test]
fn with_every_worker_saturated_a_new_request_queues_and_starts_when_one_frees() {
    for policy in RoutingPolicy::ALL {
        let (mut h, (first, _), (second, _)) = one_of_two_refuses(policy);
        assert!(h.pool.handle_refusal(ms(1), second));
        h.drain();
        h.take_actions();
        let key = h
            .submit(ms(2), &request("late"))
            .unwrap_or_else(|error| panic!("{policy:?}: queued, not refused: {error}"));
        assert!(h.started().is_empty(), "{policy:?}: every worker saturated");
        // A probe answers for every worker: they start what waits, and
        // the new request starts once a run ends.
        h.tick(ms(5_000));
        for (worker, probe) in probes_started(&mut h) {
            assert!(h.pool.handle_probe_result(
                ms(5_001),
                worker,
                probe,
                WorkerHealthStatus::Healthy
            ));
        }
        h.drain();
        let mut started: Vec<RequestKey> = h.started().into_iter().map(|(k, _)| k).collect();
        assert_eq!(started.len(), 2, "{policy:?}: both workers free");
        h.take_actions();
        for run in started.clone() {
            assert!(h.complete(ms(5_002), run, Ok(json!(1))));
        }
        started.extend(h.started().into_iter().map(|(k, _)| k));
        started.sort();
        let mut pending = vec![first, second, key];
        pending.sort();
        assert_eq!(started, pending, "{policy:?}");
    }
}

#[test]
fn a_drain_without_a_deadline_finishes_once_each_saturation_expires() {
    // One worker, requests without a deadline: the refused request can
    // only wait for it. Probes stop at the shutdown, so only the
    // saturation's own expiry, one probe interval after each refusal, lets
    // the drain finish.
    let options = WorkerPoolOptions {
        default_request_timeout: None,
        ..roomy()
    };
    let mut h = Harness::with_config(PoolConfig::new(options), 1);
    let (key, worker) = start(&mut h, ms(0));
    h.take_actions();
    assert!(h.pool.handle_refusal(ms(1), key));
    h.drain();
    h.pool.begin_shutdown(ms(2), None);
    h.drain();
    assert!(h.started().is_empty(), "saturated: nothing starts");
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(5_001), TimeoutReason::SaturationExpiry))
    );
    h.tick(ms(5_001));
    assert_eq!(h.started(), vec![(key, worker)], "the expiry starts it");
    // Refused again while draining: saturated for another interval.
    h.take_actions();
    assert!(h.pool.handle_refusal(ms(5_002), key));
    h.drain();
    h.tick(ms(10_001));
    assert!(h.started().is_empty(), "not before the interval has passed");
    h.tick(ms(10_002));
    assert_eq!(h.started(), vec![(key, worker)]);
    assert!(h.complete(ms(10_003), key, Ok(json!(1))));
    assert!(h
        .take_events()
        .iter()
        .any(|event| matches!(event, Event::ShutdownComplete { .. })));
    assert_eq!(h.pool.poll_timeout(), None, "a stopped pool sleeps");
}

#[test]
fn a_saturation_expires_one_probe_interval_after_the_refusal_when_no_probe_answers() {
    let mut h = pool(RoutingPolicy::IdleFirst, 1);
    let (key, worker) = start(&mut h, ms(0));
    h.take_actions();
    assert!(h.pool.handle_refusal(ms(1), key));
    h.drain();
    // The probe at 5 s never answers; the saturation ends at 5.001 s.
    h.tick(ms(5_000));
    assert!(h.started().is_empty());
    h.tick(ms(5_001));
    assert_eq!(h.started(), vec![(key, worker)]);
}

#[test]
fn a_retry_that_leaves_a_saturated_worker_ends_its_saturation() {
    // Three workers with two run slots each: `a` refuses its second
    // request (it moves to `b`), then its first fails retryably and runs
    // again on `c`. The retry ended `a`'s last run: `a` is free, not
    // saturated, and the next request starts there at once.
    let config = PoolConfig::new(roomy())
        .with_routing(RoutingPolicy::IdleFirst)
        .with_max_concurrency_per_worker(2)
        .with_retries(Some(RetryPolicy::default()));
    let mut h = Harness::with_config(config, 3);
    let (first, a) = start_llm(&mut h, ms(0));
    let (_, b) = start_llm(&mut h, ms(0));
    let (_, c) = start_llm(&mut h, ms(0));
    let (refused, on) = start_llm(&mut h, ms(0));
    assert_eq!(on, a, "idle-first came back to the first worker");
    h.take_actions();
    assert!(h.pool.handle_refusal(ms(1), refused));
    h.drain();
    assert_eq!(
        h.started(),
        vec![(refused, b)],
        "moved to the next free worker"
    );
    h.take_actions();
    assert!(h.complete(ms(2), first, Err(failure())));
    assert_eq!(h.started(), vec![(first, c)], "retried on the free worker");
    h.take_actions();
    let (_, to) = start_llm(&mut h, ms(3));
    assert_eq!(to, a, "the retry's worker took it at once, saturation over");
}
