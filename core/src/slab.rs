//! A generational slab: the arena that holds the pool's requests and
//! workers, whose keys carry a generation so that a stale key misses.

/// Index plus generation: a slot's generation changes every time it is freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SlabKey {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl SlabKey {
    pub(crate) fn as_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    pub(crate) fn from_u64(raw: u64) -> Self {
        SlabKey {
            index: (raw & 0xffff_ffff) as u32,
            generation: (raw >> 32) as u32,
        }
    }
}

/// A generational arena: O(1) insert, lookup and removal, deterministic
/// slot reuse (LIFO free list), and stale keys that simply miss.
#[derive(Debug)]
pub(crate) struct Slab<T> {
    slots: Vec<Slot<T>>,
    free_head: Option<u32>,
    len: usize,
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    entry: Entry<T>,
}

#[derive(Debug)]
enum Entry<T> {
    Occupied(T),
    Vacant { next_free: Option<u32> },
}

impl<T> Slab<T> {
    pub(crate) fn new() -> Self {
        Slab {
            slots: Vec::new(),
            free_head: None,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether [`Self::insert`] has a slot to give (fewer than 2^32 live).
    pub(crate) fn has_room(&self) -> bool {
        self.free_head.is_some() || self.slots.len() < u32::MAX as usize
    }

    /// Stores `value`. Callers check [`Self::has_room`] first; past 2^32
    /// live entries keys would alias (a debug assertion catches it).
    #[inline]
    pub(crate) fn insert(&mut self, value: T) -> SlabKey {
        debug_assert!(self.has_room());
        if let Some(index) = self.free_head {
            if let Some(slot) = self.slots.get_mut(index as usize) {
                if let Entry::Vacant { next_free } = slot.entry {
                    self.free_head = next_free;
                    slot.entry = Entry::Occupied(value);
                    self.len += 1;
                    return SlabKey {
                        index,
                        generation: slot.generation,
                    };
                }
            }
            debug_assert!(false, "free list is corrupt");
            self.free_head = None;
        }
        let index = self.slots.len() as u32;
        self.slots.push(Slot {
            generation: 0,
            entry: Entry::Occupied(value),
        });
        self.len += 1;
        SlabKey {
            index,
            generation: 0,
        }
    }

    pub(crate) fn get(&self, key: SlabKey) -> Option<&T> {
        match self.slots.get(key.index as usize) {
            Some(Slot {
                generation,
                entry: Entry::Occupied(value),
            }) if *generation == key.generation => Some(value),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, key: SlabKey) -> Option<&mut T> {
        match self.slots.get_mut(key.index as usize) {
            Some(Slot {
                generation,
                entry: Entry::Occupied(value),
            }) if *generation == key.generation => Some(value),
            _ => None,
        }
    }

    pub(crate) fn remove(&mut self, key: SlabKey) -> Option<T> {
        let slot = self.slots.get_mut(key.index as usize)?;
        if slot.generation != key.generation || !matches!(slot.entry, Entry::Occupied(_)) {
            return None;
        }
        let old = std::mem::replace(
            &mut slot.entry,
            Entry::Vacant {
                next_free: self.free_head,
            },
        );
        slot.generation = slot.generation.wrapping_add(1);
        self.free_head = Some(key.index);
        self.len -= 1;
        match old {
            Entry::Occupied(value) => Some(value),
            Entry::Vacant { .. } => None,
        }
    }

    /// Live entries in index order (deterministic).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (SlabKey, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| match &slot.entry {
                Entry::Occupied(value) => Some((
                    SlabKey {
                        index: index as u32,
                        generation: slot.generation,
                    },
                    value,
                )),
                Entry::Vacant { .. } => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_keys_miss_after_reuse() {
        let mut slab = Slab::new();
        let a = slab.insert("a");
        assert_eq!(slab.remove(a), Some("a"));
        let b = slab.insert("b");
        assert_eq!(a.index, b.index);
        assert_ne!(a.generation, b.generation);
        assert_eq!(slab.get(a), None);
        assert_eq!(slab.get_mut(a), None);
        assert_eq!(slab.remove(a), None);
        assert_eq!(slab.get(b), Some(&"b"));
        assert_eq!(slab.len(), 1);
        if let Some(value) = slab.get_mut(b) {
            *value = "c";
        }
        assert_eq!(slab.get(b), Some(&"c"));
    }
}
