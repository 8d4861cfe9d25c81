//! proptest state machines over operation sequences.
//!
//! 1. `core_matches_reference`: under the reference-compatible policy
//!    (round robin, one request at a time per worker, no default timeout,
//!    probes far away), the core behaves exactly like a small,
//!    obviously-correct model made of `VecDeque`s and counters: which worker
//!    accepts, `QueueFull` / `NoHealthyWorker` refusals, which request starts
//!    next (a queued request with less budget left than its worker's last
//!    successful run is answered `Timeout` instead), every answer, and each
//!    worker's health after failures, successes, timeouts and restarts (a
//!    timeout counts only when the worker had at least half of the
//!    request's budget). On a mismatch proptest shrinks the sequence to a
//!    minimal one (failures persist under `proptest-regressions/`).
//! 2. `any_op_sequence_keeps_every_rule`: any sequence of [`Op`]s, on small
//!    pools with varied options under every routing policy (the ones whose
//!    choice the model cannot predict are held to the rules every policy
//!    keeps: an eligible worker, exactly one answer, balanced books, no
//!    request waiting while a worker is free beyond a bounded deferral),
//!    with phase limits and retries sometimes, passes every check of the
//!    shared [`Harness`] after every step.
//! 3. `any_op_sequence_under_outlier_detection_keeps_every_rule`: the same
//!    under outlier detection with varied tuning, where the harness checks
//!    the recovery machine's invariants (the ejection cap, trial permits,
//!    ejection times within their bounds, every ejection ending by its
//!    timer) instead of predicting the reference's health.
//!
//! Built with `--cfg foreman_planted_bug` both properties are expected to
//! fail (`should_panic`): they catch the core's planted bug too.

mod reference;

use std::collections::BTreeMap;
use std::time::Duration;

use foreman_core::{
    FailureClasses, HedgeDelay, HedgePolicy, OutlierDetection, PanicMode, PoolConfig,
    RecoveryPolicy, RetryBudget, RetryPolicy, RoutingPolicy, Time, WorkerErrorCode,
    WorkerPoolOptions, WorkerSecurityPolicy,
};
use foreman_tests::model::{
    Distance, Harness, Op, Outcome, RawInput, Shape, TimeoutChoice, TraceEvent, Verdict,
};
use proptest::prelude::*;

use crate::reference::{RefOp, RefWorker, Reference, Step};

fn reference_config(queue_capacity: usize, threshold: u32) -> PoolConfig {
    // The probe timeout is the default's 5 s (the interval, capped).
    PoolConfig::new(WorkerPoolOptions {
        queue_capacity,
        health_probe_interval: Duration::from_secs(3600),
        unavailable_after_failures: threshold,
        default_request_timeout: None,
        security_policy: WorkerSecurityPolicy::default(),
    })
    .with_routing(RoutingPolicy::RoundRobin)
    .with_late_binding(false)
}

/// What the harness traced since `from`, as a [`Step`].
fn observed(harness: &Harness, from: usize) -> Step {
    let mut step = Step::default();
    let full = harness.trace().full().expect("the full trace is kept");
    for event in &full[from..] {
        match *event {
            TraceEvent::Submit { result, .. } => step.submit = Some(result),
            TraceEvent::Start { id, worker } => step.starts.push((id, worker)),
            TraceEvent::Answer { id, kind, .. } => step.answers.push((id, kind)),
            _ => {}
        }
    }
    step
}

fn run_against_reference(
    workers: usize,
    queue_capacity: usize,
    threshold: u32,
    ops: &[RefOp],
) -> Result<(), TestCaseError> {
    let mut harness = Harness::with_trace(reference_config(queue_capacity, threshold), true)
        .expect("valid config");
    let mut model = Reference {
        workers: Vec::new(),
        cursor: 0,
        queue_capacity,
        threshold,
        requests: BTreeMap::new(),
        now_ms: 0,
    };
    for _ in 0..workers {
        harness.add_worker().map_err(|f| TestCaseError::fail(f.0))?;
        model.workers.push(RefWorker::default());
    }
    let mut next_id = 1u64;
    for (n, op) in ops.iter().enumerate() {
        let mark = harness.trace().full().map_or(0, <[TraceEvent]>::len);
        let mut expected = Step::default();
        let result = match *op {
            RefOp::Submit { timeout } => {
                let id = next_id;
                next_id += 1;
                let timeout_ms = timeout.map(|k| u64::from(k) * 1000 + id);
                model.submit(id, timeout_ms, &mut expected);
                harness.submit(Shape::Tool, timeout_ms).map(drop)
            }
            RefOp::Complete { index, ok } => {
                let running: Vec<u64> = model
                    .workers
                    .iter()
                    .filter_map(|w| w.running)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                if running.is_empty() {
                    continue;
                }
                let id = running[usize::from(index) % running.len()];
                model.complete(id, ok, &mut expected);
                let key = *harness
                    .running()
                    .iter()
                    .find(|k| harness.request_id(**k) == Some(id))
                    .ok_or_else(|| {
                        TestCaseError::fail(format!("step {n}: #{id} is not running in the core"))
                    })?;
                let outcome = if ok {
                    Outcome::Success
                } else {
                    Outcome::Failure { retryable: true }
                };
                harness.complete(key, outcome).map(drop)
            }
            RefOp::Cancel { index } => {
                let live: Vec<u64> = model.requests.keys().copied().collect();
                if live.is_empty() {
                    continue;
                }
                let id = live[usize::from(index) % live.len()];
                model.cancel(id, &mut expected);
                let key = *harness
                    .live()
                    .iter()
                    .find(|k| harness.request_id(**k) == Some(id))
                    .ok_or_else(|| {
                        TestCaseError::fail(format!("step {n}: #{id} is not pending in the core"))
                    })?;
                harness.cancel(key).map(drop)
            }
            RefOp::Advance { secs } => {
                let target = harness.clock() + Duration::from_secs(u64::from(secs));
                model.advance(target.as_nanos() / 1_000_000, &mut expected);
                harness.advance(target)
            }
            RefOp::AddWorker => {
                model.workers.push(RefWorker::default());
                harness.add_worker().map(drop)
            }
            RefOp::Restart { index } => {
                let worker = usize::from(index) % model.workers.len();
                model.restart(worker, &mut expected);
                let key = *harness
                    .workers()
                    .iter()
                    .find(|k| harness.ordinal(**k) == Some(worker as u32))
                    .expect("worker exists");
                harness.restart_worker(key).map(drop)
            }
        };
        result.map_err(|failure| {
            TestCaseError::fail(format!("step {n} {op:?}: harness check failed: {failure}"))
        })?;
        let got = observed(&harness, mark);
        prop_assert_eq!(
            &got,
            &expected,
            "step {} {:?}: core and reference disagree",
            n,
            op
        );
        let health = harness.pool().health();
        for (worker, h) in health.iter().enumerate() {
            prop_assert_eq!(
                h.status,
                model.status(worker),
                "step {} {:?}: status of worker {}",
                n,
                op,
                worker
            );
            prop_assert_eq!(
                h.consecutive_failures,
                model.workers[worker].failures,
                "step {} {:?}: failures of worker {}",
                n,
                op,
                worker
            );
        }
        prop_assert_eq!(harness.pending(), model.requests.len());
    }
    harness.check().map_err(|f| TestCaseError::fail(f.0))?;
    Ok(())
}

fn ref_op() -> impl Strategy<Value = RefOp> {
    prop_oneof![
        5 => proptest::option::of(1u8..=5).prop_map(|timeout| RefOp::Submit { timeout }),
        4 => (any::<u8>(), proptest::bool::weighted(0.6)).prop_map(|(index, ok)| RefOp::Complete { index, ok }),
        1 => any::<u8>().prop_map(|index| RefOp::Cancel { index }),
        2 => (1u8..=4).prop_map(|secs| RefOp::Advance { secs }),
        1 => Just(RefOp::AddWorker),
        1 => any::<u8>().prop_map(|index| RefOp::Restart { index }),
    ]
}

/// Runs `ops` on a pool of `workers` under `config`, the shared harness
/// checking every rule after every step and all of them at the end.
fn run_ops(config: PoolConfig, workers: usize, ops: &[Op]) -> Result<Harness, TestCaseError> {
    let mut harness = Harness::new(config).expect("valid config");
    for _ in 0..workers {
        harness.add_worker().map_err(|f| TestCaseError::fail(f.0))?;
    }
    for (n, op) in ops.iter().enumerate() {
        harness
            .apply(*op)
            .map_err(|f| TestCaseError::fail(format!("step {n} {op:?}: {f}")))?;
    }
    harness.check().map_err(|f| TestCaseError::fail(f.0))?;
    Ok(harness)
}

/// Outlier-detection tuning on the scale of [`any_config`]'s times.
fn outlier_detection() -> impl Strategy<Value = OutlierDetection> {
    (
        (1u32..=4, 1u32..=16, 1u32..=16, 1u32..=100),
        (1u64..3_000, 0u32..=5, 0u32..=1000, 1u64..10_000),
        (1u32..=3, 1u32..=3, 0u32..=100, any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                (consecutive, window, volume, rate),
                (base_ms, doublings, jitter, decay_ms),
                (permits, successes, cap, fail_fast, count_timeouts),
            )| {
                let base = Duration::from_millis(base_ms);
                let counted = if count_timeouts {
                    FailureClasses::DEFAULT
                } else {
                    FailureClasses::DEFAULT.without(WorkerErrorCode::Timeout)
                };
                OutlierDetection::default()
                    .with_consecutive_failures(consecutive)
                    .with_window(window)
                    .with_min_volume(volume.min(window))
                    .with_failure_rate_percent(rate)
                    .with_base_ejection(base)
                    .with_max_ejection(base * (1 << doublings))
                    .with_jitter_permille(jitter)
                    .with_decay_after(Duration::from_millis(decay_ms))
                    .with_trial_permits(permits)
                    .with_success_threshold(successes)
                    .with_max_ejected_percent(cap)
                    .with_panic_mode(if fail_fast {
                        PanicMode::FailFast
                    } else {
                        PanicMode::RouteToAll
                    })
                    .with_counted(counted)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_op_sequence_under_outlier_detection_keeps_every_rule(
        config in any_config(),
        tuning in outlier_detection(),
        seed in any::<u64>(),
        workers in 0usize..=4,
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        let config = config
            .with_seed(seed)
            .with_recovery(RecoveryPolicy::OutlierDetection(tuning));
        run_ops(config, workers, &ops)?;
    }

    // With the core's planted bug this property must fail (the saved
    // regression cases find it first).
    #[test]
    #[cfg_attr(foreman_planted_bug, should_panic)]
    fn core_matches_reference(
        workers in 1usize..=4,
        queue_capacity in 1usize..=3,
        threshold in 1u32..=3,
        ops in proptest::collection::vec(ref_op(), 1..120),
    ) {
        run_against_reference(workers, queue_capacity, threshold, &ops)?;
    }
}

#[test]
fn reference_scenario_round_robin_and_threshold() {
    use RefOp::*;
    let ops = [
        Submit { timeout: None },
        Submit { timeout: None },
        Submit { timeout: None },
        Complete {
            index: 0,
            ok: false,
        },
        Complete {
            index: 0,
            ok: false,
        },
        Submit { timeout: Some(1) },
        Advance { secs: 3 },
        Restart { index: 1 },
        Cancel { index: 0 },
    ];
    run_against_reference(2, 1, 2, &ops).expect("core matches the reference");
}

fn op() -> impl Strategy<Value = Op> {
    let shape = prop_oneof![
        8 => Just(Shape::Tool),
        4 => Just(Shape::Llm),
        1 => Just(Shape::Unnamed),
        1 => Just(Shape::LongIdentifier),
        1 => Just(Shape::Oversized),
    ];
    let timeout = prop_oneof![
        4 => Just(TimeoutChoice::Default),
        6 => (0u32..5_000).prop_map(TimeoutChoice::Ms),
        2 => any::<u32>().prop_map(TimeoutChoice::Ms),
        1 => Just(TimeoutChoice::Max),
        1 => Just(TimeoutChoice::Huge),
    ];
    let outcome = prop_oneof![
        3 => Just(Outcome::Success),
        2 => any::<bool>().prop_map(|retryable| Outcome::Failure { retryable }),
        1 => Just(Outcome::Panic),
    ];
    let verdict = prop_oneof![
        Just(Verdict::Healthy),
        Just(Verdict::Degraded),
        Just(Verdict::Unavailable)
    ];
    prop_oneof![
        8 => (shape.clone(), timeout.clone()).prop_map(|(shape, timeout)| Op::Submit { shape, timeout }),
        3 => (shape.clone(), timeout.clone()).prop_map(|(shape, timeout)| Op::Offer { shape, timeout }),
        3 => (shape, timeout, any::<u8>())
            .prop_map(|(shape, timeout, veto)| Op::SubmitVetted { shape, timeout, veto }),
        2 => (any::<u16>(), any::<u8>()).prop_map(|(index, veto)| Op::Revet { index, veto }),
        2 => any::<u16>().prop_map(|index| Op::Cancel { index }),
        6 => (any::<u16>(), outcome).prop_map(|(index, outcome)| Op::Complete { index, outcome }),
        2 => any::<u16>().prop_map(|index| Op::Refuse { index }),
        3 => (any::<u16>(), verdict).prop_map(|(index, verdict)| Op::ProbeResult { index, verdict }),
        1 => Just(Op::AddWorker),
        1 => any::<u16>().prop_map(|index| Op::RemoveWorker { index }),
        1 => any::<u16>().prop_map(|index| Op::RestartWorker { index }),
        1 => proptest::option::of(0u32..10_000).prop_map(|drain_ms| Op::Shutdown { drain_ms }),
        4 => (0u32..3_000).prop_map(|ms| Op::Advance { ms }),
        1 => (0u32..3_000).prop_map(|ms| Op::StepBack { ms }),
        1 => Just(Op::Timeout),
        1 => prop_oneof![Just(1u8), Just(2), Just(0), Just(255)]
            .prop_map(|name| Op::AddNamedWorker { name }),
        1 => (proptest::option::of(prop_oneof![Just(1u8), Just(2)]), 0u8..5)
            .prop_map(|(name, max_concurrency)| Op::AddSizedWorker { name, max_concurrency }),
        1 => (any::<u64>(), raw_input()).prop_map(|(raw, input)| Op::RawKey { raw, input }),
        1 => distance().prop_map(|by| Op::Leap { by }),
        1 => Just(Op::NextTimer),
    ]
}

fn raw_input() -> impl Strategy<Value = RawInput> {
    prop_oneof![
        Just(RawInput::Cancel),
        Just(RawInput::Complete),
        Just(RawInput::Restart),
        Just(RawInput::Remove),
    ]
}

fn distance() -> impl Strategy<Value = Distance> {
    prop_oneof![
        4 => any::<u16>().prop_map(Distance::Nanos),
        4 => (0u16..5_000).prop_map(Distance::Millis),
        2 => (0u16..60).prop_map(Distance::Secs),
        1 => Just(Distance::ToTheEnd),
    ]
}

fn any_config() -> impl Strategy<Value = PoolConfig> {
    (
        1usize..=4,
        1u32..=4,
        proptest::option::of(1u64..3_000),
        1u64..2_000,
        1u64..2_000,
        1u32..=3,
        (
            0usize..RoutingPolicy::ALL.len(),
            any::<bool>(),
            any::<u64>(),
        ),
        (1u64..3_000, 1u64..20_000, 1u32..=100),
        (
            proptest::option::weighted(0.3, 1u64..3_000),
            proptest::option::weighted(0.3, 1u64..3_000),
        ),
        proptest::option::weighted(0.3, (1u32..=3, any::<bool>(), 0u32..=100, 0u32..=2)),
        proptest::option::weighted(
            0.3,
            (
                prop_oneof![
                    (1u64..3_000).prop_map(|ms| HedgeDelay::Fixed(Duration::from_millis(ms))),
                    (1u32..=999).prop_map(HedgeDelay::RunTimePercentile),
                ],
                1u32..=2,
                any::<bool>(),
            ),
        ),
    )
        .prop_map(
            |(
                queue_capacity,
                threshold,
                default_ms,
                probe_ms,
                probe_timeout_ms,
                concurrency,
                (routing, late_binding, seed),
                (unsampled_ms, decay_ms, degraded_share),
                (queue_wait_ms, run_ms),
                retries,
                hedging,
            )| {
                PoolConfig::new(WorkerPoolOptions {
                    queue_capacity,
                    health_probe_interval: Duration::from_millis(probe_ms),
                    unavailable_after_failures: threshold,
                    default_request_timeout: default_ms.map(Duration::from_millis),
                    security_policy: WorkerSecurityPolicy {
                        max_request_timeout_ms: 4_000,
                        max_request_payload_bytes: 1024,
                        max_identifier_length: 32,
                    },
                })
                .with_probe_timeout(Duration::from_millis(probe_timeout_ms))
                .with_max_concurrency_per_worker(concurrency)
                // Every policy, with late binding or without (round robin
                // never moves a queued request either way).
                .with_routing(RoutingPolicy::ALL[routing])
                .with_late_binding(late_binding)
                .with_seed(seed)
                .with_unsampled_latency(Duration::from_millis(unsampled_ms))
                .with_ewma_decay(Duration::from_millis(decay_ms))
                .with_degraded_share_percent(degraded_share)
                // Sometimes a queue-wait or run limit for every request.
                .with_queue_wait_limit(queue_wait_ms.map(Duration::from_millis))
                .with_run_limit(run_ms.map(Duration::from_millis))
                // Sometimes retries, of tools too, with a small budget.
                .with_retries(retries.map(|(attempts, tools, share, reserve)| {
                    RetryPolicy::default()
                        .with_max_attempts(attempts)
                        .with_tools(tools)
                        .with_budget(
                            RetryBudget::default()
                                .with_share_percent(share)
                                .with_reserve_per_second(reserve),
                        )
                }))
                // Sometimes hedging, of tools too, one or two hedges.
                .with_hedging(hedging.map(|(delay, max_hedges, tools)| {
                    HedgePolicy::default()
                        .with_delay(delay)
                        .with_max_hedges(max_hedges)
                        .with_tools(tools)
                }))
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    // With the core's planted bug this property must fail (the saved
    // regression cases find it first).
    #[test]
    #[cfg_attr(foreman_planted_bug, should_panic)]
    fn any_op_sequence_keeps_every_rule(
        config in any_config(),
        workers in 0usize..=4,
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        let harness = run_ops(config, workers, &ops)?;
        prop_assert!(harness.now() >= Time::ZERO);
    }
}
