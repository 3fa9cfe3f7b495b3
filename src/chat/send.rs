//! `message`: a new chat message. Checks (shape, who, room, content, idempotency, rate
//! limit), then the `AppendMessage` command the writer applies, then the ack reply once
//! it is durable.

use std::time::Instant;

use serde_json::json;

use super::{check_sender, internal, room_for, Chat, Handled, Success};
use crate::fanout::RoomChanges;
use crate::model::{ChatMessage, RoomKey, SessionUser};
use crate::protocol::event::{self, ClientEvent, SendMessage, MAX_MESSAGES_LIMIT};
use crate::protocol::server_event::{Announced, ServerEvent};
use crate::protocol::time::now_millis;
use crate::protocol::{ChatError, ErrorCode};
use crate::ratelimit::Bucket;
use crate::store::{Appended, ClientKey, HookUser, RoomLock, WriteTxn};
use crate::webhook::{self, Hooks};
use crate::writer::{outcome, Command, Context};

impl Chat {
    pub(super) async fn send_message(
        &self,
        user: &SessionUser,
        data: &str,
        arrived: Instant,
    ) -> Handled {
        let checked = (|| {
            let req: SendMessage = event::parse(ClientEvent::Message, data)?;
            req.check_shape()?;
            check_sender(user, &req.user_id)?;
            let room = room_for(&user.id, &req.room_id)?;
            self.check_text(&req.message)?;
            Ok((req, room))
        })();
        let (req, room) = match checked {
            Ok(ok) => ok,
            Err(e) => return Handled::Done(Err(e)),
        };
        let took_token = match self
            .send_allowance(user, &room, req.client_message_id.as_deref())
            .await
        {
            Ok(took_token) => took_token,
            Err(e) => return Handled::Done(Err(e)),
        };
        let sender = user.clone();
        let rx = self
            .writer
            .submit(AppendMessage {
                room,
                sender,
                text: req.message,
                client_message_id: req.client_message_id,
                arrived,
            })
            .await;
        let refund = took_token.then(|| self.rate_limiter.clone());
        Handled::Pending(Box::pin(async move {
            let appended = outcome(rx).await?;
            if let (true, Some(limiter)) = (appended.duplicate, refund) {
                // A retry stores nothing, so it must not cost anything either. The stored
                // message is the sender's own: client ids are kept per sender.
                limiter.give_back(&appended.message.user_id, Bucket::Send);
            }
            Ok(Success::command(
                json!({ "ok": true, "message": appended.message }),
            ))
        }))
    }

    /// The idempotency and rate-limit checks of a send: takes a send token (returning
    /// true), or lets a retry of an already stored message through without one (false),
    /// or refuses with `rate_limited`.
    async fn send_allowance(
        &self,
        user: &SessionUser,
        room: &RoomKey,
        client_message_id: Option<&str>,
    ) -> Result<bool, ChatError> {
        let refused = match self.rate_limiter.take(&user.id, Bucket::Send) {
            Ok(()) => return Ok(true),
            Err(refused) => refused,
        };
        // Only an empty bucket pays for this lookup; the writer dedups the rest.
        let Some(client_message_id) = client_message_id else {
            return Err(refused);
        };
        match self
            .store
            .find_by_client_id(room, &user.id, client_message_id)
            .await
        {
            Ok(Some(_)) => Ok(false),
            Ok(None) => Err(refused),
            Err(e) => Err(internal(e)),
        }
    }
}

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

    fn rooms<'a>(&'a self, out: &mut Vec<RoomLock<'a>>) {
        out.push(RoomLock {
            room: &self.room,
            create: true,
        });
    }

    fn client_keys<'a>(&'a self, out: &mut Vec<ClientKey<'a>>) {
        if let Some(client_message_id) = &self.client_message_id {
            out.push(ClientKey {
                room: &self.room,
                sender: &self.sender.id,
                client_message_id,
            });
        }
    }

    fn hook_users<'a>(&'a self, hooks: &Hooks, out: &mut Vec<HookUser<'a>>) {
        webhook::message_created_users(hooks, &self.room, &self.sender.id, out);
    }

    fn apply(
        self,
        txn: &mut dyn WriteTxn,
        cx: &mut Context<'_>,
    ) -> Result<AppendOutcome, ChatError> {
        check_not_blocked(txn, &self.room, &self.sender.id)?;
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
        let mut changes = RoomChanges::default();
        let (message, duplicate, recipients, messages, announces) = match appended {
            Appended::New(message) => {
                let messages = cx
                    .cache()
                    .record_new(&self.room, &message, load)
                    .map_err(ChatError::internal)?;
                cx.stored_message();
                cx.hint_stored(&self.room, message.id);
                webhook::message_created(txn, cx, &self.room, &message, &self.sender)
                    .map_err(ChatError::internal)?;
                let mut users = vec![self.room.low.clone()];
                if !self.room.is_self_room() {
                    users.push(self.room.high.clone());
                }
                changes.add(&self.room, message.change);
                let announces = Some(Announced {
                    room: self.room.clone(),
                    message_id: message.id,
                });
                (message, false, users, messages, announces)
            }
            Appended::Duplicate(message) => {
                let messages = cx
                    .cache()
                    .snapshot(&self.room, load)
                    .map_err(ChatError::internal)?;
                (message, true, vec![self.sender.id.clone()], messages, None)
            }
        };
        cx.publish_changes(
            recipients,
            ServerEvent::MessageSent {
                room_id: self.room.id(),
                user: self.sender,
                messages,
                announces,
            },
            changes,
        );
        Ok(AppendOutcome { message, duplicate })
    }

    fn arrived(&self) -> Option<Instant> {
        Some(self.arrived)
    }
}

/// Refuses a send between two users where either blocks the other, as this transaction
/// sees it: checked here, in the writer, so a block and a send racing are applied in one
/// order. The blocked sender is told (`blocked`), rather than shown a sent tick for a
/// message nobody stores (docs/protocol.md, "Blocking users", says why). A retry of a
/// message stored before the block is refused too: the block wins.
fn check_not_blocked(txn: &dyn WriteTxn, room: &RoomKey, sender: &str) -> Result<(), ChatError> {
    if room.is_self_room() {
        return Ok(());
    }
    let partner = room.partner_of(sender);
    if txn
        .blocked_since(sender, partner)
        .map_err(ChatError::internal)?
        .is_some()
    {
        return Err(ChatError::new(
            ErrorCode::Blocked,
            format!("you have blocked {partner:?}; unblock them to send"),
        ));
    }
    if txn
        .blocked_since(partner, sender)
        .map_err(ChatError::internal)?
        .is_some()
    {
        return Err(ChatError::new(
            ErrorCode::Blocked,
            format!("{partner:?} does not accept your messages"),
        ));
    }
    Ok(())
}
