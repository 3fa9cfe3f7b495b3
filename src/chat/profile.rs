//! A connecting user's display name: remembered when it changed, through the
//! `PutProfile` command, before the connection becomes usable.

use super::Chat;
use crate::model::SessionUser;
use crate::protocol::ChatError;
use crate::store::WriteTxn;
use crate::writer::{outcome, Command, Context};

impl Chat {
    /// Remembers the user's latest name when it changed (PROTOCOL.md section 1) and returns
    /// once it is durable. Both dialects call this before a connection becomes usable (the
    /// 101, the CONNECT ack), so from then on every read, by anyone, sees the new name. An
    /// unchanged name costs a lookup and no commit, so reconnecting stays cheap. A failed
    /// write is logged and the connection goes on: a name is not worth refusing it for.
    pub async fn remember_profile(&self, user: &SessionUser) {
        match self.store.profile(&user.id).await {
            Ok(stored) if stored.name == user.name => {}
            Ok(_) => {
                let written = self.writer.submit(PutProfile { user: user.clone() }).await;
                if let Err(e) = outcome(written).await {
                    tracing::warn!(error = %e, user = %user.id, "profile not stored");
                }
            }
            Err(e) => tracing::warn!(error = %e, "profile lookup failed"),
        }
    }
}

/// A user's new display name to remember; publishes nothing.
pub struct PutProfile {
    pub user: SessionUser,
}

impl Command for PutProfile {
    type Output = ();

    fn apply(self, txn: &mut dyn WriteTxn, _cx: &mut Context<'_>) -> Result<(), ChatError> {
        txn.put_profile(&self.user).map_err(ChatError::internal)
    }
}
