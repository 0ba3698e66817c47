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
