//! Local session indices: what each index we handed out is for.

use crate::id::{Endpoint, PeerId};

/// What a local index is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IndexUse {
    /// Our initiation to a known peer.
    Initiating(PeerId),
    /// Our initiation to an endpoint whose key we do not know (a seed).
    Dialing(Endpoint),
    /// Our response, waiting for the finish.
    Responding,
    /// A session with this peer.
    Session(PeerId),
}
