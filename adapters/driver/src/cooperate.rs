//! How a caller whose requests never wait gives its thread back: callers
//! sharing a thread take turns, and a caller alone yields now and then.

use std::task::{Context, Poll};

use futures_util::future::poll_fn;

use crate::runtime::{yield_once, Runtime};

/// Requests a caller that has a thread to itself may finish in a row
/// without ever waiting before `submit` yields once to the runtime: the
/// number of ready operations tokio's own coop budget lets a task make.
/// (A yield costs microseconds on a multi-threaded runtime, where it wakes
/// another worker that steals the task: at 32, one yield every 32 requests
/// made a lone caller's requests 35% slower than at 1024.)
const SOLO_BUDGET: u32 = 128;

thread_local! {
    /// The task that last finished a request on this thread (its waker's
    /// data pointer), and how many requests in a row it finished without
    /// waiting.
    static LAST_INLINE: std::cell::Cell<(usize, u32)> = const { std::cell::Cell::new((0, 0)) };
}

/// Yields to the scheduler after a request that never waited, when
/// another task finished a request on this thread since this one's last
/// (callers sharing a thread then take turns request by request, as they
/// would on a channel), or after [`SOLO_BUDGET`] such requests in a row by
/// one task, through [`Runtime::yield_now`] (so a caller alone on its
/// thread still lets the runtime's timers and I/O run).
///
/// A handler that finishes at once never makes `submit` wait, so a caller
/// looping on `submit` would otherwise never give its thread back and could
/// starve other tasks and the runtime itself, and callers sharing a thread
/// would run in bursts, one caller's requests queued behind another's (a
/// p99 latency tens of times the channel floor's). A request that did wait
/// (its handler awaited, or it queued) already yielded: it resets the
/// count, so real workloads never pay for a forced yield. The yield comes
/// after the answer, so the first poll of `submit` always submits.
/// (tokio's own coop budget was measured and rejected: its forced yields
/// park the task until the worker's next maintenance tick, which cut
/// throughput 3x with 16 or more callers. The turn between callers sharing
/// a thread is a plain self-wake for the same reason: tokio's deferred
/// yield there put p99 at 2x the channel floor's with 64 workers and 16
/// callers.)
pub(crate) async fn cooperate<R: Runtime>(runtime: &R, waited: bool) {
    match poll_fn(|cx| Poll::Ready(turn(cx, waited))).await {
        Turn::Keep => {}
        Turn::Share => yield_once().await,
        Turn::Solo => runtime.yield_now().await,
    }
}

/// What [`cooperate`] does after a request.
enum Turn {
    /// Nothing: carry on.
    Keep,
    /// Another task finished a request on this thread since: let it run.
    Share,
    /// This task ran [`SOLO_BUDGET`] requests in a row alone: give the
    /// runtime its thread back once.
    Solo,
}

/// Decides the [`Turn`] of the task polling with `cx` (the waker's data
/// pointer tells tasks apart: a task's wakers share it; nothing is ever
/// read through it).
fn turn(cx: &Context<'_>, waited: bool) -> Turn {
    let task = cx.waker().data() as usize;
    LAST_INLINE.with(|last| {
        let (previous, count) = last.get();
        if waited {
            last.set((task, 0));
            return Turn::Keep;
        }
        if previous != task {
            last.set((task, 0));
            return Turn::Share;
        }
        if count + 1 >= SOLO_BUDGET {
            last.set((task, 0));
            return Turn::Solo;
        }
        last.set((task, count + 1));
        Turn::Keep
    })
}
