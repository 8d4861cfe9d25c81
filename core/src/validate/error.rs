//! [`RequestError`]: why a request was refused before it reached any
//! worker.

use thiserror::Error;

use crate::protocol::WorkerPoolError;

/// Why a request was refused before it reached any worker.
///
/// Every message names the offending field and the limit it broke, so the
/// caller can fix the request (or the policy).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RequestError {
    /// An identifier was longer than the policy allows.
    #[error(
        "{field} is {len} bytes long, over the limit of {max} bytes \
         (security_policy.max_identifier_length): shorten it"
    )]
    IdentifierTooLong {
        /// The offending field: `request_id`, `workflow_name` or `node_id`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The policy's limit in bytes.
        max: usize,
    },
    /// `timeout_ms` was above the policy's ceiling.
    #[error(
        "timeout_ms {timeout_ms} exceeds max {max_ms} \
         (security_policy.max_request_timeout_ms): ask for at most {max_ms} ms"
    )]
    TimeoutTooLong {
        /// The requested timeout in milliseconds.
        timeout_ms: u64,
        /// The policy's ceiling in milliseconds.
        max_ms: u64,
    },
    /// The request, serialised as compact JSON, was larger than the policy
    /// allows. The actual size is not reported: computing it would cost as
    /// much as the payload is large, which is what the check guards against.
    #[error(
        "request payload exceeds max {max} bytes when serialized as JSON \
         (security_policy.max_request_payload_bytes): shrink the prompt or inputs"
    )]
    PayloadTooLarge {
        /// The policy's limit in bytes.
        max: usize,
    },
    /// A JSON value of the request nested arrays and objects deeper than
    /// allowed (see the [module docs](crate::validate) for how depth is counted).
    #[error(
        "{field} nesting depth exceeds max {max} levels of arrays and objects \
         (PoolConfig::max_request_depth): flatten it"
    )]
    NestedTooDeep {
        /// The offending field: `operation.input` or `operation.scoped_input`.
        field: &'static str,
        /// The limit, in levels.
        max: usize,
    },
}

impl From<RequestError> for WorkerPoolError {
    fn from(err: RequestError) -> Self {
        WorkerPoolError::InvalidRequest {
            reason: err.to_string(),
        }
    }
}
