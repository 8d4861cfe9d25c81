//! The quickstart, shared by every adapter's example: LLM-like and
//! tool-like workers with heavy-tailed latencies, a flaky one, one that
//! hangs and one that panics, driven by concurrent callers; a live progress
//! bar, then a per-worker report and an SVG chart of the run.
//!
//! Deterministic workers (each has its own seeded [`Rng`]), no network;
//! written against [`Runtime`], so it runs on every adapter's runtime.
//!
//! - [`workload`]: the workers, the requests, the panic-hook filter;
//! - [`report`]: the records of a run and the report printed from them;
//! - [`chart`]: the SVG picture;
//! - [`progress`]: the live progress bar.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use foreman_driver::{
    handler_fn, BuildError, PoolConfig, RecoveryPolicy, RoutingPolicy, Runtime, WorkerHandler,
    WorkerPool, WorkerPoolOptions,
};
use futures::channel::mpsc;
use futures::StreamExt;
use thiserror::Error;

use crate::{sleep, Rng};

pub mod chart;
pub mod progress;
pub mod report;
pub mod workload;

#[cfg(test)]
mod tests;

use progress::{Counts, Progress};
use report::{Change, Outcome, Record, RunData, WorkerInfo};
use workload::{demo_request, layout, DemoWorker, QuietPanics, RanOn};

/// The quickstart's scenario, from the command line (`--help` lists it).
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "quickstart",
    about = "foreman's quickstart: a pool of LLM-like and tool workers (one flaky, one that \
             hangs, one that panics) under concurrent callers, with a live progress bar, a \
             per-worker report and an SVG chart of the run"
)]
pub struct Args {
    /// Workers in the pool: from 4 on, one flaky, one hanging and one
    /// panicking worker per 10 (rounded up), the rest LLM and tool workers,
    /// 4 to 3.
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    pub workers: usize,
    /// Concurrent callers, each submitting one request at a time.
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    pub callers: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 2000, value_parser = at_least_one)]
    pub requests: usize,
    /// How the pool picks a worker for each request.
    #[arg(long, value_enum, default_value_t = Routing::IdleFirst)]
    pub routing: Routing,
    /// How a worker's failures take it out of rotation and bring it back.
    #[arg(long, value_enum, default_value_t = Recovery::Reference)]
    pub recovery: Recovery,
    /// Seed of the workers' latencies and failures and of the callers'
    /// requests: the same seed gives the same workload.
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
    /// Where to write the SVG chart of the run.
    #[arg(long, default_value = "target/foreman-quickstart.svg")]
    pub svg: PathBuf,
}

impl Args {
    /// The scenario from the process's command line; prints the usage and
    /// exits on `--help` or a bad flag.
    pub fn from_env() -> Self {
        Self::parse()
    }
}

impl Default for Args {
    fn default() -> Self {
        Self::parse_from(["quickstart"])
    }
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(value) => Ok(value),
        Err(error) => Err(error.to_string()),
    }
}

/// The routing policies the quickstart offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Routing {
    /// An idle worker first, Healthy before Degraded; a queued request runs
    /// on the first worker to free up (foreman's default).
    #[value(name = "idle_first", alias = "idle-first")]
    IdleFirst,
    /// Workers in turn, as the reference routes.
    #[value(name = "round_robin", alias = "round-robin")]
    RoundRobin,
    /// The less loaded of two workers drawn at random.
    #[value(name = "least_loaded", alias = "least-loaded")]
    LeastLoaded,
    /// The cheaper of two workers drawn at random, by latency estimate ×
    /// load; a slow worker stays idle while a faster one will finish sooner.
    #[value(name = "peak_ewma", alias = "peak-ewma")]
    PeakEwma,
}

/// The recovery machines the quickstart offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Recovery {
    /// The reference's rule: consecutive failures eject, probes vote
    /// (foreman's default).
    #[value(name = "reference")]
    Reference,
    /// Outlier detection: a failure rate or a run of failures ejects for a
    /// growing, jittered time, then half-open trials bring the worker back.
    #[value(name = "outlier_detection", alias = "outlier-detection")]
    OutlierDetection,
}

impl Recovery {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Recovery::Reference => "reference",
            Recovery::OutlierDetection => "outlier_detection",
        }
    }

    /// The core's policy.
    pub fn policy(self) -> RecoveryPolicy {
        match self {
            Recovery::Reference => RecoveryPolicy::Reference,
            Recovery::OutlierDetection => RecoveryPolicy::outlier_detection(),
        }
    }
}

impl Routing {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Routing::IdleFirst => "idle_first",
            Routing::RoundRobin => "round_robin",
            Routing::LeastLoaded => "least_loaded",
            Routing::PeakEwma => "peak_ewma",
        }
    }

    /// The core's policy.
    pub fn policy(self) -> RoutingPolicy {
        match self {
            Routing::IdleFirst => RoutingPolicy::IdleFirst,
            Routing::RoundRobin => RoutingPolicy::RoundRobin,
            Routing::LeastLoaded => RoutingPolicy::LeastLoaded,
            Routing::PeakEwma => RoutingPolicy::PeakEwma,
        }
    }
}

/// Why the quickstart stopped.
#[derive(Debug, Error)]
pub enum DemoError {
    /// The pool could not be built.
    #[error("the demo pool could not be built: {0}")]
    Build(#[from] BuildError),
    /// plotters could not draw the chart.
    #[error("cannot draw the chart: {0}")]
    Chart(String),
    /// The chart could not be written.
    #[error("cannot write the chart to {}: {source}", path.display())]
    Write {
        /// Where it was to go.
        path: PathBuf,
        /// Why it could not.
        source: std::io::Error,
    },
}

/// Runs the scenario `args` describes on `runtime`, with a live progress
/// bar, then prints the report and writes the chart (stdout). Call it
/// inside the runtime. While it runs, the panic hook passes over the
/// demo's own deliberate panics ([`QuietPanics`]).
///
/// # Errors
/// [`DemoError`] if the pool cannot be built or the chart cannot be
/// written.
pub async fn run<R: Runtime + Clone>(runtime: R, args: &Args) -> Result<(), DemoError> {
    let _quiet = QuietPanics::install();
    let roles = layout(args.workers);
    println!(
        "foreman quickstart: {} workers ({}), {} callers, {} requests, {} routing, {} recovery, seed {}",
        roles.len(),
        census(&roles),
        args.callers,
        args.requests,
        args.routing.name(),
        args.recovery.name(),
        args.seed
    );
    let data = drive(runtime, args, Progress::new(args.requests)).await?;
    println!();
    print!("{}", report::render(&data));
    chart::write_svg(&data, &args.svg)?;
    println!("\nchart: {}", args.svg.display());
    Ok(())
}

/// Builds the pool of the scenario `args` describes on `runtime`, runs its
/// callers while `progress` shows how far they are, shuts the pool down
/// and returns the run's records, health transitions and workers. Call it
/// inside the runtime.
///
/// # Errors
/// [`DemoError::Build`] if the pool cannot be built.
pub async fn drive<R: Runtime + Clone>(
    runtime: R,
    args: &Args,
    mut progress: Progress,
) -> Result<RunData, DemoError> {
    let shared_rt = Arc::new(runtime.clone());
    let roles = layout(args.workers);
    let ran_on = Arc::new(RanOn::default());
    let handlers: Vec<Arc<dyn WorkerHandler>> = roles
        .iter()
        .enumerate()
        .map(|(index, &behaviour)| {
            let seed = args.seed.wrapping_add(index as u64);
            let worker = Arc::new(DemoWorker::new(
                Arc::clone(&shared_rt),
                behaviour,
                index,
                Arc::clone(&ran_on),
                seed,
            ));
            // A closure is a handler: no trait impl needed.
            handler_fn(move |request| {
                let worker = Arc::clone(&worker);
                async move { worker.handle(request).await }
            })
            .into_arc()
        })
        .collect();
    let options = WorkerPoolOptions {
        queue_capacity: 16,
        health_probe_interval: Duration::from_millis(500),
        default_request_timeout: Some(Duration::from_millis(500)),
        ..WorkerPoolOptions::default()
    };
    let config = PoolConfig::new(options)
        .with_routing(args.routing.policy())
        .with_recovery(args.recovery.policy());
    let origin = runtime.now();
    let pool = Arc::new(WorkerPool::with_config(
        runtime.clone(),
        handlers,
        config,
        None,
    )?);
    let ids: Vec<String> = pool
        .stats()
        .workers
        .into_iter()
        .map(|w| w.worker_id)
        .collect();

    let next = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded::<Record>();
    for caller in 0..args.callers {
        let (pool, next, tx, rt, ran_on) = (
            Arc::clone(&pool),
            Arc::clone(&next),
            tx.clone(),
            Arc::clone(&shared_rt),
            Arc::clone(&ran_on),
        );
        let (requests, seed) = (args.requests, args.seed);
        runtime.spawn(Box::pin(async move {
            let mut rng = Rng::new(seed.rotate_left(17) ^ (caller as u64 + 1));
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= requests {
                    return;
                }
                let request = demo_request(index, &mut rng);
                let request_id = request.request_id.clone();
                let submitted = rt.now();
                let timed = pool.submit_timed(request).await;
                let answered = rt.now();
                let record = Record {
                    worker: ran_on.take(&request_id),
                    outcome: match &timed.result {
                        Ok(_) => Outcome::Ok,
                        Err(error) => Outcome::of_error(error),
                    },
                    answered: answered.saturating_duration_since(origin),
                    queued: timed.timings.queued,
                    ran: timed.timings.ran,
                    total: answered.saturating_duration_since(submitted),
                };
                if tx.unbounded_send(record).is_err() {
                    return;
                }
                // Think time between a caller's requests.
                sleep(&*rt, Duration::from_millis(rng.below(20))).await;
            }
        }));
    }
    drop(tx);

    let mut records = Vec::with_capacity(args.requests);
    let mut errors = 0;
    while let Some(record) = rx.next().await {
        errors += usize::from(record.outcome != Outcome::Ok);
        records.push(record);
        let stats = pool.stats();
        progress.update(Counts {
            answered: records.len(),
            running: stats.running,
            queued: stats.queued,
            errors,
        });
    }
    progress.finish();
    let end = runtime.now().saturating_duration_since(origin);
    let stats = pool.stats();
    let history = pool.health_history();
    pool.shutdown().await;

    let index_of = |id: &str| ids.iter().position(|known| known == id);
    let changes = history
        .into_iter()
        .filter_map(|t| {
            Some(Change {
                worker: index_of(&t.worker_id)?,
                at: t.at,
                from: t.from,
                to: t.to,
            })
        })
        .collect();
    let workers = stats
        .workers
        .into_iter()
        .zip(&roles)
        .map(|(worker, role)| WorkerInfo {
            id: worker.worker_id,
            role: role.name(),
            state: worker.status,
        })
        .collect();
    Ok(RunData {
        workers,
        records,
        changes,
        start: Duration::ZERO,
        end,
    })
}

/// `4 llm, 3 tool, 1 flaky, …`: how many workers have each role.
fn census(roles: &[workload::Behaviour]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for role in roles {
        match counts.iter_mut().find(|(name, _)| *name == role.name()) {
            Some((_, count)) => *count += 1,
            None => counts.push((role.name(), 1)),
        }
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(name, n)| format!("{n} {name}"))
        .collect();
    parts.join(", ")
}
