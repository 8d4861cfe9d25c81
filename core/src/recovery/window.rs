//! A count-based sliding window of a worker's latest request outcomes (up
//! to 64), kept as a bit mask: O(1) per outcome.

/// The latest `len` outcomes, newest in bit 0; a set bit is a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Window {
    bits: u64,
    len: u32,
}

impl Window {
    /// Records an outcome, forgetting the oldest once `size` are held.
    pub(crate) fn push(&mut self, failed: bool, size: u32) {
        let size = size.clamp(1, 64);
        self.bits = (self.bits << 1) | u64::from(failed);
        if size < 64 {
            self.bits &= (1u64 << size) - 1;
        }
        self.len = (self.len + 1).min(size);
    }

    /// Outcomes held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u32 {
        self.len
    }

    /// Failures held.
    pub(crate) fn failures(&self) -> u32 {
        self.bits.count_ones()
    }

    /// Whether the window holds at least `min_volume` outcomes of which at
    /// least `percent` % failed.
    pub(crate) fn over_rate(&self, min_volume: u32, percent: u32) -> bool {
        self.len >= min_volume.max(1)
            && u64::from(self.failures()) * 100 >= u64::from(percent) * u64::from(self.len)
    }

    /// Forgets every outcome.
    pub(crate) fn clear(&mut self) {
        *self = Window::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_forgets_its_oldest_outcome() {
        let mut window = Window::default();
        for _ in 0..4 {
            window.push(true, 4);
        }
        assert_eq!((window.len(), window.failures()), (4, 4));
        window.push(false, 4);
        assert_eq!((window.len(), window.failures()), (4, 3));
        for _ in 0..70 {
            window.push(true, 64);
        }
        assert_eq!((window.len(), window.failures()), (64, 64));
    }

    #[test]
    fn the_rate_needs_the_minimum_volume() {
        let mut window = Window::default();
        for _ in 0..9 {
            window.push(true, 20);
        }
        assert!(!window.over_rate(10, 50));
        window.push(false, 20);
        assert!(window.over_rate(10, 50));
        assert!(!window.over_rate(10, 100));
    }
}
