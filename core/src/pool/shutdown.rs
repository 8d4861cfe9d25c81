//! Shutdown: the drain rule. New submits are refused, probing stops,
//! waiting and running requests finish until the drain deadline, the rest
//! are then answered `ShuttingDown`, and once nothing is left every worker
//! is stopped.

use std::time::Duration;

use super::{Lifecycle, Pool, ProbeState};
use crate::health::HealthCause;
use crate::keys::{ProbeKey, RequestKey, WorkerKey};
use crate::output::{Action, Event};
use crate::protocol::{WorkerHealthStatus, WorkerPoolError};
use crate::time::Time;
use crate::timers::Timer;

impl<P: Clone> Pool<P> {
    /// Begins a graceful shutdown: new submits are refused with
    /// `ShuttingDown`, probing stops, and queued and running requests finish
    /// until `drain` has passed (no limit when `None`); then the rest are
    /// aborted and answered `ShuttingDown`. Calling it again can only bring
    /// the deadline closer.
    pub fn begin_shutdown(&mut self, now: Time, drain: Option<Duration>) {
        let now = self.observe(now);
        let requested = drain.map(|limit| now + limit);
        let deadline = match self.lifecycle {
            Lifecycle::Stopped => return,
            Lifecycle::Running => {
                let probing: Vec<(WorkerKey, ProbeKey)> = self
                    .workers
                    .iter()
                    .filter_map(|(key, slot)| match slot.probe {
                        ProbeState::Outstanding { key: probe, .. } => Some((WorkerKey(key), probe)),
                        _ => None,
                    })
                    .collect();
                for (worker, probe) in probing {
                    self.actions.push_back(Action::AbortProbe { worker, probe });
                }
                let keys: Vec<WorkerKey> =
                    self.workers.iter().map(|(key, _)| WorkerKey(key)).collect();
                for key in keys {
                    if let Some(slot) = self.workers.get_mut(key.0) {
                        slot.probe = ProbeState::Idle;
                    }
                }
                requested
            }
            Lifecycle::Draining { deadline } => match (deadline, requested) {
                (Some(old), Some(new)) => Some(old.min(new)),
                (old, new) => old.or(new),
            },
        };
        self.lifecycle = Lifecycle::Draining { deadline };
        if let Some(at) = deadline {
            if at <= now {
                self.drain_deadline();
            } else {
                self.arm(at, Timer::Drain);
            }
        }
        self.maybe_finish_shutdown();
    }

    /// The drain deadline passed: every request still waiting or running
    /// is aborted and answered `ShuttingDown`.
    pub(super) fn drain_deadline(&mut self) {
        if !matches!(self.lifecycle, Lifecycle::Draining { .. }) {
            return;
        }
        let (queued, running): (Vec<_>, Vec<_>) = self
            .requests
            .iter()
            .map(|(key, entry)| (RequestKey(key), entry.worker, entry.state.is_waiting()))
            .partition(|(_, _, queued)| *queued);
        for (request, _, _) in queued {
            self.counters.aborted_by_shutdown += 1;
            self.finish_waiting(request, Err(WorkerPoolError::ShuttingDown));
        }
        for (request, worker, _) in running {
            self.counters.aborted_by_shutdown += 1;
            let run_key = self.run_key(request);
            self.actions.push_back(Action::Abort {
                request: run_key,
                worker,
            });
            self.finish_running(request, Err(WorkerPoolError::ShuttingDown));
        }
        self.settle_freed(None);
        let removed: Vec<WorkerKey> = self.workers().collect();
        for worker in removed {
            self.maybe_release(worker);
        }
        self.maybe_finish_shutdown();
    }

    /// Once a draining pool holds no request: stops every worker and
    /// reports [`Event::ShutdownComplete`].
    pub(super) fn maybe_finish_shutdown(&mut self) {
        if !matches!(self.lifecycle, Lifecycle::Draining { .. }) || self.requests.len() > 0 {
            return;
        }
        self.lifecycle = Lifecycle::Stopped;
        self.deferral = None;
        let keys: Vec<WorkerKey> = self.workers().collect();
        for worker in keys {
            self.refresh(worker, HealthCause::Stopped);
            if let Some(slot) = self.workers.get_mut(worker.0) {
                slot.probe = ProbeState::Idle;
                if slot.status != WorkerHealthStatus::Unavailable && !slot.removing {
                    self.events.push_back(Event::HealthChanged {
                        worker,
                        from: slot.status,
                        to: WorkerHealthStatus::Unavailable,
                        cause: HealthCause::Stopped,
                        at: self.now,
                    });
                }
            }
            self.actions.push_back(Action::StopWorker { worker });
        }
        self.events
            .push_back(Event::ShutdownComplete { at: self.now });
    }
}
