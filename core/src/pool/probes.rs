//! Health probes: one at a time per worker, one interval apart; an answer
//! is a vote on the worker's health, a probe that times out votes
//! `Unavailable`.

use super::{Lifecycle, Pool, ProbeState};
use crate::health::HealthCause;
use crate::keys::{ProbeKey, WorkerKey};
use crate::output::Action;
use crate::protocol::WorkerHealthStatus;
use crate::time::Time;
use crate::timers::Timer;

impl<P: Clone> Pool<P> {
    /// A health probe answered with the worker's own view of its status.
    ///
    /// Returns `false` (and does nothing) for a probe that is no longer
    /// outstanding (it timed out, the worker restarted or was removed).
    pub fn handle_probe_result(
        &mut self,
        now: Time,
        worker: WorkerKey,
        probe: ProbeKey,
        status: WorkerHealthStatus,
    ) -> bool {
        self.observe(now);
        let Some(slot) = self.workers.get_mut(worker.0) else {
            return false;
        };
        let ProbeState::Outstanding {
            key,
            sent_at,
            failure_seq,
            ..
        } = slot.probe
        else {
            return false;
        };
        if key != probe {
            return false;
        }
        slot.saturated = None;
        self.recover(worker, |health, ctx| {
            health.on_probe(status, failure_seq, ctx)
        });
        self.schedule_next_probe(worker, sent_at);
        // A worker the probe brought back takes waiting requests.
        self.refresh_and_pump(worker, HealthCause::Probe);
        true
    }

    /// Sends a worker's due probe and arms its timeout.
    pub(super) fn send_probe(&mut self, worker: WorkerKey) {
        let deadline = self.now + self.config.probe_timeout;
        let now = self.now;
        let Some(slot) = self.workers.get_mut(worker.0) else {
            return;
        };
        let probe = ProbeKey(self.next_probe);
        self.next_probe += 1;
        slot.probe = ProbeState::Outstanding {
            key: probe,
            sent_at: now,
            deadline,
            failure_seq: slot.health.failure_seq(),
        };
        self.counters.probes_sent += 1;
        self.actions.push_back(Action::RunProbe { worker, probe });
        self.arm(deadline, Timer::ProbeTimeout(worker));
    }

    /// A probe's time ran out: it votes `Unavailable` and is aborted.
    pub(super) fn probe_deadline(&mut self, worker: WorkerKey) {
        let Some(slot) = self.workers.get_mut(worker.0) else {
            return;
        };
        let ProbeState::Outstanding { key, sent_at, .. } = slot.probe else {
            return;
        };
        self.recover(worker, |health, ctx| health.on_probe_timeout(ctx));
        self.counters.probes_timed_out += 1;
        self.actions
            .push_back(Action::AbortProbe { worker, probe: key });
        self.schedule_next_probe(worker, sent_at);
        self.refresh(worker, HealthCause::ProbeTimeout);
    }

    /// After a probe ends: the next one is due one interval after the last
    /// was sent, or now if that has passed (one probe at a time).
    pub(super) fn schedule_next_probe(&mut self, worker: WorkerKey, sent_at: Time) {
        if self.lifecycle != Lifecycle::Running {
            if let Some(slot) = self.workers.get_mut(worker.0) {
                slot.probe = ProbeState::Idle;
            }
            return;
        }
        let due = (sent_at + self.config.options.health_probe_interval).max(self.now);
        self.set_probe_due(worker, due);
    }

    /// Makes a worker's next probe due at `due` and arms its timer.
    pub(super) fn set_probe_due(&mut self, worker: WorkerKey, due: Time) {
        if let Some(slot) = self.workers.get_mut(worker.0) {
            slot.probe = ProbeState::Due(due);
            self.arm(due, Timer::ProbeDue(worker));
        }
    }
}
