//! `chat-server import`: a dump (see [`super`]) into a new store in an empty directory,
//! or, in cluster mode, into an empty PostgreSQL database ([`load`] into any
//! [`Load`]).
//!
//! Every line is checked before it is stored, and the store becomes visible only once
//! the last line was accepted (redb: a temporary file renamed into place; PostgreSQL: one
//! transaction): bad input leaves the directory or database as it was, and the error
//! names the line. The checks are the store's
//! invariants: ids in a room are consecutive and end at its last id, `sentAt` never goes
//! back, a receipt, delivery, edit or deletion is never before its message, a deleted
//! message has no text, the unread counts are the partner's unseen messages, the delivered
//! marks are within the room's ids, a `clientMessageId` is used once per sender and room,
//! and a change-log position is held by one message of a room and is within the room's
//! change counter. What is held at any time is one line and the current room's counters
//! (uniqueness is checked against the store being built), plus the target's batch.

use std::io::{BufRead, Read};
use std::path::Path;

use super::{Line, DUMP_FORMAT, DUMP_VERSION, OLDEST_DUMP_VERSION};
use crate::model::{canonical_room_id, ChatMessage, RoomKey, SessionUser};
use crate::protocol::room::is_valid_user_id;
use crate::protocol::time::parse_rfc3339_millis;
use crate::store::dump::{Load, LoadError, RoomState, Taken};
use crate::store::redb::Loader;

/// Longest line accepted: a message line with the largest text, escaped, fits many times.
const MAX_LINE_BYTES: u64 = 1 << 20;

/// Why an import was refused; nothing was stored.
#[derive(Debug)]
pub struct ImportError {
    /// The 1-based line at fault, when one is.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ImportError {}

/// What an import stored.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub profiles: u64,
    pub blocks: u64,
    pub erased: u64,
    pub rooms: u64,
    pub messages: u64,
}

/// Builds a store in `data_dir` (created if missing; it must be empty) from the dump read
/// from `input`.
pub fn import(data_dir: &Path, input: impl BufRead) -> Result<Imported, ImportError> {
    let general = |message: String| ImportError {
        line: None,
        message,
    };
    std::fs::create_dir_all(data_dir)
        .map_err(|e| general(format!("cannot create {}: {e}", data_dir.display())))?;
    // A killed import's temporary file is not a store; the next import replaces it.
    let not_empty = std::fs::read_dir(data_dir)
        .map_err(|e| general(format!("cannot read {}: {e}", data_dir.display())))?
        .any(|entry| entry.map_or(true, |e| e.file_name() != Loader::TEMP_FILE));
    if not_empty {
        return Err(general(format!(
            "{} is not empty: import builds a new store, into an empty directory only",
            data_dir.display()
        )));
    }
    let loader = Loader::create(data_dir).map_err(|e| general(format!("storage: {e}")))?;
    load(loader, input)
}

/// Checks the dump read from `input` line by line and loads it into `target` (a new
/// store, empty until [`Load::finish`]); on the first fault, `target` is dropped unfinished
/// and keeps nothing.
pub fn load(target: impl Load, input: impl BufRead) -> Result<Imported, ImportError> {
    let mut import = Import {
        target,
        counts: Imported::default(),
        room: None,
        line: 0,
    };
    import.run(input)?;
    let Import { target, counts, .. } = import;
    target.finish().map_err(|e| refusal(e, None))?;
    Ok(counts)
}

/// A load's refusal as the import reports it: a clash names its line, a storage failure
/// the line being read (`at`), if any.
fn refusal(e: LoadError, at: Option<usize>) -> ImportError {
    match e {
        LoadError::Store(e) => ImportError {
            line: at,
            message: format!("storage: {e}"),
        },
        LoadError::Taken { line, taken } => ImportError {
            line: Some(line),
            message: match taken {
                Taken::Profile(user) => format!("a second profile for {user:?}"),
                Taken::Block { blocker, blocked } => {
                    format!("a second block of {blocked:?} by {blocker:?}")
                }
                Taken::Erased(user) => format!("a second erasure of {user:?}"),
                Taken::Room(room_id) => format!("room {room_id} appears twice"),
                Taken::ClientId {
                    room_id,
                    user_id,
                    client_message_id,
                } => format!(
                    "{user_id:?} already used clientMessageId {client_message_id:?} in room \
                     {room_id}"
                ),
                Taken::Change { room_id, change } => {
                    format!("change {change} is held by another message of room {room_id}")
                }
            },
        },
    }
}

/// The room whose messages are being read, and what its messages showed so far.
struct OpenRoom {
    state: RoomState,
    room_id: String,
    /// The room's line, for errors found only once all its messages were read.
    line: usize,
    /// Id and `sentAt` of the last message read.
    last: Option<(u64, i64)>,
    /// Unseen messages of `low` and of `high`.
    unseen: [u64; 2],
}

struct Import<L> {
    target: L,
    counts: Imported,
    room: Option<OpenRoom>,
    /// The line being read, 1-based.
    line: usize,
}

impl<L: Load> Import<L> {
    fn run(&mut self, mut input: impl BufRead) -> Result<(), ImportError> {
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let read = (&mut input)
                .take(MAX_LINE_BYTES + 1)
                .read_until(b'\n', &mut buf)
                .map_err(|e| self.error(format!("cannot read the input: {e}")))?;
            if read == 0 {
                break;
            }
            self.line += 1;
            if buf.len() as u64 > MAX_LINE_BYTES {
                return Err(self.error(format!("longer than {MAX_LINE_BYTES} bytes")));
            }
            let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
            let line: Line = serde_json::from_slice(text)
                .map_err(|e| self.error(format!("not a dump line: {e}")))?;
            self.accept(line)?;
        }
        if self.line == 0 {
            return Err(ImportError {
                line: None,
                message: "the input is empty: expected a dump from chat-server export".into(),
            });
        }
        self.close_room()
    }

    fn accept(&mut self, line: Line) -> Result<(), ImportError> {
        match line {
            Line::Header {
                format, version, ..
            } => {
                if self.line != 1 {
                    return Err(self.error("a second header".into()));
                }
                if format != DUMP_FORMAT {
                    return Err(self.error(format!("format {format:?} is not {DUMP_FORMAT:?}")));
                }
                if !(OLDEST_DUMP_VERSION..=DUMP_VERSION).contains(&version) {
                    return Err(self.error(format!(
                        "dump version {version}; this chat-server reads versions \
                         {OLDEST_DUMP_VERSION} to {DUMP_VERSION}"
                    )));
                }
                Ok(())
            }
            _ if self.line == 1 => Err(self.error("expected the header line first".into())),
            Line::Profile { user_id, name } => {
                self.user_id(&user_id)?;
                let profile = SessionUser { id: user_id, name };
                self.load(|l, line| l.profile(line, &profile))?;
                self.counts.profiles += 1;
                Ok(())
            }
            Line::Block {
                blocker,
                blocked,
                since,
            } => {
                self.user_id(&blocker)?;
                self.user_id(&blocked)?;
                if blocker == blocked {
                    return Err(self.error(format!("{blocker:?} blocks themselves")));
                }
                let since_ms = self.time("since", &since)?;
                self.load(|l, line| l.block(line, &blocker, &blocked, since_ms))?;
                self.counts.blocks += 1;
                Ok(())
            }
            Line::Erased { user_id, erased_at } => {
                self.user_id(&user_id)?;
                let at_ms = self.time("erasedAt", &erased_at)?;
                self.load(|l, line| l.erased(line, &user_id, at_ms))?;
                self.counts.erased += 1;
                Ok(())
            }
            Line::Room {
                room_id,
                pair: [low, high],
                last_id,
                last_sent_at,
                unread,
                change,
                delivered,
            } => {
                self.close_room()?;
                self.room_pair(&room_id, &low, &high)?;
                if last_id == 0 {
                    return Err(self.error("lastId must be at least 1".into()));
                }
                let last_sent_ms = self.time("lastSentAt", &last_sent_at)?;
                if low == high && unread != [0, 0] {
                    return Err(self.error("a self room has no unread messages".into()));
                }
                if delivered.iter().any(|&d| d > last_id) {
                    return Err(self.error(format!(
                        "delivered {delivered:?} is past the room's lastId {last_id}"
                    )));
                }
                let state = RoomState {
                    key: RoomKey { low, high },
                    last_id,
                    last_sent_ms,
                    unread_low: unread[0],
                    unread_high: unread[1],
                    change,
                    delivered_low: delivered[0],
                    delivered_high: delivered[1],
                };
                self.load(|l, line| l.room(line, &state))?;
                self.counts.rooms += 1;
                self.room = Some(OpenRoom {
                    state,
                    room_id,
                    line: self.line,
                    last: None,
                    unseen: [0, 0],
                });
                Ok(())
            }
            Line::Message {
                room_id,
                pair,
                id,
                user_id,
                message,
                sent_at,
                seen_at,
                client_message_id,
                delivered_at,
                edited_at,
                deleted_at,
                change,
            } => {
                let message = self.check_message(
                    &room_id,
                    &pair,
                    ChatMessage {
                        id,
                        user_id,
                        message,
                        sent_ms: self.time("sentAt", &sent_at)?,
                        seen_ms: match seen_at {
                            Some(seen) => Some(self.time("seenAt", &seen)?),
                            None => None,
                        },
                        client_message_id,
                        delivered_ms: self.optional_time("deliveredAt", delivered_at)?,
                        edited_ms: self.optional_time("editedAt", edited_at)?,
                        deleted_ms: self.optional_time("deletedAt", deleted_at)?,
                        change,
                    },
                )?;
                self.load(|l, line| l.message(line, &message))?;
                self.counts.messages += 1;
                Ok(())
            }
        }
    }

    /// Checks a message against its room and the messages before it, and counts it.
    fn check_message(
        &mut self,
        room_id: &str,
        pair: &[String; 2],
        message: ChatMessage,
    ) -> Result<ChatMessage, ImportError> {
        let line = self.line;
        let error = |message: String| ImportError {
            line: Some(line),
            message,
        };
        let Some(room) = self.room.as_mut() else {
            return Err(error("a message before any room line".into()));
        };
        let key = &room.state.key;
        if room_id != room.room_id || pair[0] != key.low || pair[1] != key.high {
            return Err(error(format!(
                "a message of room {room_id} {pair:?} after the line of room {} {:?}: \
                 a room's messages follow its room line",
                room.room_id,
                [&key.low, &key.high]
            )));
        }
        if message.user_id != key.low && message.user_id != key.high {
            return Err(error(format!(
                "sender {:?} is not in room {room_id}",
                message.user_id
            )));
        }
        match room.last {
            None if message.id == 0 => return Err(error("message ids start at 1".into())),
            Some((last, _)) if message.id != last + 1 => {
                return Err(error(format!(
                    "message id {} follows {last} in room {room_id}: ids must be consecutive",
                    message.id
                )))
            }
            Some((_, last_sent)) if message.sent_ms < last_sent => {
                return Err(error(format!(
                    "message {} was sent before the one before it",
                    message.id
                )))
            }
            _ => {}
        }
        if message.id > room.state.last_id {
            return Err(error(format!(
                "message id {} is past the room's lastId {}",
                message.id, room.state.last_id
            )));
        }
        match message.seen_ms {
            Some(_) if key.is_self_room() => {
                return Err(error("a message in a self room is never seen".into()))
            }
            Some(seen) if seen < message.sent_ms => {
                return Err(error(format!(
                    "message {} was seen before it was sent",
                    message.id
                )))
            }
            Some(_) => {}
            None if key.is_self_room() => {}
            None => {
                let reader_is_low = key.partner_of(&message.user_id) == key.low;
                room.unseen[usize::from(!reader_is_low)] += 1;
            }
        }
        for (field, time) in [
            ("deliveredAt", message.delivered_ms),
            ("editedAt", message.edited_ms),
            ("deletedAt", message.deleted_ms),
        ] {
            if time.is_some_and(|t| t < message.sent_ms) {
                return Err(error(format!(
                    "message {}: {field} is before its sentAt",
                    message.id
                )));
            }
        }
        if message.is_deleted() && !message.message.is_empty() {
            return Err(error(format!(
                "message {} is deleted but has text: a tombstone's message is empty",
                message.id
            )));
        }
        if message.change > room.state.change {
            return Err(error(format!(
                "message {} has change {}, past the room's change counter {}",
                message.id, message.change, room.state.change
            )));
        }
        room.last = Some((message.id, message.sent_ms));
        Ok(message)
    }

    /// Checks what can only be checked once all of the open room's messages were read.
    fn close_room(&mut self) -> Result<(), ImportError> {
        let Some(room) = self.room.take() else {
            return Ok(());
        };
        let error = |message: String| ImportError {
            line: Some(room.line),
            message: format!("room {}: {message}", room.room_id),
        };
        let state = &room.state;
        if let Some((last, last_sent)) = room.last {
            if last != state.last_id {
                return Err(error(format!(
                    "its messages end at id {last} but its lastId is {}",
                    state.last_id
                )));
            }
            if last_sent != state.last_sent_ms {
                return Err(error(
                    "lastSentAt is not the sentAt of its last message".into(),
                ));
            }
        }
        let unread = [state.unread_low, state.unread_high];
        if unread != room.unseen {
            return Err(error(format!(
                "unread {unread:?} but its messages leave {:?} unseen",
                room.unseen
            )));
        }
        Ok(())
    }

    fn room_pair(&self, room_id: &str, low: &str, high: &str) -> Result<(), ImportError> {
        self.user_id(low)?;
        self.user_id(high)?;
        if low.as_bytes() > high.as_bytes() {
            return Err(self.error(format!("pair [{low:?}, {high:?}] is not lowest first")));
        }
        let expected = canonical_room_id(low, high);
        if room_id != expected {
            return Err(self.error(format!(
                "roomId {room_id:?} does not match its pair (expected {expected:?})"
            )));
        }
        Ok(())
    }

    fn user_id(&self, id: &str) -> Result<(), ImportError> {
        if is_valid_user_id(id) {
            Ok(())
        } else {
            Err(self.error(format!("{id:?} is not a valid user id")))
        }
    }

    fn time(&self, field: &str, value: &str) -> Result<i64, ImportError> {
        parse_rfc3339_millis(value)
            .ok_or_else(|| self.error(format!("{field} {value:?} is not an RFC 3339 date-time")))
    }

    fn optional_time(
        &self,
        field: &str,
        value: Option<String>,
    ) -> Result<Option<i64>, ImportError> {
        value.map(|v| self.time(field, &v)).transpose()
    }

    fn load(
        &mut self,
        write: impl FnOnce(&mut L, usize) -> Result<(), LoadError>,
    ) -> Result<(), ImportError> {
        let line = self.line;
        write(&mut self.target, line).map_err(|e| refusal(e, Some(line)))
    }

    fn error(&self, message: String) -> ImportError {
        ImportError {
            line: Some(self.line),
            message,
        }
    }
}
