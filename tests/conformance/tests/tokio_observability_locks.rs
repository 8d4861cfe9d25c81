//! The driver's `tracing` and `metrics` features on foreman-tokio: no
//! subscriber or recorder runs under a foreman lock, so each may call the
//! pool, on a paused current-thread runtime.

mod observability_support;

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use foreman_conformance::request;
use foreman_tokio::{
    handler_fn, CommandError, ExecutionMode, PoolConfig, TokioRuntime, WorkerHandler, WorkerPool,
    WorkerPoolError, WorkerRequest, WorkerSpec,
};
use serde_json::json;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use observability_support::{paused, pool};

// ----- no subscriber or recorder runs under a foreman lock ------------------------

/// A subscriber and a recorder that call the pool at every call: `stats`
/// (which locks every lane, and the worker names' lock with several
/// lanes) and `remove_worker` of an id no lane knows (which takes the
/// names' lock with any). If the pool called either while holding a lock,
/// the call would deadlock.
#[derive(Clone, Default)]
struct Reentrant(Arc<Hook>);

#[derive(Default)]
struct Hook {
    pool: Mutex<Weak<WorkerPool>>,
    /// Set while a call back into the pool is under way, so the pool's own
    /// emissions during it do not call back again.
    busy: AtomicBool,
    /// Calls back into the pool that completed.
    calls: AtomicUsize,
}

impl Reentrant {
    fn watch(&self, pool: &Arc<WorkerPool>) {
        *self.0.pool.lock().unwrap_or_else(PoisonError::into_inner) = Arc::downgrade(pool);
    }

    fn touch(&self) {
        let hook = &self.0;
        let pool = hook
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .upgrade();
        let Some(pool) = pool else {
            return;
        };
        if hook.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = pool.stats();
        // `ShuttingDown` for the emissions of a shutdown.
        let removed = pool.remove_worker("no-such-worker");
        assert!(
            matches!(
                removed,
                Err(WorkerPoolError::NoHealthyWorker | WorkerPoolError::ShuttingDown)
            ),
            "{removed:?}"
        );
        hook.calls.fetch_add(1, Ordering::AcqRel);
        hook.busy.store(false, Ordering::Release);
    }

    fn calls(&self) -> usize {
        self.0.calls.load(Ordering::Acquire)
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Reentrant {
    fn on_new_span(&self, _: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        self.touch();
    }

    fn on_record(&self, _: &Id, _: &Record<'_>, _: Context<'_, S>) {
        self.touch();
    }

    fn on_event(&self, _: &Event<'_>, _: Context<'_, S>) {
        self.touch();
    }

    fn on_enter(&self, _: &Id, _: Context<'_, S>) {
        self.touch();
    }

    fn on_close(&self, _: Id, _: Context<'_, S>) {
        self.touch();
    }
}

impl metrics::CounterFn for Reentrant {
    fn increment(&self, _: u64) {
        self.touch();
    }

    fn absolute(&self, _: u64) {
        self.touch();
    }
}

impl metrics::GaugeFn for Reentrant {
    fn increment(&self, _: f64) {
        self.touch();
    }

    fn decrement(&self, _: f64) {
        self.touch();
    }

    fn set(&self, _: f64) {
        self.touch();
    }
}

impl metrics::HistogramFn for Reentrant {
    fn record(&self, _: f64) {
        self.touch();
    }
}

impl metrics::Recorder for Reentrant {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
        self.touch();
    }

    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
        self.touch();
    }

    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
        self.touch();
    }

    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        self.touch();
        metrics::Counter::from_arc(Arc::new(self.clone()))
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        self.touch();
        metrics::Gauge::from_arc(Arc::new(self.clone()))
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        self.touch();
        metrics::Histogram::from_arc(Arc::new(self.clone()))
    }
}

/// Every kind of emission (spans and their fields, request events,
/// health transitions, moves, every metric) reaches a subscriber and a
/// recorder that call the pool, without a deadlock, in both execution
/// modes: none of them runs under a foreman lock.
#[test]
fn a_subscriber_and_a_recorder_may_call_the_pool() {
    for execution in [ExecutionMode::PoolTasks, ExecutionMode::CallerTask] {
        without_deadlock(&format!("{execution:?}"), move || {
            let hook = Reentrant::default();
            let subscriber = tracing_subscriber::registry().with(hook.clone());
            let _default = tracing::subscriber::set_default(subscriber);
            paused(async {
                let pool = metrics::with_local_recorder(&hook, || pool(2, 1, execution));
                let pool = Arc::new(pool);
                hook.watch(&pool);
                everything_once(&pool).await;
            });
        });
    }
}

/// The recorder that registers a new worker's gauges, and counts it
/// added, may call the pool from inside those calls: `add_worker` and
/// `add_worker_with` hold no lock across them, in a pool of two lanes.
#[test]
fn a_recorder_called_by_add_worker_may_call_the_pool() {
    without_deadlock("add_worker", || {
        paused(async {
            let hook = Reentrant::default();
            let pool = metrics::with_local_recorder(&hook, || {
                WorkerPool::with_lanes(
                    TokioRuntime,
                    vec![echo(), echo()],
                    PoolConfig::default(),
                    None,
                    NonZeroUsize::MIN.saturating_add(1),
                )
            })
            .expect("a pool");
            let pool = Arc::new(pool);
            hook.watch(&pool);

            let id = metrics::with_local_recorder(&hook, || pool.add_worker(echo()));
            assert_eq!(id, Ok("worker-2".to_string()));
            let after_first = hook.calls();
            assert!(after_first > 0, "the recorder was called during the add");

            let spec = WorkerSpec::named("http://10.0.0.5:8080");
            let id = metrics::with_local_recorder(&hook, || pool.add_worker_with(spec, echo()));
            assert_eq!(id, Ok("http://10.0.0.5:8080".to_string()));
            assert!(hook.calls() > after_first);

            let duplicate = WorkerSpec::named("worker-0");
            let refused =
                metrics::with_local_recorder(&hook, || pool.add_worker_with(duplicate, echo()));
            assert_eq!(
                refused,
                Err(CommandError::DuplicateWorkerId("worker-0".into()))
            );

            assert_eq!(pool.stats().workers.len(), 4);
            pool.shutdown().await;
        });
    });
}

/// Runs `scenario` on its own thread and fails if it has not ended within
/// 60 s: the scenarios run on a paused clock and take no wall time, so
/// only a deadlock makes this wait.
fn without_deadlock(what: &str, scenario: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    let run = std::thread::spawn(move || {
        scenario();
        let _ = done.send(());
    });
    let outcome = finished.recv_timeout(Duration::from_secs(60));
    if outcome.is_err() && !run.is_finished() {
        panic!("{what}: the pool called a subscriber or recorder under its lock");
    }
    run.join().expect("the scenario passed");
}

fn echo() -> Arc<dyn WorkerHandler> {
    handler_fn(|_request: WorkerRequest| async { Ok(json!(null)) }).into_arc()
}

/// One of each outcome and event on a pool of two workers with queues of
/// one: a move by late binding, failures that change a worker's health,
/// timeouts while running and queued, a refusal, a cancellation, a
/// restart's abort and a drain's abort.
async fn everything_once(pool: &WorkerPool) {
    let slow = pool.submit(request("slow", "sleep:100"));
    let fast = pool.submit(request("fast", "sleep:20"));
    let moved = pool.submit(request("moved", "echo"));
    let (slow, fast, moved) = futures::join!(slow, fast, moved);
    assert!(slow.is_ok() && fast.is_ok() && moved.is_ok());
    for id in ["fail-1", "fail-2"] {
        assert!(pool.submit(request(id, "fail")).await.is_err());
    }
    let hanging = |id: &str| {
        let mut request = request(id, "hang");
        request.timeout_ms = Some(30);
        pool.submit(request)
    };
    let (a, b, c, d, e) = futures::join!(
        hanging("a"),
        hanging("b"),
        hanging("c"),
        hanging("d"),
        hanging("e")
    );
    let timeouts = [&a, &b, &c, &d, &e]
        .iter()
        .filter(|result| matches!(result, Err(WorkerPoolError::Timeout)))
        .count();
    let refusals = [&a, &b, &c, &d, &e]
        .iter()
        .filter(|result| matches!(result, Err(WorkerPoolError::QueueFull)))
        .count();
    assert_eq!(
        (timeouts, refusals),
        (4, 1),
        "{a:?} {b:?} {c:?} {d:?} {e:?}"
    );
    // The timeouts counted against the workers: restarts heal them.
    for worker in ["worker-0", "worker-1"] {
        assert!(pool.restart_worker(worker).await.is_ok());
    }
    let cut = tokio::time::timeout(
        Duration::from_millis(5),
        pool.submit(request("cut", "hang")),
    );
    assert!(cut.await.is_err());
    let restarted = pool.submit(request("restarted", "hang"));
    let restart = async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        for worker in ["worker-0", "worker-1"] {
            assert!(pool.restart_worker(worker).await.is_ok());
        }
    };
    let (restarted, ()) = futures::join!(restarted, restart);
    assert!(matches!(restarted, Err(WorkerPoolError::Worker(_))));
    let drained = pool.submit(request("drained", "hang"));
    let shutdown = async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        pool.shutdown_with_deadline(Duration::ZERO).await;
    };
    let (drained, ()) = futures::join!(drained, shutdown);
    assert!(matches!(drained, Err(WorkerPoolError::ShuttingDown)));
}
