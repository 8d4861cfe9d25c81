//! [`Rng`]: the seeded generator behind the core's random choices (the two
//! candidates of a power-of-two-choices pick, the jitter of an ejection).
//!
//! The core never draws from the operating system: its generator is seeded
//! from [`PoolConfig::seed`](crate::PoolConfig::seed), so a pool fed the
//! same inputs at the same instants makes the same decisions, and a
//! simulator run is its own replay.

/// SplitMix64 (Steele, Lea and Flood, 2014): a 64-bit state advanced by a
/// fixed odd constant and passed through a bijective mixer. Small, fast,
/// statistically sound for scheduling and simulation, and fully determined
/// by its seed.
///
/// ```
/// use foreman_core::Rng;
///
/// let mut a = Rng::new(7);
/// let mut b = Rng::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert!(a.below(10) < 10);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform value in `0..n`, by multiply-shift; `0` when `n` is `0`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn the_same_seed_gives_the_same_sequence_and_another_seed_another() {
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..8).map(|_| rng.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn below_stays_in_range_and_reaches_both_ends() {
        let mut rng = Rng::new(3);
        let draws: Vec<u64> = (0..1_000).map(|_| rng.below(4)).collect();
        assert!(draws.iter().all(|&d| d < 4));
        assert!(draws.contains(&0) && draws.contains(&3));
        assert_eq!(rng.below(0), 0);
    }

    #[test]
    fn unit_stays_in_the_half_open_interval() {
        let mut rng = Rng::new(5);
        for _ in 0..1_000 {
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
