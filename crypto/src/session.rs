//! Established sessions: two directional ChaCha20-Poly1305 keys (ring), a send counter and a
//! replay window. Sealing and opening work in place and over batches; both take `&self` so
//! several data-plane workers can share one session (docs/design.md §2).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};

use crate::keys::{JoinSecretId, PublicKey};
use crate::noise::wipe_key;
use crate::replay::ReplayWindow;
use crate::secret::Secret;
use crate::wire::{
    DATA_HEADER_LEN, DATA_OVERHEAD, DataHeader, PayloadKind, Sealed, TAG_LEN, WireError,
};

// Timer and limit constants are WireGuard's (J. A. Donenfeld, "WireGuard: Next Generation
// Kernel Network Tunnel", NDSS 2017, §6.1 "Preliminaries", table of constants). The handshake
// differs from WireGuard's, the reasons for these numbers do not.

/// A new handshake is started for messages sent after this many (whitepaper `Rekey-After-Messages`).
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// No message is sealed or opened beyond this counter (`Reject-After-Messages`, 2^64 − 2^13 − 1):
/// far below the nonce space, leaving room for the replay window.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// The initiator of a session rekeys after this (`Rekey-After-Time`).
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A session is dead this long after it was made (`Reject-After-Time`).
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// How long to wait for a handshake reply before sending it again (`Rekey-Timeout`).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Send a keepalive when nothing was sent for this long after receiving (`Keepalive-Timeout`).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The responder of a session rekeys only this much later than the initiator would
/// (`Keepalive-Timeout` + `Rekey-Timeout`, the margin WireGuard gives the passive side), so the
/// two ends do not start crossing handshakes at the same instant.
pub const RESPONDER_REKEY_DELAY: Duration = Duration::from_secs(15);
/// After a rekey, the previous session still opens packets this long: packets sealed before
/// the peer switched are still in flight or in its queues. Two `Rekey-Timeout`s cover a lost
/// and resent final handshake message.
pub const PREVIOUS_SESSION_GRACE: Duration = Duration::from_secs(10);

/// Which end of the handshake this session came from; the initiator rekeys first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We sent the initiation.
    Initiator,
    /// We answered it.
    Responder,
}

/// Why a packet was not sealed. Nothing was written into the packet.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// The session has sealed as many messages as it ever may: rekey.
    #[error("session has reached its message limit; a new handshake is needed")]
    Exhausted,
    /// The session is older than [`REJECT_AFTER_TIME`].
    #[error("session expired; a new handshake is needed")]
    Expired,
    /// The buffer cannot hold a header and a tag (misuse of the API).
    #[error("buffer of {0} bytes cannot hold a sealed packet (needs {DATA_OVERHEAD} + payload)")]
    BufferTooSmall(usize),
}

/// Why a datagram was not opened. The window did not move.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    /// Malformed input: [`Sealed::parse`] refused it (for callers that parse and open in
    /// one chain; opening itself reads no header).
    #[error(transparent)]
    Malformed(#[from] WireError),
    /// The datagram names another session's index (misuse: the caller picked the wrong session).
    #[error("datagram is for receiver index {got:#x}, this session is {ours:#x}")]
    WrongSession {
        /// The index in the datagram.
        got: u32,
        /// This session's index.
        ours: u32,
    },
    /// The tag did not verify: forged, corrupted, or sealed with another key.
    #[error("datagram failed authentication")]
    Authentication,
    /// The counter was seen already, or is too far behind the window.
    #[error("replayed or too old counter {0}")]
    Replay(u64),
    /// The session is older than [`REJECT_AFTER_TIME`], or the counter is past the limit.
    #[error("session expired")]
    Expired,
}

/// What an opened datagram held: its kind, and where the plaintext lies in the buffer
/// (`buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Data or control.
    pub kind: PayloadKind,
    /// Length of the plaintext.
    pub len: usize,
    /// The counter the packet carried.
    pub counter: u64,
}

impl Opened {
    /// The plaintext's range in the datagram buffer.
    pub fn range(&self) -> std::ops::Range<usize> {
        DATA_HEADER_LEN..DATA_HEADER_LEN + self.len
    }
}

/// One established session with a peer.
pub struct Session {
    local_index: u32,
    remote_index: u32,
    remote: PublicKey,
    role: Role,
    established: Instant,
    // Boxed so that moving a Session does not leave copies of the keys behind; ring does not
    // wipe its keys on drop, `Drop for Session` does.
    sealer: Box<LessSafeKey>,
    opener: Box<LessSafeKey>,
    send_counter: AtomicU64,
    replay: Mutex<ReplayWindow>,
    /// Set when a packet from the peer opened under this session: proof the peer holds it.
    confirmed: AtomicBool,
    /// Which accepted join secret the handshake used: after a rotation step, sessions made
    /// with one that is no longer the primary are re-made.
    join_secret: Option<JoinSecretId>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("remote", &self.remote)
            .field("role", &self.role)
            .field("established", &self.established)
            .field("sent", &self.send_counter.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Session keys must not outlive the session in memory (docs/design.md §3).
        wipe_key(&mut self.sealer);
        wipe_key(&mut self.opener);
    }
}

fn nonce(counter: u64) -> Nonce {
    // WireGuard's layout: 32 zero bits, then the 64-bit counter, little-endian.
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aead_key(bytes: &Secret<[u8; 32]>) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, bytes.expose()).expect("32-byte key"))
}

impl Session {
    pub(crate) fn new(
        role: Role,
        local_index: u32,
        remote_index: u32,
        remote: PublicKey,
        send_key: Secret<[u8; 32]>,
        receive_key: Secret<[u8; 32]>,
        now: Instant,
    ) -> Self {
        Self {
            local_index,
            remote_index,
            remote,
            role,
            established: now,
            sealer: Box::new(aead_key(&send_key)),
            opener: Box::new(aead_key(&receive_key)),
            send_counter: AtomicU64::new(0),
            replay: Mutex::new(ReplayWindow::new()),
            // The responder received the authenticated finish under this handshake; the
            // initiator has no proof yet that the responder completed it.
            confirmed: AtomicBool::new(role == Role::Responder),
            join_secret: None,
        }
    }

    pub(crate) fn with_join_secret(mut self, id: JoinSecretId) -> Self {
        self.join_secret = Some(id);
        self
    }

    /// The fingerprint of the join secret the handshake used (`None` only for sessions made
    /// without a handshake, in unit tests).
    pub fn join_secret(&self) -> Option<JoinSecretId> {
        self.join_secret
    }

    /// Our index: datagrams for this session carry it as receiver index.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }
    /// The peer's index, written into datagrams we seal.
    pub fn remote_index(&self) -> u32 {
        self.remote_index
    }
    /// The peer's static public key, authenticated by the handshake.
    pub fn remote(&self) -> PublicKey {
        self.remote
    }
    /// Which end of the handshake we were.
    pub fn role(&self) -> Role {
        self.role
    }
    /// When the handshake completed.
    pub fn established(&self) -> Instant {
        self.established
    }
    /// Whether a packet from the peer has opened under this session.
    pub fn is_confirmed(&self) -> bool {
        self.confirmed.load(Ordering::Relaxed)
    }
    /// How many counters were used for sealing.
    pub fn sent(&self) -> u64 {
        self.send_counter.load(Ordering::Relaxed)
    }

    /// When this end should start a new handshake: by time ([`REKEY_AFTER_TIME`], later for
    /// the responder), or now if [`REKEY_AFTER_MESSAGES`] were sealed.
    pub fn rekey_at(&self) -> Instant {
        if self.sent() >= REKEY_AFTER_MESSAGES {
            return self.established;
        }
        match self.role {
            Role::Initiator => self.established + REKEY_AFTER_TIME,
            Role::Responder => self.established + REKEY_AFTER_TIME + RESPONDER_REKEY_DELAY,
        }
    }

    /// When the session stops sealing and opening ([`REJECT_AFTER_TIME`]).
    pub fn expires_at(&self) -> Instant {
        self.established + REJECT_AFTER_TIME
    }

    /// Whether the session is past [`REJECT_AFTER_TIME`] at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.expires_at()
    }

    /// Takes `n` consecutive counters, never handing one out twice and never going past the
    /// limit (a compare-and-swap loop rather than `fetch_add`, which could wrap).
    fn reserve(&self, n: u64) -> Result<u64, SealError> {
        self.send_counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                c.checked_add(n).filter(|end| *end <= REJECT_AFTER_MESSAGES)
            })
            .map_err(|_| SealError::Exhausted)
    }

    fn seal_with(&self, kind: PayloadKind, counter: u64, packet: &mut [u8]) {
        let header = DataHeader {
            kind,
            receiver_index: self.remote_index,
            counter,
        };
        header.write(packet);
        let (head, rest) = packet.split_at_mut(DATA_HEADER_LEN);
        let (body, tag_out) = rest.split_at_mut(rest.len() - TAG_LEN);
        let tag: Tag = self
            .sealer
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&*head), body)
            .expect("ChaCha20-Poly1305 seals any length a datagram can have");
        tag_out.copy_from_slice(tag.as_ref());
    }

    /// Seals one packet in place. `packet` is `[DATA_HEADER_LEN bytes of room | plaintext |
    /// TAG_LEN bytes of room]`; afterwards it is the datagram to send.
    pub fn seal_in_place(
        &self,
        kind: PayloadKind,
        packet: &mut [u8],
        now: Instant,
    ) -> Result<(), SealError> {
        self.seal_batch(kind, std::slice::from_mut(&mut &mut *packet), now)
    }

    /// Seals a batch of packets laid out as for [`Session::seal_in_place`], taking their
    /// counters in one step. On error nothing is sealed.
    pub fn seal_batch<P: AsMut<[u8]>>(
        &self,
        kind: PayloadKind,
        packets: &mut [P],
        now: Instant,
    ) -> Result<(), SealError> {
        if self.is_expired(now) {
            return Err(SealError::Expired);
        }
        for p in packets.iter_mut() {
            let len = p.as_mut().len();
            if len < DATA_OVERHEAD {
                return Err(SealError::BufferTooSmall(len));
            }
        }
        let first = self.reserve(packets.len() as u64)?;
        for (i, p) in packets.iter_mut().enumerate() {
            self.seal_with(kind, first + i as u64, p.as_mut());
        }
        Ok(())
    }

    /// Authenticates and decrypts everything but the replay check.
    fn open_only(
        &self,
        header: DataHeader,
        datagram: &mut [u8],
        now: Instant,
    ) -> Result<Opened, OpenError> {
        if header.receiver_index != self.local_index {
            return Err(OpenError::WrongSession {
                got: header.receiver_index,
                ours: self.local_index,
            });
        }
        if self.is_expired(now) || header.counter >= REJECT_AFTER_MESSAGES {
            return Err(OpenError::Expired);
        }
        let (head, sealed) = datagram.split_at_mut(DATA_HEADER_LEN);
        let plain = self
            .opener
            .open_in_place(nonce(header.counter), Aad::from(&*head), sealed)
            .map_err(|_| OpenError::Authentication)?;
        Ok(Opened {
            kind: header.kind,
            len: plain.len(),
            counter: header.counter,
        })
    }

    /// The replay window. A worker that panicked while holding it cannot have left it
    /// inconsistent (every update is one `mark`), so a poisoned lock is used as it is rather
    /// than taking every other worker down too.
    fn window(&self) -> MutexGuard<'_, ReplayWindow> {
        self.replay.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens one checked datagram in place; the plaintext is then at [`Opened::range`] of its
    /// bytes. After an error the bytes are unspecified (the window did not move).
    pub fn open_in_place<B: AsMut<[u8]>>(
        &self,
        datagram: &mut Sealed<B>,
        now: Instant,
    ) -> Result<Opened, OpenError> {
        let (header, bytes) = datagram.parts_mut();
        if !self.window().check(header.counter) {
            return Err(OpenError::Replay(header.counter));
        }
        let opened = self.open_only(header, bytes, now)?;
        if !self.window().mark(opened.counter) {
            return Err(OpenError::Replay(opened.counter));
        }
        self.confirmed.store(true, Ordering::Relaxed);
        Ok(opened)
    }

    /// Opens a batch of checked datagrams in place, pushing one result per datagram, in
    /// order, into `results` (cleared first; reuse it across batches to avoid allocating). The
    /// replay window is locked twice per batch, not per packet, and moves only for packets
    /// that authenticated.
    pub fn open_batch<P: AsMut<[u8]>>(
        &self,
        datagrams: &mut [Sealed<P>],
        now: Instant,
        results: &mut Vec<Result<Opened, OpenError>>,
    ) {
        results.clear();
        {
            // Cheap early refusal of obvious replays, before spending time on decryption.
            let window = self.window();
            results.extend(datagrams.iter().map(|d| {
                if window.check(d.counter()) {
                    Ok(Opened {
                        kind: PayloadKind::Data,
                        len: 0,
                        counter: 0,
                    })
                } else {
                    Err(OpenError::Replay(d.counter()))
                }
            }));
        }
        for (d, r) in datagrams.iter_mut().zip(results.iter_mut()) {
            if r.is_ok() {
                let (header, bytes) = d.parts_mut();
                *r = self.open_only(header, bytes, now);
            }
        }
        let mut window = self.window();
        let mut any = false;
        for r in results.iter_mut() {
            if let Ok(o) = r {
                // Another worker, or an earlier copy in this batch, may have taken it since.
                if window.mark(o.counter) {
                    any = true;
                } else {
                    *r = Err(OpenError::Replay(o.counter));
                }
            }
        }
        if any {
            self.confirmed.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A pair of sessions that talk to each other, as a handshake would make them.
    pub(crate) fn pair(now: Instant) -> (Session, Session) {
        pair_with(now, 10, 20)
    }

    /// Like [`pair`], with chosen indices: `a` is `a_index`, `b` is `b_index`.
    pub(crate) fn pair_with(now: Instant, a_index: u32, b_index: u32) -> (Session, Session) {
        let k1 = [7u8; 32];
        let k2 = [9u8; 32];
        let a_key = PublicKey::from_bytes([1; 32]);
        let b_key = PublicKey::from_bytes([2; 32]);
        let a = Session::new(
            Role::Initiator,
            a_index,
            b_index,
            b_key,
            Secret::new(k1),
            Secret::new(k2),
            now,
        );
        let b = Session::new(
            Role::Responder,
            b_index,
            a_index,
            a_key,
            Secret::new(k2),
            Secret::new(k1),
            now,
        );
        (a, b)
    }

    /// Parses and opens, as a receive path does.
    pub(crate) fn open(
        s: &Session,
        datagram: &mut [u8],
        now: Instant,
    ) -> Result<Opened, OpenError> {
        s.open_in_place(&mut Sealed::parse(datagram)?, now)
    }

    /// Checked views of a batch of datagrams, for [`Session::open_batch`].
    fn views(batch: &mut [Vec<u8>]) -> Vec<Sealed<&mut Vec<u8>>> {
        batch
            .iter_mut()
            .map(|p| Sealed::parse(p).unwrap())
            .collect()
    }

    fn packet(payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; DATA_OVERHEAD + payload.len()];
        p[DATA_HEADER_LEN..DATA_HEADER_LEN + payload.len()].copy_from_slice(payload);
        p
    }

    #[test]
    fn seal_then_open_in_place() {
        let now = Instant::now();
        let (a, b) = pair(now);
        let mut p = packet(b"hello pod");
        a.seal_in_place(PayloadKind::Data, &mut p, now).unwrap();
        assert_ne!(&p[DATA_HEADER_LEN..DATA_HEADER_LEN + 9], b"hello pod");
        assert!(!a.is_confirmed());
        let o = open(&b, &mut p, now).unwrap();
        assert_eq!(o.kind, PayloadKind::Data);
        assert_eq!(&p[o.range()], b"hello pod");
        // An empty payload (a keepalive) works too, and confirms the session to its receiver.
        let mut k = packet(b"");
        b.seal_in_place(PayloadKind::Control, &mut k, now).unwrap();
        assert_eq!(open(&a, &mut k, now).unwrap().kind, PayloadKind::Control);
        assert!(a.is_confirmed());
    }

    #[test]
    fn tampering_fails_authentication_and_does_not_move_the_window() {
        let now = Instant::now();
        let (a, b) = pair(now);
        let mut p = packet(b"payload");
        a.seal_in_place(PayloadKind::Data, &mut p, now).unwrap();
        for i in [0usize, 1, 6, DATA_HEADER_LEN + 2, p.len() - 1] {
            let mut t = p.clone();
            t[i] ^= 0x01;
            let err = open(&b, &mut t, now).unwrap_err();
            assert!(
                matches!(
                    err,
                    OpenError::Authentication
                        | OpenError::WrongSession { .. }
                        | OpenError::Malformed(_)
                ),
                "byte {i}: {err:?}"
            );
        }
        // The untouched packet still opens: forged copies did not mark its counter.
        open(&b, &mut p, now).unwrap();
    }

    #[test]
    fn a_replayed_datagram_is_refused() {
        let now = Instant::now();
        let (a, b) = pair(now);
        let mut p = packet(b"once");
        a.seal_in_place(PayloadKind::Data, &mut p, now).unwrap();
        let copy = p.clone();
        open(&b, &mut p, now).unwrap();
        let mut again = copy.clone();
        assert_eq!(open(&b, &mut again, now), Err(OpenError::Replay(0)));
        // Twice in one batch: the first wins.
        let (a, b) = pair(now);
        let mut p = packet(b"twice");
        a.seal_in_place(PayloadKind::Data, &mut p, now).unwrap();
        let mut batch = vec![p.clone(), p];
        let mut results = Vec::new();
        b.open_batch(&mut views(&mut batch), now, &mut results);
        assert!(results[0].is_ok());
        assert_eq!(results[1], Err(OpenError::Replay(0)));
    }

    #[test]
    fn batches_use_distinct_consecutive_counters() {
        let now = Instant::now();
        let (a, b) = pair(now);
        let mut batch: Vec<Vec<u8>> = (0..64u8).map(|i| packet(&[i; 100])).collect();
        a.seal_batch(PayloadKind::Data, &mut batch, now).unwrap();
        let counters: Vec<u64> = batch
            .iter()
            .map(|p| DataHeader::parse(p).unwrap().counter)
            .collect();
        assert_eq!(counters, (0..64).collect::<Vec<_>>());
        a.seal_batch(PayloadKind::Data, &mut batch[..1], now)
            .unwrap();
        assert_eq!(DataHeader::parse(&batch[0]).unwrap().counter, 64);
        // Reordered batch: all open.
        batch.swap(1, 30);
        let mut results = Vec::new();
        b.open_batch(&mut views(&mut batch[1..]), now, &mut results);
        assert!(results.iter().all(|r| r.is_ok()));
        let o = results[29].as_ref().unwrap();
        assert_eq!(&batch[30][o.range()], &[1u8; 100][..]);
    }

    #[test]
    fn refuses_to_seal_past_the_message_limit() {
        let now = Instant::now();
        let (a, b) = pair(now);
        a.send_counter
            .store(REJECT_AFTER_MESSAGES - 2, Ordering::Relaxed);
        assert_eq!(a.rekey_at(), now, "past REKEY_AFTER_MESSAGES: rekey now");
        let mut batch = vec![packet(b"x"), packet(b"y"), packet(b"z")];
        assert_eq!(
            a.seal_batch(PayloadKind::Data, &mut batch, now),
            Err(SealError::Exhausted)
        );
        assert_eq!(
            a.sent(),
            REJECT_AFTER_MESSAGES - 2,
            "a refused batch takes no counter"
        );
        a.seal_batch(PayloadKind::Data, &mut batch[..2], now)
            .unwrap();
        assert_eq!(
            a.seal_in_place(PayloadKind::Data, &mut batch[2], now),
            Err(SealError::Exhausted)
        );
        // The last counter below the limit still opens at the receiver.
        let mut p = batch[1].clone();
        assert!(open(&b, &mut p, now).is_ok());
    }

    #[test]
    fn expires_by_time() {
        let t0 = Instant::now();
        let (a, b) = pair(t0);
        assert_eq!(a.rekey_at(), t0 + REKEY_AFTER_TIME);
        assert_eq!(b.rekey_at(), t0 + REKEY_AFTER_TIME + RESPONDER_REKEY_DELAY);
        let mut p = packet(b"late");
        a.seal_in_place(
            PayloadKind::Data,
            &mut p,
            t0 + REJECT_AFTER_TIME - Duration::from_millis(1),
        )
        .unwrap();
        assert_eq!(
            open(&b, &mut p.clone(), t0 + REJECT_AFTER_TIME),
            Err(OpenError::Expired)
        );
        assert_eq!(
            a.seal_in_place(PayloadKind::Data, &mut p, t0 + REJECT_AFTER_TIME),
            Err(SealError::Expired)
        );
    }

    #[test]
    fn misuse_is_reported() {
        let now = Instant::now();
        let (a, b) = pair(now);
        let mut tiny = [0u8; DATA_OVERHEAD - 1];
        assert_eq!(
            a.seal_in_place(PayloadKind::Data, &mut tiny, now),
            Err(SealError::BufferTooSmall(DATA_OVERHEAD - 1))
        );
        let mut p = packet(b"to b");
        a.seal_in_place(PayloadKind::Data, &mut p, now).unwrap();
        // Opening with the sender's own session: wrong receiver index.
        assert!(matches!(
            open(&a, &mut p, now),
            Err(OpenError::WrongSession { .. })
        ));
        assert!(open(&b, &mut p, now).is_ok());
    }

    #[test]
    fn ring_keys_have_no_destructor_so_wiping_them_is_sound() {
        assert!(!std::mem::needs_drop::<LessSafeKey>());
    }

    #[test]
    fn concurrent_sealers_never_share_a_counter() {
        let now = Instant::now();
        let (a, b) = pair(now);
        let counters: Vec<u64> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        let mut seen = Vec::new();
                        for _ in 0..200 {
                            let mut batch = vec![packet(b"x"), packet(b"y"), packet(b"z")];
                            a.seal_batch(PayloadKind::Data, &mut batch, now).unwrap();
                            seen.extend(
                                batch.iter().map(|p| DataHeader::parse(p).unwrap().counter),
                            );
                        }
                        seen
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        let distinct: std::collections::BTreeSet<u64> = counters.iter().copied().collect();
        assert_eq!(distinct.len(), 4 * 200 * 3);
        assert_eq!(distinct.last(), Some(&(4 * 200 * 3 - 1)));
        drop(b);
    }

    #[test]
    fn one_datagram_opened_by_racing_workers_is_accepted_once() {
        let now = Instant::now();
        let (a, b) = pair(now);
        for _ in 0..50 {
            let mut p = packet(b"race");
            a.seal_in_place(PayloadKind::Data, &mut p, now).unwrap();
            let accepted: usize = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..4)
                    .map(|_| {
                        let mut copy = p.clone();
                        let b = &b;
                        scope.spawn(move || usize::from(open(b, &mut copy, now).is_ok()))
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().unwrap()).sum()
            });
            assert_eq!(accepted, 1);
        }
    }

    #[test]
    fn sessions_are_shared_across_threads() {
        fn assert_sync<T: Send + Sync>() {}
        assert_sync::<Session>();
    }
}
