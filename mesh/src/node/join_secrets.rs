//! A change of the accepted join secrets ([`Command::SetJoinSecrets`](super::Command)): the
//! rotation of docs/design.md §3, and which secret made each peer's session.

use std::time::Instant;

use tracing::{debug, info};
use weft_crypto::JoinSecrets;

use crate::id::PeerId;

use super::peer::Peer;
use super::{JoinSecretUse, Node};

impl Node {
    /// Applies [`Command::SetJoinSecrets`](super::Command). Established sessions stay (their
    /// keys do not depend on the secret any more); each one made with a secret other than the
    /// new primary is re-made now, as a rekey: the old session keeps carrying traffic until
    /// the new one is confirmed. A peer that does not know the primary yet (a node a step
    /// behind) refuses that initiation; its own, with a secret we still accept, completes.
    pub(super) fn set_join_secrets(&mut self, secrets: JoinSecrets, now: Instant) {
        info!(
            primary = %secrets.primary().id(),
            accepted = secrets.len(),
            "join secrets changed"
        );
        self.handshaker.set_join_secrets(secrets);
        let stale: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                matches!(
                    self.join_secret_use(p),
                    Some(JoinSecretUse::Other | JoinSecretUse::Removed)
                )
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            debug!(peer = %id, "session made with a join secret other than the primary: rekeying");
            self.start_handshake(id, now);
        }
    }

    /// Which of the accepted join secrets made `p`'s current session.
    pub(super) fn join_secret_use(&self, p: &Peer) -> Option<JoinSecretUse> {
        let used = p.tunnel.keys()?.current()?.join_secret()?;
        let secrets = self.handshaker.join_secrets();
        Some(if secrets.primary().id() == used {
            JoinSecretUse::Primary
        } else if secrets.accepts(used) {
            JoinSecretUse::Other
        } else {
            JoinSecretUse::Removed
        })
    }
}
