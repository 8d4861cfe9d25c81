//! The quickstart's records and final report: what each request's answer
//! was and where it ran, per-worker figures (requests, outcomes, run-time
//! percentiles, time in each health state) and the overall percentiles.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use foreman_driver::{WorkerErrorCode, WorkerHealthStatus, WorkerPoolError};

use super::workload::{PANIC_MESSAGE, TIME_SCALE};
use crate::percentile;

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A successful response.
    Ok,
    /// An error answer other than a timeout, by kind: `failed` (the
    /// handler's error), `panicked`, `cancelled`, `shutting down`, ….
    Error(&'static str),
    /// The request's deadline passed (queued or running).
    Timeout,
    /// The pool refused the request at the door (`QueueFull`, …).
    Refused(&'static str),
}

impl Outcome {
    /// The outcome of an error answer.
    pub fn of_error(error: &WorkerPoolError) -> Self {
        match error {
            WorkerPoolError::Timeout => Outcome::Timeout,
            WorkerPoolError::ShuttingDown => Outcome::Error("shutting down"),
            WorkerPoolError::QueueFull => Outcome::Refused("QueueFull"),
            WorkerPoolError::NoHealthyWorker => Outcome::Refused("NoHealthyWorker"),
            WorkerPoolError::CircuitOpen => Outcome::Refused("CircuitOpen"),
            WorkerPoolError::InvalidRequest { .. } => Outcome::Refused("InvalidRequest"),
            WorkerPoolError::Worker(inner) if inner.message.contains(PANIC_MESSAGE) => {
                Outcome::Error("panicked")
            }
            WorkerPoolError::Worker(inner) => Outcome::Error(match inner.code {
                WorkerErrorCode::ExecutionFailed => "failed",
                WorkerErrorCode::Cancelled => "cancelled",
                WorkerErrorCode::Unavailable => "unavailable",
                WorkerErrorCode::Timeout => "timeout",
                _ => "other",
            }),
        }
    }
}

/// One answered request.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The index of the worker that started it, if one did.
    pub worker: Option<usize>,
    /// How it was answered.
    pub outcome: Outcome,
    /// When it was answered, since the pool was built.
    pub answered: Duration,
    /// How long it waited for a worker (as the pool measured it).
    pub queued: Duration,
    /// How long its handler ran, if it started.
    pub ran: Option<Duration>,
    /// From submit to answer, as its caller saw it.
    pub total: Duration,
}

/// A worker as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Its id (`worker-3`).
    pub id: String,
    /// Its role in the demo (`llm`, `flaky`, …).
    pub role: &'static str,
    /// Its health when the last answer arrived.
    pub state: WorkerHealthStatus,
}

/// One health transition of a worker (from the pool's `health_history`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The worker's index.
    pub worker: usize,
    /// When, since the pool was built.
    pub at: Duration,
    /// Its status before.
    pub from: WorkerHealthStatus,
    /// Its status after.
    pub to: WorkerHealthStatus,
}

/// Everything a run leaves for the report and the chart.
#[derive(Debug, Clone, PartialEq)]
pub struct RunData {
    /// The workers, in worker order.
    pub workers: Vec<WorkerInfo>,
    /// Every answered request, in answer order.
    pub records: Vec<Record>,
    /// Every health transition, oldest first.
    pub changes: Vec<Change>,
    /// When the run began, since the pool was built.
    pub start: Duration,
    /// When the last answer arrived, since the pool was built.
    pub end: Duration,
}

impl RunData {
    /// Worker `worker`'s health transitions, oldest first, as
    /// `(instant, status after)`, and its status before the first of them.
    pub fn changes_of(
        &self,
        worker: usize,
    ) -> (WorkerHealthStatus, Vec<(Duration, WorkerHealthStatus)>) {
        let mine: Vec<&Change> = self.changes.iter().filter(|c| c.worker == worker).collect();
        let initial = match mine.first() {
            Some(first) => first.from,
            None => self
                .workers
                .get(worker)
                .map_or(WorkerHealthStatus::Healthy, |w| w.state),
        };
        (initial, mine.iter().map(|c| (c.at, c.to)).collect())
    }
}

/// A stretch of time a worker spent in one health state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Where it begins.
    pub from: Duration,
    /// Where it ends.
    pub to: Duration,
    /// The state.
    pub state: WorkerHealthStatus,
}

/// The stretches of `[start, end]` a worker spent in each state, in order:
/// it is in `initial` until its first change, and in each change's state
/// from that change's instant on (`changes` oldest first). Changes before
/// `start` only set the state at `start`; changes after `end` are ignored;
/// empty stretches are left out.
pub fn spans(
    initial: WorkerHealthStatus,
    changes: &[(Duration, WorkerHealthStatus)],
    start: Duration,
    end: Duration,
) -> Vec<Span> {
    let mut spans = Vec::new();
    let (mut since, mut state) = (start, initial);
    for &(at, to) in changes {
        let at = at.min(end);
        if at > since {
            spans.push(Span {
                from: since,
                to: at,
                state,
            });
            since = at;
        }
        state = to;
    }
    if end > since {
        spans.push(Span {
            from: since,
            to: end,
            state,
        });
    }
    spans
}

/// Time spent in each health state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateTimes {
    /// In `Healthy`.
    pub healthy: Duration,
    /// In `Degraded`.
    pub degraded: Duration,
    /// In `Unavailable`.
    pub unavailable: Duration,
}

impl StateTimes {
    /// The sum of `spans` by state.
    pub fn of(spans: &[Span]) -> Self {
        let mut times = StateTimes::default();
        for span in spans {
            let slot = match span.state {
                WorkerHealthStatus::Healthy => &mut times.healthy,
                WorkerHealthStatus::Degraded => &mut times.degraded,
                WorkerHealthStatus::Unavailable => &mut times.unavailable,
            };
            *slot += span.to - span.from;
        }
        times
    }
}

/// One worker's figures.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkerRow {
    /// Requests it started.
    pub requests: usize,
    /// Of those, answered with success.
    pub ok: usize,
    /// Of those, answered with an error, by kind.
    pub errors: BTreeMap<&'static str, usize>,
    /// Of those, timed out while running.
    pub timeouts: usize,
    /// The median run time of its requests (timeouts included).
    pub run_p50: Option<Duration>,
    /// The 99th percentile of the same.
    pub run_p99: Option<Duration>,
    /// Time it spent in each health state during the run.
    pub times: StateTimes,
}

impl WorkerRow {
    /// The figures of the records in `records` (those of one worker), with
    /// `times` spent in each state.
    pub fn of<'a>(records: impl IntoIterator<Item = &'a Record>, times: StateTimes) -> Self {
        let mut row = WorkerRow {
            times,
            ..WorkerRow::default()
        };
        let mut runs = Vec::new();
        for record in records {
            row.requests += 1;
            match record.outcome {
                Outcome::Ok => row.ok += 1,
                Outcome::Timeout => row.timeouts += 1,
                Outcome::Error(kind) | Outcome::Refused(kind) => {
                    *row.errors.entry(kind).or_default() += 1;
                }
            }
            runs.extend(record.ran.map(nanos));
        }
        runs.sort_unstable();
        row.run_p50 = percentile(&runs, 50).map(Duration::from_nanos);
        row.run_p99 = percentile(&runs, 99).map(Duration::from_nanos);
        row
    }
}

/// Every worker's row, in worker order, then the row of the requests no
/// worker started (timed out in a queue or refused; its times are zero).
pub fn worker_rows(data: &RunData) -> Vec<WorkerRow> {
    let mut rows: Vec<WorkerRow> = (0..data.workers.len())
        .map(|worker| {
            let (initial, changes) = data.changes_of(worker);
            let times = StateTimes::of(&spans(initial, &changes, data.start, data.end));
            let records = data.records.iter().filter(|r| r.worker == Some(worker));
            WorkerRow::of(records, times)
        })
        .collect();
    let unstarted = data.records.iter().filter(|r| r.worker.is_none());
    rows.push(WorkerRow::of(unstarted, StateTimes::default()));
    rows
}

/// The report the demo prints: the throughput line, the per-worker table
/// and the overall latency percentiles.
pub fn render(data: &RunData) -> String {
    let mut out = String::new();
    let seconds = data.end.saturating_sub(data.start).as_secs_f64();
    let rate = if seconds > 0.0 {
        data.records.len() as f64 / seconds
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "{} requests in {seconds:.2} s ({rate:.0}/s; latencies are real ones divided by {TIME_SCALE})",
        data.records.len(),
    );
    out.push('\n');
    out.push_str(&table(data));
    out.push('\n');
    let overall = [
        (
            "queued ",
            data.records.iter().map(|r| r.queued).collect::<Vec<_>>(),
        ),
        (
            "running",
            data.records.iter().filter_map(|r| r.ran).collect(),
        ),
        ("total  ", data.records.iter().map(|r| r.total).collect()),
    ];
    for (name, values) in overall {
        let _ = writeln!(out, "{name}  {}", summary(values));
    }
    out
}

/// The per-worker table, its columns aligned.
fn table(data: &RunData) -> String {
    let header = [
        "worker", "role", "requests", "ok", "errors", "timeouts", "run p50", "run p99", "healthy",
        "degraded", "unavail.", "state",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let rows = worker_rows(data);
    for (index, row) in rows.iter().enumerate() {
        let (id, role, state) = match data.workers.get(index) {
            Some(worker) => (
                worker.id.as_str(),
                worker.role,
                format!("{:?}", worker.state),
            ),
            None if row.requests == 0 => continue,
            None => ("(none)", "queue", "-".into()),
        };
        let errors = if row.errors.is_empty() {
            "-".to_string()
        } else {
            let kinds: Vec<String> = row.errors.iter().map(|(k, n)| format!("{n} {k}")).collect();
            kinds.join(", ")
        };
        let started = index < data.workers.len();
        let time = |d: Duration| {
            if started {
                format!("{:.1} s", d.as_secs_f64())
            } else {
                "-".into()
            }
        };
        lines.push(vec![
            id.to_string(),
            role.to_string(),
            row.requests.to_string(),
            row.ok.to_string(),
            errors,
            row.timeouts.to_string(),
            millis(row.run_p50),
            millis(row.run_p99),
            time(row.times.healthy),
            time(row.times.degraded),
            time(row.times.unavailable),
            state,
        ]);
    }
    align(
        &lines,
        &[
            false, false, true, true, false, true, true, true, true, true, true, false,
        ],
    )
}

/// `lines` as text, each column as wide as its widest cell; a column is
/// right-aligned where `right` says so.
fn align(lines: &[Vec<String>], right: &[bool]) -> String {
    let mut widths = vec![0; right.len()];
    for line in lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in lines {
        let cells: Vec<String> = line
            .iter()
            .zip(widths.iter().zip(right))
            .map(|(cell, (&width, &right))| {
                if right {
                    format!("{cell:>width$}")
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

/// `p50 … p90 … p99 … max …` of `values` in milliseconds, or `-`.
pub fn summary(values: Vec<Duration>) -> String {
    let mut sorted: Vec<u64> = values.into_iter().map(nanos).collect();
    if sorted.is_empty() {
        return "-".into();
    }
    sorted.sort_unstable();
    let at = |p| millis(percentile(&sorted, p).map(Duration::from_nanos));
    format!(
        "p50 {:>8}  p90 {:>8}  p99 {:>8}  max {:>8}",
        at(50),
        at(90),
        at(99),
        at(100)
    )
}

/// `12.3 ms`, or `-` for none.
fn millis(value: Option<Duration>) -> String {
    value.map_or_else(
        || "-".into(),
        |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0),
    )
}

/// A duration in nanoseconds, saturating.
pub(super) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
