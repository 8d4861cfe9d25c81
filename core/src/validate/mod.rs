//! Request validation: the security policy's checks and foreman's nesting
//! limit, at a cost bounded by the limits rather than by the request.
//!
//! [`validate_request`] applies the reference's checks (identifier lengths,
//! timeout ceiling, serialised payload size), in the reference's order and
//! with its outcome for every request, plus foreman's own limit on nesting:
//! a JSON value nested deeper than [`RequestLimits::max_depth`] is refused.
//! The payload check never builds the JSON: one walk adds up what
//! `serde_json` would write, measures how deep each value nests, and stops
//! as soon as either passes its limit, so refusing a 100 MB payload or a
//! value nested a million levels deep costs no more than accepting one at
//! the limits.
//!
//! This file holds the checks a caller runs; the parts they are made of
//! live beside it: `fields.rs` (identifier lengths, the timeout ceiling),
//! `walk.rs` (the size and depth walk), `escape.rs` (the string-escape
//! scan) and `error.rs` ([`RequestError`]).
//!
//! # Nesting depth
//!
//! A value's nesting depth is the number of arrays and objects on the
//! deepest path from it down, itself included: a string, number, boolean or
//! `null` has depth 0, `[]` and `{}` have depth 1, `{"a":[1]}` has depth 2.
//! Each JSON value of a request (`operation.input`, `operation.scoped_input`)
//! is measured on its own, without the request's and the operation's own
//! objects around it.

mod error;
mod escape;
mod fields;
#[cfg(test)]
pub(crate) mod test_requests;
#[cfg(test)]
mod tests;
mod walk;

use crate::options::WorkerSecurityPolicy;
use crate::protocol::WorkerRequest;
pub use error::RequestError;
use fields::check_fields;
use walk::{add_request, Budget};

/// The default of [`RequestLimits::max_depth`] and
/// [`PoolConfig::max_request_depth`](crate::PoolConfig::max_request_depth):
/// serde_json's recursion limit, so no request serde_json parsed from JSON
/// text (where a request's values sit two objects deep) is refused for its
/// depth.
pub const DEFAULT_MAX_REQUEST_DEPTH: usize = 128;

/// What a request is checked against: the reference's security policy and
/// foreman's limit on how deep its JSON values nest.
///
/// [`PoolConfig::request_limits`](crate::PoolConfig::request_limits) gives a
/// pool's; [`RequestLimits::new`] pairs a policy with the default depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits<'a> {
    /// Identifier lengths, timeout ceiling and payload size.
    pub policy: &'a WorkerSecurityPolicy,
    /// The deepest nesting (see the [module docs](self)) allowed in each of
    /// a request's JSON values.
    pub max_depth: usize,
}

impl<'a> RequestLimits<'a> {
    /// `policy`, with the default depth limit
    /// ([`DEFAULT_MAX_REQUEST_DEPTH`]).
    #[must_use]
    pub fn new(policy: &'a WorkerSecurityPolicy) -> Self {
        Self {
            policy,
            max_depth: DEFAULT_MAX_REQUEST_DEPTH,
        }
    }
}

/// Checks a request against `limits` and returns its exact serialised size
/// in bytes.
///
/// The checks run in this order, and the first failure is reported:
/// `request_id`, `workflow_name`, `node_id` (each at most
/// `max_identifier_length` bytes; empty is allowed, as in the reference);
/// `timeout_ms` (if set: at most `max_request_timeout_ms`; zero passes and
/// the pool answers it `Timeout` on arrival); then one walk of the request in
/// serialisation order, which checks both that the request serialised as
/// compact JSON does not exceed `max_request_payload_bytes` and that no value
/// nests deeper than `max_depth`, and reports whichever limit it passes
/// first.
///
/// The walk costs O(`max_request_payload_bytes`) at most, whatever the size
/// or depth of the request: a string longer than what is left of the budget
/// is refused without being scanned, every level costs budget, and values
/// nested more than a few levels deep are walked without recursion, so no
/// nesting depth can overflow the stack.
///
/// # Errors
///
/// Returns the [`RequestError`] of the first check that fails.
pub fn validate_request(
    request: &WorkerRequest,
    limits: RequestLimits<'_>,
) -> Result<usize, RequestError> {
    check_fields(request, limits.policy)?;
    Budget::new(limits.policy.max_request_payload_bytes, limits.max_depth).walk(request)
}

/// Runs the checks of [`validate_request`], with the same result, but
/// without computing the exact serialised size when a cheaper bound shows
/// that the request fits.
///
/// The bound counts every string byte as if it needed the longest escape
/// (`\u00XX`); only a request whose bound passes the limit has its strings
/// scanned. The bounding walk checks the nesting depth as it goes and stops
/// where its bound passes the size limit, so a request costs at most that
/// part of it plus one exact walk (also one that is refused: the exact walk
/// stops at the limits too). What
/// [`PoolConfig::admit`](crate::PoolConfig::admit) runs.
///
/// # Errors
///
/// Returns the [`RequestError`] of the first check that fails, exactly as
/// [`validate_request`] does.
pub fn check_request(
    request: &WorkerRequest,
    limits: RequestLimits<'_>,
) -> Result<(), RequestError> {
    check_fields(request, limits.policy)?;
    let max = limits.policy.max_request_payload_bytes;
    let mut bound = Budget::bounding(max, limits.max_depth);
    match add_request(&mut bound, request) {
        Some(()) => Ok(()),
        // Stopped on depth: the exact walk, whose total is never above the
        // bound's at the same point, would stop there too.
        None if bound.too_deep.is_some() => Err(bound.refusal()),
        // Passed the size limit: the exact walk decides.
        None => Budget::new(max, limits.max_depth).walk(request).map(|_| ()),
    }
}

/// Returns the length of `serde_json::to_vec(request)` if it is at most
/// `limit` bytes, and `None` otherwise, without serialising the request.
///
/// The walk adds up the compact JSON length field by field and stops as soon
/// as the running total passes `limit`. Every value visited adds at least
/// one byte, so the cost is O(`limit`), whatever the size of the request.
/// Strings longer than the remaining budget are
/// refused without being scanned; `serde_json::Value`s nested deeper than a
/// few levels are walked with an explicit stack, so any nesting depth is safe
/// (and none is refused: this measures size only). When the result is
/// `Some(n)`, `n` equals the serialised length exactly.
#[must_use]
pub fn serialized_size_within(request: &WorkerRequest, limit: usize) -> Option<usize> {
    Budget::new(limit, usize::MAX).walk(request).ok()
}
