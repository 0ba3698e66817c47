//! Membership: merging records, names taken by new keys, refuting our own tombstone,
//! and which members we keep a tunnel to.

use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tracing::{info, warn};

use crate::id::PeerId;
use crate::record::{Liveness, Merge, PeerRecord};

use super::{DownReason, Event, INITIATE_FALLBACK, Node, Peer, Timer};

impl Node {
    pub(super) fn is_departed(&self, id: &PeerId) -> bool {
        self.table.get(id).is_some_and(|r| !r.is_alive())
    }

    /// Merges a record from gossip, with everything that follows from it.
    pub(super) fn merge_record(&mut self, record: PeerRecord, now: Instant) {
        if record.id == self.id {
            return self.about_me(record, now);
        }
        let id = record.id;
        let was_nat_pair = self.nat_pair(&id);
        let old_blocks = self.table.get(&id).map(|r| r.pod_blocks.clone());
        let old_links = self.table.get(&id).map(|r| r.links_down.clone());
        let merged = self.table.merge(record, now);
        let Some(rec) = self.table.get(&id).cloned() else {
            return;
        };
        match merged {
            Merge::Stale => return,
            Merge::New => {
                if rec.is_alive() {
                    self.events.push_back(Event::MemberJoined {
                        peer: id,
                        name: rec.name.clone(),
                    });
                    self.ensure_peer(id, now);
                }
            }
            Merge::Updated {
                restarted,
                departed,
                revived,
            } => {
                if departed {
                    info!(peer = %id, "member departed");
                    self.events.push_back(Event::MemberDeparted { peer: id });
                    self.close_peer(id, DownReason::Departed, now, true);
                } else if restarted && !revived && !self.session_with_run(id, rec.incarnation, now)
                {
                    self.close_peer(id, DownReason::Restarted, now, false);
                }
                if revived {
                    self.forgotten.remove(&id);
                    self.events.push_back(Event::MemberJoined {
                        peer: id,
                        name: rec.name.clone(),
                    });
                    self.ensure_peer(id, now);
                }
            }
        }
        if let Liveness::Departed {
            taken_over: true, ..
        } = rec.liveness
        {
            self.cancel_grants_to(&rec);
        }
        let owners_changed =
            old_blocks.as_ref() != Some(&rec.pod_blocks) || merged == Merge::New || !rec.is_alive();
        if owners_changed || old_links.as_ref() != Some(&rec.links_down) {
            self.routes_dirty = true;
        }
        self.owners_dirty |= owners_changed;
        self.rumors.insert(id);
        if !was_nat_pair && self.nat_pair(&id) {
            self.nat_pair_found(id, now);
        }
        if rec.is_alive() {
            self.check_name(&rec, now);
        } else if self.names.get(&rec.name) == Some(&id) {
            self.names.remove(&rec.name);
        }
        if let Some(p) = self.peers.get(&id)
            && !p.tunnel.is_up()
        {
            self.touched.insert(id);
        }
    }

    /// The same name under two keys: the newer incarnation is the member, the other a
    /// tombstone (a node that lost its key and came back under a new one).
    pub(super) fn check_name(&mut self, rec: &PeerRecord, now: Instant) {
        let Some(other) = self.names.get(&rec.name).copied() else {
            self.names.insert(rec.name.clone(), rec.id);
            return;
        };
        if other == rec.id {
            return;
        }
        let Some(o) = self.table.get(&other).filter(|o| o.is_alive()).cloned() else {
            self.names.insert(rec.name.clone(), rec.id);
            return;
        };
        let (winner, loser) = if (rec.incarnation, rec.id) > (o.incarnation, o.id) {
            (rec.clone(), o)
        } else {
            (o, rec.clone())
        };
        self.names.insert(winner.name.clone(), winner.id);
        if loser.id == self.id {
            warn!(name = %loser.name, peer = %winner.id, "another node uses our name");
            return;
        }
        info!(name = %loser.name, peer = %loser.id, new = %winner.id, "name taken by a new key: tombstoning the old record");
        let tomb = loser.tombstone(winner.id, false);
        self.merge_record(tomb, now);
    }

    /// A record about ourselves: refute tombstones, give up space taken over.
    pub(super) fn about_me(&mut self, record: PeerRecord, _now: Instant) {
        let mine = (self.incarnation, self.version);
        if let Liveness::Departed { taken_over, by } = record.liveness {
            if taken_over {
                let taken: Vec<Ipv4Net> = record
                    .pod_blocks
                    .iter()
                    .chain(&record.free_space)
                    .copied()
                    .collect();
                let had_block = self.space.block();
                if self.space.surrender(&taken) {
                    warn!(peer = %by, "our address space was taken over while we were away");
                    self.events.push_back(Event::StateChanged);
                    self.own_dirty = true;
                    if had_block.is_some() && self.space.block().is_none() {
                        self.timers.set(Timer::Ipam, _now);
                    }
                }
            }
            if record.incarnation >= self.incarnation {
                // Refute (SWIM): we are alive, under a newer incarnation.
                self.incarnation = record.incarnation + 1;
                self.version = 0;
                self.own_dirty = true;
                self.events.push_back(Event::StateChanged);
            }
        } else if record.stamp() > mine {
            // A record of ours from a run whose state we lost: jump past it.
            self.incarnation = record.incarnation + 1;
            self.version = 0;
            self.own_dirty = true;
            self.events.push_back(Event::StateChanged);
        }
    }

    /// A peer entry for a handshake that completed, even with a tombstoned peer (see
    /// `on_finish`); we do not dial tombstoned peers ourselves.
    pub(super) fn ensure_session_peer(&mut self, id: PeerId, now: Instant) {
        if id == self.id || self.forgotten.contains(&id) || self.peers.contains_key(&id) {
            return;
        }
        self.peers
            .insert(id, Peer::new(now, now + INITIATE_FALLBACK));
        self.touched.insert(id);
    }

    /// Makes sure we try to keep a tunnel to a member.
    pub(super) fn ensure_peer(&mut self, id: PeerId, now: Instant) {
        if id == self.id || self.forgotten.contains(&id) || self.peers.contains_key(&id) {
            return;
        }
        if self.is_departed(&id) || !self.may_connect(&id) {
            return;
        }
        let retry_at = if self.id < id {
            now
        } else {
            now + INITIATE_FALLBACK + self.jitter(Duration::from_secs(1))
        };
        self.peers.insert(id, Peer::new(now, retry_at));
        self.touched.insert(id);
    }
}
