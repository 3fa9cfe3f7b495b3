//! The domain types that the wire ([`crate::protocol`]) and the store ([`crate::store`])
//! both speak: who a user is, what a message is, which pair a room belongs to, and the
//! shapes of an inbox or history page.
//!
//! This module is a leaf: it imports nothing from the crate, so `protocol` and `store`
//! can both depend on it without depending on each other. How these types look on the wire
//! (`sentAt` formatting, field names) is the protocol's business and lives there.

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// When the partner's client first acknowledged having it (`message:received`, or a
    /// read, which implies it).
    pub delivered_ms: Option<i64>,
    /// When the sender last changed the text.
    pub edited_ms: Option<i64>,
    /// When the sender deleted it; the message is then a tombstone ([`ChatMessage::erase`]).
    pub deleted_ms: Option<i64>,
    /// The room's change counter when this message last changed (sent, delivered, seen,
    /// edited, deleted): its place in a `changes` listing. Not on the wire.
    pub change: u64,
}

impl ChatMessage {
    /// Turns the message into a tombstone: the text goes, the id stays (ids are gap-free),
    /// and so do the sender, `sentAt`, the marks and the `clientMessageId` (a retry of the
    /// original send must still find it and not store the text again). The one form for
    /// every removal, whoever asks for it.
    pub fn erase(&mut self, now_ms: i64) {
        self.message.clear();
        self.deleted_ms = Some(now_ms.max(self.sent_ms));
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted_ms.is_some()
    }
}

/// "<lowest>-<highest>", ids compared bytewise as strings (so "10" < "9"). Self room "a-a".
pub fn canonical_room_id(a: &str, b: &str) -> String {
    // `str` ordering is bytewise, which is what JavaScript's `<` does on this ASCII alphabet.
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    let mut id = String::with_capacity(low.len() + 1 + high.len());
    id.push_str(low);
    id.push('-');
    id.push_str(high);
    id
}

/// The pair of participants of a room, lowest id first: the room's identity in the store.
///
/// Rooms are kept under their pair, never under the id string alone, because ids with `-`
/// can make two pairs share one id string (PROTOCOL.md section 1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoomKey {
    pub low: String,
    pub high: String,
}

impl RoomKey {
    pub fn new(a: &str, b: &str) -> RoomKey {
        let (low, high) = if a.as_bytes() <= b.as_bytes() {
            (a, b)
        } else {
            (b, a)
        };
        RoomKey {
            low: low.to_owned(),
            high: high.to_owned(),
        }
    }

    /// The id string that travels on the wire.
    pub fn id(&self) -> String {
        canonical_room_id(&self.low, &self.high)
    }

    /// The other participant (the user themself in a self room).
    pub fn partner_of<'a>(&'a self, user: &str) -> &'a str {
        if self.low == user {
            &self.high
        } else {
            &self.low
        }
    }

    pub fn is_self_room(&self) -> bool {
        self.low == self.high
    }
}

/// One page of a room's history, as `viewer` sees it.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The other participant, with their remembered name.
    pub partner: SessionUser,
    /// Newest first.
    pub messages: Vec<ChatMessage>,
}

/// What changed in a room since a position of its change counter, as `viewer` sees it.
#[derive(Debug, Clone)]
pub struct ChangesPage {
    /// The other participant, with their remembered name.
    pub partner: SessionUser,
    /// Each changed message as it is now, in the order of its latest change.
    pub messages: Vec<ChatMessage>,
    /// The position to ask from next: the last listed change, or the room's counter once
    /// nothing is left.
    pub position: u64,
    /// Whether more changes follow `position`.
    pub more: bool,
}

/// One row of a user's inbox.
#[derive(Debug, Clone)]
pub struct InboxRoom {
    /// The store's number for the room: with `updated_ms` and `room_id`, the row's position.
    pub room_num: u64,
    pub room_id: String,
    /// The other participant, with their remembered name.
    pub partner: SessionUser,
    pub last_message: ChatMessage,
    pub unread: u64,
    pub updated_ms: i64,
}

impl InboxRoom {
    /// The position just after this row, for the next page.
    pub fn cursor(&self) -> InboxCursor {
        InboxCursor {
            updated_ms: self.updated_ms,
            room_id: self.room_id.clone(),
            room_num: self.room_num,
        }
    }
}

/// Position in an inbox listing: the sort key of the last row returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxCursor {
    pub updated_ms: i64,
    pub room_id: String,
    pub room_num: u64,
}
