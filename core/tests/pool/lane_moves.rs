//! Moving a queued request between two pools (the lanes of one driver):
//! who may adopt it, what a free or busy adopting worker does with a
//! request that may no longer start, how a request no pool adopts is
//! counted, and the counts a driver reads to decide a move.

use std::time::Duration;

use foreman_core::{Answer, Phase, PhaseLimits, Released, WorkerErrorCode, WorkerPoolError};

use crate::harness::{ms, options, request, Harness};

/// A pool of one worker running one request and holding `queued` behind
/// it (accepted at 3 ms, with `limits`), released at 5 ms.
fn released_from_one(limits: PhaseLimits) -> (Harness, Released<u32>) {
    let mut from = Harness::new(options(), 1);
    from.submit(ms(3), &request("running")).unwrap();
    from.submit_limited(ms(3), &request("queued"), limits)
        .unwrap();
    let released = from.pool.release_queued(ms(5)).expect("the queued request");
    from.drain();
    (from, released)
}

/// The answers `h` gave since its actions were last taken, and whether it
/// started anything.
fn answers_and_starts(h: &mut Harness) -> (Vec<Answer<u32>>, usize) {
    let starts = h.started().len();
    (h.answers(), starts)
}

#[test]
fn a_released_request_keeps_its_acceptance_time_and_shows_it() {
    let (_, released) = released_from_one(PhaseLimits::new());
    assert_eq!(released.accepted_at(), ms(3));
    let shown = format!("{released:?}");
    assert!(shown.starts_with("Released"), "{shown}");
    assert!(shown.contains("accepted_at"), "{shown}");
    // Its payload stays out of the debug output.
    assert!(shown.ends_with(".. }"), "{shown}");
}

#[test]
fn a_pool_shutting_down_adopts_nothing() {
    let (mut from, released) = released_from_one(PhaseLimits::new());
    let key = released.key();
    // Draining a running request, with room in its worker's queue.
    let mut to = Harness::new(options(), 1);
    to.submit(ms(4), &request("draining")).unwrap();
    to.pool.begin_shutdown(ms(5), None);
    to.drain();
    assert_eq!(to.pool.pending(), 1);
    let back = to.pool.adopt(ms(5), released).expect_err("shutting down");
    assert_eq!(back.key(), key);
    assert_eq!(to.pool.counters().moved_in, 0);
    from.pool.answer_released(ms(6), back, false);
    from.drain();
    let answers = from.answers();
    assert!(
        answers.iter().any(|answer| answer.request == key),
        "{answers:?}"
    );
}

#[test]
fn a_free_worker_answers_an_adopted_request_whose_queue_wait_passed() {
    let limits = PhaseLimits::new().with_queue_wait(Duration::from_millis(10));
    let (_, released) = released_from_one(limits);
    let mut to = Harness::new(options(), 1);
    // At 20 ms its queue wait (10 ms from 3 ms) has passed, its overall
    // budget has not: the idle worker answers it instead of starting it.
    let key = to.pool.adopt(ms(20), released).expect("an idle worker");
    to.drain();
    let (answers, starts) = answers_and_starts(&mut to);
    assert_eq!(starts, 0, "not started");
    let [answer] = answers.as_slice() else {
        panic!("one answer: {answers:?}");
    };
    assert_eq!((answer.request, answer.phase), (key, Phase::Queued));
    assert_eq!(answer.result, Err(WorkerPoolError::Timeout));
    assert_eq!(to.pool.pending(), 0);
}

#[test]
fn a_queue_wait_ends_at_its_limit_for_a_moved_request() {
    let limits = PhaseLimits::new().with_queue_wait(Duration::from_millis(10));
    // Accepted at 3 ms: at 13 ms its queue wait is over, so it neither
    // leaves its pool nor starts where it was adopted.
    let mut from = Harness::new(options(), 1);
    from.submit(ms(3), &request("running")).unwrap();
    from.submit_limited(ms(3), &request("queued"), limits)
        .unwrap();
    assert!(from.pool.release_queued(ms(13)).is_none());
    let (_, released) = released_from_one(limits);
    let mut to = Harness::new(options(), 1);
    to.pool.adopt(ms(13), released).expect("an idle worker");
    to.drain();
    let (answers, starts) = answers_and_starts(&mut to);
    assert_eq!((answers.len(), starts), (1, 0), "{answers:?}");
}

#[test]
fn a_busy_worker_keeps_an_adopted_request_whose_queue_wait_passed_queued() {
    let limits = PhaseLimits::new().with_queue_wait(Duration::from_millis(10));
    let (_, released) = released_from_one(limits);
    let mut to = Harness::new(options(), 1);
    to.submit(ms(4), &request("busy")).unwrap();
    to.take_actions();
    to.pool.adopt(ms(20), released).expect("room in the queue");
    to.drain();
    let (answers, starts) = answers_and_starts(&mut to);
    assert_eq!((answers.len(), starts), (0, 0), "{answers:?}");
    assert_eq!(to.pool.pending(), 2);
    // Its timer answers it, as for a request of the pool's own queue.
    to.tick(ms(20));
    let answers = to.answers();
    assert!(
        answers
            .iter()
            .any(|answer| answer.result == Err(WorkerPoolError::Timeout)),
        "{answers:?}"
    );
}

#[test]
fn answering_a_cancelled_released_request_counts_it_cancelled_once() {
    let (mut from, released) = released_from_one(PhaseLimits::new());
    let key = released.key();
    from.pool.answer_released(ms(6), released, true);
    from.drain();
    let answers = from.answers();
    let [answer] = answers.as_slice() else {
        panic!("one answer: {answers:?}");
    };
    assert_eq!(answer.request, key);
    match &answer.result {
        Err(WorkerPoolError::Worker(error)) => {
            assert_eq!(error.code, WorkerErrorCode::Cancelled);
        }
        other => panic!("not cancelled: {other:?}"),
    }
    let counters = from.pool.counters();
    assert_eq!(
        (counters.cancelled_queued, counters.unroutable_after_removal),
        (1, 0)
    );
    assert_eq!((counters.moved_out, counters.moved_in), (1, 1));
}

#[test]
fn schedulable_workers_count_those_that_take_requests() {
    let mut h = Harness::new(options(), 3);
    let (w0, w1) = (h.worker(0), h.worker(1));
    assert_eq!(h.pool.schedulable_workers(), 3);
    assert_eq!(h.pool.schedulable_besides(w0), 2);
    // Removing a worker that runs a request: it stays until the run ends,
    // but no longer takes requests.
    h.submit(ms(0), &request("running")).unwrap();
    let running_on = h.started()[0].1;
    h.pool.remove_worker(ms(1), running_on).unwrap();
    h.drain();
    assert_eq!(h.pool.schedulable_workers(), 2);
    assert_eq!(h.pool.schedulable_besides(running_on), 2);
    let other = if running_on == w0 { w1 } else { w0 };
    assert_eq!(h.pool.schedulable_besides(other), 1);
}
