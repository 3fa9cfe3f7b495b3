//! `chat-server verify`: an offline check that a store file is whole and consistent.
//!
//! A backup is only as good as the proof that it restores, so this reads every table of a
//! file (a live store stopped, or a backup before it is restored) through a read-only
//! handle and checks the invariants the writer keeps: every room's ids are one run with no
//! gap, first..=last_id (retention deletes a room's oldest messages, so the run may start
//! past 1, and a room it emptied keeps its record and last id with no message and no inbox
//! row), each index row (`room_nums`, `client_ids`, `inbox`, `changes`) points at
//! the message or room it claims, unread counts equal the partner's unseen messages, and
//! every message an erased user sent before their erasure is a tombstone without a
//! `clientMessageId`. It streams (rooms and messages are walked together in key order, one
//! message at a time), so its memory does not grow with the store.

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableError};

use super::records::{self, RoomRecord};
use super::{
    newest_first, CHANGES, CLIENT_IDS, ERASED, FORMAT_VERSION, INBOX, MESSAGES, META, PROFILES,
    ROOMS, ROOM_NUMS,
};
use crate::model::RoomKey;
use crate::store::verified::Verified;
use crate::store::{Result, StoreError};

/// Verifies the store file `db_file`, opened read-only: a server holding it makes this
/// fail with redb's "already open" error rather than read a file being written.
pub fn verify(db_file: &Path) -> Result<Verified> {
    if !db_file.is_file() {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no store file at {}", db_file.display()),
        )));
    }
    let db = redb::ReadOnlyDatabase::open(db_file)?;
    let txn = db.begin_read()?;
    let mut found = Verified::default();

    let meta = txn.open_table(META)?;
    match meta.get("format_version")?.map(|v| v.value()) {
        Some(v) if v <= FORMAT_VERSION => {}
        Some(v) => found.problem(format!(
            "format_version {v} is newer than this chat-server's {FORMAT_VERSION}"
        )),
        None => found.problem("meta has no format_version".to_owned()),
    }
    let next_room_num = meta.get("next_room_num")?.map_or(1, |v| v.value());

    // A store from before erasures has no such table: nobody was erased.
    let erased = match txn.open_table(ERASED) {
        Ok(table) => Some(table),
        Err(TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let erased_at = |user: &str| -> Result<Option<i64>> {
        match &erased {
            Some(table) => Ok(table.get(user)?.map(|g| g.value())),
            None => Ok(None),
        }
    };
    let rooms = txn.open_table(ROOMS)?;
    let messages = txn.open_table(MESSAGES)?;
    // Rooms and messages are walked together: both sort by room number.
    let mut pending = messages.iter()?;
    let mut next = pending.next().transpose()?;
    let mut expected_inbox = 0;
    let mut with_client_id = 0;
    let mut with_change = 0;
    for row in rooms.iter()? {
        let (num, value) = row?;
        let num = num.value();
        found.rooms += 1;
        if num >= next_room_num {
            found.problem(format!(
                "room {num} is at or past next_room_num {next_room_num}"
            ));
        }
        let record = match records::decode_room(value.value()) {
            Ok(record) => Some(record),
            Err(e) => {
                found.problem(format!("room {num}: {e}"));
                None
            }
        };
        // Retention takes a room with no message left out of both inboxes.
        let mut participants = 0;
        if let Some(r) = &record {
            participants = if r.low == r.high { 1 } else { 2 };
        }
        let mut room = match &record {
            Some(r) => Some(RoomCheck::new(
                num,
                r,
                erased_at(&r.low)?,
                erased_at(&r.high)?,
            )),
            None => None,
        };
        while let Some((key, value)) = &next {
            let (of, id) = key.value();
            if of > num {
                break;
            }
            if of < num {
                found.problem(format!("message {id} of room {of}, which has no record"));
            } else if let Some(room) = &mut room {
                room.message(&mut found, id, value.value());
            }
            next = pending.next().transpose()?;
        }
        if let Some(room) = room {
            if room.count > 0 {
                expected_inbox += participants;
            }
            let (client_ids, changes) = room.finish(&mut found);
            with_client_id += client_ids;
            with_change += changes;
        }
    }
    while let Some((key, _)) = &next {
        let (of, id) = key.value();
        found.problem(format!("message {id} of room {of}, which has no record"));
        next = pending.next().transpose()?;
    }

    let mut pairs = 0;
    for row in txn.open_table(ROOM_NUMS)?.iter()? {
        let (pair, num) = row?;
        let (low, high) = pair.value();
        let num = num.value();
        pairs += 1;
        match room_record(&rooms, num)? {
            Some(r) if r.low == low && r.high == high => {}
            Some(r) => found.problem(format!(
                "room_nums ({low}, {high}) names room {num}, which is ({}, {})",
                r.low, r.high
            )),
            None => found.problem(format!(
                "room_nums ({low}, {high}) names room {num}, which has no record"
            )),
        }
    }
    if pairs != found.rooms {
        found.problem(format!("{pairs} room_nums rows for {} rooms", found.rooms));
    }

    for row in txn.open_table(CLIENT_IDS)?.iter()? {
        let (key, id) = row?;
        let (num, sender, client_id) = key.value();
        let id = id.value();
        found.client_ids += 1;
        let stored = match messages.get((num, id))? {
            Some(v) => Some(records::decode_message(id, v.value())?),
            None => None,
        };
        match stored {
            Some(m) if m.user_id == sender && m.client_message_id.as_deref() == Some(client_id) => {
            }
            Some(_) => found.problem(format!(
                "client_ids ({num}, {sender}, {client_id}) names message {id}, \
                 which another sender or clientMessageId has"
            )),
            None => found.problem(format!(
                "client_ids ({num}, {sender}, {client_id}) names message {id}, which is missing"
            )),
        }
    }
    if found.client_ids != with_client_id {
        found.problem(format!(
            "{} client_ids rows for {with_client_id} messages with a clientMessageId",
            found.client_ids
        ));
    }

    for row in txn.open_table(INBOX)?.iter()? {
        let (key, _) = row?;
        let (user, time_key, room_id, num) = key.value();
        found.inbox_rows += 1;
        let Some(record) = room_record(&rooms, num)? else {
            found.problem(format!(
                "inbox of {user} names room {num}, which has no record"
            ));
            continue;
        };
        let pair = RoomKey {
            low: record.low.clone(),
            high: record.high.clone(),
        };
        if user != record.low && user != record.high {
            found.problem(format!("inbox of {user} names room {num}, not theirs"));
        } else if room_id != pair.id() {
            found.problem(format!(
                "inbox of {user} names room {num} as {room_id}, not {}",
                pair.id()
            ));
        } else if time_key != newest_first(record.last_sent_ms) {
            found.problem(format!(
                "inbox of {user} sorts room {room_id} by another time than its last message's"
            ));
        }
    }
    if found.inbox_rows != expected_inbox {
        found.problem(format!(
            "{} inbox rows for {expected_inbox} (room, participant) pairs",
            found.inbox_rows
        ));
    }

    for row in txn.open_table(CHANGES)?.iter()? {
        let (key, id) = row?;
        let (num, change) = key.value();
        let id = id.value();
        found.change_rows += 1;
        let stored = match messages.get((num, id))? {
            Some(v) => Some(records::decode_message(id, v.value())?),
            None => None,
        };
        match stored {
            Some(m) if m.change == change => {}
            Some(m) => found.problem(format!(
                "changes ({num}, {change}) names message {id}, whose change is {}",
                m.change
            )),
            None => found.problem(format!(
                "changes ({num}, {change}) names message {id}, which is missing"
            )),
        }
    }
    if found.change_rows != with_change {
        found.problem(format!(
            "{} changes rows for {with_change} messages changed since format 2",
            found.change_rows
        ));
    }

    found.profiles = txn.open_table(PROFILES)?.len()?;
    found.erased_users = match &erased {
        Some(table) => table.len()?,
        None => 0,
    };
    Ok(found)
}

/// One room's messages checked against its record, fed one at a time in id order.
struct RoomCheck<'r> {
    num: u64,
    record: &'r RoomRecord,
    /// The id the next message must have; `None` before the first, which may be past 1
    /// when retention deleted the oldest.
    expected_id: Option<u64>,
    /// `sentAt` of the previous message; times never go back.
    last_sent: i64,
    count: u64,
    with_client_id: u64,
    /// Messages with a place in the change log.
    with_change: u64,
    unseen_by_low: u64,
    unseen_by_high: u64,
    /// When `low` and `high` were erased, if they were.
    erased_low: Option<i64>,
    erased_high: Option<i64>,
}

impl<'r> RoomCheck<'r> {
    fn new(
        num: u64,
        record: &'r RoomRecord,
        erased_low: Option<i64>,
        erased_high: Option<i64>,
    ) -> RoomCheck<'r> {
        RoomCheck {
            num,
            record,
            expected_id: None,
            last_sent: i64::MIN,
            count: 0,
            with_client_id: 0,
            with_change: 0,
            unseen_by_low: 0,
            unseen_by_high: 0,
            erased_low,
            erased_high,
        }
    }

    /// How problems in this room are introduced: its number and pair.
    fn name(&self) -> String {
        format!(
            "room {} ({}, {})",
            self.num, self.record.low, self.record.high
        )
    }

    fn message(&mut self, found: &mut Verified, id: u64, bytes: &[u8]) {
        self.count += 1;
        found.messages += 1;
        match self.expected_id {
            Some(expected) if id != expected => found.problem(format!(
                "{}: message id {id} where {expected} was expected",
                self.name(),
            )),
            None if id == 0 => found.problem(format!("{}: message id 0", self.name())),
            _ => {}
        }
        self.expected_id = Some(id + 1);
        let message = match records::decode_message(id, bytes) {
            Ok(message) => message,
            Err(e) => {
                found.problem(format!("{}: {e}", self.name()));
                return;
            }
        };
        if message.client_message_id.is_some() {
            self.with_client_id += 1;
        }
        if message.change > 0 {
            self.with_change += 1;
        }
        if message.change > self.record.lifecycle.change {
            found.problem(format!(
                "{}: message {id} has change {}, past the room's counter {}",
                self.name(),
                message.change,
                self.record.lifecycle.change
            ));
        }
        let erased = if message.user_id == self.record.low {
            self.erased_low
        } else {
            self.erased_high
        };
        let kept = !message.is_deleted() || message.client_message_id.is_some();
        if erased.is_some_and(|at| message.sent_ms < at) && kept {
            found.problem(format!(
                "{}: message {id} of erased {} still has its text or clientMessageId",
                self.name(),
                message.user_id
            ));
        }
        if message.sent_ms < self.last_sent {
            found.problem(format!("{}: message {id} goes back in time", self.name()));
        }
        self.last_sent = message.sent_ms;
        let record = self.record;
        let unseen = u64::from(message.seen_ms.is_none() && record.low != record.high);
        if message.user_id == record.low {
            self.unseen_by_high += unseen;
        } else if message.user_id == record.high {
            self.unseen_by_low += unseen;
        } else {
            found.problem(format!(
                "{}: message {id} is from {}, not a participant",
                self.name(),
                message.user_id
            ));
        }
    }

    /// The checks on the room as a whole; returns how many of its messages carry a
    /// `clientMessageId`, and how many have a place in the change log.
    fn finish(self, found: &mut Verified) -> (u64, u64) {
        let record = self.record;
        // The newest message is never deleted alone: retention takes the oldest, so what
        // is left ends at last_id; a room emptied by it keeps a last id past 0.
        match self.expected_id {
            Some(next) if next - 1 != record.last_id => found.problem(format!(
                "{}: last id is {} but its newest message is {}",
                self.name(),
                record.last_id,
                next - 1
            )),
            None if record.last_id == 0 => {
                found.problem(format!("{}: no message and no last id", self.name()))
            }
            _ => {}
        }
        if self.count > 0 && record.last_sent_ms != self.last_sent {
            found.problem(format!(
                "{}: its time is not its last message's",
                self.name()
            ));
        }
        let unseen = (self.unseen_by_low, self.unseen_by_high);
        if (record.unread_low, record.unread_high) != unseen {
            found.problem(format!(
                "{}: unread counts are ({}, {}) but unseen messages {unseen:?}",
                self.name(),
                record.unread_low,
                record.unread_high
            ));
        }
        (self.with_client_id, self.with_change)
    }
}

fn room_record(
    rooms: &impl ReadableTable<u64, &'static [u8]>,
    num: u64,
) -> Result<Option<RoomRecord>> {
    match rooms.get(num)? {
        Some(v) => Ok(Some(records::decode_room(v.value())?)),
        None => Ok(None),
    }
}
