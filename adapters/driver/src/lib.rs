//! foreman-driver: the runtime-neutral driver of the foreman worker pool.
//!
//! [`WorkerPool`] puts `foreman_core::Pool` behind a short-held lock and
//! carries out what it decides; it is written once, on `futures` alone, and
//! each adapter (`foreman-tokio`, `foreman-smol`, `foreman-async-std`) only
//! supplies a [`Runtime`]: spawn, a timer and a clock. Applications use an
//! adapter, whose `WorkerPool` is this type on its runtime and which
//! re-exports everything below ([`api`]).
//!
//! # Where to start
//! The driver has no runtime of its own, so every example here runs on
//! foreman-tokio; the same code runs on the other adapters with their
//! `use` lines.
//!
//! | to | see |
//! |---|---|
//! | write the code a worker runs | [`WorkerHandler`] |
//! | build a pool from the reference's options | [`WorkerPool::new_inprocess`] |
//! | choose the routing policy, requests per worker, probe timeout | [`WorkerPool::with_config`] with a [`PoolConfig`] |
//! | run a request | [`WorkerPool::submit`]; with queue and run times, [`WorkerPool::submit_timed`] |
//! | watch the pool | [`WorkerPool::stats`], [`WorkerPool::health_snapshot`], [`WorkerPool::health_history`] |
//! | change the workers | [`WorkerPool::add_worker`], [`WorkerPool::restart_worker`], [`WorkerPool::remove_worker`] |
//! | stop | [`WorkerPool::shutdown`], [`WorkerPool::shutdown_with_deadline`] |
//! | veto workers, hear of every outcome | [`CircuitBreakerHooks`] |
//! | run callers' handlers in their own tasks, split the lock | [`DriverOptions`], [`WorkerPool::with_driver_options`], [`WorkerPool::with_lanes`] |
//! | write code that takes any pool | [`WorkerPoolClient`] |
//! | put the pool on another runtime | [`Runtime`] |
//!
//! # How a request runs
//! By default ([`ExecutionMode::PoolTasks`]) every worker has a task on the
//! pool's runtime: `submit` parks the request in a per-request slot (the
//! core's payload), locks the core, submits, and, if the core started it,
//! puts it into its worker's inbox; the worker's task runs the handler and
//! feeds the completion back to the core, running the next request the core
//! starts on that worker without a wake-up. The caller waits on its slot
//! for the answer. So a handler progresses whether or not its caller polls,
//! always runs in the pool's runtime context, and never waits for another
//! caller. Dropping the `submit` future cancels the request wherever it is
//! (its handler future is dropped by its worker's task); deadlines abort
//! the same way.
//!
//! [`ExecutionMode::CallerTask`] (chosen with
//! [`DriverOptions::execution`] and [`WorkerPool::with_driver_options`])
//! runs each handler inside the submitting task instead: no task hop, the
//! lowest latency for a lone caller, but a handler progresses only while
//! its caller polls and runs in the caller's runtime context (see the
//! variant's docs). A pool with [`CircuitBreakerHooks`] runs handlers on
//! worker tasks in either mode, so a handler runs while its caller runs
//! the hooks (see the trait for their order).
//!
//! Probes run as spawned tasks; one timer task per lane sleeps until its
//! core's next deadline. `shutdown` returns once every handler future and
//! probe has ended (each is counted by a guard whose drop is the only
//! decrement).
//!
//! # Lanes
//! A pool has one lane (one `foreman_core::Pool` behind one lock), so late
//! binding spans every worker. [`WorkerPool::with_lanes`] spreads the
//! workers over several lanes, each with its own lock, so callers on
//! different threads do not contend; a submit starts at its thread's home
//! lane and offers the request lane by lane (`Pool::offer`), so it is
//! counted once; health and stats are merged in worker order. A queued
//! request then waits for a worker of its own lane.
//!
//! The locks are never held across an `.await`, nor while a handler, a
//! probe or any hook (`allow_request` included) runs, so `health_snapshot`
//! and `stats` never wait behind a handler, and handlers, probes and hooks
//! may call their own pool.
//!
//! # Settings files
//! With the `config` feature, `PoolSettings` reads every option above from
//! a TOML or JSON file (durations written as `"30s"`), checks it with
//! `PoolConfig::validate` and names the key of a bad value;
//! `WorkerPool::from_settings` builds the pool from it.
//!
//! # Handlers without a trait impl, and tower
//! A handler is anything implementing [`WorkerHandler`] (written with
//! [`macro@async_trait`]), or a closure: [`handler_fn`] makes one of an
//! `async` closure, with an optional probe closure
//! ([`HandlerFn::with_probe`]).
//!
//! With the feature `tower` (forwarded by each adapter's feature of the
//! same name) the pool and tower meet both ways:
//! - `WorkerPool::service` returns a `PoolService`, a cloneable
//!   `tower::Service<WorkerRequest>` (so is the pool itself), for tower
//!   middleware in front of the pool; its `poll_ready` is Ready while the
//!   pool would admit a request and Pending, woken when room frees, while
//!   it would not (admission is still decided at `call`: see
//!   `PoolService`);
//! - `ServiceHandler` makes any `tower::Service<WorkerRequest>` answering
//!   JSON a worker handler.
//!
//! # Observability
//! [`WorkerPool::stats`] (counters by outcome and refusal reason, queue
//! depths, per-worker state) and [`WorkerPool::health_history`] are always
//! there. Two cargo features (off by default; the adapter crates forward
//! them under the same names) report through the ecosystem's facades. They
//! emit what the core's outputs say (its answers, refusals, `Start`s,
//! moves and health transitions with their [`HealthCause`]), never from
//! under a foreman lock: a subscriber or a recorder is user code, so what
//! the core reports under a lane's lock is told once the lock is released.
//!
//! **`tracing`**: each request gets a span `request` (target `foreman`,
//! level `INFO`) with the fields `request_id`, `workflow`, `node`, and
//! `worker` and `attempt` recorded each time a handler run of the request
//! starts (`attempt` is 1 for the first run, then 2, 3, … for a run again
//! after its handler declined it with [`refuse_not_started`], a retry or a
//! hedge, numbered in the order the runs start). Every run's future runs
//! inside the span, whichever task polls it, so a handler's own spans and
//! events nest under it. Events of the span: a refusal (`debug`, field `reason`, as the
//! metric's label below), a circuit breaker's veto (`debug`, `worker`), a
//! handler's failure (`debug`), a timeout while queued (`debug`, `phase`)
//! or while running (`warn`, `phase`, `worker`), a cancellation by the
//! caller (`debug`, `phase`), an abort by a restart (`info`, `worker`) or
//! by the shutdown's drain deadline (`info`, `phase`), and a request
//! answered `Unavailable` because its removed worker could hand it to
//! nobody (`info`, `worker`). Events outside request spans: every health
//! transition (fields `worker`, `from`, `to`, `cause`; `warn` when the
//! worker got worse on evidence: failures, timeouts, probes; `info` when
//! it became Healthy or was restarted, removed or stopped by shutdown) and
//! every queued request moved
//! to another worker (`debug`; `request` (the core's request key),
//! `from`, `to`). Everything goes through tracing's macros, which ask the
//! subscriber's interest before formatting anything. Whether a request is
//! traced at all is read once, when it is submitted, from tracing's global
//! maximum level: with no subscriber (none set globally, none in scope
//! with `tracing::subscriber::with_default`) the request has no span, and
//! none of its events or span records is even considered. A subscriber set
//! later sees the requests submitted after it; those already in flight
//! keep running without span or events.
//!
//! **`metrics`**: the pool registers the metrics below with the recorder
//! in effect when it is built (a worker's gauges: when the worker is
//! added), so install the recorder first (or build the pool inside
//! `metrics::with_local_recorder`); emitting is then a call on a
//! registered handle, with no key built and no label allocated.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `foreman_requests_accepted_total` | counter | — | requests accepted (each is then counted once more, as succeeded, failed, timed out, cancelled or aborted) |
//! | `foreman_requests_refused_total` | counter | `reason`: `invalid_request`, `queue_full`, `no_healthy_worker`, `circuit_open`, `shutting_down`, `timeout` (a zero time budget) | submits refused |
//! | `foreman_requests_succeeded_total` | counter | — | answered with the handler's output |
//! | `foreman_requests_failed_total` | counter | — | answered with the handler's error or panic |
//! | `foreman_requests_retried_total` | counter | — | failed attempts that ran again on another worker (a [`RetryPolicy`]); not answers |
//! | `foreman_requests_hedged_total` | counter | — | second attempts of running requests on another worker (a [`HedgePolicy`]); not answers |
//! | `foreman_requests_moved_total` | counter | — | queued requests one lane released and a lane adopted (late binding across [`WorkerPool::with_lanes`] lanes; rarely the releasing lane itself, when no other had room); not acceptances, not answers |
//! | `foreman_requests_timed_out_total` | counter | `phase`: `queued`, `running` | the time budget ran out |
//! | `foreman_requests_cancelled_total` | counter | — | the caller dropped its `submit` future |
//! | `foreman_requests_aborted_total` | counter | `cause`: `restart`, `shutdown` (the drain deadline), `worker_removed` (no other worker could take it) | aborted by the pool |
//! | `foreman_request_queue_seconds` | histogram | — | from acceptance to start, or to the answer for a request that never started; one sample per answer |
//! | `foreman_request_run_seconds` | histogram | — | how long a started request's handler ran, until its answer or abort |
//! | `foreman_worker_queued` | gauge | `worker` | requests waiting in the worker's queue (as in [`Stats`]) |
//! | `foreman_worker_in_flight` | gauge | `worker` | requests the worker is running |
//! | `foreman_workers` | gauge | `state`: `healthy`, `degraded`, `unavailable` | workers by health status, as the core's health machine has it (a removed or stopped worker leaves) |
//!
//! The gauges move by increments, so several pools on one recorder add up.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod answer;
mod closure;
mod commands;
mod cooperate;
mod deadline;
mod handler;
mod live;
mod meter;
mod names;
mod notes;
mod outcome;
mod pool;
mod refusal;
mod runtime;
#[cfg(feature = "tower")]
mod service;
mod shared;
mod slot;
mod started;
mod state;
mod submit;
mod sync;
mod tasks;
mod trace;
mod types;
mod view;
mod wait;
mod wakers;
mod worker;

#[cfg(feature = "async-io")]
mod io_timer;
#[cfg(feature = "config")]
mod settings;

#[cfg(feature = "async-io")]
pub use io_timer::IoTimer;
#[cfg(feature = "config")]
pub use settings::HedgeSettings;
#[cfg(feature = "config")]
pub use settings::{
    ConfigFileError, DriverSettings, PoolSettings, RecoveryName, RecoverySettings,
    RetryBudgetSettings, RetrySettings, SecurityPolicySettings,
};

pub use closure::{handler_fn, HandlerFn, HealthyProbe};
pub use deadline::handler_deadline;
pub use handler::{CircuitBreakerHooks, WorkerHandler, WorkerPoolClient};
pub use pool::WorkerPool;
pub use refusal::refuse_not_started;
pub use runtime::{AsyncTimer, Runtime};
#[cfg(feature = "tower")]
pub use service::{PoolService, PoolServiceFuture, ServiceHandler};
pub use types::{BuildError, DriverOptions, HealthTransition, HookRole, Timed, Timings};
pub use worker::ExecutionMode;

/// The attribute macro handlers and hooks are written with.
pub use async_trait::async_trait;

pub use foreman_core::{CommandError, WorkerSpec};
pub use foreman_core::{
    ConfigError, Counters, HealthCause, LimitedRequest, PhaseLimits, PoolConfig, RetryBudget,
    RetryPolicy, RoutingPolicy, Stats, TimeoutLimit, WorkerErrorCode, WorkerHealth,
    WorkerHealthStatus, WorkerOperation, WorkerPoolError, WorkerPoolOptions, WorkerProtocolError,
    WorkerRequest, WorkerResponse, WorkerResult, WorkerSecurityPolicy, WorkerStats,
};
pub use foreman_core::{FailureClasses, OutlierDetection, PanicMode, RecoveryPolicy};
pub use foreman_core::{HedgeDelay, HedgePolicy};

/// What every adapter crate re-exports (`pub use foreman_driver::api::*`):
/// the reference's API, foreman's additions, and what a [`Runtime`] is
/// built from. An adapter adds only its runtime type and its `WorkerPool`
/// alias.
pub mod api {
    pub use crate::{
        async_trait, AsyncTimer, BuildError, CircuitBreakerHooks, ConfigError, Counters,
        DriverOptions, ExecutionMode, HealthCause, HealthTransition, PoolConfig, RetryBudget,
        RetryPolicy, RoutingPolicy, Runtime, Stats, Timed, Timings, WorkerErrorCode, WorkerHandler,
        WorkerHealth, WorkerHealthStatus, WorkerOperation, WorkerPoolClient, WorkerPoolError,
        WorkerPoolOptions, WorkerProtocolError, WorkerRequest, WorkerResponse, WorkerResult,
        WorkerSecurityPolicy, WorkerStats,
    };
    pub use crate::{HedgeDelay, HedgePolicy};

    /// A handler's "refused, not started" answer.
    pub use crate::refuse_not_started;

    /// The deadline of the request whose handler is being polled.
    pub use crate::handler_deadline;

    /// Deadlines by phase: a request's queue-wait and run limits.
    pub use crate::{LimitedRequest, PhaseLimits, TimeoutLimit};

    /// What a pool's hooks are: a circuit breaker, or observers.
    pub use crate::HookRole;

    pub use crate::{handler_fn, HandlerFn, HealthyProbe};

    /// The recovery policy's options.
    pub use crate::{FailureClasses, OutlierDetection, PanicMode, RecoveryPolicy};

    /// Workers added by id with their own run limits, and why one is refused.
    pub use crate::{CommandError, WorkerSpec};

    #[cfg(feature = "config")]
    pub use crate::HedgeSettings;
    /// Settings files (the `config` feature).
    #[cfg(feature = "config")]
    pub use crate::{
        ConfigFileError, DriverSettings, PoolSettings, RecoveryName, RecoverySettings,
        RetryBudgetSettings, RetrySettings, SecurityPolicySettings,
    };

    #[cfg(feature = "tower")]
    pub use crate::{PoolService, PoolServiceFuture, ServiceHandler};
}
