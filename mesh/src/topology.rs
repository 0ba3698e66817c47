//! The links between members, as this node knows them: its own tunnels first-hand, every other
//! pair from gossip. Records list links as their exceptions (`links_down`), so a link X–Y is
//! seen up by X when X does not list Y; when X and Y disagree the link is flagged asymmetric.
//! A pair that is not up both ways is relayed along the route X would compute from the same
//! records ([`RouteTable::compute`]), or down when no relay links them. Pure and
//! deterministic: the same records and the same local tunnels give the same links, in the
//! same order.

use std::collections::{BTreeMap, BTreeSet};

use crate::id::{PeerId, ShortId};
use crate::record::PeerRecord;
use crate::routes::{NextHop, RouteTable};
use crate::tunnel::TunnelState;

/// How a link carries traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LinkState {
    /// The two reach each other straight.
    Direct,
    /// Through a relay: the first relay on the path from the lower key's end.
    Relayed {
        /// The first relay.
        via: PeerId,
    },
    /// Our own tunnel, whose first handshake is in flight (only known for our links).
    Handshaking,
    /// Neither directly nor through a relay.
    Down,
}

/// One link between two live members, `a < b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkView {
    /// The lower key.
    pub a: PeerId,
    /// The higher key.
    pub b: PeerId,
    /// How it carries traffic.
    pub state: LinkState,
    /// `a` does not list `b` as unreachable (its own view of the direct link).
    pub a_sees_b: bool,
    /// `b` does not list `a` as unreachable.
    pub b_sees_a: bool,
    /// One of the two is this node: the state comes from its tunnel, not from gossip.
    pub local: bool,
}

impl LinkView {
    /// The two ends disagree about the direct link (one lists the other as unreachable, the
    /// other does not): a one-way failure, or news still on its way.
    pub fn asymmetric(&self) -> bool {
        self.a_sees_b != self.b_sees_a
    }
}

/// This node's own tunnel to a peer, as [`links`] needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnTunnel {
    /// The tunnel's state.
    pub state: TunnelState,
    /// How the peer is reached, when it is.
    pub path: Option<NextHop>,
}

/// Every link between two live members among `records`, ordered by `(a, b)`. `me`'s links
/// take their state from `own` (a peer missing there is down).
pub fn links<'a>(
    me: PeerId,
    records: impl Iterator<Item = &'a PeerRecord>,
    own: &BTreeMap<PeerId, OwnTunnel>,
) -> Vec<LinkView> {
    let alive: Vec<&PeerRecord> = records.filter(|r| r.is_alive()).collect();
    let down: BTreeMap<PeerId, BTreeSet<ShortId>> = alive
        .iter()
        .map(|r| (r.id, r.links_down.iter().copied().collect()))
        .collect();
    let sees = |x: &PeerId, y: &PeerId| !down[x].contains(&y.short());
    // Each member's route table, computed once and only for members that have a pair to
    // relay: the relay X would pick for Y.
    let mut tables: BTreeMap<PeerId, RouteTable> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, ra) in alive.iter().enumerate() {
        for rb in &alive[i + 1..] {
            let (a, b) = (ra.id, rb.id);
            let (a_sees_b, b_sees_a) = (sees(&a, &b), sees(&b, &a));
            let local = a == me || b == me;
            let state = if local {
                let peer = if a == me { b } else { a };
                match own.get(&peer) {
                    Some(t) => match (t.state, t.path) {
                        (TunnelState::Established | TunnelState::Rekeying, Some(hop)) => {
                            match hop {
                                NextHop::Direct(_) => LinkState::Direct,
                                NextHop::Relay { via, .. } => LinkState::Relayed { via },
                            }
                        }
                        (TunnelState::Handshaking, _) => LinkState::Handshaking,
                        _ => LinkState::Down,
                    },
                    None => LinkState::Down,
                }
            } else if a_sees_b && b_sees_a {
                LinkState::Direct
            } else {
                let table = tables.entry(a).or_insert_with(|| {
                    let direct = alive
                        .iter()
                        .map(|r| r.id)
                        .filter(|x| *x != a && sees(&a, x) && sees(x, &a))
                        .collect();
                    RouteTable::compute(a, alive.iter().copied(), &direct)
                });
                match table.relay_for(&b) {
                    Some(via) => LinkState::Relayed { via },
                    None => LinkState::Down,
                }
            };
            out.push(LinkView {
                a,
                b,
                state,
                a_sees_b,
                b_sees_a,
                local,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Liveness;

    fn rec(id: u8, down: &[u8]) -> PeerRecord {
        PeerRecord {
            id: PeerId([id; 32]),
            incarnation: 1,
            version: 1,
            name: format!("n{id}"),
            liveness: Liveness::Alive,
            announced: vec![],
            seen: vec![],
            pod_blocks: vec![],
            external: false,
            free_space: vec![],
            links_down: down.iter().map(|d| PeerId([*d; 32]).short()).collect(),
        }
    }

    fn id(n: u8) -> PeerId {
        PeerId([n; 32])
    }

    #[test]
    fn gossiped_pairs_are_direct_relayed_or_down_and_disagreement_is_flagged() {
        // 2 and 4 both list each other; 3 lists 4 but 4 does not list 3; 1 is us.
        let records = [rec(1, &[]), rec(2, &[4]), rec(3, &[4]), rec(4, &[2])];
        let hop = NextHop::Direct("198.18.0.9:6786".parse().unwrap());
        let own: BTreeMap<_, _> = [
            (
                id(2),
                OwnTunnel {
                    state: TunnelState::Established,
                    path: Some(hop),
                },
            ),
            (
                id(3),
                OwnTunnel {
                    state: TunnelState::Handshaking,
                    path: None,
                },
            ),
        ]
        .into();
        let links = links(id(1), records.iter(), &own);
        let find = |a: u8, b: u8| *links.iter().find(|l| l.a == id(a) && l.b == id(b)).unwrap();
        assert_eq!(links.len(), 6);
        assert_eq!(find(1, 2).state, LinkState::Direct);
        assert!(find(1, 2).local);
        assert_eq!(find(1, 3).state, LinkState::Handshaking);
        // No tunnel to 4 at all: down, whatever gossip says.
        assert_eq!(find(1, 4).state, LinkState::Down);
        assert_eq!(find(2, 3).state, LinkState::Direct);
        // 2–4 is down both ways: 2 relays through the lowest peer linked to both, 1.
        let l = find(2, 4);
        assert_eq!(l.state, LinkState::Relayed { via: id(1) });
        assert!(!l.asymmetric());
        // 3 lists 4, 4 does not list 3: relayed, and asymmetric.
        let l = find(3, 4);
        assert!(matches!(l.state, LinkState::Relayed { .. }));
        assert!(l.asymmetric() && !l.a_sees_b && l.b_sees_a);
        // Same input, same links, same order.
        assert_eq!(links, super::links(id(1), records.iter(), &own));
    }

    #[test]
    fn a_pair_no_relay_links_is_down_and_tombstones_have_no_links() {
        let mut gone = rec(9, &[]);
        gone.liveness = Liveness::Departed {
            by: id(1),
            taken_over: false,
        };
        let records = [rec(2, &[3]), rec(3, &[2]), gone];
        let links = links(id(1), records.iter(), &BTreeMap::new());
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].state, LinkState::Down);
    }
}
