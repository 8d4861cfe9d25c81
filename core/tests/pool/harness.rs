//! The explicit-time helper of these tests ([`Harness`]), the requests,
//! options and failures they submit, and the checks several modules share.

use std::time::Duration;

use foreman_core::{
    Action, Answer, Event, HealthCause, PhaseLimits, Pool, PoolConfig, RequestKey, Time,
    WorkerErrorCode, WorkerHealthStatus, WorkerKey, WorkerOperation, WorkerPoolError,
    WorkerPoolOptions, WorkerProtocolError, WorkerRequest, WorkerSecurityPolicy,
};
use serde_json::{json, Value};

pub(crate) fn ms(n: u64) -> Time {
    Time::from_millis(n)
}

pub(crate) fn request(id: &str) -> WorkerRequest {
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

/// An LLM call (which retry and hedging policies cover by default).
pub(crate) fn llm(id: &str) -> WorkerRequest {
    WorkerRequest {
        operation: WorkerOperation::Llm {
            model: "m".into(),
            prompt: "p".into(),
            scoped_input: json!({}),
        },
        ..request(id)
    }
}

pub(crate) fn with_timeout(id: &str, timeout_ms: u64) -> WorkerRequest {
    WorkerRequest {
        timeout_ms: Some(timeout_ms),
        ..request(id)
    }
}

pub(crate) fn failure() -> WorkerProtocolError {
    WorkerProtocolError::new(WorkerErrorCode::ExecutionFailed, "boom", true)
}

/// The explicit-time helper of these unit tests: applies inputs at the
/// instants a test names, checks the pool's own invariants after each, and
/// keeps every output for the test's assertions. It predicts nothing: the
/// checking harness of the simulator, the proptests and the fuzz targets
/// (`foreman_tests::model::Harness`) is not used here because foreman-tests
/// depends on foreman-core, and a dev-dependency of the core on it would be
/// a cycle.
pub(crate) struct Harness {
    pub(crate) pool: Pool<u32>,
    pub(crate) actions: Vec<Action<u32>>,
    pub(crate) events: Vec<Event>,
    next_payload: u32,
}

impl Harness {
    pub(crate) fn new(options: WorkerPoolOptions, workers: usize) -> Self {
        Self::with_config(PoolConfig::new(options), workers)
    }

    pub(crate) fn with_config(config: PoolConfig, workers: usize) -> Self {
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

    pub(crate) fn drain(&mut self) {
        self.pool.check_invariants().expect("invariants hold");
        while let Some(action) = self.pool.poll_action() {
            self.actions.push(action);
        }
        while let Some(event) = self.pool.poll_event() {
            self.events.push(event);
        }
    }

    pub(crate) fn worker(&self, index: usize) -> WorkerKey {
        self.pool.workers().nth(index).expect("worker exists")
    }

    pub(crate) fn submit(
        &mut self,
        now: Time,
        req: &WorkerRequest,
    ) -> Result<RequestKey, WorkerPoolError> {
        self.next_payload += 1;
        let payload = self.next_payload;
        let result = self.pool.submit(now, req, payload).map_err(|refused| {
            assert_eq!(refused.payload, payload, "refusal returns the payload");
            refused.error
        });
        self.drain();
        result
    }

    pub(crate) fn submit_limited(
        &mut self,
        now: Time,
        req: &WorkerRequest,
        limits: PhaseLimits,
    ) -> Result<RequestKey, WorkerPoolError> {
        self.next_payload += 1;
        let result = self
            .pool
            .submit_limited(now, req, limits, self.next_payload)
            .map_err(|refused| refused.error);
        self.drain();
        result
    }

    pub(crate) fn complete(
        &mut self,
        now: Time,
        key: RequestKey,
        result: Result<Value, WorkerProtocolError>,
    ) -> bool {
        let applied = self.pool.handle_completion(now, key, result);
        self.drain();
        applied
    }

    pub(crate) fn cancel(&mut self, now: Time, key: RequestKey) -> bool {
        let applied = self.pool.cancel(now, key);
        self.drain();
        applied
    }

    pub(crate) fn tick(&mut self, now: Time) {
        self.pool.handle_timeout(now);
        self.drain();
    }

    pub(crate) fn take_actions(&mut self) -> Vec<Action<u32>> {
        std::mem::take(&mut self.actions)
    }

    pub(crate) fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    pub(crate) fn started(&mut self) -> Vec<(RequestKey, WorkerKey)> {
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

    pub(crate) fn answers(&mut self) -> Vec<Answer<u32>> {
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
    pub(crate) fn health_changes(
        &mut self,
    ) -> Vec<(WorkerHealthStatus, WorkerHealthStatus, HealthCause)> {
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

    pub(crate) fn status(&self, index: usize) -> WorkerHealthStatus {
        self.pool.health()[index].status
    }
}

pub(crate) fn options() -> WorkerPoolOptions {
    WorkerPoolOptions {
        queue_capacity: 2,
        health_probe_interval: Duration::from_secs(5),
        unavailable_after_failures: 3,
        default_request_timeout: Some(Duration::from_secs(30)),
        security_policy: WorkerSecurityPolicy::default(),
    }
}

/// `result` is a retryable `Unavailable` worker error mentioning `what`.
pub(crate) fn assert_unavailable(result: &Result<Value, WorkerPoolError>, what: &str) {
    match result {
        Err(WorkerPoolError::Worker(error)) => {
            assert_eq!(error.code, WorkerErrorCode::Unavailable);
            assert!(error.retryable);
            assert!(error.message.contains(what), "{}", error.message);
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Every probe the pool started since actions were last taken.
pub(crate) fn probes_started(h: &mut Harness) -> Vec<(WorkerKey, foreman_core::ProbeKey)> {
    h.take_actions()
        .into_iter()
        .filter_map(|action| match action {
            Action::RunProbe { worker, probe } => Some((worker, probe)),
            _ => None,
        })
        .collect()
}

pub(crate) fn run_probe(h: &mut Harness) -> (WorkerKey, foreman_core::ProbeKey) {
    h.take_actions()
        .into_iter()
        .find_map(|action| match action {
            Action::RunProbe { worker, probe } => Some((worker, probe)),
            _ => None,
        })
        .expect("a probe was started")
}

/// One worker with room for one queued request, running `running` with
/// `queued` waiting behind it (both submitted at 0 ms); returns the key of
/// `queued`.
pub(crate) fn one_running_one_queued() -> (Harness, RequestKey) {
    let mut h = Harness::new(
        WorkerPoolOptions {
            queue_capacity: 1,
            ..options()
        },
        1,
    );
    h.submit(ms(0), &request("running")).unwrap();
    let queued = h.submit(ms(0), &request("queued")).unwrap();
    (h, queued)
}
