//! `message:edit` and `message:delete`: a sender changes or removes one of their messages.
//!
//! Only the sender may do either. An edit must come within `limits.edit_window_secs` of
//! the send and follows the send's content rules; a deleted message cannot be edited. Both
//! are idempotent: the same text again, or a second delete, answers `ok` with the message
//! as it is, stores nothing and sends no event, so a client can retry blindly. A change
//! goes to both participants as `message:updated`, and into the latest-50 cache, so the
//! next `message:sent` snapshot shows it.

use serde_json::json;

use super::{room_for, Chat, Handled, Success};
use crate::fanout::RoomChanges;
use crate::model::{ChatMessage, RoomKey, SessionUser};
use crate::protocol::event::{self, ClientEvent, DeleteMessage, EditMessage};
use crate::protocol::server_event::ServerEvent;
use crate::protocol::time::now_millis;
use crate::protocol::{ChatError, ErrorCode};
use crate::ratelimit::Bucket;
use crate::store::{DeleteOutcome, EditOutcome, RoomLock, WriteTxn};
use crate::writer::{outcome, Command, Context};

impl Chat {
    pub(super) async fn edit_message(&self, user: &SessionUser, data: &str) -> Handled {
        let edit = (|| {
            let req: EditMessage = event::parse(ClientEvent::Edit, data)?;
            check_id(req.message_id)?;
            let room = room_for(&user.id, &req.room_id)?;
            self.check_text(&req.message)?;
            self.rate_limiter.take(&user.id, Bucket::Send)?;
            Ok(Edit {
                room,
                room_id: req.room_id,
                editor: user.id.clone(),
                message_id: req.message_id,
                text: req.message,
                window_ms: self.limits.edit_window_ms,
            })
        })();
        self.change_message(edit).await
    }

    pub(super) async fn delete_message(&self, user: &SessionUser, data: &str) -> Handled {
        let delete = (|| {
            let req: DeleteMessage = event::parse(ClientEvent::Delete, data)?;
            check_id(req.message_id)?;
            let room = room_for(&user.id, &req.room_id)?;
            self.rate_limiter.take(&user.id, Bucket::Request)?;
            Ok(Delete {
                room,
                room_id: req.room_id,
                deleter: user.id.clone(),
                message_id: req.message_id,
            })
        })();
        self.change_message(delete).await
    }

    /// Hands a checked edit or delete to the writer; the answer, once durable, is the
    /// message as it now is.
    async fn change_message<C>(&self, checked: Result<C, ChatError>) -> Handled
    where
        C: Command<Output = ChatMessage>,
    {
        let command = match checked {
            Ok(command) => command,
            Err(e) => return Handled::Done(Err(e)),
        };
        let rx = self.writer.submit(command).await;
        Handled::Pending(Box::pin(async move {
            let message = outcome(rx).await?;
            Ok(Success::command(json!({ "ok": true, "message": message })))
        }))
    }

    /// The content rules of a send: not empty, at most `limits.max_message_bytes`.
    pub(super) fn check_text(&self, text: &str) -> Result<(), ChatError> {
        if text.is_empty() {
            return Err(ChatError::new(
                ErrorCode::InvalidMessage,
                "message must not be empty",
            ));
        }
        if text.len() > self.limits.max_message_bytes {
            return Err(ChatError::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "message is {} bytes; the limit is {}",
                    text.len(),
                    self.limits.max_message_bytes
                ),
            ));
        }
        Ok(())
    }
}

fn check_id(message_id: u64) -> Result<(), ChatError> {
    if message_id == 0 {
        return Err(ChatError::bad_request("messageId must be at least 1"));
    }
    Ok(())
}

fn no_such_message() -> ChatError {
    ChatError::not_found("no message with that id in this room")
}

fn not_yours(what: &str) -> ChatError {
    ChatError::forbidden(format!("only the sender may {what} a message"))
}

/// Publishes a changed message to both participants and refreshes its cached copy.
fn updated(cx: &mut Context<'_>, room: &RoomKey, room_id: String, message: &ChatMessage) {
    cx.cache().update(room, message);
    let mut users = vec![room.low.clone()];
    if !room.is_self_room() {
        users.push(room.high.clone());
    }
    let mut changes = RoomChanges::default();
    changes.add(room, message.change);
    cx.publish_changes(
        users,
        ServerEvent::MessageUpdated {
            room_id,
            message: message.clone(),
        },
        changes,
    );
}

/// A `message:edit` to apply; answers the message as it now is.
pub struct Edit {
    pub room: RoomKey,
    pub room_id: String,
    pub editor: String,
    pub message_id: u64,
    pub text: String,
    pub window_ms: i64,
}

impl Command for Edit {
    type Output = ChatMessage;

    fn rooms<'a>(&'a self, out: &mut Vec<RoomLock<'a>>) {
        out.push(RoomLock {
            room: &self.room,
            create: false,
        });
    }

    fn apply(self, txn: &mut dyn WriteTxn, cx: &mut Context<'_>) -> Result<ChatMessage, ChatError> {
        let outcome = txn
            .edit(
                &self.room,
                &self.editor,
                self.message_id,
                &self.text,
                self.window_ms,
                now_millis(),
            )
            .map_err(ChatError::internal)?;
        match outcome {
            EditOutcome::Changed(message) => {
                updated(cx, &self.room, self.room_id, &message);
                Ok(message)
            }
            EditOutcome::Unchanged(message) => Ok(message),
            EditOutcome::NotFound => Err(no_such_message()),
            EditOutcome::NotSender => Err(not_yours("edit")),
            EditOutcome::Deleted => Err(ChatError::new(
                ErrorCode::MessageDeleted,
                "a deleted message cannot be edited",
            )),
            EditOutcome::WindowClosed => Err(ChatError::new(
                ErrorCode::EditWindowClosed,
                format!(
                    "a message can be edited only within {} s of sending",
                    self.window_ms / 1000
                ),
            )),
        }
    }
}

/// A `message:delete` to apply; answers the tombstone.
pub struct Delete {
    pub room: RoomKey,
    pub room_id: String,
    pub deleter: String,
    pub message_id: u64,
}

impl Command for Delete {
    type Output = ChatMessage;

    fn rooms<'a>(&'a self, out: &mut Vec<RoomLock<'a>>) {
        out.push(RoomLock {
            room: &self.room,
            create: false,
        });
    }

    fn apply(self, txn: &mut dyn WriteTxn, cx: &mut Context<'_>) -> Result<ChatMessage, ChatError> {
        let outcome = txn
            .delete(&self.room, &self.deleter, self.message_id, now_millis())
            .map_err(ChatError::internal)?;
        match outcome {
            DeleteOutcome::Deleted(message) => {
                updated(cx, &self.room, self.room_id, &message);
                Ok(message)
            }
            DeleteOutcome::AlreadyDeleted(message) => Ok(message),
            DeleteOutcome::NotFound => Err(no_such_message()),
            DeleteOutcome::NotSender => Err(not_yours("delete")),
        }
    }
}
