//! The deadline of the request whose handler is being polled, readable by
//! the handler ([`handler_deadline`]): a handler that passes work on (an
//! HTTP call to a remote worker, a model API with its own timeout) sends
//! the time its request has left rather than its whole budget.
//!
//! Whoever polls a handler future sets a thread-local cell for the length
//! of the poll: a worker task through [`within`], which wraps the handler
//! future, and a caller that runs its own request's handler through
//! [`Polling`].

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

thread_local! {
    /// The deadline of the handler polled on this thread right now.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The instant by which the pool cuts off the handler it is polling on
/// this thread: the earlier of its request's deadline (`timeout_ms`, or
/// the pool's default timeout) and its run limit, in the clock of the
/// pool's runtime (`Runtime::now`: for foreman-tokio, tokio's clock, which
/// a paused test runtime stops).
///
/// `None` outside a handler's poll (in a task the handler spawned, for
/// instance: read it in the handler's own future and pass it on) and for
/// a request with neither a deadline nor a run limit.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use foreman_tokio::{
///     async_trait, handler_deadline, WorkerHandler, WorkerProtocolError, WorkerRequest,
/// };
/// use serde_json::{json, Value};
///
/// /// Answers with the milliseconds its request has left.
/// struct TimeLeft;
///
/// #[async_trait]
/// impl WorkerHandler for TimeLeft {
///     async fn handle(&self, _request: WorkerRequest) -> Result<Value, WorkerProtocolError> {
///         let now = tokio::time::Instant::now().into_std();
///         let left = handler_deadline().map(|deadline| deadline.saturating_duration_since(now));
///         Ok(json!(left.map(|left| left.as_millis() as u64)))
///     }
/// }
/// ```
pub fn handler_deadline() -> Option<Instant> {
    DEADLINE.with(Cell::get)
}

pin_project_lite::pin_project! {
    /// A handler future that sets its deadline for [`handler_deadline`]
    /// while it is polled.
    pub(crate) struct Within<F> {
        deadline: Option<Instant>,
        #[pin]
        future: F,
    }
}

/// Wraps `future` so that [`handler_deadline`] says `deadline` while it is
/// polled, wherever it is polled.
pub(crate) fn within<F: Future>(deadline: Option<Instant>, future: F) -> Within<F> {
    Within { deadline, future }
}

impl<F: Future> Future for Within<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _polling = Polling::set(*this.deadline);
        this.future.poll(cx)
    }
}

/// Says `deadline` to [`handler_deadline`] until dropped (a panicking poll
/// included), then what it said before.
pub(crate) struct Polling {
    previous: Option<Instant>,
}

impl Polling {
    /// Sets `deadline` for the poll that follows.
    #[inline]
    pub(crate) fn set(deadline: Option<Instant>) -> Self {
        Polling {
            previous: DEADLINE.with(|cell| cell.replace(deadline)),
        }
    }
}

impl Drop for Polling {
    #[inline]
    fn drop(&mut self) {
        // During the thread's teardown the cell may be gone: nothing to
        // restore then.
        let _ = DEADLINE.try_with(|cell| cell.set(self.previous));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_deadline_is_seen_only_while_its_future_is_polled() {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut seen = None;
        let future = within(Some(deadline), async {
            seen = handler_deadline();
        });
        assert_eq!(handler_deadline(), None);
        futures::executor::block_on(future);
        assert_eq!(seen, Some(deadline));
        assert_eq!(handler_deadline(), None);
    }

    #[test]
    fn nested_polls_restore_the_outer_deadline() {
        let outer = Instant::now() + Duration::from_secs(5);
        let inner = outer + Duration::from_secs(1);
        let mut seen = Vec::new();
        futures::executor::block_on(within(Some(outer), async {
            seen.push(handler_deadline());
            within(Some(inner), async {
                seen.push(handler_deadline());
            })
            .await;
            seen.push(handler_deadline());
        }));
        assert_eq!(seen, vec![Some(outer), Some(inner), Some(outer)]);
    }

    #[test]
    fn a_panicking_poll_restores_the_deadline() {
        let deadline = Instant::now();
        let panicked = std::panic::catch_unwind(|| {
            futures::executor::block_on(within(Some(deadline), async { panic!("handler") }))
        });
        assert!(panicked.is_err());
        assert_eq!(handler_deadline(), None);
    }
}
