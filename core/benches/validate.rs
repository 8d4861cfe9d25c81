//! `validate_request` (exact size) and `check_request` (what admission runs:
//! a worst-escape bound first, the exact walk only when the bound passes the
//! limit) against the reference's approach (serialise the whole request with
//! `serde_json::to_vec`, then compare its length).
//!
//! Run with
//! `cargo bench -p foreman-core --bench validate -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use foreman_core::{
    check_request, validate_request, RequestLimits, WorkerOperation, WorkerRequest,
    WorkerSecurityPolicy,
};
use serde_json::{json, Value};

const LIMIT: usize = 256 * 1024;

/// The reference's check: identifier lengths, timeout ceiling, then a full
/// serialisation to measure the payload.
fn reference_check(request: &WorkerRequest, policy: &WorkerSecurityPolicy) -> Result<usize, ()> {
    for id in [
        &request.request_id,
        &request.workflow_name,
        &request.node_id,
    ] {
        if id.len() > policy.max_identifier_length {
            return Err(());
        }
    }
    if request
        .timeout_ms
        .is_some_and(|t| t > policy.max_request_timeout_ms)
    {
        return Err(());
    }
    let size = serde_json::to_vec(request).map_or(usize::MAX, |bytes| bytes.len());
    if size > policy.max_request_payload_bytes {
        return Err(());
    }
    Ok(size)
}

fn llm(prompt: String) -> WorkerRequest {
    WorkerRequest {
        request_id: "req-0001".into(),
        workflow_name: "support-triage".into(),
        node_id: "classify".into(),
        timeout_ms: Some(30_000),
        operation: WorkerOperation::Llm {
            model: "gpt-4o-mini".into(),
            prompt,
            scoped_input: json!({"ticket": 42, "lang": "en"}),
        },
    }
}

fn size(request: &WorkerRequest) -> usize {
    serde_json::to_vec(request).map_or(0, |bytes| bytes.len())
}

/// A request whose string prompt makes it exactly `LIMIT` bytes long.
fn string_at_limit() -> WorkerRequest {
    let mut request = llm(String::new());
    let pad = LIMIT - size(&request);
    // Mostly plain text with some characters that need escaping.
    let mut prompt = String::with_capacity(pad);
    let line = "The customer writes: \"my order #123 never arrived\".\n";
    let escaped_line = serde_json::to_string(line).map_or(0, |s| s.len() - 2);
    let mut written = 0;
    while written + escaped_line <= pad {
        prompt.push_str(line);
        written += escaped_line;
    }
    request.operation = WorkerOperation::Llm {
        model: "gpt-4o-mini".into(),
        prompt: prompt.clone(),
        scoped_input: json!({"ticket": 42, "lang": "en"}),
    };
    let rest = LIMIT - size(&request);
    prompt.push_str(&"x".repeat(rest));
    request.operation = WorkerOperation::Llm {
        model: "gpt-4o-mini".into(),
        prompt,
        scoped_input: json!({"ticket": 42, "lang": "en"}),
    };
    assert_eq!(size(&request), LIMIT);
    request
}

/// One element of the structured payloads.
fn item(i: u64) -> Value {
    json!({
        "id": i,
        "name": format!("item-{i}"),
        "score": i as f64 * 0.37,
        "tags": ["alpha", "beta", "gamma"],
        "attrs": {"enabled": i % 2 == 0, "weight": -(i as i64), "note": null,
                  "nested": {"depth": 3, "path": ["a", "b", "c"]}},
    })
}

fn structured(items: Vec<Value>, pad: &str) -> WorkerRequest {
    WorkerRequest {
        request_id: "req-0002".into(),
        workflow_name: "catalog-sync".into(),
        node_id: "upsert".into(),
        timeout_ms: None,
        operation: WorkerOperation::Tool {
            tool: "db.upsert".into(),
            input: json!({"items": items, "pad": pad}),
            scoped_input: json!({"tenant": "acme"}),
        },
    }
}

/// A tool request whose input is a structure of nested objects, padded so
/// the whole request is exactly `LIMIT` bytes long.
fn structured_at_limit() -> WorkerRequest {
    let mut items = Vec::new();
    let mut i = 0;
    while size(&structured(items.clone(), "")) < LIMIT - 2 * 1024 {
        items.push(item(i));
        i += 1;
    }
    let pad = "p".repeat(LIMIT - size(&structured(items.clone(), "")));
    let request = structured(items, &pad);
    assert_eq!(size(&request), LIMIT);
    request
}

fn bench(c: &mut Criterion) {
    let policy = WorkerSecurityPolicy::default();
    let limits = RequestLimits::new(&policy);
    let cases = [
        ("small", llm("Classify this ticket.".into())),
        ("string_at_limit", string_at_limit()),
        ("structured_at_limit", structured_at_limit()),
        ("string_100mb_refused", llm("x".repeat(100 * 1024 * 1024))),
        (
            "structured_10mb_refused",
            structured((0..50_000).map(item).collect(), ""),
        ),
    ];
    for (name, request) in &cases {
        let expected = reference_check(request, &policy).ok();
        assert_eq!(validate_request(request, limits).ok(), expected);
        assert_eq!(check_request(request, limits).is_ok(), expected.is_some());
        let mut group = c.benchmark_group(*name);
        if name.contains("mb_refused") {
            // The reference takes tens of milliseconds per iteration here.
            group.sampling_mode(SamplingMode::Flat).sample_size(10);
        }
        group.bench_function("foreman", |b| {
            b.iter(|| validate_request(black_box(request), black_box(limits)))
        });
        group.bench_function("foreman_check", |b| {
            b.iter(|| check_request(black_box(request), black_box(limits)))
        });
        group.bench_function("reference", |b| {
            b.iter(|| reference_check(black_box(request), black_box(&policy)))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
