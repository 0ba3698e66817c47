//! The lab's one file replacement: write beside, then rename over, so a reader (a test, the
//! benchmark, a second `weft lab` command) sees the old file or the new one, never half of
//! one. Kept alone here so that it can move to the system layer's durable write as a whole.

use std::fs;
use std::io;
use std::path::Path;

/// Replaces `path` with `bytes` in one rename.
pub(crate) fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}
