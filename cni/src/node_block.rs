//! The node's address block: the contract between the router and the plugin.
//!
//! The router writes `<stateDir>/node-block.json` = `{"version":1,"cidr":"10.32.3.0/24"}`
//! atomically; the plugin reads it on every call. The gateway (held by the bridge) is the
//! block's first host address. A missing file means the block is not known yet.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use weft_sys::durable;

pub const FILE_NAME: &str = "node-block.json";
/// The file format version; a reader refuses any other.
pub const FORMAT_VERSION: u32 = 1;
/// Refuse to read more than this: the file is a few dozen bytes.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// A node's pod block: an IPv4 network with room for a gateway and at least one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeBlock {
    cidr: Ipv4Net,
}

/// Why a block could not be read, written or accepted.
#[derive(Debug, thiserror::Error)]
pub enum NodeBlockError {
    /// The cidr has host bits set, or is too small for a gateway plus a pod.
    #[error("node block {0} is not usable: {1}")]
    Invalid(Ipv4Net, &'static str),
    /// The file exists but is not a node block in the format we know.
    #[error("{path}: not a node block: {why}")]
    Malformed { path: PathBuf, why: String },
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    version: u32,
    cidr: Ipv4Net,
}

impl NodeBlock {
    /// Checks that `cidr` is a network address with at least two host addresses (/30 or
    /// larger): one for the gateway, one for a pod.
    pub fn new(cidr: Ipv4Net) -> Result<NodeBlock, NodeBlockError> {
        if cidr.trunc() != cidr {
            return Err(NodeBlockError::Invalid(cidr, "host bits are set"));
        }
        if cidr.prefix_len() > 30 {
            return Err(NodeBlockError::Invalid(
                cidr,
                "smaller than /30: no room for a gateway and a pod",
            ));
        }
        Ok(NodeBlock { cidr })
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The first host address; the bridge holds it.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1)
    }

    /// The gateway with the block's prefix, as the bridge carries it.
    pub fn gateway_net(&self) -> Ipv4Net {
        Ipv4Net::new(self.gateway(), self.cidr.prefix_len()).expect("prefix is valid")
    }

    /// The addresses pods may get: every host address except the gateway.
    pub fn pod_addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let gw = self.gateway();
        self.cidr.hosts().filter(move |a| *a != gw)
    }

    pub fn pod_address_count(&self) -> u32 {
        // hosts() excludes network and broadcast; minus the gateway.
        (1u32 << (32 - self.cidr.prefix_len())) - 3
    }

    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE_NAME)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&OnDisk {
            version: FORMAT_VERSION,
            cidr: self.cidr,
        })
        .expect("a node block always serialises")
    }

    pub fn from_json(bytes: &[u8]) -> Result<NodeBlock, String> {
        let d: OnDisk = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if d.version != FORMAT_VERSION {
            return Err(format!(
                "format version {} (this plugin reads {FORMAT_VERSION})",
                d.version
            ));
        }
        NodeBlock::new(d.cidr).map_err(|e| e.to_string())
    }

    /// Reads the block the router published; `Ok(None)` when it has published none yet.
    pub fn read(state_dir: &Path) -> Result<Option<NodeBlock>, NodeBlockError> {
        use std::io::Read;
        let path = NodeBlock::path(state_dir);
        let io_err = |source| NodeBlockError::Io {
            path: path.clone(),
            source,
        };
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(NodeBlockError::Malformed {
                path,
                why: "larger than 64 KiB".into(),
            });
        }
        NodeBlock::from_json(&bytes)
            .map(Some)
            .map_err(|why| NodeBlockError::Malformed { path, why })
    }

    /// Publishes the block atomically and durably (the router's side of the contract).
    pub fn write(&self, state_dir: &Path) -> Result<(), NodeBlockError> {
        let path = NodeBlock::path(state_dir);
        durable::create_dir_private(state_dir)
            .and_then(|()| durable::write_atomic(&path, self.to_json().as_bytes(), 0o600))
            .map_err(|source| NodeBlockError::Io { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_and_pod_addresses() {
        let b = NodeBlock::new("10.32.3.0/24".parse().unwrap()).unwrap();
        assert_eq!(b.gateway(), Ipv4Addr::new(10, 32, 3, 1));
        assert_eq!(b.gateway_net().to_string(), "10.32.3.1/24");
        let pods: Vec<_> = b.pod_addresses().collect();
        assert_eq!(pods.len() as u32, b.pod_address_count());
        assert_eq!(pods.first(), Some(&Ipv4Addr::new(10, 32, 3, 2)));
        assert_eq!(pods.last(), Some(&Ipv4Addr::new(10, 32, 3, 254)));
        let tiny = NodeBlock::new("10.32.3.0/30".parse().unwrap()).unwrap();
        assert_eq!(tiny.pod_addresses().count(), 1);
    }

    #[test]
    fn refuses_unusable_blocks() {
        assert!(NodeBlock::new("10.32.3.1/24".parse().unwrap()).is_err());
        assert!(NodeBlock::new("10.32.3.0/31".parse().unwrap()).is_err());
        assert!(NodeBlock::from_json(br#"{"version":2,"cidr":"10.32.3.0/24"}"#).is_err());
        assert!(NodeBlock::from_json(br#"{"version":1,"cidr":"fd00::/64"}"#).is_err());
        assert!(NodeBlock::from_json(br#"{"version":1}"#).is_err());
    }

    #[test]
    fn write_then_read() {
        let dir = std::env::temp_dir().join(format!("weft-nodeblock-{}", std::process::id()));
        assert!(NodeBlock::read(&dir).unwrap().is_none());
        let b = NodeBlock::new("10.32.9.0/24".parse().unwrap()).unwrap();
        b.write(&dir).unwrap();
        assert_eq!(
            std::fs::read_to_string(NodeBlock::path(&dir)).unwrap(),
            r#"{"version":1,"cidr":"10.32.9.0/24"}"#
        );
        assert_eq!(NodeBlock::read(&dir).unwrap(), Some(b));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
