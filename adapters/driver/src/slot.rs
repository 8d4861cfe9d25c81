//! A request's slot: where its caller waits, where the core's answer and
//! the started handler are left for it, and the request itself while it is
//! parked (see [`Run`] for who holds a started handler).
//!
//! Its lock is [`crate::sync`]'s, so `loom` explores the answer's delivery,
//! the hand-back and the caller's wait and cancellation (`RUSTFLAGS="--cfg
//! loom" CARGO_TARGET_DIR=target/loom cargo test --release -p
//! foreman-driver --lib loom_tests`, as `.ci/run` does).

use std::cell::Cell;
use std::sync::Arc;
use std::task::Waker;

use foreman_core::{PhaseLimits, RequestKey, WorkerRequest};

use crate::handler::OwnedHandlerFuture;
use crate::live::LiveGuard;
use crate::started::{Delivered, Started};
use crate::sync::{FastMutex, FastMutexGuard};
use crate::trace::RequestSpan;
use crate::wakers::Wakers;

/// A request the driver holds, or none: dropping it takes its JSON values
/// apart without recursion ([`foreman_core::dismantle_request`]), so no
/// nesting depth can overflow the stack wherever the driver lets go of a
/// request (a refused one may be nested arbitrarily deep).
#[derive(Default)]
pub(crate) struct HeldRequest(Option<WorkerRequest>);

impl HeldRequest {
    pub(crate) fn new(request: WorkerRequest) -> Self {
        HeldRequest(Some(request))
    }

    /// The request, if still held.
    pub(crate) fn get(&self) -> Option<&WorkerRequest> {
        self.0.as_ref()
    }

    /// Takes the request out (for its handler, which then owns it).
    pub(crate) fn take(&mut self) -> Option<WorkerRequest> {
        self.0.take()
    }

    /// The request for an attempt: a copy if `again` (the attempt may fail
    /// into a retry, which needs the request once more), else the request
    /// itself.
    pub(crate) fn take_or_copy(&mut self, again: bool) -> Option<WorkerRequest> {
        if again {
            self.0.clone()
        } else {
            self.0.take()
        }
    }
}

impl Drop for HeldRequest {
    fn drop(&mut self) {
        if let Some(request) = self.0.take() {
            foreman_core::dismantle_request(request);
        }
    }
}

/// Per-request wake-up: the core's payload. Written under the pool's lock,
/// read by the request's own task under the slot's small lock.
#[derive(Default)]
pub(crate) struct Slot {
    inner: FastMutex<SlotInner>,
}

#[derive(Default)]
pub(crate) struct SlotInner {
    /// The request, parked here by its caller while it waits, so the task
    /// that frees a worker can run it (see [`Claimed`]).
    pub(crate) parked: HeldRequest,
    /// The request's own phase limits, given with it
    /// (`WorkerPool::submit_timed_with`), for its admission.
    pub(crate) limits: PhaseLimits,
    pub(crate) run: Run,
    pub(crate) answer: Option<Delivered>,
    /// The caller's `submit` future was dropped.
    pub(crate) abandoned: bool,
    /// The request's worker was removed: its caller has the circuit
    /// breaker place it anew (`Action::Revet`).
    pub(crate) revet: bool,
    /// The lane and key of the request after it moved to another lane
    /// (`None`: where it was submitted), for its caller: its cancellation,
    /// the completion of a handler it runs, placing it anew.
    pub(crate) moved: Option<(usize, RequestKey)>,
    /// Released by one lane and not yet adopted by another: a cancellation
    /// meanwhile only gives up, and the move answers it `Cancelled`.
    pub(crate) in_transit: bool,
    /// The request's span (the `tracing` feature): every handler run of
    /// the request runs in it, and its events name it as their parent,
    /// until its caller is done with it ([`Traced`](crate::trace::Traced)).
    span: RequestSpan,
    waker: Option<Waker>,
}

/// Where a request's handler is. Whoever holds the handler future holds
/// its [`LiveGuard`] too, so it ends the handler by dropping both.
///
/// | state | handler future | guard held by | next |
/// |---|---|---|---|
/// | `Waiting` | none yet | nobody (not started) | `Granted`, `Claimed` or an answer |
/// | `Granted` | not created | the slot | the caller takes it (`Caller`), or dispatches it to the worker task (`PoolTasks`) |
/// | `Claimed` | polled by the task that freed the worker | that task | `Handed`, `Ended`, or `Waiting` if the handler declined the request (`refuse_not_started`) |
/// | `Handed` | in the slot | the slot | the caller takes it (`Caller`) |
/// | `Caller` | in the caller's `submit` | the caller | answered, or `Waiting` if the handler declined the request |
/// | `Ended` | dropped | nobody | — |
///
/// A cancelled caller replaces `Granted` and `Handed` by `Ended` (dropping
/// what they hold); `Claimed` stays with its claiming task, which sees
/// `abandoned` and drops the future instead of handing it back.
#[derive(Default)]
pub(crate) enum Run {
    /// Not started.
    #[default]
    Waiting,
    /// Started; the caller creates and runs the handler future.
    Granted(Started),
    /// Another task is polling the handler ([`Claimed`]); that task ends it.
    Claimed,
    /// The claiming task polled it once and handed it back; the caller
    /// finishes (or drops) it.
    Handed(OwnedHandlerFuture, LiveGuard),
    /// The caller holds the handler future and ends it.
    Caller,
    /// Ended, or never to run.
    Ended,
}

/// What became of a handler its claiming task handed back
/// ([`SlotInner::hand_back`]); [`HandBack::finish`] it once the slot's lock
/// is released.
#[must_use = "the caller's waker or the ended handler waits to be finished"]
pub(crate) enum HandBack {
    /// The caller finishes the handler; its waker, if it waits.
    Handed(Option<Waker>),
    /// The run ended: the handler future and its guard, to drop.
    Ended(OwnedHandlerFuture, LiveGuard),
}

impl HandBack {
    /// Wakes the caller, or drops the ended handler: the future, then its
    /// guard. Call it with no lock held.
    pub(crate) fn finish(self) {
        match self {
            HandBack::Handed(waker) => {
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            HandBack::Ended(future, live) => {
                drop(future);
                drop(live);
            }
        }
    }
}

thread_local! {
    /// A slot its last request no longer needs, for this thread's next
    /// request (see [`Slot::recycle`]).
    static SPARE_SLOT: Cell<Option<Arc<Slot>>> = const { Cell::new(None) };
}

impl Slot {
    /// A slot holding `request`, parked until its caller submits it (its
    /// span, if it gets one, comes with [`Traced::new`](crate::trace::Traced::new)):
    /// this thread's spare slot if it has one, else a new one.
    pub(crate) fn parked(request: WorkerRequest) -> Arc<Slot> {
        if let Some(mut slot) = SPARE_SLOT.with(Cell::take) {
            if let Some(unique) = Arc::get_mut(&mut slot) {
                unique.inner.get_mut().parked = HeldRequest::new(request);
                return slot;
            }
        }
        Arc::new(Slot {
            inner: FastMutex::new(SlotInner {
                parked: HeldRequest::new(request),
                ..SlotInner::default()
            }),
        })
    }

    /// Keeps `slot` as this thread's spare if nothing else holds it (the
    /// core let go of it when it answered), so a caller submitting again
    /// and again allocates no slot per request.
    pub(crate) fn recycle(mut slot: Arc<Slot>) {
        let Some(unique) = Arc::get_mut(&mut slot) else {
            return;
        };
        *unique.inner.get_mut() = SlotInner::default();
        SPARE_SLOT.with(|spare| spare.set(Some(slot)));
    }

    pub(crate) fn lock(&self) -> FastMutexGuard<'_, SlotInner> {
        self.inner.lock()
    }

    /// Updates the slot; its task's waker goes to `wake`.
    #[inline]
    pub(crate) fn update(&self, wake: &mut Wakers, change: impl FnOnce(&mut SlotInner)) {
        let mut inner = self.lock();
        change(&mut inner);
        if let Some(waker) = inner.waker.take() {
            wake.push(waker);
        }
    }
}

impl SlotInner {
    /// The waiting task's waker, for a task that polls on its behalf.
    pub(crate) fn waker(&self) -> Option<Waker> {
        self.waker.clone()
    }

    /// A handle on the request's span for a handler run about to start
    /// (a copy of the handle, which calls no subscriber: it may be taken
    /// under a lock).
    #[inline]
    pub(crate) fn handler_span(&self) -> RequestSpan {
        self.span.clone()
    }

    /// The id of the request's span, as the parent of its events.
    #[cfg(feature = "tracing")]
    pub(crate) fn span_id(&self) -> Option<tracing::Id> {
        self.span.id()
    }

    /// Gives the request its span (replacing none).
    #[cfg(feature = "tracing")]
    pub(crate) fn set_span(&mut self, span: RequestSpan) {
        self.span = span;
    }

    /// Takes the slot's handle on the request's span, to drop it with no
    /// lock held.
    #[cfg(feature = "tracing")]
    pub(crate) fn take_span(&mut self) -> RequestSpan {
        std::mem::take(&mut self.span)
    }

    /// Whether the request's span is enabled, for telling its end
    /// ([`Traced`](crate::trace::Traced)).
    pub(crate) fn traced(&self) -> crate::trace::Traced {
        self.span.traced()
    }

    /// Takes the waiting task's waker, to wake it once the lock is released.
    pub(crate) fn take_waker(&mut self) -> Option<Waker> {
        self.waker.take()
    }

    /// The caller gives up on the handler (it has its answer, or is
    /// cancelled): a `Granted` or `Handed` run ends, returned to be dropped
    /// once the locks are released; a `Claimed` one stays with its claiming
    /// task, which sees `abandoned` and drops it instead of handing it back.
    pub(crate) fn give_up(&mut self) -> Run {
        self.abandoned = true;
        match self.run {
            Run::Claimed => Run::Ended,
            _ => std::mem::replace(&mut self.run, Run::Ended),
        }
    }

    /// The claiming task hands back a handler that has to wait, for its
    /// caller to finish (`Handed`), unless the caller gave up or the core
    /// answered: then the run ends and the future and its guard come back,
    /// to be dropped once the lock is released.
    pub(crate) fn hand_back(&mut self, future: OwnedHandlerFuture, live: LiveGuard) -> HandBack {
        if self.abandoned || self.answer.is_some() {
            self.run = Run::Ended;
            HandBack::Ended(future, live)
        } else {
            self.run = Run::Handed(future, live);
            HandBack::Handed(self.waker.take())
        }
    }

    /// Remembers the waker of the task waiting on the slot.
    pub(crate) fn register(&mut self, waker: &Waker) {
        match &self.waker {
            Some(old) if old.will_wake(waker) => {}
            _ => self.waker = Some(waker.clone()),
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests;
