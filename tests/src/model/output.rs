//! What the harness tells a simulator to do after each input: the core's
//! actions, mirrored (not reused: an oracle that calls the code it checks
//! cannot catch that code's mistakes) and already checked and booked.

use foreman_core::{ProbeKey, RequestKey, WorkerKey};

use super::trace::AnswerKind;
#[cfg(doc)]
use super::Harness;

/// What the last input asked the driver to do, for a simulator to act on
/// (the harness has already checked and booked it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Run `request` on `worker` (payload `id`).
    Start {
        /// The request.
        request: RequestKey,
        /// Its payload id.
        id: u64,
        /// The worker.
        worker: WorkerKey,
    },
    /// Stop the handler of `request`.
    Abort {
        /// The request.
        request: RequestKey,
    },
    /// `request` (payload `id`) got its answer.
    Answered {
        /// The request.
        request: RequestKey,
        /// Its payload id.
        id: u64,
        /// How it ended.
        kind: AnswerKind,
    },
    /// Run a probe.
    RunProbe {
        /// The worker.
        worker: WorkerKey,
        /// The probe.
        probe: ProbeKey,
    },
    /// Stop a probe.
    AbortProbe {
        /// The worker.
        worker: WorkerKey,
        /// The probe.
        probe: ProbeKey,
    },
    /// Replace the worker's execution context.
    RestartWorker {
        /// The worker.
        worker: WorkerKey,
    },
    /// Release the worker for good.
    StopWorker {
        /// The worker.
        worker: WorkerKey,
    },
    /// Have the circuit breaker place `request` anew ([`Harness::revet`]):
    /// its worker was removed.
    Revet {
        /// The request.
        request: RequestKey,
    },
}
