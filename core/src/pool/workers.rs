//! Workers: adding (by name or numbered), restarting and removing them,
//! and where a removed worker's waiting requests go.

use std::collections::VecDeque;

use thiserror::Error;

use super::run_list::RunList;
use super::{Lifecycle, Place, Pool, ProbeState, RequestState, Worker};
use crate::health::HealthCause;
use crate::keys::{RequestKey, WorkerKey};
use crate::output::{Action, Event};
use crate::protocol::{WorkerErrorCode, WorkerHealthStatus, WorkerPoolError, WorkerProtocolError};
use crate::recovery::Recovery;
use crate::routing::ewma::PeakEwma;
use crate::routing::Membership;
use crate::time::Time;
use crate::timers::Timer;

/// The longest worker identifier [`Pool::add_named_worker`] takes, in bytes
/// (room for an endpoint URL).
pub const MAX_WORKER_ID_LEN: usize = 1024;

/// A worker command the pool refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CommandError {
    /// No worker has that key (it never existed or was removed).
    #[error("no worker with key {0}")]
    UnknownWorker(WorkerKey),
    /// No worker has that identifier (it never existed or was removed).
    #[error("no worker named {0:?}")]
    UnknownWorkerId(String),
    /// The worker is being removed and takes no more commands.
    #[error("worker {0} is being removed")]
    WorkerRemoving(String),
    /// Another worker already uses that identifier.
    #[error("a worker named {0:?} already exists")]
    DuplicateWorkerId(String),
    /// The identifier is empty or too long.
    #[error("invalid worker id: {reason}")]
    InvalidWorkerId {
        /// What is wrong with it.
        reason: String,
    },
    /// The pool is shutting down (or has stopped) and takes no new workers.
    #[error("the worker pool is shutting down")]
    ShuttingDown,
    /// The pool already holds the largest number of workers it can track.
    #[error("too many workers")]
    TooManyWorkers,
    /// A worker's own run limit ([`WorkerSpec::max_concurrency`]) was zero.
    #[error("worker {id:?}: max_concurrency must be at least 1")]
    ZeroConcurrency {
        /// The worker it was given for.
        id: String,
    },
}

/// What [`Pool::add_worker_with`] adds: a worker's identifier and its own
/// run limit.
///
/// ```
/// use foreman_core::{Pool, PoolConfig, Time, WorkerSpec};
///
/// let mut pool: Pool<()> = Pool::new(PoolConfig::default(), Time::ZERO).unwrap();
/// let spec = WorkerSpec::named("http://10.0.0.5:8080").with_max_concurrency(4);
/// let key = pool.add_worker_with(Time::ZERO, spec).unwrap();
/// assert_eq!(pool.worker_max_concurrency(key), Some(4));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerSpec {
    /// Its identifier; `None` names it `worker-N`, as
    /// [`Pool::add_worker`] does.
    pub id: Option<String>,
    /// How many requests it may run at once; `None` takes the pool's
    /// [`PoolConfig::max_concurrency_per_worker`](crate::PoolConfig::max_concurrency_per_worker).
    /// Its queue holds the pool's `queue_capacity` on top.
    pub max_concurrency: Option<u32>,
}

impl WorkerSpec {
    /// A worker named `id`, with the pool's run limit.
    pub fn named(id: impl Into<String>) -> Self {
        WorkerSpec {
            id: Some(id.into()),
            max_concurrency: None,
        }
    }

    /// Sets its own run limit (at least 1, checked when it is added).
    #[must_use]
    pub fn with_max_concurrency(mut self, max_concurrency: u32) -> Self {
        self.max_concurrency = Some(max_concurrency);
        self
    }
}

impl<P: Clone> Pool<P> {
    /// Adds a worker named `worker-N` (N counts the workers added so far,
    /// skipping names in use) and starts probing it.
    ///
    /// # Errors
    /// [`CommandError::ShuttingDown`] once shutdown began;
    /// [`CommandError::TooManyWorkers`] past 2^32 workers.
    pub fn add_worker(&mut self, now: Time) -> Result<WorkerKey, CommandError> {
        self.add_worker_with(now, WorkerSpec::default())
    }

    /// Adds a worker with the given identifier and starts probing it.
    ///
    /// # Errors
    /// [`CommandError::InvalidWorkerId`] for an empty id or one longer than
    /// [`MAX_WORKER_ID_LEN`] bytes (the security policy bounds requests'
    /// identifiers, not workers'); [`CommandError::DuplicateWorkerId`];
    /// [`CommandError::ShuttingDown`]; [`CommandError::TooManyWorkers`].
    pub fn add_named_worker(
        &mut self,
        now: Time,
        id: impl Into<String>,
    ) -> Result<WorkerKey, CommandError> {
        self.add_worker_with(now, WorkerSpec::named(id))
    }

    /// Adds a worker as `spec` describes it (its identifier, or `worker-N`;
    /// its own run limit, or the pool's) and starts probing it.
    ///
    /// # Errors
    /// As [`add_named_worker`](Self::add_named_worker), and
    /// [`CommandError::ZeroConcurrency`] for a run limit of 0.
    pub fn add_worker_with(
        &mut self,
        now: Time,
        spec: WorkerSpec,
    ) -> Result<WorkerKey, CommandError> {
        let now = self.observe(now);
        if self.lifecycle != Lifecycle::Running {
            return Err(CommandError::ShuttingDown);
        }
        let id = match spec.id {
            Some(id) => id,
            None => self.next_numbered_id(),
        };
        if id.is_empty() || id.len() > MAX_WORKER_ID_LEN {
            return Err(CommandError::InvalidWorkerId {
                reason: format!(
                    "worker id must be 1 to {MAX_WORKER_ID_LEN} bytes long, got {}",
                    id.len()
                ),
            });
        }
        if self.ids.contains_key(&id) {
            return Err(CommandError::DuplicateWorkerId(id));
        }
        let max_running = match spec
            .max_concurrency
            .unwrap_or(self.config.max_concurrency_per_worker)
        {
            0 => return Err(CommandError::ZeroConcurrency { id }),
            limit => limit as usize,
        };
        let due = now + self.config.options.health_probe_interval;
        let worker = Worker {
            id: id.clone(),
            max_running,
            capacity: self
                .config
                .options
                .queue_capacity
                .saturating_add(max_running),
            health: Recovery::new(&self.config.recovery, self.config.failure_threshold()),
            status: WorkerHealthStatus::Healthy,
            queue: VecDeque::new(),
            queued: 0,
            moving: 0,
            running: RunList::default(),
            last_run: None,
            latency: PeakEwma::default(),
            finish_key: None,
            free_holding: false,
            removing: false,
            ejected: false,
            saturated: None,
            schedulable: false,
            membership: Membership::default(),
            probe: ProbeState::Due(due),
            run_times: None,
        };
        if !self.workers.has_room() {
            return Err(CommandError::TooManyWorkers);
        }
        let key = WorkerKey(self.workers.insert(worker));
        self.ids.insert(id, key);
        self.arm(due, Timer::ProbeDue(key));
        // A new worker takes waiting requests at once.
        self.refresh_and_pump(key, HealthCause::Restart);
        Ok(key)
    }

    /// The next `worker-N` name not in use.
    fn next_numbered_id(&mut self) -> String {
        loop {
            let id = format!("worker-{}", self.names_issued);
            self.names_issued += 1;
            if !self.ids.contains_key(&id) {
                return id;
            }
        }
    }

    /// How many requests `worker` may run at once (its own limit, or the
    /// pool's); `None` for an unknown worker.
    pub fn worker_max_concurrency(&self, worker: WorkerKey) -> Option<u32> {
        self.workers
            .get(worker.0)
            .map(|slot| u32::try_from(slot.max_running).unwrap_or(u32::MAX))
    }

    /// Restarts a worker: its running requests are aborted and answered with
    /// a `Cancelled` error saying so (retryable), its health is reset, the
    /// driver is told to replace its execution context, and its queued
    /// requests stay queued and run on the fresh worker (with late binding,
    /// on whichever worker frees up first).
    ///
    /// # Errors
    /// [`CommandError::UnknownWorker`], [`CommandError::WorkerRemoving`], or
    /// [`CommandError::ShuttingDown`] once the pool has stopped.
    pub fn restart_worker(&mut self, now: Time, worker: WorkerKey) -> Result<(), CommandError> {
        let now = self.observe(now);
        let slot = self.commanded(worker)?;
        let message = format!(
            "worker {} was restarted while running this request",
            slot.id
        );
        let running = std::mem::take(&mut slot.running);
        let probe = slot.probe;
        self.abort_probe(worker, probe);
        for key in running {
            let Some(request) = self.restart_attempt(key, worker) else {
                continue;
            };
            self.actions.push_back(Action::Abort {
                request: key,
                worker,
            });
            self.counters.aborted_by_restart += 1;
            let error = WorkerProtocolError::new(WorkerErrorCode::Cancelled, message.clone(), true);
            self.answer_running(request, Err(WorkerPoolError::Worker(error)));
        }
        let probing = self.lifecycle == Lifecycle::Running;
        if let Some(slot) = self.workers.get_mut(worker.0) {
            slot.health.reset();
            slot.saturated = None;
            slot.last_run = None;
            slot.latency = PeakEwma::default();
            slot.run_times = None;
            slot.probe = ProbeState::Idle;
        }
        self.sync_ejected(worker);
        self.actions.push_back(Action::RestartWorker { worker });
        if probing {
            let due = now + self.config.options.health_probe_interval;
            self.set_probe_due(worker, due);
        }
        self.after_worker_change(worker, HealthCause::Restart);
        Ok(())
    }

    /// Removes a worker: it takes no new requests, its queued requests move
    /// to other workers (or are answered with a retryable `Unavailable`
    /// error when none can take them), its running requests finish, and
    /// then [`Action::StopWorker`] releases it. A queued request a circuit
    /// breaker placed there ([`vet`](Self::vet)) is not moved here: an
    /// [`Action::Revet`] asks the driver to have the breaker approve its
    /// next worker ([`revet`](Self::revet)), and the worker is released
    /// only once every such request has moved or been answered.
    ///
    /// # Errors
    /// [`CommandError::ShuttingDown`] once the pool has stopped;
    /// [`CommandError::UnknownWorker`], or [`CommandError::WorkerRemoving`]
    /// when removal is already under way.
    pub fn remove_worker(&mut self, now: Time, worker: WorkerKey) -> Result<(), CommandError> {
        self.observe(now);
        let slot = self.commanded(worker)?;
        slot.removing = true;
        let probe = std::mem::replace(&mut slot.probe, ProbeState::Idle);
        let queue = std::mem::take(&mut slot.queue);
        slot.queued = 0;
        let worker_id = slot.id.clone();
        self.abort_probe(worker, probe);
        self.refresh(worker, HealthCause::Stopped);
        for place in queue {
            if !place.is_live(&self.requests, Some(worker)) {
                continue;
            }
            let request = place.key;
            if self
                .requests
                .get(request.0)
                .is_some_and(|entry| entry.vetted)
            {
                self.await_revet(request, worker);
            } else {
                self.requeue_or_answer(request, worker, &worker_id);
            }
        }
        self.after_worker_change(worker, HealthCause::Stopped);
        Ok(())
    }

    /// The worker a command (restart, remove) names, if it takes commands.
    ///
    /// # Errors
    /// [`CommandError::ShuttingDown`] once the pool has stopped;
    /// [`CommandError::UnknownWorker`]; [`CommandError::WorkerRemoving`].
    fn commanded(&mut self, worker: WorkerKey) -> Result<&mut Worker, CommandError> {
        if self.lifecycle == Lifecycle::Stopped {
            return Err(CommandError::ShuttingDown);
        }
        let slot = self
            .workers
            .get_mut(worker.0)
            .ok_or(CommandError::UnknownWorker(worker))?;
        if slot.removing {
            return Err(CommandError::WorkerRemoving(slot.id.clone()));
        }
        Ok(slot)
    }

    /// Aborts a worker's probe, if `probe` (its state before the command)
    /// was outstanding.
    fn abort_probe(&mut self, worker: WorkerKey, probe: ProbeState) {
        if let ProbeState::Outstanding { key, .. } = probe {
            self.actions
                .push_back(Action::AbortProbe { worker, probe: key });
        }
    }

    /// Moves a request off a removed worker, or answers it when no other
    /// worker has room.
    fn requeue_or_answer(&mut self, request: RequestKey, from: WorkerKey, from_id: &str) {
        let target = self
            .router
            .candidates()
            .find(|candidate| *candidate != from);
        match target {
            Some(to) => self.requeue(request, from, to),
            None => {
                // Put it back on the removed worker's books, then answer it.
                if let Some(slot) = self.workers.get_mut(from.0) {
                    slot.queued += 1;
                }
                self.unroutable(request, from_id, "no other worker could take the request");
            }
        }
    }

    /// Queues a request of removed worker `from` on `to` (eligible).
    pub(super) fn requeue(&mut self, request: RequestKey, from: WorkerKey, to: WorkerKey) {
        let Some(entry) = self.requests.get_mut(request.0) else {
            return;
        };
        entry.worker = to;
        entry.state = RequestState::Queued;
        let place = Place {
            key: request,
            turn: entry.turn,
        };
        // An unpinned request also keeps its place in the backlog.
        if let Some(slot) = self.workers.get_mut(to.0) {
            slot.queue.push_back(place);
            slot.queued += 1;
        }
        self.counters.requeued += 1;
        self.events.push_back(Event::Requeued { request, from, to });
        self.pump(to);
        self.refresh(to, HealthCause::Success);
    }

    /// Answers a waiting request of a removed worker with a retryable
    /// `Unavailable` error saying `why` it could not move.
    pub(super) fn unroutable(&mut self, request: RequestKey, from_id: &str, why: &str) {
        self.counters.unroutable_after_removal += 1;
        let error = WorkerProtocolError::new(
            WorkerErrorCode::Unavailable,
            format!("worker {from_id} was removed and {why}"),
            true,
        );
        self.finish_waiting(request, Err(WorkerPoolError::Worker(error)));
    }

    /// Takes a vetted request queued on removed worker `worker` off its
    /// queue (the worker keeps counting it as `moving`) and asks the driver
    /// to have the breaker approve its next worker.
    fn await_revet(&mut self, request: RequestKey, worker: WorkerKey) {
        let Some(entry) = self.requests.get_mut(request.0) else {
            return;
        };
        entry.state = RequestState::Moving;
        let payload = entry.payload.clone();
        if let Some(slot) = self.workers.get_mut(worker.0) {
            slot.moving += 1;
        }
        self.actions.push_back(Action::Revet {
            request,
            worker,
            payload,
        });
    }

    /// Releases a removed worker once its last running request is answered.
    pub(super) fn maybe_release(&mut self, worker: WorkerKey) {
        let done = matches!(
            self.workers.get(worker.0),
            Some(slot) if slot.removing && slot.running.is_empty() && slot.queued == 0 && slot.moving == 0
        );
        if !done || self.lifecycle == Lifecycle::Stopped {
            return;
        }
        // A worker being removed is no longer schedulable (`remove_worker`
        // refreshed it), so the schedulable count needs no change here.
        if let Some(slot) = self.workers.remove(worker.0) {
            if slot.ejected {
                self.ejected = self.ejected.saturating_sub(1);
            }
            self.router
                .set(worker, slot.membership, Membership::default());
            self.ids.remove(&slot.id);
        }
        self.actions.push_back(Action::StopWorker { worker });
    }
}
