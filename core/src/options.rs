//! The reference's options, field for field: how the pool schedules and
//! probes ([`WorkerPoolOptions`]) and the limits every request must respect
//! ([`WorkerSecurityPolicy`]). [`PoolConfig`](crate::PoolConfig) wraps them
//! with foreman's own tuning.

use std::time::Duration;

/// Scheduling and lifecycle options, field for field the reference's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerPoolOptions {
    /// How many requests may wait in each worker's queue (not counting the
    /// ones it is running). Must be at least 1.
    pub queue_capacity: usize,
    /// Time between two health probes of a worker. Must be non-zero.
    pub health_probe_interval: Duration,
    /// Consecutive failures that make a worker unavailable (0 acts as 1).
    pub unavailable_after_failures: u32,
    /// Time budget of a request that sets no `timeout_ms`; `None` means no
    /// budget. It is not bounded by the security policy's maximum, which
    /// limits only what a request asks for; zero times such requests out at
    /// once.
    pub default_request_timeout: Option<Duration>,
    /// Limits every request must respect.
    pub security_policy: WorkerSecurityPolicy,
}

impl Default for WorkerPoolOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 64,
            health_probe_interval: Duration::from_secs(5),
            unavailable_after_failures: 3,
            default_request_timeout: Some(Duration::from_secs(30)),
            security_policy: WorkerSecurityPolicy::default(),
        }
    }
}

/// Limits that protect the pool from oversized or abusive requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSecurityPolicy {
    /// Largest `timeout_ms` a request may ask for.
    pub max_request_timeout_ms: u64,
    /// Largest serialised size of a request, in bytes.
    pub max_request_payload_bytes: usize,
    /// Longest `request_id`, `workflow_name` or `node_id`, in bytes.
    pub max_identifier_length: usize,
}

impl Default for WorkerSecurityPolicy {
    fn default() -> Self {
        Self {
            max_request_timeout_ms: 120_000,
            max_request_payload_bytes: 256 * 1024,
            max_identifier_length: 128,
        }
    }
}
