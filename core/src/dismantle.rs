//! Dropping JSON values without recursion.
//!
//! `serde_json::Value` has no `Drop` of its own: dropping an array or an
//! object drops its children, which drop theirs, one stack frame (or
//! several) per level. A value nested a few tens of thousands of levels
//! deep overflows a thread's stack that way, and the process aborts. The
//! functions here take every array and object apart level by level with an
//! explicit stack instead, so a value of any depth is dropped in constant
//! stack space. Drivers use them wherever they let go of a request, which
//! may be one refused for its depth.

use serde_json::Value;

use crate::protocol::{WorkerOperation, WorkerRequest};

/// Drops `value` without recursion, whatever its nesting depth.
///
/// Arrays and objects are emptied one at a time: their scalar children are
/// dropped at once, their non-empty arrays and objects are set aside on a
/// heap-allocated stack to be emptied in turn. A value whose arrays and
/// objects hold only scalars allocates nothing.
pub fn dismantle(value: Value) {
    let mut nested = Vec::new();
    let mut next = Some(value);
    while let Some(value) = next.take().or_else(|| nested.pop()) {
        match value {
            Value::Array(items) => nested.extend(items.into_iter().filter(has_children)),
            Value::Object(entries) => nested.extend(
                entries
                    .into_iter()
                    .map(|(_, item)| item)
                    .filter(has_children),
            ),
            _ => {}
        }
    }
}

/// Drops `request` without recursion: its JSON values go through
/// [`dismantle`], whatever their nesting depth.
pub fn dismantle_request(request: WorkerRequest) {
    match request.operation {
        WorkerOperation::Llm { scoped_input, .. } => dismantle(scoped_input),
        WorkerOperation::Tool {
            input,
            scoped_input,
            ..
        } => {
            dismantle(input);
            dismantle(scoped_input);
        }
    }
}

/// Whether `value` is an array or object with something in it (dropping
/// anything else recurses no further).
fn has_children(value: &Value) -> bool {
    match value {
        Value::Array(items) => !items.is_empty(),
        Value::Object(entries) => !entries.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A value `depth` levels deep, built without recursion: arrays, with an
    /// object every `object_every` levels.
    fn nested(depth: usize, object_every: usize) -> Value {
        let mut value = json!("leaf");
        for level in 0..depth {
            value = if level % object_every == 0 {
                let mut entries = serde_json::Map::new();
                entries.insert("k".into(), value);
                entries.insert("n".into(), json!(level));
                Value::Object(entries)
            } else {
                Value::Array(vec![json!(level), value, json!(null)])
            };
        }
        value
    }

    #[test]
    fn dismantles_a_million_levels_without_overflowing_the_stack() {
        // serde_json's own drop of this value overflows any default stack.
        dismantle(nested(1_000_000, 100));
    }

    #[test]
    fn dismantles_the_values_of_a_deep_request() {
        let deep = || nested(200_000, 7);
        let operations = [
            WorkerOperation::Tool {
                tool: "t".into(),
                input: deep(),
                scoped_input: deep(),
            },
            WorkerOperation::Llm {
                model: "m".into(),
                prompt: "p".into(),
                scoped_input: deep(),
            },
        ];
        for operation in operations {
            dismantle_request(WorkerRequest {
                request_id: "r".into(),
                workflow_name: "w".into(),
                node_id: "n".into(),
                timeout_ms: None,
                operation,
            });
        }
    }

    #[test]
    fn dismantles_shallow_and_wide_values() {
        for value in [
            json!(null),
            json!("s"),
            json!([]),
            json!({}),
            json!([1, [2, [3, {"a": {"b": []}}]], {"c": "d"}]),
            Value::Array((0..10_000).map(|i| json!({ "i": [i] })).collect()),
        ] {
            dismantle(value);
        }
    }
}
