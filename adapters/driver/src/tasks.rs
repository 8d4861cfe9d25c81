//! The pool's own tasks: each worker's task (spawned here, run by
//! `worker.rs`), probe tasks, and each lane's timer task.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use foreman_core::{RequestKey, Time, WorkerHealthStatus, WorkerKey};
use futures_util::future::{poll_fn, Abortable};
use futures_util::FutureExt;

use crate::refusal::Outcome;
use crate::runtime::Runtime;
use crate::shared::Shared;
use crate::started::WorkerCell;
use crate::state::{Own, ProbeJob};
use crate::trace::RequestSpan;
use crate::worker::{worker_task, Completer, Job};

impl<R: Runtime> Shared<R> {
    /// Spawns the timer task of a lane.
    pub(crate) fn start_timer(self: &Arc<Self>, lane: usize) {
        spawn_timer(self, lane);
    }

    pub(crate) fn on_timer(self: &Arc<Self>, lane: usize) {
        let signals = &self.lane(lane).signals;
        self.input(lane, |core, now| {
            core.armed = Time::MAX;
            signals.target.store(u64::MAX, Ordering::Release);
            core.pool.handle_timeout(now);
        });
    }

    /// Spawns the task of a worker ([`ExecutionMode::PoolTasks`]).
    pub(crate) fn spawn_worker(self: &Arc<Self>, lane: usize, cell: Arc<WorkerCell>) {
        let weak = Arc::downgrade(self);
        let (handler, inbox) = (Arc::clone(&cell.handler), Arc::clone(&cell.inbox));
        let id = Arc::clone(&cell.id);
        let task = worker_task(weak, lane, cell.key, id, handler, inbox);
        self.runtime.spawn(Box::pin(task));
    }

    /// Spawns the probes an input asked for (usually none: the check is
    /// inlined, the spawning is not).
    #[inline(always)]
    pub(crate) fn spawn_probes(self: &Arc<Self>, lane: usize, probes: Vec<ProbeJob>) {
        if !probes.is_empty() {
            self.spawn_probe_jobs(lane, probes);
        }
    }

    #[inline(never)]
    pub(crate) fn spawn_probe_jobs(self: &Arc<Self>, lane: usize, probes: Vec<ProbeJob>) {
        for job in probes {
            let weak = Arc::downgrade(self);
            self.runtime.spawn(Box::pin(probe_task(weak, lane, job)));
        }
    }
}

impl<R: Runtime> Completer for Shared<R> {
    fn complete_on_worker(
        self: &Arc<Self>,
        lane: usize,
        worker: WorkerKey,
        key: RequestKey,
        outcome: Outcome,
        next: &mut Vec<Job>,
    ) {
        let lane = self.lane(lane);
        // `next` lends its capacity: no allocation per completion.
        let mut own = Own {
            here: Some(worker),
            jobs: std::mem::take(next),
            ..Own::default()
        };
        self.complete(lane, key, outcome, None, 0, &mut own);
        *next = std::mem::take(&mut own.jobs);
    }

    fn handler_span(self: &Arc<Self>, lane: usize, key: RequestKey) -> RequestSpan {
        let slot = self
            .lane(lane)
            .core
            .lock()
            .pool
            .attempt_payload(key)
            .map(Arc::clone);
        slot.map(|slot| slot.lock().handler_span())
            .unwrap_or_default()
    }
}

async fn probe_task<R: Runtime>(weak: Weak<Shared<R>>, lane: usize, job: ProbeJob) {
    let ProbeJob {
        worker,
        probe,
        handler,
        registration,
        live,
    } = job;
    let probing = AssertUnwindSafe(handler.probe_health()).catch_unwind();
    let outcome = Abortable::new(probing, registration).await;
    drop(live);
    let status = match outcome {
        Ok(Ok(status)) => Some(status),
        Ok(Err(_panic)) => Some(WorkerHealthStatus::Unavailable),
        Err(_aborted) => None,
    };
    let Some(shared) = weak.upgrade() else {
        return;
    };
    shared.input(lane, |core, now| {
        if let Some(entry) = core.workers.get_mut(&worker) {
            if entry.probe.as_ref().is_some_and(|(key, _)| *key == probe) {
                entry.probe = None;
            }
        }
        if let Some(status) = status {
            core.pool.handle_probe_result(now, worker, probe, status);
        }
    });
}

fn spawn_timer<R: Runtime>(shared: &Arc<Shared<R>>, lane: usize) {
    let weak = Arc::downgrade(shared);
    let state = Arc::clone(&shared.lane(lane).signals);
    let epoch = shared.epoch;
    let mut timer = shared.runtime.new_timer(epoch);
    shared.runtime.spawn(Box::pin(async move {
        let mut current = u64::MAX;
        loop {
            let fired = poll_fn(|cx| {
                state.waker.register(cx.waker());
                if state.closed.load(Ordering::Acquire) {
                    return Poll::Ready(false);
                }
                let target = state.target.load(Ordering::Acquire);
                if target != current {
                    current = target;
                    if target != u64::MAX {
                        timer.as_mut().reset(epoch + Duration::from_nanos(target));
                    }
                }
                if current == u64::MAX {
                    return Poll::Pending;
                }
                timer.as_mut().poll(cx).map(|()| true)
            })
            .await;
            if !fired {
                return;
            }
            current = u64::MAX;
            let Some(shared) = weak.upgrade() else {
                return;
            };
            shared.on_timer(lane);
        }
    }));
}
