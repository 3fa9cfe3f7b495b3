//! The writes, one [`Command`] type each: what it stores through the transaction, which
//! events it publishes to whom, and what its caller is answered.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{Command, Context};
use crate::model::{ChatMessage, RoomKey, SessionUser};
use crate::protocol::event::MAX_MESSAGES_LIMIT;
use crate::protocol::server_event::{SeenReceipt, ServerEvent};
use crate::protocol::time::{format_millis, now_millis};
use crate::protocol::ChatError;
use crate::store::{Appended, SeenOutcome, WriteTxn};

/// A new message to store (`message`): `message:sent` to both members of the room, or,
/// for a retry of one already stored, to the sender alone.
pub struct AppendMessage {
    pub room: RoomKey,
    pub sender: SessionUser,
    pub text: String,
    pub client_message_id: Option<String>,
    /// When the `message` frame arrived, for `chat_send_durable_seconds`.
    pub arrived: Instant,
}

/// What the sender learns once the message is durable.
#[derive(Debug)]
pub struct AppendOutcome {
    /// The stored message (for a retry: the one stored first, in its current state).
    pub message: ChatMessage,
    /// True when this was a retry and nothing new was stored.
    pub duplicate: bool,
}

impl Command for AppendMessage {
    type Output = AppendOutcome;

    fn apply(
        self,
        txn: &mut dyn WriteTxn,
        cx: &mut Context<'_>,
    ) -> Result<AppendOutcome, ChatError> {
        let appended = txn
            .append(
                &self.room,
                &self.sender.id,
                &self.text,
                self.client_message_id.as_deref(),
                now_millis(),
            )
            .map_err(ChatError::internal)?;
        let load = || txn.latest(&self.room, MAX_MESSAGES_LIMIT);
        let (message, duplicate, recipients, messages) = match appended {
            Appended::New(message) => {
                let messages = cx
                    .cache()
                    .record_new(&self.room, &message, load)
                    .map_err(ChatError::internal)?;
                cx.stored_message();
                let mut users = vec![self.room.low.clone()];
                if !self.room.is_self_room() {
                    users.push(self.room.high.clone());
                }
                (message, false, users, messages)
            }
            Appended::Duplicate(message) => {
                let messages = cx
                    .cache()
                    .snapshot(&self.room, load)
                    .map_err(ChatError::internal)?;
                (message, true, vec![self.sender.id.clone()], messages)
            }
        };
        cx.publish(
            recipients,
            ServerEvent::MessageSent {
                room_id: self.room.id(),
                user: self.sender,
                messages,
            },
        );
        Ok(AppendOutcome { message, duplicate })
    }

    fn arrived(&self) -> Option<Instant> {
        Some(self.arrived)
    }
}

/// One item of a `message:read`, already checked for shape, reader and room.
pub struct SeenItem {
    /// Position in the request array, for the `rejected` list.
    pub index: usize,
    pub room: RoomKey,
    pub room_id: String,
    pub message_id: u64,
    pub seen_date_ms: i64,
}

/// A `message:read` to apply: one `message:seen` to each partner whose messages became
/// seen, listing only that partner's messages. Answers each item's outcome, by index.
pub struct MarkSeen {
    pub reader: String,
    pub items: Vec<SeenItem>,
}

impl Command for MarkSeen {
    type Output = Vec<(usize, SeenOutcome)>;

    fn apply(
        self,
        txn: &mut dyn WriteTxn,
        cx: &mut Context<'_>,
    ) -> Result<Self::Output, ChatError> {
        let now = now_millis();
        let mut outcomes = Vec::with_capacity(self.items.len());
        let mut by_partner: BTreeMap<String, Vec<SeenReceipt>> = BTreeMap::new();
        for item in self.items {
            let outcome = txn
                .mark_seen(
                    &item.room,
                    &self.reader,
                    item.message_id,
                    item.seen_date_ms,
                    now,
                )
                .map_err(ChatError::internal)?;
            if let SeenOutcome::Changed(message) = &outcome {
                cx.cache().update(&item.room, message);
                by_partner
                    .entry(message.user_id.clone())
                    .or_default()
                    .push(SeenReceipt {
                        message_id: message.id,
                        room_id: item.room_id,
                        seen_at: format_millis(message.seen_ms.unwrap_or(now)),
                        user_id: self.reader.clone(),
                    });
            }
            outcomes.push((item.index, outcome));
        }
        for (partner, receipts) in by_partner {
            cx.publish(vec![partner], ServerEvent::MessageSeen(receipts));
        }
        Ok(outcomes)
    }
}

/// A user's new display name to remember; publishes nothing.
pub struct PutProfile {
    pub user: SessionUser,
}

impl Command for PutProfile {
    type Output = ();

    fn apply(self, txn: &mut dyn WriteTxn, _cx: &mut Context<'_>) -> Result<(), ChatError> {
        txn.put_profile(&self.user).map_err(ChatError::internal)
    }
}
