//! The core's timer table: one min-heap of deadlines with lazy deletion.
//!
//! Arming is O(log n) (O(1) for the common case of deadlines that only grow);
//! disarming is free: a timer whose owner no longer expects it is skipped
//! when it surfaces, or dropped by a sweep once the heap has doubled since
//! the last one (a pass over the heap itself, whatever the owner's number
//! of workers or requests), so memory stays proportional to what is armed
//! at amortised O(1) cost per timer. A driver that keeps one timer need
//! not discard stale entries after each input (see `Pool::move_timer`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::keys::{RequestKey, WorkerKey};
use crate::time::Time;

/// Why the core wants to be woken; the reason of [`crate::Pool::poll_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimeoutReason {
    /// A request's time budget runs out.
    RequestDeadline,
    /// A worker is due for a health probe.
    ProbeDue,
    /// An outstanding health probe runs out of time.
    ProbeTimeout,
    /// The drain deadline of a shutdown passes.
    DrainDeadline,
}

/// What a timer entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    Request(RequestKey),
    ProbeDue(WorkerKey),
    ProbeTimeout(WorkerKey),
    Drain,
}

impl Timer {
    pub(crate) fn reason(self) -> TimeoutReason {
        match self {
            Timer::Request(_) => TimeoutReason::RequestDeadline,
            Timer::ProbeDue(_) => TimeoutReason::ProbeDue,
            Timer::ProbeTimeout(_) => TimeoutReason::ProbeTimeout,
            Timer::Drain => TimeoutReason::DrainDeadline,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct TimerHeap {
    heap: BinaryHeap<Reverse<(Time, Timer)>>,
    /// Heap length right after the last sweep; the next sweep runs once the
    /// heap has doubled from it.
    swept_len: usize,
    /// The earliest entry armed since [`take_armed`](Self::take_armed) last
    /// ran.
    armed_since: Option<Time>,
}

impl TimerHeap {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Arms `timer` at `at`. Returns `true` when the heap has more than
    /// doubled since the last [`sweep`](Self::sweep): the owner should sweep
    /// it now.
    pub(crate) fn arm(&mut self, at: Time, timer: Timer) -> bool {
        self.heap.push(Reverse((at, timer)));
        self.armed_since = Some(self.armed_since.map_or(at, |earliest| earliest.min(at)));
        self.heap.len() > self.swept_len.saturating_mul(2).saturating_add(64)
    }

    /// Drops every stale entry in one pass (O(heap length); called when
    /// [`arm`](Self::arm) says the heap has more than doubled since the
    /// last sweep, so O(1) amortised per timer armed, whatever the number
    /// of workers or requests the owner has).
    pub(crate) fn sweep(&mut self, is_live: impl Fn(Time, Timer) -> bool) {
        self.heap
            .retain(|Reverse((at, timer))| is_live(*at, *timer));
        self.swept_len = self.heap.len();
    }

    /// The earliest live entry, discarding stale ones on top.
    pub(crate) fn peek_live(
        &mut self,
        is_live: impl Fn(Time, Timer) -> bool,
    ) -> Option<(Time, Timer)> {
        while let Some(Reverse((at, timer))) = self.heap.peek().copied() {
            if is_live(at, timer) {
                return Some((at, timer));
            }
            self.heap.pop();
        }
        None
    }

    /// The earliest entry armed since the last call (live or not by now).
    pub(crate) fn take_armed(&mut self) -> Option<Time> {
        self.armed_since.take()
    }

    /// Removes and returns the earliest live entry due at or before `now`.
    pub(crate) fn pop_due(
        &mut self,
        now: Time,
        is_live: impl Fn(Time, Timer) -> bool,
    ) -> Option<(Time, Timer)> {
        let (at, timer) = self.peek_live(is_live)?;
        if at > now {
            return None;
        }
        self.heap.pop();
        Some((at, timer))
    }
}

impl TimerHeap {
    /// Every entry, live or stale, in no particular order (for invariant
    /// checks).
    pub(crate) fn entries(&self) -> impl Iterator<Item = (Time, Timer)> + '_ {
        self.heap.iter().map(|Reverse(entry)| *entry)
    }
}
