//! The field checks: identifier lengths, the timeout ceiling, their order.

use serde_json::json;

use crate::options::WorkerSecurityPolicy;
use crate::protocol::WorkerPoolError;
use crate::validate::test_requests::{exact_len, llm, policy, tool};
use crate::validate::{check_request, validate_request, RequestError, RequestLimits};

#[test]
fn accepts_a_valid_request_and_returns_its_exact_size() {
    let request = llm("hello");
    assert_eq!(
        validate_request(&request, RequestLimits::new(&policy())),
        Ok(exact_len(&request))
    );
    let request = tool(json!({"q": "rust", "n": 10}));
    assert_eq!(
        validate_request(&request, RequestLimits::new(&policy())),
        Ok(exact_len(&request))
    );
}

#[test]
fn accepts_empty_identifiers_as_the_reference_does() {
    let mut request = llm("p");
    request.request_id.clear();
    request.workflow_name.clear();
    request.node_id.clear();
    assert_eq!(
        validate_request(&request, RequestLimits::new(&policy())),
        Ok(exact_len(&request))
    );
    assert_eq!(
        check_request(&request, RequestLimits::new(&policy())),
        Ok(())
    );
}

#[test]
fn refuses_long_identifiers_with_field_and_limit() {
    let policy = WorkerSecurityPolicy {
        max_identifier_length: 4,
        ..policy()
    };
    let mut request = llm("p");
    request.request_id = "abcd".into();
    request.workflow_name = "abcde".into();
    request.node_id = "n".into();
    let err = validate_request(&request, RequestLimits::new(&policy)).unwrap_err();
    assert_eq!(
        err,
        RequestError::IdentifierTooLong {
            field: "workflow_name",
            len: 5,
            max: 4
        }
    );
    assert_eq!(
        err.to_string(),
        "workflow_name is 5 bytes long, over the limit of 4 bytes \
         (security_policy.max_identifier_length): shorten it"
    );

    request.workflow_name = "wf".into();
    request.node_id = "node-1".into();
    assert_eq!(
        validate_request(&request, RequestLimits::new(&policy)),
        Err(RequestError::IdentifierTooLong {
            field: "node_id",
            len: 6,
            max: 4
        })
    );

    // Length is in bytes, not characters.
    request.node_id = "ééé".into();
    assert_eq!(
        validate_request(&request, RequestLimits::new(&policy)),
        Err(RequestError::IdentifierTooLong {
            field: "node_id",
            len: 6,
            max: 4
        })
    );

    // The first field is checked completely first.
    request.request_id = "toolong".into();
    request.node_id = String::new();
    assert_eq!(
        validate_request(&request, RequestLimits::new(&policy)),
        Err(RequestError::IdentifierTooLong {
            field: "request_id",
            len: 7,
            max: 4
        })
    );
}

#[test]
fn accepts_a_zero_timeout_which_the_pool_answers_as_timed_out() {
    let mut request = llm("p");
    request.timeout_ms = Some(0);
    assert_eq!(
        validate_request(&request, RequestLimits::new(&policy())),
        Ok(exact_len(&request))
    );
    let zero_ceiling = WorkerSecurityPolicy {
        max_request_timeout_ms: 0,
        ..policy()
    };
    assert!(validate_request(&request, RequestLimits::new(&zero_ceiling)).is_ok());
    request.timeout_ms = Some(1);
    assert_eq!(
        validate_request(&request, RequestLimits::new(&zero_ceiling)),
        Err(RequestError::TimeoutTooLong {
            timeout_ms: 1,
            max_ms: 0
        })
    );
}

#[test]
fn refuses_timeout_above_the_ceiling() {
    let mut request = llm("p");
    request.timeout_ms = Some(120_000);
    assert!(validate_request(&request, RequestLimits::new(&policy())).is_ok());
    request.timeout_ms = Some(120_001);
    let err = validate_request(&request, RequestLimits::new(&policy())).unwrap_err();
    assert_eq!(
        err,
        RequestError::TimeoutTooLong {
            timeout_ms: 120_001,
            max_ms: 120_000
        }
    );
    assert_eq!(
        err.to_string(),
        "timeout_ms 120001 exceeds max 120000 \
         (security_policy.max_request_timeout_ms): ask for at most 120000 ms"
    );
}

#[test]
fn identifiers_are_checked_before_timeout_and_timeout_before_payload() {
    let policy = WorkerSecurityPolicy {
        max_request_payload_bytes: 10,
        ..policy()
    };
    let mut request = llm("p");
    request.timeout_ms = Some(120_001);
    request.node_id = "n".repeat(129);
    assert_eq!(
        validate_request(&request, RequestLimits::new(&policy)),
        Err(RequestError::IdentifierTooLong {
            field: "node_id",
            len: 129,
            max: 128
        })
    );
    request.node_id = "n".into();
    assert_eq!(
        validate_request(&request, RequestLimits::new(&policy)),
        Err(RequestError::TimeoutTooLong {
            timeout_ms: 120_001,
            max_ms: 120_000
        })
    );
    request.timeout_ms = None;
    assert_eq!(
        validate_request(&request, RequestLimits::new(&policy)),
        Err(RequestError::PayloadTooLarge { max: 10 })
    );
}

#[test]
fn converts_into_invalid_request() {
    let err = RequestError::PayloadTooLarge { max: 10 };
    let pool_err = WorkerPoolError::from(err.clone());
    assert_eq!(
        pool_err,
        WorkerPoolError::InvalidRequest {
            reason: err.to_string()
        }
    );
    assert_eq!(
        pool_err.to_string(),
        "worker request rejected: request payload exceeds max 10 bytes when serialized \
         as JSON (security_policy.max_request_payload_bytes): shrink the prompt or inputs"
    );
}
