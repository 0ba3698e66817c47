//! The kernel's side of a node: routes for the cluster range through the TUN device (and the
//! blackhole under it that keeps the range off the underlay while no router runs), the
//! node's address on the TUN device, the bridge holding the node's gateway, and the underlay
//! MTU. Netlink requests go through
//! weft-sys's small blocking client (the packet crates rtnetlink is built on), the one the
//! plugin uses: these are a handful of requests at start and when the block changes, so the
//! router runs them on a blocking thread instead of carrying a second netlink stack.

use std::io;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_sys::netlink::{self, Link, Netlink, Route4};

/// Why the kernel could not be configured.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct NetconfError {
    what: String,
    source: io::Error,
}

impl NetconfError {
    pub(crate) fn new(what: impl Into<String>, source: io::Error) -> Self {
        NetconfError {
            what: what.into(),
            source,
        }
    }
}

fn ctx(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetconfError {
    let what = what.into();
    move |source| NetconfError { what, source }
}

/// The underlay MTU as the kernel reports it ([`weft_sys::mtu::underlay_mtu`]), not counting
/// `ours` (the TUN device and the bridge).
pub fn underlay_mtu(ours: &[&str]) -> Result<u32, NetconfError> {
    weft_sys::mtu::underlay_mtu(ours).map_err(|e| NetconfError {
        what: e.what,
        source: e.source,
    })
}

/// Caps the segments of the GSO frames the kernel hands the TUN device at `segs`, so that a
/// frame always fits one data-plane batch: a pod that clamps its TCP MSS very low (or sends
/// UDP GSO with tiny segments) gets its frames cut by the kernel, instead of having them
/// dropped by the router.
pub fn limit_gso_segments(dev: &str, segs: u32) -> Result<(), NetconfError> {
    let mut nl = Netlink::new().map_err(ctx("open netlink"))?;
    let link = find(&mut nl, dev)?;
    nl.set_gso_max_segs(link.index, segs)
        .map_err(ctx(format!("set gso_max_segs {segs} on {dev}")))
}

/// Routes the cluster range into the TUN device (the node's own block is more specific and
/// stays on the bridge). A route for the range through another device is an error that
/// names it: pod traffic would silently go there instead.
pub fn route_cluster_range(tun: &str, range: Ipv4Net) -> Result<(), NetconfError> {
    let mut nl = Netlink::new().map_err(ctx("open netlink"))?;
    let link = find(&mut nl, tun)?;
    let route = Route4 {
        dst: range,
        gw: None,
        oif: Some(link.index),
    };
    match nl.add_route(route, false) {
        Err(e) if netlink::is_exists(&e) => {
            let routes = nl.routes().map_err(ctx("list routes"))?;
            let links = nl.links().map_err(ctx("list links"))?;
            // The fail-closed blackhole has the same destination and no device: not a holder.
            match routes.iter().find(|r| r.dst == range && r.oif.is_some()) {
                Some(r) if r.oif == Some(link.index) => Ok(()),
                other => {
                    let holder = other
                        .and_then(|r| r.oif)
                        .and_then(|i| links.iter().find(|l| l.index == i))
                        .map_or("another route".to_string(), |l| {
                            format!("device {}", l.name)
                        });
                    Err(NetconfError {
                        what: format!("route {range} dev {tun}"),
                        source: io::Error::other(format!(
                            "the cluster range is already routed through {holder} (another \
                             network plugin?); remove that route or pick another --cluster-range"
                        )),
                    })
                }
            }
        }
        other => other.map_err(ctx(format!("route {range} dev {tun}"))),
    }
}

/// The metric of the fail-closed route: the least preferred there is, so the TUN device's
/// route (metric 0) wins whenever it exists.
pub const FAIL_CLOSED_METRIC: u32 = u32::MAX;

/// Adds `blackhole RANGE metric FAIL_CLOSED_METRIC` (docs/design.md, fail closed): it
/// outlives the router, so while no router runs (crash, restart, upgrade) pod traffic for
/// the cluster range is dropped on the node instead of following the default route onto the
/// underlay in plaintext. The TUN device's route overrides it while the router runs.
pub fn hold_cluster_range(range: Ipv4Net) -> Result<(), NetconfError> {
    let mut nl = Netlink::new().map_err(ctx("open netlink"))?;
    match nl.add_blackhole(range, FAIL_CLOSED_METRIC) {
        Err(e) if netlink::is_exists(&e) => Ok(()),
        other => other.map_err(ctx(format!(
            "route blackhole {range} metric {FAIL_CLOSED_METRIC}"
        ))),
    }
}

/// Removes what [`hold_cluster_range`] adds (`weft uninstall`); none there is fine.
pub fn release_cluster_range(range: Ipv4Net) -> Result<bool, NetconfError> {
    let mut nl = Netlink::new().map_err(ctx("open netlink"))?;
    match nl.delete_blackhole(range, FAIL_CLOSED_METRIC) {
        Ok(()) => Ok(true),
        Err(e) if netlink::is_not_found(&e) => Ok(false),
        Err(e) => Err(ctx(format!("delete route blackhole {range}"))(e)),
    }
}

/// Takes weft off the node (`weft uninstall`): removes what the router leaves behind on
/// purpose when it stops. Says what it removed, or that there was nothing.
pub fn uninstall(range: Ipv4Net) -> Result<Vec<String>, NetconfError> {
    let mut done = Vec::new();
    if release_cluster_range(range)? {
        done.push(format!("removed route blackhole {range}"));
    }
    if crate::nftables::remove()? {
        done.push(format!(
            "removed nftables table ip {}",
            crate::nftables::TABLE
        ));
    }
    if done.is_empty() {
        done.push("nothing of weft's to remove".into());
    }
    Ok(done)
}

/// The node's own address in the mesh: the network address of its block, held by the TUN
/// device as a /32 (as flannel gives `flannel.1` the first address of its subnet). The
/// kernel picks it as the source of what the node itself sends into the cluster range, and
/// masquerade (kube-proxy's, ours) picks it for what leaves through the TUN device: an
/// address inside the node's block, which the other routers accept from this node. The
/// block's gateway stays on the bridge for the pods.
pub fn tun_address(block: Ipv4Net) -> Ipv4Net {
    Ipv4Net::new(block.network(), 32).expect("a /32 is valid")
}

/// Gives the TUN device `new`'s address ([`tun_address`]) and takes `old`'s away.
pub fn set_tun_address(
    tun: &str,
    old: Option<Ipv4Net>,
    new: Option<Ipv4Net>,
) -> Result<(), NetconfError> {
    let mut nl = Netlink::new().map_err(ctx("open netlink"))?;
    let link = find(&mut nl, tun)?;
    let have = nl
        .addresses(link.index)
        .map_err(ctx(format!("list the addresses of {tun}")))?;
    if let Some(old) = old.map(tun_address)
        && Some(old) != new.map(tun_address)
        && have.contains(&old)
    {
        nl.delete_address(link.index, old)
            .map_err(ctx(format!("delete {old} from {tun}")))?;
    }
    if let Some(new) = new.map(tun_address)
        && !have.contains(&new)
    {
        nl.add_address(link.index, new)
            .map_err(ctx(format!("add {new} to {tun}")))?;
    }
    Ok(())
}

/// Makes sure the bridge exists, is up and holds the block's gateway (the first address),
/// with the plugin's own code: it does the same on every ADD, the router does it as
/// soon as the block is known so the node reaches its pods' gateway before the first pod.
pub fn ensure_bridge(name: &str, block: Ipv4Net, mtu: u32) -> Result<(), NetconfError> {
    let mut nl = Netlink::new().map_err(ctx("open netlink"))?;
    let gateway = Ipv4Net::new(
        Ipv4Addr::from(u32::from(block.network()) + 1),
        block.prefix_len(),
    )
    .expect("valid prefix");
    nl.ensure_bridge(name, mtu, gateway)
        .map(drop)
        .map_err(|e| match e {
            netlink::BridgeError::NotABridge(kind) => NetconfError {
                what: format!("bridge {name}"),
                source: io::Error::other(format!(
                    "a link of this name exists and is a {kind}, not a bridge"
                )),
            },
            netlink::BridgeError::Io { what, source } => NetconfError {
                what: format!("bridge {name}: {what}"),
                source,
            },
        })
}

/// Has `bridge` hand the traffic between its ports to the IPv4 hooks, where the
/// NetworkPolicy chain judges it (docs/networkpolicy.md, "Same-node traffic"), unless
/// `done` is its index already (the flag was set on this very bridge). Its index; `None`
/// when there is no such bridge yet. Whether the kernel then calls the hooks depends on
/// br_netfilter being loaded: [`br_netfilter_loaded`].
pub fn bridge_call_iptables(bridge: &str, done: Option<u32>) -> Result<Option<u32>, NetconfError> {
    let mut nl = Netlink::new().map_err(ctx("open netlink"))?;
    let Some(link) = nl
        .link_by_name(bridge)
        .map_err(ctx(format!("look up {bridge}")))?
    else {
        return Ok(None);
    };
    if done == Some(link.index) {
        return Ok(done);
    }
    nl.set_bridge_nf_call_iptables(link.index, true)
        .map_err(ctx(format!("set nf_call_iptables on bridge {bridge}")))?;
    Ok(Some(link.index))
}

/// Whether br_netfilter is there (its sysctls appear with it, per network namespace).
pub fn br_netfilter_loaded() -> bool {
    std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists()
}

/// Every IPv4 address of this node outside `range` (its underlay and host addresses).
pub fn host_addresses(range: Ipv4Net) -> Result<Vec<Ipv4Addr>, NetconfError> {
    let mut nl = Netlink::new().map_err(ctx("open netlink"))?;
    let mut out: Vec<Ipv4Addr> = nl
        .all_addresses()
        .map_err(ctx("list addresses"))?
        .into_iter()
        .map(|(_, net)| net.addr())
        .filter(|a| !range.contains(a) && !a.is_loopback())
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

fn find(nl: &mut Netlink, name: &str) -> Result<Link, NetconfError> {
    nl.link_by_name(name)
        .map_err(ctx(format!("look up {name}")))?
        .ok_or_else(|| NetconfError {
            what: format!("look up {name}"),
            source: io::Error::from(io::ErrorKind::NotFound),
        })
}

/// Turns IPv6 off on `dev`: weft carries IPv4 only (docs/design.md §5), and the kernel's own IPv6
/// chatter on the TUN (router solicitations) would otherwise be counted as drops. A kernel
/// without IPv6 has no such file, which is fine. In an unprivileged container (the
/// DaemonSet) the runtime mounts /proc/sys read-only: the chatter is then only counted, which
/// is no reason to need `privileged: true`.
pub fn disable_ipv6(dev: &str) -> Result<(), NetconfError> {
    let path = format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6");
    match std::fs::write(&path, b"1") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::ReadOnlyFilesystem => {
            tracing::warn!(%path, "read-only /proc/sys: IPv6 stays on for {dev}");
            Ok(())
        }
        other => other.map_err(ctx(format!("write {path}"))),
    }
}
