//! Paths, the Node's side: sending along a peer's path (direct, or through a relay), NAT
//! discovery (observed endpoints), introductions and hole punching, relaying for others,
//! moving a session off a silent direct path, and the route table. The per-peer state and
//! its rules are [`super::path_state::PathState`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info};
use weft_crypto::{DATA_OVERHEAD, PayloadKind, REKEY_TIMEOUT};

use crate::drop::DropReason;
use crate::id::{Endpoint, PeerId};
use crate::record::MAX_ENDPOINTS;
use crate::routes::{NextHop, RouteTable};
use crate::wire::{ControlMessage, RELAY_MAX_HOPS, RelayKind, RelayPacket};

use super::{Event, Node, Timer};

/// Where a datagram came from: directly, or through a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Source {
    /// The underlay source (the relay's, if relayed).
    pub(super) endpoint: Endpoint,
    /// The source peer the relay envelope claims, if relayed.
    pub(super) relayed_from: Option<PeerId>,
}

/// After this without a direct session, the peer is listed as unreachable in our record and
/// reached through relays (the bound we promise: two handshake timeouts).
pub const DIRECT_PATH_BOUND: Duration = Duration::from_secs(2 * REKEY_TIMEOUT.as_secs());

/// Routes through relays are recomputed at most this often (they matter only for peers past
/// [`DIRECT_PATH_BOUND`], so a second of staleness costs nothing).
pub const ROUTE_INTERVAL: Duration = Duration::from_secs(1);

impl Node {
    /// Sends a datagram back the way `source` came (directly or through its relay).
    pub(super) fn send_back(&mut self, source: Source, datagram: &[u8]) {
        match source.relayed_from {
            None => self.transmit(source.endpoint, datagram.to_vec()),
            Some(src) => {
                let wrapped =
                    RelayPacket::encode(RelayKind::Forward, RELAY_MAX_HOPS, src, self.id, datagram);
                self.transmit(source.endpoint, wrapped);
            }
        }
    }

    pub(super) fn path_of(&self, source: Source) -> Option<NextHop> {
        match source.relayed_from {
            None => Some(NextHop::Direct(source.endpoint)),
            Some(_) => self
                .by_endpoint
                .get(&source.endpoint)
                .map(|via| NextHop::Relay {
                    via: *via,
                    endpoint: source.endpoint,
                }),
        }
    }

    /// The direct endpoint of an up peer.
    pub(super) fn direct_endpoint(&self, id: &PeerId) -> Option<Endpoint> {
        let p = self.peers.get(id)?;
        p.path.direct().filter(|_| p.tunnel.is_up())
    }

    /// Sends a datagram to a peer along its path (or the route's relay).
    pub(super) fn send_to_peer(&mut self, id: PeerId, datagram: Vec<u8>, now: Instant) {
        let hop = match self.peers.get(&id).and_then(|p| p.path.next_hop) {
            Some(h) => Some(h),
            None => self.relay_hop(&id),
        };
        let Some(hop) = hop else {
            self.drop_for(DropReason::NoPath);
            return;
        };
        if let Some(p) = self.peers.get_mut(&id) {
            p.last_tx = now;
            p.tx_bytes += datagram.len() as u64;
            p.tx_packets += 1;
        }
        self.touched.insert(id);
        match hop {
            NextHop::Direct(ep) => self.transmit(ep, datagram),
            NextHop::Relay { endpoint, .. } => {
                let wrapped =
                    RelayPacket::encode(RelayKind::Forward, RELAY_MAX_HOPS, id, self.id, &datagram);
                self.transmit(endpoint, wrapped);
            }
        }
    }

    /// The relay hop towards `id` from the route table, if its first relay is up directly.
    pub(super) fn relay_hop(&self, id: &PeerId) -> Option<NextHop> {
        let via = self.routes.relay_for(id)?;
        let endpoint = self.direct_endpoint(&via)?;
        Some(NextHop::Relay { via, endpoint })
    }

    /// Moves the session with `id` off its silent direct path onto `relay` (or the route
    /// table's relay): the session is end to end, so the relay needs no keys. The peer is
    /// listed as unreachable directly (so every node routes the pair through relays) and the
    /// direct path is probed in the background.
    pub(super) fn relay_session(&mut self, id: PeerId, relay: Option<NextHop>, now: Instant) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let old = p.path.leave_direct(now);
        if !p.unreachable {
            p.unreachable = true;
            self.own_dirty = true;
            self.routes_dirty = true;
        }
        let hop = match relay {
            Some(hop) => Some(hop),
            None => {
                // Our record and routes now, not at the next slot: traffic waits on them.
                if let Some(p) = self.peers.get_mut(&id) {
                    p.path.next_hop = None;
                }
                self.publish_own(now);
                self.compute_routes(now);
                self.relay_hop(&id)
            }
        };
        match hop {
            Some(NextHop::Relay { via, .. }) => {
                info!(peer = %id, relay = %via, "direct path silent: relaying")
            }
            _ => info!(peer = %id, "direct path silent, and no relay"),
        }
        if let Some(p) = self.peers.get_mut(&id) {
            // With no relay at all, the direct path stays the only hope.
            p.path.next_hop = hop.or(old);
        }
        self.touched.insert(id);
    }

    /// Whether we sit behind a NAT: a peer saw us at an endpoint we do not announce.
    pub(super) fn behind_nat(&self) -> bool {
        self.seen
            .iter()
            .any(|ep| !self.config.announce.contains(ep))
    }

    /// Whether `id` sits behind a NAT by its record (seen at an endpoint it does not announce)
    /// and so do we: such a pair sends nothing straight to each other except in punch rounds
    /// (docs/design.md §4), since one unanswered packet to the peer's NAT can make that NAT
    /// send the peer's own packets to us from another port.
    pub(super) fn nat_pair(&self, id: &PeerId) -> bool {
        self.behind_nat()
            && self
                .table
                .get(id)
                .is_some_and(|r| r.seen.iter().any(|ep| !r.announced.contains(ep)))
    }

    /// A pair behind NATs and not direct: asks a mutual peer for an introduction when a punch
    /// round is due, so both punch at once (both hear the introducer at about the same time).
    /// Rounds start once a session is up (through the relay): a punch that gets through
    /// moves that session to the direct path.
    pub(super) fn punch_rounds(&mut self, id: PeerId, now: Instant) {
        if !self.nat_pair(&id) {
            // No longer a pair behind NATs (a restarted peer's record shows no NAT yet): a
            // planned round would stay due and unserved. The attempt ends; it starts afresh
            // if the pair is found behind NATs again.
            if let Some(p) = self.peers.get_mut(&id)
                && p.path.punch_round_at.is_some()
            {
                p.path.end_attempt();
            }
            return;
        }
        if !self.is_up(&id) {
            return;
        }
        let due = self
            .peers
            .get_mut(&id)
            .is_some_and(|p| p.path.punch_round_due(now));
        if due {
            let rounds = self.peers.get(&id).map_or(0, |p| p.path.punch_rounds);
            debug!(peer = %id, rounds, "punch round: asking for an introduction");
            self.request_introduction(id, now);
        }
    }

    /// A peer's record now shows it behind NAT, and so are we: a handshake in flight went
    /// straight to its endpoints, which cannot answer; it goes again, through the relay.
    pub(super) fn nat_pair_found(&mut self, id: PeerId, now: Instant) {
        let handshaking = self
            .peers
            .get(&id)
            .is_some_and(|p| !p.tunnel.is_up() && p.tunnel.attempt().is_some());
        if handshaking {
            debug!(peer = %id, "peer behind NAT, as we are: handshaking through the relay");
            self.start_handshake(id, now);
        }
    }

    /// A keepalive under the current session straight to where the peer was last reached
    /// directly (and where its record says it is), past the relay it is reached through now.
    /// A pair behind NATs probes only in punch rounds.
    pub(super) fn send_direct_probe(&mut self, id: PeerId, now: Instant) {
        let nat_pair = self.nat_pair(&id);
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let mut targets: BTreeSet<Endpoint> = p.path.probe_sent(now).into_iter().collect();
        if nat_pair {
            return;
        }
        if let Some(r) = self.table.get(&id) {
            targets.extend(r.announced.iter().chain(&r.seen));
        }
        self.send_probes(id, targets, now);
    }

    /// A keepalive under the current session to each of `targets`, past the peer's path.
    fn send_probes(&mut self, id: PeerId, targets: BTreeSet<Endpoint>, now: Instant) {
        let Some(session) = self.sending_session(id, now) else {
            return;
        };
        for ep in targets {
            let mut buf = vec![0u8; DATA_OVERHEAD];
            if session
                .seal_in_place(PayloadKind::Control, &mut buf, now)
                .is_err()
            {
                return;
            }
            self.stats.control_bytes += buf.len() as u64;
            self.transmit(ep, buf);
        }
    }

    /// Records a peer's path and keeps the endpoint → peer index for relayed traffic. A
    /// direct path ends any punching for the peer.
    pub(super) fn note_path(&mut self, id: PeerId, path: Option<NextHop>) {
        if let Some(NextHop::Direct(ep)) = path {
            self.by_endpoint.insert(ep, id);
            if let Some(p) = self.peers.get_mut(&id) {
                p.path.punch_succeeded();
            }
        }
    }

    /// Tells a peer where we see it, unless its record says it knows (NAT discovery).
    pub(super) fn report_observed(&mut self, id: PeerId, source: Source, now: Instant) {
        if source.relayed_from.is_some() {
            return;
        }
        let known = self.table.get(&id).is_some_and(|r| {
            r.announced.contains(&source.endpoint) || r.seen.contains(&source.endpoint)
        });
        if known {
            return;
        }
        let news = self
            .peers
            .get_mut(&id)
            .is_some_and(|p| p.path.observed(source.endpoint));
        if news {
            self.send_control(
                id,
                &ControlMessage::Observed {
                    endpoint: source.endpoint,
                },
                now,
            );
        }
    }

    pub(super) fn handle_relay(&mut self, now: Instant, from: Endpoint, bytes: &[u8]) {
        let packet = match RelayPacket::parse(bytes) {
            Ok(p) => p,
            Err(_) => return self.drop_for(DropReason::RelayMalformed),
        };
        if packet.kind == RelayKind::Punch {
            if packet.destination == self.id {
                self.on_punch(now, packet.source, from);
            } else {
                self.drop_for(DropReason::RelayMalformed);
            }
            return;
        }
        // Only members with a direct tunnel to us may use us as a relay, or send through one.
        if !self.by_endpoint.get(&from).is_some_and(|p| self.is_up(p)) {
            return self.drop_for(DropReason::RelayFromStranger);
        }
        if packet.destination == self.id {
            let source = Source {
                endpoint: from,
                relayed_from: Some(packet.source),
            };
            return self.handle_inner(now, source, packet.inner);
        }
        if packet.hops_left == 0 {
            return self.drop_for(DropReason::RelayHops);
        }
        // Forward without opening: we hold no key for this pair.
        let next = self.direct_endpoint(&packet.destination).or_else(|| {
            match self.relay_hop(&packet.destination) {
                Some(NextHop::Relay { endpoint, .. }) => Some(endpoint),
                _ => None,
            }
        });
        let Some(next) = next else {
            return self.drop_for(DropReason::RelayNoRoute);
        };
        let forwarded = RelayPacket::encode(
            RelayKind::Forward,
            packet.hops_left - 1,
            packet.destination,
            packet.source,
            packet.inner,
        );
        self.stats.relayed += 1;
        self.transmit(next, forwarded);
    }

    /// A peer reports where it sees us: an endpoint for our record (NAT discovery).
    pub(super) fn on_observed(&mut self, endpoint: Endpoint, now: Instant) {
        if !self.seen.contains(&endpoint) && !self.config.announce.contains(&endpoint) {
            let was_behind_nat = self.behind_nat();
            self.seen.push_back(endpoint);
            while self.seen.len() > MAX_ENDPOINTS {
                self.seen.pop_front();
            }
            self.own_dirty = true;
            // We just learned we sit behind a NAT: peers already known to sit behind one
            // became NAT pairs now, not when their records next change.
            if !was_behind_nat {
                let pairs: Vec<PeerId> = self
                    .peers
                    .keys()
                    .filter(|id| self.nat_pair(id))
                    .copied()
                    .collect();
                for id in pairs {
                    self.nat_pair_found(id, now);
                }
            }
        }
    }

    /// `from` asks us, a mutual peer, to introduce it to `target`.
    pub(super) fn on_introduce_request(&mut self, now: Instant, from: PeerId, target: PeerId) {
        let (Some(a), Some(b)) = (self.direct_endpoint(&from), self.direct_endpoint(&target))
        else {
            return;
        };
        // Both at once, so both punch at about the same time.
        self.stats.introductions += 1;
        self.send_control(
            target,
            &ControlMessage::Introduce {
                peer: from,
                endpoint: a,
            },
            now,
        );
        self.send_control(
            from,
            &ControlMessage::Introduce {
                peer: target,
                endpoint: b,
            },
            now,
        );
    }

    /// A mutual peer introduces `peer`, seen at `endpoint`: punch towards it (and the lower
    /// key initiates).
    pub(super) fn on_introduce(&mut self, now: Instant, peer: PeerId, endpoint: Endpoint) {
        let direct_up = self.direct_endpoint(&peer).is_some();
        if direct_up || peer == self.id {
            return;
        }
        let nat_pair = self.nat_pair(&peer);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.path.punching(endpoint, now);
            self.stats.punches += 1;
            let punch = RelayPacket::encode(RelayKind::Punch, 0, peer, self.id, &[]);
            self.transmit(endpoint, punch);
            // A pair behind NATs forms its session through the relay; the punch that gets
            // through moves it (on_punch).
            if self.id < peer && !nat_pair {
                self.start_handshake(peer, now);
            }
            self.touched.insert(peer);
        }
    }

    /// A hole punch arrived: the sender's NAT now lets our packets in (and ours, theirs).
    pub(super) fn on_punch(&mut self, now: Instant, from_peer: PeerId, endpoint: Endpoint) {
        if !self.table.get(&from_peer).is_some_and(|r| r.is_alive()) {
            return self.drop_for(DropReason::NotMember);
        }
        let nat_pair = self.nat_pair(&from_peer);
        let Some(p) = self.peers.get_mut(&from_peer) else {
            return;
        };
        if p.is_up_directly() {
            return;
        }
        if nat_pair {
            // Both NATs let this pair of endpoints through now: a keepalive under the
            // session (relayed so far) makes the peer roam to it, and its answer moves us.
            // Our own punch of the round went out just before: its limit is not this one's.
            if p.tunnel.is_up() && p.path.punch_probe_allowed(now) {
                debug!(peer = %from_peer, %endpoint, "punch received: probing the direct path");
                self.send_probes(from_peer, BTreeSet::from([endpoint]), now);
            }
            self.touched.insert(from_peer);
            return;
        }
        if !p.path.punch_allowed(now) {
            return;
        }
        p.path.punching(endpoint, now);
        if self.id < from_peer {
            debug!(peer = %from_peer, %endpoint, "punch received: initiating");
            self.start_handshake(from_peer, now);
        } else {
            self.stats.punches += 1;
            let punch = RelayPacket::encode(RelayKind::Punch, 0, from_peer, self.id, &[]);
            self.transmit(endpoint, punch);
        }
        self.touched.insert(from_peer);
    }

    pub(super) fn request_introduction(&mut self, target: PeerId, now: Instant) {
        // A mutual peer: up directly with us, and not listing the target as unreachable
        // (lowest key first: deterministic).
        let short = target.short();
        let via = self
            .peers
            .iter()
            .filter(|(id, p)| **id != target && p.is_up_directly())
            .map(|(id, _)| *id)
            .find(|id| {
                self.table
                    .get(id)
                    .is_some_and(|r| r.is_alive() && !r.links_down.contains(&short))
            });
        if let Some(via) = via {
            debug!(peer = %target, relay = %via, "asking for an introduction");
            self.send_control(via, &ControlMessage::IntroduceRequest { target }, now);
        }
    }

    pub(super) fn on_routes_timer(&mut self, now: Instant) {
        if !self.routes_dirty {
            return;
        }
        // At most once per interval: the next change waits for the next slot.
        self.timers.stop(Timer::Routes);
        self.compute_routes(now);
    }

    /// Recomputes routes now, outside the route slots, if who owns a block changed since
    /// they were computed: packets are routed and judged by owners, which must be current
    /// (relay paths may wait for the slot; owners may not).
    pub(super) fn refresh_owners(&mut self, now: Instant) {
        if self.owners_dirty {
            self.compute_routes(now);
        }
    }

    pub(super) fn compute_routes(&mut self, now: Instant) {
        self.routes_dirty = false;
        self.owners_dirty = false;
        let direct: BTreeSet<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.is_up_directly())
            .map(|(id, _)| *id)
            .collect();
        let table = RouteTable::compute(self.id, self.table.records(), &direct);
        if table != *self.routes {
            self.routes = Arc::new(table);
            self.events.push_back(Event::RoutesChanged);
        }
        self.routes_computed = Some(now);
    }
}
