//! foreman-driver: the runtime-neutral driver of the foreman worker pool.
//!
//! [`WorkerPool`] puts `foreman_core::Pool` behind a short-held lock and
//! carries out what it decides; it is written once, on `futures` alone, and
//! each adapter (`foreman-tokio`, …) only supplies a [`Runtime`]: spawn, a
//! timer and a clock.
//!
//! # How a request runs
//! The handler future runs **inside the submitting task**: `submit` parks
//! the request in a per-request slot (the core's payload), locks the core,
//! submits, and carries out the actions it produced. If its own request was
//! started, it runs the handler at once; if it was queued, it waits on its
//! slot. When a finishing request frees a worker and the core starts a
//! parked request, the finishing task runs that handler itself (one poll:
//! a handler that has to wait is handed back to its caller), so a busy
//! worker goes from request to request without a task hop. No channel, no
//! worker task: a worker is a slot in the core, and the core grants it.
//! Probes run as spawned tasks; one timer task per lane sleeps until its
//! core's next deadline. In a pool with [`CircuitBreakerHooks`] each started
//! handler runs as a task of its own instead, so that it makes progress
//! while its caller runs the hooks (see the trait for their order).
//!
//! # Lanes
//! A pool of at least 16 workers under idle-first routing spreads them over
//! one *lane* per CPU ([`WorkerPool::with_lanes`] chooses explicitly): each
//! lane is a whole `foreman_core::Pool` with its own lock, so callers on
//! different threads do not contend. A submit starts at its thread's home
//! lane and offers the request lane by lane (`Pool::offer`), so it is
//! counted once; health and stats are merged in worker order.
//!
//! The locks are never held across an `.await`, nor while a handler, a
//! probe or any hook (`allow_request` included) runs, so `health_snapshot`
//! and `stats` never wait behind a handler, and handlers, probes and hooks
//! may call their own pool.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod handler;
mod pool;
mod runtime;
mod state;

#[cfg(feature = "demo")]
pub mod demo;

pub use handler::{CircuitBreakerHooks, WorkerHandler, WorkerPoolClient};
pub use pool::{BuildError, HealthTransition, Timed, Timings, WorkerPool};
pub use runtime::{AsyncTimer, Runtime};

/// The attribute macro handlers and hooks are written with.
pub use async_trait::async_trait;

pub use foreman_core::{
    Counters, HealthCause, PoolConfig, RoutingPolicy, Stats, WorkerErrorCode, WorkerHealth,
    WorkerHealthStatus, WorkerOperation, WorkerPoolError, WorkerPoolOptions, WorkerProtocolError,
    WorkerRequest, WorkerResponse, WorkerResult, WorkerSecurityPolicy, WorkerStats,
};
