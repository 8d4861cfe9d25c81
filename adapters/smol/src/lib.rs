//! foreman-smol: the foreman worker pool on smol.
//!
//! The API of `simple-agents-workflow`'s `worker` module, identical to
//! `foreman-tokio`'s — switch by changing `use` lines:
//!
//! ```
//! use std::sync::Arc;
//! use foreman_smol::{
//!     async_trait, WorkerHandler, WorkerOperation, WorkerPool, WorkerPoolOptions,
//!     WorkerProtocolError, WorkerRequest,
//! };
//! use serde_json::{json, Value};
//!
//! struct Echo;
//!
//! #[async_trait]
//! impl WorkerHandler for Echo {
//!     async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
//!         Ok(json!({ "node": request.node_id }))
//!     }
//! }
//!
//! # smol::block_on(async {
//! let pool = WorkerPool::new_inprocess(vec![Arc::new(Echo)], WorkerPoolOptions::default(), None)?;
//! let response = pool
//!     .submit(WorkerRequest {
//!         request_id: "req-1".into(),
//!         workflow_name: "demo".into(),
//!         node_id: "node-1".into(),
//!         timeout_ms: None,
//!         operation: WorkerOperation::Tool {
//!             tool: "echo".into(),
//!             input: json!({}),
//!             scoped_input: json!({}),
//!         },
//!     })
//!     .await?;
//! assert_eq!(response.worker_id, "worker-0");
//! pool.shutdown().await;
//! # Ok::<(), foreman_smol::WorkerPoolError>(())
//! # }).unwrap();
//! ```
//!
//! Every entry point has a runnable example in its own docs, written for
//! foreman-tokio (the same code runs here with this crate's `use` lines and
//! runtime): building a pool ([`WorkerPool::new_inprocess`],
//! [`WorkerPool::with_config`] with a [`PoolConfig`] and a
//! [`RoutingPolicy`]), running requests
//! ([`WorkerPool::submit`], [`WorkerPool::submit_timed`]), watching the
//! pool ([`WorkerPool::stats`], [`WorkerPool::health_snapshot`],
//! [`WorkerPool::health_history`]), changing its workers
//! ([`WorkerPool::restart_worker`], with `add_worker` and
//! `remove_worker`), stopping it ([`WorkerPool::shutdown_with_deadline`]),
//! and the traits you implement ([`WorkerHandler`],
//! [`CircuitBreakerHooks`]).
//!
//! The pool's tasks (each worker's task, which runs its handlers, the
//! timer task and the health probes) go to smol's global executor
//! (`smol::spawn`; its thread count is `SMOL_THREADS`, default 1, so by
//! default every handler shares one thread). Under
//! [`ExecutionMode::CallerTask`] handlers run in the tasks that call
//! `submit` instead, on whatever executor those run.
//!
//! Everything but [`SmolRuntime`] lives in `foreman-driver` (shared with
//! the other adapters); every decision is `foreman-core`'s. This crate is
//! only smol's spawn, timer and clock.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

/// The reference's API and foreman's additions (`async_trait` included, so
/// handlers and hooks are written as in the reference).
pub use foreman_driver::api::*;

/// The foreman worker pool on smol (`foreman_driver::WorkerPool` with
/// [`SmolRuntime`]); it may be created from any thread.
pub type WorkerPool = foreman_driver::WorkerPool<SmolRuntime>;

/// smol's spawn (the global executor), timer (`smol::Timer`) and clock
/// (`std::time::Instant`; smol has no virtual time).
#[derive(Debug, Clone, Copy, Default)]
pub struct SmolRuntime;

impl Runtime for SmolRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        smol::spawn(future).detach();
    }

    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
        Box::pin(foreman_driver::IoTimer::at(deadline))
    }

    fn now(&self) -> Instant {
        Instant::now()
    }
}
