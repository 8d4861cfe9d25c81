//! Worker tasks: how [`ExecutionMode::PoolTasks`] runs handlers.
//!
//! Each worker has a task on the pool's runtime and an [`Inbox`]. Whoever
//! carries out the core's `Start` for a request (the submitting caller, a
//! completing worker task, the timer task, a command) puts a [`Job`] into
//! the worker's inbox and wakes its task, which runs the handler: on the
//! pool's runtime, whether or not the caller polls. A worker task that
//! completes a request carries out the completion's actions itself, and a
//! request the core starts next on the same worker is run at once, without
//! a wake-up. Each handler is polled with a waker of its own
//! ([`ready`](self::ready)): a wake of one handler schedules that handler
//! alone, so a worker running many requests polls only those that can
//! progress. The core's `Abort` reaches the task through the inbox too: it
//! drops that handler future. A handler that hands its request back with
//! [`refuse_not_started`](crate::refuse_not_started) in the poll that
//! returns its error has its run reported as a refusal
//! ([`crate::refusal`]).

use std::panic::AssertUnwindSafe;
use std::sync::Weak;
use std::task::{Context, Poll};

use foreman_core::{RequestKey, WorkerErrorCode, WorkerKey, WorkerProtocolError, WorkerRequest};
use futures_util::future::poll_fn;

use crate::handler::{OwnedHandlerFuture, WorkerHandler};
use crate::live::LiveGuard;
use crate::refusal::Outcome;
use crate::sync::{AtomicWaker, FastMutex};
use crate::trace::RequestSpan;
use crate::wakers::Wakers;

mod ready;
use ready::Handlers;

/// Where the driver runs handler futures (a foreman driver option, set
/// with [`DriverOptions::execution`](crate::DriverOptions::execution);
/// [`WorkerPool::with_driver_options`](crate::WorkerPool::with_driver_options)
/// shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ExecutionMode {
    /// Each worker has a task on the pool's runtime that runs the handlers
    /// the core grants it (the default). A handler progresses whether or
    /// not its caller polls, always runs in the pool's runtime context
    /// (tokio timers and I/O work even when the caller is on another
    /// executor), and never delays another caller's answer.
    #[default]
    PoolTasks,
    /// The handler runs inside the task of the caller that submitted it
    /// (or, for its first poll, of the task that freed its worker): no task
    /// hop, so one caller alone gets the lowest latency. Caveats: a handler
    /// progresses only while that task polls `submit` (a caller that polls
    /// once and then does other work holds its worker), runs in the
    /// caller's runtime context (a caller on another executor breaks
    /// handlers that need the pool's runtime), and a task that frees a
    /// worker polls another caller's handler once before answering its own.
    /// A pool with circuit-breaker hooks runs handlers on worker tasks in
    /// either mode (its callers run the hooks while their handlers run).
    CallerTask,
}

/// A request granted to a worker, waiting in its inbox.
pub(crate) struct Job {
    pub(crate) key: RequestKey,
    pub(crate) request: WorkerRequest,
    /// Counts the handler as live until it ends.
    pub(crate) live: LiveGuard,
    /// When the core cuts the handler off (`Pool::cutoff`, `Time::MAX`
    /// for never).
    pub(crate) deadline: foreman_core::Time,
}

/// A worker's mailbox: granted requests, aborts and its task's waker.
#[derive(Default)]
pub(crate) struct Inbox {
    state: FastMutex<InboxState>,
    waker: AtomicWaker,
}

#[derive(Default)]
struct InboxState {
    jobs: Vec<Job>,
    aborts: Vec<RequestKey>,
    /// The places of the task's handlers woken since it last looked
    /// ([`ready`](self::ready)).
    ready: Vec<usize>,
    closed: bool,
}

impl Inbox {
    /// Queues `job`; the task's waker goes to `wake` (woken once the
    /// caller's locks are released). Out of line: inlined into
    /// `Started::dispatch`, the job is copied once more on its way in.
    #[inline(never)]
    pub(crate) fn push(&self, job: Job, wake: &mut Wakers) {
        self.state.lock().jobs.push(job);
        wake.extend(self.waker.take());
    }

    /// Asks the task to drop the handler of `key` (a key that names no
    /// handler of this worker is ignored).
    pub(crate) fn abort(&self, key: RequestKey, wake: &mut Wakers) {
        self.state.lock().aborts.push(key);
        wake.extend(self.waker.take());
    }

    /// Tells the task to drop what it runs and end.
    pub(crate) fn close(&self, wake: &mut Wakers) {
        self.state.lock().closed = true;
        wake.extend(self.waker.take());
    }

    /// Schedules the handler at `place` of the task and wakes the task (a
    /// handler's waker calls this; no lock of the caller's is involved).
    fn ready(&self, place: usize) {
        self.state.lock().ready.push(place);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// A handler the worker task is running.
struct Running {
    key: RequestKey,
    future: OwnedHandlerFuture,
    /// Dropped right after `future`.
    live: LiveGuard,
}

impl Running {
    /// The handler future of `job` on the worker named `id`, in the
    /// request's span, looked up in its slot through the core of `lane`
    /// (see [`crate::trace::in_span`]; created with no lock held:
    /// recording the worker in the span calls its subscriber).
    #[inline(never)]
    fn new<C: Completer>(
        handler: &std::sync::Arc<dyn WorkerHandler>,
        id: &str,
        job: Job,
        pool: &Weak<C>,
        lane: usize,
    ) -> Self {
        let Job {
            key,
            request,
            live,
            deadline,
        } = job;
        let handler = std::sync::Arc::clone(handler);
        let deadline = crate::deadline::Deadline::new(deadline, live.epoch());
        let within =
            crate::deadline::within(deadline, async move { handler.handle(request).await });
        let future = crate::trace::in_span(|| span_of(pool, lane, key), id, within);
        Running { key, future, live }
    }
}

/// What a worker task needs from the pool: carrying out a completion.
pub(crate) trait Completer: Send + Sync + 'static {
    /// Feeds a finished handler's result, or its refusal, to the core of
    /// `lane`; requests the core starts next on this worker come back in
    /// `next`.
    fn complete_on_worker(
        self: &std::sync::Arc<Self>,
        lane: usize,
        worker: WorkerKey,
        key: RequestKey,
        outcome: Outcome,
        next: &mut Vec<Job>,
    );

    /// The span of the request whose attempt `key` (its own key, or a
    /// hedge's) runs on `lane`, looked up in its slot (called only while
    /// some request span exists, with no lock held); none if the lane no
    /// longer holds the attempt.
    fn handler_span(self: &std::sync::Arc<Self>, lane: usize, key: RequestKey) -> RequestSpan {
        let _ = (lane, key);
        RequestSpan::default()
    }
}

/// The task of one worker: runs the jobs of its inbox until it is closed.
pub(crate) async fn worker_task<C: Completer>(
    pool: Weak<C>,
    lane: usize,
    worker: WorkerKey,
    id: std::sync::Arc<str>,
    handler: std::sync::Arc<dyn WorkerHandler>,
    inbox: std::sync::Arc<Inbox>,
) {
    let mut handlers = Handlers::new(std::sync::Arc::clone(&inbox));
    // Jobs, aborts and wakes taken from the inbox, carried out once its
    // lock is released.
    let mut arrived: Vec<Job> = Vec::new();
    let mut aborts: Vec<RequestKey> = Vec::new();
    let mut woken: Vec<usize> = Vec::new();
    let mut finished: Vec<(RequestKey, Outcome)> = Vec::new();
    let mut next: Vec<Job> = Vec::new();
    let mut aborted: Vec<Running> = Vec::new();
    poll_fn(move |cx: &mut Context<'_>| {
        let mut budget = WORKER_BUDGET;
        loop {
            inbox.waker.register(cx.waker());
            let closed = {
                let mut state = inbox.state.lock();
                std::mem::swap(&mut state.jobs, &mut arrived);
                std::mem::swap(&mut state.aborts, &mut aborts);
                std::mem::swap(&mut state.ready, &mut woken);
                state.closed
            };
            handlers.woken(&mut woken);
            // Started with no lock held; the aborts were taken with the
            // jobs, so each finds its job.
            for job in arrived.drain(..) {
                handlers.insert(Running::new(&handler, &id, job, &pool, lane));
            }
            for key in aborts.drain(..) {
                aborted.extend(handlers.remove_key(key));
            }
            // Handler futures are user code: dropped with no lock held.
            if closed {
                handlers.drain_into(&mut aborted);
            }
            drop_handlers(&mut aborted);
            if closed {
                return Poll::Ready(());
            }
            while let Some((place, run, waker)) = handlers.next_due() {
                let mut own = Context::from_waker(waker);
                // The handler future is `Within`: its poll forgets a
                // refusal an earlier poll left behind.
                let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    run.future.as_mut().poll(&mut own)
                }));
                let outcome = match polled {
                    Ok(Poll::Pending) => continue,
                    Ok(Poll::Ready(result)) => Outcome::of(result),
                    Err(panic) => Outcome::of(Err(panic_error(&*panic))),
                };
                if let Some(Running { key, future, live }) = handlers.remove(place) {
                    drop(future);
                    drop(live);
                    finished.push((key, outcome));
                }
            }
            if finished.is_empty() {
                return Poll::Pending;
            }
            match pool.upgrade() {
                Some(pool) => {
                    for (key, outcome) in finished.drain(..) {
                        pool.complete_on_worker(lane, worker, key, outcome, &mut next);
                    }
                }
                None => finished.clear(),
            }
            for job in next.drain(..) {
                handlers.insert(Running::new(&handler, &id, job, &pool, lane));
            }
            budget -= 1;
            if budget == 0 {
                // Let the callers just answered (and the runtime) have the
                // thread before the next stretch.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    })
    .await;
}

/// Completions a worker task carries out in one poll before it yields to
/// its runtime (tokio's coop budget, which also bounds how long a channel
/// consumer task runs in one go).
const WORKER_BUDGET: u32 = 128;

/// The span of the request whose attempt `key` runs on `lane`, from its
/// slot.
fn span_of<C: Completer>(pool: &Weak<C>, lane: usize, key: RequestKey) -> RequestSpan {
    pool.upgrade()
        .map(|pool| pool.handler_span(lane, key))
        .unwrap_or_default()
}

/// Drops aborted handlers, each future before its live guard.
fn drop_handlers(aborted: &mut Vec<Running>) {
    for Running { future, live, .. } in aborted.drain(..) {
        drop(future);
        drop(live);
    }
}

/// The `ExecutionFailed` error a panicking handler is answered with.
pub(crate) fn panic_error(panic: &(dyn std::any::Any + Send)) -> WorkerProtocolError {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string());
    WorkerProtocolError::new(
        WorkerErrorCode::ExecutionFailed,
        format!("worker handler panicked: {detail}"),
        false,
    )
}

/// A request for the driver's own tests.
#[cfg(test)]
pub(crate) fn test_request() -> WorkerRequest {
    WorkerRequest {
        request_id: "r".into(),
        workflow_name: "w".into(),
        node_id: "n".into(),
        timeout_ms: None,
        operation: foreman_core::WorkerOperation::Tool {
            tool: "t".into(),
            input: serde_json::Value::Null,
            scoped_input: serde_json::Value::Null,
        },
    }
}

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod tests;
