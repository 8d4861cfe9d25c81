//! "Refused, not started": a handler that declines a request before doing
//! any work on it (it is overloaded) hands the request back with
//! [`refuse_not_started`], and its worker's task reports the completion to
//! the core as a refusal (`Pool::handle_refusal`) instead of a failure.
//!
//! The handler and the worker task meet through a thread-local cell: the
//! task empties it before each poll of a handler future and takes what it
//! holds when that poll returns `Ready(Err(_))`. So the refusal counts only
//! when `refuse_not_started` runs inside the poll that returns its error:
//! in the handler's own future, not in a task the handler spawned.

use std::cell::RefCell;

use foreman_core::{WorkerErrorCode, WorkerProtocolError, WorkerRequest};

thread_local! {
    /// The request the handler polled last on this thread handed back.
    static REFUSED: RefCell<Option<WorkerRequest>> = const { RefCell::new(None) };
}

/// Declines `request` before any work on it was done: the pool runs it on
/// another worker within its deadline (or, with none free, on this one
/// later), without counting it against this worker's health, and counts it
/// in [`Counters::refused_not_started`](crate::Counters). The worker is
/// *saturated* until one of its running requests ends, a probe answers or
/// it is restarted: it is given nothing new meanwhile.
///
/// Return the error this gives from the handler's own `handle` future, in
/// the same poll (`return Err(refuse_not_started(request, "busy"))`): the
/// refusal is recorded for the thread that polls the handler, so calling
/// it in a task the handler spawned, or keeping the error for later,
/// makes it an ordinary failure. It applies to pools that run handlers on
/// worker tasks ([`ExecutionMode::PoolTasks`](crate::ExecutionMode), the
/// default, and every pool with hooks); in
/// [`ExecutionMode::CallerTask`](crate::ExecutionMode) without hooks the
/// error is an ordinary failure. The request must be the one the handler
/// was given: it is the one that runs again.
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
    let earlier = REFUSED.with(|cell| cell.replace(Some(request)));
    if let Some(earlier) = earlier {
        foreman_core::dismantle_request(earlier);
    }
    WorkerProtocolError::new(
        WorkerErrorCode::Unavailable,
        format!("refused, not started: {message}"),
        true,
    )
}

/// Forgets any refusal recorded on this thread (before a handler's poll).
pub(crate) fn clear() {
    if let Some(stale) = REFUSED.with(RefCell::take) {
        foreman_core::dismantle_request(stale);
    }
}

/// The request handed back by the poll that just returned, if it refused.
pub(crate) fn take() -> Option<WorkerRequest> {
    REFUSED.with(RefCell::take)
}

/// How a handler's run ended, as its worker's task reports it.
pub(crate) enum Outcome {
    /// It finished with this result (or panicked: an error).
    Finished(Result<serde_json::Value, WorkerProtocolError>),
    /// It declined the request, handed back, before starting it.
    Refused(WorkerRequest),
}

impl Outcome {
    /// The outcome of a poll that returned `result`: a refusal if the
    /// handler handed its request back in that poll (cleared before it).
    pub(crate) fn of(result: Result<serde_json::Value, WorkerProtocolError>) -> Self {
        match (&result, take()) {
            (Err(_), Some(request)) => Outcome::Refused(request),
            (_, stale) => {
                if let Some(stale) = stale {
                    foreman_core::dismantle_request(stale);
                }
                Outcome::Finished(result)
            }
        }
    }
}
