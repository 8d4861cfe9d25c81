//! Routing: which worker a new request goes to.
//!
//! The router only knows which workers are *eligible* (active, schedulable
//! and with room in their queue), which of those are *idle* (a free run
//! slot) and which idle ones are *preferred* (Healthy, not Degraded), and
//! picks among them; the pool tells it when any of these changes, and,
//! for the load-aware policies, what each of two drawn candidates costs
//! ([`Cost`]). Another policy replaces this module without touching the
//! rest of the core. The sets are hierarchical bitsets over worker slot
//! indices, so a pick or an update costs O(log64 n): a round-robin or
//! idle-first pick is a "next member from the cursor", a two-choice pick
//! two uniform draws by rank ([`IndexSet::nth`]).
//!
//! | policy | rule | per pick |
//! |---|---|---|
//! | `RoundRobin` | the next eligible worker from the cursor | O(log64 n) |
//! | `IdleFirst` | the next idle Healthy worker from the cursor, else idle Degraded, else eligible | O(log64 n) |
//! | `LeastLoaded` | two distinct random idle workers (else eligible): the lower `load + 1` wins | O(log64 n) + two costs |
//! | `PeakEwma` | as `LeastLoaded`, on `latency estimate × (load + 1)` ([`ewma`]) | O(log64 n) + two costs |
//!
//! Under every policy a worker held at the ejection cap
//! ([`RecoveryState::Held`](crate::RecoveryState::Held)) or saturated (a
//! handler refused a request it had not started: see
//! [`Pool::handle_refusal`](crate::Pool::handle_refusal), for at most one
//! probe interval) is a last
//! resort: it is in none of the sets above but its own, and is picked (the
//! first from the cursor) only when no other worker is eligible. So a new
//! request, a moved one, a retry or a hedge goes to a saturated worker only
//! when every other worker is full, saturated or out of rotation, and
//! then waits in its queue (and, unpinned, in the backlog) instead of
//! being refused.
//!
//! Under both load-aware policies a Degraded worker's cost is multiplied
//! by `100 / degraded_share_percent`, and a tie goes to the Healthy
//! candidate, then to the first drawn.

pub(crate) mod ewma;

use std::collections::BTreeSet;

use crate::config::RoutingPolicy;
use crate::index_set::IndexSet;
use crate::keys::WorkerKey;
use crate::rng::Rng;

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
    /// Schedulable workers with room that are a last resort (held at the
    /// ejection cap, or saturated): picked only when no other worker is
    /// eligible. Disjoint from the others.
    held: IndexSet,
    /// The key of the worker at each slot index (while it is in a set).
    keys: Vec<Option<WorkerKey>>,
    /// Round-robin position: the next pick starts at the first candidate at
    /// or after this slot index.
    cursor: u32,
    /// Under `PeakEwma`: busy schedulable workers by the instant (in
    /// nanoseconds) they are expected to finish a request they would take
    /// next, earliest first (latency-aware late binding asks for the
    /// first).
    finish: BTreeSet<(u64, WorkerKey)>,
    /// Workers with a free run slot and requests waiting in their queue:
    /// only while those are left to faster workers (under `PeakEwma`);
    /// such a worker with a full queue, or not schedulable, is in no other
    /// set.
    free_holding: IndexSet,
    /// Under `PeakEwma`: the throughput each worker counts for, by slot
    /// index (0 unless it serves the backlog), in runs per nanosecond at
    /// its stored estimate, and their sum.
    rates: Vec<f64>,
    rate_sum: f64,
    /// How many slots count a throughput above 0 (at none, the sum is
    /// reset to exactly 0, dropping the rounding of its updates).
    rated: usize,
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
    /// Eligible, but a last resort (held at the ejection cap, or
    /// saturated), never idle.
    pub(crate) held: bool,
}

impl Membership {
    fn healthy(self) -> bool {
        self.eligible && !self.held && self.idle && self.preferred
    }

    fn degraded(self) -> bool {
        self.eligible && !self.held && self.idle && !self.preferred
    }

    fn first_choice(self) -> bool {
        self.eligible && !self.held
    }

    fn last_resort(self) -> bool {
        self.eligible && self.held
    }
}

/// What a candidate of a two-choice pick costs, as the pool computes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cost {
    /// Lower wins.
    pub(crate) value: f64,
    /// Healthy: wins a tie against a worker that is not.
    pub(crate) healthy: bool,
}

impl Router {
    pub(crate) fn new(policy: RoutingPolicy) -> Self {
        Router {
            policy,
            eligible: IndexSet::default(),
            idle_healthy: IndexSet::default(),
            idle_degraded: IndexSet::default(),
            held: IndexSet::default(),
            keys: Vec::new(),
            cursor: 0,
            finish: BTreeSet::new(),
            free_holding: IndexSet::default(),
            rates: Vec::new(),
            rate_sum: 0.0,
            rated: 0,
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
        update(
            &mut self.eligible,
            index,
            was.first_choice(),
            now.first_choice(),
        );
        update(&mut self.held, index, was.last_resort(), now.last_resort());
        update(&mut self.idle_healthy, index, was.healthy(), now.healthy());
        update(
            &mut self.idle_degraded,
            index,
            was.degraded(),
            now.degraded(),
        );
    }

    /// Moves `worker` in the finish order from `was` to `now` (`None`: not
    /// in it); O(log n).
    pub(crate) fn set_finish(&mut self, worker: WorkerKey, was: Option<u64>, now: Option<u64>) {
        if was == now {
            return;
        }
        if let Some(key) = was {
            self.finish.remove(&(key, worker));
        }
        if let Some(key) = now {
            self.finish.insert((key, worker));
        }
    }

    /// The busy worker expected to finish a new request first, with that
    /// instant in nanoseconds.
    pub(crate) fn first_to_finish(&self) -> Option<(u64, WorkerKey)> {
        self.finish.first().copied()
    }

    /// Whether `worker` is in the finish order at `key`, or `key` is
    /// `None` (for invariant checks).
    pub(crate) fn finish_holds(&self, worker: WorkerKey, key: Option<u64>) -> bool {
        key.is_none_or(|key| self.finish.contains(&(key, worker)))
    }

    /// Records the throughput `worker` counts for in the sum; O(1).
    pub(crate) fn set_rate(&mut self, worker: WorkerKey, rate: f64) {
        let slot = worker.index() as usize;
        if self.rates.len() <= slot {
            if rate == 0.0 {
                return;
            }
            self.rates.resize(slot + 1, 0.0);
        }
        if let Some(counted) = self.rates.get_mut(slot) {
            if *counted != rate {
                match (*counted > 0.0, rate > 0.0) {
                    (false, true) => self.rated += 1,
                    (true, false) => self.rated = self.rated.saturating_sub(1),
                    _ => {}
                }
                self.rate_sum += rate - *counted;
                *counted = rate;
                if self.rated == 0 {
                    self.rate_sum = 0.0;
                }
            }
        }
    }

    /// The throughput `worker`'s slot counts for in the sum.
    pub(crate) fn rate(&self, worker: WorkerKey) -> f64 {
        self.rates
            .get(worker.index() as usize)
            .copied()
            .unwrap_or(0.0)
    }

    /// The sum recomputed from every slot's throughput (for invariant
    /// checks: it matches [`rate_sum`](Self::rate_sum) up to rounding).
    pub(crate) fn rate_total(&self) -> f64 {
        self.rates.iter().sum()
    }

    /// The schedulable workers' summed throughput, in runs per nanosecond
    /// (never negative, whatever the rounding of its updates).
    pub(crate) fn rate_sum(&self) -> f64 {
        self.rate_sum.max(0.0)
    }

    /// How many workers the finish order holds.
    pub(crate) fn finish_len(&self) -> usize {
        self.finish.len()
    }

    /// The sets `worker` is in, as a [`Membership`] (for invariant checks).
    pub(crate) fn membership(&self, worker: WorkerKey) -> Membership {
        let index = worker.index();
        let known = self.key_at(index) == Some(worker);
        let healthy = known && self.idle_healthy.contains(index);
        let degraded = known && self.idle_degraded.contains(index);
        let held = known && self.held.contains(index);
        Membership {
            eligible: held || (known && self.eligible.contains(index)),
            idle: healthy || degraded,
            preferred: healthy,
            held,
        }
    }

    /// Eligible workers, held ones included.
    pub(crate) fn eligible_len(&self) -> usize {
        self.eligible.len() + self.held.len()
    }

    pub(crate) fn idle_len(&self) -> usize {
        self.idle_healthy.len() + self.idle_degraded.len()
    }

    /// The policy's pick: [`first_candidate`](Self::first_candidate) under
    /// `RoundRobin` and `IdleFirst`; under the load-aware policies the
    /// cheaper of two distinct workers drawn uniformly from `rng` among the
    /// idle ones, or among the eligible ones when none is idle (ties: the
    /// Healthy one, then the first drawn). `cost` is asked about the two
    /// candidates only.
    pub(crate) fn pick(
        &self,
        rng: &mut Rng,
        cost: impl Fn(WorkerKey) -> Cost,
    ) -> Option<WorkerKey> {
        if !self.policy.is_load_aware() {
            return self.first_candidate();
        }
        let idle = self.idle_len();
        let (size, from_idle) = if idle > 0 {
            (idle, true)
        } else {
            (self.eligible.len(), false)
        };
        if size == 0 {
            return self.first_held();
        }
        let first_rank = rng.below(size as u64) as usize;
        let first = self.member(first_rank, from_idle)?;
        if size == 1 {
            return Some(first);
        }
        let mut second_rank = rng.below(size as u64 - 1) as usize;
        if second_rank >= first_rank {
            second_rank += 1;
        }
        let Some(second) = self.member(second_rank, from_idle) else {
            return Some(first);
        };
        let (a, b) = (cost(first), cost(second));
        let second_wins = b.value < a.value || (b.value == a.value && b.healthy && !a.healthy);
        Some(if second_wins { second } else { first })
    }

    /// The first held worker from the cursor (the last resort).
    fn first_held(&self) -> Option<WorkerKey> {
        let index = self
            .held
            .next_from(self.cursor)
            .or_else(|| self.held.next_from(0))?;
        self.key_at(index)
    }

    /// The worker of rank `rank` among the idle workers (Healthy ones
    /// first) or among the eligible ones.
    fn member(&self, rank: usize, from_idle: bool) -> Option<WorkerKey> {
        let index = if from_idle {
            let healthy = self.idle_healthy.len();
            match rank.checked_sub(healthy) {
                None => self.idle_healthy.nth(rank),
                Some(rest) => self.idle_degraded.nth(rest),
            }
        } else {
            self.eligible.nth(rank)
        }?;
        self.key_at(index)
    }

    /// Eligible workers in the order the policy would try them: under
    /// every policy but `RoundRobin`, idle Healthy workers from the cursor,
    /// then idle Degraded ones, then the busy ones; under `RoundRobin`
    /// every eligible worker from the cursor. (A load-aware policy's pick
    /// comes first and this order after it: see [`pick`](Self::pick).)
    pub(crate) fn candidates(&self) -> impl Iterator<Item = WorkerKey> + '_ {
        let idle_first = self.policy != RoutingPolicy::RoundRobin;
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
        // Held workers last, also built lazily.
        let held = std::iter::once(()).flat_map(move |()| self.held.rotate(self.cursor));
        idle.chain(busy)
            .chain(held)
            .filter_map(|index| self.key_at(index))
    }

    /// The first of [`candidates`](Self::candidates), found without
    /// building the iterator (the usual pick takes it). `None` also when
    /// that first member has no key, which never happens; the caller then
    /// falls back to the iterator.
    pub(crate) fn first_candidate(&self) -> Option<WorkerKey> {
        let first = |set: &IndexSet| set.next_from(self.cursor).or_else(|| set.next_from(0));
        let index = match self.policy {
            RoutingPolicy::RoundRobin => first(&self.eligible),
            _ => first(&self.idle_healthy)
                .or_else(|| first(&self.idle_degraded))
                .or_else(|| first(&self.eligible)),
        }
        .or_else(|| first(&self.held))?;
        self.key_at(index)
    }

    /// Records whether `worker` has a free run slot and holds waiting
    /// requests; O(log64 n).
    pub(crate) fn set_free_holding(&mut self, worker: WorkerKey, was: bool, now: bool) {
        let index = worker.index();
        if now && !was {
            let slot = index as usize;
            if self.keys.len() <= slot {
                self.keys.resize(slot + 1, None);
            }
            if let Some(key) = self.keys.get_mut(slot) {
                *key = Some(worker);
            }
        }
        update(&mut self.free_holding, index, was, now);
    }

    /// The first worker recorded by [`set_free_holding`](Self::set_free_holding).
    pub(crate) fn first_free_holding(&self) -> Option<WorkerKey> {
        self.free_holding_from(0)
    }

    /// The first worker recorded by
    /// [`set_free_holding`](Self::set_free_holding) at or after slot
    /// index `from`; O(log64 n).
    pub(crate) fn free_holding_from(&self, from: u32) -> Option<WorkerKey> {
        let index = self.free_holding.next_from(from)?;
        self.key_at(index)
    }

    /// The first idle worker at or after slot index `from`, among the
    /// Healthy ones (`healthy`) or the Degraded ones; O(log64 n).
    pub(crate) fn idle_from(&self, healthy: bool, from: u32) -> Option<WorkerKey> {
        let set = if healthy {
            &self.idle_healthy
        } else {
            &self.idle_degraded
        };
        let index = set.next_from(from)?;
        self.key_at(index)
    }

    /// Whether `worker` is recorded as free and holding requests (for
    /// invariant checks), and how many are.
    pub(crate) fn free_holding(&self, worker: WorkerKey) -> (bool, usize) {
        let index = worker.index();
        let held = self.key_at(index) == Some(worker) && self.free_holding.contains(index);
        (held, self.free_holding.len())
    }

    /// Records that `worker` took a request, so the next pick moves on.
    pub(crate) fn picked(&mut self, worker: WorkerKey) {
        self.cursor = worker.index().wrapping_add(1);
    }

    /// Eligible workers, held ones last.
    pub(crate) fn iter_eligible(&self) -> impl Iterator<Item = WorkerKey> + '_ {
        self.eligible
            .iter()
            .chain(self.held.iter())
            .filter_map(|index| self.key_at(index))
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
mod tests;
