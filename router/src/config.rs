//! What a router is started with, and the numbers derived from it.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use weft_crypto::JoinSecrets;

pub use weft_mesh::DEFAULT_PORT;
/// The TUN device's name.
pub const TUN_NAME: &str = "weft-tun";
/// The bridge pods attach to (weft-cni's default).
pub const DEFAULT_BRIDGE: &str = "weft";

/// The MTU arithmetic is weft-sys's (install-cni computes the same figure without the router);
/// its constants for the relay envelope and the sealed overhead must be this build's.
pub use weft_sys::mtu::{TUNNEL_OVERHEAD, pod_mtu};
const _: () = assert!(
    weft_sys::mtu::RELAY_ENVELOPE as usize == weft_mesh::wire::RELAY_HEADER_LEN
        && weft_sys::mtu::SEALED_OVERHEAD as usize == weft_crypto::DATA_OVERHEAD
);

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
    /// The accepted join secrets, the primary first.
    pub join_secrets: JoinSecrets,
    /// The file they came from, watched for a rotation (none when given by variable).
    pub join_secret_file: Option<crate::join_secrets::JoinSecretFile>,
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
    /// When the live page is served beside them ([`crate::ui`]).
    pub ui: crate::ui::UiMode,
    /// Whether the data path uses the kernel's segmentation offloads.
    pub offload: crate::dataplane::Offload,
    /// Masquerade pod traffic that leaves the cluster range (`--masquerade`).
    pub masquerade: bool,
    /// Destinations exempt from that masquerade (`--masquerade-exempt`).
    pub masquerade_exempt: Vec<Ipv4Net>,
    /// Discover peers, block and pins from Kubernetes Nodes (`--kubernetes`).
    pub kubernetes: Option<crate::kubernetes::KubeConfig>,
    /// Where to write weft-cni's conflist once pod traffic can flow (`--cni-conf-dir`).
    pub cni: Option<CniConf>,
}

/// The CNI directories the router writes the conflist into when its block, bridge, TUN
/// device and route are up: the moment the kubelet may call the node's network ready
/// (docs/design.md, start-up order).
#[derive(Debug, Clone)]
pub struct CniConf {
    /// The runtime's configuration directory (`10-weft.conflist` goes there).
    pub conf_dir: PathBuf,
    /// The runtime's plugin directory: weft-cni must be there already, portmap is chained
    /// when it is.
    pub bin_dir: PathBuf,
}

impl RouterConfig {
    /// Checks what would otherwise fail later, half-way, or silently: prefix lengths, the pod
    /// block inside the range, underlay addresses outside it.
    pub fn validate(&self) -> Result<(), String> {
        let range = self.cluster_range;
        if range.trunc() != range {
            return Err(format!("--cluster-range {range} has host bits set"));
        }
        if !(range.prefix_len()..=30).contains(&self.block_prefix) {
            return Err(format!(
                "--block-prefix {} must be between the cluster range's /{} and /30 (a block needs \
                 a gateway and at least one pod)",
                self.block_prefix,
                range.prefix_len()
            ));
        }
        if let Some(cidr) = self.pod_cidr {
            if !range.contains(&cidr) {
                return Err(format!(
                    "--pod-cidr {cidr} is outside --cluster-range {range}"
                ));
            }
            if cidr.prefix_len() > 30 || cidr.trunc() != cidr {
                return Err(format!(
                    "--pod-cidr {cidr} must be a network of /30 or larger"
                ));
            }
        }
        let underlay = self
            .seeds
            .iter()
            .chain(&self.announce)
            .chain(std::iter::once(&self.listen));
        for addr in underlay {
            if let std::net::IpAddr::V4(ip) = addr.ip()
                && range.contains(&ip)
            {
                return Err(format!(
                    "{addr} is inside --cluster-range {range}: underlay traffic would be routed \
                     into the tunnel"
                ));
            }
        }
        if self.kubernetes.is_some() && (self.found_address_space || self.pod_cidr.is_some()) {
            return Err(
                "under --kubernetes the pod block is the Node's podCIDR: drop --pod-cidr and \
                 --found-address-space"
                    .into(),
            );
        }
        if self.cni.is_some() && !self.state_dir.is_absolute() {
            return Err(format!(
                "--cni-conf-dir needs an absolute --state-dir (weft-cni finds the node's block \
                 through the conflist): {} is relative",
                self.state_dir.display()
            ));
        }
        if self.underlay_mtu.is_some_and(|m| m > 65535) {
            return Err("--underlay-mtu is at most 65535".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RouterConfig {
        RouterConfig {
            name: "n1".into(),
            listen: "0.0.0.0:6786".parse().unwrap(),
            announce: vec![],
            seeds: vec!["198.18.0.1:6786".parse().unwrap()],
            state_dir: "/nonexistent".into(),
            join_secrets: weft_crypto::JoinSecret::new(b"0123456789abcdef", "weft")
                .unwrap()
                .into(),
            join_secret_file: None,
            cluster_range: "10.32.0.0/12".parse().unwrap(),
            block_prefix: 24,
            pod_cidr: None,
            found_address_space: false,
            bridge: "weft".into(),
            underlay_mtu: None,
            metrics: None,
            ui: crate::ui::UiMode::Auto,
            offload: Default::default(),
            masquerade: true,
            masquerade_exempt: vec![],
            kubernetes: None,
            cni: None,
        }
    }

    #[test]
    fn configs_that_cannot_work_are_refused_up_front() {
        assert_eq!(config().validate(), Ok(()));
        let refused = |f: &dyn Fn(&mut RouterConfig)| {
            let mut c = config();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(refused(&|c| c.block_prefix = 33).contains("--block-prefix"));
        assert!(refused(&|c| c.block_prefix = 31).contains("--block-prefix"));
        assert!(refused(&|c| c.block_prefix = 8).contains("--block-prefix"));
        assert!(
            refused(&|c| c.pod_cidr = Some("10.64.0.0/24".parse().unwrap())).contains("outside")
        );
        assert!(
            refused(&|c| c.cluster_range = "198.18.0.0/15".parse().unwrap()).contains("inside")
        );
        assert!(
            refused(&|c| c.cluster_range = "10.32.0.1/12".parse().unwrap()).contains("host bits")
        );
        assert!(refused(&|c| c.underlay_mtu = Some(70000)).contains("65535"));
        assert!(
            refused(&|c| {
                c.state_dir = "state".into();
                c.cni = Some(CniConf {
                    conf_dir: "/etc/cni/net.d".into(),
                    bin_dir: "/opt/cni/bin".into(),
                });
            })
            .contains("absolute --state-dir")
        );
    }

    #[test]
    fn pod_mtu_leaves_room_for_the_relay_path() {
        assert_eq!(TUNNEL_OVERHEAD, 20 + 8 + 68 + 29);
        assert_eq!(
            TUNNEL_OVERHEAD as usize,
            20 + 8 + weft_mesh::wire::RELAY_HEADER_LEN + weft_crypto::DATA_OVERHEAD
        );
        assert_eq!(pod_mtu(1500), Some(1375));
        assert_eq!(pod_mtu(9001), Some(9001 - TUNNEL_OVERHEAD));
        assert_eq!(pod_mtu(600), None);
    }
}
