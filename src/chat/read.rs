//! `message:read`: read receipts. Checks each item (shape, who, room), then the
//! `MarkSeen` command the writer applies, then the reply listing what changed and what
//! was rejected.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::received::Delivered;
use super::{check_sender, room_for, Chat, Handled, Success};
use crate::fanout::RoomChanges;
use crate::model::{RoomKey, SessionUser};
use crate::protocol::error::Rejection;
use crate::protocol::event::{self, ClientEvent, ReadItem, MAX_READ_ITEMS};
use crate::protocol::server_event::{SeenReceipt, ServerEvent};
use crate::protocol::time::{format_millis, now_millis, parse_rfc3339_millis};
use crate::protocol::ChatError;
use crate::ratelimit::Bucket;
use crate::store::{HookUser, RoomLock, SeenOutcome, WriteTxn};
use crate::webhook::{self, Hooks};
use crate::writer::{outcome, Command, Context};

impl Chat {
    pub(super) async fn mark_read(&self, user: &SessionUser, data: &str) -> Handled {
        let items: Vec<serde_json::Map<String, Value>> = match event::parse(ClientEvent::Read, data)
        {
            Ok(items) => items,
            Err(_) => {
                return Handled::Done(Err(ChatError::bad_request(format!(
                    "message:read takes an array of 1 to {MAX_READ_ITEMS} objects"
                ))))
            }
        };
        if items.is_empty() || items.len() > MAX_READ_ITEMS {
            return Handled::Done(Err(ChatError::bad_request(format!(
                "message:read takes an array of 1 to {MAX_READ_ITEMS} objects, got {}",
                items.len()
            ))));
        }
        if let Err(e) = self.rate_limiter.take(&user.id, Bucket::Request) {
            return Handled::Done(Err(e));
        }
        let mut rejected = Vec::new();
        let mut valid = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            match check_read_item(user, item) {
                Ok((room, room_id, message_id, seen_date_ms)) => valid.push(SeenItem {
                    index,
                    room,
                    room_id,
                    message_id,
                    seen_date_ms,
                }),
                Err(e) => rejected.push((index, e)),
            }
        }
        let room_ids: Vec<(usize, String)> =
            valid.iter().map(|i| (i.index, i.room_id.clone())).collect();
        let rx = if valid.is_empty() {
            None
        } else {
            Some(
                self.writer
                    .submit(MarkSeen {
                        reader: user.id.clone(),
                        items: valid,
                    })
                    .await,
            )
        };
        let reader = user.id.clone();
        Handled::Pending(Box::pin(async move {
            let outcomes = match rx {
                Some(rx) => outcome(rx).await?,
                None => Vec::new(),
            };
            Ok(read_reply(&reader, &room_ids, outcomes, rejected))
        }))
    }
}

/// Checks one `message:read` item: shape, reader, room. Returns what the writer needs.
fn check_read_item(
    user: &SessionUser,
    item: serde_json::Map<String, Value>,
) -> Result<(RoomKey, String, u64, i64), ChatError> {
    let item: ReadItem = serde_json::from_value(Value::Object(item))
        .map_err(|e| ChatError::bad_request(format!("invalid message:read item: {e}")))?;
    if item.message_id == 0 {
        return Err(ChatError::bad_request("messageId must be at least 1"));
    }
    let seen_date_ms = parse_rfc3339_millis(&item.seen_date).ok_or_else(|| {
        ChatError::bad_request(format!(
            "seenDate {:?} is not an RFC 3339 date-time",
            item.seen_date
        ))
    })?;
    check_sender(user, &item.user_id)?;
    let room = room_for(&user.id, &item.room_id)?;
    Ok((room, item.room_id, item.message_id, seen_date_ms))
}

/// The `message:read` reply: what changed, and every rejected item with its reason.
fn read_reply(
    reader: &str,
    room_ids: &[(usize, String)],
    outcomes: Vec<(usize, SeenOutcome)>,
    mut rejected: Vec<(usize, ChatError)>,
) -> Success {
    let mut seen = Vec::new();
    for (index, outcome) in outcomes {
        match outcome {
            SeenOutcome::Changed(message) => seen.push((index, message)),
            SeenOutcome::AlreadySeen => {}
            SeenOutcome::NotFound => rejected.push((
                index,
                ChatError::not_found("no message with that id in this room"),
            )),
            SeenOutcome::OwnMessage => rejected.push((
                index,
                ChatError::forbidden("you cannot mark your own message as seen"),
            )),
        }
    }
    let (rejections, error_without_ack) = rejections(rejected);
    let room_of = |index: usize| {
        room_ids
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, id)| id.as_str())
    };
    let seen: Vec<Value> = seen
        .into_iter()
        .map(|(index, m)| {
            json!({
                "userId": reader,
                "roomId": room_of(index),
                "messageId": m.id,
                "seenAt": m.seen_ms.map(format_millis),
            })
        })
        .collect();
    Success {
        body: json!({ "ok": true, "seen": seen, "rejected": rejections }),
        reply_event: None,
        error_without_ack,
    }
}

/// The `rejected` list of an item-wise request (`message:read`, `message:received`) in
/// request order, and the `error` event that reports it when the client gave no `ack`.
pub(super) fn rejections(
    mut rejected: Vec<(usize, ChatError)>,
) -> (Vec<Rejection>, Option<ChatError>) {
    rejected.sort_by_key(|(index, _)| *index);
    let rejections: Vec<_> = rejected
        .into_iter()
        .map(|(index, e)| Rejection {
            index,
            code: e.code,
            message: e.message,
        })
        .collect();
    let error_without_ack = rejections.first().map(|first| ChatError {
        rejected: Some(rejections.clone()),
        ..ChatError::new(
            first.code,
            format!("{} of the items were rejected", rejections.len()),
        )
    });
    (rejections, error_without_ack)
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
/// seen, listing only that partner's messages. A read implies received, so each item also
/// moves the reader's delivered mark to it first, with the `message:delivered` that
/// causes. Answers each item's outcome, by index.
pub struct MarkSeen {
    pub reader: String,
    pub items: Vec<SeenItem>,
}

impl Command for MarkSeen {
    type Output = Vec<(usize, SeenOutcome)>;

    fn rooms<'a>(&'a self, out: &mut Vec<RoomLock<'a>>) {
        out.extend(self.items.iter().map(|item| RoomLock {
            room: &item.room,
            create: false,
        }));
    }

    fn hook_users<'a>(&'a self, hooks: &Hooks, out: &mut Vec<HookUser<'a>>) {
        for item in &self.items {
            webhook::message_seen_users(hooks, &item.room, &self.reader, out);
        }
    }

    fn apply(
        self,
        txn: &mut dyn WriteTxn,
        cx: &mut Context<'_>,
    ) -> Result<Self::Output, ChatError> {
        let now = now_millis();
        let mut outcomes = Vec::with_capacity(self.items.len());
        let mut by_partner: BTreeMap<String, (Vec<SeenReceipt>, RoomChanges)> = BTreeMap::new();
        let mut delivered = Delivered::default();
        // Every delivered mark before any seen mark: each event's changes of a room are
        // then one unbroken span of its change counter (see `fanout::RoomChange`).
        for item in &self.items {
            delivered
                .mark(
                    txn,
                    cx,
                    &self.reader,
                    &item.room,
                    &item.room_id,
                    item.message_id,
                    now,
                )
                .map_err(ChatError::internal)?;
        }
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
                webhook::message_seen(txn, cx, &item.room, message, &self.reader)
                    .map_err(ChatError::internal)?;
                let (receipts, changes) = by_partner.entry(message.user_id.clone()).or_default();
                changes.add(&item.room, message.change);
                receipts.push(SeenReceipt {
                    message_id: message.id,
                    room_id: item.room_id,
                    seen_at: format_millis(message.seen_ms.unwrap_or(now)),
                    user_id: self.reader.clone(),
                });
            }
            outcomes.push((item.index, outcome));
        }
        delivered.publish(cx);
        for (partner, (receipts, changes)) in by_partner {
            cx.publish_changes(vec![partner], ServerEvent::MessageSeen(receipts), changes);
        }
        Ok(outcomes)
    }
}
