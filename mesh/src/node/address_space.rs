//! The address space (IPAM) as the Node drives it: asking an owner for space, granting
//! and acknowledging it, taking over a departed owner's space (see `ipam.rs` for the rules
//! of ownership).

use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tracing::{info, warn};

use crate::drop::DropReason;
use crate::id::PeerId;
use crate::ipam::{WaitReason, overlaps};
use crate::record::{Liveness, PeerRecord};
use crate::wire::{ControlMessage, DenyReason};

use super::{Command, Event, Node, Timer, rand_u64};

/// How often a node without a block retries asking an owner.
pub const IPAM_RETRY: Duration = Duration::from_secs(2);

/// How often an unacknowledged grant is resent.
pub const GRANT_RESEND: Duration = Duration::from_secs(1);

impl Node {
    pub(super) fn set_waiting(&mut self, reason: Option<WaitReason>) {
        if self.waiting != reason {
            if let Some(r) = &reason {
                info!(reason = %r, "waiting for an address block");
                self.events
                    .push_back(Event::BlockWaiting { reason: r.clone() });
            }
            self.waiting = reason;
        }
    }

    pub(super) fn on_ipam_timer(&mut self, now: Instant) {
        if self.space.block().is_some() {
            self.set_waiting(None);
            return;
        }
        let jitter = self.jitter(IPAM_RETRY / 2);
        self.timers.set(Timer::Ipam, now + IPAM_RETRY + jitter);
        self.denied.retain(|_, until| *until > now);
        let mut owners = 0;
        let mut best: Option<(u64, PeerId)> = None;
        for r in self.table.alive() {
            if r.id == self.id || r.free_space.is_empty() || r.external {
                continue;
            }
            owners += 1;
            if !self.is_up(&r.id) || self.denied.contains_key(&r.id) {
                continue;
            }
            let free: u64 = r.free_space.iter().map(crate::ipam::size).sum();
            // Most free space first, then the lowest key.
            let better = match best {
                None => true,
                Some((f, id)) => free > f || (free == f && r.id < id),
            };
            if better {
                best = Some((free, r.id));
            }
        }
        match best {
            Some((_, owner)) => {
                let request = rand_u64(&mut &mut *self.rng);
                self.send_control(owner, &ControlMessage::BlockRequest { request }, now);
                self.set_waiting(Some(WaitReason::AwaitingGrant { owner }));
            }
            None if owners > 0 => self.set_waiting(Some(WaitReason::OwnersUnreachable { owners })),
            None => self.set_waiting(Some(WaitReason::NoOwnerWithFreeSpace)),
        }
    }

    /// `from` acknowledged our grant: stop resending it.
    pub(super) fn on_block_grant_ack(&mut self, from: PeerId, grant: u64) {
        if self
            .space
            .outgoing
            .get(&grant)
            .is_some_and(|g| g.to == from)
        {
            self.space.outgoing.remove(&grant);
            self.events.push_back(Event::StateChanged);
        }
    }

    /// `from` refused our request: leave it out for a while and ask the others now.
    pub(super) fn on_block_denied(&mut self, now: Instant, from: PeerId) {
        self.denied.insert(from, now + 4 * IPAM_RETRY);
        self.timers.set(Timer::Ipam, now);
    }

    pub(super) fn on_block_request(&mut self, now: Instant, from: PeerId, request: u64) {
        // One grant in flight per peer: a repeated request gets the same grant again.
        if let Some((grant, g)) = self.space.outgoing.iter().find(|(_, g)| g.to == from) {
            let (grant, space) = (*grant, g.space.clone());
            return self.send_control(from, &ControlMessage::BlockGrant { grant, space }, now);
        }
        let grant = rand_u64(&mut &mut *self.rng);
        match self.space.give(from, grant, self.config.block_prefix) {
            Some(space) => {
                info!(peer = %from, ?space, "giving address space");
                // Persist before the grant leaves (events are drained before transmits).
                self.events.push_back(Event::StateChanged);
                self.own_dirty = true;
                self.send_control(from, &ControlMessage::BlockGrant { grant, space }, now);
            }
            None => self.send_control(
                from,
                &ControlMessage::BlockDenied {
                    request,
                    reason: DenyReason::NoFreeSpace,
                },
                now,
            ),
        }
    }

    pub(super) fn on_block_grant(
        &mut self,
        now: Instant,
        from: PeerId,
        grant: u64,
        space: Vec<Ipv4Net>,
    ) {
        if self.space.accepted.contains(&(from, grant)) {
            return self.send_control(from, &ControlMessage::BlockGrantAck { grant }, now);
        }
        let range = self.config.cluster_range;
        let owned = self.space.owned();
        let bad = space.iter().any(|s| {
            !range.contains(s)
                || s.prefix_len() > self.config.block_prefix
                || owned.iter().any(|o| overlaps(o, s))
        }) || self.space.external.is_some();
        if bad {
            return self.drop_for(DropReason::BadGrant);
        }
        let had = self.space.block();
        self.space.take(space, self.config.block_prefix);
        self.space.accepted.insert((from, grant));
        self.events.push_back(Event::StateChanged);
        self.own_dirty = true;
        if had.is_none()
            && let Some(block) = self.space.block()
        {
            info!(%block, peer = %from, "block claimed");
            self.events.push_back(Event::BlockClaimed { block });
            self.set_waiting(None);
        }
        self.send_control(from, &ControlMessage::BlockGrantAck { grant }, now);
    }

    /// Another node took over a departed peer's space: grants we still had in flight to that
    /// peer come back to us, except space the tombstone lists (the taker owns that now).
    pub(super) fn cancel_grants_to(&mut self, tomb: &PeerRecord) {
        let listed: Vec<Ipv4Net> = tomb
            .pod_blocks
            .iter()
            .chain(&tomb.free_space)
            .copied()
            .collect();
        let cancelled: Vec<u64> = self
            .space
            .outgoing
            .iter()
            .filter(|(_, g)| g.to == tomb.id)
            .map(|(id, _)| *id)
            .collect();
        for grant in cancelled {
            if let Some(g) = self.space.outgoing.remove(&grant) {
                for net in g.space {
                    if !listed.iter().any(|l| overlaps(l, &net)) {
                        self.space.free.push(net);
                    }
                }
                self.space.free.sort();
                self.events.push_back(Event::StateChanged);
                self.own_dirty = true;
            }
        }
    }

    pub(super) fn take_over(&mut self, now: Instant, peer: PeerId, command: Command) {
        if peer == self.id {
            return self.refuse(command, "cannot take over our own blocks");
        }
        if self.is_up(&peer) {
            return self.refuse(command, "the peer is up: it is not gone");
        }
        let Some(r) = self.table.get(&peer).cloned() else {
            return self.refuse(command, "unknown peer");
        };
        if matches!(
            r.liveness,
            Liveness::Departed {
                taken_over: true,
                ..
            }
        ) {
            return self.refuse(command, "its blocks were taken over already");
        }
        if r.external {
            return self.refuse(command, "its block came from outside (podCIDR)");
        }
        let space: Vec<Ipv4Net> = r.pod_blocks.iter().chain(&r.free_space).copied().collect();
        let owned = self.space.owned();
        if space.iter().any(|s| owned.iter().any(|o| overlaps(o, s))) {
            return self.refuse(command, "its recorded space overlaps ours");
        }
        self.forgotten.insert(peer);
        let tomb = r.tombstone(self.id, true);
        self.merge_record(tomb, now);
        self.space.take(space.clone(), self.config.block_prefix);
        self.events.push_back(Event::StateChanged);
        self.own_dirty = true;
        if self.waiting.is_some()
            && let Some(block) = self.space.block()
        {
            self.events.push_back(Event::BlockClaimed { block });
            self.set_waiting(None);
        }
        warn!(peer = %peer, ?space, "took over the address space of a departed peer");
        self.events
            .push_back(Event::BlocksTakenOver { from: peer, space });
    }
}
