//! The per-worker health state machine: what request outcomes and probes do
//! to a worker's status.
//!
//! Rules (this module is the only place they live, so it can be replaced as
//! a unit):
//! - Request outcomes are the evidence. A success clears the failure count; a
//!   failure (an error, a timeout, a panic) adds one. With `threshold` =
//!   `unavailable_after_failures`: 0 failures is Healthy, 1..threshold is
//!   Degraded, threshold or more is Unavailable.
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

use crate::protocol::WorkerHealthStatus;
use crate::time::Time;

/// What caused a health change, reported with [`crate::Event::HealthChanged`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthCause {
    /// A request succeeded.
    Success,
    /// A request failed (handler error or panic).
    Failure,
    /// A running request ran out of time.
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
