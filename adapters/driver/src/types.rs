//! The driver's public value types: build errors, timings, options and
//! health transitions.

use std::num::NonZeroUsize;
use std::time::Duration;

use foreman_core::{
    CommandError, ConfigError, HealthCause, TimeoutLimit, WorkerHealthStatus, WorkerPoolError,
    WorkerResponse,
};
use thiserror::Error;

use crate::worker::ExecutionMode;

/// Why a pool could not be built, from [`WorkerPool::with_config`],
/// [`WorkerPool::with_lanes`] and [`WorkerPool::with_driver_options`]
/// (whose examples show one). [`WorkerPool::new_inprocess`] turns it into
/// the reference's [`WorkerPoolError`]: `NoHealthyWorker` for
/// [`NoWorkers`](Self::NoWorkers), `InvalidRequest` with this message for
/// the others.
///
/// [`WorkerPool::with_config`]: crate::WorkerPool::with_config
/// [`WorkerPool::with_lanes`]: crate::WorkerPool::with_lanes
/// [`WorkerPool::with_driver_options`]: crate::WorkerPool::with_driver_options
/// [`WorkerPool::new_inprocess`]: crate::WorkerPool::new_inprocess
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No handler was given.
    #[error("a worker pool needs at least one worker handler")]
    NoWorkers,
    /// The options make no sense.
    #[error("invalid worker pool options: {0}")]
    Config(#[from] ConfigError),
    /// A worker could not be added.
    #[error("cannot add worker: {0}")]
    Worker(#[from] CommandError),
    /// The pool was built where its runtime cannot spawn tasks (for
    /// foreman-tokio: outside a tokio runtime).
    #[error("the worker pool cannot start: {0}")]
    NoRuntime(String),
    /// Retries were asked of a pool whose handlers run in their callers'
    /// tasks.
    #[error(
        "retries need handlers on the pool's own tasks: use ExecutionMode::PoolTasks (the \
         default) or set PoolConfig::retries to None"
    )]
    RetriesNeedPoolTasks,
    /// Hedging was asked of a pool whose handlers run in their callers'
    /// tasks (a hedge runs while its caller's own attempt does).
    #[error(
        "hedging needs handlers on the pool's own tasks: use ExecutionMode::PoolTasks (the \
         default) or set PoolConfig::hedging to None"
    )]
    HedgingNeedsPoolTasks,
}

impl From<BuildError> for WorkerPoolError {
    fn from(error: BuildError) -> Self {
        match error {
            BuildError::NoWorkers => WorkerPoolError::NoHealthyWorker,
            other => WorkerPoolError::InvalidRequest {
                reason: other.to_string(),
            },
        }
    }
}

/// How long a request waited for a worker and how long its handler ran, as
/// the pool measured them on its runtime's clock.
///
/// A foreman extension: the reference's `WorkerResponse` carries only
/// `elapsed_ms`, their sum. Returned by
/// [`WorkerPool::submit_timed`](crate::WorkerPool::submit_timed), for
/// errors too (a `Timeout` says where the budget went), whose example
/// adds them up to `elapsed_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Timings {
    /// From acceptance until a worker started the request, or until it was
    /// answered if it never started (zero for a refused request).
    pub queued: Duration,
    /// How long its handler ran, if it started (its last attempt, when
    /// it was retried).
    pub ran: Option<Duration>,
    /// How many times its handler was started: 0 if it never started, 1
    /// unless a [`RetryPolicy`](foreman_core::RetryPolicy) ran it again.
    pub attempts: u32,
    /// For a `Timeout`, the limit that fired: the overall budget
    /// (`timeout_ms` or the default timeout), the queue-wait limit or the
    /// run limit (see [`WorkerPool::submit_timed_with`](crate::WorkerPool::submit_timed_with));
    /// `None` for every other answer.
    pub limit: Option<TimeoutLimit>,
}

impl Timings {
    /// For a request that timed out, what happened in words: the limit that
    /// fired and how long the request queued and ran, as in `"timed out:
    /// its run_limit passed after it queued for 12ms and ran for 2s"`;
    /// `None` for any other answer. It is the message of the `Timeout`
    /// error that `on_request_failure` hears (the reference's
    /// `WorkerPoolError::Timeout` carries none).
    pub fn timeout_message(&self) -> Option<String> {
        let limit = self.limit?;
        let ran = match self.ran {
            Some(ran) => format!("ran for {ran:?}"),
            None => "never started".to_owned(),
        };
        Some(format!(
            "timed out: its {limit} passed after it queued for {:?} and {ran}",
            self.queued
        ))
    }
}

/// A request's answer with its [`Timings`], from
/// [`WorkerPool::submit_timed`](crate::WorkerPool::submit_timed).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Timed {
    /// What [`WorkerPool::submit`](crate::WorkerPool::submit) returns.
    pub result: Result<WorkerResponse, WorkerPoolError>,
    /// Where the request's time went.
    pub timings: Timings,
}

impl Timed {
    /// A request answered before it was accepted (zero timings).
    pub(crate) fn refused(error: WorkerPoolError) -> Self {
        Self {
            result: Err(error),
            timings: Timings::default(),
        }
    }
}

/// The driver's own options (foreman additions, beside the core's
/// `PoolConfig`): where handlers run and how many lanes the workers are
/// spread over. Build with `DriverOptions::default()` and the setters,
/// and pass to [`WorkerPool::with_driver_options`](crate::WorkerPool::with_driver_options)
/// (whose example sets [`ExecutionMode::CallerTask`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverOptions {
    /// Where handler futures run (default: [`ExecutionMode::PoolTasks`]).
    pub execution: ExecutionMode,
    /// How many lanes (cores with their own lock) the workers are spread
    /// over (default: one; see [`WorkerPool::with_lanes`](crate::WorkerPool::with_lanes)).
    pub lanes: NonZeroUsize,
    /// What the pool's hooks are, if it is given any (default:
    /// [`HookRole::CircuitBreaker`]).
    pub hooks: HookRole,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            execution: ExecutionMode::default(),
            lanes: NonZeroUsize::MIN,
            hooks: HookRole::default(),
        }
    }
}

/// What a pool's [`CircuitBreakerHooks`](crate::CircuitBreakerHooks) are:
/// a circuit breaker whose `allow_request` vets workers, or observers that
/// only hear what happened. Rust cannot tell whether an implementation
/// overrides `allow_request`, so hooks that only observe are declared so,
/// with [`WorkerPool::new_inprocess_observed`](crate::WorkerPool::new_inprocess_observed)
/// or [`DriverOptions::hooks`].
///
/// Which requests are pinned (run only on the worker that took them,
/// never moved by late binding): with [`CircuitBreaker`](Self::CircuitBreaker)
/// hooks given to `new_inprocess` (or `from_settings`), every request,
/// since those turn `PoolConfig::late_binding` off
/// (`PoolConfig::vetted_by_breaker`); with any hooks, a request that
/// `allow_request` refused for some worker; without hooks, or with
/// [`ObserveOnly`](Self::ObserveOnly) hooks, none unless
/// `PoolConfig::late_binding` is off or the routing is round robin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HookRole {
    /// The reference's hooks: `allow_request` is asked about each
    /// candidate worker in turn (with no lock held) until one allows, and
    /// `on_request_accepted` names the worker that runs the request when
    /// late binding is off, as `new_inprocess` sets it.
    #[default]
    CircuitBreaker,
    /// Hooks that only observe: `allow_request` is never asked (a request
    /// goes where the pool routes it), late binding stays as configured,
    /// and every other hook fires as for a breaker.
    /// `on_request_accepted` names the worker the request was queued on;
    /// with late binding another worker that frees first may run it, and
    /// `on_request_success` or `on_request_failure` name the worker that
    /// answered.
    ObserveOnly,
}

impl DriverOptions {
    /// Sets where handler futures run.
    #[must_use]
    pub fn execution(mut self, execution: ExecutionMode) -> Self {
        self.execution = execution;
        self
    }

    /// Sets how many lanes the workers are spread over.
    #[must_use]
    pub fn lanes(mut self, lanes: NonZeroUsize) -> Self {
        self.lanes = lanes;
        self
    }

    /// Sets what the pool's hooks are (see [`HookRole`]).
    #[must_use]
    pub fn hooks(mut self, hooks: HookRole) -> Self {
        self.hooks = hooks;
        self
    }
}

/// One health status change of a worker, as the core reported it; listed
/// by [`WorkerPool::health_history`](crate::WorkerPool::health_history)
/// (whose example reads one).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthTransition {
    /// The worker.
    pub worker_id: String,
    /// Its status before.
    pub from: WorkerHealthStatus,
    /// Its status after.
    pub to: WorkerHealthStatus,
    /// What caused it.
    pub cause: HealthCause,
    /// When, since the pool was created.
    pub at: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_message_names_the_limit_and_the_timings() {
        let run = Timings {
            queued: Duration::from_millis(12),
            ran: Some(Duration::from_secs(2)),
            attempts: 1,
            limit: Some(TimeoutLimit::Run),
        };
        assert_eq!(
            run.timeout_message().as_deref(),
            Some("timed out: its run_limit passed after it queued for 12ms and ran for 2s")
        );
        let queued = Timings {
            queued: Duration::from_millis(250),
            ran: None,
            attempts: 0,
            limit: Some(TimeoutLimit::QueueWait),
        };
        assert_eq!(
            queued.timeout_message().as_deref(),
            Some("timed out: its queue_wait_limit passed after it queued for 250ms and never started")
        );
        assert_eq!(Timings::default().timeout_message(), None);
    }
}
