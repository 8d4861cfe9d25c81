//! The tasks a round of the core's actions wakes, once the locks are
//! released.

use std::task::Waker;

/// Tasks to wake once the locks are released: usually one (a caller or a
/// worker task), kept inline so the common case allocates nothing.
#[derive(Default)]
pub(crate) struct Wakers {
    first: Option<Waker>,
    more: Vec<Waker>,
}

impl Wakers {
    /// Adds a task to wake.
    pub(crate) fn push(&mut self, waker: Waker) {
        match self.first {
            None => self.first = Some(waker),
            Some(_) => self.more.push(waker),
        }
    }

    /// Adds a task to wake, if any.
    pub(crate) fn extend(&mut self, waker: Option<Waker>) {
        if let Some(waker) = waker {
            self.push(waker);
        }
    }

    /// Wakes them all.
    pub(crate) fn wake_all(&mut self) {
        if let Some(waker) = self.first.take() {
            waker.wake();
        }
        for waker in self.more.drain(..) {
            waker.wake();
        }
    }
}
