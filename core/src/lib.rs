//! foreman-core: the sans-IO heart of the foreman worker pool.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod config;
pub mod protocol;
pub mod validate;

pub use config::{ConfigError, PoolConfig, RoutingPolicy, WorkerPoolOptions, WorkerSecurityPolicy};
pub use protocol::{
    WorkerErrorCode, WorkerHealth, WorkerHealthStatus, WorkerOperation, WorkerPoolError,
    WorkerProtocolError, WorkerRequest, WorkerResponse, WorkerResult,
};
