//! What the server pushes to clients unasked: `message:sent`, `message:seen`,
//! `message:delivered`, `message:updated`, `typing`, and to a blocker's own connections
//! `block` / `unblock` when their block list changed.
//!
//! One type for every pushed event, with its wire name and JSON payload written here
//! once; both dialects frame the same rendering (see `crate::fanout::Outbound`). The
//! variants hold data rather than JSON text, so that an event can be carried by a broker
//! and rebuilt on the other side. The one exception is a room's latest messages, which
//! stay pre-serialized: the latest-50 cache keeps each message as JSON so that a send
//! costs a concatenation, not fifty serializations.

use serde::Serialize;

use crate::model::{ChatMessage, RoomKey, SessionUser};

/// One event the server pushes to a user's connections.
#[derive(Debug, Clone)]
pub enum ServerEvent {
    /// `message:sent`: a room's latest messages after a send (to both members), or as
    /// they are after a retry (to the sender only).
    MessageSent {
        /// The room id as the sender names it.
        room_id: String,
        /// The sender.
        user: SessionUser,
        /// The room's latest messages, newest first, as one JSON array text.
        messages: String,
        /// The new message this event announces; `None` for a retry's, which stores
        /// nothing new. A broker between processes sends this instead of `messages`.
        announces: Option<Announced>,
    },
    /// `message:seen`: to a sender, which of their messages a reader has now seen.
    MessageSeen(Vec<SeenReceipt>),
    /// `message:delivered`: to a sender, which of their messages a reader's client now has.
    MessageDelivered(Vec<DeliveredReceipt>),
    /// `message:updated`: to both members, a message as it is after an edit or a delete.
    MessageUpdated {
        /// The room id as the editor names it.
        room_id: String,
        message: ChatMessage,
    },
    /// `typing`: to the partner, that the user is typing in the room.
    Typing {
        /// The room id as the typist names it.
        room_id: String,
        user_id: String,
    },
    /// `block`: to the blocker's connections, that they now block `user_id`, so every tab
    /// shows it (the blocked user is never told).
    Blocked {
        user_id: String,
        /// RFC 3339.
        blocked_at: String,
    },
    /// `unblock`: to the blocker's connections, that they no longer block `user_id`.
    Unblocked { user_id: String },
}

/// The message a `message:sent` announces, by its place in its room: ids are gap-free
/// per room, so a node that receives these can tell when one went missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    pub room: RoomKey,
    pub message_id: u64,
}

/// One message that became seen, as `message:seen` lists it.
// Fields in the order the payload has always had on the wire.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeenReceipt {
    pub message_id: u64,
    /// The room id as the reader names it.
    pub room_id: String,
    /// RFC 3339, as every protocol timestamp.
    pub seen_at: String,
    /// The reader.
    pub user_id: String,
}

/// One message that became delivered, as `message:delivered` lists it (the shape of
/// [`SeenReceipt`]).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveredReceipt {
    /// The reader.
    pub user_id: String,
    /// The room id as the reader names it.
    pub room_id: String,
    pub message_id: u64,
    /// RFC 3339, as every protocol timestamp.
    pub delivered_at: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UpdatedPayload<'a> {
    room_id: &'a str,
    message: &'a ChatMessage,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BlockPayload<'a> {
    user_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocked_at: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TypingPayload<'a> {
    room_id: &'a str,
    user_id: &'a str,
}

impl ServerEvent {
    /// The event's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            ServerEvent::MessageSent { .. } => "message:sent",
            ServerEvent::MessageSeen(_) => "message:seen",
            ServerEvent::MessageDelivered(_) => "message:delivered",
            ServerEvent::MessageUpdated { .. } => "message:updated",
            ServerEvent::Typing { .. } => "typing",
            ServerEvent::Blocked { .. } => "block",
            ServerEvent::Unblocked { .. } => "unblock",
        }
    }

    /// The payload as JSON text between `head` and `tail`, in one buffer of exactly their
    /// size: rendered once for all recipients and both dialects, straight into the plain
    /// frame (see `crate::fanout::Outbound`), so that a `message:sent`'s fifty messages are
    /// copied once, not into a payload and then again into the frame.
    pub fn render_between(&self, head: &str, tail: &str) -> String {
        let json = match self {
            ServerEvent::MessageSent {
                room_id,
                user,
                messages,
                ..
            } => {
                let room_id = serde_json::to_string(room_id).expect("strings serialize");
                let user = serde_json::to_string(user).expect("users serialize");
                return concat_exact(&[
                    head,
                    "{\"roomId\":",
                    &room_id,
                    ",\"user\":",
                    &user,
                    ",\"messages\":",
                    messages,
                    "}",
                    tail,
                ]);
            }
            ServerEvent::MessageSeen(receipts) => to_json(receipts),
            ServerEvent::MessageDelivered(receipts) => to_json(receipts),
            ServerEvent::MessageUpdated { room_id, message } => {
                to_json(&UpdatedPayload { room_id, message })
            }
            ServerEvent::Typing { room_id, user_id } => {
                to_json(&TypingPayload { room_id, user_id })
            }
            ServerEvent::Blocked {
                user_id,
                blocked_at,
            } => to_json(&BlockPayload {
                user_id,
                blocked_at: Some(blocked_at),
            }),
            ServerEvent::Unblocked { user_id } => to_json(&BlockPayload {
                user_id,
                blocked_at: None,
            }),
        };
        concat_exact(&[head, &json, tail])
    }
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("event payloads serialize")
}

/// `parts` joined, in a buffer allocated once at exactly their length.
fn concat_exact(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|part| part.len()).sum());
    for part in parts {
        out.push_str(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    impl ServerEvent {
        fn payload(&self) -> String {
            self.render_between("", "")
        }
    }

    fn parsed(event: &ServerEvent) -> Value {
        serde_json::from_str(&event.payload()).expect("payloads are JSON")
    }

    #[test]
    fn message_sent_wraps_the_pre_serialized_messages() {
        let event = ServerEvent::MessageSent {
            room_id: "b\"".into(),
            user: SessionUser {
                id: "a".into(),
                name: "Ann \"A\"".into(),
            },
            messages: r#"[{"id":2},{"id":1}]"#.into(),
            announces: None,
        };
        assert_eq!(event.name(), "message:sent");
        assert_eq!(
            event.payload(),
            r#"{"roomId":"b\"","user":{"id":"a","name":"Ann \"A\""},"messages":[{"id":2},{"id":1}]}"#
        );
    }

    #[test]
    fn rendered_between_head_and_tail_in_one_buffer_of_exactly_their_size() {
        let events = [
            ServerEvent::MessageSent {
                room_id: "b".into(),
                user: SessionUser {
                    id: "a".into(),
                    name: "Ann".into(),
                },
                messages: format!("[{}]", r#"{"id":1}"#.repeat(100)),
                announces: None,
            },
            ServerEvent::Typing {
                room_id: "b".into(),
                user_id: "a".into(),
            },
        ];
        for event in events {
            let framed = event.render_between("<head>", "<tail>");
            let payload = event.render_between("", "");
            assert_eq!(framed, format!("<head>{payload}<tail>"));
            // No spare capacity: the frame becomes a shared buffer as it is, and what a
            // queued event counts is what it holds.
            assert_eq!(framed.capacity(), framed.len());
        }
    }

    #[test]
    fn message_seen_lists_its_receipts() {
        let event = ServerEvent::MessageSeen(vec![SeenReceipt {
            message_id: 7,
            room_id: "a".into(),
            seen_at: "2026-01-02T03:04:05.006Z".into(),
            user_id: "b".into(),
        }]);
        assert_eq!(event.name(), "message:seen");
        assert_eq!(
            parsed(&event),
            json!([{ "userId": "b", "roomId": "a", "messageId": 7, "seenAt": "2026-01-02T03:04:05.006Z" }])
        );
    }

    #[test]
    fn delivered_and_updated_payloads() {
        let event = ServerEvent::MessageDelivered(vec![DeliveredReceipt {
            user_id: "b".into(),
            room_id: "a-b".into(),
            message_id: 7,
            delivered_at: "2026-01-02T03:04:05.006Z".into(),
        }]);
        assert_eq!(event.name(), "message:delivered");
        assert_eq!(
            parsed(&event),
            json!([{ "userId": "b", "roomId": "a-b", "messageId": 7, "deliveredAt": "2026-01-02T03:04:05.006Z" }])
        );
        let mut message = ChatMessage {
            id: 2,
            user_id: "a".into(),
            message: "gone".into(),
            ..ChatMessage::default()
        };
        message.erase(5);
        let event = ServerEvent::MessageUpdated {
            room_id: "a-b".into(),
            message,
        };
        assert_eq!(event.name(), "message:updated");
        let payload = parsed(&event);
        assert_eq!(payload["roomId"], "a-b");
        assert_eq!(
            (
                &payload["message"]["id"],
                &payload["message"]["message"],
                &payload["message"]["deleted"]
            ),
            (&json!(2), &json!(""), &json!(true))
        );
    }

    #[test]
    fn typing_names_room_and_typist() {
        let event = ServerEvent::Typing {
            room_id: "b".into(),
            user_id: "a".into(),
        };
        assert_eq!(event.name(), "typing");
        assert_eq!(event.payload(), r#"{"roomId":"b","userId":"a"}"#);
    }

    #[test]
    fn block_and_unblock_name_the_user() {
        let blocked = ServerEvent::Blocked {
            user_id: "a".into(),
            blocked_at: "2026-01-02T03:04:05.006Z".into(),
        };
        assert_eq!(blocked.name(), "block");
        assert_eq!(
            blocked.payload(),
            r#"{"userId":"a","blockedAt":"2026-01-02T03:04:05.006Z"}"#
        );
        let unblocked = ServerEvent::Unblocked {
            user_id: "a".into(),
        };
        assert_eq!(unblocked.name(), "unblock");
        assert_eq!(unblocked.payload(), r#"{"userId":"a"}"#);
    }
}
