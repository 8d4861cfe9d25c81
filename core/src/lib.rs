//! foreman-core: the sans-IO heart of the foreman worker pool.
//!
//! [`Pool`] makes every decision of a worker pool for agent workflows —
//! validation, admission and backpressure, routing, health, deadlines,
//! probes, restarts, removal and drain — from explicit inputs and a time
//! parameter, and says what to do through outputs. It performs no I/O, reads
//! no clock, spawns no thread and owns no global state, so the same core runs
//! under tokio, async-std, smol, a deterministic simulator or a plain loop.
//! Its contract (inputs, outputs, the drain rule, the time rule) is written
//! once, on [`Pool`].
//!
//! The wire types ([`WorkerRequest`], [`WorkerResponse`], …) serialise exactly
//! like `simple-agents-workflow` 0.2.34's `worker` module.
//!
//! # What a program calls, and what only a driver needs
//!
//! Every program feeding a [`Pool`] calls the inputs, outputs and queries of
//! its contract. What only a driver needs is kept apart: the
//! [`lanes`] rules with [`Pool::offer`], [`Pool::idle_workers`] and
//! [`Pool::eligible_workers`] (a driver with several pools),
//! [`Pool::move_timer`] (a driver with one timer) and
//! [`Pool::check_invariants`] (tests, simulators, fuzzers), documented
//! together as "the driver's interface" on [`Pool`]'s page.
//!
//! # A tiny blocking driver
//!
//! A driver feeds inputs, carries out [`Action`]s in order, and wakes the
//! core at [`Pool::poll_timeout`]. Here the "workers" answer instantly and
//! time is a counter:
//!
//! ```
//! use foreman_core::{Action, Pool, PoolConfig, Time, WorkerOperation, WorkerRequest};
//! use serde_json::json;
//!
//! let mut now = Time::ZERO;
//! let mut pool: Pool<String> = Pool::new(PoolConfig::default(), now)?;
//! pool.add_worker(now)?;
//! pool.add_worker(now)?;
//!
//! let request = WorkerRequest {
//!     request_id: "req-1".into(),
//!     workflow_name: "demo".into(),
//!     node_id: "node-1".into(),
//!     timeout_ms: Some(1_000),
//!     operation: WorkerOperation::Tool {
//!         tool: "echo".into(),
//!         input: json!({"x": 1}),
//!         scoped_input: json!({}),
//!     },
//! };
//! // The payload travels with the request; a driver usually puts the
//! // caller's reply channel in it.
//! let key = pool.submit(now, &request, "reply to caller 1".to_string())
//!     .map_err(|refused| refused.error)?;
//!
//! let mut answers = Vec::new();
//! loop {
//!     while let Some(action) = pool.poll_action() {
//!         match action {
//!             // Run the handler; here it echoes at once.
//!             Action::Start { request, .. } => {
//!                 now = Time::from_millis(5);
//!                 pool.handle_completion(now, request, Ok(json!({"echo": 1})));
//!             }
//!             Action::RunProbe { worker, probe } => {
//!                 pool.handle_probe_result(now, worker, probe, foreman_core::WorkerHealthStatus::Healthy);
//!             }
//!             Action::Answer(answer) => answers.push(answer),
//!             _ => {}
//!         }
//!     }
//!     while let Some(_event) = pool.poll_event() {}
//!     if !answers.is_empty() {
//!         break;
//!     }
//!     // Sleep until the core's next deadline, then tell it the time.
//!     let Some((at, _reason)) = pool.poll_timeout() else { break };
//!     now = at;
//!     pool.handle_timeout(now);
//! }
//!
//! assert_eq!(answers.len(), 1);
//! assert_eq!(answers[0].request, key);
//! assert_eq!(answers[0].result, Ok(json!({"echo": 1})));
//! assert_eq!(answers[0].ran_for, Some(std::time::Duration::from_millis(5)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod config;
mod deadlines;
mod dismantle;
mod health;
mod hedging;
mod index_set;
mod keys;
pub mod lanes;
mod options;
mod output;
mod pool;
pub mod protocol;
pub mod recovery;
mod retries;
mod rng;
mod routing;
mod slab;
mod stats;
mod time;
mod timers;
pub mod validate;

pub use config::{
    Admission, ConfigError, PoolConfig, RoutingPolicy, WorkerPoolOptions, WorkerSecurityPolicy,
    DEFAULT_DEGRADED_SHARE_PERCENT, DEFAULT_EWMA_DECAY, DEFAULT_UNSAMPLED_LATENCY,
};
pub use deadlines::{LimitedRequest, PhaseLimits, TimeoutLimit};
pub use dismantle::{dismantle, dismantle_request};
pub use health::HealthCause;
pub use hedging::{HedgeDelay, HedgePolicy};
pub use keys::{ProbeKey, RequestKey, WorkerKey};
pub use output::{Action, Answer, Event, Phase};
pub use pool::admission::Refused;
pub use pool::invariants::InvariantViolation;
pub use pool::lane_moves::Released;
pub use pool::vetting::{Revetted, Vetted, Vetting};
pub use pool::workers::{CommandError, WorkerSpec, MAX_WORKER_ID_LEN};
pub use pool::Pool;
pub use protocol::{
    WorkerErrorCode, WorkerHealth, WorkerHealthStatus, WorkerOperation, WorkerPoolError,
    WorkerProtocolError, WorkerRequest, WorkerResponse, WorkerResult,
};
pub use recovery::{FailureClasses, OutlierDetection, PanicMode, RecoveryPolicy, RecoveryState};
pub use retries::{RetryBudget, RetryPolicy};
pub use rng::Rng;
pub use stats::{Counters, Stats, WorkerStats};
pub use time::Time;
pub use timers::TimeoutReason;
pub use validate::{
    check_request, serialized_size_within, validate_request, RequestError, RequestLimits,
    DEFAULT_MAX_REQUEST_DEPTH,
};
