//! Shutdown: new work refused, what the pool holds drained until the drain
//! deadline, then aborted; every worker stopped.

use std::time::Duration;

use foreman_core::{
    Action, CommandError, Event, HealthCause, PoolConfig, TimeoutReason, WorkerHealthStatus,
    WorkerPoolError, WorkerPoolOptions, WorkerSecurityPolicy,
};
use serde_json::json;

use crate::harness::{ms, options, probes_started, request, Harness};

#[test]
fn shutdown_refuses_new_work_and_drains_what_it_holds() {
    let mut h = Harness::new(options(), 2);
    let a = h.submit(ms(0), &request("a")).unwrap();
    let b = h.submit(ms(0), &request("b")).unwrap();
    let c = h.submit(ms(0), &request("c")).unwrap();
    h.take_actions();
    h.pool.begin_shutdown(ms(1), None);
    h.drain();
    assert!(h.pool.is_shutting_down());
    assert_eq!(
        h.submit(ms(1), &request("late")),
        Err(WorkerPoolError::ShuttingDown)
    );
    h.complete(ms(2), a, Ok(json!("a")));
    let started = h.started();
    assert_eq!(
        started.len(),
        1,
        "queued requests still run during the drain"
    );
    assert_eq!(started[0].0, c);
    h.complete(ms(3), b, Ok(json!("b")));
    assert!(!h.pool.is_stopped());
    h.take_actions();
    h.complete(ms(4), c, Ok(json!("c")));
    let actions = h.take_actions();
    let stops = actions
        .iter()
        .filter(|a| matches!(a, Action::StopWorker { .. }))
        .count();
    assert_eq!(stops, 2);
    assert!(h.pool.is_stopped());
    assert!(h
        .events
        .iter()
        .any(|e| matches!(e, Event::ShutdownComplete { .. })));
    assert!(h
        .pool
        .health()
        .iter()
        .all(|w| w.status == WorkerHealthStatus::Unavailable));
    assert_eq!(
        h.pool.poll_timeout(),
        None,
        "a stopped pool needs no wake-up"
    );
    assert_eq!(
        h.submit(ms(5), &request("after")),
        Err(WorkerPoolError::ShuttingDown)
    );
}

#[test]
fn the_drain_deadline_aborts_and_answers_the_rest() {
    let mut h = Harness::new(options(), 1);
    let running = h.submit(ms(0), &request("a")).unwrap();
    let queued = h.submit(ms(0), &request("b")).unwrap();
    h.take_actions();
    h.pool
        .begin_shutdown(ms(10), Some(Duration::from_millis(100)));
    h.drain();
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(110), TimeoutReason::DrainDeadline))
    );
    h.tick(ms(110));
    let actions = h.take_actions();
    let mut answered = Vec::new();
    for action in &actions {
        if let Action::Answer(answer) = action {
            assert_eq!(answer.result, Err(WorkerPoolError::ShuttingDown));
            answered.push(answer.request);
        }
    }
    answered.sort();
    let mut expected = vec![running, queued];
    expected.sort();
    assert_eq!(answered, expected);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Abort { request, .. } if *request == running)));
    assert!(h.pool.is_stopped());
    assert_eq!(h.pool.counters().aborted_by_shutdown, 2);
}

#[test]
fn shutdown_of_an_idle_pool_completes_at_once_and_a_zero_drain_aborts_at_once() {
    let mut h = Harness::new(options(), 1);
    h.pool.begin_shutdown(ms(0), None);
    h.drain();
    assert!(h.pool.is_stopped());
    let mut h = Harness::new(options(), 1);
    h.submit(ms(0), &request("a")).unwrap();
    h.pool.begin_shutdown(ms(1), Some(Duration::ZERO));
    h.drain();
    assert!(h.pool.is_stopped());
    assert_eq!(h.pool.pending(), 0);
}

#[test]
fn a_second_shutdown_can_only_bring_the_deadline_closer() {
    let mut h = Harness::new(options(), 1);
    h.submit(ms(0), &request("a")).unwrap();
    h.pool.begin_shutdown(ms(0), Some(Duration::from_secs(10)));
    h.pool.begin_shutdown(ms(0), Some(Duration::from_secs(60)));
    h.pool.begin_shutdown(ms(0), None);
    h.drain();
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(10_000), TimeoutReason::DrainDeadline))
    );
    h.pool.begin_shutdown(ms(0), Some(Duration::from_secs(1)));
    h.drain();
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(1_000), TimeoutReason::DrainDeadline))
    );
}

#[test]
fn the_default_drain_is_the_longest_request_budget() {
    let config = PoolConfig::new(options());
    assert_eq!(config.default_drain(), Duration::from_millis(120_000));
    let config = PoolConfig::new(WorkerPoolOptions {
        security_policy: WorkerSecurityPolicy {
            max_request_timeout_ms: 10,
            ..WorkerSecurityPolicy::default()
        },
        ..options()
    });
    assert_eq!(config.default_drain(), Duration::from_secs(30));
}

#[test]
fn removing_a_worker_after_shutdown_is_refused() {
    let mut h = Harness::new(options(), 2);
    h.pool.begin_shutdown(ms(0), None);
    h.drain();
    assert!(h.pool.is_stopped());
    let w0 = h.worker(0);
    for _ in 0..2 {
        assert_eq!(
            h.pool.remove_worker(ms(1), w0),
            Err(CommandError::ShuttingDown)
        );
    }
    h.drain();
    assert_eq!(h.pool.workers().count(), 2, "the worker stays listed");
    assert!(h.pool.stats().workers.iter().all(|w| !w.removing));
}

#[test]
fn shutdown_restart_and_removal_abort_the_outstanding_probe() {
    let mut h = Harness::new(options(), 3);
    h.tick(ms(5_000));
    let probes = probes_started(&mut h);
    assert_eq!(probes.len(), 3);
    let aborted = |actions: &[Action<u32>]| -> Vec<_> {
        actions
            .iter()
            .filter_map(|action| match action {
                Action::AbortProbe { worker, probe } => Some((*worker, *probe)),
                _ => None,
            })
            .collect()
    };
    h.pool.restart_worker(ms(5_001), probes[0].0).unwrap();
    h.drain();
    assert_eq!(aborted(&h.take_actions()), [probes[0]]);
    h.pool.remove_worker(ms(5_002), probes[1].0).unwrap();
    h.drain();
    assert_eq!(aborted(&h.take_actions()), [probes[1]]);
    h.pool.begin_shutdown(ms(5_003), None);
    h.drain();
    assert_eq!(aborted(&h.take_actions()), [probes[2]]);
    for (worker, probe) in probes {
        assert!(!h
            .pool
            .handle_probe_result(ms(5_004), worker, probe, WorkerHealthStatus::Healthy));
    }
}

#[test]
fn a_completed_shutdown_reports_every_worker_not_yet_unavailable_as_stopped() {
    let mut h = Harness::new(options(), 3);
    let (w0, w1, w2) = (h.worker(0), h.worker(1), h.worker(2));
    // Probes find worker-1 degraded and worker-2 unavailable.
    h.tick(ms(5_000));
    for action in h.take_actions() {
        if let Action::RunProbe { worker, probe } = action {
            let status = match worker {
                w if w == w1 => WorkerHealthStatus::Degraded,
                w if w == w2 => WorkerHealthStatus::Unavailable,
                _ => WorkerHealthStatus::Healthy,
            };
            assert!(h.pool.handle_probe_result(ms(5_001), worker, probe, status));
        }
    }
    h.drain();
    assert_eq!(
        [h.status(0), h.status(1), h.status(2)],
        [
            WorkerHealthStatus::Healthy,
            WorkerHealthStatus::Degraded,
            WorkerHealthStatus::Unavailable
        ]
    );
    h.take_events();
    h.pool.begin_shutdown(ms(5_010), None);
    h.drain();
    let events = h.take_events();
    let stopped: Vec<_> = events
        .iter()
        .filter_map(|event| match event {
            Event::HealthChanged {
                worker,
                from,
                to,
                cause,
                at,
            } => Some((*worker, *from, *to, *cause, *at)),
            _ => None,
        })
        .collect();
    assert_eq!(
        stopped,
        [
            (
                w0,
                WorkerHealthStatus::Healthy,
                WorkerHealthStatus::Unavailable,
                HealthCause::Stopped,
                ms(5_010)
            ),
            (
                w1,
                WorkerHealthStatus::Degraded,
                WorkerHealthStatus::Unavailable,
                HealthCause::Stopped,
                ms(5_010)
            ),
        ]
    );
    assert!(matches!(events.last(), Some(Event::ShutdownComplete { at }) if *at == ms(5_010)));
}
