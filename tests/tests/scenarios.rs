//! The named scenarios under `cargo test`, each run in full (5 000
//! requests; about 2 s for all of them in a debug build) with every
//! contender (every routing policy and the oracle) under the harness's
//! checks: the facts that hold for every contender, and the oracle's
//! place.

use std::time::Duration;

use foreman_core::{PoolConfig, RetryBudget};

use foreman_tests::sim::report::run_every_contender;
use foreman_tests::sim::{run_closed_loop, ClosedLoop, ClosedLoopOutcome, Contender, CONTENDERS};

/// Runs `scenario` with every contender; every run passes the harness's
/// checks (every accepted request answered exactly once, no deadline
/// missed, health as the rules say) and answers every request it
/// accepted.
fn run_all(scenario: ClosedLoop) -> Vec<ClosedLoopOutcome> {
    let outcomes = run_every_contender(&scenario);
    for outcome in &outcomes {
        let figures = outcome.figures();
        eprintln!("{figures}");
        assert_eq!(outcome.failure, None, "{figures}");
        assert_eq!(outcome.answered, outcome.accepted, "{figures}");
        assert_eq!(
            outcome.accepted + outcome.refused(),
            outcome.submitted,
            "{figures}"
        );
    }
    outcomes
}

/// No worker is ejected and no request refused, under any contender.
fn assert_no_ejection_nor_refusal(outcomes: &[ClosedLoopOutcome]) {
    for outcome in outcomes {
        assert_eq!(outcome.ejections, 0, "{}", outcome.figures());
        assert_eq!(outcome.refused(), 0, "{}", outcome.figures());
    }
}

fn row<'a>(outcomes: &'a [ClosedLoopOutcome], policy: &str) -> &'a ClosedLoopOutcome {
    outcomes
        .iter()
        .find(|outcome| outcome.policy == policy)
        .unwrap_or_else(|| panic!("no {policy} row"))
}

/// The oracle (knowing every draw) has a p999 no worse than the
/// reference's round robin.
fn assert_oracle_no_worse_than_round_robin(outcomes: &[ClosedLoopOutcome]) {
    let oracle = row(outcomes, "oracle");
    let round_robin = row(outcomes, "round_robin");
    assert!(
        oracle.p999 <= round_robin.p999,
        "oracle p999 {:?} > round robin's {:?}",
        oracle.p999,
        round_robin.p999
    );
}

/// Two healthy 50 ms workers, eight closed-loop callers with a 120 ms
/// budget, 10 s: under every contender the excess is shed by expiry, no
/// worker is ever ejected (no change to `Unavailable`), and requests
/// succeed in every second.
#[test]
fn overload_of_healthy_workers_sheds_load_and_ejects_none_under_every_policy() {
    for outcome in run_all(ClosedLoop::OVERLOAD_OF_HEALTHY_WORKERS) {
        let figures = outcome.figures();
        assert_eq!(outcome.ejections, 0, "{figures}");
        assert_eq!(outcome.transitions, 0, "{figures}");
        assert_eq!(outcome.refused_no_healthy_worker, 0, "{figures}");
        assert_eq!(outcome.ok_per_second.len(), 10);
        assert!(
            outcome.ok_per_second.iter().all(|&ok| ok > 0),
            "goodput fell to zero in some second: {figures}"
        );
        // Two workers at 50 ms serve at most 400 requests in 10 s; the
        // pool keeps them busy with requests that can still finish.
        assert!(outcome.ok >= 360, "{figures}");
        assert_eq!(
            outcome.timeouts_running, 0,
            "no request starts without the budget to finish: {figures}"
        );
    }
}

/// Workers from 1 ms to 1 s: no healthy worker is ejected, late binding
/// keeps the tail far below round robin's (whose callers pile up behind
/// the 1 s worker), and the oracle is no worse than round robin.
#[test]
fn spread_latencies_eject_none_and_late_binding_cuts_the_tail() {
    let outcomes = run_all(ClosedLoop::SPREAD_LATENCIES);
    assert_no_ejection_nor_refusal(&outcomes);
    assert_oracle_no_worse_than_round_robin(&outcomes);
    let idle_first = row(&outcomes, "idle_first");
    let round_robin = row(&outcomes, "round_robin");
    assert!(idle_first.p999 * 10 < round_robin.p999);
    assert!(idle_first.p999 < Duration::from_secs(1));
    // Knowing every latency, the oracle spreads the fifty callers over the
    // five fastest workers so that every request finishes within 28 ms.
    let oracle = row(&outcomes, "oracle");
    assert!(
        oracle.p999 <= Duration::from_millis(30),
        "{}",
        oracle.figures()
    );
}

/// LLM-like workers, the fastest turning ten times slower midway: no
/// healthy worker is ejected and the oracle is no worse than round robin.
#[test]
fn llm_like_slowdown_ejects_none_and_the_oracle_beats_round_robin() {
    let outcomes = run_all(ClosedLoop::LLM_LIKE_SLOWDOWN);
    assert_no_ejection_nor_refusal(&outcomes);
    assert_oracle_no_worse_than_round_robin(&outcomes);
}

/// A worker failing 20 % and one failing every request while its probe
/// says Healthy: the always-failing worker is ejected and gets at most a
/// trial per probe interval, under 2 % of the runs, and no request is
/// refused.
#[test]
fn flaky_and_dead_workers_keep_the_dead_one_to_a_trickle() {
    let outcomes = run_all(ClosedLoop::FLAKY_AND_DEAD);
    assert_oracle_no_worse_than_round_robin(&outcomes);
    for outcome in &outcomes {
        let figures = outcome.figures();
        assert!(outcome.ejections > 0, "{figures}");
        assert!(outcome.share_percent(1) < 2.0, "{figures}");
        assert_eq!(outcome.refused(), 0, "{figures}");
        assert!(outcome.failed > 0, "{figures}");
    }
}

/// Six of ten workers failing every request from 20 s on: no request is
/// refused for want of a worker while four are alive.
#[test]
fn six_of_ten_failing_refuses_no_request_for_want_of_a_worker() {
    let outcomes = run_all(ClosedLoop::SIX_OF_TEN_FAIL);
    assert_oracle_no_worse_than_round_robin(&outcomes);
    for outcome in &outcomes {
        let figures = outcome.figures();
        assert_eq!(outcome.refused_no_healthy_worker, 0, "{figures}");
        assert!(outcome.ejections >= 6, "{figures}");
    }
}

/// Every worker failing half of its requests retryably: a pool without a
/// retry policy runs every request that started exactly once, or once
/// plus its hedges (attempts are counted per request); one with a policy
/// retries within its attempts and its budget: the extra attempts stay
/// within the budget's share of the requests plus its reserve over the
/// run.
#[test]
fn retry_storm_retries_only_within_the_budget() {
    let outcomes = run_all(ClosedLoop::RETRY_STORM);
    assert_oracle_no_worse_than_round_robin(&outcomes);
    for outcome in &outcomes {
        let figures = outcome.figures();
        let started = outcome.accepted - outcome.timeouts_queued;
        let config = Contender::named(outcome.policy)
            .map(|contender| contender.configure(PoolConfig::default()));
        let retries = config.as_ref().and_then(|config| config.retries);
        let max_hedges = config
            .as_ref()
            .and_then(|config| config.hedging)
            .map_or(0, |policy| policy.max_hedges);
        match retries {
            None => {
                assert!(
                    outcome.most_attempts <= 1 + u64::from(max_hedges),
                    "{figures}"
                );
                assert_eq!(outcome.attempts, started + outcome.hedged, "{figures}");
                let budget = RetryBudget::default();
                let windows = outcome.completion.as_secs_f64() / budget.window.as_secs_f64();
                let allowance = f64::from(budget.share_percent) / 100.0 * started as f64
                    + f64::from(budget.reserve_per_second)
                        * budget.window.as_secs_f64()
                        * windows.ceil();
                assert!(
                    (outcome.hedged as f64) <= allowance,
                    "{} hedges over an allowance of {allowance}: {figures}",
                    outcome.hedged
                );
            }
            Some(policy) => {
                assert!(
                    outcome.most_attempts <= u64::from(policy.max_attempts),
                    "{figures}"
                );
                let extra = outcome.attempts - started;
                let budget = policy.budget;
                let windows = outcome.completion.as_secs_f64() / budget.window.as_secs_f64();
                let allowance = f64::from(budget.share_percent) / 100.0 * started as f64
                    + f64::from(budget.reserve_per_second)
                        * budget.window.as_secs_f64()
                        * windows.ceil();
                assert!(
                    (extra as f64) <= allowance,
                    "{extra} retries over an allowance of {allowance}: {figures}"
                );
                assert!(extra > 0, "a retrying pool retried nothing: {figures}");
            }
        }
        assert!(outcome.failed > 0, "{figures}");
    }
}

/// A named scenario run twice gives the same trace hash, under every
/// contender.
/// Heavy-tailed LLM-like workers with idle ones about: hedging at each
/// worker's p95 cuts the p999 under both routing policies it runs with,
/// by far, for a few per cent more attempts, each request still answered
/// once; pools without hedging make none.
#[test]
fn llm_like_heavy_tail_hedging_at_p95_cuts_the_tail() {
    let outcomes = run_all(ClosedLoop::LLM_LIKE_HEAVY_TAIL);
    assert_no_ejection_nor_refusal(&outcomes);
    for (plain, hedged) in [
        ("idle_first", "idle_first_hedged_p95"),
        ("peak_ewma", "peak_ewma_hedged_p95"),
    ] {
        let (plain, hedged) = (row(&outcomes, plain), row(&outcomes, hedged));
        let figures = hedged.figures();
        assert_eq!(plain.hedged, 0, "{}", plain.figures());
        assert!(hedged.hedged > 0, "{figures}");
        assert!(
            hedged.p999.as_secs_f64() <= 0.6 * plain.p999.as_secs_f64(),
            "p999 {:?} against {:?} without hedging: {figures}",
            hedged.p999,
            plain.p999
        );
        assert!(hedged.p99 < plain.p99, "{figures}");
        assert_eq!(
            hedged.attempts,
            hedged.accepted + hedged.hedged,
            "{figures}"
        );
        assert!(
            hedged.attempts as f64 <= 1.1 * hedged.accepted as f64,
            "{figures}"
        );
        assert!(hedged.hedges_won <= hedged.hedged, "{figures}");
    }
}

#[test]
fn a_named_scenario_is_its_own_replay() {
    let scenario = ClosedLoop::LLM_LIKE_SLOWDOWN.with_requests(300);
    for contender in CONTENDERS {
        let first = run_closed_loop(&scenario, contender, false);
        let second = run_closed_loop(&scenario, contender, true);
        assert_eq!(first.trace_hash, second.trace_hash, "{}", contender.name);
        assert_eq!(first.p999, second.p999);
        assert!(second.full.is_some_and(|full| !full.is_empty()));
    }
}

/// Every contender is known by its name, and the list holds the oracle.
#[test]
fn every_contender_is_known_by_name() {
    for contender in CONTENDERS {
        let found = Contender::named(contender.name).expect("listed");
        assert_eq!(found.name, contender.name);
    }
    assert!(Contender::named("oracle")
        .and_then(|c| c.oracle())
        .is_some());
    assert!(Contender::named("idle_first").is_some_and(|c| c.oracle().is_none()));
    assert!(Contender::named("nonsense").is_none());
}
