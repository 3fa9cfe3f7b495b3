//! `chat-server export`: the store as JSON lines (see [`super`] for the format).
//!
//! [`write_dump`] writes to any `io::Write` from one read transaction, so the same
//! stream can come from an offline store ([`ReadOnlyStore`]) or from a running server's
//! (inside `spawn_blocking`: the walk is synchronous and may take seconds). It holds one
//! line at a time.
//!
//! [`ReadOnlyStore`]: crate::store::redb::ReadOnlyStore

use std::io::Write;

use super::{Line, DUMP_FORMAT, DUMP_VERSION};
use crate::protocol::time::{format_millis, now_millis};
use crate::store::dump::{Item, Walk};
use crate::store::StoreError;

/// Why an export stopped.
#[derive(Debug)]
pub enum ExportError {
    /// The store could not be read.
    Store(StoreError),
    /// The output could not be written (a closed pipe, a full disk).
    Write(std::io::Error),
}

impl From<StoreError> for ExportError {
    fn from(e: StoreError) -> ExportError {
        ExportError::Store(e)
    }
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExportError::Store(e) => write!(f, "cannot read the store: {e}"),
            ExportError::Write(e) => write!(f, "cannot write the dump: {e}"),
        }
    }
}

impl std::error::Error for ExportError {}

/// What an export wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    pub profiles: u64,
    pub blocks: u64,
    pub erased: u64,
    pub rooms: u64,
    pub messages: u64,
    /// The highest id of any message written.
    pub highest_message_id: u64,
}

/// Writes the whole store, or only `user`'s profile, the blocks they made, their erasure,
/// their rooms and those rooms' messages, to `out`
/// as a dump, and flushes it. Wrap an unbuffered `out` in a `BufWriter`.
pub fn write_dump(
    store: &impl Walk,
    user: Option<&str>,
    mut out: impl Write,
) -> Result<Exported, ExportError> {
    let mut counts = Exported::default();
    let header = Line::Header {
        format: DUMP_FORMAT.to_owned(),
        version: DUMP_VERSION,
        exported_at: format_millis(now_millis()),
        user: user.map(str::to_owned),
    };
    write_line(&mut out, &header)?;
    store.walk(user, |item| {
        let line = match item {
            Item::Profile(profile) => {
                counts.profiles += 1;
                Line::Profile {
                    user_id: profile.id.clone(),
                    name: profile.name.clone(),
                }
            }
            Item::Block(blocker, blocked, since_ms) => {
                counts.blocks += 1;
                Line::Block {
                    blocker: blocker.to_owned(),
                    blocked: blocked.to_owned(),
                    since: format_millis(since_ms),
                }
            }
            Item::Erased(user_id, at_ms) => {
                counts.erased += 1;
                Line::Erased {
                    user_id: user_id.to_owned(),
                    erased_at: format_millis(at_ms),
                }
            }
            Item::Room(room) => {
                counts.rooms += 1;
                Line::Room {
                    room_id: room.key.id(),
                    pair: [room.key.low.clone(), room.key.high.clone()],
                    last_id: room.last_id,
                    last_sent_at: format_millis(room.last_sent_ms),
                    unread: [room.unread_low, room.unread_high],
                    change: room.change,
                    delivered: [room.delivered_low, room.delivered_high],
                }
            }
            Item::Message(room, message) => {
                counts.messages += 1;
                counts.highest_message_id = counts.highest_message_id.max(message.id);
                Line::Message {
                    room_id: room.key.id(),
                    pair: [room.key.low.clone(), room.key.high.clone()],
                    id: message.id,
                    user_id: message.user_id.clone(),
                    message: message.message.clone(),
                    sent_at: format_millis(message.sent_ms),
                    seen_at: message.seen_ms.map(format_millis),
                    client_message_id: message.client_message_id.clone(),
                    delivered_at: message.delivered_ms.map(format_millis),
                    edited_at: message.edited_ms.map(format_millis),
                    deleted_at: message.deleted_ms.map(format_millis),
                    change: message.change,
                }
            }
        };
        write_line(&mut out, &line)
    })?;
    out.flush().map_err(ExportError::Write)?;
    Ok(counts)
}

fn write_line(out: &mut impl Write, line: &Line) -> Result<(), ExportError> {
    serde_json::to_writer(&mut *out, line)
        .map_err(|e| ExportError::Write(e.into()))
        .and_then(|()| out.write_all(b"\n").map_err(ExportError::Write))
}
