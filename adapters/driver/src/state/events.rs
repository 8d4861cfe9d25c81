//! The core's events, as the driver carries them out under the lane's
//! lock: health transitions into the log, moves and starts into the
//! notes told once the lock is released.

use foreman_core::{Event, RequestKey, WorkerKey};

use super::{Core, LaneSignals, HEALTH_LOG_CAPACITY};
use crate::notes::Notes;
use crate::types::HealthTransition;

impl Core {
    pub(super) fn drain_events(&mut self, signals: &LaneSignals, notes: &mut Notes) {
        while let Some(event) = self.pool.poll_event() {
            match event {
                Event::HealthChanged {
                    worker,
                    from,
                    to,
                    cause,
                    at,
                } => {
                    if self.health_log.len() >= HEALTH_LOG_CAPACITY {
                        self.health_log.pop_front();
                    }
                    let id = self.id_of(worker);
                    notes.health(&self.meter, &id, from, to, cause);
                    if let Some(entry) = self.workers.get_mut(&worker) {
                        entry.status = to;
                    }
                    self.health_log.push_back(HealthTransition {
                        worker_id: id.to_string(),
                        from,
                        to,
                        cause,
                        at: at.since_epoch(),
                    });
                }
                Event::Accepted { worker, .. } => self.note_accepted(worker, notes),
                Event::Adopted { worker, .. } => self.note_adopted(worker, notes),
                Event::Requeued { request, from, to } => {
                    self.note_requeued(request, from, to, notes);
                }
                Event::Retried {
                    request,
                    from,
                    to,
                    attempt,
                } => self.note_retried(request, from, to, attempt, notes),
                Event::Hedged {
                    request,
                    from,
                    to,
                    attempt,
                    ..
                } => self.note_hedged(request, from, to, attempt, notes),
                Event::AttemptEnded { worker, .. } => {
                    if let Some(entry) = self.workers.get(&worker) {
                        notes.attempt_ended(&entry.cell.meter);
                    }
                }
                Event::Rejected { .. } => {}
                Event::ShutdownComplete { .. } => {
                    self.live.mark_stopped();
                    signals.close();
                }
                // `Event` is `#[non_exhaustive]`; foreman-core is pinned at
                // its exact version (`=` in the root `Cargo.toml`), so every
                // event is one of the above. Events are reports the pool's
                // correctness does not depend on: one this driver did not
                // need would be ignored, like those above.
                _ => {}
            }
        }
    }

    /// Notes that a request was queued on `worker` (its gauge; nothing
    /// without the `metrics` feature, not even the look-up).
    #[inline]
    fn note_accepted(&self, worker: WorkerKey, notes: &mut Notes) {
        #[cfg(feature = "metrics")]
        if let Some(entry) = self.workers.get(&worker) {
            notes.accepted(&entry.cell.meter);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (worker, notes);
    }

    /// Notes that a request another lane released joined `worker`'s queue
    /// (its gauge and the move's count; nothing without the `metrics`
    /// feature).
    #[inline]
    fn note_adopted(&self, worker: WorkerKey, notes: &mut Notes) {
        #[cfg(feature = "metrics")]
        if let Some(entry) = self.workers.get(&worker) {
            notes.adopted(&self.meter, &entry.cell.meter);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (worker, notes);
    }

    /// Notes that a queued request moved between workers (nothing, not
    /// even the look-ups, without the `tracing` and `metrics` features).
    #[inline]
    fn note_requeued(
        &self,
        request: RequestKey,
        from: WorkerKey,
        to: WorkerKey,
        notes: &mut Notes,
    ) {
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        if !Notes::wants_moves() {
            return;
        }
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        if let (Some(from), Some(to)) = (self.workers.get(&from), self.workers.get(&to)) {
            notes.requeued(
                request,
                (&from.cell.id, &from.cell.meter),
                (&to.cell.id, &to.cell.meter),
            );
        }
        #[cfg(not(any(feature = "tracing", feature = "metrics")))]
        let _ = (request, from, to, notes);
    }

    /// Notes a retry for the `tracing` and `metrics` features.
    fn note_retried(
        &self,
        request: RequestKey,
        from: WorkerKey,
        to: WorkerKey,
        attempt: u32,
        notes: &mut Notes,
    ) {
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        if let (Some(from), Some(to)) = (self.workers.get(&from), self.workers.get(&to)) {
            notes.retried(
                &self.meter,
                request,
                (&from.cell.id, &from.cell.meter),
                (&to.cell.id, &to.cell.meter),
                attempt,
            );
        }
        #[cfg(not(any(feature = "tracing", feature = "metrics")))]
        let _ = (request, from, to, attempt, notes);
    }

    /// Notes a hedge for the `tracing` and `metrics` features.
    fn note_hedged(
        &self,
        request: RequestKey,
        from: WorkerKey,
        to: WorkerKey,
        attempt: u32,
        notes: &mut Notes,
    ) {
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        if let (Some(from), Some(to)) = (self.workers.get(&from), self.workers.get(&to)) {
            notes.hedged(
                &self.meter,
                request,
                &from.cell.id,
                (&to.cell.id, &to.cell.meter),
                attempt,
            );
        }
        #[cfg(not(any(feature = "tracing", feature = "metrics")))]
        let _ = (request, from, to, attempt, notes);
    }
}
