//! What every handle on a pool shares: its lanes (each a core behind its
//! lock), the clock's origin and the driver's options, and how an input
//! reaches a lane's core.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use foreman_core::{lanes, PoolConfig, RequestKey, Time, WorkerProtocolError};
use parking_lot::Mutex;
use serde_json::Value;

use crate::handler::CircuitBreakerHooks;
use crate::meter::PoolMeter;
use crate::names::Names;
use crate::runtime::Runtime;
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

    /// A handler finished: feeds its result to the core, carries out the
    /// actions and wakes whom they concern. `own` is the calling task's own
    /// request, if the handler was its; up to `claim` queued requests the
    /// freed worker starts are claimed for this task to run. What concerns
    /// this task goes to `out`.
    pub(crate) fn complete(
        self: &Arc<Self>,
        lane: &Lane,
        key: RequestKey,
        result: Result<Value, WorkerProtocolError>,
        own: Option<RequestKey>,
        claim: usize,
        out: &mut Own,
    ) {
        let mut probes = Vec::new();
        // A caller's task reports a refusal as the failure it returned
        // (`refuse_not_started`'s docs): the request it handed back goes.
        crate::refusal::clear();
        let now = self.now();
        {
            let mut core = lane.core.lock();
            core.pool.handle_completion(now, key, result);
            core.after_input(own, out, &mut probes, &lane.signals, claim);
        }
        out.wake_all();
        self.spawn_probes(lane.index, probes);
    }
}
