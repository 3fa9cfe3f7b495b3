//! Erasing a user (issue 14, item 5), for the admin API: one writer command, so one
//! transaction and one durable commit, then the user's open connections are cut.
//!
//! What it does to the data is the store's ([`WriteTxn::erase_user`]): tombstones, keys,
//! profile, and the erasure time that refuses older tokens (`crate::app`). Here: the latest
//! 50 of every touched room are dropped from the cache, so no `message:sent` snapshot
//! serves an erased text again, and no event goes out. A user with a long history can have
//! thousands of tombstones in hundreds of rooms; a `message:updated` each would flood the
//! partners' queues (and cut them as slow consumers). Partners learn of it as of any
//! change: the room's change counter moved, so `changes` lists every tombstone, and the
//! next history page or snapshot shows them. Hooks subscribed to `user.erased` get one
//! event each, written in the same commit.
//!
//! In cluster mode the cut reaches every node: the broker closes the connections here and
//! tells the nodes holding the user's others (`crate::fanout::nats`).
//!
//! The cut comes after the commit, and [`crate::app::App::admit`] checks the erasure again
//! once a connection is in the user's channel: a connection either was in the channel at
//! the cut, or is admitted after the commit and sees it.

use serde::Serialize;

use super::Chat;
use crate::protocol::time::now_millis;
use crate::protocol::ChatError;
use crate::store::{Erasure, WriteTxn};
use crate::webhook;
use crate::writer::{outcome, Command, Context};

/// What an erasure did, as the admin API answers it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErasureReport {
    pub user_id: String,
    /// Messages that became tombstones.
    pub messages_tombstoned: u64,
    /// Rooms where a message of the user changed.
    pub rooms_touched: u64,
    /// Open connections of the user that were closed on the node that answered (in
    /// cluster mode the other nodes close theirs as the broker tells them).
    pub connections_closed: u64,
    /// The erasure time (Unix ms): tokens issued before it, to the second rounded up, are
    /// refused.
    pub erased_at_ms: i64,
}

impl Chat {
    /// When `user` was erased, if ever.
    pub async fn erased_at(&self, user: &str) -> Result<Option<i64>, ChatError> {
        self.store
            .erased_at(user)
            .await
            .map_err(ChatError::internal)
    }

    /// Erases `user` durably, then closes their open connections.
    pub async fn erase_user(&self, user: &str) -> Result<ErasureReport, ChatError> {
        let now_ms = now_millis();
        let rx = self
            .writer
            .submit(EraseUser {
                user: user.to_owned(),
                now_ms,
            })
            .await;
        let (erasure, erased_at_ms) = outcome(rx).await?;
        let closed = self.broker.disconnect_user(user);
        Ok(ErasureReport {
            user_id: user.to_owned(),
            messages_tombstoned: erasure.messages,
            rooms_touched: erasure.rooms.len() as u64,
            connections_closed: closed as u64,
            erased_at_ms,
        })
    }
}

/// A user to erase; answers what changed and the erasure time stored.
pub struct EraseUser {
    pub user: String,
    pub now_ms: i64,
}

impl Command for EraseUser {
    type Output = (Erasure, i64);

    fn apply(
        self,
        txn: &mut dyn WriteTxn,
        cx: &mut Context<'_>,
    ) -> Result<(Erasure, i64), ChatError> {
        let erasure = txn
            .erase_user(&self.user, self.now_ms)
            .map_err(ChatError::internal)?;
        for room in &erasure.rooms {
            cx.cache().forget(room);
            cx.hint_forget(room);
        }
        let erased_at = txn
            .erased_at(&self.user)
            .map_err(ChatError::internal)?
            .unwrap_or(self.now_ms);
        // In the erasure's own commit: the app's backend hears of every erasure, and of
        // none that did not happen.
        webhook::user_erased(txn, cx, &self.user, erased_at).map_err(ChatError::internal)?;
        Ok((erasure, erased_at))
    }
}
