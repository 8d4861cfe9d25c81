//! The `tracing` feature: a span per request, in which its handler runs,
//! and the events of refusals, endings, health transitions and moves.
//! Without the feature every type here is empty and every function does
//! nothing.
//!
//! Everything goes through tracing's macros, which ask the subscriber's
//! interest before they format anything, and runs with no foreman lock
//! held (a subscriber is user code): what the core reports under the lock
//! is written down as [`Notes`](crate::notes::Notes) and told afterwards.

use std::future::Future;

#[cfg(feature = "tracing")]
use foreman_core::{HealthCause, Phase, RequestKey, WorkerHealthStatus};
use foreman_core::{WorkerPoolError, WorkerProtocolError, WorkerRequest};

use crate::handler::{HandlerFuture, OwnedHandlerFuture};
#[cfg(feature = "tracing")]
use crate::outcome::Ending;
#[cfg(feature = "tracing")]
use crate::outcome::{cause_name, phase_name, refusal_reason, status_name};
use crate::slot::Slot;
#[cfg(feature = "tracing")]
use crate::started::worker_id;
use crate::started::Delivered;

/// The span of one request (`request`, target `foreman`), with fields
/// `request_id`, `workflow`, `node`, and `worker` and `attempt` recorded
/// when its handler starts. Events about the request are its children.
///
/// Boxed, and absent when no subscriber wants it: it travels with the
/// request (slot, worker inbox, handler future), which then grows by a
/// pointer only.
#[derive(Clone, Default)]
pub(crate) struct RequestSpan {
    #[cfg(feature = "tracing")]
    span: Option<Box<tracing::Span>>,
}

impl Drop for RequestSpan {
    /// Closes an enabled span out of line: dropping a disabled one is a
    /// check that the caller inlines.
    #[inline]
    fn drop(&mut self) {
        #[cfg(feature = "tracing")]
        if let Some(span) = self.span.take() {
            close(span);
        }
    }
}

/// Drops an enabled span (its subscriber closes it).
#[cfg(feature = "tracing")]
#[inline(never)]
fn close(span: Box<tracing::Span>) {
    drop(span);
}

/// Which start of its request a handler run is (1 for the first), counted
/// from the core's `Action::Start`s for the request while request spans
/// are wanted (`spans_wanted`).
#[derive(Clone, Copy, Default)]
pub(crate) struct Attempt {
    #[cfg(feature = "tracing")]
    pub(crate) number: u32,
}

/// Whether a subscriber may want request spans (level `INFO`): tracing's
/// global maximum level, read without asking a subscriber, so it may be
/// called under a lock.
#[cfg(feature = "tracing")]
#[inline]
pub(crate) fn spans_wanted() -> bool {
    tracing::level_enabled!(tracing::Level::INFO)
}

impl RequestSpan {
    /// A new request's span (disabled, and free, when no subscriber wants
    /// it).
    #[inline]
    pub(crate) fn new(request: &WorkerRequest) -> Self {
        #[cfg(feature = "tracing")]
        {
            // The global maximum level first: with no subscriber (or none
            // at `INFO`) the span's callsite is not even asked, and the
            // caller inlines no more than this check.
            if spans_wanted() {
                return Self::wanted(request);
            }
            RequestSpan { span: None }
        }
        #[cfg(not(feature = "tracing"))]
        {
            let _ = request;
            RequestSpan {}
        }
    }

    /// The span of a request when a subscriber may want it.
    #[cfg(feature = "tracing")]
    #[inline(never)]
    fn wanted(request: &WorkerRequest) -> Self {
        let span = tracing::info_span!(
            target: "foreman",
            "request",
            request_id = request.request_id.as_str(),
            workflow = request.workflow_name.as_str(),
            node = request.node_id.as_str(),
            worker = tracing::field::Empty,
            attempt = tracing::field::Empty,
        );
        RequestSpan {
            span: (!span.is_disabled()).then(|| Box::new(span)),
        }
    }

    /// Whether the span is enabled, for the caller's future to carry
    /// instead of the span (which stays in the request's slot).
    #[inline]
    pub(crate) fn traced(&self) -> Traced {
        Traced {
            #[cfg(feature = "tracing")]
            on: self.span.is_some(),
        }
    }

    /// The enabled span, if it is.
    #[cfg(feature = "tracing")]
    fn into_span(mut self) -> Option<Box<tracing::Span>> {
        self.span.take()
    }

    /// The span's id, for its events' `parent:` (none: they have no
    /// parent, as events of a disabled span).
    #[cfg(feature = "tracing")]
    pub(crate) fn id(&self) -> Option<tracing::Id> {
        self.span.as_ref().and_then(|span| span.id())
    }

    /// Records the worker that starts the request's handler and which
    /// start it is. Called with no lock held.
    #[inline]
    pub(crate) fn start(&self, worker: &str, attempt: Attempt) {
        #[cfg(feature = "tracing")]
        if let Some(span) = &self.span {
            span.record("worker", worker);
            span.record("attempt", attempt.number);
        }
        #[cfg(not(feature = "tracing"))]
        let _ = (worker, attempt);
    }

    /// Boxes `handler` to run inside the span: one box, with no wrapper
    /// at all when the span is disabled (no subscriber wants it, or no
    /// feature), so a pool nobody traces polls and moves the handler
    /// future exactly as it would without the feature.
    #[inline]
    pub(crate) fn instrument_owned<F>(self, handler: F) -> OwnedHandlerFuture
    where
        F: Future<Output = Result<serde_json::Value, WorkerProtocolError>> + Send + 'static,
    {
        #[cfg(feature = "tracing")]
        if let Some(span) = self.into_span() {
            return Box::pin(tracing::Instrument::instrument(handler, *span));
        }
        Box::pin(handler)
    }

    /// Runs a boxed handler future inside the span (the same box when the
    /// span is disabled: no subscriber wants it, or no feature).
    #[inline]
    pub(crate) fn instrument_boxed<'a>(self, handler: HandlerFuture<'a>) -> HandlerFuture<'a> {
        #[cfg(feature = "tracing")]
        match self.into_span() {
            Some(span) => Box::pin(tracing::Instrument::instrument(handler, *span)),
            None => handler,
        }
        #[cfg(not(feature = "tracing"))]
        handler
    }
}

/// Whether a request's span is enabled, carried by its caller's future in
/// place of the span itself (one byte, none without the feature): the
/// span stays in the request's slot, and the request's events name it as
/// their parent only when it is enabled.
#[derive(Clone, Copy, Default)]
pub(crate) struct Traced {
    #[cfg(feature = "tracing")]
    on: bool,
}

impl Traced {
    /// The parent of the request's events: its span's id, read from its
    /// slot (with no subscriber call) only when the span is enabled.
    #[cfg(feature = "tracing")]
    #[inline]
    fn parent(self, slot: &Slot) -> Option<tracing::Id> {
        if self.on {
            slot.lock().span_id()
        } else {
            None
        }
    }

    /// Drops the request's span once its caller is done with it, with no
    /// lock held (a span's drop calls its subscriber).
    #[inline]
    pub(crate) fn release(self, slot: &Slot) {
        #[cfg(feature = "tracing")]
        if self.on {
            let span = slot.lock().take_events_span();
            drop(span);
        }
        #[cfg(not(feature = "tracing"))]
        let _ = slot;
    }

    /// The request was refused (`debug`, with the reason).
    #[inline]
    pub(crate) fn refused(self, slot: &Slot, error: &WorkerPoolError) {
        #[cfg(feature = "tracing")]
        tracing::debug!(
            target: "foreman",
            parent: self.parent(slot),
            reason = refusal_reason(error),
            "request refused"
        );
        #[cfg(not(feature = "tracing"))]
        let _ = (slot, error);
    }

    /// A circuit breaker vetoed `worker` for the request (`debug`).
    #[inline]
    pub(crate) fn vetoed(self, slot: &Slot, worker: &str) {
        #[cfg(feature = "tracing")]
        tracing::debug!(
            target: "foreman",
            parent: self.parent(slot),
            worker,
            "circuit breaker vetoed the worker"
        );
        #[cfg(not(feature = "tracing"))]
        let _ = (slot, worker);
    }

    /// The request ended: nothing for a success; `debug` for a handler's
    /// failure, a cancellation or a timeout while queued (load shed);
    /// `warn` for a timeout while running (its handler was cut off);
    /// `info` for aborts by a restart or the drain deadline and for a
    /// request its removed worker could hand to nobody.
    #[inline]
    pub(crate) fn ended(self, slot: &Slot, answer: &Delivered, cancelled: bool) {
        #[cfg(feature = "tracing")]
        if tracing::level_enabled!(tracing::Level::WARN) {
            // The least verbose of these events is `warn`: nothing below
            // runs when a subscriber wants none of them.
            self.told_end(
                slot,
                answer.ending(cancelled),
                worker_id(answer.worker.as_deref()),
            );
        }
        #[cfg(not(feature = "tracing"))]
        let _ = (slot, answer, cancelled);
    }

    /// Tells how the request ended (see [`ended`](Self::ended)).
    #[cfg(feature = "tracing")]
    #[inline(never)]
    fn told_end(self, slot: &Slot, ending: Ending, worker: &str) {
        {
            let span = self.parent(slot);
            match ending {
                Ending::Succeeded => {}
                Ending::Failed => tracing::debug!(
                    target: "foreman",
                    parent: span,
                    worker,
                    "handler failed"
                ),
                Ending::TimedOut(Phase::Queued) => tracing::debug!(
                    target: "foreman",
                    parent: span,
                    phase = "queued",
                    "request timed out while queued"
                ),
                Ending::TimedOut(Phase::Running) => tracing::warn!(
                    target: "foreman",
                    parent: span,
                    phase = "running",
                    worker,
                    "request timed out while running; its handler was aborted"
                ),
                Ending::Cancelled(phase) => tracing::debug!(
                    target: "foreman",
                    parent: span,
                    phase = phase_name(phase),
                    "request cancelled by its caller"
                ),
                Ending::Restarted => tracing::info!(
                    target: "foreman",
                    parent: span,
                    worker,
                    "request aborted: its worker was restarted"
                ),
                Ending::ShutDown(phase) => tracing::info!(
                    target: "foreman",
                    parent: span,
                    phase = phase_name(phase),
                    "request aborted: the shutdown's drain deadline passed"
                ),
                Ending::Unroutable => tracing::info!(
                    target: "foreman",
                    parent: span,
                    worker,
                    "request answered Unavailable: its worker was removed and no other could take it"
                ),
            }
        }
    }
}

/// A worker's health changed, with its cause: `warn` when it got worse
/// on evidence (failures, timeouts, probes), `info` when it became
/// Healthy or changed because it was restarted or stopped.
#[cfg(feature = "tracing")]
pub(crate) fn health_changed(
    worker: &str,
    from: WorkerHealthStatus,
    to: WorkerHealthStatus,
    cause: HealthCause,
) {
    let (from, to_name, cause_name) = (status_name(from), status_name(to), cause_name(cause));
    let deliberate = matches!(cause, HealthCause::Restart | HealthCause::Stopped);
    // tracing's levels are per call site, so each level is its own macro.
    if to == WorkerHealthStatus::Healthy || deliberate {
        tracing::info!(target: "foreman", worker, from, to = to_name, cause = cause_name, "worker health changed");
    } else {
        tracing::warn!(target: "foreman", worker, from, to = to_name, cause = cause_name, "worker health changed");
    }
}

/// A failed attempt runs again on another worker (`debug`).
#[cfg(feature = "tracing")]
pub(crate) fn retried(request: RequestKey, from: &str, to: &str, attempt: u32) {
    tracing::debug!(
        target: "foreman",
        request = request.as_u64(),
        from,
        to,
        attempt,
        "failed attempt retried on another worker"
    );
}

/// A running request got a second attempt on another worker (`debug`).
#[cfg(feature = "tracing")]
pub(crate) fn hedged(request: RequestKey, from: &str, to: &str, attempt: u32) {
    tracing::debug!(
        target: "foreman",
        request = request.as_u64(),
        from,
        to,
        attempt,
        "running request hedged on another worker"
    );
}

/// A queued request moved from one worker to another (`debug`): a free
/// worker took it (late binding), or its worker was removed.
#[cfg(feature = "tracing")]
pub(crate) fn requeued(request: RequestKey, from: &str, to: &str) {
    tracing::debug!(
        target: "foreman",
        request = request.as_u64(),
        from,
        to,
        "queued request moved to another worker"
    );
}
