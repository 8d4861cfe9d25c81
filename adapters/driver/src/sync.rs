//! The synchronisation primitives of the modules that `loom` checks
//! ([`crate::live`]): loom's under `cfg(loom)`, std's otherwise.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicUsize, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::Mutex;

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicUsize, Ordering};
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
