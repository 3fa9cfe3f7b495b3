//! Offline operations on a data directory: [`export`] a store as JSON lines, [`import`]
//! such a dump into a new store.
//!
//! A dump is one JSON object per line, each with a `type`: a `header`, then `profile`s,
//! then each `room` followed by its `message`s in id order. It carries everything the
//! store holds that is not derived: a room's counters and unread counts, each message's
//! times, receipt and `clientMessageId`. The inbox and the idempotency keys are rebuilt
//! from those, so a dump stays readable if the store's layout changes. Both directions
//! stream, one line at a time, so a store of any size moves in constant memory.

pub mod export;
pub mod import;

use serde::{Deserialize, Serialize};

/// The dump format this binary writes and reads.
pub const DUMP_VERSION: u64 = 1;
/// The `format` of every dump's header, so that another JSON-lines file is refused at once.
pub const DUMP_FORMAT: &str = "chat-server-dump";

/// One line of a dump. Unknown fields are refused on import: a dump from a newer
/// chat-server with data this one cannot store must not be imported with it silently lost.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum Line {
    /// The first line.
    #[serde(rename_all = "camelCase")]
    Header {
        format: String,
        version: u64,
        exported_at: String,
        /// The user a data-access export (`--user`) is restricted to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// A user's remembered display name.
    #[serde(rename_all = "camelCase")]
    Profile { user_id: String, name: String },
    /// A room, before its messages.
    #[serde(rename_all = "camelCase")]
    Room {
        room_id: String,
        /// The participants, lowest id first; the room's identity (ids with `-` can make
        /// two pairs share one `roomId`).
        pair: [String; 2],
        /// Id of the newest message ever stored in the room (it may be gone: retention).
        last_id: u64,
        last_sent_at: String,
        /// Unseen messages of each participant of `pair`, in the same order.
        unread: [u64; 2],
    },
    /// A message of the room on the last `room` line.
    #[serde(rename_all = "camelCase")]
    Message {
        room_id: String,
        pair: [String; 2],
        id: u64,
        user_id: String,
        message: String,
        sent_at: String,
        seen_at: Option<String>,
        client_message_id: Option<String>,
    },
}
