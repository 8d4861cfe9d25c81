//! A caller's answer: built from the core's, with its success or failure
//! hook; and the driver's error conversions.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use foreman_core::{
    CommandError, WorkerErrorCode, WorkerPoolError, WorkerProtocolError, WorkerRequest,
    WorkerResponse, WorkerResult,
};

use crate::handler::CircuitBreakerHooks;
use crate::state::{worker_id, Delivered, HookEvent};
use crate::types::{Timed, Timings};

pub(crate) async fn fire_hooks(
    hooks: &dyn CircuitBreakerHooks,
    request: &WorkerRequest,
    events: Vec<HookEvent>,
) {
    for event in events {
        match event {
            HookEvent::Accepted(worker_id) => hooks.on_request_accepted(&worker_id, request).await,
            HookEvent::Rejected(worker_id, reason) => {
                hooks
                    .on_request_rejected(worker_id.as_deref(), request, reason)
                    .await;
            }
        }
    }
}

/// The caller's answer, with its success or failure hook fired.
pub(crate) fn finish(
    hooks: Option<&dyn CircuitBreakerHooks>,
    answer: Delivered,
    request_id: String,
) -> Finish<'_> {
    match hooks {
        None => Finish::Ready(respond(answer, request_id)),
        Some(hooks) => {
            let worker = answer.worker.clone();
            let timed = respond(answer, request_id);
            Finish::Notify(Box::pin(async move {
                notify(hooks, worker_id(worker.as_deref()), &timed.result).await;
                timed
            }))
        }
    }
}

/// A caller's answer: ready, or once its hook has run (boxed, so the
/// common case adds nothing to the caller's future).
pub(crate) enum Finish<'a> {
    /// No hook to run.
    Ready(Timed),
    /// Once the hook has run.
    Notify(Pin<Box<dyn Future<Output = Timed> + Send + 'a>>),
}

/// The caller's answer, from the core's.
pub(crate) fn respond(answer: Delivered, request_id: String) -> Timed {
    let timings = Timings {
        queued: answer.queued_for,
        ran: answer.ran_for,
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

/// Fires the success or failure hook of an answered request.
pub(crate) async fn notify(
    hooks: &dyn CircuitBreakerHooks,
    worker_id: &str,
    outcome: &Result<WorkerResponse, WorkerPoolError>,
) {
    match outcome {
        Ok(response) => hooks.on_request_success(worker_id, response).await,
        Err(error) => {
            hooks
                .on_request_failure(worker_id, &protocol_error(error))
                .await;
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
        CommandError::UnknownWorker(_) | CommandError::WorkerRemoving(_) => {
            WorkerPoolError::NoHealthyWorker
        }
        other => WorkerPoolError::InvalidRequest {
            reason: other.to_string(),
        },
    }
}
