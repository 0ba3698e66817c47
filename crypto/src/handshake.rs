//! The handshake: `Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s` through snow, wrapped in weft's
//! message formats (see [`crate::wire`]) and checks (join secret first, replay, allow-list).
//!
//! The node-wide [`Handshaker`] holds the identity and the replay memory; each handshake in
//! flight is a value the caller keeps, keyed by its local index: an [`Initiator`] waiting for a
//! response, or a [`Responding`] waiting for the finish. A transition consumes the state; a
//! message that is malformed or fails authentication hands the state back exactly as it was
//! before the message ([`Rejected::state`]), so a forged datagram cannot kill a handshake in
//! progress.
//!
//! snow cannot give that by itself: after a failed read it restores the handshake hash and
//! chaining key but not the cipher key and nonce, and its state cannot be copied. In the
//! finish, `s` decrypts (the nonce moves) and `se` replaces the key before the payload's tag
//! fails, so the state it hands back would refuse the real finish. So each waiting state
//! keeps what built it (the messages up to now, its ephemeral seed, and the results of the
//! curve operations so far), and after a failed read the state is built again from them:
//! hashing only, no curve operation.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cookie::{Cookie, CookieSecret, MacKeys, same};
use crate::keys::{JoinSecret, JoinSecrets, KEY_LEN, KeyPair, PublicKey};
use crate::noise::{Curve, CurveMemo, DhCounter, Resolver, WipedHandshake, ephemeral_seed};
use crate::random::Random;
use crate::secret::Secret;
use crate::session::{Role, Session};
use zeroize::Zeroize;

use crate::wire::{
    COOKIE_NONCE_LEN, COOKIE_REPLY_LEN, CookieReply, FINISH_LEN, Finish, INITIATION_LEN,
    Initiation, MAC_LEN, MessageType, PROTOCOL_VERSION, RESPONSE_LEN, Response, TIMESTAMP_LEN,
    Timestamp, WireError,
};

/// The Noise protocol name (Noise spec rev. 34, §8 and §9 for `psk0`).
pub const NOISE_PATTERN: &str = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s";

/// Mixed into every handshake with the initiation's clear header (Noise spec §6: the
/// prologue), so the header cannot be altered and another protocol's handshake cannot pass.
const PROLOGUE: &[u8] = b"weft handshake v1";

/// How far an initiation's timestamp may be from the responder's clock, either way. It bounds
/// how long an initiation must be remembered to refuse its replay. Kubernetes nodes keep their
/// clocks within seconds (NTP); three minutes leaves room for a laptop that slept.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(180);

/// At most this many initiations are remembered for replay refusal (32 bytes each). Only
/// initiations that passed the join-secret check are stored, so only a member can fill it;
/// past it the oldest are forgotten. Refusing new initiations instead would let one member
/// lock everyone out, while a forgotten initiation replayed costs three DH operations and
/// still cannot complete (the replayer lacks the initiator's ephemeral key).
pub const MAX_RECENT_INITIATIONS: usize = 1 << 16;

/// Why a handshake message was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// Malformed input: not a handshake message of the expected shape or version.
    #[error(transparent)]
    Malformed(#[from] WireError),
    /// The message's `mac1` is not that of any accepted join secret: a non-member, or a
    /// corrupted message. Refused before any Noise processing.
    #[error("handshake message has no valid mac1 (not sent with this cluster's join secret)")]
    BadMac1,
    /// The message failed authentication: a wrong join secret (non-member), tampering, or a
    /// message made for another handshake.
    #[error(
        "handshake failed authentication (wrong join secret, or a forged or corrupted message)"
    )]
    Authentication,
    /// The peer authenticated with another key than the one we set out to reach.
    #[error("expected peer {expected}, but {got} answered")]
    UnexpectedPeer {
        /// The key we dialled.
        expected: PublicKey,
        /// The key that answered.
        got: PublicKey,
    },
    /// The peer authenticated, but its key is not on the allow-list.
    #[error("peer {0} is not on the allow-list")]
    PeerNotAllowed(PublicKey),
    /// This initiation was seen before, or is older than the peer's last one.
    #[error("replayed handshake initiation")]
    Replay,
    /// The initiation's timestamp is too far from our clock.
    #[error(
        "handshake initiation timestamp is {skew_secs}s from our clock (allowed ±{}s): \
         check the clocks (NTP) of both nodes",
        MAX_CLOCK_SKEW.as_secs()
    )]
    Stale {
        /// The initiator's clock minus ours, in seconds.
        skew_secs: i64,
    },
    /// Misuse: the message names another handshake than the state it was given to.
    #[error("message is for handshake {got:#x}, this state is {ours:#x}")]
    WrongHandshake {
        /// The index in the message.
        got: u32,
        /// The state's local index.
        ours: u32,
    },
    /// snow refused an operation our own code set up; a bug, not the peer's doing.
    #[error("internal handshake error: {0}")]
    Internal(String),
}

/// A refused message. `state` is the handshake state as it was before the message, when the
/// message was malformed, named another handshake or failed authentication (keep waiting);
/// `None` when the handshake is over.
#[derive(Debug)]
pub struct Rejected<T> {
    /// Why.
    pub error: HandshakeError,
    /// The state to keep waiting with, if it survived.
    pub state: Option<T>,
}

fn internal(e: snow::Error) -> HandshakeError {
    HandshakeError::Internal(e.to_string())
}

/// Maps an error from reading a peer's Noise message, or from writing one with the peer's
/// keys (a low-order ephemeral key from the peer makes our DH fail).
fn from_read(e: snow::Error) -> HandshakeError {
    match e {
        // Decrypt: a tag did not verify. Dh: the peer sent a low-order point.
        snow::Error::Decrypt | snow::Error::Dh => HandshakeError::Authentication,
        other => internal(other),
    }
}

/// This node's side of every handshake: identity, join secret, allow-list, replay memory.
pub struct Handshaker {
    keypair: KeyPair,
    /// The primary (our initiations) and the others a responder also accepts.
    join_secrets: JoinSecrets,
    allowed: Option<HashSet<PublicKey>>,
    counter: Arc<DhCounter>,
    curve: Curve,
    /// Ephemeral keys of recent initiations that passed the join-secret check: a copy within
    /// the skew window is a replay. `recent_order` holds them oldest first, for forgetting.
    recent: HashSet<[u8; 32]>,
    recent_order: VecDeque<([u8; 32], Timestamp)>,
    /// The newest initiation timestamp accepted from each peer (WireGuard's rule: a replay
    /// from before our memory began is still older than the last one we completed).
    newest: HashMap<PublicKey, Timestamp>,
    /// What the cookies we hand out under load are made from (`crypto/src/cookie.rs`).
    cookie_secret: CookieSecret,
}

/// What [`Handshaker::screen_initiation`] found, for an initiation whose `mac1` is valid.
#[derive(Debug)]
pub enum Screened {
    /// Not under load: go on (the per-source budget, then [`Handshaker::handle_initiation`]).
    Unproven,
    /// Under load, and `mac2` proves the source address: go on as well.
    Proven,
    /// Under load without a valid `mac2`: send this cookie reply back to the source instead
    /// of a handshake (no Diffie-Hellman).
    CookieReply([u8; COOKIE_REPLY_LEN]),
}

impl std::fmt::Debug for Handshaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshaker")
            .field("public", &self.keypair.public())
            .field("allowed", &self.allowed.as_ref().map(|a| a.len()))
            .field("recent", &self.recent.len())
            .finish_non_exhaustive()
    }
}

/// What builds a waiting state again after a forged message (see the module docs): the
/// ephemeral seed, the curve results, and what the messages so far were made from. Boxed, so
/// the states stay small as they move through `Result`s.
struct Inputs<T> {
    seed: Secret<[u8; KEY_LEN]>,
    memo: Arc<CurveMemo>,
    message: T,
    /// The join secret the initiation was made with (for an initiator, the primary then).
    secret: JoinSecret,
}

/// An initiator waiting for the response.
pub struct Initiator {
    // Boxed (snow's state is ~1 KiB and moves through Results) and wiped on drop.
    state: WipedHandshake,
    local_index: u32,
    expected: Option<PublicKey>,
    /// What builds `state` again after a forged response: the initiation's timestamp.
    inputs: Box<Inputs<Timestamp>>,
    /// The initiation as sent without a cookie: sent again with `mac2` after a cookie reply
    /// (the MACs are outside the Noise message), and its `mac1` opens that reply.
    initiation: [u8; INITIATION_LEN],
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("local_index", &self.local_index)
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// The index the response will name.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// The initiation, with `mac2` stamped by `cookie` if one is given (zeros otherwise). The
    /// same Noise message each time: a resend after a cookie reply costs no curve operation.
    pub fn initiation(&self, cookie: Option<&Cookie>) -> [u8; INITIATION_LEN] {
        let mut out = self.initiation;
        if let Some(cookie) = cookie {
            cookie.stamp(&mut out);
        }
        out
    }
}

/// A responder that sent its response and waits for the finish.
pub struct Responding {
    state: WipedHandshake,
    local_index: u32,
    remote_index: u32,
    initiated: Timestamp,
    /// What builds `state` again after a forged finish: the initiation.
    inputs: Box<Inputs<[u8; INITIATION_LEN]>>,
}

impl std::fmt::Debug for Responding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responding")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .finish_non_exhaustive()
    }
}

impl Responding {
    /// The index the finish will name.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }
}

fn header(kind: MessageType, index: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[0] = kind as u8;
    h[1] = PROTOCOL_VERSION;
    h[4..8].copy_from_slice(&index.to_le_bytes());
    h
}

fn skew_secs(theirs: Timestamp, ours: Timestamp) -> i64 {
    let (t, o) = (theirs.to_unix(), ours.to_unix());
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    if t >= o { secs(t - o) } else { -secs(o - t) }
}

impl Handshaker {
    /// A handshaker for `keypair`, admitting members that know one of `join_secrets` (a
    /// single [`JoinSecret`] converts) and initiating with their primary.
    pub fn new(keypair: KeyPair, join_secrets: impl Into<JoinSecrets>) -> Self {
        Self {
            keypair,
            join_secrets: join_secrets.into(),
            allowed: None,
            counter: Arc::default(),
            curve: Curve::X25519,
            recent: HashSet::new(),
            recent_order: VecDeque::new(),
            newest: HashMap::new(),
            cookie_secret: CookieSecret::default(),
        }
    }

    /// For simulator tests that run hundreds of nodes: in a build with debug assertions, a
    /// handshaker whose Diffie-Hellman is a hash, with **no security at all** (both ends of a
    /// handshake must use it). In a build without debug assertions (any release build) the
    /// hash is not compiled in and this is [`Handshaker::new`]: no optimised binary can
    /// contain the insecure curve. Nothing but this constructor selects it; the router never
    /// calls it.
    #[cfg(feature = "insecure-fast-dh")]
    pub fn new_insecure_for_simulation(
        keypair: KeyPair,
        join_secrets: impl Into<JoinSecrets>,
    ) -> Self {
        #[cfg(debug_assertions)]
        let curve = Curve::InsecureFast;
        #[cfg(not(debug_assertions))]
        let curve = Curve::X25519;
        Self {
            curve,
            ..Self::new(keypair, join_secrets)
        }
    }

    /// Pins membership further: only these keys complete a handshake (`None`: any member).
    /// Sessions that already exist are not touched: the caller tears down those of peers that
    /// are no longer allowed.
    pub fn set_allowed(&mut self, allowed: Option<HashSet<PublicKey>>) {
        self.allowed = allowed;
    }

    /// Replaces the accepted join secrets (a rotation step, docs/design.md §3). Handshakes
    /// in flight finish with the secret they started with; sessions are not touched: the
    /// caller re-handshakes those made with a secret that is no longer the primary.
    pub fn set_join_secrets(&mut self, join_secrets: JoinSecrets) {
        self.join_secrets = join_secrets;
    }

    /// The accepted join secrets.
    pub fn join_secrets(&self) -> &JoinSecrets {
        &self.join_secrets
    }

    /// This node's public key.
    pub fn public(&self) -> PublicKey {
        self.keypair.public()
    }

    /// X25519 scalar multiplications performed so far (see [`DhCounter`]).
    pub fn dh_operations(&self) -> u64 {
        self.counter.get()
    }

    /// The `mac1` and cookie keys of each accepted join secret; the first is the one our own
    /// messages use. The only place the MACs reach the join secret: with several accepted
    /// secrets this yields one entry per secret.
    fn mac_keys(secrets: &JoinSecrets) -> impl Iterator<Item = (&MacKeys, &JoinSecret)> {
        secrets.accepted().map(|s| (s.mac_keys(), s))
    }

    /// The keys of the accepted secret whose `mac1` a message (with both MACs at its end)
    /// carries: one BLAKE2s per accepted secret, and nothing else. It borrows only the
    /// secrets, so a caller may use the cookie secret beside the keys without copying them.
    fn mac1_match<'s>(
        secrets: &'s JoinSecrets,
        message: &[u8],
    ) -> Result<(&'s MacKeys, &'s JoinSecret), HandshakeError> {
        let (covered, macs) = message.split_at(message.len() - 2 * MAC_LEN);
        Self::mac_keys(secrets)
            .find(|(k, _)| same(&k.mac1(covered), &macs[..MAC_LEN]))
            .ok_or(HandshakeError::BadMac1)
    }

    /// Writes a valid `mac1` into an initiation or response (other messages are left as
    /// they are): what an on-path member can do to a message it forged, for tests of that.
    #[cfg(feature = "test-rng")]
    pub fn stamp_mac1(&self, message: &mut [u8]) {
        if matches!(message.first(), Some(1 | 2)) && message.len() >= 2 * MAC_LEN {
            let at = message.len() - 2 * MAC_LEN;
            let mac1 = self.own_mac_keys().mac1(&message[..at]);
            message[at..at + MAC_LEN].copy_from_slice(&mac1);
        }
    }

    /// Our keys for the MACs we write (the first accepted secret's).
    fn own_mac_keys(&self) -> &MacKeys {
        self.join_secrets.primary().mac_keys()
    }

    /// The first look at an initiation from `source`, before the caller spends anything on it:
    /// its `mac1` is checked (a refusal: [`HandshakeError::BadMac1`]); under load, its `mac2`
    /// too, and without a valid one the answer is a cookie reply. No Noise processing, no
    /// curve operation. `under_load` is the caller's judgement (the mesh's is in
    /// `mesh/src/node/handshake.rs`).
    pub fn screen_initiation(
        &mut self,
        message: &[u8],
        source: SocketAddr,
        under_load: bool,
        now: Instant,
        rng: &mut impl Random,
    ) -> Result<Screened, HandshakeError> {
        let init = Initiation::parse(message)?;
        let keys = Self::mac1_match(&self.join_secrets, message)?.0;
        if !under_load {
            return Ok(Screened::Unproven);
        }
        let cookie = self.cookie_secret.cookie(source, now, rng);
        if same(&cookie.mac2(message), init.mac2()) {
            return Ok(Screened::Proven);
        }
        let mut out = [0u8; COOKIE_REPLY_LEN];
        out[..8].copy_from_slice(&header(MessageType::CookieReply, init.sender_index()));
        let mut nonce = [0u8; COOKIE_NONCE_LEN];
        rng.fill(&mut nonce);
        out[8..8 + COOKIE_NONCE_LEN].copy_from_slice(&nonce);
        out[8 + COOKIE_NONCE_LEN..].copy_from_slice(&keys.seal_cookie(
            &cookie,
            &nonce,
            init.mac1(),
        ));
        Ok(Screened::CookieReply(out))
    }

    /// Opens a cookie reply to our initiation `initiator`: the cookie to stamp the next
    /// initiations to the reply's source with. A reply for another index, or that does not
    /// open under the keys of the secret our initiation used, with its `mac1`, is refused and
    /// changes nothing.
    pub fn open_cookie_reply(
        &self,
        initiator: &Initiator,
        message: &[u8],
    ) -> Result<Cookie, HandshakeError> {
        let reply = CookieReply::parse(message)?;
        if reply.receiver_index() != initiator.local_index {
            return Err(HandshakeError::WrongHandshake {
                got: reply.receiver_index(),
                ours: initiator.local_index,
            });
        }
        let mac1: &[u8; MAC_LEN] = Initiation::parse(&initiator.initiation)?.mac1();
        // Sealed under the keys of the secret our initiation used, which the responder found
        // by its mac1.
        initiator
            .inputs
            .secret
            .mac_keys()
            .open_cookie(reply.nonce(), reply.sealed(), mac1)
            .ok_or(HandshakeError::Authentication)
    }

    fn check_allowed(&self, key: PublicKey) -> Result<(), HandshakeError> {
        match &self.allowed {
            Some(set) if !set.contains(&key) => Err(HandshakeError::PeerNotAllowed(key)),
            _ => Ok(()),
        }
    }

    fn build(
        &self,
        seed: &Secret<[u8; KEY_LEN]>,
        memo: &Arc<CurveMemo>,
        clear_header: &[u8],
        initiator: bool,
        secret: &JoinSecret,
    ) -> Result<WipedHandshake, HandshakeError> {
        let mut prologue = Vec::with_capacity(PROLOGUE.len() + clear_header.len());
        prologue.extend_from_slice(PROLOGUE);
        prologue.extend_from_slice(clear_header);
        let resolver = Resolver::new(
            &self.keypair,
            seed,
            self.counter.clone(),
            self.curve,
            memo.clone(),
        );
        let params = NOISE_PATTERN.parse().map_err(internal)?;
        let builder = snow::Builder::with_resolver(params, Box::new(resolver))
            .local_private_key(self.keypair.private().expose())
            .and_then(|b| b.psk(0, secret.psk()))
            .and_then(|b| b.prologue(&prologue))
            .map_err(internal)?;
        if initiator {
            builder.build_initiator()
        } else {
            builder.build_responder()
        }
        .map(WipedHandshake::new)
        .map_err(internal)
    }

    /// Starts a handshake. `expected`: the peer's key when we know whom we dial (a seed's key
    /// is not known). `wall`: the current wall-clock time, carried for replay protection.
    pub fn initiate(
        &self,
        local_index: u32,
        expected: Option<PublicKey>,
        wall: Timestamp,
        rng: &mut impl Random,
    ) -> Result<(Initiator, [u8; INITIATION_LEN]), HandshakeError> {
        let seed = ephemeral_seed(rng);
        let memo = Arc::default();
        let secret = self.join_secrets.primary().clone();
        let (state, mut out) = self.write_initiation(local_index, wall, &seed, &memo, &secret)?;
        memo.seal();
        let mac1 = self
            .own_mac_keys()
            .mac1(&out[..INITIATION_LEN - 2 * MAC_LEN]);
        out[INITIATION_LEN - 2 * MAC_LEN..INITIATION_LEN - MAC_LEN].copy_from_slice(&mac1);
        Ok((
            Initiator {
                state,
                local_index,
                expected,
                inputs: Box::new(Inputs {
                    seed,
                    memo,
                    message: wall,
                    secret,
                }),
                initiation: out,
            },
            out,
        ))
    }

    /// An initiator's state and its initiation, from the inputs an [`Initiator`] keeps.
    fn write_initiation(
        &self,
        local_index: u32,
        wall: Timestamp,
        seed: &Secret<[u8; KEY_LEN]>,
        memo: &Arc<CurveMemo>,
        secret: &JoinSecret,
    ) -> Result<(WipedHandshake, [u8; INITIATION_LEN]), HandshakeError> {
        let head = header(MessageType::HandshakeInitiation, local_index);
        let mut state = self.build(seed, memo, &head, true, secret)?;
        let mut out = [0u8; INITIATION_LEN];
        out[..8].copy_from_slice(&head);
        let n = state
            .write_message(&wall.to_bytes(), &mut out[8..INITIATION_LEN - 2 * MAC_LEN])
            .map_err(internal)?;
        debug_assert_eq!(8 + n + 2 * MAC_LEN, INITIATION_LEN);
        Ok((state, out))
    }

    /// A responder's state after reading `init` with `secret`, and the timestamp it carried.
    fn read_initiation(
        &self,
        init: &Initiation<'_>,
        seed: &Secret<[u8; KEY_LEN]>,
        memo: &Arc<CurveMemo>,
        secret: &JoinSecret,
    ) -> Result<(WipedHandshake, Timestamp), HandshakeError> {
        let mut state = self.build(seed, memo, init.header(), false, secret)?;
        let mut payload = Secret::new([0u8; 64]);
        let n = state
            .read_message(init.noise(), payload.expose_mut())
            .map_err(from_read)?;
        let stamp: [u8; TIMESTAMP_LEN] = payload.expose()[..n]
            .try_into()
            .map_err(|_| WireError::Payload("timestamp length"))?;
        let initiated =
            Timestamp::from_bytes(stamp).ok_or(WireError::Payload("timestamp out of range"))?;
        Ok((state, initiated))
    }

    /// Builds a waiting initiator's state again, as it was before any response was read.
    fn rebuild_initiator(&self, initiator: &mut Initiator) -> Result<(), HandshakeError> {
        let inputs = &initiator.inputs;
        let (state, _) = self.write_initiation(
            initiator.local_index,
            inputs.message,
            &inputs.seed,
            &inputs.memo,
            &inputs.secret,
        )?;
        initiator.state = state;
        Ok(())
    }

    /// Builds a waiting responder's state again, as it was before any finish was read.
    fn rebuild_responding(&self, responding: &mut Responding) -> Result<(), HandshakeError> {
        let inputs = &responding.inputs;
        let init = Initiation::parse(&inputs.message)?;
        // The secret this handshake started with, even if it is no longer accepted: a
        // handshake in flight finishes with it.
        let keys = inputs.secret.mac_keys();
        let (mut state, _) =
            self.read_initiation(&init, &inputs.seed, &inputs.memo, &inputs.secret)?;
        write_response(
            &mut state,
            keys,
            init.sender_index(),
            responding.local_index,
        )?;
        responding.state = state;
        Ok(())
    }

    /// Answers an initiation. Its `mac1` is checked first (as [`Handshaker::screen_initiation`]
    /// does; `mac2` is the caller's business), then the join secret (the psk0 AEAD over the
    /// timestamp), then replay and clock skew, all before any Diffie-Hellman operation; only
    /// then is the response written.
    pub fn handle_initiation(
        &mut self,
        message: &[u8],
        local_index: u32,
        wall: Timestamp,
        rng: &mut impl Random,
    ) -> Result<(Responding, [u8; RESPONSE_LEN]), HandshakeError> {
        let init = Initiation::parse(message)?;
        // mac1 names the accepted secret the initiator used: only that one's psk0 is tried.
        let secret = Self::mac1_match(&self.join_secrets, message)?.1.clone();
        if self.recent.contains(init.ephemeral()) {
            return Err(HandshakeError::Replay);
        }
        let seed = ephemeral_seed(rng);
        let memo = Arc::default();
        let (mut state, initiated) = self.read_initiation(&init, &seed, &memo, &secret)?;
        let skew = skew_secs(initiated, wall);
        let (t, w) = (initiated.to_unix(), wall.to_unix());
        if t.abs_diff(w) > MAX_CLOCK_SKEW {
            return Err(HandshakeError::Stale { skew_secs: skew });
        }
        self.remember(*init.ephemeral(), wall);

        let out = write_response(
            &mut state,
            secret.mac_keys(),
            init.sender_index(),
            local_index,
        )?;
        memo.seal();
        let initiation = message
            .try_into()
            .map_err(|_| HandshakeError::Internal("initiation length".into()))?;
        Ok((
            Responding {
                state,
                local_index,
                remote_index: init.sender_index(),
                initiated,
                inputs: Box::new(Inputs {
                    seed,
                    memo,
                    message: initiation,
                    secret,
                }),
            },
            out,
        ))
    }

    /// Records an initiation's ephemeral key (with our clock's time of arrival, so the order
    /// is ours), forgetting those that aged out of the skew window (their replays are refused
    /// as stale instead) and, past [`MAX_RECENT_INITIATIONS`], the oldest.
    fn remember(&mut self, ephemeral: [u8; 32], wall: Timestamp) {
        self.expire_initiations(wall);
        while self.recent_order.len() >= MAX_RECENT_INITIATIONS {
            if let Some((old, _)) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
        self.recent.insert(ephemeral);
        self.recent_order.push_back((ephemeral, wall));
    }

    /// Forgets remembered initiations that arrived more than twice the skew window before
    /// `wall`: any copy of them now carries a timestamp outside the window. The mesh calls it
    /// on its timer to keep memory flat.
    pub fn expire_initiations(&mut self, wall: Timestamp) {
        let horizon = wall.to_unix().saturating_sub(2 * MAX_CLOCK_SKEW);
        while let Some((old, at)) = self.recent_order.front() {
            if at.to_unix() >= horizon {
                break;
            }
            self.recent.remove(old);
            self.recent_order.pop_front();
        }
    }

    /// Completes our handshake with the response: checks the responder's key, writes the
    /// finish, and returns the session (unconfirmed until a packet arrives under it).
    #[expect(
        clippy::result_large_err,
        reason = "the Ok side, a Session, is larger still; the Err hands the state back by value"
    )]
    pub fn handle_response(
        &self,
        mut initiator: Initiator,
        message: &[u8],
        now: Instant,
    ) -> Result<(Session, [u8; FINISH_LEN]), Rejected<Initiator>> {
        let keep = |initiator, error| Rejected {
            error,
            state: Some(initiator),
        };
        let resp = match Response::parse(message) {
            Ok(r) => r,
            Err(e) => return Err(keep(initiator, e.into())),
        };
        if resp.receiver_index() != initiator.local_index {
            let error = HandshakeError::WrongHandshake {
                got: resp.receiver_index(),
                ours: initiator.local_index,
            };
            return Err(keep(initiator, error));
        }
        // Before any Noise processing, as for an initiation.
        // Under the secret our initiation used, whatever is accepted now.
        let (covered, macs) = message.split_at(message.len() - 2 * MAC_LEN);
        if !same(
            &initiator.inputs.secret.mac_keys().mac1(covered),
            &macs[..MAC_LEN],
        ) {
            return Err(keep(initiator, HandshakeError::BadMac1));
        }
        let mut payload = [0u8; 64];
        let done = |error| Rejected { error, state: None };
        let n = match initiator.state.read_message(resp.noise(), &mut payload) {
            Ok(n) => n,
            // snow restores only part of its state (see the module docs): build it again.
            Err(e) => {
                return Err(match self.rebuild_initiator(&mut initiator) {
                    Ok(()) => keep(initiator, from_read(e)),
                    Err(error) => done(error),
                });
            }
        };
        let remote_index = u32::from_le_bytes(
            payload[..n]
                .try_into()
                .map_err(|_| done(WireError::Payload("sender index length").into()))?,
        );
        let remote = remote_static(&initiator.state).map_err(done)?;
        if let Some(expected) = initiator.expected.filter(|e| *e != remote) {
            return Err(done(HandshakeError::UnexpectedPeer {
                expected,
                got: remote,
            }));
        }
        self.check_allowed(remote).map_err(done)?;

        let mut out = [0u8; FINISH_LEN];
        out[..8].copy_from_slice(&header(MessageType::HandshakeFinish, remote_index));
        let n = initiator
            .state
            .write_message(&[], &mut out[8..])
            .map_err(|e| done(from_read(e)))?;
        debug_assert_eq!(8 + n, FINISH_LEN);
        let (send, receive) = split(&mut initiator.state).map_err(done)?;
        Ok((
            Session::new(
                Role::Initiator,
                initiator.local_index,
                remote_index,
                remote,
                send,
                receive,
                now,
            )
            .with_join_secret(initiator.inputs.secret.id()),
            out,
        ))
    }

    /// Completes a handshake we answered: authenticates the initiator's key, applies the
    /// allow-list and the newest-initiation rule, and returns the session.
    pub fn handle_finish(
        &mut self,
        mut responding: Responding,
        message: &[u8],
        now: Instant,
    ) -> Result<Session, Rejected<Responding>> {
        let keep = |responding, error| Rejected {
            error,
            state: Some(responding),
        };
        let fin = match Finish::parse(message) {
            Ok(f) => f,
            Err(e) => return Err(keep(responding, e.into())),
        };
        if fin.receiver_index() != responding.local_index {
            let error = HandshakeError::WrongHandshake {
                got: fin.receiver_index(),
                ours: responding.local_index,
            };
            return Err(keep(responding, error));
        }
        let done = |error| Rejected { error, state: None };
        let mut payload = [0u8; 64];
        if let Err(e) = responding.state.read_message(fin.noise(), &mut payload) {
            // snow restores only part of its state (see the module docs): build it again.
            return Err(match self.rebuild_responding(&mut responding) {
                Ok(()) => keep(responding, from_read(e)),
                Err(error) => done(error),
            });
        }
        let remote = remote_static(&responding.state).map_err(done)?;
        self.check_allowed(remote).map_err(done)?;
        if self
            .newest
            .get(&remote)
            .is_some_and(|newest| *newest >= responding.initiated)
        {
            return Err(done(HandshakeError::Replay));
        }
        self.newest.insert(remote, responding.initiated);
        let (initiator_to_responder, responder_to_initiator) =
            split(&mut responding.state).map_err(done)?;
        Ok(Session::new(
            Role::Responder,
            responding.local_index,
            responding.remote_index,
            remote,
            responder_to_initiator,
            initiator_to_responder,
            now,
        )
        .with_join_secret(responding.inputs.secret.id()))
    }
}

/// Writes the response into a responder's state that read the initiation, with `mac1` under
/// the keys of the secret the initiation used (`mac2` stays zero: an initiator sends no
/// cookie replies).
fn write_response(
    state: &mut snow::HandshakeState,
    keys: &MacKeys,
    initiator_index: u32,
    local_index: u32,
) -> Result<[u8; RESPONSE_LEN], HandshakeError> {
    let mut out = [0u8; RESPONSE_LEN];
    out[..8].copy_from_slice(&header(MessageType::HandshakeResponse, initiator_index));
    let macs = RESPONSE_LEN - 2 * MAC_LEN;
    let n = state
        .write_message(&local_index.to_le_bytes(), &mut out[8..macs])
        .map_err(from_read)?;
    debug_assert_eq!(8 + n, macs);
    let mac1 = keys.mac1(&out[..macs]);
    out[macs..macs + MAC_LEN].copy_from_slice(&mac1);
    Ok(out)
}

fn remote_static(state: &snow::HandshakeState) -> Result<PublicKey, HandshakeError> {
    let bytes = state
        .get_remote_static()
        .ok_or_else(|| HandshakeError::Internal("no remote static key after XX".into()))?;
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| HandshakeError::Internal("remote static key length".into()))?;
    Ok(PublicKey::from_bytes(key))
}

/// The two directional keys (Noise §5.2 Split): initiator→responder, responder→initiator.
type DirectionalKeys = (Secret<[u8; 32]>, Secret<[u8; 32]>);

fn split(state: &mut snow::HandshakeState) -> Result<DirectionalKeys, HandshakeError> {
    if !state.is_handshake_finished() {
        return Err(HandshakeError::Internal(
            "split before the handshake finished".into(),
        ));
    }
    let (mut a, mut b) = state.dangerously_get_raw_split();
    let keys = (Secret::new(a), Secret::new(b));
    a.zeroize();
    b.zeroize();
    Ok(keys)
}
