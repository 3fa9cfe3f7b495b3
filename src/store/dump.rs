//! What a dump is read from: a [`Walk`] over a whole store in one consistent read, handing
//! out [`Item`]s in the dump's order. Both stores walk ([`crate::store::redb`]'s read
//! transaction, [`crate::store::postgres`]'s `REPEATABLE READ` transaction), so
//! [`crate::ops::export::write_dump`] writes the same lines for the same data from
//! either, and a dump moves between an embedded server and a cluster.

use crate::model::{ChatMessage, RoomKey, SessionUser};
use crate::store::StoreError;

/// A room as a dump carries it: its pair and the counters that are not derived from its
/// messages (after retention, the newest id may belong to a message that is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomState {
    pub key: RoomKey,
    /// Id of the newest message ever stored; the next one gets `last_id + 1`.
    pub last_id: u64,
    /// `sentAt` of that message.
    pub last_sent_ms: i64,
    /// Messages from `high` that `low` has not seen.
    pub unread_low: u64,
    /// Messages from `low` that `high` has not seen.
    pub unread_high: u64,
    /// The room's change counter.
    pub change: u64,
    /// The highest id `low` acknowledged receiving.
    pub delivered_low: u64,
    /// The same for `high`.
    pub delivered_high: u64,
}

/// One thing a walk hands out: profiles (by user id), blocks (by blocker, then blocked)
/// and erasures (by user id), ids compared bytewise; then each room, in the order rooms
/// were made, before its messages, which come in id order.
pub enum Item<'a> {
    Profile(&'a SessionUser),
    /// Blocker, blocked, since (ms).
    Block(&'a str, &'a str, i64),
    /// An erased user and when (ms).
    Erased(&'a str, i64),
    Room(&'a RoomState),
    Message(&'a RoomState, &'a ChatMessage),
}

/// A store that can be walked: the server's own (for an export while it runs) or one
/// opened read-only.
pub trait Walk {
    /// Walks the store (or only `user`'s profile, own blocks, erasure and rooms) in one read
    /// transaction, handing each item to `each`; the first error stops the walk.
    fn walk<E: From<StoreError>>(
        &self,
        user: Option<&str>,
        each: impl FnMut(Item<'_>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E>;
}
