//! Routes: which peer owns an overlay address, and how to reach each peer (direct or through
//! relays), computed deterministically from the gossiped records: the same records and the
//! same local sessions give the same routes on every run.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::id::{Endpoint, PeerId, ShortId};
use crate::record::PeerRecord;

/// How to reach a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NextHop {
    /// Straight to its endpoint.
    Direct(Endpoint),
    /// Wrapped in a relay envelope and sent to `via`, the first relay on the path.
    Relay {
        /// The first relay.
        via: PeerId,
        /// The relay's endpoint.
        endpoint: Endpoint,
    },
}

/// The overlay routes: address → owning peer, and peer → first relay for the peers we have
/// no direct link with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// Pod blocks and their owners, longest prefix first.
    blocks: Vec<(Ipv4Net, PeerId)>,
    /// First relay of the shortest relayed path, for peers without a direct link.
    relays: BTreeMap<PeerId, PeerId>,
}

impl RouteTable {
    /// The peer whose block holds `addr`.
    pub fn owner(&self, addr: Ipv4Addr) -> Option<PeerId> {
        self.blocks
            .iter()
            .find(|(net, _)| net.contains(&addr))
            .map(|(_, id)| *id)
    }

    /// Every block and its owner.
    pub fn blocks(&self) -> &[(Ipv4Net, PeerId)] {
        &self.blocks
    }

    /// The first relay towards `peer`, when it is reached through relays.
    pub fn relay_for(&self, peer: &PeerId) -> Option<PeerId> {
        self.relays.get(peer).copied()
    }

    /// Every relayed peer and its first relay.
    pub fn relays(&self) -> &BTreeMap<PeerId, PeerId> {
        &self.relays
    }

    /// Builds the table from the live records and our direct links.
    ///
    /// A link X–Y between two other members is up when both are alive and neither lists the
    /// other in `links_down`; our own links are the peers in `direct` (established sessions
    /// over a direct path). Peers in `direct` need no route; for the others a breadth-first
    /// search finds the shortest relayed path, visiting neighbours in id order so that ties go
    /// to the lowest key.
    pub fn compute<'a>(
        me: PeerId,
        records: impl Iterator<Item = &'a PeerRecord>,
        direct: &BTreeSet<PeerId>,
    ) -> Self {
        let mut blocks = Vec::new();
        let mut members: BTreeMap<PeerId, BTreeSet<ShortId>> = BTreeMap::new();
        for r in records.filter(|r| r.is_alive()) {
            for b in &r.pod_blocks {
                blocks.push((*b, r.id));
            }
            members.insert(r.id, r.links_down.iter().copied().collect());
        }
        // Longest prefix first, then by address: a deterministic longest-prefix match.
        blocks.sort_by(|a, b| {
            b.0.prefix_len()
                .cmp(&a.0.prefix_len())
                .then(a.0.cmp(&b.0))
                .then(a.1.cmp(&b.1))
        });
        let link_up = |x: &PeerId, y: &PeerId| -> bool {
            match (members.get(x), members.get(y)) {
                (Some(dx), Some(dy)) => !dx.contains(&y.short()) && !dy.contains(&x.short()),
                _ => false,
            }
        };
        let mut relays = BTreeMap::new();
        let wanted: Vec<PeerId> = members
            .keys()
            .filter(|id| **id != me && !direct.contains(id))
            .copied()
            .collect();
        if !wanted.is_empty() {
            // Common case: a two-hop path through one of our direct peers (lowest key wins).
            let mut rest = Vec::new();
            for target in wanted {
                match direct
                    .iter()
                    .find(|via| **via != target && link_up(via, &target))
                {
                    Some(via) => {
                        relays.insert(target, *via);
                    }
                    None => rest.push(target),
                }
            }
            if !rest.is_empty() {
                // Longer paths: BFS over the whole graph from our direct peers.
                let mut first: BTreeMap<PeerId, PeerId> = BTreeMap::new();
                let mut queue = VecDeque::new();
                for d in direct.iter().filter(|d| members.contains_key(d)) {
                    first.insert(*d, *d);
                    queue.push_back(*d);
                }
                while let Some(x) = queue.pop_front() {
                    let hop = first[&x];
                    for y in members.keys() {
                        if *y != me && !first.contains_key(y) && link_up(&x, y) {
                            first.insert(*y, hop);
                            queue.push_back(*y);
                        }
                    }
                }
                for target in rest {
                    if let Some(hop) = first.get(&target).filter(|h| **h != target) {
                        relays.insert(target, *hop);
                    }
                }
            }
        }
        Self { blocks, relays }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Liveness;

    fn rec(id: u8, block: &str, down: &[u8]) -> PeerRecord {
        PeerRecord {
            id: PeerId([id; 32]),
            incarnation: 1,
            version: 1,
            name: String::new(),
            liveness: Liveness::Alive,
            announced: vec![],
            seen: vec![],
            pod_blocks: vec![block.parse().unwrap()],
            external: false,
            free_space: vec![],
            links_down: down.iter().map(|d| PeerId([*d; 32]).short()).collect(),
        }
    }

    #[test]
    fn relays_through_the_lowest_peer_that_links_both_ways() {
        let me = PeerId([1; 32]);
        // 1 cannot reach 4; 2 says it cannot reach 4 either; 3 can.
        let records = [
            rec(1, "10.32.1.0/24", &[4]),
            rec(2, "10.32.2.0/24", &[4]),
            rec(3, "10.32.3.0/24", &[]),
            rec(4, "10.32.4.0/24", &[1]),
        ];
        let direct: BTreeSet<_> = [PeerId([2; 32]), PeerId([3; 32])].into();
        let t = RouteTable::compute(me, records.iter(), &direct);
        assert_eq!(t.relay_for(&PeerId([4; 32])), Some(PeerId([3; 32])));
        assert_eq!(t.owner("10.32.4.7".parse().unwrap()), Some(PeerId([4; 32])));
        assert_eq!(t.owner("10.33.0.1".parse().unwrap()), None);
        // Same input, same table.
        assert_eq!(t, RouteTable::compute(me, records.iter(), &direct));
    }

    #[test]
    fn finds_longer_paths_when_no_direct_peer_links_the_target() {
        let me = PeerId([1; 32]);
        let records = [
            rec(1, "10.32.1.0/24", &[3, 4]),
            rec(2, "10.32.2.0/24", &[4]),
            rec(3, "10.32.3.0/24", &[1]),
            rec(4, "10.32.4.0/24", &[1, 2]),
        ];
        let direct: BTreeSet<_> = [PeerId([2; 32])].into();
        let t = RouteTable::compute(me, records.iter(), &direct);
        // 1 → 2 → 3 → 4.
        assert_eq!(t.relay_for(&PeerId([4; 32])), Some(PeerId([2; 32])));
        assert_eq!(t.relay_for(&PeerId([3; 32])), Some(PeerId([2; 32])));
    }
}
