//! Static X25519 identities, the cluster join secret, and the key file on disk.
//!
//! A node's identity is its public key (DESIGN.md §3); names are only labels.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use curve25519_dalek::montgomery::MontgomeryPoint;

use crate::random::{OsRandom, Random};
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

    /// Reads a key file written by [`KeyPair::save`]: base64 of the private key on one line.
    ///
    /// The file is opened once, without following a symbolic link, and checked through that
    /// open file: it must be a regular file owned by us that group and others cannot read
    /// (one they can is refused: the key would already be exposed).
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let at = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc_o_nofollow())
            .open(path)
            .map_err(at)?;
        let meta = file.metadata().map_err(at)?;
        let mode = meta.permissions().mode() & 0o777;
        if !meta.is_file() {
            return Err(KeyFileError::Malformed {
                path: path.to_owned(),
                source: ParseKeyError::Base64("not a regular file".into()),
            });
        }
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { geteuid() };
        if meta.uid() != me {
            return Err(KeyFileError::Owner {
                path: path.to_owned(),
                owner: meta.uid(),
                me,
            });
        }
        // A key file is 45 bytes; read at most a little more, into a buffer wiped on drop.
        let mut text = Secret::new(Vec::with_capacity(128));
        (&mut file)
            .take(4096)
            .read_to_end(text.expose_mut())
            .map_err(at)?;
        let private = std::str::from_utf8(text.expose())
            .map_err(|_| ParseKeyError::Base64("not text".into()))
            .and_then(decode_key)
            .map_err(|source| KeyFileError::Malformed {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self::from_private(private))
    }

    /// Writes the private key to `path` with mode 0600, atomically (temporary file, fsync,
    /// rename, fsync of the directory), so a crash leaves either the old file or the new one.
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        self.write_file(path, Replace::Yes)
    }

    fn write_file(&self, path: &Path, replace: Replace) -> Result<(), KeyFileError> {
        let at = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        let mut text = Secret::new(String::with_capacity(64));
        BASE64.encode_string(self.private.expose(), text.expose_mut());
        text.expose_mut().push('\n');
        write_private_file(path, text.expose().as_bytes(), replace).map_err(at)
    }

    /// Loads the key at `path`, or makes one and saves it there when no file exists. Two
    /// processes racing here end up with the same key: the file is created without replacing
    /// one that appeared meanwhile, and the loser loads the winner's.
    pub fn load_or_generate(path: &Path, rng: &mut impl Random) -> Result<Self, KeyFileError> {
        match fs::symlink_metadata(path) {
            Ok(_) => Self::load(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let pair = Self::generate(rng);
                match pair.write_file(path, Replace::No) {
                    Ok(()) => Ok(pair),
                    Err(KeyFileError::Io { source, .. })
                        if source.kind() == io::ErrorKind::AlreadyExists =>
                    {
                        Self::load(path)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(source) => Err(KeyFileError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Replace {
    Yes,
    No,
}

unsafe extern "C" {
    fn geteuid() -> u32;
}

/// `O_NOFOLLOW` on Linux (asm-generic/fcntl.h).
const fn libc_o_nofollow() -> i32 {
    0o400000
}

/// Writes `bytes` to `path` through a 0600 temporary file in the same directory, named with
/// random bytes (a fixed name such as one with the pid could be left by a crash and block
/// every later write; in a container the pid is often 1 every time).
fn write_private_file(path: &Path, bytes: &[u8], replace: Replace) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tag = [0u8; 8];
    OsRandom.fill(&mut tag);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{:016x}", u64::from_le_bytes(tag)));
    let tmp = dir.join(tmp_name);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let result = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        match replace {
            Replace::Yes => fs::rename(&tmp, path)?,
            // link(2) fails if `path` exists: create-if-absent, atomically.
            Replace::No => fs::hard_link(&tmp, path)?,
        }
        fs::File::open(&dir)?.sync_all()
    })();
    // After a rename this finds nothing; after a link, or a failure, it removes the temporary.
    let _ = fs::remove_file(&tmp);
    result
}

/// What went wrong with a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Group or others may read the file.
    #[error(
        "key file {path} has mode {mode:04o}: group or others can read it; \
         a private key must be 0600 (chmod 600 {path})"
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file belongs to another user.
    #[error("key file {path} is owned by uid {owner}, not by us (uid {me})")]
    Owner {
        /// The key file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        me: u32,
    },
    /// The file does not hold one base64 key.
    #[error("key file {path} does not hold a key: {source}")]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong with its text.
        source: ParseKeyError,
    },
}

/// The cluster join secret: whoever knows it is a member (DESIGN.md §3). Mixed into every
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

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weft-keys-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

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
    fn save_then_load_gives_the_same_key_with_mode_0600() {
        let dir = temp_dir("save");
        let path = dir.join("key");
        let pair = KeyPair::generate(&mut OsRandom);
        pair.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(KeyPair::load(&path).unwrap().public(), pair.public());
        // load_or_generate keeps an existing key.
        let again = KeyPair::load_or_generate(&path, &mut OsRandom).unwrap();
        assert_eq!(again.public(), pair.public());
        // ...and makes one where none exists.
        let fresh = KeyPair::load_or_generate(&dir.join("new"), &mut OsRandom).unwrap();
        assert_ne!(fresh.public(), pair.public());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = temp_dir("perm");
        let path = dir.join("key");
        KeyPair::generate(&mut OsRandom).save(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = KeyPair::load(&path).unwrap_err();
        assert!(
            matches!(err, KeyFileError::Permissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_symlink_is_not_followed_and_racing_generators_agree() {
        let dir = temp_dir("link");
        let real = dir.join("real");
        KeyPair::generate(&mut OsRandom).save(&real).unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(KeyPair::load(&link), Err(KeyFileError::Io { .. })));
        // Many threads create the same key file at once: they all end with the one on disk.
        let path = dir.join("shared");
        let keys: Vec<PublicKey> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        KeyPair::load_or_generate(&path, &mut OsRandom)
                            .unwrap()
                            .public()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let on_disk = KeyPair::load(&path).unwrap().public();
        assert!(
            keys.iter().all(|k| *k == on_disk),
            "{keys:?} vs {on_disk:?}"
        );
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_malformed_key_file_is_refused() {
        let dir = temp_dir("bad");
        let path = dir.join("key");
        write_private_file(&path, b"not a key\n", Replace::Yes).unwrap();
        assert!(matches!(
            KeyPair::load(&path),
            Err(KeyFileError::Malformed { .. })
        ));
        fs::remove_dir_all(dir).unwrap();
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
