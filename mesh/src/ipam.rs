//! Address blocks for clusters without Kubernetes podCIDRs (docs/design.md §5).
//!
//! # Why no block ever has two owners
//!
//! Space is **handed out only by its current owner**, and an owner gives space up *before*
//! the receiver takes it. The cluster range starts owned by exactly one node, the founder
//! (configured with `found_address_space`, like Weave's `--ipalloc-init seed=`): nobody else
//! owns anything until an owner gives it to them. A node without a block asks an owner with
//! free space ([`ControlMessage::BlockRequest`](crate::wire::ControlMessage)); the owner moves
//! half of its largest free range from "free" to "outgoing" (no longer its own), persists
//! that, and sends a `BlockGrant`, resending until the `BlockGrantAck`. The receiver takes the
//! space when the grant arrives, remembering the grant id so a resent grant is never taken
//! twice (it may have given part of it away since). So at every instant each range is owned by
//! at most one node, or by none while a grant is in flight or lost: loss, duplication,
//! reordering and partitions can delay or orphan space, never duplicate it. Restarts keep the
//! invariant because the node's [`AddressSpace`] is persisted before anything it implies is
//! sent (the router writes it on `Event::StateChanged`, which comes before the transmits).
//!
//! Nothing is ever claimed by guessing: a node that reaches no owner with free space waits and
//! says why ([`WaitReason`]). Space is only ever taken without its owner's consent by the
//! explicit take-over command for a peer the operator declares gone for good (like Weave's
//! `rmpeer`): the tombstone it writes lists exactly the space taken, other owners cancel
//! grants still in flight to that peer only for space outside that list, and a taken-over
//! node that comes back drops whatever the tombstone lists.
//!
//! Blocks from outside (`pod_cidr`, a Kubernetes podCIDR) bypass all of this.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::id::PeerId;

/// Default cluster range (docs/design.md §5, Weave's default too).
pub const DEFAULT_CLUSTER_RANGE: &str = "10.32.0.0/12";
/// Default node block prefix (docs/design.md §5): 254 pods per node.
pub const DEFAULT_BLOCK_PREFIX: u8 = 24;

/// A grant on its way to another node: no longer ours, not yet (known to be) theirs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingGrant {
    /// The receiver.
    pub to: PeerId,
    /// The space given.
    pub space: Vec<Ipv4Net>,
}

/// The address space a node owns and the grants it has in flight; persisted across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressSpace {
    /// A block given from outside (podCIDR): used for pods, outside the ownership protocol.
    pub external: Option<Ipv4Net>,
    /// The owned block this node's pods use.
    pub pod_block: Option<Ipv4Net>,
    /// Owned space not in use, which the node may give away; kept sorted and disjoint.
    pub free: Vec<Ipv4Net>,
    /// Grants sent and not yet acknowledged, by grant id.
    pub outgoing: BTreeMap<u64, OutgoingGrant>,
    /// Grants taken, by giver and id: a resent grant is acknowledged, not taken again.
    pub accepted: BTreeSet<(PeerId, u64)>,
}

/// Why a node has no block yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// No member we know of owns free space (none learned yet, or the range is used up).
    NoOwnerWithFreeSpace,
    /// Owners with free space are known, but we have no session with any of them.
    OwnersUnreachable {
        /// How many such owners are known.
        owners: usize,
    },
    /// A request is out to this owner.
    AwaitingGrant {
        /// The owner asked.
        owner: PeerId,
    },
}

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoOwnerWithFreeSpace => {
                write!(f, "no known member owns free address space")
            }
            Self::OwnersUnreachable { owners } => write!(
                f,
                "{owners} member(s) own free address space but none is reachable"
            ),
            Self::AwaitingGrant { owner } => write!(f, "asked {owner:?} for address space"),
        }
    }
}

/// Number of addresses in `net`.
pub fn size(net: &Ipv4Net) -> u64 {
    1u64 << (32 - net.prefix_len())
}

/// `space` without `hole`: the ranges of `space` outside it, as aligned CIDRs.
pub fn subtract(space: Ipv4Net, hole: Ipv4Net) -> Vec<Ipv4Net> {
    if !space.contains(&hole) {
        if hole.contains(&space) {
            return vec![];
        }
        return vec![space];
    }
    if space == hole {
        return vec![];
    }
    let mut out = Vec::new();
    // Halve down to the hole, keeping the half it is not in each time.
    for half in space
        .subnets(space.prefix_len() + 1)
        .expect("prefix below hole's")
    {
        if half.contains(&hole) {
            out.extend(subtract(half, hole));
        } else {
            out.push(half);
        }
    }
    out.sort();
    out
}

/// Whether two CIDRs share any address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(b) || b.contains(a)
}

impl AddressSpace {
    /// The founder's space: the whole cluster range, its first block in use for pods.
    pub fn found(range: Ipv4Net, block_prefix: u8) -> Self {
        let mut s = Self::default();
        s.take(vec![range], block_prefix);
        s
    }

    /// A node whose pods use a block given from outside.
    pub fn external(block: Ipv4Net) -> Self {
        Self {
            external: Some(block),
            ..Self::default()
        }
    }

    /// The block pods on this node use, wherever it came from.
    pub fn block(&self) -> Option<Ipv4Net> {
        self.external.or(self.pod_block)
    }

    /// Everything this node owns under the protocol (pod block and free space).
    pub fn owned(&self) -> Vec<Ipv4Net> {
        self.pod_block.iter().chain(&self.free).copied().collect()
    }

    /// Addresses free to give.
    pub fn free_size(&self) -> u64 {
        self.free.iter().map(size).sum()
    }

    /// Takes ownership of `space`: the first block of it becomes the pod block if we have
    /// none, the rest is free.
    pub fn take(&mut self, space: Vec<Ipv4Net>, block_prefix: u8) {
        for net in space {
            let net = net.trunc();
            if self.block().is_none() && net.prefix_len() <= block_prefix {
                let block = Ipv4Net::new(net.network(), block_prefix).expect("valid prefix");
                self.pod_block = Some(block);
                self.free.extend(subtract(net, block));
            } else {
                self.free.push(net);
            }
        }
        self.free.sort();
    }

    /// Gives away half of the largest free range (the whole range if it is one block or
    /// smaller): halving spreads ownership so later joiners find owners other than the
    /// founder, as Weave's ring does. `None` when nothing is free.
    pub fn give(&mut self, to: PeerId, grant: u64, block_prefix: u8) -> Option<Vec<Ipv4Net>> {
        let (i, largest) = self
            .free
            .iter()
            .enumerate()
            // Largest first; among equals the lowest address, so the choice is deterministic.
            .max_by(|(_, a), (_, b)| size(a).cmp(&size(b)).then(b.cmp(a)))
            .map(|(i, n)| (i, *n))?;
        let given = if largest.prefix_len() < block_prefix {
            let mut halves = largest
                .subnets(largest.prefix_len() + 1)
                .expect("prefix below 32");
            let low = halves.next().expect("two halves");
            let high = halves.next().expect("two halves");
            self.free[i] = low;
            high
        } else {
            self.free.remove(i);
            largest
        };
        self.free.sort();
        let space = vec![given];
        self.outgoing.insert(
            grant,
            OutgoingGrant {
                to,
                space: space.clone(),
            },
        );
        Some(space)
    }

    /// Gives up every owned range that overlaps `taken` (space a peer took over from us while
    /// we were declared gone). Returns whether anything was dropped.
    pub fn surrender(&mut self, taken: &[Ipv4Net]) -> bool {
        let before = self.owned();
        if self
            .pod_block
            .is_some_and(|b| taken.iter().any(|t| overlaps(&b, t)))
        {
            self.pod_block = None;
        }
        let mut free = Vec::new();
        for net in std::mem::take(&mut self.free) {
            let mut parts = vec![net];
            for t in taken {
                parts = parts.into_iter().flat_map(|p| subtract(p, *t)).collect();
            }
            free.extend(parts);
        }
        free.sort();
        self.free = free;
        before != self.owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn subtract_leaves_the_rest_as_aligned_cidrs() {
        let rest = subtract(net("10.32.0.0/12"), net("10.32.0.0/24"));
        assert_eq!(rest.len(), 12);
        assert_eq!(rest.iter().map(size).sum::<u64>(), (1 << 20) - 256);
        assert!(rest.iter().all(|r| !overlaps(r, &net("10.32.0.0/24"))));
        assert_eq!(
            subtract(net("10.0.0.0/24"), net("10.1.0.0/24")),
            vec![net("10.0.0.0/24")]
        );
        assert!(subtract(net("10.0.0.0/24"), net("10.0.0.0/16")).is_empty());
    }

    #[test]
    fn giving_never_leaves_a_range_owned_twice() {
        let mut founder = AddressSpace::found(net("10.32.0.0/12"), 24);
        assert_eq!(founder.pod_block, Some(net("10.32.0.0/24")));
        let mut others: Vec<AddressSpace> = Vec::new();
        for g in 0..40u64 {
            let space = founder.give(PeerId([g as u8; 32]), g, 24).unwrap();
            founder.outgoing.clear();
            let mut s = AddressSpace::default();
            s.take(space, 24);
            assert!(s.pod_block.is_some());
            others.push(s);
        }
        let mut all: Vec<Ipv4Net> = founder.owned();
        for o in &others {
            all.extend(o.owned());
        }
        all.sort();
        for w in all.windows(2) {
            assert!(!overlaps(&w[0], &w[1]), "{} and {}", w[0], w[1]);
        }
        let total: u64 = all.iter().map(size).sum();
        assert_eq!(total, 1 << 20, "nothing lost, nothing duplicated");
    }

    #[test]
    fn surrender_drops_exactly_what_was_taken() {
        let mut s = AddressSpace::found(net("10.32.0.0/16"), 24);
        assert!(s.surrender(&[net("10.32.0.0/24"), net("10.32.128.0/17")]));
        assert_eq!(s.pod_block, None);
        assert_eq!(s.free_size(), (1 << 16) - 256 - (1 << 15));
        assert!(!s.surrender(&[net("10.99.0.0/24")]));
    }
}
