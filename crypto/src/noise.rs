//! How snow is plugged in: our X25519 (curve25519-dalek, counted), our randomness (drawn from
//! the caller's [`Random`] up front, so a seeded simulator replays exactly), and snow's own
//! BLAKE2s and ChaChaPoly for the handshake's symmetric steps.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use curve25519_dalek::montgomery::MontgomeryPoint;
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash};
use zeroize::Zeroize;

use crate::keys::{KEY_LEN, KeyPair};
use crate::random::Random;
use crate::secret::Secret;

/// Counts X25519 scalar multiplications (key generation, public key derivation, DH). The
/// handshake tests read it to show a non-member is refused before any of them; routers can
/// export it as a measure of handshake CPU spent.
#[derive(Debug, Default)]
pub struct DhCounter(AtomicU64);

impl DhCounter {
    /// Operations counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Which Diffie-Hellman function handshakes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Curve {
    /// X25519 (RFC 7748). The only choice outside simulator tests.
    #[default]
    X25519,
    /// A hash standing in for X25519 so a simulator can run hundreds of nodes quickly. Anyone
    /// who sees two public keys can compute their "shared secret": it protects nothing.
    #[cfg(feature = "insecure-fast-dh")]
    InsecureFast,
}

impl Curve {
    fn public(self, private: [u8; KEY_LEN]) -> [u8; KEY_LEN] {
        match self {
            Self::X25519 => MontgomeryPoint::mul_base_clamped(private).to_bytes(),
            #[cfg(feature = "insecure-fast-dh")]
            Self::InsecureFast => sha256(&[b"weft insecure public", &private[..]]),
        }
    }

    fn shared(
        self,
        private: &[u8; KEY_LEN],
        ours: &[u8; KEY_LEN],
        theirs: [u8; KEY_LEN],
    ) -> [u8; KEY_LEN] {
        match self {
            Self::X25519 => {
                let _ = ours;
                MontgomeryPoint(theirs).mul_clamped(*private).to_bytes()
            }
            #[cfg(feature = "insecure-fast-dh")]
            Self::InsecureFast => {
                let _ = private;
                let (lo, hi) = if *ours <= theirs {
                    (ours, &theirs)
                } else {
                    (&theirs, ours)
                };
                sha256(&[b"weft insecure shared", &lo[..], &hi[..]])
            }
        }
    }
}

#[cfg(feature = "insecure-fast-dh")]
fn sha256(parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    ctx.finish().as_ref().try_into().expect("32 bytes")
}

/// A resolver made for one handshake.
pub(crate) struct Resolver {
    /// 32 bytes for the one ephemeral key this handshake generates.
    ephemeral_seed: Secret<[u8; KEY_LEN]>,
    /// Our static key pair: its public half is known, so setting it costs no scalar mult.
    local: KeyPair,
    counter: Arc<DhCounter>,
    curve: Curve,
}

impl Resolver {
    pub(crate) fn new(
        local: &KeyPair,
        rng: &mut impl Random,
        counter: Arc<DhCounter>,
        curve: Curve,
    ) -> Self {
        let mut seed = Secret::new([0u8; KEY_LEN]);
        rng.fill(seed.expose_mut());
        Self {
            ephemeral_seed: seed,
            local: local.clone(),
            counter,
            curve,
        }
    }
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        Some(Box::new(SeedOnce(Some(self.ephemeral_seed.clone()))))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(X25519 {
                private: Secret::new([0; KEY_LEN]),
                public: [0; KEY_LEN],
                local: self.local.clone(),
                counter: self.counter.clone(),
                curve: self.curve,
            })),
            _ => None,
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// Hands out the pre-drawn seed once; a second request is an error, not a weak key.
struct SeedOnce(Option<Secret<[u8; KEY_LEN]>>);

impl snow::types::Random for SeedOnce {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        match self.0.take() {
            Some(seed) if dest.len() <= KEY_LEN => {
                dest.copy_from_slice(&seed.expose()[..dest.len()]);
                Ok(())
            }
            _ => Err(snow::Error::Rng),
        }
    }
}

/// X25519 (RFC 7748) on curve25519-dalek, counting every scalar multiplication.
struct X25519 {
    private: Secret<[u8; KEY_LEN]>,
    public: [u8; KEY_LEN],
    local: KeyPair,
    counter: Arc<DhCounter>,
    curve: Curve,
}

impl Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }
    fn pub_len(&self) -> usize {
        KEY_LEN
    }
    fn priv_len(&self) -> usize {
        KEY_LEN
    }

    fn set(&mut self, privkey: &[u8]) {
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&privkey[..KEY_LEN]);
        // snow sets the static key when it builds a handshake state. Ours is the only static
        // key it is ever given, and its public half is already known: reuse it, so building a
        // responder for an unauthenticated initiation costs no curve operation. (Both sides of
        // this comparison are our own key; there is no secret-dependent timing to exploit.)
        self.public = if key == *self.local.private().expose() {
            self.local.public().as_bytes().to_owned()
        } else {
            self.counter.bump();
            self.curve.public(key)
        };
        *self.private.expose_mut() = key;
        key.zeroize();
    }

    fn generate(&mut self, rng: &mut dyn snow::types::Random) -> Result<(), snow::Error> {
        let mut key = [0u8; KEY_LEN];
        rng.try_fill_bytes(&mut key)?;
        self.counter.bump();
        self.public = self.curve.public(key);
        *self.private.expose_mut() = key;
        key.zeroize();
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        self.private.expose()
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let theirs: [u8; KEY_LEN] = pubkey[..KEY_LEN].try_into().map_err(|_| snow::Error::Dh)?;
        self.counter.bump();
        let shared = self
            .curve
            .shared(self.private.expose(), &self.public, theirs);
        // A low-order point gives the all-zero secret (RFC 7748 §6.1 says to check): refuse it,
        // or an attacker could force a known key.
        if shared == [0u8; KEY_LEN] {
            return Err(snow::Error::Dh);
        }
        out[..KEY_LEN].copy_from_slice(&shared);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::tests::hex;

    fn dh_for(pair: &KeyPair, counter: &Arc<DhCounter>) -> X25519 {
        let mut dh = X25519 {
            private: Secret::new([0; 32]),
            public: [0; 32],
            local: pair.clone(),
            counter: counter.clone(),
            curve: Curve::X25519,
        };
        dh.set(pair.private().expose());
        dh
    }

    #[test]
    fn dh_agrees_on_rfc7748_keys_counts_and_refuses_low_order_points() {
        // RFC 7748 §6.1: Alice's and Bob's key pairs.
        let alice = KeyPair::from_private(hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        let bob = KeyPair::from_private(hex(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ));
        assert_eq!(
            bob.public().as_bytes(),
            &hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let counter = Arc::new(DhCounter::default());
        let a = dh_for(&alice, &counter);
        let b = dh_for(&bob, &counter);
        assert_eq!(counter.get(), 0, "setting our own static key is free");
        assert_eq!(a.pubkey(), alice.public().as_bytes());
        let (mut ab, mut ba) = ([0u8; 32], [0u8; 32]);
        a.dh(bob.public().as_bytes(), &mut ab).unwrap();
        b.dh(alice.public().as_bytes(), &mut ba).unwrap();
        assert_eq!(ab, ba);
        assert_eq!(counter.get(), 2);
        assert!(
            a.dh(&[0u8; 32], &mut ab).is_err(),
            "the zero point is refused"
        );
        // A key that is not our static one costs a scalar multiplication, and is counted.
        let mut other = dh_for(&alice, &counter);
        other.set(bob.private().expose());
        assert_eq!(other.pubkey(), bob.public().as_bytes());
        assert_eq!(counter.get(), 4);
    }
}
