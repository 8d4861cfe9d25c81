//! The checks that turn a [`PoolConfig`] into one the core trusts, and
//! [`ConfigError`], which names the value out of range.

use std::time::Duration;

use thiserror::Error;

use super::{OutlierDetection, PoolConfig, RecoveryPolicy};
use crate::hedging::{HedgeDelay, HedgePolicy};

impl PoolConfig {
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
        if let Some(hedging) = &self.hedging {
            validate_hedging(hedging)?;
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
    /// A field of the hedging policy ([`HedgePolicy`]) is out of range.
    #[error("hedging.{field} must be {allowed}")]
    InvalidHedging {
        /// The field's name.
        field: &'static str,
        /// The values it may take.
        allowed: &'static str,
    },
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

/// Checks a hedging policy: a non-zero fixed delay, a percentile within
/// 1..=999 thousandths, at least one hedge.
fn validate_hedging(hedging: &HedgePolicy) -> Result<(), ConfigError> {
    let invalid = |field, allowed| Err(ConfigError::InvalidHedging { field, allowed });
    match hedging.delay {
        HedgeDelay::Fixed(delay) if delay.is_zero() => {
            return invalid("delay", "a non-zero duration");
        }
        HedgeDelay::RunTimePercentile(permille) if !(1..=999).contains(&permille) => {
            return invalid("delay", "a percentile within 1..=999 thousandths");
        }
        _ => {}
    }
    if hedging.max_hedges == 0 {
        return invalid("max_hedges", "at least 1 (leave hedging unset for none)");
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::RoutingPolicy;

    #[test]
    fn validate_names_each_hedging_field_out_of_range() {
        let hedged = |policy| PoolConfig::default().with_hedging(Some(policy));
        let field = |config: PoolConfig| match config.validate() {
            Err(ConfigError::InvalidHedging { field, .. }) => Some(field),
            _ => None,
        };
        let fixed = |delay| HedgePolicy::default().with_delay(HedgeDelay::Fixed(delay));
        assert_eq!(field(hedged(fixed(Duration::ZERO))), Some("delay"));
        for permille in [0, 1_000] {
            let policy = HedgePolicy::default().with_delay(HedgeDelay::RunTimePercentile(permille));
            assert_eq!(field(hedged(policy)), Some("delay"), "{permille}");
        }
        assert_eq!(
            field(hedged(HedgePolicy::default().with_max_hedges(0))),
            Some("max_hedges")
        );
        assert_eq!(hedged(HedgePolicy::default()).validate(), Ok(()));
        assert_eq!(hedged(fixed(Duration::from_nanos(1))).validate(), Ok(()));
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
}
