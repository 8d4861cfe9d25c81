//! The pool's worker names: ids handed out in order or chosen by the
//! caller, with each worker's lane and rank.

use std::collections::HashMap;

/// Worker ids, handed out in order (`worker-0`, `worker-1`, …, skipping
/// ids in use) or chosen by the caller, and the lane and rank (the order
/// of creation) of each. An id added again (after its worker was removed)
/// takes its new lane and rank.
#[derive(Default)]
pub(crate) struct Names {
    /// Workers named so far.
    count: usize,
    /// The next number a `worker-N` id may take.
    next_number: usize,
    lanes: HashMap<String, (usize, usize)>,
}

impl Names {
    /// How many workers were named.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// The next `worker-N` id no named worker has.
    pub(crate) fn next_numbered(&mut self) -> String {
        loop {
            let id = format!("worker-{}", self.next_number);
            if !self.lanes.contains_key(&id) {
                return id;
            }
            self.next_number += 1;
        }
    }

    /// Records the worker named `id`, in `lane`.
    pub(crate) fn add(&mut self, id: &str, lane: usize) {
        if *id == format!("worker-{}", self.next_number) {
            self.next_number += 1;
        }
        self.lanes.insert(id.to_string(), (lane, self.count));
        self.count += 1;
    }

    /// The lane of the worker named `id`.
    pub(crate) fn lane_of(&self, id: &str) -> Option<usize> {
        self.lanes.get(id).map(|&(lane, _)| lane)
    }

    /// The rank (order of creation) of the worker named `id`.
    pub(crate) fn rank_of(&self, id: &str) -> Option<usize> {
        self.lanes.get(id).map(|&(_, rank)| rank)
    }

    /// How many ids are recorded (those of removed workers included).
    pub(crate) fn recorded(&self) -> usize {
        self.lanes.len()
    }

    /// Forgets the ids for which `live` is false (removed workers').
    pub(crate) fn retain(&mut self, mut live: impl FnMut(&str) -> bool) {
        self.lanes.retain(|id, _| live(id));
    }
}

#[cfg(test)]
mod tests {
    use super::Names;

    #[test]
    fn numbered_ids_skip_ids_taken_by_name() {
        let mut names = Names::default();
        let first = names.next_numbered();
        names.add(&first, 0);
        names.add("worker-1", 0);
        assert_eq!(first, "worker-0");
        assert_eq!(names.next_numbered(), "worker-2");
        assert_eq!(names.rank_of("worker-1"), Some(1));
        assert_eq!(names.count(), 2);
    }

    #[test]
    fn an_id_added_again_takes_its_new_lane_and_rank() {
        let mut names = Names::default();
        names.add("http://a", 0);
        names.add("http://b", 1);
        names.add("http://a", 1);
        assert_eq!(names.lane_of("http://a"), Some(1));
        assert_eq!(names.rank_of("http://a"), Some(2));
        names.retain(|id| id != "http://b");
        assert_eq!(names.lane_of("http://b"), None);
        assert_eq!(names.recorded(), 1);
    }
}
