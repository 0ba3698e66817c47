//! The MTU arithmetic: what a pod packet grows by in the tunnel, the pod MTU for an underlay
//! MTU (computed, never guessed: docs/design.md §2), and the underlay MTU as the kernel reports
//! it. The router sizes its TUN device with it and `weft install-cni` writes it into the
//! conflist, so both always agree.

use std::io;

use crate::netlink::Netlink;

/// The outer IPv4 header (no options).
pub const OUTER_IPV4_HEADER: u32 = 20;
/// The outer UDP header.
pub const OUTER_UDP_HEADER: u32 = 8;
/// The envelope of a datagram forwarded through a relay (weft-mesh's `wire::RELAY_HEADER_LEN`;
/// the router checks at compile time that the two agree).
pub const RELAY_ENVELOPE: u32 = 68;
/// A sealed data datagram's header and tag (weft-crypto's `DATA_OVERHEAD`, checked likewise).
pub const SEALED_OVERHEAD: u32 = 29;

/// Bytes a pod packet grows by on the longest path, through a relay: outer IPv4 and UDP
/// headers, the relay envelope, and the sealed datagram's header and tag.
pub const TUNNEL_OVERHEAD: u32 =
    OUTER_IPV4_HEADER + OUTER_UDP_HEADER + RELAY_ENVELOPE + SEALED_OVERHEAD;

/// The smallest datagram every IPv4 host must accept (RFC 791): a pod MTU below it is refused.
pub const MIN_POD_MTU: u32 = 576;

/// The pod MTU for an underlay MTU. `None` when the underlay is too small to carry
/// [`MIN_POD_MTU`] bytes inside the tunnel.
pub fn pod_mtu(underlay_mtu: u32) -> Option<u32> {
    underlay_mtu
        .checked_sub(TUNNEL_OVERHEAD)
        .filter(|mtu| *mtu >= MIN_POD_MTU)
}

/// Why the underlay MTU could not be read from the kernel.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct UnderlayMtuError {
    /// The step that failed ("list links", "detect the underlay MTU", …).
    pub what: String,
    /// What the kernel said.
    pub source: io::Error,
}

fn ctx(what: impl Into<String>) -> impl FnOnce(io::Error) -> UnderlayMtuError {
    let what = what.into();
    move |source| UnderlayMtuError { what, source }
}

/// The underlay MTU of the calling thread's network namespace: that of the interface holding
/// the default route, or else the smallest MTU among the up interfaces that carry an IPv4
/// address and are neither `ours` (weft's own TUN and bridge) nor bridge ports (a lab node has
/// no default route).
pub fn underlay_mtu(ours: &[&str]) -> Result<u32, UnderlayMtuError> {
    let mut nl = Netlink::new().map_err(ctx("open netlink"))?;
    let links = nl.links().map_err(ctx("list links"))?;
    let routes = nl.routes().map_err(ctx("list routes"))?;
    let by_index = |i: u32| links.iter().find(|l| l.index == i);
    if let Some(mtu) = routes
        .iter()
        .filter(|r| r.dst.prefix_len() == 0)
        .filter_map(|r| by_index(r.oif?)?.mtu)
        .min()
    {
        return Ok(mtu);
    }
    let mut best: Option<u32> = None;
    for l in &links {
        if !l.up || l.name == "lo" || ours.contains(&l.name.as_str()) || l.master.is_some() {
            continue;
        }
        let has_v4 = !nl
            .addresses(l.index)
            .map_err(ctx(format!("addresses of {}", l.name)))?
            .is_empty();
        if let (true, Some(mtu)) = (has_v4, l.mtu) {
            best = Some(best.map_or(mtu, |b| b.min(mtu)));
        }
    }
    best.ok_or_else(|| UnderlayMtuError {
        what: "detect the underlay MTU".into(),
        source: io::Error::other("no up interface with an IPv4 address; pass --underlay-mtu"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_mtu_leaves_room_for_the_relay_path() {
        assert_eq!(TUNNEL_OVERHEAD, 20 + 8 + 68 + 29);
        assert_eq!(pod_mtu(1500), Some(1375));
        assert_eq!(pod_mtu(9001), Some(9001 - TUNNEL_OVERHEAD));
        assert_eq!(pod_mtu(TUNNEL_OVERHEAD + MIN_POD_MTU), Some(MIN_POD_MTU));
        assert_eq!(pod_mtu(TUNNEL_OVERHEAD + MIN_POD_MTU - 1), None);
        assert_eq!(pod_mtu(600), None);
        assert_eq!(pod_mtu(0), None);
    }

    /// In a fresh network namespace of a thread of its own (nothing is created in the
    /// caller's): no up interface means no answer; a bridge holding an address is the
    /// underlay unless it is one of ours.
    #[test]
    fn the_underlay_mtu_comes_from_the_kernel() {
        if !crate::is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "needs root for a network namespace"
            );
            eprintln!("SKIPPED the_underlay_mtu_comes_from_the_kernel: needs root");
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let err = underlay_mtu(&[]).unwrap_err();
            assert!(err.to_string().contains("--underlay-mtu"), "{err}");
            let mut nl = Netlink::new().unwrap();
            nl.ensure_bridge("br-u", 1400, "198.18.0.1/24".parse().unwrap())
                .unwrap();
            assert_eq!(underlay_mtu(&[]).unwrap(), 1400);
            assert!(underlay_mtu(&["br-u"]).is_err());
        })
        .join()
        .unwrap();
    }
}
