//! Every interleaving of a worker task's real code with the threads that
//! fill its inbox: a job pushed, aborted or cut off by the inbox's close
//! ends exactly once (completed through the pool, or its handler
//! dropped), the task never misses the wake-up that brings it a job or
//! its close (loom reports a deadlock if it would wait for ever), and the
//! live count is back at zero once the task has ended.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use foreman_core::{
    Pool, PoolConfig, RequestKey, Time, WorkerKey, WorkerOperation, WorkerProtocolError,
    WorkerRequest,
};
use futures::task::noop_waker_ref;
use loom::future::block_on;
use loom::thread;
use serde_json::Value;

use super::{worker_task, Completer, Inbox, Job};
use crate::closure::handler_fn;
use crate::handler::WorkerHandler;
use crate::live::Live;
use crate::sync::{lock, Arc, AtomicUsize, Mutex, Ordering};
use crate::trace::RequestSpan;
use crate::wakers::Wakers;

/// The pool as a worker task sees it: records every completion.
#[derive(Default)]
struct Recorder {
    completed: Mutex<Vec<RequestKey>>,
}

impl Completer for Recorder {
    fn complete_on_worker(
        self: &std::sync::Arc<Self>,
        _lane: usize,
        _worker: WorkerKey,
        key: RequestKey,
        _outcome: crate::refusal::Outcome,
        _next: &mut Vec<Job>,
    ) {
        lock(&self.completed).push(key);
    }
}

/// A handler future that is ready at once, or never (`hangs`), and counts
/// its drop.
struct Counted {
    hangs: bool,
    dropped: Arc<AtomicUsize>,
}

impl Future for Counted {
    type Output = Result<Value, WorkerProtocolError>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        if self.hangs {
            Poll::Pending
        } else {
            Poll::Ready(Ok(Value::Null))
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// A handler whose futures are [`Counted`].
fn handler(hangs: bool, dropped: &Arc<AtomicUsize>) -> std::sync::Arc<dyn WorkerHandler> {
    let dropped = Arc::clone(dropped);
    std::sync::Arc::new(handler_fn(move |_request: WorkerRequest| Counted {
        hangs,
        dropped: Arc::clone(&dropped),
    }))
}

/// A worker key and a request key, from a core of their own (outside the
/// model: the core is sans-IO and shares nothing).
fn keys() -> (WorkerKey, RequestKey) {
    let mut core: Pool<()> = Pool::new(PoolConfig::default(), Time::ZERO).expect("config");
    let worker = core.add_worker(Time::ZERO).expect("worker");
    let request = core
        .submit(Time::ZERO, &request(), ())
        .expect("an idle worker takes it");
    (worker, request)
}

fn request() -> WorkerRequest {
    WorkerRequest {
        request_id: "r".into(),
        workflow_name: "w".into(),
        node_id: "n".into(),
        timeout_ms: None,
        operation: WorkerOperation::Tool {
            tool: "t".into(),
            input: Value::Null,
            scoped_input: Value::Null,
        },
    }
}

fn job(key: RequestKey, live: &std::sync::Arc<Live>) -> Job {
    Job {
        key,
        request: request(),
        live: live.start(),
        span: RequestSpan::default(),
        deadline: foreman_core::Time::MAX,
    }
}

/// Runs a worker task over `inbox` on a thread of the model until its
/// inbox is closed.
fn spawn_task(
    recorder: &std::sync::Arc<Recorder>,
    worker: WorkerKey,
    handler: std::sync::Arc<dyn WorkerHandler>,
    inbox: &std::sync::Arc<Inbox>,
) -> thread::JoinHandle<()> {
    let pool = std::sync::Arc::downgrade(recorder);
    let inbox = std::sync::Arc::clone(inbox);
    thread::spawn(move || {
        block_on(worker_task(
            pool,
            0,
            worker,
            "worker".into(),
            handler,
            inbox,
        ));
    })
}

/// What each model shares: the live count, the pool's record of
/// completions, the count of dropped handler futures, the worker's inbox.
struct World {
    live: std::sync::Arc<Live>,
    recorder: std::sync::Arc<Recorder>,
    dropped: Arc<AtomicUsize>,
    inbox: std::sync::Arc<Inbox>,
}

impl World {
    fn new() -> Self {
        World {
            live: std::sync::Arc::new(Live::default()),
            recorder: std::sync::Arc::new(Recorder::default()),
            dropped: Arc::new(AtomicUsize::new(0)),
            inbox: std::sync::Arc::new(Inbox::default()),
        }
    }

    /// Pushes the job of `key` into the inbox, as a lane does: its
    /// wake-up told once the push is done.
    fn push(&self, key: RequestKey) {
        let mut wake = Wakers::default();
        self.inbox.push(job(key, &self.live), &mut wake);
        wake.wake_all();
    }

    /// Closes the inbox, as the pool's drop does.
    fn close(&self) {
        let mut wake = Wakers::default();
        self.inbox.close(&mut wake);
        wake.wake_all();
    }
}

/// Marks the pool stopped and asserts that nothing is live any more.
fn assert_idle(live: &Live) {
    live.mark_stopped();
    assert!(
        live.poll_idle(noop_waker_ref()).is_ready(),
        "the live count did not return to zero"
    );
}

/// A job pushed while the task waits, then the inbox closed: the task
/// runs the job to its completion or drops it at the close, exactly one
/// of the two, and ends.
#[test]
fn a_pushed_job_ends_once_and_the_close_ends_the_task() {
    let (worker, key) = keys();
    loom::model(move || {
        let world = World::new();
        let handler = handler(false, &world.dropped);
        let task = spawn_task(&world.recorder, worker, handler, &world.inbox);
        world.push(key);
        world.close();
        task.join().expect("the worker task ends");
        let completed = lock(&world.recorder.completed).len();
        // A job is dropped unpolled at the close, or polled to its end
        // (its future then dropped too).
        assert!(completed <= 1, "completed {completed} times");
        assert_eq!(world.dropped.load(Ordering::SeqCst), completed);
        assert_idle(&world.live);
    });
}

/// A hanging job aborted from another thread while the task runs it:
/// its handler ends (dropped at most once: not made at all if the abort
/// came before the task's first poll of it), never completes, and the
/// task then ends at the close.
#[test]
fn an_aborted_job_is_dropped_once_and_never_completed() {
    let (worker, key) = keys();
    loom::model(move || {
        let world = World::new();
        world.push(key);
        let handler = handler(true, &world.dropped);
        let task = spawn_task(&world.recorder, worker, handler, &world.inbox);
        let aborter = {
            let inbox = std::sync::Arc::clone(&world.inbox);
            thread::spawn(move || {
                let mut wake = Wakers::default();
                inbox.abort(key, &mut wake);
                wake.wake_all();
            })
        };
        aborter.join().expect("aborter");
        world.close();
        task.join().expect("the worker task ends");
        assert!(lock(&world.recorder.completed).is_empty());
        // Its handler future (made at its first poll) is dropped by the
        // abort or the close, whichever the task saw first, or never made
        // if both came before the task polled the job; the job's live
        // guard ends either way (`assert_idle`).
        assert!(world.dropped.load(Ordering::SeqCst) <= 1);
        assert_idle(&world.live);
    });
}
