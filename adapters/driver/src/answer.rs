//! A caller's answer: built from the core's, with its success or failure
//! hook; and the driver's error conversions.

use std::time::Duration;

use foreman_core::{
    CommandError, WorkerErrorCode, WorkerPoolError, WorkerProtocolError, WorkerRequest,
    WorkerResponse, WorkerResult,
};

use crate::handler::CircuitBreakerHooks;
use crate::started::{worker_id, Delivered};
use crate::types::{Timed, Timings};

/// Asks the breaker whether the worker named `worker_id` may take the
/// request; a veto is reported (`on_request_rejected`) before this returns.
pub(crate) async fn ask_breaker(
    hooks: &dyn CircuitBreakerHooks,
    worker_id: &str,
    request: &WorkerRequest,
) -> bool {
    let allowed = hooks.allow_request(worker_id, request);
    if !allowed {
        hooks
            .on_request_rejected(Some(worker_id), request, WorkerErrorCode::CircuitOpen)
            .await;
    }
    allowed
}

/// The caller's answer, from the core's.
pub(crate) fn respond(answer: Delivered, request_id: String) -> Timed {
    let timings = Timings {
        queued: answer.queued_for,
        ran: answer.ran_for,
        attempts: answer.attempts,
        limit: answer.limit,
    };
    let result = answer.result.map(|output| WorkerResponse {
        request_id,
        worker_id: String::from(worker_id(answer.worker.as_deref())),
        result: WorkerResult::Success { output },
        elapsed_ms: millis(
            timings
                .queued
                .saturating_add(timings.ran.unwrap_or_default()),
        ),
    });
    Timed { result, timings }
}

/// Fires the success or failure hook of an answered request; a `Timeout`
/// is reported with a message naming the limit that fired and the
/// request's timings.
pub(crate) async fn notify(hooks: &dyn CircuitBreakerHooks, worker_id: &str, timed: &Timed) {
    match &timed.result {
        Ok(response) => hooks.on_request_success(worker_id, response).await,
        Err(error) => {
            let mut reported = protocol_error(error);
            if let Some(message) = timed.timings.timeout_message() {
                reported.message = format!("{}: {message}", reported.message);
            }
            hooks.on_request_failure(worker_id, &reported).await;
        }
    }
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The wire form of a pool error, for `on_request_failure`.
pub(crate) fn protocol_error(error: &WorkerPoolError) -> WorkerProtocolError {
    match error {
        WorkerPoolError::Worker(inner) => inner.clone(),
        other => WorkerProtocolError::new(
            other.code(),
            other.to_string(),
            other.code() != WorkerErrorCode::InvalidRequest,
        ),
    }
}

pub(crate) fn lost_answer() -> WorkerPoolError {
    debug_assert!(false, "a request ended without its answer");
    WorkerPoolError::Worker(WorkerProtocolError::new(
        WorkerErrorCode::Unavailable,
        "the pool lost track of this request",
        true,
    ))
}

pub(crate) fn command_error(error: CommandError) -> WorkerPoolError {
    match error {
        CommandError::ShuttingDown => WorkerPoolError::ShuttingDown,
        CommandError::UnknownWorker(_)
        | CommandError::UnknownWorkerId(_)
        | CommandError::WorkerRemoving(_) => WorkerPoolError::NoHealthyWorker,
        other => WorkerPoolError::InvalidRequest {
            reason: other.to_string(),
        },
    }
}
