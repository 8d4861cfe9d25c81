//! Pool configuration: foreman's tuning around the reference's options
//! (defined in `options.rs`, re-exported here), the validation that turns
//! them into a [`PoolConfig`] the core trusts, and a request's admission.
//!
//! This file holds [`PoolConfig`], its defaults and conversions; its
//! builders, the routing policy, the validation and the admission each
//! have a file beside it.

mod admission;
mod builders;
mod routing;
mod validation;

use std::time::Duration;

#[cfg(doc)]
use crate::deadlines::PhaseLimits;
pub use crate::options::{WorkerPoolOptions, WorkerSecurityPolicy};
pub use crate::recovery::{FailureClasses, OutlierDetection, PanicMode, RecoveryPolicy};
use crate::retries::RetryPolicy;
use crate::validate::DEFAULT_MAX_REQUEST_DEPTH;
pub use admission::Admission;
pub use routing::{
    RoutingPolicy, DEFAULT_DEGRADED_SHARE_PERCENT, DEFAULT_EWMA_DECAY, DEFAULT_UNSAMPLED_LATENCY,
};
pub use validation::ConfigError;

/// Everything the core needs to know, before validation.
///
/// Built from [`WorkerPoolOptions`] with [`PoolConfig::new`] (or
/// [`Default`]); the extra fields have defaults that keep the reference's
/// behaviour and are set with the `with_*` builders, or read and assigned
/// as fields. The struct is `#[non_exhaustive]`, so that foreman can add
/// tuning without breaking its users: outside foreman-core it cannot be
/// built by a struct literal, with or without `..` (use the builders).
///
/// ```compile_fail
/// use foreman_core::PoolConfig;
///
/// let config = PoolConfig {
///     max_concurrency_per_worker: 2,
///     ..PoolConfig::default()
/// };
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolConfig {
    /// The reference-compatible options.
    pub options: WorkerPoolOptions,
    /// How long a health probe may take before it counts as failed.
    /// Defaults to the probe interval, capped at 5 s.
    pub probe_timeout: Duration,
    /// Requests one worker runs at the same time (the reference: 1),
    /// unless it was added with its own limit
    /// ([`WorkerSpec::max_concurrency`](crate::WorkerSpec::max_concurrency)).
    pub max_concurrency_per_worker: u32,
    /// How requests are spread over workers.
    pub routing: RoutingPolicy,
    /// Under every policy but [`RoutingPolicy::RoundRobin`], whether a
    /// queued request may be run by whichever schedulable worker frees first rather than only by
    /// the busy worker it was queued on (the default: no request waits
    /// behind a slow worker while another is free). A request that a
    /// circuit breaker (`allow`) vetoed for some worker always stays on the
    /// worker it was queued on. Turn it off when `allow` must vet the worker
    /// that runs every request.
    pub late_binding: bool,
    /// Unix time in milliseconds of the core's epoch ([`crate::Time::ZERO`]),
    /// used only to report `last_probe_unix_ms`. The core never reads a clock:
    /// drivers that know the wall time set it; `0` reports times since epoch.
    pub unix_epoch_ms: u64,
    /// The deepest nesting of arrays and objects allowed in each JSON value
    /// of a request (`input`, `scoped_input`): `{"a":[1]}` is 2 deep, a
    /// scalar 0 (see [`crate::validate`]). A deeper request is refused with
    /// `InvalidRequest` by the same walk that measures its size, so refusing
    /// one nested a million levels deep costs no more than the limit.
    /// Defaults to [`DEFAULT_MAX_REQUEST_DEPTH`] (128); must be at least 1.
    pub max_request_depth: usize,
    /// The seed of the core's [`Rng`](crate::Rng), the only source of its
    /// random choices: two pools with the same configuration fed the same
    /// inputs at the same instants decide the same. Defaults to `0`.
    pub seed: u64,
    /// Which failed requests run again on another worker, within what
    /// budget ([`RetryPolicy`]); `None` (the default, the reference's
    /// behaviour) answers every failure.
    pub retries: Option<RetryPolicy>,
    /// The per-worker recovery state machine (see [`crate::recovery`]).
    /// Defaults to [`RecoveryPolicy::Reference`], the reference's rule.
    pub recovery: RecoveryPolicy,
    /// The longest a request may wait for a worker when it sets no
    /// queue-wait limit of its own ([`PhaseLimits::queue_wait`]); `None`
    /// (the default) sets none. One that waits longer leaves its queue at
    /// once and is answered `Timeout`, charging no worker. Non-zero.
    pub queue_wait_limit: Option<Duration>,
    /// The longest a request's handler may run when the request sets no
    /// run limit of its own ([`PhaseLimits::run`]); `None` (the default)
    /// sets none. A run that lasts longer is aborted, answered `Timeout`
    /// and counted as a failure of its worker. Non-zero.
    pub run_limit: Option<Duration>,
    /// The time constant of [`RoutingPolicy::PeakEwma`]'s moving average:
    /// a run faster than the estimate pulls it towards itself with weight
    /// `1 - exp(-dt / ewma_decay)`, `dt` the time since the worker's last
    /// sample, and between samples the estimate decays towards zero by
    /// `exp(-dt / ewma_decay)`, so an idle slow worker is tried again in
    /// time. Defaults to [`DEFAULT_EWMA_DECAY`] (10 s); must be non-zero.
    pub ewma_decay: Duration,
    /// The run time [`RoutingPolicy::PeakEwma`] assumes of a worker with no
    /// sample yet (newly added or restarted): high enough that a fresh
    /// worker is not flooded, low enough that it is tried. Defaults to
    /// [`DEFAULT_UNSAMPLED_LATENCY`] (1 s); must be non-zero.
    pub unsampled_latency: Duration,
    /// The share of a Healthy worker's traffic a Degraded one gets under
    /// the load-aware policies ([`RoutingPolicy::LeastLoaded`],
    /// [`RoutingPolicy::PeakEwma`]), in percent: a Degraded worker's cost
    /// (its load plus one, or its latency cost) is multiplied by
    /// `100 / degraded_share_percent` before two candidates are compared,
    /// so at 50 it wins only against a candidate at least twice as loaded,
    /// and at 100 it competes as a Healthy one. The candidates are drawn
    /// among the free workers while any is free, so a Degraded worker that
    /// is the only free one is compared with nothing and takes the request
    /// (no request waits while a worker is free). Defaults to
    /// [`DEFAULT_DEGRADED_SHARE_PERCENT`] (50); must be within 1..=100.
    pub degraded_share_percent: u32,
}

impl PoolConfig {
    /// Wraps reference options with foreman's default tuning.
    ///
    /// The defaults: a probe timeout of the probe interval capped at 5 s,
    /// one request at a time per worker, [`RoutingPolicy::IdleFirst`] with
    /// late binding, epoch 0, a depth limit of
    /// [`DEFAULT_MAX_REQUEST_DEPTH`], seed 0, no queue-wait or run limit,
    /// and for the load-aware policies an EWMA time constant of
    /// [`DEFAULT_EWMA_DECAY`], an unsampled latency of
    /// [`DEFAULT_UNSAMPLED_LATENCY`] and a Degraded share of
    /// [`DEFAULT_DEGRADED_SHARE_PERCENT`] %. Each has a builder:
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use foreman_core::{PoolConfig, RoutingPolicy, WorkerPoolOptions};
    ///
    /// let options = WorkerPoolOptions {
    ///     queue_capacity: 16,
    ///     ..WorkerPoolOptions::default()
    /// };
    /// let config = PoolConfig::new(options)
    ///     .with_probe_timeout(Duration::from_secs(1))
    ///     .with_max_concurrency_per_worker(4)
    ///     .with_routing(RoutingPolicy::RoundRobin)
    ///     .with_late_binding(false)
    ///     .with_unix_epoch_ms(1_700_000_000_000)
    ///     .with_max_request_depth(64)
    ///     .with_seed(42)
    ///     .with_queue_wait_limit(Some(Duration::from_millis(250)))
    ///     .with_run_limit(Some(Duration::from_secs(2)))
    ///     .with_ewma_decay(Duration::from_secs(30))
    ///     .with_unsampled_latency(Duration::from_millis(200))
    ///     .with_degraded_share_percent(25);
    /// assert_eq!(config.options.queue_capacity, 16);
    /// assert_eq!(config.max_concurrency_per_worker, 4);
    /// assert_eq!(config.validate(), Ok(()));
    /// ```
    pub fn new(options: WorkerPoolOptions) -> Self {
        let probe_timeout = options.health_probe_interval.min(Duration::from_secs(5));
        Self {
            options,
            probe_timeout,
            max_concurrency_per_worker: 1,
            routing: RoutingPolicy::default(),
            late_binding: true,
            unix_epoch_ms: 0,
            max_request_depth: DEFAULT_MAX_REQUEST_DEPTH,
            seed: 0,
            retries: None,
            recovery: RecoveryPolicy::default(),
            queue_wait_limit: None,
            run_limit: None,
            ewma_decay: DEFAULT_EWMA_DECAY,
            unsampled_latency: DEFAULT_UNSAMPLED_LATENCY,
            degraded_share_percent: DEFAULT_DEGRADED_SHARE_PERCENT,
        }
    }

    /// Consecutive failures that make a worker unavailable: the options'
    /// `unavailable_after_failures`, where 0 acts as 1 (the reference
    /// treats every failure as reaching a threshold of 0).
    pub fn failure_threshold(&self) -> u32 {
        self.options.unavailable_after_failures.max(1)
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self::new(WorkerPoolOptions::default())
    }
}

impl From<WorkerPoolOptions> for PoolConfig {
    fn from(options: WorkerPoolOptions) -> Self {
        Self::new(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_options_become_a_config_with_foremans_defaults() {
        let options = WorkerPoolOptions {
            queue_capacity: 7,
            health_probe_interval: Duration::from_secs(2),
            ..WorkerPoolOptions::default()
        };
        let config = PoolConfig::from(options.clone());
        assert_eq!(config, PoolConfig::new(options.clone()));
        assert_eq!(config.options, options);
        assert_eq!(config.probe_timeout, Duration::from_secs(2));
    }
}
