//! [`PathState`]: how one peer is reached, and the rules about it: the silence clock of a
//! direct path, moving off it and probing it again, introductions and hole punches, and the
//! endpoint we last told the peer we see it at. The Node's side of paths (sending, relaying,
//! routes) is in `paths.rs`.

use std::time::{Duration, Instant};

use weft_crypto::REKEY_TIMEOUT;

use crate::id::Endpoint;
use crate::routes::NextHop;

use super::peer::min_opt;

/// After this without a session, ask a mutual peer to introduce us (hole punching).
pub const INTRODUCE_AFTER: Duration = REKEY_TIMEOUT;

/// The minimum time between two punches or punch-triggered initiations towards one peer.
pub const PUNCH_INTERVAL: Duration = Duration::from_millis(500);

/// Data sent over a direct path and nothing received on it for this long: the path may be
/// dead, so a handshake goes out as a probe (it must be answered). WireGuard waits
/// `KEEPALIVE_TIMEOUT + REKEY_TIMEOUT` because it has no other way round a dead path; we have
/// relays, and our bound for failover is 15 s, so we probe after one `REKEY_TIMEOUT`
/// and give the probe one more `REKEY_TIMEOUT` before relaying.
pub const SILENT_PROBE_AFTER: Duration = REKEY_TIMEOUT;

/// While a session runs through a relay because its direct path went silent, a keepalive is
/// sent straight to the peer this often: when it gets through, the peer roams back to the
/// direct path (and so do we when its answer arrives directly).
pub const DIRECT_PROBE_INTERVAL: Duration = REKEY_TIMEOUT;

/// Between two punch rounds of a pair behind NATs, no packet goes straight to the peer for
/// this long: a Linux NAT keeps an unreplied UDP entry 30 s, and while the entry that a lost
/// round left on the peer's NAT lives, the peer's packets to us leave from another port
/// (docs/design.md §4). Longer than that timeout, so each round starts on clean NATs.
pub const PUNCH_RETRY: Duration = Duration::from_secs(35);

/// Punch rounds before a pair behind NATs gives up on a direct path (and stays relayed).
pub const PUNCH_ROUNDS: u32 = 4;

/// How one peer is reached, and what we know and promised about its direct path.
#[derive(Debug, Default)]
pub(super) struct PathState {
    /// How the peer is reached (None: not known yet, or the tunnel closed).
    pub(super) next_hop: Option<NextHop>,
    /// When a packet from the peer last arrived on its direct path.
    pub(super) last_direct_rx: Option<Instant>,
    /// When we asked a mutual peer for an introduction (once per wait for a session).
    pub(super) intro_at: Option<Instant>,
    /// When we last punched, or initiated, because of a punch or an introduction.
    pub(super) punch_at: Option<Instant>,
    /// An endpoint learned from an introduction or a punch.
    pub(super) punch_endpoint: Option<Endpoint>,
    /// The source endpoint we last reported to it.
    pub(super) observed_sent: Option<Endpoint>,
    /// Since when data went out on the direct path with nothing received on it.
    pub(super) unanswered_since: Option<Instant>,
    /// The direct endpoint of a session moved to a relay because the path went silent.
    pub(super) lost_direct: Option<Endpoint>,
    /// When to send the next keepalive straight to `lost_direct` (and the record's
    /// endpoints), to find out whether the direct path is back.
    pub(super) direct_probe_at: Option<Instant>,
    /// Punch rounds asked for since the direct attempt began (pairs behind NATs only).
    pub(super) punch_rounds: u32,
    /// Since when we try for a direct path to a peer behind NAT from behind ours.
    pub(super) attempt_since: Option<Instant>,
    /// When the next punch round is due (None: none planned).
    pub(super) punch_round_at: Option<Instant>,
    /// When a punch from the peer last made us probe the direct path.
    pub(super) punch_probe_at: Option<Instant>,
}

/// Where a direct attempt between two NATed peers stands, for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectAttempt {
    /// Punch rounds are under way: `rounds` asked for so far.
    Punching {
        /// Rounds asked for.
        rounds: u32,
    },
    /// Every round failed: the pair stays relayed (a NAT that maps per destination, most
    /// likely).
    GaveUp {
        /// Rounds tried.
        rounds: u32,
    },
}

impl PathState {
    /// The peer's endpoint, if it is reached directly.
    pub(super) fn direct(&self) -> Option<Endpoint> {
        match self.next_hop {
            Some(NextHop::Direct(ep)) => Some(ep),
            _ => None,
        }
    }

    /// Whether the peer is reached directly.
    pub(super) fn is_direct(&self) -> bool {
        self.direct().is_some()
    }

    /// Something that must be answered (data, an initiation) went out at `at`: on a direct
    /// path, the silence clock starts unless it runs already; an answer on the path stops
    /// it, and past [`SILENT_PROBE_AFTER`] the path is probed, then relayed round.
    pub(super) fn expect_answer(&mut self, at: Instant) {
        if self.is_direct() && self.unanswered_since.is_none() {
            self.unanswered_since = Some(at);
        }
    }

    /// A data-plane worker received from the peer at `from`, last at `last`. Only the
    /// direct path counts: it answers what went out on it before `last`, and needs no probe.
    pub(super) fn direct_rx_reported(&mut self, from: Endpoint, last: Instant) {
        if self.next_hop != Some(NextHop::Direct(from)) {
            return;
        }
        self.last_direct_rx = Some(self.last_direct_rx.map_or(last, |t| t.max(last)));
        if self.unanswered_since.is_some_and(|t| t <= last) {
            self.unanswered_since = None;
        }
        self.direct_probe_at = None;
    }

    /// Whether the direct path is silent: something went out on it [`SILENT_PROBE_AFTER`]
    /// ago or longer, and nothing came back since.
    pub(super) fn is_silent(&self, now: Instant) -> bool {
        self.is_direct()
            && self
                .unanswered_since
                .is_some_and(|t| now >= t + SILENT_PROBE_AFTER)
    }

    /// Whether nothing arrived on the direct path since `t` (a probe sent then is unanswered).
    pub(super) fn unheard_since(&self, t: Instant) -> bool {
        self.last_direct_rx.is_none_or(|rx| rx < t)
    }

    /// The direct path went silent and the session leaves it (the caller picks the relay):
    /// its endpoint is remembered for probes, the first due in [`DIRECT_PROBE_INTERVAL`].
    /// Returns the hop it had, which stays the only hope when there is no relay.
    pub(super) fn leave_direct(&mut self, now: Instant) -> Option<NextHop> {
        if let Some(ep) = self.direct() {
            self.lost_direct = Some(ep);
        }
        self.unanswered_since = None;
        self.direct_probe_at = Some(now + DIRECT_PROBE_INTERVAL);
        self.next_hop
    }

    /// Whether a probe of the direct path is due. A session on a relay path (the direct one
    /// went silent, or the handshake itself came through a relay before we knew the peer's
    /// endpoints) gets its first probe scheduled here.
    pub(super) fn probe_due(&mut self, now: Instant) -> bool {
        if matches!(self.next_hop, Some(NextHop::Relay { .. })) && self.direct_probe_at.is_none() {
            self.direct_probe_at = Some(now + DIRECT_PROBE_INTERVAL);
        }
        self.direct_probe_at.is_some_and(|t| now >= t) && !self.is_direct()
    }

    /// A probe of the direct path goes out now; the next is due in [`DIRECT_PROBE_INTERVAL`].
    /// Returns where the path was lost, the first place to probe.
    pub(super) fn probe_sent(&mut self, now: Instant) -> Option<Endpoint> {
        self.direct_probe_at = Some(now + DIRECT_PROBE_INTERVAL);
        self.lost_direct
    }

    /// When the path needs the peer's timer: the next probe, and the silence check of a
    /// direct path if `watch_silence` (an established tunnel; one rekeying probes already).
    pub(super) fn deadline(&self, watch_silence: bool) -> Option<Instant> {
        let silent_at = self
            .unanswered_since
            .filter(|_| watch_silence && self.is_direct())
            .map(|t| t + SILENT_PROBE_AFTER);
        // A probe is only sent off the direct path (`probe_due`): a probe time left over on
        // a direct path (it went silent with no relay to move to) must not wake the timer, or
        // the peer's deadline stays in the past and the timer spins.
        let probe_at = self.direct_probe_at.filter(|_| !self.is_direct());
        min_opt(min_opt(silent_at, probe_at), self.punch_round_at)
    }

    /// When to ask for an introduction, waiting for a session since `since` (once a wait).
    pub(super) fn introduction_at(&self, since: Instant) -> Option<Instant> {
        self.intro_at.is_none().then(|| since + INTRODUCE_AFTER)
    }

    /// Whether to ask for an introduction now; if so it counts as asked for this wait.
    pub(super) fn introduction_due(&mut self, since: Instant, now: Instant) -> bool {
        let due = self.introduction_at(since).is_some_and(|t| now >= t);
        if due {
            self.intro_at = Some(now);
        }
        due
    }

    /// Whether a punch from the peer may be acted on now: at most one per
    /// [`PUNCH_INTERVAL`], since a punch may make us initiate.
    pub(super) fn punch_allowed(&self, now: Instant) -> bool {
        self.punch_at
            .is_none_or(|t| now.saturating_duration_since(t) >= PUNCH_INTERVAL)
    }

    /// A pair behind NATs, not direct: starts the attempt's clock and plans the first round
    /// at once if none is planned. Returns whether a round is due now; if so it counts.
    pub(super) fn punch_round_due(&mut self, now: Instant) -> bool {
        if self.is_direct() {
            return false;
        }
        self.attempt_since.get_or_insert(now);
        if self.punch_rounds == 0 && self.punch_round_at.is_none() {
            self.punch_round_at = Some(now);
        }
        if self.punch_round_at.is_none_or(|t| now < t) {
            return false;
        }
        self.punch_rounds += 1;
        self.punch_round_at = (self.punch_rounds < PUNCH_ROUNDS).then(|| now + PUNCH_RETRY);
        true
    }

    /// The direct path to a peer behind NAT works: the attempt is over.
    pub(super) fn punch_succeeded(&mut self) {
        self.end_attempt();
    }

    /// The direct attempt is over, won or not needed any more: no round planned, and the
    /// next attempt starts from round one.
    pub(super) fn end_attempt(&mut self) {
        self.punch_rounds = 0;
        self.attempt_since = None;
        self.punch_round_at = None;
    }

    /// Where the direct attempt stands, if one runs or gave up, and since when.
    pub(super) fn attempt(&self) -> Option<(DirectAttempt, Instant)> {
        let since = self.attempt_since?;
        let rounds = self.punch_rounds;
        let state = if self.punch_round_at.is_none() && rounds >= PUNCH_ROUNDS {
            DirectAttempt::GaveUp { rounds }
        } else {
            DirectAttempt::Punching { rounds }
        };
        Some((state, since))
    }

    /// Whether a punch from the peer may make us probe now (at most one per
    /// [`PUNCH_INTERVAL`]: a punch is not authenticated); if so it counts.
    pub(super) fn punch_probe_allowed(&mut self, now: Instant) -> bool {
        let allowed = self
            .punch_probe_at
            .is_none_or(|t| now.saturating_duration_since(t) >= PUNCH_INTERVAL);
        if allowed {
            self.punch_probe_at = Some(now);
        }
        allowed
    }

    /// We punch (or initiate) towards `endpoint` now: it is a handshake candidate from here on.
    pub(super) fn punching(&mut self, endpoint: Endpoint, now: Instant) {
        self.punch_at = Some(now);
        self.punch_endpoint = Some(endpoint);
    }

    /// We see the peer at `endpoint`: whether that is news to it. Recorded as told.
    pub(super) fn observed(&mut self, endpoint: Endpoint) -> bool {
        let news = self.observed_sent != Some(endpoint);
        self.observed_sent = Some(endpoint);
        news
    }

    /// The tunnel closed: the hop and what belonged to the session are forgotten (the next
    /// session finds its own path); punch candidates and when the direct path was last heard
    /// stay. Returns the hop it had.
    pub(super) fn tunnel_closed(&mut self) -> Option<NextHop> {
        self.intro_at = None;
        self.observed_sent = None;
        self.unanswered_since = None;
        self.lost_direct = None;
        self.direct_probe_at = None;
        self.next_hop.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::PeerId;

    fn ep(last: u8) -> Endpoint {
        format!("198.18.0.{last}:6786").parse().unwrap()
    }

    fn direct(last: u8) -> PathState {
        PathState {
            next_hop: Some(NextHop::Direct(ep(last))),
            ..PathState::default()
        }
    }

    fn relay() -> NextHop {
        NextHop::Relay {
            via: PeerId([9; 32]),
            endpoint: ep(9),
        }
    }

    #[test]
    fn data_on_a_direct_path_with_nothing_back_goes_silent() {
        let t0 = Instant::now();
        let mut p = direct(1);
        p.expect_answer(t0);
        // A later send does not restart the clock.
        p.expect_answer(t0 + Duration::from_secs(1));
        assert_eq!(p.unanswered_since, Some(t0));
        assert!(!p.is_silent(t0 + SILENT_PROBE_AFTER - Duration::from_millis(1)));
        assert!(p.is_silent(t0 + SILENT_PROBE_AFTER));
        assert_eq!(p.deadline(true), Some(t0 + SILENT_PROBE_AFTER));
        // A rekeying tunnel probes already: no silence wake-up for it.
        assert_eq!(p.deadline(false), None);
    }

    #[test]
    fn a_silent_direct_path_with_no_relay_sets_no_deadline_in_the_past() {
        let t0 = Instant::now();
        let mut p = direct(1);
        p.expect_answer(t0);
        let silent = t0 + SILENT_PROBE_AFTER;
        let old = p.leave_direct(silent);
        // No relay: the direct hop stays the only hope, and nothing is probed on it.
        p.next_hop = old;
        let later = silent + 2 * DIRECT_PROBE_INTERVAL;
        assert!(!p.probe_due(later));
        assert_eq!(p.deadline(true), None);
        assert_eq!(p.deadline(false), None);
        // Once a relay carries the session, the probe is due (overdue: at once).
        p.next_hop = Some(relay());
        assert_eq!(p.deadline(true), Some(silent + DIRECT_PROBE_INTERVAL));
        assert!(p.probe_due(later));
    }

    #[test]
    fn a_relayed_path_has_no_silence_clock() {
        let t0 = Instant::now();
        let mut p = PathState {
            next_hop: Some(relay()),
            ..PathState::default()
        };
        p.expect_answer(t0);
        assert_eq!(p.unanswered_since, None);
        assert!(!p.is_silent(t0 + 10 * SILENT_PROBE_AFTER));
    }

    #[test]
    fn only_the_direct_endpoint_answers_and_only_what_went_out_before() {
        let t0 = Instant::now();
        let mut p = direct(1);
        p.expect_answer(t0);
        // Received elsewhere: no answer.
        p.direct_rx_reported(ep(2), t0 + Duration::from_secs(1));
        assert_eq!(p.unanswered_since, Some(t0));
        assert_eq!(p.last_direct_rx, None);
        // Received on the path, but before the send: the send is still unanswered.
        p.direct_rx_reported(ep(1), t0 - Duration::from_secs(1));
        assert_eq!(p.unanswered_since, Some(t0));
        assert_eq!(p.last_direct_rx, Some(t0 - Duration::from_secs(1)));
        // An answer; a stale report does not move the last receive back.
        p.direct_rx_reported(ep(1), t0 + Duration::from_secs(2));
        p.direct_rx_reported(ep(1), t0);
        assert_eq!(p.unanswered_since, None);
        assert_eq!(p.last_direct_rx, Some(t0 + Duration::from_secs(2)));
        assert!(!p.unheard_since(t0 + Duration::from_secs(1)));
        assert!(p.unheard_since(t0 + Duration::from_secs(3)));
    }

    #[test]
    fn leaving_a_silent_direct_path_remembers_it_and_probes_it() {
        let t0 = Instant::now();
        let mut p = direct(1);
        p.expect_answer(t0);
        let now = t0 + SILENT_PROBE_AFTER;
        assert_eq!(p.leave_direct(now), Some(NextHop::Direct(ep(1))));
        assert_eq!(p.lost_direct, Some(ep(1)));
        assert_eq!(p.unanswered_since, None);
        p.next_hop = Some(relay());
        assert!(!p.probe_due(now));
        assert_eq!(p.deadline(true), Some(now + DIRECT_PROBE_INTERVAL));
        let due = now + DIRECT_PROBE_INTERVAL;
        assert!(p.probe_due(due));
        assert_eq!(p.probe_sent(due), Some(ep(1)));
        assert!(!p.probe_due(due));
        assert!(p.probe_due(due + DIRECT_PROBE_INTERVAL));
    }

    #[test]
    fn a_session_that_came_through_a_relay_schedules_its_first_probe() {
        let t0 = Instant::now();
        let mut p = PathState {
            next_hop: Some(relay()),
            ..PathState::default()
        };
        assert!(!p.probe_due(t0));
        assert_eq!(p.direct_probe_at, Some(t0 + DIRECT_PROBE_INTERVAL));
        assert!(p.probe_due(t0 + DIRECT_PROBE_INTERVAL));
        // Back on the direct path: no probe, whatever the schedule says.
        p.next_hop = Some(NextHop::Direct(ep(1)));
        assert!(!p.probe_due(t0 + 2 * DIRECT_PROBE_INTERVAL));
    }

    #[test]
    fn one_introduction_per_wait() {
        let since = Instant::now();
        let mut p = PathState::default();
        assert_eq!(p.introduction_at(since), Some(since + INTRODUCE_AFTER));
        assert!(!p.introduction_due(since, since));
        assert!(p.introduction_due(since, since + INTRODUCE_AFTER));
        assert_eq!(p.introduction_at(since), None);
        assert!(!p.introduction_due(since, since + 10 * INTRODUCE_AFTER));
        // A new wait (the tunnel closed) may ask again.
        p.tunnel_closed();
        assert!(p.introduction_due(since, since + INTRODUCE_AFTER));
    }

    #[test]
    fn punch_rounds_wait_out_the_nat_entry_and_give_up() {
        let t0 = Instant::now();
        let mut p = PathState::default();
        assert!(p.punch_round_due(t0), "the first round is at once");
        assert!(!p.punch_round_due(t0 + PUNCH_RETRY - Duration::from_millis(1)));
        assert_eq!(p.deadline(true), Some(t0 + PUNCH_RETRY));
        let mut t = t0;
        for round in 2..=PUNCH_ROUNDS {
            t += PUNCH_RETRY;
            assert!(p.punch_round_due(t), "round {round}");
        }
        assert_eq!(
            p.attempt(),
            Some((
                DirectAttempt::GaveUp {
                    rounds: PUNCH_ROUNDS
                },
                t0
            ))
        );
        assert!(!p.punch_round_due(t + 10 * PUNCH_RETRY));
        p.punch_succeeded();
        assert_eq!(p.attempt(), None);
        // Direct already: no round.
        let mut d = direct(1);
        assert!(!d.punch_round_due(t0));
        assert_eq!(d.attempt(), None);
    }

    #[test]
    fn punches_are_rate_limited() {
        let t0 = Instant::now();
        let mut p = PathState::default();
        assert!(p.punch_allowed(t0));
        p.punching(ep(3), t0);
        assert_eq!(p.punch_endpoint, Some(ep(3)));
        assert!(!p.punch_allowed(t0 + PUNCH_INTERVAL - Duration::from_millis(1)));
        assert!(p.punch_allowed(t0 + PUNCH_INTERVAL));
    }

    #[test]
    fn an_observed_endpoint_is_reported_once_until_it_changes() {
        let mut p = PathState::default();
        assert!(p.observed(ep(1)));
        assert!(!p.observed(ep(1)));
        assert!(p.observed(ep(2)));
        // A new session is told again.
        p.tunnel_closed();
        assert!(p.observed(ep(2)));
    }

    #[test]
    fn closing_the_tunnel_forgets_the_session_path_but_keeps_punch_candidates() {
        let t0 = Instant::now();
        let mut p = direct(1);
        p.expect_answer(t0);
        p.direct_rx_reported(ep(1), t0);
        p.punching(ep(3), t0);
        p.leave_direct(t0);
        assert_eq!(p.tunnel_closed(), Some(NextHop::Direct(ep(1))));
        assert_eq!(p.next_hop, None);
        assert_eq!(
            (p.unanswered_since, p.lost_direct, p.direct_probe_at),
            (None, None, None)
        );
        assert_eq!(p.punch_endpoint, Some(ep(3)));
        assert_eq!(p.last_direct_rx, Some(t0));
    }
}
