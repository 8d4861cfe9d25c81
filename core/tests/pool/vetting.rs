//! A circuit breaker asked one candidate at a time: vetoes reported per
//! worker, refusals as a submit's, and a request it placed moving off a
//! removed worker only where it allows.

use std::time::Duration;

use foreman_core::{
    Action, Event, Phase, PoolConfig, RequestKey, Revetted, Time, Vetted, Vetting, WorkerErrorCode,
    WorkerKey, WorkerPoolError, WorkerPoolOptions,
};
use serde_json::json;

use crate::harness::{assert_unavailable, ms, options, request, Harness};

#[test]
fn circuit_breaker_vetoes_are_reported_per_worker() {
    let mut h = Harness::new(options(), 2);
    let refused = h
        .pool
        .submit_with(ms(0), &request("a"), 7, |_| false)
        .unwrap_err();
    assert_eq!(refused.error, WorkerPoolError::CircuitOpen);
    assert_eq!(refused.payload, 7);
    h.drain();
    let vetoes = h
        .take_events()
        .into_iter()
        .filter(|event| {
            matches!(
                event,
                Event::Rejected {
                    worker: Some(_),
                    reason: WorkerErrorCode::CircuitOpen
                }
            )
        })
        .count();
    assert_eq!(vetoes, 2);
    // Veto only worker-0: the request goes to worker-1 and is accepted once.
    let key = h
        .pool
        .submit_with(ms(0), &request("b"), 8, |id| id != "worker-0")
        .unwrap();
    h.drain();
    let events = h.take_events();
    let accepted: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::Accepted { .. }))
        .collect();
    assert_eq!(
        accepted,
        vec![&Event::Accepted {
            request: key,
            worker: h.worker(1)
        }]
    );
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::Rejected { worker: Some(w), .. } if *w == h.worker(1))));
}

#[test]
fn queue_full_takes_precedence_over_circuit_open() {
    let mut h = Harness::new(
        WorkerPoolOptions {
            queue_capacity: 1,
            ..options()
        },
        2,
    );
    h.pool
        .submit_with(ms(0), &request("a"), 1, |id| id == "worker-0")
        .unwrap();
    h.pool
        .submit_with(ms(0), &request("b"), 2, |id| id == "worker-0")
        .unwrap();
    h.drain();
    // worker-0 is full; worker-1 has room but is vetoed.
    let refused = h
        .pool
        .submit_with(ms(0), &request("c"), 3, |id| id == "worker-0")
        .unwrap_err();
    assert_eq!(refused.error, WorkerPoolError::QueueFull);
    h.drain();
}

/// The keys of the workers named by `Rejected` vetoes among `events`.
fn vetoes(events: &[Event]) -> Vec<WorkerKey> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Rejected {
                worker: Some(worker),
                reason: WorkerErrorCode::CircuitOpen,
            } => Some(*worker),
            _ => None,
        })
        .collect()
}

/// Runs one step of `vet`, expecting the breaker to be asked about `ask`.
fn expect_ask(
    h: &mut Harness,
    now: Time,
    admission: &Result<foreman_core::Admission, foreman_core::RequestError>,
    payload: u32,
    vetting: &mut Vetting,
    ask: WorkerKey,
) -> u32 {
    match h.pool.vet(now, admission, payload, vetting) {
        Vetted::Ask { worker, payload } => {
            assert_eq!(worker, ask, "candidates are proposed in the pool's order");
            assert_eq!(vetting.candidate(), Some(ask));
            h.drain();
            payload
        }
        other => panic!("expected a question about {ask}, got {other:?}"),
    }
}

#[test]
fn vetting_asks_candidates_in_turn_and_commits_to_the_first_that_allows() {
    let mut h = Harness::new(options(), 3);
    let (w0, w1) = (h.worker(0), h.worker(1));
    let admission = h.pool.config().admit(&request("r"));
    let mut vetting = Vetting::new();
    let payload = expect_ask(&mut h, ms(0), &admission, 7, &mut vetting, w0);
    assert!(
        h.take_events().is_empty(),
        "nothing is decided while asking"
    );
    vetting.answer(false);
    let payload = expect_ask(&mut h, ms(0), &admission, payload, &mut vetting, w1);
    assert_eq!(vetoes(&h.take_events()), [w0], "the veto is reported");
    vetting.answer(true);
    let accepted = h.pool.vet(ms(0), &admission, payload, &mut vetting);
    h.drain();
    let Vetted::Accepted { request, worker } = accepted else {
        panic!("expected acceptance, got {accepted:?}");
    };
    assert_eq!(worker, w1);
    assert_eq!(h.started(), [(request, w1)]);
    assert_eq!(
        h.take_events(),
        [Event::Accepted {
            request,
            worker: w1
        }]
    );
    let counters = *h.pool.counters();
    assert_eq!((counters.submitted, counters.accepted), (1, 1));
}

#[test]
fn an_approved_candidate_that_filled_up_meanwhile_is_passed_over() {
    // capacity: 1 running + 1 queued per worker.
    let mut h = Harness::new(
        WorkerPoolOptions {
            queue_capacity: 1,
            ..options()
        },
        2,
    );
    let (w0, w1) = (h.worker(0), h.worker(1));
    let admission = h.pool.config().admit(&request("r"));
    let mut vetting = Vetting::new();
    let payload = expect_ask(&mut h, ms(0), &admission, 7, &mut vetting, w0);
    // While the breaker is asked (no lock held), other submits fill w0.
    let a = h.submit(ms(0), &request("a")).unwrap();
    let b = h.submit(ms(0), &request("b")).unwrap();
    let c = h.submit(ms(0), &request("c")).unwrap();
    assert_eq!(h.started(), [(a, w0), (b, w1)]);
    h.take_actions();
    let _ = c;
    // Approved, but full now: the next candidate is proposed instead.
    vetting.answer(true);
    let payload = expect_ask(&mut h, ms(0), &admission, payload, &mut vetting, w1);
    vetting.answer(true);
    assert!(matches!(
        h.pool.vet(ms(0), &admission, payload, &mut vetting),
        Vetted::Accepted { worker, .. } if worker == w1
    ));
    h.drain();
}

/// Runs `vet` with a breaker that vetoes every worker; returns the refusal.
fn veto_every_worker(
    h: &mut Harness,
    admission: &Result<foreman_core::Admission, foreman_core::RequestError>,
    mut payload: u32,
    vetting: &mut Vetting,
) -> foreman_core::Refused<u32> {
    loop {
        match h.pool.vet(ms(0), admission, payload, vetting) {
            Vetted::Ask { payload: back, .. } => {
                payload = back;
                vetting.answer(false);
            }
            Vetted::Refused(refused) => return refused,
            Vetted::Accepted { .. } => panic!("every worker vetoed"),
        }
    }
}

#[test]
fn vetting_refuses_as_a_submit_does() {
    let mut h = Harness::new(options(), 2);
    let admission = h.pool.config().admit(&request("r"));
    // Every worker vetoes: CircuitOpen, counted once.
    let mut vetting = Vetting::new();
    let refused = veto_every_worker(&mut h, &admission, 1, &mut vetting);
    assert_eq!(
        (refused.error, refused.payload),
        (WorkerPoolError::CircuitOpen, 1)
    );
    assert!(vetting.vetoed());
    h.drain();
    assert_eq!(vetoes(&h.take_events()).len(), 2);
    let counters = *h.pool.counters();
    assert_eq!((counters.submitted, counters.refused_circuit_open), (1, 1));
    // Declined (`Vetting::offer`): not counted, no pool-level refusal.
    let mut vetting = Vetting::offer();
    let declined = veto_every_worker(&mut h, &admission, 2, &mut vetting);
    assert_eq!(declined.error, WorkerPoolError::CircuitOpen);
    h.drain();
    assert_eq!(
        *h.pool.counters(),
        counters,
        "a declined vetting is not counted"
    );
    assert!(h.take_events().iter().all(|event| matches!(
        event,
        Event::Rejected {
            worker: Some(_),
            ..
        }
    )));
    // Shutdown beginning while the breaker is asked refuses the request.
    let mut vetting = Vetting::new();
    let w0 = h.worker(0);
    let payload = expect_ask(&mut h, ms(1), &admission, 3, &mut vetting, w0);
    h.pool.begin_shutdown(ms(1), None);
    h.drain();
    vetting.answer(true);
    match h.pool.vet(ms(1), &admission, payload, &mut vetting) {
        Vetted::Refused(refused) => assert_eq!(refused.error, WorkerPoolError::ShuttingDown),
        other => panic!("expected ShuttingDown, got {other:?}"),
    }
    h.drain();
    assert_eq!(h.pool.counters().refused_shutting_down, 1);
    // An invalid request is refused before any worker is asked.
    let mut vetting = Vetting::new();
    let invalid = h.pool.config().admit(&request(""));
    assert!(matches!(
        h.pool.vet(ms(1), &invalid, 4, &mut vetting),
        Vetted::Refused(_)
    ));
    h.drain();
}

/// Three workers with a circuit breaker (late binding off, as drivers do).
fn breaker_pool() -> Harness {
    Harness::with_config(PoolConfig::new(options()).vetted_by_breaker(true), 3)
}

/// [`breaker_placed_request`], then worker-0 removed (its actions drained
/// into the harness).
fn removed_under_a_placed_request() -> (Harness, RequestKey, [RequestKey; 3]) {
    let mut h = breaker_pool();
    let (q, running) = breaker_placed_request(&mut h);
    let w0 = h.worker(0);
    h.pool.remove_worker(ms(1), w0).unwrap();
    h.drain();
    (h, q, running)
}

/// Three workers each run a request; `q` was placed on worker-0 by a
/// breaker that refuses worker-1 for it.
fn breaker_placed_request(h: &mut Harness) -> (RequestKey, [RequestKey; 3]) {
    let running = [0, 1, 2].map(|i| h.submit(ms(0), &request(&format!("r{i}"))).unwrap());
    let q = h
        .pool
        .submit_with(ms(0), &request("q"), 9, |id| id != "worker-1")
        .unwrap();
    h.drain();
    assert!(h.take_events().contains(&Event::Accepted {
        request: q,
        worker: h.worker(0)
    }));
    h.take_actions();
    (q, running)
}

#[test]
fn a_removed_workers_request_placed_by_a_breaker_moves_only_where_it_allows() {
    let (mut h, q, running) = removed_under_a_placed_request();
    let (w0, w1, w2) = (h.worker(0), h.worker(1), h.worker(2));
    // Not moved by the core: the driver must ask the breaker.
    let actions = h.take_actions();
    assert!(
        matches!(actions.as_slice(), [Action::Revet { request, worker, payload: 9 }] if *request == q && *worker == w0),
        "{actions:?}"
    );
    assert!(!h
        .take_events()
        .iter()
        .any(|event| matches!(event, Event::Requeued { .. })));
    let stats = h.pool.stats();
    assert_eq!((stats.queued, stats.workers[0].queued), (1, 1), "{stats:?}");
    // Its worker stays until the request has moved, even once idle.
    h.complete(ms(2), running[0], Ok(json!(0)));
    assert!(!h
        .take_actions()
        .iter()
        .any(|action| matches!(action, Action::StopWorker { .. })));
    let mut vetting = Vetting::new();
    assert_eq!(h.pool.revet(ms(3), q, &mut vetting), Revetted::Ask(w1));
    vetting.answer(false);
    assert_eq!(h.pool.revet(ms(3), q, &mut vetting), Revetted::Ask(w2));
    vetting.answer(true);
    assert_eq!(h.pool.revet(ms(3), q, &mut vetting), Revetted::Moved(w2));
    h.drain();
    let events = h.take_events();
    assert_eq!(vetoes(&events), [w1]);
    assert!(events.contains(&Event::Requeued {
        request: q,
        from: w0,
        to: w2
    }));
    assert!(h
        .take_actions()
        .iter()
        .any(|action| matches!(action, Action::StopWorker { worker } if *worker == w0)));
    assert_eq!(h.pool.revet(ms(3), q, &mut Vetting::new()), Revetted::Gone);
    h.complete(ms(4), running[2], Ok(json!(2)));
    assert_eq!(h.started(), [(q, w2)]);
    assert_eq!(h.pool.counters().requeued, 1);
}

#[test]
fn a_removed_workers_request_no_breaker_allows_is_answered() {
    let (mut h, q, running) = removed_under_a_placed_request();
    let w0 = h.worker(0);
    h.take_actions();
    assert_eq!(h.pool.revet_with(ms(2), q, |_| false), Revetted::Answered);
    h.drain();
    assert_eq!(vetoes(&h.take_events()).len(), 2);
    let answer = h.answers().pop().unwrap();
    assert_eq!(
        (answer.request, answer.worker, answer.phase),
        (q, w0, Phase::Queued)
    );
    assert_unavailable(&answer.result, "circuit breaker");
    assert_eq!(h.pool.counters().unroutable_after_removal, 1);
    h.complete(ms(3), running[0], Ok(json!(0)));
    assert!(h
        .take_actions()
        .iter()
        .any(|action| matches!(action, Action::StopWorker { worker } if *worker == w0)));
}

#[test]
fn a_request_awaiting_its_breaker_still_times_out_is_cancelled_and_drained() {
    let (mut h, q, _) = removed_under_a_placed_request();
    h.take_actions();
    // Its deadline (30 s) passes while it waits for the breaker.
    h.tick(ms(30_000));
    let answers = h.answers();
    let timed_out: Vec<_> = answers.iter().filter(|a| a.request == q).collect();
    assert_eq!(timed_out.len(), 1);
    assert_eq!(timed_out[0].result, Err(WorkerPoolError::Timeout));
    assert_eq!(h.pool.counters().timed_out_queued, 1);
    assert_eq!(
        h.pool.revet(ms(30_000), q, &mut Vetting::new()),
        Revetted::Gone
    );

    let (mut h, q, _) = removed_under_a_placed_request();
    h.take_actions();
    assert!(h.pool.cancel(ms(2), q));
    h.drain();
    assert_eq!(h.pool.counters().cancelled_queued, 1);
    assert_eq!(h.answers().len(), 1);

    let (mut h, q, _) = removed_under_a_placed_request();
    h.pool.begin_shutdown(ms(1), Some(Duration::ZERO));
    h.drain();
    assert!(h.pool.is_stopped());
    assert!(h
        .answers()
        .iter()
        .any(|a| a.request == q && a.result == Err(WorkerPoolError::ShuttingDown)));
}

#[test]
fn revet_leaves_a_request_that_is_not_waiting_for_a_breaker_alone() {
    let mut h = breaker_pool();
    let (q, running) = breaker_placed_request(&mut h);
    let before = h.pool.stats();
    // Queued on a worker that is still there, and running: neither moves.
    for request in [q, running[0]] {
        assert_eq!(
            h.pool.revet(ms(1), request, &mut Vetting::new()),
            Revetted::Gone
        );
        assert_eq!(h.pool.revet_with(ms(1), request, |_| true), Revetted::Gone);
    }
    h.drain();
    assert!(h.take_actions().is_empty());
    assert!(h.take_events().is_empty());
    assert_eq!(h.pool.stats(), before);
}
