//! The synchronisation primitives of the modules that `loom` checks
//! ([`crate::live`], [`crate::slot`], [`crate::worker`]'s inbox): loom's
//! under `cfg(loom)`, std's, parking_lot's and futures' otherwise.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::Mutex;

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
/// Shared ownership stays std's: the rest of the driver holds lanes' live
/// counts in `std::sync::Arc`, and loom checks the atomics and locks inside.
pub(crate) use std::sync::Arc;
#[cfg(not(loom))]
pub(crate) use std::sync::Mutex;

/// Locks `mutex`, ignoring poisoning (nothing that holds these locks
/// panics; the data stays consistent either way).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> impl std::ops::DerefMut<Target = T> + '_ {
    #[cfg(loom)]
    {
        mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
    #[cfg(not(loom))]
    {
        mutex
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A lock that does not poison, for hot paths: parking_lot's outside loom.
#[cfg(not(loom))]
pub(crate) use parking_lot::{Mutex as FastMutex, MutexGuard as FastMutexGuard};

/// The guard of a [`FastMutex`].
#[cfg(loom)]
pub(crate) type FastMutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

/// A lock that does not poison, for hot paths: loom's under `cfg(loom)`,
/// with parking_lot's methods.
#[cfg(loom)]
#[derive(Default)]
pub(crate) struct FastMutex<T>(loom::sync::Mutex<T>);

#[cfg(loom)]
impl<T> FastMutex<T> {
    /// A lock holding `value`.
    pub(crate) fn new(value: T) -> Self {
        FastMutex(loom::sync::Mutex::new(value))
    }

    /// Locks it, ignoring poisoning.
    pub(crate) fn lock(&self) -> FastMutexGuard<'_, T> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Its value, through a unique reference (no locking).
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.0
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A task's waker that another thread may take: futures' outside loom.
#[cfg(not(loom))]
pub(crate) use futures_util::task::AtomicWaker;

/// A task's waker that another thread may take: loom's under `cfg(loom)`,
/// with futures' method names.
#[cfg(loom)]
#[derive(Default)]
pub(crate) struct AtomicWaker(loom::future::AtomicWaker);

#[cfg(loom)]
impl AtomicWaker {
    /// Registers the waker of the task to wake next.
    pub(crate) fn register(&self, waker: &std::task::Waker) {
        self.0.register_by_ref(waker);
    }

    /// Takes the registered waker, if any.
    pub(crate) fn take(&self) -> Option<std::task::Waker> {
        self.0.take_waker()
    }
}
