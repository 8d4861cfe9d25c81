//! The events of a request (its refusal, a circuit breaker's veto, its
//! end) and those outside request spans (health transitions, moves
//! between workers), for the `tracing` feature; without it, the methods
//! of [`Traced`] here do nothing.

use foreman_core::WorkerPoolError;
#[cfg(feature = "tracing")]
use foreman_core::{HealthCause, Phase, RequestKey, WorkerHealthStatus};

use super::Traced;
#[cfg(feature = "tracing")]
use crate::outcome::Ending;
#[cfg(feature = "tracing")]
use crate::outcome::{cause_name, phase_name, refusal_reason, status_name};
use crate::slot::Slot;
#[cfg(feature = "tracing")]
use crate::started::worker_id;
use crate::started::Delivered;

impl Traced {
    /// The request was refused (`debug`, with the reason).
    #[inline]
    pub(crate) fn refused(self, slot: &Slot, error: &WorkerPoolError) {
        #[cfg(feature = "tracing")]
        if self.events {
            self.told_refused(slot, error);
        }
        #[cfg(not(feature = "tracing"))]
        let _ = (slot, error);
    }

    /// Tells that the request was refused (see [`refused`](Self::refused)).
    #[cfg(feature = "tracing")]
    #[inline(never)]
    fn told_refused(self, slot: &Slot, error: &WorkerPoolError) {
        tracing::debug!(
            target: "foreman",
            parent: self.parent(slot),
            reason = refusal_reason(error),
            "request refused"
        );
    }

    /// A circuit breaker vetoed `worker` for the request (`debug`).
    #[inline]
    pub(crate) fn vetoed(self, slot: &Slot, worker: &str) {
        #[cfg(feature = "tracing")]
        if self.events {
            tracing::debug!(
                target: "foreman",
                parent: self.parent(slot),
                worker,
                "circuit breaker vetoed the worker"
            );
        }
        #[cfg(not(feature = "tracing"))]
        let _ = (slot, worker);
    }

    /// The request ended: nothing for a success; `debug` for a handler's
    /// failure, a cancellation or a timeout while queued (load shed);
    /// `warn` for a timeout while running (its handler was cut off);
    /// `info` for aborts by a restart or the drain deadline and for a
    /// request its removed worker could hand to nobody.
    #[inline]
    pub(crate) fn ended(self, slot: &Slot, answer: &Delivered, cancelled: bool) {
        #[cfg(feature = "tracing")]
        if self.events && tracing::level_enabled!(tracing::Level::WARN) {
            // The least verbose of these events is `warn`: nothing below
            // runs when a subscriber wants none of them.
            self.told_end(
                slot,
                answer.ending(cancelled),
                worker_id(answer.worker.as_deref()),
            );
        }
        #[cfg(not(feature = "tracing"))]
        let _ = (slot, answer, cancelled);
    }

    /// Tells how the request ended (see [`ended`](Self::ended)).
    #[cfg(feature = "tracing")]
    #[inline(never)]
    fn told_end(self, slot: &Slot, ending: Ending, worker: &str) {
        {
            let span = self.parent(slot);
            match ending {
                Ending::Succeeded => {}
                Ending::Failed => tracing::debug!(
                    target: "foreman",
                    parent: span,
                    worker,
                    "handler failed"
                ),
                Ending::TimedOut(Phase::Queued) => tracing::debug!(
                    target: "foreman",
                    parent: span,
                    phase = "queued",
                    "request timed out while queued"
                ),
                Ending::TimedOut(Phase::Running) => tracing::warn!(
                    target: "foreman",
                    parent: span,
                    phase = "running",
                    worker,
                    "request timed out while running; its handler was aborted"
                ),
                Ending::Cancelled(phase) => tracing::debug!(
                    target: "foreman",
                    parent: span,
                    phase = phase_name(phase),
                    "request cancelled by its caller"
                ),
                Ending::Restarted => tracing::info!(
                    target: "foreman",
                    parent: span,
                    worker,
                    "request aborted: its worker was restarted"
                ),
                Ending::ShutDown(phase) => tracing::info!(
                    target: "foreman",
                    parent: span,
                    phase = phase_name(phase),
                    "request aborted: the shutdown's drain deadline passed"
                ),
                Ending::Unroutable => tracing::info!(
                    target: "foreman",
                    parent: span,
                    worker,
                    "request answered Unavailable: its worker was removed and no other could take it"
                ),
            }
        }
    }
}

/// A worker's health changed, with its cause: `warn` when it got worse
/// on evidence (failures, timeouts, probes), `info` when it became
/// Healthy or changed because it was restarted or stopped.
#[cfg(feature = "tracing")]
pub(crate) fn health_changed(
    worker: &str,
    from: WorkerHealthStatus,
    to: WorkerHealthStatus,
    cause: HealthCause,
) {
    let (from, to_name, cause_name) = (status_name(from), status_name(to), cause_name(cause));
    let deliberate = matches!(cause, HealthCause::Restart | HealthCause::Stopped);
    // tracing's levels are per call site, so each level is its own macro.
    if to == WorkerHealthStatus::Healthy || deliberate {
        tracing::info!(target: "foreman", worker, from, to = to_name, cause = cause_name, "worker health changed");
    } else {
        tracing::warn!(target: "foreman", worker, from, to = to_name, cause = cause_name, "worker health changed");
    }
}

/// A failed attempt runs again on another worker (`debug`).
#[cfg(feature = "tracing")]
pub(crate) fn retried(request: RequestKey, from: &str, to: &str, attempt: u32) {
    tracing::debug!(
        target: "foreman",
        request = request.as_u64(),
        from,
        to,
        attempt,
        "failed attempt retried on another worker"
    );
}

/// A running request got a second attempt on another worker (`debug`).
#[cfg(feature = "tracing")]
pub(crate) fn hedged(request: RequestKey, from: &str, to: &str, attempt: u32) {
    tracing::debug!(
        target: "foreman",
        request = request.as_u64(),
        from,
        to,
        attempt,
        "running request hedged on another worker"
    );
}

/// A queued request moved from one worker to another (`debug`): a free
/// worker took it (late binding), or its worker was removed.
#[cfg(feature = "tracing")]
pub(crate) fn requeued(request: RequestKey, from: &str, to: &str) {
    tracing::debug!(
        target: "foreman",
        request = request.as_u64(),
        from,
        to,
        "queued request moved to another worker"
    );
}
