//! Request validation: the security policy's checks, at a cost bounded by
//! the policy rather than by the request.
//!
//! [`validate_request`] applies the reference's checks (identifier lengths,
//! timeout ceiling, serialised payload size), in the reference's order and
//! with its outcome for every request. The payload check never builds
//! the JSON: [`serialized_size_within`] adds up what `serde_json` would write
//! and stops as soon as the total passes the limit, so refusing a 100 MB
//! payload costs no more than accepting one at the limit.

use std::io;

use serde_json::map;
use serde_json::{Number, Value};
use thiserror::Error;

use crate::config::WorkerSecurityPolicy;
use crate::protocol::{WorkerOperation, WorkerPoolError, WorkerRequest};

/// Checks a request against the security policy and returns its exact
/// serialised size in bytes.
///
/// The checks run in this order, and the first failure is reported:
/// `request_id`, `workflow_name`, `node_id` (each at most
/// `max_identifier_length` bytes; empty is allowed, as in the reference);
/// `timeout_ms` (if set: at most `max_request_timeout_ms`; zero passes and
/// the pool answers it `Timeout` on arrival); then the size of the request serialised as
/// compact JSON, which must not exceed `max_request_payload_bytes`.
///
/// The size check costs O(`max_request_payload_bytes`) at most, whatever the
/// size of the request: a string longer than what is left of the budget is
/// refused without being scanned, and values nested more than a few levels
/// deep are walked without recursion, so no nesting depth can overflow the
/// stack.
///
/// # Errors
///
/// Returns the [`RequestError`] of the first check that fails.
pub fn validate_request(
    request: &WorkerRequest,
    policy: &WorkerSecurityPolicy,
) -> Result<usize, RequestError> {
    check_fields(request, policy)?;
    let max = policy.max_request_payload_bytes;
    serialized_size_within(request, max).ok_or(RequestError::PayloadTooLarge { max })
}

/// Runs the checks of [`validate_request`], with the same result, but
/// without computing the exact serialised size when a cheaper bound shows
/// that the request fits.
///
/// The bound counts every string byte as if it needed the longest escape
/// (`\u00XX`); only a request whose bound passes the limit has its strings
/// scanned. The bounding walk stops where its bound passes the limit, so a
/// request costs at most that part of it plus one exact walk (also one
/// that is refused: the exact walk stops at the limit too). What
/// [`PoolConfig::admit`](crate::PoolConfig::admit) runs.
///
/// # Errors
///
/// Returns the [`RequestError`] of the first check that fails, exactly as
/// [`validate_request`] does.
pub fn check_request(
    request: &WorkerRequest,
    policy: &WorkerSecurityPolicy,
) -> Result<(), RequestError> {
    check_fields(request, policy)?;
    let max = policy.max_request_payload_bytes;
    // The bound first; where it passes the limit, the exact walk decides.
    let fits = add_request(&mut Budget::bounding(max), request).is_some()
        || serialized_size_within(request, max).is_some();
    if fits {
        Ok(())
    } else {
        Err(RequestError::PayloadTooLarge { max })
    }
}

/// The identifier and timeout checks of [`validate_request`], in order.
fn check_fields(
    request: &WorkerRequest,
    policy: &WorkerSecurityPolicy,
) -> Result<(), RequestError> {
    let max_identifier = policy.max_identifier_length;
    check_identifier("request_id", &request.request_id, max_identifier)?;
    check_identifier("workflow_name", &request.workflow_name, max_identifier)?;
    check_identifier("node_id", &request.node_id, max_identifier)?;
    if let Some(timeout_ms) = request.timeout_ms {
        if timeout_ms > policy.max_request_timeout_ms {
            return Err(RequestError::TimeoutTooLong {
                timeout_ms,
                max_ms: policy.max_request_timeout_ms,
            });
        }
    }
    Ok(())
}

/// Returns the length of `serde_json::to_vec(request)` if it is at most
/// `limit` bytes, and `None` otherwise, without serialising the request.
///
/// The walk adds up the compact JSON length field by field and stops as soon
/// as the running total passes `limit`. Every value visited adds at least
/// one byte, so the cost is O(`limit`), whatever the size of the request.
/// Strings longer than the remaining budget are
/// refused without being scanned; `serde_json::Value`s nested deeper than a
/// few levels are walked with an explicit stack, so any nesting depth is safe. When the result is
/// `Some(n)`, `n` equals the serialised length exactly.
#[must_use]
pub fn serialized_size_within(request: &WorkerRequest, limit: usize) -> Option<usize> {
    let mut budget = Budget::new(limit);
    add_request(&mut budget, request)?;
    Some(budget.used())
}

/// Adds `request` as compact JSON to `budget`, field by field.
fn add_request(budget: &mut Budget, request: &WorkerRequest) -> Option<()> {
    // Keys and punctuation first, in one step; then the values.
    let frame = match request.operation {
        WorkerOperation::Llm { .. } => REQUEST_FRAME + LLM_FRAME,
        WorkerOperation::Tool { .. } => REQUEST_FRAME + TOOL_FRAME,
    };
    budget.add(frame)?;
    budget.add_str(&request.request_id)?;
    budget.add_str(&request.workflow_name)?;
    budget.add_str(&request.node_id)?;
    match request.timeout_ms {
        Some(timeout_ms) => budget.add(decimal_len(timeout_ms))?,
        None => budget.add("null".len())?,
    }
    match &request.operation {
        WorkerOperation::Llm {
            model,
            prompt,
            scoped_input,
        } => {
            budget.add_str(model)?;
            budget.add_str(prompt)?;
            budget.add_value(scoped_input)
        }
        WorkerOperation::Tool {
            tool,
            input,
            scoped_input,
        } => {
            budget.add_str(tool)?;
            budget.add_value(input)?;
            budget.add_value(scoped_input)
        }
    }
}

/// A serialised request without its values: its keys, punctuation and
/// closing brace.
const REQUEST_FRAME: usize =
    r#"{"request_id":,"workflow_name":,"node_id":,"timeout_ms":,"operation":}"#.len();

/// An LLM operation without its values.
const LLM_FRAME: usize = r#"{"kind":"llm","model":,"prompt":,"scoped_input":}"#.len();

/// A tool operation without its values.
const TOOL_FRAME: usize = r#"{"kind":"tool","tool":,"input":,"scoped_input":}"#.len();

/// Why a request was refused before it reached any worker.
///
/// Every message names the offending field and the limit it broke, so the
/// caller can fix the request (or the policy).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RequestError {
    /// An identifier was longer than the policy allows.
    #[error(
        "{field} is {len} bytes long, over the limit of {max} bytes \
         (security_policy.max_identifier_length): shorten it"
    )]
    IdentifierTooLong {
        /// The offending field: `request_id`, `workflow_name` or `node_id`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The policy's limit in bytes.
        max: usize,
    },
    /// `timeout_ms` was above the policy's ceiling.
    #[error(
        "timeout_ms {timeout_ms} exceeds max {max_ms} \
         (security_policy.max_request_timeout_ms): ask for at most {max_ms} ms"
    )]
    TimeoutTooLong {
        /// The requested timeout in milliseconds.
        timeout_ms: u64,
        /// The policy's ceiling in milliseconds.
        max_ms: u64,
    },
    /// The request, serialised as compact JSON, was larger than the policy
    /// allows. The actual size is not reported: computing it would cost as
    /// much as the payload is large, which is what the check guards against.
    #[error(
        "request payload exceeds max {max} bytes when serialized as JSON \
         (security_policy.max_request_payload_bytes): shrink the prompt or inputs"
    )]
    PayloadTooLarge {
        /// The policy's limit in bytes.
        max: usize,
    },
}

impl From<RequestError> for WorkerPoolError {
    fn from(err: RequestError) -> Self {
        WorkerPoolError::InvalidRequest {
            reason: err.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn check_identifier(field: &'static str, value: &str, max: usize) -> Result<(), RequestError> {
    let len = value.len();
    if len > max {
        return Err(RequestError::IdentifierTooLong { field, len, max });
    }
    Ok(())
}

/// Extra bytes `serde_json` writes for each byte of a string, beyond the byte
/// itself: 1 for the two-character escapes (`\"`, `\\`, `\b`, `\f`, `\n`,
/// `\r`, `\t`), 5 for the other control bytes (`\u00XX`), 0 for everything
/// else (including DEL and every byte of non-ASCII UTF-8, written raw).
static ESCAPE_EXTRA: [u8; 256] = build_escape_table();

/// Builds [`ESCAPE_EXTRA`] at compile time (its indices are constants below
/// 256, so no input reaches them).
const fn build_escape_table() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = 5;
        byte += 1;
    }
    table[0x08] = 1; // \b
    table[0x09] = 1; // \t
    table[0x0a] = 1; // \n
    table[0x0c] = 1; // \f
    table[0x0d] = 1; // \r
    table[b'"' as usize] = 1;
    table[b'\\' as usize] = 1;
    table
}

/// Bytes `serde_json` adds when escaping `bytes` (see [`ESCAPE_EXTRA`]).
///
/// Most text needs no escaping, so eight bytes at a time are first tested
/// for any byte below 0x20, `"` or `\` (the classic "has zero byte" word
/// tricks); only words that have one are added up through the table.
fn escape_extra(bytes: &[u8]) -> usize {
    if bytes.len() < 16 {
        // Identifiers and keys: a plain table walk beats the word setup.
        return table_extra(bytes);
    }
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_ne_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_ne_bytes([b'\\'; 8]);
    const CONTROL_BOUND: u64 = u64::from_ne_bytes([0x20; 8]);

    let mut words = bytes.chunks_exact(8);
    let mut extra = 0;
    for word in &mut words {
        // `chunks_exact(8)` only yields 8-byte slices; the fallback is dead.
        let x = u64::from_ne_bytes(<[u8; 8]>::try_from(word).unwrap_or([0; 8]));
        let quote = x ^ QUOTES;
        let backslash = x ^ BACKSLASHES;
        // High bit set in some byte iff some byte of `x` is below 0x20, or
        // some byte of `quote` / `backslash` is zero.
        let special = (x.wrapping_sub(CONTROL_BOUND) & !x)
            | (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash);
        if special & HIGHS != 0 {
            extra += table_extra(word);
        }
    }
    extra + table_extra(words.remainder())
}

/// [`escape_extra`] byte by byte, through the table.
fn table_extra(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .map(|&b| usize::from(ESCAPE_EXTRA.get(usize::from(b)).copied().unwrap_or(0)))
        .sum()
}

/// Number of decimal digits of `n`, as `itoa` writes it.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// Length of a JSON number exactly as `serde_json` writes it (`itoa` for
/// integers, `ryu` for floats, the raw text with `arbitrary_precision`).
fn number_len(number: &Number) -> Option<usize> {
    // Integers, by far the most common, are counted directly. (With
    // `arbitrary_precision` a number keeps its source text; text that
    // parses as an integer is written back unchanged, and "-0", which
    // would not be, is not below zero and takes the general path.)
    if let Some(n) = number.as_u64() {
        return Some(decimal_len(n));
    }
    if let Some(n) = number.as_i64().filter(|n| *n < 0) {
        return Some(decimal_len(n.unsigned_abs()) + 1);
    }
    let mut counter = ByteCounter(0);
    // Writing to a `ByteCounter` cannot fail and a `Number` always
    // serialises; should either ever happen, the size is unknown and the
    // request is refused rather than accepted unchecked.
    serde_json::to_writer(&mut counter, number).ok()?;
    Some(counter.0)
}

/// An `io::Write` that only counts the bytes written to it.
struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A running byte count that fails (returns `None`) once it passes its limit.
///
/// An exact budget scans every string for escapes. A bounding one
/// ([`Budget::bounding`]) counts every string byte at its longest escape
/// instead: an upper bound, so the walk stops as soon as that bound passes
/// the limit.
struct Budget {
    limit: usize,
    remaining: usize,
    /// Whether strings are scanned for escapes.
    exact: bool,
}

/// The most bytes escaping adds to one byte (`\u00XX` for a control byte).
const WORST_ESCAPE_EXTRA: usize = 5;

/// A container whose remaining children are still to be walked.
enum Frame<'a> {
    Array(std::slice::Iter<'a, Value>),
    Object(map::Iter<'a>),
}

/// How many levels of a value [`Budget::add_value`] walks by recursion
/// before it switches to the explicit stack (bounded, so no payload can
/// overflow the stack).
const SHALLOW_LEVELS: u32 = 8;

/// How many frames [`Frames`] holds before it allocates.
const INLINE_FRAMES: usize = 4;

/// The walk's stack: the first [`INLINE_FRAMES`] levels live inline, so
/// the usual shallow payload is measured without allocating.
struct Frames<'a> {
    inline: [Option<Frame<'a>>; INLINE_FRAMES],
    depth: usize,
    spill: Vec<Frame<'a>>,
}

impl<'a> Frames<'a> {
    fn new() -> Self {
        Frames {
            inline: [None, None, None, None],
            depth: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, frame: Frame<'a>) {
        match self.inline.get_mut(self.depth) {
            Some(slot) => *slot = Some(frame),
            None => self.spill.push(frame),
        }
        self.depth += 1;
    }

    fn pop(&mut self) {
        if self.depth > INLINE_FRAMES {
            self.spill.pop();
        } else if let Some(slot) = self
            .depth
            .checked_sub(1)
            .and_then(|i| self.inline.get_mut(i))
        {
            *slot = None;
        }
        self.depth = self.depth.saturating_sub(1);
    }

    fn last_mut(&mut self) -> Option<&mut Frame<'a>> {
        if self.depth > INLINE_FRAMES {
            self.spill.last_mut()
        } else {
            self.depth
                .checked_sub(1)
                .and_then(|i| self.inline.get_mut(i))
                .and_then(Option::as_mut)
        }
    }
}

impl Budget {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            remaining: limit,
            exact: true,
        }
    }

    /// A budget that does not scan strings (see [`Budget`]).
    fn bounding(limit: usize) -> Self {
        Self {
            exact: false,
            ..Self::new(limit)
        }
    }

    fn used(&self) -> usize {
        // `remaining` only ever decreases from `limit`.
        self.limit.saturating_sub(self.remaining)
    }

    fn add(&mut self, bytes: usize) -> Option<()> {
        self.remaining = self.remaining.checked_sub(bytes)?;
        Some(())
    }

    /// Adds a JSON string: quotes, raw bytes and escapes.
    fn add_str(&mut self, s: &str) -> Option<()> {
        let bytes = s.as_bytes();
        // Escapes only ever add bytes, so a string whose raw bytes and quotes
        // do not fit is refused without being scanned.
        self.add(bytes.len().checked_add(2)?)?;
        if self.exact {
            self.add(escape_extra(bytes))
        } else {
            self.add(bytes.len().checked_mul(WORST_ESCAPE_EXTRA)?)
        }
    }

    /// Adds a JSON value. The first [`SHALLOW_LEVELS`] levels are walked
    /// by (bounded) recursion, which is cheapest for the usual small
    /// payload; anything nested deeper goes to [`add_deep`](Self::add_deep).
    /// A container's brackets, commas and colons are added before its
    /// children, so every value visited costs budget and the walk stops
    /// as soon as the budget runs out.
    fn add_value(&mut self, value: &Value) -> Option<()> {
        self.add_shallow(value, SHALLOW_LEVELS)
    }

    /// [`add_value`](Self::add_value) with `levels` levels of recursion
    /// left.
    fn add_shallow(&mut self, value: &Value, levels: u32) -> Option<()> {
        match value {
            Value::Array(_) | Value::Object(_) if levels == 0 => self.add_deep(value),
            Value::Array(items) => {
                self.add(array_bytes(items.len())?)?;
                items
                    .iter()
                    .try_for_each(|item| self.add_shallow(item, levels - 1))
            }
            Value::Object(entries) => {
                self.add(object_bytes(entries.len())?)?;
                entries.iter().try_for_each(|(key, item)| {
                    self.add_str(key)?;
                    self.add_shallow(item, levels - 1)
                })
            }
            scalar => self.add_own(scalar),
        }
    }

    /// Adds a JSON value, walking nested arrays and objects with an explicit
    /// stack. Brackets, commas and colons are added when a container is
    /// entered, so every level costs at least two bytes of budget and the
    /// stack can never hold more than `limit / 2` frames.
    fn add_deep(&mut self, root: &Value) -> Option<()> {
        let mut stack = Frames::new();
        let mut next = Some(root);
        loop {
            if let Some(value) = next.take() {
                self.add_own(value)?;
                match value {
                    Value::Array(items) => stack.push(Frame::Array(items.iter())),
                    Value::Object(entries) => stack.push(Frame::Object(entries.iter())),
                    _ => {}
                }
            }
            match stack.last_mut() {
                None => return Some(()),
                Some(Frame::Array(items)) => match items.next() {
                    Some(item) => next = Some(item),
                    None => {
                        stack.pop();
                    }
                },
                Some(Frame::Object(entries)) => match entries.next() {
                    Some((key, item)) => {
                        self.add_str(key)?;
                        next = Some(item);
                    }
                    None => {
                        stack.pop();
                    }
                },
            }
        }
    }

    /// Adds a value's own bytes: all of a scalar; a container's brackets,
    /// commas between neighbours and (objects) a colon per entry, without
    /// its children, which the walks add.
    #[inline]
    fn add_own(&mut self, value: &Value) -> Option<()> {
        match value {
            Value::Null | Value::Bool(true) => self.add(4),
            Value::Bool(false) => self.add(5),
            Value::Number(number) => self.add(number_len(number)?),
            Value::String(s) => self.add_str(s),
            Value::Array(items) => self.add(array_bytes(items.len())?),
            Value::Object(entries) => self.add(object_bytes(entries.len())?),
        }
    }
}

/// An array's own bytes: `[`, `]` and a comma between neighbours.
fn array_bytes(items: usize) -> Option<usize> {
    items.saturating_sub(1).checked_add(2)
}

/// An object's own bytes: `{`, `}`, a comma between neighbours and a colon
/// per entry.
fn object_bytes(entries: usize) -> Option<usize> {
    array_bytes(entries)?.checked_add(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> WorkerSecurityPolicy {
        WorkerSecurityPolicy::default()
    }

    fn llm(prompt: &str) -> WorkerRequest {
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

    fn tool(input: Value) -> WorkerRequest {
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

    fn exact_len(request: &WorkerRequest) -> usize {
        serde_json::to_vec(request).map(|v| v.len()).unwrap_or(0)
    }

    /// Drops a value without recursion (serde_json's own `Drop` recurses).
    fn dismantle(value: Value) {
        let mut pending = vec![value];
        while let Some(value) = pending.pop() {
            match value {
                Value::Array(items) => pending.extend(items),
                Value::Object(entries) => pending.extend(entries.into_iter().map(|(_, v)| v)),
                _ => {}
            }
        }
    }

    #[test]
    fn accepts_a_valid_request_and_returns_its_exact_size() {
        let request = llm("hello");
        assert_eq!(
            validate_request(&request, &policy()),
            Ok(exact_len(&request))
        );
        let request = tool(json!({"q": "rust", "n": 10}));
        assert_eq!(
            validate_request(&request, &policy()),
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
            validate_request(&request, &policy()),
            Ok(exact_len(&request))
        );
        assert_eq!(check_request(&request, &policy()), Ok(()));
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
        let err = validate_request(&request, &policy).unwrap_err();
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
            validate_request(&request, &policy),
            Err(RequestError::IdentifierTooLong {
                field: "node_id",
                len: 6,
                max: 4
            })
        );

        // Length is in bytes, not characters.
        request.node_id = "ééé".into();
        assert_eq!(
            validate_request(&request, &policy),
            Err(RequestError::IdentifierTooLong {
                field: "node_id",
                len: 6,
                max: 4
            })
        );

        // Empty beats too long: the first field is checked completely first.
        request.request_id = "toolong".into();
        request.node_id = String::new();
        assert_eq!(
            validate_request(&request, &policy),
            Err(RequestError::IdentifierTooLong {
                field: "request_id",
                len: 7,
                max: 4
            })
        );
    }

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
                    check_request(&request, &policy),
                    validate_request(&request, &policy).map(|_| ()),
                    "limit {max}, exact size {exact}"
                );
                assert_eq!(check_request(&request, &policy).is_ok(), exact <= max);
            }
        }
    }

    #[test]
    fn accepts_a_zero_timeout_which_the_pool_answers_as_timed_out() {
        let mut request = llm("p");
        request.timeout_ms = Some(0);
        assert_eq!(
            validate_request(&request, &policy()),
            Ok(exact_len(&request))
        );
        let zero_ceiling = WorkerSecurityPolicy {
            max_request_timeout_ms: 0,
            ..policy()
        };
        assert!(validate_request(&request, &zero_ceiling).is_ok());
        request.timeout_ms = Some(1);
        assert_eq!(
            validate_request(&request, &zero_ceiling),
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
        assert!(validate_request(&request, &policy()).is_ok());
        request.timeout_ms = Some(120_001);
        let err = validate_request(&request, &policy()).unwrap_err();
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
            validate_request(&request, &policy),
            Err(RequestError::IdentifierTooLong {
                field: "node_id",
                len: 129,
                max: 128
            })
        );
        request.node_id = "n".into();
        assert_eq!(
            validate_request(&request, &policy),
            Err(RequestError::TimeoutTooLong {
                timeout_ms: 120_001,
                max_ms: 120_000
            })
        );
        request.timeout_ms = None;
        assert_eq!(
            validate_request(&request, &policy),
            Err(RequestError::PayloadTooLarge { max: 10 })
        );
    }

    #[test]
    fn payload_limit_is_inclusive_and_exact() {
        let request = llm("some prompt \"quoted\"\n");
        let n = exact_len(&request);
        let at = WorkerSecurityPolicy {
            max_request_payload_bytes: n,
            ..policy()
        };
        assert_eq!(validate_request(&request, &at), Ok(n));
        let below = WorkerSecurityPolicy {
            max_request_payload_bytes: n - 1,
            ..policy()
        };
        let err = validate_request(&request, &below).unwrap_err();
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
            validate_request(&request, &policy()),
            Err(RequestError::PayloadTooLarge { max: 256 * 1024 })
        );
        // Generous bound: a full scan takes tens of milliseconds.
        assert!(start.elapsed() < std::time::Duration::from_millis(20));
        let request = tool(json!({ "k": huge }));
        assert_eq!(serialized_size_within(&request, 256 * 1024), None);
    }

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
        // Within a normal limit the walk stops long before the bottom.
        assert_eq!(
            validate_request(&request, &policy()),
            Err(RequestError::PayloadTooLarge { max: 256 * 1024 })
        );
        // With no limit it walks all the way and counts exactly:
        // null, then "[]" per array level and {"k":} per object level.
        let objects = DEPTH / 100;
        let base = exact_len(&tool(Value::Null));
        let expected = base + (DEPTH - objects) * 2 + objects * 6;
        assert_eq!(serialized_size_within(&request, usize::MAX), Some(expected));
        if let WorkerOperation::Tool { input, .. } = request.operation {
            dismantle(input);
        }
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

    #[test]
    fn word_scan_agrees_with_the_table_for_every_byte_and_position() {
        for special in 0u8..=255 {
            for len in 0..20 {
                for position in 0..len {
                    let mut bytes = vec![b'a'; len];
                    if let Some(slot) = bytes.get_mut(position) {
                        *slot = special;
                    }
                    // Neighbours that sit just above each boundary.
                    if let Some(slot) = bytes.get_mut(position + 1) {
                        *slot = 0x20;
                    }
                    assert_eq!(
                        escape_extra(&bytes),
                        table_extra(&bytes),
                        "byte {special:#x} at {position} of {len}"
                    );
                }
            }
        }
        let mixed: Vec<u8> = (0..4096u32).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(escape_extra(&mixed), table_extra(&mixed));
    }

    #[test]
    fn decimal_len_matches_formatting() {
        for n in [0, 1, 9, 10, 11, 99, 100, 999, 1000, u64::MAX / 10, u64::MAX] {
            assert_eq!(decimal_len(n), n.to_string().len());
        }
    }
}
