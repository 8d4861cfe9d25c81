//! How new requests are spread over workers: [`RoutingPolicy`] and the
//! defaults of its load-aware policies' tuning.

use std::time::Duration;

#[cfg(doc)]
use super::PoolConfig;

/// How new requests are spread over workers.
///
/// | policy | rule | cost per pick |
/// |---|---|---|
/// | `RoundRobin` | workers in turn | O(log n) |
/// | `IdleFirst` | free workers in turn (Healthy first), else workers with room in turn | O(log n) |
/// | `LeastLoaded` | the less loaded of two random workers | O(log n) |
/// | `PeakEwma` | the cheaper of two random workers by latency × load, and a free slow worker may leave waiting requests to a faster busy one | O(log n) |
///
/// **Pinned requests.** Under every policy but `RoundRobin` (which never
/// moves a request), a queued request may run on whichever worker frees up
/// first ([`PoolConfig::late_binding`]) unless it is pinned to the worker
/// it was queued on: when late binding is off (so in a pool whose circuit
/// breaker vets every worker, see [`PoolConfig::vetted_by_breaker`]), or
/// when a circuit breaker vetoed some worker for it. A pinned request is
/// never left to another worker by `PeakEwma`'s deferral either.
///
/// **Which default.** [`IdleFirst`](Self::IdleFirst) stays the default: it
/// never leaves a worker idle while a request waits, needs no tuning, and
/// has the lowest median (or within 1 % of it) in every named scenario of
/// the simulator. Where
/// worker speeds differ widely, [`PeakEwma`](Self::PeakEwma) is the better
/// choice: with ten workers spread from 1 ms to 1 s it answers within
/// 1.03 times the clairvoyant oracle's p999 (idle-first: 17 times), but its
/// median is 17 % above idle-first's there (the oracle's is 19 % above:
/// a closed loop's mean latency is fixed by the throughput, and evening
/// out the tail raises the median), and when every worker fails half its
/// requests its median and completion time are about 10 % worse
/// (`docs/BENCHMARKS.md`, `docs/DECISIONS.md`).
///
/// **`LeastLoaded` and `IdleFirst` under a backlog.** Both take an idle
/// worker while there is one (`LeastLoaded` draws its two candidates among
/// the idle ones first, so it never queues a request behind a busy worker
/// while another is free); they differ only in where a request waits when
/// every worker is busy. With late binding, where it waits decides only
/// whose room it takes, not which worker runs it (the first to free runs
/// the oldest), so in a closed loop with a backlog the two behave alike;
/// `LeastLoaded` makes its difference with late binding off (pinned
/// requests) and with several run slots per worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RoutingPolicy {
    /// The reference's rule: take workers in turn, skip unavailable ones and
    /// fall through to the next when a queue is full. A request can wait
    /// behind a busy worker while another sits idle.
    RoundRobin,
    /// Round robin over workers with a free run slot, Healthy ones before
    /// Degraded ones; only when every schedulable worker is busy, round
    /// robin over those with queue room (the default: no request queues
    /// while a worker is idle). With [`PoolConfig::late_binding`], a queued
    /// request then runs on the first schedulable worker to free up, in the
    /// order requests arrived.
    #[default]
    IdleFirst,
    /// Power of two choices on load: two distinct workers are drawn at
    /// random from the core's [`Rng`](crate::Rng) among the idle ones (a
    /// free run slot) if any, else among those with queue room, and the one
    /// with fewer requests (running plus queued) wins; a tie goes to the
    /// Healthy one, then to the first drawn. A Degraded worker's load
    /// is raised by [`PoolConfig::degraded_share_percent`] (see there). Late binding applies as under `IdleFirst`.
    LeastLoaded,
    /// Power of two choices on expected latency, as tower's and Finagle's
    /// peak-EWMA balancers: each worker keeps a moving average of its run
    /// times that jumps at once to a slower run and decays towards faster
    /// ones with the time constant [`PoolConfig::ewma_decay`]; its cost is
    /// that estimate times (running + queued + 1), a worker with no sample
    /// yet costing [`PoolConfig::unsampled_latency`]. Candidates are drawn
    /// as under `LeastLoaded`, the cheaper wins (ties as there), and a
    /// Degraded worker's cost is raised by
    /// [`PoolConfig::degraded_share_percent`]. A failed run is charged at
    /// least the worker's estimate, so a worker that fails fast does not
    /// look fast. Late binding is latency-aware: a free worker leaves the
    /// oldest waiting request to a busy worker expected to finish it
    /// sooner, for a bounded time (at most its own estimate or
    /// [`PoolConfig::unsampled_latency`] from the request's arrival), and
    /// meanwhile runs a younger request that the faster workers would not
    /// finish sooner.
    PeakEwma,
}

impl RoutingPolicy {
    /// Every policy, in declaration order (for tests and simulators that
    /// draw one).
    pub const ALL: [RoutingPolicy; 4] = [
        RoutingPolicy::RoundRobin,
        RoutingPolicy::IdleFirst,
        RoutingPolicy::LeastLoaded,
        RoutingPolicy::PeakEwma,
    ];

    /// Whether the policy draws two candidates and compares their load
    /// (`LeastLoaded`, `PeakEwma`).
    pub fn is_load_aware(self) -> bool {
        matches!(self, RoutingPolicy::LeastLoaded | RoutingPolicy::PeakEwma)
    }
}

/// The default [`PoolConfig::ewma_decay`]: 10 s, Finagle's.
pub const DEFAULT_EWMA_DECAY: Duration = Duration::from_secs(10);

/// The default [`PoolConfig::unsampled_latency`]: 1 s, tower's usual
/// starting estimate.
pub const DEFAULT_UNSAMPLED_LATENCY: Duration = Duration::from_secs(1);

/// The default [`PoolConfig::degraded_share_percent`]: 50.
pub const DEFAULT_DEGRADED_SHARE_PERCENT: u32 = 50;
