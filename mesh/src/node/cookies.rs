//! Cookies under load (docs/design.md §3, "Handshakes under load"; the MACs and the cookie
//! reply are `crypto/src/cookie.rs`).
//!
//! As responder: a Node is under load when it saw at least [`LOAD_THRESHOLD`] direct
//! initiations with a valid `mac1` in the current or the previous second of its clock. Under
//! load, an initiation without a valid `mac2` gets a cookie reply and no Diffie-Hellman; one
//! with a valid `mac2` comes from an address its sender receives at, and goes on to the
//! per-source rate limit and the handshake.
//!
//! Why a rate and not the pending handshakes: the pending count rises only after the
//! Diffie-Hellman was spent, and a flood of spoofed sources would fill it first; a rate of
//! initiations is known before any is answered. Why 64 a second: members initiate once per
//! rekey (two minutes) per peer, so a 1,000-node mesh sends a router about 8 a second and its
//! cold start (every node at once) a few hundred in a few seconds, which then costs those
//! initiators one round trip more, not a failed handshake; a flood is far above it. And 64
//! answered initiations a second cost about 11 ms of a core (177 µs each, 1.8 µs for a
//! cookie reply instead: `cargo bench -p weft-crypto --bench cookies`).
//!
//! As initiator: a cookie reply that names an initiation of ours and opens under the join
//! secret with that initiation's `mac1` gives a cookie for the endpoint it came from, kept
//! for [`COOKIE_VALID`]; the next initiations to that endpoint carry `mac2`. The initiation it
//! answered is sent again at once with `mac2` (the same Noise message: no new state, no curve
//! operation), once per attempt, so two routers cannot loop on cookies; later ones wait for
//! the attempt's resend timer. A forged or stray cookie reply does not open and changes
//! nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use weft_crypto::wire::{CookieReply, PROTOCOL_VERSION, WireError};
use weft_crypto::{COOKIE_SECRET_LIFETIME, Cookie};

use crate::drop::DropReason;
use crate::id::Endpoint;

use super::{IndexUse, Node, Source};

/// Direct initiations with a valid `mac1` a second at which a Node is under load (see the
/// module docs for the choice).
pub const LOAD_THRESHOLD: u32 = 64;

/// How long an initiator uses a cookie: less than the responder's secret lives, by a resend
/// interval, so a cookie is not used across the responder's rotation (WireGuard's margin).
pub const COOKIE_VALID: Duration =
    Duration::from_secs(COOKIE_SECRET_LIFETIME.as_secs() - weft_crypto::REKEY_TIMEOUT.as_secs());

/// Cookies kept at once; past this, expired ones are forgotten and, if none is, new ones are
/// not kept (only replies to our own initiations get here, so a handful is the usual).
pub const COOKIES_KEPT: usize = 1024;

/// How often the "upgrade every router" line may be logged.
const VERSION_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Initiations counted in one-second windows of the Node's clock.
#[derive(Debug)]
pub(super) struct LoadMeter {
    start: Option<Instant>,
    current: u32,
    previous: u32,
}

impl LoadMeter {
    pub(super) fn new() -> Self {
        Self {
            start: None,
            current: 0,
            previous: 0,
        }
    }

    fn roll(&mut self, now: Instant) {
        let second = Duration::from_secs(1);
        let Some(start) = self.start else {
            self.start = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= second {
            self.previous = if elapsed < 2 * second {
                self.current
            } else {
                0
            };
            self.current = 0;
            self.start = Some(now);
        }
    }

    /// Counts one initiation.
    pub(super) fn note(&mut self, now: Instant) {
        self.roll(now);
        self.current = self.current.saturating_add(1);
    }

    /// Whether the current or the previous window reached [`LOAD_THRESHOLD`].
    pub(super) fn under_load(&mut self, now: Instant) -> bool {
        self.roll(now);
        self.current.max(self.previous) >= LOAD_THRESHOLD
    }
}

/// The Node's cookie state: its load, the cookies it holds as initiator, the last version
/// warning.
#[derive(Debug)]
pub(super) struct Cookies {
    pub(super) load: LoadMeter,
    held: HashMap<Endpoint, (Cookie, Instant)>,
    version_warned: Option<Instant>,
}

impl Cookies {
    pub(super) fn new() -> Self {
        Self {
            load: LoadMeter::new(),
            held: HashMap::new(),
            version_warned: None,
        }
    }

    /// The cookie for `endpoint`, if one is still good.
    pub(super) fn for_endpoint(&self, endpoint: Endpoint, now: Instant) -> Option<&Cookie> {
        self.held
            .get(&endpoint)
            .filter(|(_, at)| now.saturating_duration_since(*at) < COOKIE_VALID)
            .map(|(c, _)| c)
    }

    fn keep(&mut self, endpoint: Endpoint, cookie: Cookie, now: Instant) {
        if !self.held.contains_key(&endpoint) && self.held.len() >= COOKIES_KEPT {
            self.held
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < COOKIE_VALID);
            if self.held.len() >= COOKIES_KEPT {
                return;
            }
        }
        self.held.insert(endpoint, (cookie, now));
    }
}

impl Node {
    /// A handshake message that did not parse: counted as of another protocol version (with
    /// a rate-limited line saying what to do), or as malformed.
    pub(super) fn refuse_malformed_handshake(
        &mut self,
        now: Instant,
        source: Source,
        error: &WireError,
    ) {
        let WireError::UnsupportedVersion(version) = *error else {
            return self.drop_for(DropReason::Malformed);
        };
        self.drop_for(DropReason::HandshakeVersion);
        let due = self
            .cookies
            .version_warned
            .is_none_or(|t| now.saturating_duration_since(t) >= VERSION_WARNING_INTERVAL);
        if due {
            self.cookies.version_warned = Some(now);
            warn!(
                endpoint = %source.endpoint,
                version,
                ours = PROTOCOL_VERSION,
                "refused a handshake of another protocol version: upgrade every router to the \
                 same weft release (counted as handshake_version; logged once a minute)"
            );
        }
    }

    /// Whether this initiation must prove its source before we spend on it.
    pub(super) fn under_load(&mut self, now: Instant) -> bool {
        self.cookies.load.under_load(now)
    }

    /// The cookie to stamp initiations to `endpoint` with, if one is good.
    pub(super) fn cookie_for(&self, endpoint: Endpoint, now: Instant) -> Option<&Cookie> {
        self.cookies.for_endpoint(endpoint, now)
    }

    /// A cookie reply: keep its cookie for the endpoint it came from and, once per attempt,
    /// send the initiation it answered again with `mac2`.
    pub(super) fn on_cookie_reply(&mut self, now: Instant, source: Source, bytes: &[u8]) {
        let reply = match CookieReply::parse(bytes) {
            Ok(r) => r,
            Err(e) => return self.refuse_malformed_handshake(now, source, &e),
        };
        // We never screen relayed initiations, so no cookie comes back through a relay.
        if source.relayed_from.is_some() {
            return self.drop_for(DropReason::CookieRejected);
        }
        let index = reply.receiver_index();
        let attempt = match self.indices.get(index) {
            Some(IndexUse::Initiating(id)) => {
                self.peers.get_mut(&id).and_then(|p| p.tunnel.attempt_mut())
            }
            Some(IndexUse::Dialing(endpoint)) => self
                .dials
                .get_mut(&endpoint)
                .and_then(|d| d.attempt.as_mut()),
            _ => None,
        };
        let Some(attempt) = attempt.filter(|a| a.index == index) else {
            return self.drop_for(DropReason::CookieRejected);
        };
        let Some(initiator) = attempt.initiator.as_ref() else {
            return self.drop_for(DropReason::CookieRejected);
        };
        let cookie = match self.handshaker.open_cookie_reply(initiator, bytes) {
            Ok(c) => c,
            Err(e) => {
                debug!(endpoint = %source.endpoint, error = %e, "cookie reply refused");
                return self.drop_for(DropReason::CookieRejected);
            }
        };
        let resend = (!attempt.cookie_resent).then(|| initiator.initiation(Some(&cookie)));
        attempt.cookie_resent = true;
        debug!(endpoint = %source.endpoint, resend = resend.is_some(), "cookie received");
        self.cookies.keep(source.endpoint, cookie, now);
        if let Some(msg) = resend {
            self.stats.handshake_bytes += msg.len() as u64;
            self.transmit(source.endpoint, msg.to_vec());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_is_the_current_or_the_previous_second_over_the_threshold() {
        let mut m = LoadMeter::new();
        let t = Instant::now();
        for _ in 0..LOAD_THRESHOLD - 1 {
            m.note(t);
        }
        assert!(!m.under_load(t));
        m.note(t);
        assert!(m.under_load(t));
        // The next second remembers it; the one after that does not.
        let t1 = t + Duration::from_millis(1500);
        assert!(m.under_load(t1));
        assert!(!m.under_load(t1 + Duration::from_secs(1)));
        // A long silence forgets it at once.
        for _ in 0..LOAD_THRESHOLD {
            m.note(t1 + Duration::from_secs(2));
        }
        assert!(m.under_load(t1 + Duration::from_secs(2)));
        assert!(!m.under_load(t1 + Duration::from_secs(10)));
    }
}
