//! The pool's worker names: ids handed out in order, with each worker's
//! lane and rank.

use std::collections::HashMap;

/// Worker ids, handed out in order (`worker-0`, `worker-1`, …), and the
/// lane and rank (the order of creation) of each.
#[derive(Default)]
pub(crate) struct Names {
    next: usize,
    lanes: HashMap<String, (usize, usize)>,
}

impl Names {
    /// How many workers were named.
    pub(crate) fn count(&self) -> usize {
        self.next
    }

    /// The id the next worker gets.
    pub(crate) fn peek(&self) -> String {
        format!("worker-{}", self.next)
    }

    /// Records the next worker, in `lane`; returns its id.
    pub(crate) fn add(&mut self, lane: usize) -> String {
        let id = self.peek();
        self.lanes.insert(id.clone(), (lane, self.next));
        self.next += 1;
        id
    }

    /// The lane of the worker named `id`.
    pub(crate) fn lane_of(&self, id: &str) -> Option<usize> {
        self.lanes.get(id).map(|&(lane, _)| lane)
    }

    /// The rank (order of creation) of the worker named `id`.
    pub(crate) fn rank_of(&self, id: &str) -> Option<usize> {
        self.lanes.get(id).map(|&(_, rank)| rank)
    }
}
