//! The live count of a lane: handler futures and probe tasks that have not
//! ended yet, each held by a [`LiveGuard`] whose `Drop` is the only
//! decrement, and the `shutdown` callers waiting for the count to reach
//! zero once the lane's core has stopped.
//!
//! Written against [`crate::sync`], so `loom` explores its interleavings
//! (`RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test
//! --release -p foreman-driver --lib loom_tests`, as `.ci/run` does).

use std::task::{Poll, Waker};
use std::time::Instant;

use crate::sync::{lock, Arc, AtomicUsize, Mutex, Ordering};

/// The live count of a lane and its `shutdown` waiters.
pub(crate) struct Live {
    /// The instant the lane's `Time::ZERO` stands for, read by whoever
    /// runs a handler to say its deadline ([`crate::handler_deadline`]).
    epoch: Instant,
    count: AtomicUsize,
    stop: Mutex<Stop>,
}

#[cfg(test)]
impl Default for Live {
    /// A live count whose epoch is now.
    fn default() -> Self {
        Live::new(Instant::now())
    }
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
    /// A lane's live count, nothing live, for a core whose `Time::ZERO` is
    /// `epoch`.
    pub(crate) fn new(epoch: Instant) -> Self {
        Live {
            epoch,
            count: AtomicUsize::new(0),
            stop: Mutex::new(Stop::default()),
        }
    }

    /// Counts one more live handler or probe until the guard is dropped.
    pub(crate) fn start(self: &Arc<Self>) -> LiveGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        LiveGuard {
            live: Arc::clone(self),
        }
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

impl LiveGuard {
    /// The instant its lane's `Time::ZERO` stands for.
    #[inline]
    pub(crate) fn epoch(&self) -> Instant {
        self.live.epoch
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

#[cfg(all(test, loom))]
mod loom_tests {
    //! Every interleaving of handlers ending (on two worker tasks) with a
    //! `shutdown` caller marking the lane stopped and waiting: `shutdown`
    //! returns only once every handler ended, and never misses its wake-up
    //! (loom reports a deadlock if it would wait forever).

    use super::Live;
    use crate::sync::{Arc, AtomicUsize, Ordering};
    use loom::future::block_on;
    use loom::thread;
    use std::future::poll_fn;

    /// Two handlers end on two worker tasks while the caller shuts down.
    #[test]
    fn shutdown_returns_after_every_handler_ended() {
        loom::model(|| {
            let live = Arc::new(Live::default());
            let ended = Arc::new(AtomicUsize::new(0));
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let guard = live.start();
                    let ended = Arc::clone(&ended);
                    thread::spawn(move || {
                        // The handler future is dropped, then its guard.
                        ended.fetch_add(1, Ordering::SeqCst);
                        drop(guard);
                    })
                })
                .collect();
            live.mark_stopped();
            block_on(poll_fn(|cx| live.poll_idle(cx.waker())));
            assert_eq!(ended.load(Ordering::SeqCst), 2);
            for worker in workers {
                worker.join().expect("worker");
            }
        });
    }

    /// The core stops on a completing worker task (its completion answered
    /// the last request) while another handler is still being dropped, and
    /// the shutdown caller waits on a third thread.
    #[test]
    fn the_stop_and_the_last_handler_race_the_waiting_caller() {
        loom::model(|| {
            let live = Arc::new(Live::default());
            let ended = Arc::new(AtomicUsize::new(0));
            let completing = {
                let (live, ended) = (Arc::clone(&live), Arc::clone(&ended));
                let guard = live.start();
                thread::spawn(move || {
                    ended.fetch_add(1, Ordering::SeqCst);
                    drop(guard);
                    live.mark_stopped();
                })
            };
            let aborted = {
                let ended = Arc::clone(&ended);
                let guard = live.start();
                thread::spawn(move || {
                    ended.fetch_add(1, Ordering::SeqCst);
                    drop(guard);
                })
            };
            block_on(poll_fn(|cx| live.poll_idle(cx.waker())));
            assert_eq!(ended.load(Ordering::SeqCst), 2);
            completing.join().expect("completing worker");
            aborted.join().expect("aborting worker");
        });
    }
}
