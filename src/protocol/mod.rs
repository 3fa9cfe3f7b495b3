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
pub mod server_event;
pub mod time;

pub use error::{ChatError, ErrorCode};

use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::model::ChatMessage;

/// A message as the protocol spells it: `sentAt` / `seenAt` as RFC 3339 strings.
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
