//! The `metrics` feature: every metric of the pool as a handle registered
//! once, when the pool (for a worker's gauges: the worker) is built, with
//! the recorder in effect then; emitting is a call on a handle, with no
//! key built and no label allocated. Without the feature every type here
//! is empty and every function does nothing.
//!
//! Handles are only ever called with no foreman lock held (a recorder is
//! user code): what the core reports under the lock is written down as
//! [`Notes`](crate::notes::Notes) and emitted afterwards. The metrics are
//! listed in the crate docs ("Observability").

use std::time::Duration;

use foreman_core::WorkerPoolError;
#[cfg(feature = "metrics")]
use foreman_core::{Phase, WorkerHealthStatus};

use crate::outcome::Ending;
#[cfg(feature = "metrics")]
use crate::outcome::{phase_name, refusal_reason, status_name};

#[cfg(feature = "metrics")]
use metrics::{Counter, Gauge, Histogram};

/// The pool's counters, histograms and health-state gauges.
pub(crate) struct PoolMeter {
    #[cfg(feature = "metrics")]
    handles: PoolHandles,
}

#[cfg(feature = "metrics")]
struct PoolHandles {
    accepted: Counter,
    refused_invalid: Counter,
    refused_queue_full: Counter,
    refused_no_healthy_worker: Counter,
    refused_circuit_open: Counter,
    refused_shutting_down: Counter,
    refused_no_budget: Counter,
    succeeded: Counter,
    failed: Counter,
    retried: Counter,
    hedged: Counter,
    moved: Counter,
    timed_out_queued: Counter,
    timed_out_running: Counter,
    cancelled: Counter,
    aborted_restart: Counter,
    aborted_shutdown: Counter,
    aborted_removed: Counter,
    queue_seconds: Histogram,
    run_seconds: Histogram,
    healthy: Gauge,
    degraded: Gauge,
    unavailable: Gauge,
}

/// One worker's gauges.
pub(crate) struct WorkerMeter {
    #[cfg(feature = "metrics")]
    pub(crate) queued: Gauge,
    #[cfg(feature = "metrics")]
    pub(crate) in_flight: Gauge,
}

impl PoolMeter {
    /// Registers (and describes) the pool's metrics with the recorder in
    /// effect on this thread.
    pub(crate) fn new() -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            let timed_out = |phase| metrics::counter!("foreman_requests_timed_out_total", "phase" => phase_name(phase));
            let refused = |error: WorkerPoolError| {
                let reason = refusal_reason(&error);
                metrics::counter!("foreman_requests_refused_total", "reason" => reason)
            };
            let aborted = |cause: &'static str| metrics::counter!("foreman_requests_aborted_total", "cause" => cause);
            let state = |status| metrics::gauge!("foreman_workers", "state" => status_name(status));
            let invalid = WorkerPoolError::InvalidRequest {
                reason: String::new(),
            };
            PoolMeter {
                handles: PoolHandles {
                    accepted: metrics::counter!("foreman_requests_accepted_total"),
                    refused_invalid: refused(invalid),
                    refused_queue_full: refused(WorkerPoolError::QueueFull),
                    refused_no_healthy_worker: refused(WorkerPoolError::NoHealthyWorker),
                    refused_circuit_open: refused(WorkerPoolError::CircuitOpen),
                    refused_shutting_down: refused(WorkerPoolError::ShuttingDown),
                    refused_no_budget: refused(WorkerPoolError::Timeout),
                    succeeded: metrics::counter!("foreman_requests_succeeded_total"),
                    failed: metrics::counter!("foreman_requests_failed_total"),
                    retried: metrics::counter!("foreman_requests_retried_total"),
                    hedged: metrics::counter!("foreman_requests_hedged_total"),
                    moved: metrics::counter!("foreman_requests_moved_total"),
                    timed_out_queued: timed_out(Phase::Queued),
                    timed_out_running: timed_out(Phase::Running),
                    cancelled: metrics::counter!("foreman_requests_cancelled_total"),
                    aborted_restart: aborted("restart"),
                    aborted_shutdown: aborted("shutdown"),
                    aborted_removed: aborted("worker_removed"),
                    queue_seconds: metrics::histogram!("foreman_request_queue_seconds"),
                    run_seconds: metrics::histogram!("foreman_request_run_seconds"),
                    healthy: state(WorkerHealthStatus::Healthy),
                    degraded: state(WorkerHealthStatus::Degraded),
                    unavailable: state(WorkerHealthStatus::Unavailable),
                },
            }
        }
        #[cfg(not(feature = "metrics"))]
        PoolMeter {}
    }

    /// A request was accepted.
    #[inline]
    pub(crate) fn accepted(&self) {
        #[cfg(feature = "metrics")]
        self.handles.accepted.increment(1);
    }

    /// A request was refused.
    #[inline]
    pub(crate) fn refused(&self, error: &WorkerPoolError) {
        #[cfg(feature = "metrics")]
        {
            let handles = &self.handles;
            let counter = match error {
                WorkerPoolError::InvalidRequest { .. } => &handles.refused_invalid,
                WorkerPoolError::QueueFull => &handles.refused_queue_full,
                WorkerPoolError::CircuitOpen => &handles.refused_circuit_open,
                WorkerPoolError::ShuttingDown => &handles.refused_shutting_down,
                WorkerPoolError::Timeout => &handles.refused_no_budget,
                _ => &handles.refused_no_healthy_worker,
            };
            counter.increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = error;
    }

    /// An accepted request ended, after `queued` waiting and `ran` running.
    #[inline]
    pub(crate) fn ended(&self, ending: Ending, queued: Duration, ran: Option<Duration>) {
        #[cfg(feature = "metrics")]
        {
            let handles = &self.handles;
            let counter = match ending {
                Ending::Succeeded => &handles.succeeded,
                Ending::Failed => &handles.failed,
                Ending::TimedOut(Phase::Queued) => &handles.timed_out_queued,
                Ending::TimedOut(Phase::Running) => &handles.timed_out_running,
                Ending::Cancelled(_) => &handles.cancelled,
                Ending::Restarted => &handles.aborted_restart,
                Ending::ShutDown(_) => &handles.aborted_shutdown,
                Ending::Unroutable => &handles.aborted_removed,
            };
            counter.increment(1);
            handles.queue_seconds.record(queued.as_secs_f64());
            if let Some(ran) = ran {
                handles.run_seconds.record(ran.as_secs_f64());
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (ending, queued, ran);
    }

    /// The counter of retries, for a note to move.
    #[cfg(feature = "metrics")]
    pub(crate) fn retried(&self) -> Counter {
        self.handles.retried.clone()
    }

    /// The counter of hedges, for a note to move.
    #[cfg(feature = "metrics")]
    pub(crate) fn hedged(&self) -> Counter {
        self.handles.hedged.clone()
    }

    /// The counter of requests moved between lanes, for a note to move.
    #[cfg(feature = "metrics")]
    pub(crate) fn moved(&self) -> Counter {
        self.handles.moved.clone()
    }

    /// `count` workers were added (a new worker is Healthy).
    #[inline]
    pub(crate) fn workers_added(&self, count: usize) {
        #[cfg(feature = "metrics")]
        self.handles.healthy.increment(count as f64);
        #[cfg(not(feature = "metrics"))]
        let _ = count;
    }

    /// The gauge of the workers in `status`.
    #[cfg(feature = "metrics")]
    pub(crate) fn workers(&self, status: WorkerHealthStatus) -> Gauge {
        let handles = &self.handles;
        let gauge = match status {
            WorkerHealthStatus::Healthy => &handles.healthy,
            WorkerHealthStatus::Degraded => &handles.degraded,
            WorkerHealthStatus::Unavailable => &handles.unavailable,
        };
        gauge.clone()
    }
}

impl WorkerMeter {
    /// Registers the gauges of the worker named `id` with the recorder in
    /// effect on this thread (the label is allocated here, once).
    pub(crate) fn new(id: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            WorkerMeter {
                queued: metrics::gauge!("foreman_worker_queued", "worker" => id.to_string()),
                in_flight: metrics::gauge!("foreman_worker_in_flight", "worker" => id.to_string()),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = id;
            WorkerMeter {}
        }
    }
}

/// Describes every metric to the recorder (units and help texts).
#[cfg(feature = "metrics")]
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "foreman_requests_accepted_total",
        "Requests accepted (each gets exactly one answer)."
    );
    describe_counter!(
        "foreman_requests_refused_total",
        "Submits refused, by reason."
    );
    describe_counter!(
        "foreman_requests_succeeded_total",
        "Requests answered with their handler's output."
    );
    describe_counter!(
        "foreman_requests_failed_total",
        "Requests answered with their handler's error or panic."
    );
    describe_counter!(
        "foreman_requests_retried_total",
        "Failed attempts that ran again on another worker (RetryPolicy)."
    );
    describe_counter!(
        "foreman_requests_hedged_total",
        "Second attempts of running requests on another worker (HedgePolicy)."
    );
    describe_counter!(
        "foreman_requests_moved_total",
        "Queued requests one lane released and a lane adopted (WorkerPool::with_lanes); each was accepted once, by the lane that released it."
    );
    describe_counter!(
        "foreman_requests_timed_out_total",
        "Requests whose time budget ran out, by phase (queued or running)."
    );
    describe_counter!(
        "foreman_requests_cancelled_total",
        "Requests cancelled by their caller."
    );
    describe_counter!(
        "foreman_requests_aborted_total",
        "Requests aborted by a worker restart, the shutdown's drain deadline, or a worker removal no other worker could take them from."
    );
    describe_histogram!(
        "foreman_request_queue_seconds",
        Unit::Seconds,
        "Time from acceptance to start, or to the answer for a request that never started."
    );
    describe_histogram!(
        "foreman_request_run_seconds",
        Unit::Seconds,
        "Time a started request's handler ran, until its answer or its abort."
    );
    describe_gauge!(
        "foreman_worker_queued",
        "Requests waiting in a worker's queue."
    );
    describe_gauge!("foreman_worker_in_flight", "Requests a worker is running.");
    describe_gauge!("foreman_workers", "Workers by health state.");
}
