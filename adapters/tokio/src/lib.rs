//! foreman-tokio: the foreman worker pool on tokio.
//!
//! The API of `simple-agents-workflow`'s `worker` module — switch by
//! changing `use` lines:
//!
//! ```
//! use std::sync::Arc;
//! use foreman_tokio::{
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
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
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
//! # Ok::<(), foreman_tokio::WorkerPoolError>(())
//! # }).unwrap();
//! ```
//!
//! Every entry point has a runnable example in its own docs: building a
//! pool ([`WorkerPool::new_inprocess`], [`WorkerPool::with_config`] with a
//! [`PoolConfig`] and a [`RoutingPolicy`]), running requests
//! ([`WorkerPool::submit`], [`WorkerPool::submit_timed`]), watching the
//! pool ([`WorkerPool::stats`], [`WorkerPool::health_snapshot`],
//! [`WorkerPool::health_history`]), changing its workers
//! ([`WorkerPool::restart_worker`], with `add_worker` and
//! `remove_worker`), stopping it ([`WorkerPool::shutdown_with_deadline`]),
//! and the traits you implement ([`WorkerHandler`],
//! [`CircuitBreakerHooks`]).
//!
//! Everything but [`TokioRuntime`] lives in `foreman-driver` (shared with
//! the other adapters); every decision is `foreman-core`'s. This crate is
//! only tokio's spawn, timer and clock.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// The reference's API and foreman's additions (`async_trait` included, so
/// handlers and hooks are written as in the reference).
pub use foreman_driver::api::*;

/// The foreman worker pool on tokio (`foreman_driver::WorkerPool` with
/// [`TokioRuntime`]); create it inside a tokio runtime (elsewhere the
/// constructor returns an error saying so).
pub type WorkerPool = foreman_driver::WorkerPool<TokioRuntime>;

/// Tokio's spawn, timer and clock. The clock is `tokio::time::Instant`, so
/// a paused test runtime drives the pool's deadlines and probes too.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioRuntime;

impl Runtime for TokioRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        drop(tokio::spawn(future));
    }

    fn check_context(&self) -> Result<(), String> {
        tokio::runtime::Handle::try_current()
            .map(drop)
            .map_err(|_| {
                "there is no tokio runtime on this thread: create the pool inside \
             a tokio runtime (in async code, or after `Runtime::enter`)"
                    .to_string()
            })
    }

    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
        Box::pin(TokioTimer(Box::pin(tokio::time::sleep_until(
            deadline.into(),
        ))))
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn yield_now(&self) -> impl Future<Output = ()> + Send {
        tokio::task::yield_now()
    }
}

/// A `tokio::time::Sleep` as an [`AsyncTimer`].
#[derive(Debug)]
struct TokioTimer(Pin<Box<tokio::time::Sleep>>);

impl AsyncTimer for TokioTimer {
    fn reset(mut self: Pin<&mut Self>, deadline: Instant) {
        self.0.as_mut().reset(deadline.into());
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}
