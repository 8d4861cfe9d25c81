//! Read-only views of the pool: health in the reference's shape, stats,
//! identifiers, the lifecycle and the configuration.

use super::workers::CommandError;
use super::{Lifecycle, Pool, RequestState, Sibling, Worker};
use crate::config::PoolConfig;
use crate::keys::{RequestKey, WorkerKey};
use crate::protocol::{WorkerHealth, WorkerHealthStatus};
use crate::stats::{Counters, Stats, WorkerStats};
use crate::time::Time;

impl<P: Clone> Pool<P> {
    /// Health of every worker, in worker order, in the reference's shape.
    /// Workers being removed, and every worker once the pool has stopped,
    /// report `Unavailable`.
    pub fn health(&self) -> Vec<WorkerHealth> {
        self.workers
            .iter()
            .map(|(_, slot)| self.health_of(slot))
            .collect()
    }

    /// Health of one worker, if it exists.
    pub fn worker_health(&self, worker: WorkerKey) -> Option<WorkerHealth> {
        self.workers.get(worker.0).map(|slot| self.health_of(slot))
    }

    /// The payload a request was submitted with, while it is accepted and
    /// not yet answered (`None` otherwise): what a driver that gets a
    /// request back from a handler that refused it puts it back into.
    pub fn payload(&self, request: RequestKey) -> Option<&P> {
        self.requests.get(request.0).map(|entry| &entry.payload)
    }

    /// The payload of the request an attempt runs for, given the key the
    /// attempt started under (`Action::Start`'s `request`): the request's
    /// own key, or a hedge's key while that hedge runs. `None` for a stale
    /// or unknown key. What a driver that keeps per-request state in the
    /// payload reads when a worker starts an attempt, hedge included.
    pub fn attempt_payload(&self, attempt: RequestKey) -> Option<&P> {
        let request = self.request_of(attempt)?;
        self.payload(request)
    }

    /// Whether a refusal of running attempt `attempt` puts its request
    /// back in line (to be started again from its payload): `true` for a
    /// request's only attempt (its own key, or a hedge running alone) and
    /// for its own attempt racing a hedge (the hedge is dropped); `false`
    /// for a hedge racing its request's own attempt (only the hedge ends),
    /// and for a stale or unknown key. What a driver asks before
    /// [`handle_refusal`](Self::handle_refusal), while the key is live, to
    /// know whether to keep the request the handler handed back.
    pub fn refusal_requeues(&self, attempt: RequestKey) -> bool {
        let Some(request) = self.request_of(attempt) else {
            return false;
        };
        let Some(entry) = self.requests.get(request.0) else {
            return false;
        };
        match entry.sibling {
            // `request_of` names a request with no hedge only for its own key.
            None => true,
            // Its own key with a hedge running alone is stale.
            Some(Sibling { alone, .. }) if attempt == request => !alone,
            Some(Sibling { alone, .. }) => alone,
        }
    }

    /// When a running request's handler is cut off: the earlier of its
    /// deadline and its run limit (`None` when it has neither, or is not
    /// running). `attempt` is the key the handler started under: the
    /// request's own, or a live hedge's, which is cut off with its
    /// request. What a driver tells a handler that passes work on, so it
    /// sends the time its request has left.
    pub fn cutoff(&self, attempt: RequestKey) -> Option<Time> {
        let request = self.request_of(attempt)?;
        let entry = self.requests.get(request.0)?;
        if !matches!(entry.state, RequestState::Running { .. }) {
            return None;
        }
        // A run limit counts only when it comes before the deadline.
        super::timeouts::run_deadline(entry).or(entry.deadline)
    }

    /// Counters, queue depths and in-flight requests.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats {
            counters: self.counters,
            ..Stats::default()
        };
        for (key, slot) in self.workers.iter() {
            let waiting = slot.queued + slot.moving;
            stats.queued += waiting;
            stats.running += slot.running.len();
            stats.workers.push(WorkerStats {
                worker: WorkerKey(key),
                worker_id: slot.id.clone(),
                status: self.reported_status(slot),
                consecutive_failures: slot.health.failures(),
                queued: waiting,
                running: slot.running.len(),
                removing: slot.removing,
            });
        }
        stats
    }

    /// The counters alone (cheap: no allocation).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The key of the worker with this identifier.
    pub fn worker_key(&self, id: &str) -> Option<WorkerKey> {
        self.ids.get(id).copied()
    }

    /// The key of the worker a command (restart, remove) names by
    /// identifier, checked as the command itself would first.
    ///
    /// # Errors
    /// [`CommandError::ShuttingDown`] once the pool has stopped (whatever
    /// the identifier); [`CommandError::UnknownWorkerId`] when no worker
    /// has it.
    pub fn command_target(&self, id: &str) -> Result<WorkerKey, CommandError> {
        if self.lifecycle == Lifecycle::Stopped {
            return Err(CommandError::ShuttingDown);
        }
        self.worker_key(id)
            .ok_or_else(|| CommandError::UnknownWorkerId(id.to_string()))
    }

    /// The identifier of a worker.
    pub fn worker_id(&self, worker: WorkerKey) -> Option<&str> {
        self.workers.get(worker.0).map(|slot| slot.id.as_str())
    }

    /// Keys of every worker, in worker order.
    pub fn workers(&self) -> impl Iterator<Item = WorkerKey> + '_ {
        self.workers.iter().map(|(key, _)| WorkerKey(key))
    }

    /// Requests accepted and not yet answered.
    pub fn pending(&self) -> usize {
        self.requests.len()
    }

    /// Whether a valid request submitted now would be accepted: the pool
    /// has not begun shutting down, a schedulable worker has room (a free
    /// run slot or queue room), and the request table has room.
    ///
    /// It describes the pool as it is, and reserves nothing: the next
    /// input may change it. A request can still be refused for itself
    /// (`InvalidRequest`, or `Timeout` for a zero budget), and in a pool
    /// whose workers a circuit breaker vets ([`vet`](Self::vet)) by the
    /// breaker's vetoes (`CircuitOpen`).
    pub fn would_admit(&self) -> bool {
        self.lifecycle == Lifecycle::Running
            && self.router.eligible_len() > 0
            && self.requests.has_room()
    }

    /// Whether shutdown has begun (new submits are refused).
    pub fn is_shutting_down(&self) -> bool {
        self.lifecycle != Lifecycle::Running
    }

    /// Whether shutdown has completed: everything answered, workers stopped.
    pub fn is_stopped(&self) -> bool {
        self.lifecycle == Lifecycle::Stopped
    }

    /// The latest instant the core has seen.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The configuration the pool runs with.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// A worker's status as reported: `Unavailable` while it is being
    /// removed or once the pool has stopped.
    fn reported_status(&self, slot: &Worker) -> WorkerHealthStatus {
        if slot.removing || self.lifecycle == Lifecycle::Stopped {
            WorkerHealthStatus::Unavailable
        } else {
            slot.status
        }
    }

    /// A worker's health in the reference's shape.
    fn health_of(&self, slot: &Worker) -> WorkerHealth {
        WorkerHealth {
            worker_id: slot.id.clone(),
            status: self.reported_status(slot),
            consecutive_failures: slot.health.failures(),
            last_probe_unix_ms: slot.health.last_probe.map(|at| {
                self.config
                    .unix_epoch_ms
                    .saturating_add(at.as_nanos() / 1_000_000)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Value;

    use crate::config::{PoolConfig, WorkerPoolOptions};
    use crate::time::Time;
    use crate::Pool;

    fn pool_of_one_worker(queue_capacity: usize) -> Pool<()> {
        let options = WorkerPoolOptions {
            queue_capacity,
            ..WorkerPoolOptions::default()
        };
        let mut pool: Pool<()> =
            Pool::new(PoolConfig::new(options), Time::ZERO).expect("valid options");
        pool.add_worker(Time::ZERO).expect("a worker");
        pool
    }

    #[test]
    fn would_admit_says_whether_the_next_submit_is_accepted() {
        // One run slot and one queue place: two requests, then `QueueFull`.
        let mut pool = pool_of_one_worker(1);
        let request = super::super::test_request(None);
        let mut accepted = Vec::new();
        for _ in 0..3 {
            let predicted = pool.would_admit();
            let submitted = pool.submit(Time::ZERO, &request, ());
            assert_eq!(predicted, submitted.is_ok(), "{submitted:?}");
            accepted.extend(submitted.ok());
        }
        assert_eq!(accepted.len(), 2);
        assert!(!pool.would_admit(), "the queue is full");
        // A completion frees a place: the queued request starts, and the
        // queue has room again.
        assert!(pool.handle_completion(Time::from_millis(1), accepted[0], Ok(Value::Null)));
        assert!(pool.would_admit());
        assert!(pool.submit(Time::from_millis(1), &request, ()).is_ok());
        assert!(!pool.would_admit());
        assert!(pool.check_invariants().is_ok());
    }

    #[test]
    fn cutoff_is_the_earlier_of_the_deadline_and_the_run_limit_while_running() {
        // One run slot: the first request runs from 1 ms, the second waits.
        let mut pool = pool_of_one_worker(4);
        let within_budget = crate::PhaseLimits::new().with_run(Duration::from_millis(300));
        let beyond_budget = crate::PhaseLimits::new().with_run(Duration::from_secs(60));
        let at = Time::from_millis(1);
        let running = pool
            .submit_limited(
                at,
                &super::super::test_request(Some(1_000)),
                within_budget,
                (),
            )
            .expect("accepted");
        let queued = pool
            .submit_limited(
                at,
                &super::super::test_request(Some(1_000)),
                beyond_budget,
                (),
            )
            .expect("accepted");
        // Started at 1 ms with a 300 ms run limit inside its 1 s budget.
        assert_eq!(pool.cutoff(running), Some(Time::from_millis(301)));
        assert_eq!(pool.cutoff(queued), None, "not running yet");
        assert!(pool.handle_completion(Time::from_millis(10), running, Ok(Value::Null)));
        assert_eq!(pool.cutoff(running), None, "answered");
        // Its run limit comes after its deadline (1 s from acceptance).
        assert_eq!(pool.cutoff(queued), Some(Time::from_millis(1_001)));
        let unlimited = pool
            .submit(Time::from_millis(10), &super::super::test_request(None), ())
            .expect("accepted");
        assert!(pool.handle_completion(Time::from_millis(20), queued, Ok(Value::Null)));
        // Started at 20 ms, with the pool's default budget from 10 ms.
        assert_eq!(
            pool.cutoff(unlimited),
            Some(Time::from_millis(10).saturating_add(Duration::from_secs(30))),
            "the pool's default timeout"
        );
    }

    #[test]
    fn would_admit_nothing_without_a_schedulable_worker() {
        let mut pool = pool_of_one_worker(1);
        let worker = pool.workers().next().expect("a worker");
        assert!(pool.would_admit());
        pool.remove_worker(Time::ZERO, worker).expect("removable");
        assert!(!pool.would_admit(), "a worker being removed takes nothing");
        let refused = pool.submit(Time::ZERO, &super::super::test_request(None), ());
        assert!(refused.is_err());
        // A new worker makes room again.
        pool.add_worker(Time::ZERO).expect("a worker");
        assert!(pool.would_admit());
    }

    #[test]
    fn would_admit_nothing_once_shutdown_began() {
        let mut pool = pool_of_one_worker(4);
        assert!(pool.would_admit());
        pool.begin_shutdown(Time::ZERO, None);
        assert!(!pool.would_admit());
        assert!(pool.is_shutting_down());
    }

    #[test]
    fn shutting_down_from_begin_shutdown_on_and_stopped_once_drained() {
        let mut pool: Pool<()> =
            Pool::new(PoolConfig::new(WorkerPoolOptions::default()), Time::ZERO)
                .expect("the default options are valid");
        pool.add_worker(Time::ZERO).expect("a worker");
        let request = super::super::test_request(None);
        let running = pool.submit(Time::ZERO, &request, ()).expect("accepted");
        assert!(!pool.is_shutting_down(), "a running pool");
        pool.begin_shutdown(Time::ZERO, Some(Duration::from_secs(1)));
        assert!(pool.is_shutting_down(), "draining");
        assert!(!pool.is_stopped(), "a request is still running");
        assert!(pool.handle_completion(Time::from_millis(1), running, Ok(Value::Null)));
        assert!(pool.is_shutting_down());
        assert!(pool.is_stopped(), "drained");
    }
}
