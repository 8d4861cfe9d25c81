//! "Refused, not started": a handler that declines a request before doing
//! any work on it (it is overloaded) hands the request back with
//! [`refuse_not_started`], and whoever polled it (its worker's task, or in
//! caller-task mode a caller) reports the run to the core as a refusal
//! (`Pool::handle_refusal`) instead of a failure.
//!
//! The handler and whoever polls it meet through the thread-local cell of
//! [`crate::deadline`], emptied before each poll of a handler future and
//! read when that poll returns `Ready(Err(_))`. So the refusal counts only
//! when `refuse_not_started` runs inside the poll that returns its error:
//! in the handler's own future, not in a task the handler spawned.

use std::sync::Arc;

use foreman_core::{Pool, RequestKey, Time, WorkerErrorCode, WorkerProtocolError, WorkerRequest};

use crate::slot::{HeldRequest, Run, Slot};

/// Declines `request` before any work on it was done: the pool runs it on
/// another worker within its deadline (or, with none free, on this one
/// later), without counting it against this worker's health, and counts it
/// in [`Counters::refused_not_started`](crate::Counters). The worker is
/// *saturated* until one of its running requests ends, a probe answers,
/// it is restarted or one probe interval has passed: it is given nothing
/// new meanwhile.
///
/// Return the error this gives from the handler's own `handle` future, in
/// the same poll (`return Err(refuse_not_started(request, "busy"))`): the
/// refusal is recorded for the thread that polls the handler, so calling
/// it in a task the handler spawned, or keeping the error for later,
/// makes it an ordinary failure. It applies in both execution modes
/// ([`ExecutionMode`](crate::ExecutionMode)): in caller-task mode the
/// caller whose request was declined waits for its next start and runs it
/// there. The request must be the one the handler was given: it is the one
/// that runs again.
///
/// The error is a retryable `Unavailable` error; outside a pool it is
/// just that.
///
/// # Examples
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use foreman_tokio::{
///     async_trait, refuse_not_started, WorkerHandler, WorkerProtocolError, WorkerRequest,
/// };
/// use serde_json::{json, Value};
///
/// /// Takes at most `limit` requests at once; declines the others.
/// struct Bounded {
///     running: AtomicUsize,
///     limit: usize,
/// }
///
/// #[async_trait]
/// impl WorkerHandler for Bounded {
///     async fn handle(&self, request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
///         if self.running.fetch_add(1, Ordering::AcqRel) >= self.limit {
///             self.running.fetch_sub(1, Ordering::AcqRel);
///             return Err(refuse_not_started(request, "at capacity"));
///         }
///         let output = json!({ "node": request.node_id });
///         self.running.fetch_sub(1, Ordering::AcqRel);
///         Ok(output)
///     }
/// }
/// ```
pub fn refuse_not_started(
    request: WorkerRequest,
    message: impl Into<String>,
) -> WorkerProtocolError {
    let message = message.into();
    // A refusal whose error was never returned is forgotten here: only the
    // last one counts.
    if let Some(earlier) = crate::deadline::hand_back(request) {
        crate::deadline::dismantle(*earlier);
    }
    WorkerProtocolError::new(
        WorkerErrorCode::Unavailable,
        format!("refused, not started: {message}"),
        true,
    )
}

/// How a handler's run ended, as its worker's task reports it.
pub(crate) enum Outcome {
    /// It finished with this result (or panicked: an error).
    Finished(Result<serde_json::Value, WorkerProtocolError>),
    /// It declined the request, handed back (boxed, so the outcome of a
    /// finished run stays small), before starting it.
    Refused(Box<WorkerRequest>),
}

impl Outcome {
    /// Whether the handler declined its request.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(self, Outcome::Refused(_))
    }

    /// Feeds the outcome of `key`'s run to the core, under its lane's lock:
    /// a completion, or a refusal whose request goes back into its slot
    /// before the core's actions are carried out, so that whichever worker
    /// the core starts it on takes it from there (the slot waits for that
    /// start again). A request that no longer runs drops what it handed
    /// back, as does a hedge that raced its request's own attempt (which
    /// runs on).
    pub(crate) fn apply(self, pool: &mut Pool<Arc<Slot>>, now: Time, key: RequestKey) {
        match self {
            Outcome::Finished(result) => {
                pool.handle_completion(now, key, result);
            }
            Outcome::Refused(request) => {
                let request = HeldRequest::new(*request);
                // Looked up while the attempt is live: a hedge's key is
                // stale once refused, though its request waits again when
                // the hedge ran alone.
                let slot = if pool.refusal_requeues(key) {
                    pool.attempt_payload(key).map(Arc::clone)
                } else {
                    None
                };
                if pool.handle_refusal(now, key) {
                    if let Some(slot) = slot {
                        let mut inner = slot.lock();
                        inner.parked = request;
                        inner.run = Run::Waiting;
                    }
                }
            }
        }
    }

    /// The outcome of a poll that returned `result`: a refusal if the
    /// handler handed its request back in that poll (cleared before it).
    pub(crate) fn of(result: Result<serde_json::Value, WorkerProtocolError>) -> Self {
        match (&result, crate::deadline::take_refused()) {
            (Err(_), Some(request)) => Outcome::Refused(request),
            (_, stale) => {
                if let Some(stale) = stale {
                    crate::deadline::dismantle(*stale);
                }
                Outcome::Finished(result)
            }
        }
    }
}
