//! What the named scenarios measure ([`CONTENDERS`]): every routing policy
//! and recovery preset of the core, and the clairvoyant oracle. A new
//! policy or preset is measured everywhere (the simulator's reports, the
//! tokio example) by adding one entry to that list.

use foreman_core::{
    HedgePolicy, OutlierDetection, PanicMode, PoolConfig, RecoveryPolicy, RetryPolicy,
    RoutingPolicy,
};

use super::oracle::Knowledge;

/// How a contender routes.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// The core's own routing, on the configuration this function makes
    /// from the scenario's.
    Pool(fn(PoolConfig) -> PoolConfig),
    /// The clairvoyant oracle ([`super::oracle`]) knowing this much of
    /// the latencies, which places every request itself through a circuit
    /// breaker on the core's default configuration; the simulator alone
    /// can run it.
    Oracle(Knowledge),
}

/// One row of every scenario's table.
#[derive(Debug, Clone, Copy)]
pub struct Contender {
    /// The row's name (`sim --policy NAME`).
    pub name: &'static str,
    /// How it routes.
    pub kind: Kind,
}

impl Contender {
    /// The configuration a pool contender runs the scenario with, from the
    /// scenario's `base` (the oracle: `base` with every request pinned to
    /// the worker its breaker approved).
    pub fn configure(&self, base: PoolConfig) -> PoolConfig {
        match self.kind {
            Kind::Pool(configure) => configure(base),
            Kind::Oracle(_) => base.vetted_by_breaker(true),
        }
    }

    /// What the oracle knows, if this is an oracle.
    pub fn oracle(&self) -> Option<Knowledge> {
        match self.kind {
            Kind::Oracle(knowledge) => Some(knowledge),
            Kind::Pool(_) => None,
        }
    }

    /// The contender called `name`.
    pub fn named(name: &str) -> Option<Contender> {
        CONTENDERS
            .iter()
            .find(|contender| contender.name == name)
            .copied()
    }

    /// Every contender's name, comma-separated.
    pub fn names() -> String {
        let names: Vec<&str> = CONTENDERS.iter().map(|contender| contender.name).collect();
        names.join(", ")
    }
}

/// Every contender, one row each in every scenario's table: each routing
/// policy of the core (a recovery preset goes here too, as a configuration
/// function), then the oracle knowing every draw (the limit), the oracle
/// knowing only the latency functions' means, and the same binding each
/// request late (the limit of an online latency-aware policy).
pub const CONTENDERS: &[Contender] = &[
    Contender {
        name: "round_robin",
        kind: Kind::Pool(|config| config.with_routing(RoutingPolicy::RoundRobin)),
    },
    Contender {
        name: "idle_first",
        kind: Kind::Pool(|config| config.with_routing(RoutingPolicy::IdleFirst)),
    },
    Contender {
        name: "least_loaded",
        kind: Kind::Pool(|config| config.with_routing(RoutingPolicy::LeastLoaded)),
    },
    Contender {
        name: "peak_ewma",
        kind: Kind::Pool(|config| config.with_routing(RoutingPolicy::PeakEwma)),
    },
    Contender {
        name: "idle_first_outlier",
        kind: Kind::Pool(|config| {
            config
                .with_routing(RoutingPolicy::IdleFirst)
                .with_recovery(RecoveryPolicy::outlier_detection())
        }),
    },
    Contender {
        name: "idle_first_outlier_fail_fast",
        kind: Kind::Pool(|config| {
            config.with_routing(RoutingPolicy::IdleFirst).with_recovery(
                RecoveryPolicy::OutlierDetection(
                    OutlierDetection::DEFAULT.with_panic_mode(PanicMode::FailFast),
                ),
            )
        }),
    },
    Contender {
        name: "peak_ewma_outlier",
        kind: Kind::Pool(|config| {
            config
                .with_routing(RoutingPolicy::PeakEwma)
                .with_recovery(RecoveryPolicy::outlier_detection())
        }),
    },
    Contender {
        name: "peak_ewma_outlier_retries",
        kind: Kind::Pool(|config| {
            config
                .with_routing(RoutingPolicy::PeakEwma)
                .with_recovery(RecoveryPolicy::outlier_detection())
                .with_retries(Some(RetryPolicy::default()))
        }),
    },
    Contender {
        name: "idle_first_hedged_p95",
        kind: Kind::Pool(|config| {
            config
                .with_routing(RoutingPolicy::IdleFirst)
                .with_hedging(Some(HedgePolicy::default()))
        }),
    },
    Contender {
        name: "peak_ewma_hedged_p95",
        kind: Kind::Pool(|config| {
            config
                .with_routing(RoutingPolicy::PeakEwma)
                .with_hedging(Some(HedgePolicy::default()))
        }),
    },
    Contender {
        name: "oracle",
        kind: Kind::Oracle(Knowledge::Draws),
    },
    Contender {
        name: "oracle_means",
        kind: Kind::Oracle(Knowledge::Means),
    },
    Contender {
        name: "oracle_means_late",
        kind: Kind::Oracle(Knowledge::MeansLate),
    },
];
