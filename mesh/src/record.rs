//! Peer records and the table of them that gossip keeps in agreement.
//!
//! A record is written only by the node it describes (its `(incarnation, version)` grows),
//! except tombstones: a third party may declare a peer departed (`forget`, a take-over of its
//! blocks, or the same name returning with a newer incarnation), which it writes with
//! `version = u64::MAX - 1` (`u64::MAX` for a take-over, which must beat a plain tombstone)
//! so it beats every record of that incarnation; a node that restarts
//! gets a new, higher incarnation and so supersedes both its old record and any tombstone of
//! it. Merging is "higher `(incarnation, version)` wins", which is commutative and idempotent,
//! so records converge whatever order gossip delivers them in.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::id::{PeerId, ShortId};

/// Longest peer name accepted (a Kubernetes node name is at most 63 characters, RFC 1123).
pub const MAX_NAME_LEN: usize = 63;
/// Most endpoints a record announces (configured addresses and those peers saw).
pub const MAX_ENDPOINTS: usize = 4;
/// Most address-space entries in one record (free space is kept aggregated, a halving owner
/// holds at most one entry per prefix length, 32 in all).
pub const MAX_SPACE_ENTRIES: usize = 40;
/// Most peers a record lists as unreachable; past it the list is cut (routes then try a few
/// relays that will not work, and count the drops). Keeps a record under one datagram.
pub const MAX_LINKS_DOWN: usize = 48;

/// Whether a record describes a live member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveness {
    /// A member.
    Alive,
    /// A tombstone: the member left or was removed.
    Departed {
        /// Who wrote the tombstone.
        by: PeerId,
        /// Whether `by` took over the record's address space (the space listed in this
        /// tombstone is now `by`'s).
        taken_over: bool,
    },
}

/// What a node says about itself, spread by gossip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// The node's public key.
    pub id: PeerId,
    /// Grows at every start of the node: a restarted node supersedes its old record.
    pub incarnation: u64,
    /// Grows at every change within an incarnation.
    pub version: u64,
    /// A label (the Kubernetes node name); unique in a healthy cluster.
    pub name: String,
    /// Member or tombstone.
    pub liveness: Liveness,
    /// Endpoints the node was configured to listen on.
    pub announced: Vec<SocketAddr>,
    /// Endpoints peers reported seeing it at (its NAT's public side, if any).
    pub seen: Vec<SocketAddr>,
    /// The block its pods use.
    pub pod_blocks: Vec<Ipv4Net>,
    /// Whether `pod_blocks` came from outside (a podCIDR), not from the ownership protocol.
    pub external: bool,
    /// Address space it owns and can give away.
    pub free_space: Vec<Ipv4Net>,
    /// Links, as their exceptions: members it has tried and failed to reach directly. A link
    /// X–Y is up when both are alive and neither lists the other. Listing the working links
    /// instead would cost O(N) per record and O(N²) per node (2 MB at 500 nodes).
    pub links_down: Vec<ShortId>,
}

impl PeerRecord {
    /// The order of records about one peer: higher wins.
    pub fn stamp(&self) -> (u64, u64) {
        (self.incarnation, self.version)
    }

    /// Whether the record describes a live member.
    pub fn is_alive(&self) -> bool {
        self.liveness == Liveness::Alive
    }

    /// Checks the bounds a decoded record must respect (the decoder calls this).
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.name.len() > MAX_NAME_LEN {
            return Err("peer name too long");
        }
        if self.announced.len() > MAX_ENDPOINTS || self.seen.len() > MAX_ENDPOINTS {
            return Err("too many endpoints");
        }
        if self.pod_blocks.len() > MAX_ENDPOINTS || self.free_space.len() > MAX_SPACE_ENTRIES {
            return Err("too many address space entries");
        }
        if self.links_down.len() > MAX_LINKS_DOWN {
            return Err("too many links listed");
        }
        if self.incarnation == 0 {
            return Err("incarnation zero");
        }
        Ok(())
    }

    /// A tombstone of this record, written by `by`.
    pub fn tombstone(&self, by: PeerId, taken_over: bool) -> Self {
        Self {
            version: if taken_over { u64::MAX } else { u64::MAX - 1 },
            liveness: Liveness::Departed { by, taken_over },
            ..self.clone()
        }
    }
}

/// One record and what we noted when it arrived.
#[derive(Debug, Clone)]
pub struct Member {
    /// The newest record.
    pub record: PeerRecord,
    /// When it became a tombstone here (for expiry).
    pub departed_at: Option<Instant>,
}

/// What merging a record changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// We had it already, or newer.
    Stale,
    /// A peer we did not know.
    New,
    /// A newer record of a peer we knew; `restarted` when its incarnation grew.
    Updated {
        /// The incarnation grew: the node restarted, old sessions are dead.
        restarted: bool,
        /// It was alive and is now a tombstone.
        departed: bool,
        /// It was a tombstone and is alive again.
        revived: bool,
    },
}

/// Every peer record this node knows, its own included, ordered by id (iteration order is
/// part of determinism: never a HashMap here).
#[derive(Debug, Clone, Default)]
pub struct PeerTable {
    members: BTreeMap<PeerId, Member>,
}

impl PeerTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges a record: kept only if it beats what we have.
    pub fn merge(&mut self, record: PeerRecord, now: Instant) -> Merge {
        match self.members.get_mut(&record.id) {
            None => {
                let departed_at = (!record.is_alive()).then_some(now);
                self.members.insert(
                    record.id,
                    Member {
                        record,
                        departed_at,
                    },
                );
                Merge::New
            }
            Some(m) if record.stamp() > m.record.stamp() => {
                let restarted = record.incarnation > m.record.incarnation;
                let departed = m.record.is_alive() && !record.is_alive();
                let revived = !m.record.is_alive() && record.is_alive();
                m.departed_at = match (record.is_alive(), m.departed_at) {
                    (true, _) => None,
                    (false, Some(t)) => Some(t),
                    (false, None) => Some(now),
                };
                m.record = record;
                Merge::Updated {
                    restarted,
                    departed,
                    revived,
                }
            }
            Some(_) => Merge::Stale,
        }
    }

    /// The record of `id`.
    pub fn get(&self, id: &PeerId) -> Option<&PeerRecord> {
        self.members.get(id).map(|m| &m.record)
    }

    /// The entry of `id`.
    pub fn member(&self, id: &PeerId) -> Option<&Member> {
        self.members.get(id)
    }

    /// All records, by id.
    pub fn records(&self) -> impl Iterator<Item = &PeerRecord> {
        self.members.values().map(|m| &m.record)
    }

    /// Live members, by id.
    pub fn alive(&self) -> impl Iterator<Item = &PeerRecord> {
        self.records().filter(|r| r.is_alive())
    }

    /// How many records (tombstones included).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Removes tombstones older than `ttl`, except those still listing address space that
    /// nobody took over (forgetting them would lose the only trace of who owns it).
    pub fn expire_tombstones(&mut self, now: Instant, ttl: std::time::Duration) -> Vec<PeerId> {
        let mut gone = Vec::new();
        self.members.retain(|id, m| {
            let keeps_space = matches!(
                m.record.liveness,
                Liveness::Departed {
                    taken_over: false,
                    ..
                }
            ) && !(m.record.pod_blocks.is_empty()
                && m.record.free_space.is_empty());
            let expired = m
                .departed_at
                .is_some_and(|t| now.saturating_duration_since(t) >= ttl);
            if expired && !keeps_space {
                gone.push(*id);
                false
            } else {
                true
            }
        });
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn record(id: u8, incarnation: u64, version: u64) -> PeerRecord {
        PeerRecord {
            id: PeerId([id; 32]),
            incarnation,
            version,
            name: format!("node-{id}"),
            liveness: Liveness::Alive,
            announced: vec!["198.18.0.1:6786".parse().unwrap()],
            seen: vec![],
            pod_blocks: vec!["10.32.1.0/24".parse().unwrap()],
            external: false,
            free_space: vec![],
            links_down: vec![],
        }
    }

    #[test]
    fn higher_stamp_wins_and_restart_supersedes_a_tombstone() {
        let now = Instant::now();
        let mut t = PeerTable::new();
        assert_eq!(t.merge(record(1, 5, 1), now), Merge::New);
        assert_eq!(t.merge(record(1, 5, 1), now), Merge::Stale);
        assert_eq!(t.merge(record(1, 4, 9), now), Merge::Stale);
        let tomb = record(1, 5, 2).tombstone(PeerId([2; 32]), false);
        assert_eq!(
            t.merge(tomb, now),
            Merge::Updated {
                restarted: false,
                departed: true,
                revived: false
            }
        );
        // No version of incarnation 5 beats the tombstone...
        assert_eq!(t.merge(record(1, 5, 1000), now), Merge::Stale);
        // ...but the restarted node does.
        assert_eq!(
            t.merge(record(1, 6, 1), now),
            Merge::Updated {
                restarted: true,
                departed: false,
                revived: true
            }
        );
    }

    #[test]
    fn tombstones_expire_unless_they_hold_unclaimed_space() {
        let now = Instant::now();
        let ttl = std::time::Duration::from_secs(60);
        let mut t = PeerTable::new();
        let mut empty = record(1, 1, 1);
        empty.pod_blocks.clear();
        t.merge(empty.tombstone(PeerId([9; 32]), false), now);
        t.merge(record(2, 1, 1).tombstone(PeerId([9; 32]), false), now);
        t.merge(record(3, 1, 1).tombstone(PeerId([9; 32]), true), now);
        assert!(t.expire_tombstones(now, ttl).is_empty());
        let gone = t.expire_tombstones(now + ttl, ttl);
        assert_eq!(gone, vec![PeerId([1; 32]), PeerId([3; 32])]);
        assert!(t.get(&PeerId([2; 32])).is_some(), "space nobody took over");
    }

    proptest! {
        /// Whatever order records arrive in, every table ends with the same newest record.
        #[test]
        fn merge_converges_in_any_order(stamps in proptest::collection::vec((1u64..4, 0u64..4), 1..12), seed in any::<u64>()) {
            let now = Instant::now();
            let records: Vec<_> = stamps.iter().map(|(i, v)| record(7, *i, *v)).collect();
            let mut shuffled = records.clone();
            // A deterministic shuffle from the seed.
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            let (mut a, mut b) = (PeerTable::new(), PeerTable::new());
            for r in records { a.merge(r, now); }
            for r in shuffled { b.merge(r, now); }
            let best = stamps.iter().max().unwrap();
            prop_assert_eq!(a.get(&PeerId([7; 32])).unwrap().stamp(), *best);
            prop_assert_eq!(b.get(&PeerId([7; 32])).unwrap().stamp(), *best);
        }
    }
}
