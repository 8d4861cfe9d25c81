//! `serialized_size_within` agrees with `serde_json::to_vec` on arbitrary
//! requests, and stops exactly at the limit.

use foreman_core::{serialized_size_within, WorkerOperation, WorkerRequest};
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

/// Characters that exercise every escaping rule, mixed with arbitrary ones.
fn json_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => any::<char>(),
        2 => (0u8..0x20).prop_map(char::from),
        1 => Just('"'),
        1 => Just('\\'),
        1 => Just('\u{7f}'),
        1 => Just('/'),
        2 => proptest::char::range('a', 'z'),
    ]
}

fn json_string() -> impl Strategy<Value = String> {
    proptest::collection::vec(json_char(), 0..20).prop_map(String::from_iter)
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1000i64..1000).prop_map(Value::from),
        // Includes subnormals, tiny and huge exponents; non-finite values
        // become null, as serde_json does.
        any::<f64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        (any::<i32>(), -320i32..309).prop_map(|(m, e)| {
            let f = f64::from(m) * 10f64.powi(e);
            Number::from_f64(f).map_or(Value::Null, Value::Number)
        }),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        json_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((json_string(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn operation() -> impl Strategy<Value = WorkerOperation> {
    prop_oneof![
        (json_string(), json_string(), value()).prop_map(|(model, prompt, scoped_input)| {
            WorkerOperation::Llm {
                model,
                prompt,
                scoped_input,
            }
        }),
        (json_string(), value(), value()).prop_map(|(tool, input, scoped_input)| {
            WorkerOperation::Tool {
                tool,
                input,
                scoped_input,
            }
        }),
    ]
}

fn request() -> impl Strategy<Value = WorkerRequest> {
    (
        json_string(),
        json_string(),
        json_string(),
        proptest::option::of(prop_oneof![any::<u64>(), 0u64..200_000]),
        operation(),
    )
        .prop_map(
            |(request_id, workflow_name, node_id, timeout_ms, operation)| WorkerRequest {
                request_id,
                workflow_name,
                node_id,
                timeout_ms,
                operation,
            },
        )
}

proptest! {
    #[test]
    fn size_matches_serde_json(request in request(), seed in any::<u64>()) {
        let n = serde_json::to_vec(&request).map(|bytes| bytes.len()).map_err(|e| {
            TestCaseError::fail(format!("serialisation failed: {e}"))
        })?;
        prop_assert_eq!(serialized_size_within(&request, usize::MAX), Some(n));
        prop_assert_eq!(serialized_size_within(&request, n), Some(n));
        if n > 0 {
            prop_assert_eq!(serialized_size_within(&request, n - 1), None);
        }
        let limit = usize::try_from(seed % (2 * n as u64 + 2)).unwrap_or(usize::MAX);
        let expected = if n <= limit { Some(n) } else { None };
        prop_assert_eq!(serialized_size_within(&request, limit), expected, "limit {}", limit);
    }
}
