//! The router's unit tests: each policy's order and pick.

use super::*;
use crate::slab::SlabKey;

const OUT: Membership = Membership {
    eligible: false,
    idle: false,
    preferred: false,
    held: false,
};
const BUSY: Membership = Membership {
    eligible: true,
    idle: false,
    preferred: false,
    held: false,
};
const DEGRADED: Membership = Membership {
    eligible: true,
    idle: true,
    preferred: false,
    held: false,
};
const HEALTHY: Membership = Membership {
    eligible: true,
    idle: true,
    preferred: true,
    held: false,
};

fn worker(index: u32) -> WorkerKey {
    WorkerKey(SlabKey {
        index,
        generation: 0,
    })
}

fn indices(workers: impl Iterator<Item = WorkerKey>) -> Vec<u32> {
    workers.map(WorkerKey::index).collect()
}

/// Asserts the order `candidates` tries workers in, and that
/// `first_candidate` is its first.
fn assert_order(router: &Router, expected: &[u32]) {
    assert_eq!(indices(router.candidates()), expected);
    assert_eq!(
        router.first_candidate().map(WorkerKey::index),
        expected.first().copied()
    );
}

/// Workers 0 busy, 1 Degraded and idle, 2 and 3 Healthy and idle.
fn mixed(policy: RoutingPolicy) -> Router {
    let mut router = Router::new(policy);
    for (index, membership) in [(0, BUSY), (1, DEGRADED), (2, HEALTHY), (3, HEALTHY)] {
        router.set(worker(index), OUT, membership);
    }
    router
}

#[test]
fn membership_reads_back_what_was_set() {
    let router = mixed(RoutingPolicy::IdleFirst);
    assert_eq!(router.membership(worker(0)), BUSY);
    assert_eq!(router.membership(worker(1)), DEGRADED);
    assert_eq!(router.membership(worker(2)), HEALTHY);
    assert_eq!(router.membership(worker(7)), OUT);
    let other_generation = WorkerKey(SlabKey {
        index: 2,
        generation: 1,
    });
    assert_eq!(router.membership(other_generation), OUT);
    assert_eq!(router.eligible_len(), 4);
    assert_eq!(router.idle_len(), 3);
    assert_eq!(indices(router.iter_eligible()), vec![0, 1, 2, 3]);
    assert_eq!(indices(router.iter_idle()), vec![2, 3, 1]);
}

#[test]
fn idle_first_tries_healthy_then_degraded_then_busy() {
    let router = mixed(RoutingPolicy::IdleFirst);
    assert_order(&router, &[2, 3, 1, 0]);
}

#[test]
fn idle_first_falls_back_to_degraded_then_to_busy_workers() {
    let mut router = mixed(RoutingPolicy::IdleFirst);
    router.set(worker(2), HEALTHY, BUSY);
    router.set(worker(3), HEALTHY, BUSY);
    assert_order(&router, &[1, 0, 2, 3]);
    router.set(worker(1), DEGRADED, BUSY);
    assert_eq!(router.idle_len(), 0);
    assert_order(&router, &[0, 1, 2, 3]);
}

#[test]
fn a_pick_moves_the_next_pick_on_and_wraps() {
    let mut router = mixed(RoutingPolicy::IdleFirst);
    router.picked(worker(2));
    assert_order(&router, &[3, 2, 1, 0]);
    router.picked(worker(3));
    assert_order(&router, &[2, 3, 1, 0]);
}

#[test]
fn round_robin_ignores_idleness_and_health() {
    let mut router = mixed(RoutingPolicy::RoundRobin);
    assert_order(&router, &[0, 1, 2, 3]);
    router.picked(worker(1));
    assert_order(&router, &[2, 3, 0, 1]);
}

#[test]
fn a_worker_that_leaves_is_no_candidate() {
    let mut router = mixed(RoutingPolicy::IdleFirst);
    router.set(worker(2), HEALTHY, OUT);
    router.set(worker(0), BUSY, OUT);
    assert_eq!(router.membership(worker(2)), OUT);
    assert_eq!(router.membership(worker(0)), OUT);
    assert_order(&router, &[3, 1]);
    assert_eq!(indices(router.iter_eligible()), vec![1, 3]);
    assert_eq!(indices(router.iter_idle()), vec![3, 1]);
    router.set(worker(3), HEALTHY, OUT);
    router.set(worker(1), DEGRADED, OUT);
    assert_eq!(router.eligible_len(), 0);
    assert_order(&router, &[]);
}

#[test]
fn a_worker_can_join_at_a_high_slot_and_change_health_in_place() {
    let mut router = Router::new(RoutingPolicy::IdleFirst);
    router.set(worker(70), OUT, DEGRADED);
    router.set(worker(5), OUT, BUSY);
    assert_order(&router, &[70, 5]);
    router.set(worker(70), DEGRADED, HEALTHY);
    assert_eq!(router.membership(worker(70)), HEALTHY);
    assert_eq!(router.idle_len(), 1);
    router.set(worker(5), BUSY, HEALTHY);
    assert_order(&router, &[5, 70]);
    router.set(worker(5), HEALTHY, HEALTHY);
    assert_eq!(router.membership(worker(5)), HEALTHY);
}

/// A cost function from per-slot values (Healthy unless listed in
/// `degraded`).
fn costs<'a>(values: &'a [f64], degraded: &'a [u32]) -> impl Fn(WorkerKey) -> Cost + 'a {
    move |worker| Cost {
        value: values
            .get(worker.index() as usize)
            .copied()
            .unwrap_or(f64::INFINITY),
        healthy: !degraded.contains(&worker.index()),
    }
}

/// How often each slot index is picked in `draws` picks.
fn pick_counts(router: &Router, draws: usize, cost: impl Fn(WorkerKey) -> Cost) -> Vec<usize> {
    let mut rng = Rng::new(17);
    let mut counts = vec![0; 8];
    for _ in 0..draws {
        let picked = router.pick(&mut rng, &cost).expect("a worker is eligible");
        if let Some(count) = counts.get_mut(picked.index() as usize) {
            *count += 1;
        }
    }
    counts
}

#[test]
fn a_load_aware_pick_draws_among_idle_workers_while_any_is_idle() {
    for policy in [RoutingPolicy::LeastLoaded, RoutingPolicy::PeakEwma] {
        let router = mixed(policy);
        // Worker 0 is busy but the cheapest: it is never drawn.
        let counts = pick_counts(&router, 3_000, costs(&[0.0, 1.0, 5.0, 5.0], &[1]));
        assert_eq!(counts[0], 0, "{policy:?}: {counts:?}");
        assert!(
            counts[1..4].iter().all(|&n| n > 0),
            "{policy:?}: {counts:?}"
        );
    }
}

#[test]
fn two_choices_never_pick_the_costliest_of_three_and_favour_the_cheapest() {
    let mut router = Router::new(RoutingPolicy::LeastLoaded);
    for index in 0..3 {
        router.set(worker(index), OUT, BUSY);
    }
    let counts = pick_counts(&router, 3_000, costs(&[1.0, 2.0, 3.0], &[]));
    // The cheapest wins both pairs it is drawn in (2/3 of draws), the
    // middle one the pair without the cheapest (1/3), the costliest none.
    assert_eq!(counts[2], 0, "{counts:?}");
    assert!((1_850..2_150).contains(&counts[0]), "{counts:?}");
    assert_eq!(counts[0] + counts[1], 3_000);
}

#[test]
fn a_tie_goes_to_the_healthy_candidate() {
    let mut router = Router::new(RoutingPolicy::PeakEwma);
    router.set(worker(0), OUT, BUSY);
    router.set(worker(1), OUT, BUSY);
    let counts = pick_counts(&router, 500, costs(&[4.0, 4.0], &[0]));
    assert_eq!(counts[..2], [0, 500]);
    // Both Healthy: the first drawn, so either.
    let counts = pick_counts(&router, 2_000, costs(&[4.0, 4.0], &[]));
    assert!(counts[0] > 800 && counts[1] > 800, "{counts:?}");
}

#[test]
fn a_lone_eligible_worker_is_picked_without_a_comparison_and_none_gives_none() {
    let mut router = Router::new(RoutingPolicy::LeastLoaded);
    let mut rng = Rng::new(1);
    assert_eq!(router.pick(&mut rng, costs(&[], &[])), None);
    router.set(worker(5), OUT, BUSY);
    let panicking = |_: WorkerKey| -> Cost { unreachable!("a lone candidate is not compared") };
    assert_eq!(router.pick(&mut rng, panicking), Some(worker(5)));
}

#[test]
fn round_robin_and_idle_first_pick_their_first_candidate_without_drawing() {
    for policy in [RoutingPolicy::RoundRobin, RoutingPolicy::IdleFirst] {
        let router = mixed(policy);
        let mut rng = Rng::new(9);
        let untouched = rng.clone();
        let picked = router.pick(&mut rng, costs(&[], &[]));
        assert_eq!(picked, router.first_candidate());
        assert_eq!(rng, untouched, "{policy:?} drew from the generator");
    }
}

#[test]
fn load_aware_policies_list_candidates_idle_first() {
    for policy in [RoutingPolicy::LeastLoaded, RoutingPolicy::PeakEwma] {
        assert_order(&mixed(policy), &[2, 3, 1, 0]);
    }
}

#[test]
fn the_throughput_sum_follows_each_slot_and_returns_to_exactly_zero() {
    let mut router = Router::new(RoutingPolicy::PeakEwma);
    router.set_rate(worker(3), 0.1);
    router.set_rate(worker(7), 0.3);
    assert!((router.rate_sum() - 0.4).abs() < 1e-15);
    router.set_rate(worker(3), 0.2);
    assert!((router.rate_sum() - 0.5).abs() < 1e-15);
    assert_eq!(router.rate(worker(3)), 0.2);
    assert_eq!(router.rate(worker(9)), 0.0);
    router.set_rate(worker(3), 0.0);
    router.set_rate(worker(7), 0.0);
    assert_eq!(router.rate_sum(), 0.0);
    assert_eq!(router.rate_total(), 0.0);
}

#[test]
fn a_held_worker_is_picked_only_when_no_other_is_eligible() {
    const HELD: Membership = Membership {
        eligible: true,
        idle: false,
        preferred: false,
        held: true,
    };
    for policy in RoutingPolicy::ALL {
        let mut router = Router::new(policy);
        let mut rng = Rng::new(3);
        router.set(worker(1), OUT, HELD);
        router.set(worker(2), OUT, BUSY);
        assert_eq!(router.eligible_len(), 2);
        assert_eq!(router.idle_len(), 0);
        assert_eq!(router.pick(&mut rng, costs(&[], &[])), Some(worker(2)));
        assert_eq!(indices(router.candidates()), [2, 1]);
        router.set(worker(2), BUSY, OUT);
        assert_eq!(router.pick(&mut rng, costs(&[], &[])), Some(worker(1)));
        assert!(router.membership(worker(1)).held);
    }
}
