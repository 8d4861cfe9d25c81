//! Pool configuration: foreman's tuning around the reference's options
//! (defined in `options.rs`, re-exported here), the validation that turns
//! them into a [`PoolConfig`] the core trusts, and a request's admission.

use std::time::Duration;

use thiserror::Error;

use crate::deadlines::PhaseLimits;
pub use crate::options::{WorkerPoolOptions, WorkerSecurityPolicy};
use crate::protocol::WorkerRequest;
pub use crate::recovery::{FailureClasses, OutlierDetection, PanicMode, RecoveryPolicy};
use crate::retries::RetryPolicy;
use crate::validate::{check_request, RequestError, RequestLimits, DEFAULT_MAX_REQUEST_DEPTH};

/// How new requests are spread over workers.
///
/// | policy | rule | cost per pick |
/// |---|---|---|
/// | `RoundRobin` | workers in turn | O(log n) |
/// | `IdleFirst` | free workers in turn (Healthy first), else workers with room in turn | O(log n) |
/// | `LeastLoaded` | the less loaded of two random workers | O(log n) |
/// | `PeakEwma` | the cheaper of two random workers by latency × load, and a free slow worker may leave waiting requests to a faster busy one | O(log n) |
///
/// **Pinned requests.** Under every policy but `RoundRobin` (which never
/// moves a request), a queued request may run on whichever worker frees up
/// first ([`PoolConfig::late_binding`]) unless it is pinned to the worker
/// it was queued on: when late binding is off (so in a pool whose circuit
/// breaker vets every worker, see [`PoolConfig::vetted_by_breaker`]), or
/// when a circuit breaker vetoed some worker for it. A pinned request is
/// never left to another worker by `PeakEwma`'s deferral either.
///
/// **Which default.** [`IdleFirst`](Self::IdleFirst) stays the default: it
/// never leaves a worker idle while a request waits and needs no tuning.
/// The load-aware policies are there to be measured against it on the
/// simulator's named scenarios (workers whose latencies spread from 1 ms
/// to 1 s, heavy-tailed latencies with one worker slowing down); the
/// default changes only if those measurements say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RoutingPolicy {
    /// The reference's rule: take workers in turn, skip unavailable ones and
    /// fall through to the next when a queue is full. A request can wait
    /// behind a busy worker while another sits idle.
    RoundRobin,
    /// Round robin over workers with a free run slot, Healthy ones before
    /// Degraded ones; only when every schedulable worker is busy, round
    /// robin over those with queue room (the default: no request queues
    /// while a worker is idle). With [`PoolConfig::late_binding`], a queued
    /// request then runs on the first schedulable worker to free up, in the
    /// order requests arrived.
    #[default]
    IdleFirst,
    /// Power of two choices on load: two distinct workers are drawn at
    /// random from the core's [`Rng`](crate::Rng) among the idle ones (a
    /// free run slot) if any, else among those with queue room, and the one
    /// with fewer requests (running plus queued) wins; a tie goes to the
    /// Healthy one, then to the first drawn. A Degraded worker's load
    /// is raised by [`PoolConfig::degraded_share_percent`] (see there). Late binding applies as under `IdleFirst`.
    LeastLoaded,
    /// Power of two choices on expected latency, as tower's and Finagle's
    /// peak-EWMA balancers: each worker keeps a moving average of its run
    /// times that jumps at once to a slower run and decays towards faster
    /// ones with the time constant [`PoolConfig::ewma_decay`]; its cost is
    /// that estimate times (running + queued + 1), a worker with no sample
    /// yet costing [`PoolConfig::unsampled_latency`]. Candidates are drawn
    /// as under `LeastLoaded`, the cheaper wins (ties as there), and a
    /// Degraded worker's cost is raised by
    /// [`PoolConfig::degraded_share_percent`]. Late binding applies as
    /// under `IdleFirst`.
    PeakEwma,
}

impl RoutingPolicy {
    /// Every policy, in declaration order (for tests and simulators that
    /// draw one).
    pub const ALL: [RoutingPolicy; 4] = [
        RoutingPolicy::RoundRobin,
        RoutingPolicy::IdleFirst,
        RoutingPolicy::LeastLoaded,
        RoutingPolicy::PeakEwma,
    ];

    /// Whether the policy draws two candidates and compares their load
    /// (`LeastLoaded`, `PeakEwma`).
    pub fn is_load_aware(self) -> bool {
        matches!(self, RoutingPolicy::LeastLoaded | RoutingPolicy::PeakEwma)
    }
}

/// The default [`PoolConfig::ewma_decay`]: 10 s, Finagle's.
pub const DEFAULT_EWMA_DECAY: Duration = Duration::from_secs(10);

/// The default [`PoolConfig::unsampled_latency`]: 1 s, tower's usual
/// starting estimate.
pub const DEFAULT_UNSAMPLED_LATENCY: Duration = Duration::from_secs(1);

/// The default [`PoolConfig::degraded_share_percent`]: 50.
pub const DEFAULT_DEGRADED_SHARE_PERCENT: u32 = 50;

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
    /// Requests one worker runs at the same time (the reference: 1).
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

    /// Sets [`probe_timeout`](Self::probe_timeout): how long a health
    /// probe may take before it counts as failed (non-zero).
    #[must_use]
    pub fn with_probe_timeout(mut self, probe_timeout: Duration) -> Self {
        self.probe_timeout = probe_timeout;
        self
    }

    /// Sets [`max_concurrency_per_worker`](Self::max_concurrency_per_worker):
    /// how many requests one worker runs at the same time (at least 1).
    #[must_use]
    pub fn with_max_concurrency_per_worker(mut self, max_concurrency_per_worker: u32) -> Self {
        self.max_concurrency_per_worker = max_concurrency_per_worker;
        self
    }

    /// Sets [`routing`](Self::routing): how requests are spread over
    /// workers.
    #[must_use]
    pub fn with_routing(mut self, routing: RoutingPolicy) -> Self {
        self.routing = routing;
        self
    }

    /// Sets [`late_binding`](Self::late_binding): whether a queued request
    /// may run on whichever schedulable worker frees up first.
    #[must_use]
    pub fn with_late_binding(mut self, late_binding: bool) -> Self {
        self.late_binding = late_binding;
        self
    }

    /// Sets [`unix_epoch_ms`](Self::unix_epoch_ms): the Unix time in
    /// milliseconds of the core's epoch, used only to report
    /// `last_probe_unix_ms`.
    #[must_use]
    pub fn with_unix_epoch_ms(mut self, unix_epoch_ms: u64) -> Self {
        self.unix_epoch_ms = unix_epoch_ms;
        self
    }

    /// Sets [`max_request_depth`](Self::max_request_depth): the deepest
    /// nesting of arrays and objects allowed in a request's JSON values (at
    /// least 1).
    #[must_use]
    pub fn with_max_request_depth(mut self, max_request_depth: usize) -> Self {
        self.max_request_depth = max_request_depth;
        self
    }

    /// Sets [`seed`](Self::seed): the seed of the core's random choices.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets [`retries`](Self::retries): which failed requests run again,
    /// within what budget (`None`: none).
    #[must_use]
    pub fn with_retries(mut self, retries: Option<RetryPolicy>) -> Self {
        self.retries = retries;
        self
    }

    /// Sets [`recovery`](Self::recovery): the per-worker recovery state
    /// machine.
    #[must_use]
    pub fn with_recovery(mut self, recovery: RecoveryPolicy) -> Self {
        self.recovery = recovery;
        self
    }

    /// Sets [`queue_wait_limit`](Self::queue_wait_limit): the pool-wide
    /// default of how long a request may wait for a worker (`None`: no
    /// limit).
    #[must_use]
    pub fn with_queue_wait_limit(mut self, queue_wait_limit: Option<Duration>) -> Self {
        self.queue_wait_limit = queue_wait_limit;
        self
    }

    /// Sets [`run_limit`](Self::run_limit): the pool-wide default of how
    /// long a request's handler may run (`None`: no limit).
    #[must_use]
    pub fn with_run_limit(mut self, run_limit: Option<Duration>) -> Self {
        self.run_limit = run_limit;
        self
    }

    /// The pool-wide phase limits: [`queue_wait_limit`](Self::queue_wait_limit)
    /// and [`run_limit`](Self::run_limit).
    pub fn phase_limits(&self) -> PhaseLimits {
        PhaseLimits {
            queue_wait: self.queue_wait_limit,
            run: self.run_limit,
        }
    }

    /// Sets [`ewma_decay`](Self::ewma_decay): the time constant of the
    /// peak-EWMA latency estimate (non-zero).
    #[must_use]
    pub fn with_ewma_decay(mut self, ewma_decay: Duration) -> Self {
        self.ewma_decay = ewma_decay;
        self
    }

    /// Sets [`unsampled_latency`](Self::unsampled_latency): the run time
    /// assumed of a worker with no sample yet (non-zero).
    #[must_use]
    pub fn with_unsampled_latency(mut self, unsampled_latency: Duration) -> Self {
        self.unsampled_latency = unsampled_latency;
        self
    }

    /// Sets [`degraded_share_percent`](Self::degraded_share_percent): the
    /// share of traffic a Degraded worker gets under the load-aware
    /// policies (1..=100).
    #[must_use]
    pub fn with_degraded_share_percent(mut self, degraded_share_percent: u32) -> Self {
        self.degraded_share_percent = degraded_share_percent;
        self
    }

    /// This configuration for a pool whose circuit breaker (the `allow` of
    /// every submit) vets workers, if `vetted`: late binding is then off,
    /// so the worker `allow` approved is the one that runs each request.
    #[must_use]
    pub fn vetted_by_breaker(mut self, vetted: bool) -> Self {
        self.late_binding = self.late_binding && !vetted;
        self
    }

    /// Checks every value and explains the first one the pool cannot run
    /// with.
    ///
    /// Every configuration the reference builds and runs is accepted with
    /// the reference's behaviour: zero security-policy limits refuse the
    /// requests they exclude, a default timeout above
    /// `max_request_timeout_ms` applies to requests that set no
    /// `timeout_ms` (the maximum bounds only what a request asks for), a
    /// zero default timeout times those requests out at once, and
    /// `unavailable_after_failures = 0` acts as 1. Only values the
    /// reference cannot run (it panics on a zero queue capacity or probe
    /// interval) and foreman's own tuning are refused.
    ///
    /// # Errors
    /// Returns a [`ConfigError`] naming the offending field and the allowed
    /// range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let options = &self.options;
        if options.queue_capacity == 0 {
            return Err(ConfigError::ZeroQueueCapacity);
        }
        if options.health_probe_interval.is_zero() {
            return Err(ConfigError::ZeroProbeInterval);
        }
        if self.probe_timeout.is_zero() {
            return Err(ConfigError::ZeroProbeTimeout);
        }
        if self.max_concurrency_per_worker == 0 {
            return Err(ConfigError::ZeroConcurrency);
        }
        if self.max_request_depth == 0 {
            return Err(ConfigError::ZeroRequestDepth);
        }
        if let Some(retries) = &self.retries {
            if retries.max_attempts == 0 {
                return Err(ConfigError::ZeroRetryAttempts);
            }
            if retries.budget.window < Duration::from_millis(1) {
                return Err(ConfigError::RetryWindowTooShort);
            }
        }
        if let RecoveryPolicy::OutlierDetection(tuning) = &self.recovery {
            validate_outlier_detection(tuning)?;
        }
        if self.queue_wait_limit == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroQueueWaitLimit);
        }
        if self.run_limit == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroRunLimit);
        }
        if self.ewma_decay.is_zero() {
            return Err(ConfigError::ZeroEwmaDecay);
        }
        if self.unsampled_latency.is_zero() {
            return Err(ConfigError::ZeroUnsampledLatency);
        }
        if !(1..=100).contains(&self.degraded_share_percent) {
            return Err(ConfigError::DegradedShareOutOfRange(
                self.degraded_share_percent,
            ));
        }
        Ok(())
    }

    /// Consecutive failures that make a worker unavailable: the options'
    /// `unavailable_after_failures`, where 0 acts as 1 (the reference
    /// treats every failure as reaching a threshold of 0).
    pub fn failure_threshold(&self) -> u32 {
        self.options.unavailable_after_failures.max(1)
    }
}

/// Checks the outlier-detection tuning, naming the first field out of range.
fn validate_outlier_detection(tuning: &OutlierDetection) -> Result<(), ConfigError> {
    let invalid = |field: &'static str, allowed: &'static str| {
        Err(ConfigError::InvalidRecovery { field, allowed })
    };
    if tuning.consecutive_failures == 0 {
        return invalid("consecutive_failures", "at least 1");
    }
    if !(1..=64).contains(&tuning.window) {
        return invalid("window", "1 to 64 outcomes");
    }
    if tuning.min_volume == 0 || tuning.min_volume > tuning.window {
        return invalid("min_volume", "1 to window");
    }
    if !(1..=100).contains(&tuning.failure_rate_percent) {
        return invalid("failure_rate_percent", "1 to 100");
    }
    if tuning.base_ejection.is_zero() {
        return invalid("base_ejection", "greater than zero");
    }
    if tuning.max_ejection < tuning.base_ejection {
        return invalid("max_ejection", "at least base_ejection");
    }
    if tuning.jitter_permille > 1000 {
        return invalid("jitter_permille", "0 to 1000");
    }
    if tuning.decay_after.is_zero() {
        return invalid("decay_after", "greater than zero");
    }
    if tuning.trial_permits == 0 {
        return invalid("trial_permits", "at least 1");
    }
    if tuning.success_threshold == 0 {
        return invalid("success_threshold", "at least 1");
    }
    if tuning.max_ejected_percent > 100 {
        return invalid("max_ejected_percent", "0 to 100");
    }
    Ok(())
}

/// A request that passed the security policy, with its time budget resolved;
/// made by [`PoolConfig::admit`] and consumed by
/// [`crate::Pool::submit_checked`].
///
/// Validation needs only the configuration, so a driver can run it before it
/// takes the lock around its pool and keep the critical section short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    timeout: Option<Duration>,
    retry: bool,
    limits: PhaseLimits,
}

impl Admission {
    /// The request's time budget (queue wait plus run): its own
    /// `timeout_ms`, or the pool's default; `None` means no deadline.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Whether the pool's [`RetryPolicy`] covers the request's operation
    /// kind (a retryable failure may then run it again).
    pub fn retry(&self) -> bool {
        self.retry
    }

    /// The request's phase limits: its own where it set them, the pool's
    /// defaults ([`PoolConfig::phase_limits`]) for the others.
    pub fn limits(&self) -> PhaseLimits {
        self.limits
    }

    /// This admission with the request's own phase limits: each one set
    /// in `limits` replaces the pool's default for that phase.
    #[must_use]
    pub fn with_limits(mut self, limits: PhaseLimits) -> Self {
        self.limits = limits.or(self.limits);
        self
    }
}

impl PoolConfig {
    /// The drain deadline of a graceful shutdown whose caller gives none:
    /// the longest budget a request can have (the policy's maximum or the
    /// default timeout, whichever is longer). By then every request that has
    /// a budget would have timed out anyway; only requests without one (when
    /// `default_request_timeout` is `None`) are cut off.
    pub fn default_drain(&self) -> Duration {
        let longest_asked =
            Duration::from_millis(self.options.security_policy.max_request_timeout_ms);
        self.options
            .default_request_timeout
            .map_or(longest_asked, |default| default.max(longest_asked))
    }

    /// What requests are checked against: the security policy and
    /// [`max_request_depth`](Self::max_request_depth).
    pub fn request_limits(&self) -> RequestLimits<'_> {
        RequestLimits {
            policy: &self.options.security_policy,
            max_depth: self.max_request_depth,
        }
    }

    /// Checks a request against this configuration's
    /// [`request_limits`](Self::request_limits) and resolves its time
    /// budget.
    ///
    /// # Errors
    /// The [`RequestError`] of the first check that fails (see
    /// [`validate_request`](crate::validate_request)).
    pub fn admit(&self, request: &WorkerRequest) -> Result<Admission, RequestError> {
        check_request(request, self.request_limits())?;
        let timeout = match request.timeout_ms {
            Some(ms) => Some(Duration::from_millis(ms)),
            None => self.options.default_request_timeout,
        };
        let retry = self
            .retries
            .is_some_and(|policy| policy.covers(&request.operation));
        Ok(Admission {
            timeout,
            retry,
            limits: self.phase_limits(),
        })
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

/// A configuration value that makes no sense, named so a user can fix it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `queue_capacity` was zero.
    #[error(
        "queue_capacity must be at least 1 (it is the number of requests that may wait per worker)"
    )]
    ZeroQueueCapacity,
    /// `health_probe_interval` was zero.
    #[error("health_probe_interval must be greater than zero")]
    ZeroProbeInterval,
    /// `probe_timeout` was zero.
    #[error("probe_timeout must be greater than zero")]
    ZeroProbeTimeout,
    /// `max_concurrency_per_worker` was zero.
    #[error("max_concurrency_per_worker must be at least 1")]
    ZeroConcurrency,
    /// `max_request_depth` was zero.
    #[error(
        "max_request_depth must be at least 1 (the depth of [] or {{}}): \
         0 would refuse every request whose input or scoped_input is an array or object"
    )]
    ZeroRequestDepth,
    /// A retry policy allows no attempt at all.
    #[error(
        "retries.max_attempts must be at least 1 (the first attempt; 2 or more retry): \
         0 would never run a request"
    )]
    ZeroRetryAttempts,
    /// A retry budget's window is under a millisecond.
    #[error(
        "retries.budget.window must be at least 1ms: the budget counts requests and retries \
         over that window"
    )]
    RetryWindowTooShort,
    /// A field of the outlier-detection recovery policy
    /// ([`OutlierDetection`]) is out of range.
    #[error("recovery.outlier_detection.{field} must be {allowed}")]
    InvalidRecovery {
        /// The field's name.
        field: &'static str,
        /// The values it may take.
        allowed: &'static str,
    },
    /// `queue_wait_limit` was zero.
    #[error(
        "queue_wait_limit must be greater than zero \
         (leave it unset, or false in a settings file, for no limit)"
    )]
    ZeroQueueWaitLimit,
    /// `run_limit` was zero.
    #[error(
        "run_limit must be greater than zero \
         (leave it unset, or false in a settings file, for no limit)"
    )]
    ZeroRunLimit,
    /// `ewma_decay` was zero.
    #[error(
        "ewma_decay must be greater than zero (it is the time constant of the latency estimate)"
    )]
    ZeroEwmaDecay,
    /// `unsampled_latency` was zero.
    #[error(
        "unsampled_latency must be greater than zero \
         (zero would make every new worker look free and flood it)"
    )]
    ZeroUnsampledLatency,
    /// `degraded_share_percent` was outside 1..=100.
    #[error("degraded_share_percent must be within 1..=100 (it was {0})")]
    DegradedShareOutOfRange(u32),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::test_requests::{exact_len, nested, tool, value_fields};
    use crate::validate::validate_request;

    #[test]
    fn a_circuit_breaker_turns_late_binding_off_and_nothing_else() {
        for late_binding in [false, true] {
            let config = PoolConfig {
                late_binding,
                ..PoolConfig::default()
            };
            assert_eq!(config.clone().vetted_by_breaker(false), config);
            assert_eq!(
                config.clone().vetted_by_breaker(true),
                PoolConfig {
                    late_binding: false,
                    ..config
                }
            );
        }
        let tuned = PoolConfig {
            max_concurrency_per_worker: 3,
            ..PoolConfig::new(WorkerPoolOptions {
                queue_capacity: 7,
                ..WorkerPoolOptions::default()
            })
        };
        let vetted = tuned.clone().vetted_by_breaker(true);
        assert_eq!(
            (vetted.options, vetted.max_concurrency_per_worker),
            (tuned.options, 3)
        );
    }

    /// A configuration whose every field differs from the default, so that
    /// a builder that set another field, or returned the default, shows.
    fn tuned() -> PoolConfig {
        let mut config = PoolConfig::new(WorkerPoolOptions {
            queue_capacity: 7,
            ..WorkerPoolOptions::default()
        });
        config.probe_timeout = Duration::from_millis(1_500);
        config.max_concurrency_per_worker = 3;
        config.routing = RoutingPolicy::RoundRobin;
        config.late_binding = false;
        config.unix_epoch_ms = 42;
        config.max_request_depth = 9;
        config.queue_wait_limit = Some(Duration::from_millis(11));
        config.run_limit = Some(Duration::from_millis(13));
        config.seed = 3;
        config.ewma_decay = Duration::from_secs(3);
        config.unsampled_latency = Duration::from_millis(70);
        config.degraded_share_percent = 20;
        config
    }

    #[test]
    fn each_builder_sets_its_own_field_and_no_other() {
        let base = tuned();
        assert_ne!(base, PoolConfig::default());
        let mut expected = base.clone();
        expected.probe_timeout = Duration::from_millis(250);
        let built = base.clone().with_probe_timeout(Duration::from_millis(250));
        assert_eq!(built, expected);

        let mut expected = base.clone();
        expected.max_concurrency_per_worker = 5;
        assert_eq!(base.clone().with_max_concurrency_per_worker(5), expected);

        let mut expected = base.clone();
        expected.routing = RoutingPolicy::IdleFirst;
        assert_eq!(
            base.clone().with_routing(RoutingPolicy::IdleFirst),
            expected
        );

        let mut expected = base.clone();
        expected.late_binding = true;
        assert_eq!(base.clone().with_late_binding(true), expected);

        let mut expected = base.clone();
        expected.unix_epoch_ms = 1_700_000_000_000;
        assert_eq!(base.clone().with_unix_epoch_ms(1_700_000_000_000), expected);

        let mut expected = base.clone();
        expected.max_request_depth = 300;
        assert_eq!(base.clone().with_max_request_depth(300), expected);
        let mut expected = base.clone();
        expected.queue_wait_limit = None;
        assert_eq!(base.clone().with_queue_wait_limit(None), expected);
        let mut expected = base.clone();
        expected.run_limit = Some(Duration::from_secs(3));
        assert_eq!(
            base.clone().with_run_limit(Some(Duration::from_secs(3))),
            expected
        );

        let mut expected = base.clone();
        expected.ewma_decay = Duration::from_secs(30);
        assert_eq!(
            base.clone().with_ewma_decay(Duration::from_secs(30)),
            expected
        );

        let mut expected = base.clone();
        expected.unsampled_latency = Duration::from_millis(5);
        assert_eq!(
            base.clone()
                .with_unsampled_latency(Duration::from_millis(5)),
            expected
        );

        let mut expected = base.clone();
        expected.degraded_share_percent = 100;
        assert_eq!(base.clone().with_degraded_share_percent(100), expected);
    }

    #[test]
    fn validate_names_each_routing_option_out_of_range() {
        let zero_decay = PoolConfig::default().with_ewma_decay(Duration::ZERO);
        assert_eq!(zero_decay.validate(), Err(ConfigError::ZeroEwmaDecay));
        let zero_penalty = PoolConfig::default().with_unsampled_latency(Duration::ZERO);
        assert_eq!(
            zero_penalty.validate(),
            Err(ConfigError::ZeroUnsampledLatency)
        );
        for share in [0, 101] {
            let err = PoolConfig::default()
                .with_degraded_share_percent(share)
                .validate()
                .unwrap_err();
            assert_eq!(err, ConfigError::DegradedShareOutOfRange(share));
            assert!(err.to_string().contains("degraded_share_percent"));
        }
        for share in [1, 100] {
            let config = PoolConfig::default().with_degraded_share_percent(share);
            assert_eq!(config.validate(), Ok(()));
        }
        let defaults = PoolConfig::default();
        assert_eq!(defaults.routing, RoutingPolicy::IdleFirst);
        assert_eq!(
            (
                defaults.ewma_decay,
                defaults.unsampled_latency,
                defaults.degraded_share_percent
            ),
            (Duration::from_secs(10), Duration::from_secs(1), 50)
        );
    }

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

    #[test]
    fn pool_config_refuses_a_zero_depth_limit() {
        let config = PoolConfig {
            max_request_depth: 0,
            ..PoolConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err, ConfigError::ZeroRequestDepth);
        assert_eq!(
            err.to_string(),
            "max_request_depth must be at least 1 (the depth of [] or {}): \
             0 would refuse every request whose input or scoped_input is an array or object"
        );
        let config = PoolConfig {
            max_request_depth: 1,
            ..PoolConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(PoolConfig::default().max_request_depth, 128);
    }

    #[test]
    fn pool_config_refuses_zero_phase_limits_and_names_the_field() {
        let zero = Some(Duration::ZERO);
        let err = PoolConfig::default()
            .with_queue_wait_limit(zero)
            .validate()
            .unwrap_err();
        assert_eq!(err, ConfigError::ZeroQueueWaitLimit);
        assert!(err.to_string().starts_with("queue_wait_limit "), "{err}");
        let err = PoolConfig::default()
            .with_run_limit(zero)
            .validate()
            .unwrap_err();
        assert_eq!(err, ConfigError::ZeroRunLimit);
        assert!(err.to_string().starts_with("run_limit "), "{err}");
        let limited = PoolConfig::default()
            .with_queue_wait_limit(Some(Duration::from_nanos(1)))
            .with_run_limit(Some(Duration::from_nanos(1)));
        assert_eq!(limited.validate(), Ok(()));
        let defaults = PoolConfig::default();
        assert_eq!(
            (defaults.queue_wait_limit, defaults.run_limit),
            (None, None)
        );
    }

    #[test]
    fn an_admission_takes_the_pool_limits_unless_the_request_sets_its_own() {
        let config = PoolConfig::default()
            .with_queue_wait_limit(Some(Duration::from_millis(5)))
            .with_run_limit(Some(Duration::from_millis(7)));
        let admission = config.admit(&tool(serde_json::json!({}))).unwrap();
        assert_eq!(admission.limits(), config.phase_limits());
        let own = admission.with_limits(PhaseLimits::new().with_run(Duration::from_millis(1)));
        assert_eq!(
            own.limits(),
            PhaseLimits::new()
                .with_queue_wait(Duration::from_millis(5))
                .with_run(Duration::from_millis(1))
        );
    }

    #[test]
    fn pool_config_admits_with_its_own_depth_limit() {
        let request = tool(nested(300, false));
        assert!(PoolConfig::default().admit(&request).is_err());
        let config = PoolConfig {
            max_request_depth: 300,
            ..PoolConfig::default()
        };
        assert!(config.admit(&request).is_ok());
        assert_eq!(
            validate_request(&request, config.request_limits()),
            Ok(exact_len(&request))
        );
        let config = PoolConfig {
            max_request_depth: 299,
            ..config
        };
        assert_eq!(
            config.admit(&request).map(|_| ()),
            Err(RequestError::NestedTooDeep {
                field: "operation.input",
                max: 299
            })
        );
    }

    #[test]
    fn admit_refuses_values_nested_past_the_default_depth_limit() {
        for (field, build) in value_fields() {
            for objects in [false, true] {
                for depth in [127, 128, 129] {
                    let request = build(nested(depth, objects));
                    let expected = if depth <= 128 {
                        Ok(())
                    } else {
                        Err(RequestError::NestedTooDeep { field, max: 128 })
                    };
                    assert_eq!(
                        PoolConfig::default().admit(&request).map(|_| ()),
                        expected,
                        "{field}, {depth} levels, objects: {objects}"
                    );
                }
            }
        }
    }
}
