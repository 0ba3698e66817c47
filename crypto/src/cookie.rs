//! `mac1`, `mac2` and cookies: WireGuard's defence of a responder under load (§5.4.4 and
//! §5.4.7 of the WireGuard paper), adapted to weft's handshake.
//!
//! - `mac1` is a keyed BLAKE2s-128 over an initiation or response up to `mac1`. WireGuard keys
//!   it with a hash of the responder's public key; weft's initiator may not know that key
//!   (first contact to a seed address), so the key is a hash of the join secret's PSK. A
//!   message without a valid `mac1` is refused before any Noise processing: one BLAKE2s per
//!   accepted join secret.
//! - Under load, a responder answers an initiation without a valid `mac2` with a cookie reply
//!   instead of a handshake: no Diffie-Hellman. The cookie is a MAC of the initiation's source
//!   address and port under a responder secret replaced every [`COOKIE_SECRET_LIFETIME`], so
//!   only a sender that receives at that address learns it; the next initiation carries
//!   `mac2`, a keyed BLAKE2s-128 over the message up to `mac2` keyed by the cookie, which
//!   proves the address.
//! - The cookie travels sealed (ChaCha20-Poly1305) under a key derived from the PSK, with the
//!   initiation's `mac1` as associated data: only a member that sent that initiation opens it,
//!   and a forged reply changes nothing. Its nonce is 24 random bytes (as WireGuard's
//!   XChaCha20); ring has no XChaCha20, so the nonce is hashed into a one-time key under which
//!   ChaCha20-Poly1305 runs with a zero nonce.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blake2::digest::consts::{U16, U32};
use blake2::digest::{KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use crate::random::Random;
use crate::secret::Secret;
use crate::wire::{COOKIE_NONCE_LEN, INITIATION_LEN, MAC_LEN, TAG_LEN};

/// How long a responder's cookie secret lives, and so a cookie: WireGuard's two minutes.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);

/// Labels for the keys derived from a PSK, so each key serves one purpose.
const MAC1_LABEL: &[u8] = b"weft mac1 v2";
const COOKIE_LABEL: &[u8] = b"weft cookie v2";

/// Keyed BLAKE2s-128 of `message` (a key of at most 32 bytes).
pub(crate) fn mac(key: &[u8], message: &[u8]) -> [u8; MAC_LEN] {
    let mut m = <Blake2sMac<U16> as KeyInit>::new_from_slice(key).expect("a key of 32 bytes");
    Mac::update(&mut m, message);
    m.finalize().into_bytes().into()
}

/// Compares without leaking where the first difference is.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn derive(label: &[u8], psk: &[u8; 32]) -> Secret<[u8; 32]> {
    let mut h = Blake2s256::new();
    Digest::update(&mut h, label);
    Digest::update(&mut h, psk);
    Secret::new(h.finalize().into())
}

/// The keys one accepted join secret gives `mac1` and cookie replies.
#[derive(Clone, Debug)]
pub(crate) struct MacKeys {
    mac1: Secret<[u8; 32]>,
    cookie: Secret<[u8; 32]>,
}

impl MacKeys {
    pub(crate) fn derive(psk: &[u8; 32]) -> Self {
        Self {
            mac1: derive(MAC1_LABEL, psk),
            cookie: derive(COOKIE_LABEL, psk),
        }
    }

    /// `mac1` of a message whose `mac1` starts after `covered`.
    pub(crate) fn mac1(&self, covered: &[u8]) -> [u8; MAC_LEN] {
        mac(self.mac1.expose(), covered)
    }

    /// The one-time AEAD key for a cookie reply with this nonce.
    fn cookie_key(&self, nonce: &[u8; COOKIE_NONCE_LEN]) -> LessSafeKey {
        let mut m =
            <Blake2sMac<U32> as KeyInit>::new_from_slice(self.cookie.expose()).expect("32 bytes");
        Mac::update(&mut m, nonce);
        let key = Secret::new(<[u8; 32]>::from(m.finalize().into_bytes()));
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key.expose()).expect("a 32-byte key"))
    }

    /// The cookie sealed for the sender of the initiation whose `mac1` is `initiation_mac1`.
    pub(crate) fn seal_cookie(
        &self,
        cookie: &Cookie,
        nonce: &[u8; COOKIE_NONCE_LEN],
        initiation_mac1: &[u8; MAC_LEN],
    ) -> [u8; MAC_LEN + TAG_LEN] {
        let mut out = [0u8; MAC_LEN + TAG_LEN];
        out[..MAC_LEN].copy_from_slice(cookie.0.expose());
        let tag = self
            .cookie_key(nonce)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(initiation_mac1),
                &mut out[..MAC_LEN],
            )
            .expect("16 bytes fit ChaCha20-Poly1305");
        out[MAC_LEN..].copy_from_slice(tag.as_ref());
        out
    }

    /// Opens a sealed cookie; `None` unless it was sealed under this key for that `mac1`.
    pub(crate) fn open_cookie(
        &self,
        nonce: &[u8; COOKIE_NONCE_LEN],
        sealed: &[u8],
        initiation_mac1: &[u8; MAC_LEN],
    ) -> Option<Cookie> {
        let mut buf = Secret::new([0u8; MAC_LEN + TAG_LEN]);
        if sealed.len() != buf.expose().len() {
            return None;
        }
        buf.expose_mut().copy_from_slice(sealed);
        let plain = self
            .cookie_key(nonce)
            .open_in_place(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(initiation_mac1),
                buf.expose_mut(),
            )
            .ok()?;
        let cookie: [u8; MAC_LEN] = (&*plain).try_into().ok()?;
        Some(Cookie(Secret::new(cookie)))
    }
}

/// A cookie from a responder under load: it proves that its holder receives at the address
/// it was made for. The initiator keeps it per endpoint for less than
/// [`COOKIE_SECRET_LIFETIME`] and stamps `mac2` with it.
#[derive(Clone)]
pub struct Cookie(Secret<[u8; MAC_LEN]>);

impl std::fmt::Debug for Cookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cookie([redacted])")
    }
}

impl Cookie {
    /// `mac2` for a message with both MACs at its end.
    pub(crate) fn mac2(&self, message: &[u8]) -> [u8; MAC_LEN] {
        mac(self.0.expose(), &message[..message.len() - MAC_LEN])
    }

    /// Writes `mac2` into an initiation.
    pub fn stamp(&self, initiation: &mut [u8; INITIATION_LEN]) {
        let mac2 = self.mac2(initiation);
        initiation[INITIATION_LEN - MAC_LEN..].copy_from_slice(&mac2);
    }
}

/// The responder's cookie secret, replaced every [`COOKIE_SECRET_LIFETIME`] (lazily, on the
/// caller's clock).
#[derive(Default)]
pub(crate) struct CookieSecret {
    secret: Option<(Secret<[u8; 32]>, Instant)>,
}

impl CookieSecret {
    /// The cookie for `source` now.
    pub(crate) fn cookie(
        &mut self,
        source: SocketAddr,
        now: Instant,
        rng: &mut impl Random,
    ) -> Cookie {
        let fresh = self
            .secret
            .as_ref()
            .is_some_and(|(_, born)| now.saturating_duration_since(*born) < COOKIE_SECRET_LIFETIME);
        if !fresh {
            let mut s = Secret::new([0u8; 32]);
            rng.fill(s.expose_mut());
            self.secret = Some((s, now));
        }
        let (secret, _) = self.secret.as_ref().expect("set above");
        // The address family, the address, the port: no two sources share an encoding.
        let mut bytes = [0u8; 1 + 16 + 2];
        let n = match source.ip() {
            std::net::IpAddr::V4(ip) => {
                bytes[0] = 4;
                bytes[1..5].copy_from_slice(&ip.octets());
                5
            }
            std::net::IpAddr::V6(ip) => {
                bytes[0] = 6;
                bytes[1..17].copy_from_slice(&ip.octets());
                17
            }
        };
        bytes[n..n + 2].copy_from_slice(&source.port().to_le_bytes());
        Cookie(Secret::new(mac(secret.expose(), &bytes[..n + 2])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SeededRng;

    #[test]
    fn cookies_depend_on_the_address_and_port_and_change_with_the_secret() {
        let mut s = CookieSecret::default();
        let mut rng = SeededRng::new(1);
        let t = Instant::now();
        let a: SocketAddr = "198.18.0.1:6786".parse().unwrap();
        let b: SocketAddr = "198.18.0.1:6787".parse().unwrap();
        let c: SocketAddr = "198.18.0.2:6786".parse().unwrap();
        let ca = s.cookie(a, t, &mut rng);
        let expose = |c: &Cookie| *c.0.expose();
        assert_eq!(expose(&ca), expose(&s.cookie(a, t, &mut rng)));
        assert_ne!(expose(&ca), expose(&s.cookie(b, t, &mut rng)));
        assert_ne!(expose(&ca), expose(&s.cookie(c, t, &mut rng)));
        let later = t + COOKIE_SECRET_LIFETIME - Duration::from_millis(1);
        assert_eq!(expose(&ca), expose(&s.cookie(a, later, &mut rng)));
        let rotated = t + COOKIE_SECRET_LIFETIME;
        assert_ne!(expose(&ca), expose(&s.cookie(a, rotated, &mut rng)));
    }

    #[test]
    fn a_sealed_cookie_opens_only_with_its_key_nonce_and_mac1() {
        let keys = MacKeys::derive(&[7; 32]);
        let other = MacKeys::derive(&[8; 32]);
        let cookie = Cookie(Secret::new([0x42; MAC_LEN]));
        let (nonce, mac1) = ([1u8; COOKIE_NONCE_LEN], [2u8; MAC_LEN]);
        let sealed = keys.seal_cookie(&cookie, &nonce, &mac1);
        let opened = keys.open_cookie(&nonce, &sealed, &mac1).unwrap();
        assert_eq!(opened.0.expose(), cookie.0.expose());
        assert!(other.open_cookie(&nonce, &sealed, &mac1).is_none());
        assert!(
            keys.open_cookie(&[9; COOKIE_NONCE_LEN], &sealed, &mac1)
                .is_none()
        );
        assert!(keys.open_cookie(&nonce, &sealed, &[3; MAC_LEN]).is_none());
        for byte in 0..sealed.len() {
            let mut bad = sealed;
            bad[byte] ^= 1;
            assert!(keys.open_cookie(&nonce, &bad, &mac1).is_none());
        }
        assert!(keys.open_cookie(&nonce, &sealed[1..], &mac1).is_none());
    }

    #[test]
    fn mac1_keys_differ_by_secret_and_purpose() {
        let keys = MacKeys::derive(&[7; 32]);
        assert_ne!(keys.mac1(b"m"), MacKeys::derive(&[8; 32]).mac1(b"m"));
        assert_ne!(keys.mac1.expose(), keys.cookie.expose());
        assert_ne!(keys.mac1(b"m"), keys.mac1(b"n"));
        assert!(same(&keys.mac1(b"m"), &keys.mac1(b"m")));
        assert!(!same(&keys.mac1(b"m"), &keys.mac1(b"n")));
    }
}
