//! What a health change is attributed to ([`HealthCause`]) and the rule
//! that decides whether a timeout is evidence against a worker
//! ([`timeout_counts`]); the per-worker state machine that uses them is in
//! [`crate::recovery`].

use std::time::Duration;

/// What caused a health change, reported with [`crate::Event::HealthChanged`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum HealthCause {
    /// A request succeeded.
    Success,
    /// A request failed (handler error or panic).
    Failure,
    /// A running request ran out of time after its worker had at least half
    /// of its budget, which counts as a failure (a request that runs out of
    /// time while queued, or after a shorter run, changes no worker's
    /// health: see the "Answers" section of [`crate::Pool`]).
    Timeout,
    /// A probe answered.
    Probe,
    /// A probe did not answer in time.
    ProbeTimeout,
    /// The worker was restarted.
    Restart,
    /// The worker was removed or the pool stopped.
    Stopped,
    /// The worker's ejection time ran out: it is half-open.
    EjectionExpired,
}

/// Whether a request that ran out of time while running counts as a
/// failure of the worker running it: `ran` is the time from its start to its
/// deadline, `budget` the time from its acceptance to its deadline. It
/// counts when the worker had at least half of the budget (`2 * ran >=
/// budget`).
///
/// Why half: a request that timed out after running for `ran` shows only
/// that its worker needed longer than `ran`. With `ran` at least half the
/// budget, the worker used more than half of all the time the caller
/// allowed (queueing included) without answering: evidence against it.
/// With less, the request spent most of its budget waiting, and the same
/// worker might well have answered it had it arrived sooner: no evidence.
/// So a worker whose requests take less than half the budget is never
/// charged for a timeout, however long the queues grow, and a hung worker
/// is charged for every request that reaches it with half its budget left
/// (every request it starts at once).
pub(crate) fn timeout_counts(ran: Duration, budget: Duration) -> bool {
    ran.saturating_mul(2) >= budget
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_counts_only_after_half_the_budget_on_the_worker() {
        let ms = Duration::from_millis;
        assert!(!timeout_counts(ms(59), ms(120)));
        assert!(!timeout_counts(Duration::ZERO, ms(120)));
        assert!(timeout_counts(ms(60), ms(120)));
        assert!(timeout_counts(ms(120), ms(120)));
        // Odd budgets: exactly half, rounded up, is enough.
        assert!(!timeout_counts(
            Duration::from_nanos(1),
            Duration::from_nanos(3)
        ));
        assert!(timeout_counts(
            Duration::from_nanos(2),
            Duration::from_nanos(3)
        ));
        assert!(timeout_counts(Duration::MAX, Duration::MAX));
    }
}
