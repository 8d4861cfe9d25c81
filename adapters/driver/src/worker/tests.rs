//! A worker task driven by hand, poll by poll: which handlers a wake-up
//! polls, and what an abort or a panic among several handlers ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use foreman_core::{
    Pool, PoolConfig, RequestKey, Time, WorkerErrorCode, WorkerKey, WorkerProtocolError,
    WorkerRequest,
};
use futures::task::noop_waker_ref;
use serde_json::Value;

use super::{worker_task, Completer, Inbox, Job};
use crate::closure::handler_fn;
use crate::live::Live;
use crate::refusal::Outcome;
use crate::wakers::Wakers;
use crate::worker::test_request as request;

/// The pool as a worker task sees it: records each completion's result.
#[derive(Default)]
struct Recorder {
    completed: Mutex<Vec<(RequestKey, Result<Value, WorkerProtocolError>)>>,
}

impl Completer for Recorder {
    fn complete_on_worker(
        self: &Arc<Self>,
        _lane: usize,
        _worker: WorkerKey,
        key: RequestKey,
        outcome: Outcome,
        _next: &mut Vec<Job>,
    ) {
        if let Outcome::Finished(result) = outcome {
            self.completed.lock().unwrap().push((key, result));
        }
    }
}

/// What the test knows of the handler of request `i`: how often it was
/// polled, its last waker, whether it may finish (or panic), whether its
/// future was dropped, and the live count of its job alone.
#[derive(Default)]
struct Probe {
    polls: AtomicUsize,
    waker: Mutex<Option<Waker>>,
    open: AtomicBool,
    panics: AtomicBool,
    dropped: AtomicBool,
    /// Set when the future was dropped while its live guard still held.
    dropped_before_guard: AtomicBool,
    live: Arc<Live>,
}

impl Probe {
    /// Wakes the handler through the waker of its last poll.
    fn wake(&self) {
        if let Some(waker) = self.waker.lock().unwrap().as_ref() {
            waker.wake_by_ref();
        }
    }
}

/// A handler future pending until its probe opens.
struct Gate(Arc<Probe>);

impl Future for Gate {
    type Output = Result<Value, WorkerProtocolError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let probe = &self.0;
        probe.polls.fetch_add(1, Ordering::SeqCst);
        *probe.waker.lock().unwrap() = Some(cx.waker().clone());
        if probe.panics.load(Ordering::SeqCst) {
            panic!("handler failed on purpose");
        }
        if probe.open.load(Ordering::SeqCst) {
            Poll::Ready(Ok(Value::Null))
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.0.dropped.store(true, Ordering::SeqCst);
        // The job's lane is marked stopped: it is idle only once the guard
        // has been dropped too.
        let guard_held = self.0.live.poll_idle(noop_waker_ref()).is_pending();
        self.0
            .dropped_before_guard
            .store(guard_held, Ordering::SeqCst);
    }
}

/// A worker task over `n` handlers (request `i` runs the handler of
/// `probes[i]`), polled by hand.
struct Bench {
    keys: Vec<RequestKey>,
    probes: Vec<Arc<Probe>>,
    inbox: Arc<Inbox>,
    recorder: Arc<Recorder>,
    task: Pin<Box<dyn Future<Output = ()>>>,
}

impl Bench {
    fn new(n: usize) -> Self {
        let (worker, keys) = keys(n);
        let probes: Vec<Arc<Probe>> = (0..n).map(|_| Arc::new(Probe::default())).collect();
        for probe in &probes {
            probe.live.mark_stopped();
        }
        let handler = {
            let probes = probes.clone();
            Arc::new(handler_fn(move |request: WorkerRequest| {
                let index: usize = request.request_id.parse().expect("an index");
                Gate(Arc::clone(&probes[index]))
            }))
        };
        let inbox = Arc::new(Inbox::default());
        let recorder = Arc::new(Recorder::default());
        let task = Box::pin(worker_task(
            Arc::downgrade(&recorder),
            0,
            worker,
            "worker".into(),
            handler,
            Arc::clone(&inbox),
        ));
        let bench = Bench {
            keys,
            probes,
            inbox,
            recorder,
            task,
        };
        for index in 0..n {
            bench.push(index);
        }
        bench
    }

    fn push(&self, index: usize) {
        let mut request = request();
        request.request_id = index.to_string();
        let job = Job {
            key: self.keys[index],
            request,
            live: self.probes[index].live.start(),
            deadline: foreman_core::Time::MAX,
        };
        let mut wake = Wakers::default();
        self.inbox.push(job, &mut wake);
        wake.wake_all();
    }

    fn abort(&self, index: usize) {
        let mut wake = Wakers::default();
        self.inbox.abort(self.keys[index], &mut wake);
        wake.wake_all();
    }

    fn poll(&mut self) -> Poll<()> {
        self.task
            .as_mut()
            .poll(&mut Context::from_waker(noop_waker_ref()))
    }

    fn polls(&self, index: usize) -> usize {
        self.probes[index].polls.load(Ordering::SeqCst)
    }

    fn result(&self, index: usize) -> Option<Result<Value, WorkerProtocolError>> {
        let completed = self.recorder.completed.lock().unwrap();
        completed
            .iter()
            .find(|(key, _)| *key == self.keys[index])
            .map(|(_, result)| result.clone())
    }
}

/// A worker key and `n` distinct request keys, from a core of their own.
fn keys(n: usize) -> (WorkerKey, Vec<RequestKey>) {
    let mut core: Pool<()> = Pool::new(PoolConfig::default(), Time::ZERO).expect("config");
    let worker = core.add_worker(Time::ZERO).expect("worker");
    for _ in 1..n {
        core.add_worker(Time::ZERO).expect("worker");
    }
    let keys = (0..n)
        .map(|_| core.submit(Time::ZERO, &request(), ()).expect("admitted"))
        .collect();
    (worker, keys)
}

#[test]
fn a_wake_of_one_handler_polls_that_handler_alone() {
    let mut bench = Bench::new(8);
    assert!(bench.poll().is_pending());
    for index in 0..8 {
        assert_eq!(bench.polls(index), 1, "handler {index}'s first poll");
    }
    for _ in 0..100 {
        bench.probes[0].wake();
        assert!(bench.poll().is_pending());
    }
    assert_eq!(bench.polls(0), 101);
    for index in 1..8 {
        assert_eq!(
            bench.polls(index),
            1,
            "handler {index} was polled though only handler 0 was woken"
        );
    }
    // A wake-up of the task that names no handler polls none.
    assert!(bench.poll().is_pending());
    assert_eq!(bench.polls(0), 101);
    // The others still progress when they are woken.
    bench.probes[5].open.store(true, Ordering::SeqCst);
    bench.probes[5].wake();
    assert!(bench.poll().is_pending());
    assert_eq!(bench.polls(5), 2);
    assert!(matches!(bench.result(5), Some(Ok(_))));
}

#[test]
fn an_abort_among_ready_handlers_drops_only_its_handler_before_its_guard() {
    let mut bench = Bench::new(3);
    assert!(bench.poll().is_pending());
    for index in 0..3 {
        bench.probes[index].open.store(true, Ordering::SeqCst);
        bench.probes[index].wake();
    }
    bench.abort(1);
    assert!(bench.poll().is_pending());
    assert!(matches!(bench.result(0), Some(Ok(_))));
    assert!(matches!(bench.result(2), Some(Ok(_))));
    assert!(bench.result(1).is_none(), "an aborted handler answered");
    assert_eq!(bench.polls(1), 1, "an aborted handler was polled again");
    assert!(bench.probes[1].dropped.load(Ordering::SeqCst));
    assert!(
        bench.probes[1].dropped_before_guard.load(Ordering::SeqCst),
        "the live guard ended before its handler future"
    );
    for probe in &bench.probes {
        assert!(probe.live.poll_idle(noop_waker_ref()).is_ready());
    }
    // The task goes on with new work after the abort.
    bench.probes[1].open.store(true, Ordering::SeqCst);
    bench.push(1);
    assert!(bench.poll().is_pending());
    assert!(matches!(bench.result(1), Some(Ok(_))));
}

#[test]
fn a_panic_in_one_of_several_handlers_fails_only_its_request() {
    let mut bench = Bench::new(3);
    assert!(bench.poll().is_pending());
    bench.probes[1].panics.store(true, Ordering::SeqCst);
    for index in 0..3 {
        bench.probes[index].open.store(true, Ordering::SeqCst);
        bench.probes[index].wake();
    }
    assert!(bench.poll().is_pending());
    assert!(matches!(bench.result(0), Some(Ok(_))));
    assert!(matches!(bench.result(2), Some(Ok(_))));
    match bench.result(1) {
        Some(Err(error)) => {
            assert_eq!(error.code, WorkerErrorCode::ExecutionFailed);
            assert!(error.message.contains("handler failed on purpose"));
        }
        other => panic!("the panicking handler was answered {other:?}"),
    }
    for probe in &bench.probes {
        assert!(probe.dropped.load(Ordering::SeqCst));
        assert!(probe.live.poll_idle(noop_waker_ref()).is_ready());
    }
}

#[test]
fn a_close_drops_every_handler_and_ends_the_task() {
    let mut bench = Bench::new(4);
    assert!(bench.poll().is_pending());
    bench.probes[2].wake();
    let mut wake = Wakers::default();
    bench.inbox.close(&mut wake);
    wake.wake_all();
    assert!(bench.poll().is_ready());
    for probe in &bench.probes {
        assert!(probe.dropped.load(Ordering::SeqCst));
        assert!(probe.dropped_before_guard.load(Ordering::SeqCst));
        assert!(probe.live.poll_idle(noop_waker_ref()).is_ready());
    }
    assert!(bench.recorder.completed.lock().unwrap().is_empty());
}
