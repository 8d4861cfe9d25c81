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
use crate::trace::Attempt;
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
        attempt: Attempt::default(),
        may_retry: false,
        deadline: None,
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

/// A lane of the model: a real core over the slot, under a lock.
type Lane = Arc<Mutex<Pool<Arc<Slot>>>>;

/// What the core's actions did, as the lane carries them out.
#[derive(Default)]
struct Carried {
    /// The answers the core gave the request, wherever they went.
    answers: AtomicUsize,
    /// Its starts, wherever they went.
    starts: AtomicUsize,
}

/// Carries out the core's actions as `Core::after_input` does in
/// caller-task mode with no claim budget: a start is granted to the
/// slot (or, for `own`, returned), an answer goes into the slot (or, for
/// `own`, is returned); the slot's waker goes to `wake`.
fn carry_out(
    core: &mut Pool<Arc<Slot>>,
    own: Option<RequestKey>,
    world: &Refusing,
    wake: &mut Wakers,
) -> (Option<Started>, Option<Delivered>) {
    let (mut started_own, mut answered_own) = (None, None);
    while let Some(action) = core.poll_action() {
        match action {
            Action::Start {
                request,
                worker,
                payload,
                ..
            } => {
                world.carried.starts.fetch_add(1, Ordering::SeqCst);
                let start = started(worker, &world.live, &world.ended);
                if own == Some(request) {
                    started_own = Some(start);
                } else {
                    payload.update(wake, |inner| inner.run = Run::Granted(start));
                }
            }
            Action::Answer(answer) => {
                world.carried.answers.fetch_add(1, Ordering::SeqCst);
                if own == Some(answer.request) {
                    answered_own = Some(self::answer());
                } else {
                    answer
                        .payload
                        .update(wake, |inner| inner.answer = Some(self::answer()));
                }
            }
            _ => {}
        }
    }
    (started_own, answered_own)
}

/// What a refusal model shares: the lane, the request's slot and key,
/// the live count, the count of ended starts, and what the lane did.
struct Refusing {
    lane: Lane,
    slot: Arc<Slot>,
    key: RequestKey,
    live: Arc<Live>,
    ended: Arc<AtomicUsize>,
    carried: Carried,
}

impl Refusing {
    /// A core with `workers` workers and the request submitted to it; its
    /// first start is taken out of the slot as `run` says (by a claiming
    /// task, `Claimed`, or by its caller, `Caller`): the request is with
    /// its handler. Returns the live guard of that first run.
    fn new(workers: usize, run: fn() -> Run) -> (Arc<Refusing>, crate::live::LiveGuard) {
        let mut core: Pool<Arc<Slot>> =
            Pool::new(PoolConfig::default(), Time::ZERO).expect("config");
        for _ in 0..workers {
            core.add_worker(Time::ZERO).expect("worker");
        }
        let slot = Arc::new(Slot::default());
        let key = core
            .submit(Time::ZERO, &request(), Arc::clone(&slot))
            .expect("an idle worker takes it");
        while core.poll_action().is_some() {}
        slot.lock().run = run();
        let live = Arc::new(Live::default());
        let guard = live.start();
        let world = Refusing {
            lane: Arc::new(Mutex::new(core)),
            slot,
            key,
            live,
            ended: Arc::new(AtomicUsize::new(0)),
            carried: Carried::default(),
        };
        (Arc::new(world), guard)
    }

    /// The handler's run ends in its refusal, reported as a worker or
    /// claiming task does: its future and guard dropped first, then the
    /// request handed back to the core under the lane's lock (into the
    /// slot, waiting for its next start) and the core's actions carried
    /// out; wakes once the lock is released.
    fn refuse(
        &self,
        guard: crate::live::LiveGuard,
        own: bool,
    ) -> (Option<Started>, Option<Delivered>) {
        drop(guard);
        let mut wake = Wakers::default();
        let carried = {
            let mut core = lock(&self.lane);
            Outcome::Refused(request()).apply(&mut core, Time::ZERO, self.key);
            carry_out(&mut core, own.then_some(self.key), self, &mut wake)
        };
        wake.wake_all();
        carried
    }

    /// The caller's `submit` is dropped, as `PendingGuard` cancels: gives
    /// up in the slot and cancels in the core under the lane's lock, drops
    /// what it gave up once the locks are released.
    fn cancel(&self) {
        let mut wake = Wakers::default();
        let given_up = {
            let mut core = lock(&self.lane);
            let given_up = {
                let mut inner = self.slot.lock();
                (std::mem::take(&mut inner.parked), inner.give_up())
            };
            core.cancel(Time::ZERO, self.key);
            // Its own answer comes back here (and is dropped).
            drop(carry_out(&mut core, Some(self.key), self, &mut wake));
            given_up
        };
        drop(given_up);
        wake.wake_all();
    }

    /// The pool shuts down with no drain time: the request is answered
    /// `ShuttingDown` wherever it is.
    fn shut_down(&self) {
        let mut wake = Wakers::default();
        {
            let mut core = lock(&self.lane);
            core.begin_shutdown(Time::ZERO, Some(Duration::ZERO));
            core.handle_timeout(Time::ZERO);
            drop(carry_out(&mut core, None, self, &mut wake));
        }
        wake.wake_all();
    }

    /// Takes the request out of the slot, as the caller that runs its
    /// start does (`own_handler`); false if it is not there.
    fn take_request(&self) -> bool {
        let taken: HeldRequest = std::mem::take(&mut self.slot.lock().parked);
        taken.get().is_some()
    }

    /// Asserts that every start ended once `shutdown` can return.
    fn assert_ended(&self) {
        self.live.mark_stopped();
        block_on(poll_fn(|cx| self.live.poll_idle(cx.waker())));
        assert_eq!(
            self.ended.load(Ordering::SeqCst),
            self.carried.starts.load(Ordering::SeqCst),
            "a start did not end, or ended twice"
        );
    }
}

/// A handler its claiming task ran declines the request while its caller
/// waits for its start: the request goes back to the slot (`Claimed` to
/// `Waiting`), the core starts it on the other worker, and the caller is
/// woken for that start and finds its request there.
#[test]
fn a_claimed_handlers_refusal_rearms_the_slot_and_its_next_start_wakes_the_caller() {
    loom::model(|| {
        let (world, guard) = Refusing::new(2, || Run::Claimed);
        let claimer = {
            let world = Arc::clone(&world);
            thread::spawn(move || drop(world.refuse(guard, false)))
        };
        let mut waited = false;
        match block_on(wait_for_start(&world.slot, &mut waited)) {
            Wake::Started(start) => {
                assert!(world.take_request(), "the next start found no request");
                drop(start);
            }
            Wake::Handed(..) | Wake::Answered(_) => panic!("only a start was due"),
        }
        claimer.join().expect("claimer");
        assert_eq!(world.carried.answers.load(Ordering::SeqCst), 0);
        world.assert_ended();
        assert_idle(&world.live);
    });
}

/// A claimed handler's refusal races its caller's cancellation (the
/// caller polled once, then dropped `submit`): either the caller takes
/// the next start (with its request), or it is cancelled and the core
/// answers the request exactly once; every start ends before `shutdown`
/// returns.
#[test]
fn a_claimed_handlers_refusal_racing_a_cancel_answers_once() {
    loom::model(|| {
        let (world, guard) = Refusing::new(2, || Run::Claimed);
        let claimer = {
            let world = Arc::clone(&world);
            thread::spawn(move || drop(world.refuse(guard, false)))
        };
        let caller = {
            let world = Arc::clone(&world);
            thread::spawn(move || match poll_start_once(&world.slot) {
                Poll::Ready(Wake::Started(start)) => {
                    assert!(world.take_request(), "the next start found no request");
                    drop(start);
                    false
                }
                Poll::Ready(Wake::Handed(..) | Wake::Answered(_)) => {
                    panic!("only a start was due")
                }
                Poll::Pending => {
                    world.cancel();
                    true
                }
            })
        };
        claimer.join().expect("claimer");
        let cancelled = caller.join().expect("caller");
        assert_eq!(
            world.carried.answers.load(Ordering::SeqCst),
            usize::from(cancelled),
            "answers of a request cancelled: {cancelled}"
        );
        world.assert_ended();
        assert_idle(&world.live);
    });
}

/// The caller's own handler declines the request (`Caller` to `Waiting`)
/// while the pool shuts down: with one worker (saturated by the refusal,
/// so the request waits) or two (it starts again at once on the other,
/// in the caller's own task), the caller gets exactly one answer, and is
/// woken for it wherever it waits.
#[test]
fn a_callers_refusal_racing_a_shutdown_answers_once() {
    for workers in [1, 2] {
        loom::model(move || {
            let (world, guard) = Refusing::new(workers, || Run::Caller);
            let stopper = {
                let world = Arc::clone(&world);
                thread::spawn(move || world.shut_down())
            };
            let (again, answered) = world.refuse(guard, true);
            let answer = match (again, answered) {
                (_, Some(answer)) => answer,
                (Some(start), None) => {
                    assert!(world.take_request(), "the next start found no request");
                    // It runs until the shutdown's answer stops it.
                    let notice = block_on(wait_for_notice(&world.slot));
                    drop(start);
                    match notice {
                        Notice::Answered(answer) => answer,
                        Notice::Revet => panic!("no worker was removed"),
                    }
                }
                (None, None) => {
                    let mut waited = false;
                    match block_on(wait_for_start(&world.slot, &mut waited)) {
                        Wake::Answered(answer) => answer,
                        Wake::Started(_) | Wake::Handed(..) => {
                            panic!("the pool shut down: nothing starts")
                        }
                    }
                }
            };
            drop(answer);
            stopper.join().expect("stopper");
            assert_eq!(world.carried.answers.load(Ordering::SeqCst), 1);
            assert!(world.slot.lock().answer.is_none(), "a second answer waits");
            world.assert_ended();
            assert_idle(&world.live);
        });
    }
}
