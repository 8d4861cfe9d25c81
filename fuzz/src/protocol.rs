//! The `protocol` target: arbitrary bytes against every wire type.

use std::fmt::Debug;

use foreman_core::{
    serialized_size_within, validate_request, RequestError, RequestLimits, WorkerErrorCode,
    WorkerHealth, WorkerHealthStatus, WorkerOperation, WorkerProtocolError, WorkerRequest,
    WorkerResponse, WorkerResult, WorkerSecurityPolicy, DEFAULT_MAX_REQUEST_DEPTH,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Largest input the harness parses, in bytes (larger inputs are skipped).
///
/// Parsing is linear in the input, so the cap does not hide any blow-up; it
/// only bounds the time and memory of one execution (libFuzzer would
/// otherwise spend its time copying and mutating megabyte inputs). 1 MiB is
/// four times the default payload limit of 256 KiB, so requests on both
/// sides of that limit stay reachable.
pub const MAX_PROTOCOL_INPUT: usize = 1 << 20;

/// The deepest nesting serde_json's recursion limit lets through (its
/// counter starts at 128 and refuses when it reaches 0): deeper input must be
/// refused with an error. `tests/replay.rs` pins this number.
const SERDE_JSON_DEPTH_LIMIT: usize = 127;

/// Parses `data` as each protocol type and checks every one that parses.
///
/// For each type: a parsed value serialises (compact and pretty) and parses
/// back equal (exactly: this crate builds serde_json with `float_roundtrip`,
/// see `Cargo.toml`), and converts to a
/// `Value` and back exactly. For requests,
/// additionally: `validate_request` (and `check_request`, without the size)
/// under the default, a tight and two request-derived policies, each with
/// the default, a tight and two request-derived depth limits, agrees with an
/// independent oracle that follows the documented check order, and
/// `serialized_size_within` equals
/// `serde_json::to_vec(..).len()` whenever it is within the limit (and is
/// `None` exactly when the length exceeds it).
///
/// # Panics
/// When any of these properties is broken, or when input nested deeper than
/// serde_json's recursion limit (127 levels) parses successfully.
pub fn protocol(data: &[u8]) {
    if data.len() > MAX_PROTOCOL_INPUT {
        return;
    }
    let value = serde_json::from_slice::<Value>(data);
    if value.is_ok() {
        let depth = json_depth(data);
        assert!(
            depth <= SERDE_JSON_DEPTH_LIMIT,
            "input nested {depth} deep parsed; serde_json must refuse past {SERDE_JSON_DEPTH_LIMIT}"
        );
    }
    if let Ok(value) = value {
        roundtrip_value(&value);
    }
    if let Some(request) = roundtrip::<WorkerRequest>(data) {
        check_request(&request);
    }
    roundtrip::<WorkerOperation>(data);
    roundtrip::<WorkerResponse>(data);
    roundtrip::<WorkerResult>(data);
    roundtrip::<WorkerProtocolError>(data);
    roundtrip::<WorkerErrorCode>(data);
    roundtrip::<WorkerHealth>(data);
    roundtrip::<WorkerHealthStatus>(data);
}

/// The maximum nesting of arrays and objects in `data`, read as JSON text
/// (brackets inside strings do not count; the text need not be valid).
pub fn json_depth(data: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &byte in data {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn roundtrip<T>(data: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let parsed: T = serde_json::from_slice(data).ok()?;
    let name = std::any::type_name::<T>();
    let compact =
        serde_json::to_vec(&parsed).unwrap_or_else(|e| panic!("{name} does not serialise: {e}"));
    let again: T = serde_json::from_slice(&compact)
        .unwrap_or_else(|e| panic!("{name} does not parse its own JSON: {e}"));
    assert_eq!(parsed, again, "{name} changed in a compact round trip");
    let pretty = serde_json::to_vec_pretty(&parsed).expect("serialises pretty");
    let from_pretty: T = serde_json::from_slice(&pretty)
        .unwrap_or_else(|e| panic!("{name} does not parse its own pretty JSON: {e}"));
    assert_eq!(parsed, from_pretty, "{name} changed in a pretty round trip");
    // Through a `Value` as well (what an adapter holding JSON values sees):
    // no text involved, so this one must be exact.
    let value = serde_json::to_value(&parsed).expect("converts to a Value");
    let from_value: T = serde_json::from_value(value)
        .unwrap_or_else(|e| panic!("{name} does not convert back from its Value: {e}"));
    assert_eq!(parsed, from_value, "{name} changed through a Value");
    Some(parsed)
}

fn roundtrip_value(value: &Value) {
    let compact = serde_json::to_vec(value).expect("a Value serialises");
    let again: Value = serde_json::from_slice(&compact).expect("a Value parses its own JSON");
    assert_eq!(value, &again, "a Value changed in a round trip");
}

fn check_request(request: &WorkerRequest) {
    let exact = serde_json::to_vec(request).expect("serialises").len();
    assert_eq!(
        serialized_size_within(request, usize::MAX),
        Some(exact),
        "serialized_size_within without a limit must be the exact length"
    );
    let mut limits = vec![0, 1, 64, 256 * 1024, exact, exact + 1, exact / 2];
    if exact > 0 {
        limits.push(exact - 1);
    }
    for limit in limits {
        let expected = (exact <= limit).then_some(exact);
        assert_eq!(
            serialized_size_within(request, limit),
            expected,
            "serialized_size_within(limit {limit}) for a request of {exact} bytes"
        );
    }

    let default = WorkerSecurityPolicy::default();
    let tight = WorkerSecurityPolicy {
        max_request_timeout_ms: 1_000,
        max_request_payload_bytes: 160,
        max_identifier_length: 8,
    };
    // A policy whose limits sit right at this request's values.
    let at_the_edge = WorkerSecurityPolicy {
        max_request_timeout_ms: request.timeout_ms.unwrap_or(1).max(1),
        max_request_payload_bytes: exact,
        max_identifier_length: request
            .request_id
            .len()
            .max(request.workflow_name.len())
            .max(request.node_id.len())
            .max(1),
    };
    let just_below = WorkerSecurityPolicy {
        max_request_timeout_ms: at_the_edge.max_request_timeout_ms.saturating_sub(1).max(1),
        max_request_payload_bytes: exact.saturating_sub(1).max(1),
        max_identifier_length: at_the_edge.max_identifier_length.saturating_sub(1).max(1),
    };
    // Depth limits: the default, the tightest, and this request's own
    // depth and one below.
    let depth = values(request)
        .map(|(_, value)| value_depth(value))
        .max()
        .unwrap_or(0);
    let depths = [
        DEFAULT_MAX_REQUEST_DEPTH,
        1,
        depth.max(1),
        depth.saturating_sub(1).max(1),
    ];
    for policy in [&default, &tight, &at_the_edge, &just_below] {
        for max_depth in depths {
            let limits = RequestLimits { policy, max_depth };
            let got = validate_request(request, limits);
            let expected = oracle(request, limits, exact);
            assert!(
                expected.contains(&got),
                "validate_request under {limits:?} gave {got:?}, expected one of {expected:?}"
            );
            assert_eq!(
                foreman_core::check_request(request, limits),
                got.map(|_| ()),
                "check_request under {limits:?}"
            );
        }
    }
}

/// A request's JSON values, in serialisation order, with their fields.
fn values(request: &WorkerRequest) -> impl Iterator<Item = (&'static str, &Value)> {
    let values = match &request.operation {
        WorkerOperation::Llm { scoped_input, .. } => {
            [Some(("operation.scoped_input", scoped_input)), None]
        }
        WorkerOperation::Tool {
            input,
            scoped_input,
            ..
        } => [
            Some(("operation.input", input)),
            Some(("operation.scoped_input", scoped_input)),
        ],
    };
    values.into_iter().flatten()
}

/// The arrays and objects on the deepest path of `value`, itself included
/// (recursive: a parsed value is at most 127 deep).
fn value_depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(value_depth).max().unwrap_or(0),
        Value::Object(entries) => 1 + entries.values().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// `validate_request` written out from its documentation, using the real
/// serialised length and depths: the results it may give (two when the
/// request is both too large and too deep, since the walk reports whichever
/// limit it passes first in serialisation order).
fn oracle(
    request: &WorkerRequest,
    limits: RequestLimits<'_>,
    exact: usize,
) -> Vec<Result<usize, RequestError>> {
    let policy = limits.policy;
    let too_deep = values(request)
        .find(|&(_, value)| value_depth(value) > limits.max_depth)
        .map(|(field, _)| RequestError::NestedTooDeep {
            field,
            max: limits.max_depth,
        });
    let too_large =
        (exact > policy.max_request_payload_bytes).then_some(RequestError::PayloadTooLarge {
            max: policy.max_request_payload_bytes,
        });
    match fields_oracle(request, policy) {
        Err(error) => vec![Err(error)],
        Ok(()) if too_deep.is_none() && too_large.is_none() => vec![Ok(exact)],
        Ok(()) => too_deep.into_iter().chain(too_large).map(Err).collect(),
    }
}

/// The identifier and timeout checks of `validate_request`, in order.
fn fields_oracle(
    request: &WorkerRequest,
    policy: &WorkerSecurityPolicy,
) -> Result<(), RequestError> {
    let max = policy.max_identifier_length;
    for (field, value) in [
        ("request_id", &request.request_id),
        ("workflow_name", &request.workflow_name),
        ("node_id", &request.node_id),
    ] {
        if value.len() > max {
            return Err(RequestError::IdentifierTooLong {
                field,
                len: value.len(),
                max,
            });
        }
    }
    match request.timeout_ms {
        Some(timeout_ms) if timeout_ms > policy.max_request_timeout_ms => {
            return Err(RequestError::TimeoutTooLong {
                timeout_ms,
                max_ms: policy.max_request_timeout_ms,
            })
        }
        _ => {}
    }
    Ok(())
}
