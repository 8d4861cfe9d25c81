//! How an accepted request ended, read from the core's answer, and the
//! names that the `tracing` and `metrics` features give to endings,
//! refusal reasons, phases, health statuses and their causes.
//!
//! The core decides every ending; this file only reads its answer: the
//! error says timeout or drain, the phase says queued or running, an
//! `Action::Abort` of the same request just before the answer (only a
//! restart aborts with a worker error, once the caller's own cancel is
//! told apart) says the core cut the handler off, and the driver knows
//! which cancels it sent itself.
#![cfg_attr(not(all(feature = "tracing", feature = "metrics")), allow(dead_code))]

use foreman_core::{HealthCause, Phase, WorkerHealthStatus, WorkerPoolError};

/// How an accepted request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Answered with its handler's output.
    Succeeded,
    /// Answered with its handler's error (or panic).
    Failed,
    /// Its time budget ran out, while queued or while running.
    TimedOut(Phase),
    /// Its caller gave up on it (dropped the `submit` future).
    Cancelled(Phase),
    /// Aborted while running because its worker was restarted.
    Restarted,
    /// Answered `ShuttingDown` when the drain deadline passed.
    ShutDown(Phase),
    /// Its worker was removed while it waited and no other worker could
    /// take it.
    Unroutable,
}

/// The label of a refusal: `invalid_request`, `queue_full`,
/// `no_healthy_worker`, `circuit_open`, `shutting_down` or `timeout` (a
/// zero time budget), as the core counts refusals.
pub(crate) fn refusal_reason(error: &WorkerPoolError) -> &'static str {
    match error {
        WorkerPoolError::InvalidRequest { .. } => "invalid_request",
        WorkerPoolError::QueueFull => "queue_full",
        WorkerPoolError::CircuitOpen => "circuit_open",
        WorkerPoolError::ShuttingDown => "shutting_down",
        WorkerPoolError::Timeout => "timeout",
        _ => "no_healthy_worker",
    }
}

/// `queued` or `running`.
pub(crate) fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Queued => "queued",
        Phase::Running => "running",
    }
}

/// `healthy`, `degraded` or `unavailable`.
pub(crate) fn status_name(status: WorkerHealthStatus) -> &'static str {
    match status {
        WorkerHealthStatus::Healthy => "healthy",
        WorkerHealthStatus::Degraded => "degraded",
        WorkerHealthStatus::Unavailable => "unavailable",
    }
}

/// The cause of a health transition, in snake case.
pub(crate) fn cause_name(cause: HealthCause) -> &'static str {
    match cause {
        HealthCause::Success => "success",
        HealthCause::Failure => "failure",
        HealthCause::Timeout => "timeout",
        HealthCause::Probe => "probe",
        HealthCause::ProbeTimeout => "probe_timeout",
        HealthCause::Restart => "restart",
        HealthCause::Stopped => "stopped",
        HealthCause::EjectionExpired => "ejection_expired",
        // The workspace pins foreman-core exactly: a cause this driver does
        // not know cannot reach it.
        _ => "other",
    }
}
