//! Datagram formats. Every byte from the network passes through one of the checked parsers
//! here before anything else looks at it (the smoltcp habit: `parse` validates, then the view
//! hands out fields that are known to be in bounds).
//!
//! The first byte of every datagram on the weft port is its [`MessageType`]. Integers are
//! little-endian, as in WireGuard.
//!
//! ```text
//! initiation (100 B)  0 type=1 | 1 version | 2..4 zero | 4..8 sender index
//!                     | 8..40 e | 40..68 AEAD(timestamp) | 68..84 mac1 | 84..100 mac2
//! response  (140 B)   0 type=2 | 1 version | 2..4 zero | 4..8 receiver index
//!                     | 8..40 e | 40..88 AEAD(s) | 88..108 AEAD(sender index)
//!                     | 108..124 mac1 | 124..140 mac2
//! finish     (72 B)   0 type=3 | 1 version | 2..4 zero | 4..8 receiver index
//!                     | 8..56 AEAD(s) | 56..72 AEAD(empty)
//! data/control        0 type=4|5 | 1..5 receiver index | 5..13 counter | ciphertext | 16 B tag
//! stale index (13 B)  0 type=7 | 1..5 receiver index | 5..13 counter
//! cookie reply (64 B) 0 type=8 | 1 version | 2..4 zero | 4..8 receiver index
//!                     | 8..32 nonce | 32..64 AEAD(cookie)
//! ```
//!
//! `mac1` and `mac2` (WireGuard §5.4.4, keyed BLAKE2s-128) lie outside the Noise message:
//! `mac1` over the bytes before it, keyed by a hash of the join secret's PSK (weft's
//! initiator may not know the responder's static key, so WireGuard's key is not available);
//! `mac2` over the bytes before it, keyed by a cookie from a [`CookieReply`], or zeros. See
//! `crypto/src/cookie.rs`. A cookie reply answers an initiation under load instead of a
//! response: 64 bytes against the initiation's 100, so it amplifies nothing.
//!
//! A stale-index notice answers a sealed datagram whose receiver index the router does not
//! hold (it restarted): it echoes that datagram's header, so it is always smaller than what
//! it answers (13 bytes against at least 29) and names an index only the sender knows.
//!
//! Handshake messages carry a version byte; a data format change takes a new type value.
//! Type 6 is the mesh's relay envelope, which `weft-mesh` owns. Unknown types are refused.

use std::fmt;

/// The protocol version carried by handshake messages (2: `mac1`/`mac2` and cookie
/// replies; version 1 had neither, and a router refuses the other version's messages).
pub const PROTOCOL_VERSION: u8 = 2;

/// Bytes of an X25519 public key on the wire.
const KEY: usize = 32;
/// Bytes of a ChaCha20-Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Bytes of a TAI64N timestamp.
pub const TIMESTAMP_LEN: usize = 12;

/// Bytes of `mac1`, of `mac2`, and of a cookie.
pub const MAC_LEN: usize = 16;
/// Bytes of a cookie reply's nonce (random; see `crypto/src/cookie.rs`).
pub const COOKIE_NONCE_LEN: usize = 24;

/// Size of a handshake initiation.
pub const INITIATION_LEN: usize = 8 + KEY + TIMESTAMP_LEN + TAG_LEN + 2 * MAC_LEN;
/// Size of a handshake response.
pub const RESPONSE_LEN: usize = 8 + KEY + (KEY + TAG_LEN) + (4 + TAG_LEN) + 2 * MAC_LEN;
/// Size of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 8 + COOKIE_NONCE_LEN + MAC_LEN + TAG_LEN;
// A cookie reply answers an initiation: it must not amplify what a spoofed source sent.
const _: () = assert!(COOKIE_REPLY_LEN < INITIATION_LEN);
/// Size of a handshake finish.
pub const FINISH_LEN: usize = 8 + (KEY + TAG_LEN) + TAG_LEN;
/// Bytes in front of a sealed payload: type, receiver index, counter.
pub const DATA_HEADER_LEN: usize = 1 + 4 + 8;
/// Bytes a sealed datagram adds to its payload.
pub const DATA_OVERHEAD: usize = DATA_HEADER_LEN + TAG_LEN;

/// What a datagram is, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// First handshake message, initiator to responder.
    HandshakeInitiation = 1,
    /// Second handshake message, responder to initiator.
    HandshakeResponse = 2,
    /// Third handshake message, initiator to responder.
    HandshakeFinish = 3,
    /// A sealed IP packet for the TUN device.
    Data = 4,
    /// A sealed control message for the mesh (gossip, probes, keepalives).
    Control = 5,
    /// A sealed datagram wrapped for forwarding by a relay (format owned by `weft-mesh`).
    Relay = 6,
    /// "I hold no session with this receiver index": the echoed header of a sealed datagram,
    /// so that its sender handshakes again (see [`StaleIndex`]).
    StaleIndex = 7,
    /// "Under load: prove your address": a cookie for the sender of an initiation, sealed for
    /// it (see [`CookieReply`]).
    CookieReply = 8,
}

impl MessageType {
    /// Reads the type of `datagram` from its first byte.
    pub fn of(datagram: &[u8]) -> Result<Self, WireError> {
        match datagram.first() {
            None => Err(WireError::Empty),
            Some(1) => Ok(Self::HandshakeInitiation),
            Some(2) => Ok(Self::HandshakeResponse),
            Some(3) => Ok(Self::HandshakeFinish),
            Some(4) => Ok(Self::Data),
            Some(5) => Ok(Self::Control),
            Some(6) => Ok(Self::Relay),
            Some(7) => Ok(Self::StaleIndex),
            Some(8) => Ok(Self::CookieReply),
            Some(&other) => Err(WireError::UnknownType(other)),
        }
    }
}

/// What a sealed datagram carries; authenticated as part of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    /// An IP packet for the TUN device.
    Data,
    /// A message for the mesh.
    Control,
}

impl PayloadKind {
    pub(crate) fn message_type(self) -> MessageType {
        match self {
            Self::Data => MessageType::Data,
            Self::Control => MessageType::Control,
        }
    }
}

/// Malformed input: the bytes are not a message of the expected shape.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// A zero-length datagram.
    #[error("empty datagram")]
    Empty,
    /// The first byte names no message type.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// A message of another type than the one expected here.
    #[error("expected a {expected:?} message, got {got:?}")]
    UnexpectedType {
        /// The type the caller expected.
        expected: MessageType,
        /// The type the datagram has.
        got: MessageType,
    },
    /// A handshake message of a protocol version we do not speak.
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
    /// Reserved bytes that must be zero were not.
    #[error("reserved bytes are not zero")]
    Reserved,
    /// A handshake payload that decrypted but does not hold what it must (a bad timestamp).
    #[error("handshake payload is malformed: {0}")]
    Payload(&'static str),
    /// The message has the wrong length for its type.
    #[error("a {kind:?} message is {expected} bytes, got {got}")]
    Length {
        /// The message type.
        kind: MessageType,
        /// The length the type requires (the minimum, for sealed datagrams).
        expected: usize,
        /// The length received.
        got: usize,
    },
}

fn check_handshake(bytes: &[u8], kind: MessageType, len: usize) -> Result<(), WireError> {
    let got = MessageType::of(bytes)?;
    if got != kind {
        return Err(WireError::UnexpectedType {
            expected: kind,
            got,
        });
    }
    // The version before the length: another version's message has another length, and
    // must be told apart from a malformed one (the router says to upgrade).
    if let Some(&version) = bytes.get(1)
        && version != PROTOCOL_VERSION
    {
        return Err(WireError::UnsupportedVersion(version));
    }
    if bytes.len() != len {
        return Err(WireError::Length {
            kind,
            expected: len,
            got: bytes.len(),
        });
    }
    if bytes[2..4] != [0, 0] {
        return Err(WireError::Reserved);
    }
    Ok(())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// A checked view of a handshake initiation.
#[derive(Debug, Clone, Copy)]
pub struct Initiation<'a>(&'a [u8]);

impl<'a> Initiation<'a> {
    /// Validates type, length, version and reserved bytes.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        check_handshake(bytes, MessageType::HandshakeInitiation, INITIATION_LEN)?;
        Ok(Self(bytes))
    }
    /// The initiator's index for this handshake (authenticated: it is in the Noise prologue).
    pub fn sender_index(&self) -> u32 {
        u32_at(self.0, 4)
    }
    /// The initiator's ephemeral public key.
    pub fn ephemeral(&self) -> &'a [u8; KEY] {
        self.0[8..8 + KEY].try_into().expect("checked length")
    }
    /// The clear header, mixed into the Noise prologue.
    pub(crate) fn header(&self) -> &'a [u8] {
        &self.0[..8]
    }
    /// The Noise message.
    pub(crate) fn noise(&self) -> &'a [u8] {
        &self.0[8..INITIATION_LEN - 2 * MAC_LEN]
    }
    /// The message's `mac1`.
    pub fn mac1(&self) -> &'a [u8; MAC_LEN] {
        mac1_of(self.0)
    }
    /// The message's `mac2` (zeros without a cookie).
    pub fn mac2(&self) -> &'a [u8; MAC_LEN] {
        mac2_of(self.0)
    }
    /// The bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// The `mac1` of a message with both MACs at its end.
fn mac1_of(message: &[u8]) -> &[u8; MAC_LEN] {
    let at = message.len() - 2 * MAC_LEN;
    message[at..at + MAC_LEN]
        .try_into()
        .expect("checked length")
}

/// The `mac2` of a message with both MACs at its end.
fn mac2_of(message: &[u8]) -> &[u8; MAC_LEN] {
    message[message.len() - MAC_LEN..]
        .try_into()
        .expect("checked length")
}

/// A checked view of a handshake response.
#[derive(Debug, Clone, Copy)]
pub struct Response<'a>(&'a [u8]);

impl<'a> Response<'a> {
    /// Validates type, length, version and reserved bytes; `mac2` is reserved too (zero): an
    /// initiator sends no cookie replies, so no response carries a cookie.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        check_handshake(bytes, MessageType::HandshakeResponse, RESPONSE_LEN)?;
        if mac2_of(bytes) != &[0; MAC_LEN] {
            return Err(WireError::Reserved);
        }
        Ok(Self(bytes))
    }
    /// The initiator's index, for finding its handshake state (a lookup key, not trusted).
    pub fn receiver_index(&self) -> u32 {
        u32_at(self.0, 4)
    }
    pub(crate) fn noise(&self) -> &'a [u8] {
        &self.0[8..RESPONSE_LEN - 2 * MAC_LEN]
    }
    /// The message's `mac1`.
    pub fn mac1(&self) -> &'a [u8; MAC_LEN] {
        mac1_of(self.0)
    }
    /// The bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// A checked view of a cookie reply: type, version, reserved bytes and length checked; the
/// cookie inside is trusted only once it opened (`Handshaker::open_cookie_reply`).
#[derive(Debug, Clone, Copy)]
pub struct CookieReply<'a>(&'a [u8]);

impl<'a> CookieReply<'a> {
    /// Validates type, length, version and reserved bytes.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        check_handshake(bytes, MessageType::CookieReply, COOKIE_REPLY_LEN)?;
        Ok(Self(bytes))
    }
    /// The index of the initiation it answers (a lookup key, not trusted).
    pub fn receiver_index(&self) -> u32 {
        u32_at(self.0, 4)
    }
    /// The random nonce.
    pub fn nonce(&self) -> &'a [u8; COOKIE_NONCE_LEN] {
        self.0[8..8 + COOKIE_NONCE_LEN]
            .try_into()
            .expect("checked length")
    }
    /// The sealed cookie and its tag.
    pub fn sealed(&self) -> &'a [u8] {
        &self.0[8 + COOKIE_NONCE_LEN..]
    }
}

/// A checked view of a handshake finish.
#[derive(Debug, Clone, Copy)]
pub struct Finish<'a>(&'a [u8]);

impl<'a> Finish<'a> {
    /// Validates type, length, version and reserved bytes.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        check_handshake(bytes, MessageType::HandshakeFinish, FINISH_LEN)?;
        Ok(Self(bytes))
    }
    /// The responder's index, for finding its pending handshake (a lookup key, not trusted).
    pub fn receiver_index(&self) -> u32 {
        u32_at(self.0, 4)
    }
    pub(crate) fn noise(&self) -> &'a [u8] {
        &self.0[8..]
    }
}

/// The checked header of a sealed datagram (data or control).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    /// Data or control.
    pub kind: PayloadKind,
    /// The receiver's session index.
    pub receiver_index: u32,
    /// The sender's message counter, used as the nonce.
    pub counter: u64,
}

impl DataHeader {
    /// Validates the type and that a header and a tag fit; the ciphertext may be empty
    /// (a keepalive).
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let kind = match MessageType::of(bytes)? {
            MessageType::Data => PayloadKind::Data,
            MessageType::Control => PayloadKind::Control,
            got => {
                return Err(WireError::UnexpectedType {
                    expected: MessageType::Data,
                    got,
                });
            }
        };
        if bytes.len() < DATA_OVERHEAD {
            return Err(WireError::Length {
                kind: kind.message_type(),
                expected: DATA_OVERHEAD,
                got: bytes.len(),
            });
        }
        Ok(Self {
            kind,
            receiver_index: u32_at(bytes, 1),
            counter: u64::from_le_bytes(bytes[5..13].try_into().expect("8 bytes")),
        })
    }

    /// Writes the header into the first [`DATA_HEADER_LEN`] bytes of `out`.
    pub fn write(&self, out: &mut [u8]) {
        out[0] = self.kind.message_type() as u8;
        out[1..5].copy_from_slice(&self.receiver_index.to_le_bytes());
        out[5..13].copy_from_slice(&self.counter.to_le_bytes());
    }
}

/// Size of a stale-index notice: the echoed header of the sealed datagram it answers.
pub const STALE_INDEX_LEN: usize = DATA_HEADER_LEN;

/// A checked stale-index notice: a router that received a sealed datagram under a receiver
/// index it does not hold echoes the datagram's header under type 7. It is not authenticated
/// (the router holds no key for it); its receiver then acts only if the index and counter
/// are those of a session it holds with the notice's source, which an off-path sender cannot
/// guess, and its answer is a handshake to a member it already knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleIndex {
    /// The receiver index the sealed datagram named (the notice's receiver's remote index).
    pub receiver_index: u32,
    /// The counter the sealed datagram carried.
    pub counter: u64,
}

impl StaleIndex {
    /// Validates type and length.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let got = MessageType::of(bytes)?;
        if got != MessageType::StaleIndex {
            return Err(WireError::UnexpectedType {
                expected: MessageType::StaleIndex,
                got,
            });
        }
        if bytes.len() != STALE_INDEX_LEN {
            return Err(WireError::Length {
                kind: got,
                expected: STALE_INDEX_LEN,
                got: bytes.len(),
            });
        }
        Ok(Self {
            receiver_index: u32_at(bytes, 1),
            counter: u64::from_le_bytes(bytes[5..13].try_into().expect("8 bytes")),
        })
    }

    /// The notice answering a sealed datagram with this header.
    pub fn answering(header: &DataHeader) -> Self {
        Self {
            receiver_index: header.receiver_index,
            counter: header.counter,
        }
    }

    /// The notice's bytes.
    pub fn encode(&self) -> [u8; STALE_INDEX_LEN] {
        let mut out = [0u8; STALE_INDEX_LEN];
        out[0] = MessageType::StaleIndex as u8;
        out[1..5].copy_from_slice(&self.receiver_index.to_le_bytes());
        out[5..13].copy_from_slice(&self.counter.to_le_bytes());
        out
    }
}

/// A checked sealed datagram (data or control) in its buffer `B` (a byte slice or a `Vec`).
///
/// Only [`Sealed::parse`] makes one, so its header was read and checked exactly once; a
/// [`Session`](crate::Session) opens it without reading the header again, and the receive
/// path that looked the session up by [`Sealed::receiver_index`] hands the same view on.
/// The bytes cannot be changed through the view (the header it holds stays the header they
/// carry); opening decrypts them in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed<B> {
    header: DataHeader,
    buffer: B,
}

impl<B: AsRef<[u8]>> Sealed<B> {
    /// Checks `buffer` as [`DataHeader::parse`] does and keeps the header it read.
    pub fn parse(buffer: B) -> Result<Self, WireError> {
        let header = DataHeader::parse(buffer.as_ref())?;
        Ok(Self { header, buffer })
    }

    /// A copy of the datagram in a buffer of its own, with the header already checked (the
    /// Node opens a copy, not the bytes it was handed).
    pub fn to_vec(&self) -> Sealed<Vec<u8>> {
        Sealed {
            header: self.header,
            buffer: self.buffer.as_ref().to_vec(),
        }
    }

    /// The datagram's bytes (after a successful open, the plaintext is at
    /// [`crate::Opened::range`]).
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

impl<B> Sealed<B> {
    /// The checked header.
    pub fn header(&self) -> DataHeader {
        self.header
    }
    /// Data or control.
    pub fn kind(&self) -> PayloadKind {
        self.header.kind
    }
    /// The receiver's session index: which session opens it (a lookup key, not trusted
    /// until the session has opened it).
    pub fn receiver_index(&self) -> u32 {
        self.header.receiver_index
    }
    /// The sender's counter.
    pub fn counter(&self) -> u64 {
        self.header.counter
    }
    /// The buffer back.
    pub fn into_inner(self) -> B {
        self.buffer
    }
}

impl<B: AsMut<[u8]>> Sealed<B> {
    /// The header and the bytes to open in place; for the session only, so the bytes change
    /// only by being opened.
    pub(crate) fn parts_mut(&mut self) -> (DataHeader, &mut [u8]) {
        (self.header, self.buffer.as_mut())
    }
}

/// A wall-clock instant as TAI64N (8 bytes of seconds from 1970 TAI + 2^62, 4 of
/// nanoseconds, big-endian), as WireGuard puts in its initiation. Compared as bytes, later
/// instants are larger.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp([u8; TIMESTAMP_LEN]);

/// TAI64 labels a second `s` since the epoch as 2^62 + s (cr.yp.to/libtai/tai64.html).
const TAI64_BASE: u64 = 1 << 62;

impl Timestamp {
    /// The instant `since_epoch` after 1970-01-01 (the caller reads its clock; we do not).
    pub fn from_unix(since_epoch: std::time::Duration) -> Self {
        let mut b = [0u8; TIMESTAMP_LEN];
        b[..8].copy_from_slice(&(TAI64_BASE + since_epoch.as_secs()).to_be_bytes());
        b[8..].copy_from_slice(&since_epoch.subsec_nanos().to_be_bytes());
        Self(b)
    }

    /// Reads a timestamp; `None` if the nanoseconds are out of range or it precedes 1970.
    pub fn from_bytes(b: [u8; TIMESTAMP_LEN]) -> Option<Self> {
        let secs = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
        let nanos = u32::from_be_bytes(b[8..].try_into().expect("4 bytes"));
        (secs >= TAI64_BASE && nanos < 1_000_000_000).then_some(Self(b))
    }

    /// The encoded bytes.
    pub fn to_bytes(self) -> [u8; TIMESTAMP_LEN] {
        self.0
    }

    /// Time since 1970-01-01.
    pub fn to_unix(self) -> std::time::Duration {
        let secs = u64::from_be_bytes(self.0[..8].try_into().expect("8 bytes")) - TAI64_BASE;
        let nanos = u32::from_be_bytes(self.0[8..].try_into().expect("4 bytes"));
        std::time::Duration::new(secs, nanos)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({:?})", self.to_unix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sizes_are_as_documented() {
        assert_eq!(INITIATION_LEN, 100);
        assert_eq!(RESPONSE_LEN, 140);
        assert_eq!(COOKIE_REPLY_LEN, 64);
        assert_eq!(FINISH_LEN, 72);
        assert_eq!(DATA_HEADER_LEN, 13);
        assert_eq!(DATA_OVERHEAD, 29);
    }

    #[test]
    fn handshake_parsers_refuse_bad_shapes_with_typed_errors() {
        let mut m = [0u8; INITIATION_LEN];
        m[0] = 1;
        m[1] = PROTOCOL_VERSION;
        assert!(Initiation::parse(&m).is_ok());
        assert_eq!(
            Initiation::parse(&m[..99]).unwrap_err(),
            WireError::Length {
                kind: MessageType::HandshakeInitiation,
                expected: 100,
                got: 99
            }
        );
        let mut long = m.to_vec();
        long.push(0);
        assert!(matches!(
            Initiation::parse(&long),
            Err(WireError::Length { got: 101, .. })
        ));
        // A version-1 initiation (68 bytes, no MACs) is told apart from a malformed one.
        let mut old = [0u8; 68];
        old[0] = 1;
        old[1] = 1;
        assert_eq!(
            Initiation::parse(&old).unwrap_err(),
            WireError::UnsupportedVersion(1)
        );
        m[1] = 9;
        assert_eq!(
            Initiation::parse(&m).unwrap_err(),
            WireError::UnsupportedVersion(9)
        );
        m[1] = PROTOCOL_VERSION;
        m[3] = 1;
        assert_eq!(Initiation::parse(&m).unwrap_err(), WireError::Reserved);
        assert_eq!(Initiation::parse(&[]).unwrap_err(), WireError::Empty);
        assert_eq!(
            Initiation::parse(&[77]).unwrap_err(),
            WireError::UnknownType(77)
        );
        assert!(matches!(
            Response::parse(&m),
            Err(WireError::UnexpectedType { .. })
        ));
        assert!(matches!(
            Finish::parse(&[3, PROTOCOL_VERSION]),
            Err(WireError::Length { .. })
        ));
    }

    #[test]
    fn a_cookie_reply_is_checked_and_smaller_than_the_initiation_it_answers() {
        let mut m = [0u8; COOKIE_REPLY_LEN];
        m[0] = MessageType::CookieReply as u8;
        m[1] = PROTOCOL_VERSION;
        m[4..8].copy_from_slice(&0x0a0b_0c0du32.to_le_bytes());
        m[8] = 0xee;
        let reply = CookieReply::parse(&m).unwrap();
        assert_eq!(reply.receiver_index(), 0x0a0b_0c0d);
        assert_eq!(reply.nonce()[0], 0xee);
        assert_eq!(reply.sealed().len(), MAC_LEN + TAG_LEN);
        assert!(matches!(
            CookieReply::parse(&m[..63]),
            Err(WireError::Length { got: 63, .. })
        ));
        m[2] = 1;
        assert_eq!(CookieReply::parse(&m).unwrap_err(), WireError::Reserved);
        m[2] = 0;
        m[1] = 1;
        assert_eq!(
            CookieReply::parse(&m).unwrap_err(),
            WireError::UnsupportedVersion(1)
        );
        m[1] = PROTOCOL_VERSION;
        m[0] = MessageType::HandshakeInitiation as u8;
        assert!(matches!(
            CookieReply::parse(&m),
            Err(WireError::UnexpectedType { .. })
        ));
    }

    #[test]
    fn data_header_round_trips_and_needs_room_for_a_tag() {
        let h = DataHeader {
            kind: PayloadKind::Control,
            receiver_index: 0xdead_beef,
            counter: u64::MAX - 3,
        };
        let mut buf = [0u8; DATA_OVERHEAD];
        h.write(&mut buf);
        assert_eq!(DataHeader::parse(&buf).unwrap(), h);
        assert!(matches!(
            DataHeader::parse(&buf[..DATA_OVERHEAD - 1]),
            Err(WireError::Length { .. })
        ));
        buf[0] = 1;
        assert!(matches!(
            DataHeader::parse(&buf),
            Err(WireError::UnexpectedType { .. })
        ));
    }

    #[test]
    fn a_sealed_view_keeps_the_header_it_checked() {
        let h = DataHeader {
            kind: PayloadKind::Data,
            receiver_index: 7,
            counter: 42,
        };
        let mut buf = [0u8; DATA_OVERHEAD + 3];
        h.write(&mut buf);
        let view = Sealed::parse(&mut buf[..]).unwrap();
        assert_eq!(view.header(), h);
        assert_eq!(
            (view.kind(), view.receiver_index(), view.counter()),
            (PayloadKind::Data, 7, 42)
        );
        let copy = view.to_vec();
        assert_eq!(copy.header(), h);
        assert_eq!(copy.as_bytes(), view.as_bytes());
        assert_eq!(view.into_inner().len(), DATA_OVERHEAD + 3);
        // The same refusals as the header's own parser.
        assert_eq!(
            Sealed::parse(&buf[..DATA_OVERHEAD - 1]).unwrap_err(),
            DataHeader::parse(&buf[..DATA_OVERHEAD - 1]).unwrap_err()
        );
        assert_eq!(Sealed::parse(&[][..]).unwrap_err(), WireError::Empty);
        buf[0] = MessageType::HandshakeFinish as u8;
        assert!(matches!(
            Sealed::parse(&buf[..]),
            Err(WireError::UnexpectedType { .. })
        ));
    }

    #[test]
    fn a_stale_index_notice_echoes_a_header_and_is_smaller_than_any_sealed_datagram() {
        let h = DataHeader {
            kind: PayloadKind::Data,
            receiver_index: 0x0102_0304,
            counter: 99,
        };
        let notice = StaleIndex::answering(&h);
        let bytes = notice.encode();
        assert!(bytes.len() < DATA_OVERHEAD);
        assert_eq!(StaleIndex::parse(&bytes).unwrap(), notice);
        assert_eq!(MessageType::of(&bytes).unwrap(), MessageType::StaleIndex);
        assert!(matches!(
            StaleIndex::parse(&bytes[..12]),
            Err(WireError::Length { got: 12, .. })
        ));
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(matches!(
            StaleIndex::parse(&long),
            Err(WireError::Length { got: 14, .. })
        ));
        let mut sealed = [0u8; DATA_OVERHEAD];
        h.write(&mut sealed);
        assert!(matches!(
            StaleIndex::parse(&sealed[..STALE_INDEX_LEN]),
            Err(WireError::UnexpectedType { .. })
        ));
    }

    #[test]
    fn timestamps_order_like_time() {
        let a = Timestamp::from_unix(Duration::new(1_700_000_000, 5));
        let b = Timestamp::from_unix(Duration::new(1_700_000_000, 6));
        let c = Timestamp::from_unix(Duration::new(1_700_000_001, 0));
        assert!(a < b && b < c);
        assert_eq!(Timestamp::from_bytes(c.to_bytes()), Some(c));
        assert_eq!(c.to_unix(), Duration::new(1_700_000_001, 0));
        assert_eq!(Timestamp::from_bytes([0xff; 12]), None);
        assert_eq!(Timestamp::from_bytes([0; 12]), None);
    }
}
