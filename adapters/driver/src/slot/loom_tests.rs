//! Every interleaving of the slot's real code where the core's answer,
//! a handler handed back by its claiming task and the caller's wait
//! meet: the caller never misses its wake-up (loom reports a deadlock
//! if it would wait forever), and a handler ends exactly once, before
//! `shutdown` returns, whichever side ends it. A handler that declines its
//! request (`refuse_not_started`) while its caller is cancelled or the pool
//! shuts down puts the request back in the slot, waiting for its next
//! start (a real core decides that start, or the answer): the request is
//! answered exactly once, its next start finds it, and the caller is woken
//! for whichever comes.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use foreman_core::{
    Action, Phase, Pool, PoolConfig, RequestKey, Time, WorkerKey, WorkerProtocolError,
};
use futures::task::noop_waker_ref;
use loom::future::block_on;
use loom::thread;
use serde_json::Value;

use super::{HeldRequest, Run, Slot};
use crate::closure::handler_fn;
use crate::handler::OwnedHandlerFuture;
use crate::live::Live;
use crate::meter::WorkerMeter;
use crate::refusal::Outcome;
use crate::started::{Delivered, Started, WorkerCell};
use crate::sync::{lock, Arc, AtomicUsize, Mutex, Ordering};

use crate::wait::{run_handler, wait_for_notice, wait_for_start, Notice, Wake};
use crate::wakers::Wakers;
use crate::worker::test_request as request;
use crate::worker::Inbox;

/// The core's answer to the request.
fn answer() -> Delivered {
    Delivered {
        worker: None,
        result: Ok(Value::Null),
        queued_for: Duration::ZERO,
        ran_for: None,
        attempts: 1,
        phase: Phase::Running,
        limit: None,
        aborted: false,
    }
}

/// The lane delivers the answer as `Core::after_input` does: into the
/// slot under its lock, then wakes the waiting task with it released.
fn deliver(slot: &Slot) {
    let mut wake = Wakers::default();
    slot.update(&mut wake, |inner| inner.answer = Some(answer()));
    wake.wake_all();
}

/// A handler that waits for ever and counts its drops (its end); also
/// a token a worker's handler holds, to count its end.
struct Handler(Arc<AtomicUsize>);

impl Future for Handler {
    type Output = Result<Value, WorkerProtocolError>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Pending
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A slot whose request a task claimed (its handler counted in `live`,
/// its end in `ended`), and that task on a thread handing back the
/// handler it polled once, as `Shared::run_claimed` does.
fn claimed_and_handed_back(
    live: &Arc<Live>,
    ended: &Arc<AtomicUsize>,
) -> (Arc<Slot>, thread::JoinHandle<()>) {
    let slot = Arc::new(Slot::default());
    slot.lock().run = Run::Claimed;
    let future: OwnedHandlerFuture = Box::pin(Handler(Arc::clone(ended)));
    let guard = live.start();
    let claimer = {
        let slot = Arc::clone(&slot);
        thread::spawn(move || {
            let back = slot.lock().hand_back(future, guard);
            back.finish();
        })
    };
    (slot, claimer)
}

/// The caller's wait for its start, polled once.
fn poll_start_once(slot: &Slot) -> Poll<Wake> {
    let mut waited = false;
    let wait = pin!(wait_for_start(slot, &mut waited));
    wait.poll(&mut Context::from_waker(noop_waker_ref()))
}

/// Asserts that nothing is live any more.
fn assert_idle(live: &Live) {
    assert!(
        live.poll_idle(noop_waker_ref()).is_ready(),
        "the live count did not return to zero"
    );
}

/// The lane answers while the caller waits in its slot: the caller
/// sees the answer, or registers before it is written and is woken.
#[test]
fn an_answer_delivered_while_the_caller_waits_wakes_it() {
    loom::model(|| {
        let slot = Arc::new(Slot::default());
        let lane = {
            let slot = Arc::clone(&slot);
            thread::spawn(move || deliver(&slot))
        };
        let notice = block_on(wait_for_notice(&slot));
        assert!(matches!(notice, Notice::Answered(_)));
        lane.join().expect("lane");
    });
}

/// The lane answers (the core aborted the request) while the caller
/// runs its handler: the caller's wait sees the answer, or registers
/// first and is woken, and drops the handler before it returns.
#[test]
fn an_answer_delivered_while_the_caller_runs_its_handler_stops_it() {
    loom::model(|| {
        let slot = Arc::new(Slot::default());
        let ended = Arc::new(AtomicUsize::new(0));
        let lane = {
            let slot = Arc::clone(&slot);
            thread::spawn(move || deliver(&slot))
        };
        let mut waited = false;
        let handler = Box::pin(Handler(Arc::clone(&ended)));
        let ran = block_on(run_handler(handler, &slot, &mut waited, None));
        assert!(ran.is_none(), "the handler never finishes on its own");
        assert_eq!(ended.load(Ordering::SeqCst), 1);
        lane.join().expect("lane");
    });
}

/// A worker's key, from a core of its own (outside the model: the
/// core is sans-IO and shares nothing).
fn a_worker_key() -> WorkerKey {
    let mut core: Pool<()> = Pool::new(PoolConfig::default(), Time::ZERO).expect("config");
    core.add_worker(Time::ZERO).expect("worker")
}

/// The start of the request on that worker, counted in `live`; its
/// end (the worker's handler dropped with the start's last reference,
/// before its guard) is counted in `ended`.
fn started(worker: WorkerKey, live: &Arc<Live>, ended: &Arc<AtomicUsize>) -> Started {
    let token = Handler(Arc::clone(ended));
    let handler = handler_fn(move |_| {
        let _keep = &token;
        async { Ok(Value::Null) }
    });
    Started {
        worker: Arc::new(WorkerCell {
            id: Arc::from("worker"),
            key: worker,
            handler: Arc::new(handler),
            inbox: Arc::new(Inbox::default()),
            meter: WorkerMeter::new("worker"),
        }),
        live: live.start(),
        may_retry: false,
        deadline: foreman_core::Time::MAX,
    }
}

/// The lane grants the request to its caller's task (under the core's
/// lock, unless the caller cancelled it there first) and stops, while
/// the caller, polled once, takes its start or is cancelled: the start
/// ends exactly once if it was granted (with the caller that took it,
/// or with what its cancellation gave up), never otherwise, and
/// `shutdown` returns only after it ended.
#[test]
fn a_start_granted_to_a_cancelled_caller_ends_once() {
    let worker = a_worker_key();
    loom::model(move || {
        let live = Arc::new(Live::default());
        let slot = Arc::new(Slot::default());
        // The core's lock, and whether the request was cancelled.
        let core = Arc::new(Mutex::new(false));
        let ended = Arc::new(AtomicUsize::new(0));
        let caller = {
            let (slot, core) = (Arc::clone(&slot), Arc::clone(&core));
            thread::spawn(move || {
                let polled = poll_start_once(&slot);
                match polled {
                    // The caller runs the handler to its end.
                    Poll::Ready(Wake::Started(start)) => drop(start),
                    Poll::Ready(Wake::Handed(..) | Wake::Answered(_)) => {
                        panic!("only a start was granted")
                    }
                    // Cancelled as `PendingGuard` does: gives up in the
                    // slot under the core's lock, drops what it gave up
                    // once the locks are released.
                    Poll::Pending => {
                        let given_up = {
                            let mut cancelled = lock(&core);
                            *cancelled = true;
                            slot.lock().give_up()
                        };
                        drop(given_up);
                    }
                }
            })
        };
        let mut wake = Wakers::default();
        let granted = {
            let cancelled = lock(&core);
            if !*cancelled {
                let start = started(worker, &live, &ended);
                slot.update(&mut wake, |inner| inner.run = Run::Granted(start));
            }
            !*cancelled
        };
        wake.wake_all();
        live.mark_stopped();
        block_on(poll_fn(|cx| live.poll_idle(cx.waker())));
        assert_eq!(
            ended.load(Ordering::SeqCst),
            usize::from(granted),
            "shutdown returned before the start ended"
        );
        caller.join().expect("caller");
        assert_eq!(ended.load(Ordering::SeqCst), usize::from(granted));
        assert_idle(&live);
    });
}

/// The claiming task hands the handler back while its caller waits for
/// its start: the caller takes it, or registers first and is woken.
#[test]
fn a_handler_handed_back_while_the_caller_waits_wakes_it() {
    loom::model(|| {
        let live = Arc::new(Live::default());
        let ended = Arc::new(AtomicUsize::new(0));
        let (slot, claimer) = claimed_and_handed_back(&live, &ended);
        let mut waited = false;
        match block_on(wait_for_start(&slot, &mut waited)) {
            Wake::Handed(future, guard) => {
                drop(future);
                drop(guard);
            }
            Wake::Started(_) | Wake::Answered(_) => panic!("only a hand-back was left"),
        }
        claimer.join().expect("claimer");
        assert_eq!(ended.load(Ordering::SeqCst), 1);
        live.mark_stopped();
        assert_idle(&live);
    });
}

/// The core answers (the request's deadline passed) and stops while
/// the claiming task hands the handler back and the caller, polled
/// once, is cancelled: the caller takes the answer or it stays in the
/// slot (never both, never neither), the handler ends exactly once
/// (by the claiming task, or by the caller that took it or gave up
/// on it), and `shutdown` returns only after it ended.
#[test]
fn a_cancelled_caller_racing_the_answer_and_the_hand_back_ends_the_handler_once() {
    loom::model(|| {
        let live = Arc::new(Live::default());
        let ended = Arc::new(AtomicUsize::new(0));
        let (slot, claimer) = claimed_and_handed_back(&live, &ended);
        let caller = {
            let slot = Arc::clone(&slot);
            thread::spawn(move || {
                let polled = poll_start_once(&slot);
                // The caller's end, as `PendingGuard` gives up: what
                // the slot held is dropped once its lock is released.
                match polled {
                    Poll::Ready(Wake::Handed(future, guard)) => {
                        drop(future);
                        drop(guard);
                        drop(slot.lock().give_up());
                        false
                    }
                    Poll::Ready(Wake::Answered(answer)) => {
                        drop(slot.lock().give_up());
                        drop(answer);
                        true
                    }
                    Poll::Ready(Wake::Started(_)) => panic!("never granted"),
                    Poll::Pending => {
                        drop(slot.lock().give_up());
                        false
                    }
                }
            })
        };
        deliver(&slot);
        live.mark_stopped();
        block_on(poll_fn(|cx| live.poll_idle(cx.waker())));
        assert_eq!(
            ended.load(Ordering::SeqCst),
            1,
            "shutdown returned before the handler ended"
        );
        let taken = caller.join().expect("caller");
        claimer.join().expect("claimer");
        let left = slot.lock().answer.is_some();
        assert!(
            taken != left,
            "answer taken: {taken}, left in the slot: {left}"
        );
        assert_eq!(ended.load(Ordering::SeqCst), 1, "the handler ended twice");
        assert_idle(&live);
    });
}

mod refusal;
