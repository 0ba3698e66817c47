//! The CNI operations: ADD, DEL, CHECK, STATUS, GC and VERSION.
//!
//! Every operation that touches leases or links holds the lease store's lock from start to
//! end, so a GC never sees an ADD half-done and two ADDs never race for the bridge.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};
use serde_json::{Map, Value, json};

use crate::config::{NetConf, PodRoute};
use crate::env::{Attachment, Invocation, PodArgs};
use crate::ipam::{IpamError, LeaseStore, LockedLeases};
use crate::node_block::{NodeBlock, NodeBlockError};
use crate::result::{CniError, ErrorCode, Interface, IpConfig, Route};
use crate::version::CniVersion;
use weft_sys::netlink::{self, Link, Netlink, Route4};
use weft_sys::netns::{Netns, NetnsError};

/// Host veth names start with this; GC only ever deletes links named so.
pub const HOST_VETH_PREFIX: &str = "vweft";

/// A failed run: the error, and the version to write it in.
#[derive(Debug)]
pub struct Failure {
    pub error: CniError,
    pub version: CniVersion,
}

/// Runs one invocation. `Ok(Some(json))` is printed on stdout; `Ok(None)` prints nothing.
pub fn run(invocation: &Invocation, stdin: &[u8]) -> Result<Option<Value>, Failure> {
    if let Invocation::Version = invocation {
        return Ok(Some(version_reply(stdin)));
    }
    let conf = NetConf::parse(stdin).map_err(|e| Failure {
        error: e.to_cni(),
        version: NetConf::peek_version(stdin).unwrap_or(CniVersion::LATEST),
    })?;
    let version = conf.cni_version;
    let fail = |error| Failure { error, version };
    match invocation {
        Invocation::Add {
            attachment,
            netns,
            pod,
        } => add(&conf, attachment, netns, pod).map(Some),
        Invocation::Del { attachment, .. } => del(&conf, attachment).map(|()| None),
        Invocation::Check { attachment, netns } => check(&conf, attachment, netns).map(|()| None),
        Invocation::Status => status(&conf).map(|()| None),
        Invocation::Gc => gc(&conf).map(|()| None),
        Invocation::Version => unreachable!("answered above"),
    }
    .map_err(fail)
}

/// VERSION answers in the caller's version when we speak it (libcni sends one), else ours.
fn version_reply(stdin: &[u8]) -> Value {
    let asked = NetConf::peek_version(stdin).unwrap_or(CniVersion::LATEST);
    json!({
        "cniVersion": asked.as_str(),
        "supportedVersions": CniVersion::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
    })
}

/// The host end's name: stable for an attachment (DEL and GC find it without a cached
/// result) and at most 15 bytes. FNV-1a over container id and ifname; 40 bits make a
/// collision among a node's few hundred pods vanishingly rare, and a collision would fail
/// the ADD with EEXIST rather than share a link.
pub fn host_veth_name(attachment: &Attachment) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = attachment
        .container_id
        .as_str()
        .bytes()
        .chain([0])
        .chain(attachment.ifname.as_str().bytes());
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{HOST_VETH_PREFIX}{:010x}", h >> 24)
}

fn io_error(context: impl std::fmt::Display) -> impl FnOnce(io::Error) -> CniError {
    move |e| CniError::new(ErrorCode::IoFailure, format!("{context}: {e}"))
}

fn ipam_error(e: IpamError) -> CniError {
    let code = match e {
        IpamError::Exhausted { .. } => ErrorCode::BlockExhausted,
        IpamError::Malformed { .. } | IpamError::Io { .. } => ErrorCode::IoFailure,
    };
    CniError::new(code, e.to_string())
}

fn netns_error(e: NetnsError) -> CniError {
    CniError::new(ErrorCode::UnknownContainer, e.to_string())
}

/// The node's block, or code 11: the router has not published it yet.
fn node_block(conf: &NetConf) -> Result<NodeBlock, CniError> {
    match NodeBlock::read(&conf.state_dir) {
        Ok(Some(b)) => Ok(b),
        Ok(None) => Err(CniError::new(
            ErrorCode::TryAgainLater,
            format!(
                "the node's address block is not known yet: {} does not exist (is the weft router running?)",
                NodeBlock::path(&conf.state_dir).display()
            ),
        )),
        Err(e @ NodeBlockError::Io { .. }) => {
            Err(CniError::new(ErrorCode::IoFailure, e.to_string()))
        }
        Err(e) => Err(CniError::new(ErrorCode::InvalidConfig, e.to_string())),
    }
}

fn lock_leases(conf: &NetConf) -> Result<LockedLeases, CniError> {
    LeaseStore::new(&conf.state_dir).lock().map_err(ipam_error)
}

fn host_netlink() -> Result<Netlink, CniError> {
    Netlink::new().map_err(io_error("netlink socket in the host namespace"))
}

/// The routes the pod gets: the configured ones, or a default route via the gateway.
fn pod_routes(conf: &NetConf, block: &NodeBlock) -> Vec<Route4> {
    let default = [PodRoute {
        dst: Ipv4Net::default(),
        gw: None,
    }];
    let routes = if conf.routes.is_empty() {
        &default[..]
    } else {
        &conf.routes[..]
    };
    routes
        .iter()
        .map(|r| Route4 {
            dst: r.dst,
            gw: Some(r.gw.unwrap_or(block.gateway())),
            oif: None,
        })
        .collect()
}

/// Makes sure the bridge exists, is a bridge, is up and holds the gateway address.
fn ensure_bridge(host: &mut Netlink, conf: &NetConf, block: &NodeBlock) -> Result<Link, CniError> {
    let name = conf.bridge.as_str();
    host.ensure_bridge(name, conf.mtu, block.gateway_net())
        .map_err(|e| match e {
            netlink::BridgeError::NotABridge(kind) => CniError::new(
                ErrorCode::InvalidConfig,
                format!("bridge {name}: a link of this name exists and is a {kind}, not a bridge"),
            ),
            netlink::BridgeError::Io { what, source } => {
                io_error(format!("bridge {name}: {what}"))(source)
            }
        })
}

fn add(
    conf: &NetConf,
    attachment: &Attachment,
    netns_path: &Path,
    pod_args: &PodArgs,
) -> Result<Value, CniError> {
    // With NetworkPolicy enforced the router must know the pod: refused before anything is
    // touched when the runtime does not name it.
    let waits = match &conf.policy {
        Some(policy) => Some((policy, pod_args.pod()?)),
        None => None,
    };
    let netns = Netns::open(netns_path).map_err(netns_error)?;
    let mut pod = netns.netlink().map_err(netns_error)?;
    let block = node_block(conf)?;
    let mut leases = lock_leases(conf)?;
    let mut host = host_netlink()?;

    // Refuse a second ADD of one attachment before touching anything: the first one's
    // address and links stay exactly as they are.
    let already = |what: String| CniError::new(ErrorCode::AlreadyAttached, what);
    if let Some(l) = leases.find(attachment).map_err(ipam_error)?.first() {
        return Err(already(format!(
            "container {} interface {} is already attached with address {}",
            attachment.container_id, attachment.ifname, l.address
        )));
    }
    let host_name = host_veth_name(attachment);
    if host
        .link_by_name(&host_name)
        .map_err(io_error("look up host veth"))?
        .is_some()
    {
        return Err(already(format!("host veth {host_name} already exists")));
    }
    if pod
        .link_by_name(attachment.ifname.as_str())
        .map_err(io_error("look up pod interface"))?
        .is_some()
    {
        return Err(already(format!(
            "interface {} already exists in {}",
            attachment.ifname,
            netns_path.display()
        )));
    }

    let bridge = ensure_bridge(&mut host, conf, &block)?;
    let lease = leases.allocate(&block, attachment).map_err(ipam_error)?;
    let result = match attach(
        conf,
        attachment,
        &netns,
        &mut pod,
        &mut host,
        &bridge,
        &block,
        lease.address,
        waits.is_none(),
    ) {
        Ok(result) => result,
        Err(e) => {
            // Undo in reverse: the veth (its pod end goes with it), then the address.
            if let Ok(Some(l)) = host.link_by_name(&host_name) {
                let _ = host.delete_link(l.index);
            }
            if let Err(undo) = leases.release_address(lease.address) {
                return Err(
                    e.with_details(format!("and releasing {} failed: {undo}", lease.address))
                );
            }
            return Err(e);
        }
    };
    let Some((policy, pod_ref)) = waits else {
        return Ok(result);
    };
    // The wait is the router's (up to the timeout): other ADDs on the node go on meanwhile,
    // so the lock is dropped and taken again, and the lease and veth checked to be still ours.
    drop(leases);
    let started = std::time::Instant::now();
    let waited = crate::router_wait::wait(policy, &pod_ref, lease.address).map_err(|e| {
        CniError::new(
            ErrorCode::TryAgainLater,
            format!(
                "pod {}/{} at {}: {e} (after {} ms); the attachment was undone",
                pod_ref.namespace,
                pod_ref.name,
                lease.address,
                started.elapsed().as_millis()
            ),
        )
    });
    let mut leases = match lock_leases(conf) {
        Ok(l) => l,
        Err(e) => {
            // Without the lock the lease cannot be released: GC reclaims it, since the
            // runtime never lists a failed ADD's attachment as valid.
            let _ = delete_link_named(&mut host, &host_name);
            return Err(e);
        }
    };
    let opened = waited.and_then(|_| {
        let ours = leases
            .find(attachment)
            .map_err(ipam_error)?
            .iter()
            .any(|l| l.address == lease.address);
        if !ours {
            return Err(CniError::new(
                ErrorCode::TryAgainLater,
                format!(
                    "the lease of {} was released while waiting for the router (a GC or DEL ran)",
                    lease.address
                ),
            ));
        }
        open_host_end(&mut host, &bridge, &host_name, lease.address)
    });
    match opened {
        Ok(()) => Ok(result),
        Err(e) => {
            // Undo everything ADD did: the veth, then this attachment's lease (by attachment,
            // not address: the address is someone else's if a GC freed it meanwhile).
            if let Err(undo) = delete_link_named(&mut host, &host_name) {
                return Err(e.with_details(format!("and deleting {host_name} failed: {undo}")));
            }
            if let Err(undo) = leases.release(attachment) {
                return Err(
                    e.with_details(format!("and releasing {} failed: {undo}", lease.address))
                );
            }
            Err(e)
        }
    }
}

/// Lets the pod's traffic through once the router judges it: a neighbour entry the bridge
/// still holds for the address (an earlier pod's MAC, or a failed resolution from packets
/// sent while the port was down) is dropped first, then the host end goes up.
fn open_host_end(
    host: &mut Netlink,
    bridge: &Link,
    host_name: &str,
    address: Ipv4Addr,
) -> Result<(), CniError> {
    host.delete_neighbour(bridge.index, address)
        .map_err(io_error(format!(
            "delete {}'s neighbour entry for {address}",
            bridge.name
        )))?;
    let link = host
        .link_by_name(host_name)
        .map_err(io_error("look up host veth"))?
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::TryAgainLater,
                format!("host veth {host_name} vanished while waiting for the router"),
            )
        })?;
    host.set_up(link.index)
        .map_err(io_error(format!("set {host_name} up")))
}

#[allow(clippy::too_many_arguments)]
fn attach(
    conf: &NetConf,
    attachment: &Attachment,
    netns: &Netns,
    pod: &mut Netlink,
    host: &mut Netlink,
    bridge: &Link,
    block: &NodeBlock,
    address: Ipv4Addr,
    host_up: bool,
) -> Result<Value, CniError> {
    let host_name = host_veth_name(attachment);
    let ifname = attachment.ifname.as_str();
    host.add_veth(&host_name, ifname, netns.file().as_raw_fd(), conf.mtu)
        .map_err(io_error(format!("create veth {host_name} <-> {ifname}")))?;
    let missing = |what: String| CniError::new(ErrorCode::IoFailure, what);
    let host_link = host
        .link_by_name(&host_name)
        .map_err(io_error("look up host veth"))?
        .ok_or_else(|| missing(format!("host veth {host_name} vanished after creation")))?;
    host.set_master(host_link.index, bridge.index)
        .map_err(io_error(format!("attach {host_name} to {}", bridge.name)))?;
    host.set_hairpin(host_link.index)
        .map_err(io_error(format!("hairpin on {host_name}")))?;
    // Down until the router judges the pod, when it enforces NetworkPolicy: a port that is
    // down forwards nothing either way.
    if host_up {
        host.set_up(host_link.index)
            .map_err(io_error(format!("set {host_name} up")))?;
    }

    let pod_link = pod
        .link_by_name(ifname)
        .map_err(io_error("look up pod interface"))?
        .ok_or_else(|| missing(format!("pod interface {ifname} vanished after creation")))?;
    let pod_net = Ipv4Net::new(address, block.cidr().prefix_len()).expect("prefix is valid");
    pod.add_address(pod_link.index, pod_net)
        .map_err(io_error(format!("add {pod_net} to {ifname}")))?;
    pod.set_up(pod_link.index)
        .map_err(io_error(format!("set {ifname} up")))?;
    let routes = pod_routes(conf, block);
    for r in &routes {
        let route = Route4 {
            oif: Some(pod_link.index),
            ..*r
        };
        let context = || {
            format!(
                "add route {} via {} in the pod",
                r.dst,
                r.gw.expect("pod routes have a gateway")
            )
        };
        match pod.add_route(route, false) {
            Ok(()) => {}
            // The pod already routes this destination through an earlier attachment (its
            // second interface): append ours behind it, as the reference plugin's result
            // does, so the pod keeps a route when the first attachment goes away.
            Err(e) if netlink::is_exists(&e) => {
                pod.add_route(route, true).map_err(io_error(context()))?
            }
            Err(e) => return Err(io_error(context())(e)),
        }
    }

    // Read the links again: the bridge's MAC can change when a port joins.
    let reread = |nl: &mut Netlink, name: &str| -> Result<Link, CniError> {
        nl.link_by_name(name)
            .map_err(io_error(format!("look up {name}")))?
            .ok_or_else(|| missing(format!("{name} vanished")))
    };
    let bridge = reread(host, &bridge.name)?;
    let host_link = reread(host, &host_name)?;
    let pod_link = reread(pod, ifname)?;
    let iface = |l: &Link, sandbox: Option<&Path>| Interface {
        name: l.name.clone(),
        mac: l.mac.clone(),
        sandbox: sandbox.map(|p| p.display().to_string()),
        mtu: l.mtu,
        extra: Map::new(),
    };
    let mut result = conf.prev_result.clone().unwrap_or_default();
    let base = result.interfaces.len();
    result.interfaces.extend([
        iface(&bridge, None),
        iface(&host_link, None),
        iface(&pod_link, Some(netns.path())),
    ]);
    result.ips.push(IpConfig {
        address: IpNet::V4(pod_net),
        gateway: Some(IpAddr::V4(block.gateway())),
        interface: Some(base + 2),
    });
    result.routes.extend(routes.iter().map(|r| Route {
        dst: IpNet::V4(r.dst),
        gw: r.gw.map(IpAddr::V4),
        extra: Map::new(),
    }));
    if conf.dns.is_some() {
        result.dns = conf.dns.clone();
    }
    Ok(result.to_json(conf.cni_version))
}

fn del(conf: &NetConf, attachment: &Attachment) -> Result<(), CniError> {
    // No namespace is needed: deleting the host end of a veth takes the pod end with it,
    // and an already-deleted namespace has taken both with it.
    let mut leases = lock_leases(conf)?;
    let mut host = host_netlink()?;
    let host_name = host_veth_name(attachment);
    delete_link_named(&mut host, &host_name)?;
    leases.release(attachment).map_err(ipam_error)?;
    Ok(())
}

fn delete_link_named(host: &mut Netlink, name: &str) -> Result<(), CniError> {
    if let Some(l) = host
        .link_by_name(name)
        .map_err(io_error(format!("look up {name}")))?
    {
        match host.delete_link(l.index) {
            Ok(()) => {}
            Err(e) if netlink::is_not_found(&e) => {}
            Err(e) => return Err(io_error(format!("delete {name}"))(e)),
        }
    }
    Ok(())
}

fn check(conf: &NetConf, attachment: &Attachment, netns_path: &Path) -> Result<(), CniError> {
    if !conf.cni_version.has_check() {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("CHECK is not defined for cniVersion {}", conf.cni_version),
        ));
    }
    let fail = |msg: String| CniError::new(ErrorCode::CheckFailed, msg);
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(ErrorCode::InvalidConfig, "CHECK needs prevResult"))?;
    let ifname = attachment.ifname.as_str();
    // Our entries in prevResult: the sandbox interface called ifname and its IPv4 address.
    let pod_index = prev
        .interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.is_some())
        .ok_or_else(|| fail(format!("prevResult lists no sandbox interface {ifname}")))?;
    let expected = prev
        .ips
        .iter()
        .find_map(|ip| match ip.address {
            IpNet::V4(net) if ip.interface == Some(pod_index) => Some(net),
            _ => None,
        })
        .ok_or_else(|| fail(format!("prevResult lists no IPv4 address on {ifname}")))?;

    let netns = Netns::open(netns_path).map_err(netns_error)?;
    let mut pod = netns.netlink().map_err(netns_error)?;
    let block = node_block(conf)?;
    let leases = lock_leases(conf)?;
    let mut host = host_netlink()?;

    let lease = leases.find(attachment).map_err(ipam_error)?;
    match lease.first() {
        None => {
            return Err(fail(format!(
                "no lease for container {} interface {ifname}",
                attachment.container_id
            )));
        }
        Some(l) if l.address != expected.addr() => {
            return Err(fail(format!(
                "the lease holds {}, prevResult says {}",
                l.address,
                expected.addr()
            )));
        }
        Some(_) => {}
    }

    let bridge_name = conf.bridge.as_str();
    let bridge = host
        .link_by_name(bridge_name)
        .map_err(io_error("look up bridge"))?
        .ok_or_else(|| fail(format!("bridge {bridge_name} is missing")))?;
    if !bridge.up {
        return Err(fail(format!("bridge {bridge_name} is down")));
    }
    let bridge_addrs = host
        .addresses(bridge.index)
        .map_err(io_error("list bridge addresses"))?;
    if !bridge_addrs.contains(&block.gateway_net()) {
        return Err(fail(format!(
            "bridge {bridge_name} does not hold the gateway {}",
            block.gateway_net()
        )));
    }
    let host_name = host_veth_name(attachment);
    let host_link = host
        .link_by_name(&host_name)
        .map_err(io_error("look up host veth"))?
        .ok_or_else(|| fail(format!("host veth {host_name} is missing")))?;
    if host_link.master != Some(bridge.index) {
        return Err(fail(format!(
            "host veth {host_name} is not a port of {bridge_name}"
        )));
    }
    if !host_link.up {
        return Err(fail(format!("host veth {host_name} is down")));
    }
    let hairpin = host
        .hairpin(host_link.index)
        .map_err(io_error("read hairpin mode"))?;
    if hairpin != Some(true) {
        return Err(fail(format!(
            "hairpin mode is off on host veth {host_name}"
        )));
    }

    let pod_link = pod
        .link_by_name(ifname)
        .map_err(io_error("look up pod interface"))?
        .ok_or_else(|| {
            fail(format!(
                "interface {ifname} is missing in {}",
                netns_path.display()
            ))
        })?;
    if !pod_link.up {
        return Err(fail(format!("interface {ifname} is down")));
    }
    let pod_addrs = pod
        .addresses(pod_link.index)
        .map_err(io_error("list pod addresses"))?;
    if !pod_addrs.contains(&expected) {
        return Err(fail(format!("interface {ifname} does not hold {expected}")));
    }
    let pod_routes_now = pod.routes().map_err(io_error("list pod routes"))?;
    // Only the routes ADD installed, which are those it listed in its result.
    let listed = |r: &Route4| {
        prev.routes
            .iter()
            .any(|p| p.dst == IpNet::V4(r.dst) && p.gw == r.gw.map(IpAddr::V4))
    };
    for want in pod_routes(conf, &block).into_iter().filter(listed) {
        let present = pod_routes_now
            .iter()
            .any(|r| r.dst == want.dst && r.gw == want.gw && r.oif == Some(pod_link.index));
        if !present {
            return Err(fail(format!(
                "route {} via {} on {ifname} is missing",
                want.dst,
                want.gw.expect("pod routes have a gateway")
            )));
        }
    }
    Ok(())
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    if !conf.cni_version.has_status_and_gc() {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("STATUS is not defined for cniVersion {}", conf.cni_version),
        ));
    }
    match NodeBlock::read(&conf.state_dir) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(CniError::new(
            ErrorCode::PluginNotAvailable,
            format!(
                "the node's address block is not known yet: {} does not exist (is the weft router running?)",
                NodeBlock::path(&conf.state_dir).display()
            ),
        )),
        Err(e) => Err(CniError::new(
            ErrorCode::PluginNotAvailable,
            format!("the node's address block is unreadable: {e}"),
        )),
    }
}

fn gc(conf: &NetConf) -> Result<(), CniError> {
    if !conf.cni_version.has_status_and_gc() {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("GC is not defined for cniVersion {}", conf.cni_version),
        ));
    }
    // Without the list we cannot tell live from stale: refuse rather than delete every pod.
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            "GC needs cni.dev/valid-attachments (or cni.dev/attachments)",
        )
    })?;
    let mut leases = lock_leases(conf)?;
    let mut host = host_netlink()?;
    for lease in leases.leases().map_err(ipam_error)? {
        if !valid.contains(&lease.attachment) {
            delete_link_named(&mut host, &host_veth_name(&lease.attachment))?;
            leases.release_address(lease.address).map_err(ipam_error)?;
        }
    }
    // Host veths on our bridge that no valid attachment owns (a lease lost by hand, say).
    if let Some(bridge) = host
        .link_by_name(conf.bridge.as_str())
        .map_err(io_error("look up bridge"))?
    {
        let keep: BTreeSet<String> = valid.iter().map(host_veth_name).collect();
        for link in host.links().map_err(io_error("list links"))? {
            if link.master == Some(bridge.index)
                && link.name.starts_with(HOST_VETH_PREFIX)
                && !keep.contains(&link.name)
            {
                delete_link_named(&mut host, &link.name)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{ContainerId, IfName};

    #[test]
    fn host_veth_names_are_stable_short_and_distinct() {
        let a = |c: &str, i: &str| Attachment {
            container_id: ContainerId::parse(c).unwrap(),
            ifname: IfName::parse(i).unwrap(),
        };
        let n = host_veth_name(&a("abc", "eth0"));
        assert_eq!(n, host_veth_name(&a("abc", "eth0")));
        assert!(n.len() <= 15 && n.starts_with(HOST_VETH_PREFIX), "{n}");
        assert_ne!(n, host_veth_name(&a("abc", "eth1")));
        assert_ne!(n, host_veth_name(&a("abd", "eth0")));
        // The separator keeps ("ab","ceth0") and ("abc","eth0") apart.
        assert_ne!(
            host_veth_name(&a("ab", "ceth0")),
            host_veth_name(&a("abc", "eth0"))
        );
    }

    #[test]
    fn version_reply_lists_exactly_our_versions() {
        let v = version_reply(br#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        assert_eq!(version_reply(b"")["cniVersion"], "1.1.0");
    }
}
