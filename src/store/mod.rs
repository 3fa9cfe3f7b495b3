//! Where messages are stored: the traits every storage backend implements, and the error
//! they share. The backend is chosen once, in `main.rs`, and held as `Arc<dyn ...>` here.
//!
//! The store is split by who uses it:
//! - [`ReadStore`]: the queries the handlers and the HTTP API answer from (history page,
//!   inbox page, profile, a `clientMessageId` lookup), and the webhook outbox the
//!   delivery tasks read. Async, so a network database can
//!   answer without blocking a runtime worker; an embedded one answers on the calling task.
//! - [`WriteStore`] / [`WriteTxn`]: the write side, used only by the group-commit writer
//!   (`crate::writer`) on its own OS thread, so it is synchronous. One [`WriteTxn`] per
//!   round: it sees its own uncommitted writes, and [`WriteTxn::commit`] returns only once
//!   everything in it is durable. Dropping it without committing stores nothing.
//!
//! What the product guarantees on top ("acknowledge only after durable", "fan-out in
//! commit order") is written once, in the writer, whatever the backend.
//!
//! Backends: [`redb`] (embedded, the default) and [`postgres`] (cluster mode, several
//! nodes on one database). `suite` is the behaviour every backend must show, written once
//! against these traits, and run against both. [`dump`] is what export and backup read
//! from either backend, so a dump is the same lines whichever store it came from.

pub mod dump;
pub mod postgres;
pub mod redb;
#[cfg(test)]
mod suite;
pub mod verified;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use crate::model::{
    BlockedUser, ChangesPage, ChatMessage, HistoryPage, InboxCursor, InboxRoom, RoomKey,
    SessionUser,
};

/// A webhook event in a hook's outbox, waiting to be posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Its place in the hook's outbox; one recipient's events are posted in this order.
    pub seq: u64,
    /// The user the event is for; deliveries to one recipient never overtake each other.
    pub recipient: String,
    /// The event's `id`, the same on every attempt, so receivers can drop duplicates.
    pub id: String,
    /// When it was committed (ms since the epoch); delivery gives up some time after.
    pub created_ms: i64,
    /// The JSON body, posted and signed exactly as stored.
    pub body: String,
}

/// An event that was never delivered, kept for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub event: OutboxEvent,
    /// Why delivery stopped: the last failure, or the hook answering 410.
    pub reason: String,
    /// When it was given up (ms since the epoch).
    pub dead_ms: i64,
}

/// The size of a hook's outbox and dead letters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookCounts {
    pub pending: u64,
    pub dead: u64,
}

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

    /// Up to `limit` messages of a room with ids above `after`, oldest first (catch-up),
    /// and `viewer`'s partner in it.
    fn messages_after<'a>(
        &'a self,
        room: &'a RoomKey,
        viewer: &'a str,
        after: u64,
        limit: usize,
    ) -> Read<'a, HistoryPage>;

    /// Up to `limit` messages of a room that changed after the room's change counter was
    /// `since`, in the order of their latest change, each as it is now.
    fn changes<'a>(
        &'a self,
        room: &'a RoomKey,
        viewer: &'a str,
        since: u64,
        limit: usize,
    ) -> Read<'a, ChangesPage>;

    /// One page of a user's rooms, most recent activity first, strictly after `after`.
    /// A row whose partner the user blocks says so and counts nothing as unread.
    fn inbox_page<'a>(
        &'a self,
        user: &'a str,
        after: Option<&'a InboxCursor>,
        limit: usize,
    ) -> Read<'a, Vec<InboxRoom>>;

    /// The profile remembered for a user; a user never seen is named by their id.
    fn profile<'a>(&'a self, user: &'a str) -> Read<'a, SessionUser>;

    /// Everyone `blocker` blocks, in id order, with their remembered names.
    fn blocks<'a>(&'a self, blocker: &'a str) -> Read<'a, Vec<BlockedUser>>;

    /// `reader`'s delivered mark in a room and the room's newest id; `None` when the room
    /// has never had a message.
    fn delivered_mark<'a>(
        &'a self,
        room: &'a RoomKey,
        reader: &'a str,
    ) -> Read<'a, Option<MarkState>>;

    /// Whether either of `a` and `b` blocks the other.
    fn blocked_between<'a>(&'a self, a: &'a str, b: &'a str) -> Read<'a, bool>;

    /// Up to `limit` of `hook`'s undelivered webhook events, oldest first, all with `seq`
    /// above `after` if given.
    fn webhook_outbox<'a>(
        &'a self,
        hook: &'a str,
        after: Option<u64>,
        limit: usize,
    ) -> Read<'a, Vec<OutboxEvent>>;

    /// Up to `limit` of `hook`'s dead letters, oldest first, all with `seq` above `after`
    /// if given.
    fn webhook_dead_letters<'a>(
        &'a self,
        hook: &'a str,
        after: Option<u64>,
        limit: usize,
    ) -> Read<'a, Vec<DeadLetter>>;

    /// How many events `hook` has waiting in its outbox, and how many dead letters.
    fn webhook_counts<'a>(&'a self, hook: &'a str) -> Read<'a, WebhookCounts>;

    /// How many events `hooks` have waiting in the outbox, all together (cluster mode's
    /// `chat_webhook_queued`): by default each hook's [`ReadStore::webhook_counts`].
    fn webhook_queued<'a>(&'a self, hooks: &'a [String]) -> Read<'a, u64> {
        Box::pin(async move {
            let mut queued = 0;
            for hook in hooks {
                queued += self.webhook_counts(hook).await?.pending;
            }
            Ok(queued)
        })
    }

    /// Retention: of up to `limit` rooms after the position `after`, those whose oldest
    /// message was sent before `cutoff_ms`, and where the next scan starts (`None` once
    /// every room was looked at).
    fn rooms_to_expire(
        &self,
        cutoff_ms: i64,
        after: Option<u64>,
        limit: usize,
    ) -> Read<'_, ExpiryScan>;

    /// When the user was last erased ([`WriteTxn::erase_user`]), in Unix ms; `None` for a
    /// user never erased.
    fn erased_at<'a>(&'a self, user: &'a str) -> Read<'a, Option<i64>>;

    /// The hooks whose receiver answered 410 Gone, as recorded by
    /// [`WriteTxn::webhook_gone`]. A store of one node records none: its server keeps
    /// the state in memory, until it restarts.
    fn webhooks_gone(&self) -> Read<'_, Vec<String>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// For each blocker, the pairs whose block changed past their cursor, by blocker and
    /// then in the order of the changes, each as it is now: what a node reads to say
    /// again a `block` or `unblock` that cluster fan-out lost. A store of one node numbers
    /// no block changes (its events never leave the process): none.
    fn block_changes<'a>(&'a self, _blockers: &'a [BlockCursor]) -> Read<'a, Vec<BlockChange>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    // The cluster fan-out's catch-up after a NATS loss (`src/fanout/nats.rs`).

    /// Up to `limit` of `user`'s rooms whose newest message was sent at or after
    /// `since_ms`, most recent first: the rooms that may hold messages a node never
    /// delivered to them.
    fn rooms_active_since<'a>(
        &'a self,
        user: &'a str,
        since_ms: i64,
        limit: usize,
    ) -> Read<'a, Vec<RoomKey>>;

    /// Which of `users` were ever erased, with when (as [`ReadStore::erased_at`]), in one
    /// read.
    fn erasures<'a>(&'a self, users: &'a [String]) -> Read<'a, Vec<(String, i64)>>;

    /// [`ReadStore::changes`] after `since` (up to `limit`) and [`ReadStore::messages_page`]
    /// below `before` (up to `page_limit`), in one read: a gap in a user's changes that
    /// lost messages too needs both, the page for the lost messages' snapshots.
    fn changes_and_page<'a>(
        &'a self,
        room: &'a RoomKey,
        viewer: &'a str,
        since: u64,
        limit: usize,
        before: Option<u64>,
        page_limit: usize,
    ) -> Read<'a, (ChangesPage, HistoryPage)>;
}

/// Where a read of one blocker's block changes starts ([`ReadStore::block_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockCursor {
    pub blocker: String,
    pub from: BlockFrom,
}

/// The block changes a read wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFrom {
    /// Those past this change number.
    After(u64),
    /// Those made at or after this time (Unix ms), by the clock of the node that made
    /// them: for a reader that knows no change number yet.
    Since(i64),
}

/// One pair's block as its latest change left it ([`ReadStore::block_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockChange {
    pub blocker: String,
    pub blocked: String,
    /// Since when the block stands; `None` once it was lifted.
    pub since_ms: Option<i64>,
    /// The blocker's change number that left it so.
    pub change: u64,
}

/// What lifting a block did ([`WriteTxn::remove_block`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifted {
    /// The pair had no standing block; nothing changed.
    NotBlocked,
    /// The block was lifted, taking this change number of the blocker in a store that
    /// numbers them (`None` in one that does not).
    Lifted { change: Option<u64> },
}

/// One step of a retention scan over the rooms.
#[derive(Debug, Clone, Default)]
pub struct ExpiryScan {
    /// Rooms holding messages older than the cutoff.
    pub rooms: Vec<RoomKey>,
    /// Where the next step starts; `None` when the scan is complete.
    pub next: Option<u64>,
}

/// What deleting a room's oldest messages did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// Messages deleted.
    pub deleted: u64,
    /// Whether older messages may remain (the call stopped at its limit).
    pub more: bool,
}

/// The write side: only the group-commit writer calls it, so there is one write
/// transaction at a time.
pub trait WriteStore: Send + Sync {
    /// Starts a write transaction.
    fn begin(&self) -> Result<Box<dyn WriteTxn>>;
}

/// One write transaction, applied op by op and committed once.
pub trait WriteTxn {
    /// Takes, before the round's first command, the locks of the rooms its commands name,
    /// so that writers on several nodes lock rooms in one order and cannot deadlock. A
    /// backend with one writer (redb: one write transaction at a time) has nothing to do.
    /// `sends` are the idempotency keys of the round's sends, all in `rooms`: a backend
    /// whose lookups cost a round trip each (PostgreSQL) looks them all up with the
    /// locks, so that [`WriteTxn::append`] need not.
    fn lock_rooms(&mut self, _rooms: &[RoomLock<'_>], _sends: &[ClientKey<'_>]) -> Result<()> {
        Ok(())
    }

    /// Names, before the round's first command, the users its commands' webhook events
    /// will read: their profiles ([`WriteTxn::profile`]) and, for those marked, whether
    /// they are connected to another node ([`WriteTxn::online_elsewhere`]). A backend
    /// whose reads cost a round trip each (PostgreSQL) reads them all with its next
    /// statement, so that those need not. A backend with local reads (redb) has nothing
    /// to do.
    fn read_hook_users(&mut self, _users: &[HookUser<'_>]) -> Result<()> {
        Ok(())
    }

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

    /// Moves `reader`'s delivered mark in a room forward to `up_to`: every partner message
    /// up to it without a `deliveredAt` gets one (`now`). A mark never moves back.
    fn mark_received(
        &mut self,
        room: &RoomKey,
        reader: &str,
        up_to: u64,
        now_ms: i64,
    ) -> Result<ReceivedOutcome>;

    /// Replaces the text of `editor`'s message, if it was sent less than `window_ms` ago
    /// and is not deleted. The same text again changes nothing, even after the window.
    fn edit(
        &mut self,
        room: &RoomKey,
        editor: &str,
        message_id: u64,
        text: &str,
        window_ms: i64,
        now_ms: i64,
    ) -> Result<EditOutcome>;

    /// Turns `deleter`'s message into a tombstone ([`ChatMessage::erase`]).
    fn delete(
        &mut self,
        room: &RoomKey,
        deleter: &str,
        message_id: u64,
        now_ms: i64,
    ) -> Result<DeleteOutcome>;

    /// Remembers a user's display name.
    fn put_profile(&mut self, user: &SessionUser) -> Result<()>;

    /// Since when `blocker` blocks `blocked`, if they do, as this transaction sees it.
    fn blocked_since(&self, blocker: &str, blocked: &str) -> Result<Option<i64>>;

    /// How many users `blocker` blocks.
    fn count_blocks(&self, blocker: &str) -> Result<usize>;

    /// Records that `blocker` blocks `blocked` from `since_ms` (replacing any earlier row).
    /// Returns the blocker's change number it took, in a store that numbers them
    /// (PostgreSQL, see [`ReadStore::block_changes`]); `None` in one that does not.
    fn put_block(&mut self, blocker: &str, blocked: &str, since_ms: i64) -> Result<Option<u64>>;

    /// Lifts a block at `now_ms`; says whether there was one.
    fn remove_block(&mut self, blocker: &str, blocked: &str, now_ms: i64) -> Result<Lifted>;

    /// The profile remembered for a user as this transaction sees it; a user never seen
    /// is named by their id.
    fn profile(&self, user: &str) -> Result<SessionUser>;

    /// Puts a webhook event in `hook`'s outbox, in the same commit as the write it
    /// describes. Its `seq` (`event.seq` is ignored) is given by the store: increasing
    /// across commits, so that the outbox is read in commit order, and in enqueue order
    /// within one. It is not returned, so that a backend may hold the row back until its
    /// next statement or the commit (PostgreSQL: no round trip per event).
    fn enqueue_webhook(&mut self, hook: &str, event: &OutboxEvent) -> Result<()>;

    /// Takes delivered events out of `hook`'s outbox, all in one go (PostgreSQL: one
    /// statement); answers the seqs that were there (a node that held the duties before
    /// may have taken some).
    fn remove_webhooks(&mut self, hook: &str, seqs: &[u64]) -> Result<Vec<u64>>;

    /// Moves an undeliverable event from `hook`'s outbox to its dead letters, with why;
    /// false when it was not in the outbox.
    fn dead_letter_webhook(
        &mut self,
        hook: &str,
        seq: u64,
        reason: &str,
        now_ms: i64,
    ) -> Result<bool>;

    /// Moves up to `max` of `hook`'s dead letters, oldest first, back to its outbox: each
    /// gets a new `seq` (after every event queued so far, so a delivery task reading on
    /// from where it is finds it) and `created_ms` = `now_ms` (its give-up time starts
    /// again); its `id` and body stay. Returns how many moved.
    fn retry_dead_webhooks(&mut self, hook: &str, max: usize, now_ms: i64) -> Result<u64>;

    /// Retention: deletes up to `max` of the room's oldest messages sent before
    /// `cutoff_ms`, with their `clientMessageId` and change-log rows, takes the unseen ones
    /// off the unread counts, and takes the room out of both inboxes when no message is
    /// left. The room keeps its last id, so a new message never reuses one.
    fn expire(&mut self, room: &RoomKey, cutoff_ms: i64, max: usize) -> Result<Expired>;

    /// Erases a user (issue 14, item 5): turns every message they sent, in every room
    /// they have, into a tombstone ([`ChatMessage::erase`]) recorded as a change like a
    /// delete, drops their idempotency keys (the `clientMessageId` index rows and the
    /// records' own `clientMessageId`, tombstones of earlier deletes included), removes
    /// their profile, and records `now_ms` as their erasure time. Their partners'
    /// messages, the rooms and every unread count stay as they are. Erasing again later
    /// does the same to what they sent since, and moves the time forward.
    fn erase_user(&mut self, user: &str, now_ms: i64) -> Result<Erasure>;

    /// [`ReadStore::erased_at`], as this transaction sees it.
    fn erased_at(&self, user: &str) -> Result<Option<i64>>;

    /// Records that `hook`'s receiver answered 410 Gone, for every node of a cluster
    /// ([`ReadStore::webhooks_gone`]). A store of one node has nothing to do.
    fn webhook_gone(&mut self, _hook: &str) -> Result<()> {
        Ok(())
    }

    /// Whether `user` has a connection on another live node of the cluster, for
    /// `offline_only` webhooks. A store of one node has no other: false.
    fn online_elsewhere(&mut self, _user: &str) -> Result<bool> {
        Ok(false)
    }

    /// Makes everything applied durable; returns only once it is.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// A room a round's command will write to ([`WriteTxn::lock_rooms`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomLock<'a> {
    pub room: &'a RoomKey,
    /// The command stores a message, so the room is created if it has none yet. Other
    /// commands only lock a room that exists: bad input must not leave rows behind.
    pub create: bool,
}

/// A send's idempotency key, known before the round runs ([`WriteTxn::lock_rooms`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientKey<'a> {
    pub room: &'a RoomKey,
    pub sender: &'a str,
    pub client_message_id: &'a str,
}

/// A user a round's webhook events will read ([`WriteTxn::read_hook_users`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookUser<'a> {
    pub user: &'a str,
    /// Their event says whether they are connected (`recipientOnline`; an `offline_only`
    /// hook's is held back if so) and they have no connection on this node: whether they
    /// have one on another node is read too.
    pub presence: bool,
}

/// What erasing a user did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erasure {
    /// Messages that became tombstones now (earlier tombstones are not counted).
    pub messages: u64,
    /// The rooms where a message of the user changed (tombstoned or its key dropped).
    pub rooms: Vec<RoomKey>,
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
    /// Copies every table, as of one moment (one read transaction), into a new file at
    /// `dest`, which must not exist; the file is complete and fsync'd on return. Writes
    /// go on meanwhile: a read transaction never holds up the writer. The embedded store
    /// writes a store file, which holds at most about `buffer_bytes` of it in memory at a
    /// time; PostgreSQL writes a dump, one page of rows at a time.
    fn backup_into(&self, dest: &Path, buffer_bytes: usize) -> Result<StoreCounts>;

    /// Bytes the store's file takes on disk.
    fn file_bytes(&self) -> Result<u64>;

    /// Writes the store (or only `user`'s part) as a dump to `out`, from one read
    /// transaction: `chat-server export`'s output, for `GET /admin/export`.
    fn export_dump(
        &self,
        user: Option<&str>,
        out: &mut dyn std::io::Write,
    ) -> std::result::Result<crate::ops::export::Exported, crate::ops::export::ExportError>;
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

/// A reader's delivered mark in a room, and how far it could go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkState {
    /// The highest id the reader has acknowledged (0 for none).
    pub mark: u64,
    /// The room's newest message id.
    pub last_id: u64,
}

/// What moving a delivered mark did.
#[derive(Debug, Clone)]
pub enum ReceivedOutcome {
    /// The mark moved; these partner messages became delivered (maybe none: the reader's
    /// own messages need no mark).
    Moved(Vec<ChatMessage>),
    /// The mark was already at or past that id.
    Unchanged,
    /// The room has no message with that id.
    NotFound,
}

/// What an edit did.
#[derive(Debug, Clone)]
pub enum EditOutcome {
    /// The text changed.
    Changed(ChatMessage),
    /// The message already had this text; nothing was stored.
    Unchanged(ChatMessage),
    NotFound,
    /// Someone else sent it.
    NotSender,
    Deleted,
    /// It was sent longer ago than the edit window.
    WindowClosed,
}

/// What a delete did.
#[derive(Debug, Clone)]
pub enum DeleteOutcome {
    /// The message is now a tombstone.
    Deleted(ChatMessage),
    /// It was a tombstone already; nothing was stored.
    AlreadyDeleted(ChatMessage),
    NotFound,
    /// Someone else sent it.
    NotSender,
}

/// The rules of an edit, the same in every backend: `Changed` holds the message the
/// backend must write; any other outcome is answered without a write.
pub fn apply_edit(
    mut message: ChatMessage,
    editor: &str,
    text: &str,
    window_ms: i64,
    now_ms: i64,
) -> EditOutcome {
    if message.user_id != editor {
        return EditOutcome::NotSender;
    }
    if message.is_deleted() {
        return EditOutcome::Deleted;
    }
    // Before the window check, so that a retry of an edit that went through is answered
    // the same way however late it comes.
    if message.message == text {
        return EditOutcome::Unchanged(message);
    }
    if now_ms.saturating_sub(message.sent_ms) >= window_ms {
        return EditOutcome::WindowClosed;
    }
    message.message = text.to_owned();
    message.edited_ms = Some(now_ms.max(message.sent_ms));
    EditOutcome::Changed(message)
}

/// The rules of a delete, the same in every backend: `Deleted` holds the tombstone the
/// backend must write; any other outcome is answered without a write.
pub fn apply_delete(mut message: ChatMessage, deleter: &str, now_ms: i64) -> DeleteOutcome {
    if message.user_id != deleter {
        return DeleteOutcome::NotSender;
    }
    if message.is_deleted() {
        return DeleteOutcome::AlreadyDeleted(message);
    }
    message.erase(now_ms);
    DeleteOutcome::Deleted(message)
}
