//! Cancellation: a cancelled request leaves its queue or is aborted, blames
//! no worker, and leaves nothing behind.

use foreman_core::{
    Action, Phase, WorkerErrorCode, WorkerHealthStatus, WorkerPoolError, WorkerPoolOptions,
};
use serde_json::json;

use crate::harness::{ms, one_running_one_queued, options, request, Harness};

#[test]
fn cancelling_a_queued_request_frees_its_place_at_once() {
    let (mut h, queued) = one_running_one_queued();
    assert_eq!(
        h.submit(ms(0), &request("full")),
        Err(WorkerPoolError::QueueFull)
    );
    h.take_actions();
    assert!(h.pool.cancel(ms(1), queued));
    h.drain();
    let answer = h.answers().pop().unwrap();
    assert!(
        matches!(&answer.result, Err(WorkerPoolError::Worker(e)) if e.code == WorkerErrorCode::Cancelled)
    );
    assert_eq!(answer.payload, 2);
    assert!(h.submit(ms(1), &request("now fits")).is_ok());
    assert!(
        !h.pool.cancel(ms(2), queued),
        "a second cancel does nothing"
    );
}

#[test]
fn cancelling_a_running_request_aborts_it_without_blaming_the_worker() {
    let mut h = Harness::new(options(), 1);
    let key = h.submit(ms(0), &request("a")).unwrap();
    let next = h.submit(ms(0), &request("b")).unwrap();
    h.take_actions();
    assert!(h.pool.cancel(ms(3), key));
    h.drain();
    let actions = h.take_actions();
    assert!(matches!(actions[0], Action::Abort { request, .. } if request == key));
    assert!(
        matches!(&actions[1], Action::Answer(a) if a.request == key && a.phase == Phase::Running)
    );
    assert!(matches!(actions[2], Action::Start { request, .. } if request == next));
    assert_eq!(h.status(0), WorkerHealthStatus::Healthy);
    assert!(!h.complete(ms(4), key, Ok(json!(null))));
}

#[test]
fn many_cancellations_do_not_grow_the_queue_without_bound() {
    let mut h = Harness::new(
        WorkerPoolOptions {
            queue_capacity: 4,
            ..options()
        },
        1,
    );
    h.submit(ms(0), &request("blocker")).unwrap();
    for i in 0..10_000u64 {
        let key = h.submit(ms(i), &request("x")).unwrap();
        assert!(h.pool.cancel(ms(i), key));
        h.drain();
        h.take_actions();
        h.take_events();
    }
    assert_eq!(h.pool.stats().queued, 0);
}
