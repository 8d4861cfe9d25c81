//! Adding workers with the `metrics` feature: the recorder (the new
//! worker's gauges, the pool's counters) runs with no foreman lock held,
//! so it may call the pool; and two adds of one id, racing, add it once.
#![cfg(feature = "metrics")]

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, PoisonError, Weak};
use std::time::Duration;

use foreman_tokio::{
    handler_fn, CommandError, PoolConfig, TokioRuntime, WorkerHandler, WorkerPool, WorkerPoolError,
    WorkerRequest, WorkerSpec,
};
use serde_json::json;

/// A recorder whose every registration and emission calls the pool:
/// `stats` (which takes the worker names' lock with several lanes) and
/// `remove_worker` of an id no lane knows (which takes it with any). A
/// call the pool made under one of its locks would deadlock.
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
        // `ShuttingDown` for the emissions of the shutdown at the end.
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

fn echo() -> Arc<dyn WorkerHandler> {
    Arc::new(handler_fn(|_request: WorkerRequest| async {
        Ok(json!(null))
    }))
}

fn two_lanes() -> NonZeroUsize {
    NonZeroUsize::MIN.saturating_add(1)
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

/// Runs `scenario` on its own thread and fails if it has not ended within
/// `limit`: the scenarios take no wall time, so only a deadlock makes this
/// wait.
fn without_deadlock(what: &str, limit: Duration, scenario: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    let run = std::thread::spawn(move || {
        scenario();
        let _ = done.send(());
    });
    let outcome = finished.recv_timeout(limit);
    if outcome.is_err() && !run.is_finished() {
        panic!("{what}: the pool called the recorder under one of its locks");
    }
    run.join().expect("the scenario passed");
}

/// The recorder that registers a new worker's gauges, and counts it
/// added, may call the pool (`stats`, `remove_worker`) from inside those
/// calls: `add_worker` and `add_worker_with` hold no lock across them.
#[test]
fn a_recorder_called_by_add_worker_may_call_the_pool() {
    without_deadlock("add_worker", Duration::from_secs(10), || {
        let runtime = paused_runtime();
        runtime.block_on(async {
            let hook = Reentrant::default();
            let pool = metrics::with_local_recorder(&hook, || {
                WorkerPool::with_lanes(
                    TokioRuntime,
                    vec![echo(), echo()],
                    PoolConfig::default(),
                    None,
                    two_lanes(),
                )
            })
            .expect("a pool");
            let pool = Arc::new(pool);
            *hook.0.pool.lock().unwrap_or_else(PoisonError::into_inner) = Arc::downgrade(&pool);

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

/// Two threads adding a worker of the same id at once (on a pool of two
/// lanes, whose cores each know only their own ids): exactly one adds it,
/// the other gets `DuplicateWorkerId`.
#[test]
fn two_racing_adds_of_one_id_add_it_once() {
    const ROUNDS: usize = 32;
    let runtime = paused_runtime();
    let pool = {
        let _context = runtime.enter();
        WorkerPool::with_lanes(
            TokioRuntime,
            vec![echo(), echo()],
            PoolConfig::default(),
            None,
            two_lanes(),
        )
        .expect("a pool")
    };
    let pool = Arc::new(pool);
    for round in 0..ROUNDS {
        let id = format!("http://10.0.0.{round}:8080");
        let start = Arc::new(Barrier::new(2));
        let adders: Vec<_> = (0..2)
            .map(|_| {
                let (pool, start, id) = (Arc::clone(&pool), Arc::clone(&start), id.clone());
                let handle = runtime.handle().clone();
                std::thread::spawn(move || {
                    let _context = handle.enter();
                    start.wait();
                    pool.add_worker_with(WorkerSpec::named(id), echo())
                })
            })
            .collect();
        let mut results: Vec<_> = adders
            .into_iter()
            .map(|adder| adder.join().expect("an adder"))
            .collect();
        results.sort_by_key(Result::is_err);
        assert_eq!(
            results,
            vec![Ok(id.clone()), Err(CommandError::DuplicateWorkerId(id))],
            "round {round}"
        );
    }
    assert_eq!(pool.stats().workers.len(), 2 + ROUNDS);
    runtime.block_on(pool.shutdown());
}

/// Two threads adding a worker with no id at once: both are added, with
/// different numbered ids (an add under way reserves the number it took).
#[test]
fn two_racing_numbered_adds_get_different_ids() {
    const ROUNDS: usize = 32;
    let runtime = paused_runtime();
    let pool = {
        let _context = runtime.enter();
        WorkerPool::new_inprocess(vec![echo()], Default::default(), None).expect("a pool")
    };
    let pool = Arc::new(pool);
    for round in 0..ROUNDS {
        let start = Arc::new(Barrier::new(2));
        let adders: Vec<_> = (0..2)
            .map(|_| {
                let (pool, start) = (Arc::clone(&pool), Arc::clone(&start));
                let handle = runtime.handle().clone();
                std::thread::spawn(move || {
                    let _context = handle.enter();
                    start.wait();
                    pool.add_worker(echo())
                })
            })
            .collect();
        let mut ids: Vec<_> = adders
            .into_iter()
            .map(|adder| adder.join().expect("an adder"))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|error| panic!("round {round}: {error:?}"));
        ids.sort();
        let mut expected = vec![
            format!("worker-{}", 1 + 2 * round),
            format!("worker-{}", 2 + 2 * round),
        ];
        expected.sort();
        assert_eq!(ids, expected, "round {round}");
    }
    assert_eq!(pool.stats().workers.len(), 1 + 2 * ROUNDS);
    runtime.block_on(pool.shutdown());
}
