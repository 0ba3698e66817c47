//! The per-peer tunnel clock: retries, handshake resends and backoff, rekeys, keepalives,
//! silent direct paths, dead peers, and closing a tunnel.

use std::time::{Duration, Instant};

use tracing::{debug, info};
use weft_crypto::KEEPALIVE_TIMEOUT;

use crate::id::PeerId;
use crate::routes::NextHop;
use crate::tunnel::{DEAD_AFTER, HANDSHAKE_ATTEMPTS, STABLE_AFTER, Tunnel, backoff};

use super::peer::unconfirmed_since;

use super::{DIRECT_PATH_BOUND, DownReason, Event, INITIATE_FALLBACK, Node};

impl Node {
    /// Tears a tunnel down. `remove`: forget the peer entirely; otherwise reconnect.
    pub(super) fn close_peer(
        &mut self,
        id: PeerId,
        reason: DownReason,
        now: Instant,
        remove: bool,
    ) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let was_up = p.tunnel.is_up();
        let lived = p
            .up_since
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or_default();
        if was_up {
            // Backoff resets only after a connection that lived long enough.
            p.failures = if lived >= STABLE_AFTER {
                0
            } else {
                p.failures + 1
            };
        }
        let path = p.path.tunnel_closed();
        p.up_since = None;
        p.wanted_since = Some(now);
        p.session_incarnation = None;
        let failures = p.failures;
        self.indices.release_peer(id);
        if let Some(NextHop::Direct(ep)) = path
            && self.by_endpoint.get(&ep) == Some(&id)
        {
            self.by_endpoint.remove(&ep);
        }
        if remove {
            self.peers.remove(&id);
            self.timers.set_peer(id, None);
        } else {
            let delay = if reason == DownReason::Restarted {
                Duration::ZERO
            } else {
                backoff(failures) / 2 + self.jitter(backoff(failures) / 2)
            };
            let fallback = if self.id < id {
                Duration::ZERO
            } else {
                INITIATE_FALLBACK
            };
            if let Some(p) = self.peers.get_mut(&id) {
                p.tunnel = Tunnel::Idle {
                    retry_at: now + delay.max(fallback),
                };
            }
            self.touched.insert(id);
        }
        if was_up {
            info!(peer = %id, reason = ?reason, "peer down");
            self.events.push_back(Event::PeerDown { peer: id, reason });
        }
        self.routes_dirty = true;
    }

    pub(super) fn on_peer_timer(&mut self, id: PeerId, now: Instant) {
        self.punch_rounds(id, now);
        // A pair behind NATs is introduced in punch rounds only.
        let nat_pair = self.nat_pair(&id);
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        // Direct path bound and introductions, while we have no session.
        if let Some(since) = p.wanted_since {
            if !p.unreachable && now >= since + DIRECT_PATH_BOUND {
                p.unreachable = true;
                self.own_dirty = true;
                self.routes_dirty = true;
                debug!(peer = %id, "no direct path: listing as unreachable, relaying");
            }
            // Due is consumed either way: a pair behind NATs is introduced in punch rounds,
            // and a due introduction left standing would keep the peer's deadline in the past
            // (the timer would fire again at once, forever).
            if p.path.introduction_due(since, now) && !nat_pair {
                self.request_introduction(id, now);
            }
        }
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        match &mut p.tunnel {
            Tunnel::Idle { retry_at } => {
                if now >= *retry_at {
                    self.start_handshake(id, now);
                }
            }
            Tunnel::Handshaking { attempt, tries } => {
                if now >= attempt.resend_at {
                    if *tries >= HANDSHAKE_ATTEMPTS {
                        let index = attempt.index;
                        p.failures += 1;
                        let b = backoff(p.failures);
                        self.indices.release(index);
                        let delay = b / 2 + self.jitter(b / 2);
                        if let Some(p) = self.peers.get_mut(&id) {
                            p.tunnel = Tunnel::Idle {
                                retry_at: now + delay,
                            };
                        }
                    } else {
                        self.start_handshake(id, now);
                    }
                }
            }
            Tunnel::Established { .. } | Tunnel::Rekeying { .. } => {
                self.up_timer(id, now);
            }
        }
    }

    pub(super) fn up_timer(&mut self, id: PeerId, now: Instant) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let released = p
            .tunnel
            .keys_mut()
            .map(|k| k.handle_timeout(now))
            .unwrap_or_default();
        self.indices.release_all(released);
        let p = self.peers.get_mut(&id).expect("present");
        let expired = p.tunnel.keys().is_some_and(|k| k.current().is_none());
        if expired {
            return self.close_peer(id, DownReason::Expired, now, false);
        }
        if now.saturating_duration_since(p.last_rx) >= DEAD_AFTER {
            return self.close_peer(id, DownReason::Dead, now, false);
        }
        // Data went out directly and nothing came back: a handshake probes the path; if
        // that is not answered on it either, the session moves to a relay.
        let silent = p.path.is_silent(now);
        let mut direct_dead = false;
        // Our session is still unconfirmed while the one beside it is newer: that one was
        // kept for opening only as crossing ours, but the peer never had ours (our finish was
        // lost). The peer's is the one both hold: seal with it rather than handshake again.
        // (If the peer's first packets under ours were lost instead, its next one brings ours
        // back: `Keyring::opened`, called from `on_sealed`.)
        if let Tunnel::Established { keys } = &mut p.tunnel
            && let Some(current) = keys.current()
            && unconfirmed_since(keys).is_some_and(|t| now >= t)
            && keys
                .previous(now)
                .is_some_and(|prev| prev.established() > current.established())
            && keys.promote_previous(now)
        {
            debug!(peer = %id, "our crossed session was never confirmed: the peer's is current");
            self.touched.insert(id);
        }
        let rekey_due = match &p.tunnel {
            Tunnel::Established { keys } => {
                silent || keys.needs_rekey(now) || unconfirmed_since(keys).is_some_and(|t| now >= t)
            }
            Tunnel::Rekeying { attempt, .. } => {
                let due = now >= attempt.resend_at;
                direct_dead = due && silent && p.path.unheard_since(attempt.sent_at);
                due
            }
            _ => false,
        };
        let probe_due = p.path.probe_due(now);
        let mut rekey_due = rekey_due;
        if direct_dead {
            // The session stays (it is end to end); only its path moves. The probe is
            // abandoned rather than resent through the relay: the peer may be doing the same,
            // and two handshakes crossing there would leave each side on a different session.
            let p = self.peers.get_mut(&id).expect("present");
            if let Some(index) = p.tunnel.abandon_rekey(now) {
                self.indices.release(index);
            }
            rekey_due = false;
            self.relay_session(id, None, now);
        }
        if probe_due {
            self.send_direct_probe(id, now);
        }
        let Some(p) = self.peers.get(&id) else {
            return;
        };
        let keepalive_due = now.saturating_duration_since(p.last_tx) >= KEEPALIVE_TIMEOUT;
        if rekey_due {
            self.start_handshake(id, now);
        }
        if keepalive_due {
            self.send_keepalive(id, now);
        }
    }
}
