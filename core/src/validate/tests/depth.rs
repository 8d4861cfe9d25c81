//! The nesting depth: how it is counted, where it is refused, and that one
//! walk checks it with the size.

use serde_json::{json, Value};

use crate::options::WorkerSecurityPolicy;
use crate::protocol::{WorkerOperation, WorkerPoolError, WorkerRequest};
use crate::validate::test_requests::{
    exact_len, limits_with_depth, llm_with_scoped, nested, policy, tool, tool_with_scoped,
    value_fields,
};
use crate::validate::{
    check_request, serialized_size_within, validate_request, RequestError, RequestLimits,
};

#[test]
fn walks_a_million_levels_of_nesting_without_recursion() {
    const DEPTH: usize = 1_000_000;
    let mut nested = Value::Null;
    // Mostly arrays, with an object every 100 levels: a million
    // single-entry maps would cost hundreds of megabytes.
    for level in 0..DEPTH {
        nested = if level % 100 != 0 {
            Value::Array(vec![nested])
        } else {
            let mut entries = serde_json::Map::new();
            entries.insert("k".into(), nested);
            Value::Object(entries)
        };
    }
    let request = tool(nested);
    // Within the default limits the walk stops at level 129; with no
    // depth limit, at the size limit, long before the bottom.
    assert_eq!(
        validate_request(&request, RequestLimits::new(&policy())),
        Err(RequestError::NestedTooDeep {
            field: "operation.input",
            max: 128
        })
    );
    assert_eq!(
        validate_request(&request, limits_with_depth(&policy(), usize::MAX)),
        Err(RequestError::PayloadTooLarge { max: 256 * 1024 })
    );
    // With no limit it walks all the way and counts exactly:
    // null, then "[]" per array level and {"k":} per object level.
    let objects = DEPTH / 100;
    let base = exact_len(&tool(Value::Null));
    let expected = base + (DEPTH - objects) * 2 + objects * 6;
    assert_eq!(serialized_size_within(&request, usize::MAX), Some(expected));
    crate::dismantle_request(request);
}

#[test]
fn refuses_values_nested_past_the_depth_limit_at_the_boundary() {
    let policy = policy();
    for (field, build) in value_fields() {
        for objects in [false, true] {
            for depth in [127, 128, 129] {
                let request = build(nested(depth, objects));
                let expected = if depth <= 128 {
                    Ok(exact_len(&request))
                } else {
                    Err(RequestError::NestedTooDeep { field, max: 128 })
                };
                let limits = RequestLimits::new(&policy);
                let case = format!("{field}, {depth} levels, objects: {objects}");
                assert_eq!(validate_request(&request, limits), expected, "{case}");
                assert_eq!(
                    check_request(&request, limits),
                    expected.map(|_| ()),
                    "{case}"
                );
            }
        }
    }
}

#[test]
fn depth_counts_the_arrays_and_objects_on_the_deepest_path() {
    let policy = policy();
    // (value, its depth)
    let cases = [
        (json!(null), 0),
        (json!("[[[{"), 0),
        (json!([]), 1),
        (json!({}), 1),
        (json!([1, "two", null]), 1),
        (json!({"a": [1]}), 2),
        (json!([[], [[]], {}]), 3),
        (json!({"a": 1, "b": {"c": {"d": []}}, "e": [[]]}), 4),
    ];
    for (value, depth) in cases {
        let request = tool(value.clone());
        for max_depth in 1..=5 {
            let limits = limits_with_depth(&policy, max_depth);
            let result = validate_request(&request, limits);
            if depth <= max_depth {
                assert_eq!(
                    result,
                    Ok(exact_len(&request)),
                    "{value} at max {max_depth}"
                );
            } else {
                assert_eq!(
                    result,
                    Err(RequestError::NestedTooDeep {
                        field: "operation.input",
                        max: max_depth
                    }),
                    "{value} at max {max_depth}"
                );
            }
            assert_eq!(
                check_request(&request, limits),
                result.map(|_| ()),
                "{value} at max {max_depth}"
            );
        }
    }
}

#[test]
fn a_depth_refusal_names_the_field_and_the_limit() {
    let err =
        validate_request(&tool(nested(200, false)), RequestLimits::new(&policy())).unwrap_err();
    assert_eq!(
        err.to_string(),
        "operation.input nesting depth exceeds max 128 levels of arrays and objects \
         (PoolConfig::max_request_depth): flatten it"
    );
    let request = tool_with_scoped(nested(3, true));
    let pool_err = WorkerPoolError::from(
        validate_request(&request, limits_with_depth(&policy(), 2)).unwrap_err(),
    );
    assert_eq!(
        pool_err,
        WorkerPoolError::InvalidRequest {
            reason: "operation.scoped_input nesting depth exceeds max 2 levels of arrays \
                     and objects (PoolConfig::max_request_depth): flatten it"
                .into()
        }
    );
}

#[test]
fn size_and_depth_are_checked_in_one_walk_in_serialisation_order() {
    let policy = WorkerSecurityPolicy {
        max_request_payload_bytes: 1024,
        ..policy()
    };
    let limits = limits_with_depth(&policy, 4);
    let big = json!("x".repeat(2048));
    let deep = nested(5, false);
    // `input` comes before `scoped_input`: whichever limit the walk
    // passes first is the one reported.
    let deep_first = WorkerRequest {
        operation: WorkerOperation::Tool {
            tool: "t".into(),
            input: deep.clone(),
            scoped_input: big.clone(),
        },
        ..tool(json!({}))
    };
    let big_first = WorkerRequest {
        operation: WorkerOperation::Tool {
            tool: "t".into(),
            input: big,
            scoped_input: deep,
        },
        ..tool(json!({}))
    };
    assert_eq!(
        validate_request(&deep_first, limits),
        Err(RequestError::NestedTooDeep {
            field: "operation.input",
            max: 4
        })
    );
    assert_eq!(
        validate_request(&big_first, limits),
        Err(RequestError::PayloadTooLarge { max: 1024 })
    );
    // A deep value whose first levels already pass the size limit is
    // refused for its size: the walk never reaches the deep part.
    let wide_then_deep = tool(json!(["y".repeat(2048), nested(1_000, false)]));
    assert_eq!(
        validate_request(&wide_then_deep, limits),
        Err(RequestError::PayloadTooLarge { max: 1024 })
    );
    for request in [&deep_first, &big_first, &wide_then_deep] {
        assert_eq!(
            check_request(request, limits),
            validate_request(request, limits).map(|_| ())
        );
    }
}

#[test]
fn check_request_agrees_with_validate_request_on_size_and_depth() {
    // Escape-heavy strings make the bound overshoot by up to 5x, so at
    // limits between the exact size and the bound the bounding walk
    // gives up on size and the exact walk decides; depth must come out
    // the same either way.
    let escapes = "\u{1}\"\n".repeat(20);
    let requests = [
        tool(json!([escapes, [[[[escapes]]]], {"k": [[[[[[1]]]]]]}])),
        tool(json!({"a": nested(12, false), "s": escapes})),
        tool_with_scoped(json!([[escapes], nested(20, false)])),
        llm_with_scoped(json!({"deep": nested(40, true), "s": escapes})),
    ];
    for request in &requests {
        let exact = exact_len(request);
        for max in [1, exact / 3, exact - 1, exact, exact * 2, exact * 6] {
            let policy = WorkerSecurityPolicy {
                max_request_payload_bytes: max,
                ..policy()
            };
            for max_depth in [1, 2, 5, 6, 7, 8, 9, 12, 13, 20, 21, 40, 41, 128] {
                let limits = limits_with_depth(&policy, max_depth);
                assert_eq!(
                    check_request(request, limits),
                    validate_request(request, limits).map(|_| ()),
                    "size limit {max} (exact {exact}), depth limit {max_depth}"
                );
            }
        }
    }
}
