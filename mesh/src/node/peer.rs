//! Our state for one peer: its tunnel, its path, its queue and counters.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use weft_crypto::{KEEPALIVE_TIMEOUT, Keyring, REKEY_TIMEOUT, Role};

use crate::tunnel::{DEAD_AFTER, Tunnel};

use super::DIRECT_PATH_BOUND;
use super::path_state::PathState;

/// Our state for one peer.
#[derive(Debug)]
pub(super) struct Peer {
    pub(super) tunnel: Tunnel,
    /// How it is reached, and the rules about its direct path.
    pub(super) path: PathState,
    pub(super) queue: VecDeque<Vec<u8>>,
    pub(super) failures: u32,
    /// Since when we want a session and have none (None while up).
    pub(super) wanted_since: Option<Instant>,
    /// Listed in our `links_down`.
    pub(super) unreachable: bool,
    pub(super) last_rx: Instant,
    pub(super) last_tx: Instant,
    pub(super) up_since: Option<Instant>,
    pub(super) tx_bytes: u64,
    pub(super) rx_bytes: u64,
    /// Datagrams sent to it and opened from it, beside the bytes.
    pub(super) tx_packets: u64,
    pub(super) rx_packets: u64,
    pub(super) last_handshake: Option<Instant>,
    pub(super) rtt: Option<Duration>,
    /// The incarnation of the run the current session was formed with, from the peer's own
    /// record sent under that session (None until it arrives).
    pub(super) session_incarnation: Option<u64>,
}

impl Peer {
    pub(super) fn new(now: Instant, retry_at: Instant) -> Self {
        Self {
            tunnel: Tunnel::Idle { retry_at },
            path: PathState::default(),
            queue: VecDeque::new(),
            failures: 0,
            wanted_since: Some(now),
            unreachable: false,
            last_rx: now,
            last_tx: now,
            up_since: None,
            tx_bytes: 0,
            rx_bytes: 0,
            tx_packets: 0,
            rx_packets: 0,
            last_handshake: None,
            rtt: None,
            session_incarnation: None,
        }
    }

    /// Whether the tunnel is up and the peer reached directly.
    pub(super) fn is_up_directly(&self) -> bool {
        self.tunnel.is_up() && self.path.is_direct()
    }

    /// The peer's next deadline.
    pub(super) fn deadline(&self) -> Option<Instant> {
        let mut d = match &self.tunnel {
            Tunnel::Idle { retry_at } => Some(*retry_at),
            Tunnel::Handshaking { attempt, .. } => Some(attempt.resend_at),
            Tunnel::Established { keys } => Some(up_deadline(self, keys)),
            Tunnel::Rekeying { keys, attempt, .. } => {
                Some(up_deadline(self, keys).min(attempt.resend_at))
            }
        };
        if let Some(since) = self.wanted_since {
            if !self.unreachable {
                d = min_opt(d, Some(since + DIRECT_PATH_BOUND));
            }
            d = min_opt(d, self.path.introduction_at(since));
        }
        // A punch round is served only while the session is up (it moves that session):
        // without one, a due round would keep the deadline in the past. It is served once
        // the session is back.
        if self.tunnel.is_up() {
            d = min_opt(d, self.path.punch_round_at);
        }
        d
    }
}

/// A session we initiated must be confirmed (a packet from the peer opened under it) within
/// this: if not, our finish was lost and the peer has no session; handshake again.
pub const CONFIRM_TIMEOUT: Duration = REKEY_TIMEOUT;

/// Whether the current session is ours, unconfirmed, and past [`CONFIRM_TIMEOUT`].
pub(super) fn unconfirmed_since(keys: &Keyring) -> Option<Instant> {
    keys.current()
        .filter(|s| s.role() == Role::Initiator && !s.is_confirmed())
        .map(|s| s.established() + CONFIRM_TIMEOUT)
}

pub(super) fn up_deadline(p: &Peer, keys: &Keyring) -> Instant {
    let mut d = (p.last_tx + KEEPALIVE_TIMEOUT).min(p.last_rx + DEAD_AFTER);
    if let (Tunnel::Established { .. }, Some(t)) = (&p.tunnel, unconfirmed_since(keys)) {
        d = d.min(t);
    }
    // A rekey in flight probes the path already: silence is watched while established.
    let established = matches!(p.tunnel, Tunnel::Established { .. });
    if let Some(t) = p.path.deadline(established) {
        d = d.min(t);
    }
    if let Some(t) = keys.previous_until() {
        // The previous session's grace ends: release it, and let the data plane's snapshot
        // (whose choice of session depends on it) be rebuilt then.
        d = d.min(t);
    }
    if let Some(s) = keys.current() {
        // While rekeying, the rekey time has passed already: wake for the expiry instead.
        d = d.min(if matches!(p.tunnel, Tunnel::Rekeying { .. }) {
            s.expires_at()
        } else {
            s.rekey_at().min(s.expires_at())
        });
    }
    d
}

pub(super) fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}
