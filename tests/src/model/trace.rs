//! What the harness records: every input and output as a [`TraceEvent`],
//! hashed into a [`Trace`] that keeps the last few and optionally all.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use foreman_core::{
    HealthCause, Phase, Time, WorkerErrorCode, WorkerHealthStatus, WorkerPoolError,
};
use serde_json::Value;

use super::operations::{Outcome, Verdict};

/// How an answer ended, as recorded in the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnswerKind {
    /// The handler's output.
    Ok,
    /// The handler's error.
    Failed {
        /// Whether it was retryable.
        retryable: bool,
    },
    /// Cancelled by the caller (`retryable: false`) or a restart (`true`).
    Cancelled {
        /// Whether it was retryable.
        retryable: bool,
    },
    /// The time budget ran out.
    Timeout,
    /// The drain deadline passed.
    ShuttingDown,
    /// The worker was removed and nobody could take the request.
    Unavailable,
    /// Anything else (always a failure of the checks).
    Other,
}

impl AnswerKind {
    pub(super) fn of(result: &Result<Value, WorkerPoolError>) -> Self {
        match result {
            Ok(_) => AnswerKind::Ok,
            Err(WorkerPoolError::Timeout) => AnswerKind::Timeout,
            Err(WorkerPoolError::ShuttingDown) => AnswerKind::ShuttingDown,
            Err(WorkerPoolError::Worker(error)) => match error.code {
                WorkerErrorCode::ExecutionFailed => AnswerKind::Failed {
                    retryable: error.retryable,
                },
                WorkerErrorCode::Cancelled => AnswerKind::Cancelled {
                    retryable: error.retryable,
                },
                WorkerErrorCode::Unavailable => AnswerKind::Unavailable,
                _ => AnswerKind::Other,
            },
            Err(_) => AnswerKind::Other,
        }
    }
}

/// Why a submit was refused, as recorded in the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `QueueFull`.
    QueueFull,
    /// `NoHealthyWorker`.
    NoHealthyWorker,
    /// `ShuttingDown`.
    ShuttingDown,
    /// `InvalidRequest`.
    Invalid,
    /// `Timeout` on arrival: the request's budget was zero.
    NoBudget,
    /// `CircuitOpen`.
    CircuitOpen,
    /// Anything else.
    Other,
}

impl Refusal {
    pub(super) fn of(error: &WorkerPoolError) -> Self {
        match error {
            WorkerPoolError::QueueFull => Refusal::QueueFull,
            WorkerPoolError::NoHealthyWorker => Refusal::NoHealthyWorker,
            WorkerPoolError::ShuttingDown => Refusal::ShuttingDown,
            WorkerPoolError::InvalidRequest { .. } => Refusal::Invalid,
            WorkerPoolError::Timeout => Refusal::NoBudget,
            WorkerPoolError::CircuitOpen => Refusal::CircuitOpen,
            _ => Refusal::Other,
        }
    }
}

/// One line of the trace. Requests are named by their payload (the
/// harness's submit counter), workers by their ordinal (the order they were
/// added), so traces compare across runs and against a reference model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceEvent {
    /// A submit; `Ok(worker)` or the refusal.
    Submit {
        /// When (the core's time).
        at: Time,
        /// The request.
        id: u64,
        /// Outcome.
        result: Result<u32, Refusal>,
    },
    /// A cancel; `applied` is the core's return value.
    Cancel {
        /// When.
        at: Time,
        /// The request (0 for a stale key).
        id: u64,
        /// Whether the core acted on it.
        applied: bool,
    },
    /// A handler's refusal of an attempt before starting it.
    Refuse {
        /// When.
        at: Time,
        /// The request.
        id: u64,
        /// Whether the attempt was a hedge racing its request's own.
        hedge: bool,
        /// The worker that refused it (its ordinal).
        worker: u32,
    },
    /// A completion.
    Complete {
        /// When.
        at: Time,
        /// The request (0 for a stale key).
        id: u64,
        /// How it ended.
        outcome: Outcome,
        /// Whether the core acted on it.
        applied: bool,
    },
    /// A probe answer.
    ProbeResult {
        /// When.
        at: Time,
        /// The worker.
        worker: u32,
        /// What it said.
        verdict: Verdict,
        /// Whether the core acted on it.
        applied: bool,
    },
    /// A worker command: 0 add, 1 remove, 2 restart; `ok` its result.
    Command {
        /// When.
        at: Time,
        /// 0 add, 1 remove, 2 restart.
        kind: u8,
        /// The worker (new ordinal for add).
        worker: u32,
        /// Whether it was accepted.
        ok: bool,
    },
    /// `begin_shutdown`.
    Shutdown {
        /// When.
        at: Time,
        /// The drain limit.
        drain: Option<Duration>,
    },
    /// `handle_timeout` at the driver's clock.
    Wake {
        /// The driver's clock.
        clock: Time,
        /// The core's time.
        at: Time,
    },
    /// The driver's clock stepped backwards.
    ClockBack {
        /// The new driver clock.
        clock: Time,
    },
    /// Output: a request was accepted by a worker.
    Accepted {
        /// The request.
        id: u64,
        /// The worker.
        worker: u32,
    },
    /// A request whose worker was removed was placed through its circuit
    /// breaker: on worker `to`, or answered (`None`).
    Revet {
        /// When.
        at: Time,
        /// The request.
        id: u64,
        /// Where it went.
        to: Option<u32>,
    },
    /// Output: a request moved from a removed worker.
    Requeued {
        /// The request.
        id: u64,
        /// From.
        from: u32,
        /// To.
        to: u32,
    },
    /// A retryable failure sent the request to another worker.
    Retried {
        /// The request.
        id: u64,
        /// The worker whose attempt failed.
        from: u32,
        /// The worker of the next attempt.
        to: u32,
    },
    /// A running request got a second attempt on another worker.
    Hedged {
        /// The request.
        id: u64,
        /// The worker of its running attempt.
        from: u32,
        /// The worker of the hedge.
        to: u32,
    },
    /// Output: start.
    Start {
        /// The request.
        id: u64,
        /// The worker.
        worker: u32,
    },
    /// Output: abort.
    Abort {
        /// The request.
        id: u64,
    },
    /// Output: answer.
    Answer {
        /// The request.
        id: u64,
        /// Where it was.
        phase: Phase,
        /// How it ended.
        kind: AnswerKind,
    },
    /// Output: a health change.
    Health {
        /// The worker.
        worker: u32,
        /// From.
        from: WorkerHealthStatus,
        /// To.
        to: WorkerHealthStatus,
        /// Why.
        cause: HealthCause,
    },
    /// Output: probe sent.
    RunProbe {
        /// The worker.
        worker: u32,
    },
    /// Output: probe aborted.
    AbortProbe {
        /// The worker.
        worker: u32,
    },
    /// Output: worker restarted.
    RestartWorker {
        /// The worker.
        worker: u32,
    },
    /// Output: worker stopped.
    StopWorker {
        /// The worker.
        worker: u32,
    },
    /// Output: shutdown complete.
    ShutdownComplete {
        /// When.
        at: Time,
    },
    /// A simulator note (phase changes and the like).
    Note {
        /// What.
        what: &'static str,
        /// When.
        at: Time,
    },
}

/// Length of the trace's tail kept for failure reports.
pub const TRACE_TAIL: usize = 32;

/// The trace: a running hash of every event, the last [`TRACE_TAIL`]
/// events, and optionally the whole history.
#[derive(Debug, Clone)]
pub struct Trace {
    hash: u64,
    ring: Vec<TraceEvent>,
    next: usize,
    len: u64,
    full: Option<Vec<TraceEvent>>,
    /// Whether events are recorded at all.
    recording: bool,
}

impl Trace {
    pub(super) fn new(keep_all: bool) -> Self {
        Trace {
            hash: 0xcbf2_9ce4_8422_2325,
            ring: Vec::with_capacity(TRACE_TAIL),
            next: 0,
            len: 0,
            full: keep_all.then(Vec::new),
            recording: true,
        }
    }

    /// Stops recording: later events leave no trace (and cost nothing).
    pub(super) fn stop(&mut self) {
        self.recording = false;
    }

    /// Records one event (unless recording stopped).
    pub fn push(&mut self, event: TraceEvent) {
        if !self.recording {
            return;
        }
        let mut hasher = WordHasher(self.hash);
        event.hash(&mut hasher);
        self.hash = hasher.0;
        if self.ring.len() < TRACE_TAIL {
            self.ring.push(event);
        } else {
            self.ring[self.next] = event;
        }
        self.next = (self.next + 1) % TRACE_TAIL;
        self.len += 1;
        if let Some(full) = &mut self.full {
            full.push(event);
        }
    }

    /// The hash of everything recorded (deterministic across runs).
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Events recorded.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The last events, oldest first.
    pub fn tail(&self) -> Vec<TraceEvent> {
        if self.ring.len() < TRACE_TAIL {
            self.ring.clone()
        } else {
            let mut tail = self.ring[self.next..].to_vec();
            tail.extend_from_slice(&self.ring[..self.next]);
            tail
        }
    }

    /// The whole history, when kept.
    pub fn full(&self) -> Option<&[TraceEvent]> {
        self.full.as_deref()
    }
}

/// A fast deterministic word-mixing hasher for the trace hash (FNV-style
/// multiply with an xor-shift per word).
struct WordHasher(u64);

impl WordHasher {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(0x0000_0100_0000_01b3);
        self.0 ^= self.0 >> 29;
    }
}

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }
    fn write_isize(&mut self, i: isize) {
        self.mix(i as u64);
    }
}
