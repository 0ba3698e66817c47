//! The simulator's NAT: Linux conntrack with an nftables masquerade, as the lab's NAT boxes
//! and Linux-based home and cloud routers are (docs/design.md §4, §7). What the lab showed:
//!
//! - a flow is a conntrack entry: an outbound one maps the inside socket to a public port
//!   for one remote; a reply from exactly that remote gets in (address-and-port-dependent
//!   filtering) and marks it replied;
//! - the inside port is kept while no entry for the same remote holds it (endpoint-
//!   independent mapping in practice); otherwise the flow gets another port;
//! - an unsolicited packet from outside leaves an entry of its own (unless a firewall drops
//!   it first), so the inside's later packets to that remote clash with it and leave from
//!   another port, which the remote's NAT does not let in;
//! - entries expire after [`UNREPLIED_TIMEOUT`] unreplied, [`REPLIED_TIMEOUT`] replied,
//!   each packet of the flow restarting the clock.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// How long conntrack keeps a UDP entry that saw no reply (`nf_conntrack_udp_timeout`).
pub const UNREPLIED_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it keeps one that did (`nf_conntrack_udp_timeout_stream`).
pub const REPLIED_TIMEOUT: Duration = Duration::from_secs(120);

/// The first port a NAT picks when the inside port is taken (then counting up).
const FIRST_PICKED_PORT: u16 = 40000;

/// A NAT in front of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// A bare masquerade (the lab's `--nat N`): the inside port kept while free, replies
    /// only, and unsolicited packets leave an entry that makes the inside's own packets to
    /// their sender leave from another port.
    EndpointIndependent,
    /// A port-restricted home router (`--nat N:restricted`): the same masquerade behind a
    /// stateful input firewall, which drops unsolicited packets before they leave any state.
    Restricted,
    /// A new port for every flow (`--nat N:symmetric`): the port a third peer saw is
    /// useless to anyone else. Hole punching fails.
    Symmetric,
}

/// One conntrack entry.
#[derive(Debug, Clone)]
struct Flow {
    /// The inside socket, for an outbound flow; None for an unsolicited packet's entry.
    inside: Option<SocketAddr>,
    remote: SocketAddr,
    public_port: u16,
    replied: bool,
    /// Virtual time at which it expires.
    expires: Duration,
}

/// A NAT's state: its public address and conntrack table.
#[derive(Debug)]
pub struct Nat {
    /// Its kind.
    pub kind: NatKind,
    /// Its public address.
    pub public: Ipv4Addr,
    flows: Vec<Flow>,
    next_port: u16,
}

impl Nat {
    /// A NAT with an empty table.
    pub fn new(kind: NatKind, public: Ipv4Addr) -> Self {
        Self {
            kind,
            public,
            flows: Vec::new(),
            next_port: FIRST_PICKED_PORT,
        }
    }

    fn expire(&mut self, now: Duration) {
        self.flows.retain(|f| f.expires > now);
    }

    fn refresh(f: &mut Flow, now: Duration) {
        f.expires = now
            + if f.replied {
                REPLIED_TIMEOUT
            } else {
                UNREPLIED_TIMEOUT
            };
    }

    /// `inside` sends to `remote` at `now`: the public source port it leaves from.
    pub fn outbound(&mut self, now: Duration, inside: SocketAddr, remote: SocketAddr) -> u16 {
        self.expire(now);
        if let Some(f) = self
            .flows
            .iter_mut()
            .find(|f| f.inside == Some(inside) && f.remote == remote)
        {
            Self::refresh(f, now);
            return f.public_port;
        }
        let taken = |flows: &[Flow], port: u16| {
            flows
                .iter()
                .any(|f| f.remote == remote && f.public_port == port)
        };
        let keep = match self.kind {
            NatKind::Symmetric => None,
            _ => Some(inside.port()).filter(|p| !taken(&self.flows, *p)),
        };
        let port = match keep {
            Some(p) => p,
            None => loop {
                let p = self.next_port;
                self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_PICKED_PORT);
                if !taken(&self.flows, p) {
                    break p;
                }
            },
        };
        self.flows.push(Flow {
            inside: Some(inside),
            remote,
            public_port: port,
            replied: false,
            expires: now + UNREPLIED_TIMEOUT,
        });
        port
    }

    /// A packet from `remote` to the public `port` arrives at `now`: the inside socket it
    /// goes to, if any. An unsolicited one leaves its own entry (a bare NAT) or nothing (a
    /// firewalled one).
    pub fn inbound(&mut self, now: Duration, remote: SocketAddr, port: u16) -> Option<SocketAddr> {
        self.expire(now);
        if let Some(f) = self
            .flows
            .iter_mut()
            .find(|f| f.remote == remote && f.public_port == port)
        {
            if f.inside.is_some() {
                f.replied = true;
            }
            Self::refresh(f, now);
            return f.inside;
        }
        if self.kind != NatKind::Restricted {
            self.flows.push(Flow {
                inside: None,
                remote,
                public_port: port,
                replied: false,
                expires: now + UNREPLIED_TIMEOUT,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const A_IN: &str = "100.64.0.1:6786";

    #[test]
    fn the_inside_port_is_kept_and_only_replies_get_in() {
        let mut nat = Nat::new(NatKind::EndpointIndependent, Ipv4Addr::new(198, 19, 0, 1));
        let (peer, other) = (ep("198.18.0.9:6786"), ep("198.18.0.8:6786"));
        let t = Duration::ZERO;
        assert_eq!(nat.outbound(t, ep(A_IN), peer), 6786);
        assert_eq!(
            nat.outbound(t, ep(A_IN), other),
            6786,
            "the same port for another"
        );
        assert_eq!(nat.inbound(t, peer, 6786), Some(ep(A_IN)));
        assert_eq!(
            nat.inbound(t, ep("198.18.0.9:7000"), 6786),
            None,
            "port-dependent"
        );
        // Replied: kept 120 s; unreplied: 30 s.
        let later = UNREPLIED_TIMEOUT + Duration::from_secs(1);
        assert_eq!(nat.inbound(later, peer, 6786), Some(ep(A_IN)));
        assert_eq!(nat.inbound(later, other, 6786), None, "expired");
    }

    #[test]
    fn an_unsolicited_packet_makes_the_reply_leave_from_another_port() {
        let mut nat = Nat::new(NatKind::EndpointIndependent, Ipv4Addr::new(198, 19, 0, 1));
        let peer = ep("198.19.0.2:6786");
        assert_eq!(nat.inbound(Duration::ZERO, peer, 6786), None);
        let port = nat.outbound(Duration::from_secs(1), ep(A_IN), peer);
        assert_ne!(port, 6786, "clashes with the unsolicited packet's entry");
        // Once that entry expired, the port is free again for a new flow.
        let mut nat = Nat::new(NatKind::EndpointIndependent, Ipv4Addr::new(198, 19, 0, 1));
        assert_eq!(nat.inbound(Duration::ZERO, peer, 6786), None);
        assert_eq!(nat.outbound(UNREPLIED_TIMEOUT, ep(A_IN), peer), 6786);
    }

    #[test]
    fn a_firewall_keeps_no_state_and_symmetric_maps_per_remote() {
        let mut nat = Nat::new(NatKind::Restricted, Ipv4Addr::new(198, 19, 0, 1));
        let peer = ep("198.19.0.2:6786");
        assert_eq!(nat.inbound(Duration::ZERO, peer, 6786), None);
        assert_eq!(nat.outbound(Duration::ZERO, ep(A_IN), peer), 6786);
        let mut nat = Nat::new(NatKind::Symmetric, Ipv4Addr::new(198, 19, 0, 1));
        let a = nat.outbound(Duration::ZERO, ep(A_IN), ep("198.18.0.9:6786"));
        let b = nat.outbound(Duration::ZERO, ep(A_IN), ep("198.18.0.8:6786"));
        assert_ne!(a, b);
    }
}
