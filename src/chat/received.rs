//! `message:received`: delivered marks. A client says it has every message of a room up
//! to an id; that per-(user, room) high-water mark only moves forward, and each partner
//! message it newly covers gets `deliveredAt` and is reported to its sender in
//! `message:delivered`. Same shape and rules as `message:read`: an array of items, each
//! checked on its own, rejected items listed in the reply. A read implies received
//! (`read.rs` moves the mark through [`Delivered`] too).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::read::rejections;
use super::{check_sender, room_for, Chat, Handled, Success};
use crate::model::{RoomKey, SessionUser};
use crate::protocol::event::{self, ClientEvent, ReceivedItem, MAX_READ_ITEMS};
use crate::protocol::server_event::{DeliveredReceipt, ServerEvent};
use crate::protocol::time::{format_millis, now_millis};
use crate::protocol::ChatError;
use crate::ratelimit::Bucket;
use crate::store::{ReceivedOutcome, WriteTxn};
use crate::writer::{outcome, Command, Context};

impl Chat {
    pub(super) async fn mark_received(&self, user: &SessionUser, data: &str) -> Handled {
        let shape = || {
            ChatError::bad_request(format!(
                "message:received takes an array of 1 to {MAX_READ_ITEMS} objects"
            ))
        };
        let items: Vec<Map<String, Value>> = match event::parse(ClientEvent::Received, data) {
            Ok(items) => items,
            Err(_) => return Handled::Done(Err(shape())),
        };
        if items.is_empty() || items.len() > MAX_READ_ITEMS {
            return Handled::Done(Err(shape()));
        }
        if let Err(e) = self.rate_limiter.take(&user.id, Bucket::Request) {
            return Handled::Done(Err(e));
        }
        let mut rejected = Vec::new();
        let mut valid = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            match check_item(user, item) {
                Ok((room, room_id, message_id)) => valid.push(Mark {
                    index,
                    room,
                    room_id,
                    message_id,
                }),
                Err(e) => rejected.push((index, e)),
            }
        }
        let rx = if valid.is_empty() {
            None
        } else {
            let command = MarkReceived {
                reader: user.id.clone(),
                items: valid,
            };
            Some(self.writer.submit(command).await)
        };
        Handled::Pending(Box::pin(async move {
            if let Some(rx) = rx {
                for (index, outcome) in outcome(rx).await? {
                    if let ReceivedOutcome::NotFound = outcome {
                        let e = ChatError::not_found("no message with that id in this room");
                        rejected.push((index, e));
                    }
                }
            }
            let (rejections, error_without_ack) = rejections(rejected);
            Ok(Success {
                body: json!({ "ok": true, "rejected": rejections }),
                reply_event: None,
                error_without_ack,
            })
        }))
    }
}

fn check_item(
    user: &SessionUser,
    item: Map<String, Value>,
) -> Result<(RoomKey, String, u64), ChatError> {
    let item: ReceivedItem = serde_json::from_value(Value::Object(item))
        .map_err(|e| ChatError::bad_request(format!("invalid message:received item: {e}")))?;
    if item.message_id == 0 {
        return Err(ChatError::bad_request("messageId must be at least 1"));
    }
    if let Some(claimed) = &item.user_id {
        check_sender(user, claimed)?;
    }
    let room = room_for(&user.id, &item.room_id)?;
    Ok((room, item.room_id, item.message_id))
}

/// One item of a `message:received`, checked for shape, reader and room.
pub struct Mark {
    /// Position in the request array, for the `rejected` list.
    pub index: usize,
    pub room: RoomKey,
    pub room_id: String,
    pub message_id: u64,
}

/// A `message:received` to apply. Answers each item's outcome, by index.
pub struct MarkReceived {
    pub reader: String,
    pub items: Vec<Mark>,
}

impl Command for MarkReceived {
    type Output = Vec<(usize, ReceivedOutcome)>;

    fn apply(
        self,
        txn: &mut dyn WriteTxn,
        cx: &mut Context<'_>,
    ) -> Result<Self::Output, ChatError> {
        let now = now_millis();
        let mut delivered = Delivered::default();
        let mut outcomes = Vec::with_capacity(self.items.len());
        for item in self.items {
            let outcome = delivered.mark(
                txn,
                cx,
                &self.reader,
                &item.room,
                &item.room_id,
                item.message_id,
                now,
            )?;
            outcomes.push((item.index, outcome));
        }
        delivered.publish(cx);
        Ok(outcomes)
    }
}

/// The `message:delivered` receipts a command collects, one event per sender.
#[derive(Default)]
pub(super) struct Delivered {
    by_sender: BTreeMap<String, Vec<DeliveredReceipt>>,
}

impl Delivered {
    /// Moves `reader`'s mark in `room` to `up_to`, refreshing the cached copies of the
    /// messages it delivered and collecting their receipts.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn mark(
        &mut self,
        txn: &mut dyn WriteTxn,
        cx: &mut Context<'_>,
        reader: &str,
        room: &RoomKey,
        room_id: &str,
        up_to: u64,
        now: i64,
    ) -> Result<ReceivedOutcome, ChatError> {
        let outcome = txn
            .mark_received(room, reader, up_to, now)
            .map_err(ChatError::internal)?;
        if let ReceivedOutcome::Moved(messages) = &outcome {
            for message in messages {
                cx.cache().update(room, message);
                self.by_sender
                    .entry(message.user_id.clone())
                    .or_default()
                    .push(DeliveredReceipt {
                        user_id: reader.to_owned(),
                        room_id: room_id.to_owned(),
                        message_id: message.id,
                        delivered_at: format_millis(message.delivered_ms.unwrap_or(now)),
                    });
            }
        }
        Ok(outcome)
    }

    pub(super) fn publish(self, cx: &mut Context<'_>) {
        for (sender, receipts) in self.by_sender {
            cx.publish(vec![sender], ServerEvent::MessageDelivered(receipts));
        }
    }
}
