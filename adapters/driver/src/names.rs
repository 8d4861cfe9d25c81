//! The pool's worker names: ids handed out in order or chosen by the
//! caller, with each worker's lane and rank, and the ids reserved by adds
//! under way.

use std::collections::{HashMap, HashSet};

/// Worker ids, handed out in order (`worker-0`, `worker-1`, …, skipping
/// ids in use or reserved) or chosen by the caller, and the lane and rank
/// (the order of creation) of each. An id added again (after its worker
/// was removed) takes its new lane and rank.
///
/// An add reserves its id under the lock, releases the lock while it
/// registers the worker (which calls user code), and records or releases
/// the id after: a reserved id is neither handed out nor reserved again.
#[derive(Default)]
pub(crate) struct Names {
    /// Workers named so far.
    count: usize,
    /// The next number a `worker-N` id may take.
    next_number: usize,
    lanes: HashMap<String, (usize, usize)>,
    /// Ids of adds under way.
    reserved: HashSet<String>,
}

impl Names {
    /// How many workers were named.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// The next `worker-N` id no named worker has and no add under way
    /// reserved.
    pub(crate) fn next_numbered(&mut self) -> String {
        while self.lanes.contains_key(&numbered(self.next_number)) {
            self.next_number += 1;
        }
        // A reserved number stays free for later if its add fails.
        let mut number = self.next_number;
        loop {
            let id = numbered(number);
            if !self.lanes.contains_key(&id) && !self.reserved.contains(&id) {
                return id;
            }
            number += 1;
        }
    }

    /// Reserves `id` for an add under way; false if another add under way
    /// reserved it.
    pub(crate) fn reserve(&mut self, id: &str) -> bool {
        self.reserved.insert(id.to_string())
    }

    /// Releases the reservation of `id` (its add failed).
    pub(crate) fn release(&mut self, id: &str) {
        self.reserved.remove(id);
    }

    /// Records the worker named `id`, in `lane` (ending its reservation).
    pub(crate) fn add(&mut self, id: &str, lane: usize) {
        self.reserved.remove(id);
        if *id == numbered(self.next_number) {
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

/// The id `worker-{number}`.
fn numbered(number: usize) -> String {
    format!("worker-{number}")
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

    #[test]
    fn numbered_ids_skip_reserved_ids() {
        let mut names = Names::default();
        let first = names.next_numbered();
        assert!(names.reserve(&first));
        let second = names.next_numbered();
        assert!(names.reserve(&second));
        assert_eq!((first.as_str(), second.as_str()), ("worker-0", "worker-1"));
        assert_eq!(names.next_numbered(), "worker-2");
        names.add(&second, 1);
        assert_eq!(names.next_numbered(), "worker-2");
        assert_eq!(names.lane_of("worker-1"), Some(1));
    }

    #[test]
    fn a_reserved_id_is_not_reserved_again_until_released_or_added() {
        let mut names = Names::default();
        assert!(names.reserve("http://a"));
        assert!(!names.reserve("http://a"));
        names.release("http://a");
        assert!(names.reserve("http://a"));
        names.add("http://a", 0);
        assert!(
            names.reserve("http://a"),
            "recorded ids are the cores' to refuse"
        );
        assert_eq!(names.count(), 1);
    }

    #[test]
    fn a_released_number_is_handed_out_again() {
        let mut names = Names::default();
        let first = names.next_numbered();
        assert!(names.reserve(&first));
        let second = names.next_numbered();
        assert!(names.reserve(&second));
        names.add(&second, 0);
        names.release(&first);
        assert_eq!(names.next_numbered(), "worker-0");
        names.add("worker-0", 0);
        assert_eq!(names.next_numbered(), "worker-2");
        assert_eq!(names.rank_of("worker-0"), Some(1));
    }
}
