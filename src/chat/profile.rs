//! A connecting user's display name: remembered when it changed, through the
//! `PutProfile` command, before the connection becomes usable. A name from a token that
//! an erasure refuses is not stored, even when the erasure commits while it waits.

use super::Chat;
use crate::auth::predates_erasure;
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
    /// `issued_at` is the token's `iat`, checked again by the write against an erasure.
    pub async fn remember_profile(&self, user: &SessionUser, issued_at: Option<u64>) {
        match self.store.profile(&user.id).await {
            Ok(stored) if stored.name == user.name => {}
            Ok(_) => {
                let written = self
                    .writer
                    .submit(PutProfile {
                        user: user.clone(),
                        issued_at,
                    })
                    .await;
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
    /// The `iat` of the token the name came from.
    pub issued_at: Option<u64>,
}

impl Command for PutProfile {
    type Output = ();

    fn apply(self, txn: &mut dyn WriteTxn, _cx: &mut Context<'_>) -> Result<(), ChatError> {
        let erased = txn.erased_at(&self.user.id).map_err(ChatError::internal)?;
        if erased.is_some_and(|at| predates_erasure(self.issued_at, at)) {
            return Ok(());
        }
        txn.put_profile(&self.user).map_err(ChatError::internal)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::chat::erase::EraseUser;
    use crate::fanout::hub::Hub;
    use crate::store::redb::RedbStore;
    use crate::store::ReadStore;
    use crate::writer::{Writer, WriterConfig};

    /// A handshake that passed the erasure check just before the erasure committed must
    /// not bring the erased name back.
    #[tokio::test]
    async fn a_name_from_a_token_older_than_the_erasure_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(dir.path()).unwrap());
        let config = WriterConfig {
            recent_cache_bytes: 1 << 20,
            max_batch: 16,
            mark_hint_rooms: 1024,
        };
        let thread = Writer::spawn(
            store.clone(),
            Hub::new(usize::MAX, 0),
            std::sync::Arc::new(crate::webhook::Hooks::none()),
            config,
        );
        let writer = thread.writer();
        let erase = EraseUser {
            user: "a".into(),
            now_ms: 5_500,
        };
        outcome(writer.submit(erase).await).await.unwrap();
        let put = |issued_at| PutProfile {
            user: SessionUser {
                id: "a".into(),
                name: "A".into(),
            },
            issued_at,
        };
        for old in [None, Some(4), Some(5)] {
            outcome(writer.submit(put(old)).await).await.unwrap();
            assert_eq!(store.profile("a").await.unwrap().name, "a", "iat {old:?}");
        }
        outcome(writer.submit(put(Some(6))).await).await.unwrap();
        assert_eq!(store.profile("a").await.unwrap().name, "A");
        thread.shutdown().await;
    }
}
