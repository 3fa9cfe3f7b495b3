//! Offline operations on a data directory: [`export`] a store as JSON lines, [`import`]
//! such a dump into a new store.
//!
//! A dump is one JSON object per line, each with a `type`: a `header`, then `profile`s,
//! `block`s and `erased` users, then each `room` followed by its `message`s in id order.
//! It carries everything the store holds that is not derived: a room's counters, unread
//! counts and delivered marks, each message's times, receipt, `clientMessageId` and
//! lifecycle (delivered, edited, deleted, and its place in the room's change log), who
//! blocks whom, and when each erased user was erased (so their old tokens stay refused).
//! The inbox, the idempotency keys and the change log are rebuilt from those, so a dump
//! stays readable if the store's layout changes. Webhook outbox rows are not carried: they
//! are deliveries in flight to this server's endpoints, not data. Both directions stream,
//! one line at a time, so a store of any size moves in constant memory.
//!
//! Version 2 added the lifecycle fields and the `block` and `erased` lines; version 1
//! dumps still import, with those unset. Every new field is omitted when unset, so an older
//! chat-server refuses a version-2 dump by its header rather than lose what it carries.

pub mod export;
pub mod import;

use serde::{Deserialize, Serialize};

/// The dump format this binary writes and reads.
pub const DUMP_VERSION: u64 = 2;
/// The oldest dump version this binary still imports.
pub const OLDEST_DUMP_VERSION: u64 = 1;
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
    /// `blocker` blocks `blocked`, since `since`.
    #[serde(rename_all = "camelCase")]
    Block {
        blocker: String,
        blocked: String,
        since: String,
    },
    /// A user was erased at `erasedAt`: tokens issued before then are refused.
    #[serde(rename_all = "camelCase")]
    Erased { user_id: String, erased_at: String },
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
        /// The room's change counter (the last change-log position handed out).
        #[serde(default, skip_serializing_if = "is_zero")]
        change: u64,
        /// The highest id each participant of `pair` acknowledged receiving.
        #[serde(default, skip_serializing_if = "both_zero")]
        delivered: [u64; 2],
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
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delivered_at: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        edited_at: Option<String>,
        /// Set on a tombstone, whose `message` is empty.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deleted_at: Option<String>,
        /// The room's change counter when the message last changed (its change-log row);
        /// 0 when it has not changed since the store's format 2.
        #[serde(default, skip_serializing_if = "is_zero")]
        change: u64,
    },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn both_zero(pair: &[u64; 2]) -> bool {
    *pair == [0, 0]
}
