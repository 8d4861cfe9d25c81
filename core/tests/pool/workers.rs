//! Worker commands: restart, add and remove (and where a removed worker's
//! requests go), worker ids, and inputs naming what no longer exists.

use foreman_core::{
    Action, CommandError, Event, RequestKey, TimeoutReason, WorkerErrorCode, WorkerHealthStatus,
    WorkerKey, WorkerPoolError, WorkerPoolOptions,
};
use serde_json::json;

use crate::harness::{
    assert_unavailable, failure, ms, one_running_one_queued, options, request, run_probe, Harness,
};

#[test]
fn restart_aborts_the_running_request_and_keeps_the_queue() {
    let mut h = Harness::new(
        WorkerPoolOptions {
            unavailable_after_failures: 1,
            ..options()
        },
        1,
    );
    let failing = h.submit(ms(0), &request("f")).unwrap();
    h.complete(ms(1), failing, Err(failure()));
    assert_eq!(h.status(0), WorkerHealthStatus::Unavailable);
    // Requests queued before the ejection are still held.
    let mut h = Harness::new(options(), 1);
    let running = h.submit(ms(0), &request("running")).unwrap();
    let queued = h.submit(ms(0), &request("queued")).unwrap();
    h.take_actions();
    let worker = h.worker(0);
    h.pool.restart_worker(ms(2), worker).unwrap();
    h.drain();
    let actions = h.take_actions();
    assert!(matches!(actions[0], Action::Abort { request, .. } if request == running));
    match &actions[1] {
        Action::Answer(answer) => match &answer.result {
            Err(WorkerPoolError::Worker(error)) => {
                assert_eq!(error.code, WorkerErrorCode::Cancelled);
                assert!(error.retryable);
                assert!(error.message.contains("restarted"), "{}", error.message);
            }
            other => panic!("unexpected {other:?}"),
        },
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(actions[2], Action::RestartWorker { worker: w } if w == worker));
    assert!(matches!(actions[3], Action::Start { request, .. } if request == queued));
    assert_eq!(h.pool.counters().aborted_by_restart, 1);
    assert_eq!(
        h.pool.restart_worker(ms(3), WorkerKey::from_u64(999)),
        Err(CommandError::UnknownWorker(WorkerKey::from_u64(999)))
    );
}

#[test]
fn restart_resets_health() {
    let mut h = Harness::new(
        WorkerPoolOptions {
            unavailable_after_failures: 1,
            ..options()
        },
        1,
    );
    let key = h.submit(ms(0), &request("f")).unwrap();
    h.complete(ms(1), key, Err(failure()));
    assert_eq!(h.status(0), WorkerHealthStatus::Unavailable);
    let worker = h.worker(0);
    h.pool.restart_worker(ms(2), worker).unwrap();
    h.drain();
    assert_eq!(h.status(0), WorkerHealthStatus::Healthy);
    assert!(h.submit(ms(3), &request("ok")).is_ok());
}

#[test]
fn removing_a_worker_requeues_its_queue_and_lets_the_running_request_finish() {
    let mut h = Harness::new(options(), 2);
    // worker-0 gets r0 (running) and r2 (queued); worker-1 gets r1, r3.
    let keys: Vec<_> = (0..4)
        .map(|i| h.submit(ms(0), &request(&format!("r{i}"))).unwrap())
        .collect();
    h.take_actions();
    h.take_events();
    let (w0, w1) = (h.worker(0), h.worker(1));
    h.pool.remove_worker(ms(1), w0).unwrap();
    h.drain();
    assert!(h.take_events().contains(&Event::Requeued {
        request: keys[2],
        from: w0,
        to: w1
    }));
    assert_eq!(
        h.status(0),
        WorkerHealthStatus::Unavailable,
        "a worker being removed takes no traffic"
    );
    assert_eq!(
        h.pool.remove_worker(ms(1), w0),
        Err(CommandError::WorkerRemoving("worker-0".into()))
    );
    assert!(
        h.take_actions().is_empty(),
        "nothing stops until its running request ends"
    );
    h.complete(ms(2), keys[0], Ok(json!(0)));
    let actions = h.take_actions();
    assert!(matches!(&actions[0], Action::Answer(a) if a.request == keys[0] && a.result.is_ok()));
    assert!(matches!(actions[1], Action::StopWorker { worker } if worker == w0));
    assert_eq!(h.pool.workers().count(), 1);
    assert_eq!(h.pool.worker_key("worker-0"), None);
}

#[test]
fn removal_answers_what_no_other_worker_can_take() {
    let (mut h, queued) = one_running_one_queued();
    h.take_actions();
    let worker = h.worker(0);
    h.pool.remove_worker(ms(1), worker).unwrap();
    h.drain();
    let answer = h.answers().pop().unwrap();
    assert_eq!(answer.request, queued);
    assert_unavailable(&answer.result, "worker-0 was removed");
}

#[test]
fn added_workers_take_traffic_and_names_are_unique() {
    let mut h = Harness::new(options(), 0);
    let named = h.pool.add_named_worker(ms(0), "gpu-1").unwrap();
    assert_eq!(
        h.pool.add_named_worker(ms(0), "gpu-1"),
        Err(CommandError::DuplicateWorkerId("gpu-1".into()))
    );
    assert!(matches!(
        h.pool.add_named_worker(ms(0), ""),
        Err(CommandError::InvalidWorkerId { .. })
    ));
    assert_eq!(h.pool.worker_key("gpu-1"), Some(named));
    assert_eq!(h.pool.worker_id(named), Some("gpu-1"));
    let auto = h.pool.add_worker(ms(0)).unwrap();
    assert_eq!(h.pool.worker_id(auto), Some("worker-0"));
    h.drain();
    h.submit(ms(1), &request("a")).unwrap();
}

#[test]
fn inputs_naming_unknown_things_are_ignored() {
    let mut h = Harness::new(options(), 1);
    let ghost = RequestKey::from_u64(u64::MAX);
    assert!(!h.pool.cancel(ms(0), ghost));
    assert!(!h.pool.handle_completion(ms(0), ghost, Ok(json!(null))));
    let worker = h.worker(0);
    h.tick(ms(5_000));
    let (_, probe) = run_probe(&mut h);
    assert!(!h.pool.handle_probe_result(
        ms(0),
        WorkerKey::from_u64(77),
        probe,
        WorkerHealthStatus::Healthy
    ));
    let key = h.submit(ms(5_000), &request("a")).unwrap();
    // A completion for a queued (not running) request is ignored too.
    let queued = h.submit(ms(5_000), &request("b")).unwrap();
    assert!(!h.pool.handle_completion(ms(5_000), queued, Ok(json!(null))));
    assert!(h.pool.handle_completion(ms(5_000), key, Ok(json!(null))));
    assert!(
        !h.pool.handle_completion(ms(5_000), key, Ok(json!(null))),
        "a double completion is ignored"
    );
    h.drain();
    let _ = worker;
}

#[test]
fn worker_ids_are_one_to_max_worker_id_len_bytes_long() {
    let mut h = Harness::new(options(), 0);
    let longest = "w".repeat(foreman_core::MAX_WORKER_ID_LEN);
    let key = h.pool.add_named_worker(ms(0), longest.clone()).unwrap();
    assert_eq!(h.pool.worker_id(key), Some(longest.as_str()));
    let too_long = "w".repeat(foreman_core::MAX_WORKER_ID_LEN + 1);
    match h.pool.add_named_worker(ms(0), too_long) {
        Err(CommandError::InvalidWorkerId { reason }) => {
            assert!(reason.contains("1 to 1024 bytes"), "{reason}");
            assert!(reason.contains("1025"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    h.drain();
    assert_eq!(h.pool.workers().count(), 1);
}

#[test]
fn a_command_target_is_found_by_id_until_the_pool_stops() {
    let mut h = Harness::new(options(), 2);
    let w1 = h.worker(1);
    assert_eq!(h.pool.command_target("worker-1"), Ok(w1));
    assert_eq!(
        h.pool.command_target("nope"),
        Err(CommandError::UnknownWorkerId("nope".into()))
    );
    // Draining: commands still reach the workers.
    let key = h.submit(ms(0), &request("a")).unwrap();
    h.pool.begin_shutdown(ms(1), None);
    h.drain();
    assert!(!h.pool.is_stopped());
    assert_eq!(h.pool.command_target("worker-1"), Ok(w1));
    h.complete(ms(2), key, Ok(json!(1)));
    assert!(h.pool.is_stopped());
    assert_eq!(
        h.pool.command_target("worker-1"),
        Err(CommandError::ShuttingDown)
    );
}

#[test]
fn a_restarted_worker_is_probed_an_interval_later_while_the_pool_runs() {
    let mut h = Harness::new(options(), 2);
    let (w0, w1) = (h.worker(0), h.worker(1));
    h.pool.restart_worker(ms(1_000), w0).unwrap();
    h.drain();
    h.tick(ms(5_000));
    assert_eq!(run_probe(&mut h).0, w1);
    h.take_actions();
    h.tick(ms(6_000));
    assert_eq!(run_probe(&mut h).0, w0);
    // Once shutdown began, a restart schedules no probe.
    let key = h.submit(ms(6_001), &request("a")).unwrap();
    h.pool.begin_shutdown(ms(6_002), None);
    h.pool.restart_worker(ms(6_003), w1).unwrap();
    h.drain();
    h.take_actions();
    // Only the request's deadline is left to wait for, no probe.
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(36_001), TimeoutReason::RequestDeadline))
    );
    h.complete(ms(6_004), key, Ok(json!(1)));
    assert!(h.pool.is_stopped());
    assert!(!h
        .take_actions()
        .iter()
        .any(|action| matches!(action, Action::RunProbe { .. })));
}
