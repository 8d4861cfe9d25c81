//! Unit tests of the pool's rules, with explicit times.

use std::time::Duration;

use foreman_core::{
    Action, Answer, CommandError, ConfigError, Event, HealthCause, Phase, Pool, PoolConfig,
    RequestKey, Revetted, Time, TimeoutReason, Vetted, Vetting, WorkerErrorCode,
    WorkerHealthStatus, WorkerKey, WorkerOperation, WorkerPoolError, WorkerPoolOptions,
    WorkerProtocolError, WorkerRequest, WorkerSecurityPolicy,
};
use serde_json::{json, Value};

fn ms(n: u64) -> Time {
    Time::from_millis(n)
}

fn request(id: &str) -> WorkerRequest {
    WorkerRequest {
        request_id: id.to_string(),
        workflow_name: "wf".to_string(),
        node_id: "node-1".to_string(),
        timeout_ms: None,
        operation: WorkerOperation::Tool {
            tool: "echo".to_string(),
            input: json!({"x": 1}),
            scoped_input: json!({}),
        },
    }
}

fn with_timeout(id: &str, timeout_ms: u64) -> WorkerRequest {
    WorkerRequest {
        timeout_ms: Some(timeout_ms),
        ..request(id)
    }
}

fn failure() -> WorkerProtocolError {
    WorkerProtocolError::new(WorkerErrorCode::ExecutionFailed, "boom", true)
}

/// The explicit-time helper of these unit tests: applies inputs at the
/// instants a test names, checks the pool's own invariants after each, and
/// keeps every output for the test's assertions. It predicts nothing: the
/// checking harness of the simulator, the proptests and the fuzz targets
/// (`foreman_tests::model::Harness`) is not used here because foreman-tests
/// depends on foreman-core, and a dev-dependency of the core on it would be
/// a cycle.
struct Harness {
    pool: Pool<u32>,
    actions: Vec<Action<u32>>,
    events: Vec<Event>,
    next_payload: u32,
}

impl Harness {
    fn new(options: WorkerPoolOptions, workers: usize) -> Self {
        Self::with_config(PoolConfig::new(options), workers)
    }

    fn with_config(config: PoolConfig, workers: usize) -> Self {
        let mut pool = Pool::new(config, Time::ZERO).expect("valid config");
        for _ in 0..workers {
            pool.add_worker(Time::ZERO).expect("add worker");
        }
        let mut harness = Harness {
            pool,
            actions: Vec::new(),
            events: Vec::new(),
            next_payload: 0,
        };
        harness.drain();
        harness
    }

    fn drain(&mut self) {
        self.pool.check_invariants().expect("invariants hold");
        while let Some(action) = self.pool.poll_action() {
            self.actions.push(action);
        }
        while let Some(event) = self.pool.poll_event() {
            self.events.push(event);
        }
    }

    fn worker(&self, index: usize) -> WorkerKey {
        self.pool.workers().nth(index).expect("worker exists")
    }

    fn submit(&mut self, now: Time, req: &WorkerRequest) -> Result<RequestKey, WorkerPoolError> {
        self.next_payload += 1;
        let payload = self.next_payload;
        let result = self.pool.submit(now, req, payload).map_err(|refused| {
            assert_eq!(refused.payload, payload, "refusal returns the payload");
            refused.error
        });
        self.drain();
        result
    }

    fn complete(
        &mut self,
        now: Time,
        key: RequestKey,
        result: Result<Value, WorkerProtocolError>,
    ) -> bool {
        let applied = self.pool.handle_completion(now, key, result);
        self.drain();
        applied
    }

    fn cancel(&mut self, now: Time, key: RequestKey) -> bool {
        let applied = self.pool.cancel(now, key);
        self.drain();
        applied
    }

    fn tick(&mut self, now: Time) {
        self.pool.handle_timeout(now);
        self.drain();
    }

    fn take_actions(&mut self) -> Vec<Action<u32>> {
        std::mem::take(&mut self.actions)
    }

    fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn started(&mut self) -> Vec<(RequestKey, WorkerKey)> {
        self.actions
            .iter()
            .filter_map(|action| match action {
                Action::Start {
                    request, worker, ..
                } => Some((*request, *worker)),
                _ => None,
            })
            .collect()
    }

    fn answers(&mut self) -> Vec<Answer<u32>> {
        let (answers, rest): (Vec<_>, Vec<_>) = self
            .take_actions()
            .into_iter()
            .partition(|action| matches!(action, Action::Answer(_)));
        self.actions = rest;
        answers
            .into_iter()
            .filter_map(|action| match action {
                Action::Answer(answer) => Some(answer),
                _ => None,
            })
            .collect()
    }

    /// The health changes reported since events were last taken, as
    /// (from, to, cause).
    fn health_changes(&mut self) -> Vec<(WorkerHealthStatus, WorkerHealthStatus, HealthCause)> {
        self.take_events()
            .into_iter()
            .filter_map(|event| match event {
                Event::HealthChanged {
                    from, to, cause, ..
                } => Some((from, to, cause)),
                _ => None,
            })
            .collect()
    }

    fn status(&self, index: usize) -> WorkerHealthStatus {
        self.pool.health()[index].status
    }
}

fn options() -> WorkerPoolOptions {
    WorkerPoolOptions {
        queue_capacity: 2,
        health_probe_interval: Duration::from_secs(5),
        unavailable_after_failures: 3,
        default_request_timeout: Some(Duration::from_secs(30)),
        security_policy: WorkerSecurityPolicy::default(),
    }
}

// ----- configuration ------------------------------------------------------

#[test]
fn constructor_refuses_what_the_reference_cannot_run() {
    let cases: Vec<(WorkerPoolOptions, ConfigError)> = vec![
        (
            WorkerPoolOptions {
                queue_capacity: 0,
                ..options()
            },
            ConfigError::ZeroQueueCapacity,
        ),
        (
            WorkerPoolOptions {
                health_probe_interval: Duration::ZERO,
                ..options()
            },
            ConfigError::ZeroProbeInterval,
        ),
    ];
    for (options, expected) in cases {
        let error = Pool::<()>::new(options, Time::ZERO).expect_err("must be refused");
        assert_eq!(error, expected);
        assert!(!error.to_string().is_empty());
    }
    let config = PoolConfig::default().with_probe_timeout(Duration::ZERO);
    assert_eq!(
        Pool::<()>::new(config, Time::ZERO).unwrap_err(),
        ConfigError::ZeroProbeTimeout
    );
    let config = PoolConfig::default().with_max_concurrency_per_worker(0);
    assert_eq!(
        Pool::<()>::new(config, Time::ZERO).unwrap_err(),
        ConfigError::ZeroConcurrency
    );
    assert!(Pool::<()>::new(WorkerPoolOptions::default(), Time::ZERO).is_ok());
    assert!(
        Pool::<()>::new(
            WorkerPoolOptions {
                default_request_timeout: None,
                ..options()
            },
            Time::ZERO
        )
        .is_ok(),
        "no default timeout is allowed"
    );
}

#[test]
fn config_error_messages_name_the_field() {
    let error = Pool::<()>::new(
        WorkerPoolOptions {
            queue_capacity: 0,
            ..options()
        },
        Time::ZERO,
    )
    .unwrap_err();
    assert!(error.to_string().contains("queue_capacity"), "{error}");
    let error = Pool::<()>::new(
        WorkerPoolOptions {
            health_probe_interval: Duration::ZERO,
            ..options()
        },
        Time::ZERO,
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("health_probe_interval"),
        "{error}"
    );
}

// ----- submit, start, complete --------------------------------------------

#[test]
fn a_request_runs_and_is_answered_with_queue_and_run_times() {
    let mut h = Harness::new(options(), 1);
    let key = h.submit(ms(10), &request("a")).unwrap();
    let started = h.started();
    assert_eq!(started, vec![(key, h.worker(0))]);
    assert!(matches!(h.events.first(), Some(Event::Accepted { request, .. }) if *request == key));
    h.take_actions();
    assert!(h.complete(ms(25), key, Ok(json!({"ok": true}))));
    let answers = h.answers();
    assert_eq!(answers.len(), 1);
    let answer = &answers[0];
    assert_eq!(answer.request, key);
    assert_eq!(answer.result, Ok(json!({"ok": true})));
    assert_eq!(answer.phase, Phase::Running);
    assert_eq!(answer.queued_for, Duration::ZERO);
    assert_eq!(answer.ran_for, Some(Duration::from_millis(15)));
    assert_eq!(answer.payload, 1, "the payload comes back with the answer");
    assert_eq!(h.pool.pending(), 0);
    assert_eq!(h.pool.counters().succeeded, 1);
}

#[test]
fn start_hands_over_the_payload_and_queue_time_is_reported() {
    let mut h = Harness::new(options(), 1);
    let first = h.submit(ms(0), &request("a")).unwrap();
    let second = h.submit(ms(1), &request("b")).unwrap();
    let payloads: Vec<u32> = h
        .take_actions()
        .into_iter()
        .filter_map(|action| match action {
            Action::Start { payload, .. } => Some(payload),
            _ => None,
        })
        .collect();
    assert_eq!(
        payloads,
        vec![1],
        "only the first starts: one request at a time per worker"
    );
    h.complete(ms(40), first, Ok(json!(1)));
    let started: Vec<_> = h.started();
    assert_eq!(started, vec![(second, h.worker(0))]);
    h.take_actions();
    h.complete(ms(50), second, Ok(json!(2)));
    let answer = h.answers().pop().unwrap();
    assert_eq!(answer.queued_for, Duration::from_millis(39));
    assert_eq!(answer.ran_for, Some(Duration::from_millis(10)));
}

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
fn full_queues_fall_through_then_refuse_queue_full() {
    // capacity per worker: 1 running + 2 queued. Without late binding, each
    // request waits for the worker it was queued on.
    let config = PoolConfig::new(options()).with_late_binding(false);
    let mut h = Harness::with_config(config, 2);
    for i in 0..6 {
        h.submit(ms(0), &request(&format!("r{i}"))).unwrap();
    }
    assert_eq!(
        h.submit(ms(0), &request("overflow")),
        Err(WorkerPoolError::QueueFull)
    );
    assert_eq!(h.pool.counters().refused_queue_full, 1);
    let stats = h.pool.stats();
    assert_eq!(stats.queued, 4);
    assert_eq!(stats.running, 2);
    // Free one slot on worker 1 only: the next submit falls through to it.
    let running_on_w1 = h
        .started()
        .into_iter()
        .find(|(_, worker)| *worker == h.worker(1))
        .unwrap()
        .0;
    h.complete(ms(5), running_on_w1, Ok(json!(null)));
    h.take_events();
    h.submit(ms(6), &request("fits")).unwrap();
    assert!(h
        .take_events()
        .iter()
        .any(|event| matches!(event, Event::Accepted { worker, .. } if *worker == h.worker(1))));
}

#[test]
fn an_offer_for_want_of_a_worker_is_declined_uncounted() {
    // capacity: 1 running + 2 queued on one worker.
    let mut h = Harness::new(options(), 1);
    let config = h.pool.config().clone();
    assert_eq!((h.pool.idle_workers(), h.pool.eligible_workers()), (1, 1));
    let accepted = h
        .pool
        .offer(ms(0), config.admit(&request("a")), 1)
        .expect("an offer with room is taken");
    h.drain();
    assert_eq!(h.started(), [(accepted, h.worker(0))]);
    assert_eq!((h.pool.idle_workers(), h.pool.eligible_workers()), (0, 1));
    for i in 0..2 {
        h.submit(ms(0), &request(&format!("q{i}"))).unwrap();
    }
    assert_eq!((h.pool.idle_workers(), h.pool.eligible_workers()), (0, 0));
    h.take_events();
    let before = *h.pool.counters();
    let declined = h
        .pool
        .offer(ms(1), config.admit(&request("full")), 7)
        .expect_err("no room");
    assert_eq!(
        (declined.error, declined.payload),
        (WorkerPoolError::QueueFull, 7)
    );
    h.drain();
    assert_eq!(
        *h.pool.counters(),
        before,
        "a declined offer is not counted"
    );
    assert!(h.take_events().is_empty(), "and reports no refusal");
    // The last pool tried refuses for real, once.
    assert_eq!(
        h.submit(ms(1), &request("full")),
        Err(WorkerPoolError::QueueFull)
    );
    let after = *h.pool.counters();
    assert_eq!(after.submitted, before.submitted + 1);
    assert_eq!(after.refused_queue_full, before.refused_queue_full + 1);
    // Final refusals are counted by an offer too.
    h.pool.begin_shutdown(ms(2), None);
    h.drain();
    let refused = h
        .pool
        .offer(ms(2), config.admit(&request("late")), 9)
        .expect_err("shutting down");
    assert_eq!(refused.error, WorkerPoolError::ShuttingDown);
    assert_eq!(h.pool.counters().refused_shutting_down, 1);
    assert_eq!(h.pool.counters().submitted, after.submitted + 1);
}

#[test]
fn no_workers_means_no_healthy_worker() {
    let mut h = Harness::new(options(), 0);
    assert_eq!(
        h.submit(ms(0), &request("a")),
        Err(WorkerPoolError::NoHealthyWorker)
    );
    assert!(h.events.iter().any(|event| matches!(
        event,
        Event::Rejected {
            worker: None,
            reason: WorkerErrorCode::Unavailable
        }
    )));
}

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

#[test]
fn invalid_requests_are_refused_with_a_reason() {
    let mut h = Harness::new(options(), 1);
    let mut bad = request(&"r".repeat(129));
    let error = h.submit(ms(0), &bad).unwrap_err();
    assert!(
        matches!(&error, WorkerPoolError::InvalidRequest { reason } if reason.contains("request_id")),
        "{error}"
    );
    bad = with_timeout("x", 120_001);
    assert!(matches!(
        h.submit(ms(0), &bad),
        Err(WorkerPoolError::InvalidRequest { .. })
    ));
    assert_eq!(h.pool.counters().refused_invalid, 2);
    assert_eq!(h.pool.pending(), 0);
}

// ----- health ---------------------------------------------------------------

#[test]
fn consecutive_failures_degrade_then_eject_and_success_restores() {
    let mut h = Harness::new(options(), 1);
    for round in 0..3 {
        let key = h.submit(ms(round), &request("f")).unwrap();
        h.complete(ms(round), key, Err(failure()));
        let answer = h.answers().pop().unwrap();
        assert_eq!(answer.result, Err(WorkerPoolError::Worker(failure())));
        let expected = if round < 2 {
            WorkerHealthStatus::Degraded
        } else {
            WorkerHealthStatus::Unavailable
        };
        assert_eq!(h.status(0), expected);
    }
    assert_eq!(h.pool.health()[0].consecutive_failures, 3);
    assert_eq!(
        h.submit(ms(5), &request("x")),
        Err(WorkerPoolError::NoHealthyWorker)
    );
    let transitions = h.health_changes();
    assert_eq!(
        transitions,
        vec![
            (
                WorkerHealthStatus::Healthy,
                WorkerHealthStatus::Degraded,
                HealthCause::Failure
            ),
            (
                WorkerHealthStatus::Degraded,
                WorkerHealthStatus::Unavailable,
                HealthCause::Failure
            ),
        ]
    );
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

// ----- deadlines ------------------------------------------------------------

#[test]
fn a_running_timeout_aborts_the_handler_and_counts_one_failure() {
    let mut h = Harness::new(options(), 1);
    let slow = h.submit(ms(0), &with_timeout("slow", 100)).unwrap();
    let next = h.submit(ms(0), &request("next")).unwrap();
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(100), TimeoutReason::RequestDeadline))
    );
    h.take_actions();
    h.tick(ms(99));
    assert!(h.actions.is_empty(), "a deadline never fires early");
    h.tick(ms(100));
    let actions = h.take_actions();
    assert!(matches!(actions[0], Action::Abort { request, .. } if request == slow));
    assert!(matches!(&actions[1], Action::Answer(a) if a.request == slow
        && a.result == Err(WorkerPoolError::Timeout) && a.phase == Phase::Running));
    assert!(
        matches!(actions[2], Action::Start { request, .. } if request == next),
        "the worker is free again"
    );
    assert_eq!(
        h.status(0),
        WorkerHealthStatus::Degraded,
        "one timeout is one failure, not an ejection"
    );
    assert!(
        !h.complete(ms(150), slow, Ok(json!(null))),
        "a late completion is ignored"
    );
    assert_eq!(h.pool.counters().timed_out_running, 1);
}

#[test]
fn a_queued_timeout_answers_without_blaming_the_worker() {
    let mut h = Harness::new(options(), 1);
    let busy = h.submit(ms(0), &request("busy")).unwrap();
    let waiting = h.submit(ms(0), &with_timeout("waiting", 50)).unwrap();
    h.take_actions();
    h.tick(ms(50));
    let answers = h.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].request, waiting);
    assert_eq!(answers[0].result, Err(WorkerPoolError::Timeout));
    assert_eq!(answers[0].phase, Phase::Queued);
    assert_eq!(
        answers[0].payload, 2,
        "the payload comes back with the answer"
    );
    assert_eq!(answers[0].queued_for, Duration::from_millis(50));
    assert_eq!(h.status(0), WorkerHealthStatus::Healthy);
    h.complete(ms(60), busy, Ok(json!(null)));
    assert!(h.started().is_empty(), "the timed-out request never starts");
}

/// One worker that a single counted failure ejects (threshold 1).
fn one_strict_worker() -> Harness {
    Harness::new(
        WorkerPoolOptions {
            queue_capacity: 8,
            unavailable_after_failures: 1,
            ..options()
        },
        1,
    )
}

#[test]
fn requests_that_expire_while_queued_never_count_against_the_worker() {
    let mut h = one_strict_worker();
    let busy = h.submit(ms(0), &request("busy")).unwrap();
    let waiting: Vec<_> = (0..4)
        .map(|i| {
            h.submit(ms(0), &with_timeout(&format!("w{i}"), 100 + i))
                .unwrap()
        })
        .collect();
    h.take_actions();
    h.take_events();
    for i in 0..3 {
        h.tick(ms(100 + i));
        let answers = h.answers();
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].request, waiting[i as usize]);
        assert_eq!(answers[0].result, Err(WorkerPoolError::Timeout));
        assert_eq!(answers[0].phase, Phase::Queued);
    }
    // The busy request finishes at 103 ms, the last waiting request's
    // deadline, before the driver's timer fired for it: its budget is
    // spent, so it is answered, not started.
    h.complete(ms(103), busy, Ok(json!(null)));
    let answers = h.answers();
    assert_eq!(answers.len(), 2, "the completion and the expiry");
    let expired = answers
        .iter()
        .find(|answer| answer.request == waiting[3])
        .expect("the last waiting request is answered");
    assert_eq!(expired.result, Err(WorkerPoolError::Timeout));
    assert_eq!(expired.phase, Phase::Queued);
    assert_eq!(expired.ran_for, None);
    assert!(h.started().is_empty(), "no expired request is started");
    assert_eq!(h.pool.counters().timed_out_queued, 4);
    assert_eq!(h.pool.counters().timed_out_running, 0);
    assert_eq!(h.status(0), WorkerHealthStatus::Healthy);
    assert_eq!(h.pool.health()[0].consecutive_failures, 0);
    assert_eq!(h.health_changes(), vec![]);
    h.tick(ms(200));
    assert!(h.take_actions().is_empty(), "nothing left to fire");
}

#[test]
fn a_short_run_at_the_end_of_a_mostly_queued_budget_does_not_count() {
    let mut h = one_strict_worker();
    let busy = h.submit(ms(0), &request("busy")).unwrap();
    let late = h.submit(ms(0), &with_timeout("late", 120)).unwrap();
    h.take_actions();
    h.take_events();
    // It waits 100 ms of its 120 ms budget, then runs for the last 20 (the
    // busy request's caller gives up, so the worker has no successful run
    // to judge the 20 ms by and starts it).
    assert!(h.cancel(ms(100), busy));
    assert_eq!(h.started(), vec![(late, h.worker(0))]);
    h.take_actions();
    h.tick(ms(120));
    let actions = h.take_actions();
    assert!(matches!(actions[0], Action::Abort { request, .. } if request == late));
    assert!(matches!(&actions[1], Action::Answer(a) if a.request == late
        && a.result == Err(WorkerPoolError::Timeout)
        && a.phase == Phase::Running
        && a.queued_for == Duration::from_millis(100)
        && a.ran_for == Some(Duration::from_millis(20))));
    assert_eq!(h.pool.counters().timed_out_running, 1);
    assert_eq!(
        h.status(0),
        WorkerHealthStatus::Healthy,
        "20 ms of a 120 ms budget is no evidence against the worker"
    );
    assert_eq!(h.pool.health()[0].consecutive_failures, 0);
    assert_eq!(h.health_changes(), vec![]);
    assert!(h.submit(ms(121), &request("next")).is_ok());
}

#[test]
fn a_running_timeout_counts_once_the_worker_had_half_the_budget() {
    // Queued 61 of 120 ms (ran 59): not counted. Queued 60 (ran 60,
    // exactly half): counted.
    for (queued, counted) in [(61, false), (60, true)] {
        let mut h = one_strict_worker();
        let busy = h.submit(ms(0), &request("busy")).unwrap();
        let waiting = h.submit(ms(0), &with_timeout("waiting", 120)).unwrap();
        h.take_actions();
        assert!(h.cancel(ms(queued), busy));
        assert_eq!(h.started(), vec![(waiting, h.worker(0))]);
        h.take_actions();
        h.take_events();
        h.tick(ms(120));
        let answers = h.answers();
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].request, waiting);
        assert_eq!(answers[0].phase, Phase::Running);
        assert_eq!(
            answers[0].ran_for,
            Some(Duration::from_millis(120 - queued))
        );
        let expected = if counted {
            vec![(
                WorkerHealthStatus::Healthy,
                WorkerHealthStatus::Unavailable,
                HealthCause::Timeout,
            )]
        } else {
            vec![]
        };
        assert_eq!(h.health_changes(), expected, "queued {queued} ms");
        assert_eq!(h.pool.health()[0].consecutive_failures, u32::from(counted));
    }
}

#[test]
fn a_queued_request_with_less_budget_left_than_the_last_run_is_answered_not_started() {
    let mut h = one_strict_worker();
    let first = h.submit(ms(0), &request("first")).unwrap();
    let fits = h.submit(ms(0), &with_timeout("fits", 120)).unwrap();
    let short = h.submit(ms(0), &with_timeout("short", 140)).unwrap();
    let next = h.submit(ms(0), &with_timeout("next", 300)).unwrap();
    h.take_actions();
    h.take_events();
    // The first run takes 50 ms; `fits` has 70 ms left: it starts.
    h.complete(ms(50), first, Ok(json!(null)));
    assert_eq!(h.started(), vec![(fits, h.worker(0))]);
    h.take_actions();
    // It also takes 50 ms; `short` has 40 ms left, less than that: it is
    // answered at once, and `next` (200 ms left) starts instead.
    h.complete(ms(100), fits, Ok(json!(null)));
    assert_eq!(h.started(), vec![(next, h.worker(0))]);
    let answers = h.answers();
    let shed = answers
        .iter()
        .find(|answer| answer.request == short)
        .expect("the short request is answered");
    assert_eq!(shed.result, Err(WorkerPoolError::Timeout));
    assert_eq!(shed.phase, Phase::Queued);
    assert_eq!(shed.queued_for, Duration::from_millis(100));
    assert_eq!(h.pool.counters().timed_out_queued, 1);
    assert_eq!(h.status(0), WorkerHealthStatus::Healthy);
    assert_eq!(h.health_changes(), vec![]);
    // A request submitted to an idle worker starts whatever its budget.
    h.complete(ms(150), next, Ok(json!(null)));
    h.take_actions();
    let tiny = h.submit(ms(150), &with_timeout("tiny", 1)).unwrap();
    assert_eq!(h.started(), vec![(tiny, h.worker(0))]);
}

#[test]
fn a_hung_worker_that_runs_whole_budgets_is_ejected_after_the_threshold() {
    let mut h = Harness::new(options(), 1);
    h.take_events();
    for round in 0..3u64 {
        let start = round * 1_000;
        let key = h.submit(ms(start), &with_timeout("hang", 100)).unwrap();
        assert_eq!(h.started(), vec![(key, h.worker(0))], "starts at once");
        h.take_actions();
        // The handler never answers; its whole budget runs out on the worker.
        h.tick(ms(start + 100));
        let answers = h.answers();
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].phase, Phase::Running);
        assert_eq!(answers[0].ran_for, Some(Duration::from_millis(100)));
        assert_eq!(h.pool.health()[0].consecutive_failures, round as u32 + 1);
    }
    assert_eq!(
        h.health_changes(),
        vec![
            (
                WorkerHealthStatus::Healthy,
                WorkerHealthStatus::Degraded,
                HealthCause::Timeout
            ),
            (
                WorkerHealthStatus::Degraded,
                WorkerHealthStatus::Unavailable,
                HealthCause::Timeout
            ),
        ]
    );
    assert_eq!(
        h.submit(ms(3_000), &request("x")),
        Err(WorkerPoolError::NoHealthyWorker)
    );
}

#[test]
fn the_default_timeout_applies_and_none_means_no_deadline() {
    let mut h = Harness::new(
        WorkerPoolOptions {
            default_request_timeout: None,
            ..options()
        },
        1,
    );
    h.submit(ms(0), &request("forever")).unwrap();
    assert_eq!(
        h.pool.poll_timeout().map(|(_, reason)| reason),
        Some(TimeoutReason::ProbeDue)
    );
    let mut h = Harness::new(options(), 1);
    h.submit(ms(0), &request("default")).unwrap();
    let mut h2 = h.pool.poll_timeout();
    // The probe (5 s) comes before the default deadline (30 s).
    assert_eq!(h2.take(), Some((ms(5_000), TimeoutReason::ProbeDue)));
}

#[test]
fn a_one_timer_driver_moves_its_timer_only_earlier_and_never_late() {
    let mut h = Harness::new(
        WorkerPoolOptions {
            default_request_timeout: None,
            ..options()
        },
        2,
    );
    // Nothing set: the exact next deadline (the first probe, at 5 s).
    let mut timer = h.pool.move_timer(Time::MAX).expect("a probe is due");
    assert_eq!(timer, ms(5_000));
    // A later deadline leaves the timer where it is.
    h.submit(ms(1), &with_timeout("late", 9_000)).unwrap();
    assert_eq!(h.pool.move_timer(timer), None);
    // An earlier one moves it.
    let early = h.submit(ms(2), &with_timeout("early", 100)).unwrap();
    timer = h.pool.move_timer(timer).expect("an earlier deadline");
    assert_eq!(timer, ms(102));
    // Answered before its deadline: the timer stays, and fires early.
    assert!(h.complete(ms(3), early, Ok(Value::Null)));
    assert_eq!(h.pool.move_timer(timer), None);
    h.take_actions();
    h.tick(ms(102));
    assert!(
        h.take_actions().is_empty(),
        "a spurious wake-up does nothing"
    );
    // Once it fired, the timer is set from the exact next deadline.
    assert_eq!(h.pool.move_timer(Time::MAX), Some(ms(5_000)));
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(5_000), TimeoutReason::ProbeDue))
    );
}

// ----- cancellation ---------------------------------------------------------

#[test]
fn cancelling_a_queued_request_frees_its_place_at_once() {
    let mut h = Harness::new(
        WorkerPoolOptions {
            queue_capacity: 1,
            ..options()
        },
        1,
    );
    h.submit(ms(0), &request("running")).unwrap();
    let queued = h.submit(ms(0), &request("queued")).unwrap();
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

// ----- restart, add, remove -------------------------------------------------

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
    let mut h = Harness::new(
        WorkerPoolOptions {
            queue_capacity: 1,
            ..options()
        },
        1,
    );
    h.submit(ms(0), &request("running")).unwrap();
    let queued = h.submit(ms(0), &request("queued")).unwrap();
    h.take_actions();
    let worker = h.worker(0);
    h.pool.remove_worker(ms(1), worker).unwrap();
    h.drain();
    let answer = h.answers().pop().unwrap();
    assert_eq!(answer.request, queued);
    assert_unavailable(&answer.result, "worker-0 was removed");
}

/// `result` is a retryable `Unavailable` worker error mentioning `what`.
fn assert_unavailable(result: &Result<Value, WorkerPoolError>, what: &str) {
    match result {
        Err(WorkerPoolError::Worker(error)) => {
            assert_eq!(error.code, WorkerErrorCode::Unavailable);
            assert!(error.retryable);
            assert!(error.message.contains(what), "{}", error.message);
        }
        other => panic!("unexpected {other:?}"),
    }
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

// ----- probes ---------------------------------------------------------------

fn run_probe(h: &mut Harness) -> (WorkerKey, foreman_core::ProbeKey) {
    h.take_actions()
        .into_iter()
        .find_map(|action| match action {
            Action::RunProbe { worker, probe } => Some((worker, probe)),
            _ => None,
        })
        .expect("a probe was started")
}

#[test]
fn probes_run_every_interval_and_report_their_time() {
    let mut config = PoolConfig::new(options());
    config.unix_epoch_ms = 1_000_000;
    let mut h = Harness::with_config(config, 1);
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(5_000), TimeoutReason::ProbeDue))
    );
    h.tick(ms(5_000));
    let (worker, probe) = run_probe(&mut h);
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(10_000), TimeoutReason::ProbeTimeout))
    );
    assert!(h
        .pool
        .handle_probe_result(ms(5_010), worker, probe, WorkerHealthStatus::Healthy));
    h.drain();
    assert!(
        !h.pool
            .handle_probe_result(ms(5_011), worker, probe, WorkerHealthStatus::Unavailable),
        "answered once"
    );
    assert_eq!(h.pool.health()[0].last_probe_unix_ms, Some(1_005_010));
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(10_000), TimeoutReason::ProbeDue))
    );
}

/// One worker whose first probe (sent at 5 s) timed out at 6 s, its
/// actions still in the harness.
fn timed_out_probe() -> (Harness, WorkerKey, foreman_core::ProbeKey) {
    let mut config = PoolConfig::new(options());
    config.probe_timeout = Duration::from_secs(1);
    let mut h = Harness::with_config(config, 1);
    h.tick(ms(5_000));
    let (worker, probe) = run_probe(&mut h);
    h.tick(ms(6_000));
    (h, worker, probe)
}

#[test]
fn a_hanging_probe_times_out_counts_as_failed_and_probing_goes_on() {
    let (mut h, worker, probe) = timed_out_probe();
    let actions = h.take_actions();
    assert!(
        matches!(actions[0], Action::AbortProbe { worker: w, probe: p } if w == worker && p == probe)
    );
    assert_eq!(h.status(0), WorkerHealthStatus::Unavailable);
    assert_eq!(h.pool.counters().probes_timed_out, 1);
    assert!(
        !h.pool
            .handle_probe_result(ms(6_001), worker, probe, WorkerHealthStatus::Healthy),
        "too late"
    );
    h.tick(ms(10_000));
    let (worker, probe) = run_probe(&mut h);
    h.pool
        .handle_probe_result(ms(10_001), worker, probe, WorkerHealthStatus::Healthy);
    h.drain();
    assert_eq!(
        h.status(0),
        WorkerHealthStatus::Healthy,
        "a later healthy probe restores it"
    );
}

#[test]
fn a_healthy_probe_gives_an_ejected_worker_one_trial_not_a_clean_slate() {
    let mut h = Harness::new(options(), 1);
    for i in 0..3 {
        let key = h.submit(ms(i), &request("f")).unwrap();
        h.complete(ms(i), key, Err(failure()));
    }
    assert_eq!(h.status(0), WorkerHealthStatus::Unavailable);
    h.tick(ms(5_000));
    let (worker, probe) = run_probe(&mut h);
    h.pool
        .handle_probe_result(ms(5_001), worker, probe, WorkerHealthStatus::Healthy);
    h.drain();
    assert_eq!(h.status(0), WorkerHealthStatus::Degraded);
    let key = h.submit(ms(5_002), &request("trial")).unwrap();
    h.complete(ms(5_003), key, Err(failure()));
    assert_eq!(
        h.status(0),
        WorkerHealthStatus::Unavailable,
        "one more failure ejects it again"
    );
}

#[test]
fn a_probe_cannot_erase_failures_that_happened_after_it_was_sent() {
    let mut h = Harness::new(
        WorkerPoolOptions {
            unavailable_after_failures: 1,
            ..options()
        },
        1,
    );
    h.tick(ms(5_000));
    let (worker, probe) = run_probe(&mut h);
    let key = h.submit(ms(5_001), &request("f")).unwrap();
    h.complete(ms(5_002), key, Err(failure()));
    assert_eq!(h.status(0), WorkerHealthStatus::Unavailable);
    h.pool
        .handle_probe_result(ms(5_003), worker, probe, WorkerHealthStatus::Healthy);
    h.drain();
    assert_eq!(h.status(0), WorkerHealthStatus::Unavailable);
}

#[test]
fn a_probe_saying_unavailable_ejects_until_a_probe_says_otherwise() {
    let mut h = Harness::new(options(), 1);
    h.tick(ms(5_000));
    let (worker, probe) = run_probe(&mut h);
    h.pool
        .handle_probe_result(ms(5_001), worker, probe, WorkerHealthStatus::Unavailable);
    h.drain();
    assert_eq!(
        h.submit(ms(5_002), &request("x")),
        Err(WorkerPoolError::NoHealthyWorker)
    );
}

// ----- shutdown -------------------------------------------------------------

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

// ----- robustness -----------------------------------------------------------

#[test]
fn time_going_backwards_is_treated_as_the_latest_instant() {
    let mut h = Harness::new(options(), 1);
    let key = h.submit(ms(1_000), &with_timeout("a", 100)).unwrap();
    h.tick(ms(10));
    assert!(h.answers().is_empty());
    h.complete(ms(500), key, Ok(json!(null)));
    let answer = h.answers().pop().unwrap();
    assert_eq!(answer.ran_for, Some(Duration::ZERO));
    assert_eq!(h.pool.now(), ms(1_000));
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
fn stats_report_depth_in_flight_and_outcomes() {
    let mut h = Harness::new(options(), 2);
    for i in 0..3 {
        h.submit(ms(0), &request(&format!("r{i}"))).unwrap();
    }
    let stats = h.pool.stats();
    assert_eq!(stats.running, 2);
    assert_eq!(stats.queued, 1);
    assert_eq!(stats.workers.len(), 2);
    assert_eq!(stats.workers[0].worker_id, "worker-0");
    assert_eq!((stats.workers[0].running, stats.workers[0].queued), (1, 1));
    assert_eq!((stats.workers[1].running, stats.workers[1].queued), (1, 0));
    assert_eq!(stats.counters.accepted, 3);
    assert_eq!(stats.counters.submitted, 3);
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
fn requests_validated_ahead_submit_like_any_other() {
    let mut h = Harness::new(options(), 1);
    let config = h.pool.config().clone();
    let good = config.admit(&with_timeout("a", 250)).expect("valid");
    assert_eq!(good.timeout(), Some(Duration::from_millis(250)));
    let key = h.pool.submit_checked(ms(0), Ok(good), 1).unwrap();
    h.drain();
    assert_eq!(
        h.pool.poll_timeout(),
        Some((ms(250), TimeoutReason::RequestDeadline))
    );
    let bad = config.admit(&request(&"r".repeat(129)));
    let refused = h.pool.submit_checked(ms(0), bad.clone(), 2).unwrap_err();
    assert!(matches!(
        refused.error,
        WorkerPoolError::InvalidRequest { .. }
    ));
    h.pool.begin_shutdown(ms(1), None);
    let refused = h.pool.submit_checked(ms(1), bad, 3).unwrap_err();
    assert_eq!(
        refused.error,
        WorkerPoolError::ShuttingDown,
        "shutting down takes precedence"
    );
    h.drain();
    h.complete(ms(2), key, Ok(json!(null)));
    assert!(h.pool.is_stopped());
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

#[test]
fn the_end_of_time_is_never_and_does_not_livelock() {
    // Found by the `config` fuzz target: at Time::MAX, probe deadlines
    // saturate to `now` and used to re-arm themselves forever.
    let mut h = Harness::new(options(), 1);
    h.tick(Time::MAX);
    assert!(h.actions.len() < 4, "bounded work: {:?}", h.actions);
    let key = h.submit(Time::MAX, &with_timeout("late", 1)).unwrap();
    h.tick(Time::MAX);
    h.pool
        .begin_shutdown(Time::MAX, Some(Duration::from_secs(1)));
    h.drain();
    assert!(
        h.pool.poll_timeout().is_none(),
        "nothing is due before the end of time"
    );
    h.complete(Time::MAX, key, Ok(json!(null)));
    assert!(h.pool.is_stopped());
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

// ----- configurations the reference runs --------------------------------

/// The reference's own test configuration: a 10 ms ceiling on what a
/// request may ask for beside the default 30 s default timeout. It builds;
/// the ceiling bounds `timeout_ms`, and requests without one get 30 s.
#[test]
fn a_default_timeout_above_the_ceiling_applies_to_requests_without_one() {
    let mut h = Harness::new(
        WorkerPoolOptions {
            security_policy: WorkerSecurityPolicy {
                max_request_timeout_ms: 10,
                max_request_payload_bytes: 256,
                max_identifier_length: 12,
            },
            ..options()
        },
        1,
    );
    assert!(matches!(
        h.submit(ms(0), &with_timeout("asks-99", 99)),
        Err(WorkerPoolError::InvalidRequest { .. })
    ));
    let key = h.submit(ms(0), &request("default")).unwrap();
    h.tick(ms(29_999));
    assert!(h.answers().is_empty(), "the 30 s budget has not run out");
    h.tick(ms(30_000));
    let answers = h.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].request, key);
    assert_eq!(answers[0].result, Err(WorkerPoolError::Timeout));
}

/// A zero budget (`timeout_ms: 0`, or a zero default timeout) has run out
/// on arrival: the request is answered `Timeout` at once, no worker runs
/// it and none is held responsible.
#[test]
fn a_zero_budget_times_out_on_arrival_without_touching_a_worker() {
    let mut h = Harness::new(
        WorkerPoolOptions {
            default_request_timeout: Some(Duration::ZERO),
            ..options()
        },
        1,
    );
    assert_eq!(
        h.submit(ms(1), &request("default-zero")),
        Err(WorkerPoolError::Timeout)
    );
    assert_eq!(
        h.submit(ms(2), &with_timeout("asks-zero", 0)),
        Err(WorkerPoolError::Timeout)
    );
    assert!(h.started().is_empty(), "no handler ran");
    assert_eq!(h.status(0), WorkerHealthStatus::Healthy);
    assert_eq!(h.pool.health()[0].consecutive_failures, 0);
    let counters = *h.pool.counters();
    assert_eq!(counters.refused_no_budget, 2);
    assert_eq!(counters.refused(), 2);
    assert_eq!(counters.accepted, 0);
    let key = h.submit(ms(3), &with_timeout("asks-one", 1)).unwrap();
    assert_eq!(h.started(), vec![(key, h.worker(0))]);
}

/// `unavailable_after_failures = 0` builds and acts as 1, as in the
/// reference (where every failure reaches a threshold of zero).
#[test]
fn a_zero_failure_threshold_acts_as_one() {
    let mut h = Harness::new(
        WorkerPoolOptions {
            unavailable_after_failures: 0,
            ..options()
        },
        1,
    );
    assert_eq!(h.status(0), WorkerHealthStatus::Healthy);
    let key = h.submit(ms(0), &request("fails")).unwrap();
    h.complete(ms(1), key, Err(failure()));
    assert_eq!(h.status(0), WorkerHealthStatus::Unavailable);
}

/// Zero security-policy limits build, as in the reference, and refuse
/// exactly the requests they exclude.
#[test]
fn zero_policy_limits_refuse_only_what_they_exclude() {
    let zero = |policy: WorkerSecurityPolicy| {
        Harness::new(
            WorkerPoolOptions {
                security_policy: policy,
                ..options()
            },
            1,
        )
    };
    let mut no_payload = zero(WorkerSecurityPolicy {
        max_request_payload_bytes: 0,
        ..WorkerSecurityPolicy::default()
    });
    assert!(matches!(
        no_payload.submit(ms(0), &request("any")),
        Err(WorkerPoolError::InvalidRequest { .. })
    ));
    let mut no_ids = zero(WorkerSecurityPolicy {
        max_identifier_length: 0,
        ..WorkerSecurityPolicy::default()
    });
    assert!(matches!(
        no_ids.submit(ms(0), &request("named")),
        Err(WorkerPoolError::InvalidRequest { .. })
    ));
    let unnamed = WorkerRequest {
        workflow_name: String::new(),
        node_id: String::new(),
        ..request("")
    };
    assert!(no_ids.submit(ms(0), &unnamed).is_ok());
    let mut no_timeouts = zero(WorkerSecurityPolicy {
        max_request_timeout_ms: 0,
        ..WorkerSecurityPolicy::default()
    });
    assert!(matches!(
        no_timeouts.submit(ms(0), &with_timeout("asks", 1)),
        Err(WorkerPoolError::InvalidRequest { .. })
    ));
    assert!(no_timeouts.submit(ms(0), &request("default")).is_ok());
}

/// Defect 11: a request queued behind a slow worker runs on the first
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

/// Defect 11: idle Healthy workers are chosen before idle Degraded ones.
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

// ----- a circuit breaker asked one candidate at a time ----------------------

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
fn a_refusal_debugs_its_error_but_not_its_payload() {
    let mut pool = Pool::<&str>::new(options(), Time::ZERO).expect("valid config");
    let refused = pool
        .submit(ms(0), &request("a"), "secret payload")
        .expect_err("no worker");
    let shown = format!("{refused:?}");
    assert!(shown.starts_with("Refused"), "{shown}");
    assert!(shown.contains("NoHealthyWorker"), "{shown}");
    assert!(!shown.contains("secret payload"), "{shown}");
}

#[test]
fn a_pool_debugs_its_clock_lifecycle_and_sizes() {
    let mut h = Harness::new(options(), 2);
    h.submit(ms(7), &request("a")).unwrap();
    let shown = format!("{:?}", h.pool);
    assert!(shown.starts_with("Pool"), "{shown}");
    for part in ["now", "Running", "workers: 2", "pending: 1", "accepted: 1"] {
        assert!(shown.contains(part), "{part} missing from {shown}");
    }
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
fn shutdown_restart_and_removal_abort_the_outstanding_probe() {
    let mut h = Harness::new(options(), 3);
    h.tick(ms(5_000));
    let probes: Vec<_> = h
        .take_actions()
        .into_iter()
        .filter_map(|action| match action {
            Action::RunProbe { worker, probe } => Some((worker, probe)),
            _ => None,
        })
        .collect();
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

#[test]
fn a_queued_request_with_exactly_the_last_runs_time_left_starts_and_one_with_none_left_does_not() {
    let mut h = one_strict_worker();
    let first = h.submit(ms(0), &request("first")).unwrap();
    let exact = h.submit(ms(0), &with_timeout("exact", 100)).unwrap();
    h.take_actions();
    // The first run takes 50 ms; `exact` has 50 ms left: enough.
    h.complete(ms(50), first, Ok(json!(null)));
    assert_eq!(h.started(), vec![(exact, h.worker(0))]);

    // A worker with no successful run yet (its first request failed).
    let mut h = Harness::new(
        WorkerPoolOptions {
            queue_capacity: 8,
            ..options()
        },
        1,
    );
    let first = h.submit(ms(0), &request("first")).unwrap();
    let spent = h.submit(ms(0), &with_timeout("spent", 50)).unwrap();
    let next = h.submit(ms(0), &request("next")).unwrap();
    h.take_actions();
    // `spent` reaches the worker at its deadline, before its timer fired:
    // answered, not started, and `next` starts.
    h.complete(ms(50), first, Err(failure()));
    assert_eq!(h.started(), vec![(next, h.worker(0))]);
    let answers = h.answers();
    let shed = answers.iter().find(|a| a.request == spent).unwrap();
    assert_eq!(
        (&shed.result, shed.phase),
        (&Err(WorkerPoolError::Timeout), Phase::Queued)
    );
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

#[test]
fn a_late_answer_to_a_timed_out_probe_is_ignored_while_the_next_one_runs() {
    let (mut h, worker, first) = timed_out_probe();
    h.take_actions();
    h.tick(ms(10_000));
    let (_, second) = run_probe(&mut h);
    assert_ne!(first, second, "every probe has its own key");
    assert!(!h
        .pool
        .handle_probe_result(ms(10_001), worker, first, WorkerHealthStatus::Healthy));
    h.drain();
    assert_eq!(h.status(0), WorkerHealthStatus::Unavailable, "still");
    assert!(h
        .pool
        .handle_probe_result(ms(10_002), worker, second, WorkerHealthStatus::Healthy));
    h.drain();
    assert_eq!(h.status(0), WorkerHealthStatus::Healthy);
    let counters = h.pool.counters();
    assert_eq!((counters.probes_sent, counters.probes_timed_out), (2, 1));
}
