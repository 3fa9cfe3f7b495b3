//! Whole-store reads and writes for export and import (`crate::ops`): walk every profile,
//! block, erasure, room and message in one read transaction, and load them back into a
//! new file, rebuilding the inbox, the idempotency keys and the change log.
//!
//! The walk hands out one item at a time and keeps nothing, so an export of any size
//! runs in constant memory. The loader writes into a fresh store in bounded batches and
//! keeps only counters; checking that the items make sense (ids without gaps, counts that
//! match) is the caller's job, because it knows where each item came from.

use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable,
    WriteTransaction,
};

use super::records::{self, RoomLifecycle, RoomRecord};
use super::{
    newest_first, RedbStore, BLOCKS, CHANGES, CLIENT_IDS, DB_FILE, ERASED, FORMAT_VERSION, INBOX,
    MESSAGES, META, PROFILES, ROOMS, ROOM_NUMS, WEBHOOK_DEAD, WEBHOOK_OUTBOX,
};
use crate::model::{ChatMessage, RoomKey, SessionUser};
use crate::store::dump::{Item, Load, LoadError, RoomState, Taken, Walk};
use crate::store::{Result, StoreError};

/// Messages (and other rows) written between two commits of an import: enough to keep
/// commits few, few enough that a batch's dirty pages stay a few MiB.
const LOAD_BATCH: usize = 10_000;

impl Walk for RedbStore {
    fn walk<E: From<StoreError>>(
        &self,
        user: Option<&str>,
        each: impl FnMut(Item<'_>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        walk(&self.db.begin_read().map_err(StoreError::from)?, user, each)
    }
}

/// Why a store could not be opened read-only.
#[derive(Debug)]
pub enum OpenError {
    /// There is no store file.
    Missing(PathBuf),
    /// A running server holds it (redb's file lock).
    InUse(PathBuf),
    /// It could not be read, or is of a newer format.
    Store(StoreError),
}

impl From<StoreError> for OpenError {
    fn from(e: StoreError) -> OpenError {
        OpenError::Store(e)
    }
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Missing(path) => write!(f, "there is no store at {}", path.display()),
            OpenError::InUse(path) => write!(
                f,
                "{} is in use by a running chat-server; stop it first",
                path.display()
            ),
            OpenError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for OpenError {}

/// A store opened read-only, for offline export: it refuses a store a server holds.
pub struct ReadOnlyStore {
    db: ReadOnlyDatabase,
}

impl ReadOnlyStore {
    /// Opens the store in `data_dir` without creating or changing anything.
    pub fn open(data_dir: &Path) -> std::result::Result<ReadOnlyStore, OpenError> {
        let path = data_dir.join(DB_FILE);
        if !path.is_file() {
            return Err(OpenError::Missing(path));
        }
        let db = match redb::Builder::new()
            .set_cache_size(super::DEFAULT_CACHE_BYTES)
            .open_read_only(&path)
        {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(OpenError::InUse(path)),
            opened => opened.map_err(StoreError::from)?,
        };
        let txn = db.begin_read().map_err(StoreError::from)?;
        let version = txn
            .open_table(META)
            .map_err(StoreError::from)?
            .get("format_version")
            .map_err(StoreError::from)?
            .map(|v| v.value());
        drop(txn);
        if let Some(found) = version.filter(|&v| v > FORMAT_VERSION) {
            return Err(OpenError::Store(StoreError::NewerFormat {
                found,
                supported: FORMAT_VERSION,
            }));
        }
        Ok(ReadOnlyStore { db })
    }
}

impl Walk for ReadOnlyStore {
    fn walk<E: From<StoreError>>(
        &self,
        user: Option<&str>,
        each: impl FnMut(Item<'_>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        walk(&self.db.begin_read().map_err(StoreError::from)?, user, each)
    }
}

fn walk<E: From<StoreError>>(
    txn: &ReadTransaction,
    user: Option<&str>,
    mut each: impl FnMut(Item<'_>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let profiles = txn.open_table(PROFILES).map_err(StoreError::from)?;
    let rooms = txn.open_table(ROOMS).map_err(StoreError::from)?;
    let messages = txn.open_table(MESSAGES).map_err(StoreError::from)?;
    match user {
        Some(user) => {
            if let Some(name) = profiles.get(user).map_err(StoreError::from)? {
                each(Item::Profile(&SessionUser {
                    id: user.to_owned(),
                    name: name.value().to_owned(),
                }))?;
            }
        }
        None => {
            for row in profiles.iter().map_err(StoreError::from)? {
                let (id, name) = row.map_err(StoreError::from)?;
                each(Item::Profile(&SessionUser {
                    id: id.value().to_owned(),
                    name: name.value().to_owned(),
                }))?;
            }
        }
    }
    let blocks = txn.open_table(BLOCKS).map_err(StoreError::from)?;
    // A user's export holds the blocks they made, not who blocks them: that is the
    // blocker's data.
    let from = (user.unwrap_or(""), "");
    for row in blocks.range(from..).map_err(StoreError::from)? {
        let (key, since) = row.map_err(StoreError::from)?;
        let (blocker, blocked) = key.value();
        if user.is_some_and(|u| u != blocker) {
            break;
        }
        each(Item::Block(blocker, blocked, since.value()))?;
    }
    let erased = txn.open_table(ERASED).map_err(StoreError::from)?;
    match user {
        Some(user) => {
            if let Some(at) = erased.get(user).map_err(StoreError::from)? {
                each(Item::Erased(user, at.value()))?;
            }
        }
        None => {
            for row in erased.iter().map_err(StoreError::from)? {
                let (who, at) = row.map_err(StoreError::from)?;
                each(Item::Erased(who.value(), at.value()))?;
            }
        }
    }
    for row in rooms.range(0..).map_err(StoreError::from)? {
        let (num, value) = row.map_err(StoreError::from)?;
        let num = num.value();
        let record = records::decode_room(value.value())?;
        if user.is_some_and(|u| record.low != u && record.high != u) {
            continue;
        }
        let room = RoomState {
            key: RoomKey {
                low: record.low,
                high: record.high,
            },
            last_id: record.last_id,
            last_sent_ms: record.last_sent_ms,
            unread_low: record.unread_low,
            unread_high: record.unread_high,
            change: record.lifecycle.change,
            delivered_low: record.lifecycle.delivered_low,
            delivered_high: record.lifecycle.delivered_high,
        };
        each(Item::Room(&room))?;
        for row in messages
            .range((num, 0)..=(num, u64::MAX))
            .map_err(StoreError::from)?
        {
            let (key, value) = row.map_err(StoreError::from)?;
            let message = records::decode_message(key.value().1, value.value())?;
            each(Item::Message(&room, &message))?;
        }
    }
    Ok(())
}

/// What [`Loader::put_message`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Put {
    Stored,
    /// The sender already used this `clientMessageId` in the room.
    ClientIdTaken,
    /// Another message of the room holds this change-log position.
    ChangeTaken,
}

/// Builds a new store file from a walk's items, committing every [`LOAD_BATCH`] rows.
/// Nothing is visible under the store's name until [`Load::finish`] renames it there;
/// dropping the loader before that deletes the file.
pub struct Loader {
    /// Taken by `finish`.
    db: Option<Database>,
    txn: Option<WriteTransaction>,
    /// Where the file is built.
    temp: PathBuf,
    /// Where it goes once complete.
    target: PathBuf,
    /// Rows written since the last commit.
    pending: usize,
    /// The number the next room gets: rooms keep their walk order.
    next_num: u64,
    /// The room messages go to now.
    current: Option<(u64, RoomState)>,
}

impl Loader {
    /// The file a store is built in, inside the data directory.
    pub const TEMP_FILE: &'static str = ".chat.redb.import";

    /// Starts a new store file in `data_dir`, which must not hold one.
    pub fn create(data_dir: &Path) -> Result<Loader> {
        let target = data_dir.join(DB_FILE);
        let temp = data_dir.join(Loader::TEMP_FILE);
        // A leftover from an import that was killed holds nothing anyone relies on.
        match std::fs::remove_file(&temp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(StoreError::Io(e)),
            _ => {}
        }
        let db = redb::Builder::new()
            .set_cache_size(super::DEFAULT_CACHE_BYTES)
            .create(&temp)?;
        let mut loader = Loader {
            db: Some(db),
            txn: None,
            temp,
            target,
            pending: 0,
            next_num: 1,
            current: None,
        };
        loader
            .txn()?
            .open_table(META)?
            .insert("format_version", FORMAT_VERSION)?;
        Ok(loader)
    }

    /// Stores a profile; `false` when this user already has one.
    fn put_profile(&mut self, user: &SessionUser) -> Result<bool> {
        let txn = self.txn()?;
        let mut profiles = txn.open_table(PROFILES)?;
        if profiles.get(user.id.as_str())?.is_some() {
            return Ok(false);
        }
        profiles.insert(user.id.as_str(), user.name.as_str())?;
        drop(profiles);
        self.wrote()?;
        Ok(true)
    }

    /// Stores a room, which the next messages belong to; `false` when the pair already
    /// has one.
    fn begin_room(&mut self, room: &RoomState) -> Result<bool> {
        let num = self.next_num;
        let txn = self.txn()?;
        let mut nums = txn.open_table(ROOM_NUMS)?;
        let pair = (room.key.low.as_str(), room.key.high.as_str());
        if nums.get(pair)?.is_some() {
            return Ok(false);
        }
        nums.insert(pair, num)?;
        drop(nums);
        let record = RoomRecord {
            low: room.key.low.clone(),
            high: room.key.high.clone(),
            last_id: room.last_id,
            last_sent_ms: room.last_sent_ms,
            unread_low: room.unread_low,
            unread_high: room.unread_high,
            lifecycle: RoomLifecycle {
                change: room.change,
                delivered_low: room.delivered_low,
                delivered_high: room.delivered_high,
            },
        };
        txn.open_table(ROOMS)?
            .insert(num, records::encode_room(&record).as_slice())?;
        self.next_num += 1;
        self.current = Some((num, room.clone()));
        self.wrote()?;
        Ok(true)
    }

    /// Stores that `blocker` blocks `blocked` since `since_ms`; `false` when that block
    /// is already stored.
    fn put_block(&mut self, blocker: &str, blocked: &str, since_ms: i64) -> Result<bool> {
        let txn = self.txn()?;
        let mut blocks = txn.open_table(BLOCKS)?;
        if blocks.get((blocker, blocked))?.is_some() {
            return Ok(false);
        }
        blocks.insert((blocker, blocked), since_ms)?;
        drop(blocks);
        self.wrote()?;
        Ok(true)
    }

    /// Stores that `user` was erased at `at_ms`; `false` when that user's erasure is
    /// already stored.
    fn put_erased(&mut self, user: &str, at_ms: i64) -> Result<bool> {
        let txn = self.txn()?;
        let mut erased = txn.open_table(ERASED)?;
        if erased.get(user)?.is_some() {
            return Ok(false);
        }
        erased.insert(user, at_ms)?;
        drop(erased);
        self.wrote()?;
        Ok(true)
    }

    /// Stores a message of the current room, with its `clientMessageId` row, its
    /// change-log row, and the room's inbox rows once its newest message arrives. Refuses
    /// (storing nothing) a `clientMessageId` its sender already used in this room, or a
    /// change-log position another message of the room holds.
    fn put_message(&mut self, message: &ChatMessage) -> Result<Put> {
        let (num, last_id) = match &self.current {
            Some((num, room)) => (*num, room.last_id),
            None => return Err(StoreError::Corrupt("a message before any room".into())),
        };
        let newest = (message.id == last_id)
            .then(|| self.current.as_ref().map(|(_, room)| room.clone()))
            .flatten();
        let txn = self.txn()?;
        let cmid_key = message
            .client_message_id
            .as_deref()
            .map(|cmid| (num, message.user_id.as_str(), cmid));
        if let Some(key) = cmid_key {
            if txn.open_table(CLIENT_IDS)?.get(key)?.is_some() {
                return Ok(Put::ClientIdTaken);
            }
        }
        if message.change > 0 {
            let mut changes = txn.open_table(CHANGES)?;
            if changes.get((num, message.change))?.is_some() {
                return Ok(Put::ChangeTaken);
            }
            changes.insert((num, message.change), message.id)?;
        }
        if let Some(key) = cmid_key {
            txn.open_table(CLIENT_IDS)?.insert(key, message.id)?;
        }
        txn.open_table(MESSAGES)?.insert(
            (num, message.id),
            records::encode_message(message).as_slice(),
        )?;
        if let Some(room) = newest {
            let room_id = room.key.id();
            let mut inbox = txn.open_table(INBOX)?;
            let updated = newest_first(room.last_sent_ms);
            inbox.insert((room.key.low.as_str(), updated, room_id.as_str(), num), ())?;
            if !room.key.is_self_room() {
                inbox.insert((room.key.high.as_str(), updated, room_id.as_str(), num), ())?;
            }
        }
        self.wrote()?;
        Ok(Put::Stored)
    }

    /// Commits the rest durably and puts the file in place under the store's name.
    fn finish_file(mut self) -> Result<()> {
        let next = self.next_num;
        self.txn()?
            .open_table(META)?
            .insert("next_room_num", next)?;
        // Every table exists in a finished store, as in one the server created.
        {
            let txn = self.txn()?;
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
        let mut txn = self.txn.take().expect("txn() left one open");
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::Corrupt(format!("durability: {e}")))?;
        txn.commit()?;
        drop(self.db.take());
        std::fs::rename(&self.temp, &self.target).map_err(StoreError::Io)?;
        let dir = self.target.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(StoreError::Io)
    }

    /// The open write transaction, begun when there is none.
    fn txn(&mut self) -> Result<&mut WriteTransaction> {
        if self.txn.is_none() {
            let db = self.db.as_ref().expect("the loader is not finished");
            let mut txn = db.begin_write()?;
            // Only the last commit needs to reach the disk: a crash before it leaves the
            // temporary file, which nothing reads and the next import deletes.
            txn.set_durability(Durability::None)
                .map_err(|e| StoreError::Corrupt(format!("durability: {e}")))?;
            self.txn = Some(txn);
        }
        Ok(self.txn.as_mut().expect("just begun"))
    }

    /// Counts a row, committing the batch when it is full.
    fn wrote(&mut self) -> Result<()> {
        self.pending += 1;
        if self.pending >= LOAD_BATCH {
            if let Some(txn) = self.txn.take() {
                txn.commit()?;
            }
            self.pending = 0;
        }
        Ok(())
    }
}

/// Each clash is found as its item arrives: the loader looks it up in the file it builds.
impl Load for Loader {
    fn profile(&mut self, line: usize, user: &SessionUser) -> std::result::Result<(), LoadError> {
        taken_if(!self.put_profile(user)?, line, || {
            Taken::Profile(user.id.clone())
        })
    }

    fn block(
        &mut self,
        line: usize,
        blocker: &str,
        blocked: &str,
        since_ms: i64,
    ) -> std::result::Result<(), LoadError> {
        taken_if(!self.put_block(blocker, blocked, since_ms)?, line, || {
            Taken::Block {
                blocker: blocker.to_owned(),
                blocked: blocked.to_owned(),
            }
        })
    }

    fn erased(
        &mut self,
        line: usize,
        user: &str,
        at_ms: i64,
    ) -> std::result::Result<(), LoadError> {
        taken_if(!self.put_erased(user, at_ms)?, line, || {
            Taken::Erased(user.to_owned())
        })
    }

    fn room(&mut self, line: usize, room: &RoomState) -> std::result::Result<(), LoadError> {
        taken_if(!self.begin_room(room)?, line, || Taken::Room(room.key.id()))
    }

    fn message(
        &mut self,
        line: usize,
        message: &ChatMessage,
    ) -> std::result::Result<(), LoadError> {
        let put = self.put_message(message)?;
        let room_id = || {
            self.current
                .as_ref()
                .map_or_else(String::new, |(_, room)| room.key.id())
        };
        let taken = match put {
            Put::Stored => return Ok(()),
            Put::ClientIdTaken => Taken::ClientId {
                room_id: room_id(),
                user_id: message.user_id.clone(),
                client_message_id: message.client_message_id.clone().unwrap_or_default(),
            },
            Put::ChangeTaken => Taken::Change {
                room_id: room_id(),
                change: message.change,
            },
        };
        Err(LoadError::Taken { line, taken })
    }

    fn finish(self) -> std::result::Result<(), LoadError> {
        Ok(self.finish_file()?)
    }
}

fn taken_if(
    taken: bool,
    line: usize,
    what: impl FnOnce() -> Taken,
) -> std::result::Result<(), LoadError> {
    match taken {
        true => Err(LoadError::Taken {
            line,
            taken: what(),
        }),
        false => Ok(()),
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        if self.db.is_some() {
            self.txn = None;
            self.db = None;
            // An unfinished import leaves nothing behind.
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
