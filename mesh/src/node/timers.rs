//! Timers: the global timers in one enum-keyed table, the per-peer deadlines beside it,
//! and one next deadline for the driver.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::id::{Endpoint, PeerId};
use crate::tunnel::{HANDSHAKE_ATTEMPTS, backoff};
use crate::wire::ControlMessage;

use super::{Node, Peer};

/// The Node's global timers, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// Push changed records to a few peers.
    Gossip,
    /// Send a digest to one random peer (anti-entropy).
    Digest,
    /// Ask an owner for address space while we have no block.
    Ipam,
    /// Expire answered handshakes, retry dials, resend grants.
    Maintenance,
    /// Recompute the route table (rate limited).
    Routes,
}

impl Timer {
    /// Every timer, in the order `handle_timeout` serves them.
    pub(super) const ALL: [Timer; 5] = [
        Timer::Gossip,
        Timer::Digest,
        Timer::Ipam,
        Timer::Maintenance,
        Timer::Routes,
    ];
}

/// Every deadline of the Node (quinn-proto's `TimerTable`): the global timers keyed by
/// [`Timer`], and one deadline per peer in an ordered set, so the next deadline of all is
/// one lookup.
#[derive(Debug, Default)]
pub(super) struct TimerTable {
    global: [Option<Instant>; Timer::ALL.len()],
    peers: BTreeSet<(Instant, PeerId)>,
    peer_deadline: HashMap<PeerId, Instant>,
}

impl TimerTable {
    /// Arms `timer` for `at` (replacing any earlier setting).
    pub(super) fn set(&mut self, timer: Timer, at: Instant) {
        self.global[timer as usize] = Some(at);
    }

    /// Disarms `timer`.
    pub(super) fn stop(&mut self, timer: Timer) {
        self.global[timer as usize] = None;
    }

    /// Whether `timer` is armed.
    pub(super) fn is_set(&self, timer: Timer) -> bool {
        self.global[timer as usize].is_some()
    }

    /// Disarms `timer` and says so if it was due at `now`.
    pub(super) fn expire(&mut self, timer: Timer, now: Instant) -> bool {
        let due = self.global[timer as usize].is_some_and(|t| t <= now);
        if due {
            self.global[timer as usize] = None;
        }
        due
    }

    /// Sets (or with `None` clears) the deadline of `peer`.
    pub(super) fn set_peer(&mut self, peer: PeerId, at: Option<Instant>) {
        if let Some(t) = self.peer_deadline.remove(&peer) {
            self.peers.remove(&(t, peer));
        }
        if let Some(at) = at {
            self.peer_deadline.insert(peer, at);
            self.peers.insert((at, peer));
        }
    }

    /// Takes out the peers whose deadline is due at `now`, earliest first.
    pub(super) fn expire_peers(&mut self, now: Instant) -> Vec<PeerId> {
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, id)| *id)
            .collect();
        for id in &due {
            self.set_peer(*id, None);
        }
        due
    }

    /// The next deadline of all.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let global = self.global.iter().flatten().min().copied();
        let peer = self.peers.first().map(|(t, _)| *t);
        match (global, peer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Node {
    pub(super) fn reschedule(&mut self, id: PeerId) {
        let deadline = self.peers.get(&id).and_then(Peer::deadline);
        self.timers.set_peer(id, deadline);
    }

    /// Forgets handshakes we answered whose finish never came.
    pub(super) fn expire_responding(&mut self, now: Instant) {
        let expired: Vec<u32> = self
            .responding
            .iter()
            .filter(|(_, p)| p.expires <= now)
            .map(|(i, _)| *i)
            .collect();
        for i in expired {
            self.responding.remove(&i);
            self.indices.release(i);
        }
    }

    pub(super) fn on_maintenance_timer(&mut self, now: Instant) {
        self.timers
            .set(Timer::Maintenance, now + Duration::from_secs(1));
        self.expire_responding(now);
        let wall = self.wall(now);
        self.handshaker.expire_initiations(wall);
        // Dials.
        let due: Vec<Endpoint> = self
            .dials
            .iter()
            .filter(|(_, d)| match &d.attempt {
                Some(a) => a.resend_at <= now,
                None => d.retry_at <= now,
            })
            .map(|(e, _)| *e)
            .collect();
        for ep in due {
            let Some(d) = self.dials.get_mut(&ep) else {
                continue;
            };
            if d.attempt.is_some() && d.tries >= HANDSHAKE_ATTEMPTS {
                d.failures += 1;
                d.tries = 0;
                let b = backoff(d.failures);
                if let Some(a) = d.attempt.take() {
                    self.indices.release(a.index);
                }
                let delay = b / 2 + self.jitter(b / 2);
                if let Some(d) = self.dials.get_mut(&ep) {
                    d.retry_at = now + delay;
                }
            } else {
                self.dial(ep, now);
            }
        }
        // Alone: dial the seeds again (a partition healed, or every peer restarted).
        if self.dials.is_empty() && self.up_peers().next().is_none() {
            for seed in self.config.seeds.clone() {
                self.add_dial(seed, now);
            }
        }
        // Grants in flight are resent until acknowledged.
        let grants: Vec<(u64, PeerId, Vec<Ipv4Net>)> = self
            .space
            .outgoing
            .iter()
            .map(|(g, o)| (*g, o.to, o.space.clone()))
            .collect();
        for (grant, to, space) in grants {
            self.send_control(to, &ControlMessage::BlockGrant { grant, space }, now);
        }
    }
}
