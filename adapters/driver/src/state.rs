//! What the driver keeps beside the core, and how it carries out the core's
//! actions. Everything here runs under the pool's lock and never awaits.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;

use foreman_core::{
    Action, Phase, Pool, ProbeKey, RequestKey, Time, WorkerHealthStatus, WorkerKey, WorkerRequest,
};
use futures_util::future::AbortHandle;
use futures_util::task::AtomicWaker;

use crate::handler::WorkerHandler;
use crate::live::{Live, LiveGuard};
use crate::meter::{PoolMeter, WorkerMeter};
use crate::notes::Notes;
use crate::slot::{Run, Slot};
use crate::started::{Delivered, Started, WorkerCell};
use crate::types::HealthTransition;
use crate::wakers::Wakers;
use crate::worker::{Inbox, Job};

mod events;

/// How many health transitions the pool remembers.
pub(crate) const HEALTH_LOG_CAPACITY: usize = 4096;

/// The driver's books, guarded together with the core by one mutex.
pub(crate) struct Core {
    pub(crate) pool: Pool<Arc<Slot>>,
    pub(crate) workers: FastMap<WorkerKey, WorkerEntry>,
    /// Handler futures and probe tasks that have not ended yet, and the
    /// `shutdown` callers waiting for them.
    pub(crate) live: Arc<Live>,
    /// The deadline the timer task was last told about (`Time::MAX`: none).
    pub(crate) armed: Time,
    pub(crate) health_log: VecDeque<HealthTransition>,
    /// Tasks told the lane had no room (a service's `poll_ready`), woken
    /// after the first input that leaves it admitting or shutting down.
    pub(crate) room_waiters: Vec<Waker>,
    /// Handlers run on worker tasks ([`crate::ExecutionMode::PoolTasks`]).
    pub(crate) pool_tasks: bool,
    /// Whether its lane's counts are published in [`LaneSignals`] (only
    /// a pool of several lanes reads them).
    pub(crate) publish_load: bool,
    /// The pool's metric handles (the `metrics` feature).
    pub(crate) meter: Arc<PoolMeter>,
}

/// A worker as the driver knows it.
pub(crate) struct WorkerEntry {
    pub(crate) cell: Arc<WorkerCell>,
    pub(crate) probe: Option<(ProbeKey, AbortHandle)>,
    /// Its health status, as the core's last `HealthChanged` said.
    pub(crate) status: WorkerHealthStatus,
}

impl WorkerEntry {
    /// A new worker; its gauges (`meter`) are registered before any lock
    /// is taken.
    pub(crate) fn new(
        id: &str,
        key: WorkerKey,
        handler: Arc<dyn WorkerHandler>,
        meter: WorkerMeter,
    ) -> Self {
        WorkerEntry {
            cell: Arc::new(WorkerCell {
                id: Arc::from(id),
                key,
                handler,
                inbox: Arc::new(Inbox::default()),
                meter,
            }),
            probe: None,
            status: WorkerHealthStatus::Healthy,
        }
    }
}

/// What one round of actions left for the calling task to do once it has
/// released the lock: its own request's start or answer, tasks to wake,
/// and queued requests it claimed to run itself.
#[derive(Default)]
pub(crate) struct Own {
    /// The calling task's own request was started: it runs the handler.
    pub(crate) started: Option<Started>,
    /// The calling task's own request was answered.
    pub(crate) answer: Option<Delivered>,
    /// Waiting callers to wake (never woken under the lock).
    pub(crate) wake: Wakers,
    /// Started requests of other callers that this task runs (see
    /// [`Claimed`]).
    pub(crate) claimed: Vec<Claimed>,
    /// The worker whose task is carrying out this round: requests the core
    /// starts on it go to [`jobs`](Self::jobs), not to its inbox.
    pub(crate) here: Option<WorkerKey>,
    /// Requests started on [`here`](Self::here).
    pub(crate) jobs: Vec<Job>,
    /// Stopped workers, dropped once the lock is released.
    pub(crate) release: Vec<Arc<WorkerCell>>,
    /// What the `tracing` and `metrics` features tell once the lock is
    /// released.
    pub(crate) notes: Notes,
}

impl Own {
    /// Tells this round's notes, then wakes the callers it concerned
    /// (called once the lock is released).
    #[inline]
    pub(crate) fn wake_all(&mut self) {
        self.notes.emit();
        self.wake.wake_all();
    }
}

/// A request another caller parked in its slot, started on a worker this
/// task just freed: this task polls its handler once, in place of waking
/// the caller to do it (which would put a task hop between every two
/// requests of a busy worker).
pub(crate) struct Claimed {
    pub(crate) key: RequestKey,
    pub(crate) slot: Arc<Slot>,
    pub(crate) worker: Arc<WorkerCell>,
    pub(crate) request: WorkerRequest,
    /// The caller's waker, so a handler that has to wait registers it.
    pub(crate) waker: Option<Waker>,
    pub(crate) live: LiveGuard,
    /// When the core cuts the handler off (`Pool::cutoff`, `Time::MAX`
    /// for never; [`crate::handler_deadline`] says it as an instant).
    pub(crate) deadline: Time,
}

/// A probe the driver must spawn once the actions are carried out.
pub(crate) struct ProbeJob {
    pub(crate) worker: WorkerKey,
    pub(crate) probe: ProbeKey,
    pub(crate) handler: Arc<dyn WorkerHandler>,
    pub(crate) registration: futures_util::future::AbortRegistration,
    pub(crate) live: LiveGuard,
}

/// A lane's signals, read without its lock: for its timer task, the next
/// deadline and how to wake it; for choosing a lane, its idle and eligible
/// worker counts after its last input. Aligned to 128 bytes (two cache
/// lines, for the adjacent-line prefetcher) so that lanes written from
/// different threads never share a line.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct LaneSignals {
    pub(crate) target: AtomicU64,
    pub(crate) waker: AtomicWaker,
    pub(crate) closed: AtomicBool,
    pub(crate) idle: AtomicUsize,
    pub(crate) eligible: AtomicUsize,
    /// Requests queued or running in the lane, and its workers.
    pub(crate) pending: AtomicUsize,
    pub(crate) workers: AtomicUsize,
    /// Its movable queued requests and schedulable workers, for moving
    /// requests between lanes.
    pub(crate) queued: AtomicUsize,
    pub(crate) schedulable: AtomicUsize,
}

impl LaneSignals {
    /// The lane's counts, as its last input left them.
    pub(crate) fn load(&self) -> foreman_core::lanes::LaneLoad {
        foreman_core::lanes::LaneLoad {
            idle: self.idle.load(Ordering::Relaxed),
            eligible: self.eligible.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
            workers: self.workers.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            schedulable: self.schedulable.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn new() -> Self {
        LaneSignals {
            target: AtomicU64::new(u64::MAX),
            ..LaneSignals::default()
        }
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
    }
}

impl Core {
    /// Carries out every pending action, drains events and re-arms the
    /// timer. `own` names the request of the calling task: its start and
    /// answer go to `mine`, not to its slot (`mine` is the caller's, so
    /// nothing large is returned); hook events are pushed to `hooks` when
    /// it is `Some`; probes to spawn go to `probes`.
    ///
    /// Up to `claim` started requests whose callers parked them are
    /// claimed for the calling task to run ([`Own::claimed`]); the others'
    /// callers are to be woken ([`Own::wake`]).
    pub(crate) fn after_input(
        &mut self,
        own: Option<RequestKey>,
        mine: &mut Own,
        probes: &mut Vec<ProbeJob>,
        signals: &LaneSignals,
        mut claim: usize,
    ) {
        // Events first: a `StopWorker` below forgets the worker's id.
        self.drain_events(signals, &mut mine.notes);
        // The request whose `Abort` was the last action (its answer comes
        // next).
        let mut aborted = None;
        while let Some(action) = self.pool.poll_action() {
            match action {
                Action::Start {
                    request,
                    worker,
                    payload,
                    may_retry,
                    ..
                } => {
                    let Some(entry) = self.workers.get(&worker) else {
                        debug_assert!(false, "start on an unknown worker");
                        continue;
                    };
                    mine.notes.started(&entry.cell.meter);
                    // Made an instant only if the handler asks.
                    let deadline = self.pool.cutoff(request).unwrap_or(Time::MAX);
                    let started = Started {
                        worker: Arc::clone(&entry.cell),
                        live: self.live.start(),
                        may_retry,
                        deadline,
                    };
                    if own == Some(request) {
                        mine.started = Some(started);
                        continue;
                    }
                    let mut inner = payload.lock();
                    if self.pool_tasks {
                        match inner.parked.take_or_copy(may_retry) {
                            Some(parked) => {
                                drop(inner);
                                if mine.here == Some(worker) {
                                    let Started { live, deadline, .. } = started;
                                    mine.jobs.push(Job {
                                        key: request,
                                        request: parked,
                                        live,
                                        deadline,
                                    });
                                } else {
                                    started.dispatch(request, parked, &mut mine.wake);
                                }
                            }
                            // Its caller holds the request while its hooks
                            // run; it dispatches it once they are done.
                            None => {
                                inner.run = Run::Granted(started);
                                if let Some(waker) = inner.take_waker() {
                                    mine.wake.push(waker);
                                }
                            }
                        }
                        continue;
                    }
                    let claimed = if claim > 0 { inner.parked.take() } else { None };
                    match claimed {
                        Some(parked) => {
                            claim -= 1;
                            inner.run = Run::Claimed;
                            let waker = inner.waker();
                            drop(inner);
                            mine.claimed.push(Claimed {
                                key: request,
                                slot: payload,
                                worker: started.worker,
                                request: parked,
                                waker,
                                live: started.live,
                                deadline: started.deadline,
                            });
                        }
                        None => {
                            inner.run = Run::Granted(started);
                            if let Some(waker) = inner.take_waker() {
                                mine.wake.push(waker);
                            }
                        }
                    }
                }
                // The answer of an aborted request follows in the same batch
                // and reaches its slot, which stops a handler its caller's
                // task runs; a worker task is told through its inbox.
                Action::Abort { request, worker } => {
                    aborted = Some(request);
                    if self.pool_tasks {
                        if let Some(entry) = self.workers.get(&worker) {
                            entry.cell.inbox.abort(request, &mut mine.wake);
                        }
                    }
                }
                Action::Answer(answer) => {
                    let slot = answer.payload;
                    let worker = self
                        .workers
                        .get(&answer.worker)
                        .map(|entry| Arc::clone(&entry.cell));
                    if let Some(worker) = &worker {
                        mine.notes.answered(&worker.meter, answer.phase);
                    }
                    let delivered = Delivered {
                        worker,
                        result: answer.result,
                        queued_for: answer.queued_for,
                        ran_for: match answer.phase {
                            Phase::Running => answer.ran_for,
                            Phase::Queued => None,
                        },
                        attempts: answer.attempts,
                        phase: answer.phase,
                        limit: answer.limit,
                        aborted: aborted.take() == Some(answer.request),
                    };
                    if own == Some(answer.request) {
                        mine.answer = Some(delivered);
                    } else {
                        slot.update(&mut mine.wake, |inner| inner.answer = Some(delivered));
                    }
                }
                Action::RunProbe { worker, probe } => {
                    if let Some(entry) = self.workers.get_mut(&worker) {
                        let (handle, registration) = AbortHandle::new_pair();
                        if let Some((_, old)) = entry.probe.replace((probe, handle)) {
                            old.abort();
                        }
                        probes.push(ProbeJob {
                            worker,
                            probe,
                            handler: Arc::clone(&entry.cell.handler),
                            registration,
                            live: self.live.start(),
                        });
                    }
                }
                Action::AbortProbe { worker, probe } => {
                    if let Some(entry) = self.workers.get_mut(&worker) {
                        if entry.probe.as_ref().is_some_and(|(key, _)| *key == probe) {
                            if let Some((_, handle)) = entry.probe.take() {
                                handle.abort();
                            }
                        }
                    }
                }
                Action::RestartWorker { worker } => {
                    // The core already aborted its running requests and its
                    // probe; a handler is stateless from the pool's view, so
                    // the fresh execution context is the next `Start`.
                    let _ = worker;
                }
                // The caller has the circuit breaker place its request anew.
                Action::Revet { payload, .. } => {
                    payload.update(&mut mine.wake, |inner| inner.revet = true);
                }
                Action::StopWorker { worker } => {
                    if let Some(entry) = self.workers.remove(&worker) {
                        mine.notes.stopped(&self.meter, entry.status);
                        if let Some((_, handle)) = entry.probe {
                            handle.abort();
                        }
                        entry.cell.inbox.close(&mut mine.wake);
                        // Its handler's `Drop` is user code: after the lock.
                        mine.release.push(entry.cell);
                    }
                }
                // `Action` is `#[non_exhaustive]`, but this driver meets no
                // variant it was not written for: the workspace pins
                // foreman-core at its exact version (`=` in the root
                // `Cargo.toml`), so a new action comes with a driver that
                // carries it out.
                _ => unreachable!("an action of a foreman-core this driver was not built with"),
            }
        }
        self.rearm(signals);
        if !self.room_waiters.is_empty()
            && (self.pool.would_admit() || self.pool.is_shutting_down())
        {
            for waker in self.room_waiters.drain(..) {
                mine.wake.push(waker);
            }
        }
        if self.publish_load {
            signals
                .idle
                .store(self.pool.idle_workers(), Ordering::Relaxed);
            signals
                .eligible
                .store(self.pool.eligible_workers(), Ordering::Relaxed);
            signals
                .pending
                .store(self.pool.pending(), Ordering::Relaxed);
            signals.workers.store(self.workers.len(), Ordering::Relaxed);
            signals
                .queued
                .store(self.pool.movable_requests(), Ordering::Relaxed);
            signals
                .schedulable
                .store(self.pool.schedulable_workers(), Ordering::Relaxed);
        }
    }

    /// The id of a worker ("" if it is gone).
    pub(crate) fn id_of(&self, worker: WorkerKey) -> Arc<str> {
        self.workers
            .get(&worker)
            .map_or_else(|| Arc::from(""), |entry| Arc::clone(&entry.cell.id))
    }

    /// Tells the timer task about an earlier deadline.
    pub(crate) fn rearm(&mut self, signals: &LaneSignals) {
        if let Some(at) = self.pool.move_timer(self.armed) {
            self.armed = at;
            signals.target.store(at.as_nanos(), Ordering::Release);
            signals.waker.wake();
        }
    }
}

/// A `HashMap` with a cheap hasher for the core's small integer keys.
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<KeyHasher>>;

/// Multiplicative hasher for keys that are already unique small integers.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }
}
