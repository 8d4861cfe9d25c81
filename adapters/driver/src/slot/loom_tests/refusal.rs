//! The refusal transitions: a handler that declines its request
//! (`refuse_not_started`) puts it back in the slot, whose next start, or
//! answer, a real core decides while a cancel or a shutdown races it.

use super::*;

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
            Outcome::Refused(Box::new(request())).apply(&mut core, Time::ZERO, self.key);
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
