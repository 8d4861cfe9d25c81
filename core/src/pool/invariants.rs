//! `Pool::check_invariants`: the rules the pool's bookkeeping must keep after
//! every input, one check per rule, called in order by tests, the simulator
//! and the fuzzers (part of the driver's interface, see `driver_api.rs`).

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use super::timeouts::{queue_wait_deadline, run_deadline};
use super::{Lifecycle, Pool, ProbeState, RequestState, Worker};
use crate::keys::{RequestKey, WorkerKey};
use crate::protocol::WorkerHealthStatus;
use crate::routing::Membership;
use crate::time::Time;
use crate::timers::Timer;

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

/// The timers armed in the heap, to check that every deadline has one.
struct Armed(BTreeSet<(Time, Timer)>);

impl Armed {
    /// Whether `timer` is armed at `at`. A timer due at `Time::MAX`
    /// ("never") is deliberately not armed, and counts as armed.
    fn has(&self, at: Time, timer: Timer) -> bool {
        at == Time::MAX || self.0.contains(&(at, timer))
    }
}

/// What the checks gather as they go, for the checks that follow.
#[derive(Default)]
struct Tally {
    /// Requests some worker holds (queued, running or moving off it).
    held: BTreeSet<RequestKey>,
    /// Live entries of the backlog.
    in_backlog: BTreeSet<RequestKey>,
    /// How many requests move off each removed worker.
    moving: BTreeMap<WorkerKey, usize>,
    /// Workers found schedulable.
    schedulable: usize,
    /// Workers found ejected.
    ejected: usize,
    /// Workers with a place in the router's finish order.
    finishing: usize,
    /// Workers free and holding waiting requests.
    free_holding: usize,
}

type Checked = Result<(), InvariantViolation>;

/// Part of the driver's interface (listed with the rest of it in
/// `driver_api.rs`): the check itself, beside the rules it checks.
impl<P: Clone> Pool<P> {
    /// Checks every internal rule; O(requests + workers + timers).
    ///
    /// The rules: every pending request is held by exactly one live worker,
    /// queued there or running there, or (moving off it, once it was
    /// removed) counted as moving by it; a request a circuit breaker placed
    /// is pinned, and only such a request moves; every unpinned queued
    /// request is in the backlog once, and nothing else is; queue counters
    /// match the queues; no worker runs more than its concurrency or holds
    /// more than its capacity; no worker has a free run slot while requests
    /// wait in its own queue, nor a schedulable one while requests wait in
    /// the backlog, unless it defers them to a faster worker (`PeakEwma`,
    /// with its deferral timer armed); the router's eligible set is exactly the schedulable
    /// workers with room; every deadline has a timer; every probing worker
    /// has exactly one probe timer; a request runs at most the retry
    /// policy's attempts, and only a running one has run; the counters add up (accepted = answered + pending);
    /// a stopped pool holds nothing.
    ///
    /// # Errors
    /// Returns the first broken rule found.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let armed = Armed(self.timers.entries().collect());
        let mut tally = Tally::default();
        self.check_moving_requests(&mut tally)?;
        self.check_backlog(&mut tally)?;
        for (raw, slot) in self.workers.iter() {
            let worker = WorkerKey(raw);
            self.check_queue(worker, slot, &mut tally)?;
            self.check_moving_count(worker, slot, &tally)?;
            self.check_load(worker, slot)?;
            self.check_running(worker, slot, &mut tally)?;
            self.check_cached_status(worker, slot)?;
            if slot.schedulable {
                tally.schedulable += 1;
                self.check_backlog_is_served(worker, slot)?;
            }
            self.check_membership(worker, slot)?;
            self.check_probe(worker, slot, &armed)?;
            self.check_ejection(worker, slot, &armed)?;
            if slot.ejected {
                tally.ejected += 1;
            }
            self.check_finish_order(worker, slot, &mut tally)?;
            self.check_worker_id(worker, slot)?;
        }
        ensure!(
            tally.ejected == self.ejected,
            "pool counts {} ejected workers, found {}",
            self.ejected,
            tally.ejected
        );
        self.check_worker_counts(&tally)?;
        self.check_router()?;
        if let Some(until) = self.deferral {
            ensure!(
                self.defers_possible(),
                "a deferral without latency-aware late binding"
            );
            ensure!(
                armed.has(until, Timer::Deferral),
                "a deferral until {until} without a timer"
            );
        }
        let free_holding = self
            .router
            .first_free_holding()
            .map_or(0, |worker| self.router.free_holding(worker).1);
        ensure!(
            free_holding == tally.free_holding,
            "the router holds {free_holding} free workers with waiting requests, {} expected",
            tally.free_holding
        );
        let finishing = self.router.finish_len();
        ensure!(
            finishing == tally.finishing,
            "the finish order holds {finishing} workers, {} expected",
            tally.finishing
        );
        self.check_every_request_is_held(&tally)?;
        self.check_request_times(&armed)?;
        self.check_attempts()?;
        self.check_counters()?;
        self.check_lifecycle(&armed)
    }

    /// A request a circuit breaker placed is pinned; only such a request
    /// moves, and only off a worker being removed (which counts it).
    fn check_moving_requests(&self, tally: &mut Tally) -> Checked {
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
    fn check_backlog(&self, tally: &mut Tally) -> Checked {
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
    fn check_queue(&self, worker: WorkerKey, slot: &Worker, tally: &mut Tally) -> Checked {
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
    fn check_moving_count(&self, worker: WorkerKey, slot: &Worker, tally: &Tally) -> Checked {
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
    fn check_load(&self, worker: WorkerKey, slot: &Worker) -> Checked {
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
    fn check_running(&self, worker: WorkerKey, slot: &Worker, tally: &mut Tally) -> Checked {
        for key in slot.running.iter() {
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

    /// A worker's cached status and schedulable flag match its health,
    /// removal and the pool's lifecycle.
    fn check_cached_status(&self, worker: WorkerKey, slot: &Worker) -> Checked {
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
    fn check_backlog_is_served(&self, worker: WorkerKey, slot: &Worker) -> Checked {
        let max_running = slot.max_running;
        ensure!(
            self.backlog_live == 0
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
    fn check_finish_order(&self, worker: WorkerKey, slot: &Worker, tally: &mut Tally) -> Checked {
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
    /// when also a run slot is free, preferred when also Healthy.
    fn check_membership(&self, worker: WorkerKey, slot: &Worker) -> Checked {
        let max_running = slot.max_running;
        let eligible = self.expect_schedulable(slot)
            && slot.has_room(slot.capacity, self.config.options.queue_capacity);
        let idle = eligible && slot.running.len() < slot.run_slots(max_running);
        let expect = Membership {
            eligible,
            idle,
            preferred: idle && slot.status == WorkerHealthStatus::Healthy,
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

    /// A worker's cached ejected flag matches its recovery machine, and an
    /// ejected worker's ejection has its timer while the pool has not
    /// stopped.
    fn check_ejection(&self, worker: WorkerKey, slot: &Worker, armed: &Armed) -> Checked {
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
    fn check_probe(&self, worker: WorkerKey, slot: &Worker, armed: &Armed) -> Checked {
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
    fn check_worker_id(&self, worker: WorkerKey, slot: &Worker) -> Checked {
        ensure!(
            self.ids.get(&slot.id) == Some(&worker),
            "{worker} is not found by its id {:?}",
            slot.id
        );
        Ok(())
    }

    /// One identifier per worker, and the schedulable count matches.
    fn check_worker_counts(&self, tally: &Tally) -> Checked {
        ensure!(
            self.ids.len() == self.workers.len(),
            "{} ids for {} workers",
            self.ids.len(),
            self.workers.len()
        );
        ensure!(
            tally.schedulable == self.schedulable,
            "schedulable count {} but {} workers are",
            self.schedulable,
            tally.schedulable
        );
        Ok(())
    }

    /// The router holds only live workers, and only eligible ones as idle.
    fn check_router(&self) -> Checked {
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
        Ok(())
    }

    /// Every pending request is held by a worker.
    fn check_every_request_is_held(&self, tally: &Tally) -> Checked {
        ensure!(
            tally.held.len() == self.requests.len(),
            "{} requests pending but {} held by workers",
            self.requests.len(),
            tally.held.len()
        );
        Ok(())
    }

    /// No request was accepted in the future, started before it was
    /// accepted, or has a deadline before its acceptance or without a
    /// timer, or a phase limit of its current phase without one.
    fn check_request_times(&self, armed: &Armed) -> Checked {
        for (raw, entry) in self.requests.iter() {
            let key = RequestKey(raw);
            ensure!(
                entry.accepted_at <= self.now,
                "{key} accepted in the future"
            );
            if let Some(at) = entry.deadline {
                ensure!(at >= entry.accepted_at, "{key} deadline before acceptance");
                ensure!(
                    armed.has(at, Timer::Request(key)),
                    "{key} deadline {at} has no timer"
                );
            }
            if let RequestState::Running { started_at } = entry.state {
                ensure!(
                    started_at >= entry.accepted_at,
                    "{key} started before acceptance"
                );
            }
            if let Some(at) = queue_wait_deadline(entry) {
                ensure!(
                    armed.has(at, Timer::QueueWait(key)),
                    "{key} queue-wait limit {at} has no timer"
                );
            }
            if let Some(at) = run_deadline(entry) {
                ensure!(
                    armed.has(at, Timer::RunLimit(key)),
                    "{key} run limit {at} has no timer"
                );
            }
        }
        Ok(())
    }

    /// A running request has been started at least once and a waiting
    /// one never (a retry starts at once, it never waits); no request has
    /// been started more often than the retry policy allows (once without
    /// one).
    fn check_attempts(&self) -> Checked {
        let most = self
            .config
            .retries
            .map_or(1, |policy| policy.max_attempts.max(1));
        for (raw, entry) in self.requests.iter() {
            let key = RequestKey(raw);
            ensure!(
                entry.attempts <= most,
                "{key} started {} times, more than the {most} allowed",
                entry.attempts
            );
            let running = matches!(entry.state, RequestState::Running { .. });
            ensure!(
                (entry.attempts >= 1) == running,
                "{key} is {:?} after {} attempts",
                entry.state,
                entry.attempts
            );
        }
        Ok(())
    }

    /// The counters add up: accepted = answered + pending, submitted =
    /// accepted + refused.
    fn check_counters(&self) -> Checked {
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
        Ok(())
    }

    /// A stopped pool holds no request and routes none; a drain deadline
    /// has its timer.
    fn check_lifecycle(&self, armed: &Armed) -> Checked {
        match self.lifecycle {
            Lifecycle::Stopped => {
                ensure!(self.requests.len() == 0, "stopped pool holds requests");
                ensure!(self.router.eligible_len() == 0, "stopped pool routes");
            }
            Lifecycle::Draining { deadline: Some(at) } => {
                ensure!(armed.has(at, Timer::Drain), "drain deadline has no timer");
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether a worker should be schedulable: not being removed, the pool
    /// not stopped, and its status schedulable.
    fn expect_schedulable(&self, slot: &Worker) -> bool {
        !slot.removing && self.lifecycle != Lifecycle::Stopped && slot.status.is_schedulable()
    }
}
