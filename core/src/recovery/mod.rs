//! Recovery: the per-worker state machine that turns request outcomes,
//! probe verdicts and ejection timers into a worker's status, and says
//! whether the worker may take a request now. The pool calls it through
//! one type (`Recovery`), so the machine is replaceable as a unit;
//! [`RecoveryPolicy`] picks it.
//!
//! # Evidence, under every policy
//! - A request that succeeds is a success; a handler error is a failure
//!   (under outlier detection only if its code is in
//!   [`OutlierDetection::counted`]); a request that runs out of time while
//!   running counts as a failure only if its worker had at least half of
//!   the request's budget (`crate::health::timeout_counts`). A cancelled
//!   request, a request refused before it started
//!   ([`crate::Pool::handle_refusal`]), a timeout while queued, a restart
//!   and a shutdown are no evidence.
//! - A probe is a vote: the worker's status is the worse of what the
//!   machine says and the last probe's verdict (a probe that times out
//!   votes Unavailable). A probe counts as a success only if no counted
//!   failure happened since it was sent.
//!
//! # The reference ([`RecoveryPolicy::Reference`], the default)
//! With `threshold` = `unavailable_after_failures` (0 acts as 1): a success
//! clears the failure count, a failure adds one; 0 is Healthy,
//! 1..threshold Degraded, threshold or more Unavailable (every handler
//! error counts). A Healthy probe gives a worker at the threshold one trial
//! (the count drops to `threshold - 1`) and never clears failures below it,
//! so a worker that fails every request gets one request per probe
//! interval. There is no cap and no timer.
//!
//! # Outlier detection ([`RecoveryPolicy::OutlierDetection`])
//! ```text
//!             consecutive failures ≥ N, or ≥ R % failed of the last W
//!             outcomes with at least V of them (and the cap allows)
//!   ┌────────┐ ─────────────────────────────────────────────▶ ┌─────────────┐
//!   │ Closed │                                                │ Ejected     │
//!   │Healthy/│ ◀──────┐                                       │ Unavailable │
//!   │Degraded│        │ S successful trials                   │ until t     │
//!   └────────┘        │ (requests or Healthy probes)          └─────────────┘
//!                ┌────┴───────┐   any counted failure, a probe    │     ▲
//!                │ HalfOpen   │   voting Unavailable or timing    │     │
//!                │ Degraded   │ ─ out: the next backoff ──────────┼─────┘
//!                │ ≤ P at once│ ◀─────────────────────────────────┘
//!                └────────────┘        t reached (core timer)
//! ```
//! - **Closed**: Healthy while neither the failure streak nor the window
//!   holds a failure, Degraded otherwise. Outcomes enter a window of the
//!   last `window` (W) outcomes; a Healthy probe enters it as a success.
//!   The worker is ejected when `consecutive_failures` (N) counted failures
//!   come in a row, or when at least `min_volume` (V) outcomes are held and
//!   `failure_rate_percent` (R) % or more of them failed.
//! - **Ejection** lasts `base_ejection × 2^k`, at most `max_ejection`,
//!   lengthened by a jitter of 0 to `jitter_permille` ‰ drawn from the
//!   core's seeded [`crate::Rng`]; `k` counts the worker's ejections,
//!   less one for each full `decay_after` it spent closed since its last
//!   trial succeeded. An ejected worker is Unavailable: it takes no new
//!   request (those already queued on it still run); its outcomes and
//!   probes change nothing but the probe verdict. A core timer
//!   ([`TimeoutReason::EjectionExpiry`](crate::TimeoutReason)) ends it.
//! - **HalfOpen**: Degraded, in rotation for at most `trial_permits` (P)
//!   requests at once (running plus queued on it). `success_threshold` (S)
//!   successes (requests, or Healthy probes sent with no failure since)
//!   close it, forgetting the window; any counted failure, a probe voting
//!   Unavailable or a probe timeout ejects it again with the next backoff.
//! - **The cap**: an ejection is allowed while fewer than
//!   `max_ejected_percent` % of the pool's workers (rounded down) are
//!   ejected. At the cap the pool panics per [`PanicMode`]:
//!   `RouteToAll` holds the worker in rotation (**Held**, Degraded; a
//!   half-open one starts its trials over instead) as a last resort:
//!   requests go to it only when no other schedulable worker has room,
//!   and it takes none from the late-binding backlog, so a worker that
//!   fails fast (and so is free most often) does not draw the traffic. A
//!   success or a clean Healthy probe closes it; its next counted failure
//!   tries the ejection again;
//!   `FailFast` ejects beyond the cap, and a pool left with no worker in
//!   rotation refuses submits with `NoHealthyWorker` until an ejection
//!   ends. Either way every ejection ends by its timer: the pool never
//!   strands itself.
//! - A restart returns the worker to Closed with an empty window, keeping
//!   its backoff exponent.
//!
//! # Liveness bound
//! A worker that becomes healthy again (its requests and probes succeed)
//! is back in rotation — schedulable, HalfOpen or Closed — within
//! `max_ejection × (1 + jitter_permille / 1000)` of the last evidence
//! against it (its ejection's end) plus `health_probe_interval + 2 ×
//! probe_timeout` (a probe outstanding then ends within a probe timeout,
//! the next is sent within an interval and answers within a timeout,
//! replacing an Unavailable verdict with a Healthy one); it closes after
//! `S` more successful trials, at most `S` probe intervals without
//! traffic. Under the reference a worker's trial comes with its next
//! Healthy probe: within the probe terms alone. A held worker is in
//! rotation throughout; once it is healthy again it is a first choice
//! after its next success or clean Healthy probe, within the same probe
//! terms. The simulator's liveness phase checks this bound.

mod backoff;
mod outlier;
mod policy;
mod reference;
mod window;

pub use backoff::{decayed, ejection_time, with_jitter};
pub use policy::{FailureClasses, OutlierDetection, PanicMode, RecoveryPolicy};

use std::time::Duration;

use crate::health::timeout_counts;
use crate::protocol::{WorkerErrorCode, WorkerHealthStatus};
use crate::rng::Rng;
use crate::time::Time;
use outlier::Outlier;
use reference::Reference;

/// Where a worker is in its recovery machine, from
/// [`Pool::recovery_state`](crate::Pool::recovery_state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveryState {
    /// In rotation as its status says: every worker under the reference,
    /// a closed one under outlier detection.
    Closed,
    /// Ejected until `until`; `ejections` is its backoff exponent after
    /// this ejection (its ejections, less decay).
    Ejected {
        /// When the ejection ends.
        until: Time,
        /// The backoff exponent for its next ejection.
        ejections: u32,
    },
    /// Held at the ejection cap (outlier detection, panic mode
    /// `RouteToAll`): its ejection was called for and the cap held it
    /// back. It stays in rotation as a last resort: requests go to it only
    /// when no other schedulable worker has room, and it takes none from
    /// the late-binding backlog. A success or a clean Healthy probe closes
    /// it; a failure ejects it once the cap allows.
    Held,
    /// Half-open: `successes` trials succeeded so far; it holds at most
    /// `permits` requests at once.
    HalfOpen {
        /// Successful trials so far.
        successes: u32,
        /// Requests it may hold at once.
        permits: u32,
    },
}

/// What the pool lends the machine for one input.
pub(crate) struct Ctx<'a> {
    pub(crate) now: Time,
    /// The core's generator (the jitter of an ejection).
    pub(crate) rng: &'a mut Rng,
    /// Whether the ejection cap leaves room for one more ejection.
    pub(crate) may_eject: bool,
}

/// What an input did to the worker's ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// No ejection was called for.
    Quiet,
    /// The worker was ejected (its timer is due at `ejected_until`).
    Ejected,
    /// An ejection was called for and the cap held it back.
    Held,
}

#[derive(Debug, Clone)]
enum Machine {
    Reference(Reference),
    Outlier(Outlier),
}

/// One worker's recovery state: the machine its policy picks, plus the last
/// probe's verdict, which every machine combines with its own status.
#[derive(Debug, Clone)]
pub(crate) struct Recovery {
    machine: Machine,
    verdict: WorkerHealthStatus,
    /// Bumped on every counted failure, so a probe can tell whether
    /// failures happened after it was sent.
    failure_seq: u64,
    pub(crate) last_probe: Option<Time>,
}

impl Recovery {
    /// A healthy worker under `policy`; `threshold` is the pool's
    /// [`failure_threshold`](crate::PoolConfig::failure_threshold).
    pub(crate) fn new(policy: &RecoveryPolicy, threshold: u32) -> Self {
        let machine = match policy {
            RecoveryPolicy::Reference => Machine::Reference(Reference::new(threshold)),
            RecoveryPolicy::OutlierDetection(tuning) => Machine::Outlier(Outlier::new(*tuning)),
        };
        Recovery {
            machine,
            verdict: WorkerHealthStatus::Healthy,
            failure_seq: 0,
            last_probe: None,
        }
    }

    /// The worker's status: the worse of the machine's and the last
    /// probe's verdict.
    pub(crate) fn status(&self) -> WorkerHealthStatus {
        let own = match &self.machine {
            Machine::Reference(machine) => machine.status(),
            Machine::Outlier(machine) => machine.status(),
        };
        own.max(self.verdict)
    }

    /// Counted failures in a row.
    pub(crate) fn failures(&self) -> u32 {
        match &self.machine {
            Machine::Reference(machine) => machine.failures,
            Machine::Outlier(machine) => machine.consecutive,
        }
    }

    pub(crate) fn failure_seq(&self) -> u64 {
        self.failure_seq
    }

    /// How many requests the worker may hold (running plus queued) now:
    /// a half-open worker's trial permits, unbounded otherwise.
    pub(crate) fn run_limit(&self) -> usize {
        match &self.machine {
            Machine::Outlier(machine) => machine.run_limit(),
            Machine::Reference(_) => usize::MAX,
        }
    }

    /// When the worker's ejection ends, if it is ejected.
    pub(crate) fn ejected_until(&self) -> Option<Time> {
        match &self.machine {
            Machine::Outlier(machine) => machine.ejected_until(),
            Machine::Reference(_) => None,
        }
    }

    /// Where the worker is in its machine.
    pub(crate) fn state(&self) -> RecoveryState {
        match &self.machine {
            Machine::Reference(_) => RecoveryState::Closed,
            Machine::Outlier(machine) => match machine.state {
                outlier::State::Closed => RecoveryState::Closed,
                outlier::State::Held => RecoveryState::Held,
                outlier::State::Ejected { until } => RecoveryState::Ejected {
                    until,
                    ejections: machine.times_ejected,
                },
                outlier::State::HalfOpen { successes } => RecoveryState::HalfOpen {
                    successes,
                    permits: machine.tuning.trial_permits.max(1),
                },
            },
        }
    }

    /// Whether the worker is held at the ejection cap
    /// ([`RecoveryState::Held`]).
    pub(crate) fn is_held(&self) -> bool {
        matches!(
            &self.machine,
            Machine::Outlier(Outlier {
                state: outlier::State::Held,
                ..
            })
        )
    }

    /// Whether the worker is half-open.
    pub(crate) fn is_half_open(&self) -> bool {
        matches!(
            &self.machine,
            Machine::Outlier(Outlier {
                state: outlier::State::HalfOpen { .. },
                ..
            })
        )
    }

    /// A request succeeded.
    pub(crate) fn on_success(&mut self, now: Time) -> Step {
        match &mut self.machine {
            Machine::Reference(machine) => {
                machine.on_success();
                Step::Quiet
            }
            Machine::Outlier(machine) => machine.on_success(now),
        }
    }

    /// A handler answered with an error of `code`; counts it if the
    /// policy's classification says so.
    pub(crate) fn on_error(&mut self, code: WorkerErrorCode, ctx: &mut Ctx<'_>) -> Step {
        let counts = match &self.machine {
            Machine::Reference(_) => true,
            Machine::Outlier(machine) => machine.tuning.counted.counts(code),
        };
        if counts {
            self.on_failure(ctx)
        } else {
            Step::Quiet
        }
    }

    /// A request ran out of time while running on this worker, with `ran`
    /// and `budget` as in [`timeout_counts`]: counts it as a failure when
    /// that rule (and the classification of `Timeout`) says so.
    pub(crate) fn on_timeout(
        &mut self,
        ran: Duration,
        budget: Duration,
        ctx: &mut Ctx<'_>,
    ) -> Step {
        if timeout_counts(ran, budget) {
            self.on_error(WorkerErrorCode::Timeout, ctx)
        } else {
            Step::Quiet
        }
    }

    fn on_failure(&mut self, ctx: &mut Ctx<'_>) -> Step {
        self.failure_seq = self.failure_seq.wrapping_add(1);
        match &mut self.machine {
            Machine::Reference(machine) => {
                machine.on_failure();
                Step::Quiet
            }
            Machine::Outlier(machine) => machine.on_failure(ctx),
        }
    }

    /// A probe answered `verdict`; `seq_at_send` is
    /// [`failure_seq`](Self::failure_seq) when it was sent.
    pub(crate) fn on_probe(
        &mut self,
        verdict: WorkerHealthStatus,
        seq_at_send: u64,
        ctx: &mut Ctx<'_>,
    ) -> Step {
        self.verdict = verdict;
        self.last_probe = Some(ctx.now);
        let clean = seq_at_send == self.failure_seq;
        match verdict {
            WorkerHealthStatus::Healthy if clean => {
                match &mut self.machine {
                    Machine::Reference(machine) => machine.on_healthy_probe(),
                    Machine::Outlier(machine) => machine.on_healthy_probe(ctx.now),
                }
                Step::Quiet
            }
            WorkerHealthStatus::Unavailable if self.is_half_open() => self.on_failure(ctx),
            _ => Step::Quiet,
        }
    }

    /// A probe did not answer in time: it votes Unavailable, and fails a
    /// half-open worker's trial.
    pub(crate) fn on_probe_timeout(&mut self, ctx: &mut Ctx<'_>) -> Step {
        self.verdict = WorkerHealthStatus::Unavailable;
        self.last_probe = Some(ctx.now);
        if self.is_half_open() {
            self.on_failure(ctx)
        } else {
            Step::Quiet
        }
    }

    /// The ejection timer fired at `now`: an ejected worker whose time is
    /// up turns half-open. Returns whether it did.
    pub(crate) fn on_expiry(&mut self, now: Time) -> bool {
        match &mut self.machine {
            Machine::Outlier(machine) => machine.on_expiry(now),
            Machine::Reference(_) => false,
        }
    }

    /// The worker was restarted: a fresh start (Closed, no failures, no
    /// verdict) that keeps the outlier machine's backoff exponent.
    pub(crate) fn reset(&mut self) {
        let failure_seq = self.failure_seq.wrapping_add(1);
        self.machine = match &self.machine {
            Machine::Reference(machine) => {
                let mut fresh = machine.clone();
                fresh.failures = 0;
                Machine::Reference(fresh)
            }
            Machine::Outlier(machine) => {
                let mut fresh = Outlier::new(machine.tuning);
                fresh.times_ejected = machine.times_ejected;
                Machine::Outlier(fresh)
            }
        };
        self.verdict = WorkerHealthStatus::Healthy;
        self.last_probe = None;
        self.failure_seq = failure_seq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use WorkerHealthStatus::*;

    fn reference(threshold: u32) -> Recovery {
        Recovery::new(&RecoveryPolicy::reference(), threshold)
    }

    fn fail(recovery: &mut Recovery) -> Step {
        let mut rng = Rng::new(0);
        let mut ctx = Ctx {
            now: Time::ZERO,
            rng: &mut rng,
            may_eject: true,
        };
        recovery.on_error(WorkerErrorCode::ExecutionFailed, &mut ctx)
    }

    fn probe(recovery: &mut Recovery, verdict: WorkerHealthStatus, seq: u64, now: Time) {
        let mut rng = Rng::new(0);
        let mut ctx = Ctx {
            now,
            rng: &mut rng,
            may_eject: true,
        };
        recovery.on_probe(verdict, seq, &mut ctx);
    }

    #[test]
    fn failures_walk_healthy_degraded_unavailable() {
        let mut health = reference(3);
        assert_eq!(health.status(), Healthy);
        fail(&mut health);
        assert_eq!(health.status(), Degraded);
        fail(&mut health);
        assert_eq!(health.status(), Degraded);
        fail(&mut health);
        assert_eq!(health.status(), Unavailable);
        health.on_success(Time::ZERO);
        assert_eq!(health.status(), Healthy);
    }

    #[test]
    fn the_reference_counts_every_handler_error() {
        let mut health = reference(10);
        let mut rng = Rng::new(0);
        let mut ctx = Ctx {
            now: Time::ZERO,
            rng: &mut rng,
            may_eject: true,
        };
        health.on_error(WorkerErrorCode::InvalidRequest, &mut ctx);
        health.on_error(WorkerErrorCode::Cancelled, &mut ctx);
        assert_eq!(health.failures(), 2);
        let ms = Duration::from_millis;
        health.on_timeout(ms(59), ms(120), &mut ctx);
        assert_eq!(health.failures(), 2);
        health.on_timeout(ms(60), ms(120), &mut ctx);
        assert_eq!(health.failures(), 3);
    }

    #[test]
    fn threshold_one_skips_degraded() {
        let mut health = reference(1);
        fail(&mut health);
        assert_eq!(health.status(), Unavailable);
    }

    #[test]
    fn healthy_probe_grants_one_trial_only() {
        let mut health = reference(3);
        for _ in 0..5 {
            fail(&mut health);
        }
        let seq = health.failure_seq();
        probe(&mut health, Healthy, seq, Time::ZERO);
        assert_eq!(health.status(), Degraded);
        assert_eq!(health.failures(), 2);
        fail(&mut health);
        assert_eq!(health.status(), Unavailable);
    }

    #[test]
    fn probe_cannot_erase_failures_after_it_was_sent() {
        let mut health = reference(3);
        for _ in 0..3 {
            fail(&mut health);
        }
        let seq = health.failure_seq();
        fail(&mut health);
        probe(&mut health, Healthy, seq, Time::ZERO);
        assert_eq!(health.status(), Unavailable);
        assert_eq!(health.failures(), 4);
    }

    #[test]
    fn probe_does_not_clear_failures_below_threshold() {
        let mut health = reference(3);
        fail(&mut health);
        let seq = health.failure_seq();
        probe(&mut health, Healthy, seq, Time::ZERO);
        assert_eq!(health.status(), Degraded);
    }

    #[test]
    fn probe_verdict_combines_with_failures() {
        let mut health = reference(3);
        probe(&mut health, Unavailable, 0, Time::ZERO);
        assert_eq!(health.status(), Unavailable);
        health.on_success(Time::ZERO);
        assert_eq!(
            health.status(),
            Unavailable,
            "only a probe lifts a probe verdict"
        );
        probe(&mut health, Degraded, 0, Time::ZERO);
        assert_eq!(health.status(), Degraded);
        let mut rng = Rng::new(0);
        let mut ctx = Ctx {
            now: Time::from_millis(1),
            rng: &mut rng,
            may_eject: true,
        };
        health.on_probe_timeout(&mut ctx);
        assert_eq!(health.status(), Unavailable);
        assert_eq!(health.last_probe, Some(Time::from_millis(1)));
        health.reset();
        assert_eq!(health.status(), Healthy);
        assert_eq!(health.last_probe, None);
    }

    #[test]
    fn outlier_detection_never_counts_invalid_requests_or_cancellations() {
        let policy = RecoveryPolicy::OutlierDetection(
            OutlierDetection::DEFAULT
                .with_consecutive_failures(1)
                .with_counted(
                    FailureClasses::DEFAULT
                        .with(WorkerErrorCode::InvalidRequest)
                        .with(WorkerErrorCode::Cancelled),
                ),
        );
        let mut health = Recovery::new(&policy, 3);
        let mut rng = Rng::new(0);
        let mut ctx = Ctx {
            now: Time::ZERO,
            rng: &mut rng,
            may_eject: true,
        };
        assert_eq!(
            health.on_error(WorkerErrorCode::InvalidRequest, &mut ctx),
            Step::Quiet
        );
        assert_eq!(
            health.on_error(WorkerErrorCode::Cancelled, &mut ctx),
            Step::Quiet
        );
        assert_eq!(health.status(), Healthy);
        assert_eq!(
            health.on_error(WorkerErrorCode::ExecutionFailed, &mut ctx),
            Step::Ejected
        );
        assert_eq!(health.status(), Unavailable);
    }
}
