//! The field checks of a request, in the reference's order: identifier
//! lengths, then the timeout ceiling.

use super::error::RequestError;
use crate::options::WorkerSecurityPolicy;
use crate::protocol::WorkerRequest;

/// The identifier and timeout checks of
/// [`validate_request`](super::validate_request), in order.
pub(super) fn check_fields(
    request: &WorkerRequest,
    policy: &WorkerSecurityPolicy,
) -> Result<(), RequestError> {
    let max_identifier = policy.max_identifier_length;
    check_identifier("request_id", &request.request_id, max_identifier)?;
    check_identifier("workflow_name", &request.workflow_name, max_identifier)?;
    check_identifier("node_id", &request.node_id, max_identifier)?;
    if let Some(timeout_ms) = request.timeout_ms {
        if timeout_ms > policy.max_request_timeout_ms {
            return Err(RequestError::TimeoutTooLong {
                timeout_ms,
                max_ms: policy.max_request_timeout_ms,
            });
        }
    }
    Ok(())
}

/// Refuses an identifier longer than `max` bytes, naming its field.
fn check_identifier(field: &'static str, value: &str, max: usize) -> Result<(), RequestError> {
    let len = value.len();
    if len > max {
        return Err(RequestError::IdentifierTooLong { field, len, max });
    }
    Ok(())
}
