//! Worker commands: restart, add and remove (and where a removed worker's
//! requests go), worker ids, and inputs naming what no longer exists.

use foreman_core::{
    Action, CommandError, Event, RequestKey, TimeoutReason, WorkerErrorCode, WorkerHealthStatus,
    WorkerKey, WorkerPoolError, WorkerPoolOptions, WorkerSpec,
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

/// A pool whose default run limit is 1, with `limits.len()` workers added
/// with those run limits (`None`: the pool's).
fn pool_with_run_limits(limits: &[Option<u32>]) -> Harness {
    let mut h = Harness::new(options(), 0);
    for (n, limit) in limits.iter().enumerate() {
        let mut spec = WorkerSpec::named(format!("http://10.0.0.{n}:8080"));
        spec.max_concurrency = *limit;
        h.pool.add_worker_with(ms(0), spec).unwrap();
        h.drain();
    }
    h
}

#[test]
fn each_worker_runs_up_to_its_own_limit_and_holds_its_queue_on_top() {
    let mut h = pool_with_run_limits(&[Some(3), None]);
    let (wide, narrow) = (h.worker(0), h.worker(1));
    assert_eq!(h.pool.worker_max_concurrency(wide), Some(3));
    assert_eq!(h.pool.worker_max_concurrency(narrow), Some(1));
    // Room for 3 + 2 on the wide worker and 1 + 2 on the narrow one.
    let accepted = (0..10)
        .filter(|i| h.submit(ms(0), &request(&format!("r{i}"))).is_ok())
        .count();
    assert_eq!(accepted, 8);
    let started = h.started();
    let on = |worker| started.iter().filter(|(_, w)| *w == worker).count();
    assert_eq!((on(wide), on(narrow)), (3, 1));
    let stats = h.pool.stats();
    let load: Vec<_> = stats
        .workers
        .iter()
        .map(|w| (w.running, w.queued))
        .collect();
    assert_eq!(load, vec![(3, 2), (1, 2)]);
}

#[test]
fn a_freed_run_slot_of_a_wide_worker_takes_the_oldest_waiting_request() {
    let mut h = pool_with_run_limits(&[Some(2), Some(1)]);
    let wide = h.worker(0);
    let keys: Vec<_> = (0..5)
        .map(|i| h.submit(ms(i), &request(&format!("r{i}"))).unwrap())
        .collect();
    let started = h.started();
    let first: Vec<_> = started.iter().map(|(key, _)| *key).collect();
    assert_eq!(first, keys[..3].to_vec());
    let done = started
        .iter()
        .find(|(_, worker)| *worker == wide)
        .map(|(key, _)| *key)
        .unwrap();
    h.take_actions();
    // The wide worker finishes one of its two runs: its freed slot takes
    // the oldest queued request, which waits on the narrow worker.
    h.complete(ms(10), done, Ok(json!(null)));
    assert_eq!(h.started(), vec![(keys[3], wide)]);
}

#[test]
fn a_zero_run_limit_is_refused_naming_the_worker() {
    let mut h = pool_with_run_limits(&[None]);
    let spec = WorkerSpec::named("http://10.0.0.9:8080").with_max_concurrency(0);
    let refused = h.pool.add_worker_with(ms(0), spec);
    assert_eq!(
        refused,
        Err(CommandError::ZeroConcurrency {
            id: "http://10.0.0.9:8080".into()
        })
    );
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("http://10.0.0.9:8080") && message.contains("max_concurrency"));
    assert_eq!(h.pool.workers().count(), 1);
    // An unnamed worker with the default limit still gets the next number.
    let key = h
        .pool
        .add_worker_with(ms(0), WorkerSpec::default())
        .unwrap();
    assert_eq!(h.pool.worker_id(key), Some("worker-0"));
    h.drain();
}

#[test]
fn a_removed_wide_workers_queue_moves_to_the_others() {
    let mut h = pool_with_run_limits(&[Some(2), Some(2)]);
    let (first, second) = (h.worker(0), h.worker(1));
    let keys: Vec<_> = (0..8)
        .map(|i| h.submit(ms(0), &request(&format!("r{i}"))).unwrap())
        .collect();
    assert_eq!(keys.len(), 8);
    h.take_actions();
    h.pool.remove_worker(ms(1), first).unwrap();
    h.drain();
    // Its two queued requests had nowhere to go (the other is full) and
    // are answered; its two runs finish where they are.
    let answers = h.answers();
    assert_eq!(answers.len(), 2);
    let stats = h.pool.stats();
    let load: Vec<_> = stats
        .workers
        .iter()
        .map(|w| (w.worker == second, w.running, w.queued))
        .collect();
    assert_eq!(load, vec![(false, 2, 0), (true, 2, 2)]);
}
