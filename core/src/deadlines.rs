//! Deadlines by phase: a request's queue-wait and run limits beside its
//! overall time budget ([`PhaseLimits`]), which of them ended a request
//! that timed out ([`TimeoutLimit`]), and the JSON envelope that carries
//! the limits next to a reference request ([`LimitedRequest`]).
//!
//! The reference's [`WorkerRequest`] has no room for them and keeps exactly
//! its fields: the limits travel beside it, through foreman's own methods
//! ([`Admission::with_limits`](crate::Admission::with_limits),
//! [`Pool::submit_limited`](crate::Pool::submit_limited)) and as pool-wide
//! defaults ([`PoolConfig::queue_wait_limit`](crate::PoolConfig::queue_wait_limit),
//! [`PoolConfig::run_limit`](crate::PoolConfig::run_limit)).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::WorkerRequest;

/// A request's limits on each phase of its life, beside its overall budget
/// (`timeout_ms`, queue wait plus run): how long it may wait for a worker
/// and how long its handler may run. `None` sets no limit on that phase.
///
/// Whichever of the three runs out first ends the request with `Timeout`:
/// a queue-wait limit takes a queued request out of its queue at once,
/// charging no worker; a run limit aborts the handler and counts as a
/// failure of its worker (the limit is the worker's whole allowance for
/// the run). A limit that would run out at or after the overall deadline
/// changes nothing.
///
/// ```
/// use std::time::Duration;
///
/// use foreman_core::PhaseLimits;
///
/// let limits = PhaseLimits::new()
///     .with_queue_wait(Duration::from_millis(250))
///     .with_run(Duration::from_secs(2));
/// assert_eq!(limits.queue_wait, Some(Duration::from_millis(250)));
/// assert_eq!(limits.run, Some(Duration::from_secs(2)));
/// assert!(PhaseLimits::new().is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct PhaseLimits {
    /// The longest the request may wait for a worker (queued, or moving
    /// off a removed worker).
    pub queue_wait: Option<Duration>,
    /// The longest its handler may run.
    pub run: Option<Duration>,
}

impl PhaseLimits {
    /// No limit on either phase.
    pub const fn new() -> Self {
        PhaseLimits {
            queue_wait: None,
            run: None,
        }
    }

    /// Sets [`queue_wait`](Self::queue_wait).
    #[must_use]
    pub const fn with_queue_wait(mut self, queue_wait: Duration) -> Self {
        self.queue_wait = Some(queue_wait);
        self
    }

    /// Sets [`run`](Self::run).
    #[must_use]
    pub const fn with_run(mut self, run: Duration) -> Self {
        self.run = Some(run);
        self
    }

    /// Whether neither phase is limited.
    pub const fn is_none(&self) -> bool {
        self.queue_wait.is_none() && self.run.is_none()
    }

    /// These limits where set, `defaults` for the phases they leave open.
    #[must_use]
    pub fn or(self, defaults: PhaseLimits) -> Self {
        PhaseLimits {
            queue_wait: self.queue_wait.or(defaults.queue_wait),
            run: self.run.or(defaults.run),
        }
    }
}

/// Which limit ended a request that timed out, carried by its
/// [`Answer`](crate::Answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutLimit {
    /// The overall budget (`timeout_ms`, or the pool's default timeout):
    /// queue wait plus run. Also a queued request that a worker reaches
    /// with too little of it left to start.
    Overall,
    /// The queue-wait limit: the request waited too long for a worker.
    QueueWait,
    /// The run limit: its handler ran too long.
    Run,
}

impl TimeoutLimit {
    /// The limit's name in messages and settings: `timeout`,
    /// `queue_wait_limit` or `run_limit`.
    pub const fn name(self) -> &'static str {
        match self {
            TimeoutLimit::Overall => "timeout",
            TimeoutLimit::QueueWait => "queue_wait_limit",
            TimeoutLimit::Run => "run_limit",
        }
    }
}

impl fmt::Display for TimeoutLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A reference [`WorkerRequest`] with foreman's phase limits, as JSON: the
/// request's own fields, flattened, then `queue_wait_ms` and
/// `run_timeout_ms` when set. Without limits it serialises to exactly the
/// reference's JSON for the request, and reference JSON parses as a
/// request without limits.
///
/// ```
/// use foreman_core::{LimitedRequest, WorkerOperation, WorkerRequest};
/// use serde_json::json;
///
/// let json = json!({
///     "request_id": "r", "workflow_name": "w", "node_id": "n", "timeout_ms": 1000,
///     "operation": {"kind": "tool", "tool": "t", "input": null, "scoped_input": null},
///     "queue_wait_ms": 250,
/// });
/// let limited: LimitedRequest = serde_json::from_value(json.clone())?;
/// assert_eq!(limited.queue_wait_ms, Some(250));
/// assert_eq!(limited.run_timeout_ms, None);
/// assert_eq!(serde_json::to_value(&limited)?, json);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LimitedRequest {
    /// The reference's request.
    #[serde(flatten)]
    pub request: WorkerRequest,
    /// The longest the request may wait for a worker, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_wait_ms: Option<u64>,
    /// The longest its handler may run, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_timeout_ms: Option<u64>,
}

impl LimitedRequest {
    /// Wraps `request` with the limits in `limits` (rounded down to whole
    /// milliseconds).
    pub fn new(request: WorkerRequest, limits: PhaseLimits) -> Self {
        let millis = |limit: Duration| u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        LimitedRequest {
            request,
            queue_wait_ms: limits.queue_wait.map(millis),
            run_timeout_ms: limits.run.map(millis),
        }
    }

    /// The limits this envelope carries.
    pub fn limits(&self) -> PhaseLimits {
        PhaseLimits {
            queue_wait: self.queue_wait_ms.map(Duration::from_millis),
            run: self.run_timeout_ms.map(Duration::from_millis),
        }
    }

    /// The request and its limits, apart.
    pub fn into_parts(self) -> (WorkerRequest, PhaseLimits) {
        let limits = self.limits();
        (self.request, limits)
    }
}

impl From<WorkerRequest> for LimitedRequest {
    fn from(request: WorkerRequest) -> Self {
        LimitedRequest::new(request, PhaseLimits::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_limits_win_over_defaults_phase_by_phase() {
        let defaults = PhaseLimits::new()
            .with_queue_wait(Duration::from_millis(1))
            .with_run(Duration::from_millis(2));
        let own = PhaseLimits::new().with_run(Duration::from_millis(9));
        assert_eq!(
            own.or(defaults),
            PhaseLimits::new()
                .with_queue_wait(Duration::from_millis(1))
                .with_run(Duration::from_millis(9))
        );
        assert_eq!(PhaseLimits::new().or(defaults), defaults);
    }

    #[test]
    fn each_limit_has_its_settings_name() {
        assert_eq!(TimeoutLimit::Overall.to_string(), "timeout");
        assert_eq!(TimeoutLimit::QueueWait.to_string(), "queue_wait_limit");
        assert_eq!(TimeoutLimit::Run.to_string(), "run_limit");
    }
}
