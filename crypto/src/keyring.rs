//! The sessions held for one peer across rekeys: the current one, and the previous one for a
//! grace period so that packets sealed before the switch still open.

use std::sync::Arc;
use std::time::Instant;

use crate::session::{PREVIOUS_SESSION_GRACE, Session};

/// Current and previous session with one peer. Sessions are `Arc`s: data-plane workers hold
/// them while the mesh rotates them.
#[derive(Debug, Default)]
pub struct Keyring {
    current: Option<Arc<Session>>,
    previous: Option<(Arc<Session>, Instant)>,
    /// The previous session is one [`Keyring::promote_previous`] demoted, on the guess that
    /// the peer never completed it; a packet under it proves the guess wrong.
    demoted: bool,
}

impl Keyring {
    /// An empty keyring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `session` current; the one it replaces stays usable for opening until
    /// [`PREVIOUS_SESSION_GRACE`] from `now` (or its own expiry, whichever is first). Returns
    /// the local index of a previous session this pushes out early, so the caller can forget
    /// it.
    #[must_use = "a returned index must be forgotten by the caller's index map"]
    pub fn install(&mut self, session: Arc<Session>, now: Instant) -> Option<u32> {
        self.demoted = false;
        let old = self.current.replace(session)?;
        self.previous
            .replace(grace(old, now))
            .map(|(gone, _)| gone.local_index())
    }

    /// Keeps `session` for opening only, as the previous one for [`PREVIOUS_SESSION_GRACE`]
    /// from `now` (or its own expiry), while the current session stays the one to seal with:
    /// the losing side of two handshakes that crossed (each peer initiated one at once; both
    /// must settle on the same session, and the peer may still seal a few packets with the
    /// other). Returns the local index of a previous session this pushes out, as
    /// [`Keyring::install`] does.
    #[must_use = "a returned index must be forgotten by the caller's index map"]
    pub fn install_previous(&mut self, session: Arc<Session>, now: Instant) -> Option<u32> {
        self.demoted = false;
        self.previous
            .replace(grace(session, now))
            .map(|(gone, _)| gone.local_index())
    }

    /// Makes the previous session current again, and the current one previous for
    /// [`PREVIOUS_SESSION_GRACE`] from `now`: for a session kept for opening only
    /// ([`Keyring::install_previous`]) that seems to be the only one the peer holds (ours was
    /// never confirmed). That is a guess: the demoted session comes back if a packet opens
    /// under it ([`Keyring::opened`]). Returns false (and changes nothing) when there is no
    /// previous session at `now`.
    pub fn promote_previous(&mut self, now: Instant) -> bool {
        if !self.swap(now) {
            return false;
        }
        self.demoted = true;
        true
    }

    /// A packet from the peer opened under `local_index`. If that is the session
    /// [`Keyring::promote_previous`] demoted, the peer holds it after all (its first packets
    /// under it were lost, not our finish): it is current again, and the promoted one
    /// previous for [`PREVIOUS_SESSION_GRACE`] from `now`, so that both ends seal with the
    /// one they settled on. Returns whether it was restored.
    pub fn opened(&mut self, local_index: u32, now: Instant) -> bool {
        if !self.demoted
            || self
                .previous(now)
                .is_none_or(|prev| prev.local_index() != local_index)
        {
            return false;
        }
        self.demoted = false;
        self.swap(now)
    }

    /// Exchanges the current and the previous session (while the previous one lasts); the
    /// one made previous gets a grace from `now`.
    fn swap(&mut self, now: Instant) -> bool {
        if self.previous(now).is_none_or(|prev| prev.is_expired(now)) {
            return false;
        }
        let Some((prev, _)) = self.previous.take() else {
            return false;
        };
        if let Some(old) = self.current.replace(prev) {
            self.previous = Some(grace(old, now));
        }
        true
    }

    /// The session to seal with: the current one once the peer has proven it holds it, else
    /// the previous one while it lasts (an initiator's new session is unconfirmed until the
    /// first packet arrives under it), else the current one.
    pub fn sending(&self, now: Instant) -> Option<&Arc<Session>> {
        let current = self.current.as_ref().filter(|s| !s.is_expired(now))?;
        if !current.is_confirmed()
            && let Some((prev, until)) = &self.previous
            && now < *until
            && !prev.is_expired(now)
        {
            return Some(prev);
        }
        Some(current)
    }

    /// The current session, if any.
    pub fn current(&self) -> Option<&Arc<Session>> {
        self.current.as_ref()
    }

    /// When the previous session's grace ends, if there is one.
    pub fn previous_until(&self) -> Option<Instant> {
        self.previous.as_ref().map(|(_, until)| *until)
    }

    /// The previous session while its grace lasts at `now`.
    pub fn previous(&self, now: Instant) -> Option<&Arc<Session>> {
        self.previous
            .as_ref()
            .filter(|(_, until)| now < *until)
            .map(|(s, _)| s)
    }

    /// The session that opens datagrams addressed to `local_index`, if it is still held.
    pub fn for_index(&self, local_index: u32, now: Instant) -> Option<&Arc<Session>> {
        if let Some(s) = self
            .current
            .as_ref()
            .filter(|s| s.local_index() == local_index)
        {
            return Some(s);
        }
        match &self.previous {
            Some((s, until)) if s.local_index() == local_index && now < *until => Some(s),
            _ => None,
        }
    }

    /// Drops what has run out at `now`: the previous session after its grace, the current one
    /// after its expiry. Returns the local indices released, so the caller can forget them.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<u32> {
        let mut released = Vec::new();
        if let Some((s, until)) = &self.previous
            && now >= *until
        {
            released.push(s.local_index());
            self.previous = None;
            self.demoted = false;
        }
        if let Some(s) = &self.current
            && s.is_expired(now)
        {
            released.push(s.local_index());
            self.current = None;
        }
        released
    }

    /// The next instant after `now` at which something changes: a rekey falling due, the
    /// previous session's end, or the current one's expiry. A rekey that is already due is
    /// not repeated (the caller saw it through [`Keyring::needs_rekey`]), so a driver that
    /// sleeps until this deadline never spins while a rekey is in flight.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let current = self.current.as_ref().map(|s| {
            let rekey = s.rekey_at();
            if rekey > now {
                rekey.min(s.expires_at())
            } else {
                s.expires_at()
            }
        });
        let previous = self.previous.as_ref().map(|(_, until)| *until);
        match (current, previous) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the current session is due for a rekey at `now` (or there is none).
    pub fn needs_rekey(&self, now: Instant) -> bool {
        self.current
            .as_ref()
            .is_none_or(|s| now >= s.rekey_at() || s.is_expired(now))
    }
}

/// `session` as a previous one: kept for opening until [`PREVIOUS_SESSION_GRACE`] from `now`,
/// or its own expiry if that comes first.
fn grace(session: Arc<Session>, now: Instant) -> (Arc<Session>, Instant) {
    let until = (now + PREVIOUS_SESSION_GRACE).min(session.expires_at());
    (session, until)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::tests::{open, pair, pair_with};
    use crate::session::{REJECT_AFTER_TIME, REKEY_AFTER_TIME};
    use crate::wire::{DATA_HEADER_LEN, DATA_OVERHEAD, PayloadKind};
    use std::time::Duration;

    fn packet() -> Vec<u8> {
        let mut p = vec![0u8; DATA_OVERHEAD + 4];
        p[DATA_HEADER_LEN..DATA_HEADER_LEN + 4].copy_from_slice(b"ping");
        p
    }

    /// A virtual clock: a fixed base plus offsets. Nothing here reads the real clock again.
    #[test]
    fn rekey_keeps_the_previous_session_for_the_grace_period_then_drops_it() {
        let t0 = Instant::now();
        let (a1, b1) = pair(t0);
        let (a1, b1) = (Arc::new(a1), Arc::new(b1));
        let mut ring_b = Keyring::new();
        assert_eq!(ring_b.install(b1.clone(), t0), None);
        assert!(!ring_b.needs_rekey(t0));
        assert_eq!(ring_b.poll_timeout(t0), Some(b1.rekey_at()));

        // A packet sealed under the first session just before the rekey...
        let t_rekey = t0 + REKEY_AFTER_TIME;
        let mut late = packet();
        a1.seal_in_place(PayloadKind::Data, &mut late, t_rekey)
            .unwrap();

        // ...the rekey installs a second session (new indices)...
        let (_a2, b2) = pair_with(t_rekey, 11, 21);
        let b2 = Arc::new(b2);
        assert_eq!(ring_b.install(b2.clone(), t_rekey), None);
        assert_eq!(
            ring_b.poll_timeout(t_rekey),
            Some(t_rekey + PREVIOUS_SESSION_GRACE)
        );

        // ...and the late packet still opens through the previous session during the grace.
        let during = t_rekey + PREVIOUS_SESSION_GRACE - Duration::from_millis(1);
        let s = ring_b.for_index(20, during).expect("previous session held");
        assert!(open(s, &mut late.clone(), during).is_ok());
        assert!(ring_b.handle_timeout(during).is_empty());

        // After the grace it is gone.
        let after = t_rekey + PREVIOUS_SESSION_GRACE;
        assert!(ring_b.for_index(20, after).is_none());
        assert_eq!(ring_b.handle_timeout(after), vec![20]);
        assert!(ring_b.for_index(21, after).is_some());
        assert_eq!(ring_b.poll_timeout(after), Some(b2.rekey_at()));
        // Once the rekey is due it is not repeated: the next deadline is the expiry.
        assert_eq!(ring_b.poll_timeout(b2.rekey_at()), Some(b2.expires_at()));

        // The current session expires on its own at REJECT_AFTER_TIME.
        let end = t_rekey + REJECT_AFTER_TIME;
        assert!(ring_b.needs_rekey(end));
        assert_eq!(ring_b.handle_timeout(end), vec![21]);
        assert!(ring_b.current().is_none());
        assert_eq!(ring_b.poll_timeout(end), None);
    }

    #[test]
    fn sending_prefers_the_previous_session_until_the_new_one_is_confirmed() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let (a1, _b1) = pair_with(t0, 10, 20);
        let (a2, b2) = pair_with(t1, 11, 21);
        let mut ring = Keyring::new();
        assert_eq!(ring.install(Arc::new(a1), t0), None);
        assert_eq!(ring.install(Arc::new(a2), t1), None);
        assert_eq!(
            ring.sending(t1).unwrap().local_index(),
            10,
            "new one unconfirmed"
        );
        // A packet from the peer under the new session confirms it.
        let mut p = packet();
        b2.seal_in_place(PayloadKind::Control, &mut p, t1).unwrap();
        open(ring.for_index(11, t1).unwrap(), &mut p, t1).unwrap();
        assert_eq!(ring.sending(t1).unwrap().local_index(), 11);
        // Once the previous session's grace is over, the current one is used regardless.
        let (a3, _b3) = pair_with(t1, 12, 22);
        // A third session within the grace pushes the first out early: its index is returned.
        assert_eq!(ring.install(Arc::new(a3), t1), Some(10));
        let later = t1 + PREVIOUS_SESSION_GRACE;
        assert_eq!(ring.sending(later).unwrap().local_index(), 12);
    }

    #[test]
    fn a_crossed_session_kept_as_previous_opens_but_never_seals_once_ours_is_confirmed() {
        let t0 = Instant::now();
        let (ours, peer_ours) = pair_with(t0, 10, 20);
        let (theirs, _peer_theirs) = pair_with(t0, 11, 21);
        let mut ring = Keyring::new();
        assert_eq!(ring.install(Arc::new(ours), t0), None);
        assert_eq!(ring.install_previous(Arc::new(theirs), t0), None);
        assert_eq!(
            ring.current().unwrap().local_index(),
            10,
            "ours stays current"
        );
        assert!(ring.for_index(11, t0).is_some(), "theirs still opens");
        // Until the peer proves it holds ours, theirs seals (the peer holds that one surely).
        assert_eq!(ring.sending(t0).unwrap().local_index(), 11);
        let mut p = packet();
        peer_ours
            .seal_in_place(PayloadKind::Control, &mut p, t0)
            .unwrap();
        open(ring.for_index(10, t0).unwrap(), &mut p, t0).unwrap();
        assert_eq!(ring.sending(t0).unwrap().local_index(), 10);
        // Theirs goes after the grace like any previous session.
        let later = t0 + PREVIOUS_SESSION_GRACE;
        assert_eq!(ring.handle_timeout(later), vec![11]);
        assert!(ring.for_index(11, later).is_none());
    }

    #[test]
    fn a_previous_session_promoted_seals_and_the_current_one_becomes_previous() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let (ours, _peer_ours) = pair_with(t0, 10, 20);
        let (_peer_theirs, theirs) = pair_with(t1, 21, 11);
        let mut ring = Keyring::new();
        assert_eq!(ring.install(Arc::new(ours), t0), None);
        assert_eq!(ring.install_previous(Arc::new(theirs), t1), None);
        let t5 = t0 + Duration::from_secs(5);
        assert!(ring.promote_previous(t5));
        assert_eq!(ring.current().unwrap().local_index(), 11);
        assert_eq!(
            ring.sending(t5).unwrap().local_index(),
            11,
            "a responder's is confirmed"
        );
        assert_eq!(ring.previous_until(), Some(t5 + PREVIOUS_SESSION_GRACE));
        assert!(
            ring.for_index(10, t5).is_some(),
            "ours still opens for the grace"
        );
        // Nothing to promote once the grace is over.
        let later = t5 + PREVIOUS_SESSION_GRACE;
        assert!(!ring.promote_previous(later));
        assert_eq!(ring.current().unwrap().local_index(), 11);
    }

    #[test]
    fn a_packet_under_the_session_a_promotion_demoted_makes_it_current_again() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let (ours, peer_ours) = pair_with(t0, 10, 20);
        let (_peer_theirs, theirs) = pair_with(t1, 21, 11);
        let mut ring = Keyring::new();
        assert_eq!(ring.install(Arc::new(ours), t0), None);
        assert_eq!(ring.install_previous(Arc::new(theirs), t1), None);
        let t5 = t0 + Duration::from_secs(5);
        assert!(ring.promote_previous(t5));
        // A packet under the promoted one changes nothing.
        assert!(!ring.opened(11, t5));
        assert_eq!(ring.current().unwrap().local_index(), 11);
        // The peer seals with ours after all: its first packets were lost, not our finish.
        let t6 = t5 + Duration::from_secs(1);
        let mut p = packet();
        peer_ours
            .seal_in_place(PayloadKind::Data, &mut p, t6)
            .unwrap();
        open(ring.for_index(10, t6).unwrap(), &mut p, t6).unwrap();
        assert!(ring.opened(10, t6));
        assert_eq!(ring.current().unwrap().local_index(), 10);
        assert_eq!(ring.sending(t6).unwrap().local_index(), 10);
        assert_eq!(ring.previous_until(), Some(t6 + PREVIOUS_SESSION_GRACE));
        // Once only: the session is current, and packets under it are no news.
        assert!(!ring.opened(10, t6));
        assert!(!ring.opened(11, t6));
        assert_eq!(ring.current().unwrap().local_index(), 10);
    }

    #[test]
    fn only_a_demoted_session_is_restored_by_a_packet() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let (a1, _b1) = pair_with(t0, 10, 20);
        let (a2, _b2) = pair_with(t1, 11, 21);
        let mut ring = Keyring::new();
        assert_eq!(ring.install(Arc::new(a1), t0), None);
        // A rekey: late packets under the old session do not bring it back.
        assert_eq!(ring.install(Arc::new(a2), t1), None);
        assert!(!ring.opened(10, t1));
        assert_eq!(ring.current().unwrap().local_index(), 11);
        // A promotion is forgotten once a new session is installed after it...
        let (_p3, theirs) = pair_with(t1, 22, 12);
        assert_eq!(ring.install_previous(Arc::new(theirs), t1), Some(10));
        assert!(ring.promote_previous(t1));
        let (a4, _b4) = pair_with(t1, 13, 23);
        assert_eq!(ring.install(Arc::new(a4), t1), Some(11));
        assert!(!ring.opened(12, t1));
        assert_eq!(ring.current().unwrap().local_index(), 13);
        // ...and once the demoted session's grace is over.
        let (_p5, theirs) = pair_with(t1, 24, 14);
        assert_eq!(ring.install_previous(Arc::new(theirs), t1), Some(12));
        assert!(ring.promote_previous(t1));
        let later = t1 + PREVIOUS_SESSION_GRACE;
        assert_eq!(ring.handle_timeout(later), vec![13]);
        assert!(!ring.opened(13, later));
        assert_eq!(ring.current().unwrap().local_index(), 14);
    }
}
