//! The state directory: the node key, the mesh's persistent state, the block file for
//! weft-cni (and its leases, which weft-cni keeps there), the control socket.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use weft_cni::durable;
use weft_cni::node_block::NodeBlock;
use weft_crypto::{KeyFileError, KeyPair, Random};
use weft_mesh::PersistentState;

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
    /// Opens (creating, mode 0700) the directory.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let at = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        fs::create_dir_all(path).map_err(at)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(at)?;
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
        Ok(KeyPair::load_or_generate(&self.path.join("key"), rng)?)
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
        durable::write_atomic(&path, &bytes).map_err(|source| StateError::Io { path, source })
    }

    /// Tells weft-cni the node's block.
    pub fn write_block(&self, block: Ipv4Net) -> Result<(), StateError> {
        NodeBlock::new(block)?.write(&self.path)?;
        Ok(())
    }

    /// The control socket's path.
    pub fn control_socket(&self) -> PathBuf {
        self.path.join("control.sock")
    }
}
