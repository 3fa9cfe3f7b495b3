//! The redb backend: an embedded, single-file database with MVCC reads.
//!
//! Nothing outside this folder names redb (`main.rs` only opens it). Reads run in MVCC read
//! transactions and never wait for the writer; they take microseconds, so they run on the
//! calling task rather than on a blocking thread. Writes go through a [`batch::Batch`],
//! which only the group-commit writer opens, so there is exactly one write transaction at a
//! time, and every commit is fsync'd (`Durability::Immediate`).
//!
//! Layout (values are `postcard`-encoded records from [`records`]):
//! - `meta`: `format_version`, `next_room_num`.
//! - `room_nums`: (low user, high user) → room number. Rooms are stored under their *pair* of
//!   participants, never under the id string alone, because ids with `-` can make two pairs
//!   share one id string (PROTOCOL.md section 1).
//! - `rooms`: room number → [`records::RoomRecord`] (pair, last id, last `sentAt`, unread).
//! - `messages`: (room number, message id) → [`records::MessageRecord`]. Big-endian tuple
//!   keys, so "latest 50" is one reverse range scan.
//! - `client_ids`: (room number, sender, clientMessageId) → message id, for exactly-once.
//! - `inbox`: (user, newest-first time key, room id, room number) → (), one row per room a
//!   user has, so an inbox page is one forward range scan.
//! - `profiles`: user id → latest display name.
//! - `blocks`: (blocker, blocked) → since (Unix ms), one row per block, so a user's block
//!   list is one range scan and "does either block the other" is two point lookups. A new
//!   table needs no format bump: an older binary never opens it, and `open` creates it.
//! - `webhook_outbox`: (hook URL, seq) → [`outbox::OutboxRecord`], the transactional
//!   outbox: an event is written in the commit that stores what it describes, and
//!   removed once delivered. `meta.next_webhook_seq` numbers them in commit order.
//! - `webhook_dead`: (hook URL, seq) → [`outbox::DeadRecord`], events given up on.
//! - `changes` (format 2): (room number, change counter) → message id, one row per message
//!   at its latest change, so "what changed since N" is one forward range scan.
//! - `erased`: user id → when the user was erased (Unix ms): tokens issued before it are
//!   refused (`crate::app`). Added beside format 2 without a new number: a store without
//!   it reads as "nobody erased".
//!
//! [`dump`] walks a whole store in one read transaction and loads one into a new file,
//! for `chat-server export` and `import` (`crate::ops`).

mod backup;
mod batch;
mod dump;
mod outbox;
mod records;
mod verify;

pub use dump::{Loader, OpenError, ReadOnlyStore};

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    DeadLetter, ExpiryScan, MarkState, OutboxEvent, Read, ReadStore, Result, StoreError,
    WebhookCounts, WriteStore, WriteTxn,
};
use crate::model::{
    BlockedUser, ChangesPage, ChatMessage, HistoryPage, InboxCursor, InboxRoom, RoomKey,
    SessionUser,
};
use records::RoomRecord;

pub use backup::compact;
pub use verify::verify;

/// The on-disk format this binary writes. A store with a higher number is refused.
///
/// Format 2 appends the message lifecycle (delivered, edited, deleted, change counter) to
/// message and room records and adds the `changes` table. Format-1 records read as they
/// are (see `records`), so opening a format-1 store only raises the number: a format-1
/// binary would show a tombstone as an empty message and drop the new fields when it
/// rewrites a record, so it must refuse the store from then on.
pub const FORMAT_VERSION: u64 = 2;
/// File name of the database inside the data directory.
pub const DB_FILE: &str = "chat.redb";
/// redb's page cache unless configured (`memory.redb_cache_bytes`). redb's own default,
/// 1 GiB, would let the cache alone outgrow a small box as the store grows. Measured on a
/// store of 1,000,000 messages (README, "Memory"): history pages take a median 18.8 us
/// with 16 MiB against 15.1 us with the whole 255 MiB file cached, and the cache costs
/// about 1.6 times its setting in RSS.
pub const DEFAULT_CACHE_BYTES: usize = 16 * 1024 * 1024;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const ROOM_NUMS: TableDefinition<(&str, &str), u64> = TableDefinition::new("room_nums");
const ROOMS: TableDefinition<u64, &[u8]> = TableDefinition::new("rooms");
const MESSAGES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("messages");
const CLIENT_IDS: TableDefinition<(u64, &str, &str), u64> = TableDefinition::new("client_ids");
const INBOX: TableDefinition<(&str, u64, &str, u64), ()> = TableDefinition::new("inbox");
const PROFILES: TableDefinition<&str, &str> = TableDefinition::new("profiles");
const BLOCKS: TableDefinition<(&str, &str), i64> = TableDefinition::new("blocks");
const WEBHOOK_OUTBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("webhook_outbox");
const WEBHOOK_DEAD: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("webhook_dead");
const CHANGES: TableDefinition<(u64, u64), u64> = TableDefinition::new("changes");
const ERASED: TableDefinition<&str, i64> = TableDefinition::new("erased");

/// Every redb error is a backend failure; the macro keeps `?` working on each of redb's
/// error types without a blanket impl that a second backend's errors would collide with.
macro_rules! backend_errors {
    ($($error:ty),*) => {$(
        impl From<$error> for StoreError {
            fn from(e: $error) -> StoreError {
                StoreError::Backend(Box::new(redb::Error::from(e)))
            }
        }
    )*};
}

backend_errors!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::CompactionError,
    redb::SetDurabilityError
);

/// Sort key that lists the most recent activity first in a forward scan.
fn newest_first(updated_ms: i64) -> u64 {
    u64::MAX - updated_ms.max(0) as u64
}

/// The store: safe to share; reads never block on the writer.
pub struct RedbStore {
    db: Database,
    /// The database file, whose size `/metrics` reports.
    path: PathBuf,
}

impl RedbStore {
    /// Opens (creating when absent) the store in `data_dir`, refusing a newer format, with
    /// a page cache of [`DEFAULT_CACHE_BYTES`].
    pub fn open(data_dir: &Path) -> Result<RedbStore> {
        RedbStore::open_with_cache(data_dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens the store with a page cache of `cache_bytes` (`memory.redb_cache_bytes`).
    pub fn open_with_cache(data_dir: &Path, cache_bytes: usize) -> Result<RedbStore> {
        std::fs::create_dir_all(data_dir).map_err(StoreError::Io)?;
        let path = data_dir.join(DB_FILE);
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(&path)?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let version = meta.get("format_version")?.map(|v| v.value());
            match version {
                Some(found) if found > FORMAT_VERSION => {
                    return Err(StoreError::NewerFormat {
                        found,
                        supported: FORMAT_VERSION,
                    })
                }
                Some(FORMAT_VERSION) => {}
                Some(older) => {
                    tracing::info!(
                        from = older,
                        to = FORMAT_VERSION,
                        "upgrading the store format"
                    );
                    meta.insert("format_version", FORMAT_VERSION)?;
                }
                None => {
                    meta.insert("format_version", FORMAT_VERSION)?;
                }
            }
            // Create every table up front so read transactions never meet a missing one.
            txn.open_table(ROOM_NUMS)?;
            txn.open_table(ROOMS)?;
            txn.open_table(MESSAGES)?;
            txn.open_table(CLIENT_IDS)?;
            txn.open_table(INBOX)?;
            txn.open_table(PROFILES)?;
            txn.open_table(BLOCKS)?;
            txn.open_table(WEBHOOK_OUTBOX)?;
            txn.open_table(WEBHOOK_DEAD)?;
            txn.open_table(CHANGES)?;
            txn.open_table(ERASED)?;
        }
        txn.commit()?;
        // A new file's directory entry is durable only once the directory is synced; without
        // this a power cut could lose the whole file along with acknowledged messages.
        std::fs::File::open(data_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(StoreError::Io)?;
        Ok(RedbStore { db, path })
    }

    /// The stored message a sender already sent with this `clientMessageId`, if any.
    fn find_by_client_id_now(
        &self,
        room: &RoomKey,
        sender: &str,
        client_message_id: &str,
    ) -> Result<Option<ChatMessage>> {
        let txn = self.db.begin_read()?;
        let Some(num) = room_num(&txn.open_table(ROOM_NUMS)?, room)? else {
            return Ok(None);
        };
        let id = txn
            .open_table(CLIENT_IDS)?
            .get((num, sender, client_message_id))?
            .map(|g| g.value());
        match id {
            Some(id) => read_message(&txn.open_table(MESSAGES)?, num, id),
            None => Ok(None),
        }
    }

    /// Up to `limit` messages of a room, newest first, all with ids below `before` if given,
    /// and `viewer`'s partner in it. A room without messages gives an empty page.
    fn messages_page_now(
        &self,
        room: &RoomKey,
        viewer: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage> {
        let txn = self.db.begin_read()?;
        let partner = profile_in(&txn.open_table(PROFILES)?, room.partner_of(viewer))?;
        let (messages, position) = match room_num(&txn.open_table(ROOM_NUMS)?, room)? {
            Some(num) => (
                latest_messages(&txn.open_table(MESSAGES)?, num, before, limit)?,
                change_counter(&txn, num)?,
            ),
            None => (Vec::new(), 0),
        };
        Ok(HistoryPage {
            partner,
            messages,
            position,
        })
    }

    /// Up to `limit` messages with ids above `after`, oldest first.
    fn messages_after_now(
        &self,
        room: &RoomKey,
        viewer: &str,
        after: u64,
        limit: usize,
    ) -> Result<HistoryPage> {
        let txn = self.db.begin_read()?;
        let partner = profile_in(&txn.open_table(PROFILES)?, room.partner_of(viewer))?;
        let mut messages = Vec::new();
        let mut position = 0;
        if let Some(num) = room_num(&txn.open_table(ROOM_NUMS)?, room)? {
            let table = txn.open_table(MESSAGES)?;
            for row in table
                .range((num, after.saturating_add(1))..=(num, u64::MAX))?
                .take(limit)
            {
                let (key, value) = row?;
                messages.push(records::decode_message(key.value().1, value.value())?);
            }
            position = change_counter(&txn, num)?;
        }
        Ok(HistoryPage {
            partner,
            messages,
            position,
        })
    }

    /// Up to `limit` messages changed after change `since`, in change order.
    fn changes_now(
        &self,
        room: &RoomKey,
        viewer: &str,
        since: u64,
        limit: usize,
    ) -> Result<ChangesPage> {
        let txn = self.db.begin_read()?;
        let partner = profile_in(&txn.open_table(PROFILES)?, room.partner_of(viewer))?;
        let Some(num) = room_num(&txn.open_table(ROOM_NUMS)?, room)? else {
            return Ok(ChangesPage {
                partner,
                messages: Vec::new(),
                position: since,
                more: false,
            });
        };
        let changes = txn.open_table(CHANGES)?;
        let messages_table = txn.open_table(MESSAGES)?;
        let mut messages = Vec::with_capacity(limit.min(64));
        let mut position = since;
        let mut more = false;
        for row in changes.range((num, since.saturating_add(1))..=(num, u64::MAX))? {
            let (key, id) = row?;
            if messages.len() == limit {
                more = true;
                break;
            }
            let id = id.value();
            let message = read_message(&messages_table, num, id)?.ok_or_else(|| {
                StoreError::Corrupt(format!("change log of room {num} names lost {id}"))
            })?;
            position = key.value().1;
            messages.push(message);
        }
        if !more {
            // Nothing is left: the room's counter is the position, so that a caller that
            // asked from beyond it (a position from another room) starts over cleanly.
            position = change_counter(&txn, num)?;
        }
        Ok(ChangesPage {
            partner,
            messages,
            position,
            more,
        })
    }

    /// One page of a user's rooms, most recent activity first, strictly after `after`.
    fn inbox_page_now(
        &self,
        user: &str,
        after: Option<&InboxCursor>,
        limit: usize,
    ) -> Result<Vec<InboxRoom>> {
        let txn = self.db.begin_read()?;
        let inbox = txn.open_table(INBOX)?;
        let rooms = txn.open_table(ROOMS)?;
        let messages = txn.open_table(MESSAGES)?;
        let profiles = txn.open_table(PROFILES)?;
        let blocks = txn.open_table(BLOCKS)?;
        let start = match after {
            Some(c) => (
                user,
                newest_first(c.updated_ms),
                c.room_id.as_str(),
                c.room_num,
            ),
            None => (user, 0, "", 0),
        };
        let mut page = Vec::with_capacity(limit);
        for row in inbox.range(start..(user, u64::MAX, "\u{7f}", u64::MAX))? {
            let (key, _) = row?;
            let (_, _, room_id, num) = key.value();
            if after.is_some_and(|c| c.room_num == num && c.room_id == room_id) {
                continue;
            }
            let record: RoomRecord = records::decode_room(
                rooms
                    .get(num)?
                    .ok_or_else(|| StoreError::Corrupt(format!("inbox names missing room {num}")))?
                    .value(),
            )?;
            let last_message = read_message(&messages, num, record.last_id)?.ok_or_else(|| {
                StoreError::Corrupt(format!("room {num} lost message {}", record.last_id))
            })?;
            let partner = profile_in(&profiles, record.partner_of(user))?;
            let blocked = blocks.get((user, partner.id.as_str()))?.is_some();
            page.push(InboxRoom {
                room_num: num,
                room_id: room_id.to_owned(),
                // A blocked partner's messages count for nothing while the block stands;
                // the stored count is kept, so unblocking shows what is still unseen.
                unread: if blocked { 0 } else { record.unread_of(user) },
                updated_ms: record.last_sent_ms,
                partner,
                last_message,
                blocked,
            });
            if page.len() == limit {
                break;
            }
        }
        Ok(page)
    }

    /// The profile remembered for a user; a user never seen is named by their id.
    fn profile_now(&self, user: &str) -> Result<SessionUser> {
        let txn = self.db.begin_read()?;
        profile_in(&txn.open_table(PROFILES)?, user)
    }

    /// Everyone `blocker` blocks, in id order, with their remembered names.
    fn blocks_now(&self, blocker: &str) -> Result<Vec<BlockedUser>> {
        let txn = self.db.begin_read()?;
        let profiles = txn.open_table(PROFILES)?;
        let mut list = Vec::new();
        for row in txn.open_table(BLOCKS)?.range((blocker, "")..)? {
            let (key, since) = row?;
            let (who, blocked) = key.value();
            if who != blocker {
                break;
            }
            list.push(BlockedUser {
                user: profile_in(&profiles, blocked)?,
                since_ms: since.value(),
            });
        }
        Ok(list)
    }

    /// Whether either of `a` and `b` blocks the other.
    fn delivered_mark_now(&self, room: &RoomKey, reader: &str) -> Result<Option<MarkState>> {
        let txn = self.db.begin_read()?;
        let Some(num) = room_num(&txn.open_table(ROOM_NUMS)?, room)? else {
            return Ok(None);
        };
        let rooms = txn.open_table(ROOMS)?;
        let value = rooms
            .get(num)?
            .ok_or_else(|| StoreError::Corrupt(format!("room {num} has no record")))?;
        let record = records::decode_room(value.value())?;
        Ok(Some(MarkState {
            mark: record.delivered_of(reader),
            last_id: record.last_id,
        }))
    }

    fn blocked_between_now(&self, a: &str, b: &str) -> Result<bool> {
        let txn = self.db.begin_read()?;
        let blocks = txn.open_table(BLOCKS)?;
        Ok(blocks.get((a, b))?.is_some() || blocks.get((b, a))?.is_some())
    }

    /// Of up to `limit` rooms numbered after `after`, those whose first message is older
    /// than `cutoff_ms`: one key read per room.
    fn rooms_to_expire_now(
        &self,
        cutoff_ms: i64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<ExpiryScan> {
        let txn = self.db.begin_read()?;
        let rooms = txn.open_table(ROOMS)?;
        let messages = txn.open_table(MESSAGES)?;
        let mut scan = ExpiryScan::default();
        let start = after.map_or(0, |n| n.saturating_add(1));
        let mut rows = rooms.range(start..)?;
        let mut last = None;
        for row in rows.by_ref().take(limit) {
            let (num, value) = row?;
            let num = num.value();
            last = Some(num);
            let first = messages.range((num, 0)..(num, u64::MAX))?.next();
            if let Some(row) = first {
                let (key, value_bytes) = row?;
                let oldest = records::decode_message(key.value().1, value_bytes.value())?;
                if oldest.sent_ms < cutoff_ms {
                    let record = records::decode_room(value.value())?;
                    scan.rooms.push(RoomKey {
                        low: record.low,
                        high: record.high,
                    });
                }
            }
        }
        scan.next = match rows.next() {
            Some(_) => last,
            None => None,
        };
        Ok(scan)
    }

    /// When the user was erased, if ever.
    fn erased_at_now(&self, user: &str) -> Result<Option<i64>> {
        let txn = self.db.begin_read()?;
        let erased = txn.open_table(ERASED)?.get(user)?.map(|g| g.value());
        Ok(erased)
    }

    /// Up to `limit` of `user`'s rooms sent to at or after `since_ms`, most recent first:
    /// the front of their inbox keys.
    fn rooms_active_since_now(
        &self,
        user: &str,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<RoomKey>> {
        let txn = self.db.begin_read()?;
        let inbox = txn.open_table(INBOX)?;
        let rooms = txn.open_table(ROOMS)?;
        let oldest = newest_first(since_ms);
        let mut active = Vec::new();
        for row in inbox.range((user, 0, "", 0)..=(user, oldest, "\u{10ffff}", u64::MAX))? {
            if active.len() == limit {
                break;
            }
            let (key, _) = row?;
            let (_, _, _, num) = key.value();
            let record = records::decode_room(
                rooms
                    .get(num)?
                    .ok_or_else(|| StoreError::Corrupt(format!("inbox names missing room {num}")))?
                    .value(),
            )?;
            active.push(RoomKey {
                low: record.low,
                high: record.high,
            });
        }
        Ok(active)
    }

    /// Which of `users` were erased, and when.
    fn erasures_now(&self, users: &[String]) -> Result<Vec<(String, i64)>> {
        let txn = self.db.begin_read()?;
        let erased = txn.open_table(ERASED)?;
        let mut found = Vec::new();
        for user in users {
            if let Some(at) = erased.get(user.as_str())? {
                found.push((user.clone(), at.value()));
            }
        }
        Ok(found)
    }
}

// Each read runs at once on the calling task and hands back a ready future: a redb read is
// a few microseconds of work on cached pages, less than a hop to a blocking thread costs.
impl ReadStore for RedbStore {
    fn find_by_client_id<'a>(
        &'a self,
        room: &'a RoomKey,
        sender: &'a str,
        client_message_id: &'a str,
    ) -> Read<'a, Option<ChatMessage>> {
        ready(self.find_by_client_id_now(room, sender, client_message_id))
    }

    fn messages_page<'a>(
        &'a self,
        room: &'a RoomKey,
        viewer: &'a str,
        before: Option<u64>,
        limit: usize,
    ) -> Read<'a, HistoryPage> {
        ready(self.messages_page_now(room, viewer, before, limit))
    }

    fn messages_after<'a>(
        &'a self,
        room: &'a RoomKey,
        viewer: &'a str,
        after: u64,
        limit: usize,
    ) -> Read<'a, HistoryPage> {
        ready(self.messages_after_now(room, viewer, after, limit))
    }

    fn changes<'a>(
        &'a self,
        room: &'a RoomKey,
        viewer: &'a str,
        since: u64,
        limit: usize,
    ) -> Read<'a, ChangesPage> {
        ready(self.changes_now(room, viewer, since, limit))
    }

    fn inbox_page<'a>(
        &'a self,
        user: &'a str,
        after: Option<&'a InboxCursor>,
        limit: usize,
    ) -> Read<'a, Vec<InboxRoom>> {
        ready(self.inbox_page_now(user, after, limit))
    }

    fn profile<'a>(&'a self, user: &'a str) -> Read<'a, SessionUser> {
        ready(self.profile_now(user))
    }

    fn blocks<'a>(&'a self, blocker: &'a str) -> Read<'a, Vec<BlockedUser>> {
        ready(self.blocks_now(blocker))
    }

    fn blocked_between<'a>(&'a self, a: &'a str, b: &'a str) -> Read<'a, bool> {
        ready(self.blocked_between_now(a, b))
    }

    fn delivered_mark<'a>(
        &'a self,
        room: &'a RoomKey,
        reader: &'a str,
    ) -> Read<'a, Option<MarkState>> {
        ready(self.delivered_mark_now(room, reader))
    }

    fn webhook_outbox<'a>(
        &'a self,
        hook: &'a str,
        after: Option<u64>,
        limit: usize,
    ) -> Read<'a, Vec<OutboxEvent>> {
        ready(outbox::pending(&self.db, hook, after, limit))
    }

    fn webhook_dead_letters<'a>(
        &'a self,
        hook: &'a str,
        after: Option<u64>,
        limit: usize,
    ) -> Read<'a, Vec<DeadLetter>> {
        ready(outbox::dead_letters(&self.db, hook, after, limit))
    }

    fn webhook_counts<'a>(&'a self, hook: &'a str) -> Read<'a, WebhookCounts> {
        ready(outbox::counts(&self.db, hook))
    }

    fn rooms_to_expire(
        &self,
        cutoff_ms: i64,
        after: Option<u64>,
        limit: usize,
    ) -> Read<'_, ExpiryScan> {
        ready(self.rooms_to_expire_now(cutoff_ms, after, limit))
    }

    fn erased_at<'a>(&'a self, user: &'a str) -> Read<'a, Option<i64>> {
        ready(self.erased_at_now(user))
    }

    fn rooms_active_since<'a>(
        &'a self,
        user: &'a str,
        since_ms: i64,
        limit: usize,
    ) -> Read<'a, Vec<RoomKey>> {
        ready(self.rooms_active_since_now(user, since_ms, limit))
    }

    fn erasures<'a>(&'a self, users: &'a [String]) -> Read<'a, Vec<(String, i64)>> {
        ready(self.erasures_now(users))
    }

    /// Two read transactions of a few microseconds each: with no round trip to save, one
    /// would buy nothing (a message committed in between is in the page only, and a
    /// caller reads the changes up to a bound it already knows).
    fn changes_and_page<'a>(
        &'a self,
        room: &'a RoomKey,
        viewer: &'a str,
        since: u64,
        limit: usize,
        before: Option<u64>,
        page_limit: usize,
    ) -> Read<'a, (ChangesPage, HistoryPage)> {
        ready(
            self.changes_now(room, viewer, since, limit)
                .and_then(|changes| {
                    let page = self.messages_page_now(room, viewer, before, page_limit)?;
                    Ok((changes, page))
                }),
        )
    }
}

impl WriteStore for RedbStore {
    fn begin(&self) -> Result<Box<dyn WriteTxn>> {
        Ok(Box::new(batch::Batch::begin(&self.db)?))
    }
}

fn ready<'a, T: Send + 'a>(result: Result<T>) -> Read<'a, T> {
    Box::pin(std::future::ready(result))
}

fn room_num(
    table: &impl ReadableTable<(&'static str, &'static str), u64>,
    room: &RoomKey,
) -> Result<Option<u64>> {
    Ok(table
        .get((room.low.as_str(), room.high.as_str()))?
        .map(|g| g.value()))
}

/// A user's remembered profile; a user never seen is named by their id.
fn profile_in(
    table: &impl ReadableTable<&'static str, &'static str>,
    user: &str,
) -> Result<SessionUser> {
    let name = table.get(user)?.map(|g| g.value().to_owned());
    Ok(SessionUser {
        id: user.to_owned(),
        name: name.unwrap_or_else(|| user.to_owned()),
    })
}

/// A room's change counter, as a read transaction sees it.
fn change_counter(txn: &redb::ReadTransaction, num: u64) -> Result<u64> {
    let rooms = txn.open_table(ROOMS)?;
    let value = rooms
        .get(num)?
        .ok_or_else(|| StoreError::Corrupt(format!("room {num} has no record")))?;
    Ok(records::decode_room(value.value())?.lifecycle.change)
}

fn read_message(
    table: &impl ReadableTable<(u64, u64), &'static [u8]>,
    num: u64,
    id: u64,
) -> Result<Option<ChatMessage>> {
    match table.get((num, id))? {
        Some(v) => Ok(Some(records::decode_message(id, v.value())?)),
        None => Ok(None),
    }
}

fn latest_messages(
    table: &impl ReadableTable<(u64, u64), &'static [u8]>,
    num: u64,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<ChatMessage>> {
    let end = before.unwrap_or(u64::MAX);
    let mut page = Vec::with_capacity(limit.min(64));
    for row in table.range((num, 0)..(num, end))?.rev().take(limit) {
        let (key, value) = row?;
        page.push(records::decode_message(key.value().1, value.value())?);
    }
    Ok(page)
}

#[cfg(test)]
mod tests;
