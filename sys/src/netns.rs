//! Network namespaces: open one by path and get a netlink socket that lives in it.
//!
//! `setns` changes only the calling thread, so it runs on a short-lived thread of its own: the
//! socket it opens stays bound to the pod's namespace after the thread ends, and the main
//! thread never leaves the host namespace (no restore step that could fail half-way).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use crate::netlink::Netlink;

/// Why a namespace could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The path does not exist: the namespace is gone (or never was).
    #[error("network namespace {0} does not exist")]
    Missing(PathBuf),
    /// The path exists but is not a network namespace, or we may not enter it.
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: io::Error },
    /// Inside the namespace, nothing accepted a connection to the address.
    #[error("connect to {addr} inside the namespace: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
}

/// An open network namespace (the file keeps it alive while we use it).
pub struct Netns {
    path: PathBuf,
    file: File,
}

impl Netns {
    pub fn open(path: &Path) -> Result<Netns, NetnsError> {
        match File::open(path) {
            Ok(file) => Ok(Netns {
                path: path.to_owned(),
                file,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(NetnsError::Missing(path.to_owned()))
            }
            Err(source) => Err(NetnsError::Enter {
                path: path.to_owned(),
                source,
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// A TCP connection to `addr` made inside this namespace (it stays there whichever thread
    /// uses it): how the lab reaches a node's loopback from the host namespace.
    pub fn connect_tcp(
        &self,
        addr: std::net::SocketAddr,
    ) -> Result<std::net::TcpStream, NetnsError> {
        self.inside(|| {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
                .map_err(|source| NetnsError::Connect { addr, source })
        })
    }

    /// A TCP listener bound to `addr` inside this namespace (it stays there whichever thread
    /// accepts on it): how the lab's API server serves the switch from a process that also
    /// listens on the host's loopback.
    pub fn bind_tcp(
        &self,
        addr: std::net::SocketAddr,
    ) -> Result<std::net::TcpListener, NetnsError> {
        self.inside(|| {
            std::net::TcpListener::bind(addr).map_err(|source| NetnsError::Connect { addr, source })
        })
    }

    /// A UDP socket bound to `addr` inside this namespace (it stays there whichever thread
    /// sends on it): how `weft lab flood` sends from its own namespace in the lab.
    pub fn bind_udp(&self, addr: std::net::SocketAddr) -> Result<std::net::UdpSocket, NetnsError> {
        self.inside(|| {
            std::net::UdpSocket::bind(addr).map_err(|source| NetnsError::Connect { addr, source })
        })
    }

    /// Runs `make` on a thread of its own that has entered this namespace: a socket it makes
    /// stays in the namespace, and the caller's thread never moves.
    fn inside<T: Send>(
        &self,
        make: impl FnOnce() -> Result<T, NetnsError> + Send,
    ) -> Result<T, NetnsError> {
        let enter_err = |source| NetnsError::Enter {
            path: self.path.clone(),
            source,
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|e| enter_err(e.into()))?;
                make()
            })
            .join()
            .unwrap_or_else(|_| Err(enter_err(io::Error::other("namespace thread panicked"))))
        })
    }

    /// A netlink socket inside this namespace. Also proves the path is a network namespace:
    /// setns refuses anything else.
    pub fn netlink(&self) -> Result<Netlink, NetnsError> {
        let enter_err = |source| NetnsError::Enter {
            path: self.path.clone(),
            source,
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Netlink::new()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
        })
        .map_err(enter_err)
    }
}
