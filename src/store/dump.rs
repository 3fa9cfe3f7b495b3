//! What a dump is read from: a [`Walk`] over a whole store in one consistent read, handing
//! out [`Item`]s in the dump's order. Both stores walk ([`crate::store::redb`]'s read
//! transaction, [`crate::store::postgres`]'s `REPEATABLE READ` transaction), so
//! [`crate::ops::export::write_dump`] writes the same lines for the same data from
//! either, and a dump moves between an embedded server and a cluster. [`Load`] is the
//! other direction: what `crate::ops::import` writes a checked dump into, a new redb file
//! or an empty PostgreSQL database.

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

/// What a [`Load`] found already stored: the dump names it twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    Profile(String),
    Block {
        blocker: String,
        blocked: String,
    },
    Erased(String),
    /// The room's id.
    Room(String),
    /// A sender used a `clientMessageId` twice in one room.
    ClientId {
        room_id: String,
        user_id: String,
        client_message_id: String,
    },
    /// Two messages of a room hold one change-log position.
    Change {
        room_id: String,
        change: u64,
    },
}

/// Why a [`Load`] stopped; nothing it loaded is kept.
#[derive(Debug)]
pub enum LoadError {
    Store(StoreError),
    /// The item from dump line `line` clashes with one loaded before it.
    Taken {
        line: usize,
        taken: Taken,
    },
}

impl From<StoreError> for LoadError {
    fn from(e: StoreError) -> LoadError {
        LoadError::Store(e)
    }
}

/// A new store being built from a walk's items, in the walk's order; `line` is the dump
/// line an item came from. Nothing is visible until [`Load::finish`] returns, and a load
/// dropped before that leaves nothing behind. A load that writes in batches finds a
/// clash when it writes the batch, so the clash reported may come after a later item was
/// handed over; it always names the line of the item that clashed.
pub trait Load {
    fn profile(&mut self, line: usize, user: &SessionUser) -> Result<(), LoadError>;
    fn block(
        &mut self,
        line: usize,
        blocker: &str,
        blocked: &str,
        since_ms: i64,
    ) -> Result<(), LoadError>;
    fn erased(&mut self, line: usize, user: &str, at_ms: i64) -> Result<(), LoadError>;
    /// A room, which the messages after it belong to.
    fn room(&mut self, line: usize, room: &RoomState) -> Result<(), LoadError>;
    /// A message of the last room, with its `clientMessageId` and change-log rows, and
    /// the room's inbox rows once its newest message arrives.
    fn message(&mut self, line: usize, message: &ChatMessage) -> Result<(), LoadError>;
    /// Writes the rest durably and makes the whole store visible at once.
    fn finish(self) -> Result<(), LoadError>
    where
        Self: Sized;
}
