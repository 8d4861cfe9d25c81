//! What the core reported under a lane's lock that the `tracing` and
//! `metrics` features tell once the lock is released (a subscriber or a
//! recorder is user code): gauge moves, health transitions, moved
//! requests. Without either feature, [`Notes`] is empty and every method
//! does nothing.
//!
//! The gauge moves (`metrics`, several per request) are kept in the
//! [`Notes`] of the round. The events (`tracing`, noted only while a
//! subscriber may want them) wait in a list of the thread that noted them
//! instead, so that with `tracing` alone `Notes` stays empty: every round
//! of actions carries one, and with no subscriber the feature adds no more
//! to a round than one relaxed load of a global count.

#[cfg(feature = "tracing")]
use std::sync::Arc;

#[cfg(any(feature = "tracing", feature = "metrics"))]
use foreman_core::RequestKey;
use foreman_core::{HealthCause, Phase, WorkerHealthStatus};

use crate::meter::{PoolMeter, WorkerMeter};

/// The notes of one round of actions, told by [`Notes::emit`].
#[derive(Default)]
pub(crate) struct Notes {
    #[cfg(feature = "metrics")]
    items: Vec<Note>,
}

/// A gauge move or count (`metrics`).
#[cfg(feature = "metrics")]
enum Note {
    /// Move a gauge by this much.
    Gauge(metrics::Gauge, f64),
    /// Count one more.
    Count(metrics::Counter),
}

/// An event to tell (`tracing`).
#[cfg(feature = "tracing")]
enum Event {
    Health {
        worker: Arc<str>,
        from: WorkerHealthStatus,
        to: WorkerHealthStatus,
        cause: HealthCause,
    },
    Requeued {
        request: RequestKey,
        from: Arc<str>,
        to: Arc<str>,
    },
    Retried {
        request: RequestKey,
        from: Arc<str>,
        to: Arc<str>,
        attempt: u32,
    },
    Hedged {
        request: RequestKey,
        from: Arc<str>,
        to: Arc<str>,
        attempt: u32,
    },
}

#[cfg(feature = "metrics")]
thread_local! {
    /// The note list of this thread's last round, kept for its next one,
    /// so a round allocates none.
    static SPARE: std::cell::Cell<Vec<Note>> = const { std::cell::Cell::new(Vec::new()) };
}

#[cfg(feature = "tracing")]
thread_local! {
    /// The events this thread noted and has not told yet (told by the
    /// [`Notes::emit`] of the round that noted them), and the list's
    /// capacity between rounds.
    static EVENTS: std::cell::Cell<Vec<Event>> = const { std::cell::Cell::new(Vec::new()) };
}

/// How many threads have events noted and not told: all that
/// [`Notes::emit`] reads while there are none (a thread sees its own
/// count, the other threads' make it look at its list for nothing).
#[cfg(feature = "tracing")]
static NOTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Whether any subscriber may want events at `level`: the facade's
/// global maximum, read without asking a subscriber (which would run user
/// code under the lock).
#[cfg(feature = "tracing")]
#[inline]
fn wanted(level: tracing::Level) -> bool {
    level <= tracing::level_filters::LevelFilter::current()
}

impl Notes {
    /// Whether a move between workers is noted at all: always for the
    /// gauges (`metrics`), else only when a subscriber may want its event.
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    #[inline]
    pub(crate) fn wants_moves() -> bool {
        #[cfg(feature = "metrics")]
        {
            true
        }
        #[cfg(not(feature = "metrics"))]
        wanted(tracing::Level::DEBUG)
    }

    #[cfg(feature = "metrics")]
    fn push(&mut self, note: Note) {
        if self.items.capacity() == 0 {
            // (During the thread's teardown there is no spare: a new list.)
            self.items = SPARE.try_with(std::cell::Cell::take).unwrap_or_default();
        }
        self.items.push(note);
    }

    /// A request was queued on the worker (`Event::Accepted`).
    #[cfg(feature = "metrics")]
    #[inline]
    pub(crate) fn accepted(&mut self, worker: &WorkerMeter) {
        self.push(Note::Gauge(worker.queued.clone(), 1.0));
    }

    /// A queued request another lane released joined the worker's queue
    /// (`Event::Adopted`): its gauge, and the move counted.
    #[cfg(feature = "metrics")]
    #[inline]
    pub(crate) fn adopted(&mut self, meter: &PoolMeter, worker: &WorkerMeter) {
        self.push(Note::Gauge(worker.queued.clone(), 1.0));
        self.push(Note::Count(meter.moved()));
    }

    /// A queued request the worker's lane released was adopted by a lane
    /// (`Pool::adopt`): it left the worker's queue. (Until then it stays
    /// in that gauge; a request no lane adopts leaves it by its answer.)
    #[inline]
    pub(crate) fn moved_away(&mut self, worker: &WorkerMeter) {
        #[cfg(feature = "metrics")]
        self.push(Note::Gauge(worker.queued.clone(), -1.0));
        #[cfg(not(feature = "metrics"))]
        let _ = worker;
    }

    /// The worker started a request queued on it (`Action::Start`; a
    /// request another worker held is first moved here by its
    /// `Event::Requeued`).
    #[inline]
    pub(crate) fn started(&mut self, worker: &WorkerMeter) {
        #[cfg(feature = "metrics")]
        {
            self.push(Note::Gauge(worker.queued.clone(), -1.0));
            self.push(Note::Gauge(worker.in_flight.clone(), 1.0));
        }
        #[cfg(not(feature = "metrics"))]
        let _ = worker;
    }

    /// A request of the worker was answered in `phase` (`Action::Answer`).
    #[inline]
    pub(crate) fn answered(&mut self, worker: &WorkerMeter, phase: Phase) {
        #[cfg(feature = "metrics")]
        {
            let gauge = match phase {
                Phase::Queued => &worker.queued,
                Phase::Running => &worker.in_flight,
            };
            self.push(Note::Gauge(gauge.clone(), -1.0));
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (worker, phase);
    }

    /// A queued request moved between workers (`Event::Requeued`), each
    /// given by its id and gauges.
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    #[inline]
    pub(crate) fn requeued(
        &mut self,
        request: RequestKey,
        from: (&std::sync::Arc<str>, &WorkerMeter),
        to: (&std::sync::Arc<str>, &WorkerMeter),
    ) {
        #[cfg(feature = "metrics")]
        {
            self.push(Note::Gauge(from.1.queued.clone(), -1.0));
            self.push(Note::Gauge(to.1.queued.clone(), 1.0));
        }
        #[cfg(feature = "tracing")]
        if wanted(tracing::Level::DEBUG) {
            note(Event::Requeued {
                request,
                from: Arc::clone(from.0),
                to: Arc::clone(to.0),
            });
        }
        #[cfg(not(feature = "tracing"))]
        let _ = (request, from.0, to.0);
        #[cfg(not(feature = "metrics"))]
        let _ = (from.1, to.1);
    }

    /// A failed attempt runs again on another worker (`Event::Retried`):
    /// its run moves from one worker's in-flight gauge to the other's
    /// (whose `Start` raises it and, as for any start, lowers the queued
    /// gauge, which the retry never joined: raised back here), and the
    /// retry is counted and traced.
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    #[inline]
    pub(crate) fn retried(
        &mut self,
        meter: &PoolMeter,
        request: RequestKey,
        from: (&std::sync::Arc<str>, &WorkerMeter),
        to: (&std::sync::Arc<str>, &WorkerMeter),
        attempt: u32,
    ) {
        let (to, to_meter) = to;
        #[cfg(feature = "metrics")]
        {
            self.push(Note::Gauge(from.1.in_flight.clone(), -1.0));
            self.push(Note::Gauge(to_meter.queued.clone(), 1.0));
            self.push(Note::Count(meter.retried()));
        }
        #[cfg(not(feature = "metrics"))]
        let _ = to_meter;
        #[cfg(feature = "tracing")]
        if wanted(tracing::Level::DEBUG) {
            note(Event::Retried {
                request,
                from: Arc::clone(from.0),
                to: Arc::clone(to),
                attempt,
            });
        }
        #[cfg(not(feature = "tracing"))]
        let _ = (request, from.0, to, attempt);
        #[cfg(not(feature = "metrics"))]
        let _ = (meter, from.1);
    }

    /// A running request got a second attempt on another worker
    /// (`Event::Hedged`): the hedge is counted and traced. Its `Start`
    /// raises its worker's in-flight gauge and, as for any start, lowers
    /// its queued one, which the hedge never joined: raised back here.
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    #[inline]
    pub(crate) fn hedged(
        &mut self,
        meter: &PoolMeter,
        request: RequestKey,
        from: &std::sync::Arc<str>,
        to: (&std::sync::Arc<str>, &WorkerMeter),
        attempt: u32,
    ) {
        let (to, to_meter) = to;
        #[cfg(feature = "metrics")]
        {
            self.push(Note::Count(meter.hedged()));
            self.push(Note::Gauge(to_meter.queued.clone(), 1.0));
        }
        #[cfg(not(feature = "metrics"))]
        let _ = to_meter;
        #[cfg(feature = "tracing")]
        if wanted(tracing::Level::DEBUG) {
            note(Event::Hedged {
                request,
                from: Arc::clone(from),
                to: Arc::clone(to),
                attempt,
            });
        }
        #[cfg(not(feature = "tracing"))]
        let _ = (request, from, to, attempt);
        #[cfg(not(feature = "metrics"))]
        let _ = meter;
    }

    /// One attempt of a hedged request ended without answering it
    /// (`Event::AttemptEnded`): it leaves its worker's in-flight gauge.
    #[inline]
    pub(crate) fn attempt_ended(&mut self, worker: &WorkerMeter) {
        #[cfg(feature = "metrics")]
        self.push(Note::Gauge(worker.in_flight.clone(), -1.0));
        #[cfg(not(feature = "metrics"))]
        let _ = worker;
    }

    /// A worker's health changed (`Event::HealthChanged`).
    #[inline]
    pub(crate) fn health(
        &mut self,
        meter: &PoolMeter,
        worker: &std::sync::Arc<str>,
        from: WorkerHealthStatus,
        to: WorkerHealthStatus,
        cause: HealthCause,
    ) {
        #[cfg(feature = "metrics")]
        {
            self.push(Note::Gauge(meter.workers(from), -1.0));
            self.push(Note::Gauge(meter.workers(to), 1.0));
        }
        #[cfg(feature = "tracing")]
        if wanted(tracing::Level::INFO) {
            note(Event::Health {
                worker: Arc::clone(worker),
                from,
                to,
                cause,
            });
        }
        #[cfg(not(feature = "metrics"))]
        let _ = meter;
        #[cfg(not(feature = "tracing"))]
        let _ = (worker, cause);
        #[cfg(not(any(feature = "tracing", feature = "metrics")))]
        let _ = (from, to);
    }

    /// A worker in `status` is gone (`Action::StopWorker`).
    #[inline]
    pub(crate) fn stopped(&mut self, meter: &PoolMeter, status: WorkerHealthStatus) {
        #[cfg(feature = "metrics")]
        self.push(Note::Gauge(meter.workers(status), -1.0));
        #[cfg(not(feature = "metrics"))]
        let _ = (meter, status);
    }

    /// Tells every note, in order (the gauge moves, then the events);
    /// called with no lock held.
    #[inline]
    pub(crate) fn emit(&mut self) {
        #[cfg(feature = "metrics")]
        if !self.items.is_empty() {
            self.emit_all();
        }
        #[cfg(feature = "tracing")]
        if NOTED.load(std::sync::atomic::Ordering::Relaxed) != 0 {
            tell_events();
        }
    }

    #[cfg(feature = "metrics")]
    #[inline(never)]
    fn emit_all(&mut self) {
        let mut items = std::mem::take(&mut self.items);
        for note in items.drain(..) {
            match note {
                Note::Gauge(gauge, delta) => gauge.increment(delta),
                Note::Count(counter) => counter.increment(1),
            }
        }
        let _ = SPARE.try_with(|spare| spare.set(items));
    }
}

/// Notes `event` on this thread's list, for the round's
/// [`Notes::emit`].
#[cfg(feature = "tracing")]
#[cold]
fn note(event: Event) {
    let _ = EVENTS.try_with(|events| {
        let mut list = events.take();
        if list.is_empty() {
            NOTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        list.push(event);
        events.set(list);
    });
}

/// Tells this thread's noted events, in order. (A subscriber that submits
/// a request meanwhile notes and tells that round's events itself.)
#[cfg(feature = "tracing")]
#[cold]
#[inline(never)]
fn tell_events() {
    let Ok(mut list) = EVENTS.try_with(std::cell::Cell::take) else {
        return;
    };
    if list.is_empty() {
        // Another thread's events.
        let _ = EVENTS.try_with(|events| events.set(list));
        return;
    }
    NOTED.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    for event in list.drain(..) {
        match event {
            Event::Health {
                worker,
                from,
                to,
                cause,
            } => crate::trace::health_changed(&worker, from, to, cause),
            Event::Requeued { request, from, to } => {
                crate::trace::requeued(request, &from, &to);
            }
            Event::Retried {
                request,
                from,
                to,
                attempt,
            } => crate::trace::retried(request, &from, &to, attempt),
            Event::Hedged {
                request,
                from,
                to,
                attempt,
            } => crate::trace::hedged(request, &from, &to, attempt),
        }
    }
    // Keeps the list's capacity, unless events noted meanwhile wait in a
    // newer one.
    let _ = EVENTS.try_with(|events| {
        let newer = events.take();
        events.set(if newer.is_empty() { list } else { newer });
    });
}
