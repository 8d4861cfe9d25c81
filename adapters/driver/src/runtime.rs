//! The runtime layer: the only things the driver needs from an async
//! runtime (spawn a task, a resettable timer, a monotonic clock).

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// An async runtime the pool can run on: spawn, timers and a clock.
///
/// Implementations are small and policy-free (see `foreman-tokio`); the
/// driver never names a runtime. Modelled on quinn's runtime layer.
pub trait Runtime: Debug + Send + Sync + 'static {
    /// Runs `future` to completion in the background (detached).
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>);

    /// A timer that completes at `deadline` and can be moved with
    /// [`AsyncTimer::reset`].
    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>>;

    /// The runtime's monotonic clock (a runtime with a virtual clock, such
    /// as tokio's paused test clock, returns its virtual time).
    fn now(&self) -> Instant;

    /// Spends one unit of the task's cooperative budget after a request;
    /// returns `Pending` (with a wake-up arranged) when the task should give
    /// its thread back to the scheduler.
    ///
    /// A handler that finishes at once never makes `submit` wait, so a caller
    /// looping on `submit` would otherwise never yield and could starve other
    /// tasks and the runtime's timers. The default yields once every 32
    /// requests per thread. (tokio's own budget was measured and rejected:
    /// its forced yields park the task until the worker's next maintenance
    /// tick, which cut throughput by 3x with 16 or more callers.)
    fn poll_cooperate(&self, cx: &mut Context<'_>) -> Poll<()> {
        let due = REQUESTS_SINCE_YIELD.with(|count| {
            let spent = count.get() + 1;
            count.set(if spent >= DEFAULT_BUDGET { 0 } else { spent });
            spent >= DEFAULT_BUDGET
        });
        if due {
            cx.waker().wake_by_ref();
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

/// Requests a thread may finish between two yields under the default
/// [`Runtime::poll_cooperate`].
const DEFAULT_BUDGET: u32 = 32;

thread_local! {
    static REQUESTS_SINCE_YIELD: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// A resettable timer, as returned by [`Runtime::new_timer`].
pub trait AsyncTimer: Debug + Send {
    /// Moves the deadline to `deadline` (the timer may fire again).
    fn reset(self: Pin<&mut Self>, deadline: Instant);

    /// Completes once the deadline has passed.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()>;
}
