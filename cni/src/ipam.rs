//! Address leases inside the node's block.
//!
//! Layout under `<stateDir>/cni/`:
//! - `lock`: flock'd exclusively for the whole of every ADD, DEL, CHECK and GC, so concurrent
//!   plugin runs never see each other half-done;
//! - `leases/<address>`: one file per leased address, holding its attachment. One file per
//!   address makes "two attachments share an address" impossible by construction (a file
//!   name is unique) and makes every change a single atomic rename or unlink;
//! - `last-reserved`: where the previous allocation stopped, so a freed address is not handed
//!   out again at once (a stale ARP entry or conntrack flow of the old pod could hit the new).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::env::{Attachment, ContainerId, IfName};
use crate::node_block::NodeBlock;
use weft_sys::durable;

/// One leased address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub attachment: Attachment,
}

/// Why a lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every pod address of the block is leased.
    #[error("node block {block} is exhausted: all {count} pod addresses are leased")]
    Exhausted { block: ipnet::Ipv4Net, count: u32 },
    /// A lease file exists but is not one of ours (hand-edited or from another version).
    #[error("lease file {path} is malformed: {why}")]
    Malformed { path: PathBuf, why: String },
    /// The file system refused.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseFile {
    version: u32,
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// The lease store of one state directory.
#[derive(Debug, Clone)]
pub struct LeaseStore {
    dir: PathBuf,
}

/// The store with its lock held; dropping it releases the lock.
pub struct LockedLeases {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl LeaseStore {
    pub fn new(state_dir: &Path) -> LeaseStore {
        LeaseStore {
            dir: state_dir.join("cni"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the store's lock, blocking until it is free, and removes what a crashed writer
    /// left half-written.
    pub fn lock(&self) -> Result<LockedLeases, IpamError> {
        let leases = self.dir.join("leases");
        durable::create_dir_private(&leases).map_err(|source| IpamError::Io {
            path: leases.clone(),
            source,
        })?;
        let lock_path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| IpamError::Io {
                path: lock_path.clone(),
                source,
            })?;
        let lock =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| IpamError::Io {
                path: lock_path,
                source: errno.into(),
            })?;
        let locked = LockedLeases {
            dir: self.dir.clone(),
            _lock: lock,
        };
        locked.remove_temp_files()?;
        Ok(locked)
    }
}

impl LockedLeases {
    fn leases_dir(&self) -> PathBuf {
        self.dir.join("leases")
    }

    fn io(path: &Path) -> impl FnOnce(io::Error) -> IpamError + '_ {
        move |source| IpamError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Every writer of this directory holds the lock, so all temporaries here are a crashed
    /// writer's, whatever their target (weft_sys::durable's rule for leftovers).
    fn remove_temp_files(&self) -> Result<(), IpamError> {
        for dir in [self.dir.clone(), self.leases_dir()] {
            for entry in fs::read_dir(&dir).map_err(Self::io(&dir))? {
                let entry = entry.map_err(Self::io(&dir))?;
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(durable::TEMP_PREFIX)
                {
                    durable::remove(&entry.path()).map_err(Self::io(&entry.path()))?;
                }
            }
        }
        Ok(())
    }

    /// Every lease, in address order.
    pub fn leases(&self) -> Result<Vec<Lease>, IpamError> {
        let dir = self.leases_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(Self::io(&dir))? {
            let entry = entry.map_err(Self::io(&dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let Some(address) = name.to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
                return Err(IpamError::Malformed {
                    path,
                    why: "file name is not an IPv4 address".into(),
                });
            };
            let bytes = fs::read(&path).map_err(Self::io(&path))?;
            let attachment = parse_lease(&bytes).map_err(|why| IpamError::Malformed {
                path: path.clone(),
                why,
            })?;
            out.push(Lease {
                address,
                attachment,
            });
        }
        out.sort_by_key(|l| l.address);
        Ok(out)
    }

    /// The leases of one attachment (normally none or one).
    pub fn find(&self, attachment: &Attachment) -> Result<Vec<Lease>, IpamError> {
        Ok(self
            .leases()?
            .into_iter()
            .filter(|l| &l.attachment == attachment)
            .collect())
    }

    /// Leases a free address of `block` to `attachment`, starting after the last one handed
    /// out. The caller has checked that the attachment holds no lease yet.
    pub fn allocate(
        &mut self,
        block: &NodeBlock,
        attachment: &Attachment,
    ) -> Result<Lease, IpamError> {
        let taken: std::collections::HashSet<Ipv4Addr> =
            self.leases()?.into_iter().map(|l| l.address).collect();
        let candidates: Vec<Ipv4Addr> = block.pod_addresses().collect();
        let start = self
            .last_reserved()
            .and_then(|last| candidates.iter().position(|a| *a == last))
            .map(|i| i + 1)
            .unwrap_or(0);
        let free = (0..candidates.len())
            .map(|i| candidates[(start + i) % candidates.len()])
            .find(|a| !taken.contains(a));
        let Some(address) = free else {
            return Err(IpamError::Exhausted {
                block: block.cidr(),
                count: block.pod_address_count(),
            });
        };
        let path = self.leases_dir().join(address.to_string());
        let body = serde_json::to_vec(&LeaseFile {
            version: 1,
            container_id: attachment.container_id.as_str().to_owned(),
            ifname: attachment.ifname.as_str().to_owned(),
        })
        .expect("a lease always serialises");
        durable::write_atomic(&path, &body, 0o600).map_err(Self::io(&path))?;
        let cursor = self.dir.join("last-reserved");
        // The cursor only spreads allocations; losing it costs nothing, so its error is
        // not worth failing an ADD for.
        let _ = durable::write_atomic(&cursor, address.to_string().as_bytes(), 0o600);
        Ok(Lease {
            address,
            attachment: attachment.clone(),
        })
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(self.dir.join("last-reserved"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Releases every lease of `attachment`; returns the freed addresses.
    pub fn release(&mut self, attachment: &Attachment) -> Result<Vec<Ipv4Addr>, IpamError> {
        let mut freed = Vec::new();
        for lease in self.find(attachment)? {
            self.release_address(lease.address)?;
            freed.push(lease.address);
        }
        Ok(freed)
    }

    pub fn release_address(&mut self, address: Ipv4Addr) -> Result<(), IpamError> {
        let path = self.leases_dir().join(address.to_string());
        durable::remove(&path).map_err(Self::io(&path))?;
        Ok(())
    }
}

fn parse_lease(bytes: &[u8]) -> Result<Attachment, String> {
    let f: LeaseFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if f.version != 1 {
        return Err(format!("format version {}", f.version));
    }
    Ok(Attachment {
        container_id: ContainerId::parse(&f.container_id)?,
        ifname: IfName::parse(&f.ifname)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(c: &str, i: &str) -> Attachment {
        Attachment {
            container_id: ContainerId::parse(c).unwrap(),
            ifname: IfName::parse(i).unwrap(),
        }
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weft-ipam-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn allocate_release_exhaust() {
        let dir = temp("exhaust");
        let store = LeaseStore::new(&dir);
        let block = NodeBlock::new("10.32.7.0/29".parse().unwrap()).unwrap();
        let mut l = store.lock().unwrap();
        let mut got = Vec::new();
        for i in 0..block.pod_address_count() {
            got.push(
                l.allocate(&block, &att(&format!("c{i}"), "eth0"))
                    .unwrap()
                    .address,
            );
        }
        let mut uniq = got.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), got.len());
        assert!(!got.contains(&block.gateway()));
        let e = l.allocate(&block, &att("late", "eth0")).unwrap_err();
        assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
        assert_eq!(l.release(&att("c0", "eth0")).unwrap(), vec![got[0]]);
        assert!(l.find(&att("c0", "eth0")).unwrap().is_empty());
        // Released, then the only free address again.
        assert_eq!(
            l.allocate(&block, &att("late", "eth0")).unwrap().address,
            got[0]
        );
        drop(l);
        // Leases survive a new store on the same directory (a plugin restart).
        let l = LeaseStore::new(&dir).lock().unwrap();
        assert_eq!(l.leases().unwrap().len() as u32, block.pod_address_count());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn round_robin_does_not_reuse_a_fresh_release() {
        let dir = temp("rr");
        let block = NodeBlock::new("10.32.7.0/24".parse().unwrap()).unwrap();
        let mut l = LeaseStore::new(&dir).lock().unwrap();
        let a = l.allocate(&block, &att("a", "eth0")).unwrap().address;
        l.release(&att("a", "eth0")).unwrap();
        let b = l.allocate(&block, &att("b", "eth0")).unwrap().address;
        assert_ne!(a, b);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temp_leftovers_are_removed_and_junk_is_reported() {
        let dir = temp("junk");
        let store = LeaseStore::new(&dir);
        drop(store.lock().unwrap());
        fs::write(dir.join("cni/leases/.tmp-x-1-1"), b"half").unwrap();
        let l = store.lock().unwrap();
        assert!(l.leases().unwrap().is_empty());
        fs::write(dir.join("cni/leases/10.32.7.9"), b"{").unwrap();
        assert!(matches!(l.leases(), Err(IpamError::Malformed { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
