//! Handshakes and session installation: answering initiations, our initiations and dials
//! of endpoints whose key is unknown, the finish, and installing a completed session
//! (crossed handshakes settle on the session the lower key initiated).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info};
use weft_crypto::wire::{DataHeader, Finish, Initiation, Response, StaleIndex};
use weft_crypto::{Keyring, REKEY_TIMEOUT, Role, Screened, Session};

use crate::drop::DropReason;
use crate::id::{Endpoint, PeerId};
use crate::routes::NextHop;
use crate::tunnel::Attempt;
use crate::wire::{ControlMessage, RELAY_MAX_HOPS, RelayKind, RelayPacket};

use super::{
    CONFIRM_TIMEOUT, DIRECT_PROBE_INTERVAL, DownReason, Event, IndexUse, Node, Source, Timer,
};

/// A handshake we answered.
pub(super) struct Pending {
    pub(super) state: weft_crypto::Responding,
    pub(super) source: Source,
    pub(super) expires: Instant,
}

/// A dial to an endpoint whose key we do not know.
#[derive(Debug)]
pub(super) struct Dial {
    pub(super) attempt: Option<Attempt>,
    pub(super) retry_at: Instant,
    pub(super) tries: u32,
    pub(super) failures: u32,
}

/// How young the current session must be for a session beside it to count as one that
/// crossed it (see `Node::on_session`): crossed handshakes complete within a round trip of
/// each other, and an older session is replaced as in any rekey. The two ends judge this a
/// round trip apart, so a session completing at the window's very edge can still be judged
/// differently by them (a simulated bad-link test holds the rule to zero silent pairs over
/// 120 seeds).
pub const CROSSING_WINDOW: Duration = CONFIRM_TIMEOUT;

/// The higher key of a pair initiates only after this, if no session formed (see the module
/// docs): one `REKEY_TIMEOUT`, the time the lower key's first attempt had.
pub const INITIATE_FALLBACK: Duration = REKEY_TIMEOUT;

/// How long a responder keeps a handshake waiting for its finish: the initiator resends
/// after `REKEY_TIMEOUT`, so a third message later than that will not come.
pub const RESPONDING_TIMEOUT: Duration = Duration::from_secs(2 * REKEY_TIMEOUT.as_secs());

/// Responder handshakes kept waiting for their finish at once; an initiation past this is
/// refused and counted ([`DropReason::PendingFull`]). Each holds a Noise state of a few
/// hundred bytes; a member needs one for the few seconds of a handshake, so this is room for
/// a thousand peers rekeying at once while a flood cannot grow the router's memory.
pub const PENDING_LIMIT: usize = 1024;

/// A sealed datagram for a receiver index we do not hold (we restarted and lost the session,
/// or dropped it) makes us handshake with its sender at most this often per endpoint.
pub const UNKNOWN_INDEX_INTERVAL: Duration = REKEY_TIMEOUT;

/// Endpoints remembered for [`UNKNOWN_INDEX_INTERVAL`]; past this, unknown-index datagrams
/// from new endpoints are only counted (a flood of forged sources cannot make us dial them).
pub const UNKNOWN_INDEX_ENDPOINTS: usize = 64;

impl Node {
    pub(super) fn on_initiation(&mut self, now: Instant, source: Source, bytes: &[u8]) {
        if let Err(e) = Initiation::parse(bytes) {
            return self.refuse_malformed_handshake(now, source, &e);
        }
        // mac1 first, then under load mac2 (`cookies.rs`): no Noise processing before them.
        // A relayed initiation comes from the endpoint of a member with a tunnel up (the
        // relay checks), so only direct ones count towards the load, and prove their source.
        let direct = source.relayed_from.is_none();
        let under_load = direct && self.under_load(now);
        match self.handshaker.screen_initiation(
            bytes,
            source.endpoint,
            under_load,
            now,
            &mut &mut *self.rng,
        ) {
            Ok(Screened::Unproven | Screened::Proven) => {}
            Ok(Screened::CookieReply(reply)) => {
                self.cookies.load.note(now);
                self.stats.handshake_bytes += reply.len() as u64;
                self.send_back(source, &reply);
                return self.drop_for(DropReason::CookieSent);
            }
            Err(e) => return self.drop_for(self.handshake_drop(&e)),
        }
        if direct {
            self.cookies.load.note(now);
        }
        // Budgets next, before any Diffie-Hellman; only direct initiations count against
        // their source.
        if direct && !self.initiations.admit(source.endpoint.ip(), now) {
            return self.drop_for(DropReason::InitiationRateLimited);
        }
        if self.responding.len() >= PENDING_LIMIT {
            self.expire_responding(now);
            if self.responding.len() >= PENDING_LIMIT {
                return self.drop_for(DropReason::PendingFull);
            }
        }
        let index = self.alloc_index(IndexUse::Responding);
        let wall = self.wall(now);
        match self
            .handshaker
            .handle_initiation(bytes, index, wall, &mut &mut *self.rng)
        {
            Ok((state, response)) => {
                self.stats.handshake_bytes += response.len() as u64;
                self.send_back(source, &response);
                self.responding.insert(
                    index,
                    Pending {
                        state,
                        source,
                        expires: now + RESPONDING_TIMEOUT,
                    },
                );
            }
            Err(e) => {
                debug!(error = %e, endpoint = %source.endpoint, "initiation refused");
                self.indices.release(index);
                self.drop_for(DropReason::HandshakeRejected);
            }
        }
    }

    pub(super) fn on_response(&mut self, now: Instant, source: Source, bytes: &[u8]) {
        let resp = match Response::parse(bytes) {
            Ok(r) => r,
            Err(e) => return self.refuse_malformed_handshake(now, source, &e),
        };
        let index = resp.receiver_index();
        match self.indices.get(index) {
            Some(IndexUse::Initiating(id)) => {
                let Some(attempt) = self
                    .peers
                    .get_mut(&id)
                    .and_then(|p| p.tunnel.attempt_mut())
                    .filter(|a| a.index == index)
                else {
                    return self.drop_for(DropReason::UnknownIndex);
                };
                let Some(initiator) = attempt.initiator.take() else {
                    return self.drop_for(DropReason::UnknownIndex);
                };
                let sent_at = attempt.sent_at;
                match self.handshaker.handle_response(initiator, bytes, now) {
                    Ok((session, finish)) => {
                        self.stats.handshake_bytes += finish.len() as u64;
                        self.send_back(source, &finish);
                        self.indices.release(index);
                        if let Some(p) = self.peers.get_mut(&id) {
                            p.rtt = Some(now.saturating_duration_since(sent_at));
                        }
                        self.on_session(id, session, source, now);
                    }
                    Err(rejected) => self.on_rejected_response(id, index, rejected),
                }
            }
            Some(IndexUse::Dialing(endpoint)) => {
                let Some(initiator) = self
                    .dials
                    .get_mut(&endpoint)
                    .and_then(|d| d.attempt.as_mut())
                    .filter(|a| a.index == index)
                    .and_then(|a| a.initiator.take())
                else {
                    return self.drop_for(DropReason::UnknownIndex);
                };
                match self.handshaker.handle_response(initiator, bytes, now) {
                    Ok((session, finish)) => {
                        self.stats.handshake_bytes += finish.len() as u64;
                        self.send_back(source, &finish);
                        self.indices.release(index);
                        self.dials.remove(&endpoint);
                        let id = PeerId::from(session.remote());
                        if id == self.id || self.forgotten.contains(&id) {
                            return;
                        }
                        self.ensure_session_peer(id, now);
                        self.on_session(id, session, source, now);
                    }
                    Err(rejected) => {
                        debug!(%endpoint, error = %rejected.error, "response refused");
                        self.drop_for(self.handshake_drop(&rejected.error));
                        if let (Some(state), Some(a)) = (
                            rejected.state,
                            self.dials
                                .get_mut(&endpoint)
                                .and_then(|d| d.attempt.as_mut()),
                        ) {
                            a.initiator = Some(state);
                        }
                    }
                }
            }
            _ => self.drop_for(DropReason::UnknownIndex),
        }
    }

    pub(super) fn on_rejected_response(
        &mut self,
        id: PeerId,
        index: u32,
        rejected: weft_crypto::Rejected<weft_crypto::Initiator>,
    ) {
        debug!(peer = %id, error = %rejected.error, "response refused");
        self.drop_for(self.handshake_drop(&rejected.error));
        if let Some(a) = self
            .peers
            .get_mut(&id)
            .and_then(|p| p.tunnel.attempt_mut())
            .filter(|a| a.index == index)
        {
            // A forged response cannot kill the attempt: the state comes back untouched.
            a.initiator = rejected.state;
        }
    }

    pub(super) fn on_finish(&mut self, now: Instant, source: Source, bytes: &[u8]) {
        let fin = match Finish::parse(bytes) {
            Ok(f) => f,
            Err(e) => return self.refuse_malformed_handshake(now, source, &e),
        };
        let index = fin.receiver_index();
        let Some(pending) = self.responding.remove(&index) else {
            return self.drop_for(DropReason::UnknownIndex);
        };
        let expected_source = pending.source;
        match self.handshaker.handle_finish(pending.state, bytes, now) {
            Ok(session) => {
                self.indices.release(index);
                let id = PeerId::from(session.remote());
                if source.relayed_from.is_some_and(|claimed| claimed != id)
                    || expected_source.relayed_from.is_some_and(|c| c != id)
                {
                    return self.drop_for(DropReason::RelaySourceMismatch);
                }
                if id == self.id || self.forgotten.contains(&id) {
                    return self.drop_for(DropReason::NotMember);
                }
                // A tombstoned peer that knows the join secret may come back: its record,
                // sent at once over this session, carries a new incarnation that revives it.
                self.ensure_session_peer(id, now);
                self.on_session(id, session, source, now);
            }
            Err(rejected) => {
                debug!(endpoint = %source.endpoint, error = %rejected.error, "finish refused");
                self.drop_for(self.handshake_drop(&rejected.error));
                match rejected.state {
                    Some(state) => {
                        self.responding.insert(
                            index,
                            Pending {
                                state,
                                source: expected_source,
                                expires: now + RESPONDING_TIMEOUT,
                            },
                        );
                    }
                    None => {
                        self.indices.release(index);
                    }
                }
            }
        }
    }

    /// Whether our session with `id` is with its run `incarnation` (or a later one): formed
    /// after the restart, so the restart must not close it. A session whose record has not
    /// arrived yet gets the benefit of the doubt while it is young (the record is the first
    /// thing sent under it); if it was the old run's, the peer's probe or DEAD_AFTER ends it.
    pub(super) fn session_with_run(&self, id: PeerId, incarnation: u64, now: Instant) -> bool {
        let Some(p) = self.peers.get(&id) else {
            return false;
        };
        let Some(current) = p.tunnel.keys().and_then(|k| k.current()) else {
            return false;
        };
        match p.session_incarnation {
            Some(i) => i >= incarnation,
            None => now.saturating_duration_since(current.established()) < REKEY_TIMEOUT,
        }
    }

    /// The peer's own record arrived under our current session: the session is with that run.
    /// If we already know of a later run, this session is with a dead one: close it.
    pub(super) fn note_session_incarnation(&mut self, id: PeerId, incarnation: u64, now: Instant) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        p.session_incarnation = Some(incarnation);
        let later = self
            .table
            .get(&id)
            .is_some_and(|r| r.is_alive() && r.incarnation > incarnation);
        if later {
            self.close_peer(id, DownReason::Restarted, now, false);
        }
    }

    /// A sealed datagram for an index we do not hold. Its sender believes in a session we
    /// lost (we restarted) or dropped: have a handshake now rather than let it send into the
    /// void until DEAD_AFTER. Rate limited per endpoint and bounded in endpoints, and only
    /// for direct sources.
    ///
    /// No reflection (docs/design.md §3): a known member's endpoint gets an initiation, but
    /// any other source only a [`StaleIndex`] notice, the echo of the datagram's header,
    /// smaller than the datagram itself. The sender, if it holds that session with us, is the
    /// one that handshakes; a forged source gets fewer bytes than the forger sent.
    pub(super) fn on_unknown_index(&mut self, now: Instant, source: Source, header: DataHeader) {
        self.drop_for(DropReason::UnknownIndex);
        if source.relayed_from.is_some() {
            return;
        }
        let ep = source.endpoint;
        if self
            .unknown_index_from
            .get(&ep)
            .is_some_and(|t| now.saturating_duration_since(*t) < UNKNOWN_INDEX_INTERVAL)
        {
            return;
        }
        if self.unknown_index_from.len() >= UNKNOWN_INDEX_ENDPOINTS {
            self.unknown_index_from
                .retain(|_, t| now.saturating_duration_since(*t) < UNKNOWN_INDEX_INTERVAL);
            if self.unknown_index_from.len() >= UNKNOWN_INDEX_ENDPOINTS {
                return;
            }
        }
        self.unknown_index_from.insert(ep, now);
        match self.by_endpoint.get(&ep).copied() {
            Some(id) if self.peers.contains_key(&id) => {
                let Some(p) = self.peers.get(&id) else {
                    return;
                };
                // A packet under a session we just replaced is no news.
                let hears_it = p.tunnel.is_up()
                    && now.saturating_duration_since(p.last_rx) < UNKNOWN_INDEX_INTERVAL;
                if hears_it || p.tunnel.attempt().is_some() {
                    return;
                }
                debug!(peer = %id, endpoint = %ep, "data for an unknown index: handshaking");
                self.start_handshake(id, now);
            }
            _ => {
                debug!(endpoint = %ep, "data for an unknown index from a stranger: telling it");
                let notice = StaleIndex::answering(&header).encode();
                self.stats.handshake_bytes += notice.len() as u64;
                self.transmit(ep, notice.to_vec());
            }
        }
    }

    /// A [`StaleIndex`] notice: the peer at `source` says it holds no session under an index
    /// we seal to (it restarted). Believed only when it names the receiver index of our
    /// session with the member at that endpoint (the current one, or the one we seal with)
    /// and a counter we used, which an off-path forger cannot guess; then we handshake with
    /// that member, unless we already are.
    pub(super) fn on_stale_index(&mut self, now: Instant, source: Source, bytes: &[u8]) {
        let Ok(notice) = StaleIndex::parse(bytes) else {
            return self.drop_for(DropReason::Malformed);
        };
        // Notices answer direct datagrams only.
        if source.relayed_from.is_some() {
            return self.drop_for(DropReason::UnknownIndex);
        }
        let Some(id) = self.by_endpoint.get(&source.endpoint).copied() else {
            return self.drop_for(DropReason::UnknownIndex);
        };
        let Some(p) = self.peers.get(&id) else {
            return self.drop_for(DropReason::UnknownIndex);
        };
        // The session we seal with (during a rekey's grace, the previous one) or the current.
        let names = |s: &Arc<Session>| {
            s.remote_index() == notice.receiver_index && notice.counter < s.sent()
        };
        let ours = p
            .tunnel
            .keys()
            .is_some_and(|k| k.current().is_some_and(names) || k.sending(now).is_some_and(names));
        if !ours || p.path.direct() != Some(source.endpoint) {
            return self.drop_for(DropReason::UnknownIndex);
        }
        if p.tunnel.attempt().is_some() {
            return;
        }
        debug!(peer = %id, endpoint = %source.endpoint, "peer lost our session: handshaking");
        self.start_handshake(id, now);
    }

    /// A handshake completed with `id`.
    pub(super) fn on_session(
        &mut self,
        id: PeerId,
        session: Session,
        source: Source,
        now: Instant,
    ) {
        let session = Arc::new(session);
        let sealing = session.clone();
        let local = session.local_index();
        let role = session.role();
        self.indices.set_session(local, id);
        self.stats.handshakes += 1;
        let path = self.path_of(source);
        let mut released = Vec::new();
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let was_up = p.tunnel.is_up();
        // Handshakes that crossed (each side initiated one at once, or one dialled a peer
        // whose data overtook its finish) leave each side with both sessions, installed in
        // opposite orders. Both must seal with the same one, or each drops what the other
        // seals once the previous session's grace is over and the pair goes silent. The one
        // the lower key initiated wins (the lower key is the one meant to initiate): a young
        // current session that the lower key initiated stays current, and a session the
        // higher key initiated beside it is kept for opening only.
        let lower = self.id < id;
        let initiated_by_lower = |r: Role| (r == Role::Initiator) == lower;
        let crossed = |keys: &Keyring| {
            !initiated_by_lower(role)
                && keys.current().is_some_and(|c| {
                    initiated_by_lower(c.role())
                        && now < c.established() + CROSSING_WINDOW
                        && !c.is_expired(now)
                })
        };
        let mut demoted = false;
        let install = |keys: &mut Keyring| {
            if crossed(keys) {
                debug!(peer = %id, "handshakes crossed: the lower key's session stays current");
                demoted = true;
                keys.install_previous(session, now)
            } else {
                keys.install(session, now)
            }
        };
        // The peer's handshake beat ours when we respond: ours is abandoned.
        released.extend(p.tunnel.establish(role == Role::Responder, now, install));
        p.last_rx = now;
        p.last_handshake = Some(now);
        // Which run of the peer this session is with is told by its record, sent under it.
        // (A session kept for opening only leaves the current one's run as it was: should the
        // peer have restarted, its new record must still close the current session.)
        if !demoted {
            p.session_incarnation = None;
        }
        if let Some(path) = path {
            p.path.next_hop = Some(path);
        }
        if !matches!(p.path.next_hop, Some(NextHop::Direct(_))) {
            p.path.unanswered_since = None;
        }
        if matches!(path, Some(NextHop::Direct(_))) {
            p.path.last_direct_rx = Some(now);
            p.path.unanswered_since = None;
            p.path.lost_direct = None;
            p.path.direct_probe_at = None;
        } else if p.path.direct_probe_at.is_none() {
            p.path.direct_probe_at = Some(now + DIRECT_PROBE_INTERVAL);
        }
        let mut own_changed = false;
        if !was_up {
            p.up_since = Some(now);
            p.wanted_since = None;
            p.path.intro_at = None;
        }
        if matches!(path, Some(NextHop::Direct(_))) && p.unreachable {
            p.unreachable = false;
            own_changed = true;
        }
        let queued: Vec<Vec<u8>> = p.queue.drain(..).collect();
        // Our abandoned initiation, and a previous session pushed out early by this one.
        self.indices.release_all(released);
        if own_changed {
            self.own_dirty = true;
            self.routes_dirty = true;
        }
        self.note_path(id, path);
        self.touched.insert(id);
        if !was_up {
            info!(peer = %id, ?path, "peer up");
            if let Some(path) = path {
                self.events.push_back(Event::PeerUp { peer: id, path });
            }
            self.routes_dirty = true;
        }
        // Both sides send their own record first under every new session: it tells the peer
        // which run of ours the session is with (a restart learned later by gossip closes
        // only sessions with an older run), it confirms the session to an initiator
        // (unconfirmed until a packet arrives under it), and packets waiting behind it come
        // from a block the peer then knows. Sealed under the new session even while it is
        // unconfirmed here: a restarted peer holds no other.
        if let Some(own) = self.table.get(&self.id).cloned() {
            let msg = ControlMessage::Gossip {
                full: false,
                records: vec![own],
            };
            self.send_sealed_control_with(id, &sealing, &msg.encode(), true, now);
        }
        // A peer we have no record of (it found us, we lost our state): ask for everything.
        if (!was_up && !self.synced) || !self.table.get(&id).is_some_and(|r| r.is_alive()) {
            self.send_control_with(id, &sealing, &ControlMessage::SyncRequest, now);
        }
        self.report_observed(id, source, now);
        for packet in queued {
            self.send_data(id, packet, now);
        }
        // A pair behind NATs up through a relay: its first punch round now.
        self.punch_rounds(id, now);
    }

    pub(super) fn add_dial(&mut self, endpoint: Endpoint, now: Instant) {
        self.dials.entry(endpoint).or_insert(Dial {
            attempt: None,
            retry_at: now,
            tries: 0,
            failures: 0,
        });
        self.timers.set(Timer::Maintenance, now);
    }

    pub(super) fn dial(&mut self, endpoint: Endpoint, now: Instant) {
        let old = self
            .dials
            .get_mut(&endpoint)
            .and_then(|d| d.attempt.take())
            .map(|a| a.index);
        if let Some(i) = old {
            self.indices.release(i);
        }
        let index = self.alloc_index(IndexUse::Dialing(endpoint));
        let wall = self.wall(now);
        let expected = self.pinned_key_at(endpoint);
        let Ok((initiator, msg)) =
            self.handshaker
                .initiate(index, expected, wall, &mut &mut *self.rng)
        else {
            self.indices.release(index);
            return;
        };
        let resend_at = now + REKEY_TIMEOUT + self.jitter(Duration::from_millis(333));
        // With mac2, if that endpoint gave us a cookie lately.
        let mut msg = msg;
        if let Some(cookie) = self.cookie_for(endpoint, now) {
            cookie.stamp(&mut msg);
        }
        self.stats.handshake_bytes += msg.len() as u64;
        self.transmit(endpoint, msg.to_vec());
        if let Some(d) = self.dials.get_mut(&endpoint) {
            d.tries += 1;
            d.attempt = Some(Attempt {
                index,
                initiator: Some(initiator),
                sent_at: now,
                resend_at,
                cookie_resent: false,
            });
        }
    }

    /// Sends a new initiation to `id` (direct candidates, and through a relay when the direct
    /// path is known not to work).
    pub(super) fn start_handshake(&mut self, id: PeerId, now: Instant) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let old = p.tunnel.attempt().map(|a| a.index);
        if let Some(i) = old {
            self.indices.release(i);
        }
        let index = self.alloc_index(IndexUse::Initiating(id));
        let wall = self.wall(now);
        let Ok((initiator, msg)) =
            self.handshaker
                .initiate(index, Some(id.key()), wall, &mut &mut *self.rng)
        else {
            self.indices.release(index);
            return;
        };
        // WireGuard jitters its handshake resends by up to a third of a second.
        let resend_at = now + REKEY_TIMEOUT + self.jitter(Duration::from_millis(333));
        let attempt = Attempt {
            index,
            initiator: Some(initiator),
            sent_at: now,
            resend_at,
            cookie_resent: false,
        };
        let nat_pair = self.nat_pair(&id);
        let p = self.peers.get_mut(&id).expect("checked above");
        p.tunnel.begin_attempt(attempt, now);
        // A pair behind NATs not yet direct handshakes through the relay only: a packet to
        // the peer's NAT outside a punch round can spoil the round (docs/design.md §4).
        let relay_only = nat_pair && !p.path.is_direct();
        // Candidates: where it talks to us from, where it announces, where peers see it,
        // where an introducer or a punch said it is.
        let mut direct: BTreeSet<Endpoint> = BTreeSet::new();
        if let Some(NextHop::Direct(ep)) = p.path.next_hop {
            direct.insert(ep);
        }
        if let Some(ep) = p.path.punch_endpoint {
            direct.insert(ep);
        }
        if let Some(ep) = self.pinned.as_ref().and_then(|pins| pins.get(&id)) {
            direct.insert(*ep);
        }
        let unreachable = p.unreachable;
        let path = p.path.next_hop;
        if let Some(r) = self.table.get(&id) {
            direct.extend(r.announced.iter().chain(&r.seen));
        }
        if relay_only {
            direct.clear();
        }
        for ep in &direct {
            // With mac2, if that endpoint gave us a cookie lately.
            let mut msg = msg;
            if let Some(cookie) = self.cookie_for(*ep, now) {
                cookie.stamp(&mut msg);
            }
            self.stats.handshake_bytes += msg.len() as u64;
            self.transmit(*ep, msg.to_vec());
        }
        if unreachable || direct.is_empty() {
            let mut relay = match path {
                Some(hop @ NextHop::Relay { .. }) => Some(hop),
                _ => self.relay_hop(&id),
            };
            if relay.is_none() && relay_only {
                // The peer was just learned: its relay now, not at the next route slot.
                self.compute_routes(now);
                relay = self.relay_hop(&id);
            }
            if let Some(NextHop::Relay { endpoint, .. }) = relay {
                let wrapped =
                    RelayPacket::encode(RelayKind::Forward, RELAY_MAX_HOPS, id, self.id, &msg);
                self.stats.handshake_bytes += wrapped.len() as u64;
                self.transmit(endpoint, wrapped);
            }
        }
        if let Some(p) = self.peers.get_mut(&id) {
            p.last_tx = now;
            // An initiation must be answered: like data, it starts the silence clock.
            if p.tunnel.is_up() {
                p.path.expect_answer(now);
            }
        }
        self.touched.insert(id);
    }
}
