//! Who a peer is ([`PeerId`], its public key) and where it is ([`Endpoint`]).

use std::fmt;

use serde::{Deserialize, Serialize};
use weft_crypto::PublicKey;

/// An underlay address and port: plain data, never a socket (the mesh is sans-IO).
pub type Endpoint = std::net::SocketAddr;

/// The one UDP port weft uses between routers (docs/design.md §1), where nothing else is said.
pub const DEFAULT_PORT: u16 = 6786;

/// A node's identity: its static public key (docs/design.md §3). Ordered by key bytes, which is
/// the deterministic tie-break everywhere in the mesh.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerId(pub [u8; 32]);

impl PeerId {
    /// The first 8 bytes as a big-endian number (so short ids sort as the ids do): the
    /// compact form used in link lists and digests, where a collision (2^-64 per pair) would
    /// only make a route skip one relay or a digest resend one record.
    pub fn short(&self) -> ShortId {
        ShortId(u64::from_be_bytes(self.0[..8].try_into().expect("8 bytes")))
    }

    /// The public key this id is.
    pub fn key(&self) -> PublicKey {
        PublicKey::from_bytes(self.0)
    }
}

impl From<PublicKey> for PeerId {
    fn from(k: PublicKey) -> Self {
        Self(*k.as_bytes())
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.key(), f)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight base64 characters are plenty to tell peers apart in logs.
        let full = self.key().to_string();
        write!(f, "PeerId({})", &full[..8.min(full.len())])
    }
}

/// A [`PeerId`] shortened to 64 bits, for lists that would otherwise cost 32 bytes an entry.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub struct ShortId(pub u64);
