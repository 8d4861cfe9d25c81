//! The runtime layer: the only things the driver needs from an async
//! runtime (spawn a task, a resettable timer, a monotonic clock, and a yield
//! with a generic default).

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// An async runtime the pool can run on: spawn, timers, a clock and a yield.
///
/// Implementations are small and policy-free (see `foreman-tokio`); the
/// driver never names a runtime. Modelled on quinn's runtime layer.
pub trait Runtime: Debug + Send + Sync + 'static {
    /// Runs `future` to completion in the background (detached).
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>);

    /// Whether [`spawn`](Self::spawn) and [`new_timer`](Self::new_timer)
    /// work from the calling thread, checked once when a pool is built.
    ///
    /// # Errors
    /// What the user must change, e.g. "create the pool inside a tokio
    /// runtime". The default (a runtime with a global executor) is always
    /// `Ok`.
    fn check_context(&self) -> Result<(), String> {
        Ok(())
    }

    /// A timer that completes at `deadline` and can be moved with
    /// [`AsyncTimer::reset`].
    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>>;

    /// The runtime's monotonic clock (a runtime with a virtual clock, such
    /// as tokio's paused test clock, returns its virtual time).
    fn now(&self) -> Instant;

    /// Gives the thread back to the runtime once, so its other tasks, timers
    /// and I/O run (a caller whose requests never wait does this now and
    /// then). The default wakes the task and returns `Pending` once; a
    /// runtime with its own yield overrides it (tokio's defers the task
    /// until its timers and I/O have been polled).
    fn yield_now(&self) -> impl Future<Output = ()> + Send {
        yield_once()
    }
}

/// Returns `Pending` once, waking itself first: the task goes to the back
/// of its runtime's queue.
pub(crate) fn yield_once() -> impl Future<Output = ()> + Send {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
}

/// A resettable timer, as returned by [`Runtime::new_timer`].
pub trait AsyncTimer: Debug + Send {
    /// Moves the deadline to `deadline` (the timer may fire again).
    fn reset(self: Pin<&mut Self>, deadline: Instant);

    /// Completes once the deadline has passed.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()>;
}
