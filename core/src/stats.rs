//! Counters and the stats snapshot.

use crate::keys::WorkerKey;
use crate::protocol::WorkerHealthStatus;

/// A point-in-time view of the pool, from [`crate::Pool::stats`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Counters since the pool was created.
    pub counters: Counters,
    /// Requests waiting for a run slot now: in queues, or moving off a
    /// removed worker (see [`WorkerStats::queued`]).
    pub queued: usize,
    /// Requests running now.
    pub running: usize,
    /// One entry per worker, in worker order.
    pub workers: Vec<WorkerStats>,
}

/// Monotonic counters by outcome and refusal reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Counters {
    /// Calls to `submit`.
    pub submitted: u64,
    /// Requests accepted (each gets exactly one answer).
    pub accepted: u64,
    /// Refused: the request broke the security policy.
    pub refused_invalid: u64,
    /// Refused: every eligible queue was full.
    pub refused_queue_full: u64,
    /// Refused: no schedulable worker.
    pub refused_no_healthy_worker: u64,
    /// Refused: circuit breakers vetoed every eligible worker.
    pub refused_circuit_open: u64,
    /// Refused: the pool is shutting down.
    pub refused_shutting_down: u64,
    /// Refused with `Timeout`: the request's time budget was zero, so it
    /// ran out on arrival.
    pub refused_no_budget: u64,
    /// Answered with the handler's output.
    pub succeeded: u64,
    /// Answered with the handler's error.
    pub failed: u64,
    /// Answered `Timeout` while queued: the budget ran out, or a worker
    /// reached the request with less budget left than its last successful
    /// run took (never counted against a worker).
    pub timed_out_queued: u64,
    /// Ran out of time while running (the handler was aborted; counted
    /// against the worker only if it had at least half of the budget).
    pub timed_out_running: u64,
    /// Cancelled by the caller while queued.
    pub cancelled_queued: u64,
    /// Cancelled by the caller while running (the handler was aborted).
    pub cancelled_running: u64,
    /// Aborted because their worker was restarted.
    pub aborted_by_restart: u64,
    /// Answered `ShuttingDown` when the drain deadline passed.
    pub aborted_by_shutdown: u64,
    /// Answered because their worker was removed and no other could take them.
    pub unroutable_after_removal: u64,
    /// Moved to another worker because theirs was removed.
    pub requeued: u64,
    /// Queued on a busy worker and run by another that freed up first (late
    /// binding).
    pub reassigned: u64,
    /// Running requests that failed retryably and ran again on another
    /// worker ([`RetryPolicy`](crate::RetryPolicy)).
    pub retried: u64,
    /// Retries the budget refused (the request was answered with its
    /// failure).
    pub retries_over_budget: u64,
    /// Health probes sent.
    pub probes_sent: u64,
    /// Health probes that did not answer in time.
    pub probes_timed_out: u64,
    /// Workers ejected by outlier detection.
    pub ejections: u64,
    /// Ejections that found the ejection cap reached (panic mode): held
    /// back under `PanicMode::RouteToAll`, carried out beyond the cap
    /// under `PanicMode::FailFast`.
    pub ejection_panics: u64,
    /// Attempts a handler refused before starting them
    /// (`Pool::handle_refusal`): a request's, which waited again, or a
    /// hedge's, which ended while its request ran on.
    pub refused_not_started: u64,
    /// Hedges started: second attempts of still-running requests on
    /// another worker ([`HedgePolicy`](crate::HedgePolicy)).
    pub hedged: u64,
    /// Requests answered by their hedge, which finished before the first
    /// attempt.
    pub hedges_won: u64,
    /// Hedges the retry budget refused (the request ran on alone).
    pub hedges_over_budget: u64,
    /// Queued requests this pool handed to another pool of the same driver
    /// unanswered ([`Pool::release_queued`](crate::Pool::release_queued)):
    /// they are answered there. Summed over a driver's pools it equals
    /// `moved_in`.
    pub moved_out: u64,
    /// Requests another pool of the same driver released that this pool
    /// took in ([`Pool::adopt`](crate::Pool::adopt),
    /// [`Pool::answer_released`](crate::Pool::answer_released)): counted as
    /// accepted there, answered here.
    pub moved_in: u64,
}

impl Counters {
    /// Adds `other`'s counts to these (for a driver that runs several
    /// pools as one).
    pub fn add(&mut self, other: &Counters) {
        let Counters {
            submitted,
            accepted,
            refused_invalid,
            refused_queue_full,
            refused_no_healthy_worker,
            refused_circuit_open,
            refused_shutting_down,
            refused_no_budget,
            succeeded,
            failed,
            timed_out_queued,
            timed_out_running,
            cancelled_queued,
            cancelled_running,
            aborted_by_restart,
            aborted_by_shutdown,
            unroutable_after_removal,
            requeued,
            reassigned,
            retried,
            retries_over_budget,
            probes_sent,
            probes_timed_out,
            ejections,
            ejection_panics,
            refused_not_started,
            hedged,
            hedges_won,
            hedges_over_budget,
            moved_out,
            moved_in,
        } = *other;
        self.submitted += submitted;
        self.accepted += accepted;
        self.refused_invalid += refused_invalid;
        self.refused_queue_full += refused_queue_full;
        self.refused_no_healthy_worker += refused_no_healthy_worker;
        self.refused_circuit_open += refused_circuit_open;
        self.refused_shutting_down += refused_shutting_down;
        self.refused_no_budget += refused_no_budget;
        self.succeeded += succeeded;
        self.failed += failed;
        self.timed_out_queued += timed_out_queued;
        self.timed_out_running += timed_out_running;
        self.cancelled_queued += cancelled_queued;
        self.cancelled_running += cancelled_running;
        self.aborted_by_restart += aborted_by_restart;
        self.aborted_by_shutdown += aborted_by_shutdown;
        self.unroutable_after_removal += unroutable_after_removal;
        self.requeued += requeued;
        self.reassigned += reassigned;
        self.retried += retried;
        self.retries_over_budget += retries_over_budget;
        self.probes_sent += probes_sent;
        self.ejections += ejections;
        self.ejection_panics += ejection_panics;
        self.refused_not_started += refused_not_started;
        self.probes_timed_out += probes_timed_out;
        self.hedged += hedged;
        self.hedges_won += hedges_won;
        self.hedges_over_budget += hedges_over_budget;
        self.moved_out += moved_out;
        self.moved_in += moved_in;
    }

    /// Requests answered so far, by any outcome.
    pub fn answered(&self) -> u64 {
        self.succeeded
            + self.failed
            + self.timed_out_queued
            + self.timed_out_running
            + self.cancelled_queued
            + self.cancelled_running
            + self.aborted_by_restart
            + self.aborted_by_shutdown
            + self.unroutable_after_removal
    }

    /// Submits refused, for any reason.
    pub fn refused(&self) -> u64 {
        self.refused_invalid
            + self.refused_queue_full
            + self.refused_no_healthy_worker
            + self.refused_circuit_open
            + self.refused_shutting_down
            + self.refused_no_budget
    }
}

/// One worker's share of a [`Stats`] snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// The worker's key.
    pub worker: WorkerKey,
    /// The worker's identifier.
    pub worker_id: String,
    /// Its health status.
    pub status: WorkerHealthStatus,
    /// Consecutive failures counted against it.
    pub consecutive_failures: u32,
    /// Requests waiting in its queue; for a worker being removed, those
    /// that waited there and await a circuit breaker's approval of another
    /// worker (`Action::Revet`).
    pub queued: usize,
    /// Requests it is running.
    pub running: usize,
    /// Whether it is being removed (finishing its running requests).
    pub removing: bool,
}

#[cfg(test)]
mod tests {
    use super::Counters;

    /// Counters whose every field holds a distinct power of two times
    /// `scale`, so that any sum of them names exactly the fields it took.
    fn distinct(scale: u64) -> Counters {
        Counters {
            submitted: scale,
            accepted: 2 * scale,
            refused_invalid: 4 * scale,
            refused_queue_full: 8 * scale,
            refused_no_healthy_worker: 16 * scale,
            refused_circuit_open: 32 * scale,
            refused_shutting_down: 64 * scale,
            refused_no_budget: 128 * scale,
            succeeded: 256 * scale,
            failed: 512 * scale,
            timed_out_queued: 1024 * scale,
            timed_out_running: 2048 * scale,
            cancelled_queued: 4096 * scale,
            cancelled_running: 8192 * scale,
            aborted_by_restart: 16384 * scale,
            aborted_by_shutdown: 32768 * scale,
            unroutable_after_removal: 65536 * scale,
            requeued: 131072 * scale,
            reassigned: 262144 * scale,
            retried: 524288 * scale,
            retries_over_budget: 1048576 * scale,
            probes_sent: 2097152 * scale,
            probes_timed_out: 4194304 * scale,
            ejections: 8388608 * scale,
            ejection_panics: 16777216 * scale,
            refused_not_started: 33554432 * scale,
            hedged: 67108864 * scale,
            hedges_won: 134217728 * scale,
            hedges_over_budget: 268435456 * scale,
            moved_out: 536870912 * scale,
            moved_in: 1073741824 * scale,
        }
    }

    #[test]
    fn add_sums_every_counter_field_by_field() {
        let mut total = distinct(3);
        total.add(&distinct(2));
        assert_eq!(total, distinct(5));
    }

    #[test]
    fn answered_sums_every_outcome_and_nothing_else() {
        let counters = distinct(1);
        // succeeded (256) through unroutable_after_removal (65536).
        assert_eq!(counters.answered(), 131072 - 256);
        assert_eq!(Counters::default().answered(), 0);
    }

    #[test]
    fn refused_sums_every_refusal_reason_and_nothing_else() {
        let counters = distinct(1);
        // refused_invalid (4) through refused_no_budget (128).
        assert_eq!(counters.refused(), 256 - 4);
        assert_eq!(Counters::default().refused(), 0);
    }
}
