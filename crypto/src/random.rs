//! Randomness is passed in, never fetched: a simulator hands in a seeded generator and gets
//! the same handshakes on every run; a router hands in [`OsRandom`].

/// A source of cryptographically secure random bytes.
pub trait Random {
    /// Fills `dest` entirely.
    fn fill(&mut self, dest: &mut [u8]);
}

/// The operating system's generator (`getrandom`).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl Random for OsRandom {
    fn fill(&mut self, dest: &mut [u8]) {
        // Without OS randomness no key or handshake can be safe; there is nothing to fall back to.
        getrandom::fill(dest).expect("the operating system's random source failed");
    }
}

impl<R: Random + ?Sized> Random for &mut R {
    fn fill(&mut self, dest: &mut [u8]) {
        (**self).fill(dest)
    }
}

/// A seeded generator for tests, simulators, benchmarks and fuzzing: xoshiro256++ (Blackman
/// and Vigna, 2019), seeded through splitmix64. Reproducible and fast, **not secure**: it is
/// compiled only with the `test-rng` feature, which no router build enables.
#[cfg(feature = "test-rng")]
#[derive(Debug, Clone)]
pub struct SeededRng([u64; 4]);

#[cfg(feature = "test-rng")]
impl SeededRng {
    /// A generator from a seed: the same seed gives the same sequence on every run.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self([next(), next(), next(), next()])
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// A duration in `[0, max)` (zero when `max` is).
    pub fn duration(&mut self, max: std::time::Duration) -> std::time::Duration {
        if max.is_zero() {
            return max;
        }
        std::time::Duration::from_nanos(self.next_u64() % max.as_nanos() as u64)
    }
}

#[cfg(feature = "test-rng")]
impl Random for SeededRng {
    fn fill(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[cfg(all(test, feature = "test-rng"))]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_generator_replays_from_its_seed() {
        let (mut a, mut b) = (SeededRng::new(7), SeededRng::new(7));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(SeededRng::new(8).next_u64(), SeededRng::new(7).next_u64());
        // Bytes come from the same stream, eight at a time, little-endian.
        let mut bytes = [0u8; 12];
        SeededRng::new(7).fill(&mut bytes);
        let mut c = SeededRng::new(7);
        assert_eq!(bytes[..8], c.next_u64().to_le_bytes());
        assert_eq!(bytes[8..], c.next_u64().to_le_bytes()[..4]);
    }
}
