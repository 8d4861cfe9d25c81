//! `foreman-worker`: a worker process speaking foreman's remote protocol
//! (`docs/REMOTE.md`), for demos and process tests.
//!
//! ```text
//! foreman-worker [--listen 127.0.0.1:0] [--workers 4] [--mode demo|echo|sleep:<ms>|fail]
//!                [--drain 5s] [--http1-only]
//! ```
//!
//! The first line it prints is `listening on <address>`. On SIGTERM or
//! Ctrl-C it drains (health `unavailable`, new requests `503`, in-flight
//! requests finish within `--drain`) and exits with status 0.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use foreman_remote::{Server, ServerOptions};
use foreman_tokio::{
    handler_fn, WorkerErrorCode, WorkerHandler, WorkerOperation, WorkerPool, WorkerPoolOptions,
    WorkerProtocolError, WorkerRequest,
};
use serde_json::json;

const USAGE: &str = "usage: foreman-worker [--listen ADDR] [--workers N] \
[--mode demo|echo|sleep:<ms>|fail] [--drain DURATION]

  --listen ADDR   address to listen on (default 127.0.0.1:0; the first line printed
                  is `listening on <address>`)
  --workers N     handlers in the worker's pool (default 4)
  --mode MODE     demo: the quickstart's latencies (LLM calls ~30 ms, tool calls ~2 ms);
                  echo: answers the request's node id at once;
                  sleep:<ms>: waits <ms> milliseconds, then echoes;
                  fail: answers every request with a retryable ExecutionFailed error
  --drain D       how long in-flight requests may run after SIGTERM (default 5s;
                  written 250ms, 5s or 1m)";

/// What a worker's handlers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Demo,
    Echo,
    Sleep(Duration),
    Fail,
}

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    workers: usize,
    mode: Mode,
    drain: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1_000)
    } else if let Some(m) = text.strip_suffix('m') {
        (m, 60_000)
    } else {
        (text, 1)
    };
    number
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is not a duration (write 250ms, 5s or 1m)"))
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    match text {
        "demo" => Ok(Mode::Demo),
        "echo" => Ok(Mode::Echo),
        "fail" => Ok(Mode::Fail),
        other => match other.strip_prefix("sleep:") {
            Some(ms) => parse_duration(ms).map(Mode::Sleep),
            None => Err(format!(
                "unknown mode {other:?} (demo, echo, sleep:<ms> or fail)"
            )),
        },
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        workers: 4,
        mode: Mode::Demo,
        drain: Duration::from_secs(5),
    };
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => {
                parsed.listen = value.parse().map_err(|_| {
                    format!("--listen {value:?} is not an address like 127.0.0.1:8080")
                })?;
            }
            "--workers" => {
                parsed.workers = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--workers {value:?} is not a positive number"))?;
            }
            "--mode" => parsed.mode = parse_mode(&value)?,
            "--drain" => parsed.drain = parse_duration(&value)?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(parsed)
}

/// A number in [0, 1) drawn from the request id and a salt: the demo's
/// latencies are a function of the request, so runs repeat.
fn unit(request: &WorkerRequest, salt: u8) -> f64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    request.request_id.hash(&mut hasher);
    salt.hash(&mut hasher);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The quickstart's latencies at its time scale (a twentieth): lognormal,
/// median 30 ms for LLM calls and 2 ms for tool calls.
fn demo_latency(request: &WorkerRequest) -> Duration {
    let (median_ms, sigma) = match request.operation {
        WorkerOperation::Llm { .. } => (30.0, 0.6),
        WorkerOperation::Tool { .. } => (2.0, 0.9),
    };
    // Box-Muller: a standard normal from two uniforms.
    let (u1, u2) = (unit(request, 1).max(1e-12), unit(request, 2));
    let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    Duration::from_secs_f64((median_ms * (sigma * normal).exp()).min(10_000.0) / 1_000.0)
}

fn handler(mode: Mode) -> Arc<dyn WorkerHandler> {
    Arc::new(handler_fn(move |request: WorkerRequest| async move {
        let wait = match mode {
            Mode::Demo => demo_latency(&request),
            Mode::Sleep(wait) => wait,
            Mode::Echo => Duration::ZERO,
            Mode::Fail => {
                return Err(WorkerProtocolError::new(
                    WorkerErrorCode::ExecutionFailed,
                    "foreman-worker runs in --mode fail",
                    true,
                ))
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(json!({
            "request_id": request.request_id,
            "node": request.node_id,
            "waited_ms": u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        }))
    }))
}

/// Resolves on SIGTERM or Ctrl-C.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(args: Args) -> Result<(), String> {
    let handler = handler(args.mode);
    let handlers = (0..args.workers).map(|_| Arc::clone(&handler)).collect();
    let options = WorkerPoolOptions::default();
    let security_policy = options.security_policy.clone();
    let pool = Arc::new(
        WorkerPool::new_inprocess(handlers, options, None)
            .map_err(|error| format!("cannot build the pool: {error}"))?,
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    let address = listener
        .local_addr()
        .map_err(|error| format!("cannot read the listening address: {error}"))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {address}")
            .and_then(|()| out.flush())
            .map_err(|error| format!("cannot write to stdout: {error}"))?;
    }
    let server = Server::new(
        pool.clone(),
        ServerOptions {
            security_policy,
            drain_deadline: args.drain,
            worker_id: format!("foreman-worker@{address}"),
            ..ServerOptions::default()
        },
    );
    let report = server
        .serve(listener, terminated())
        .await
        .map_err(|error| error.to_string())?;
    pool.shutdown_with_deadline(Duration::ZERO).await;
    println!(
        "drained: {} answered, {} dropped by clients, {} refused, {} cut off at the drain deadline",
        report.stats.answered, report.stats.dropped, report.stats.refused, report.abandoned
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("foreman-worker: {problem}");
            }
            eprintln!("{USAGE}");
            return if problem.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("foreman-worker: cannot start tokio: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("foreman-worker: {problem}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Args, String> {
        parse_args(line.split_whitespace().map(String::from))
    }

    #[test]
    fn durations_are_read_in_milliseconds_seconds_or_minutes() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("40"), Ok(Duration::from_millis(40)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("99999999999999999999m").is_err());
    }

    #[test]
    fn flags_set_the_listener_workers_mode_and_drain() {
        let parsed = args("--listen 127.0.0.1:9000 --workers 2 --mode sleep:30ms --drain 2s")
            .expect("valid flags");
        assert_eq!(parsed.listen, SocketAddr::from(([127, 0, 0, 1], 9000)));
        assert_eq!(parsed.workers, 2);
        assert_eq!(parsed.mode, Mode::Sleep(Duration::from_millis(30)));
        assert_eq!(parsed.drain, Duration::from_secs(2));
        let defaults = args("").expect("no flags");
        assert_eq!((defaults.workers, defaults.mode), (4, Mode::Demo));
    }

    #[test]
    fn bad_flags_are_refused_with_a_reason() {
        for (line, reason) in [
            ("--workers 0", "positive"),
            ("--mode nap", "unknown mode"),
            ("--listen nowhere", "not an address"),
            ("--drain", "needs a value"),
            ("--verbose yes", "unknown flag"),
        ] {
            let problem = args(line).expect_err(line);
            assert!(problem.contains(reason), "{line}: {problem}");
        }
    }

    #[test]
    fn demo_latencies_repeat_per_request_and_follow_the_operation() {
        let request = |id: &str, operation| WorkerRequest {
            request_id: id.into(),
            workflow_name: "w".into(),
            node_id: "n".into(),
            timeout_ms: None,
            operation,
        };
        let llm = || WorkerOperation::Llm {
            model: "m".into(),
            prompt: "p".into(),
            scoped_input: json!({}),
        };
        let tool = || WorkerOperation::Tool {
            tool: "t".into(),
            input: json!({}),
            scoped_input: json!({}),
        };
        assert_eq!(
            demo_latency(&request("a", llm())),
            demo_latency(&request("a", llm()))
        );
        let mean = |make: &dyn Fn() -> WorkerOperation| {
            (0..200)
                .map(|i| demo_latency(&request(&format!("r{i}"), make())).as_secs_f64())
                .sum::<f64>()
                / 200.0
        };
        assert!(mean(&llm) > 5.0 * mean(&tool));
    }
}
