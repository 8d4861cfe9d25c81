//! What a started request carries between the core's lock, its slot and
//! its worker's task: the worker's cell, the start (with its place in the
//! live count), the handler future and the final answer.

use std::sync::Arc;
use std::time::Duration;

use foreman_core::{
    Phase, RequestKey, Time, TimeoutLimit, WorkerKey, WorkerPoolError, WorkerRequest,
};
use serde_json::Value;

use crate::handler::WorkerHandler;
use crate::live::LiveGuard;
use crate::meter::WorkerMeter;
use crate::outcome::Ending;
use crate::wakers::Wakers;
use crate::worker::{Inbox, Job};

/// A worker's id and handler. Each request the worker runs and answers
/// holds a reference, so the count changes with every request: the cell
/// has cache lines to itself, or workers of different lanes (run by
/// different threads) would share one. (Two handlers that are small
/// allocations side by side did: the count updates were a quarter of the
/// time spent carrying out the core's actions with two lanes.)
#[repr(align(128))]
pub(crate) struct WorkerCell {
    pub(crate) id: Arc<str>,
    /// Its key in its lane's core.
    pub(crate) key: WorkerKey,
    pub(crate) handler: Arc<dyn WorkerHandler>,
    /// Its task's mailbox (used by [`crate::ExecutionMode::PoolTasks`]).
    pub(crate) inbox: Arc<Inbox>,
    /// Its gauges (the `metrics` feature).
    pub(crate) meter: WorkerMeter,
}

/// A started request: which worker runs it, and its place in the live
/// count (whoever holds it ends the handler).
pub(crate) struct Started {
    pub(crate) worker: Arc<WorkerCell>,
    pub(crate) live: LiveGuard,
    /// This attempt's failure may start the request again (`Action::Start`'s
    /// `may_retry`): whoever hands out the request keeps a copy in its slot.
    pub(crate) may_retry: bool,
    /// When the core cuts the handler off (`Pool::cutoff`, `Time::MAX`
    /// for never; [`crate::handler_deadline`] says it as an instant).
    pub(crate) deadline: Time,
}

impl Started {
    /// Hands the request to its worker's task
    /// ([`crate::ExecutionMode::PoolTasks`]), which finds its span in its
    /// slot.
    pub(crate) fn dispatch(self, key: RequestKey, request: WorkerRequest, wake: &mut Wakers) {
        let Started {
            worker,
            live,
            deadline,
            ..
        } = self;
        let job = Job {
            key,
            request,
            live,
            deadline,
        };
        worker.inbox.push(job, wake);
    }
}

/// The final answer of a request, with its worker (if it still exists).
pub(crate) struct Delivered {
    pub(crate) worker: Option<Arc<WorkerCell>>,
    pub(crate) result: Result<Value, WorkerPoolError>,
    pub(crate) queued_for: Duration,
    pub(crate) ran_for: Option<Duration>,
    /// Times its handler was started.
    pub(crate) attempts: u32,
    /// Where the request was when it was answered.
    pub(crate) phase: Phase,
    /// For a `Timeout`, the limit that fired.
    pub(crate) limit: Option<TimeoutLimit>,
    /// The core aborted its handler just before answering it.
    pub(crate) aborted: bool,
}

impl Delivered {
    /// How this answer ended its request; `cancelled` says that the core
    /// answered it because its caller cancelled it.
    pub(crate) fn ending(&self, cancelled: bool) -> Ending {
        let phase = self.phase;
        match &self.result {
            Ok(_) => Ending::Succeeded,
            Err(WorkerPoolError::Timeout) => Ending::TimedOut(phase),
            Err(WorkerPoolError::ShuttingDown) => Ending::ShutDown(phase),
            Err(_) if cancelled => Ending::Cancelled(phase),
            Err(_) if self.aborted => Ending::Restarted,
            Err(_) => match phase {
                Phase::Running => Ending::Failed,
                Phase::Queued => Ending::Unroutable,
            },
        }
    }
}

/// The id of `worker` ("" if it is gone).
pub(crate) fn worker_id(worker: Option<&WorkerCell>) -> &str {
    worker.map_or("", |worker| &worker.id)
}
