//! The requests one worker is running: inline for the common single slot, so
//! the hot path touches no extra allocation.

use crate::keys::RequestKey;

#[derive(Debug, Default)]
pub(super) struct RunList {
    first: Option<RequestKey>,
    rest: Vec<RequestKey>,
}

impl RunList {
    pub(super) fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub(super) fn push(&mut self, request: RequestKey) {
        if self.first.is_none() {
            self.first = Some(request);
        } else {
            self.rest.push(request);
        }
    }

    /// Removes `request`; `false` if it was not listed.
    pub(super) fn remove(&mut self, request: RequestKey) -> bool {
        if self.first == Some(request) {
            self.first = self.rest.pop();
            return true;
        }
        match self.rest.iter().position(|key| *key == request) {
            Some(position) => {
                self.rest.swap_remove(position);
                true
            }
            None => false,
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = RequestKey> + '_ {
        self.first.iter().chain(self.rest.iter()).copied()
    }
}

impl IntoIterator for RunList {
    type Item = RequestKey;
    type IntoIter =
        std::iter::Chain<std::option::IntoIter<RequestKey>, std::vec::IntoIter<RequestKey>>;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_every_key_once() {
        let keys: Vec<RequestKey> = (0..4).map(RequestKey::from_u64).collect();
        let mut list = RunList::default();
        for key in &keys {
            list.push(*key);
        }
        assert_eq!(list.len(), 4);
        assert!(list.remove(keys[0]));
        assert!(!list.remove(keys[0]));
        assert!(list.remove(keys[2]));
        let mut left: Vec<_> = list.iter().collect();
        left.sort();
        assert_eq!(left, vec![keys[1], keys[3]]);
        assert!(!list.is_empty());
        let drained: Vec<_> = list.into_iter().collect();
        assert_eq!(drained.len(), 2);
    }

    #[test]
    fn empty_until_pushed_and_again_after_the_last_removal() {
        let mut list = RunList::default();
        assert!(list.is_empty());
        assert_eq!(list.len(), 0);
        let (a, b) = (RequestKey::from_u64(1), RequestKey::from_u64(2));
        list.push(a);
        list.push(b);
        assert!(list.remove(a));
        assert_eq!(list.iter().collect::<Vec<_>>(), vec![b]);
        assert!(!list.is_empty());
        assert!(list.remove(b));
        assert!(list.is_empty());
        assert_eq!(list.len(), 0);
    }
}
