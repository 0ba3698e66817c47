//! Static X25519 identities, the cluster join secret, and the text encoding of both.
//!
//! A node's identity is its public key (docs/design.md §3); names are only labels. The key
//! *file* (permissions, owner, atomic writes) is the router's: this crate does no I/O.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use curve25519_dalek::montgomery::MontgomeryPoint;

use crate::random::Random;
use crate::secret::Secret;

/// Length of an X25519 key, public or private.
pub const KEY_LEN: usize = 32;

/// The shortest join secret accepted: 16 bytes. A short secret could be guessed offline from
/// one captured initiation; `weft keygen --join-secret` makes a 32-byte random one.
pub const MIN_JOIN_SECRET_LEN: usize = 16;

/// A node's public key, and so its identity. Shown and parsed as standard base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// Why a base64 key could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseKeyError {
    /// The text is not standard base64.
    #[error("a key must be standard base64 ({0})")]
    Base64(String),
    /// The text decoded to something other than 32 bytes.
    #[error("a key is 32 bytes, this decodes to {0}")]
    Length(usize),
}

fn decode_key(text: &str) -> Result<[u8; KEY_LEN], ParseKeyError> {
    // The decoded bytes may be a private key: wipe the temporary buffer too.
    let bytes = Secret::new(
        BASE64
            .decode(text.trim())
            .map_err(|e| ParseKeyError::Base64(e.to_string()))?,
    );
    bytes
        .expose()
        .as_slice()
        .try_into()
        .map_err(|_| ParseKeyError::Length(bytes.expose().len()))
}

impl FromStr for PublicKey {
    type Err = ParseKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode_key(s).map(Self)
    }
}

/// A node's static key pair. The private half never prints and is zeroed on drop.
#[derive(Clone)]
pub struct KeyPair {
    private: Secret<[u8; KEY_LEN]>,
    public: PublicKey,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .field("private", &self.private)
            .finish()
    }
}

impl KeyPair {
    /// Makes a new key pair from `rng`.
    pub fn generate(rng: &mut impl Random) -> Self {
        let mut private = [0u8; KEY_LEN];
        rng.fill(&mut private);
        Self::from_private(private)
    }

    /// Rebuilds a key pair from its private key (clamped as RFC 7748 §5 says when used).
    pub fn from_private(private: [u8; KEY_LEN]) -> Self {
        let public = PublicKey(MontgomeryPoint::mul_base_clamped(private).to_bytes());
        Self {
            private: Secret::new(private),
            public,
        }
    }

    /// The public half: this node's identity.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub(crate) fn private(&self) -> &Secret<[u8; KEY_LEN]> {
        &self.private
    }

    /// The private key as standard base64 (the key file's content, without its newline), in
    /// a string wiped on drop.
    pub fn encode_private(&self) -> Secret<String> {
        let mut text = Secret::new(String::with_capacity(64));
        BASE64.encode_string(self.private.expose(), text.expose_mut());
        text
    }

    /// Rebuilds a key pair from the base64 of its private key ([`KeyPair::encode_private`]);
    /// surrounding white space (a trailing newline) is ignored.
    pub fn decode_private(text: &str) -> Result<Self, ParseKeyError> {
        decode_key(text).map(Self::from_private)
    }
}

/// The cluster join secret: whoever knows it is a member (docs/design.md §3). Mixed into every
/// handshake as the Noise PSK.
///
/// One captured initiation lets an eavesdropper test guesses of the secret offline (as with
/// any PSK), and the derivation below is a single hash: use a generated secret
/// (`weft keygen --join-secret`, 256 random bits), not a passphrase.
#[derive(Clone, Debug)]
pub struct JoinSecret {
    /// SHA-256("weft join secret v1\0" || secret): any length of secret becomes a 32-byte PSK.
    psk: Secret<[u8; 32]>,
}

/// Why a join secret was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinSecretError {
    /// Fewer than [`MIN_JOIN_SECRET_LEN`] bytes after trimming white space.
    #[error(
        "the join secret is {0} bytes long; at least {MIN_JOIN_SECRET_LEN} are needed \
         (make one with `weft keygen --join-secret`)"
    )]
    TooShort(usize),
}

impl JoinSecret {
    /// Takes the secret as written in a file or variable; surrounding white space (a trailing
    /// newline) is not part of it.
    pub fn new(secret: &[u8]) -> Result<Self, JoinSecretError> {
        let trimmed = secret.trim_ascii();
        if trimmed.len() < MIN_JOIN_SECRET_LEN {
            return Err(JoinSecretError::TooShort(trimmed.len()));
        }
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"weft join secret v1\0");
        ctx.update(trimmed);
        let mut psk = [0u8; 32];
        psk.copy_from_slice(ctx.finish().as_ref());
        Ok(Self {
            psk: Secret::new(psk),
        })
    }

    /// Makes a new random join secret, returned as the base64 text to store.
    pub fn generate_text(rng: &mut impl Random) -> Secret<String> {
        let mut raw = Secret::new([0u8; 32]);
        rng.fill(raw.expose_mut());
        Secret::new(BASE64.encode(raw.expose()))
    }

    pub(crate) fn psk(&self) -> &[u8; 32] {
        self.psk.expose()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::random::OsRandom;

    #[test]
    fn public_key_round_trips_through_base64() {
        let pair = KeyPair::generate(&mut OsRandom);
        let text = pair.public().to_string();
        assert_eq!(text.len(), 44);
        assert_eq!(text.parse::<PublicKey>().unwrap(), pair.public());
        assert!(matches!(
            "abc".parse::<PublicKey>(),
            Err(ParseKeyError::Base64(_))
        ));
        assert_eq!("AAAA".parse::<PublicKey>(), Err(ParseKeyError::Length(3)));
    }

    #[test]
    fn matches_rfc7748_test_vector() {
        // RFC 7748 §6.1: Alice's private and public key.
        let private: [u8; 32] =
            hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let public = hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(KeyPair::from_private(private).public().as_bytes(), &public);
    }

    pub(crate) fn hex(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn the_private_key_round_trips_through_base64() {
        let pair = KeyPair::generate(&mut OsRandom);
        let text = pair.encode_private();
        assert_eq!(text.expose().len(), 44);
        let back = KeyPair::decode_private(&format!("{}\n", text.expose())).unwrap();
        assert_eq!(back.public(), pair.public());
        assert_eq!(back.private().expose(), pair.private().expose());
        assert!(matches!(
            KeyPair::decode_private("not a key"),
            Err(ParseKeyError::Base64(_))
        ));
        assert_eq!(
            KeyPair::decode_private("AAAA").unwrap_err(),
            ParseKeyError::Length(3)
        );
    }

    #[test]
    fn join_secret_needs_sixteen_bytes_and_ignores_surrounding_space() {
        assert_eq!(
            JoinSecret::new(b"short\n").unwrap_err(),
            JoinSecretError::TooShort(5)
        );
        let a = JoinSecret::new(b"0123456789abcdef\n").unwrap();
        let b = JoinSecret::new(b"  0123456789abcdef").unwrap();
        assert_eq!(a.psk(), b.psk());
        assert!(!format!("{a:?}").contains("0123"));
        let generated = JoinSecret::generate_text(&mut OsRandom);
        assert!(JoinSecret::new(generated.expose().as_bytes()).is_ok());
    }
}
