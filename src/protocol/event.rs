//! Client events and the shape check of their payloads.
//!
//! The shape check is the first of the protocol's checks (shape, who, room, content,
//! idempotency, rate limit): a payload that passes it is well typed and in range, so later
//! checks never meet a malformed value. Unknown fields are ignored, as the protocol asks,
//! so newer clients keep working.

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::ChatError;

/// The events a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEvent {
    Message,
    Read,
    Typing,
    Rooms,
    Messages,
    Received,
    Edit,
    Delete,
    Changes,
}

impl ClientEvent {
    /// The event for a wire name; `None` for unknown names, including server-to-client ones.
    pub fn from_name(name: &str) -> Option<ClientEvent> {
        Some(match name {
            "message" => ClientEvent::Message,
            "message:read" => ClientEvent::Read,
            "typing" => ClientEvent::Typing,
            "rooms" => ClientEvent::Rooms,
            "messages" => ClientEvent::Messages,
            "message:received" => ClientEvent::Received,
            "message:edit" => ClientEvent::Edit,
            "message:delete" => ClientEvent::Delete,
            "changes" => ClientEvent::Changes,
            _ => return None,
        })
    }

    /// Whether the event is answered from the store. Such a request must see every write
    /// its own connection made before it (read-your-writes), so a session answers the
    /// connection's earlier requests before it runs one: otherwise a `rooms` sent right
    /// after a `message:read` could be answered from before the read's commit.
    pub fn reads_store(self) -> bool {
        matches!(
            self,
            ClientEvent::Rooms | ClientEvent::Messages | ClientEvent::Changes
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            ClientEvent::Message => "message",
            ClientEvent::Read => "message:read",
            ClientEvent::Typing => "typing",
            ClientEvent::Rooms => "rooms",
            ClientEvent::Messages => "messages",
            ClientEvent::Received => "message:received",
            ClientEvent::Edit => "message:edit",
            ClientEvent::Delete => "message:delete",
            ClientEvent::Changes => "changes",
        }
    }

    /// What the payload must be (its first byte, and in words): a JSON array for
    /// `message:read` and `message:received`, a JSON object for every other event.
    fn payload_kind(self) -> (u8, &'static str) {
        match self {
            ClientEvent::Read | ClientEvent::Received => (b'[', "an array"),
            _ => (b'{', "an object"),
        }
    }
}

/// Most items one `message:read` may carry.
pub const MAX_READ_ITEMS: usize = 100;
/// Most rooms one `rooms` page may carry.
pub const MAX_ROOMS_LIMIT: usize = 100;
/// Most messages one `messages` page (and one `message:sent` snapshot) may carry.
pub const MAX_MESSAGES_LIMIT: usize = 50;

/// `message`: a new message from the connection's user.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessage {
    pub user_id: String,
    pub room_id: String,
    pub message: String,
    #[serde(default)]
    pub client_message_id: Option<String>,
}

/// One item of `message:read`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadItem {
    pub user_id: String,
    pub room_id: String,
    pub message_id: u64,
    pub seen_date: String,
}

/// `typing`: the user is typing in a room.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Typing {
    pub room_id: String,
}

/// `rooms`: one page of the inbox.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RoomsRequest {
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub cursor: Option<String>,
}

/// `messages`: one page of a room's history.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagesRequest {
    pub room_id: String,
    #[serde(default)]
    pub before: Option<u64>,
    /// Catch-up: the messages after this id, oldest first. Excludes `before`.
    #[serde(default)]
    pub after: Option<u64>,
    #[serde(default)]
    pub limit: Option<u64>,
}

/// One item of `message:received`: the reader has every message of the room up to
/// `messageId`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedItem {
    /// Optional; when given it must be the reader's own id, as in `message:read`.
    #[serde(default)]
    pub user_id: Option<String>,
    pub room_id: String,
    pub message_id: u64,
}

/// `message:edit`: new text for one of the user's messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EditMessage {
    pub room_id: String,
    pub message_id: u64,
    pub message: String,
}

/// `message:delete`: one of the user's messages to turn into a tombstone.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteMessage {
    pub room_id: String,
    pub message_id: u64,
}

/// `changes`: what changed in a room since a position (catch-up).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangesRequest {
    pub room_id: String,
    /// A `position` from an earlier `changes` reply; absent for "from the start".
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub limit: Option<u64>,
}

/// Parses a payload (raw JSON text) into `T`, mapping every serde failure to `bad_request`.
///
/// The payload's JSON type is checked first: serde maps a JSON array onto a struct by
/// position, so `["alice","alice-bob","hi"]` would otherwise pass as a `message`. Looking
/// at the first byte is exact (in JSON grammar only an object starts with `{`, only an
/// array with `[`) and costs nothing on the send path. Nested values need no such check:
/// fields are strings and numbers, which serde takes from nothing else, and the items of
/// `message:read` are read as JSON objects (maps), which refuse arrays.
pub fn parse<T: DeserializeOwned>(event: ClientEvent, json: &str) -> Result<T, ChatError> {
    let (first, kind) = event.payload_kind();
    if json.trim_start_matches(JSON_WHITESPACE).as_bytes().first() != Some(&first) {
        return Err(ChatError::bad_request(format!(
            "the `{}` payload must be {kind}",
            event.name()
        )));
    }
    serde_json::from_str(json)
        .map_err(|e| ChatError::bad_request(format!("invalid `{}` payload: {e}", event.name())))
}

/// The whitespace JSON allows around a value.
const JSON_WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];

impl SendMessage {
    /// Shape checks serde cannot express.
    pub fn check_shape(&self) -> Result<(), ChatError> {
        match &self.client_message_id {
            Some(id) if !is_valid_client_message_id(id) => Err(ChatError::bad_request(
                "clientMessageId must be 1 to 64 printable ASCII characters (0x21 to 0x7E)",
            )),
            _ => Ok(()),
        }
    }
}

impl RoomsRequest {
    /// The page size, checked against 1..=100; 50 when absent.
    pub fn checked_limit(&self) -> Result<usize, ChatError> {
        checked_limit(self.limit, MAX_ROOMS_LIMIT, 50)
    }
}

impl MessagesRequest {
    /// The page size, checked against 1..=50; 50 when absent.
    pub fn checked_limit(&self) -> Result<usize, ChatError> {
        checked_limit(self.limit, MAX_MESSAGES_LIMIT, MAX_MESSAGES_LIMIT)
    }

    /// `before`, checked to be at least 1 when present.
    pub fn checked_before(&self) -> Result<Option<u64>, ChatError> {
        match self.before {
            Some(0) => Err(ChatError::bad_request(
                "before must be a message id of at least 1",
            )),
            other => Ok(other),
        }
    }

    /// `after`, which cannot be combined with `before`.
    pub fn checked_after(&self) -> Result<Option<u64>, ChatError> {
        match (self.after, self.before) {
            (Some(_), Some(_)) => Err(ChatError::bad_request(
                "before and after cannot be used together",
            )),
            (after, _) => Ok(after),
        }
    }
}

impl ChangesRequest {
    /// The page size, checked against 1..=50; 50 when absent.
    pub fn checked_limit(&self) -> Result<usize, ChatError> {
        checked_limit(self.limit, MAX_MESSAGES_LIMIT, MAX_MESSAGES_LIMIT)
    }

    /// The room's change counter `since` names; 0 when absent.
    pub fn checked_since(&self) -> Result<u64, ChatError> {
        match &self.since {
            None => Ok(0),
            Some(position) => parse_position(position).ok_or_else(|| {
                ChatError::bad_request(format!(
                    "since {position:?} is not a position from a changes reply"
                ))
            }),
        }
    }
}

/// A catch-up position as it travels: opaque to clients, so that its form can change.
/// Today it is the room's change counter in decimal.
pub fn format_position(change: u64) -> String {
    change.to_string()
}

fn parse_position(position: &str) -> Option<u64> {
    if position.is_empty() || !position.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    position.parse().ok()
}

fn checked_limit(limit: Option<u64>, max: usize, default: usize) -> Result<usize, ChatError> {
    match limit {
        None => Ok(default),
        Some(n) if n >= 1 && n <= max as u64 => Ok(n as usize),
        Some(n) => Err(ChatError::bad_request(format!(
            "limit must be between 1 and {max}, got {n}"
        ))),
    }
}

/// 1 to 64 characters from 0x21 to 0x7E, as PROTOCOL.md section 8 settles.
pub fn is_valid_client_message_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    #[test]
    fn message_payload_shapes() {
        let ok: SendMessage = parse(
            ClientEvent::Message,
            r#"{"userId":"a","roomId":"a-b","message":"hi","extra":1}"#,
        )
        .unwrap();
        assert_eq!(ok.client_message_id, None);
        let null_id: SendMessage = parse(
            ClientEvent::Message,
            r#"{"userId":"a","roomId":"a-b","message":"hi","clientMessageId":null}"#,
        )
        .unwrap();
        assert_eq!(null_id.client_message_id, None);
        for bad in [
            r#"{"userId":"a","roomId":"a-b"}"#,
            r#"{"userId":"a","roomId":"a-b","message":5}"#,
            r#"{"userId":1,"roomId":"a-b","message":"x"}"#,
            r#"{"userId":"a","roomId":"a-b","message":"x","clientMessageId":7}"#,
            r#"[]"#,
            r#"null"#,
        ] {
            let err = parse::<SendMessage>(ClientEvent::Message, bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{bad}");
        }
    }

    #[test]
    fn payloads_of_another_json_type_are_refused_even_when_serde_would_map_them() {
        // serde fills a struct from an array by position: each of these would parse.
        let refused = |e: ChatError| e.code == ErrorCode::BadRequest;
        assert!(refused(
            parse::<SendMessage>(ClientEvent::Message, r#"["a","a-b","hi"]"#).unwrap_err()
        ));
        assert!(refused(
            parse::<MessagesRequest>(ClientEvent::Messages, r#" ["a-b"]"#).unwrap_err()
        ));
        assert!(refused(
            parse::<Typing>(ClientEvent::Typing, r#"["a-b"]"#).unwrap_err()
        ));
        assert!(refused(
            parse::<RoomsRequest>(ClientEvent::Rooms, r#"[10]"#).unwrap_err()
        ));
        for bad in [r#""a-b""#, "5", "true", "null"] {
            assert!(refused(
                parse::<Typing>(ClientEvent::Typing, bad).unwrap_err()
            ));
        }
        assert!(refused(
            parse::<Vec<serde_json::Value>>(ClientEvent::Read, r#"{"0":{}}"#).unwrap_err()
        ));
        // JSON whitespace before the value is fine.
        let ok: Typing = parse(ClientEvent::Typing, "\r\n\t {\"roomId\":\"a-b\"}").unwrap();
        assert_eq!(ok.room_id, "a-b");
    }

    #[test]
    fn client_message_id_alphabet() {
        assert!(is_valid_client_message_id("b6f3-~!"));
        assert!(is_valid_client_message_id(&"x".repeat(64)));
        assert!(!is_valid_client_message_id(&"x".repeat(65)));
        assert!(!is_valid_client_message_id(""));
        assert!(!is_valid_client_message_id("a b"));
        assert!(!is_valid_client_message_id("é"));
    }

    #[test]
    fn limits_and_before() {
        let req: MessagesRequest =
            parse(ClientEvent::Messages, r#"{"roomId":"a-b","limit":null}"#).unwrap();
        assert_eq!(req.checked_limit().unwrap(), 50);
        for bad in [
            r#"{"roomId":"a-b","limit":0}"#,
            r#"{"roomId":"a-b","limit":51}"#,
            r#"{"roomId":"a-b","before":0}"#,
        ] {
            let req: MessagesRequest = parse(ClientEvent::Messages, bad).unwrap();
            assert!(req.checked_limit().is_err() || req.checked_before().is_err());
        }
        for bad in [
            r#"{"roomId":"a-b","limit":-1}"#,
            r#"{"roomId":"a-b","limit":"5"}"#,
            r#"{"roomId":"a-b","before":1.5}"#,
        ] {
            assert!(parse::<MessagesRequest>(ClientEvent::Messages, bad).is_err());
        }
        let rooms: RoomsRequest = parse(ClientEvent::Rooms, r#"{"limit":100}"#).unwrap();
        assert_eq!(rooms.checked_limit().unwrap(), 100);
    }

    #[test]
    fn catch_up_requests_check_their_positions() {
        let both: MessagesRequest = parse(
            ClientEvent::Messages,
            r#"{"roomId":"a-b","after":1,"before":5}"#,
        )
        .unwrap();
        assert!(both.checked_after().is_err());
        let after: MessagesRequest =
            parse(ClientEvent::Messages, r#"{"roomId":"a-b","after":0}"#).unwrap();
        assert_eq!(after.checked_after().unwrap(), Some(0));
        let changes = |since: &str| {
            parse::<ChangesRequest>(
                ClientEvent::Changes,
                &format!(r#"{{"roomId":"a-b","since":{since}}}"#),
            )
            .unwrap()
            .checked_since()
        };
        assert_eq!(changes("null").unwrap(), 0);
        assert_eq!(changes(&format!("{:?}", format_position(42))).unwrap(), 42);
        for bad in [
            r#""""#,
            r#""-1""#,
            r#""1e3""#,
            r#"" 7""#,
            r#""99999999999999999999999""#,
        ] {
            assert!(changes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_event_names_are_unknown() {
        for name in [
            "message:sent",
            "message:seen",
            "message:delivered",
            "message:updated",
            "ack",
            "error",
            "",
        ] {
            assert_eq!(ClientEvent::from_name(name), None);
        }
    }
}
