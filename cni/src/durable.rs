//! Atomic, durable file writes: what the lease store and the node-block file rely on.
//!
//! A reader sees either the old file or the new one, never a torn one (rename is atomic), and
//! once a call returns the change survives a power loss (file and directory are fsynced).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Temporary files start with this, so a crash's leftovers are recognisable and removable.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename,
/// fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = parent(path)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    // pid + counter: unique among concurrent writers (other processes, other threads).
    let tmp = dir.join(format!(
        "{TEMP_PREFIX}{}-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes `path` durably. Returns whether it existed.
pub fn remove(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {
            sync_dir(parent(path)?)?;
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

fn parent(path: &Path) -> io::Result<&Path> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => Ok(p),
        _ => Ok(Path::new(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replace_remove() {
        let dir = std::env::temp_dir().join(format!("weft-durable-{}", std::process::id()));
        create_dir_private(&dir).unwrap();
        let p = dir.join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        // No temp file is left next to it.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        assert!(remove(&p).unwrap());
        assert!(!remove(&p).unwrap());
        fs::remove_dir(&dir).unwrap();
    }

    /// A crash between creating the temporary file and renaming it leaves the temporary
    /// behind. The router runs as PID 1 in its container, so the next start has the same pid
    /// and, with a fresh counter, the same temporary name: its first save must still work.
    #[test]
    fn a_crashed_writers_temporary_file_does_not_block_the_next_write() {
        let dir = std::env::temp_dir().join(format!("weft-durable-stale-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        create_dir_private(&dir).unwrap();
        let p = dir.join("mesh.json");
        let leftover = dir.join(format!("{TEMP_PREFIX}mesh.json-{}-0", std::process::id()));
        fs::write(&leftover, b"half").unwrap();
        write_atomic(&p, b"state").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"state");
        fs::remove_dir_all(&dir).unwrap();
    }
}
