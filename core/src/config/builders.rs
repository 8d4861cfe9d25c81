//! [`PoolConfig`]'s builders: one `with_*` method per field of foreman's
//! tuning, and the rule a circuit breaker imposes.

use std::time::Duration;

use super::{PoolConfig, RecoveryPolicy, RoutingPolicy};
use crate::hedging::HedgePolicy;
use crate::retries::RetryPolicy;

impl PoolConfig {
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

    /// Sets [`hedging`](Self::hedging): when a running request gets a
    /// second attempt on another worker (`None`: never).
    #[must_use]
    pub fn with_hedging(mut self, hedging: Option<HedgePolicy>) -> Self {
        self.hedging = hedging;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WorkerPoolOptions;

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
}
