//! The per-worker rules of `Pool::check_invariants`: each worker's queue,
//! load, running and hedged requests, cached status, membership of the
//! router's sets, ejection and probe.

use std::collections::BTreeSet;

use super::{Armed, Checked, InvariantViolation, Tally};
use crate::config::RoutingPolicy;
use crate::keys::{RequestKey, WorkerKey};
use crate::pool::hedging::{is_hedge, run_slot, HEDGE_BIT};
use crate::pool::{Lifecycle, Pool, ProbeState, RequestState, Sibling, Worker};
use crate::protocol::WorkerHealthStatus;
use crate::routing::Membership;
use crate::timers::Timer;

impl<P: Clone> Pool<P> {
    /// A request a circuit breaker placed is pinned; only such a request
    /// moves, and only off a worker being removed (which counts it).
    pub(super) fn check_moving_requests(&self, tally: &mut Tally) -> Checked {
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
                *tally.moving.entry(entry.worker).or_default() += 1;
                ensure!(tally.held.insert(key), "{key} held twice");
            }
        }
        Ok(())
    }

    /// The backlog holds each unpinned queued request once, and counts its
    /// live entries.
    pub(super) fn check_backlog(&self, tally: &mut Tally) -> Checked {
        for place in &self.backlog {
            if place.is_live(&self.requests, None) {
                let key = place.key;
                let pinned = self.requests.get(key.0).is_some_and(|entry| entry.pinned);
                ensure!(!pinned, "pinned {key} waits in the backlog");
                ensure!(tally.in_backlog.insert(key), "{key} twice in the backlog");
            }
        }
        ensure!(
            tally.in_backlog.len() == self.backlog_live,
            "backlog counts {} live requests but holds {}",
            self.backlog_live,
            tally.in_backlog.len()
        );
        Ok(())
    }

    /// A worker's queue holds each of its queued requests once, no other
    /// worker holds them, the unpinned ones are in the backlog, and its
    /// count matches.
    pub(super) fn check_queue(
        &self,
        worker: WorkerKey,
        slot: &Worker,
        tally: &mut Tally,
    ) -> Checked {
        let mut live_queued = 0usize;
        let mut seen = BTreeSet::new();
        for place in &slot.queue {
            let key = &place.key;
            if place.is_live(&self.requests, Some(worker)) {
                ensure!(seen.insert(*key), "{key} queued twice on {worker}");
                ensure!(tally.held.insert(*key), "{key} held by two workers");
                let pinned = self.requests.get(key.0).is_some_and(|entry| entry.pinned);
                ensure!(
                    pinned || tally.in_backlog.contains(key),
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
        Ok(())
    }

    /// A worker counts exactly the requests moving off it.
    pub(super) fn check_moving_count(
        &self,
        worker: WorkerKey,
        slot: &Worker,
        tally: &Tally,
    ) -> Checked {
        let moving_off = tally.moving.get(&worker).copied().unwrap_or(0);
        ensure!(
            moving_off == slot.moving,
            "{worker} counts {} moving but {moving_off} requests move off it",
            slot.moving
        );
        Ok(())
    }

    /// No worker runs more than its concurrency, holds more than its
    /// capacity, or has a free run slot while requests wait in its queue.
    pub(super) fn check_load(&self, worker: WorkerKey, slot: &Worker) -> Checked {
        let max_running = slot.max_running;
        ensure!(
            max_running >= 1
                && slot.capacity
                    == self
                        .config
                        .options
                        .queue_capacity
                        .saturating_add(max_running),
            "{worker} has run limit {max_running} and capacity {}",
            slot.capacity
        );
        ensure!(
            slot.running.len() <= max_running,
            "{worker} runs {} > {max_running}",
            slot.running.len()
        );
        ensure!(
            slot.running.len() + slot.queued <= slot.capacity,
            "{worker} holds {} > capacity {}",
            slot.running.len() + slot.queued,
            slot.capacity
        );
        ensure!(
            slot.queued == 0
                || slot.running.len() >= slot.run_slots(max_running)
                || self.deferral.is_some(),
            "{worker} has a free run slot while {} requests wait in its queue",
            slot.queued
        );
        Ok(())
    }

    /// Every request a worker lists as running runs there, and no other
    /// worker holds it.
    pub(super) fn check_running(
        &self,
        worker: WorkerKey,
        slot: &Worker,
        tally: &mut Tally,
    ) -> Checked {
        for key in slot.running.iter() {
            if is_hedge(key) {
                self.check_hedge_run(key, worker, tally)?;
                continue;
            }
            ensure!(
                self.requests.get(key.0).is_none_or(|entry| !matches!(
                    entry.sibling,
                    Some(Sibling { alone: true, .. })
                )),
                "{worker} lists {key}, whose hedge runs alone"
            );
            let running_here = matches!(
                self.requests.get(key.0),
                Some(entry) if entry.worker == worker && matches!(entry.state, RequestState::Running { .. })
            );
            ensure!(
                running_here,
                "{worker} lists {key} as running but it is not"
            );
            ensure!(tally.held.insert(key), "{key} held twice");
        }
        Ok(())
    }

    /// A hedge a worker lists runs there, linked both ways with its
    /// running request: racing the request's own attempt elsewhere, or
    /// alone, with the request's worker and start its own.
    pub(super) fn check_hedge_run(
        &self,
        key: RequestKey,
        worker: WorkerKey,
        tally: &mut Tally,
    ) -> Checked {
        let run = self.hedge_runs.get(run_slot(key));
        ensure!(
            run.is_some_and(|run| run.worker == worker),
            "{worker} lists hedge {key}, which does not run there"
        );
        let Some(run) = run else {
            return Ok(());
        };
        let entry = self.requests.get(run.request.0);
        let linked = entry.and_then(|entry| entry.sibling);
        ensure!(
            linked.is_some_and(|sibling| sibling.key == key),
            "hedge {key} of {} is not its request's",
            run.request
        );
        let (Some(entry), Some(sibling)) = (entry, linked) else {
            return Ok(());
        };
        if sibling.alone {
            ensure!(
                entry.worker == worker
                    && entry.state
                        == (RequestState::Running {
                            started_at: run.started_at
                        }),
                "{} runs alone as hedge {key} but its books disagree",
                run.request
            );
            ensure!(tally.held.insert(run.request), "{} held twice", run.request);
        } else {
            ensure!(
                entry.worker != worker && matches!(entry.state, RequestState::Running { .. }),
                "hedge {key} races {} on its own worker or while it waits",
                run.request
            );
        }
        Ok(())
    }

    /// Every hedge runs, and every request due for a hedge is in the due
    /// set at its instant, running with no hedge yet; the hedge timer is
    /// armed at the earliest.
    pub(super) fn check_hedges(&self, armed: &Armed) -> Checked {
        for (raw, run) in self.hedge_runs.iter() {
            let key = RequestKey(crate::slab::SlabKey {
                index: raw.index | HEDGE_BIT,
                generation: raw.generation,
            });
            ensure!(
                self.workers
                    .get(run.worker.0)
                    .is_some_and(|slot| slot.running.iter().any(|listed| listed == key)),
                "hedge {key} of {} is on no worker's run list",
                run.request
            );
        }
        let mut due = 0;
        for (raw, entry) in self.requests.iter() {
            let key = RequestKey(raw);
            if let Some(at) = entry.hedge_at {
                due += 1;
                ensure!(
                    self.hedge_due.contains(&(at, key))
                        && entry.sibling.is_none()
                        && matches!(entry.state, RequestState::Running { .. }),
                    "{key} due for a hedge at {at} but not so booked"
                );
            }
        }
        ensure!(
            due == self.hedge_due.len(),
            "{} requests due for a hedge, {due} expected",
            self.hedge_due.len()
        );
        if let Some(&(at, _)) = self.hedge_due.first() {
            ensure!(
                armed.has(at, Timer::Hedge),
                "the hedge timer is not armed at {at}"
            );
        }
        Ok(())
    }

    /// A worker's cached status and schedulable flag match its health,
    /// removal and the pool's lifecycle.
    pub(super) fn check_cached_status(&self, worker: WorkerKey, slot: &Worker) -> Checked {
        ensure!(
            slot.status == slot.health.status(),
            "{worker} caches a stale status"
        );
        ensure!(
            slot.schedulable == self.expect_schedulable(slot),
            "{worker} schedulable flag stale"
        );
        Ok(())
    }

    /// A schedulable worker has no free run slot while requests wait in
    /// the backlog.
    pub(super) fn check_backlog_is_served(&self, worker: WorkerKey, slot: &Worker) -> Checked {
        let max_running = slot.max_running;
        ensure!(
            self.backlog_live == 0
                || !slot.takes_backlog()
                || slot.running.len() >= slot.run_slots(max_running)
                || self.deferral.is_some(),
            "schedulable {worker} has a free run slot while {} requests wait in the backlog",
            self.backlog_live
        );
        Ok(())
    }

    /// A worker's place in the finish order is the router's, and it has
    /// one only when schedulable with no free run slot; it is recorded as
    /// free and holding requests exactly when it is.
    pub(super) fn check_finish_order(
        &self,
        worker: WorkerKey,
        slot: &Worker,
        tally: &mut Tally,
    ) -> Checked {
        let max_running = slot.max_running;
        let free_holding = slot.running.len() < max_running && slot.queued > 0;
        let (held, _) = self.router.free_holding(worker);
        ensure!(
            slot.free_holding == free_holding && held == free_holding,
            "{worker} is free holding {} requests: cached {}, router {held}",
            slot.queued,
            slot.free_holding
        );
        tally.free_holding += usize::from(free_holding);
        let rate = if self.config.routing == RoutingPolicy::PeakEwma && slot.takes_backlog() {
            slot.latency.rate()
        } else {
            0.0
        };
        ensure!(
            self.router.rate(worker) == rate,
            "the router counts {worker}'s throughput as {}, expected {rate}",
            self.router.rate(worker)
        );
        tally.rates += rate;
        if slot.finish_key.is_some() {
            tally.finishing += 1;
            ensure!(
                slot.schedulable && slot.running.len() >= max_running,
                "{worker} is in the finish order but not busy and schedulable"
            );
        }
        ensure!(
            self.router.finish_holds(worker, slot.finish_key),
            "the finish order lacks {worker}"
        );
        Ok(())
    }

    /// A worker's cached membership, and the router's, are exactly what its
    /// status and load make them: eligible when schedulable with room, idle
    /// when also a run slot is free and it is not a last resort (held at
    /// the ejection cap, or saturated: routing takes it only when no other
    /// worker is eligible), preferred when also Healthy.
    pub(super) fn check_membership(&self, worker: WorkerKey, slot: &Worker) -> Checked {
        let max_running = slot.max_running;
        let eligible = self.expect_schedulable(slot)
            && slot.has_room(slot.capacity, self.config.options.queue_capacity);
        let held = eligible && (slot.health.is_held() || slot.saturated.is_some());
        let idle = eligible && !held && slot.running.len() < slot.run_slots(max_running);
        let expect = Membership {
            eligible,
            idle,
            preferred: idle && slot.status == WorkerHealthStatus::Healthy,
            held,
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
        Ok(())
    }

    /// A saturated worker's expiry has its timer while the pool has not
    /// stopped.
    pub(super) fn check_saturation(
        &self,
        worker: WorkerKey,
        slot: &Worker,
        armed: &Armed,
    ) -> Checked {
        if let Some(until) = slot.saturated {
            ensure!(
                self.lifecycle == Lifecycle::Stopped || armed.has(until, Timer::Saturation(worker)),
                "{worker}'s saturation until {until} has no timer"
            );
        }
        Ok(())
    }

    /// A worker's cached ejected flag matches its recovery machine, and an
    /// ejected worker's ejection has its timer while the pool has not
    /// stopped.
    pub(super) fn check_ejection(
        &self,
        worker: WorkerKey,
        slot: &Worker,
        armed: &Armed,
    ) -> Checked {
        let until = slot.health.ejected_until();
        ensure!(
            slot.ejected == until.is_some(),
            "{worker} ejected flag stale"
        );
        if let Some(at) = until {
            ensure!(
                self.lifecycle == Lifecycle::Stopped || armed.has(at, Timer::Ejection(worker)),
                "{worker} ejected until {at} has no timer"
            );
        }
        Ok(())
    }

    /// A worker is probed exactly while the pool runs and it is not being
    /// removed, and its due probe or outstanding probe has its timer.
    pub(super) fn check_probe(&self, worker: WorkerKey, slot: &Worker, armed: &Armed) -> Checked {
        let probing = self.lifecycle == Lifecycle::Running && !slot.removing;
        match slot.probe {
            ProbeState::Idle => ensure!(!probing, "{worker} is not being probed"),
            ProbeState::Due(at) => {
                ensure!(probing, "{worker} has a probe due while not probing");
                ensure!(
                    armed.has(at, Timer::ProbeDue(worker)),
                    "{worker} probe due at {at} has no timer"
                );
            }
            ProbeState::Outstanding { deadline, .. } => {
                ensure!(
                    probing,
                    "{worker} has a probe outstanding while not probing"
                );
                ensure!(
                    armed.has(deadline, Timer::ProbeTimeout(worker)),
                    "{worker} probe deadline {deadline} has no timer"
                );
            }
        }
        Ok(())
    }

    /// A worker is found by its identifier.
    pub(super) fn check_worker_id(&self, worker: WorkerKey, slot: &Worker) -> Checked {
        ensure!(
            self.ids.get(&slot.id) == Some(&worker),
            "{worker} is not found by its id {:?}",
            slot.id
        );
        Ok(())
    }

    /// Whether a worker should be schedulable: not being removed, the pool
    /// not stopped, and its status schedulable.
    pub(super) fn expect_schedulable(&self, slot: &Worker) -> bool {
        !slot.removing && self.lifecycle != Lifecycle::Stopped && slot.status.is_schedulable()
    }
}
