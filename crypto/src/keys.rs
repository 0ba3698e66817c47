//! Static X25519 identities, the cluster join secret, and the text encoding of both.
//!
//! A node's identity is its public key (docs/design.md §3); names are only labels. The key
//! *file* (permissions, owner, atomic writes) is the router's: this crate does no I/O.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use curve25519_dalek::montgomery::MontgomeryPoint;

use crate::cookie::MacKeys;
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

/// The cluster name used when none is given (`--cluster-name`).
pub const DEFAULT_CLUSTER_NAME: &str = "weft";

/// The longest cluster name accepted.
pub const MAX_CLUSTER_NAME_LEN: usize = 64;

/// At most this many join secrets are accepted at once (the primary and the others): each
/// costs a derivation when loaded and one more AEAD attempt on a refused first message.
pub const MAX_JOIN_SECRETS: usize = 4;

/// Argon2id cost of the join secret derivation: OWASP's m = 7 MiB, t = 5, p = 1. It runs once
/// per secret when loaded, never per handshake.
pub const ARGON2_MEMORY_KIB: u32 = 7 * 1024;
/// Argon2id passes (see [`ARGON2_MEMORY_KIB`]).
pub const ARGON2_PASSES: u32 = 5;

/// Salt label of the derivation. v1 was one SHA-256 without a cluster name: routers of that
/// version and this one derive different PSKs and do not connect.
const DERIVATION_LABEL: &[u8] = b"weft join secret v2\0";

/// The cluster join secret: whoever knows it is a member (docs/design.md §3). Mixed into every
/// handshake as the Noise PSK.
///
/// One captured initiation lets an eavesdropper test guesses of the secret offline (as with
/// any PSK). The PSK is Argon2id of the secret salted with the cluster name, so each guess
/// costs 7 MiB and five passes, and a table of guesses made for one cluster name is useless
/// for another. Still, use a generated secret (`weft keygen --join-secret`, 256 random bits).
#[derive(Clone, Debug)]
pub struct JoinSecret {
    /// Argon2id(secret, "weft join secret v2\0" || cluster name), 32 bytes.
    psk: Secret<[u8; 32]>,
    id: JoinSecretId,
    /// The `mac1` and cookie keys this PSK gives, derived once here: every initiation that
    /// arrives is checked against each accepted secret's `mac1` key before anything else.
    macs: MacKeys,
}

/// A short public fingerprint of a derived join secret: tells which secret made a session
/// without showing it (it is a hash of the Argon2id output, so testing a guess against it
/// costs the same Argon2id as testing it against a captured initiation).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JoinSecretId([u8; 4]);

impl fmt::Display for JoinSecretId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for JoinSecretId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinSecretId({self})")
    }
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
    /// The cluster name is empty, too long, or holds white space or control characters.
    #[error(
        "the cluster name must be 1 to {MAX_CLUSTER_NAME_LEN} printable ASCII characters \
         without spaces, got {0:?}"
    )]
    ClusterName(String),
    /// A join secret file or variable with no secret in it.
    #[error("no join secret: the text is empty")]
    Empty,
    /// More lines than [`MAX_JOIN_SECRETS`].
    #[error("{0} join secrets given; at most {MAX_JOIN_SECRETS} are accepted at once")]
    TooMany(usize),
    /// The same secret on two lines.
    #[error("line {0} repeats an earlier join secret")]
    Duplicate(usize),
    /// A line of a join secret file was refused.
    #[error("join secret on line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// Why.
        reason: Box<JoinSecretError>,
    },
}

/// Checks a cluster name (the derivation's salt): 1 to [`MAX_CLUSTER_NAME_LEN`] printable
/// ASCII characters, no white space.
pub fn check_cluster_name(name: &str) -> Result<(), JoinSecretError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CLUSTER_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(JoinSecretError::ClusterName(name.to_owned()))
    }
}

impl JoinSecret {
    /// Takes the secret as written in a file or variable; surrounding white space (a trailing
    /// newline) is not part of it. `cluster` is the cluster name (`--cluster-name`): the same
    /// secret in two clusters of other names gives two PSKs. Runs Argon2id (tens of ms in a
    /// release build): derive once and clone.
    pub fn new(secret: &[u8], cluster: &str) -> Result<Self, JoinSecretError> {
        check_cluster_name(cluster)?;
        let trimmed = secret.trim_ascii();
        if trimmed.len() < MIN_JOIN_SECRET_LEN {
            return Err(JoinSecretError::TooShort(trimmed.len()));
        }
        let mut salt = Vec::with_capacity(DERIVATION_LABEL.len() + cluster.len());
        salt.extend_from_slice(DERIVATION_LABEL);
        salt.extend_from_slice(cluster.as_bytes());
        let params = argon2::Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, 1, Some(32))
            .expect("constant parameters are valid");
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut psk = Secret::new([0u8; 32]);
        argon
            .hash_password_into(trimmed, &salt, psk.expose_mut())
            .expect("the salt is long enough and the output 32 bytes");
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"weft join secret id\0");
        ctx.update(psk.expose());
        let mut id = [0u8; 4];
        id.copy_from_slice(&ctx.finish().as_ref()[..4]);
        Ok(Self {
            macs: MacKeys::derive(psk.expose()),
            psk,
            id: JoinSecretId(id),
        })
    }

    /// Makes a new random join secret, returned as the base64 text to store.
    pub fn generate_text(rng: &mut impl Random) -> Secret<String> {
        let mut raw = Secret::new([0u8; 32]);
        rng.fill(raw.expose_mut());
        Secret::new(BASE64.encode(raw.expose()))
    }

    /// This secret's public fingerprint.
    pub fn id(&self) -> JoinSecretId {
        self.id
    }

    pub(crate) fn psk(&self) -> &[u8; 32] {
        self.psk.expose()
    }

    pub(crate) fn mac_keys(&self) -> &MacKeys {
        &self.macs
    }
}

/// The join secrets a node accepts: the primary, which its initiations use, and up to
/// [`MAX_JOIN_SECRETS`]` - 1` others that responders also accept (during a rotation, docs/design.md
/// §3). A join secret file holds one per line, the primary first.
#[derive(Clone, Debug)]
pub struct JoinSecrets {
    primary: JoinSecret,
    others: Vec<JoinSecret>,
}

impl From<JoinSecret> for JoinSecrets {
    fn from(primary: JoinSecret) -> Self {
        Self {
            primary,
            others: Vec::new(),
        }
    }
}

impl PartialEq for JoinSecrets {
    fn eq(&self, other: &Self) -> bool {
        self.ids().eq(other.ids())
    }
}

impl Eq for JoinSecrets {}

impl JoinSecrets {
    /// The primary and the others, already derived (a simulator shares derived secrets among
    /// its nodes). Refuses more than [`MAX_JOIN_SECRETS`] in all, and repeats.
    pub fn new(primary: JoinSecret, others: Vec<JoinSecret>) -> Result<Self, JoinSecretError> {
        if others.len() >= MAX_JOIN_SECRETS {
            return Err(JoinSecretError::TooMany(others.len() + 1));
        }
        let secrets = Self { primary, others };
        let ids: Vec<JoinSecretId> = secrets.ids().collect();
        for (n, id) in ids.iter().enumerate() {
            if ids[..n].contains(id) {
                return Err(JoinSecretError::Duplicate(n + 1));
            }
        }
        Ok(secrets)
    }

    /// Reads a join secret file's content: one secret per line, the primary first; blank
    /// lines and white space around each secret are ignored. Every line is checked before any
    /// is derived, so bad text fails fast.
    pub fn parse(text: &[u8], cluster: &str) -> Result<Self, JoinSecretError> {
        Self::parse_with(text, cluster, |line| JoinSecret::new(line, cluster))
    }

    /// [`JoinSecrets::parse`] with another way to derive each line (a cache of derived
    /// secrets, in simulators and tests).
    pub fn parse_with(
        text: &[u8],
        cluster: &str,
        mut derive: impl FnMut(&[u8]) -> Result<JoinSecret, JoinSecretError>,
    ) -> Result<Self, JoinSecretError> {
        check_cluster_name(cluster)?;
        let mut lines: Vec<(usize, &[u8])> = Vec::new();
        for (n, line) in text.split(|b| *b == b'\n').enumerate() {
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            if line.len() < MIN_JOIN_SECRET_LEN {
                return Err(JoinSecretError::Line {
                    line: n + 1,
                    reason: Box::new(JoinSecretError::TooShort(line.len())),
                });
            }
            if lines.iter().any(|(_, l)| *l == line) {
                return Err(JoinSecretError::Duplicate(n + 1));
            }
            lines.push((n + 1, line));
        }
        if lines.is_empty() {
            return Err(JoinSecretError::Empty);
        }
        if lines.len() > MAX_JOIN_SECRETS {
            return Err(JoinSecretError::TooMany(lines.len()));
        }
        let mut derived = Vec::with_capacity(lines.len());
        for (n, line) in lines {
            derived.push(derive(line).map_err(|e| JoinSecretError::Line {
                line: n,
                reason: Box::new(e),
            })?);
        }
        let primary = derived.remove(0);
        Self::new(primary, derived)
    }

    /// The secret initiations use.
    pub fn primary(&self) -> &JoinSecret {
        &self.primary
    }

    /// Every accepted secret, the primary first.
    pub fn accepted(&self) -> impl Iterator<Item = &JoinSecret> {
        std::iter::once(&self.primary).chain(&self.others)
    }

    /// The fingerprints of [`JoinSecrets::accepted`], in that order.
    pub fn ids(&self) -> impl Iterator<Item = JoinSecretId> + '_ {
        self.accepted().map(JoinSecret::id)
    }

    /// Whether a session made with the secret `id` would still be accepted today.
    pub fn accepts(&self, id: JoinSecretId) -> bool {
        self.ids().any(|i| i == id)
    }

    /// How many secrets are accepted (1 to [`MAX_JOIN_SECRETS`]).
    pub fn len(&self) -> usize {
        1 + self.others.len()
    }

    /// Never empty: there is always a primary.
    pub fn is_empty(&self) -> bool {
        false
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
        let c = DEFAULT_CLUSTER_NAME;
        assert_eq!(
            JoinSecret::new(b"short\n", c).unwrap_err(),
            JoinSecretError::TooShort(5)
        );
        let a = JoinSecret::new(b"0123456789abcdef\n", c).unwrap();
        let b = JoinSecret::new(b"  0123456789abcdef", c).unwrap();
        assert_eq!(a.psk(), b.psk());
        assert!(!format!("{a:?}").contains("0123"));
        let generated = JoinSecret::generate_text(&mut OsRandom);
        assert!(JoinSecret::new(generated.expose().as_bytes(), c).is_ok());
    }

    #[test]
    fn the_derivation_is_argon2id_salted_with_the_cluster_name() {
        // Known answer, so that a change of parameters or label cannot pass unnoticed (it
        // would split a cluster of mixed versions): Argon2id v1.3, m = 7168 KiB, t = 5,
        // p = 1, salt "weft join secret v2\0weft", 32 bytes.
        let a = JoinSecret::new(b"0123456789abcdef", DEFAULT_CLUSTER_NAME).unwrap();
        assert_eq!(a.psk(), &hex(KNOWN_PSK));
        let same = JoinSecret::new(b"0123456789abcdef", "weft").unwrap();
        assert_eq!(a.psk(), same.psk());
        assert_eq!(a.id(), same.id());
        let other = JoinSecret::new(b"0123456789abcdef", "another-cluster").unwrap();
        assert_ne!(a.psk(), other.psk());
        assert_ne!(a.id(), other.id());
        for bad in [
            "",
            "with space",
            "tab\there",
            &"x".repeat(MAX_CLUSTER_NAME_LEN + 1),
        ] {
            assert_eq!(
                JoinSecret::new(b"0123456789abcdef", bad).unwrap_err(),
                JoinSecretError::ClusterName(bad.to_owned())
            );
        }
    }

    // Computed independently with the reference C implementation (libargon2, through
    // argon2-cffi's `hash_secret_raw`) from the same inputs.
    const KNOWN_PSK: &str = "c78ce8e815ed46c882a489ce6cfb4eea22c6a6fd89fb4df8feb774b6eb18b133";

    #[test]
    fn a_join_secret_file_holds_the_primary_first_then_the_others() {
        let c = DEFAULT_CLUSTER_NAME;
        let one = JoinSecrets::parse(b"0123456789abcdef\n", c).unwrap();
        assert_eq!(one.len(), 1);
        let two = JoinSecrets::parse(b"\n  fedcba9876543210 \n\n0123456789abcdef\n", c).unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(
            two.primary().id(),
            JoinSecret::new(b"fedcba9876543210", c).unwrap().id()
        );
        assert!(two.accepts(one.primary().id()));
        assert!(!one.accepts(two.primary().id()));
        assert_ne!(one, two);
        assert_eq!(
            JoinSecrets::parse(b"fedcba9876543210\nshort\n", c).unwrap_err(),
            JoinSecretError::Line {
                line: 2,
                reason: Box::new(JoinSecretError::TooShort(5))
            }
        );
        assert_eq!(
            JoinSecrets::parse(b"\n \n", c).unwrap_err(),
            JoinSecretError::Empty
        );
        assert_eq!(
            JoinSecrets::parse(b"0123456789abcdef\n0123456789abcdef", c).unwrap_err(),
            JoinSecretError::Duplicate(2)
        );
        let five: String = (0..5)
            .map(|i| format!("secret number {i} of five\n"))
            .collect();
        assert_eq!(
            JoinSecrets::parse(five.as_bytes(), c).unwrap_err(),
            JoinSecretError::TooMany(5)
        );
        // Bad text fails before any derivation.
        let mut derived = 0;
        let _ = JoinSecrets::parse_with(b"0123456789abcdef\nshort", c, |l| {
            derived += 1;
            JoinSecret::new(l, c)
        });
        assert_eq!(derived, 0);
    }
}
