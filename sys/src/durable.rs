//! Atomic, durable file writes: the one implementation behind every file weft writes for
//! another process or for its next start (leases, the node-block file, the mesh state, key
//! files, the installed plugin and its conflist).
//!
//! A reader sees either the old file or the new one, never a torn one (rename is atomic), and
//! once a call returns the change survives a power loss (file and directory are fsynced).
//!
//! # Temporary files, crashes and concurrent writers
//!
//! A write goes through `.tmp-<name>-<16 hex digits>` in the target's directory. The suffix is
//! random and the file is created exclusively, with a new name on a clash, so a leftover never
//! blocks a write. (A name from the pid and a counter did: the router is PID 1 in its container
//! on every start, so a crash between create and rename left exactly the name the next start
//! tried first.)
//!
//! The rule for leftovers: a writer holds an exclusive `flock` on its temporary file from
//! creation until the rename. The kernel drops the lock when the process dies, however it
//! dies, so an unlocked temporary has no live writer. Each write first removes the unlocked
//! temporaries of *its own target* (and only those), and never one that is locked: two live
//! processes writing the same target never delete each other's in-flight file, and need no lock
//! of their own for it. A caller that serialises every writer of a directory under its own lock
//! (the CNI lease store) may also clear every name starting with [`TEMP_PREFIX`] there.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};

/// Temporary files start with this, so a crash's leftovers are recognisable (and libcni, which
/// reads only `.conf`, `.conflist` and `.json` files, never loads one).
pub const TEMP_PREFIX: &str = ".tmp-";

/// Hex digits of the random part of a temporary name (64 bits).
const TAG_DIGITS: usize = 16;

/// Names tried before giving up; a clash of 64 random bits means something else is wrong.
const CREATE_ATTEMPTS: usize = 8;

/// Writes `bytes` to `path` with permission bits `mode` (exactly: the umask does not apply),
/// atomically and durably: temporary file in the same directory, fsync, rename, fsync of the
/// directory. Replaces what was there.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write(path, bytes, mode, Replace::Yes)
}

/// Like [`write_atomic`], but only if `path` does not exist yet: otherwise it fails with
/// [`io::ErrorKind::AlreadyExists`] and leaves `path` as it is. Of several processes racing to
/// create the same file, exactly one succeeds (the file appears complete, through `link(2)`).
pub fn create_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write(path, bytes, mode, Replace::No)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Replace {
    Yes,
    No,
}

fn write(path: &Path, bytes: &[u8], mode: u32, replace: Replace) -> io::Result<()> {
    let (dir, name) = split(path)?;
    // Hygiene only: a leftover cannot block this write (its name is random), so a failure to
    // clear one is no reason to fail the write.
    let _ = remove_stale_temps(path);
    let (tmp, held) = create_temp(dir, name, mode)?;
    let result = (|| {
        let mut file = held.file();
        // The umask may have cut bits from the mode given at creation.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        match replace {
            Replace::Yes => fs::rename(&tmp, path)?,
            // link(2) fails if `path` exists: create-if-absent, atomically.
            Replace::No => fs::hard_link(&tmp, path)?,
        }
        sync_dir(dir)
    })();
    // After a rename the name is gone; after a link, or a failure, the temporary is removed
    // while we still hold its lock.
    if replace == Replace::No || result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    drop(held);
    result
}

/// An open temporary file, locked unless the file system cannot lock.
enum Held {
    Locked(Flock<File>),
    /// flock is not supported here: a cleaner cannot lock it either, so it leaves it alone.
    Unlocked(File),
}

impl Held {
    fn file(&self) -> &File {
        match self {
            Held::Locked(f) => f,
            Held::Unlocked(f) => f,
        }
    }
}

/// Creates and locks a fresh temporary file for target `name` in `dir`.
fn create_temp(dir: &Path, name: &OsStr, mode: u32) -> io::Result<(PathBuf, Held)> {
    for _ in 0..CREATE_ATTEMPTS {
        let tmp = dir.join(temp_name(name, random_tag()?));
        let file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .open(&tmp)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        let held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => Held::Locked(locked),
            // A cleaner found it between our create and our lock and will remove it.
            Err((_, Errno::EWOULDBLOCK)) => continue,
            Err((file, _)) => Held::Unlocked(file),
        };
        // A cleaner may also have locked, removed and released it in that gap: then the name
        // no longer leads to our file.
        if same_file(&tmp, held.file()) {
            return Ok((tmp, held));
        }
    }
    // Not AlreadyExists: that would read as "the target exists" to a create_atomic caller.
    Err(io::Error::other(format!(
        "no free temporary name for {} after {CREATE_ATTEMPTS} attempts",
        dir.join(name).display()
    )))
}

/// Removes the temporary files of target `path` that no live writer holds (see the module
/// documentation), and returns them. Symbolic links, directories and anything else that is not
/// a regular file are left alone.
pub fn remove_stale_temps(path: &Path) -> io::Result<Vec<PathBuf>> {
    let (dir, name) = split(path)?;
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        if !is_temp_of(&entry.file_name(), name) {
            continue;
        }
        let tmp = entry.path();
        // No link is followed and no fifo waited on; read access is enough for flock.
        let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
            .open(&tmp)
        else {
            continue;
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            continue;
        }
        // Locked: a live writer's. Not lockable at all: we cannot tell, so it stays.
        let Ok(locked) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        if !same_file(&tmp, &locked) {
            continue;
        }
        match fs::remove_file(&tmp) {
            Ok(()) => removed.push(tmp),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

fn temp_name(name: &OsStr, tag: u64) -> std::ffi::OsString {
    let mut tmp = std::ffi::OsString::from(TEMP_PREFIX);
    tmp.push(name);
    tmp.push(format!("-{tag:0width$x}", width = TAG_DIGITS));
    tmp
}

/// Whether `file` is a temporary of target `name`: `.tmp-<name>-` followed by our random tag,
/// or by `<pid>-<counter>` as earlier versions named them. The exact tail keeps target `f`
/// from claiming the temporaries of target `f-1`.
fn is_temp_of(file: &OsStr, name: &OsStr) -> bool {
    let Some(tail) = file
        .as_bytes()
        .strip_prefix(TEMP_PREFIX.as_bytes())
        .and_then(|t| t.strip_prefix(name.as_bytes()))
        .and_then(|t| t.strip_prefix(b"-"))
    else {
        return false;
    };
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    let random = tail.len() == TAG_DIGITS && tail.iter().all(|b| b.is_ascii_hexdigit());
    let legacy = match tail.iter().position(|b| *b == b'-') {
        Some(i) => digits(&tail[..i]) && digits(&tail[i + 1..]),
        None => false,
    };
    random || legacy
}

fn random_tag() -> io::Result<u64> {
    let mut tag = [0u8; 8];
    getrandom::fill(&mut tag).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(u64::from_le_bytes(tag))
}

fn same_file(path: &Path, file: &File) -> bool {
    match (fs::symlink_metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Removes `path` durably. Returns whether it existed.
pub fn remove(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {
            sync_dir(split(path)?.0)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Makes a rename or unlink in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its parents with mode 0700 (leases and state are nobody else's business).
pub fn create_dir_private(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The directory `path` is in, and its file name.
fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A scratch directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "weft-durable-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            create_dir_private(&dir).unwrap();
            Scratch(dir)
        }

        fn names(&self) -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn write_replace_remove() {
        let s = Scratch::new();
        let p = s.0.join("f");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        // No temp file is left next to it.
        assert_eq!(s.names(), ["f"]);
        assert!(remove(&p).unwrap());
        assert!(!remove(&p).unwrap());
    }

    #[test]
    fn the_mode_is_exact_whatever_the_umask() {
        let s = Scratch::new();
        // 0666 under the usual umask 022 would come out 0644 without the explicit chmod.
        for mode in [0o666, 0o755, 0o644, 0o600] {
            let p = s.0.join(format!("m{mode:o}"));
            write_atomic(&p, b"x", mode).unwrap();
            assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, mode);
        }
    }

    /// A crash between creating the temporary file and renaming it leaves the temporary
    /// behind. The router runs as PID 1 in its container, so the next start has the same pid
    /// and, with a fresh counter, the same temporary name: its first save must still work.
    #[test]
    fn a_crashed_writers_temporary_file_does_not_block_the_next_write() {
        let s = Scratch::new();
        let p = s.0.join("mesh.json");
        let leftover =
            s.0.join(format!("{TEMP_PREFIX}mesh.json-{}-0", std::process::id()));
        fs::write(&leftover, b"half").unwrap();
        write_atomic(&p, b"state", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"state");
        // ...and the leftover, which no live process holds, is gone.
        assert_eq!(s.names(), ["mesh.json"]);
    }

    #[test]
    fn stale_temporaries_of_the_target_go_and_everything_else_stays() {
        let s = Scratch::new();
        let p = s.0.join("f");
        let stale = [
            format!("{TEMP_PREFIX}f-0123456789abcdef"),
            format!("{TEMP_PREFIX}f-1-7"),
        ];
        // Another target's, a name that only looks similar, a non-file, a symbolic link.
        let kept = [
            format!("{TEMP_PREFIX}f-1-0123456789abcdef"),
            format!("{TEMP_PREFIX}f-0123"),
            format!("{TEMP_PREFIX}f-x-1"),
            format!("{TEMP_PREFIX}g-0123456789abcdef"),
        ];
        for name in stale.iter().chain(&kept) {
            fs::write(s.0.join(name), b"half").unwrap();
        }
        let dir_like = format!("{TEMP_PREFIX}f-fedcba9876543210");
        fs::create_dir(s.0.join(&dir_like)).unwrap();
        let link = format!("{TEMP_PREFIX}f-2-2");
        std::os::unix::fs::symlink(s.0.join(&kept[0]), s.0.join(&link)).unwrap();

        let mut removed = remove_stale_temps(&p).unwrap();
        removed.sort();
        let mut expected: Vec<PathBuf> = stale.iter().map(|n| s.0.join(n)).collect();
        expected.sort();
        assert_eq!(removed, expected);
        let mut left: Vec<String> = kept.to_vec();
        left.extend([dir_like, link]);
        left.sort();
        assert_eq!(s.names(), left);
    }

    /// The concurrency rule: a temporary whose writer is alive (holds its lock) is never
    /// removed by another writer of the same target.
    #[test]
    fn a_live_writers_temporary_is_left_alone() {
        let s = Scratch::new();
        let p = s.0.join("f");
        let (tmp, held) = create_temp(&s.0, OsStr::new("f"), 0o600).unwrap();
        assert!(matches!(held, Held::Locked(_)));
        // Another writer, in this process or another (flock locks belong to the open file, so
        // a second open is a second owner either way).
        write_atomic(&p, b"other", 0o600).unwrap();
        assert!(remove_stale_temps(&p).unwrap().is_empty());
        assert!(tmp.exists());
        // Once its writer is gone, it is a leftover like any other.
        drop(held);
        assert_eq!(remove_stale_temps(&p).unwrap(), [tmp]);
        assert_eq!(s.names(), ["f"]);
    }

    #[test]
    fn many_concurrent_writers_all_succeed() {
        let s = Scratch::new();
        let p = s.0.join("f");
        std::thread::scope(|scope| {
            for i in 0..8u8 {
                let p = &p;
                scope.spawn(move || {
                    for _ in 0..50 {
                        write_atomic(p, &[i; 64], 0o600).unwrap();
                    }
                });
            }
        });
        let bytes = fs::read(&p).unwrap();
        assert!(bytes.len() == 64 && bytes.iter().all(|b| *b == bytes[0]));
        assert_eq!(s.names(), ["f"]);
    }

    #[test]
    fn create_atomic_creates_once() {
        let s = Scratch::new();
        let p = s.0.join("key");
        create_atomic(&p, b"first", 0o600).unwrap();
        let err = create_atomic(&p, b"second", 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&p).unwrap(), b"first");
        assert_eq!(s.names(), ["key"]);
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        let err = write_atomic(Path::new("/"), b"x", 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
