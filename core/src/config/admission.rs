//! A request's admission: the checks a [`PoolConfig`] makes of a request
//! before it enters the core, and the time budget and phase limits it
//! resolves ([`Admission`]).

use std::time::Duration;

use super::PoolConfig;
use crate::deadlines::PhaseLimits;
use crate::protocol::WorkerRequest;
#[cfg(doc)]
use crate::retries::RetryPolicy;
use crate::validate::{check_request, RequestError, RequestLimits};

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
    hedge: bool,
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

    /// Whether the pool's [`HedgePolicy`](crate::HedgePolicy) covers the
    /// request's operation kind (a second attempt may then run while the
    /// first still does).
    pub fn hedge(&self) -> bool {
        self.hedge
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
    /// The pool-wide phase limits: [`queue_wait_limit`](Self::queue_wait_limit)
    /// and [`run_limit`](Self::run_limit).
    pub fn phase_limits(&self) -> PhaseLimits {
        PhaseLimits {
            queue_wait: self.queue_wait_limit,
            run: self.run_limit,
        }
    }

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
        let hedge = self
            .hedging
            .is_some_and(|policy| policy.covers(&request.operation));
        Ok(Admission {
            timeout,
            retry,
            hedge,
            limits: self.phase_limits(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::test_requests::{exact_len, nested, tool, value_fields};
    use crate::validate::validate_request;

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
