//! The wire contract of PROTOCOL.md, independent of any dialect or transport.
//!
//! Everything a client can send is parsed and shape-checked here ([`event`]), room ids are
//! resolved relative to the caller ([`room`]), timestamps are formatted and parsed exactly
//! as the protocol spells them ([`time`]), and every refusal is a typed [`ChatError`]
//! ([`error`]) that the dialects turn into `ack` replies, `error` events or HTTP statuses.

pub mod cursor;
pub mod error;
pub mod event;
pub mod room;
pub mod time;

pub use error::{ChatError, ErrorCode};

use serde::ser::{Serialize, SerializeStruct, Serializer};

/// Who is on the other end of a connection: the token's `sub` and display name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionUser {
    /// The user id (the token's `sub`).
    pub id: String,
    /// The display name: the token's `name` claim, or the id when it has none.
    pub name: String,
}

impl SessionUser {
    /// A user known only by id (never connected, or no stored profile).
    pub fn unnamed(id: &str) -> SessionUser {
        SessionUser {
            id: id.to_owned(),
            name: id.to_owned(),
        }
    }
}

/// One stored message. Times are kept as Unix milliseconds and formatted only on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Per-room id: 1, 2, 3, … without gaps.
    pub id: u64,
    /// The sender's user id.
    pub user_id: String,
    /// The text as sent.
    pub message: String,
    /// When the server accepted it; never decreases within a room.
    pub sent_ms: i64,
    /// When the partner first saw it.
    pub seen_ms: Option<i64>,
    /// The sender's own key for the message, echoed back for optimistic UIs.
    pub client_message_id: Option<String>,
}

impl Serialize for ChatMessage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("ChatMessage", 6)?;
        s.serialize_field("id", &self.id)?;
        s.serialize_field("userId", &self.user_id)?;
        s.serialize_field("message", &self.message)?;
        s.serialize_field("sentAt", &time::format_millis(self.sent_ms))?;
        s.serialize_field("seenAt", &self.seen_ms.map(time::format_millis))?;
        s.serialize_field("clientMessageId", &self.client_message_id)?;
        s.end()
    }
}
