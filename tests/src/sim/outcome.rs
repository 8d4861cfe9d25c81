//! What a named scenario's run measured ([`ClosedLoopOutcome`]), and the
//! running tally it is made from.

use std::time::Duration;

use super::contenders::Contender;
use super::named::ClosedLoop;
use crate::model::{AnswerKind, TraceEvent};

/// What a run counts as it goes.
#[derive(Debug, Clone)]
pub(super) struct Tally {
    /// Caller-observed latencies (submit to answer) of answered requests.
    latencies: Vec<Duration>,
    ok: u64,
    failed: u64,
    other: u64,
    attempts: u64,
    most_attempts: u64,
    completion: Duration,
    starts_per_worker: Vec<u64>,
    ok_per_second: Vec<u64>,
}

impl Tally {
    /// A tally for `workers` workers over a run of `seconds` (0: not
    /// counted per second).
    pub(super) fn new(workers: usize, seconds: usize) -> Tally {
        Tally {
            latencies: Vec::new(),
            ok: 0,
            failed: 0,
            other: 0,
            attempts: 0,
            most_attempts: 0,
            completion: Duration::ZERO,
            starts_per_worker: vec![0; workers],
            ok_per_second: vec![0; seconds],
        }
    }

    /// A request started on worker `index`.
    pub(super) fn started(&mut self, index: usize) {
        if let Some(starts) = self.starts_per_worker.get_mut(index) {
            *starts += 1;
        }
    }

    /// A request got its answer at `at`, `latency` after its submit,
    /// after `attempts` starts.
    pub(super) fn answered(
        &mut self,
        kind: AnswerKind,
        latency: Duration,
        attempts: u64,
        at: Duration,
    ) {
        self.latencies.push(latency);
        self.attempts += attempts;
        self.most_attempts = self.most_attempts.max(attempts);
        self.completion = self.completion.max(at);
        match kind {
            AnswerKind::Ok => {
                self.ok += 1;
                if let Some(count) = self.ok_per_second.get_mut(at.as_secs() as usize) {
                    *count += 1;
                }
            }
            AnswerKind::Failed { .. } => self.failed += 1,
            AnswerKind::Timeout => {}
            _ => self.other += 1,
        }
    }
}

/// What a [`ClosedLoop`] run with one contender produced.
#[derive(Debug, Clone)]
pub struct ClosedLoopOutcome {
    /// The scenario's name.
    pub name: &'static str,
    /// The contender's name.
    pub policy: &'static str,
    /// The first broken rule: a harness check, or for a healthy scenario
    /// an ejection or a second without a success.
    pub failure: Option<String>,
    /// Submits made (accepted or refused).
    pub submitted: u64,
    /// Submits accepted.
    pub accepted: u64,
    /// Accepted requests answered.
    pub answered: u64,
    /// Requests answered with the handler's output.
    pub ok: u64,
    /// Requests answered with the handler's error.
    pub failed: u64,
    /// Requests answered `Timeout` while queued (expired, or reached with
    /// too little budget left).
    pub timeouts_queued: u64,
    /// Requests answered `Timeout` while running.
    pub timeouts_running: u64,
    /// Requests answered otherwise (cancelled, unavailable, shut down).
    pub other_answers: u64,
    /// Submits refused with `QueueFull`.
    pub refused_queue_full: u64,
    /// Submits refused with `NoHealthyWorker`.
    pub refused_no_healthy_worker: u64,
    /// Submits refused with `CircuitOpen`.
    pub refused_circuit_open: u64,
    /// Submits refused for any other reason.
    pub refused_other: u64,
    /// Changes of a worker to `Unavailable` for a health reason.
    pub ejections: u64,
    /// Health changes of any worker (the shutdown's excepted).
    pub transitions: u64,
    /// Health changes of each worker, by index (the order of addition).
    pub transitions_per_worker: Vec<u64>,
    /// Handler runs started (attempts), over every request.
    pub attempts: u64,
    /// Most attempts of one request.
    pub most_attempts: u64,
    /// Hedges started ([`Counters::hedged`](foreman_core::Counters::hedged)).
    pub hedged: u64,
    /// Requests their hedge answered.
    pub hedges_won: u64,
    /// Caller-observed latency (submit to answer) of accepted requests:
    /// median, 99th and 99.9th percentile (nearest rank).
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Virtual time at which the last request was answered.
    pub completion: Duration,
    /// Handler runs started on each worker, by index.
    pub starts_per_worker: Vec<u64>,
    /// Successes in each second of a time-bound run.
    pub ok_per_second: Vec<u64>,
    /// Hash of the whole trace.
    pub trace_hash: u64,
    /// The whole trace, when asked for.
    pub full: Option<Vec<TraceEvent>>,
}

/// The `q`-quantile (0..=1) of `sorted` (ascending), by nearest rank;
/// zero for no values.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl ClosedLoopOutcome {
    /// An outcome with nothing measured yet.
    pub(super) fn new(scenario: &ClosedLoop, contender: &Contender) -> ClosedLoopOutcome {
        ClosedLoopOutcome {
            name: scenario.name,
            policy: contender.name,
            failure: None,
            submitted: 0,
            accepted: 0,
            answered: 0,
            ok: 0,
            failed: 0,
            timeouts_queued: 0,
            timeouts_running: 0,
            other_answers: 0,
            refused_queue_full: 0,
            refused_no_healthy_worker: 0,
            refused_circuit_open: 0,
            refused_other: 0,
            ejections: 0,
            transitions: 0,
            transitions_per_worker: Vec::new(),
            attempts: 0,
            most_attempts: 0,
            hedged: 0,
            hedges_won: 0,
            p50: Duration::ZERO,
            p99: Duration::ZERO,
            p999: Duration::ZERO,
            completion: Duration::ZERO,
            starts_per_worker: Vec::new(),
            ok_per_second: Vec::new(),
            trace_hash: 0,
            full: None,
        }
    }

    /// Takes in the run's tally.
    pub(super) fn absorb(&mut self, mut tally: Tally) {
        tally.latencies.sort_unstable();
        self.p50 = quantile(&tally.latencies, 0.5);
        self.p99 = quantile(&tally.latencies, 0.99);
        self.p999 = quantile(&tally.latencies, 0.999);
        self.answered = tally.latencies.len() as u64;
        self.ok = tally.ok;
        self.failed = tally.failed;
        self.other_answers = tally.other;
        self.attempts = tally.attempts;
        self.most_attempts = tally.most_attempts;
        self.completion = tally.completion;
        self.starts_per_worker = tally.starts_per_worker;
        self.ok_per_second = tally.ok_per_second;
    }

    /// What fails a run of healthy workers: an ejection, or a second
    /// without a success.
    pub(super) fn unhealthy_verdict(&self) -> Option<String> {
        if self.ejections > 0 {
            return Some(format!("{} workers ejected under overload", self.ejections));
        }
        self.ok_per_second
            .iter()
            .position(|&ok| ok == 0)
            .map(|second| format!("no request succeeded in second {second}"))
    }

    /// Refusals of every reason.
    pub fn refused(&self) -> u64 {
        self.refused_queue_full
            + self.refused_no_healthy_worker
            + self.refused_circuit_open
            + self.refused_other
    }

    /// Requests answered `Timeout`, queued or running.
    pub fn timeouts(&self) -> u64 {
        self.timeouts_queued + self.timeouts_running
    }

    /// Worker `index`'s share of the handler runs, in percent.
    pub fn share_percent(&self, index: usize) -> f64 {
        let total: u64 = self.starts_per_worker.iter().sum();
        match self.starts_per_worker.get(index) {
            Some(&starts) if total > 0 => 100.0 * starts as f64 / total as f64,
            _ => 0.0,
        }
    }

    /// Every worker's share of the handler runs, in percent, by index.
    pub fn shares(&self) -> String {
        let shares: Vec<String> = (0..self.starts_per_worker.len())
            .map(|index| format!("{:.1}", self.share_percent(index)))
            .collect();
        shares.join(" ")
    }

    /// The health changes: their total, then each worker's that had any
    /// (`418 (w0 330, w1 88)`).
    pub fn transitions_by_worker(&self) -> String {
        let each: Vec<String> = self
            .transitions_per_worker
            .iter()
            .enumerate()
            .filter(|(_, &count)| count > 0)
            .map(|(worker, count)| format!("w{worker} {count}"))
            .collect();
        if each.is_empty() {
            self.transitions.to_string()
        } else {
            format!("{} ({})", self.transitions, each.join(", "))
        }
    }

    /// The run's figures on one line.
    pub fn figures(&self) -> String {
        format!(
            "scenario={} policy={} p50={:?} p99={:?} p999={:?} completion={:?} submitted={} \
             accepted={} ok={} failed={} timeouts={} (queued {}, running {}) other={} \
             refused_queue_full={} refused_no_healthy_worker={} refused_circuit_open={} \
             refused_other={} ejections={} transitions={} attempts={} most_attempts={} \
             hedged={} hedges_won={} shares=[{}] ok_per_second={:?} trace_hash={:016x}",
            self.name,
            self.policy,
            self.p50,
            self.p99,
            self.p999,
            self.completion,
            self.submitted,
            self.accepted,
            self.ok,
            self.failed,
            self.timeouts(),
            self.timeouts_queued,
            self.timeouts_running,
            self.other_answers,
            self.refused_queue_full,
            self.refused_no_healthy_worker,
            self.refused_circuit_open,
            self.refused_other,
            self.ejections,
            self.transitions_by_worker(),
            self.attempts,
            self.most_attempts,
            self.hedged,
            self.hedges_won,
            self.shares(),
            self.ok_per_second,
            self.trace_hash
        )
    }
}
