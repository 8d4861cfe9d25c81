//! Every interleaving of a worker task's real code with the threads that
//! fill its inbox: a job pushed, aborted or cut off by the inbox's close
//! ends exactly once (completed through the pool, or its handler
//! dropped), the task never misses the wake-up that brings it a job or
//! its close (loom reports a deadlock if it would wait for ever), and the
//! live count is back at zero once the task has ended. A handler woken
//! from another thread, through its own waker, while the inbox gets a
//! job, an abort or its close, is polled again (its completion is never
//! lost), an aborted handler is dropped once and before its live guard,
//! and the close ends the task with every handler dropped.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use foreman_core::{
    Pool, PoolConfig, RequestKey, Time, WorkerKey, WorkerProtocolError, WorkerRequest,
};
use futures::task::noop_waker_ref;
use loom::future::block_on;
use loom::thread;
use serde_json::Value;

use super::{worker_task, Completer, Inbox, Job};
use crate::closure::handler_fn;
use crate::handler::WorkerHandler;
use crate::live::Live;
use crate::sync::{lock, Arc, AtomicBool, AtomicUsize, Mutex, Ordering};
use crate::wakers::Wakers;
use crate::worker::test_request as request;

/// The pool as a worker task sees it: records every completion, and
/// closes `closes` once it has recorded `close_after` of them.
#[derive(Default)]
struct Recorder {
    completed: Mutex<Vec<RequestKey>>,
    closes: Option<std::sync::Arc<Inbox>>,
    close_after: usize,
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
        let done = {
            let mut completed = lock(&self.completed);
            completed.push(key);
            completed.len()
        };
        if let Some(inbox) = self.closes.as_ref().filter(|_| done == self.close_after) {
            let mut wake = Wakers::default();
            inbox.close(&mut wake);
            wake.wake_all();
        }
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

fn job(key: RequestKey, live: &std::sync::Arc<Live>) -> Job {
    Job {
        key,
        request: request(),
        live: live.start(),
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

/// A handler future that waits until its gate opens, leaving its waker
/// in the gate at each poll; counts its drops, and whether each came
/// while its live guard still held.
struct Gated {
    gate: Arc<Gate>,
}

/// What a [`Gated`] future and the thread that opens it share.
struct Gate {
    open: AtomicBool,
    waker: Mutex<Option<std::task::Waker>>,
    made: AtomicUsize,
    dropped: AtomicUsize,
    /// Drops that came after the job's live guard had ended.
    dropped_late: AtomicUsize,
    /// The live count of this gate's job alone (marked stopped).
    live: std::sync::Arc<Live>,
}

impl Gate {
    fn new() -> Arc<Gate> {
        let live = std::sync::Arc::new(Live::default());
        live.mark_stopped();
        Arc::new(Gate {
            open: AtomicBool::new(false),
            waker: Mutex::new(None),
            made: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            dropped_late: AtomicUsize::new(0),
            live,
        })
    }

    /// Opens the gate and wakes the handler through the waker of its last
    /// poll, from whichever thread calls it.
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        let waker = lock(&self.waker).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Future for Gated {
    type Output = Result<Value, WorkerProtocolError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        *lock(&self.gate.waker) = Some(cx.waker().clone());
        if self.gate.open.load(Ordering::SeqCst) {
            Poll::Ready(Ok(Value::Null))
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        self.gate.dropped.fetch_add(1, Ordering::SeqCst);
        if self.gate.live.poll_idle(noop_waker_ref()).is_ready() {
            self.gate.dropped_late.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A handler whose request `i` (its id) waits on `gates[i]`.
fn gated(gates: &[Arc<Gate>]) -> std::sync::Arc<dyn WorkerHandler> {
    let gates: Vec<Arc<Gate>> = gates.iter().map(Arc::clone).collect();
    std::sync::Arc::new(handler_fn(move |request: WorkerRequest| {
        let index: usize = request.request_id.parse().unwrap_or(0);
        let gate = Arc::clone(&gates[index]);
        gate.made.fetch_add(1, Ordering::SeqCst);
        Gated { gate }
    }))
}

/// The job of request `index` (keyed `key`), counted in its gate's live
/// count.
fn gated_job(index: usize, key: RequestKey, gate: &Gate) -> Job {
    let mut job = job(key, &gate.live);
    job.request.request_id = index.to_string();
    job
}

/// Pushes `job` into `inbox`, its wake-up told once the push is done.
fn push_job(inbox: &Inbox, job: Job) {
    let mut wake = Wakers::default();
    inbox.push(job, &mut wake);
    wake.wake_all();
}

/// Two distinct request keys on one worker.
fn two_keys() -> (WorkerKey, RequestKey, RequestKey) {
    let mut core: Pool<()> = Pool::new(PoolConfig::default(), Time::ZERO).expect("config");
    let worker = core.add_worker(Time::ZERO).expect("worker");
    core.add_worker(Time::ZERO).expect("worker");
    let first = core.submit(Time::ZERO, &request(), ()).expect("admitted");
    let second = core.submit(Time::ZERO, &request(), ()).expect("admitted");
    (worker, first, second)
}

/// A waiting handler opened (and woken through its own waker) from one
/// thread while another pushes a second job: the task polls the woken
/// handler again and completes both (a lost wake-up would leave the task
/// waiting for ever, which loom reports), then the close that the second
/// completion triggers ends it.
#[test]
fn a_handler_woken_while_a_job_is_pushed_completes() {
    let (worker, first, second) = two_keys();
    loom::model(move || {
        let gates = [Gate::new(), Gate::new()];
        gates[1].open.store(true, Ordering::SeqCst);
        let inbox = std::sync::Arc::new(Inbox::default());
        let recorder = std::sync::Arc::new(Recorder {
            closes: Some(std::sync::Arc::clone(&inbox)),
            close_after: 2,
            ..Recorder::default()
        });
        push_job(&inbox, gated_job(0, first, &gates[0]));
        let task = spawn_task(&recorder, worker, gated(&gates), &inbox);
        let opener = {
            let gate = Arc::clone(&gates[0]);
            thread::spawn(move || gate.open())
        };
        push_job(&inbox, gated_job(1, second, &gates[1]));
        opener.join().expect("opener");
        task.join().expect("the worker task ends");
        let completed = lock(&recorder.completed).clone();
        assert_eq!(completed.len(), 2, "completed {completed:?}");
        assert!(completed.contains(&first) && completed.contains(&second));
        for gate in &gates {
            assert_eq!(gate.made.load(Ordering::SeqCst), 1);
            assert_eq!(gate.dropped.load(Ordering::SeqCst), 1);
            assert_eq!(gate.dropped_late.load(Ordering::SeqCst), 0);
            assert_idle(&gate.live);
        }
    });
}

/// One waiting handler aborted from one thread while another handler of
/// the task is opened from another: the aborted one is dropped exactly
/// once (or never made), before its live guard, and never completes; the
/// woken one completes, and its completion closes the task.
#[test]
fn an_abort_racing_another_handlers_wake_drops_only_the_aborted_one() {
    let (worker, first, second) = two_keys();
    loom::model(move || {
        let gates = [Gate::new(), Gate::new()];
        let inbox = std::sync::Arc::new(Inbox::default());
        let recorder = std::sync::Arc::new(Recorder {
            closes: Some(std::sync::Arc::clone(&inbox)),
            close_after: 1,
            ..Recorder::default()
        });
        push_job(&inbox, gated_job(0, first, &gates[0]));
        push_job(&inbox, gated_job(1, second, &gates[1]));
        let task = spawn_task(&recorder, worker, gated(&gates), &inbox);
        let aborter = {
            let inbox = std::sync::Arc::clone(&inbox);
            thread::spawn(move || {
                let mut wake = Wakers::default();
                inbox.abort(first, &mut wake);
                wake.wake_all();
            })
        };
        gates[1].open();
        aborter.join().expect("aborter");
        task.join().expect("the worker task ends");
        assert_eq!(*lock(&recorder.completed), vec![second]);
        let aborted = &gates[0];
        assert_eq!(
            aborted.dropped.load(Ordering::SeqCst),
            aborted.made.load(Ordering::SeqCst)
        );
        assert!(aborted.made.load(Ordering::SeqCst) <= 1);
        for gate in &gates {
            assert_eq!(gate.dropped_late.load(Ordering::SeqCst), 0);
            assert_idle(&gate.live);
        }
    });
}

/// A handler opened from another thread while the inbox is closed: the
/// task ends, its handler completed or dropped (never both, before its
/// live guard), whichever the task saw first.
#[test]
fn a_close_racing_a_handlers_wake_ends_the_task_with_it_dropped() {
    let (worker, key) = keys();
    loom::model(move || {
        let gate = Gate::new();
        let inbox = std::sync::Arc::new(Inbox::default());
        let recorder = std::sync::Arc::new(Recorder::default());
        push_job(&inbox, gated_job(0, key, &gate));
        let task = spawn_task(
            &recorder,
            worker,
            gated(std::slice::from_ref(&gate)),
            &inbox,
        );
        let opener = {
            let gate = Arc::clone(&gate);
            thread::spawn(move || gate.open())
        };
        let mut wake = Wakers::default();
        inbox.close(&mut wake);
        wake.wake_all();
        opener.join().expect("opener");
        task.join().expect("the worker task ends");
        assert!(lock(&recorder.completed).len() <= 1);
        assert_eq!(
            gate.dropped.load(Ordering::SeqCst),
            gate.made.load(Ordering::SeqCst)
        );
        assert_eq!(gate.dropped_late.load(Ordering::SeqCst), 0);
        assert_idle(&gate.live);
    });
}
