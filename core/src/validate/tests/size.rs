//! The payload size: exact like `serde_json`, inclusive limit, bounded cost.

use serde_json::{json, Value};

use crate::options::WorkerSecurityPolicy;
use crate::validate::test_requests::{exact_len, llm, policy, tool};
use crate::validate::{
    check_request, serialized_size_within, validate_request, RequestError, RequestLimits,
};

#[test]
fn check_request_agrees_with_validate_request_at_every_limit() {
    // Plain text, where the bound is exact up to the escapes it
    // assumes, and escape-heavy text, where it overshoots by 5x: at
    // every limit around the exact size, the cheap check and the exact
    // one agree.
    let plain = llm("just some plain prompt text, nothing to escape");
    let escaped = tool(json!({"k\u{1}": "\u{0}\u{1f}\"\\\n", "n": [1, -2, 3.5]}));
    for request in [plain, escaped] {
        let exact = exact_len(&request);
        for max in [
            1,
            exact / 2,
            exact - 1,
            exact,
            exact + 1,
            5 * exact,
            usize::MAX,
        ] {
            let policy = WorkerSecurityPolicy {
                max_request_payload_bytes: max,
                ..policy()
            };
            assert_eq!(
                check_request(&request, RequestLimits::new(&policy)),
                validate_request(&request, RequestLimits::new(&policy)).map(|_| ()),
                "limit {max}, exact size {exact}"
            );
            assert_eq!(
                check_request(&request, RequestLimits::new(&policy)).is_ok(),
                exact <= max
            );
        }
    }
}

#[test]
fn payload_limit_is_inclusive_and_exact() {
    let request = llm("some prompt \"quoted\"\n");
    let n = exact_len(&request);
    let at = WorkerSecurityPolicy {
        max_request_payload_bytes: n,
        ..policy()
    };
    assert_eq!(validate_request(&request, RequestLimits::new(&at)), Ok(n));
    let below = WorkerSecurityPolicy {
        max_request_payload_bytes: n - 1,
        ..policy()
    };
    let err = validate_request(&request, RequestLimits::new(&below)).unwrap_err();
    assert_eq!(err, RequestError::PayloadTooLarge { max: n - 1 });
    assert_eq!(
        err.to_string(),
        format!(
            "request payload exceeds max {} bytes when serialized as JSON \
             (security_policy.max_request_payload_bytes): shrink the prompt or inputs",
            n - 1
        )
    );
}

#[test]
fn counts_every_escape_like_serde_json() {
    let mut all_bytes = String::new();
    for c in 0u32..0x80 {
        all_bytes.extend(char::from_u32(c));
    }
    let strings = [
        String::new(),
        "plain".to_string(),
        "\"\\".to_string(),
        "\u{8}\u{c}\n\r\t".to_string(),
        "\u{0}\u{1}\u{1f}\u{b}".to_string(),
        "\u{7f}é漢字🦀".to_string(),
        all_bytes,
    ];
    for s in &strings {
        let request = tool(json!({ s.clone(): s, "arr": [s, {"k": s}] }));
        let mut request = request;
        request.request_id = s.clone();
        assert_eq!(
            serialized_size_within(&request, usize::MAX),
            Some(exact_len(&request)),
            "string {s:?}"
        );
    }
}

#[test]
fn counts_numbers_like_serde_json() {
    let values = json!([
        0,
        1,
        -1,
        9,
        10,
        99,
        100,
        u64::MAX,
        i64::MIN,
        i64::MAX,
        0.0,
        -0.0,
        0.1,
        1.5,
        -2.25,
        1e300,
        1e-300,
        5e-324,
        f64::MAX,
        f64::MIN,
        123456789.125,
        1e21,
        1e20,
        1e15,
        1e16,
        1e-7,
        0.000001
    ]);
    let mut request = tool(values);
    for timeout_ms in [None, Some(0), Some(9), Some(10), Some(u64::MAX)] {
        request.timeout_ms = timeout_ms;
        assert_eq!(
            serialized_size_within(&request, usize::MAX),
            Some(exact_len(&request))
        );
    }
}

#[test]
fn returns_none_exactly_past_the_limit() {
    let request = tool(json!({"a": [1, 2, {"b": null}], "c": "d\u{1}"}));
    let n = exact_len(&request);
    for limit in 0..n {
        assert_eq!(
            serialized_size_within(&request, limit),
            None,
            "limit {limit}"
        );
    }
    for limit in n..n + 3 {
        assert_eq!(serialized_size_within(&request, limit), Some(n));
    }
}

#[test]
fn refuses_a_100_mb_string_without_scanning_it() {
    // Every byte needs escaping, so a scan of the whole string would be
    // visible; a refusal happens on the raw length alone.
    let huge = "\u{1}".repeat(100 * 1024 * 1024);
    let request = llm(&huge);
    let start = std::time::Instant::now();
    assert_eq!(
        validate_request(&request, RequestLimits::new(&policy())),
        Err(RequestError::PayloadTooLarge { max: 256 * 1024 })
    );
    // Generous bound: a full scan takes tens of milliseconds.
    assert!(start.elapsed() < std::time::Duration::from_millis(20));
    let request = tool(json!({ "k": huge }));
    assert_eq!(serialized_size_within(&request, 256 * 1024), None);
}

#[test]
fn walks_wide_containers() {
    let wide = Value::Array((0..10_000).map(|i| json!({ format!("k{i}"): i })).collect());
    let request = tool(wide);
    assert_eq!(
        serialized_size_within(&request, usize::MAX),
        Some(exact_len(&request))
    );
    let empty = tool(json!([[], {}, [[]], {"": {}}]));
    assert_eq!(
        serialized_size_within(&empty, usize::MAX),
        Some(exact_len(&empty))
    );
}
