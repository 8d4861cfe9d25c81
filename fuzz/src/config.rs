//! The `config` target: arbitrary options against `Pool::new`, then a short
//! run of the operation model on every accepted configuration.

use std::time::Duration;

use arbitrary::Unstructured;
use foreman_core::{PoolConfig, Time, WorkerPoolOptions, WorkerSecurityPolicy};
use foreman_tests::model::Harness;

use crate::core_ops::{finish, run_ops, Outcome};

/// The latest time the harnesses feed the core: [`Time::MAX`] itself.
///
/// The `config` target once found the core livelocking there (a probe's
/// timeout saturated to `now` and re-armed itself forever; reproducer in
/// `tests/replay.rs::core_survives_the_end_of_time`). The core treats a
/// deadline at `Time::MAX` as "never", so the harnesses go all the way.
pub const END_OF_TIME: Time = Time::MAX;

/// Longest operation sequence run on an accepted configuration.
const MAX_OPS: usize = 32;

/// Builds a configuration from bytes, favouring edge values (zero, one, the
/// defaults, the type's maximum) over uniformly random ones, plus the time
/// the pool is created at.
pub fn decode_config(u: &mut Unstructured<'_>) -> (PoolConfig, Time) {
    let options = WorkerPoolOptions {
        queue_capacity: pick_usize(u, 64),
        health_probe_interval: pick_duration(u, Duration::from_secs(5)),
        unavailable_after_failures: pick_u32(u, 3),
        default_request_timeout: if u.arbitrary().unwrap_or(false) {
            None
        } else {
            Some(pick_duration(u, Duration::from_secs(30)))
        },
        security_policy: WorkerSecurityPolicy {
            max_request_timeout_ms: pick_u64(u, 120_000),
            max_request_payload_bytes: pick_usize(u, 256 * 1024),
            max_identifier_length: pick_usize(u, 128),
        },
    };
    let mut config = PoolConfig::new(options);
    // Keep `PoolConfig::new`'s derived probe timeout half of the time.
    if u.arbitrary().unwrap_or(false) {
        config.probe_timeout = pick_duration(u, Duration::from_secs(5));
    }
    config.max_concurrency_per_worker = pick_u32(u, 1);
    config.unix_epoch_ms = pick_u64(u, 0);
    let now = match u.arbitrary::<u8>().unwrap_or(0) % 4 {
        0 => Time::ZERO,
        // The end of time itself (see `END_OF_TIME`).
        1 => END_OF_TIME,
        2 => Time::from_nanos(u64::MAX - 1_000_000_000),
        _ => Time::from_nanos(u.arbitrary().unwrap_or(0)).min(END_OF_TIME),
    };
    (config, now)
}

/// `Pool::new` on an arbitrary configuration (through the model's
/// [`Harness::starting_at`]) must return `Ok` exactly when
/// `config.validate()` does (and the same error otherwise), never panic; an
/// accepted configuration must survive up to 32 operations of the model
/// (workers added, submits, completions, probes, timeouts, shutdown, keys
/// it never handed out, clock leaps to the end of time) with every rule
/// checked after each, and a final zero-drain shutdown must answer
/// everything.
pub fn config(data: &[u8]) {
    let _ = config_outcome(data);
}

/// [`config`], returning `Err` with the refusal or what the run did.
pub fn config_outcome(data: &[u8]) -> Result<Outcome, foreman_core::ConfigError> {
    let mut u = Unstructured::new(data);
    let (config, now) = decode_config(&mut u);
    let validated = config.validate();
    let mut harness = match Harness::starting_at(config.clone(), now) {
        Ok(harness) => {
            assert_eq!(
                validated,
                Ok(()),
                "Pool::new accepted a config validate() refuses"
            );
            harness
        }
        Err(error) => {
            assert_eq!(
                validated,
                Err(error.clone()),
                "Pool::new and validate() disagree"
            );
            // Every refusal explains itself.
            assert!(!error.to_string().is_empty());
            return Err(error);
        }
    };
    assert_eq!(harness.pool().config(), &config);
    assert_eq!(harness.pool().now(), now);
    // The O(n) checks as in `core_ops`: amortised, after every worker
    // command the pool takes and at the end.
    harness.set_full_check_amortised(32);
    // Start with a worker or two so submits have somewhere to go.
    let workers = u.int_in_range(0..=2u8).unwrap_or(1);
    for _ in 0..workers {
        if let Err(failure) = harness.add_worker() {
            panic!("adding a first worker: {failure}");
        }
    }
    let added = run_ops(&mut harness, &mut u, MAX_OPS);
    Ok(finish(harness, u64::from(workers) + added))
}

fn pick_u64(u: &mut Unstructured<'_>, default: u64) -> u64 {
    match u.arbitrary::<u8>().unwrap_or(0) % 8 {
        0 => 0,
        1 => 1,
        2 | 3 => default,
        4 => u64::MAX,
        5 => u64::from(u.arbitrary::<u16>().unwrap_or(0)),
        _ => u.arbitrary().unwrap_or(0),
    }
}

fn pick_usize(u: &mut Unstructured<'_>, default: usize) -> usize {
    match pick_u64(u, default as u64) {
        u64::MAX => usize::MAX,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    }
}

fn pick_u32(u: &mut Unstructured<'_>, default: u32) -> u32 {
    match pick_u64(u, default.into()) {
        u64::MAX => u32::MAX,
        n => u32::try_from(n).unwrap_or(n as u32),
    }
}

fn pick_duration(u: &mut Unstructured<'_>, default: Duration) -> Duration {
    match u.arbitrary::<u8>().unwrap_or(0) % 8 {
        0 => Duration::ZERO,
        1 => Duration::from_nanos(1),
        2 | 3 => default,
        4 => Duration::MAX,
        5 => Duration::from_millis(u.arbitrary::<u16>().unwrap_or(0).into()),
        6 => Duration::from_nanos(u.arbitrary().unwrap_or(0)),
        _ => {
            let secs: u64 = u.arbitrary().unwrap_or(0);
            let nanos: u32 = u.arbitrary().unwrap_or(0);
            Duration::new(secs, nanos % 1_000_000_000)
        }
    }
}
