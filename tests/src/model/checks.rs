//! The rules checked once an input is done: cheap ones after every input
//! (deadlines, late binding, counters, predicted health, the one-timer
//! driver), the O(n) ones ([`Harness::check`]) when due.

use std::cmp::Reverse;
use std::time::Duration;

use foreman_core::{HealthCause, RecoveryState, Time, WorkerHealthStatus, WorkerKey};

use super::books::{Lifecycle, ReqState};
use super::harness::Harness;
use super::Failure;

/// Whether a health change `from → to` is allowed for `cause`.
///
/// - `Success`: only an improvement (a success clears failures; a probe's
///   worse verdict may keep the status from improving, never worsen it).
/// - `Failure`, `Timeout`: only a worsening.
/// - `Probe`: any change, but never to a status better than the verdict
///   (checked separately, since the verdict is not part of the edge).
/// - `ProbeTimeout`, `Stopped`: only to `Unavailable`.
/// - `Restart`: only to `Healthy` (health is reset).
/// - `EjectionExpired`: only an improvement (the worker turns half-open).
pub fn allowed_edge(cause: HealthCause, from: WorkerHealthStatus, to: WorkerHealthStatus) -> bool {
    from != to
        && match cause {
            HealthCause::Success => to < from,
            HealthCause::Failure | HealthCause::Timeout => to > from,
            HealthCause::Probe => true,
            HealthCause::ProbeTimeout | HealthCause::Stopped => {
                to == WorkerHealthStatus::Unavailable
            }
            HealthCause::Restart => to == WorkerHealthStatus::Healthy,
            HealthCause::EjectionExpired => to < from,
            // `HealthCause` is `#[non_exhaustive]`: a cause the model has no
            // rule for allows no edge, so the check fails naming it.
            _ => false,
        }
}

impl Harness {
    /// Once an input is done, every worker whose predicted health changed
    /// has the status and failure count the rules predict.
    pub(super) fn check_health(&mut self) -> Result<(), Failure> {
        let stopped = self.lifecycle == Lifecycle::Stopped;
        if self.limits.outlier.is_some() {
            self.health_touched.clear();
            return if stopped {
                Ok(())
            } else {
                self.check_recovery()
            };
        }
        while let Some(worker) = self.health_touched.pop() {
            let Some(book) = self.workers.get(worker.as_u64()).copied() else {
                continue;
            };
            if stopped || book.stopped {
                continue;
            }
            let expected = book.health.status(self.limits.threshold);
            ensure!(
                book.status == expected,
                "{worker} is {:?} but the health rules predict {expected:?} from {:?}",
                book.status,
                book.health
            );
            let failures = self
                .pool
                .worker_health(worker)
                .map(|health| health.consecutive_failures);
            ensure!(
                failures == Some(book.health.failures),
                "{worker} has {failures:?} consecutive failures but the health rules predict {}",
                book.health.failures
            );
        }
        Ok(())
    }

    /// Under outlier detection, once an input is done: every ejected worker
    /// is Unavailable, its ejection ends after now and the core's next
    /// timer is not after that end (so it gets its trial by then); a
    /// half-open worker is not Healthy and runs no more than its trial
    /// permits beyond what it ran when it turned half-open; a held one
    /// (at the cap, panic mode `RouteToAll` only) is not Healthy.
    fn check_recovery(&mut self) -> Result<(), Failure> {
        let next = self.pool.poll_timeout().map(|(at, _)| at);
        for key in &self.worker_list {
            let Some(book) = self.workers.get(key.as_u64()) else {
                continue;
            };
            if book.stopped {
                continue;
            }
            match book.recovery {
                RecoveryState::Ejected { until, .. } => {
                    ensure!(
                        book.status == WorkerHealthStatus::Unavailable,
                        "ejected {key} is {:?}",
                        book.status
                    );
                    if until == Time::MAX {
                        // Ejected at the end of time: no timer can end it.
                        continue;
                    }
                    ensure!(
                        until > self.seen,
                        "{key} still ejected at {} after its ejection ended at {until}",
                        self.seen
                    );
                    ensure!(
                        next.is_some_and(|at| at <= until),
                        "{key} ejected until {until} but the core's next timer is {next:?}"
                    );
                }
                RecoveryState::HalfOpen { permits, .. } => {
                    ensure!(
                        book.status != WorkerHealthStatus::Healthy,
                        "half-open {key} is Healthy"
                    );
                    ensure!(
                        book.running <= (permits as usize).max(book.running_at_half_open),
                        "half-open {key} runs {} with {permits} permits",
                        book.running
                    );
                }
                RecoveryState::Held => {
                    ensure!(
                        tuning_route_to_all(self.limits.outlier),
                        "{key} held at the cap under panic mode FailFast"
                    );
                    ensure!(
                        book.status != WorkerHealthStatus::Healthy,
                        "held {key} is Healthy"
                    );
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Once an input is done, every worker whose load grew during it
    /// queues no more than the queue capacity (or the refusals it kept
    /// past it, see `WorkerBook::queue_limit`) and holds no more than its
    /// capacity. (While an input's outputs are drained either may pass:
    /// a request accepted onto a free worker is queued by its `Accepted`
    /// event, then started by its `Start` action, and the requests a
    /// removal moves onto a free worker are all queued by their
    /// `Requeued` events, drained before the `Start`s; a load only grows
    /// by those, so checking the ones that grew is checking them all.)
    pub(super) fn check_queues(&mut self) -> Result<(), Failure> {
        while let Some(worker) = self.queues_grown.pop() {
            if let Some(book) = self.workers.get(worker.as_u64()) {
                ensure!(
                    book.queued <= book.queue_limit,
                    "{worker} queues {} > {}",
                    book.queued,
                    book.queue_limit
                );
                ensure!(
                    book.running + book.queued <= book.capacity,
                    "{worker} holds {} + {} > capacity {}",
                    book.running,
                    book.queued,
                    book.capacity
                );
            }
        }
        Ok(())
    }

    /// A worker runs no more than its concurrency (its capacity is
    /// checked once the input is done: [`Harness::check_queues`]).
    pub(super) fn check_limits(&self, worker: WorkerKey) -> Result<(), Failure> {
        if let Some(book) = self.workers.get(worker.as_u64()) {
            ensure!(
                book.running <= book.max_running,
                "{worker} runs {} > its limit {}",
                book.running,
                book.max_running
            );
        }
        Ok(())
    }

    /// Moves the one-timer driver's timer as the adapters do
    /// (`Pool::move_timer`) and checks it would not fire late.
    pub(super) fn rearm_driver_timer(&mut self) -> Result<(), Failure> {
        if let Some(at) = self.pool.move_timer(self.driver_timer) {
            self.driver_timer = at;
        }
        let exact = self
            .pool
            .poll_timeout()
            .map_or(foreman_core::Time::MAX, |(at, _)| at);
        ensure!(
            exact >= self.driver_timer,
            "a driver timer moved by move_timer sits at {}, after the next deadline {exact}",
            self.driver_timer
        );
        Ok(())
    }

    /// The cheap checks, after every input.
    pub(super) fn check_step(&mut self) -> Result<(), Failure> {
        ensure!(
            self.stolen.is_empty(),
            "requests moved by late binding but never started: {:?}",
            self.stolen
        );
        // Late binding is work-conserving (defect 11), but for a bounded
        // deferral to a faster worker under `PeakEwma`.
        if self.limits.late_binding && self.unpinned_queued > 0 && self.free > 0 {
            ensure!(
                self.limits.deferral,
                "{} requests wait while {} schedulable workers have a free run slot",
                self.unpinned_queued,
                self.free
            );
            self.check_deferral_bound()?;
        }
        self.check_deadlines()?;
        self.check_lifecycle()?;
        self.check_counters()
    }

    /// While a free worker leaves requests to a faster one, the oldest has
    /// waited no longer than any worker's latency estimate can be: the
    /// longest run seen, or the unsampled latency (O(pending), only while
    /// a worker defers). A request refused before its start goes back to
    /// the front of the line, ahead of older ones, and a deferral bounds
    /// the wait of the line's head from the head's acceptance: the
    /// requests behind a refused one wait until it leaves, and, once it
    /// has, at most until a deferral set for it ends (by its acceptance
    /// plus the bound). So the wait counts from the oldest one's
    /// acceptance or from the last refusal of a request that joined the
    /// line, whichever is later.
    fn check_deferral_bound(&self) -> Result<(), Failure> {
        let oldest = self
            .live
            .iter()
            .filter_map(|key| self.requests.get(key.as_u64()))
            .filter(|book| book.state == ReqState::Queued && !book.pinned)
            .map(|book| book.waiting_since)
            .min();
        let bound = self.longest_any_run.max(self.limits.unsampled_latency);
        if let Some(oldest) = oldest {
            let waiting_since = self.last_refusal.map_or(oldest, |at| at.max(oldest));
            let waited = self.seen - waiting_since;
            ensure!(
                waited <= bound + Duration::from_nanos(1),
                "a request waiting since {waiting_since} waits {waited:?} while {} workers are free, \
                 past the deferral bound {bound:?}",
                self.free
            );
        }
        Ok(())
    }

    /// Deadlines never late: after settling, no pending request and no
    /// outstanding probe is past its deadline (stale heap entries are
    /// dropped on the way).
    fn check_deadlines(&mut self) -> Result<(), Failure> {
        let now = self.seen;
        while let Some(Reverse((at, request))) = self.deadlines.peek().copied() {
            let live = self
                .requests
                .get(request.as_u64())
                .is_some_and(|book| book.deadline == Some(at) || book.phase_limit() == Some(at));
            if !live {
                self.deadlines.pop();
                continue;
            }
            ensure!(
                at > now,
                "request #{} is still pending at {now}, past its deadline {at} (lost or late)",
                self.request_id(request).unwrap_or(0)
            );
            break;
        }
        while let Some(Reverse((at, worker, probe))) = self.probe_deadlines.peek().copied() {
            let live = self
                .workers
                .get(worker.as_u64())
                .is_some_and(|book| book.probe == Some((probe, at)));
            if !live {
                self.probe_deadlines.pop();
                continue;
            }
            ensure!(
                at > now,
                "probe of {worker} still outstanding at {now}, past its deadline {at}"
            );
            break;
        }
        Ok(())
    }

    /// A drain deadline never passes unnoticed, and a stopped pool holds
    /// nothing and wants no wake-up.
    fn check_lifecycle(&mut self) -> Result<(), Failure> {
        let now = self.seen;
        match self.lifecycle {
            // A drain deadline at `Time::MAX` is never.
            Lifecycle::Draining { deadline: Some(at) } if at != Time::MAX => {
                ensure!(
                    at > now,
                    "drain deadline {at} passed at {now} but the pool has not stopped"
                );
            }
            Lifecycle::Stopped => {
                ensure!(
                    self.live.is_empty(),
                    "shutdown completed with {} requests pending",
                    self.live.len()
                );
                ensure!(
                    self.pool.pending() == 0,
                    "stopped pool reports {} pending",
                    self.pool.pending()
                );
                let next = self.pool.poll_timeout();
                ensure!(
                    next.is_none(),
                    "stopped pool still wants a wake-up: {next:?}"
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// The core's pending count, counters and stopped flag agree with the
    /// books.
    fn check_counters(&self) -> Result<(), Failure> {
        ensure!(
            self.pool.pending() == self.live.len(),
            "pool has {} pending, books {}",
            self.pool.pending(),
            self.live.len()
        );
        let counters = *self.pool.counters();
        ensure!(
            counters.submitted == self.submitted
                && counters.accepted == self.accepted
                && counters.answered() == self.answered,
            "counters (submitted {}, accepted {}, answered {}) disagree with books ({}, {}, {})",
            counters.submitted,
            counters.accepted,
            counters.answered(),
            self.submitted,
            self.accepted,
            self.answered
        );
        ensure!(
            counters.refused_not_started == self.refused,
            "core counts {} refused before starting, books {}",
            counters.refused_not_started,
            self.refused
        );
        ensure!(
            self.pool.is_stopped() == (self.lifecycle == Lifecycle::Stopped),
            "pool stopped={} but books say {:?}",
            self.pool.is_stopped(),
            self.lifecycle
        );
        Ok(())
    }

    /// The O(n) checks: the core's own invariants, its stats against the
    /// books, and the books' running counts against a recount.
    pub(super) fn check_full(&mut self) -> Result<(), Failure> {
        if let Err(violation) = self.pool.check_invariants() {
            return Err(Failure(violation.to_string()));
        }
        self.check_stats()?;
        self.check_recount()
    }

    /// [`foreman_core::Pool::stats`], worker by worker, agrees with the
    /// books.
    fn check_stats(&self) -> Result<(), Failure> {
        let stats = self.pool.stats();
        let stopped = self.lifecycle == Lifecycle::Stopped;
        let mut count = 0;
        for w in &stats.workers {
            let Some(book) = self.workers.get(w.worker.as_u64()) else {
                return Err(Failure(format!(
                    "stats list {} which the books released",
                    w.worker
                )));
            };
            if !stopped {
                count += 1;
                ensure!(!book.stopped, "stats list stopped worker {}", w.worker);
            }
            let reported = if book.removing || stopped {
                WorkerHealthStatus::Unavailable
            } else {
                book.status
            };
            ensure!(
                w.queued == book.queued && w.running == book.running && w.status == reported && w.removing == book.removing,
                "stats of {} ({:?}, {} queued, {} running, removing {}) disagree with books {book:?}",
                w.worker,
                w.status,
                w.queued,
                w.running,
                w.removing
            );
            ensure!(
                stopped
                    || book.stopped
                    || self.limits.outlier.is_some()
                    || w.consecutive_failures == book.health.failures,
                "{} has {} consecutive failures but the health rules predict {}",
                w.worker,
                w.consecutive_failures,
                book.health.failures
            );
            ensure!(
                w.queued <= book.queue_limit,
                "{} queues {} > {}",
                w.worker,
                w.queued,
                book.queue_limit
            );
        }
        if !stopped {
            ensure!(
                count == self.worker_list.len(),
                "stats list {count} workers, books {}",
                self.worker_list.len()
            );
        }
        Ok(())
    }

    /// The counts the books keep up to date (schedulable workers, with
    /// room, with a free run slot; unpinned queued requests) match a
    /// recount.
    fn check_recount(&self) -> Result<(), Failure> {
        let mut schedulable = 0;
        let mut open = 0;
        let mut free = 0;
        for key in &self.worker_list {
            if let Some(book) = self.workers.get(key.as_u64()) {
                let (s, o, f) = self.worker_flags(book);
                schedulable += usize::from(s);
                open += usize::from(o);
                free += usize::from(f);
            }
        }
        ensure!(
            schedulable == self.schedulable && open == self.open && free == self.free,
            "harness counts drifted: schedulable {} vs {schedulable}, open {} vs {open}, free {} vs {free}",
            self.schedulable,
            self.open,
            self.free
        );
        let unpinned = self
            .live
            .iter()
            .filter_map(|key| self.requests.get(key.as_u64()))
            .filter(|book| book.state == ReqState::Queued && !book.pinned)
            .count();
        ensure!(
            unpinned == self.unpinned_queued,
            "harness counts {} unpinned queued requests, books hold {unpinned}",
            self.unpinned_queued
        );
        Ok(())
    }
}

/// Whether outlier detection holds workers at its cap (panic mode
/// `RouteToAll`).
fn tuning_route_to_all(tuning: Option<foreman_core::OutlierDetection>) -> bool {
    tuning.is_some_and(|tuning| tuning.panic_mode == foreman_core::PanicMode::RouteToAll)
}
