//! The state directory: the node key, the mesh's persistent state, the block file for
//! weft-cni (and its leases, which weft-cni keeps there), the control socket.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use weft_cni::node_block::NodeBlock;
use weft_crypto::{KeyPair, Random};
use weft_mesh::PersistentState;
use weft_sys::durable;

use crate::keyfile::{self, KeyFileError};

/// Whether `name` is one of the files weft keeps in a state directory (the router's, weft-cni's
/// leases, a log the lab writes there, temporary files of atomic writes).
fn is_weft_file(name: &str) -> bool {
    matches!(
        name,
        "key" | "mesh.json" | "node-block.json" | CONTROL_SOCKET | "cni" | "router.log"
    ) || (name.starts_with('.') && name.contains(".tmp"))
}

/// The control socket's file name in the state directory.
pub const CONTROL_SOCKET: &str = "control.sock";

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file could not be read or written.
    #[error("state directory {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The key file is unusable.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// The mesh state file does not parse.
    #[error("{path} is corrupt ({why}); move it away to start with empty state")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        why: String,
    },
    /// The state directory is not a directory only we may enter.
    #[error(
        "state directory {path} (mode {mode:04o}) is not a directory, or is one others may \
         enter that holds other things than weft's state; pick an empty or weft directory"
    )]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The block could not be written for weft-cni.
    #[error(transparent)]
    Block(#[from] weft_cni::node_block::NodeBlockError),
}

/// A router's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Opens the directory, creating it with mode 0700: it holds the key and the control
    /// socket. An existing directory that others may enter is tightened to 0700 when it holds
    /// nothing but weft's own files (kubelet's `DirectoryOrCreate` makes 0755 ones). Anything
    /// else (a mistyped `--state-dir /var/lib`) is refused, not changed.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let at = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        match fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if !meta.is_dir() {
                    return Err(StateError::Unsafe {
                        path: path.to_owned(),
                        mode,
                    });
                }
                if mode & 0o077 != 0 {
                    let ours = fs::read_dir(path)
                        .map_err(at)?
                        .filter_map(Result::ok)
                        .all(|e| e.file_name().to_str().is_some_and(is_weft_file));
                    if !ours {
                        return Err(StateError::Unsafe {
                            path: path.to_owned(),
                            mode,
                        });
                    }
                    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(at)?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(path).map_err(at)?;
                fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(at)?;
            }
            Err(e) => return Err(at(e)),
        }
        Ok(Self {
            path: path.to_owned(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The node key, made on first start (mode 0600).
    pub fn key(&self, rng: &mut impl Random) -> Result<KeyPair, StateError> {
        Ok(keyfile::load_or_generate(&self.path.join("key"), rng)?)
    }

    fn mesh_file(&self) -> PathBuf {
        self.path.join("mesh.json")
    }

    /// The mesh state of the last run, if any.
    pub fn load_mesh(&self) -> Result<Option<PersistentState>, StateError> {
        let path = self.mesh_file();
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StateError::Corrupt {
                        path,
                        why: e.to_string(),
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Saves the mesh state durably (temporary file, fsync, rename): the Node asks for this
    /// before a grant of address space may leave.
    pub fn save_mesh(&self, state: &PersistentState) -> Result<(), StateError> {
        let path = self.mesh_file();
        let bytes = serde_json::to_vec_pretty(state).expect("mesh state serializes");
        durable::write_atomic(&path, &bytes, 0o600)
            .map_err(|source| StateError::Io { path, source })
    }

    /// Tells weft-cni the node's block.
    pub fn write_block(&self, block: Ipv4Net) -> Result<(), StateError> {
        NodeBlock::new(block)?.write(&self.path)?;
        Ok(())
    }

    /// Withdraws the block from weft-cni (it answers STATUS with "not ready" again).
    pub fn remove_block(&self) -> Result<(), StateError> {
        let path = NodeBlock::path(&self.path);
        durable::remove(&path)
            .map(drop)
            .map_err(|source| StateError::Io { path, source })
    }

    /// The control socket's path.
    pub fn control_socket(&self) -> PathBuf {
        self.path.join(CONTROL_SOCKET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_directory_is_refused_and_an_empty_one_tightened() {
        let base = std::env::temp_dir().join(format!("weft-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        let shared = base.join("shared");
        fs::create_dir(&shared).unwrap();
        fs::write(shared.join("somebody-else"), b"x").unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            StateDir::open(&shared),
            Err(StateError::Unsafe { .. })
        ));
        assert_eq!(
            fs::metadata(&shared).unwrap().permissions().mode() & 0o777,
            0o755
        );

        let empty = base.join("empty");
        fs::create_dir(&empty).unwrap();
        fs::set_permissions(&empty, fs::Permissions::from_mode(0o755)).unwrap();
        StateDir::open(&empty).unwrap();
        assert_eq!(
            fs::metadata(&empty).unwrap().permissions().mode() & 0o777,
            0o700
        );

        let fresh = base.join("fresh");
        StateDir::open(&fresh).unwrap();
        assert_eq!(
            fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::remove_dir_all(base).unwrap();
    }
}
