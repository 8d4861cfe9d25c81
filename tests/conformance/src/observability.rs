//! Scenarios of the driver's `metrics` feature, on every adapter: the
//! pool registers its metrics with the recorder in effect when it is
//! built (here a local `DebuggingRecorder`, so tests share no global),
//! and every emission goes through those handles, from whichever thread
//! carries it out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use foreman_driver::{Runtime, WorkerHealthStatus, WorkerPoolError, WorkerPoolOptions};
use futures::future;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

use crate::lanes::slow_and_fast_pool;

use crate::support::{options, pending_after_one_poll, pool_of, request, wait_until, TestWorker};

/// What the recorder holds for one metric.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// A counter's value.
    Counter(u64),
    /// A gauge's value.
    Gauge(f64),
    /// Every sample a histogram received so far, in order.
    Histogram(Vec<f64>),
}

/// A metric's name and its labels, sorted.
type MetricId = (String, Vec<(String, String)>);

/// Reads a [`DebuggingRecorder`], whose every snapshot takes what it
/// shows (counters and gauges back to zero, histograms emptied): the
/// totals are kept here. (The pool only ever moves its gauges by
/// increments, so a gauge's total is its value.)
pub struct Readings {
    snapshotter: Snapshotter,
    totals: Mutex<BTreeMap<MetricId, Reading>>,
}

impl Readings {
    /// Reads `recorder`.
    pub fn new(recorder: &DebuggingRecorder) -> Self {
        Readings {
            snapshotter: recorder.snapshotter(),
            totals: Mutex::new(BTreeMap::new()),
        }
    }

    /// Every metric registered so far, with its reading.
    pub fn all(&self) -> Vec<(MetricId, Reading)> {
        let mut totals = self
            .totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (key, _unit, _description, value) in self.snapshotter.snapshot().into_vec() {
            let (_kind, key) = key.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|label| (label.key().to_string(), label.value().to_string()))
                .collect();
            labels.sort();
            let id = (key.name().to_string(), labels);
            let total = totals.entry(id).or_insert_with(|| match value {
                DebugValue::Counter(_) => Reading::Counter(0),
                DebugValue::Gauge(_) => Reading::Gauge(0.0),
                DebugValue::Histogram(_) => Reading::Histogram(Vec::new()),
            });
            match (total, value) {
                (Reading::Counter(total), DebugValue::Counter(count)) => *total += count,
                (Reading::Gauge(total), DebugValue::Gauge(delta)) => *total += delta.into_inner(),
                (Reading::Histogram(total), DebugValue::Histogram(samples)) => {
                    total.extend(samples.into_iter().map(|sample| sample.into_inner()));
                }
                (total, value) => panic!("a metric changed kind: {total:?} then {value:?}"),
            }
        }
        totals
            .iter()
            .map(|(id, reading)| (id.clone(), reading.clone()))
            .collect()
    }

    /// The reading of the metric `name` with exactly `labels`, if it was
    /// registered.
    pub fn reading(&self, name: &str, labels: &[(&str, &str)]) -> Option<Reading> {
        let mut wanted: Vec<(String, String)> = labels
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        wanted.sort();
        self.all()
            .into_iter()
            .find(|((metric, labels), _)| metric == name && *labels == wanted)
            .map(|(_, reading)| reading)
    }

    /// A counter's value (0 if it was never registered).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.reading(name, labels) {
            Some(Reading::Counter(count)) => count,
            None => 0,
            Some(other) => panic!("{name} {labels:?} is not a counter: {other:?}"),
        }
    }

    /// A gauge's value.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.reading(name, labels) {
            Some(Reading::Gauge(value)) => value,
            other => panic!("{name} {labels:?} is not a registered gauge: {other:?}"),
        }
    }

    /// Requests whose end was counted, by any outcome.
    pub fn ended(&self) -> u64 {
        const ENDINGS: [&str; 5] = [
            "foreman_requests_succeeded_total",
            "foreman_requests_failed_total",
            "foreman_requests_timed_out_total",
            "foreman_requests_cancelled_total",
            "foreman_requests_aborted_total",
        ];
        self.all()
            .into_iter()
            .filter(|((name, _), _)| ENDINGS.contains(&name.as_str()))
            .map(|(_, reading)| match reading {
                Reading::Counter(count) => count,
                other => panic!("an ending that is not a counter: {other:?}"),
            })
            .sum()
    }

    /// Asserts that the queued and in-flight gauges of `worker-0` to
    /// `worker-{workers - 1}` read zero.
    pub fn assert_worker_gauges_zero(&self, workers: usize) {
        for worker in 0..workers {
            let id = format!("worker-{worker}");
            let labels = [("worker", id.as_str())];
            assert_eq!(
                self.gauge("foreman_worker_queued", &labels),
                0.0,
                "{id} queued"
            );
            assert_eq!(
                self.gauge("foreman_worker_in_flight", &labels),
                0.0,
                "{id} in flight"
            );
        }
    }

    /// Every sample of an unlabelled histogram so far.
    pub fn samples(&self, name: &str) -> Vec<f64> {
        match self.reading(name, &[]) {
            Some(Reading::Histogram(samples)) => samples,
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }
}

/// The metrics count each request once by its outcome (a success, a
/// handler's failure, a timeout while running, a refusal for a full
/// queue, a cancellation while queued), time every answer, and move the
/// per-worker and per-health-state gauges in step with the pool's stats;
/// once the pool has shut down, every gauge is back to zero.
pub async fn metrics_count_each_outcome_and_follow_the_queues<R: Runtime + Default + Clone>(rt: R) {
    let recorder = DebuggingRecorder::new();
    let m = Readings::new(&recorder);
    let worker = TestWorker::new(&rt);
    let pool = metrics::with_local_recorder(&recorder, || {
        pool_of(
            &[Arc::clone(&worker)],
            WorkerPoolOptions {
                queue_capacity: 1,
                ..options()
            },
        )
    });
    let w0 = [("worker", "worker-0")];
    assert_eq!(m.gauge("foreman_workers", &[("state", "healthy")]), 1.0);
    assert_eq!(m.gauge("foreman_worker_queued", &w0), 0.0);

    assert!(pool.submit(request("ok", "echo")).await.is_ok());
    assert!(pool.submit(request("bad", "fail")).await.is_err());
    // One failure: the worker is Degraded.
    assert_eq!(m.gauge("foreman_workers", &[("state", "healthy")]), 0.0);
    assert_eq!(m.gauge("foreman_workers", &[("state", "degraded")]), 1.0);
    let mut hang = request("hang", "hang");
    hang.timeout_ms = Some(5);
    assert!(matches!(
        pool.submit(hang).await,
        Err(WorkerPoolError::Timeout)
    ));
    wait_until(&rt, "the timed-out handler dropped", || {
        worker.dropped() == 1
    })
    .await;

    // One running, one queued: the queue (capacity 1) is full.
    let mut running = Box::pin(pool.submit(request("running", "gate")));
    assert!(pending_after_one_poll(&mut running).await);
    {
        let mut queued = Box::pin(pool.submit(request("queued", "echo")));
        assert!(pending_after_one_poll(&mut queued).await);
        assert_eq!(m.gauge("foreman_worker_in_flight", &w0), 1.0);
        assert_eq!(m.gauge("foreman_worker_queued", &w0), 1.0);
        let refused = pool.submit(request("refused", "echo")).await;
        assert!(
            matches!(refused, Err(WorkerPoolError::QueueFull)),
            "{refused:?}"
        );
    }
    // The queued request was cancelled when its future was dropped.
    assert_eq!(m.gauge("foreman_worker_queued", &w0), 0.0);
    worker.open_gate(1);
    assert!(running.await.is_ok());
    assert_eq!(m.gauge("foreman_worker_in_flight", &w0), 0.0);
    // The last success healed the worker.
    assert_eq!(m.gauge("foreman_workers", &[("state", "healthy")]), 1.0);
    assert_eq!(m.gauge("foreman_workers", &[("state", "degraded")]), 0.0);

    let stats = pool.stats().counters;
    let count = |name: &str, labels: &[(&str, &str)]| m.counter(name, labels);
    assert_eq!(count("foreman_requests_accepted_total", &[]), 5);
    assert_eq!(
        count("foreman_requests_accepted_total", &[]),
        stats.accepted
    );
    assert_eq!(count("foreman_requests_succeeded_total", &[]), 2);
    assert_eq!(count("foreman_requests_failed_total", &[]), 1);
    assert_eq!(
        count("foreman_requests_timed_out_total", &[("phase", "running")]),
        1
    );
    assert_eq!(
        count("foreman_requests_timed_out_total", &[("phase", "queued")]),
        0
    );
    assert_eq!(count("foreman_requests_cancelled_total", &[]), 1);
    assert_eq!(
        count(
            "foreman_requests_refused_total",
            &[("reason", "queue_full")]
        ),
        1
    );
    assert_eq!(
        count(
            "foreman_requests_refused_total",
            &[("reason", "queue_full")]
        ),
        stats.refused_queue_full
    );
    // Every answer was timed; every started request's run too.
    assert_eq!(m.samples("foreman_request_queue_seconds").len(), 5);
    assert_eq!(m.samples("foreman_request_run_seconds").len(), 4);

    pool.shutdown().await;
    for state in [
        WorkerHealthStatus::Healthy,
        WorkerHealthStatus::Degraded,
        WorkerHealthStatus::Unavailable,
    ] {
        let state = format!("{state:?}").to_lowercase();
        assert_eq!(
            m.gauge("foreman_workers", &[("state", state.as_str())]),
            0.0,
            "{state} once the pool stopped"
        );
    }
}

/// In two lanes whose fast workers take the slow lane's queue (the
/// slow/fast workload), the metrics follow every move between lanes:
/// once every request is answered, each worker's queued and in-flight
/// gauges read zero, every request was accepted and succeeded exactly
/// once, and each move is counted once.
pub async fn metrics_follow_requests_moved_between_lanes<R: Runtime + Default + Clone>(rt: R) {
    let recorder = DebuggingRecorder::new();
    let m = Readings::new(&recorder);
    let pool = metrics::with_local_recorder(&recorder, || slow_and_fast_pool(&rt, Some(2)));
    let requests = (0..200).map(|i| pool.submit(request(&format!("r{i}"), "paced")));
    for answer in future::join_all(requests).await {
        assert!(answer.is_ok(), "{answer:?}");
    }
    let counters = pool.stats().counters;
    assert!(counters.moved_in > 0, "nothing moved: {counters:?}");
    m.assert_worker_gauges_zero(16);
    assert_eq!(m.counter("foreman_requests_accepted_total", &[]), 200);
    assert_eq!(m.counter("foreman_requests_succeeded_total", &[]), 200);
    // Each adoption is counted (`moved_in` counts, besides, requests no
    // lane took, answered where they were).
    let moved = m.counter("foreman_requests_moved_total", &[]);
    assert!(
        (1..=counters.moved_in).contains(&moved),
        "{moved} moves counted: {counters:?}"
    );
    assert_eq!(m.gauge("foreman_workers", &[("state", "healthy")]), 16.0);
    pool.shutdown().await;
}
