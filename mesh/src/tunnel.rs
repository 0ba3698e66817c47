//! The per-peer tunnel state machine: `Idle → Handshaking → Established → Rekeying`, each
//! state holding only what is valid in it (STYLE.md, the rustls habit). The Node decides when
//! to move; this module owns the states, the transitions between them and the retry backoff.

use std::time::{Duration, Instant};

use weft_crypto::{Initiator, KEEPALIVE_TIMEOUT, Keyring};

/// A peer is declared dead after this long without an authenticated packet from it: three
/// missed keepalives ([`KEEPALIVE_TIMEOUT`], WireGuard's value, which every tunnel sends when
/// idle), so one or two lost keepalives on a lossy link do not tear a tunnel down.
pub const DEAD_AFTER: Duration = Duration::from_secs(3 * KEEPALIVE_TIMEOUT.as_secs());

/// Handshake attempts (one per `REKEY_TIMEOUT`) before a tunnel goes back to Idle and backs
/// off. WireGuard keeps trying for 90 s; we back off sooner because a mesh retries every
/// member forever anyway.
pub const HANDSHAKE_ATTEMPTS: u32 = 3;

/// First retry delay after a failed connection; doubles per failure up to [`BACKOFF_MAX`].
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay: short enough that a healed partition reconnects within half a
/// minute, long enough not to spin on a dead peer.
pub const BACKOFF_MAX: Duration = Duration::from_secs(16);
/// A connection that lived this long resets the backoff (a flapping peer keeps backing off).
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// A handshake we started and wait on.
#[derive(Debug)]
pub struct Attempt {
    /// Our index for it (the response names it).
    pub index: u32,
    /// The initiator state; taken out while a response is processed.
    pub initiator: Option<Initiator>,
    /// When the initiation left (for the round-trip time).
    pub sent_at: Instant,
    /// When to give up on this initiation and send a new one.
    pub resend_at: Instant,
    /// Whether it was sent again at once after a cookie reply (once per attempt, so two
    /// routers cannot loop on cookies).
    pub cookie_resent: bool,
}

/// The tunnel to one peer.
#[derive(Debug)]
pub enum Tunnel {
    /// No session and no handshake in flight; the next attempt is at `retry_at`.
    Idle {
        /// When to start a handshake.
        retry_at: Instant,
    },
    /// Our handshake is in flight; no session yet.
    Handshaking {
        /// The initiation in flight.
        attempt: Attempt,
        /// Initiations sent so far in this round.
        tries: u32,
    },
    /// Sessions are up.
    Established {
        /// Current and previous session.
        keys: Keyring,
    },
    /// Sessions are up and a new handshake is in flight to replace the current one.
    Rekeying {
        /// Current and previous session, still in use.
        keys: Keyring,
        /// The initiation in flight.
        attempt: Attempt,
        /// Initiations sent so far in this round.
        tries: u32,
    },
}

impl Tunnel {
    /// The state's name, for status and logs.
    pub fn name(&self) -> TunnelState {
        match self {
            Self::Idle { .. } => TunnelState::Idle,
            Self::Handshaking { .. } => TunnelState::Handshaking,
            Self::Established { .. } => TunnelState::Established,
            Self::Rekeying { .. } => TunnelState::Rekeying,
        }
    }

    /// The sessions, when the tunnel is up.
    pub fn keys(&self) -> Option<&Keyring> {
        match self {
            Self::Established { keys } | Self::Rekeying { keys, .. } => Some(keys),
            _ => None,
        }
    }

    /// The sessions, mutably.
    pub fn keys_mut(&mut self) -> Option<&mut Keyring> {
        match self {
            Self::Established { keys } | Self::Rekeying { keys, .. } => Some(keys),
            _ => None,
        }
    }

    /// The handshake in flight, if any.
    pub fn attempt(&self) -> Option<&Attempt> {
        match self {
            Self::Handshaking { attempt, .. } | Self::Rekeying { attempt, .. } => Some(attempt),
            _ => None,
        }
    }

    /// The handshake in flight, mutably.
    pub fn attempt_mut(&mut self) -> Option<&mut Attempt> {
        match self {
            Self::Handshaking { attempt, .. } | Self::Rekeying { attempt, .. } => Some(attempt),
            _ => None,
        }
    }

    /// Whether sessions are up.
    pub fn is_up(&self) -> bool {
        self.keys().is_some()
    }

    /// A new initiation went out: `Idle` starts handshaking, `Established` starts
    /// rekeying, and a state already waiting on one counts another try.
    pub fn begin_attempt(&mut self, attempt: Attempt, now: Instant) {
        *self = match std::mem::replace(self, Self::Idle { retry_at: now }) {
            Self::Idle { .. } => Self::Handshaking { attempt, tries: 1 },
            Self::Handshaking { tries, .. } => Self::Handshaking {
                attempt,
                tries: tries + 1,
            },
            Self::Established { keys } => Self::Rekeying {
                keys,
                attempt,
                tries: 1,
            },
            Self::Rekeying { keys, tries, .. } => Self::Rekeying {
                keys,
                attempt,
                tries: tries + 1,
            },
        };
    }

    /// A handshake completed: the tunnel is `Established`, with `install` putting the new
    /// session into its keyring (a fresh one when none was up). `abandon`: an initiation of
    /// ours in flight is given up (the peer's handshake won). Returns the local indices
    /// released: the abandoned initiation's and those `install` returns.
    pub fn establish<I: IntoIterator<Item = u32>>(
        &mut self,
        abandon: bool,
        now: Instant,
        install: impl FnOnce(&mut Keyring) -> I,
    ) -> Vec<u32> {
        let (mut keys, attempt) = match std::mem::replace(self, Self::Idle { retry_at: now }) {
            Self::Idle { .. } => (Keyring::new(), None),
            Self::Handshaking { attempt, .. } => (Keyring::new(), Some(attempt)),
            Self::Established { keys } => (keys, None),
            Self::Rekeying { keys, attempt, .. } => (keys, Some(attempt)),
        };
        let mut released: Vec<u32> = attempt
            .filter(|_| abandon)
            .map(|a| a.index)
            .into_iter()
            .collect();
        released.extend(install(&mut keys));
        *self = Self::Established { keys };
        released
    }

    /// Gives up the rekey in flight and stays `Established` on the sessions it has; returns
    /// the abandoned initiation's index. Other states are left as they are.
    pub fn abandon_rekey(&mut self, now: Instant) -> Option<u32> {
        match std::mem::replace(self, Self::Idle { retry_at: now }) {
            Self::Rekeying { keys, attempt, .. } => {
                *self = Self::Established { keys };
                Some(attempt.index)
            }
            other => {
                *self = other;
                None
            }
        }
    }
}

/// A tunnel's state, without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TunnelState {
    /// No session, waiting to retry.
    Idle,
    /// First handshake in flight.
    Handshaking,
    /// Up.
    Established,
    /// Up, with a new handshake in flight.
    Rekeying,
}

/// Retry delay after `failures` failed connections, before jitter: exponential, capped.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.min(8);
    (BACKOFF_BASE * (1u32 << exp)).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(4), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
