//! The `tracing` feature: a span per request, in which its handler runs,
//! and the events of refusals, endings, health transitions and moves.
//! Without the feature every type here is empty and every function does
//! nothing.
//!
//! Everything goes through tracing's macros, which ask the subscriber's
//! interest before they format anything, and runs with no foreman lock
//! held (a subscriber is user code): what the core reports under the lock
//! is written down as [`Notes`](crate::notes::Notes) and told afterwards.

mod events;

use std::future::Future;

use foreman_core::WorkerProtocolError;
#[cfg(feature = "tracing")]
use foreman_core::WorkerRequest;

use crate::handler::{HandlerFuture, OwnedHandlerFuture};
use crate::slot::Slot;
#[cfg(feature = "tracing")]
pub(crate) use events::{health_changed, hedged, requeued, retried};

/// The span of one request (`request`, target `foreman`), with fields
/// `request_id`, `workflow`, `node`, and `worker` and `attempt` recorded
/// each time a handler run of the request starts. Events about the
/// request are its children.
///
/// A shared handle, absent when no subscriber wants the span: the
/// request's slot keeps it, and every handler run of the request (its
/// first start, a run again after a refusal, a retry, a hedge) takes a
/// copy of the handle from there, which never calls the subscriber and so
/// may be taken under a lock. The span itself is cloned into the handler
/// future and closed with no lock held. Nothing else that carries the
/// request (its worker's inbox, a claimed start, its caller's future)
/// holds the handle: whoever starts a handler looks the span up in the
/// slot (a worker task finds the slot from the key its attempt started
/// under, a hedge's key included, with
/// [`Pool::attempt_payload`](foreman_core::Pool::attempt_payload)), and
/// only while some request span exists at all ([`lookup`]), so
/// with no subscriber the feature changes no type that a request passes
/// through but its slot.
#[derive(Clone, Default)]
pub(crate) struct RequestSpan {
    #[cfg(feature = "tracing")]
    cell: Option<std::sync::Arc<SpanCell>>,
}

/// A handler future that [`in_span`] boxes, in its span or not.
pub(crate) trait OwnedHandler:
    Future<Output = Result<serde_json::Value, WorkerProtocolError>> + Send + 'static
{
}

impl<F> OwnedHandler for F where
    F: Future<Output = Result<serde_json::Value, WorkerProtocolError>> + Send + 'static
{
}

/// An enabled request span and how many handler runs of its request have
/// started. While one exists, [`SPANS`] counts it.
#[cfg(feature = "tracing")]
struct SpanCell {
    span: tracing::Span,
    starts: std::sync::atomic::AtomicU32,
}

/// How many request spans exist (in all pools): while none does, a
/// handler starts without looking for one ([`lookup`]).
#[cfg(feature = "tracing")]
static SPANS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[cfg(feature = "tracing")]
impl Drop for SpanCell {
    fn drop(&mut self) {
        SPANS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The span of a request whose handler is about to start, found by `find`
/// (in the request's slot) only while some request span exists; with no
/// subscriber, one relaxed load and a branch (the caller inlines them),
/// and the span it returns is disabled.
///
/// A request's span is counted from its submit, which happens before any
/// of its handler runs (the request reaches the task starting one through
/// a lock), until its caller is done with it: a relaxed load sees it.
#[inline]
pub(crate) fn lookup(find: impl FnOnce() -> RequestSpan) -> RequestSpan {
    #[cfg(feature = "tracing")]
    if SPANS.load(std::sync::atomic::Ordering::Relaxed) != 0 {
        return looked_up(find);
    }
    let _ = find;
    RequestSpan::default()
}

/// Boxes the handler future of a run that `worker` starts inside its
/// request's span, which `find` looks up (as [`lookup`] does): with no
/// subscriber, one relaxed load and a branch more than boxing `handler`.
/// Called with no lock held.
#[inline]
pub(crate) fn in_span(
    find: impl FnOnce() -> RequestSpan,
    worker: &str,
    handler: impl OwnedHandler,
) -> OwnedHandlerFuture {
    #[cfg(feature = "tracing")]
    if SPANS.load(std::sync::atomic::Ordering::Relaxed) != 0 {
        return in_found_span(find, worker, handler);
    }
    let _ = (find, worker);
    Box::pin(handler)
}

impl Drop for RequestSpan {
    /// Lets go of an enabled span out of line: dropping a disabled one is
    /// a check that the caller inlines.
    #[inline]
    fn drop(&mut self) {
        #[cfg(feature = "tracing")]
        if let Some(cell) = self.cell.take() {
            close(cell);
        }
    }
}

/// Drops a handle on an enabled span (the last one closes it, through its
/// subscriber).
#[cfg(feature = "tracing")]
#[inline(never)]
fn close(cell: std::sync::Arc<SpanCell>) {
    drop(cell);
}

impl RequestSpan {
    /// The span of a request when a subscriber may want it.
    #[cfg(feature = "tracing")]
    fn wanted(request: &WorkerRequest) -> (Self, Traced) {
        let span = tracing::info_span!(
            target: "foreman",
            "request",
            request_id = request.request_id.as_str(),
            workflow = request.workflow_name.as_str(),
            node = request.node_id.as_str(),
            worker = tracing::field::Empty,
            attempt = tracing::field::Empty,
        );
        let cell = (!span.is_disabled()).then(|| {
            SPANS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::sync::Arc::new(SpanCell {
                span,
                starts: std::sync::atomic::AtomicU32::new(0),
            })
        });
        let traced = Traced {
            events: true,
            span: cell.is_some(),
        };
        (RequestSpan { cell }, traced)
    }

    /// What a task that does not hold the request's [`Traced`] (a lane
    /// move answering a request whose caller gave up) tells its end with:
    /// its span if the slot has one, and events if a subscriber listens
    /// now.
    pub(crate) fn traced(&self) -> Traced {
        #[cfg(feature = "tracing")]
        {
            let span = self.cell.is_some();
            Traced {
                events: span
                    || tracing::level_filters::LevelFilter::current()
                        != tracing::level_filters::LevelFilter::OFF,
                span,
            }
        }
        #[cfg(not(feature = "tracing"))]
        {
            Traced {}
        }
    }

    /// The span's id, for its events' `parent:` (none: they have no
    /// parent, as events of a disabled span).
    #[cfg(feature = "tracing")]
    pub(crate) fn id(&self) -> Option<tracing::Id> {
        self.cell.as_ref().and_then(|cell| cell.span.id())
    }

    /// Records the worker that starts a handler run of the request and
    /// which run it is (1 for the first; runs are numbered in the order
    /// they start, so two hedged attempts starting at once on different
    /// threads may take each other's number). Called with no lock held.
    #[inline]
    pub(crate) fn start(&self, worker: &str) {
        #[cfg(feature = "tracing")]
        if let Some(cell) = &self.cell {
            started(cell, worker);
        }
        #[cfg(not(feature = "tracing"))]
        let _ = worker;
    }

    /// Boxes `handler` to run inside the span: one box, with no wrapper
    /// at all when the span is disabled (no subscriber wants it, or no
    /// feature), so a pool nobody traces polls and moves the handler
    /// future exactly as it would without the feature. Called with no lock
    /// held (the span's clone calls its subscriber).
    #[inline]
    pub(crate) fn instrument_owned(self, handler: impl OwnedHandler) -> OwnedHandlerFuture {
        #[cfg(feature = "tracing")]
        if self.cell.is_some() {
            return instrumented(self, handler);
        }
        Box::pin(handler)
    }

    /// Runs a boxed handler future inside the span (the same box when the
    /// span is disabled). Called with no lock held.
    #[cfg(feature = "tracing")]
    fn instrument_boxed<'a>(self, handler: HandlerFuture<'a>) -> HandlerFuture<'a> {
        match self.span() {
            Some(span) => Box::pin(tracing::Instrument::instrument(handler, span)),
            None => handler,
        }
    }

    /// A clone of the enabled span, if it is (its subscriber is told).
    #[cfg(feature = "tracing")]
    fn span(&self) -> Option<tracing::Span> {
        self.cell.as_ref().map(|cell| cell.span.clone())
    }
}

/// What the caller's future carries about tracing in place of the span
/// itself (two bytes, none without the feature), decided once when the
/// request is submitted: whether a subscriber listened at all (else none
/// of the request's events is even considered), and whether the request
/// has a span (kept in its slot; its events name it as their parent).
///
/// A subscriber set later (as the global default, or for a scope with
/// `tracing::subscriber::with_default`) sees the requests submitted after
/// it; requests already in flight stay as they were submitted, without
/// span or events.
#[derive(Clone, Copy, Default)]
pub(crate) struct Traced {
    #[cfg(feature = "tracing")]
    events: bool,
    #[cfg(feature = "tracing")]
    span: bool,
}

impl Traced {
    /// What the caller of the request parked in `slot` carries about
    /// tracing, and the request's span, left in its slot, if a subscriber
    /// wants it: tracing's global maximum level is read once, here, and
    /// nothing else about tracing runs for the request when it is `OFF`.
    #[inline]
    pub(crate) fn new(slot: &Slot) -> Traced {
        #[cfg(feature = "tracing")]
        {
            // With no subscriber the maximum level is `OFF`: one load and
            // a compare, and the caller inlines no more than this check.
            let level = tracing::level_filters::LevelFilter::current();
            if level != tracing::level_filters::LevelFilter::OFF {
                return Self::listened(slot, level);
            }
        }
        let _ = slot;
        Traced::default()
    }

    /// [`new`](Self::new) when a subscriber listens: the request's span if
    /// the subscriber may want it, made with no lock held (the subscriber
    /// is told), the request taken out of its slot meanwhile.
    #[cfg(feature = "tracing")]
    #[cold]
    #[inline(never)]
    fn listened(slot: &Slot, level: tracing::level_filters::LevelFilter) -> Traced {
        let events = Traced {
            events: true,
            span: false,
        };
        if level < tracing::level_filters::LevelFilter::INFO {
            return events;
        }
        let parked = slot.lock().parked.take();
        let Some(request) = parked else {
            return events;
        };
        let (span, traced) = RequestSpan::wanted(&request);
        let mut inner = slot.lock();
        inner.parked = crate::slot::HeldRequest::new(request);
        inner.set_span(span);
        traced
    }

    /// The parent of the request's events: its span's id, read from its
    /// slot (with no subscriber call) only when the span is enabled.
    #[cfg(feature = "tracing")]
    #[inline]
    fn parent(self, slot: &Slot) -> Option<tracing::Id> {
        if self.span {
            slot.lock().span_id()
        } else {
            None
        }
    }

    /// Runs the boxed handler future of a run of the request that its
    /// caller starts on `worker` inside the request's span, read from its
    /// slot only if the span is enabled (else `handler` itself). Called
    /// with no lock held.
    #[inline]
    pub(crate) fn in_span<'a>(
        self,
        slot: &Slot,
        worker: &str,
        handler: HandlerFuture<'a>,
    ) -> HandlerFuture<'a> {
        #[cfg(feature = "tracing")]
        if self.span {
            return in_slot_span(slot, worker, handler);
        }
        let _ = (slot, worker);
        handler
    }

    /// Drops the slot's handle on the request's span once its caller is
    /// done with it, with no lock held (the span's last drop calls its
    /// subscriber).
    #[inline]
    pub(crate) fn release(self, slot: &Slot) {
        #[cfg(feature = "tracing")]
        if self.span {
            let span = slot.lock().take_span();
            drop(span);
        }
        #[cfg(not(feature = "tracing"))]
        let _ = slot;
    }
}

/// Runs `find` out of line (see [`lookup`]).
#[cfg(feature = "tracing")]
#[cold]
#[inline(never)]
fn looked_up(find: impl FnOnce() -> RequestSpan) -> RequestSpan {
    find()
}

/// [`in_span`] while some request span exists.
#[cfg(feature = "tracing")]
#[cold]
#[inline(never)]
fn in_found_span(
    find: impl FnOnce() -> RequestSpan,
    worker: &str,
    handler: impl OwnedHandler,
) -> OwnedHandlerFuture {
    let span = find();
    span.start(worker);
    span.instrument_owned(handler)
}

/// Records a handler run's start in its enabled span (see
/// [`RequestSpan::start`]).
#[cfg(feature = "tracing")]
#[cold]
#[inline(never)]
fn started(cell: &SpanCell, worker: &str) {
    let attempt = cell
        .starts
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .saturating_add(1);
    cell.span.record("worker", worker);
    cell.span.record("attempt", attempt);
}

/// Boxes `handler` inside the enabled span (see
/// [`RequestSpan::instrument_owned`]).
#[cfg(feature = "tracing")]
#[cold]
#[inline(never)]
fn instrumented(span: RequestSpan, handler: impl OwnedHandler) -> OwnedHandlerFuture {
    match span.span() {
        Some(span) => Box::pin(tracing::Instrument::instrument(handler, span)),
        None => Box::pin(handler),
    }
}

/// [`Traced::in_span`] for a request with an enabled span.
#[cfg(feature = "tracing")]
#[cold]
#[inline(never)]
fn in_slot_span<'a>(slot: &Slot, worker: &str, handler: HandlerFuture<'a>) -> HandlerFuture<'a> {
    let span = slot.lock().handler_span();
    span.start(worker);
    span.instrument_boxed(handler)
}

#[cfg(test)]
mod tests {
    use super::*;
    use foreman_core::WorkerRequest;

    /// A request's span stays in its slot: what else carries the request
    /// (its worker's inbox job, a claimed start, a round of actions) has
    /// the same fields with the feature as without, and the caller's
    /// future two flags.
    #[test]
    fn only_the_slot_holds_a_request_span() {
        use crate::live::LiveGuard;
        use crate::started::WorkerCell;
        use foreman_core::{RequestKey, Time};
        use std::sync::Arc;
        use std::task::Waker;
        type JobFields = (RequestKey, WorkerRequest, LiveGuard, Time);
        assert_eq!(size_of::<crate::worker::Job>(), size_of::<JobFields>());
        type ClaimedFields = (
            RequestKey,
            Arc<Slot>,
            Arc<WorkerCell>,
            WorkerRequest,
            Option<Waker>,
            LiveGuard,
            Time,
        );
        assert_eq!(
            size_of::<crate::state::Claimed>(),
            size_of::<ClaimedFields>()
        );
        #[cfg(not(feature = "metrics"))]
        assert_eq!(size_of::<crate::notes::Notes>(), 0);
        assert!(size_of::<RequestSpan>() <= size_of::<usize>());
        assert!(size_of::<Traced>() <= 2);
    }

    /// With no subscriber a request has neither span nor events.
    #[test]
    fn with_no_subscriber_a_request_is_not_traced() {
        let request = WorkerRequest {
            request_id: "id".into(),
            workflow_name: "wf".into(),
            node_id: "node".into(),
            timeout_ms: None,
            operation: foreman_core::WorkerOperation::Tool {
                tool: "echo".into(),
                input: serde_json::Value::Null,
                scoped_input: serde_json::Value::Null,
            },
        };
        let slot = Slot::parked(request);
        let traced = Traced::new(&slot);
        #[cfg(feature = "tracing")]
        {
            assert!(slot.lock().span_id().is_none());
            assert!(!traced.events && !traced.span);
        }
        #[cfg(not(feature = "tracing"))]
        let _ = traced;
    }
}
