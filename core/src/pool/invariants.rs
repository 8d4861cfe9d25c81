//! `Pool::check_invariants`: the rules the pool's bookkeeping must keep after
//! every input, one check per rule, called in order by tests, the simulator
//! and the fuzzers (part of the driver's interface, see `driver_api.rs`).

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use super::timeouts::{queue_wait_deadline, run_deadline};
use super::{Lifecycle, Pool, RequestState};
use crate::keys::{RequestKey, WorkerKey};
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

mod workers;

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
    /// The throughput the router should count for the workers found.
    rates: f64,
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
    /// wait in its own queue, nor a schedulable one (not held at the
    /// ejection cap) while requests wait in the backlog, unless it defers them to a faster worker (`PeakEwma`,
    /// with its deferral timer armed); the router's eligible set is exactly the schedulable
    /// workers with room; every deadline has a timer; every probing worker
    /// has exactly one probe timer; a request runs at most the retry
    /// policy's attempts plus its hedges, and only a running one has run;
    /// every hedge runs on a worker that lists it, linked both ways with
    /// its running request (racing its own attempt on another worker, or
    /// alone, its request's books naming its worker and start); every
    /// request due for a hedge is in the due set, and the hedge timer is
    /// armed at the earliest; the counters add up (accepted + moved in = answered + pending + moved out);
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
            self.check_saturation(worker, slot, &armed)?;
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
        self.check_hedges(&armed)?;
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
        // Up to the rounding of the running sum's updates.
        let (sum, total) = (self.router.rate_sum(), self.router.rate_total());
        // Rates are runs per nanosecond: 1e-15 is one run in 11 days.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-15 + 1e-9 * a.abs().max(b.abs());
        ensure!(
            close(total, tally.rates) && close(sum, total),
            "the router's throughput sum is {sum} (slots {total}), {} expected",
            tally.rates
        );
        self.check_every_request_is_held(&tally)?;
        self.check_request_times(&armed)?;
        self.check_attempts()?;
        self.check_counters()?;
        self.check_lifecycle(&armed)
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

    /// A running request has been started at least once; a waiting one
    /// never, unless it is a retry its handler refused before starting
    /// (the refusal is not an attempt: it waits with its failed attempts
    /// counted), and then it has a start left; no request has been started
    /// more often than the retry policy allows (once without one).
    fn check_attempts(&self) -> Checked {
        let hedges = self.config.hedging.map_or(0, |policy| policy.max_hedges);
        let most = self
            .config
            .retries
            .map_or(1, |policy| policy.max_attempts.max(1))
            .saturating_add(hedges);
        for (raw, entry) in self.requests.iter() {
            let key = RequestKey(raw);
            ensure!(
                entry.attempts <= most,
                "{key} started {} times, more than the {most} allowed",
                entry.attempts
            );
            let running = matches!(entry.state, RequestState::Running { .. });
            ensure!(
                if running {
                    entry.attempts >= 1
                } else {
                    entry.attempts < most
                },
                "{key} is {:?} after {} attempts",
                entry.state,
                entry.attempts
            );
        }
        Ok(())
    }

    /// The counters add up: accepted + moved in = answered + pending +
    /// moved out, submitted = accepted + refused.
    fn check_counters(&self) -> Checked {
        let counters = &self.counters;
        ensure!(
            counters.accepted + counters.moved_in
                == counters.answered() + self.requests.len() as u64 + counters.moved_out,
            "accepted {} + moved in {} != answered {} + pending {} + moved out {}",
            counters.accepted,
            counters.moved_in,
            counters.answered(),
            self.requests.len(),
            counters.moved_out
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
}
