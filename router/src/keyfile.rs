//! The node's key file: base64 of the private key on one line ([`KeyPair::encode_private`]),
//! mode 0600, owned by us. The key types and their encoding are weft-crypto's (which does no
//! I/O); the file's permissions, owner and atomic writes are the system's side, kept here.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use weft_crypto::{KeyPair, ParseKeyError, Random, Secret};
use weft_sys::durable;

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
    /// [`create`] found a file (or a link) already there, and left it as it was.
    #[error(
        "key file {path} already exists; a node's key is its identity, so it is never \
         replaced (remove it first if you really mean to)"
    )]
    Exists {
        /// The key file.
        path: PathBuf,
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

/// Reads a key file written by [`save`].
///
/// The file is opened once, without following a symbolic link, and checked through that open
/// file: it must be a regular file owned by us that group and others cannot read (one they can
/// is refused: the key would already be exposed).
pub fn load(path: &Path) -> Result<KeyPair, KeyFileError> {
    let at = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
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
    let me = weft_sys::effective_uid();
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
    std::str::from_utf8(text.expose())
        .map_err(|_| ParseKeyError::Base64("not text".into()))
        .and_then(KeyPair::decode_private)
        .map_err(|source| KeyFileError::Malformed {
            path: path.to_owned(),
            source,
        })
}

/// Writes the private key to `path` with mode 0600, atomically (temporary file, fsync,
/// rename, fsync of the directory), so a crash leaves either the old file or the new one.
pub fn save(pair: &KeyPair, path: &Path) -> Result<(), KeyFileError> {
    write(pair, path, durable::write_atomic)
}

/// Writes the private key to a new file at `path`, mode 0600, like [`save`] but only if
/// nothing is there: the check and the creation are one step (`link(2)` of a complete
/// temporary file), so a key that appears meanwhile is never replaced. An existing file, or
/// a symbolic link, is [`KeyFileError::Exists`].
pub fn create(pair: &KeyPair, path: &Path) -> Result<(), KeyFileError> {
    match write(pair, path, durable::create_atomic) {
        Err(KeyFileError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
            Err(KeyFileError::Exists {
                path: path.to_owned(),
            })
        }
        other => other,
    }
}

/// Loads the key at `path`, or makes one and saves it there when no file exists. Two
/// processes racing here end up with the same key: the file is created without replacing one
/// that appeared meanwhile, and the loser loads the winner's.
pub fn load_or_generate(path: &Path, rng: &mut impl Random) -> Result<KeyPair, KeyFileError> {
    match fs::symlink_metadata(path) {
        Ok(_) => load(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let pair = KeyPair::generate(rng);
            match create(&pair, path) {
                Ok(()) => Ok(pair),
                Err(KeyFileError::Exists { .. }) => load(path),
                Err(e) => Err(e),
            }
        }
        Err(source) => Err(KeyFileError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn write(
    pair: &KeyPair,
    path: &Path,
    how: fn(&Path, &[u8], u32) -> io::Result<()>,
) -> Result<(), KeyFileError> {
    let mut text = pair.encode_private();
    text.expose_mut().push('\n');
    how(path, text.expose().as_bytes(), 0o600).map_err(|source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_crypto::{OsRandom, PublicKey};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weft-keys-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn save_then_load_gives_the_same_key_with_mode_0600() {
        let dir = temp_dir("save");
        let path = dir.join("key");
        let pair = KeyPair::generate(&mut OsRandom);
        save(&pair, &path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).unwrap().public(), pair.public());
        // load_or_generate keeps an existing key.
        let again = load_or_generate(&path, &mut OsRandom).unwrap();
        assert_eq!(again.public(), pair.public());
        // ...and makes one where none exists.
        let fresh = load_or_generate(&dir.join("new"), &mut OsRandom).unwrap();
        assert_ne!(fresh.public(), pair.public());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = temp_dir("perm");
        let path = dir.join("key");
        save(&KeyPair::generate(&mut OsRandom), &path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&path).unwrap_err();
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
        save(&KeyPair::generate(&mut OsRandom), &real).unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(load(&link), Err(KeyFileError::Io { .. })));
        // Many threads create the same key file at once: they all end with the one on disk.
        let path = dir.join("shared");
        let keys: Vec<PublicKey> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| load_or_generate(&path, &mut OsRandom).unwrap().public()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let on_disk = load(&path).unwrap().public();
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
    fn create_never_replaces_a_key_or_follows_a_link() {
        let dir = temp_dir("create");
        let path = dir.join("key");
        let first = KeyPair::generate(&mut OsRandom);
        create(&first, &path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = create(&KeyPair::generate(&mut OsRandom), &path).unwrap_err();
        assert!(matches!(err, KeyFileError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(load(&path).unwrap().public(), first.public());
        // A link, even a dangling one, is something there: nothing is written through it.
        let link = dir.join("link");
        std::os::unix::fs::symlink(dir.join("nowhere"), &link).unwrap();
        let err = create(&KeyPair::generate(&mut OsRandom), &link).unwrap_err();
        assert!(matches!(err, KeyFileError::Exists { .. }), "{err}");
        assert!(!dir.join("nowhere").exists());
        // Nothing else is left in the directory (no temporary files).
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["key", "link"]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_malformed_key_file_is_refused() {
        let dir = temp_dir("bad");
        let path = dir.join("key");
        durable::write_atomic(&path, b"not a key\n", 0o600).unwrap();
        assert!(matches!(load(&path), Err(KeyFileError::Malformed { .. })));
        fs::remove_dir_all(dir).unwrap();
    }
}
