//! The clairvoyant oracle: the practical limit of an online routing
//! policy.
//!
//! It knows each worker's queue and its true latency, and sends every
//! request where it would finish first: for each worker with room, the
//! instant it frees (its running requests' ends, then each queued
//! request's latency from the instant it would start), plus the new
//! request's latency from then; ties go to the lower index. How much it
//! knows of a latency is its [`Knowledge`]: the exact draw the worker will
//! make ([`Knowledge::Draws`]: a running request's true end, the next
//! draws of the worker's own stream, the slowdown the moment it applies),
//! or only the latency function's mean at the instant a run would start
//! ([`Knowledge::Means`]: a running request is expected to end at its
//! start plus that mean, or now if it is late). It does not know the
//! faults (a failing request's error comes sooner than its latency): it
//! only skips the workers the pool's health rules took out of rotation.
//! The simulator drives the core with it through a circuit breaker that
//! approves only the chosen worker, on a configuration that pins every
//! request (no late binding), so its runs go through the same checks as
//! every other contender's.

use std::time::Duration;

use foreman_core::Time;

use super::latency::LatencyModel;
use crate::rng::Rng;

/// How much the oracle knows of a worker's latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knowledge {
    /// The exact time each run will take (the worker's future draws).
    Draws,
    /// The latency function's mean at the instant a run would start.
    Means,
    /// The means, as [`Knowledge::Means`], but binding each request late:
    /// requests wait in the oracle's own line, in arrival order, and each
    /// in turn is given the worker expected to finish it first (the means
    /// of the runs before it), starting when that worker is free. The
    /// best a latency-aware online policy could do knowing each worker's
    /// true current mean (not each run's length): see [`plan_late`].
    MeansLate,
}

/// What the oracle sees of one worker.
#[derive(Debug, Clone, Copy)]
pub struct WorkerView<'a> {
    /// Whether it takes a request now: schedulable (not Unavailable, not
    /// being removed) with room in its queue.
    pub open: bool,
    /// Requests waiting in its queue.
    pub queued: usize,
    /// Its running requests: when each started and when it will end.
    pub running: &'a [(Time, Time)],
    /// Its latency stream as it stands (the next draws are its next runs').
    pub draws: &'a Rng,
}

/// The index of the worker where a request submitted at `now` would
/// finish first, among the open `workers` (by index); `None` when none is
/// open.
pub fn choose(
    model: &LatencyModel,
    knowledge: Knowledge,
    workers: &[WorkerView<'_>],
    now: Time,
) -> Option<usize> {
    let count = workers.len();
    workers
        .iter()
        .enumerate()
        .filter(|(_, view)| view.open)
        .map(|(worker, view)| {
            let mut draws = view.draws.clone();
            let mut latency = |at: Time| match knowledge {
                Knowledge::Draws => model.sample(worker, count, at.since_epoch(), &mut draws),
                Knowledge::Means | Knowledge::MeansLate => {
                    model.mean(worker, count, at.since_epoch())
                }
            };
            let mut free = now;
            for &(start, end) in view.running {
                let end = match knowledge {
                    Knowledge::Draws => end,
                    Knowledge::Means | Knowledge::MeansLate => {
                        start + model.mean(worker, count, start.since_epoch())
                    }
                };
                free = free.max(end);
            }
            for _ in 0..view.queued {
                free = free + latency(free);
            }
            (free + latency(free), worker)
        })
        .min()
        .map(|(_, worker)| worker)
}

/// Late binding by the means ([`Knowledge::MeansLate`]): which of the
/// first `waiting` requests of the line start now, and where. Each
/// request in turn goes to the open worker whose expected finish for it
/// is earliest (it frees at `now` if idle, else at its running request's
/// start plus the mean, at least 1 ns after `now`; then the means of the
/// requests planned before it); those planned on a worker free now start.
/// Returns `(position in the line, worker)` in line order; stops once no
/// worker is free now.
pub fn plan_late(
    model: &LatencyModel,
    workers: &[WorkerView<'_>],
    waiting: usize,
    now: Time,
) -> Vec<(usize, usize)> {
    let count = workers.len();
    let mean = |worker: usize, at: Time| model.mean(worker, count, at.since_epoch());
    let mut free_at: Vec<Option<Time>> = workers
        .iter()
        .enumerate()
        .map(|(worker, view)| {
            view.open.then(|| {
                view.running
                    .iter()
                    .map(|&(start, _)| {
                        (start + mean(worker, start)).max(now + Duration::from_nanos(1))
                    })
                    .max()
                    .unwrap_or(now)
            })
        })
        .collect();
    let mut starts = Vec::new();
    for position in 0..waiting {
        if !free_at.iter().flatten().any(|&at| at <= now) {
            break;
        }
        let best = free_at
            .iter()
            .enumerate()
            .filter_map(|(worker, at)| at.map(|at| (at + mean(worker, at), worker, at)))
            .min();
        let Some((end, worker, at)) = best else {
            break;
        };
        if at <= now {
            starts.push((position, worker));
        }
        if let Some(slot) = free_at.get_mut(worker) {
            *slot = Some(end);
        }
    }
    starts
}

/// A veto mask (over worker ordinals) that approves only `worker`.
pub fn approving_only(worker: usize) -> u64 {
    !(1u64 << (worker % 64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::latency::worker_stream;

    fn view<'a>(
        open: bool,
        queued: usize,
        running: &'a [(Time, Time)],
        draws: &'a Rng,
    ) -> WorkerView<'a> {
        WorkerView {
            open,
            queued,
            running,
            draws,
        }
    }

    const SPREAD: LatencyModel = LatencyModel::Spread {
        fastest: Duration::from_millis(10),
        slowest: Duration::from_millis(1000),
    };

    #[test]
    fn it_queues_behind_a_fast_worker_rather_than_start_on_a_slow_one() {
        let now = Time::ZERO + Duration::from_secs(1);
        let draws = worker_stream(0, 0, 0);
        let running = [(now, now + Duration::from_millis(10))];
        // Workers 0 (10 ms) and 1 (100 ms) run one request and have four
        // queued; worker 2 (1 s) is idle.
        let busy = |open| view(open, 4, &running, &draws);
        let idle = view(true, 0, &[], &draws);
        for knowledge in [Knowledge::Draws, Knowledge::Means] {
            let choice = |views: &[WorkerView<'_>]| choose(&SPREAD, knowledge, views, now);
            assert_eq!(choice(&[busy(true), busy(true), idle]), Some(0));
            // Out of rotation or full: the next best (about 510 ms
            // against 1 s).
            assert_eq!(choice(&[busy(false), busy(true), idle]), Some(1));
            assert_eq!(choice(&[busy(false), busy(false), idle]), Some(2));
            let closed = view(false, 0, &[], &draws);
            assert_eq!(choice(&[closed, closed, closed]), None);
        }
    }

    #[test]
    fn a_late_request_frees_its_worker_now_unless_its_true_end_is_known() {
        let now = Time::ZERO + Duration::from_secs(10);
        let draws = worker_stream(0, 0, 0);
        // Started at 0, expected to take 10 ms; truly ends in 5 ms.
        let running = [(Time::ZERO, now + Duration::from_millis(5))];
        let late = view(true, 0, &running, &draws);
        let idle = view(true, 0, &[], &draws);
        let fixed = LatencyModel::Fixed(Duration::from_millis(10));
        // By the means both would finish 10 ms from now: the lower index.
        assert_eq!(
            choose(&fixed, Knowledge::Means, &[idle, late], now),
            Some(0)
        );
        assert_eq!(
            choose(&fixed, Knowledge::Means, &[late, idle], now),
            Some(0)
        );
        // Knowing the true end, the idle worker finishes 5 ms sooner.
        assert_eq!(
            choose(&fixed, Knowledge::Draws, &[late, idle], now),
            Some(1)
        );
    }

    #[test]
    fn knowing_the_draws_it_avoids_the_worker_whose_next_run_is_long() {
        let model = LatencyModel::LogNormal {
            fastest_median: Duration::from_millis(100),
            slowest_median: Duration::from_millis(100),
            sigma_permille: 1000,
            slowdown: None,
        };
        let now = Time::ZERO;
        let streams = [worker_stream(3, 0, 0), worker_stream(3, 1, 0)];
        let next: Vec<Duration> = streams
            .iter()
            .enumerate()
            .map(|(worker, rng)| model.sample(worker, 2, Duration::ZERO, &mut rng.clone()))
            .collect();
        let views: Vec<WorkerView<'_>> = streams
            .iter()
            .map(|draws| view(true, 0, &[], draws))
            .collect();
        let shorter = usize::from(next[1] < next[0]);
        assert_eq!(choose(&model, Knowledge::Draws, &views, now), Some(shorter));
        assert_eq!(choose(&model, Knowledge::Means, &views, now), Some(0));
    }

    #[test]
    fn late_by_the_means_a_slower_free_worker_starts_only_what_the_fast_one_would_finish_later() {
        let now = Time::ZERO + Duration::from_secs(1);
        let draws = worker_stream(0, 0, 0);
        // Worker 0 (10 ms) runs a request that started now; workers 1
        // (100 ms) and 2 (1 s) are idle.
        let running = [(now, now + Duration::from_millis(10))];
        let views = [
            view(true, 0, &running, &draws),
            view(true, 0, &[], &draws),
            view(true, 0, &[], &draws),
        ];
        // Worker 0 finishes the first nine waiting requests by 100 ms
        // from now: none starts elsewhere.
        assert!(plan_late(&SPREAD, &views, 9, now).is_empty());
        // The tenth would finish there at 110 ms: worker 1 starts it now.
        assert_eq!(plan_late(&SPREAD, &views, 10, now), [(9, 1)]);
        // Closed workers take nothing.
        let closed = [view(false, 0, &[], &draws); 3];
        assert!(plan_late(&SPREAD, &closed, 10, now).is_empty());
    }

    #[test]
    fn the_mask_approves_one_worker() {
        let mask = approving_only(9);
        assert_eq!(mask & (1 << 9), 0);
        assert_eq!(mask.count_ones(), 63);
    }
}
