//! Routing: which worker a new request goes to.
//!
//! The router only knows which workers are *eligible* (active, schedulable
//! and with room in their queue) and picks among them; the pool tells it when
//! eligibility changes. Another policy replaces this module without touching
//! the rest of the core.

use std::collections::BTreeSet;

use crate::config::RoutingPolicy;
use crate::keys::WorkerKey;

#[derive(Debug)]
pub(crate) struct Router {
    policy: RoutingPolicy,
    eligible: BTreeSet<WorkerKey>,
    /// Round-robin position: the next pick starts at the first eligible
    /// worker at or after this key.
    cursor: Option<WorkerKey>,
}

impl Router {
    pub(crate) fn new(policy: RoutingPolicy) -> Self {
        Router {
            policy,
            eligible: BTreeSet::new(),
            cursor: None,
        }
    }

    pub(crate) fn set_eligible(&mut self, worker: WorkerKey, eligible: bool) {
        if eligible {
            self.eligible.insert(worker);
        } else {
            self.eligible.remove(&worker);
        }
    }

    pub(crate) fn is_eligible(&self, worker: WorkerKey) -> bool {
        self.eligible.contains(&worker)
    }

    pub(crate) fn eligible_len(&self) -> usize {
        self.eligible.len()
    }

    /// Eligible workers in the order the policy would try them.
    pub(crate) fn candidates(&self) -> impl Iterator<Item = WorkerKey> + '_ {
        match self.policy {
            RoutingPolicy::RoundRobin => {
                let (after, before) = match self.cursor {
                    Some(cursor) => (self.eligible.range(cursor..), self.eligible.range(..cursor)),
                    None => (
                        self.eligible.range(..),
                        self.eligible.range(..WorkerKey::MIN),
                    ),
                };
                after.chain(before).copied()
            }
        }
    }

    /// Records that `worker` took a request, so the next pick moves on.
    pub(crate) fn picked(&mut self, worker: WorkerKey) {
        self.cursor = Some(worker.successor());
    }

    pub(crate) fn iter_eligible(&self) -> impl Iterator<Item = WorkerKey> + '_ {
        self.eligible.iter().copied()
    }
}
