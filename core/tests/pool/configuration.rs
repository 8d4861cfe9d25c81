//! Configuration: what the constructor refuses, and the configurations the
//! reference runs (a default timeout above the ceiling, zero budgets,
//! thresholds and policy limits).

use std::time::Duration;

use foreman_core::{
    ConfigError, Pool, PoolConfig, Time, WorkerHealthStatus, WorkerPoolError, WorkerPoolOptions,
    WorkerRequest, WorkerSecurityPolicy,
};

use crate::harness::{failure, ms, options, request, with_timeout, Harness};

#[test]
fn constructor_refuses_what_the_reference_cannot_run() {
    let cases: Vec<(WorkerPoolOptions, ConfigError)> = vec![
        (
            WorkerPoolOptions {
                queue_capacity: 0,
                ..options()
            },
            ConfigError::ZeroQueueCapacity,
        ),
        (
            WorkerPoolOptions {
                health_probe_interval: Duration::ZERO,
                ..options()
            },
            ConfigError::ZeroProbeInterval,
        ),
    ];
    for (options, expected) in cases {
        let error = Pool::<()>::new(options, Time::ZERO).expect_err("must be refused");
        assert_eq!(error, expected);
        assert!(!error.to_string().is_empty());
    }
    let config = PoolConfig::default().with_probe_timeout(Duration::ZERO);
    assert_eq!(
        Pool::<()>::new(config, Time::ZERO).unwrap_err(),
        ConfigError::ZeroProbeTimeout
    );
    let config = PoolConfig::default().with_max_concurrency_per_worker(0);
    assert_eq!(
        Pool::<()>::new(config, Time::ZERO).unwrap_err(),
        ConfigError::ZeroConcurrency
    );
    assert!(Pool::<()>::new(WorkerPoolOptions::default(), Time::ZERO).is_ok());
    assert!(
        Pool::<()>::new(
            WorkerPoolOptions {
                default_request_timeout: None,
                ..options()
            },
            Time::ZERO
        )
        .is_ok(),
        "no default timeout is allowed"
    );
}

#[test]
fn config_error_messages_name_the_field() {
    let error = Pool::<()>::new(
        WorkerPoolOptions {
            queue_capacity: 0,
            ..options()
        },
        Time::ZERO,
    )
    .unwrap_err();
    assert!(error.to_string().contains("queue_capacity"), "{error}");
    let error = Pool::<()>::new(
        WorkerPoolOptions {
            health_probe_interval: Duration::ZERO,
            ..options()
        },
        Time::ZERO,
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("health_probe_interval"),
        "{error}"
    );
}

/// The reference's own test configuration: a 10 ms ceiling on what a
/// request may ask for beside the default 30 s default timeout. It builds;
/// the ceiling bounds `timeout_ms`, and requests without one get 30 s.
#[test]
fn a_default_timeout_above_the_ceiling_applies_to_requests_without_one() {
    let mut h = Harness::new(
        WorkerPoolOptions {
            security_policy: WorkerSecurityPolicy {
                max_request_timeout_ms: 10,
                max_request_payload_bytes: 256,
                max_identifier_length: 12,
            },
            ..options()
        },
        1,
    );
    assert!(matches!(
        h.submit(ms(0), &with_timeout("asks-99", 99)),
        Err(WorkerPoolError::InvalidRequest { .. })
    ));
    let key = h.submit(ms(0), &request("default")).unwrap();
    h.tick(ms(29_999));
    assert!(h.answers().is_empty(), "the 30 s budget has not run out");
    h.tick(ms(30_000));
    let answers = h.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].request, key);
    assert_eq!(answers[0].result, Err(WorkerPoolError::Timeout));
}

/// A zero budget (`timeout_ms: 0`, or a zero default timeout) has run out
/// on arrival: the request is answered `Timeout` at once, no worker runs
/// it and none is held responsible.
#[test]
fn a_zero_budget_times_out_on_arrival_without_touching_a_worker() {
    let mut h = Harness::new(
        WorkerPoolOptions {
            default_request_timeout: Some(Duration::ZERO),
            ..options()
        },
        1,
    );
    assert_eq!(
        h.submit(ms(1), &request("default-zero")),
        Err(WorkerPoolError::Timeout)
    );
    assert_eq!(
        h.submit(ms(2), &with_timeout("asks-zero", 0)),
        Err(WorkerPoolError::Timeout)
    );
    assert!(h.started().is_empty(), "no handler ran");
    assert_eq!(h.status(0), WorkerHealthStatus::Healthy);
    assert_eq!(h.pool.health()[0].consecutive_failures, 0);
    let counters = *h.pool.counters();
    assert_eq!(counters.refused_no_budget, 2);
    assert_eq!(counters.refused(), 2);
    assert_eq!(counters.accepted, 0);
    let key = h.submit(ms(3), &with_timeout("asks-one", 1)).unwrap();
    assert_eq!(h.started(), vec![(key, h.worker(0))]);
}

/// `unavailable_after_failures = 0` builds and acts as 1, as in the
/// reference (where every failure reaches a threshold of zero).
#[test]
fn a_zero_failure_threshold_acts_as_one() {
    let mut h = Harness::new(
        WorkerPoolOptions {
            unavailable_after_failures: 0,
            ..options()
        },
        1,
    );
    assert_eq!(h.status(0), WorkerHealthStatus::Healthy);
    let key = h.submit(ms(0), &request("fails")).unwrap();
    h.complete(ms(1), key, Err(failure()));
    assert_eq!(h.status(0), WorkerHealthStatus::Unavailable);
}

/// Zero security-policy limits build, as in the reference, and refuse
/// exactly the requests they exclude.
#[test]
fn zero_policy_limits_refuse_only_what_they_exclude() {
    let zero = |policy: WorkerSecurityPolicy| {
        Harness::new(
            WorkerPoolOptions {
                security_policy: policy,
                ..options()
            },
            1,
        )
    };
    let mut no_payload = zero(WorkerSecurityPolicy {
        max_request_payload_bytes: 0,
        ..WorkerSecurityPolicy::default()
    });
    assert!(matches!(
        no_payload.submit(ms(0), &request("any")),
        Err(WorkerPoolError::InvalidRequest { .. })
    ));
    let mut no_ids = zero(WorkerSecurityPolicy {
        max_identifier_length: 0,
        ..WorkerSecurityPolicy::default()
    });
    assert!(matches!(
        no_ids.submit(ms(0), &request("named")),
        Err(WorkerPoolError::InvalidRequest { .. })
    ));
    let unnamed = WorkerRequest {
        workflow_name: String::new(),
        node_id: String::new(),
        ..request("")
    };
    assert!(no_ids.submit(ms(0), &unnamed).is_ok());
    let mut no_timeouts = zero(WorkerSecurityPolicy {
        max_request_timeout_ms: 0,
        ..WorkerSecurityPolicy::default()
    });
    assert!(matches!(
        no_timeouts.submit(ms(0), &with_timeout("asks", 1)),
        Err(WorkerPoolError::InvalidRequest { .. })
    ));
    assert!(no_timeouts.submit(ms(0), &request("default")).is_ok());
}
