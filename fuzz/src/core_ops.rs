//! The `core_ops` target, and the operation loop it shares with `config`:
//! both drive the core through the operation model of `foreman-tests`
//! ([`foreman_tests::model`], the simulator's and the proptest state
//! machines' [`Harness`]), which drains every output and checks the pool
//! after every input.

use std::time::Duration;

use arbitrary::Unstructured;
use foreman_core::{
    PoolConfig, RecoveryPolicy, RetryPolicy, RoutingPolicy, WorkerPoolOptions, WorkerSecurityPolicy,
};
use foreman_tests::model::{Harness, Op};

/// Longest operation sequence one `core_ops` input runs. Short sequences
/// keep an execution cheap (libFuzzer finds more by running more of them;
/// the simulator and the proptests run the long histories): the planted
/// bug (a queued request that times out and is never answered) takes four
/// ops, a worker, two submits and a clock move.
const MAX_OPS: usize = 16;

/// Most core inputs (wake-ups included) one execution gives the pool:
/// once past it, no further op is applied.
pub(crate) const MAX_INPUTS: u64 = 256;

/// Most wake-ups one `Op::Advance` performs.
const MAX_WAKES_PER_ADVANCE: usize = 16;

/// What a run did, for corpus generation and sanity checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Outcome {
    /// Requests accepted.
    pub accepted: u64,
    /// Submits and offers refused (or declined).
    pub refused: u64,
    /// Requests their handler completed (successes and failures).
    pub started: u64,
    /// Answers delivered.
    pub answered: u64,
    /// Workers added.
    pub workers: u64,
    /// Whether shutdown completed.
    pub stopped: bool,
    /// Inputs the pool was given (wake-ups included).
    pub inputs: u64,
}

/// The `core_ops` target: bytes → a small configuration (queue capacity
/// 1–4, failure threshold 1–4, concurrency 1–3, the routing, so queues fill
/// and workers flip) → up to [`MAX_OPS`] [`Op`]s (and at most
/// [`MAX_INPUTS`] core inputs), each applied by the model's [`Harness`] →
/// a final zero-drain shutdown that must answer everything and stop the
/// pool.
///
/// # Panics
/// With the model's description of the first broken rule.
pub fn core_ops(data: &[u8]) {
    let _ = core_ops_outcome(data);
}

/// [`core_ops`], returning what the run did.
pub fn core_ops_outcome(data: &[u8]) -> Outcome {
    let mut u = Unstructured::new(data);
    let mut harness = Harness::new(small_config(&mut u)).expect("valid config");
    // The model's cheap checks run after every input; its O(n) ones (the
    // core's `check_invariants` and a stats comparison) after every 32nd
    // input (amortised), every worker command the pool takes, every revet
    // and the final shutdown. They cost more than the rest of an input.
    harness.set_full_check_amortised(32);
    let workers = run_ops(&mut harness, &mut u, MAX_OPS);
    finish(harness, workers)
}

/// A configuration from the first bytes: queue capacity, failure
/// threshold, then concurrency (the byte mod 3) and routing (the rest):
/// idle-first with late binding (the default), idle-first without, or
/// round robin; then the load-aware policies, outlier detection, retries
/// and phase limits, each from a bit of a fourth byte.
fn small_config(u: &mut Unstructured<'_>) -> PoolConfig {
    let defaults = WorkerPoolOptions::default();
    let options = WorkerPoolOptions {
        queue_capacity: usize::from(u.arbitrary::<u8>().unwrap_or(0) % 4) + 1,
        unavailable_after_failures: u32::from(u.arbitrary::<u8>().unwrap_or(0) % 4) + 1,
        // A 4 KiB payload limit instead of 256 KiB: the model's oversized
        // request is one byte past the limit, and building and copying
        // 256 KiB strings under AddressSanitizer is slow.
        security_policy: WorkerSecurityPolicy {
            max_request_payload_bytes: 4096,
            ..defaults.security_policy
        },
        ..defaults
    };
    let pick = u.arbitrary::<u8>().unwrap_or(0);
    let config =
        PoolConfig::new(options).with_max_concurrency_per_worker(u32::from(pick % 3) + 1);
    let config = match (pick / 3) % 3 {
        0 => config,
        1 => config.with_late_binding(false),
        _ => config.with_routing(RoutingPolicy::RoundRobin),
    };
    // A fourth byte, when there is one, turns on the rest: the load-aware
    // policies, outlier detection, retries, phase limits.
    let more = u.arbitrary::<u8>().unwrap_or(0);
    let config = match more % 4 {
        1 => config.with_routing(RoutingPolicy::LeastLoaded),
        2 => config.with_routing(RoutingPolicy::PeakEwma),
        _ => config,
    };
    let config = if more & 0x04 != 0 {
        config.with_recovery(RecoveryPolicy::outlier_detection())
    } else {
        config
    };
    let config = if more & 0x08 != 0 {
        config.with_retries(Some(RetryPolicy::default().with_tools(true)))
    } else {
        config
    };
    if more & 0x10 != 0 {
        config
            .with_queue_wait_limit(Some(Duration::from_millis(200)))
            .with_run_limit(Some(Duration::from_secs(1)))
    } else {
        config
    }
}

/// Applies up to `max_ops` ops decoded from `u` (fewer once the pool has
/// had [`MAX_INPUTS`] inputs); returns how many added a worker.
///
/// Most clock moves stay within a minute (every kind of timer still fires:
/// probes every 5 s, the default timeout 30 s); one in 64 keeps its full
/// range (up to ~50 days), and each wakes the core at most
/// [`MAX_WAKES_PER_ADVANCE`] times. `Op::Leap` covers the far jumps: one
/// late wake-up, up to the end of time.
///
/// # Panics
/// With the model's description of the first broken rule.
pub(crate) fn run_ops(harness: &mut Harness, u: &mut Unstructured<'_>, max_ops: usize) -> u64 {
    harness.set_max_wakes_per_advance(MAX_WAKES_PER_ADVANCE);
    // A failure is reported by its message; the trace would only cost.
    harness.stop_tracing();
    let mut workers = 0;
    for n in 0..max_ops {
        if u.is_empty() || harness.inputs() >= MAX_INPUTS {
            break;
        }
        let Ok(mut op) = u.arbitrary::<Op>() else {
            break;
        };
        if let Op::Advance { ms } = &mut op {
            if *ms % 64 != 0 {
                *ms %= 60_000;
            }
        }
        if matches!(
            op,
            Op::AddWorker | Op::AddNamedWorker { .. } | Op::AddSizedWorker { .. }
        ) {
            workers += 1;
        }
        if let Err(failure) = harness.apply(op) {
            panic!("op {n} ({op:?}): {failure}");
        }
    }
    workers
}

/// Shuts down with a zero drain limit: everything must be answered at once
/// and the pool must stop (the model checks the rest: every answer, the
/// stopped pool wanting no wake-up, and all its O(n) checks); returns what
/// the run did.
///
/// # Panics
/// With the model's description of the first broken rule.
pub(crate) fn finish(mut harness: Harness, workers: u64) -> Outcome {
    // A shutdown runs every check, the O(n) ones included.
    if let Err(failure) = harness.begin_shutdown(Some(Duration::ZERO)) {
        panic!("final shutdown: {failure}");
    }
    assert_eq!(
        harness.pool().pending(),
        0,
        "requests left after a zero-drain shutdown"
    );
    assert!(
        harness.is_stopped(),
        "pool not stopped after a zero-drain shutdown"
    );
    let inputs = harness.inputs();
    let counters = harness.pool().counters();
    Outcome {
        accepted: counters.accepted,
        refused: counters.submitted.saturating_sub(counters.accepted),
        started: counters.succeeded + counters.failed,
        answered: counters.answered(),
        workers,
        stopped: true,
        inputs,
    }
}
