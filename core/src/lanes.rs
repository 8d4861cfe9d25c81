//! Lanes: the rules for a driver that runs several pools as one (each
//! with its own lock, so callers on different threads do not contend);
//! part of the driver's interface, with [`Pool::offer`](crate::Pool::offer),
//! [`Pool::idle_workers`](crate::Pool::idle_workers),
//! [`Pool::eligible_workers`](crate::Pool::eligible_workers) and the moves
//! of a queued request between lanes ([`Pool::release_queued`](crate::Pool::release_queued),
//! [`Pool::adopt`](crate::Pool::adopt)).
//! How many lanes a pool gets, which lane a request is offered to first,
//! which refusals send it on to the next lane, and when a queued request
//! moves to another lane ([`next_move`]) are decisions, so they live here;
//! the driver only reads each lane's counts and follows them. Every lane
//! is fed the same clock, so times (acceptance, deadlines) carry over
//! between lanes unchanged.

use std::num::NonZeroUsize;

use crate::config::{PoolConfig, RoutingPolicy};
use crate::protocol::WorkerPoolError;

/// Workers per lane below which a pool keeps a single lane.
pub const MIN_WORKERS_PER_LANE: usize = 8;

/// A lane's counts, as its pool reported them after its last input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LaneLoad {
    /// Workers that would start a request at once ([`crate::Pool::idle_workers`]).
    pub idle: usize,
    /// Workers that would take a request ([`crate::Pool::eligible_workers`]).
    pub eligible: usize,
    /// Requests queued or running ([`crate::Pool::pending`]).
    pub pending: usize,
    /// Workers in the lane.
    pub workers: usize,
    /// Unpinned requests waiting in a queue ([`crate::Pool::movable_requests`]).
    pub queued: usize,
    /// Workers that take new requests, with room or not
    /// ([`crate::Pool::schedulable_workers`]).
    pub schedulable: usize,
}

/// A queued request to move from one lane to another: the driver releases
/// it from `from` ([`crate::Pool::release_queued`]) and offers it to `to`
/// ([`crate::Pool::adopt`]), then to the other lanes, and has `from`
/// answer it ([`crate::Pool::answer_released`]) only if none takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// The lane that releases its oldest unpinned queued request.
    pub from: usize,
    /// The lane that adopts it first.
    pub to: usize,
}

/// After an input to lane `lane` (of `count`), the move that keeps late
/// binding across lanes, if any; the driver carries it out and asks again
/// until `None`:
/// - `lane` has queued requests and no schedulable worker (its workers
///   were removed or ejected): its oldest moves to the lane
///   [`first_lane`] would offer a new request to (from the next lane on),
///   if that lane has room (else they wait where they are: a worker that
///   is not schedulable still runs its queue);
/// - `lane` has queued requests and no idle worker, and another lane has
///   an idle worker, room and no queue: its oldest moves to the first such lane
///   from the next lane on (so a request that queued while another lane's
///   worker went idle moves even if that lane sees no further input);
/// - `lane` has an idle worker and no queued request: it takes the oldest
///   of the lane with the most queued requests per worker (the first from
///   `lane` on, on a tie).
///
/// So no unpinned request waits in one lane while another lane has a free
/// worker, as in a single pool. `load` reads a lane's counts; it is called
/// only as needed.
#[must_use]
pub fn next_move(lane: usize, count: usize, load: impl Fn(usize) -> LaneLoad) -> Option<Move> {
    if count <= 1 {
        return None;
    }
    let lane = lane % count;
    let here = load(lane);
    if here.queued > 0 && here.schedulable == 0 {
        // `lane` itself reads as empty (no idle worker, no room), so the
        // choice starts from the next lane on.
        let to = first_lane(lane, count, |other| {
            if other == lane {
                LaneLoad::default()
            } else {
                load(other)
            }
        });
        // Only to a lane with room: a request no lane adopts is answered.
        return (to != lane && load(to).eligible > 0).then_some(Move { from: lane, to });
    }
    if here.queued > 0 {
        if here.idle > 0 {
            return None;
        }
        return (1..count)
            .map(|step| (lane + step) % count)
            .find(|&to| {
                let there = load(to);
                there.idle > 0 && there.queued == 0 && there.eligible > 0
            })
            .map(|to| Move { from: lane, to });
    }
    if here.idle == 0 {
        return None;
    }
    // Queued requests per worker, compared as cross products.
    let mut best: Option<(usize, usize, usize)> = None;
    for from in (1..count).map(|step| (lane + step) % count) {
        let l = load(from);
        if l.queued == 0 {
            continue;
        }
        let workers = l.workers.max(1);
        let heavier = best.is_none_or(|(_, queued, best_workers)| {
            l.queued.saturating_mul(best_workers) > queued.saturating_mul(workers)
        });
        if heavier {
            best = Some((from, l.queued, workers));
        }
    }
    best.map(|(from, _, _)| Move { from, to: lane })
}

/// How many lanes a pool of `workers` gets on `cpus` CPUs: one per CPU for
/// at least two lanes' worth of workers under idle-first routing; one
/// otherwise (the reference's round-robin rule needs one rotation).
#[must_use]
pub fn lane_count(config: &PoolConfig, workers: usize, cpus: usize) -> NonZeroUsize {
    if config.routing != RoutingPolicy::IdleFirst {
        return NonZeroUsize::MIN;
    }
    NonZeroUsize::new(cpus.min(workers / MIN_WORKERS_PER_LANE)).unwrap_or(NonZeroUsize::MIN)
}

/// The lane to offer a request to first, of `count` lanes: `home` if it
/// has an idle worker; else the next lane (from `home` on) with one; else
/// the lane with room and the fewest requests per worker (`home` on a
/// tie); else `home` (its pool refuses with the right reason). `load`
/// reads a lane's counts; it is called only as needed.
#[must_use]
pub fn first_lane(home: usize, count: usize, load: impl Fn(usize) -> LaneLoad) -> usize {
    if count <= 1 {
        return 0;
    }
    let home = home % count;
    let at_home = load(home);
    if at_home.idle > 0 {
        return home;
    }
    let others = || (1..count).map(|step| (home + step) % count);
    if let Some(idle) = others().find(|&lane| load(lane).idle > 0) {
        return idle;
    }
    // Requests per worker, compared as cross products.
    let per_worker = |l: LaneLoad| (l.pending, l.workers.max(1));
    let mut best = (at_home.eligible > 0).then(|| (home, per_worker(at_home)));
    for lane in others() {
        let l = load(lane);
        if l.eligible == 0 {
            continue;
        }
        let (pending, workers) = per_worker(l);
        let lighter = best.is_none_or(|(_, (best_pending, best_workers))| {
            pending.saturating_mul(best_workers) < best_pending.saturating_mul(workers)
        });
        if lighter {
            best = Some((lane, (pending, workers)));
        }
    }
    best.map_or(home, |(lane, _)| lane)
}

/// Before a worker of lane `lane` is removed, with `left` schedulable
/// workers besides it: the move that keeps the lane's queue from being
/// answered for want of a worker, as [`next_move`] decides for a lane
/// that has lost its last schedulable worker.
#[must_use]
pub fn move_before_removal(
    lane: usize,
    count: usize,
    left: usize,
    load: impl Fn(usize) -> LaneLoad,
) -> Option<Move> {
    if left > 0 || count <= 1 {
        return None;
    }
    let lane = lane % count;
    // As `next_move` reads a lane that gives up, not takes: no idle and no
    // schedulable worker (its room is never read for it).
    let here = LaneLoad {
        schedulable: 0,
        idle: 0,
        ..load(lane)
    };
    next_move(
        lane,
        count,
        |other| if other == lane { here } else { load(other) },
    )
}

/// The lanes a request released for `planned` is offered to, in order,
/// each of the `count` lanes once: [`Move::to`], then the other lanes from
/// there on, then [`Move::from`] last (its own lane takes it back only
/// when no other lane can; if it cannot either, it answers it).
pub fn adoption_order(planned: Move, count: usize) -> impl Iterator<Item = usize> {
    let count = count.max(1);
    let (from, to) = (planned.from % count, planned.to % count);
    (to..count)
        .chain(0..to)
        .filter(move |&lane| lane != from)
        .chain([from])
}

/// Whether a lane's refusal only says it has no worker for the request
/// (what [`crate::Pool::offer`] declines), so the next lane is tried.
#[must_use]
pub fn try_next_lane(error: &WorkerPoolError) -> bool {
    matches!(
        error,
        WorkerPoolError::QueueFull
            | WorkerPoolError::NoHealthyWorker
            | WorkerPoolError::CircuitOpen
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes(loads: &[LaneLoad]) -> impl Fn(usize) -> LaneLoad + '_ {
        move |lane| loads.get(lane).copied().unwrap_or_default()
    }

    fn load(idle: usize, eligible: usize, pending: usize, workers: usize) -> LaneLoad {
        LaneLoad {
            idle,
            eligible,
            pending,
            workers,
            queued: pending.saturating_sub(workers),
            schedulable: eligible.max(idle),
        }
    }

    fn queued(queued: usize, idle: usize, schedulable: usize, workers: usize) -> LaneLoad {
        LaneLoad {
            idle,
            eligible: schedulable,
            pending: queued + workers - idle,
            workers,
            queued,
            schedulable,
        }
    }

    /// [`next_move`] after an input to `lane` of `loads`, as (from, to).
    fn next(lane: usize, loads: &[LaneLoad]) -> Option<(usize, usize)> {
        next_move(lane, loads.len(), lanes(loads)).map(|m| (m.from, m.to))
    }

    #[test]
    fn a_lane_with_an_idle_worker_takes_from_the_most_loaded_lane() {
        let idle = queued(0, 2, 8, 8);
        let light = queued(3, 0, 8, 8);
        let heavy = queued(40, 0, 8, 8);
        assert_eq!(next(0, &[idle, light, heavy]), Some((2, 0)));
        // Per worker: 10 queued over 2 workers outweigh 40 over 16.
        let small = queued(10, 0, 2, 2);
        let big = queued(40, 0, 16, 16);
        assert_eq!(next(2, &[big, small, idle]), Some((1, 2)));
        // A tie goes to the first lane from the taker on.
        assert_eq!(next(1, &[light, idle, light]), Some((2, 1)));
    }

    #[test]
    fn a_lane_with_a_queue_hands_its_oldest_to_an_idle_lane() {
        let idle = queued(0, 2, 8, 8);
        let busy = queued(5, 0, 8, 8);
        let full = queued(0, 0, 8, 8);
        assert_eq!(next(0, &[busy, idle]), Some((0, 1)));
        // The first idle lane from the next one on, skipping a lane that
        // has a queue of its own or no idle worker.
        let idle_with_queue = queued(1, 1, 8, 8);
        assert_eq!(next(1, &[idle, busy, full, idle]), Some((1, 3)));
        assert_eq!(next(2, &[idle, full, busy, idle]), Some((2, 3)));
        assert_eq!(next(0, &[busy, idle_with_queue, full]), None);
        // A lane that has an idle worker runs its own queue.
        assert_eq!(next(0, &[idle_with_queue, idle]), None);
        // A lane read mid-update, with an idle worker but no room, is no
        // taker.
        let torn = LaneLoad {
            eligible: 0,
            ..idle
        };
        assert_eq!(next(0, &[busy, torn]), None);
        assert_eq!(next(0, &[busy, torn, idle]), Some((0, 2)));
    }

    #[test]
    fn no_move_without_an_idle_taker_or_a_queue_elsewhere() {
        let idle = queued(0, 2, 8, 8);
        let busy = queued(5, 0, 8, 8);
        let full = queued(0, 0, 8, 8);
        // The taker still has its own queue, or no free worker.
        assert_eq!(next(0, &[queued(1, 1, 8, 8), busy]), None);
        assert_eq!(next(0, &[full, busy]), None);
        assert_eq!(next(0, &[busy, busy]), None);
        // Nothing waits anywhere else.
        assert_eq!(next(0, &[idle, full]), None);
        assert_eq!(next(0, &[idle, idle]), None);
        // One lane never moves anything.
        assert_eq!(next(0, &[busy]), None);
    }

    #[test]
    fn removing_a_lanes_last_schedulable_worker_hands_its_queue_on() {
        let busy = queued(3, 0, 1, 8);
        let idle = queued(0, 1, 8, 8);
        assert_eq!(
            move_before_removal(0, 2, 0, lanes(&[busy, idle])),
            Some(Move { from: 0, to: 1 })
        );
        // To a lane with room even if none of its workers is idle.
        let roomy = queued(2, 0, 8, 8);
        assert_eq!(
            move_before_removal(0, 2, 0, lanes(&[busy, roomy])),
            Some(Move { from: 0, to: 1 })
        );
        // Another schedulable worker stays: the lane keeps its queue.
        assert_eq!(move_before_removal(0, 2, 1, lanes(&[busy, idle])), None);
        // Nothing queued, or one lane: nothing moves.
        assert_eq!(move_before_removal(1, 2, 0, lanes(&[busy, idle])), None);
        assert_eq!(move_before_removal(0, 1, 0, lanes(&[busy])), None);
    }

    #[test]
    fn a_lane_without_schedulable_workers_hands_its_queue_on() {
        let stranded = queued(4, 0, 0, 8);
        let idle = queued(0, 1, 8, 8);
        let busy = queued(6, 0, 8, 8);
        let lighter = queued(1, 0, 8, 8);
        assert_eq!(next(0, &[stranded, busy, idle]), Some((0, 2)));
        assert_eq!(next(0, &[stranded, busy, lighter]), Some((0, 2)));
        // The other lane is full: the queue waits where it is (its
        // workers still run it).
        let full = LaneLoad {
            eligible: 0,
            ..busy
        };
        assert_eq!(next(0, &[stranded, full]), None);
        // A lane read mid-update, with an idle worker but no room, is no
        // target either.
        let torn = LaneLoad {
            eligible: 0,
            ..idle
        };
        assert_eq!(next(0, &[stranded, torn]), None);
        // No other lane can take it: it stays.
        let gone = queued(0, 0, 0, 0);
        assert_eq!(next(0, &[stranded, gone]), None);
        assert_eq!(next(0, &[stranded, stranded]), None);
    }

    #[test]
    fn a_released_request_is_offered_to_the_target_then_onwards_then_home() {
        let order = |from, to, count| adoption_order(Move { from, to }, count).collect::<Vec<_>>();
        assert_eq!(order(1, 3, 4), [3, 0, 2, 1]);
        assert_eq!(order(0, 1, 2), [1, 0]);
        assert_eq!(order(2, 0, 3), [0, 1, 2]);
        // Out-of-range lanes wrap; no lanes is one.
        assert_eq!(order(5, 7, 4), [3, 0, 2, 1]);
        assert_eq!(order(3, 3, 0), [0]);
    }

    #[test]
    fn home_first_then_idle_then_least_loaded() {
        let busy = load(0, 1, 10, 8);
        let idle = load(1, 1, 7, 8);
        assert_eq!(first_lane(1, 3, lanes(&[idle, idle, busy])), 1);
        assert_eq!(first_lane(2, 3, lanes(&[idle, busy, busy])), 0);
        let lighter = load(0, 1, 4, 8);
        assert_eq!(first_lane(0, 3, lanes(&[busy, busy, lighter])), 2);
        // A tie keeps home; a lane without room is never chosen.
        assert_eq!(first_lane(0, 2, lanes(&[busy, busy])), 0);
        let full = load(0, 0, 1, 8);
        assert_eq!(first_lane(0, 2, lanes(&[full, busy])), 1);
        assert_eq!(first_lane(1, 2, lanes(&[full, full])), 1);
        assert_eq!(first_lane(5, 1, lanes(&[busy])), 0);
    }

    #[test]
    fn an_idle_lane_wins_over_a_lighter_busy_one() {
        // Lane 2 has an idle worker but more requests per worker than the
        // busy lanes: a request starts at once there rather than wait.
        let light_busy = load(0, 1, 1, 8);
        let heavy_idle = load(1, 1, 40, 8);
        assert_eq!(
            first_lane(0, 3, lanes(&[light_busy, light_busy, heavy_idle])),
            2
        );
    }

    #[test]
    fn lane_count_needs_idle_first_and_enough_workers() {
        let config = PoolConfig::default();
        assert_eq!(lane_count(&config, 16, 2).get(), 2);
        assert_eq!(lane_count(&config, 15, 2).get(), 1);
        assert_eq!(lane_count(&config, 64, 4).get(), 4);
        assert_eq!(lane_count(&config, 64, 0).get(), 1);
        let round_robin = PoolConfig {
            routing: RoutingPolicy::RoundRobin,
            ..PoolConfig::default()
        };
        assert_eq!(lane_count(&round_robin, 64, 4).get(), 1);
        assert!(try_next_lane(&WorkerPoolError::QueueFull));
        assert!(!try_next_lane(&WorkerPoolError::ShuttingDown));
    }
}
