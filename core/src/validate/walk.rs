//! The size and depth walk: one pass over a request in serialisation
//! order that adds up what `serde_json` would write and measures how deep
//! each value nests, and stops as soon as either passes its limit.

use std::io;

use serde_json::map;
use serde_json::{Number, Value};

use super::error::RequestError;
use super::escape::{escape_extra, WORST_ESCAPE_EXTRA};
use crate::protocol::{WorkerOperation, WorkerRequest};

/// Adds `request` as compact JSON to `budget`: its keys, punctuation,
/// timeout and strings in one step (in serialisation order every string
/// comes before the first JSON value), then its values in order.
pub(super) fn add_request(budget: &mut Budget, request: &WorkerRequest) -> Option<()> {
    let timeout = request.timeout_ms.map_or("null".len(), decimal_len);
    let (id, workflow, node) = (
        request.request_id.as_str(),
        request.workflow_name.as_str(),
        request.node_id.as_str(),
    );
    match &request.operation {
        WorkerOperation::Llm {
            model,
            prompt,
            scoped_input,
        } => {
            let fixed = REQUEST_FRAME + LLM_FRAME + timeout;
            budget.add_strs(fixed, &[id, workflow, node, model, prompt])?;
            budget.add_value(scoped_input, "operation.scoped_input")
        }
        WorkerOperation::Tool {
            tool,
            input,
            scoped_input,
        } => {
            let fixed = REQUEST_FRAME + TOOL_FRAME + timeout;
            budget.add_strs(fixed, &[id, workflow, node, tool])?;
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
pub(super) struct Budget {
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
    pub(super) too_deep: Option<&'static str>,
    /// Whether strings are scanned for escapes.
    exact: bool,
}

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
    pub(super) fn new(limit: usize, max_depth: usize) -> Self {
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
    pub(super) fn bounding(limit: usize, max_depth: usize) -> Self {
        let mut budget = Self::new(limit, max_depth);
        budget.exact = false;
        budget
    }

    fn used(&self) -> usize {
        // `remaining` only ever decreases from `limit`.
        self.limit.saturating_sub(self.remaining)
    }

    /// Walks `request`: its size as this budget counts it (exact, or an
    /// upper bound for a [bounding](Self::bounding) budget), or why the walk
    /// stopped.
    pub(super) fn walk(mut self, request: &WorkerRequest) -> Result<usize, RequestError> {
        match add_request(&mut self, request) {
            Some(()) => Ok(self.used()),
            None => Err(self.refusal()),
        }
    }

    /// Why a walk stopped: the value it found nested too deep, or else the
    /// size.
    pub(super) fn refusal(&self) -> RequestError {
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

    /// Adds `fixed` bytes and the JSON strings `strings` (quotes, raw
    /// bytes and escapes) in one step. Escapes only ever add bytes, so
    /// strings whose raw bytes and quotes do not fit are refused without
    /// being scanned, and the scan stops at the first string that passes
    /// the limit.
    fn add_strs(&mut self, fixed: usize, strings: &[&str]) -> Option<()> {
        let raw = strings
            .iter()
            .try_fold(0usize, |sum, s| sum.checked_add(s.len()))?;
        let quotes = strings.len().checked_mul(2)?;
        self.add(fixed.checked_add(raw)?.checked_add(quotes)?)?;
        if self.exact {
            strings
                .iter()
                .try_for_each(|s| self.add(escape_extra(s.as_bytes())))
        } else {
            self.add(raw.checked_mul(WORST_ESCAPE_EXTRA)?)
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
        match value {
            // The usual `{}` or `[]`, within any depth limit but zero, is
            // added without entering the walk.
            Value::Array(items) if items.is_empty() && self.max_depth > 0 => self.add(2),
            Value::Object(entries) if entries.is_empty() && self.max_depth > 0 => self.add(2),
            _ => self.add_shallow(value, 0),
        }
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
            scalar => self.add_without_children(scalar),
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
                self.add_without_children(value)?;
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

    /// Adds a value's bytes without its children's: all of a scalar; a
    /// container's brackets, commas between neighbours and (objects) a colon
    /// per entry (the walks add its children).
    #[inline]
    fn add_without_children(&mut self, value: &Value) -> Option<()> {
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

    #[test]
    fn decimal_len_matches_formatting() {
        for n in [0, 1, 9, 10, 11, 99, 100, 999, 1000, u64::MAX / 10, u64::MAX] {
            assert_eq!(decimal_len(n), n.to_string().len());
        }
    }

    /// The frames held after each push and pop: the inline slots in use and
    /// the spilled frames.
    fn held(frames: &Frames<'_>) -> (usize, usize) {
        let inline = frames.inline.iter().filter(|slot| slot.is_some()).count();
        (inline, frames.spill.len())
    }

    #[test]
    fn popping_a_frame_releases_it_inline_and_spilled_alike() {
        let items: Vec<serde_json::Value> = Vec::new();
        let mut frames = Frames::new();
        let deepest = INLINE_FRAMES + 2;
        for depth in 1..=deepest {
            frames.push(Frame::Array(items.iter()));
            let expected = (
                depth.min(INLINE_FRAMES),
                depth.saturating_sub(INLINE_FRAMES),
            );
            assert_eq!(held(&frames), expected, "after push to depth {depth}");
        }
        for depth in (0..deepest).rev() {
            frames.pop();
            let expected = (
                depth.min(INLINE_FRAMES),
                depth.saturating_sub(INLINE_FRAMES),
            );
            assert_eq!(held(&frames), expected, "after pop to depth {depth}");
        }
        assert!(frames.last_mut().is_none());
    }
}
