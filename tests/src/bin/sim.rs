//! The simulator's command line: runs seeds and prints one summary line,
//! or runs the named scenarios.
//!
//! ```text
//! sim --seeds N [--from S] [--requests R] [--jobs J] [--expect-failure]
//! sim --seed S [--requests R] [--trace]
//! sim --soak            (1 000 000 seeds, for long runs)
//! sim --scenario NAME [--policy P] [--requests R] [--trace]
//! sim --scenarios-report [--requests R]
//! ```
//! The last line of a seed run is always
//! `seeds=N failures=F sim_requests=… sim_seconds=… wall_seconds=… requests_per_wall_second=… hedged=… hedges_won=…`;
//! the exit code is non-zero when F > 0 (inverted by `--expect-failure`,
//! used to prove that a planted bug is caught). Every 64th seed is run twice
//! and its two trace hashes must match (the determinism self-check).
//! A named scenario (e.g. `overload-of-healthy-workers`, `spread-latencies`)
//! runs with the one contender `--policy` names, or with every contender
//! (then its markdown table follows), each run twice to check its trace
//! hash, and prints its figures on one line per contender
//! (`scenario=… policy=… p50=… p99=… p999=… completion=… … ejections=…`);
//! it fails on any broken rule. `--scenarios-report` runs every named
//! scenario with every contender and prints one markdown table per
//! scenario. `--requests` shortens a scenario bound by requests.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use foreman_tests::sim::report::{run_every_contender, table};
use foreman_tests::sim::{
    run_closed_loop, run_seed, ClosedLoop, ClosedLoopOutcome, Contender, SimOutcome, CONTENDERS,
    DEFAULT_REQUESTS,
};

/// Failure reports printed in full; later failures get one line each.
const FULL_REPORTS: usize = 3;
/// Failures after those get one line each, up to this many; the rest are
/// only counted.
const ONE_LINE_REPORTS: usize = 20;

struct Args {
    from: u64,
    seeds: u64,
    requests: u64,
    jobs: usize,
    trace: bool,
    single: bool,
    expect_failure: bool,
    scenario: Option<ClosedLoop>,
    policy: Option<Contender>,
    report: bool,
    requests_given: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        from: 0,
        seeds: 100,
        requests: DEFAULT_REQUESTS,
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        trace: false,
        single: false,
        expect_failure: false,
        scenario: None,
        policy: None,
        report: false,
        requests_given: false,
    };
    let mut it = std::env::args().skip(1);
    let number = |value: Option<String>, flag: &str| -> Result<u64, String> {
        value
            .ok_or_else(|| format!("{flag} needs a value"))?
            .replace('_', "")
            .parse()
            .map_err(|e| format!("{flag}: {e}"))
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--seeds" => args.seeds = number(it.next(), "--seeds")?,
            "--from" => args.from = number(it.next(), "--from")?,
            "--seed" => {
                args.from = number(it.next(), "--seed")?;
                args.seeds = 1;
                args.single = true;
            }
            "--requests" => {
                args.requests = number(it.next(), "--requests")?;
                args.requests_given = true;
            }
            "--jobs" => args.jobs = number(it.next(), "--jobs")?.max(1) as usize,
            "--soak" => args.seeds = 1_000_000,
            "--trace" => args.trace = true,
            "--expect-failure" => args.expect_failure = true,
            "--scenario" => {
                let name = it.next().ok_or("--scenario needs a name")?;
                let scenario = ClosedLoop::named(&name).ok_or_else(|| {
                    let known: Vec<&str> = ClosedLoop::ALL.iter().map(|s| s.name).collect();
                    format!("unknown scenario {name:?} (known: {})", known.join(", "))
                })?;
                args.scenario = Some(scenario);
            }
            "--policy" => {
                let name = it.next().ok_or("--policy needs a name")?;
                let policy = Contender::named(&name).ok_or_else(|| {
                    format!("unknown policy {name:?} (known: {})", Contender::names())
                })?;
                args.policy = Some(policy);
            }
            "--scenarios-report" => args.report = true,
            "--help" | "-h" => {
                return Err(
                    "usage: sim --seeds N [--from S] [--requests R] [--jobs J] [--expect-failure] \
                            | --seed S [--requests R] [--trace] | --soak \
                            | --scenario NAME [--policy P] [--requests R] [--trace] \
                            | --scenarios-report [--requests R]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let shorten = |scenario: ClosedLoop| {
        if args.requests_given {
            scenario.with_requests(args.requests)
        } else {
            scenario
        }
    };
    if args.report {
        let scenarios: Vec<ClosedLoop> = ClosedLoop::ALL.into_iter().map(shorten).collect();
        return report(&scenarios);
    }
    if let Some(scenario) = args.scenario.clone().map(shorten) {
        return run_named(&scenario, args.policy, args.trace, args.expect_failure);
    }
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let results: Mutex<Vec<SimOutcome>> = Mutex::new(Vec::new());
    let keep_trace = args.trace && args.single;
    std::thread::scope(|scope| {
        for _ in 0..args.jobs.min(args.seeds.max(1) as usize) {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= args.seeds {
                    break;
                }
                let seed = args.from.wrapping_add(index);
                let mut outcome = run_seed(seed, args.requests, keep_trace);
                if outcome.failure.is_none() && (seed % 64 == 0 || args.single) {
                    let again = run_seed(seed, args.requests, false);
                    if again.trace_hash != outcome.trace_hash {
                        outcome.failure = Some(format!(
                            "determinism: trace hash {:016x} then {:016x}",
                            outcome.trace_hash, again.trace_hash
                        ));
                    }
                }
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(outcome);
            });
        }
    });
    let wall = started.elapsed().as_secs_f64();
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|outcome| outcome.seed);

    let mut failures = 0usize;
    let mut sim_requests = 0u64;
    let (mut hedged, mut hedges_won) = (0u64, 0u64);
    let mut sim_seconds = 0f64;
    for outcome in &results {
        sim_requests += outcome.submitted;
        hedged += outcome.hedges.0;
        hedges_won += outcome.hedges.1;
        sim_seconds += outcome.sim_time.as_secs_f64();
        if args.single {
            println!(
                "seed {}: submitted {} accepted {} sim_time {:.3}s trace_hash {:016x}",
                outcome.seed,
                outcome.submitted,
                outcome.accepted,
                outcome.sim_time.as_secs_f64(),
                outcome.trace_hash
            );
            println!("  scenario: {}", outcome.scenario);
            if let Some(full) = &outcome.full {
                for event in full {
                    println!("    {event:?}");
                }
            }
        }
        if outcome.failure.is_some() {
            failures += 1;
            if failures <= FULL_REPORTS {
                print!("{}", outcome.report());
            } else if failures > FULL_REPORTS + ONE_LINE_REPORTS {
                continue;
            } else {
                println!(
                    "seed {} FAILED: {} | replay: {}",
                    outcome.seed,
                    outcome.failure.as_deref().unwrap_or("-"),
                    outcome.replay_command()
                );
            }
        }
    }
    if let Some(first) = results.iter().find(|outcome| outcome.failure.is_some()) {
        let position = results
            .iter()
            .position(|o| o.seed == first.seed)
            .unwrap_or(0)
            + 1;
        println!(
            "first failing seed: {} (after {position} seeds)",
            first.seed
        );
    }
    let rate = if wall > 0.0 {
        sim_requests as f64 / wall
    } else {
        0.0
    };
    println!(
        "seeds={} failures={failures} sim_requests={sim_requests} sim_seconds={sim_seconds:.1} \
         wall_seconds={wall:.2} requests_per_wall_second={rate:.0} hedged={hedged} \
         hedges_won={hedges_won}",
        results.len()
    );
    let failed = failures > 0;
    if failed != args.expect_failure {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs `scenario` with `contender` twice and fails the first outcome
/// if the two trace hashes differ.
fn run_checked(scenario: &ClosedLoop, contender: &Contender, trace: bool) -> ClosedLoopOutcome {
    let mut outcome = run_closed_loop(scenario, contender, trace);
    let again = run_closed_loop(scenario, contender, false);
    if outcome.failure.is_none() && again.trace_hash != outcome.trace_hash {
        outcome.failure = Some(format!(
            "determinism: trace hash {:016x} then {:016x}",
            outcome.trace_hash, again.trace_hash
        ));
    }
    outcome
}

/// Runs a named scenario with one contender, or every one, each twice
/// (the second time to check determinism), and prints its figures, its
/// full trace when asked, any failure, and with every contender the
/// scenario's table.
fn run_named(
    scenario: &ClosedLoop,
    policy: Option<Contender>,
    trace: bool,
    expect_failure: bool,
) -> ExitCode {
    let contenders: Vec<Contender> = match policy {
        Some(contender) => vec![contender],
        None => CONTENDERS.to_vec(),
    };
    let mut outcomes = Vec::new();
    for contender in &contenders {
        let outcome = run_checked(scenario, contender, trace);
        if let Some(full) = &outcome.full {
            for event in full {
                println!("    {event:?}");
            }
        }
        if let Some(failure) = &outcome.failure {
            println!(
                "scenario {} policy {} FAILED: {failure}",
                outcome.name, outcome.policy
            );
        }
        println!("{}", outcome.figures());
        outcomes.push(outcome);
    }
    if policy.is_none() {
        println!();
        print!("{}", table(scenario, &outcomes));
    }
    let failed = outcomes.iter().any(|outcome| outcome.failure.is_some());
    if failed != expect_failure {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs every scenario with every contender and prints one markdown table
/// per scenario, then a summary line; fails if any run broke a rule or
/// was not deterministic.
fn report(scenarios: &[ClosedLoop]) -> ExitCode {
    let started = Instant::now();
    let mut failures = 0usize;
    for scenario in scenarios {
        let outcomes = run_every_contender(scenario);
        for (outcome, contender) in outcomes.iter().zip(CONTENDERS) {
            let again = run_closed_loop(scenario, contender, false);
            if outcome.failure.is_some() || again.trace_hash != outcome.trace_hash {
                failures += 1;
                println!(
                    "scenario {} policy {}: {} (trace hashes {:016x}, {:016x})",
                    outcome.name,
                    outcome.policy,
                    outcome.failure.as_deref().unwrap_or("not deterministic"),
                    outcome.trace_hash,
                    again.trace_hash
                );
            }
        }
        println!("{}", table(scenario, &outcomes));
    }
    println!(
        "scenarios={} contenders={} failures={failures} (each run twice: same trace hash) \
         wall_seconds={:.2}",
        scenarios.len(),
        CONTENDERS.len(),
        started.elapsed().as_secs_f64()
    );
    if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
