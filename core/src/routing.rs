//! Routing: which worker a new request goes to.
//!
//! The router only knows which workers are *eligible* (active, schedulable
//! and with room in their queue) and which of those are *idle* (a free run
//! slot), and picks among them; the pool tells it when either changes.
//! Another policy replaces this module without touching the rest of the
//! core.

use std::collections::BTreeSet;
use std::ops::Bound;

use crate::config::RoutingPolicy;
use crate::keys::WorkerKey;

#[derive(Debug)]
pub(crate) struct Router {
    policy: RoutingPolicy,
    eligible: BTreeSet<WorkerKey>,
    /// Eligible workers with a free run slot (a subset of `eligible`).
    idle: BTreeSet<WorkerKey>,
    /// Round-robin position: the next pick starts at the first candidate at
    /// or after this key.
    cursor: WorkerKey,
}

impl Router {
    pub(crate) fn new(policy: RoutingPolicy) -> Self {
        Router {
            policy,
            eligible: BTreeSet::new(),
            idle: BTreeSet::new(),
            cursor: WorkerKey::MIN,
        }
    }

    /// Records a worker's routing state (`idle` implies `eligible`).
    pub(crate) fn set(&mut self, worker: WorkerKey, eligible: bool, idle: bool) {
        if eligible {
            self.eligible.insert(worker);
        } else {
            self.eligible.remove(&worker);
        }
        if eligible && idle {
            self.idle.insert(worker);
        } else {
            self.idle.remove(&worker);
        }
    }

    pub(crate) fn is_eligible(&self, worker: WorkerKey) -> bool {
        self.eligible.contains(&worker)
    }

    pub(crate) fn is_idle(&self, worker: WorkerKey) -> bool {
        self.idle.contains(&worker)
    }

    pub(crate) fn eligible_len(&self) -> usize {
        self.eligible.len()
    }

    /// Eligible workers in the order the policy would try them.
    pub(crate) fn candidates(&self) -> impl Iterator<Item = WorkerKey> + '_ {
        let busy_first = match self.policy {
            RoutingPolicy::RoundRobin => None,
            RoutingPolicy::IdleFirst => Some(rotate(&self.idle, self.cursor)),
        };
        let idle = &self.idle;
        let skip_idle = busy_first.is_some();
        busy_first.into_iter().flatten().chain(
            rotate(&self.eligible, self.cursor)
                .filter(move |worker| !(skip_idle && idle.contains(worker))),
        )
    }

    /// Records that `worker` took a request, so the next pick moves on.
    pub(crate) fn picked(&mut self, worker: WorkerKey) {
        self.cursor = worker.successor();
    }

    pub(crate) fn iter_eligible(&self) -> impl Iterator<Item = WorkerKey> + '_ {
        self.eligible.iter().copied()
    }

    pub(crate) fn iter_idle(&self) -> impl Iterator<Item = WorkerKey> + '_ {
        self.idle.iter().copied()
    }
}

/// The set's members from `cursor` on, then those before it.
fn rotate(set: &BTreeSet<WorkerKey>, cursor: WorkerKey) -> impl Iterator<Item = WorkerKey> + '_ {
    set.range(cursor..)
        .chain(set.range((Bound::Unbounded, Bound::Excluded(cursor))))
        .copied()
}
