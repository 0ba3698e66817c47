//! What a router is started with, and the numbers derived from it.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use weft_crypto::{DATA_OVERHEAD, JoinSecret};
use weft_mesh::wire::RELAY_HEADER_LEN;

/// The one UDP port weft uses between routers (DESIGN.md §1).
pub const DEFAULT_PORT: u16 = 6786;
/// The TUN device's name.
pub const TUN_NAME: &str = "weft-tun";
/// The bridge pods attach to (weft-cni's default).
pub const DEFAULT_BRIDGE: &str = "weft";

/// Bytes a pod packet grows by on the longest path, through a relay: outer IPv4 (20) and UDP
/// (8) headers, the relay envelope, and the sealed datagram's header and tag.
pub const TUNNEL_OVERHEAD: u32 = 20 + 8 + RELAY_HEADER_LEN as u32 + DATA_OVERHEAD as u32;

/// The pod MTU for an underlay MTU: computed, never guessed (DESIGN.md §2). `None` when the
/// underlay is too small to carry IPv4's minimum of 576 bytes inside the tunnel.
pub fn pod_mtu(underlay_mtu: u32) -> Option<u32> {
    underlay_mtu
        .checked_sub(TUNNEL_OVERHEAD)
        .filter(|mtu| *mtu >= 576)
}

/// A router's configuration.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// This node's name (a label; the identity is the key).
    pub name: String,
    /// Where to listen for weft datagrams.
    pub listen: SocketAddr,
    /// Endpoints to announce to peers (besides what they observe).
    pub announce: Vec<SocketAddr>,
    /// Endpoints to dial at start.
    pub seeds: Vec<SocketAddr>,
    /// State directory: key, address space, block file, leases, control socket.
    pub state_dir: PathBuf,
    /// The cluster join secret.
    pub join_secret: JoinSecret,
    /// The cluster's pod range.
    pub cluster_range: Ipv4Net,
    /// Prefix length of one node's block.
    pub block_prefix: u8,
    /// A block given from outside (Kubernetes podCIDR, `--pod-cidr`).
    pub pod_cidr: Option<Ipv4Net>,
    /// Whether this node starts a new cluster's address space.
    pub found_address_space: bool,
    /// The bridge pods attach to.
    pub bridge: String,
    /// The underlay MTU, if not detected.
    pub underlay_mtu: Option<u32>,
    /// Where to serve metrics and health over HTTP.
    pub metrics: Option<SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_mtu_leaves_room_for_the_relay_path() {
        assert_eq!(TUNNEL_OVERHEAD, 20 + 8 + 68 + 29);
        assert_eq!(pod_mtu(1500), Some(1375));
        assert_eq!(pod_mtu(9001), Some(9001 - TUNNEL_OVERHEAD));
        assert_eq!(pod_mtu(600), None);
    }
}
