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
#[non_exhaustive]
pub enum TimeoutReason {
    /// A request's time budget runs out.
    RequestDeadline,
    /// A queued request's queue-wait limit passes.
    QueueWaitLimit,
    /// A running request's run limit passes.
    RunLimit,
    /// A worker is due for a health probe.
    ProbeDue,
    /// An outstanding health probe runs out of time.
    ProbeTimeout,
    /// The drain deadline of a shutdown passes.
    DrainDeadline,
    /// A worker's ejection ends: it turns half-open.
    EjectionExpiry,
    /// Under `RoutingPolicy::PeakEwma`, a free worker takes the oldest
    /// waiting request after all, which free workers had left to a faster
    /// busy worker.
    DeferralEnd,
    /// A running request is due for a hedge ([`crate::HedgePolicy`]).
    HedgeDue,
    /// A worker's saturation (a handler refused a request it had not
    /// started: see [`crate::Pool::handle_refusal`]) expires: it takes
    /// waiting requests again.
    SaturationExpiry,
}

/// What a timer entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    Request(RequestKey),
    QueueWait(RequestKey),
    RunLimit(RequestKey),
    ProbeDue(WorkerKey),
    ProbeTimeout(WorkerKey),
    Drain,
    Ejection(WorkerKey),
    /// Free workers' deferral of the backlog's oldest request ends.
    Deferral,
    /// The earliest request due for a hedge is (one timer for the pool).
    Hedge,
    /// A worker's saturation expires.
    Saturation(WorkerKey),
}

impl Timer {
    pub(crate) fn reason(self) -> TimeoutReason {
        match self {
            Timer::Request(_) => TimeoutReason::RequestDeadline,
            Timer::QueueWait(_) => TimeoutReason::QueueWaitLimit,
            Timer::RunLimit(_) => TimeoutReason::RunLimit,
            Timer::ProbeDue(_) => TimeoutReason::ProbeDue,
            Timer::ProbeTimeout(_) => TimeoutReason::ProbeTimeout,
            Timer::Drain => TimeoutReason::DrainDeadline,
            Timer::Ejection(_) => TimeoutReason::EjectionExpiry,
            Timer::Deferral => TimeoutReason::DeferralEnd,
            Timer::Hedge => TimeoutReason::HedgeDue,
            Timer::Saturation(_) => TimeoutReason::SaturationExpiry,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slab::SlabKey;

    fn request(index: u32) -> Timer {
        Timer::Request(RequestKey(SlabKey {
            index,
            generation: 0,
        }))
    }

    fn at(millis: u64) -> Time {
        Time::from_millis(millis)
    }

    #[test]
    fn each_timer_reports_its_reason() {
        let worker = WorkerKey(SlabKey {
            index: 0,
            generation: 0,
        });
        assert_eq!(request(0).reason(), TimeoutReason::RequestDeadline);
        let key = RequestKey(SlabKey {
            index: 0,
            generation: 0,
        });
        assert_eq!(
            Timer::QueueWait(key).reason(),
            TimeoutReason::QueueWaitLimit
        );
        assert_eq!(Timer::RunLimit(key).reason(), TimeoutReason::RunLimit);
        assert_eq!(Timer::ProbeDue(worker).reason(), TimeoutReason::ProbeDue);
        assert_eq!(
            Timer::ProbeTimeout(worker).reason(),
            TimeoutReason::ProbeTimeout
        );
        assert_eq!(Timer::Drain.reason(), TimeoutReason::DrainDeadline);
        assert_eq!(Timer::Hedge.reason(), TimeoutReason::HedgeDue);
    }

    #[test]
    fn arm_asks_for_a_sweep_once_the_heap_has_more_than_doubled() {
        let mut heap = TimerHeap::new();
        // 64 entries of slack over twice the swept length (0 at first).
        for index in 0..64 {
            assert!(!heap.arm(at(1), request(index)), "entry {index}");
        }
        assert!(heap.arm(at(1), request(64)));
        assert!(heap.arm(at(1), request(65)));
        // Keep 10 of the 66: the next sweep is due past 2 * 10 + 64.
        heap.sweep(|_, timer| matches!(timer, Timer::Request(key) if key.0.index < 10));
        assert_eq!(heap.entries().count(), 10);
        for index in 10..84 {
            assert!(!heap.arm(at(1), request(index)), "entry {index}");
        }
        assert!(heap.arm(at(1), request(84)));
    }

    #[test]
    fn sweep_drops_only_stale_entries() {
        let mut heap = TimerHeap::new();
        for index in 0..6 {
            heap.arm(at(u64::from(index)), request(index));
        }
        heap.sweep(|_, timer| matches!(timer, Timer::Request(key) if key.0.index % 2 == 0));
        let mut left: Vec<(Time, Timer)> = heap.entries().collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                (at(0), request(0)),
                (at(2), request(2)),
                (at(4), request(4))
            ]
        );
    }

    #[test]
    fn peek_live_skips_and_discards_stale_entries_on_top() {
        let mut heap = TimerHeap::new();
        heap.arm(at(1), request(1));
        heap.arm(at(2), request(2));
        heap.arm(at(3), request(3));
        let live = |_: Time, timer: Timer| timer != request(1);
        assert_eq!(heap.peek_live(live), Some((at(2), request(2))));
        assert_eq!(heap.entries().count(), 2, "the stale top is dropped");
        assert_eq!(heap.peek_live(|_, _| false), None);
        assert_eq!(heap.entries().count(), 0);
    }

    #[test]
    fn pop_due_fires_at_the_instant_and_not_before() {
        let mut heap = TimerHeap::new();
        heap.arm(at(5), request(5));
        heap.arm(at(7), request(7));
        let live = |_: Time, _: Timer| true;
        assert_eq!(heap.pop_due(at(4), live), None);
        assert_eq!(heap.pop_due(at(5), live), Some((at(5), request(5))));
        assert_eq!(heap.pop_due(at(5), live), None);
        assert_eq!(heap.pop_due(at(9), live), Some((at(7), request(7))));
        assert_eq!(heap.pop_due(at(9), live), None);
    }

    #[test]
    fn take_armed_reports_the_earliest_armed_since_the_last_call() {
        let mut heap = TimerHeap::new();
        assert_eq!(heap.take_armed(), None);
        heap.arm(at(8), request(0));
        heap.arm(at(3), request(1));
        heap.arm(at(5), request(2));
        assert_eq!(heap.take_armed(), Some(at(3)));
        assert_eq!(heap.take_armed(), None);
        heap.arm(at(9), request(3));
        assert_eq!(heap.take_armed(), Some(at(9)));
    }
}
