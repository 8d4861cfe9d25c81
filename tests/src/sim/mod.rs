//! The deterministic simulator: one `u64` seed picks a hostile scenario and
//! drives the whole pool through it, checking after every input.
//!
//! In the spirit of TigerBeetle's VOPR and FoundationDB's simulator:
//! - **Everything comes from the seed**, through [`Rng`] (SplitMix64: a tiny,
//!   well-studied generator; no OS seeding, no global state). There is no wall
//!   clock, no thread and no hash-order dependence: [`run_seed`] twice with
//!   the same seed gives the same trace hash (the determinism self-check).
//! - **Virtual time jumps to the next event**: the earlier of the core's
//!   [`foreman_core::Pool::poll_timeout`] and the next simulated worker or
//!   caller event (arrival, completion, probe reply, cancel, chaos).
//! - **Swarm testing**: the seed first picks the scenario ([`Scenario`]) —
//!   1…256 workers, queue capacity, failure threshold, default timeout,
//!   probe interval and timeout, per-worker concurrency, the arrival pattern
//!   (steady, bursts, overload far above capacity), a latency distribution
//!   per worker (fixed, uniform, heavy-tailed), and which faults are on and
//!   how often: failing handlers (retryable or not), hanging handlers,
//!   panicking handlers, slow probes, lying probes, cancelling callers,
//!   restarts, additions and removals of workers, shutdown with or without a
//!   drain deadline, invalid requests, clock steps backwards, handlers
//!   refusing requests and hedges before starting them, in bursts
//!   ([`Refusals`]).
//! - **Checks after every input**: the [`crate::model::Harness`] checks (see
//!   its module docs). The cheap checks run after every input; the O(n)
//!   ones (`check_invariants`, stats against the books) run after every
//!   worker command and shutdown, at the end, and otherwise once at least
//!   [`FULL_CHECK_EVERY`] inputs *and* at least 4 × (pending requests + workers)
//!   inputs have passed since the last one — amortised O(1) per input, which
//!   keeps the simulator above a million requests per wall-clock second.
//! - **A quiet liveness phase**: once the seed's requests are submitted,
//!   faults stop (hung handlers finish, probes answer promptly and
//!   truthfully, no more chaos), time runs on, and every pending request
//!   must be answered within a bound computed from the scenario; then a
//!   shutdown must complete at once with nothing pending.
//!
//! Besides the seeds, named scenarios ([`ClosedLoop`], run by
//! [`run_closed_loop`] and `sim --scenario NAME [--policy P]`) drive one
//! fixed workload of closed-loop callers under the same checks, once per
//! contender ([`CONTENDERS`]: every routing policy of the core and the
//! clairvoyant [`oracle`]), and measure it ([`ClosedLoopOutcome`]:
//! caller-observed p50 / p99 / p999, completion time, ejections,
//! transitions, refusals, timeouts, attempts, each worker's share);
//! `sim --scenarios-report` prints a markdown table per scenario
//! ([`report`]). Overload of healthy workers must eject none and keep
//! requests succeeding every second. The workers' latencies are functions
//! of virtual time ([`latency`]), shared with the tokio adapter's
//! `routing_scenarios` example.

use std::fmt::Write as _;
use std::time::Duration;

use foreman_core::Time;

use crate::model::{Failure, Harness, TraceEvent};
use crate::rng::Rng;

mod closed_loop;
mod contenders;
pub mod latency;
mod named;
pub mod oracle;
mod outcome;
pub mod report;
mod scenario;
mod swarm;

use swarm::Sim;

pub use closed_loop::run_closed_loop;
pub use contenders::{Contender, Kind, CONTENDERS};
pub use named::{ClosedLoop, Fault, Stop, LLM_LIKE, REQUESTS};
pub use outcome::{quantile, ClosedLoopOutcome};
pub use scenario::{Arrival, Chaos, Latency, Refusals, Scenario};

/// Full O(n) checks run every this many inputs (and after every command).
pub const FULL_CHECK_EVERY: u64 = 256;

/// Default requests submitted per seed.
pub const DEFAULT_REQUESTS: u64 = 2_000;

/// What one seed's run produced.
#[derive(Debug, Clone)]
pub struct SimOutcome {
    /// The seed.
    pub seed: u64,
    /// Requests per seed asked for.
    pub requests: u64,
    /// The first broken rule, if any.
    pub failure: Option<String>,
    /// Submits made (accepted or refused).
    pub submitted: u64,
    /// Submits accepted.
    pub accepted: u64,
    /// Hedges started and hedges that won.
    pub hedges: (u64, u64),
    /// Simulated time at the end.
    pub sim_time: Duration,
    /// Hash of the whole trace.
    pub trace_hash: u64,
    /// The last events of the trace.
    pub tail: Vec<TraceEvent>,
    /// The whole trace, when asked for.
    pub full: Option<Vec<TraceEvent>>,
    /// A one-line description of the scenario.
    pub scenario: String,
}

impl SimOutcome {
    /// The one-line command that replays this seed with its full trace.
    pub fn replay_command(&self) -> String {
        let planted = if cfg!(foreman_planted_bug) {
            "RUSTFLAGS=\"--cfg foreman_planted_bug\" CARGO_TARGET_DIR=target/planted "
        } else {
            ""
        };
        format!(
            "{planted}cargo run --release -p foreman-tests --bin sim -- --seed {} --requests {} --trace",
            self.seed, self.requests
        )
    }

    /// A failure report: the seed, the replay command, the scenario, the
    /// broken rule and the last events of the trace.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "seed {} FAILED: {}",
            self.seed,
            self.failure.as_deref().unwrap_or("-")
        );
        let _ = writeln!(out, "  replay: {}", self.replay_command());
        let _ = writeln!(out, "  scenario: {}", self.scenario);
        let _ = writeln!(out, "  last {} trace events:", self.tail.len());
        for event in &self.tail {
            let _ = writeln!(out, "    {event:?}");
        }
        out
    }
}

/// Where virtual time jumps next: the core's next wake-up (returned too)
/// and the earlier of it and the simulator's next event, `sim_next`.
///
/// # Errors
/// When there is neither while requests are pending: nothing would ever
/// answer them.
fn next_instant(
    harness: &mut Harness,
    sim_next: Option<Time>,
) -> Result<(Option<Time>, Time), Failure> {
    let core_next = harness.next_timeout();
    let next = match (core_next, sim_next) {
        (None, None) => {
            return Err(Failure(format!(
                "stuck: {} requests pending and nothing will ever happen",
                harness.pending()
            )));
        }
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(Time::MAX),
    };
    Ok((core_next, next))
}

/// Once every request is answered, a shutdown at `now` must complete at
/// once; then every check runs.
///
/// # Errors
/// The first broken rule.
fn shut_down_and_check(harness: &mut Harness, now: Time) -> Result<(), Failure> {
    harness.set_clock(now);
    harness.begin_shutdown(None)?;
    if !harness.is_stopped() {
        return Err(Failure(
            "shutdown with nothing pending did not complete".into(),
        ));
    }
    harness.check()
}

/// Runs one seed with `requests` submits; keeps the full trace when
/// `keep_trace`.
pub fn run_seed(seed: u64, requests: u64, keep_trace: bool) -> SimOutcome {
    let mut rng = Rng::new(seed);
    let scenario = Scenario::generate(&mut rng, requests);
    let description = scenario.describe();
    let mut harness = match Harness::with_trace(scenario.config.clone(), keep_trace) {
        Ok(harness) => harness,
        Err(error) => {
            return SimOutcome {
                seed,
                requests,
                failure: Some(format!("scenario config refused: {error}")),
                submitted: 0,
                accepted: 0,
                hedges: (0, 0),
                sim_time: Duration::ZERO,
                trace_hash: 0,
                tail: Vec::new(),
                full: None,
                scenario: description,
            };
        }
    };
    harness.set_full_check_amortised(FULL_CHECK_EVERY);
    let mut sim = Sim::new(rng, scenario, harness, requests);
    let result = sim.run();
    let failure = match result {
        Ok(()) => None,
        Err(failure) => Some(sim.harness.failure().cloned().unwrap_or(failure).0),
    };
    let (submitted, accepted, _) = sim.harness.totals();
    let counters = sim.harness.pool().stats().counters;
    let trace = sim.harness.trace();
    SimOutcome {
        seed,
        requests,
        failure,
        submitted,
        accepted,
        hedges: (counters.hedged, counters.hedges_won),
        sim_time: sim.now.since_epoch(),
        trace_hash: trace.hash(),
        tail: trace.tail(),
        full: trace.full().map(<[TraceEvent]>::to_vec),
        scenario: description,
    }
}
