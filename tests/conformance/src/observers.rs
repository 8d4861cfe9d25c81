//! Hooks declared observe-only (`WorkerPool::new_inprocess_observed`):
//! they hear every event, yet requests keep late binding, while hooks
//! given as a circuit breaker (`new_inprocess`) still pin every request to
//! the worker `allow_request` approved.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use foreman_driver::{
    async_trait, CircuitBreakerHooks, PhaseLimits, Runtime, WorkerPool, WorkerPoolError,
    WorkerProtocolError, WorkerRequest, WorkerResponse,
};

use crate::support::{handlers_of, options, request, wait_until, RecordingHooks, TestWorker};

/// Hooks that only observe: `allow_request` is not overridden.
#[derive(Default)]
struct Observer {
    log: Mutex<Vec<String>>,
}

impl Observer {
    fn push(&self, entry: String) {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
    }

    fn log(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl CircuitBreakerHooks for Observer {
    async fn on_request_accepted(&self, worker_id: &str, request: &WorkerRequest) {
        self.push(format!("accepted {} {worker_id}", request.request_id));
    }

    async fn on_request_success(&self, worker_id: &str, response: &WorkerResponse) {
        self.push(format!("success {} {worker_id}", response.request_id));
    }

    async fn on_request_failure(&self, worker_id: &str, error: &WorkerProtocolError) {
        self.push(format!(
            "failure {worker_id} {:?}: {}",
            error.code, error.message
        ));
    }
}

/// Two workers busy (gated) and a third request queued on the first; the
/// second worker frees up first. Returns the worker that ran the queued
/// request.
async fn queued_behind_a_busy_worker<R: Runtime + Default + Clone>(
    rt: &R,
    pool: &WorkerPool<R>,
    busy: &TestWorker<R>,
    freed: &TestWorker<R>,
) -> String {
    let control = async {
        wait_until(rt, "two running and one queued", || {
            let stats = pool.stats();
            (stats.running, stats.queued) == (2, 1)
        })
        .await;
        freed.open_gate(1);
        // Its completion starts the queued request on it at once, unless
        // that request is pinned to the busy worker.
        wait_until(rt, "the freed worker's request answered", || {
            pool.stats().counters.succeeded >= 1
        })
        .await;
        busy.open_gate(1);
    };
    let (first, second, queued, ()) = futures::join!(
        pool.submit(request("busy", "gate")),
        pool.submit(request("freed", "gate")),
        pool.submit(request("queued", "echo")),
        control,
    );
    assert!(first.is_ok() && second.is_ok(), "{first:?} {second:?}");
    queued.unwrap_or_else(|e| panic!("{e}")).worker_id
}

/// With observe-only hooks the request queued behind the busy worker runs
/// on the worker that frees first (late binding), and the hooks hear of it:
/// accepted where it queued, answered by the worker that ran it; a
/// `Timeout` they hear names its limit. With the same events seen by
/// circuit-breaker hooks, the request stays on the worker that accepted it.
pub async fn observe_only_hooks_keep_late_binding_and_a_breaker_pins<
    R: Runtime + Default + Clone,
>(
    rt: R,
) {
    let (busy, freed) = (TestWorker::new(&rt), TestWorker::new(&rt));
    let observer = Arc::new(Observer::default());
    let pool = WorkerPool::<R>::new_inprocess_observed(
        handlers_of(&[Arc::clone(&busy), Arc::clone(&freed)]),
        options(),
        Arc::clone(&observer) as Arc<dyn CircuitBreakerHooks>,
    )
    .unwrap_or_else(|e| panic!("valid pool: {e}"));
    let ran_on = queued_behind_a_busy_worker(&rt, &pool, &busy, &freed).await;
    assert_eq!(ran_on, "worker-1", "late binding: the freed worker runs it");
    assert_eq!(pool.stats().counters.reassigned, 1);
    let log = observer.log();
    for line in ["accepted queued worker-0", "success queued worker-1"] {
        assert!(log.contains(&line.to_string()), "{line}: {log:?}");
    }
    let limits = PhaseLimits::new().with_run(Duration::from_millis(5));
    let hung = pool
        .submit_with_limits(request("hung", "hang"), limits)
        .await;
    assert_eq!(hung, Err(WorkerPoolError::Timeout));
    wait_until(&rt, "the failure hook ran", || {
        observer
            .log()
            .iter()
            .any(|line| line.starts_with("failure "))
    })
    .await;
    let failure = observer
        .log()
        .into_iter()
        .find(|line| line.starts_with("failure "));
    let failure = failure.unwrap_or_default();
    assert!(
        failure.contains("Timeout") && failure.contains("run_limit"),
        "{failure}"
    );
    pool.shutdown().await;

    let (busy, freed) = (TestWorker::new(&rt), TestWorker::new(&rt));
    let breaker = Arc::new(RecordingHooks::default());
    let pool = WorkerPool::<R>::new_inprocess(
        handlers_of(&[Arc::clone(&busy), Arc::clone(&freed)]),
        options(),
        Some(Arc::clone(&breaker) as Arc<dyn CircuitBreakerHooks>),
    )
    .unwrap_or_else(|e| panic!("valid pool: {e}"));
    let ran_on = queued_behind_a_busy_worker(&rt, &pool, &busy, &freed).await;
    assert_eq!(ran_on, "worker-0", "a breaker's request stays put");
    assert_eq!(pool.stats().counters.reassigned, 0);
    pool.shutdown().await;
}
