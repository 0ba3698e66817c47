//! Our state for one peer: its tunnel, its path, its queue and counters.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use weft_crypto::{KEEPALIVE_TIMEOUT, Keyring, REKEY_TIMEOUT, Role};

use crate::id::Endpoint;
use crate::routes::NextHop;
use crate::tunnel::{DEAD_AFTER, Tunnel};

use super::{DIRECT_PATH_BOUND, INTRODUCE_AFTER, SILENT_PROBE_AFTER};

/// Our state for one peer.
#[derive(Debug)]
pub(super) struct Peer {
    pub(super) tunnel: Tunnel,
    pub(super) path: Option<NextHop>,
    pub(super) queue: VecDeque<Vec<u8>>,
    pub(super) failures: u32,
    /// Since when we want a session and have none (None while up).
    pub(super) wanted_since: Option<Instant>,
    /// Listed in our `links_down`.
    pub(super) unreachable: bool,
    pub(super) last_rx: Instant,
    pub(super) last_tx: Instant,
    pub(super) last_direct_rx: Option<Instant>,
    pub(super) up_since: Option<Instant>,
    pub(super) tx_bytes: u64,
    pub(super) rx_bytes: u64,
    pub(super) last_handshake: Option<Instant>,
    pub(super) rtt: Option<Duration>,
    pub(super) intro_at: Option<Instant>,
    pub(super) punch_at: Option<Instant>,
    /// An endpoint learned from an introduction or a punch.
    pub(super) punch_endpoint: Option<Endpoint>,
    /// The source endpoint we last reported to it.
    pub(super) observed_sent: Option<Endpoint>,
    /// The incarnation of the run the current session was formed with, from the peer's own
    /// record sent under that session (None until it arrives).
    pub(super) session_incarnation: Option<u64>,
    /// Since when data went out on the direct path with nothing received on it.
    pub(super) unanswered_since: Option<Instant>,
    /// The direct endpoint of a session moved to a relay because the path went silent.
    pub(super) lost_direct: Option<Endpoint>,
    /// When to send the next keepalive straight to `lost_direct` (and the record's
    /// endpoints), to find out whether the direct path is back.
    pub(super) direct_probe_at: Option<Instant>,
}

impl Peer {
    pub(super) fn new(now: Instant, retry_at: Instant) -> Self {
        Self {
            tunnel: Tunnel::Idle { retry_at },
            path: None,
            queue: VecDeque::new(),
            failures: 0,
            wanted_since: Some(now),
            unreachable: false,
            last_rx: now,
            last_tx: now,
            last_direct_rx: None,
            up_since: None,
            tx_bytes: 0,
            rx_bytes: 0,
            last_handshake: None,
            rtt: None,
            intro_at: None,
            punch_at: None,
            punch_endpoint: None,
            observed_sent: None,
            session_incarnation: None,
            unanswered_since: None,
            lost_direct: None,
            direct_probe_at: None,
        }
    }

    /// Something that must be answered (data, an initiation) went out at `at`: on a direct
    /// path, the silence clock starts unless it runs already; an answer on the path stops
    /// it, and past [`super::SILENT_PROBE_AFTER`] the path is probed, then relayed round.
    pub(super) fn expect_answer(&mut self, at: Instant) {
        if matches!(self.path, Some(NextHop::Direct(_))) && self.unanswered_since.is_none() {
            self.unanswered_since = Some(at);
        }
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
            if self.intro_at.is_none() {
                d = min_opt(d, Some(since + INTRODUCE_AFTER));
            }
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
    if let (Tunnel::Established { .. }, Some(t), Some(NextHop::Direct(_))) =
        (&p.tunnel, p.unanswered_since, p.path)
    {
        d = d.min(t + SILENT_PROBE_AFTER);
    }
    if let Some(t) = p.direct_probe_at {
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
