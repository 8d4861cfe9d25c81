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
    /// Eligible workers with a free run slot (a subset of `eligible`).
    idle: IndexSet,
    /// Idle workers that are Healthy (a subset of `idle`): idle-first
    /// routing tries them before idle Degraded ones.
    preferred: IndexSet,
    /// The key of the worker at each slot index (while it is in a set).
    keys: Vec<Option<WorkerKey>>,
    /// Round-robin position: the next pick starts at the first candidate at
    /// or after this slot index.
    cursor: u32,
}

impl Router {
    pub(crate) fn new(policy: RoutingPolicy) -> Self {
        Router {
            policy,
            eligible: IndexSet::default(),
            idle: IndexSet::default(),
            preferred: IndexSet::default(),
            keys: Vec::new(),
            cursor: 0,
        }
    }

    /// Records a worker's routing state (`preferred` implies `idle`, which
    /// implies `eligible`).
    pub(crate) fn set(&mut self, worker: WorkerKey, eligible: bool, idle: bool, preferred: bool) {
        let index = worker.index();
        if eligible {
            let slot = index as usize;
            if self.keys.len() <= slot {
                self.keys.resize(slot + 1, None);
            }
            if let Some(key) = self.keys.get_mut(slot) {
                *key = Some(worker);
            }
            self.eligible.insert(index);
        } else {
            self.eligible.remove(index);
        }
        if eligible && idle {
            self.idle.insert(index);
        } else {
            self.idle.remove(index);
        }
        if eligible && idle && preferred {
            self.preferred.insert(index);
        } else {
            self.preferred.remove(index);
        }
    }

    pub(crate) fn is_eligible(&self, worker: WorkerKey) -> bool {
        self.eligible.contains(worker.index()) && self.key_at(worker.index()) == Some(worker)
    }

    pub(crate) fn is_idle(&self, worker: WorkerKey) -> bool {
        self.idle.contains(worker.index()) && self.key_at(worker.index()) == Some(worker)
    }

    pub(crate) fn is_preferred(&self, worker: WorkerKey) -> bool {
        self.preferred.contains(worker.index()) && self.key_at(worker.index()) == Some(worker)
    }

    pub(crate) fn eligible_len(&self) -> usize {
        self.eligible.len()
    }

    pub(crate) fn idle_len(&self) -> usize {
        self.idle.len()
    }

    /// Eligible workers in the order the policy would try them.
    pub(crate) fn candidates(&self) -> impl Iterator<Item = WorkerKey> + '_ {
        let idle_first = self.policy == RoutingPolicy::IdleFirst;
        let preferred = idle_first
            .then(|| self.preferred.rotate(self.cursor))
            .into_iter()
            .flatten();
        // Built lazily, like `busy`.
        let degraded = std::iter::once(()).flat_map(move |()| {
            idle_first
                .then(|| {
                    self.idle
                        .rotate(self.cursor)
                        .filter(move |index| !self.preferred.contains(*index))
                })
                .into_iter()
                .flatten()
        });
        let idle = preferred.chain(degraded);
        // Built lazily: most picks end among the idle workers.
        let busy = std::iter::once(()).flat_map(move |()| {
            self.eligible
                .rotate(self.cursor)
                .filter(move |index| !(idle_first && self.idle.contains(*index)))
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
            RoutingPolicy::IdleFirst => first(&self.preferred)
                .or_else(|| first(&self.idle))
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
        self.idle.iter().filter_map(|index| self.key_at(index))
    }

    fn key_at(&self, index: u32) -> Option<WorkerKey> {
        self.keys.get(index as usize).copied().flatten()
    }
}
