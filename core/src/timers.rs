//! The core's timer table: one min-heap of deadlines with lazy deletion.
//!
//! Arming is O(log n) (O(1) for the common case of deadlines that only grow);
//! disarming is free: a timer whose owner no longer expects it is skipped
//! when it surfaces. Once stale entries outnumber the live ones the owner
//! rebuilds the heap from its own records with one sequential scan, so memory
//! stays proportional to what is armed at amortised O(1) cost per timer.

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

    /// Arms `timer` at `at`. Returns `true` when stale entries have piled
    /// up enough that the owner should [`rebuild`](Self::rebuild) the heap
    /// from its own records.
    pub(crate) fn arm(&mut self, at: Time, timer: Timer) -> bool {
        self.heap.push(Reverse((at, timer)));
        self.armed_since = Some(self.armed_since.map_or(at, |earliest| earliest.min(at)));
        self.heap.len() > self.swept_len.saturating_mul(2).saturating_add(64)
    }

    /// Replaces the heap with exactly the live entries, enumerated by the
    /// owner from its records (a sequential scan, O(live)).
    pub(crate) fn rebuild(&mut self, live: impl Iterator<Item = (Time, Timer)>) {
        let mut entries = std::mem::take(&mut self.heap).into_vec();
        entries.clear();
        entries.extend(live.map(Reverse));
        self.heap = BinaryHeap::from(entries);
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
