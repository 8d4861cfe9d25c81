//! What the benches share: their handlers, their request, a round's
//! figures, their knobs, and the closed-loop throughput harness that every
//! adapter's throughput bench runs on its own runtime ([`ClosedLoop`]).

use std::sync::Arc;
use std::time::Duration;

use foreman_driver::{
    async_trait, WorkerHandler, WorkerOperation, WorkerProtocolError, WorkerRequest,
};
use serde_json::{json, Value};

use crate::percentile;

mod closed_loop;

pub use closed_loop::{ChannelFloor, Client, ClosedLoop, Peer};

/// A handler that answers at once with the request's `node_id`: the
/// benches' echo worker.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

#[async_trait]
impl WorkerHandler for Echo {
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        Ok(Value::String(request.node_id))
    }
}

/// [`Echo`] after returning `Pending` once (it wakes itself first), as a
/// handler that waits on I/O would: a request then queues even on a
/// one-thread runtime, and the benches measure the queued path.
#[derive(Debug, Clone, Copy, Default)]
pub struct YieldingEcho;

#[async_trait]
impl WorkerHandler for YieldingEcho {
    async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
        futures_lite::future::yield_now().await;
        Echo.handle(request).await
    }
}

/// Which handler every worker of a bench runs, foreman's and its peers'
/// alike.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BenchHandler {
    /// [`Echo`].
    #[default]
    Echo,
    /// [`YieldingEcho`].
    Yielding,
}

impl BenchHandler {
    /// A new handler of this kind.
    pub fn handler(self) -> Arc<dyn WorkerHandler> {
        match self {
            BenchHandler::Echo => Arc::new(Echo),
            BenchHandler::Yielding => Arc::new(YieldingEcho),
        }
    }

    /// Its name, for a bench's header.
    pub fn name(self) -> &'static str {
        match self {
            BenchHandler::Echo => "echo handler",
            BenchHandler::Yielding => "yielding echo handler",
        }
    }
}

/// The small tool request every bench sends.
pub fn bench_request() -> WorkerRequest {
    WorkerRequest {
        request_id: "bench-request".into(),
        workflow_name: "bench".into(),
        node_id: "node".into(),
        timeout_ms: None,
        operation: WorkerOperation::Tool {
            tool: "echo".into(),
            input: json!({"x": 1}),
            scoped_input: json!({}),
        },
    }
}

/// One timed round of a closed-loop bench: its throughput and p99 latency.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Round {
    /// Requests answered per second.
    pub rps: f64,
    /// 99th percentile of the requests' latencies.
    pub p99: Duration,
}

impl Round {
    /// The round that answered `count` requests in `elapsed`, whose
    /// latencies in nanoseconds (in any order) are `latencies`.
    pub fn new(count: u64, elapsed: Duration, mut latencies: Vec<u64>) -> Self {
        latencies.sort_unstable();
        Round {
            rps: count as f64 / elapsed.as_secs_f64(),
            p99: Duration::from_nanos(percentile(&latencies, 99).unwrap_or(0)),
        }
    }

    /// The median throughput of `rounds` and their median p99 (each taken
    /// on its own); zero for no rounds.
    pub fn median(rounds: &[Round]) -> Round {
        let mid = rounds.len() / 2;
        let mut rps: Vec<f64> = rounds.iter().map(|r| r.rps).collect();
        rps.sort_by(f64::total_cmp);
        let mut p99s: Vec<Duration> = rounds.iter().map(|r| r.p99).collect();
        p99s.sort();
        Round {
            rps: rps.get(mid).copied().unwrap_or(0.0),
            p99: p99s.get(mid).copied().unwrap_or_default(),
        }
    }
}

/// The knobs of the closed-loop harness, read from the environment by
/// [`Knobs::from_env`]:
///
/// | variable | meaning | default |
/// |---|---|---|
/// | `FOREMAN_BENCH_HANDLER` | `yield`: every handler is a [`YieldingEcho`] | [`Echo`] |
/// | `FOREMAN_BENCH_N` | worker counts, comma-separated | `1,16,64` |
/// | `FOREMAN_BENCH_C` | caller counts, comma-separated | `1,16,256` |
/// | `FOREMAN_BENCH_POOLS` | the pools to run, comma-separated (`foreman`, `caller` and the bench's peers' names); each row then lists the throughput and p99 of each pool that ran | all |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knobs {
    /// The handler of every worker.
    pub handler: BenchHandler,
    /// The worker counts (N), one row group each.
    pub workers: Vec<usize>,
    /// The caller counts (C) measured for each worker count.
    pub callers: Vec<usize>,
    /// The names of the pools to run; empty for all.
    pub pools: Vec<String>,
}

impl Default for Knobs {
    /// Every pool, [`Echo`], N = 1, 16, 64 and C = 1, 16, 256.
    fn default() -> Self {
        Knobs {
            handler: BenchHandler::Echo,
            workers: vec![1, 16, 64],
            callers: vec![1, 16, 256],
            pools: Vec::new(),
        }
    }
}

impl Knobs {
    /// The knobs the environment sets (see [`Knobs`]), the defaults for the
    /// rest.
    pub fn from_env() -> Self {
        Knobs::from_vars(|name| std::env::var(name).ok())
    }

    /// The knobs that `var` (a variable's value by its name) sets.
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let list = |value: String| -> Vec<String> {
            value
                .split(',')
                .map(|item| item.trim().to_owned())
                .collect()
        };
        let sizes = |name: &str, default: Vec<usize>| {
            var(name).map_or(default, |value| {
                list(value).iter().filter_map(|n| n.parse().ok()).collect()
            })
        };
        let defaults = Knobs::default();
        Knobs {
            handler: if var("FOREMAN_BENCH_HANDLER").is_some_and(|name| name == "yield") {
                BenchHandler::Yielding
            } else {
                BenchHandler::Echo
            },
            workers: sizes("FOREMAN_BENCH_N", defaults.workers),
            callers: sizes("FOREMAN_BENCH_C", defaults.callers),
            pools: var("FOREMAN_BENCH_POOLS")
                .filter(|value| !value.is_empty())
                .map_or_else(Vec::new, list),
        }
    }

    /// Whether the pool named `name` runs.
    pub fn runs(&self, name: &str) -> bool {
        self.pools.is_empty() || self.pools.iter().any(|pool| pool == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs(vars: &[(&str, &str)]) -> Knobs {
        Knobs::from_vars(|name| {
            vars.iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn unset_knobs_give_every_pool_the_echo_handler_and_the_default_cells() {
        assert_eq!(knobs(&[]), Knobs::default());
        assert!(knobs(&[]).runs("tower1"));
        assert!(knobs(&[("FOREMAN_BENCH_POOLS", "")]).runs("floor"));
    }

    #[test]
    fn knobs_pick_the_handler_the_cells_and_the_pools() {
        let picked = knobs(&[
            ("FOREMAN_BENCH_HANDLER", "yield"),
            ("FOREMAN_BENCH_N", "2, 8,x"),
            ("FOREMAN_BENCH_C", "3"),
            ("FOREMAN_BENCH_POOLS", "foreman, tower1"),
        ]);
        assert_eq!(picked.handler, BenchHandler::Yielding);
        assert_eq!(picked.workers, [2, 8]);
        assert_eq!(picked.callers, [3]);
        assert!(picked.runs("foreman") && picked.runs("tower1"));
        assert!(!picked.runs("caller") && !picked.runs("tower"));
        assert_eq!(
            knobs(&[("FOREMAN_BENCH_HANDLER", "echo")]).handler,
            BenchHandler::Echo
        );
    }

    #[test]
    fn a_round_reports_throughput_and_the_99th_percentile_latency() {
        let latencies = (1..=200).rev().collect();
        let round = Round::new(1000, Duration::from_millis(500), latencies);
        assert_eq!(round.rps, 2000.0);
        assert_eq!(round.p99, Duration::from_nanos(198));
        assert_eq!(
            Round::new(0, Duration::from_secs(1), Vec::new()).p99,
            Duration::ZERO
        );
    }

    #[test]
    fn the_median_round_takes_throughput_and_p99_each_on_its_own() {
        let round = |rps, p99| Round {
            rps,
            p99: Duration::from_micros(p99),
        };
        let median = Round::median(&[round(3.0, 10), round(1.0, 30), round(2.0, 20)]);
        assert_eq!(median, round(2.0, 20));
        let median = Round::median(&[round(5.0, 1), round(1.0, 9), round(3.0, 5)]);
        assert_eq!(median, round(3.0, 5));
        assert_eq!(Round::median(&[]), Round::default());
    }
}
