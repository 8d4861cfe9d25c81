//! Requests the validation tests (and the configuration's) build: small
//! valid ones, and values nested to a given depth.

use serde_json::{json, Value};

use super::RequestLimits;
use crate::options::WorkerSecurityPolicy;
use crate::protocol::{WorkerOperation, WorkerRequest};

pub(crate) fn policy() -> WorkerSecurityPolicy {
    WorkerSecurityPolicy::default()
}

pub(crate) fn llm(prompt: &str) -> WorkerRequest {
    WorkerRequest {
        request_id: "req-1".into(),
        workflow_name: "wf".into(),
        node_id: "node".into(),
        timeout_ms: Some(1_000),
        operation: WorkerOperation::Llm {
            model: "gpt".into(),
            prompt: prompt.into(),
            scoped_input: json!({"a": [1, -2, 3.5, null, true, false, "x"]}),
        },
    }
}

pub(crate) fn tool(input: Value) -> WorkerRequest {
    WorkerRequest {
        request_id: "req-2".into(),
        workflow_name: "wf".into(),
        node_id: "node".into(),
        timeout_ms: None,
        operation: WorkerOperation::Tool {
            tool: "search".into(),
            input,
            scoped_input: json!({}),
        },
    }
}

pub(crate) fn exact_len(request: &WorkerRequest) -> usize {
    serde_json::to_vec(request).map(|v| v.len()).unwrap_or(0)
}

/// A value `depth` levels deep, built without recursion: nested arrays
/// (`[[…[0]…]]`) or nested objects (`{"k":{"k":…{"k":0}…}}`).
pub(crate) fn nested(depth: usize, objects: bool) -> Value {
    let mut value = json!(0);
    for _ in 0..depth {
        value = if objects {
            let mut entries = serde_json::Map::new();
            entries.insert("k".into(), value);
            Value::Object(entries)
        } else {
            Value::Array(vec![value])
        };
    }
    value
}

pub(crate) fn llm_with_scoped(scoped_input: Value) -> WorkerRequest {
    WorkerRequest {
        operation: WorkerOperation::Llm {
            model: "gpt".into(),
            prompt: "p".into(),
            scoped_input,
        },
        ..llm("p")
    }
}

pub(crate) fn tool_with_scoped(scoped_input: Value) -> WorkerRequest {
    WorkerRequest {
        operation: WorkerOperation::Tool {
            tool: "search".into(),
            input: json!({}),
            scoped_input,
        },
        ..tool(json!({}))
    }
}

pub(crate) fn limits_with_depth(
    policy: &WorkerSecurityPolicy,
    max_depth: usize,
) -> RequestLimits<'_> {
    RequestLimits { policy, max_depth }
}

/// Builds a request around one JSON value.
pub(crate) type Build = fn(Value) -> WorkerRequest;

/// Each place a request holds a JSON value, named as a refusal names it,
/// with a builder that puts a value there.
pub(crate) fn value_fields() -> [(&'static str, Build); 3] {
    [
        ("operation.input", tool),
        ("operation.scoped_input", tool_with_scoped),
        ("operation.scoped_input", llm_with_scoped),
    ]
}
