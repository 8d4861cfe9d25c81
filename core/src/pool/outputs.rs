//! What the driver polls after every input: the actions to carry out in
//! order, the events to report, and when to wake the core.

use super::timeouts::LiveTimers;
use super::Pool;
use crate::output::{Action, Event};
use crate::time::Time;
use crate::timers::TimeoutReason;

impl<P: Clone> Pool<P> {
    /// The next thing the driver must do, in order; `None` when there is
    /// nothing left. See the drain rule in the type's docs.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.actions.pop_front()
    }

    /// The next event to report (hooks, tracing); `None` when there is
    /// nothing left.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next, and why;
    /// `None` when no timer is armed.
    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<(Time, TimeoutReason)> {
        let live = LiveTimers {
            requests: &self.requests,
            workers: &self.workers,
            lifecycle: self.lifecycle,
            deferral: self.deferral,
            hedge_first: self.hedge_due.first().map(|(at, _)| *at),
        };
        self.timers
            .peek_live(|at, timer| live.is_live(at, timer))
            .map(|(at, timer)| (at, timer.reason()))
    }
}
