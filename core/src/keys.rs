//! Handles the core gives out for requests, workers and probes. Request
//! and worker keys are keys of the generational slab (`slab.rs`), so a
//! stale handle names nothing.

use std::fmt;

use crate::slab::SlabKey;

/// Identifies one accepted request for as long as the core holds it.
///
/// Keys are never reused while the core could still confuse them: an input
/// naming a request that has already been answered is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestKey(pub(crate) SlabKey);

/// Identifies one worker of the pool (stable across restarts, never reused
/// after removal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerKey(pub(crate) SlabKey);

/// Identifies one health probe, so a late answer to an old probe is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProbeKey(pub(crate) u64);

macro_rules! key_common {
    ($ty:ident, $prefix:literal) => {
        impl $ty {
            /// The key as one number (stable for the key's lifetime; useful
            /// as a map key or in logs).
            pub fn as_u64(self) -> u64 {
                self.0.as_u64()
            }

            /// Rebuilds a key from [`Self::as_u64`]. A number that never came
            /// from the core names nothing, and inputs naming it are ignored.
            pub fn from_u64(raw: u64) -> Self {
                Self(SlabKey::from_u64(raw))
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    concat!($prefix, "{}.{}"),
                    self.0.index, self.0.generation
                )
            }
        }
    };
}
key_common!(RequestKey, "req#");
key_common!(WorkerKey, "wkr#");

impl ProbeKey {
    /// The key as one number.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl WorkerKey {
    /// The worker's slot index (unique among live workers).
    pub(crate) fn index(self) -> u32 {
        self.0.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_u64() {
        let key = RequestKey(SlabKey {
            index: 7,
            generation: 3,
        });
        assert_eq!(RequestKey::from_u64(key.as_u64()), key);
        assert_eq!(key.to_string(), "req#7.3");
        assert_eq!(key.as_u64(), (3 << 32) | 7, "generation above index");
    }

    #[test]
    fn a_probe_key_is_its_number() {
        assert_eq!(ProbeKey(0).as_u64(), 0);
        assert_eq!(ProbeKey(42).as_u64(), 42);
    }
}
