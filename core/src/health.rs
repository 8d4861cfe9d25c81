//! The per-worker health state machine: what request outcomes and probes do
//! to a worker's status.
//!
//! Rules (this module is the only place they live, so it can be replaced as
//! a unit):
//! - Request outcomes are the evidence. A success clears the failure count; a
//!   failure (an error, a panic, a timeout that counts) adds one. With
//!   `threshold` = `unavailable_after_failures`: 0 failures is Healthy,
//!   1..threshold is Degraded, threshold or more is Unavailable.
//! - A timeout counts against a worker only for the time the request spent
//!   running on it ([`timeout_counts`]): a request whose budget runs out
//!   while it is queued counts against no worker; one that runs out while
//!   running counts as a failure of its worker only if the worker had at
//!   least half of the request's budget (from its start to its deadline),
//!   that is, only if the request waited for at most half of its budget. A
//!   shorter run is no evidence against the worker: the request spent most
//!   of its budget waiting, and a healthy worker may simply need longer than
//!   what was left. So overload (long queues) never ejects a worker that
//!   answers in less than half the budget, while a worker that holds a
//!   request for half its budget or more without answering (hung, or too
//!   slow for the budget callers give) is charged for it, and a request
//!   that starts at once is always charged.
//! - A probe is a vote. Its verdict is combined with the failure count: the
//!   status is the worse of the two. A probe that times out votes
//!   Unavailable.
//! - A Healthy probe may give an ejected worker one trial: when the failures
//!   have reached the threshold and none happened since the probe was sent,
//!   the count drops to `threshold - 1`, so one success restores the worker
//!   and one more failure ejects it again. A probe can never erase failures
//!   that happened after it was sent, and never clears failures below the
//!   threshold (only successes do), so a worker that fails every request
//!   gets one request per probe interval instead of flapping back in full.

use std::time::Duration;

use crate::protocol::WorkerHealthStatus;
use crate::time::Time;

/// What caused a health change, reported with [`crate::Event::HealthChanged`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum HealthCause {
    /// A request succeeded.
    Success,
    /// A request failed (handler error or panic).
    Failure,
    /// A running request ran out of time after its worker had at least half
    /// of its budget, which counts as a failure (a request that runs out of
    /// time while queued, or after a shorter run, changes no worker's
    /// health: see the "Answers" section of [`crate::Pool`]).
    Timeout,
    /// A probe answered.
    Probe,
    /// A probe did not answer in time.
    ProbeTimeout,
    /// The worker was restarted.
    Restart,
    /// The worker was removed or the pool stopped.
    Stopped,
}

/// Whether a request that ran out of time while running counts as a
/// failure of the worker running it: `ran` is the time from its start to its
/// deadline, `budget` the time from its acceptance to its deadline. It
/// counts when the worker had at least half of the budget (`2 * ran >=
/// budget`).
///
/// Why half: a request that timed out after running for `ran` shows only
/// that its worker needed longer than `ran`. With `ran` at least half the
/// budget, the worker used more than half of all the time the caller
/// allowed (queueing included) without answering: evidence against it.
/// With less, the request spent most of its budget waiting, and the same
/// worker might well have answered it had it arrived sooner: no evidence.
/// So a worker whose requests take less than half the budget is never
/// charged for a timeout, however long the queues grow, and a hung worker
/// is charged for every request that reaches it with half its budget left
/// (every request it starts at once).
pub(crate) fn timeout_counts(ran: Duration, budget: Duration) -> bool {
    ran.saturating_mul(2) >= budget
}

#[derive(Debug, Clone)]
pub(crate) struct Health {
    failures: u32,
    verdict: WorkerHealthStatus,
    /// Bumped on every counted failure, so a probe can tell whether failures
    /// happened after it was sent.
    failure_seq: u64,
    pub(crate) last_probe: Option<Time>,
}

impl Health {
    pub(crate) fn new() -> Self {
        Health {
            failures: 0,
            verdict: WorkerHealthStatus::Healthy,
            failure_seq: 0,
            last_probe: None,
        }
    }

    pub(crate) fn status(&self, threshold: u32) -> WorkerHealthStatus {
        let from_failures = if self.failures == 0 {
            WorkerHealthStatus::Healthy
        } else if self.failures < threshold {
            WorkerHealthStatus::Degraded
        } else {
            WorkerHealthStatus::Unavailable
        };
        from_failures.max(self.verdict)
    }

    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    pub(crate) fn failure_seq(&self) -> u64 {
        self.failure_seq
    }

    pub(crate) fn on_success(&mut self) {
        self.failures = 0;
    }

    pub(crate) fn on_failure(&mut self) {
        self.failures = self.failures.saturating_add(1);
        self.failure_seq = self.failure_seq.wrapping_add(1);
    }

    /// A request ran out of time while running on this worker, with `ran`
    /// and `budget` as in [`timeout_counts`]; counts it as a failure when
    /// that rule says so, and returns whether it did.
    pub(crate) fn on_timeout(&mut self, ran: Duration, budget: Duration) -> bool {
        let counts = timeout_counts(ran, budget);
        if counts {
            self.on_failure();
        }
        counts
    }

    /// Applies a probe's answer; `seq_at_send` is [`Self::failure_seq`] when
    /// the probe was sent.
    pub(crate) fn on_probe(
        &mut self,
        verdict: WorkerHealthStatus,
        seq_at_send: u64,
        threshold: u32,
        now: Time,
    ) {
        self.verdict = verdict;
        self.last_probe = Some(now);
        if verdict == WorkerHealthStatus::Healthy
            && seq_at_send == self.failure_seq
            && self.failures >= threshold
        {
            self.failures = threshold.saturating_sub(1);
        }
    }

    pub(crate) fn on_probe_timeout(&mut self, now: Time) {
        self.verdict = WorkerHealthStatus::Unavailable;
        self.last_probe = Some(now);
    }

    pub(crate) fn reset(&mut self) {
        let failure_seq = self.failure_seq.wrapping_add(1);
        *self = Health::new();
        self.failure_seq = failure_seq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use WorkerHealthStatus::*;

    #[test]
    fn failures_walk_healthy_degraded_unavailable() {
        let mut health = Health::new();
        assert_eq!(health.status(3), Healthy);
        health.on_failure();
        assert_eq!(health.status(3), Degraded);
        health.on_failure();
        assert_eq!(health.status(3), Degraded);
        health.on_failure();
        assert_eq!(health.status(3), Unavailable);
        health.on_success();
        assert_eq!(health.status(3), Healthy);
    }

    #[test]
    fn a_timeout_counts_only_after_half_the_budget_on_the_worker() {
        let ms = Duration::from_millis;
        let mut health = Health::new();
        assert!(!health.on_timeout(ms(59), ms(120)));
        assert!(!health.on_timeout(Duration::ZERO, ms(120)));
        assert_eq!(health.failures(), 0);
        assert_eq!(health.status(3), Healthy);
        assert!(health.on_timeout(ms(60), ms(120)));
        assert!(health.on_timeout(ms(120), ms(120)));
        assert_eq!(health.failures(), 2);
        // Odd budgets: exactly half, rounded up, is enough.
        assert!(!timeout_counts(
            Duration::from_nanos(1),
            Duration::from_nanos(3)
        ));
        assert!(timeout_counts(
            Duration::from_nanos(2),
            Duration::from_nanos(3)
        ));
        assert!(timeout_counts(Duration::MAX, Duration::MAX));
    }

    #[test]
    fn threshold_one_skips_degraded() {
        let mut health = Health::new();
        health.on_failure();
        assert_eq!(health.status(1), Unavailable);
    }

    #[test]
    fn healthy_probe_grants_one_trial_only() {
        let mut health = Health::new();
        for _ in 0..5 {
            health.on_failure();
        }
        let seq = health.failure_seq();
        health.on_probe(Healthy, seq, 3, Time::ZERO);
        assert_eq!(health.status(3), Degraded);
        assert_eq!(health.failures(), 2);
        health.on_failure();
        assert_eq!(health.status(3), Unavailable);
    }

    #[test]
    fn probe_cannot_erase_failures_after_it_was_sent() {
        let mut health = Health::new();
        for _ in 0..3 {
            health.on_failure();
        }
        let seq = health.failure_seq();
        health.on_failure();
        health.on_probe(Healthy, seq, 3, Time::ZERO);
        assert_eq!(health.status(3), Unavailable);
        assert_eq!(health.failures(), 4);
    }

    #[test]
    fn probe_does_not_clear_failures_below_threshold() {
        let mut health = Health::new();
        health.on_failure();
        let seq = health.failure_seq();
        health.on_probe(Healthy, seq, 3, Time::ZERO);
        assert_eq!(health.status(3), Degraded);
    }

    #[test]
    fn probe_verdict_combines_with_failures() {
        let mut health = Health::new();
        health.on_probe(Unavailable, 0, 3, Time::ZERO);
        assert_eq!(health.status(3), Unavailable);
        health.on_success();
        assert_eq!(
            health.status(3),
            Unavailable,
            "only a probe lifts a probe verdict"
        );
        health.on_probe(Degraded, 0, 3, Time::ZERO);
        assert_eq!(health.status(3), Degraded);
        health.on_probe_timeout(Time::from_millis(1));
        assert_eq!(health.status(3), Unavailable);
        assert_eq!(health.last_probe, Some(Time::from_millis(1)));
        health.reset();
        assert_eq!(health.status(3), Healthy);
        assert_eq!(health.last_probe, None);
    }
}
