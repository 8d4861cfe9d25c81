//! foreman-remote: foreman workers across HTTP.
//!
//! The wire protocol is described in `docs/REMOTE.md`: `POST /v1/requests`
//! carries a `WorkerRequest` as JSON and answers a `WorkerResponse`,
//! `GET /v1/health` answers the worker's health status. This crate has
//! both ends of it: [`Server`] puts any foreman pool behind the protocol
//! (HTTP/1.1 and HTTP/2 on one port), [`RemoteWorker`] is a worker handler
//! that calls one endpoint, so a foreman pool of `RemoteWorker`s balances
//! a fleet of worker processes.
//!
//! ```no_run
//! use std::sync::Arc;
//! use foreman_remote::{RemoteOptions, RemoteWorker, Server, ServerOptions};
//! use foreman_tokio::{handler_fn, WorkerHandler, WorkerPool, WorkerPoolOptions};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // A worker process: a pool behind the protocol.
//! let echo = handler_fn(|request| async move { Ok(serde_json::json!(request.node_id)) });
//! let pool = WorkerPool::new_inprocess(vec![Arc::new(echo)], WorkerPoolOptions::default(), None)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let endpoint = format!("http://{}", listener.local_addr()?);
//! let server = Server::new(Arc::new(pool), ServerOptions::default());
//! tokio::spawn(async move { server.serve(listener, std::future::pending()).await });
//!
//! // A frontend: a pool whose worker calls that process.
//! let remote: Arc<dyn WorkerHandler> = Arc::new(RemoteWorker::new(&endpoint, RemoteOptions::default())?);
//! let frontend = WorkerPool::new_inprocess(vec![remote], WorkerPoolOptions::default(), None)?;
//! # let _ = frontend;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod client;
pub mod discovery;
pub mod protocol;
pub mod server;

pub use client::{RemoteError, RemoteOptions, RemoteWorker};
pub use discovery::{Discovery, DiscoveryHandle, DiscoveryStats};
pub use server::{ServeError, ServeReport, Server, ServerOptions};

/// Serves `pool` on `listener` until `shutdown` resolves, then drains
/// (see [`Server::serve`]); a shorthand for
/// `Server::new(pool, options).serve(listener, shutdown)`.
///
/// # Errors
/// [`ServeError::Listener`] if the listener has no local address.
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    pool: std::sync::Arc<dyn foreman_driver::WorkerPoolClient>,
    options: ServerOptions,
    shutdown: F,
) -> Result<ServeReport, ServeError>
where
    F: std::future::Future<Output = ()> + Send,
{
    Server::new(pool, options).serve(listener, shutdown).await
}
