//! The values stored on disk, encoded with `postcard`.
//!
//! postcard is compact (varints, no field names) and stable across releases, which matters
//! for a file that outlives the binary. It is not self-describing, so a record grows only
//! by appending: format 1 wrote a message or room as one struct; format 2 writes the same
//! struct followed by an extension ([`MessageLifecycle`], [`RoomLifecycle`]). A decoder
//! takes the format-1 part with `postcard::take_from_bytes` and the extension from what is
//! left, which is nothing in a record written by format 1: such a record reads with every
//! extension field unset, so an old store needs no migration. Anything that changes the
//! meaning of stored bytes bumps `FORMAT_VERSION`.

use serde::{Deserialize, Serialize};

use crate::model::ChatMessage;
use crate::store::{Result, StoreError};

/// A room: its pair, its counters, and its unread counts (the format-1 part).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomRecord {
    /// Lowest participant id.
    pub low: String,
    /// Highest participant id (equal to `low` in a self room).
    pub high: String,
    /// Id of the newest message; the next message gets `last_id + 1`.
    pub last_id: u64,
    /// `sentAt` of the newest message, so the next one never goes backwards.
    pub last_sent_ms: i64,
    /// Messages from `high` that `low` has not seen.
    pub unread_low: u64,
    /// Messages from `low` that `high` has not seen.
    pub unread_high: u64,
    /// Format 2's additions, stored after the fields above.
    #[serde(skip)]
    pub lifecycle: RoomLifecycle,
}

/// What format 2 appends to a room record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoomLifecycle {
    /// The room's change counter: bumped by every change to one of its messages.
    pub change: u64,
    /// The highest message id `low` has acknowledged receiving (`message:received`).
    pub delivered_low: u64,
    /// The same for `high`.
    pub delivered_high: u64,
}

impl RoomRecord {
    pub fn partner_of(&self, user: &str) -> &str {
        if self.low == user {
            &self.high
        } else {
            &self.low
        }
    }

    /// Messages from the partner that `user` has not seen (0 in a self room).
    pub fn unread_of(&self, user: &str) -> u64 {
        if self.low == self.high {
            0
        } else if self.low == user {
            self.unread_low
        } else {
            self.unread_high
        }
    }

    /// The unread counter of `user`, who is a participant of this room.
    pub fn unread_mut(&mut self, user: &str) -> &mut u64 {
        if self.low == user {
            &mut self.unread_low
        } else {
            &mut self.unread_high
        }
    }

    /// The delivered high-water mark of `user`, who is a participant of this room.
    pub fn delivered_of(&self, user: &str) -> u64 {
        if self.low == user {
            self.lifecycle.delivered_low
        } else {
            self.lifecycle.delivered_high
        }
    }

    /// The delivered high-water mark of `user`, who is a participant of this room.
    pub fn delivered_mut(&mut self, user: &str) -> &mut u64 {
        if self.low == user {
            &mut self.lifecycle.delivered_low
        } else {
            &mut self.lifecycle.delivered_high
        }
    }

    /// The next value of the room's change counter, taken.
    pub fn next_change(&mut self) -> u64 {
        self.lifecycle.change += 1;
        self.lifecycle.change
    }
}

/// A message; its room and id are the key (the format-1 part).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageRecord {
    pub user_id: String,
    pub message: String,
    pub sent_ms: i64,
    pub seen_ms: Option<i64>,
    pub client_message_id: Option<String>,
}

/// [`MessageRecord`] as it is written: the same fields in the same order, so the same
/// bytes, borrowed from the message.
#[derive(Serialize)]
struct MessageRecordRef<'a> {
    user_id: &'a str,
    message: &'a str,
    sent_ms: i64,
    seen_ms: Option<i64>,
    client_message_id: Option<&'a str>,
}

/// What format 2 appends to a message record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MessageLifecycle {
    pub delivered_ms: Option<i64>,
    pub edited_ms: Option<i64>,
    pub deleted_ms: Option<i64>,
    /// The room's change counter when the message last changed; 0 when it has not
    /// changed since format 2.
    pub change: u64,
}

pub fn encode_message(m: &ChatMessage) -> Vec<u8> {
    // Borrowed, so that writing a message copies its strings once, into the record.
    let head = MessageRecordRef {
        user_id: &m.user_id,
        message: &m.message,
        sent_ms: m.sent_ms,
        seen_ms: m.seen_ms,
        client_message_id: m.client_message_id.as_deref(),
    };
    let tail = MessageLifecycle {
        delivered_ms: m.delivered_ms,
        edited_ms: m.edited_ms,
        deleted_ms: m.deleted_ms,
        change: m.change,
    };
    let bytes = Vec::with_capacity(m.message.len() + m.user_id.len() + 48);
    let bytes = postcard::to_extend(&head, bytes).expect("postcard encodes plain records");
    postcard::to_extend(&tail, bytes).expect("postcard encodes plain records")
}

pub fn encode_room(room: &RoomRecord) -> Vec<u8> {
    let mut bytes = encode(room);
    bytes.extend_from_slice(&encode(&room.lifecycle));
    bytes
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("postcard encodes plain records infallibly")
}

/// A format-1 head and the extension after it; an absent extension reads as unset.
fn decode_extended<'a, H, T>(bytes: &'a [u8]) -> postcard::Result<(H, T)>
where
    H: Deserialize<'a>,
    T: Deserialize<'a> + Default,
{
    let (head, rest) = postcard::take_from_bytes::<H>(bytes)?;
    let tail = if rest.is_empty() {
        T::default()
    } else {
        // What a later format may append after this extension is left for it to read.
        postcard::take_from_bytes::<T>(rest)?.0
    };
    Ok((head, tail))
}

pub fn decode_room(bytes: &[u8]) -> Result<RoomRecord> {
    decode_extended::<RoomRecord, RoomLifecycle>(bytes)
        .map(|(mut room, lifecycle)| {
            room.lifecycle = lifecycle;
            room
        })
        .map_err(|e| StoreError::Corrupt(format!("room record: {e}")))
}

pub fn decode_message(id: u64, bytes: &[u8]) -> Result<ChatMessage> {
    decode_extended::<MessageRecord, MessageLifecycle>(bytes)
        .map(|(head, tail)| ChatMessage {
            id,
            user_id: head.user_id,
            message: head.message,
            sent_ms: head.sent_ms,
            seen_ms: head.seen_ms,
            client_message_id: head.client_message_id,
            delivered_ms: tail.delivered_ms,
            edited_ms: tail.edited_ms,
            deleted_ms: tail.deleted_ms,
            change: tail.change,
        })
        .map_err(|e| StoreError::Corrupt(format!("message {id}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_format_1_message_reads_with_its_lifecycle_unset() {
        let v1 = encode(&MessageRecord {
            user_id: "alice".into(),
            message: "hi".into(),
            sent_ms: 1_000,
            seen_ms: Some(2_000),
            client_message_id: Some("c".into()),
        });
        let m = decode_message(7, &v1).unwrap();
        assert_eq!(
            m,
            ChatMessage {
                id: 7,
                user_id: "alice".into(),
                message: "hi".into(),
                sent_ms: 1_000,
                seen_ms: Some(2_000),
                client_message_id: Some("c".into()),
                ..ChatMessage::default()
            }
        );
    }

    #[test]
    fn a_format_2_message_round_trips_and_its_head_is_format_1() {
        let mut m = ChatMessage {
            id: 4,
            user_id: "bob".into(),
            message: "x".into(),
            sent_ms: 10,
            delivered_ms: Some(11),
            edited_ms: Some(12),
            change: 9,
            ..ChatMessage::default()
        };
        m.erase(13);
        let bytes = encode_message(&m);
        assert_eq!(decode_message(4, &bytes).unwrap(), m);
        // An older binary reads the head alone: it must find the format-1 fields there.
        let head: MessageRecord = postcard::from_bytes(&bytes).unwrap();
        assert_eq!((head.user_id.as_str(), head.sent_ms), ("bob", 10));
    }

    #[test]
    fn a_message_is_written_as_the_format_1_record_then_its_extension() {
        let m = ChatMessage {
            id: 3,
            user_id: "carol".into(),
            message: "hello".into(),
            sent_ms: 1 << 41,
            seen_ms: Some(7),
            client_message_id: Some("k".into()),
            delivered_ms: Some(5),
            change: 2,
            ..ChatMessage::default()
        };
        let head = MessageRecord {
            user_id: m.user_id.clone(),
            message: m.message.clone(),
            sent_ms: m.sent_ms,
            seen_ms: m.seen_ms,
            client_message_id: m.client_message_id.clone(),
        };
        let tail = MessageLifecycle {
            delivered_ms: m.delivered_ms,
            edited_ms: None,
            deleted_ms: None,
            change: m.change,
        };
        let mut expected = encode(&head);
        expected.extend_from_slice(&encode(&tail));
        assert_eq!(encode_message(&m), expected);
    }

    #[test]
    fn a_format_1_room_reads_with_its_lifecycle_unset_and_round_trips() {
        let mut room = RoomRecord {
            low: "a".into(),
            high: "b".into(),
            last_id: 3,
            last_sent_ms: 5,
            unread_low: 1,
            unread_high: 2,
            lifecycle: RoomLifecycle::default(),
        };
        let decoded = decode_room(&encode(&room)).unwrap();
        assert_eq!((decoded.last_id, decoded.lifecycle.change), (3, 0));
        room.next_change();
        *room.delivered_mut("b") = 3;
        let decoded = decode_room(&encode_room(&room)).unwrap();
        assert_eq!(
            (decoded.lifecycle.change, decoded.lifecycle.delivered_high),
            (1, 3)
        );
    }

    #[test]
    fn a_truncated_extension_is_corrupt() {
        let m = ChatMessage {
            id: 1,
            user_id: "a".into(),
            message: "x".into(),
            edited_ms: Some(1 << 40),
            ..ChatMessage::default()
        };
        let bytes = encode_message(&m);
        assert!(matches!(
            decode_message(1, &bytes[..bytes.len() - 2]),
            Err(StoreError::Corrupt(_))
        ));
    }
}
