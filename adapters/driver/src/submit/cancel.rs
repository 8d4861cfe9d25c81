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
        let slot = self.slot;
        // Where the request is: where it was submitted, or the lane it
        // moved to (`Shared::move_queued`), read under that lane's lock.
        let (mut lane, mut key) = (self.lane, self.key);
        let mut probes = Vec::new();
        let handed;
        let parked;
        let in_transit;
        let mut cancelled = false;
        let mut own = Own::default();
        loop {
            let mut core = lane.core.lock();
            in_transit = {
                let mut inner = slot.lock();
                if let Some((moved, moved_key)) = inner.moved {
                    if (moved, moved_key) != (lane.index, key) {
                        drop(inner);
                        drop(core);
                        (lane, key) = (shared.lane(moved), moved_key);
                        continue;
                    }
                }
                // Dropped once the locks are released.
                parked = std::mem::take(&mut inner.parked);
                handed = inner.give_up();
                inner.in_transit
            };
            // A request between two lanes is answered `Cancelled` by its
            // move, which sees it given up and tells its end
            // (`Shared::answer_released`).
            if !in_transit {
                let now = shared.now();
                cancelled = core.pool.cancel(now, key);
                core.after_input(Some(key), &mut own, &mut probes, &lane.signals, 0);
            }
            break;
        }
        let answer = own.answer.take();
        drop(handed);
        drop(parked);
        own.wake_all();
        drop(std::mem::take(&mut own.release));
        shared.spawn_probes(lane.index, probes);
        if in_transit {
            return None;
        }
        // A cancel that freed a worker may leave its lane idle while
        // another lane's requests wait (that lane may see no further input).
        shared.balance_lanes(lane.index);
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
