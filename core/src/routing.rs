//! Routing: which worker a new request goes to.
//!
//! The router only knows which workers are *eligible* (active, schedulable
//! and with room in their queue), which of those are *idle* (a free run
//! slot) and which idle ones are *preferred* (Healthy, not Degraded), and
//! picks among them; the pool tells it when any of these changes.
//! Another policy replaces this module without touching the rest of the
//! core. Both sets are hierarchical bitsets over worker slot indices, so a
//! pick or an update costs O(log64 n).

use crate::config::RoutingPolicy;
use crate::index_set::IndexSet;
use crate::keys::WorkerKey;

#[derive(Debug)]
pub(crate) struct Router {
    policy: RoutingPolicy,
    eligible: IndexSet,
    /// Eligible Healthy workers with a free run slot: idle-first routing
    /// tries them first.
    idle_healthy: IndexSet,
    /// Eligible workers with a free run slot that are not Healthy
    /// (Degraded): tried next. Disjoint from `idle_healthy`.
    idle_degraded: IndexSet,
    /// The key of the worker at each slot index (while it is in a set).
    keys: Vec<Option<WorkerKey>>,
    /// Round-robin position: the next pick starts at the first candidate at
    /// or after this slot index.
    cursor: u32,
}

/// A worker's place in the router's sets, as the pool sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Membership {
    /// Schedulable with room.
    pub(crate) eligible: bool,
    /// Eligible with a free run slot.
    pub(crate) idle: bool,
    /// Idle and Healthy.
    pub(crate) preferred: bool,
}

impl Membership {
    fn healthy(self) -> bool {
        self.eligible && self.idle && self.preferred
    }

    fn degraded(self) -> bool {
        self.eligible && self.idle && !self.preferred
    }
}

impl Router {
    pub(crate) fn new(policy: RoutingPolicy) -> Self {
        Router {
            policy,
            eligible: IndexSet::default(),
            idle_healthy: IndexSet::default(),
            idle_degraded: IndexSet::default(),
            keys: Vec::new(),
            cursor: 0,
        }
    }

    /// Moves a worker from the sets of `was` to those of `now`, touching
    /// only the sets whose membership changes (the usual change, a worker
    /// becoming busy or free, touches one).
    pub(crate) fn set(&mut self, worker: WorkerKey, was: Membership, now: Membership) {
        let index = worker.index();
        if now.eligible && !was.eligible {
            let slot = index as usize;
            if self.keys.len() <= slot {
                self.keys.resize(slot + 1, None);
            }
            if let Some(key) = self.keys.get_mut(slot) {
                *key = Some(worker);
            }
        }
        update(&mut self.eligible, index, was.eligible, now.eligible);
        update(&mut self.idle_healthy, index, was.healthy(), now.healthy());
        update(
            &mut self.idle_degraded,
            index,
            was.degraded(),
            now.degraded(),
        );
    }

    /// The sets `worker` is in, as a [`Membership`] (for invariant checks).
    pub(crate) fn membership(&self, worker: WorkerKey) -> Membership {
        let index = worker.index();
        let known = self.key_at(index) == Some(worker);
        let healthy = known && self.idle_healthy.contains(index);
        let degraded = known && self.idle_degraded.contains(index);
        Membership {
            eligible: known && self.eligible.contains(index),
            idle: healthy || degraded,
            preferred: healthy,
        }
    }

    pub(crate) fn eligible_len(&self) -> usize {
        self.eligible.len()
    }

    pub(crate) fn idle_len(&self) -> usize {
        self.idle_healthy.len() + self.idle_degraded.len()
    }

    /// Eligible workers in the order the policy would try them.
    pub(crate) fn candidates(&self) -> impl Iterator<Item = WorkerKey> + '_ {
        let idle_first = self.policy == RoutingPolicy::IdleFirst;
        let idle = idle_first
            .then(|| {
                let cursor = self.cursor;
                // Built lazily, like `busy`.
                let degraded =
                    std::iter::once(()).flat_map(move |()| self.idle_degraded.rotate(cursor));
                self.idle_healthy.rotate(cursor).chain(degraded)
            })
            .into_iter()
            .flatten();
        // Built lazily: most picks end among the idle workers.
        let busy = std::iter::once(()).flat_map(move |()| {
            self.eligible
                .rotate(self.cursor)
                .filter(move |index| !(idle_first && self.is_idle_index(*index)))
        });
        idle.chain(busy).filter_map(|index| self.key_at(index))
    }

    /// The first of [`candidates`](Self::candidates), found without
    /// building the iterator (the usual pick takes it). `None` also when
    /// that first member has no key, which never happens; the caller then
    /// falls back to the iterator.
    pub(crate) fn first_candidate(&self) -> Option<WorkerKey> {
        let first = |set: &IndexSet| set.next_from(self.cursor).or_else(|| set.next_from(0));
        let index = match self.policy {
            RoutingPolicy::IdleFirst => first(&self.idle_healthy)
                .or_else(|| first(&self.idle_degraded))
                .or_else(|| first(&self.eligible)),
            _ => first(&self.eligible),
        }?;
        self.key_at(index)
    }

    /// Records that `worker` took a request, so the next pick moves on.
    pub(crate) fn picked(&mut self, worker: WorkerKey) {
        self.cursor = worker.index().wrapping_add(1);
    }

    pub(crate) fn iter_eligible(&self) -> impl Iterator<Item = WorkerKey> + '_ {
        self.eligible.iter().filter_map(|index| self.key_at(index))
    }

    pub(crate) fn iter_idle(&self) -> impl Iterator<Item = WorkerKey> + '_ {
        self.idle_healthy
            .iter()
            .chain(self.idle_degraded.iter())
            .filter_map(|index| self.key_at(index))
    }

    /// Whether slot `index` is in either idle set.
    fn is_idle_index(&self, index: u32) -> bool {
        self.idle_healthy.contains(index) || self.idle_degraded.contains(index)
    }

    fn key_at(&self, index: u32) -> Option<WorkerKey> {
        self.keys.get(index as usize).copied().flatten()
    }
}

/// Inserts or removes `index` when its membership of `set` changes.
fn update(set: &mut IndexSet, index: u32, was: bool, now: bool) {
    if now && !was {
        set.insert(index);
    } else if was && !now {
        set.remove(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slab::SlabKey;

    const OUT: Membership = Membership {
        eligible: false,
        idle: false,
        preferred: false,
    };
    const BUSY: Membership = Membership {
        eligible: true,
        idle: false,
        preferred: false,
    };
    const DEGRADED: Membership = Membership {
        eligible: true,
        idle: true,
        preferred: false,
    };
    const HEALTHY: Membership = Membership {
        eligible: true,
        idle: true,
        preferred: true,
    };

    fn worker(index: u32) -> WorkerKey {
        WorkerKey(SlabKey {
            index,
            generation: 0,
        })
    }

    fn indices(workers: impl Iterator<Item = WorkerKey>) -> Vec<u32> {
        workers.map(WorkerKey::index).collect()
    }

    /// Asserts the order `candidates` tries workers in, and that
    /// `first_candidate` is its first.
    fn assert_order(router: &Router, expected: &[u32]) {
        assert_eq!(indices(router.candidates()), expected);
        assert_eq!(
            router.first_candidate().map(WorkerKey::index),
            expected.first().copied()
        );
    }

    /// Workers 0 busy, 1 Degraded and idle, 2 and 3 Healthy and idle.
    fn mixed(policy: RoutingPolicy) -> Router {
        let mut router = Router::new(policy);
        for (index, membership) in [(0, BUSY), (1, DEGRADED), (2, HEALTHY), (3, HEALTHY)] {
            router.set(worker(index), OUT, membership);
        }
        router
    }

    #[test]
    fn membership_reads_back_what_was_set() {
        let router = mixed(RoutingPolicy::IdleFirst);
        assert_eq!(router.membership(worker(0)), BUSY);
        assert_eq!(router.membership(worker(1)), DEGRADED);
        assert_eq!(router.membership(worker(2)), HEALTHY);
        assert_eq!(router.membership(worker(7)), OUT);
        let other_generation = WorkerKey(SlabKey {
            index: 2,
            generation: 1,
        });
        assert_eq!(router.membership(other_generation), OUT);
        assert_eq!(router.eligible_len(), 4);
        assert_eq!(router.idle_len(), 3);
        assert_eq!(indices(router.iter_eligible()), vec![0, 1, 2, 3]);
        assert_eq!(indices(router.iter_idle()), vec![2, 3, 1]);
    }

    #[test]
    fn idle_first_tries_healthy_then_degraded_then_busy() {
        let router = mixed(RoutingPolicy::IdleFirst);
        assert_order(&router, &[2, 3, 1, 0]);
    }

    #[test]
    fn idle_first_falls_back_to_degraded_then_to_busy_workers() {
        let mut router = mixed(RoutingPolicy::IdleFirst);
        router.set(worker(2), HEALTHY, BUSY);
        router.set(worker(3), HEALTHY, BUSY);
        assert_order(&router, &[1, 0, 2, 3]);
        router.set(worker(1), DEGRADED, BUSY);
        assert_eq!(router.idle_len(), 0);
        assert_order(&router, &[0, 1, 2, 3]);
    }

    #[test]
    fn a_pick_moves_the_next_pick_on_and_wraps() {
        let mut router = mixed(RoutingPolicy::IdleFirst);
        router.picked(worker(2));
        assert_order(&router, &[3, 2, 1, 0]);
        router.picked(worker(3));
        assert_order(&router, &[2, 3, 1, 0]);
    }

    #[test]
    fn round_robin_ignores_idleness_and_health() {
        let mut router = mixed(RoutingPolicy::RoundRobin);
        assert_order(&router, &[0, 1, 2, 3]);
        router.picked(worker(1));
        assert_order(&router, &[2, 3, 0, 1]);
    }

    #[test]
    fn a_worker_that_leaves_is_no_candidate() {
        let mut router = mixed(RoutingPolicy::IdleFirst);
        router.set(worker(2), HEALTHY, OUT);
        router.set(worker(0), BUSY, OUT);
        assert_eq!(router.membership(worker(2)), OUT);
        assert_eq!(router.membership(worker(0)), OUT);
        assert_order(&router, &[3, 1]);
        assert_eq!(indices(router.iter_eligible()), vec![1, 3]);
        assert_eq!(indices(router.iter_idle()), vec![3, 1]);
        router.set(worker(3), HEALTHY, OUT);
        router.set(worker(1), DEGRADED, OUT);
        assert_eq!(router.eligible_len(), 0);
        assert_order(&router, &[]);
    }

    #[test]
    fn a_worker_can_join_at_a_high_slot_and_change_health_in_place() {
        let mut router = Router::new(RoutingPolicy::IdleFirst);
        router.set(worker(70), OUT, DEGRADED);
        router.set(worker(5), OUT, BUSY);
        assert_order(&router, &[70, 5]);
        router.set(worker(70), DEGRADED, HEALTHY);
        assert_eq!(router.membership(worker(70)), HEALTHY);
        assert_eq!(router.idle_len(), 1);
        router.set(worker(5), BUSY, HEALTHY);
        assert_order(&router, &[5, 70]);
        router.set(worker(5), HEALTHY, HEALTHY);
        assert_eq!(router.membership(worker(5)), HEALTHY);
    }
}
