//! What a caller waits for in its request's slot: its start, its answer,
//! a notice to place the request anew, and its handler run to completion
//! or to its abort.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

use foreman_core::RequestKey;
use futures_util::future::poll_fn;
use futures_util::FutureExt;

use crate::deadline::{poll_handler, Deadline};
use crate::handler::{HandlerFuture, OwnedHandlerFuture};
use crate::live::LiveGuard;
use crate::refusal::Outcome;
use crate::slot::{Run, Slot};
use crate::started::{Delivered, Started};
use crate::wakers::Wakers;
use crate::worker::panic_error;

/// What a caller in a pool with hooks waits for.
pub(crate) enum Notice {
    /// Its answer.
    Answered(Delivered),
    /// Its worker was removed: it has the breaker place the request anew.
    Revet,
}

/// Waits until the request is answered or must be placed anew.
pub(crate) fn wait_for_notice(slot: &Slot) -> impl Future<Output = Notice> + '_ {
    poll_fn(move |cx| {
        let mut inner = slot.lock();
        if let Some(answer) = inner.answer.take() {
            return Poll::Ready(Notice::Answered(answer));
        }
        if std::mem::take(&mut inner.revet) {
            return Poll::Ready(Notice::Revet);
        }
        inner.register(cx.waker());
        Poll::Pending
    })
}

/// What a caller whose handler runs in its own task waits for.
pub(crate) enum Wake {
    Started(Started),
    Handed(OwnedHandlerFuture, LiveGuard),
    Answered(Delivered),
}

/// Waits for the answer of a request whose handler runs on its worker's
/// task ([`ExecutionMode::PoolTasks`]); `waited` is set if it had to. A
/// request started while its caller ran its hooks is dispatched to its
/// worker here, once the request is back in the slot.
pub(crate) fn wait_for_answer<'a>(
    slot: &'a Slot,
    key: RequestKey,
    waited: &'a mut bool,
) -> impl Future<Output = Delivered> + 'a {
    poll_fn(move |cx| {
        let mut wake = Wakers::default();
        let polled = {
            let mut inner = slot.lock();
            if let Some(answer) = inner.answer.take() {
                Poll::Ready(answer)
            } else {
                if matches!(inner.run, Run::Granted(_)) && inner.parked.get().is_some() {
                    if let (Run::Granted(start), Some(request)) = (
                        std::mem::replace(&mut inner.run, Run::Ended),
                        inner.parked.take(),
                    ) {
                        // Its key in the lane it moved to, if it moved.
                        let key = inner.moved.map_or(key, |(_, moved)| moved);
                        start.dispatch(key, request, &mut wake);
                    }
                }
                *waited = true;
                inner.register(cx.waker());
                Poll::Pending
            }
        };
        wake.wake_all();
        polled
    })
}

/// Waits until the request is started or answered (`waited` is set if it
/// had to).
pub(crate) fn wait_for_start<'a>(
    slot: &'a Slot,
    waited: &'a mut bool,
) -> impl Future<Output = Wake> + 'a {
    poll_fn(move |cx| {
        let mut inner = slot.lock();
        if let Some(answer) = inner.answer.take() {
            return Poll::Ready(Wake::Answered(answer));
        }
        match std::mem::replace(&mut inner.run, Run::Caller) {
            Run::Granted(started) => return Poll::Ready(Wake::Started(started)),
            Run::Handed(future, live) => return Poll::Ready(Wake::Handed(future, live)),
            other => inner.run = other,
        }
        *waited = true;
        inner.register(cx.waker());
        Poll::Pending
    })
}

/// Runs the handler until it finishes or declines its request (`Some`,
/// read in the poll that returned) or the core aborts it (`None`; the
/// handler future is dropped before this returns), telling it its
/// `deadline` ([`crate::handler_deadline`]) while it is polled. (`waited`
/// is set once the handler has returned `Pending`.)
pub(crate) async fn run_handler(
    future: HandlerFuture<'_>,
    slot: &Slot,
    waited: &mut bool,
    deadline: Option<Deadline>,
) -> Option<Outcome> {
    let mut future = AssertUnwindSafe(future).catch_unwind();
    poll_fn(move |cx: &mut Context<'_>| {
        let polled = poll_handler(deadline, || future.poll_unpin(cx));
        if let Poll::Ready(outcome) = polled {
            return Poll::Ready(Some(Outcome::of(
                outcome.unwrap_or_else(|panic| Err(panic_error(&*panic))),
            )));
        }
        *waited = true;
        let mut inner = slot.lock();
        if inner.answer.is_some() {
            return Poll::Ready(None);
        }
        inner.register(cx.waker());
        Poll::Pending
    })
    .await
}
