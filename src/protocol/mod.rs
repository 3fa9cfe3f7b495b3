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

/// A message as the protocol spells it: times as RFC 3339 strings. The lifecycle fields
/// (`deliveredAt`, `editedAt`, `deletedAt`, `deleted`) are left out while unset, so a
/// message that never changed is exactly what clients of the original protocol read, and
/// the latest-50 snapshots stay as small as before.
impl Serialize for ChatMessage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("ChatMessage", 10)?;
        s.serialize_field("id", &self.id)?;
        s.serialize_field("userId", &self.user_id)?;
        s.serialize_field("message", &self.message)?;
        s.serialize_field("sentAt", &time::format_millis(self.sent_ms))?;
        s.serialize_field("seenAt", &self.seen_ms.map(time::format_millis))?;
        s.serialize_field("clientMessageId", &self.client_message_id)?;
        if let Some(ms) = self.delivered_ms {
            s.serialize_field("deliveredAt", &time::format_millis(ms))?;
        }
        if let Some(ms) = self.edited_ms {
            s.serialize_field("editedAt", &time::format_millis(ms))?;
        }
        if let Some(ms) = self.deleted_ms {
            s.serialize_field("deleted", &true)?;
            s.serialize_field("deletedAt", &time::format_millis(ms))?;
        }
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lifecycle_fields_appear_only_once_set() {
        let mut m = ChatMessage {
            id: 3,
            user_id: "a".into(),
            message: "hi".into(),
            sent_ms: 1_000,
            client_message_id: Some("c1".into()),
            ..ChatMessage::default()
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({ "id": 3, "userId": "a", "message": "hi", "sentAt": "1970-01-01T00:00:01.000Z",
                    "seenAt": null, "clientMessageId": "c1" })
        );
        m.delivered_ms = Some(2_000);
        m.edited_ms = Some(3_000);
        m.erase(4_000);
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({ "id": 3, "userId": "a", "message": "", "sentAt": "1970-01-01T00:00:01.000Z",
                    "seenAt": null, "clientMessageId": "c1",
                    "deliveredAt": "1970-01-01T00:00:02.000Z", "editedAt": "1970-01-01T00:00:03.000Z",
                    "deleted": true, "deletedAt": "1970-01-01T00:00:04.000Z" })
        );
    }
}
