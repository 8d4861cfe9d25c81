//! The core's planted bug, for proving that the simulator and the fuzzers
//! find a broken rule: reached only in a build with
//! `RUSTFLAGS="--cfg foreman_planted_bug"`.

use super::Pool;
use crate::keys::{RequestKey, WorkerKey};

impl<P: Clone> Pool<P> {
    /// The planted bug: forgets a request that timed out while waiting,
    /// instead of answering it (every request must get exactly one answer).
    pub(super) fn forget_expired(&mut self, request: RequestKey, worker: WorkerKey) {
        self.counters.timed_out_queued += 1;
        if let Some(slot) = self.workers.get_mut(worker.0) {
            slot.queued = slot.queued.saturating_sub(1);
        }
        let _ = self.requests.remove(request.0);
    }
}
