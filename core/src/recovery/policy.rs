//! The recovery options: which state machine a pool runs for every worker
//! ([`RecoveryPolicy`]), the outlier-detection machine's tuning
//! ([`OutlierDetection`]), what it does when its ejection cap is reached
//! ([`PanicMode`]) and which handler errors count against a worker
//! ([`FailureClasses`]).

use std::time::Duration;

use crate::protocol::WorkerErrorCode;

/// Which recovery state machine every worker of a pool runs (see
/// [`crate::recovery`] for the rules of each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RecoveryPolicy {
    /// The reference's rule: a consecutive-failure counter and probe votes,
    /// one trial per Healthy probe once the threshold is reached (the
    /// default).
    #[default]
    Reference,
    /// Outlier detection: ejection on consecutive failures or a failure
    /// rate, a jittered exponential ejection time, half-open trials and a
    /// cap on the share of the pool ejected at once.
    OutlierDetection(OutlierDetection),
}

impl RecoveryPolicy {
    /// The reference's rule, exactly: [`RecoveryPolicy::Reference`].
    pub const fn reference() -> Self {
        RecoveryPolicy::Reference
    }

    /// Outlier detection with [`OutlierDetection::default`]'s tuning.
    pub const fn outlier_detection() -> Self {
        RecoveryPolicy::OutlierDetection(OutlierDetection::DEFAULT)
    }
}

/// What a pool does when an ejection would take more than
/// [`OutlierDetection::max_ejected_percent`] of its workers out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PanicMode {
    /// The cap holds: the worker is not ejected and stays in rotation
    /// (Degraded, [`RecoveryState::Held`](crate::RecoveryState::Held)) as
    /// a last resort: it gets requests only when no other schedulable
    /// worker has room, and takes none from the late-binding backlog, so
    /// no request is refused for want of a worker while one is in
    /// rotation, and a worker that fails fast does not draw the traffic
    /// by being free most often (the default).
    #[default]
    RouteToAll,
    /// The worker is ejected beyond the cap; once no worker is left in
    /// rotation, submits are refused at once with `NoHealthyWorker`
    /// (retryable) instead of failing on a worker. Every ejection still
    /// expires, so the pool returns to service by itself.
    FailFast,
}

/// Which handler errors count against a worker under outlier detection,
/// by [`WorkerErrorCode`]. `InvalidRequest` and `Cancelled` never count,
/// whatever the set holds (a refused or abandoned request says nothing
/// about its worker); a timeout while running counts under `Timeout`
/// (and only when its worker had at least half of the budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FailureClasses(u8);

impl FailureClasses {
    /// No error counts.
    pub const NONE: FailureClasses = FailureClasses(0);

    /// The default: `ExecutionFailed`, `Unavailable` and `Timeout`.
    pub const DEFAULT: FailureClasses = FailureClasses(0)
        .with(WorkerErrorCode::ExecutionFailed)
        .with(WorkerErrorCode::Unavailable)
        .with(WorkerErrorCode::Timeout);

    const fn bit(code: WorkerErrorCode) -> u8 {
        match code {
            WorkerErrorCode::QueueFull => 1,
            WorkerErrorCode::Unavailable => 1 << 1,
            WorkerErrorCode::Timeout => 1 << 2,
            WorkerErrorCode::ExecutionFailed => 1 << 3,
            WorkerErrorCode::CircuitOpen => 1 << 4,
            // Never counted: no bit.
            WorkerErrorCode::Cancelled | WorkerErrorCode::InvalidRequest => 0,
        }
    }

    /// This set with `code` added (a no-op for the codes that never count).
    #[must_use]
    pub const fn with(self, code: WorkerErrorCode) -> Self {
        FailureClasses(self.0 | Self::bit(code))
    }

    /// This set without `code`.
    #[must_use]
    pub const fn without(self, code: WorkerErrorCode) -> Self {
        FailureClasses(self.0 & !Self::bit(code))
    }

    /// Whether an error with `code` counts against its worker.
    pub const fn counts(self, code: WorkerErrorCode) -> bool {
        self.0 & Self::bit(code) != 0
    }
}

impl Default for FailureClasses {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The outlier-detection machine's tuning (see [`crate::recovery`] for the
/// rules). Built with [`OutlierDetection::default`] and the `with_*`
/// builders; [`crate::PoolConfig::validate`] checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutlierDetection {
    /// Counted failures in a row that eject a worker (at least 1;
    /// default 5).
    pub consecutive_failures: u32,
    /// How many of a worker's latest request outcomes the failure rate is
    /// measured over (1 to 64; default 20).
    pub window: u32,
    /// The fewest outcomes in the window for the rate to eject (1 to
    /// `window`; default 10): below it, only consecutive failures eject.
    pub min_volume: u32,
    /// The failure share of the window, in percent, that ejects a worker
    /// (1 to 100; default 50).
    pub failure_rate_percent: u32,
    /// The first ejection time (non-zero; default 5 s).
    pub base_ejection: Duration,
    /// The longest ejection time before jitter (at least `base_ejection`;
    /// default 60 s).
    pub max_ejection: Duration,
    /// Jitter added to every ejection time, up to this many thousandths of
    /// it (0 to 1000; default 100, that is up to 10 % longer).
    pub jitter_permille: u32,
    /// Each full span of this much time a worker spends closed since its
    /// last trial succeeded takes one doubling off its next ejection time
    /// (non-zero; default 60 s).
    pub decay_after: Duration,
    /// Requests a half-open worker may run at once as trials (at least 1;
    /// default 1).
    pub trial_permits: u32,
    /// Successful trials (requests, or Healthy probes) that close a
    /// half-open worker (at least 1; default 2).
    pub success_threshold: u32,
    /// The largest share of the pool's workers, in percent, ejected at once
    /// (0 to 100; default 50); see [`PanicMode`].
    pub max_ejected_percent: u32,
    /// What happens once the cap is reached.
    pub panic_mode: PanicMode,
    /// Which handler errors count against a worker.
    pub counted: FailureClasses,
}

impl OutlierDetection {
    /// The default tuning, as a constant.
    pub const DEFAULT: OutlierDetection = OutlierDetection {
        consecutive_failures: 5,
        window: 20,
        min_volume: 10,
        failure_rate_percent: 50,
        base_ejection: Duration::from_secs(5),
        max_ejection: Duration::from_secs(60),
        jitter_permille: 100,
        decay_after: Duration::from_secs(60),
        trial_permits: 1,
        success_threshold: 2,
        max_ejected_percent: 50,
        panic_mode: PanicMode::RouteToAll,
        counted: FailureClasses::DEFAULT,
    };

    /// Sets [`consecutive_failures`](Self::consecutive_failures).
    #[must_use]
    pub fn with_consecutive_failures(mut self, value: u32) -> Self {
        self.consecutive_failures = value;
        self
    }

    /// Sets [`window`](Self::window).
    #[must_use]
    pub fn with_window(mut self, value: u32) -> Self {
        self.window = value;
        self
    }

    /// Sets [`min_volume`](Self::min_volume).
    #[must_use]
    pub fn with_min_volume(mut self, value: u32) -> Self {
        self.min_volume = value;
        self
    }

    /// Sets [`failure_rate_percent`](Self::failure_rate_percent).
    #[must_use]
    pub fn with_failure_rate_percent(mut self, value: u32) -> Self {
        self.failure_rate_percent = value;
        self
    }

    /// Sets [`base_ejection`](Self::base_ejection).
    #[must_use]
    pub fn with_base_ejection(mut self, value: Duration) -> Self {
        self.base_ejection = value;
        self
    }

    /// Sets [`max_ejection`](Self::max_ejection).
    #[must_use]
    pub fn with_max_ejection(mut self, value: Duration) -> Self {
        self.max_ejection = value;
        self
    }

    /// Sets [`jitter_permille`](Self::jitter_permille).
    #[must_use]
    pub fn with_jitter_permille(mut self, value: u32) -> Self {
        self.jitter_permille = value;
        self
    }

    /// Sets [`decay_after`](Self::decay_after).
    #[must_use]
    pub fn with_decay_after(mut self, value: Duration) -> Self {
        self.decay_after = value;
        self
    }

    /// Sets [`trial_permits`](Self::trial_permits).
    #[must_use]
    pub fn with_trial_permits(mut self, value: u32) -> Self {
        self.trial_permits = value;
        self
    }

    /// Sets [`success_threshold`](Self::success_threshold).
    #[must_use]
    pub fn with_success_threshold(mut self, value: u32) -> Self {
        self.success_threshold = value;
        self
    }

    /// Sets [`max_ejected_percent`](Self::max_ejected_percent).
    #[must_use]
    pub fn with_max_ejected_percent(mut self, value: u32) -> Self {
        self.max_ejected_percent = value;
        self
    }

    /// Sets [`panic_mode`](Self::panic_mode).
    #[must_use]
    pub fn with_panic_mode(mut self, value: PanicMode) -> Self {
        self.panic_mode = value;
        self
    }

    /// Sets [`counted`](Self::counted).
    #[must_use]
    pub fn with_counted(mut self, value: FailureClasses) -> Self {
        self.counted = value;
        self
    }

    /// The longest an ejection can last: `max_ejection` plus its largest
    /// jitter.
    pub fn longest_ejection(&self) -> Duration {
        super::backoff::with_jitter(
            self.max_ejection,
            self.jitter_permille,
            self.jitter_permille,
        )
    }

    /// How many of `workers` may be ejected at once:
    /// `workers × max_ejected_percent / 100`, rounded down.
    pub fn ejection_cap(&self, workers: usize) -> usize {
        let percent = self.max_ejected_percent.min(100) as usize;
        workers.saturating_mul(percent) / 100
    }
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self::DEFAULT
    }
}
