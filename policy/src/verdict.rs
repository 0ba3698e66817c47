//! One connection judged against the model: what the tests check, and what `weft policy
//! explain` shows to explain a drop.

use std::net::IpAddr;

use crate::error::ObjectRef;
use crate::model::{Direction, Model};
use crate::ports::Protocol;

/// The judgement of a new connection, on each of its two ends. Replies within an allowed
/// connection are not judged: they are always allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The source pod's egress.
    pub egress: Side,
    /// The destination pod's ingress.
    pub ingress: Side,
}

impl Verdict {
    pub fn is_allowed(&self) -> bool {
        self.egress.is_allowed() && self.ingress.is_allowed()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Side {
    /// A pod talking to itself: no policy applies (a pod cannot block access to itself).
    Loopback,
    /// That end is not a local pod of the model: its own node judges it, or it is no pod.
    NotLocal,
    /// No policy selects the pod in this direction: everything is allowed.
    NotIsolated,
    /// Allowed by these policies (each has an entry that matches).
    Allowed(Vec<ObjectRef>),
    /// The pod is isolated by these policies and none of them allows the connection.
    Denied(Vec<ObjectRef>),
}

impl Side {
    pub fn is_allowed(&self) -> bool {
        !matches!(self, Side::Denied(_))
    }
}

/// Judges a new connection from `src` to `dst` (`port` is the destination port).
pub fn allows(model: &Model, src: IpAddr, dst: IpAddr, protocol: Protocol, port: u16) -> Verdict {
    // The same pod on another of its addresses is still the pod talking to itself.
    let same_pod = match (model.pod_by_ip(src), model.pod_by_ip(dst)) {
        (Some(a), Some(b)) => a.pod == b.pod,
        _ => false,
    };
    if src == dst || same_pod {
        return Verdict {
            egress: Side::Loopback,
            ingress: Side::Loopback,
        };
    }
    let side = |local: IpAddr, peer: IpAddr, pick: fn(&crate::PodRules) -> &Direction| match model
        .pod_by_ip(local)
    {
        None => Side::NotLocal,
        Some(pod) => judge(pick(pod), peer, protocol, port),
    };
    Verdict {
        egress: side(src, dst, |p| &p.egress),
        ingress: side(dst, src, |p| &p.ingress),
    }
}

fn judge(dir: &Direction, peer: IpAddr, protocol: Protocol, port: u16) -> Side {
    if !dir.is_isolated() {
        return Side::NotIsolated;
    }
    let mut by: Vec<ObjectRef> = dir
        .allow
        .iter()
        .filter(|a| a.matches(peer, protocol, port))
        .map(|a| a.policy.clone())
        .collect();
    by.dedup();
    if by.is_empty() {
        Side::Denied(dir.isolated_by.clone())
    } else {
        Side::Allowed(by)
    }
}
