//! The driver's `tracing` and `metrics` features on foreman-tokio: no
//! subscriber or recorder runs under a foreman lock, so each may call the
//! pool, on a paused current-thread runtime.

mod observability_support;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use foreman_conformance::request;
use foreman_tokio::{ExecutionMode, WorkerPool, WorkerPoolError};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use observability_support::{paused, pool};

// ----- no subscriber or recorder runs under a foreman lock ------------------------

/// A subscriber and a recorder that read the pool's stats (which locks
/// every lane) at every call: if the pool called either while holding a
/// lock, the call would deadlock.
#[derive(Clone, Default)]
struct Reentrant(Arc<Mutex<std::sync::Weak<WorkerPool>>>);

impl Reentrant {
    fn touch(&self) {
        let pool = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .upgrade();
        if let Some(pool) = pool {
            let _ = pool.stats();
        }
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
    }

    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(Arc::new(self.clone()))
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(Arc::new(self.clone()))
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
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
        let (done, finished) = std::sync::mpsc::channel();
        let run = std::thread::spawn(move || {
            let hook = Reentrant::default();
            let subscriber = tracing_subscriber::registry().with(hook.clone());
            let _default = tracing::subscriber::set_default(subscriber);
            paused(async {
                let pool = metrics::with_local_recorder(&hook, || pool(2, 1, execution));
                let pool = Arc::new(pool);
                *hook.0.lock().unwrap_or_else(PoisonError::into_inner) = Arc::downgrade(&pool);
                everything_once(&pool).await;
            });
            let _ = done.send(());
        });
        // Only a deadlock makes this wait: the body takes no wall time.
        let outcome = finished.recv_timeout(Duration::from_secs(60));
        if outcome.is_err() && !run.is_finished() {
            panic!("{execution:?}: the pool called a subscriber or recorder under its lock");
        }
        run.join().expect("the scenario passed");
    }
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
