//! Where messages are stored: the traits every storage backend implements, and the error
//! they share. The backend is chosen once, in `main.rs`, and held as `Arc<dyn ...>` here.
//!
//! The store is split by who uses it:
//! - [`ReadStore`]: the queries the handlers and the HTTP API answer from (history page,
//!   inbox page, profile, a `clientMessageId` lookup). Async, so a network database can
//!   answer without blocking a runtime worker; an embedded one answers on the calling task.
//! - [`WriteStore`] / [`WriteTxn`]: the write side, used only by the group-commit writer
//!   (`crate::writer`) on its own OS thread, so it is synchronous. One [`WriteTxn`] per
//!   round: it sees its own uncommitted writes, and [`WriteTxn::commit`] returns only once
//!   everything in it is durable. Dropping it without committing stores nothing.
//!
//! What the product guarantees on top ("acknowledge only after durable", "fan-out in
//! commit order") is written once, in the writer, whatever the backend.
//!
//! Backends: [`redb`] (embedded, the default). `suite` is the behaviour every backend
//! must show, written once against these traits.

pub mod redb;
#[cfg(test)]
mod suite;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use crate::model::{ChatMessage, HistoryPage, InboxCursor, InboxRoom, RoomKey, SessionUser};

/// Why the store failed. Callers report it as `internal`; the detail goes to the log.
#[derive(Debug)]
pub enum StoreError {
    /// The database reported a failure (I/O, consistency, a lost connection), kept as the
    /// backend's own error for the log.
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// A stored value did not decode: the data is damaged or from an unknown format.
    Corrupt(String),
    /// The data was written by a newer chat-server.
    NewerFormat {
        /// The format the data is in.
        found: u64,
        /// The newest format this binary understands.
        supported: u64,
    },
    /// The data directory could not be created or synced.
    Io(std::io::Error),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Backend(e) => write!(f, "storage error: {e}"),
            StoreError::Corrupt(what) => write!(f, "corrupt record: {what}"),
            StoreError::NewerFormat { found, supported } => write!(
                f,
                "the data directory uses store format {found}, newer than this chat-server \
                 understands ({supported}); run a newer chat-server"
            ),
            StoreError::Io(e) => write!(f, "cannot prepare the data directory: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The answer to a read: boxed so that [`ReadStore`] can be used as `dyn ReadStore`.
pub type Read<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// The queries the handlers answer from. Reads see every committed write and never wait
/// for the writer's transaction.
pub trait ReadStore: Send + Sync {
    /// The stored message a sender already sent with this `clientMessageId`, if any.
    fn find_by_client_id<'a>(
        &'a self,
        room: &'a RoomKey,
        sender: &'a str,
        client_message_id: &'a str,
    ) -> Read<'a, Option<ChatMessage>>;

    /// Up to `limit` messages of a room, newest first, all with ids below `before` if given,
    /// and `viewer`'s partner in it. A room without messages gives an empty page.
    fn messages_page<'a>(
        &'a self,
        room: &'a RoomKey,
        viewer: &'a str,
        before: Option<u64>,
        limit: usize,
    ) -> Read<'a, HistoryPage>;

    /// One page of a user's rooms, most recent activity first, strictly after `after`.
    fn inbox_page<'a>(
        &'a self,
        user: &'a str,
        after: Option<&'a InboxCursor>,
        limit: usize,
    ) -> Read<'a, Vec<InboxRoom>>;

    /// The profile remembered for a user; a user never seen is named by their id.
    fn profile<'a>(&'a self, user: &'a str) -> Read<'a, SessionUser>;
}

/// The write side: only the group-commit writer calls it, so there is one write
/// transaction at a time.
pub trait WriteStore: Send + Sync {
    /// Starts a write transaction.
    fn begin(&self) -> Result<Box<dyn WriteTxn>>;
}

/// One write transaction, applied op by op and committed once.
pub trait WriteTxn {
    /// Stores a new message (upserting the room: ids 1, 2, 3, … per room, `sentAt` never
    /// going back), or finds the one this sender already stored under `client_message_id`
    /// in this room, in this transaction or before.
    fn append(
        &mut self,
        room: &RoomKey,
        sender: &str,
        text: &str,
        client_message_id: Option<&str>,
        now_ms: i64,
    ) -> Result<Appended>;

    /// The room's newest messages as this transaction sees them, newest first.
    fn latest(&self, room: &RoomKey, limit: usize) -> Result<Vec<ChatMessage>>;

    /// Marks a message the reader received as seen at `seen_date_ms`, clamped into
    /// `[sentAt, max(sentAt, now)]`, and takes it off the reader's unread count. The first
    /// `seenAt` wins.
    fn mark_seen(
        &mut self,
        room: &RoomKey,
        reader: &str,
        message_id: u64,
        seen_date_ms: i64,
        now_ms: i64,
    ) -> Result<SeenOutcome>;

    /// Remembers a user's display name.
    fn put_profile(&mut self, user: &SessionUser) -> Result<()>;

    /// Makes everything applied durable; returns only once it is.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// What a send did.
#[derive(Debug, Clone)]
pub enum Appended {
    /// A new message, with its id and `sentAt`.
    New(ChatMessage),
    /// The sender already sent this `clientMessageId` here; nothing was stored.
    Duplicate(ChatMessage),
}

/// What marking one message as seen did.
#[derive(Debug, Clone)]
pub enum SeenOutcome {
    /// It became seen now.
    Changed(ChatMessage),
    /// It was already seen; the first `seenAt` stays.
    AlreadySeen,
    /// The room has no message with that id.
    NotFound,
    /// The reader sent it (every message of a self room).
    OwnMessage,
}

/// Whole-store operations for the admin API (`crate::admin`). Each reads the whole store,
/// so callers run it on a blocking thread, never on the runtime.
pub trait Maintenance: Send + Sync {
    /// Copies every table, as of one moment (one read transaction), into a new store file
    /// at `dest`, which must not exist; the file is complete and fsync'd on return. Writes
    /// go on meanwhile: a read transaction never holds up the writer. The copy holds at
    /// most about `buffer_bytes` of it in memory at a time.
    fn backup_into(&self, dest: &Path, buffer_bytes: usize) -> Result<StoreCounts>;

    /// Bytes the store's file takes on disk.
    fn file_bytes(&self) -> Result<u64>;
}

/// What a store held, as of one read transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// Rooms (each with at least one message).
    pub rooms: u64,
    /// Messages in every room.
    pub messages: u64,
    /// The highest message id of any room (ids are per room, 1..=n).
    pub highest_message_id: u64,
}
