//! weft-crypto: everything that keeps a tunnel secret. Keys, the Noise handshake, sealed
//! datagrams, the replay window, rekey timing, and the wire formats of all of them.
//!
//! It is sans-IO: it takes bytes, `now` (an [`std::time::Instant`] for timers, a
//! [`Timestamp`] for the wall clock) and a [`Random`] source, and returns bytes and
//! deadlines. It never reads a clock, opens a socket, touches a file or depends on tokio: the
//! key file is the router's, which stores [`KeyPair::encode_private`]'s text.
//!
//! # The handshake: `Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s`, and why
//!
//! docs/design.md §3 asks for five properties. XX with the join secret as `psk0` gives them all:
//!
//! ```text
//! -> psk, e      + AEAD(timestamp)       initiation, 68 bytes (+ mac1, mac2: 100)
//! <- e, ee, s, es + AEAD(sender index)   response, 108 bytes (+ mac1, mac2: 140)
//! -> s, se       + AEAD(empty)           finish, 72 bytes
//! ```
//!
//! - **Join secret checked on the first message, before any Diffie-Hellman.** `psk0` mixes the
//!   PSK into the key before anything else, and the initiation's payload (the timestamp) is
//!   encrypted under it. The responder reads `e` (a hash, no curve operation) and opens that
//!   AEAD: a non-member fails there. Building the responder state costs no curve operation
//!   either (our static public key is cached, see `noise.rs`); the first scalar
//!   multiplication happens when the response is written. The tests count them.
//! - **Replay of the initiation refused.** Its timestamp (TAI64N, as WireGuard) must be
//!   within [`MAX_CLOCK_SKEW`] of the responder's clock, and the responder remembers the
//!   ephemeral keys of initiations inside that window; both checks come before any DH. Once
//!   the initiator is known (finish), its timestamp must also be newer than the last one it
//!   completed with (WireGuard's rule). A responder that restarted remembers neither: a
//!   replay within the window then costs it three DH operations, but cannot complete, since
//!   the replayer lacks the initiator's ephemeral private key.
//! - **Initiator's identity hidden from passive observers.** In XX the initiator's static key
//!   travels only in the finish, encrypted under keys from `ee` and `es`; a passive observer
//!   (even one who knows the join secret) sees only ephemeral keys. The responder's static key
//!   is encrypted under `ee` in the response, so it too is hidden from passive observers; it is
//!   revealed to an active initiator, but that initiator must know the join secret. (IK would
//!   need the responder's key up front, which seeds do not have, and cannot check a PSK before
//!   DH; IKpsk2 mixes the PSK in only at the second message.)
//! - **Mutual authentication.** Each side proves its static key by `es`/`se`; a session's
//!   [`Session::remote`] is authenticated, and an allow-list ([`Handshaker::set_allowed`]) or
//!   an expected key ([`Handshaker::initiate`]) pins it further.
//! - **Forward secrecy.** The session keys come from the chaining key after `ee`, `es` and `se`.
//!   `ee` is a DH of two ephemeral keys that exist only in memory during the handshake and are
//!   dropped after it, zeroed (they live in `Secret`; snow's state, which holds the chaining
//!   key, is wiped on drop by `noise::WipedHandshake`, and the handshake cipher's key lives in
//!   a `Secret` too. snow's BLAKE2s hasher is not wiped: it holds only transient HMAC state). Someone who later steals both static
//!   keys and the join secret can recompute `es`, `se` and the PSK mixing, but not `ee`, and so
//!   not the session keys of a recorded session. Sessions rekey every two minutes
//!   ([`REKEY_AFTER_TIME`]), so a session key stolen from memory exposes at most that much.
//!
//! Before any of that, initiations and responses carry WireGuard's `mac1` (keyed by a hash of
//! the PSK, since the initiator may not know the responder's key) and `mac2` (a cookie that
//! proves the source address, asked for only under load): see `cookie.rs`. A non-member's
//! initiation is refused at `mac1`, before any Noise processing.
//!
//! The cost of XX over IK is one more message (1.5 round trips); handshakes happen every two
//! minutes per peer, so that is nothing.
//!
//! # After the handshake
//!
//! Data does not use snow's ordered transport: the two directional keys (snow's raw split) go
//! to ring's ChaCha20-Poly1305, and each datagram carries `type | receiver index | counter |
//! ciphertext | tag`, sealed and opened in place with the counter as nonce and the header as
//! associated data, then passed through an RFC 6479 [`ReplayWindow`]. See [`Session`] and
//! [`Keyring`].

mod cookie;
mod handshake;
mod keyring;
mod keys;
mod noise;
mod random;
mod replay;
mod secret;
mod session;
pub mod wire;

pub use cookie::{COOKIE_SECRET_LIFETIME, Cookie};
pub use handshake::{
    HandshakeError, Handshaker, Initiator, MAX_CLOCK_SKEW, MAX_RECENT_INITIATIONS, NOISE_PATTERN,
    Rejected, Responding, Screened,
};
pub use keyring::Keyring;
pub use keys::{
    ARGON2_MEMORY_KIB, ARGON2_PASSES, DEFAULT_CLUSTER_NAME, JoinSecret, JoinSecretError,
    JoinSecretId, JoinSecrets, KEY_LEN, KeyPair, MAX_CLUSTER_NAME_LEN, MAX_JOIN_SECRETS,
    MIN_JOIN_SECRET_LEN, ParseKeyError, PublicKey, check_cluster_name,
};
pub use noise::DhCounter;
#[cfg(feature = "test-rng")]
pub use random::SeededRng;
pub use random::{OsRandom, Random};
pub use replay::{ReplayWindow, WINDOW_SIZE};
pub use secret::Secret;
pub use session::{
    KEEPALIVE_TIMEOUT, OpenError, Opened, PREVIOUS_SESSION_GRACE, REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME, REKEY_TIMEOUT,
    RESPONDER_REKEY_DELAY, Role, SealError, Session,
};
/// Whether this build contains the simulator's insecure hash curve (feature
/// `insecure-fast-dh` in a build with debug assertions). A router built with it should say so
/// loudly at start; it still never uses it.
pub const INSECURE_SIMULATION_CURVE_COMPILED: bool =
    cfg!(all(feature = "insecure-fast-dh", debug_assertions));

pub use wire::{DATA_HEADER_LEN, DATA_OVERHEAD, MessageType, PayloadKind, TAG_LEN, Timestamp};
