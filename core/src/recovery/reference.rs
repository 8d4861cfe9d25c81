//! The reference's rule: a consecutive-failure counter against a threshold,
//! with one trial per Healthy probe once the threshold is reached.

use crate::protocol::WorkerHealthStatus;

/// The consecutive failures of one worker and the threshold that ejects it.
#[derive(Debug, Clone)]
pub(crate) struct Reference {
    pub(crate) failures: u32,
    threshold: u32,
}

impl Reference {
    pub(crate) fn new(threshold: u32) -> Self {
        Reference {
            failures: 0,
            threshold: threshold.max(1),
        }
    }

    /// 0 failures is Healthy, 1..threshold Degraded, threshold or more
    /// Unavailable.
    pub(crate) fn status(&self) -> WorkerHealthStatus {
        if self.failures == 0 {
            WorkerHealthStatus::Healthy
        } else if self.failures < self.threshold {
            WorkerHealthStatus::Degraded
        } else {
            WorkerHealthStatus::Unavailable
        }
    }

    pub(crate) fn on_success(&mut self) {
        self.failures = 0;
    }

    pub(crate) fn on_failure(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    /// A Healthy probe with no failure since it was sent: an ejected worker
    /// gets one trial (the count drops to `threshold - 1`); failures below
    /// the threshold stay.
    pub(crate) fn on_healthy_probe(&mut self) {
        if self.failures >= self.threshold {
            self.failures = self.threshold - 1;
        }
    }
}
