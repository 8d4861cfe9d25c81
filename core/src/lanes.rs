//! Lanes: the rules for a driver that runs several pools as one (each
//! with its own lock, so callers on different threads do not contend);
//! part of the driver's interface, with [`Pool::offer`](crate::Pool::offer),
//! [`Pool::idle_workers`](crate::Pool::idle_workers) and
//! [`Pool::eligible_workers`](crate::Pool::eligible_workers).
//! How many lanes a pool gets, which lane a request is offered to first,
//! and which refusals send it on to the next lane are decisions, so they
//! live here; the driver only reads each lane's counts and follows them.

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
        }
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
