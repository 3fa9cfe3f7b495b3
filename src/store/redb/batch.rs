//! The write side of the redb backend: one redb write transaction, applied op by op and
//! committed once. The group-commit writer opens one `Batch` per round, so many sends share
//! one fsync.
//!
//! A write transaction sees its own uncommitted writes, so two sends with the same
//! `clientMessageId` in one batch still store one message.

use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};

use super::records::{self, RoomLifecycle, RoomRecord};
use super::{
    latest_messages, newest_first, outbox, profile_in, read_message, BLOCKS, CHANGES, CLIENT_IDS,
    ERASED, INBOX, MESSAGES, META, PROFILES, ROOMS, ROOM_NUMS,
};
use crate::model::{ChatMessage, RoomKey, SessionUser};
use crate::store::{
    Appended, DeleteOutcome, EditOutcome, Erasure, Expired, Lifted, OutboxEvent, ReceivedOutcome,
    Result, SeenOutcome, StoreError, WriteTxn,
};

/// Messages of an erased user read from a room before they are rewritten: the scan and
/// the writes cannot share the table, and a bounded chunk keeps an erasure's memory flat
/// however much the user sent.
const ERASE_CHUNK: usize = 1024;

/// One write transaction, committed with fsync.
pub(super) struct Batch {
    txn: WriteTransaction,
}

impl Batch {
    pub(super) fn begin(db: &Database) -> Result<Batch> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::Corrupt(format!("durability: {e}")))?;
        // Persist allocator state with each commit so a restart after a crash does not
        // walk the whole file to repair it.
        txn.set_quick_repair(true);
        Ok(Batch { txn })
    }
}

impl WriteTxn for Batch {
    fn append(
        &mut self,
        room: &RoomKey,
        sender: &str,
        text: &str,
        client_message_id: Option<&str>,
        now_ms: i64,
    ) -> Result<Appended> {
        let (num, mut record) = self.room_for_write(room)?;
        if let Some(cmid) = client_message_id {
            let existing = self
                .txn
                .open_table(CLIENT_IDS)?
                .get((num, sender, cmid))?
                .map(|g| g.value());
            if let Some(id) = existing {
                let message = read_message(&self.txn.open_table(MESSAGES)?, num, id)?
                    .ok_or_else(|| StoreError::Corrupt(format!("client id names lost {id}")))?;
                return Ok(Appended::Duplicate(message));
            }
        }

        let mut message = ChatMessage {
            id: record.last_id + 1,
            user_id: sender.to_owned(),
            message: text.to_owned(),
            sent_ms: now_ms.max(record.last_sent_ms),
            client_message_id: client_message_id.map(str::to_owned),
            ..ChatMessage::default()
        };
        self.put_message(num, &mut record, &mut message)?;
        if let Some(cmid) = client_message_id {
            self.txn
                .open_table(CLIENT_IDS)?
                .insert((num, sender, cmid), message.id)?;
        }

        let room_id = room.id();
        {
            let mut inbox = self.txn.open_table(INBOX)?;
            for user in participants(room) {
                if record.last_id > 0 {
                    inbox.remove((
                        user,
                        newest_first(record.last_sent_ms),
                        room_id.as_str(),
                        num,
                    ))?;
                }
                inbox.insert(
                    (user, newest_first(message.sent_ms), room_id.as_str(), num),
                    (),
                )?;
            }
        }
        if !room.is_self_room() {
            *record.unread_mut(room.partner_of(sender)) += 1;
        }
        record.last_id = message.id;
        record.last_sent_ms = message.sent_ms;
        self.put_room(num, &record)?;
        Ok(Appended::New(message))
    }

    fn latest(&self, room: &RoomKey, limit: usize) -> Result<Vec<ChatMessage>> {
        match self.room_num(room)? {
            Some(num) => latest_messages(&self.txn.open_table(MESSAGES)?, num, None, limit),
            None => Ok(Vec::new()),
        }
    }

    fn mark_seen(
        &mut self,
        room: &RoomKey,
        reader: &str,
        message_id: u64,
        seen_date_ms: i64,
        now_ms: i64,
    ) -> Result<SeenOutcome> {
        let Some((num, mut message)) = self.find_message(room, message_id)? else {
            return Ok(SeenOutcome::NotFound);
        };
        if message.user_id == reader {
            return Ok(SeenOutcome::OwnMessage);
        }
        if message.seen_ms.is_some() {
            return Ok(SeenOutcome::AlreadySeen);
        }
        let seen = seen_date_ms.clamp(message.sent_ms, message.sent_ms.max(now_ms));
        message.seen_ms = Some(seen);
        let mut record = self.room_record(num)?;
        let unread = record.unread_mut(reader);
        *unread = unread.saturating_sub(1);
        self.put_message(num, &mut record, &mut message)?;
        self.put_room(num, &record)?;
        Ok(SeenOutcome::Changed(message))
    }

    fn mark_received(
        &mut self,
        room: &RoomKey,
        reader: &str,
        up_to: u64,
        now_ms: i64,
    ) -> Result<ReceivedOutcome> {
        let Some(num) = self.room_num(room)? else {
            return Ok(ReceivedOutcome::NotFound);
        };
        let mut record = self.room_record(num)?;
        if up_to == 0 || up_to > record.last_id {
            return Ok(ReceivedOutcome::NotFound);
        }
        let mark = *record.delivered_mut(reader);
        if up_to <= mark {
            return Ok(ReceivedOutcome::Unchanged);
        }
        // Only the messages past the old mark can be new to the reader; a message delivered
        // before (an older store's, or one read without a mark) keeps its first time.
        let mut delivered: Vec<ChatMessage> = Vec::new();
        let mut messages = self.txn.open_table(MESSAGES)?;
        for row in messages.range((num, mark + 1)..=(num, up_to))? {
            let (key, value) = row?;
            let message = records::decode_message(key.value().1, value.value())?;
            if message.user_id != reader && message.delivered_ms.is_none() {
                delivered.push(message);
            }
        }
        // A mark usually covers several messages: the tables are opened once for all.
        let mut changes = self.txn.open_table(CHANGES)?;
        for message in &mut delivered {
            message.delivered_ms = Some(now_ms.max(message.sent_ms));
            put_message_in(&mut messages, &mut changes, num, &mut record, message)?;
        }
        drop((messages, changes));
        *record.delivered_mut(reader) = up_to;
        self.put_room(num, &record)?;
        Ok(ReceivedOutcome::Moved(delivered))
    }

    fn edit(
        &mut self,
        room: &RoomKey,
        editor: &str,
        message_id: u64,
        text: &str,
        window_ms: i64,
        now_ms: i64,
    ) -> Result<EditOutcome> {
        let Some((num, message)) = self.find_message(room, message_id)? else {
            return Ok(EditOutcome::NotFound);
        };
        let outcome = crate::store::apply_edit(message, editor, text, window_ms, now_ms);
        let EditOutcome::Changed(mut message) = outcome else {
            return Ok(outcome);
        };
        let mut record = self.room_record(num)?;
        self.put_message(num, &mut record, &mut message)?;
        self.put_room(num, &record)?;
        Ok(EditOutcome::Changed(message))
    }

    fn delete(
        &mut self,
        room: &RoomKey,
        deleter: &str,
        message_id: u64,
        now_ms: i64,
    ) -> Result<DeleteOutcome> {
        let Some((num, message)) = self.find_message(room, message_id)? else {
            return Ok(DeleteOutcome::NotFound);
        };
        let outcome = crate::store::apply_delete(message, deleter, now_ms);
        let DeleteOutcome::Deleted(mut message) = outcome else {
            return Ok(outcome);
        };
        let mut record = self.room_record(num)?;
        self.put_message(num, &mut record, &mut message)?;
        self.put_room(num, &record)?;
        Ok(DeleteOutcome::Deleted(message))
    }

    fn put_profile(&mut self, user: &SessionUser) -> Result<()> {
        self.txn
            .open_table(PROFILES)?
            .insert(user.id.as_str(), user.name.as_str())?;
        Ok(())
    }

    fn blocked_since(&self, blocker: &str, blocked: &str) -> Result<Option<i64>> {
        Ok(self
            .txn
            .open_table(BLOCKS)?
            .get((blocker, blocked))?
            .map(|g| g.value()))
    }

    fn count_blocks(&self, blocker: &str) -> Result<usize> {
        let blocks = self.txn.open_table(BLOCKS)?;
        let mut count = 0;
        for row in blocks.range((blocker, "")..)? {
            if row?.0.value().0 != blocker {
                break;
            }
            count += 1;
        }
        Ok(count)
    }

    fn put_block(&mut self, blocker: &str, blocked: &str, since_ms: i64) -> Result<Option<u64>> {
        self.txn
            .open_table(BLOCKS)?
            .insert((blocker, blocked), since_ms)?;
        Ok(None)
    }

    fn remove_block(&mut self, blocker: &str, blocked: &str, _now_ms: i64) -> Result<Lifted> {
        let removed = self
            .txn
            .open_table(BLOCKS)?
            .remove((blocker, blocked))?
            .is_some();
        Ok(if removed {
            Lifted::Lifted { change: None }
        } else {
            Lifted::NotBlocked
        })
    }

    fn profile(&self, user: &str) -> Result<SessionUser> {
        profile_in(&self.txn.open_table(PROFILES)?, user)
    }

    fn enqueue_webhook(&mut self, hook: &str, event: &OutboxEvent) -> Result<()> {
        outbox::enqueue(&self.txn, hook, event)
    }

    fn remove_webhooks(&mut self, hook: &str, seqs: &[u64]) -> Result<Vec<u64>> {
        let mut removed = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            if outbox::remove(&self.txn, hook, seq)? {
                removed.push(seq);
            }
        }
        Ok(removed)
    }

    fn dead_letter_webhook(
        &mut self,
        hook: &str,
        seq: u64,
        reason: &str,
        now_ms: i64,
    ) -> Result<bool> {
        outbox::dead_letter(&self.txn, hook, seq, reason, now_ms)
    }

    fn retry_dead_webhooks(&mut self, hook: &str, max: usize, now_ms: i64) -> Result<u64> {
        outbox::retry_dead(&self.txn, hook, max, now_ms)
    }

    fn expire(&mut self, room: &RoomKey, cutoff_ms: i64, max: usize) -> Result<Expired> {
        let num = self
            .txn
            .open_table(ROOM_NUMS)?
            .get((room.low.as_str(), room.high.as_str()))?
            .map(|g| g.value());
        let Some(num) = num else {
            return Ok(Expired {
                deleted: 0,
                more: false,
            });
        };
        let mut record = self.room_record(num)?;
        let mut messages = self.txn.open_table(MESSAGES)?;
        let mut client_ids = self.txn.open_table(CLIENT_IDS)?;
        // Ids and `sentAt` rise together in a room, so the old messages are its first ones.
        let mut old = Vec::new();
        for row in messages.range((num, 0)..(num, u64::MAX))?.take(max) {
            let (key, value) = row?;
            let message = records::decode_message(key.value().1, value.value())?;
            if message.sent_ms >= cutoff_ms {
                break;
            }
            old.push(message);
        }
        // A deleted message leaves the change log too: `changes` reads every row it names.
        let mut changes = self.txn.open_table(CHANGES)?;
        for message in &old {
            messages.remove((num, message.id))?;
            if let Some(cmid) = &message.client_message_id {
                client_ids.remove((num, message.user_id.as_str(), cmid.as_str()))?;
            }
            if message.change > 0 {
                changes.remove((num, message.change))?;
            }
            if message.seen_ms.is_none() && !room.is_self_room() {
                let unread = record.unread_mut(room.partner_of(&message.user_id));
                *unread = unread.saturating_sub(1);
            }
        }
        let deleted = old.len() as u64;
        let newest_gone = old.last().map_or(0, |m| m.id);
        drop((messages, client_ids, changes));
        if deleted > 0 && newest_gone == record.last_id {
            let room_id = room.id();
            let mut inbox = self.txn.open_table(INBOX)?;
            for user in participants(room) {
                inbox.remove((
                    user,
                    newest_first(record.last_sent_ms),
                    room_id.as_str(),
                    num,
                ))?;
            }
        }
        self.put_room(num, &record)?;
        Ok(Expired {
            deleted,
            more: deleted == max as u64,
        })
    }

    fn erase_user(&mut self, user: &str, now_ms: i64) -> Result<Erasure> {
        // The user's rooms are their inbox rows (one per room they have, self room too).
        let nums: Vec<u64> = {
            let inbox = self.txn.open_table(INBOX)?;
            let mut nums = Vec::new();
            for row in inbox.range((user, 0, "", 0)..(user, u64::MAX, "\u{7f}", u64::MAX))? {
                nums.push(row?.0.value().3);
            }
            nums
        };
        let mut erasure = Erasure::default();
        for num in nums {
            let mut record = self.room_record(num)?;
            let mut touched = false;
            let mut next_id = 1;
            loop {
                let chunk = self.messages_to_erase(num, user, next_id)?;
                let Some(last) = chunk.last() else {
                    break;
                };
                next_id = last.id + 1;
                for mut message in chunk {
                    if !message.is_deleted() {
                        message.erase(now_ms);
                        erasure.messages += 1;
                    }
                    if let Some(cmid) = message.client_message_id.take() {
                        self.txn
                            .open_table(CLIENT_IDS)?
                            .remove((num, user, cmid.as_str()))?;
                    }
                    self.put_message(num, &mut record, &mut message)?;
                    touched = true;
                }
            }
            if touched {
                self.put_room(num, &record)?;
                erasure.rooms.push(RoomKey::new(&record.low, &record.high));
            }
        }
        self.txn.open_table(PROFILES)?.remove(user)?;
        let mut erased = self.txn.open_table(ERASED)?;
        let since = erased.get(user)?.map_or(i64::MIN, |g| g.value());
        // Never backwards: a clock stepped back must not re-admit tokens the first refused.
        erased.insert(user, now_ms.max(since))?;
        Ok(erasure)
    }

    fn erased_at(&self, user: &str) -> Result<Option<i64>> {
        let erased = self.txn.open_table(ERASED)?.get(user)?.map(|g| g.value());
        Ok(erased)
    }

    fn commit(self: Box<Self>) -> Result<()> {
        self.txn.commit()?;
        Ok(())
    }
}

impl Batch {
    /// The room's number and record, creating both when the room is new.
    fn room_for_write(&mut self, room: &RoomKey) -> Result<(u64, RoomRecord)> {
        let pair = (room.low.as_str(), room.high.as_str());
        let existing = self
            .txn
            .open_table(ROOM_NUMS)?
            .get(pair)?
            .map(|g| g.value());
        if let Some(num) = existing {
            return Ok((num, self.room_record(num)?));
        }
        let num = {
            let mut meta = self.txn.open_table(META)?;
            let num = meta.get("next_room_num")?.map_or(1, |g| g.value());
            meta.insert("next_room_num", num + 1)?;
            num
        };
        self.txn.open_table(ROOM_NUMS)?.insert(pair, num)?;
        let record = RoomRecord {
            low: room.low.clone(),
            high: room.high.clone(),
            last_id: 0,
            last_sent_ms: i64::MIN,
            unread_low: 0,
            unread_high: 0,
            lifecycle: RoomLifecycle::default(),
        };
        Ok((num, record))
    }

    fn room_num(&self, room: &RoomKey) -> Result<Option<u64>> {
        Ok(self
            .txn
            .open_table(ROOM_NUMS)?
            .get((room.low.as_str(), room.high.as_str()))?
            .map(|g| g.value()))
    }

    /// A message and its room's number, as this transaction sees them.
    fn find_message(&self, room: &RoomKey, id: u64) -> Result<Option<(u64, ChatMessage)>> {
        let Some(num) = self.room_num(room)? else {
            return Ok(None);
        };
        Ok(read_message(&self.txn.open_table(MESSAGES)?, num, id)?.map(|m| (num, m)))
    }

    /// Stores a new or changed message under the room's next change, moving its row in the
    /// change log. The caller stores `record`, whose counter this advanced.
    fn put_message(
        &mut self,
        num: u64,
        record: &mut RoomRecord,
        message: &mut ChatMessage,
    ) -> Result<()> {
        put_message_in(
            &mut self.txn.open_table(MESSAGES)?,
            &mut self.txn.open_table(CHANGES)?,
            num,
            record,
            message,
        )
    }

    /// Up to [`ERASE_CHUNK`] messages of `user` in room `num`, from id `from` on, that an
    /// erasure still has to change: live ones, and tombstones still holding a key.
    fn messages_to_erase(&self, num: u64, user: &str, from: u64) -> Result<Vec<ChatMessage>> {
        let messages = self.txn.open_table(MESSAGES)?;
        let mut chunk = Vec::new();
        for row in messages.range((num, from)..=(num, u64::MAX))? {
            let (key, value) = row?;
            let message = records::decode_message(key.value().1, value.value())?;
            if message.user_id == user
                && (!message.is_deleted() || message.client_message_id.is_some())
            {
                chunk.push(message);
                if chunk.len() == ERASE_CHUNK {
                    break;
                }
            }
        }
        Ok(chunk)
    }

    fn room_record(&self, num: u64) -> Result<RoomRecord> {
        let rooms = self.txn.open_table(ROOMS)?;
        let value = rooms
            .get(num)?
            .ok_or_else(|| StoreError::Corrupt(format!("room {num} has no record")))?;
        records::decode_room(value.value())
    }

    fn put_room(&mut self, num: u64, record: &RoomRecord) -> Result<()> {
        self.txn
            .open_table(ROOMS)?
            .insert(num, records::encode_room(record).as_slice())?;
        Ok(())
    }
}

/// [`Batch::put_message`] through tables the caller holds open.
fn put_message_in(
    messages: &mut Table<(u64, u64), &[u8]>,
    changes: &mut Table<(u64, u64), u64>,
    num: u64,
    record: &mut RoomRecord,
    message: &mut ChatMessage,
) -> Result<()> {
    if message.change > 0 {
        changes.remove((num, message.change))?;
    }
    message.change = record.next_change();
    changes.insert((num, message.change), message.id)?;
    messages.insert(
        (num, message.id),
        records::encode_message(message).as_slice(),
    )?;
    Ok(())
}

/// Each participant once (a self room has one).
fn participants(room: &RoomKey) -> impl Iterator<Item = &str> {
    let second = (!room.is_self_room()).then_some(room.high.as_str());
    std::iter::once(room.low.as_str()).chain(second)
}
