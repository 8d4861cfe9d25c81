//! foreman-driver: the runtime-neutral driver of the foreman worker pool.
//!
//! [`WorkerPool`] puts `foreman_core::Pool` behind a short-held lock and
//! carries out what it decides; it is written once, on `futures` alone, and
//! each adapter (`foreman-tokio`, …) only supplies a [`Runtime`]: spawn, a
//! timer and a clock.
//!
//! # How a request runs
//! The handler future runs **inside the submitting task**: `submit` locks
//! the core, calls `submit_with`, and carries out the actions it produced.
//! If its own request was started, it runs the handler at once; if it was
//! queued, it waits on a per-request slot (the core's payload) until a
//! finishing request's completion makes the core start it. No channel hop,
//! no worker task: a worker is a slot in the core, and the core grants it.
//! Actions for other requests (start, abort, answer) go through their slots;
//! probes run as spawned tasks; one timer task sleeps until the core's next
//! deadline.
//!
//! The lock is never held across an `.await`, nor while a handler, a probe
//! or an `on_*` hook runs, so `health_snapshot` and `stats` never wait
//! behind a handler.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod handler;
mod pool;
mod runtime;
mod state;

#[cfg(feature = "demo")]
pub mod demo;

pub use handler::{CircuitBreakerHooks, WorkerHandler, WorkerPoolClient};
pub use pool::{BuildError, HealthTransition, WorkerPool};
pub use runtime::{AsyncTimer, Runtime};

/// The attribute macro handlers and hooks are written with.
pub use async_trait::async_trait;

pub use foreman_core::{
    Counters, HealthCause, PoolConfig, Stats, WorkerErrorCode, WorkerHealth, WorkerHealthStatus,
    WorkerOperation, WorkerPoolError, WorkerPoolOptions, WorkerProtocolError, WorkerRequest,
    WorkerResponse, WorkerResult, WorkerSecurityPolicy, WorkerStats,
};
