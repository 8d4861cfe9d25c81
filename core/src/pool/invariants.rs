//! `Pool::check_invariants`: the rules the pool's bookkeeping must keep after
//! every input, checked by tests and the simulator.

use std::collections::BTreeSet;

use thiserror::Error;

use super::{Lifecycle, Pool, ProbeState, RequestState};
use crate::keys::{RequestKey, WorkerKey};
use crate::routing::Membership;

/// A broken internal rule of [`Pool`], described for a bug report.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("pool invariant broken: {0}")]
pub struct InvariantViolation(pub String);

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(InvariantViolation(format!($($fmt)+)));
        }
    };
}

impl<P: Clone> Pool<P> {
    /// Checks every internal rule; O(requests + workers + timers).
    ///
    /// The rules: every pending request is held by exactly one live worker,
    /// queued there or running there, or (moving off it, once it was
    /// removed) counted as moving by it; a request a circuit breaker placed
    /// is pinned, and only such a request moves; every unpinned queued request is in
    /// the backlog once, and nothing else is; queue counters match the
    /// queues; no
    /// worker runs more than its concurrency or holds more than its capacity;
    /// no worker has a free run slot while requests wait in its own queue,
    /// nor a schedulable one while requests wait in the backlog; the
    /// router's eligible set is exactly the schedulable workers with room;
    /// every deadline has a timer; every probing worker has exactly one probe
    /// timer; the counters add up (accepted = answered + pending); a stopped
    /// pool holds nothing.
    ///
    /// # Errors
    /// Returns the first broken rule found.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let max_running = self.config.max_concurrency_per_worker as usize;
        let mut held: BTreeSet<RequestKey> = BTreeSet::new();
        let mut schedulable = 0usize;
        let threshold = self.config.failure_threshold();
        let armed: BTreeSet<(crate::time::Time, crate::timers::Timer)> =
            self.timers.entries().collect();
        // A timer due at `Time::MAX` ("never") is deliberately not armed.
        let timer_armed = |at, timer| at == crate::time::Time::MAX || armed.contains(&(at, timer));
        let mut in_backlog = BTreeSet::new();
        let mut moving: std::collections::BTreeMap<WorkerKey, usize> = Default::default();
        for (raw, entry) in self.requests.iter() {
            let key = RequestKey(raw);
            ensure!(!entry.vetted || entry.pinned, "vetted {key} is not pinned");
            if entry.state == RequestState::Moving {
                ensure!(entry.vetted, "{key} moves but was not vetted");
                let removing = self.workers.get(entry.worker.0).is_some_and(|w| w.removing);
                ensure!(
                    removing,
                    "{key} moves off {} which is not being removed",
                    entry.worker
                );
                *moving.entry(entry.worker).or_default() += 1;
                ensure!(held.insert(key), "{key} held twice");
            }
        }
        for key in &self.backlog {
            if let Some(entry) = self.requests.get(key.0) {
                if entry.state == RequestState::Queued {
                    ensure!(!entry.pinned, "pinned {key} waits in the backlog");
                    ensure!(in_backlog.insert(*key), "{key} twice in the backlog");
                }
            }
        }
        ensure!(
            in_backlog.len() == self.backlog_live,
            "backlog counts {} live requests but holds {}",
            self.backlog_live,
            in_backlog.len()
        );
        for (raw, slot) in self.workers.iter() {
            let worker = WorkerKey(raw);
            let mut live_queued = 0usize;
            let mut seen = BTreeSet::new();
            for key in &slot.queue {
                if self.is_queued_on(*key, worker) {
                    ensure!(seen.insert(*key), "{key} queued twice on {worker}");
                    ensure!(held.insert(*key), "{key} held by two workers");
                    let pinned = self.requests.get(key.0).is_some_and(|entry| entry.pinned);
                    ensure!(
                        pinned || in_backlog.contains(key),
                        "unpinned {key} queued on {worker} is missing from the backlog"
                    );
                    live_queued += 1;
                }
            }
            ensure!(
                live_queued == slot.queued,
                "{worker} counts {} queued but holds {live_queued}",
                slot.queued
            );
            let moving_off = moving.get(&worker).copied().unwrap_or(0);
            ensure!(
                moving_off == slot.moving,
                "{worker} counts {} moving but {moving_off} requests move off it",
                slot.moving
            );
            ensure!(
                slot.running.len() <= max_running,
                "{worker} runs {} > {max_running}",
                slot.running.len()
            );
            ensure!(
                slot.running.len() + slot.queued <= self.capacity,
                "{worker} holds {} > capacity {}",
                slot.running.len() + slot.queued,
                self.capacity
            );
            ensure!(
                slot.queued == 0 || slot.running.len() == max_running,
                "{worker} has a free run slot while {} requests wait in its queue",
                slot.queued
            );
            for key in slot.running.iter() {
                let running_here = matches!(
                    self.requests.get(key.0),
                    Some(entry) if entry.worker == worker && matches!(entry.state, RequestState::Running { .. })
                );
                ensure!(
                    running_here,
                    "{worker} lists {key} as running but it is not"
                );
                ensure!(held.insert(key), "{key} held twice");
            }
            ensure!(
                slot.status == slot.health.status(threshold),
                "{worker} caches a stale status"
            );
            let expect_schedulable = !slot.removing
                && self.lifecycle != Lifecycle::Stopped
                && slot.status.is_schedulable();
            ensure!(
                slot.schedulable == expect_schedulable,
                "{worker} schedulable flag stale"
            );
            if slot.schedulable {
                schedulable += 1;
                ensure!(
                    self.backlog_live == 0 || slot.running.len() == max_running,
                    "schedulable {worker} has a free run slot while {} requests wait in the backlog",
                    self.backlog_live
                );
            }
            let eligible = expect_schedulable && slot.running.len() + slot.queued < self.capacity;
            let idle = eligible && slot.running.len() < max_running;
            let expect = Membership {
                eligible,
                idle,
                preferred: idle && slot.status == crate::protocol::WorkerHealthStatus::Healthy,
            };
            ensure!(
                slot.membership == expect,
                "{worker} caches {:?}, expected {expect:?}",
                slot.membership
            );
            ensure!(
                self.router.membership(worker) == expect,
                "router holds {worker} as {:?}, expected {expect:?}",
                self.router.membership(worker)
            );
            let probing = self.lifecycle == Lifecycle::Running && !slot.removing;
            match slot.probe {
                ProbeState::Idle => ensure!(!probing, "{worker} is not being probed"),
                ProbeState::Due(at) => {
                    ensure!(probing, "{worker} has a probe due while not probing");
                    ensure!(
                        timer_armed(at, crate::timers::Timer::ProbeDue(worker)),
                        "{worker} probe due at {at} has no timer"
                    );
                }
                ProbeState::Outstanding { deadline, .. } => {
                    ensure!(
                        probing,
                        "{worker} has a probe outstanding while not probing"
                    );
                    ensure!(
                        timer_armed(deadline, crate::timers::Timer::ProbeTimeout(worker)),
                        "{worker} probe deadline {deadline} has no timer"
                    );
                }
            }
            ensure!(
                self.ids.get(&slot.id) == Some(&worker),
                "{worker} is not found by its id {:?}",
                slot.id
            );
        }
        ensure!(
            self.ids.len() == self.workers.len(),
            "{} ids for {} workers",
            self.ids.len(),
            self.workers.len()
        );
        ensure!(
            schedulable == self.schedulable,
            "schedulable count {} but {schedulable} workers are",
            self.schedulable
        );
        ensure!(
            self.router
                .iter_eligible()
                .all(|w| self.workers.get(w.0).is_some()),
            "router holds a missing worker"
        );
        ensure!(
            self.router
                .iter_idle()
                .all(|w| self.router.membership(w).eligible),
            "router holds an idle worker that is not eligible"
        );
        ensure!(
            held.len() == self.requests.len(),
            "{} requests pending but {} held by workers",
            self.requests.len(),
            held.len()
        );
        for (raw, entry) in self.requests.iter() {
            let key = RequestKey(raw);
            ensure!(
                entry.accepted_at <= self.now,
                "{key} accepted in the future"
            );
            if let Some(at) = entry.deadline {
                ensure!(at >= entry.accepted_at, "{key} deadline before acceptance");
                ensure!(
                    timer_armed(at, crate::timers::Timer::Request(key)),
                    "{key} deadline {at} has no timer"
                );
            }
            if let RequestState::Running { started_at } = entry.state {
                ensure!(
                    started_at >= entry.accepted_at,
                    "{key} started before acceptance"
                );
            }
        }
        let counters = &self.counters;
        ensure!(
            counters.accepted == counters.answered() + self.requests.len() as u64,
            "accepted {} != answered {} + pending {}",
            counters.accepted,
            counters.answered(),
            self.requests.len()
        );
        ensure!(
            counters.submitted == counters.accepted + counters.refused(),
            "submitted {} != accepted {} + refused {}",
            counters.submitted,
            counters.accepted,
            counters.refused()
        );
        match self.lifecycle {
            Lifecycle::Stopped => {
                ensure!(self.requests.len() == 0, "stopped pool holds requests");
                ensure!(self.router.eligible_len() == 0, "stopped pool routes");
            }
            Lifecycle::Draining { deadline: Some(at) } => {
                ensure!(
                    timer_armed(at, crate::timers::Timer::Drain),
                    "drain deadline has no timer"
                );
            }
            _ => {}
        }
        Ok(())
    }
}
