//! The values stored on disk, encoded with `postcard`.
//!
//! postcard is compact (varints, no field names) and stable across releases, which matters
//! for a file that outlives the binary. Fields are only ever appended at the end of a
//! record, and anything that changes their meaning bumps `FORMAT_VERSION`.

use serde::{Deserialize, Serialize};

use crate::model::ChatMessage;
use crate::store::{Result, StoreError};

/// A room: its pair, its counters, and its unread counts.
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
}

/// A message; its room and id are the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageRecord {
    pub user_id: String,
    pub message: String,
    pub sent_ms: i64,
    pub seen_ms: Option<i64>,
    pub client_message_id: Option<String>,
}

impl MessageRecord {
    pub fn from_message(m: &ChatMessage) -> MessageRecord {
        MessageRecord {
            user_id: m.user_id.clone(),
            message: m.message.clone(),
            sent_ms: m.sent_ms,
            seen_ms: m.seen_ms,
            client_message_id: m.client_message_id.clone(),
        }
    }

    pub fn into_message(self, id: u64) -> ChatMessage {
        ChatMessage {
            id,
            user_id: self.user_id,
            message: self.message,
            sent_ms: self.sent_ms,
            seen_ms: self.seen_ms,
            client_message_id: self.client_message_id,
        }
    }
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("postcard encodes plain records infallibly")
}

pub fn decode_room(bytes: &[u8]) -> Result<RoomRecord> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(format!("room record: {e}")))
}

pub fn decode_message(id: u64, bytes: &[u8]) -> Result<ChatMessage> {
    postcard::from_bytes::<MessageRecord>(bytes)
        .map(|r| r.into_message(id))
        .map_err(|e| StoreError::Corrupt(format!("message {id}: {e}")))
}
