//! What every handle on a pool shares: its lanes (each a core behind its
//! lock), the clock's origin and the driver's options, and how an input
//! reaches a lane's core.

use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use foreman_core::{lanes, PoolConfig, Released, RequestKey, Time, WorkerKey};
use parking_lot::Mutex;

use crate::handler::CircuitBreakerHooks;
use crate::meter::PoolMeter;
use crate::names::Names;
use crate::refusal::Outcome;
use crate::runtime::Runtime;
use crate::slot::Slot;
use crate::started::WorkerCell;
use crate::state::{Core, LaneSignals, Own};

pub(crate) struct Shared<R> {
    /// The core's configuration, for validating requests outside the lock.
    pub(crate) config: PoolConfig,
    /// At least one.
    pub(crate) lanes: Box<[Lane]>,
    /// This pool's id, for [`HOME_LANE`].
    pub(crate) id: u64,
    /// The `WorkerPool` values sharing this state (the user's and the
    /// service handles'); the last one dropped closes the pool.
    pub(crate) owners: AtomicUsize,
    /// The home lane of the next thread that submits.
    pub(crate) next_home: AtomicUsize,
    pub(crate) names: Mutex<Names>,
    pub(crate) runtime: R,
    pub(crate) epoch: Instant,
    pub(crate) hooks: Option<Arc<dyn CircuitBreakerHooks>>,
    /// The hooks only observe ([`HookRole::ObserveOnly`](crate::HookRole)):
    /// `allow_request` is never asked.
    pub(crate) observe_only: bool,
    /// Handlers run on worker tasks ([`ExecutionMode::PoolTasks`]).
    pub(crate) pool_tasks: bool,
    /// The pool's metric handles (`metrics` feature; each lane's core
    /// holds them too).
    pub(crate) meter: Arc<PoolMeter>,
}

/// One core with its own lock, owning some of the pool's workers.
#[repr(align(128))]
pub(crate) struct Lane {
    /// Its place in [`Shared::lanes`].
    pub(crate) index: usize,
    pub(crate) core: Mutex<Core>,
    /// Its timer task's deadline, and its idle and eligible worker counts
    /// for choosing a lane without its lock.
    pub(crate) signals: Arc<LaneSignals>,
}

thread_local! {
    /// The pool this thread last submitted to, and its home lane there.
    static HOME_LANE: std::cell::Cell<(u64, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// The most moves between lanes one input leads to
/// ([`Shared::balance_lanes`]); the next input carries on.
const MAX_MOVES: usize = 64;

/// Pool ids for [`HOME_LANE`] (0 is never used).
pub(crate) static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

/// The lanes a submit tries, in order.
pub(crate) struct LaneOrder {
    first: usize,
    count: usize,
    tried: usize,
}

impl LaneOrder {
    /// The next lane to try, and whether it is the last.
    pub(crate) fn next_try(&mut self) -> (usize, bool) {
        let lane = (self.first + self.tried) % self.count;
        self.tried += 1;
        (lane, self.tried >= self.count)
    }
}

impl<R: Runtime> Shared<R> {
    pub(crate) fn lane(&self, index: usize) -> &Lane {
        // `index` always comes from this pool (`< lanes.len()`, which is
        // at least 1); the modulo only keeps the access in bounds.
        &self.lanes[index % self.lanes.len()]
    }

    /// Where a submit starts: this thread's home lane if it has an idle
    /// worker; else a lane with an idle worker; else the lane with room
    /// and the fewest requests per worker (the home lane on a tie). The
    /// counts are read without the lanes' locks, so this is a hint: the
    /// chosen lane's core decides, and the others are tried after it.
    pub(crate) fn lane_order(&self) -> LaneOrder {
        let count = self.lanes.len();
        let home = if count == 1 {
            0
        } else {
            // Threads get home lanes in the order they first submit, so a
            // runtime's worker threads spread over the lanes.
            HOME_LANE.with(|cached| match cached.get() {
                (pool, lane) if pool == self.id => lane,
                _ => {
                    let lane = self.next_home.fetch_add(1, Ordering::Relaxed) % count;
                    cached.set((self.id, lane));
                    lane
                }
            })
        };
        let first = lanes::first_lane(home, count, |lane| self.lane(lane).signals.load());
        LaneOrder {
            first,
            count,
            tried: 0,
        }
    }

    /// Puts per-lane items in worker order (by id).
    pub(crate) fn in_worker_order<T>(&self, items: Vec<T>, id: impl Fn(&T) -> &String) -> Vec<T> {
        if self.lanes.len() == 1 {
            return items;
        }
        let names = self.names.lock();
        let mut keyed: Vec<(usize, T)> = items
            .into_iter()
            .map(|item| (names.rank_of(id(&item)).unwrap_or(usize::MAX), item))
            .collect();
        keyed.sort_by_key(|(rank, _)| *rank);
        keyed.into_iter().map(|(_, item)| item).collect()
    }

    pub(crate) fn now(&self) -> Time {
        Time::from_duration(self.runtime.now().saturating_duration_since(self.epoch))
    }

    /// One input that names no request of the caller: lock, apply, carry
    /// out the actions, unlock, spawn probes.
    pub(crate) fn input<T>(
        self: &Arc<Self>,
        lane: usize,
        f: impl FnOnce(&mut Core, Time) -> T,
    ) -> T {
        let out = self.input_here(lane, f);
        self.balance_lanes(lane);
        out
    }

    /// After an input to `lane`: carries out the moves of queued requests
    /// between lanes that [`lanes::next_move`] asks for, so that no
    /// request waits in one lane while another has a free worker, and a
    /// lane without schedulable workers hands its queue on. In every
    /// execution mode and with hooks: what a caller holds of its lane (its
    /// cancellation; in caller-task mode the completion of the handler it
    /// runs; with hooks, placing its request anew) follows the move
    /// through [`whereabouts`](Self::whereabouts). With one lane this is
    /// one comparison.
    #[inline]
    pub(crate) fn balance_lanes(self: &Arc<Self>, lane: usize) {
        if self.lanes.len() > 1 {
            self.balance_several_lanes(lane);
        }
    }

    /// Before worker `worker_id` of `lane` is removed: if it is the lane's
    /// last schedulable worker, moves the lane's queue to the other lanes
    /// ([`lanes::move_before_removal`]) rather than have it answered for
    /// want of a worker.
    pub(crate) fn move_before_removal(self: &Arc<Self>, lane: usize, worker_id: &str) {
        let count = self.lanes.len();
        if count == 1 {
            return;
        }
        self.carry_out_moves(|| {
            let core = self.lane(lane).core.lock();
            self.move_before_removing(&core, lane, core.pool.worker_key(worker_id)?)
        });
    }

    /// The move [`lanes::move_before_removal`] asks for before worker
    /// `worker` of `lane` is removed, read with `core`, that lane's core,
    /// locked (so its own counts are exact).
    pub(crate) fn move_before_removing(
        &self,
        core: &Core,
        lane: usize,
        worker: WorkerKey,
    ) -> Option<lanes::Move> {
        let left = core.pool.schedulable_besides(worker);
        lanes::move_before_removal(lane, self.lanes.len(), left, |lane| {
            self.lane(lane).signals.load()
        })
    }

    /// Where the request submitted as `key` in `lane` is now: the lane
    /// and key it last moved to, else those. Read under the slot's lock,
    /// where a move records them (under the adopting lane's lock, before
    /// that lane starts it): a request that started, or that the caller
    /// is told to place anew, stays where this says until it is queued
    /// again.
    pub(crate) fn whereabouts<'a>(
        &'a self,
        slot: &Slot,
        lane: &'a Lane,
        key: RequestKey,
    ) -> (&'a Lane, RequestKey) {
        match slot.lock().moved {
            Some((moved, moved_key)) => (self.lane(moved), moved_key),
            None => (lane, key),
        }
    }

    /// A handler finished, or declined its request: feeds its outcome to
    /// the core, carries out the actions and wakes whom they concern, then
    /// the moves between lanes the freed worker asks for. `own` is the
    /// calling task's own request, if the handler was its; up to `claim`
    /// queued requests the freed worker starts are claimed for this task
    /// to run. What concerns this task goes to `out`. `lane` and `key` are
    /// where the request ran ([`whereabouts`](Self::whereabouts)).
    pub(crate) fn complete(
        self: &Arc<Self>,
        lane: &Lane,
        key: RequestKey,
        outcome: Outcome,
        own: Option<RequestKey>,
        claim: usize,
        out: &mut Own,
    ) {
        let mut probes = Vec::new();
        let now = self.now();
        {
            let mut core = lane.core.lock();
            outcome.apply(&mut core.pool, now, key);
            core.after_input(own, out, &mut probes, &lane.signals, claim);
        }
        out.wake_all();
        self.spawn_probes(lane.index, probes);
        self.balance_lanes(lane.index);
    }

    /// [`input`](Self::input) without the moves between lanes after it.
    fn input_here<T>(self: &Arc<Self>, lane: usize, f: impl FnOnce(&mut Core, Time) -> T) -> T {
        let mut probes = Vec::new();
        let signals = &self.lane(lane).signals;
        let mut own = Own::default();
        let out = {
            let mut core = self.lane(lane).core.lock();
            let now = self.now();
            let out = f(&mut core, now);
            core.after_input(None, &mut own, &mut probes, signals, 0);
            out
        };
        own.wake_all();
        self.spawn_probes(lane, probes);
        out
    }

    /// [`balance_lanes`](Self::balance_lanes) with several lanes.
    #[inline(never)]
    fn balance_several_lanes(self: &Arc<Self>, lane: usize) {
        // Orders this input's published counts before the other lanes'
        // are read: of a submit that queued in one lane and a completion
        // that left another idle, racing, at least one sees the other's
        // counts and asks for the move.
        fence(Ordering::SeqCst);
        let count = self.lanes.len();
        self.carry_out_moves(|| {
            lanes::next_move(lane, count, |lane| self.lane(lane).signals.load())
        });
    }

    /// Carries out the moves `next` names, asking again after each, until
    /// it names none or one moves nothing, for at most [`MAX_MOVES`] moves
    /// (the next input carries on).
    fn carry_out_moves(self: &Arc<Self>, mut next: impl FnMut() -> Option<lanes::Move>) {
        for _ in 0..MAX_MOVES {
            match next() {
                Some(next) if self.move_queued(next) => {}
                _ => return,
            }
        }
    }

    /// Moves the oldest movable request of `next.from` to `next.to` (or,
    /// if that lane declines, to the next lane that takes it, in
    /// [`lanes::adoption_order`]), holding one lane's lock at a time.
    /// Returns whether a request left `from`.
    fn move_queued(self: &Arc<Self>, next: lanes::Move) -> bool {
        let from = self.lane(next.from);
        let released = {
            let mut probes = Vec::new();
            let mut own = Own::default();
            let mut core = from.core.lock();
            let released = core.pool.release_queued(self.now());
            // The worker it left, whose queued gauge keeps it until a lane
            // adopts it.
            let left = released.as_ref().and_then(|released| {
                released.payload().lock().in_transit = true;
                let entry = core.workers.get(&released.worker())?;
                Some(Arc::clone(&entry.cell))
            });
            core.after_input(None, &mut own, &mut probes, &from.signals, 0);
            drop(core);
            own.wake_all();
            self.spawn_probes(from.index, probes);
            released.map(|released| (released, left))
        };
        let Some((mut released, left)) = released else {
            return false;
        };
        for lane in lanes::adoption_order(next, self.lanes.len()) {
            match self.adopt_in(lane, released, left.as_deref()) {
                Adopted::Yes => return lane != next.from,
                Adopted::Cancelled(back) => {
                    self.answer_released(next.from, back, true);
                    return true;
                }
                Adopted::No(back) => released = back,
            }
        }
        self.answer_released(next.from, released, false);
        true
    }

    /// Offers a released request to lane `index`'s core, unless its caller
    /// gave it up; the slot learns where it went under that lane's lock.
    /// Once adopted, it leaves the gauge of the worker it `left`.
    fn adopt_in(
        self: &Arc<Self>,
        index: usize,
        released: Released<Arc<Slot>>,
        left: Option<&WorkerCell>,
    ) -> Adopted {
        let lane = self.lane(index);
        let slot = Arc::clone(released.payload());
        let mut probes = Vec::new();
        let mut own = Own::default();
        let mut core = lane.core.lock();
        {
            // Held across the adoption, so a cancellation either came
            // before (it gave up) or finds the request in this lane.
            let mut inner = slot.lock();
            if inner.abandoned {
                return Adopted::Cancelled(released);
            }
            match core.pool.adopt(self.now(), released) {
                Ok(key) => {
                    inner.moved = Some((index, key));
                    inner.in_transit = false;
                }
                Err(back) => return Adopted::No(back),
            }
        }
        if let Some(left) = left {
            own.notes.moved_away(&left.meter);
        }
        core.after_input(None, &mut own, &mut probes, &lane.signals, 0);
        drop(core);
        own.wake_all();
        self.spawn_probes(index, probes);
        Adopted::Yes
    }

    /// Has lane `index`, which released the request, answer it. If its
    /// caller gave it up while it moved, the caller's cancellation left
    /// its end to be told here (counted and traced, as the caller's guard
    /// tells the end of a request it cancels).
    fn answer_released(
        self: &Arc<Self>,
        index: usize,
        released: Released<Arc<Slot>>,
        cancelled: bool,
    ) {
        let slot = Arc::clone(released.payload());
        let abandoned = self.input_here(index, |core, now| {
            let abandoned = {
                let mut inner = slot.lock();
                inner.in_transit = false;
                inner.abandoned
            };
            core.pool.answer_released(now, released, cancelled);
            abandoned
        });
        if abandoned {
            let (traced, answer) = {
                let mut inner = slot.lock();
                (inner.traced(), inner.answer.take())
            };
            if let Some(answer) = &answer {
                self.ended(traced, &slot, answer, cancelled);
            }
            traced.release(&slot);
        }
    }
}

/// What became of a released request offered to a lane.
enum Adopted {
    /// The lane took it.
    Yes,
    /// The lane declined it (no worker with room, or shutting down).
    No(Released<Arc<Slot>>),
    /// Its caller gave it up while it moved: it is to be answered
    /// `Cancelled`.
    Cancelled(Released<Arc<Slot>>),
}
