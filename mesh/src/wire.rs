//! The mesh's own wire formats, each parsed once by checked code (docs/design.md §9, STYLE.md
//! "parse untrusted bytes once"):
//!
//! - **Control messages** travel sealed inside sessions (`PayloadKind::Control`). The
//!   plaintext is a versioned envelope, `version: u8 | kind: u8 | body`, the body encoded with
//!   postcard 1 (a documented, stable format). A receiver skips a version or kind it does not
//!   know and counts it, so newer nodes can add messages. An empty plaintext is a keepalive.
//! - **Relay envelopes** (datagram type 6, reserved for the mesh by `weft_crypto::wire`) carry
//!   a datagram sealed end to end between two peers through a third that cannot open it:
//!
//! ```text
//! 0 type=6 | 1 version=1 | 2 kind (0 forward, 1 punch) | 3 hops left
//! | 4..36 destination peer id | 36..68 source peer id | 68.. inner datagram (forward only)
//! ```
//!
//! The inner datagram is any handshake, data or control datagram (never another relay
//! envelope). A punch carries nothing: it only opens NAT mappings (see `node.rs`).

use std::net::SocketAddr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::id::{PeerId, ShortId};
use crate::record::PeerRecord;

/// The control envelope version this build writes and reads.
pub const CONTROL_VERSION: u8 = 1;

/// The relay envelope version.
pub const RELAY_VERSION: u8 = 1;

/// Bytes in front of the inner datagram of a relay envelope.
pub const RELAY_HEADER_LEN: usize = 68;

/// Relays a packet may pass through: a path of 3 relays is already far beyond what a full
/// mesh with a few broken links needs; the bound stops loops if two nodes disagree on routes.
pub const RELAY_MAX_HOPS: u8 = 4;

/// Largest control plaintext we write. A control datagram is this + 29 bytes of sealing +
/// 68 of relay envelope = 1197 bytes, under the 1280-byte IPv6 minimum MTU (RFC 8200 §5) that
/// every underlay carries, so gossip never depends on fragmentation.
pub const MAX_CONTROL_PAYLOAD: usize = 1100;

/// Control message kinds (the envelope's `kind` byte). Never reuse a retired number.
mod kind {
    pub const GOSSIP: u8 = 1;
    pub const SYNC_REQUEST: u8 = 2;
    pub const OBSERVED: u8 = 3;
    pub const INTRODUCE_REQUEST: u8 = 4;
    pub const INTRODUCE: u8 = 5;
    pub const BLOCK_REQUEST: u8 = 6;
    pub const BLOCK_GRANT: u8 = 7;
    pub const BLOCK_GRANT_ACK: u8 = 8;
    pub const BLOCK_DENIED: u8 = 9;
    pub const DIGEST: u8 = 10;
    pub const DIGEST_SUMMARY: u8 = 11;
}

/// Why an owner refused to give address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DenyReason {
    /// It has no free space left.
    NoFreeSpace,
}

/// A message between the mesh logic of two peers, carried inside their session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// Peer records: a delta (changed records) or one chunk of a full exchange.
    Gossip {
        /// Whether this is part of a full exchange (the answer to a sync request).
        full: bool,
        /// The records.
        records: Vec<PeerRecord>,
    },
    /// "Send me everything you know": a node that just joined asks its first peer.
    SyncRequest,
    /// "I see your datagrams coming from this endpoint" (NAT discovery).
    Observed {
        /// The source endpoint of the peer's datagrams, as the sender saw it.
        endpoint: SocketAddr,
    },
    /// "Introduce me to this peer": asked of a mutual peer when no direct path forms.
    IntroduceRequest {
        /// Whom the sender wants to reach.
        target: PeerId,
    },
    /// "This peer wants to reach you at once; send to it now" (hole punching).
    Introduce {
        /// The peer to punch towards.
        peer: PeerId,
        /// Where the introducer sees it.
        endpoint: SocketAddr,
    },
    /// "Give me address space" (IPAM).
    BlockRequest {
        /// The requester's nonce, echoed in a denial.
        request: u64,
    },
    /// "This space is yours now": the sender gave up ownership before sending.
    BlockGrant {
        /// Identifies the grant for acknowledgement and for refusing duplicates.
        grant: u64,
        /// The space given.
        space: Vec<Ipv4Net>,
    },
    /// "I own the space of this grant": the giver may forget it.
    BlockGrantAck {
        /// The grant acknowledged.
        grant: u64,
    },
    /// Anti-entropy (Scuttlebutt's digest): the stamp of every record the sender holds with a
    /// short id in `[low, high]`. The receiver sends back the records the sender lacks or has
    /// older, and, unless `reply`, its own digest of the range so the sender can do the same.
    Digest {
        /// Whether this answers a digest (then it is not answered again).
        reply: bool,
        /// First short id covered.
        low: ShortId,
        /// Last short id covered.
        high: ShortId,
        /// `(short id, incarnation, version)` of each record in the range.
        entries: Vec<(ShortId, u64, u64)>,
    },
    /// A hash of every record stamp the sender holds: a receiver whose hash differs answers
    /// with a full [`ControlMessage::Digest`]. In a settled cluster this is all anti-entropy
    /// costs (a digest of 500 records is 8 KiB).
    DigestSummary {
        /// FNV-1a over the sorted `(short id, incarnation, version)` of every record.
        hash: u64,
        /// How many records.
        count: u32,
    },
    /// "I will not give you space".
    BlockDenied {
        /// The request refused.
        request: u64,
        /// Why.
        reason: DenyReason,
    },
}

/// Why a control plaintext was not understood.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the envelope.
    #[error("control message shorter than its envelope")]
    Truncated,
    /// A newer envelope version: skipped, not an error of the sender.
    #[error("unknown control envelope version {0}")]
    UnknownVersion(u8),
    /// A kind this build does not know: skipped.
    #[error("unknown control message kind {0}")]
    UnknownKind(u8),
    /// The body is not valid postcard for its kind.
    #[error("control message body does not decode: {0}")]
    Body(String),
    /// The body decoded but breaks a rule (too long, bad prefix...).
    #[error("control message is invalid: {0}")]
    Invalid(&'static str),
}

#[derive(Serialize, Deserialize)]
struct GossipBody {
    full: bool,
    records: Vec<PeerRecord>,
}

#[derive(Serialize, Deserialize)]
struct DigestBody {
    reply: bool,
    low: ShortId,
    high: ShortId,
    entries: Vec<(ShortId, u64, u64)>,
}

#[derive(Serialize, Deserialize)]
struct GrantBody {
    grant: u64,
    space: Vec<Ipv4Net>,
}

#[derive(Serialize, Deserialize)]
struct DeniedBody {
    request: u64,
    reason: DenyReason,
}

#[derive(Serialize, Deserialize)]
struct IntroduceBody {
    peer: PeerId,
    endpoint: SocketAddr,
}

/// Most address-space entries one grant may carry: a half of any aligned range is one CIDR,
/// so real grants carry one; the bound only limits what a peer can make us store.
pub const MAX_GRANT_ENTRIES: usize = 32;

/// Most entries in one digest datagram (an entry is at most 30 bytes of postcard).
pub const MAX_DIGEST_ENTRIES: usize = MAX_CONTROL_PAYLOAD / 16;

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| DecodeError::Body(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Invalid("trailing bytes after the body"));
    }
    Ok(value)
}

fn put<T: Serialize>(out: &mut Vec<u8>, kind: u8, value: &T) {
    out.push(CONTROL_VERSION);
    out.push(kind);
    // postcard only fails on writers that run out of room; a Vec does not.
    let bytes = postcard::to_stdvec(value).expect("postcard encodes into a Vec");
    out.extend_from_slice(&bytes);
}

impl ControlMessage {
    /// Encodes the message in its envelope.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::Gossip { full, records } => put(
                &mut out,
                kind::GOSSIP,
                &GossipBody {
                    full: *full,
                    records: records.clone(),
                },
            ),
            Self::SyncRequest => put(&mut out, kind::SYNC_REQUEST, &()),
            Self::Observed { endpoint } => put(&mut out, kind::OBSERVED, endpoint),
            Self::IntroduceRequest { target } => put(&mut out, kind::INTRODUCE_REQUEST, target),
            Self::Introduce { peer, endpoint } => put(
                &mut out,
                kind::INTRODUCE,
                &IntroduceBody {
                    peer: *peer,
                    endpoint: *endpoint,
                },
            ),
            Self::BlockRequest { request } => put(&mut out, kind::BLOCK_REQUEST, request),
            Self::BlockGrant { grant, space } => put(
                &mut out,
                kind::BLOCK_GRANT,
                &GrantBody {
                    grant: *grant,
                    space: space.clone(),
                },
            ),
            Self::BlockGrantAck { grant } => put(&mut out, kind::BLOCK_GRANT_ACK, grant),
            Self::DigestSummary { hash, count } => {
                put(&mut out, kind::DIGEST_SUMMARY, &(*hash, *count))
            }
            Self::Digest {
                reply,
                low,
                high,
                entries,
            } => put(
                &mut out,
                kind::DIGEST,
                &DigestBody {
                    reply: *reply,
                    low: *low,
                    high: *high,
                    entries: entries.clone(),
                },
            ),
            Self::BlockDenied { request, reason } => put(
                &mut out,
                kind::BLOCK_DENIED,
                &DeniedBody {
                    request: *request,
                    reason: *reason,
                },
            ),
        }
        out
    }

    /// Parses and validates a control plaintext (never panics, whatever the bytes).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let [version, k, rest @ ..] = bytes else {
            return Err(DecodeError::Truncated);
        };
        if *version != CONTROL_VERSION {
            return Err(DecodeError::UnknownVersion(*version));
        }
        let msg = match *k {
            kind::GOSSIP => {
                let b: GossipBody = body(rest)?;
                for r in &b.records {
                    r.validate().map_err(DecodeError::Invalid)?;
                }
                Self::Gossip {
                    full: b.full,
                    records: b.records,
                }
            }
            kind::SYNC_REQUEST => {
                body::<()>(rest)?;
                Self::SyncRequest
            }
            kind::OBSERVED => Self::Observed {
                endpoint: body(rest)?,
            },
            kind::INTRODUCE_REQUEST => Self::IntroduceRequest {
                target: body(rest)?,
            },
            kind::INTRODUCE => {
                let b: IntroduceBody = body(rest)?;
                Self::Introduce {
                    peer: b.peer,
                    endpoint: b.endpoint,
                }
            }
            kind::BLOCK_REQUEST => Self::BlockRequest {
                request: body(rest)?,
            },
            kind::BLOCK_GRANT => {
                let b: GrantBody = body(rest)?;
                if b.space.is_empty() || b.space.len() > MAX_GRANT_ENTRIES {
                    return Err(DecodeError::Invalid("grant space count"));
                }
                Self::BlockGrant {
                    grant: b.grant,
                    space: b.space,
                }
            }
            kind::BLOCK_GRANT_ACK => Self::BlockGrantAck { grant: body(rest)? },
            kind::DIGEST => {
                let b: DigestBody = body(rest)?;
                if b.low > b.high || b.entries.len() > MAX_DIGEST_ENTRIES {
                    return Err(DecodeError::Invalid("digest range or size"));
                }
                Self::Digest {
                    reply: b.reply,
                    low: b.low,
                    high: b.high,
                    entries: b.entries,
                }
            }
            kind::DIGEST_SUMMARY => {
                let (hash, count) = body(rest)?;
                Self::DigestSummary { hash, count }
            }
            kind::BLOCK_DENIED => {
                let b: DeniedBody = body(rest)?;
                Self::BlockDenied {
                    request: b.request,
                    reason: b.reason,
                }
            }
            other => return Err(DecodeError::UnknownKind(other)),
        };
        Ok(msg)
    }
}

/// What a relay envelope asks of its receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayKind {
    /// Forward the inner datagram towards the destination (or take it, if it is us).
    Forward,
    /// Nothing to forward: a NAT hole punch from the source.
    Punch,
}

/// Why a relay envelope was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RelayError {
    /// Not a type-6 datagram.
    #[error("not a relay envelope")]
    NotRelay,
    /// Shorter than the header.
    #[error("relay envelope of {0} bytes is shorter than its {RELAY_HEADER_LEN}-byte header")]
    Truncated(usize),
    /// A version we do not speak.
    #[error("unsupported relay envelope version {0}")]
    UnsupportedVersion(u8),
    /// An unknown kind byte.
    #[error("unknown relay kind {0}")]
    UnknownKind(u8),
    /// A forward with nothing inside, a punch with something inside, or a relay in a relay.
    #[error("relay envelope payload is invalid: {0}")]
    Payload(&'static str),
}

/// A checked view of a relay envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayPacket<'a> {
    /// Forward or punch.
    pub kind: RelayKind,
    /// Relays the packet may still pass through.
    pub hops_left: u8,
    /// The final receiver.
    pub destination: PeerId,
    /// The original sender (claimed; the inner datagram's authentication decides).
    pub source: PeerId,
    /// The sealed or handshake datagram inside.
    pub inner: &'a [u8],
}

impl<'a> RelayPacket<'a> {
    /// Validates type, length, version, kind and that the inner datagram is not a relay.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, RelayError> {
        if bytes.first() != Some(&(weft_crypto::MessageType::Relay as u8)) {
            return Err(RelayError::NotRelay);
        }
        if bytes.len() < RELAY_HEADER_LEN {
            return Err(RelayError::Truncated(bytes.len()));
        }
        if bytes[1] != RELAY_VERSION {
            return Err(RelayError::UnsupportedVersion(bytes[1]));
        }
        let kind = match bytes[2] {
            0 => RelayKind::Forward,
            1 => RelayKind::Punch,
            other => return Err(RelayError::UnknownKind(other)),
        };
        let inner = &bytes[RELAY_HEADER_LEN..];
        match kind {
            RelayKind::Forward if inner.is_empty() => {
                return Err(RelayError::Payload("forward without a datagram"));
            }
            RelayKind::Forward if inner[0] == weft_crypto::MessageType::Relay as u8 => {
                return Err(RelayError::Payload(
                    "relay envelope inside a relay envelope",
                ));
            }
            RelayKind::Punch if !inner.is_empty() => {
                return Err(RelayError::Payload("punch with a payload"));
            }
            _ => {}
        }
        Ok(Self {
            kind,
            hops_left: bytes[3],
            destination: PeerId(bytes[4..36].try_into().expect("32 bytes")),
            source: PeerId(bytes[36..68].try_into().expect("32 bytes")),
            inner,
        })
    }

    /// Writes an envelope around `inner` (empty for a punch).
    pub fn encode(
        kind: RelayKind,
        hops_left: u8,
        destination: PeerId,
        source: PeerId,
        inner: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(RELAY_HEADER_LEN + inner.len());
        out.push(weft_crypto::MessageType::Relay as u8);
        out.push(RELAY_VERSION);
        out.push(match kind {
            RelayKind::Forward => 0,
            RelayKind::Punch => 1,
        });
        out.push(hops_left);
        out.extend_from_slice(&destination.0);
        out.extend_from_slice(&source.0);
        out.extend_from_slice(inner);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Liveness;
    use proptest::prelude::*;

    fn record() -> PeerRecord {
        PeerRecord {
            id: PeerId([0xab; 32]),
            incarnation: 1_800_000_000_000,
            version: 3,
            name: "n1".into(),
            liveness: Liveness::Alive,
            announced: vec!["198.18.0.1:6786".parse().unwrap()],
            seen: vec![],
            pod_blocks: vec!["10.32.1.0/24".parse().unwrap()],
            external: false,
            free_space: vec![],
            links_down: vec![ShortId(7)],
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Frozen bytes: a change here is a wire format change, which needs a new envelope
    /// version or kind, never a silent edit.
    #[test]
    fn golden_bytes() {
        assert_eq!(
            hex(&ControlMessage::BlockGrantAck { grant: 300 }.encode()),
            "0108ac02"
        );
        assert_eq!(hex(&ControlMessage::SyncRequest.encode()), "0102");
        assert_eq!(
            hex(&ControlMessage::Observed {
                endpoint: "198.19.0.1:40000".parse().unwrap()
            }
            .encode()),
            "010300c6130001c0b802"
        );
        assert_eq!(
            hex(&ControlMessage::BlockGrant {
                grant: 1,
                space: vec!["10.40.0.0/13".parse().unwrap()]
            }
            .encode()),
            "010701010a2800000d"
        );
        let gossip = ControlMessage::Gossip {
            full: true,
            records: vec![record()],
        }
        .encode();
        assert_eq!(
            hex(&gossip),
            format!(
                // envelope 01 01 | full | 1 record | id (32 bytes, no length: an array) |
                // incarnation and version (varints) | name | Alive | 1 endpoint: V4,
                // 198.18.0.1, port 6786 | seen: none | 1 block: 10.32.1.0/24 | external:
                // false | free: none | links down: [7]
                "01010101{}{}03026e31000100c6120001823500010a2001001800000107",
                "ab".repeat(32),
                "80a0f1c2b134"
            )
        );
        let relay = RelayPacket::encode(RelayKind::Punch, 0, PeerId([1; 32]), PeerId([2; 32]), &[]);
        assert_eq!(
            hex(&relay),
            format!("06010100{}{}", "01".repeat(32), "02".repeat(32))
        );
    }

    #[test]
    fn unknown_versions_and_kinds_are_skippable_errors() {
        assert_eq!(ControlMessage::decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(
            ControlMessage::decode(&[2, 1, 0]),
            Err(DecodeError::UnknownVersion(2))
        );
        assert_eq!(
            ControlMessage::decode(&[1, 200]),
            Err(DecodeError::UnknownKind(200))
        );
        assert!(matches!(
            ControlMessage::decode(&[1, 8]),
            Err(DecodeError::Body(_))
        ));
        assert_eq!(
            ControlMessage::decode(&[1, 2, 0]),
            Err(DecodeError::Invalid("trailing bytes after the body"))
        );
    }

    #[test]
    fn relay_envelopes_are_checked() {
        let inner = [4u8; 40];
        let env = RelayPacket::encode(
            RelayKind::Forward,
            3,
            PeerId([1; 32]),
            PeerId([2; 32]),
            &inner,
        );
        let p = RelayPacket::parse(&env).unwrap();
        assert_eq!(
            (p.kind, p.hops_left, p.inner),
            (RelayKind::Forward, 3, &inner[..])
        );
        assert_eq!(
            RelayPacket::parse(&env[..67]),
            Err(RelayError::Truncated(67))
        );
        assert!(matches!(
            RelayPacket::parse(&env[..68]),
            Err(RelayError::Payload(_))
        ));
        let mut nested = env.clone();
        nested[68] = 6;
        assert!(matches!(
            RelayPacket::parse(&nested),
            Err(RelayError::Payload(_))
        ));
        let mut bad = env.clone();
        bad[1] = 9;
        assert_eq!(
            RelayPacket::parse(&bad),
            Err(RelayError::UnsupportedVersion(9))
        );
        bad[1] = 1;
        bad[2] = 7;
        assert_eq!(RelayPacket::parse(&bad), Err(RelayError::UnknownKind(7)));
        assert_eq!(RelayPacket::parse(&[5; 80]), Err(RelayError::NotRelay));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(m) = ControlMessage::decode(&bytes) {
                prop_assert_eq!(ControlMessage::decode(&m.encode()), Ok(m));
            }
            let _ = RelayPacket::parse(&bytes);
        }

        #[test]
        fn digests_round_trip(entries in proptest::collection::vec((any::<u64>(), any::<u64>(), any::<u64>()), 0..40), reply in any::<bool>()) {
            let m = ControlMessage::Digest {
                reply,
                low: ShortId(0),
                high: ShortId(u64::MAX),
                entries: entries.into_iter().map(|(s, i, v)| (ShortId(s), i, v)).collect(),
            };
            prop_assert_eq!(ControlMessage::decode(&m.encode()), Ok(m));
        }
    }
}
