//! The handlers a worker task runs, each polled with a waker of its own: a
//! wake of one handler schedules that handler alone, so a worker running
//! many requests pays one poll per wake-up, not one per running request.
//!
//! Handlers sit in numbered places that are reused, each place with one
//! [`HandlerWake`] made when the place is first used, so a worker that runs
//! one request at a time allocates nothing per request here. A wake sets
//! the place's `queued` flag and, if it was clear, puts the place's number
//! on its inbox's ready list (under the inbox's lock) and wakes the task.
//! The task clears the flag just before it polls the place, so a wake
//! during or after that poll queues it again, and a place is on the ready
//! lists at most once. A waker kept from a place's earlier handler may
//! wake its next one: a spurious poll, which futures allow.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Wake, Waker};

use foreman_core::RequestKey;

use super::{Inbox, Running};
use crate::sync::{AtomicBool, Ordering};

/// The waker of one place: schedules that place on its worker's task.
pub(super) struct HandlerWake {
    place: usize,
    /// Set while the place is on a ready list (its inbox's or the task's).
    queued: AtomicBool,
    inbox: Arc<Inbox>,
}

impl HandlerWake {
    /// Marks the place queued; true if it was not yet.
    fn enqueue(&self) -> bool {
        !self.queued.swap(true, Ordering::AcqRel)
    }
}

impl Wake for HandlerWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.enqueue() {
            self.inbox.ready(self.place);
        }
    }
}

/// One place: its waker, and the handler it holds, if any.
struct Place {
    wake: Arc<HandlerWake>,
    waker: Waker,
    run: Option<Running>,
}

/// The handlers of one worker task and which of them to poll next.
pub(super) struct Handlers {
    inbox: Arc<Inbox>,
    places: Vec<Place>,
    /// Places without a handler.
    free: Vec<usize>,
    /// Places to poll, in order; each is marked queued.
    due: VecDeque<usize>,
}

impl Handlers {
    /// No handlers, for the task of `inbox`.
    pub(super) fn new(inbox: Arc<Inbox>) -> Self {
        Handlers {
            inbox,
            places: Vec::new(),
            free: Vec::new(),
            due: VecDeque::new(),
        }
    }

    /// Takes a handler in and schedules its first poll.
    pub(super) fn insert(&mut self, run: Running) {
        let place = match self.free.pop() {
            Some(place) => place,
            None => {
                let wake = Arc::new(HandlerWake {
                    place: self.places.len(),
                    queued: AtomicBool::new(false),
                    inbox: Arc::clone(&self.inbox),
                });
                let waker = Waker::from(Arc::clone(&wake));
                self.places.push(Place {
                    wake,
                    waker,
                    run: None,
                });
                self.places.len() - 1
            }
        };
        let Some(entry) = self.places.get_mut(place) else {
            return;
        };
        entry.run = Some(run);
        if entry.wake.enqueue() {
            self.due.push_back(place);
        }
    }

    /// Schedules the places the inbox's ready list named (each already
    /// marked queued by its wake).
    #[inline]
    pub(super) fn woken(&mut self, places: &mut Vec<usize>) {
        if !places.is_empty() {
            self.due.extend(places.drain(..));
        }
    }

    /// The next place to poll, its flag cleared first (so a wake from now
    /// on queues it again), with its handler and waker; places left empty
    /// since they were queued are skipped.
    pub(super) fn next_due(&mut self) -> Option<(usize, &mut Running, &Waker)> {
        let place = loop {
            let place = self.due.pop_front()?;
            if let Some(entry) = self.places.get(place) {
                entry.wake.queued.store(false, Ordering::Release);
                if entry.run.is_some() {
                    break place;
                }
            }
        };
        let entry = self.places.get_mut(place)?;
        let run = entry.run.as_mut()?;
        Some((place, run, &entry.waker))
    }

    /// Takes out the handler of `key`, if this task runs it.
    pub(super) fn remove_key(&mut self, key: RequestKey) -> Option<Running> {
        let place = self
            .places
            .iter()
            .position(|entry| entry.run.as_ref().is_some_and(|run| run.key == key))?;
        self.remove(place)
    }

    /// Takes out the handler at `place`.
    pub(super) fn remove(&mut self, place: usize) -> Option<Running> {
        let run = self.places.get_mut(place)?.run.take()?;
        self.free.push(place);
        Some(run)
    }

    /// Takes out every handler.
    pub(super) fn drain_into(&mut self, out: &mut Vec<Running>) {
        for place in 0..self.places.len() {
            if let Some(run) = self.remove(place) {
                out.push(run);
            }
        }
    }
}
