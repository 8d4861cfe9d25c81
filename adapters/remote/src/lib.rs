//! foreman-remote: foreman workers across HTTP.
//!
//! The wire protocol is described in `docs/REMOTE.md`: `POST /v1/requests`
//! carries a `WorkerRequest` as JSON and answers a `WorkerResponse`,
//! `GET /v1/health` answers the worker's health status. This crate has
//! both ends of it: [`server`] puts any foreman pool behind the protocol,
//! [`client`] is a worker handler that calls one endpoint.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod client;
pub mod protocol;
pub mod server;
