//! Golden wire fixtures: foreman's protocol types write exactly the JSON of
//! `simple-agents-workflow` 0.2.34's `worker` module.
//!
//! Each file in `tests/fixtures/` is compact JSON as `serde_json::to_string`
//! writes it. For every fixture the test checks that
//! - foreman's type parses it and writes it back byte for byte;
//! - the reference's type shape (declared below from the reference's source,
//!   with the same field names and serde attributes) does the same;
//! - a foreman value and the same value built as the reference shape, field
//!   by field, serialise identically.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::fs;
use std::path::PathBuf;

use foreman_core::{
    WorkerErrorCode, WorkerHealth, WorkerHealthStatus, WorkerOperation, WorkerProtocolError,
    WorkerRequest, WorkerResponse, WorkerResult,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The reference's protocol types, reduced to their shape: same names, same
/// fields in the same order, same serde attributes.
mod reference {
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct WorkerRequest {
        pub request_id: String,
        pub workflow_name: String,
        pub node_id: String,
        pub timeout_ms: Option<u64>,
        pub operation: WorkerOperation,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    pub enum WorkerOperation {
        Llm {
            model: String,
            prompt: String,
            scoped_input: Value,
        },
        Tool {
            tool: String,
            input: Value,
            scoped_input: Value,
        },
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct WorkerResponse {
        pub request_id: String,
        pub worker_id: String,
        pub result: WorkerResult,
        pub elapsed_ms: u64,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "status", rename_all = "snake_case")]
    pub enum WorkerResult {
        Success { output: Value },
        Error { error: WorkerProtocolError },
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct WorkerProtocolError {
        pub code: WorkerErrorCode,
        pub message: String,
        pub retryable: bool,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum WorkerErrorCode {
        QueueFull,
        Unavailable,
        Timeout,
        ExecutionFailed,
        CircuitOpen,
        Cancelled,
        InvalidRequest,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct WorkerHealth {
        pub worker_id: String,
        pub status: WorkerHealthStatus,
        pub consecutive_failures: u32,
        pub last_probe_unix_ms: Option<u64>,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum WorkerHealthStatus {
        Healthy,
        Degraded,
        Unavailable,
    }
}

/// Field-by-field conversion of a foreman value into the reference shape
/// (no JSON involved, so the serialisations compared are independent).
trait ToReference {
    type Reference: Serialize + DeserializeOwned + PartialEq + Debug;
    fn to_reference(&self) -> Self::Reference;
}

impl ToReference for WorkerErrorCode {
    type Reference = reference::WorkerErrorCode;
    fn to_reference(&self) -> Self::Reference {
        use reference::WorkerErrorCode as R;
        match self {
            Self::QueueFull => R::QueueFull,
            Self::Unavailable => R::Unavailable,
            Self::Timeout => R::Timeout,
            Self::ExecutionFailed => R::ExecutionFailed,
            Self::CircuitOpen => R::CircuitOpen,
            Self::Cancelled => R::Cancelled,
            Self::InvalidRequest => R::InvalidRequest,
        }
    }
}

impl ToReference for WorkerHealthStatus {
    type Reference = reference::WorkerHealthStatus;
    fn to_reference(&self) -> Self::Reference {
        use reference::WorkerHealthStatus as R;
        match self {
            Self::Healthy => R::Healthy,
            Self::Degraded => R::Degraded,
            Self::Unavailable => R::Unavailable,
        }
    }
}

impl ToReference for WorkerProtocolError {
    type Reference = reference::WorkerProtocolError;
    fn to_reference(&self) -> Self::Reference {
        reference::WorkerProtocolError {
            code: self.code.to_reference(),
            message: self.message.clone(),
            retryable: self.retryable,
        }
    }
}

impl ToReference for WorkerResult {
    type Reference = reference::WorkerResult;
    fn to_reference(&self) -> Self::Reference {
        match self {
            Self::Success { output } => reference::WorkerResult::Success {
                output: output.clone(),
            },
            Self::Error { error } => reference::WorkerResult::Error {
                error: error.to_reference(),
            },
        }
    }
}

impl ToReference for WorkerResponse {
    type Reference = reference::WorkerResponse;
    fn to_reference(&self) -> Self::Reference {
        reference::WorkerResponse {
            request_id: self.request_id.clone(),
            worker_id: self.worker_id.clone(),
            result: self.result.to_reference(),
            elapsed_ms: self.elapsed_ms,
        }
    }
}

impl ToReference for WorkerOperation {
    type Reference = reference::WorkerOperation;
    fn to_reference(&self) -> Self::Reference {
        match self {
            Self::Llm {
                model,
                prompt,
                scoped_input,
            } => reference::WorkerOperation::Llm {
                model: model.clone(),
                prompt: prompt.clone(),
                scoped_input: scoped_input.clone(),
            },
            Self::Tool {
                tool,
                input,
                scoped_input,
            } => reference::WorkerOperation::Tool {
                tool: tool.clone(),
                input: input.clone(),
                scoped_input: scoped_input.clone(),
            },
        }
    }
}

impl ToReference for WorkerRequest {
    type Reference = reference::WorkerRequest;
    fn to_reference(&self) -> Self::Reference {
        reference::WorkerRequest {
            request_id: self.request_id.clone(),
            workflow_name: self.workflow_name.clone(),
            node_id: self.node_id.clone(),
            timeout_ms: self.timeout_ms,
            operation: self.operation.to_reference(),
        }
    }
}

impl ToReference for WorkerHealth {
    type Reference = reference::WorkerHealth;
    fn to_reference(&self) -> Self::Reference {
        reference::WorkerHealth {
            worker_id: self.worker_id.clone(),
            status: self.status.to_reference(),
            consecutive_failures: self.consecutive_failures,
            last_probe_unix_ms: self.last_probe_unix_ms,
        }
    }
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

/// Every fixture, as (file stem, text without a trailing newline).
fn fixtures() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(fixtures_dir()).expect("fixtures directory") {
        let path = entry.expect("fixture entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("UTF-8 fixture name")
            .to_owned();
        let text = fs::read_to_string(&path).expect("fixture text");
        let text = text.strip_suffix('\n').unwrap_or(&text).to_owned();
        out.push((stem, text));
    }
    out.sort();
    assert!(
        !out.is_empty(),
        "no fixtures in {}",
        fixtures_dir().display()
    );
    out
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serialisable")
}

/// Checks one reference-compatible fixture through both type shapes.
fn check<F>(name: &str, text: &str) -> F
where
    F: ToReference + Serialize + DeserializeOwned + Debug,
{
    let ours: F = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{name}: foreman type does not parse it: {e}"));
    assert_eq!(to_json(&ours), text, "{name}: foreman round trip");

    let theirs: F::Reference = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{name}: reference shape does not parse it: {e}"));
    assert_eq!(to_json(&theirs), text, "{name}: reference round trip");

    let converted = ours.to_reference();
    assert_eq!(converted, theirs, "{name}: same value in both shapes");
    assert_eq!(
        to_json(&converted),
        to_json(&ours),
        "{name}: same serialisation"
    );
    ours
}

#[test]
fn every_fixture_round_trips_through_foreman_and_reference_shapes() {
    let mut codes = BTreeSet::new();
    let mut statuses = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for (name, text) in fixtures() {
        let kind = if name.starts_with("request_") {
            let request: WorkerRequest = check(&name, &text);
            match (&request.operation, request.timeout_ms) {
                (WorkerOperation::Llm { .. }, Some(_)) => "request llm timeout",
                (WorkerOperation::Llm { .. }, None) => "request llm null",
                (WorkerOperation::Tool { .. }, Some(_)) => "request tool timeout",
                (WorkerOperation::Tool { .. }, None) => "request tool null",
            }
        } else if name.starts_with("response_") {
            let response: WorkerResponse = check(&name, &text);
            match response.result {
                WorkerResult::Success { .. } => "response success",
                WorkerResult::Error { error } => {
                    codes.insert(("response", error.code));
                    "response error"
                }
            }
        } else if name.starts_with("error_code_") {
            let code: WorkerErrorCode = check(&name, &text);
            codes.insert(("code", code));
            "code"
        } else if name.starts_with("protocol_error") {
            let _: WorkerProtocolError = check(&name, &text);
            "protocol error"
        } else if name.starts_with("health_") {
            let health: WorkerHealth = check(&name, &text);
            statuses.insert((health.status, health.last_probe_unix_ms.is_some()));
            "health"
        } else {
            panic!("fixture {name} has no known prefix");
        };
        seen.insert(kind);
    }

    for kind in [
        "request llm timeout",
        "request llm null",
        "request tool timeout",
        "request tool null",
        "response success",
        "response error",
        "code",
        "protocol error",
        "health",
    ] {
        assert!(seen.contains(kind), "no fixture for {kind}");
    }
    for code in all_codes() {
        assert!(
            codes.contains(&("code", code)),
            "no error_code fixture for {code:?}"
        );
        assert!(
            codes.contains(&("response", code)),
            "no response_error fixture for {code:?}"
        );
    }
    for status in all_statuses() {
        for probed in [false, true] {
            assert!(
                statuses.contains(&(status, probed)),
                "no health fixture for {status:?} with last_probe_unix_ms {}",
                if probed { "set" } else { "null" }
            );
        }
    }
}

/// A response is built with exactly the reference's four fields and writes
/// exactly the reference's four keys.
#[test]
fn a_response_has_exactly_the_references_fields() {
    let old = r#"{"request_id":"r","worker_id":"w","result":{"status":"success","output":1},"elapsed_ms":5}"#;
    let response: WorkerResponse = serde_json::from_str(old).expect("reference JSON parses");
    assert_eq!(
        response,
        WorkerResponse {
            request_id: "r".into(),
            worker_id: "w".into(),
            result: WorkerResult::Success {
                output: serde_json::json!(1)
            },
            elapsed_ms: 5,
        }
    );
    assert_eq!(to_json(&response), old);
}

#[test]
fn constructed_values_serialise_like_the_reference() {
    let error = WorkerProtocolError::new(WorkerErrorCode::Cancelled, "gone\u{0}\"", false);
    let responses = [
        WorkerResponse {
            request_id: "a".into(),
            worker_id: "b".into(),
            result: WorkerResult::Error {
                error: error.clone(),
            },
            elapsed_ms: u64::MAX,
        },
        WorkerResponse {
            request_id: String::new(),
            worker_id: "é".into(),
            result: WorkerResult::Success {
                // Floats with exponents are kept out of the fixtures: their
                // text depends on the serde_json release (1e300 vs 1e+300),
                // but both shapes always agree.
                output: serde_json::json!({"z": [1.5, -0.0, 1e300, 5e-324, -1e-7, null], "a": {}}),
            },
            elapsed_ms: 0,
        },
    ];
    for response in &responses {
        assert_eq!(to_json(response), to_json(&response.to_reference()));
    }
    let requests = [
        WorkerRequest {
            request_id: "r\n".into(),
            workflow_name: "w\\".into(),
            node_id: "n\u{7f}".into(),
            timeout_ms: Some(0),
            operation: WorkerOperation::Tool {
                tool: "t".into(),
                input: serde_json::json!([[[]]]),
                scoped_input: serde_json::Value::Null,
            },
        },
        WorkerRequest {
            request_id: "r".into(),
            workflow_name: "w".into(),
            node_id: "n".into(),
            timeout_ms: None,
            operation: WorkerOperation::Llm {
                model: "m".into(),
                prompt: "p\u{1}".into(),
                scoped_input: serde_json::json!({"k": true}),
            },
        },
    ];
    for request in &requests {
        assert_eq!(to_json(request), to_json(&request.to_reference()));
    }
    for code in all_codes() {
        assert_eq!(to_json(&code), to_json(&code.to_reference()));
    }
    for status in all_statuses() {
        let health = WorkerHealth {
            worker_id: "w".into(),
            status,
            consecutive_failures: u32::MAX,
            last_probe_unix_ms: Some(u64::MAX),
        };
        assert_eq!(to_json(&health), to_json(&health.to_reference()));
    }
    assert_eq!(to_json(&error), to_json(&error.to_reference()));
}

/// Every error code; the exhaustive match makes a new variant a compile
/// error here until it gets fixtures.
fn all_codes() -> [WorkerErrorCode; 7] {
    let codes = [
        WorkerErrorCode::QueueFull,
        WorkerErrorCode::Unavailable,
        WorkerErrorCode::Timeout,
        WorkerErrorCode::ExecutionFailed,
        WorkerErrorCode::CircuitOpen,
        WorkerErrorCode::Cancelled,
        WorkerErrorCode::InvalidRequest,
    ];
    for code in codes {
        match code {
            WorkerErrorCode::QueueFull
            | WorkerErrorCode::Unavailable
            | WorkerErrorCode::Timeout
            | WorkerErrorCode::ExecutionFailed
            | WorkerErrorCode::CircuitOpen
            | WorkerErrorCode::Cancelled
            | WorkerErrorCode::InvalidRequest => {}
        }
    }
    codes
}

/// Every health status (exhaustive for the same reason as [`all_codes`]).
fn all_statuses() -> [WorkerHealthStatus; 3] {
    let statuses = [
        WorkerHealthStatus::Healthy,
        WorkerHealthStatus::Degraded,
        WorkerHealthStatus::Unavailable,
    ];
    for status in statuses {
        match status {
            WorkerHealthStatus::Healthy
            | WorkerHealthStatus::Degraded
            | WorkerHealthStatus::Unavailable => {}
        }
    }
    statuses
}

#[test]
fn a_limited_request_without_limits_is_the_references_request_byte_for_byte() {
    use foreman_core::{LimitedRequest, PhaseLimits};
    let requests: Vec<_> = fixtures()
        .into_iter()
        .filter(|(name, _)| name.starts_with("request_"))
        .collect();
    assert_eq!(requests.len(), 4);
    for (name, text) in requests {
        let request: WorkerRequest = serde_json::from_str(&text).expect("fixture parses");
        let limited = LimitedRequest::from(request.clone());
        assert_eq!(to_json(&limited), text, "{name}: no limits, no new bytes");
        let parsed: LimitedRequest = serde_json::from_str(&text).expect("reference JSON parses");
        assert_eq!(parsed, limited, "{name}");
        assert_eq!(parsed.limits(), PhaseLimits::new());

        // With limits: the reference's fields, then the two limits; the
        // envelope round-trips and a reference reader still reads the
        // request, ignoring them.
        let limits = PhaseLimits::new()
            .with_queue_wait(std::time::Duration::from_millis(250))
            .with_run(std::time::Duration::from_secs(2));
        let limited = LimitedRequest::new(request.clone(), limits);
        let json = to_json(&limited);
        let expected = format!(
            "{},\"queue_wait_ms\":250,\"run_timeout_ms\":2000}}",
            text.strip_suffix('}').expect("an object")
        );
        assert_eq!(json, expected, "{name}");
        let back: LimitedRequest = serde_json::from_str(&json).expect("envelope parses");
        assert_eq!(back, limited, "{name}");
        assert_eq!(back.into_parts(), (request.clone(), limits));
        let theirs: reference::WorkerRequest =
            serde_json::from_str(&json).expect("the reference reads it");
        assert_eq!(to_json(&theirs), text, "{name}");
    }
}
