//! The request each [`Shape`] submits, and whether the pool's security
//! policy admits it: predicted from the policy's limits, not asked of the
//! core.

use std::io;

use foreman_core::{PoolConfig, WorkerOperation, WorkerRequest};
use serde_json::{json, Value};

use super::operations::Shape;

/// Longest `workflow_name` of a [`Shape::LongIdentifier`] request: one byte
/// past the policy's limit, up to this.
const LONGEST_IDENTIFIER: usize = 4096;

/// Largest input of a [`Shape::Oversized`] request: one byte past the
/// policy's payload limit, up to this (1 MiB).
const LARGEST_INPUT: usize = 1 << 20;

/// One request per [`Shape`], built on first use and reused for every
/// submit (the core only borrows the request; `timeout_ms` is set in place),
/// with what the policy says of it.
#[derive(Debug, Clone)]
pub(super) struct Templates {
    requests: [Option<Template>; 5],
    max_identifier: usize,
    max_payload: usize,
    max_timeout_ms: u64,
}

#[derive(Debug, Clone)]
struct Template {
    request: WorkerRequest,
    /// Every identifier within the policy's length limit.
    identifiers_fit: bool,
    /// Its compact JSON size with `timeout_ms: null`.
    size: usize,
}

impl Templates {
    /// The templates of a pool with `config`.
    pub(super) fn new(config: &PoolConfig) -> Self {
        let policy = &config.options.security_policy;
        Templates {
            requests: [None, None, None, None, None],
            max_identifier: policy.max_identifier_length,
            max_payload: policy.max_request_payload_bytes,
            max_timeout_ms: policy.max_request_timeout_ms,
        }
    }

    /// The request of `shape`, with `timeout_ms` set.
    pub(super) fn request(&mut self, shape: Shape, timeout_ms: Option<u64>) -> &WorkerRequest {
        let template = self.template(shape);
        template.request.timeout_ms = timeout_ms;
        &template.request
    }

    /// Whether the policy admits the request of `shape` with `timeout_ms`:
    /// identifiers within their limit, the timeout within its ceiling, and
    /// the request as compact JSON within the payload limit. (The
    /// templates' values nest one level at most, which every valid
    /// configuration allows.)
    pub(super) fn admits(&mut self, shape: Shape, timeout_ms: Option<u64>) -> bool {
        let (max_payload, max_timeout_ms) = (self.max_payload, self.max_timeout_ms);
        let template = self.template(shape);
        let size = match timeout_ms {
            Some(ms) => template.size - "null".len() + decimal_len(ms),
            None => template.size,
        };
        template.identifiers_fit
            && timeout_ms.is_none_or(|ms| ms <= max_timeout_ms)
            && size <= max_payload
    }

    fn template(&mut self, shape: Shape) -> &mut Template {
        let (max_identifier, max_payload) = (self.max_identifier, self.max_payload);
        self.requests[shape as usize].get_or_insert_with(|| {
            // Measured before its filler (plain ASCII, one JSON byte a
            // character) goes in, so a large request is never serialised.
            let (mut request, filler) = skeleton(shape, max_identifier, max_payload);
            let size = json_size(&request) + filler;
            fill(&mut request, shape, filler);
            let identifiers_fit = [
                &request.request_id,
                &request.workflow_name,
                &request.node_id,
            ]
            .iter()
            .all(|id| id.len() <= max_identifier);
            Template {
                request,
                identifiers_fit,
                size,
            }
        })
    }
}

/// The request of `shape` under a policy with these limits, with its
/// filler left out (an empty string where it goes), and the filler's
/// length: a [`Shape::LongIdentifier`]'s `workflow_name` one byte past the
/// identifier limit, a [`Shape::Oversized`] request's input one byte past
/// the payload limit.
fn skeleton(shape: Shape, max_identifier: usize, max_payload: usize) -> (WorkerRequest, usize) {
    let mut request = WorkerRequest {
        request_id: "req".to_string(),
        workflow_name: "sim".to_string(),
        node_id: "node".to_string(),
        timeout_ms: None,
        operation: WorkerOperation::Tool {
            tool: "echo".to_string(),
            input: json!({"n": 1}),
            scoped_input: json!({}),
        },
    };
    let mut filler = 0;
    match shape {
        Shape::Tool => {}
        Shape::Llm => {
            request.operation = WorkerOperation::Llm {
                model: "model".to_string(),
                prompt: "say hi".to_string(),
                scoped_input: Value::Null,
            };
        }
        Shape::Unnamed => {
            request.request_id.clear();
            request.workflow_name.clear();
            request.node_id.clear();
        }
        Shape::LongIdentifier => {
            request.workflow_name.clear();
            filler = max_identifier.min(LONGEST_IDENTIFIER - 1) + 1;
        }
        Shape::Oversized => {
            request.operation = WorkerOperation::Tool {
                tool: "echo".to_string(),
                input: Value::String(String::new()),
                scoped_input: json!({}),
            };
            filler = max_payload.min(LARGEST_INPUT) + 1;
        }
    }
    (request, filler)
}

/// Puts the filler of [`skeleton`] in.
fn fill(request: &mut WorkerRequest, shape: Shape, filler: usize) {
    match (shape, &mut request.operation) {
        (Shape::LongIdentifier, _) => request.workflow_name = "w".repeat(filler),
        (Shape::Oversized, WorkerOperation::Tool { input, .. }) => {
            *input = Value::String("x".repeat(filler));
        }
        _ => {}
    }
}

/// The length of `request` as compact JSON (what `serde_json::to_vec`
/// would write), counted without building it.
fn json_size(request: &WorkerRequest) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, request) {
        Ok(()) => count.0,
        // A request of strings and small JSON values always serialises.
        Err(_) => usize::MAX,
    }
}

/// Digits of `n` in decimal.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |digits| digits as usize + 1)
}

#[cfg(test)]
mod tests {
    use foreman_core::{validate_request, WorkerPoolOptions, WorkerSecurityPolicy};

    use super::*;

    fn config(max_identifier: usize, max_payload: usize, max_timeout_ms: u64) -> PoolConfig {
        PoolConfig::new(WorkerPoolOptions {
            security_policy: WorkerSecurityPolicy {
                max_request_timeout_ms: max_timeout_ms,
                max_request_payload_bytes: max_payload,
                max_identifier_length: max_identifier,
            },
            ..WorkerPoolOptions::default()
        })
    }

    #[test]
    fn the_predicted_size_is_the_serialised_size_and_admission_the_cores() {
        let policies = [
            config(128, 256 * 1024, 120_000),
            config(32, 2048, 120_000),
            config(0, 0, 0),
            config(3, 150, 5),
            config(usize::MAX, usize::MAX, u64::MAX),
        ];
        for config in policies {
            let mut templates = Templates::new(&config);
            for shape in Shape::ALL {
                for timeout_ms in [None, Some(0), Some(5), Some(123_456), Some(u64::MAX)] {
                    let admits = templates.admits(shape, timeout_ms);
                    let size = templates.template(shape).size;
                    let request = templates.request(shape, timeout_ms).clone();
                    let serialised = serde_json::to_vec(&request).map(|json| json.len());
                    let null_size = serialised
                        .as_ref()
                        .map_or(0, |n| n - timeout_ms.map_or(4, decimal_len) + "null".len());
                    assert_eq!(null_size, size, "{shape:?} {timeout_ms:?}");
                    let core = validate_request(&request, config.request_limits()).is_ok();
                    assert_eq!(
                        admits, core,
                        "{shape:?} {timeout_ms:?} under {:?}",
                        config.options.security_policy
                    );
                }
            }
        }
    }
}
