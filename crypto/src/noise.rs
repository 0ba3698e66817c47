//! How snow is plugged in: our X25519 (curve25519-dalek, counted), our randomness (drawn from
//! the caller's [`Random`] up front, so a seeded simulator replays exactly), and snow's own
//! BLAKE2s and ChaChaPoly for the handshake's symmetric steps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use std::ptr::NonNull;

use curve25519_dalek::montgomery::MontgomeryPoint;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash};
use zeroize::Zeroize;

use crate::keys::{KEY_LEN, KeyPair};
use crate::random::Random;
use crate::secret::Secret;
use crate::wire::TAG_LEN;

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
    /// who sees two public keys can compute their "shared secret": it protects nothing. It
    /// exists only in builds with debug assertions and the `insecure-fast-dh` feature.
    #[cfg(all(feature = "insecure-fast-dh", debug_assertions))]
    InsecureFast,
}

impl Curve {
    fn public(self, private: [u8; KEY_LEN]) -> [u8; KEY_LEN] {
        match self {
            Self::X25519 => MontgomeryPoint::mul_base_clamped(private).to_bytes(),
            #[cfg(all(feature = "insecure-fast-dh", debug_assertions))]
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
            #[cfg(all(feature = "insecure-fast-dh", debug_assertions))]
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

#[cfg(all(feature = "insecure-fast-dh", debug_assertions))]
fn sha256(parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    ctx.finish().as_ref().try_into().expect("32 bytes")
}

/// 32 bytes drawn from `rng`: the seed of one handshake's ephemeral key.
pub(crate) fn ephemeral_seed(rng: &mut impl Random) -> Secret<[u8; KEY_LEN]> {
    let mut seed = Secret::new([0u8; KEY_LEN]);
    rng.fill(seed.expose_mut());
    seed
}

/// The curve results of one handshake's own messages, so that its state can be built again
/// from the same inputs (after a forged message: see `handshake.rs`) at the cost of hashing
/// alone. It records until [`CurveMemo::seal`], called once our side's messages are written;
/// afterwards it only answers, so forged messages cannot grow it. A miss only costs the
/// curve operation.
#[derive(Default)]
pub(crate) struct CurveMemo(Mutex<MemoSlots>);

/// Room for what a handshake computes before it waits: one ephemeral key, and the responder's
/// `ee` and `es`. Fixed capacity, so the vectors never move their secrets while growing.
const MEMO_KEYS: usize = 1;
const MEMO_SHARED: usize = 2;

struct MemoSlots {
    sealed: bool,
    /// Ephemeral keys generated: private half, public half.
    keys: Vec<(Secret<[u8; KEY_LEN]>, [u8; KEY_LEN])>,
    shared: Vec<SharedSlot>,
}

/// A Diffie-Hellman result.
struct SharedSlot {
    ours: [u8; KEY_LEN],
    theirs: [u8; KEY_LEN],
    secret: Secret<[u8; KEY_LEN]>,
}

impl Default for MemoSlots {
    fn default() -> Self {
        Self {
            sealed: false,
            keys: Vec::with_capacity(MEMO_KEYS),
            shared: Vec::with_capacity(MEMO_SHARED),
        }
    }
}

impl CurveMemo {
    fn slots(&self) -> std::sync::MutexGuard<'_, MemoSlots> {
        // The slots are consistent after any panic (each push is one step).
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops recording.
    pub(crate) fn seal(&self) {
        self.slots().sealed = true;
    }

    fn public(&self, private: &[u8; KEY_LEN]) -> Option<[u8; KEY_LEN]> {
        let slots = self.slots();
        let found = slots.keys.iter().find(|(k, _)| k.expose() == private);
        found.map(|(_, public)| *public)
    }

    fn note_public(&self, private: &[u8; KEY_LEN], public: [u8; KEY_LEN]) {
        let mut slots = self.slots();
        if !slots.sealed && slots.keys.len() < MEMO_KEYS {
            slots.keys.push((Secret::new(*private), public));
        }
    }

    fn shared(
        &self,
        ours: &[u8; KEY_LEN],
        theirs: &[u8; KEY_LEN],
    ) -> Option<Secret<[u8; KEY_LEN]>> {
        let slots = self.slots();
        let found = slots
            .shared
            .iter()
            .find(|s| s.ours == *ours && s.theirs == *theirs);
        found.map(|s| s.secret.clone())
    }

    fn note_shared(&self, ours: [u8; KEY_LEN], theirs: [u8; KEY_LEN], shared: &[u8; KEY_LEN]) {
        let mut slots = self.slots();
        if !slots.sealed && slots.shared.len() < MEMO_SHARED {
            slots.shared.push(SharedSlot {
                ours,
                theirs,
                secret: Secret::new(*shared),
            });
        }
    }
}

/// A resolver made for one handshake (or for building its state again).
pub(crate) struct Resolver {
    /// 32 bytes for the one ephemeral key this handshake generates.
    ephemeral_seed: Secret<[u8; KEY_LEN]>,
    /// Our static key pair: its public half is known, so setting it costs no scalar mult.
    local: KeyPair,
    counter: Arc<DhCounter>,
    curve: Curve,
    memo: Arc<CurveMemo>,
}

impl Resolver {
    pub(crate) fn new(
        local: &KeyPair,
        seed: &Secret<[u8; KEY_LEN]>,
        counter: Arc<DhCounter>,
        curve: Curve,
        memo: Arc<CurveMemo>,
    ) -> Self {
        Self {
            ephemeral_seed: seed.clone(),
            local: local.clone(),
            counter,
            curve,
            memo,
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
                memo: self.memo.clone(),
            })),
            _ => None,
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        match choice {
            CipherChoice::ChaChaPoly => Some(Box::new(RingChaChaPoly {
                key: Secret::new([0; 32]),
            })),
            _ => None,
        }
    }
}

/// The handshake's ChaChaPoly on ring, with its key in a [`Secret`]: snow's own cipher keeps
/// the key in a box it frees without wiping.
struct RingChaChaPoly {
    key: Secret<[u8; 32]>,
}

impl RingChaChaPoly {
    /// Runs `f` with a ring key built for this call, wiped afterwards.
    fn with_key<T>(&self, f: impl FnOnce(&LessSafeKey) -> T) -> T {
        let mut key = LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, self.key.expose()).expect("32-byte key"),
        );
        let out = f(&key);
        wipe_key(&mut key);
        out
    }
}

fn noise_nonce(n: u64) -> Nonce {
    // Noise spec §5.1 (ChaChaPoly): 32 bits of zeros, then the 64-bit counter little-endian.
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_le_bytes());
    Nonce::assume_unique_for_key(b)
}

impl Cipher for RingChaChaPoly {
    fn name(&self) -> &'static str {
        "ChaChaPoly"
    }

    fn set(&mut self, key: &[u8; 32]) {
        self.key.expose_mut().copy_from_slice(key);
    }

    fn encrypt(&self, nonce: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        let n = plaintext.len();
        out[..n].copy_from_slice(plaintext);
        let tag = self.with_key(|k| {
            k.seal_in_place_separate_tag(noise_nonce(nonce), Aad::from(authtext), &mut out[..n])
                .expect("handshake messages are far below ChaCha20's limit")
        });
        out[n..n + TAG_LEN].copy_from_slice(tag.as_ref());
        n + TAG_LEN
    }

    fn decrypt(
        &self,
        nonce: u64,
        authtext: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, snow::Error> {
        let n = ciphertext
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(snow::Error::Decrypt)?;
        let tag = Tag::try_from(&ciphertext[n..]).map_err(|_| snow::Error::Decrypt)?;
        out[..n].copy_from_slice(&ciphertext[..n]);
        let opened = self.with_key(|k| {
            k.open_in_place_separate_tag(
                noise_nonce(nonce),
                Aad::from(authtext),
                tag,
                &mut out[..n],
                0..,
            )
            .map(|p| p.len())
        });
        opened.map_err(|_| {
            out[..n].zeroize();
            snow::Error::Decrypt
        })
    }
}

/// Overwrites a ring key in place. ring keeps ChaCha20 keys as plain bytes and does not wipe
/// them on drop; the volatile writes cannot be optimised away, and the valid all-zero key
/// written afterwards keeps the place a valid `LessSafeKey` for whatever drops it.
pub(crate) fn wipe_key(key: &mut LessSafeKey) {
    let p = (key as *mut LessSafeKey).cast::<u8>();
    for i in 0..std::mem::size_of::<LessSafeKey>() {
        // SAFETY: `p` points to a live, exclusively borrowed `LessSafeKey` of that size.
        unsafe { std::ptr::write_volatile(p.add(i), 0) };
    }
    let blank = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[0; 32]).expect("32 bytes"));
    // SAFETY: `key` is valid for writes; the bytes there are not a value that needs dropping
    // (LessSafeKey has no drop glue, checked by a test), so overwriting without dropping is
    // sound.
    unsafe { std::ptr::write(key, blank) };
}

/// A snow handshake state that wipes itself when dropped. snow 0.10 has no zeroize code: its
/// chaining key, handshake hash and PSK copy live inline in `HandshakeState` and would be
/// freed as they are. This box runs the state's destructor, then zeroes its bytes, then frees
/// the memory.
pub(crate) struct WipedHandshake(NonNull<snow::HandshakeState>);

// SAFETY: it owns a `HandshakeState`, which is Send and Sync (checked below), exactly as a
// Box would.
unsafe impl Send for WipedHandshake {}
// SAFETY: as above.
unsafe impl Sync for WipedHandshake {}
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<snow::HandshakeState>();
};

impl WipedHandshake {
    pub(crate) fn new(state: snow::HandshakeState) -> Self {
        Self(NonNull::from(Box::leak(Box::new(state))))
    }
}

impl std::ops::Deref for WipedHandshake {
    type Target = snow::HandshakeState;
    fn deref(&self) -> &Self::Target {
        // SAFETY: the pointer came from a live Box we own until Drop.
        unsafe { self.0.as_ref() }
    }
}

impl std::ops::DerefMut for WipedHandshake {
    fn deref_mut(&mut self) -> &mut Self::Target {
        // SAFETY: as in Deref; `&mut self` gives exclusive access.
        unsafe { self.0.as_mut() }
    }
}

impl Drop for WipedHandshake {
    fn drop(&mut self) {
        let p = self.0.as_ptr();
        // SAFETY: `p` is the Box allocation made in `new`, live and owned by us; after
        // drop_in_place the bytes are never read as a `HandshakeState` again, only zeroed and
        // freed with the layout the Box used.
        unsafe {
            std::ptr::drop_in_place(p);
            let bytes = p.cast::<u8>();
            for i in 0..std::mem::size_of::<snow::HandshakeState>() {
                std::ptr::write_volatile(bytes.add(i), 0);
            }
            std::alloc::dealloc(bytes, std::alloc::Layout::new::<snow::HandshakeState>());
        }
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
    memo: Arc<CurveMemo>,
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
        self.public = match self.memo.public(&key) {
            Some(public) => public,
            None => {
                self.counter.bump();
                let public = self.curve.public(key);
                self.memo.note_public(&key, public);
                public
            }
        };
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
        if let Some(shared) = self.memo.shared(&self.public, &theirs) {
            out[..KEY_LEN].copy_from_slice(shared.expose());
            return Ok(());
        }
        self.counter.bump();
        let shared = self
            .curve
            .shared(self.private.expose(), &self.public, theirs);
        // A low-order point gives the all-zero secret (RFC 7748 §6.1 says to check): refuse it,
        // or an attacker could force a known key.
        let mut shared = Secret::new(shared);
        if *shared.expose() == [0u8; KEY_LEN] {
            return Err(snow::Error::Dh);
        }
        self.memo.note_shared(self.public, theirs, shared.expose());
        out[..KEY_LEN].copy_from_slice(shared.expose_mut());
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
            memo: Arc::default(),
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
