//! Sealed datagrams in and out: opening data and control under a session, delivering pod
//! packets (after the anti-spoofing rule), sealing data and control to a peer, and the
//! per-peer queue while a handshake runs.

use std::sync::Arc;
use std::time::Instant;

use tracing::debug;
use weft_crypto::wire::Sealed;
use weft_crypto::{DATA_HEADER_LEN, DATA_OVERHEAD, PayloadKind, Session, TAG_LEN};

use crate::drop::DropReason;
use crate::id::PeerId;
use crate::packet;
use crate::routes::NextHop;
use crate::tunnel::Tunnel;
use crate::wire::{ControlMessage, DecodeError};

use super::{IndexUse, Node, SILENT_PROBE_AFTER, Source};

/// Packets waiting per peer for its handshake; more are dropped and counted. A TCP initial
/// window is 10 segments (RFC 6928); 64 leaves room for several flows.
pub const QUEUE_LIMIT: usize = 64;

impl Node {
    pub(super) fn on_sealed(&mut self, now: Instant, source: Source, sealed: Sealed<&[u8]>) {
        let index = sealed.receiver_index();
        let Some(IndexUse::Session(id)) = self.indices.get(index) else {
            return self.on_unknown_index(now, source, sealed.header());
        };
        let Some(session) = self
            .peers
            .get(&id)
            .and_then(|p| p.tunnel.keys())
            .and_then(|k| k.for_index(index, now))
            .cloned()
        else {
            return self.on_unknown_index(now, source, sealed.header());
        };
        let under_current = self
            .peers
            .get(&id)
            .and_then(|p| p.tunnel.keys())
            .and_then(|k| k.current())
            .is_some_and(|c| c.local_index() == index);
        let mut buf = sealed.to_vec();
        let opened = match session.open_in_place(&mut buf, now) {
            Ok(o) => o,
            Err(_) => return self.drop_for(DropReason::OpenFailed),
        };
        if source.relayed_from.is_some_and(|claimed| claimed != id) {
            return self.drop_for(DropReason::RelaySourceMismatch);
        }
        // Authenticated: the peer is alive and this is a way to reach it.
        let path = self.path_of(source);
        let mut new_direct = None;
        let mut relay_now = None;
        if let Some(p) = self.peers.get_mut(&id) {
            // A session we demoted as one the peer never completed: the peer seals with it.
            // (The data plane holds no unconfirmed session, so this packet comes here.)
            if p.tunnel.keys_mut().is_some_and(|k| k.opened(index, now)) {
                debug!(peer = %id, "the peer holds our crossed session after all: current again");
            }
            p.last_rx = now;
            p.rx_bytes += sealed.as_bytes().len() as u64;
            p.rx_packets += 1;
            match path {
                Some(NextHop::Direct(ep)) => {
                    p.path.last_direct_rx = Some(now);
                    p.path.unanswered_since = None;
                    p.path.direct_probe_at = None;
                    if p.path.next_hop != path {
                        // Roaming (WireGuard's rule): the latest authenticated source wins.
                        p.path.next_hop = path;
                        new_direct = Some(ep);
                    }
                    if p.path.lost_direct.is_some() || p.unreachable {
                        // The direct path works again (a probe of ours or the peer's got
                        // through): stop listing it as down.
                        p.path.lost_direct = None;
                        p.path.direct_probe_at = None;
                        if p.unreachable {
                            p.unreachable = false;
                            self.own_dirty = true;
                            self.routes_dirty = true;
                        }
                    }
                }
                Some(relay) => {
                    // The peer relays: its direct path went silent. Unless ours still hears
                    // it, follow (the session is end to end; only the path changes).
                    let direct_fresh = p
                        .path
                        .last_direct_rx
                        .is_some_and(|t| now.saturating_duration_since(t) < SILENT_PROBE_AFTER);
                    if !direct_fresh && p.path.next_hop != Some(relay) {
                        relay_now = Some(relay);
                    }
                }
                None => {}
            }
        }
        if let Some(relay) = relay_now {
            self.relay_session(id, Some(relay), now);
        }
        if let Some(ep) = new_direct {
            self.note_path(id, Some(NextHop::Direct(ep)));
            self.report_observed(id, source, now);
            // Answer on the new path at once: the peer moves to it when it hears us there.
            self.send_keepalive(id, now);
        }
        self.touched.insert(id);
        // The first packet under a session we initiated confirms it: send what waited.
        let waiting: Vec<Vec<u8>> = self
            .peers
            .get_mut(&id)
            .map(|p| p.queue.drain(..).collect())
            .unwrap_or_default();
        for packet in waiting {
            self.send_data(id, packet, now);
        }
        let plain = &buf.as_bytes()[opened.range()];
        match opened.kind {
            PayloadKind::Data => self.on_data(id, plain, now),
            PayloadKind::Control if plain.is_empty() => {} // keepalive
            PayloadKind::Control => match ControlMessage::decode(plain) {
                Ok(msg) => self.on_control(now, id, msg, under_current),
                Err(DecodeError::UnknownKind(_) | DecodeError::UnknownVersion(_)) => {
                    self.drop_for(DropReason::ControlUnknown)
                }
                Err(e) => {
                    debug!(peer = %id, error = %e, "control message refused");
                    self.drop_for(DropReason::ControlMalformed)
                }
            },
        }
    }

    pub(super) fn on_data(&mut self, id: PeerId, packet: &[u8], now: Instant) {
        // Who owns an address must be current when a packet is judged by it: the record
        // that gives the sender its block comes under the same session just before the
        // packets that waited for it, and the rate limit on routes is for relays, not blocks.
        if self.routes_dirty {
            self.compute_routes(now);
        }
        // The data plane's rule, so the slow path and the fast path agree on every packet.
        match packet::admit(&self.routes, id, packet) {
            Ok(_) => self.tun.push_back(packet.to_vec()),
            Err(reason) => self.drop_for(reason),
        }
    }

    pub(super) fn send_control(&mut self, id: PeerId, msg: &ControlMessage, now: Instant) {
        let plain = msg.encode();
        let is_gossip = matches!(
            msg,
            ControlMessage::Gossip { .. }
                | ControlMessage::SyncRequest
                | ControlMessage::Digest { .. }
                | ControlMessage::DigestSummary { .. }
        );
        self.send_sealed_control(id, &plain, is_gossip, now);
    }

    pub(super) fn send_keepalive(&mut self, id: PeerId, now: Instant) {
        self.send_sealed_control(id, &[], false, now);
    }

    /// Sends a control message sealed under `session` (a new one, before it is confirmed).
    pub(super) fn send_control_with(
        &mut self,
        id: PeerId,
        session: &Arc<Session>,
        msg: &ControlMessage,
        now: Instant,
    ) {
        self.send_sealed_control_with(id, session, &msg.encode(), true, now);
    }

    /// The session we seal to `id` with now, if any.
    pub(super) fn sending_session(&self, id: PeerId, now: Instant) -> Option<Arc<Session>> {
        self.peers
            .get(&id)
            .and_then(|p| p.tunnel.keys())
            .and_then(|k| k.sending(now))
            .cloned()
    }

    pub(super) fn send_sealed_control(
        &mut self,
        id: PeerId,
        plain: &[u8],
        gossip: bool,
        now: Instant,
    ) {
        let Some(session) = self.sending_session(id, now) else {
            return;
        };
        self.send_sealed_control_with(id, &session, plain, gossip, now);
    }

    pub(super) fn send_sealed_control_with(
        &mut self,
        id: PeerId,
        session: &Arc<Session>,
        plain: &[u8],
        gossip: bool,
        now: Instant,
    ) {
        let mut buf = vec![0u8; DATA_OVERHEAD + plain.len()];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + plain.len()].copy_from_slice(plain);
        if session
            .seal_in_place(PayloadKind::Control, &mut buf, now)
            .is_err()
        {
            return;
        }
        self.stats.control_bytes += buf.len() as u64;
        if gossip {
            self.stats.gossip_bytes += buf.len() as u64;
        }
        self.send_to_peer(id, buf, now);
    }

    pub(super) fn send_data(&mut self, id: PeerId, packet: Vec<u8>, now: Instant) {
        // A session we initiated is not used for data until the peer confirms it: our finish
        // may still be on its way (or lost), and data overtaking it would be dropped there.
        let session = self.sending_session(id, now).filter(|s| s.is_confirmed());
        let Some(session) = session else {
            // Wait for the handshake, within bounds.
            if !self.peers.contains_key(&id) {
                self.ensure_peer(id, now);
            }
            let Some(p) = self.peers.get_mut(&id) else {
                return self.drop_for(DropReason::NoPath);
            };
            if p.queue.len() >= QUEUE_LIMIT {
                return self.drop_for(DropReason::QueueFull);
            }
            p.queue.push_back(packet);
            // Waiting on a session the peer has not confirmed over the direct path: the
            // silence clock runs, as it would for data sent.
            if p.tunnel.is_up() {
                p.path.expect_answer(now);
            }
            if let Tunnel::Idle { retry_at } = &mut p.tunnel {
                // Traffic waits: do not sit out the backoff or the fallback delay.
                *retry_at = (*retry_at).min(now);
            }
            self.touched.insert(id);
            return;
        };
        let mut buf = vec![0u8; DATA_HEADER_LEN + packet.len() + TAG_LEN];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + packet.len()].copy_from_slice(&packet);
        if session
            .seal_in_place(PayloadKind::Data, &mut buf, now)
            .is_err()
        {
            return self.drop_for(DropReason::SealFailed);
        }
        if let Some(p) = self.peers.get_mut(&id) {
            p.path.expect_answer(now);
        }
        self.send_to_peer(id, buf, now);
    }
}
