//! What a handler being polled can read about its run, and hand back:
//! its request's deadline ([`handler_deadline`]; a handler that passes
//! work on, as an HTTP call to a remote worker or a model API with its own
//! timeout, sends the time its request has left rather than its whole
//! budget), and a request it declines
//! ([`refuse_not_started`](crate::refuse_not_started), read back by
//! [`crate::refusal`]).
//!
//! Both live in one thread-local cell, which whoever polls a handler
//! future reaches once per poll ([`poll_handler`]): a worker task and a
//! task that claimed another caller's request through [`within`], which
//! wraps the handler future, and a caller that runs its own request's
//! handler directly. The deadline is kept as the core's `Time` with its
//! epoch and made an `Instant` only when a handler asks.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use foreman_core::{Time, WorkerRequest};

thread_local! {
    /// What the handler polled on this thread right now can read, and
    /// what it handed back.
    static POLLED: Polled = const {
        Polled {
            deadline: Cell::new(None),
            refused: Cell::new(None),
        }
    };
}

/// The thread's cell (see the module's docs).
struct Polled {
    /// The deadline of the handler being polled (`None` outside a poll).
    deadline: Cell<Option<Deadline>>,
    /// The request the handler polled last handed back, boxed: emptying
    /// it before every poll is a pointer's swap, not a request's copy.
    refused: Cell<Option<Box<WorkerRequest>>>,
}

/// When the core cuts a handler off: the core's cutoff (`Pool::cutoff`;
/// `Time::MAX` for none) and the instant the core's `Time::ZERO` stands
/// for, made an `Instant` only when the handler asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Deadline {
    at: Time,
    epoch: Instant,
}

impl Deadline {
    /// The deadline `at` in the clock of a core whose `Time::ZERO` is
    /// `epoch` (`Time::MAX`: none).
    #[inline]
    pub(crate) fn new(at: Time, epoch: Instant) -> Self {
        Deadline { at, epoch }
    }

    /// The deadline as an instant of the runtime's clock, if there is one.
    fn instant(self) -> Option<Instant> {
        if self.at == Time::MAX {
            return None;
        }
        self.epoch.checked_add(self.at.since_epoch())
    }
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
    POLLED
        .with(|polled| polled.deadline.get())
        .and_then(Deadline::instant)
}

pin_project_lite::pin_project! {
    /// A handler future that says its deadline to [`handler_deadline`]
    /// while it is polled, and forgets a refusal of an earlier poll first.
    pub(crate) struct Within<F> {
        deadline: Deadline,
        #[pin]
        future: F,
    }
}

/// Wraps `future` so that it is polled through [`poll_handler`] with
/// `deadline`, wherever it is polled.
pub(crate) fn within<F: Future>(deadline: Deadline, future: F) -> Within<F> {
    Within { deadline, future }
}

impl<F: Future> Future for Within<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let future = this.future;
        poll_handler(Some(*this.deadline), || future.poll(cx))
    }
}

/// Runs `poll`, one poll of a handler future, with the thread's cell
/// saying `deadline` to [`handler_deadline`] and holding no refusal (one
/// of an earlier poll is dropped): one access to the cell. The deadline
/// said before is said again once `poll` returns or panics.
#[inline]
pub(crate) fn poll_handler<T>(deadline: Option<Deadline>, poll: impl FnOnce() -> T) -> T {
    POLLED.with(|polled| {
        let _restore = Restore {
            polled,
            previous: polled.deadline.replace(deadline),
        };
        if let Some(stale) = polled.refused.take() {
            dismantle(*stale);
        }
        poll()
    })
}

/// Says the deadline said before a poll again once it is dropped.
struct Restore<'a> {
    polled: &'a Polled,
    previous: Option<Deadline>,
}

impl Drop for Restore<'_> {
    #[inline]
    fn drop(&mut self) {
        self.polled.deadline.set(self.previous);
    }
}

/// Records `request` as handed back by the handler being polled; returns
/// one recorded earlier in the same poll, if any.
pub(crate) fn hand_back(request: WorkerRequest) -> Option<Box<WorkerRequest>> {
    POLLED.with(|polled| polled.refused.replace(Some(Box::new(request))))
}

/// Takes the request handed back in the poll that just returned, if any.
#[inline]
pub(crate) fn take_refused() -> Option<Box<WorkerRequest>> {
    POLLED.with(|polled| polled.refused.take())
}

/// Takes a handed-back request apart (out of line: rare).
#[inline(never)]
pub(crate) fn dismantle(request: WorkerRequest) {
    foreman_core::dismantle_request(request);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A deadline `secs` seconds after `epoch`.
    fn after(epoch: Instant, secs: u64) -> Deadline {
        Deadline::new(Time::from_nanos(secs * 1_000_000_000), epoch)
    }

    #[test]
    fn a_deadline_is_seen_only_while_its_future_is_polled() {
        let epoch = Instant::now();
        let deadline = epoch + Duration::from_secs(3);
        let mut seen = None;
        let future = within(after(epoch, 3), async {
            seen = handler_deadline();
        });
        assert_eq!(handler_deadline(), None);
        futures::executor::block_on(future);
        assert_eq!(seen, Some(deadline));
        assert_eq!(handler_deadline(), None);
    }

    #[test]
    fn nested_polls_restore_the_outer_deadline() {
        let epoch = Instant::now();
        let outer = epoch + Duration::from_secs(5);
        let inner = outer + Duration::from_secs(1);
        let mut seen = Vec::new();
        futures::executor::block_on(within(after(epoch, 5), async {
            seen.push(handler_deadline());
            within(after(epoch, 6), async {
                seen.push(handler_deadline());
            })
            .await;
            seen.push(handler_deadline());
        }));
        assert_eq!(seen, vec![Some(outer), Some(inner), Some(outer)]);
    }

    #[test]
    fn a_panicking_poll_restores_the_deadline() {
        let deadline = after(Instant::now(), 0);
        let panicked = std::panic::catch_unwind(|| {
            futures::executor::block_on(within(deadline, async { panic!("handler") }))
        });
        assert!(panicked.is_err());
        assert_eq!(handler_deadline(), None);
    }

    #[test]
    fn a_request_with_no_cutoff_has_no_deadline() {
        let mut seen = Some(Instant::now());
        futures::executor::block_on(within(Deadline::new(Time::MAX, Instant::now()), async {
            seen = handler_deadline();
        }));
        assert_eq!(seen, None);
    }
}
