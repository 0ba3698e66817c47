//! `Secret<T>`: a value that never prints and is wiped when dropped.

use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Holds key material. `Debug` prints `Secret([redacted])`; the bytes are zeroed on drop.
///
/// boringtun once printed a pre-shared key through a derived `Debug`; every secret of ours
/// lives in this type so that cannot happen by accident.
#[derive(Clone)]
pub struct Secret<T: Zeroize>(T);

impl<T: Zeroize> Secret<T> {
    /// Wraps `value`; the caller should not keep another copy of it.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// Borrows the secret value. Named so that every use is easy to find.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Borrows the secret value mutably, to fill it in place.
    pub fn expose_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<T: Zeroize> ZeroizeOnDrop for Secret<T> {}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new([0x41u8; 32]);
        let shown = format!("{s:?}");
        assert_eq!(shown, "Secret([redacted])");
        assert!(!shown.contains("65"));
    }

    #[test]
    fn zeroes_on_drop() {
        // Drop in place inside a buffer we still own, then look at the bytes.
        let mut slot = std::mem::MaybeUninit::<Secret<[u8; 32]>>::uninit();
        slot.write(Secret::new([0xAB; 32]));
        // SAFETY: `slot` was initialised just above and is dropped exactly once here.
        unsafe { slot.assume_init_drop() };
        // SAFETY: the memory stays allocated (it is our stack slot); we only read bytes.
        let bytes: [u8; 32] = unsafe { std::ptr::read(slot.as_ptr() as *const [u8; 32]) };
        assert_eq!(bytes, [0u8; 32]);
    }
}
