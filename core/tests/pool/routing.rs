//! The load-aware routing policies: least-loaded and peak-EWMA picks by
//! two choices, and latency-aware late binding (a slow free worker leaves
//! waiting requests to faster ones, within a bound).

use std::collections::BTreeMap;
use std::time::Duration;

use foreman_core::{
    Event, PoolConfig, RequestKey, RoutingPolicy, Time, TimeoutReason, WorkerKey,
    WorkerPoolOptions, WorkerSecurityPolicy,
};
use serde_json::json;

use crate::harness::{ms, request, Harness};

/// Roomy queues and no default deadline, so that only routing decides.
fn roomy() -> WorkerPoolOptions {
    WorkerPoolOptions {
        queue_capacity: 64,
        health_probe_interval: Duration::from_secs(3_600),
        unavailable_after_failures: 3,
        default_request_timeout: None,
        security_policy: WorkerSecurityPolicy::default(),
    }
}

fn pool(policy: RoutingPolicy, workers: usize, late_binding: bool) -> Harness {
    let config = PoolConfig::new(roomy())
        .with_routing(policy)
        .with_late_binding(late_binding)
        .with_seed(7);
    Harness::with_config(config, workers)
}

/// The workers the requests accepted since events were last taken went to.
fn accepted_on(h: &mut Harness) -> Vec<WorkerKey> {
    h.take_events()
        .iter()
        .filter_map(|event| match event {
            Event::Accepted { worker, .. } => Some(*worker),
            _ => None,
        })
        .collect()
}

/// Runs one request on every worker at `now` (all idle), each taking the
/// latency of its worker's index, so that each worker has a sample; returns
/// when the last one finished.
fn train(h: &mut Harness, now: Time, latency_ms: &[u64]) -> Time {
    h.take_actions();
    let ordinal: BTreeMap<WorkerKey, usize> =
        (0..latency_ms.len()).map(|i| (h.worker(i), i)).collect();
    for i in 0..latency_ms.len() {
        h.submit(now, &request(&format!("train-{i}"))).unwrap();
    }
    let mut runs: Vec<(u64, RequestKey)> = h
        .started()
        .into_iter()
        .map(|(key, worker)| (latency_ms[ordinal[&worker]], key))
        .collect();
    assert_eq!(runs.len(), latency_ms.len(), "every worker was idle");
    runs.sort();
    let start = now.since_epoch().as_millis() as u64;
    for (latency, key) in &runs {
        assert!(h.complete(ms(start + latency), *key, Ok(json!(null))));
    }
    h.take_actions();
    h.take_events();
    ms(start + runs.last().map_or(0, |(latency, _)| *latency))
}

/// A pool of one worker holding four requests (one running, three queued)
/// that a second, fresh worker joins, pinned (no late binding); then four
/// more requests: where they went.
fn four_more_after_a_fresh_worker_joins(policy: RoutingPolicy) -> (Vec<WorkerKey>, WorkerKey) {
    let mut h = pool(policy, 1, false);
    for i in 0..4 {
        h.submit(ms(0), &request(&format!("a{i}"))).unwrap();
    }
    let fresh = h.pool.add_worker(ms(1)).unwrap();
    h.drain();
    h.take_events();
    for i in 0..4 {
        h.submit(ms(2), &request(&format!("b{i}"))).unwrap();
    }
    let stats = h.pool.stats();
    assert_eq!(stats.queued + stats.running, 8);
    (accepted_on(&mut h), fresh)
}

#[test]
fn least_loaded_sends_new_requests_to_the_shorter_queue() {
    // The fresh worker holds fewer until both hold four: the last is a tie.
    let (placed, fresh) = four_more_after_a_fresh_worker_joins(RoutingPolicy::LeastLoaded);
    assert_eq!(placed[..3], [fresh, fresh, fresh]);
    // Round robin, for contrast, alternates whatever the queues.
    let (placed, fresh) = four_more_after_a_fresh_worker_joins(RoutingPolicy::RoundRobin);
    let on_fresh = placed.iter().filter(|worker| **worker == fresh).count();
    assert_eq!(on_fresh, 2, "{placed:?}");
}

#[test]
fn peak_ewma_routes_away_from_a_slow_worker_after_one_sample() {
    let mut h = pool(RoutingPolicy::PeakEwma, 2, true);
    let fast = h.worker(0);
    let mut now = train(&mut h, ms(0), &[2, 900]);
    for i in 0..30 {
        let key = h.submit(now, &request(&format!("r{i}"))).unwrap();
        assert_eq!(h.started(), [(key, fast)], "request {i}");
        h.take_actions();
        now = now + Duration::from_millis(2);
        h.complete(now, key, Ok(json!(null)));
        h.take_actions();
    }
    // Idle-first, for contrast, sends requests to both in turn.
    let mut idle_first = pool(RoutingPolicy::IdleFirst, 2, true);
    let now = train(&mut idle_first, ms(0), &[2, 900]);
    let mut used = Vec::new();
    for i in 0..4 {
        let key = idle_first.submit(now, &request(&format!("r{i}"))).unwrap();
        used.extend(idle_first.started().into_iter().map(|(_, w)| w));
        idle_first.take_actions();
        idle_first.complete(now, key, Ok(json!(null)));
        idle_first.take_actions();
    }
    assert!(used.contains(&idle_first.worker(1)), "{used:?}");
}

#[test]
fn peak_ewma_keeps_a_slow_worker_idle_while_fast_ones_take_the_backlog() {
    let mut h = pool(RoutingPolicy::PeakEwma, 3, true);
    let slow = h.worker(2);
    let start = train(&mut h, ms(0), &[10, 10, 1_000]);
    let base = start.since_epoch().as_millis() as u64;
    let burst: Vec<RequestKey> = (0..12)
        .map(|i| h.submit(start, &request(&format!("b{i}"))).unwrap())
        .collect();
    // The slow worker is free but leaves the requests to the fast ones.
    assert_eq!(h.started().len(), 2);
    assert!(h.started().iter().all(|(_, worker)| *worker != slow));
    assert_eq!(
        h.pool.poll_timeout().map(|(_, reason)| reason),
        Some(TimeoutReason::DeferralEnd)
    );
    let mut finished = 0;
    let mut now = base;
    while finished < burst.len() {
        now += 10;
        for (key, worker) in h.started() {
            assert_ne!(worker, slow, "the slow worker took {key:?}");
        }
        let running: Vec<RequestKey> = h.started().into_iter().map(|(key, _)| key).collect();
        h.take_actions();
        for key in running {
            assert!(h.complete(ms(now), key, Ok(json!(null))));
            finished += 1;
        }
    }
    // Twelve requests on two 10 ms workers: done in 60 ms, where a 1 s run
    // on the slow worker would have held one for a second.
    assert_eq!(now - base, 60);
}

#[test]
fn a_deferred_request_starts_on_the_slow_worker_when_the_fast_one_hangs() {
    let mut h = pool(RoutingPolicy::PeakEwma, 2, true);
    let (fast, slow) = (h.worker(0), h.worker(1));
    let start = train(&mut h, ms(0), &[10, 1_000]);
    let base = start.since_epoch().as_millis() as u64;
    let hung = h.submit(start, &request("hung")).unwrap();
    assert_eq!(h.started(), [(hung, fast)]);
    h.take_actions();
    // The fast worker is expected to free in 10 ms: the slow one waits.
    let waiting = h.submit(start, &request("waiting")).unwrap();
    assert!(h.started().is_empty());
    let (at, reason) = h.pool.poll_timeout().unwrap();
    assert_eq!(reason, TimeoutReason::DeferralEnd);
    // It waits no longer than the slow worker's own estimate (1 s, decayed
    // a little since its sample), then runs the request itself.
    assert!(at > ms(base + 900) && at <= ms(base + 1_000), "{at}");
    h.tick(Time::from_duration(
        at.since_epoch() - Duration::from_nanos(1),
    ));
    assert!(h.started().is_empty());
    h.tick(at);
    assert_eq!(h.started(), [(waiting, slow)]);
    h.take_actions();
    // The same when the fast worker is removed instead.
    h.complete(at + Duration::from_millis(1_000), waiting, Ok(json!(null)));
    let later = at + Duration::from_millis(1_000);
    let next = h.submit(later, &request("next")).unwrap();
    assert!(h.started().is_empty(), "left to the fast worker");
    h.pool.remove_worker(later, fast).unwrap();
    h.drain();
    let (at, _) = h.pool.poll_timeout().unwrap();
    h.tick(at);
    assert!(h.started().contains(&(next, slow)), "{:?}", h.started());
}

/// Two `PeakEwma` workers trained at `latency_ms` (the first the faster),
/// the fast one then running `first`: the pool, the fast and the slow
/// worker, when training ended and `first`.
fn fast_runs_first(latency_ms: [u64; 2]) -> (Harness, WorkerKey, WorkerKey, Time, RequestKey) {
    let mut h = pool(RoutingPolicy::PeakEwma, 2, true);
    let (fast, slow) = (h.worker(0), h.worker(1));
    let start = train(&mut h, ms(0), &latency_ms);
    let first = h.submit(start, &request("first")).unwrap();
    assert_eq!(h.started(), [(first, fast)]);
    h.take_actions();
    (h, fast, slow, start, first)
}

#[test]
fn a_free_slower_worker_still_takes_a_request_it_would_finish_first() {
    let (mut h, _, slow, start, _) = fast_runs_first([60, 100]);
    // The fast worker frees in about 60 ms and would finish a second
    // request in about 120; the slow one finishes it in 100: it takes it.
    let second = h.submit(start, &request("second")).unwrap();
    assert_eq!(h.started(), [(second, slow)]);
}

/// Two workers trained at 10 and 35 ms under `PeakEwma`, at the end of
/// training: the fast one runs `busy`, `waiting` wait for it, and the slow
/// one runs `third` (submitted after them), all from then.
struct FastBusySlowOnThird {
    h: Harness,
    fast: WorkerKey,
    slow: WorkerKey,
    start: Time,
    busy: RequestKey,
    waiting: Vec<RequestKey>,
    third: RequestKey,
}

fn fast_busy_slow_on_third() -> FastBusySlowOnThird {
    let (mut h, fast, slow, start, busy) = fast_runs_first([10, 35]);
    // The fast worker frees in about 10 ms and would finish the oldest in
    // about 20, the slow one in 35: it leaves the two oldest to the fast
    // worker (which reaches the second in about 30 ms) ...
    let waiting: Vec<RequestKey> = (0..2)
        .map(|i| h.submit(start, &request(&format!("w{i}"))).unwrap())
        .collect();
    assert!(h.started().is_empty());
    // ... and runs the third itself, which the fast worker would finish
    // no sooner than it does.
    let third = h.submit(start, &request("third")).unwrap();
    assert_eq!(h.started(), [(third, slow)]);
    h.take_actions();
    FastBusySlowOnThird {
        h,
        fast,
        slow,
        start,
        busy,
        waiting,
        third,
    }
}

#[test]
fn peak_ewma_gives_a_free_slow_worker_a_request_the_fast_ones_would_not_reach_sooner() {
    let setup = fast_busy_slow_on_third();
    let (mut h, fast, busy) = (setup.h, setup.fast, setup.busy);
    let mut now = setup.start + Duration::from_millis(10);
    assert!(h.complete(now, busy, Ok(json!(null))));
    for key in setup.waiting {
        assert_eq!(h.started(), [(key, fast)]);
        h.take_actions();
        now = now + Duration::from_millis(10);
        assert!(h.complete(now, key, Ok(json!(null))));
    }
}

#[test]
fn peak_ewma_leaves_a_request_to_a_faster_worker_that_is_not_overdue() {
    let setup = fast_busy_slow_on_third();
    let (mut h, fast, waiting) = (setup.h, setup.fast, setup.waiting);
    let (busy, third) = (setup.busy, setup.third);
    let base = setup.start.since_epoch().as_millis() as u64;
    let last = h.submit(ms(base + 1), &request("last")).unwrap();
    // The fast worker runs the two waiting, 10 then 15 ms (its estimate
    // rises to 15 ms: it is expected to finish the next at 55).
    assert!(h.complete(ms(base + 10), busy, Ok(json!(null))));
    assert_eq!(h.started(), [(waiting[0], fast)]);
    h.take_actions();
    assert!(h.complete(ms(base + 25), waiting[0], Ok(json!(null))));
    assert_eq!(h.started(), [(waiting[1], fast)]);
    h.take_actions();
    // The slow worker frees at 40 ms (its estimate rises to 40 ms); the
    // last request has waited 39: it is left until the slow worker's own
    // estimate has passed (41 ms), and then still, as the fast worker is
    // not overdue.
    assert!(h.complete(ms(base + 40), third, Ok(json!(null))));
    assert!(h.started().is_empty());
    h.tick(ms(base + 41));
    assert!(h.started().is_empty(), "{:?}", h.started());
    assert!(h.pool.idle_workers() == 1 && h.pool.stats().queued == 1);
    // The fast worker frees at 45 ms and runs it: answered at 60 ms, where
    // the slow worker would have answered at 81.
    assert!(h.complete(ms(base + 45), waiting[1], Ok(json!(null))));
    assert_eq!(h.started(), [(last, fast)]);
    assert_ne!(fast, setup.slow);
}

/// How many of `n` requests submitted at once (none finishing) go to the
/// Degraded first worker of two, at `share` percent.
fn degraded_takes(share: u32, n: usize) -> usize {
    let config = PoolConfig::new(roomy())
        .with_routing(RoutingPolicy::LeastLoaded)
        .with_late_binding(false)
        .with_degraded_share_percent(share);
    let mut h = Harness::with_config(config, 2);
    let degraded = h.worker(0);
    let a = h.submit(ms(0), &request("a")).unwrap();
    let b = h.submit(ms(0), &request("b")).unwrap();
    for (key, worker) in h.started() {
        let result = if worker == degraded {
            Err(crate::harness::failure())
        } else {
            Ok(json!(null))
        };
        assert!(h.complete(ms(1), key, result));
    }
    assert!(![a, b].iter().any(|key| h.pool.cancel(ms(1), *key)));
    assert_eq!(h.status(0), foreman_core::WorkerHealthStatus::Degraded);
    h.take_events();
    for i in 0..n {
        h.submit(ms(2), &request(&format!("r{i}"))).unwrap();
    }
    accepted_on(&mut h)
        .iter()
        .filter(|worker| **worker == degraded)
        .count()
}

#[test]
fn a_degraded_worker_gets_a_reduced_share_not_none() {
    // At 50 % its load counts double: about a third of the requests.
    assert_eq!(degraded_takes(50, 12), 4);
    // At 100 % it competes as a Healthy one (ties go to the Healthy one).
    assert_eq!(degraded_takes(100, 12), 6);
    // At 1 % it is compared only when drawn beside the Healthy one: it
    // gets the one request that found it the only free worker, then none
    // while the other holds fewer than a hundred.
    assert_eq!(degraded_takes(1, 12), 1);
}
