//! The live count of a lane: handler futures and probe tasks that have not
//! ended yet, each held by a [`LiveGuard`] whose `Drop` is the only
//! decrement, and the `shutdown` callers waiting for the count to reach
//! zero once the lane's core has stopped.
//!
//! Written against [`crate::sync`], so `loom` explores its interleavings
//! (`RUSTFLAGS="--cfg loom" cargo test -p foreman-driver --lib live`).

use std::task::{Poll, Waker};

use crate::sync::{lock, Arc, AtomicUsize, Mutex, Ordering};

/// The live count of a lane and its `shutdown` waiters.
#[derive(Default)]
pub(crate) struct Live {
    count: AtomicUsize,
    stop: Mutex<Stop>,
}

#[derive(Default)]
struct Stop {
    /// The lane's core reported `ShutdownComplete`: nothing new starts.
    stopped: bool,
    waiters: Vec<Waker>,
}

/// One live handler future or probe task; dropping it ends it.
#[must_use = "dropping the guard ends the handler's count at once"]
pub(crate) struct LiveGuard {
    live: Arc<Live>,
}

impl Live {
    /// Counts one more live handler or probe until the guard is dropped.
    pub(crate) fn start(self: &Arc<Self>) -> LiveGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        LiveGuard {
            live: Arc::clone(self),
        }
    }

    /// How many are live.
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// The lane's core stopped: waiters are released once the count is zero.
    pub(crate) fn mark_stopped(&self) {
        let wake = {
            let mut stop = lock(&self.stop);
            stop.stopped = true;
            if self.count.load(Ordering::Acquire) == 0 {
                std::mem::take(&mut stop.waiters)
            } else {
                Vec::new()
            }
        };
        wake.into_iter().for_each(Waker::wake);
    }

    /// Whether the lane stopped and nothing is live; otherwise `waker` is
    /// woken when that becomes true.
    pub(crate) fn poll_idle(&self, waker: &Waker) -> Poll<()> {
        let mut stop = lock(&self.stop);
        if stop.stopped && self.count.load(Ordering::Acquire) == 0 {
            return Poll::Ready(());
        }
        if !stop.waiters.iter().any(|old| old.will_wake(waker)) {
            stop.waiters.push(waker.clone());
        }
        Poll::Pending
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.live.count.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // The last one: release the waiters if the lane has stopped (under
        // the lock, so a waiter that saw a count above zero has registered).
        let wake = {
            let mut stop = lock(&self.live.stop);
            if stop.stopped && self.live.count.load(Ordering::Acquire) == 0 {
                std::mem::take(&mut stop.waiters)
            } else {
                Vec::new()
            }
        };
        wake.into_iter().for_each(Waker::wake);
    }
}
