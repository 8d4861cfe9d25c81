//! foreman-async-std: the foreman worker pool on async-std.
//!
//! **async-std is discontinued upstream** (1.13 is its last release; its
//! maintainers send users to smol). This crate exists for code that already
//! runs on async-std; new code should use `foreman-smol`, which has the same
//! API and runs on the same parts (async-io's reactor and timers,
//! async-executor).
//!
//! The API of `simple-agents-workflow`'s `worker` module, identical to
//! `foreman-tokio`'s — switch by changing `use` lines:
//!
//! ```
//! use std::sync::Arc;
//! use foreman_async_std::{
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
//! # async_std::task::block_on(async {
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
//! # Ok::<(), foreman_async_std::WorkerPoolError>(())
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
//! Everything but [`AsyncStdRuntime`] lives in `foreman-driver` (shared with
//! the other adapters); every decision is `foreman-core`'s. This crate is
//! only async-std's spawn, timer and clock.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

/// The reference's API and foreman's additions (`async_trait` included, so
/// handlers and hooks are written as in the reference).
pub use foreman_driver::api::*;

/// The foreman worker pool on async-std (`foreman_driver::WorkerPool` with
/// [`AsyncStdRuntime`]); it may be created from any thread.
pub type WorkerPool = foreman_driver::WorkerPool<AsyncStdRuntime>;

/// async-std's spawn (its global executor), timer (`async_io::Timer`, the
/// timer behind `async_std::task::sleep`) and clock (`std::time::Instant`;
/// async-std has no virtual time).
#[derive(Debug, Clone, Copy, Default)]
pub struct AsyncStdRuntime;

impl Runtime for AsyncStdRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        // Dropping a `JoinHandle` detaches the task.
        drop(async_std::task::spawn(future));
    }

    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
        Box::pin(foreman_driver::IoTimer::at(deadline))
    }

    fn now(&self) -> Instant {
        Instant::now()
    }
}
