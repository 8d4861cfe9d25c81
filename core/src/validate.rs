//! Request validation: the security policy's checks and foreman's nesting
//! limit, at a cost bounded by the limits rather than by the request.
//!
//! [`validate_request`] applies the reference's checks (identifier lengths,
//! timeout ceiling, serialised payload size), in the reference's order and
//! with its outcome for every request, plus foreman's own limit on nesting:
//! a JSON value nested deeper than [`RequestLimits::max_depth`] is refused. The payload check never
//! builds the JSON: one walk adds up what `serde_json` would write, measures
//! how deep each value nests, and stops as soon as either passes its limit,
//! so refusing a 100 MB payload or a value nested a million levels deep costs
//! no more than accepting one at the limits.
//!
//! # Nesting depth
//!
//! A value's nesting depth is the number of arrays and objects on the
//! deepest path from it down, itself included: a string, number, boolean or
//! `null` has depth 0, `[]` and `{}` have depth 1, `{"a":[1]}` has depth 2.
//! Each JSON value of a request (`operation.input`, `operation.scoped_input`)
//! is measured on its own, without the request's and the operation's own
//! objects around it.

use std::io;

use serde_json::map;
use serde_json::{Number, Value};
use thiserror::Error;

use crate::options::WorkerSecurityPolicy;
use crate::protocol::{WorkerOperation, WorkerPoolError, WorkerRequest};

/// The default of [`RequestLimits::max_depth`] and
/// [`PoolConfig::max_request_depth`](crate::PoolConfig::max_request_depth):
/// serde_json's recursion limit, so no request serde_json parsed from JSON
/// text (where a request's values sit two objects deep) is refused for its
/// depth.
pub const DEFAULT_MAX_REQUEST_DEPTH: usize = 128;

/// What a request is checked against: the reference's security policy and
/// foreman's limit on how deep its JSON values nest.
///
/// [`PoolConfig::request_limits`](crate::PoolConfig::request_limits) gives a
/// pool's; [`RequestLimits::new`] pairs a policy with the default depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits<'a> {
    /// Identifier lengths, timeout ceiling and payload size.
    pub policy: &'a WorkerSecurityPolicy,
    /// The deepest nesting (see the [module docs](self)) allowed in each of
    /// a request's JSON values.
    pub max_depth: usize,
}

impl<'a> RequestLimits<'a> {
    /// `policy`, with the default depth limit
    /// ([`DEFAULT_MAX_REQUEST_DEPTH`]).
    #[must_use]
    pub fn new(policy: &'a WorkerSecurityPolicy) -> Self {
        Self {
            policy,
            max_depth: DEFAULT_MAX_REQUEST_DEPTH,
        }
    }
}

/// Checks a request against `limits` and returns its exact serialised size
/// in bytes.
///
/// The checks run in this order, and the first failure is reported:
/// `request_id`, `workflow_name`, `node_id` (each at most
/// `max_identifier_length` bytes; empty is allowed, as in the reference);
/// `timeout_ms` (if set: at most `max_request_timeout_ms`; zero passes and
/// the pool answers it `Timeout` on arrival); then one walk of the request in
/// serialisation order, which checks both that the request serialised as
/// compact JSON does not exceed `max_request_payload_bytes` and that no value
/// nests deeper than `max_depth`, and reports whichever limit it passes
/// first.
///
/// The walk costs O(`max_request_payload_bytes`) at most, whatever the size
/// or depth of the request: a string longer than what is left of the budget
/// is refused without being scanned, every level costs budget, and values
/// nested more than a few levels deep are walked without recursion, so no
/// nesting depth can overflow the stack.
///
/// # Errors
///
/// Returns the [`RequestError`] of the first check that fails.
pub fn validate_request(
    request: &WorkerRequest,
    limits: RequestLimits<'_>,
) -> Result<usize, RequestError> {
    check_fields(request, limits.policy)?;
    Budget::new(limits.policy.max_request_payload_bytes, limits.max_depth).walk(request)
}

/// Runs the checks of [`validate_request`], with the same result, but
/// without computing the exact serialised size when a cheaper bound shows
/// that the request fits.
///
/// The bound counts every string byte as if it needed the longest escape
/// (`\u00XX`); only a request whose bound passes the limit has its strings
/// scanned. The bounding walk checks the nesting depth as it goes and stops
/// where its bound passes the size limit, so a request costs at most that
/// part of it plus one exact walk (also one that is refused: the exact walk
/// stops at the limits too). What
/// [`PoolConfig::admit`](crate::PoolConfig::admit) runs.
///
/// # Errors
///
/// Returns the [`RequestError`] of the first check that fails, exactly as
/// [`validate_request`] does.
pub fn check_request(
    request: &WorkerRequest,
    limits: RequestLimits<'_>,
) -> Result<(), RequestError> {
    check_fields(request, limits.policy)?;
    let max = limits.policy.max_request_payload_bytes;
    let mut bound = Budget::bounding(max, limits.max_depth);
    match add_request(&mut bound, request) {
        Some(()) => Ok(()),
        // Stopped on depth: the exact walk, whose total is never above the
        // bound's at the same point, would stop there too.
        None if bound.too_deep.is_some() => Err(bound.refusal()),
        // Passed the size limit: the exact walk decides.
        None => Budget::new(max, limits.max_depth).walk(request).map(|_| ()),
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
/// few levels are walked with an explicit stack, so any nesting depth is safe
/// (and none is refused: this measures size only). When the result is
/// `Some(n)`, `n` equals the serialised length exactly.
#[must_use]
pub fn serialized_size_within(request: &WorkerRequest, limit: usize) -> Option<usize> {
    Budget::new(limit, usize::MAX).walk(request).ok()
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
            budget.add_value(scoped_input, "operation.scoped_input")
        }
        WorkerOperation::Tool {
            tool,
            input,
            scoped_input,
        } => {
            budget.add_str(tool)?;
            budget.add_value(input, "operation.input")?;
            budget.add_value(scoped_input, "operation.scoped_input")
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
    /// A JSON value of the request nested arrays and objects deeper than
    /// allowed (see the [module docs](self) for how depth is counted).
    #[error(
        "{field} nesting depth exceeds max {max} levels of arrays and objects \
         (PoolConfig::max_request_depth): flatten it"
    )]
    NestedTooDeep {
        /// The offending field: `operation.input` or `operation.scoped_input`.
        field: &'static str,
        /// The limit, in levels.
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

/// A running byte count that fails (returns `None`) once it passes its
/// limit, and the depth limit its value walks check: a walk that finds a
/// value nested too deep fails too, and records where in
/// [`too_deep`](Self::too_deep).
///
/// An exact budget scans every string for escapes. A bounding one
/// ([`Budget::bounding`]) counts every string byte at its longest escape
/// instead: an upper bound, so the walk stops as soon as that bound passes
/// the limit.
struct Budget {
    limit: usize,
    remaining: usize,
    /// The deepest nesting a value may have.
    max_depth: usize,
    /// How many levels the walk recurses: [`SHALLOW_LEVELS`], or
    /// `max_depth` if lower.
    shallow: usize,
    /// The field whose value the walk is in.
    field: &'static str,
    /// The field whose value nested deeper than `max_depth`, once a walk
    /// found one (and failed for it rather than for the size).
    too_deep: Option<&'static str>,
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
const SHALLOW_LEVELS: usize = 8;

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
    fn new(limit: usize, max_depth: usize) -> Self {
        Self {
            limit,
            remaining: limit,
            max_depth,
            shallow: max_depth.min(SHALLOW_LEVELS),
            field: "",
            too_deep: None,
            exact: true,
        }
    }

    /// A budget that does not scan strings (see [`Budget`]).
    fn bounding(limit: usize, max_depth: usize) -> Self {
        Self {
            exact: false,
            ..Self::new(limit, max_depth)
        }
    }

    fn used(&self) -> usize {
        // `remaining` only ever decreases from `limit`.
        self.limit.saturating_sub(self.remaining)
    }

    /// Walks `request`: its size as this budget counts it (exact, or an
    /// upper bound for a [bounding](Self::bounding) budget), or why the walk
    /// stopped.
    fn walk(mut self, request: &WorkerRequest) -> Result<usize, RequestError> {
        match add_request(&mut self, request) {
            Some(()) => Ok(self.used()),
            None => Err(self.refusal()),
        }
    }

    /// Why a walk stopped: the value it found nested too deep, or else the
    /// size.
    fn refusal(&self) -> RequestError {
        match self.too_deep {
            Some(field) => RequestError::NestedTooDeep {
                field,
                max: self.max_depth,
            },
            None => RequestError::PayloadTooLarge { max: self.limit },
        }
    }

    /// Fails the walk for a value nested too deep (in [`field`](Self::field)).
    #[cold]
    fn nested_too_deep(&mut self) -> Option<()> {
        self.too_deep = Some(self.field);
        None
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

    /// Adds a JSON value, the request's `field`, and checks its nesting
    /// depth. The first [`SHALLOW_LEVELS`] levels are walked by (bounded)
    /// recursion, which is cheapest for the usual small payload; anything
    /// nested deeper goes to [`add_deep`](Self::add_deep). A container's
    /// depth is checked, then its brackets, commas and colons are added,
    /// before its children, so every value visited costs budget and the
    /// walk stops as soon as the budget runs out or a container is one
    /// level too deep.
    fn add_value(&mut self, value: &Value, field: &'static str) -> Option<()> {
        self.field = field;
        self.add_shallow(value, 0)
    }

    /// [`add_value`](Self::add_value) for a value inside `outer` arrays and
    /// objects.
    fn add_shallow(&mut self, value: &Value, outer: usize) -> Option<()> {
        match value {
            // One comparison on the usual path: `shallow` is at most
            // `max_depth`.
            Value::Array(_) | Value::Object(_) if outer >= self.shallow => {
                if outer >= self.max_depth {
                    self.nested_too_deep()
                } else {
                    self.add_deep(value, outer)
                }
            }
            Value::Array(items) => {
                self.add(array_bytes(items.len())?)?;
                items
                    .iter()
                    .try_for_each(|item| self.add_shallow(item, outer + 1))
            }
            Value::Object(entries) => {
                self.add(object_bytes(entries.len())?)?;
                entries.iter().try_for_each(|(key, item)| {
                    self.add_str(key)?;
                    self.add_shallow(item, outer + 1)
                })
            }
            scalar => self.add_own(scalar),
        }
    }

    /// Adds a JSON value inside `outer` arrays and objects, walking nested
    /// arrays and objects with an explicit stack. A container's depth is
    /// checked and its brackets, commas and colons are added when it is
    /// entered, so every level costs at least two bytes of budget and the
    /// stack can never hold more than `limit / 2` frames, nor more than the
    /// depth limit allows.
    fn add_deep(&mut self, root: &Value, outer: usize) -> Option<()> {
        let mut stack = Frames::new();
        let mut next = Some(root);
        loop {
            if let Some(value) = next.take() {
                let container = matches!(value, Value::Array(_) | Value::Object(_));
                if container && outer + stack.depth >= self.max_depth {
                    return self.nested_too_deep();
                }
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

    /// A value `depth` levels deep, built without recursion: nested arrays
    /// (`[[…[0]…]]`) or nested objects (`{"k":{"k":…{"k":0}…}}`).
    fn nested(depth: usize, objects: bool) -> Value {
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

    fn llm_with_scoped(scoped_input: Value) -> WorkerRequest {
        WorkerRequest {
            operation: WorkerOperation::Llm {
                model: "gpt".into(),
                prompt: "p".into(),
                scoped_input,
            },
            ..llm("p")
        }
    }

    fn tool_with_scoped(scoped_input: Value) -> WorkerRequest {
        WorkerRequest {
            operation: WorkerOperation::Tool {
                tool: "search".into(),
                input: json!({}),
                scoped_input,
            },
            ..tool(json!({}))
        }
    }

    fn limits_with_depth(policy: &WorkerSecurityPolicy, max_depth: usize) -> RequestLimits<'_> {
        RequestLimits { policy, max_depth }
    }

    #[test]
    fn accepts_a_valid_request_and_returns_its_exact_size() {
        let request = llm("hello");
        assert_eq!(
            validate_request(&request, RequestLimits::new(&policy())),
            Ok(exact_len(&request))
        );
        let request = tool(json!({"q": "rust", "n": 10}));
        assert_eq!(
            validate_request(&request, RequestLimits::new(&policy())),
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
            validate_request(&request, RequestLimits::new(&policy())),
            Ok(exact_len(&request))
        );
        assert_eq!(
            check_request(&request, RequestLimits::new(&policy())),
            Ok(())
        );
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
        let err = validate_request(&request, RequestLimits::new(&policy)).unwrap_err();
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
            validate_request(&request, RequestLimits::new(&policy)),
            Err(RequestError::IdentifierTooLong {
                field: "node_id",
                len: 6,
                max: 4
            })
        );

        // Length is in bytes, not characters.
        request.node_id = "ééé".into();
        assert_eq!(
            validate_request(&request, RequestLimits::new(&policy)),
            Err(RequestError::IdentifierTooLong {
                field: "node_id",
                len: 6,
                max: 4
            })
        );

        // The first field is checked completely first.
        request.request_id = "toolong".into();
        request.node_id = String::new();
        assert_eq!(
            validate_request(&request, RequestLimits::new(&policy)),
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
    fn accepts_a_zero_timeout_which_the_pool_answers_as_timed_out() {
        let mut request = llm("p");
        request.timeout_ms = Some(0);
        assert_eq!(
            validate_request(&request, RequestLimits::new(&policy())),
            Ok(exact_len(&request))
        );
        let zero_ceiling = WorkerSecurityPolicy {
            max_request_timeout_ms: 0,
            ..policy()
        };
        assert!(validate_request(&request, RequestLimits::new(&zero_ceiling)).is_ok());
        request.timeout_ms = Some(1);
        assert_eq!(
            validate_request(&request, RequestLimits::new(&zero_ceiling)),
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
        assert!(validate_request(&request, RequestLimits::new(&policy())).is_ok());
        request.timeout_ms = Some(120_001);
        let err = validate_request(&request, RequestLimits::new(&policy())).unwrap_err();
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
            validate_request(&request, RequestLimits::new(&policy)),
            Err(RequestError::IdentifierTooLong {
                field: "node_id",
                len: 129,
                max: 128
            })
        );
        request.node_id = "n".into();
        assert_eq!(
            validate_request(&request, RequestLimits::new(&policy)),
            Err(RequestError::TimeoutTooLong {
                timeout_ms: 120_001,
                max_ms: 120_000
            })
        );
        request.timeout_ms = None;
        assert_eq!(
            validate_request(&request, RequestLimits::new(&policy)),
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
            validate_request(&request, RequestLimits::new(&policy())),
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
        type Build = fn(Value) -> WorkerRequest;
        let fields: [(&str, Build); 3] = [
            ("operation.input", tool),
            ("operation.scoped_input", tool_with_scoped),
            ("operation.scoped_input", llm_with_scoped),
        ];
        let policy = policy();
        for (field, build) in fields {
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
                        expected.clone().map(|_| ()),
                        "{case}"
                    );
                    assert_eq!(
                        crate::PoolConfig::default().admit(&request).map(|_| ()),
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

    #[test]
    fn pool_config_refuses_a_zero_depth_limit() {
        let config = crate::PoolConfig {
            max_request_depth: 0,
            ..crate::PoolConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err, crate::ConfigError::ZeroRequestDepth);
        assert_eq!(
            err.to_string(),
            "max_request_depth must be at least 1 (the depth of [] or {}): \
             0 would refuse every request whose input or scoped_input is an array or object"
        );
        let config = crate::PoolConfig {
            max_request_depth: 1,
            ..crate::PoolConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(crate::PoolConfig::default().max_request_depth, 128);
    }

    #[test]
    fn pool_config_admits_with_its_own_depth_limit() {
        let request = tool(nested(300, false));
        assert!(crate::PoolConfig::default().admit(&request).is_err());
        let config = crate::PoolConfig {
            max_request_depth: 300,
            ..crate::PoolConfig::default()
        };
        assert!(config.admit(&request).is_ok());
        assert_eq!(
            validate_request(&request, config.request_limits()),
            Ok(exact_len(&request))
        );
        let config = crate::PoolConfig {
            max_request_depth: 299,
            ..config
        };
        assert_eq!(
            config.admit(&request).map(|_| ()),
            Err(RequestError::NestedTooDeep {
                field: "operation.input",
                max: 299
            })
        );
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
