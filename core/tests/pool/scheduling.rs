//! Scheduling: which worker takes a request (round robin, idle first,
//! Healthy before Degraded) and which queued request a freed worker runs
//! (late binding).

use foreman_core::{
    Event, PoolConfig, WorkerErrorCode, WorkerHealthStatus, WorkerKey, WorkerPoolError,
    WorkerPoolOptions, WorkerProtocolError,
};
use serde_json::json;

use crate::harness::{failure, ms, options, request, Harness};

#[test]
fn round_robin_spreads_requests_over_workers() {
    let mut h = Harness::new(options(), 3);
    let mut workers = Vec::new();
    for i in 0..6 {
        h.submit(ms(0), &request(&format!("r{i}"))).unwrap();
    }
    for event in h.take_events() {
        if let Event::Accepted { worker, .. } = event {
            workers.push(worker);
        }
    }
    let (w0, w1, w2) = (h.worker(0), h.worker(1), h.worker(2));
    assert_eq!(workers, vec![w0, w1, w2, w0, w1, w2]);
}

#[test]
fn routing_skips_unavailable_workers() {
    let mut h = Harness::new(
        WorkerPoolOptions {
            unavailable_after_failures: 1,
            ..options()
        },
        2,
    );
    let key = h.submit(ms(0), &request("a")).unwrap();
    h.complete(ms(1), key, Err(failure()));
    assert_eq!(h.status(0), WorkerHealthStatus::Unavailable);
    h.take_events();
    for i in 0..3 {
        let key = h.submit(ms(2), &request(&format!("b{i}"))).unwrap();
        assert!(h.take_events().iter().any(
            |e| matches!(e, Event::Accepted { request, worker } if *request == key && *worker == h.worker(1))
        ));
    }
}

#[test]
fn concurrency_above_one_runs_several_requests_per_worker() {
    let mut config = PoolConfig::new(options());
    config.max_concurrency_per_worker = 3;
    let mut h = Harness::with_config(config, 1);
    for i in 0..5 {
        h.submit(ms(0), &request(&format!("r{i}"))).unwrap();
    }
    assert_eq!(h.started().len(), 3);
    assert_eq!(h.pool.stats().queued, 2);
    assert_eq!(
        h.submit(ms(0), &request("full")),
        Err(WorkerPoolError::QueueFull)
    );
}

#[test]
fn idle_first_never_queues_behind_a_busy_worker_while_another_is_idle() {
    let reference =
        PoolConfig::new(options()).with_routing(foreman_core::RoutingPolicy::RoundRobin);
    for (config, expect_second_on) in [(PoolConfig::new(options()), 1usize), (reference, 0)] {
        let mut h = Harness::with_config(config, 2);
        // r0 -> worker-0, r1 -> worker-1; r1 finishes, worker-0 stays busy.
        let r0 = h.submit(ms(0), &request("r0")).unwrap();
        let r1 = h.submit(ms(0), &request("r1")).unwrap();
        h.complete(ms(1), r1, Ok(json!(1)));
        h.take_events();
        // Round robin's turn is worker-0 (busy); idle-first picks worker-1.
        let r2 = h.submit(ms(2), &request("r2")).unwrap();
        let accepted_on = h.take_events().into_iter().find_map(|event| match event {
            Event::Accepted { request, worker } if request == r2 => Some(worker),
            _ => None,
        });
        assert_eq!(accepted_on, Some(h.worker(expect_second_on)));
        let _ = r0;
    }
}

/// A request queued behind a slow worker runs on the first
/// worker that frees up, in arrival order, instead of waiting its turn.
#[test]
fn late_binding_runs_queued_requests_on_the_first_free_worker() {
    let mut h = Harness::new(options(), 2);
    let (w0, w1) = (h.worker(0), h.worker(1));
    let slow = h.submit(ms(0), &request("slow")).unwrap();
    let fast = h.submit(ms(0), &request("fast")).unwrap();
    assert_eq!(h.started(), [(slow, w0), (fast, w1)]);
    // Both busy: round robin queues them on w0 then w1.
    let first = h.submit(ms(1), &request("first")).unwrap();
    let second = h.submit(ms(2), &request("second")).unwrap();
    let queued_on: Vec<WorkerKey> = h
        .take_events()
        .iter()
        .filter_map(|event| match event {
            Event::Accepted { worker, .. } => Some(*worker),
            _ => None,
        })
        .collect();
    assert_eq!(queued_on[2..], [w0, w1]);
    h.take_actions();
    // The fast worker finishes: it takes `first` (queued on the slow w0,
    // which keeps running) before its own `second`.
    h.complete(ms(3), fast, Ok(json!(null)));
    assert_eq!(h.started(), [(first, w1)]);
    assert!(h.take_events().contains(&Event::Requeued {
        request: first,
        from: w0,
        to: w1
    }));
    h.take_actions();
    h.complete(ms(4), first, Ok(json!(null)));
    assert_eq!(h.started(), [(second, w1)]);
    let stats = h.pool.stats();
    assert_eq!((stats.queued, stats.running), (0, 2));
    assert_eq!(h.pool.counters().reassigned, 1);
    // The slow worker's room came back when `first` left it.
    assert_eq!(h.pool.eligible_workers(), 2);
}

/// A request a circuit breaker vetoed for some worker stays on the worker
/// that took it: late binding never moves it to one the breaker may refuse.
#[test]
fn a_vetoed_request_stays_on_its_worker() {
    let mut h = Harness::new(options(), 2);
    let (w0, w1) = (h.worker(0), h.worker(1));
    let a = h.submit(ms(0), &request("a")).unwrap();
    let b = h.submit(ms(0), &request("b")).unwrap();
    assert_eq!(h.started(), [(a, w0), (b, w1)]);
    h.take_actions();
    // Vetoed by w0 (asked first): queued on w1, and only w1 may run it.
    let pinned = h
        .pool
        .submit_with(ms(1), &request("pinned"), 9, |id| id != "worker-0")
        .unwrap();
    h.drain();
    assert!(h.take_events().contains(&Event::Rejected {
        worker: Some(w0),
        reason: WorkerErrorCode::CircuitOpen
    }));
    h.complete(ms(2), a, Ok(json!(null)));
    assert_eq!(h.started(), [], "w0 must not take a request vetoed for it");
    h.complete(ms(3), b, Ok(json!(null)));
    assert_eq!(h.started(), [(pinned, w1)]);
    assert_eq!(h.pool.counters().reassigned, 0);
}

/// Idle Healthy workers are chosen before idle Degraded ones.
#[test]
fn idle_healthy_workers_are_chosen_before_degraded_ones() {
    let mut h = Harness::new(options(), 3);
    let w0 = h.worker(0);
    let first = h.submit(ms(0), &request("fails")).unwrap();
    assert_eq!(h.started(), [(first, w0)]);
    h.take_actions();
    h.complete(
        ms(1),
        first,
        Err(WorkerProtocolError::new(
            WorkerErrorCode::ExecutionFailed,
            "boom",
            false,
        )),
    );
    assert_eq!(
        h.pool.health().first().map(|health| health.status),
        Some(WorkerHealthStatus::Degraded)
    );
    // Sequential requests on an otherwise idle pool never go to w0.
    for i in 0..6 {
        let key = h.submit(ms(2 + i), &request(&format!("r{i}"))).unwrap();
        let started = h.started();
        assert_eq!(started.len(), 1);
        assert_ne!(
            started[0].1, w0,
            "a Degraded worker was chosen over idle Healthy ones"
        );
        h.take_actions();
        h.complete(ms(2 + i), key, Ok(json!(null)));
        h.take_actions();
    }
    // With the Healthy ones busy, the Degraded worker still serves.
    let _ = h.submit(ms(10), &request("x")).unwrap();
    let _ = h.submit(ms(10), &request("y")).unwrap();
    h.take_actions();
    let z = h.submit(ms(10), &request("z")).unwrap();
    assert_eq!(h.started(), [(z, w0)]);
}

#[test]
fn a_freed_worker_runs_its_own_request_before_an_equally_old_one_of_another() {
    let mut h = Harness::new(options(), 2);
    let r0 = h.submit(ms(0), &request("r0")).unwrap();
    let r1 = h.submit(ms(0), &request("r1")).unwrap();
    let running: Vec<_> = h.started();
    h.take_actions();
    h.take_events();
    // Both arrive at the same instant, `older` first, on different workers.
    let older = h.submit(ms(1), &request("older")).unwrap();
    let own = h.submit(ms(1), &request("own")).unwrap();
    let queued_on = |events: &[Event], key| {
        events.iter().find_map(|event| match event {
            Event::Accepted { request, worker } if *request == key => Some(*worker),
            _ => None,
        })
    };
    let events = h.take_events();
    let (older_on, own_on) = (
        queued_on(&events, older).unwrap(),
        queued_on(&events, own).unwrap(),
    );
    assert_ne!(older_on, own_on);
    // The worker of `own` frees up first: it runs `own`, reassigning nothing.
    let (freed, _) = [(r0, running[0].1), (r1, running[1].1)]
        .into_iter()
        .find(|(_, worker)| *worker == own_on)
        .unwrap();
    h.complete(ms(2), freed, Ok(json!(null)));
    assert_eq!(h.started(), vec![(own, own_on)]);
    assert!(!h
        .take_events()
        .iter()
        .any(|event| matches!(event, Event::Requeued { .. })));
    assert_eq!(h.pool.counters().reassigned, 0);
}
