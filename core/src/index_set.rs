//! A hierarchical bitset of small indices: insert, remove, "next member
//! at or after i" and "the k-th member" (a uniform random pick) in
//! O(log64 n) with a handful of cache lines, which keeps routing cost flat
//! from one worker to tens of thousands.

/// A set of `u32` indices.
#[derive(Debug, Default, Clone)]
pub(crate) struct IndexSet {
    /// `levels[0]` holds one bit per index; each higher level holds one bit
    /// per non-zero word of the level below. The top level is one word.
    levels: Vec<Vec<u64>>,
    /// `counts[l][j]`, for `l >= 1`: how many indices lie under word `j` of
    /// level `l` (`counts[0]` stays empty: a leaf word's count is its
    /// population count). Lets [`nth`](Self::nth) descend without scanning.
    counts: Vec<Vec<u32>>,
    len: usize,
}

impl IndexSet {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn contains(&self, index: u32) -> bool {
        let index = index as usize;
        self.levels
            .first()
            .and_then(|leaf| leaf.get(index / 64))
            .is_some_and(|word| word & (1 << (index % 64)) != 0)
    }

    /// Adds `index`; `false` if it was already there.
    pub(crate) fn insert(&mut self, index: u32) -> bool {
        if self.contains(index) {
            return false;
        }
        self.grow_to(index as usize);
        self.len += 1;
        self.count(index, true);
        let mut position = index as usize;
        for level in self.levels.iter_mut() {
            let Some(word) = level.get_mut(position / 64) else {
                debug_assert!(false, "index set levels too short");
                break;
            };
            let was_empty = *word == 0;
            *word |= 1u64 << (position % 64);
            if !was_empty {
                // The summary above already marks this word.
                break;
            }
            position /= 64;
        }
        true
    }

    /// Removes `index`; `false` if it was not there.
    pub(crate) fn remove(&mut self, index: u32) -> bool {
        if !self.contains(index) {
            return false;
        }
        self.len -= 1;
        self.count(index, false);
        let mut position = index as usize;
        for level in self.levels.iter_mut() {
            let Some(word) = level.get_mut(position / 64) else {
                break;
            };
            *word &= !(1u64 << (position % 64));
            if *word != 0 {
                break;
            }
            position /= 64;
        }
        true
    }

    /// The smallest member at or after `from`.
    pub(crate) fn next_from(&self, from: u32) -> Option<u32> {
        let mut position = from as usize;
        let mut level = 0;
        // Climb until a word holds a member at or after `position`.
        loop {
            let words = self.levels.get(level)?;
            let word = words.get(position / 64).copied().unwrap_or(0);
            let masked = if position % 64 == 0 {
                word
            } else {
                word & (u64::MAX << (position % 64))
            };
            if masked != 0 && position / 64 < words.len() {
                position = (position / 64) * 64 + masked.trailing_zeros() as usize;
                break;
            }
            // Nothing here: continue after this word, one level up.
            position = position / 64 + 1;
            level += 1;
            if level >= self.levels.len() {
                return None;
            }
        }
        // Descend taking the lowest member of each word.
        while level > 0 {
            level -= 1;
            let word = self.levels.get(level)?.get(position).copied().unwrap_or(0);
            if word == 0 {
                debug_assert!(false, "summary bit without members");
                return None;
            }
            position = position * 64 + word.trailing_zeros() as usize;
        }
        u32::try_from(position).ok()
    }

    /// The member of rank `rank` (0-based, in increasing order), or `None`
    /// when `rank >= len()`. With a uniform `rank` it is a uniform random
    /// member; it costs O(64 · log64 n): one word per level and, above the
    /// leaves, at most 64 subtree counts read per level.
    pub(crate) fn nth(&self, rank: usize) -> Option<u32> {
        if rank >= self.len {
            return None;
        }
        let mut rank = u32::try_from(rank).ok()?;
        let mut level = self.levels.len().checked_sub(1)?;
        let mut position = 0usize;
        while level > 0 {
            let mut word = self.levels.get(level)?.get(position).copied()?;
            let below = level - 1;
            loop {
                if word == 0 {
                    debug_assert!(false, "index set counts disagree with its bits");
                    return None;
                }
                let child = position * 64 + word.trailing_zeros() as usize;
                let under = if below == 0 {
                    self.levels.first()?.get(child)?.count_ones()
                } else {
                    *self.counts.get(below)?.get(child)?
                };
                if rank < under {
                    position = child;
                    break;
                }
                rank -= under;
                word &= word - 1;
            }
            level = below;
        }
        let mut word = self.levels.first()?.get(position).copied()?;
        for _ in 0..rank {
            word &= word.wrapping_sub(1);
        }
        if word == 0 {
            debug_assert!(false, "index set counts disagree with its bits");
            return None;
        }
        u32::try_from(position * 64 + word.trailing_zeros() as usize).ok()
    }

    /// Adds or takes one from the subtree counts above `index`.
    fn count(&mut self, index: u32, add: bool) {
        let mut position = index as usize / 64;
        for counts in self.counts.iter_mut().skip(1) {
            position /= 64;
            if let Some(count) = counts.get_mut(position) {
                *count = if add {
                    count.saturating_add(1)
                } else {
                    count.saturating_sub(1)
                };
            }
        }
    }

    /// Members from `cursor` on, then those before it.
    pub(crate) fn rotate(&self, cursor: u32) -> impl Iterator<Item = u32> + '_ {
        let mut next = self.next_from(cursor);
        let mut wrapped = false;
        std::iter::from_fn(move || loop {
            match next {
                Some(index) if wrapped && index >= cursor => return None,
                Some(index) => {
                    next = index.checked_add(1).and_then(|after| self.next_from(after));
                    return Some(index);
                }
                None if !wrapped => {
                    wrapped = true;
                    next = self.next_from(0);
                }
                None => return None,
            }
        })
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let mut next = self.next_from(0);
        std::iter::from_fn(move || {
            let index = next?;
            next = index.checked_add(1).and_then(|after| self.next_from(after));
            Some(index)
        })
    }

    /// Makes room for `index` on every level, rebuilding the summaries
    /// when the shape changes (rare: once per 64 new indices at most).
    fn grow_to(&mut self, index: usize) {
        let leaf_words = index / 64 + 1;
        if self
            .levels
            .first()
            .is_some_and(|leaf| leaf.len() >= leaf_words)
        {
            return;
        }
        let mut leaf = self.levels.first().cloned().unwrap_or_default();
        leaf.resize(leaf_words.max(leaf.len()), 0);
        let mut levels = vec![leaf];
        while let Some(below) = levels.last() {
            if below.len() <= 1 {
                break;
            }
            let mut summary = vec![0u64; below.len().div_ceil(64)];
            for (position, word) in below.iter().enumerate() {
                if *word != 0 {
                    if let Some(bits) = summary.get_mut(position / 64) {
                        *bits |= 1 << (position % 64);
                    }
                }
            }
            levels.push(summary);
        }
        // Each level's subtree counts, from the population of the leaves.
        let mut counts = vec![Vec::new()];
        let mut below: Vec<u32> = levels
            .first()
            .map(|leaf| leaf.iter().map(|word| word.count_ones()).collect())
            .unwrap_or_default();
        for level in levels.iter().skip(1) {
            let mut sums = vec![0u32; level.len()];
            for (position, count) in below.iter().enumerate() {
                if let Some(sum) = sums.get_mut(position / 64) {
                    *sum += count;
                }
            }
            counts.push(sums.clone());
            below = sums;
        }
        self.levels = levels;
        self.counts = counts;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn behaves_like_a_btreeset() {
        let mut set = IndexSet::default();
        let mut model = BTreeSet::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        // Miri interprets every step: a shorter run there.
        let rounds = if cfg!(miri) { 500 } else { 20_000 };
        for _ in 0..rounds {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let index = (state % 300_000) as u32 % if state & 1 == 0 { 70 } else { 300_000 };
            if state & 2 == 0 {
                assert_eq!(set.insert(index), model.insert(index));
            } else {
                assert_eq!(set.remove(index), model.remove(&index));
            }
            assert_eq!(set.len(), model.len());
            let probe = ((state >> 20) % 300_001) as u32;
            assert_eq!(set.next_from(probe), model.range(probe..).next().copied());
            assert_eq!(set.contains(probe), model.contains(&probe));
            let rank = (state >> 40) as usize % (model.len() + 2);
            assert_eq!(set.nth(rank), model.iter().nth(rank).copied());
        }
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            model.iter().copied().collect::<Vec<_>>()
        );
        let cursor = 150_000;
        let rotated: Vec<u32> = model
            .range(cursor..)
            .chain(model.range(..cursor))
            .copied()
            .collect();
        assert_eq!(set.rotate(cursor).collect::<Vec<_>>(), rotated);
    }

    #[test]
    fn edges() {
        let mut set = IndexSet::default();
        assert_eq!(set.next_from(0), None);
        assert!(set.insert(0));
        assert!(!set.insert(0));
        assert!(set.insert(63));
        assert!(set.insert(64));
        assert!(set.insert(4095));
        assert!(set.insert(4096));
        assert_eq!(set.next_from(1), Some(63));
        assert_eq!(set.next_from(65), Some(4095));
        assert_eq!(set.next_from(4097), None);
        assert_eq!(
            set.rotate(64).collect::<Vec<_>>(),
            vec![64, 4095, 4096, 0, 63]
        );
        assert!(set.remove(4095));
        assert!(!set.remove(4095));
        assert_eq!(set.next_from(65), Some(4096));
        assert_eq!(set.next_from(u32::MAX), None);
    }

    #[test]
    fn nth_walks_every_member_in_order_across_levels() {
        let mut set = IndexSet::default();
        assert_eq!(set.nth(0), None);
        let members = [0, 1, 63, 64, 200, 4095, 4096, 70_000, 262_143, 262_144];
        for index in members {
            set.insert(index);
        }
        let ranked: Vec<Option<u32>> = (0..=members.len()).map(|rank| set.nth(rank)).collect();
        let mut expected: Vec<Option<u32>> = members.iter().copied().map(Some).collect();
        expected.push(None);
        assert_eq!(ranked, expected);
        set.remove(4095);
        set.remove(0);
        assert_eq!(set.nth(0), Some(1));
        assert_eq!(set.nth(4), Some(4096));
        assert_eq!(set.nth(7), Some(262_144));
        assert_eq!(set.nth(8), None);
    }

    #[test]
    fn nth_with_a_uniform_rank_reaches_every_member_evenly() {
        let mut set = IndexSet::default();
        for index in [3, 90, 5_000, 77_777] {
            set.insert(index);
        }
        let mut rng = crate::rng::Rng::new(11);
        let mut hits = std::collections::BTreeMap::new();
        for _ in 0..4_000 {
            let rank = rng.below(set.len() as u64) as usize;
            *hits.entry(set.nth(rank).unwrap()).or_insert(0u32) += 1;
        }
        assert_eq!(hits.len(), 4);
        assert!(
            hits.values().all(|&n| (800..1_200).contains(&n)),
            "{hits:?}"
        );
    }

    #[test]
    fn levels_grow_to_the_largest_index_and_no_further() {
        let mut set = IndexSet::default();
        set.insert(0);
        assert_eq!(set.levels.len(), 1, "one word needs no summary");
        assert_eq!(set.levels.first().map(Vec::len), Some(1));
        set.insert(4096);
        // 4097 indices: 65 leaf words, summarised by 2 words, then by 1.
        let widths: Vec<usize> = set.levels.iter().map(Vec::len).collect();
        assert_eq!(widths, vec![65, 2, 1]);
        set.insert(100);
        let widths: Vec<usize> = set.levels.iter().map(Vec::len).collect();
        assert_eq!(widths, vec![65, 2, 1], "a smaller index grows nothing");
    }
}
