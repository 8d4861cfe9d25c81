//! The guard that cancels a request whose `submit` future is dropped
//! before its answer ([`PendingGuard`]).

use std::sync::Arc;

use foreman_core::RequestKey;

use crate::runtime::Runtime;
use crate::shared::{Lane, Shared};
use crate::slot::Slot;
use crate::started::Delivered;
use crate::state::Own;
use crate::trace::Traced;

/// Cancels the request if `submit`'s future is dropped before its answer.
pub(super) struct PendingGuard<'a, R: Runtime> {
    pub(super) shared: &'a Arc<Shared<R>>,
    lane: &'a Lane,
    key: RequestKey,
    slot: &'a Arc<Slot>,
    traced: Traced,
    pub(super) done: bool,
}

impl<'a, R: Runtime> PendingGuard<'a, R> {
    pub(super) fn new(
        shared: &'a Arc<Shared<R>>,
        lane: &'a Lane,
        key: RequestKey,
        slot: &'a Arc<Slot>,
        traced: Traced,
    ) -> Self {
        PendingGuard {
            shared,
            lane,
            key,
            slot,
            traced,
            done: false,
        }
    }

    /// The request was answered before its handler ran (or after it was
    /// started but before this task ran it).
    pub(super) fn answered_without_run(&mut self) {
        self.done = true;
        drop(self.slot.lock().give_up());
    }

    /// Cancels the request unless the caller is done with it; returns its
    /// answer if the caller had not taken it.
    pub(super) fn cancel(&mut self) -> Option<Delivered> {
        if self.done {
            return None;
        }
        self.done = true;
        let shared = self.shared;
        let (slot, key) = (self.slot, self.key);
        let mut probes = Vec::new();
        let handed;
        let parked;
        let cancelled;
        let mut own = Own::default();
        {
            let mut core = self.lane.core.lock();
            {
                let mut inner = slot.lock();
                // Dropped once the locks are released.
                parked = std::mem::take(&mut inner.parked);
                handed = inner.give_up();
            }
            let now = shared.now();
            cancelled = core.pool.cancel(now, key);
            core.after_input(Some(key), &mut own, &mut probes, &self.lane.signals, 0);
        }
        let answer = own.answer.take();
        drop(handed);
        drop(parked);
        own.wake_all();
        drop(std::mem::take(&mut own.release));
        shared.spawn_probes(self.lane.index, probes);
        let answer = answer.or_else(|| slot.lock().answer.take());
        if let Some(answer) = &answer {
            shared.ended(self.traced, slot, answer, cancelled);
        }
        // The core may still hold the slot: the span goes now, with no
        // lock held, rather than with the slot's last holder.
        self.traced.release(slot);
        answer
    }
}

impl<R: Runtime> Drop for PendingGuard<'_, R> {
    fn drop(&mut self) {
        self.cancel();
    }
}
