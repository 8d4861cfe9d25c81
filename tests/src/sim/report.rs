//! The named scenarios' report: every scenario run with every contender,
//! one markdown table per scenario with a row per contender
//! (`sim --scenarios-report`, for `docs/BENCHMARKS.md`).

use std::fmt::Write as _;
use std::time::Duration;

use super::closed_loop::run_closed_loop;
use super::contenders::{Contender, CONTENDERS};
use super::named::ClosedLoop;
use super::outcome::ClosedLoopOutcome;

/// A latency as the tables print it: milliseconds below a second, seconds
/// above.
pub fn human(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs < 1.0 {
        format!("{:.1} ms", secs * 1000.0)
    } else {
        format!("{secs:.2} s")
    }
}

/// Runs `scenario` with every contender of [`CONTENDERS`], in order.
pub fn run_every_contender(scenario: &ClosedLoop) -> Vec<ClosedLoopOutcome> {
    CONTENDERS
        .iter()
        .map(|contender: &Contender| run_closed_loop(scenario, contender, false))
        .collect()
}

/// One markdown table: a heading naming the scenario, then a row per
/// outcome (and, under the table, any broken rule).
pub fn table(scenario: &ClosedLoop, outcomes: &[ClosedLoopOutcome]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "#### `{}`: {}\n", scenario.name, scenario.about);
    let _ = writeln!(
        out,
        "| policy | p50 | p99 | p999 | completion | ok | failed | timeouts | refused (queue full / \
         no healthy worker / circuit open) | ejections | transitions (per worker) | attempts | runs per worker (%) |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for o in outcomes {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {} | {} | {} |",
            o.policy,
            human(o.p50),
            human(o.p99),
            human(o.p999),
            human(o.completion),
            o.ok,
            o.failed,
            o.timeouts(),
            o.refused_queue_full,
            o.refused_no_healthy_worker,
            o.refused_circuit_open,
            o.ejections,
            o.transitions_by_worker(),
            o.attempts,
            o.shares()
        );
    }
    for o in outcomes {
        if let Some(failure) = &o.failure {
            let _ = writeln!(out, "\n{} FAILED: {failure}", o.policy);
        }
    }
    out
}
