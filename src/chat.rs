//! The event handlers: one implementation of every client event, shared by both socket
//! dialects and the HTTP API.
//!
//! A dialect decodes a frame into (event name, payload JSON, optional ack), calls
//! [`Chat::dispatch`], and encodes the [`Reply`]. Each handler runs the protocol's checks
//! in its order (shape, who, room, content, idempotency, rate limit) and either answers at
//! once or hands a write to the group-commit writer and answers when it is durable.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::fanout::hub::Hub;
use crate::fanout::{Broker, Outbound};
use crate::model::{RoomKey, SessionUser};
use crate::protocol::cursor::CursorCodec;
use crate::protocol::event::{
    self, ClientEvent, MessagesRequest, ReadItem, RoomsRequest, SendMessage, Typing, MAX_READ_ITEMS,
};
use crate::protocol::room::resolve_partner;
use crate::protocol::server_event::ServerEvent;
use crate::protocol::time::{format_millis, parse_rfc3339_millis};
use crate::protocol::{ChatError, ErrorCode};
use crate::ratelimit::{Bucket, Rate, RateLimiter};
use crate::store::{ReadStore, SeenOutcome};
use crate::writer::{outcome, AppendMessage, MarkSeen, PutProfile, SeenItem, Writer};

/// A successful answer.
#[derive(Debug)]
pub struct Success {
    /// The reply object, `"ok": true` included.
    pub body: Value,
    /// For requests (`rooms`, `messages`): the event that carries `body` when the client
    /// gave no `ack`. Commands (`message`, `typing`) answer nothing without an `ack`.
    pub reply_event: Option<&'static str>,
    /// What to report as an `error` event when the client gave no `ack` although the request
    /// as a whole succeeded (a `message:read` with rejected items).
    pub error_without_ack: Option<ChatError>,
}

impl Success {
    fn command(body: Value) -> Success {
        Success {
            body,
            reply_event: None,
            error_without_ack: None,
        }
    }

    fn request(event: ClientEvent, body: Value) -> Success {
        Success {
            body,
            reply_event: Some(event.name()),
            error_without_ack: None,
        }
    }
}

pub type Reply = Result<Success, ChatError>;

/// A reply that is ready, or one that waits for the writer's commit.
pub enum Handled {
    Done(Reply),
    Pending(Pin<Box<dyn Future<Output = Reply> + Send>>),
}

impl Handled {
    /// Waits for the reply, however it comes.
    pub async fn into_reply(self) -> Reply {
        match self {
            Handled::Done(reply) => reply,
            Handled::Pending(fut) => fut.await,
        }
    }
}

impl From<Reply> for Handled {
    fn from(reply: Reply) -> Handled {
        Handled::Done(reply)
    }
}

/// Limits the handlers enforce.
#[derive(Debug, Clone)]
pub struct ChatLimits {
    pub max_message_bytes: usize,
    /// Each user's budget of new messages.
    pub send_rate: Rate,
    /// Each user's budget of reads, typing and requests (sockets and HTTP together).
    pub request_rate: Rate,
    /// Users whose buckets are remembered at once (`memory.rate_limit_users`).
    pub rate_limit_users: usize,
}

impl From<&crate::config::Config> for ChatLimits {
    fn from(config: &crate::config::Config) -> ChatLimits {
        let limits = &config.limits;
        ChatLimits {
            max_message_bytes: limits.max_message_bytes,
            send_rate: Rate {
                per_sec: limits.send_rate_per_sec,
                burst: limits.send_burst,
            },
            request_rate: Rate {
                per_sec: limits.request_rate_per_sec,
                burst: limits.request_burst,
            },
            rate_limit_users: config.memory.rate_limit_users,
        }
    }
}

/// Everything the handlers need: the store for reads, the writer for writes, the broker
/// for relaying events that are not stored (typing), the hub for connections to join.
pub struct Chat {
    store: Arc<dyn ReadStore>,
    writer: Writer,
    broker: Arc<dyn Broker>,
    hub: Arc<Hub>,
    limits: ChatLimits,
    cursors: CursorCodec,
    rate_limiter: Arc<RateLimiter>,
}

/// Resolves a room id for `user`, returning the room's pair.
fn room_for(user: &str, room_id: &str) -> Result<RoomKey, ChatError> {
    let partner = resolve_partner(user, room_id).map_err(|e| ChatError::room(e, room_id))?;
    Ok(RoomKey::new(user, &partner))
}

fn check_sender(user: &SessionUser, claimed: &str) -> Result<(), ChatError> {
    if claimed == user.id {
        Ok(())
    } else {
        Err(ChatError::forbidden(format!(
            "userId must be your own id ({:?}), not {claimed:?}",
            user.id
        )))
    }
}

fn internal(e: impl std::fmt::Display) -> ChatError {
    ChatError::internal(e)
}

impl Chat {
    /// `secret` keys the inbox cursors, so only cursors this server issued are accepted.
    pub fn new(
        store: Arc<dyn ReadStore>,
        writer: Writer,
        broker: Arc<dyn Broker>,
        hub: Arc<Hub>,
        limits: ChatLimits,
        secret: &[u8],
    ) -> Chat {
        Chat {
            store,
            writer,
            broker,
            hub,
            rate_limiter: Arc::new(RateLimiter::new(
                limits.send_rate,
                limits.request_rate,
                limits.rate_limit_users,
            )),
            limits,
            cursors: CursorCodec::new(secret),
        }
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The writer's handle, for the size of its cache in `/metrics`.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Handles one client event. `data` is the payload's JSON text (`null` when absent).
    /// It starts the send-to-durable clock: the plain dialect calls it as each frame is
    /// read, the Socket.IO session as it takes each packet from its queue, so for Socket.IO
    /// the clock leaves out the time a packet waited there.
    pub async fn dispatch(&self, user: &SessionUser, event: &str, data: &str) -> Handled {
        let arrived = Instant::now();
        let Some(event) = ClientEvent::from_name(event) else {
            return Handled::Done(Err(ChatError::new(
                ErrorCode::UnknownEvent,
                format!("unknown event {event:?}"),
            )));
        };
        match event {
            ClientEvent::Message => self.send_message(user, data, arrived).await,
            ClientEvent::Read => self.mark_read(user, data).await,
            ClientEvent::Typing => self.typing(user, data).into(),
            ClientEvent::Rooms => self.rooms(user, data).await.into(),
            ClientEvent::Messages => self.messages(user, data).await.into(),
        }
    }

    /// Remembers the user's latest name when it changed (PROTOCOL.md section 1) and returns
    /// once it is durable. Both dialects call this before a connection becomes usable (the
    /// 101, the CONNECT ack), so from then on every read, by anyone, sees the new name. An
    /// unchanged name costs a lookup and no commit, so reconnecting stays cheap. A failed
    /// write is logged and the connection goes on: a name is not worth refusing it for.
    pub async fn remember_profile(&self, user: &SessionUser) {
        match self.store.profile(&user.id).await {
            Ok(stored) if stored.name == user.name => {}
            Ok(_) => {
                let written = self.writer.submit(PutProfile { user: user.clone() }).await;
                if let Err(e) = outcome(written).await {
                    tracing::warn!(error = %e, user = %user.id, "profile not stored");
                }
            }
            Err(e) => tracing::warn!(error = %e, "profile lookup failed"),
        }
    }

    async fn send_message(&self, user: &SessionUser, data: &str, arrived: Instant) -> Handled {
        let checked = (|| {
            let req: SendMessage = event::parse(ClientEvent::Message, data)?;
            req.check_shape()?;
            check_sender(user, &req.user_id)?;
            let room = room_for(&user.id, &req.room_id)?;
            if req.message.is_empty() {
                return Err(ChatError::new(
                    ErrorCode::InvalidMessage,
                    "message must not be empty",
                ));
            }
            if req.message.len() > self.limits.max_message_bytes {
                return Err(ChatError::new(
                    ErrorCode::MessageTooLarge,
                    format!(
                        "message is {} bytes; the limit is {}",
                        req.message.len(),
                        self.limits.max_message_bytes
                    ),
                ));
            }
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

    async fn mark_read(&self, user: &SessionUser, data: &str) -> Handled {
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

    fn typing(&self, user: &SessionUser, data: &str) -> Reply {
        let req: Typing = event::parse(ClientEvent::Typing, data)?;
        let room = room_for(&user.id, &req.room_id)?;
        self.rate_limiter.take(&user.id, Bucket::Request)?;
        if !room.is_self_room() {
            let event = Outbound::new(ServerEvent::Typing {
                room_id: req.room_id,
                user_id: user.id.clone(),
            });
            self.broker.publish(room.partner_of(&user.id), &event);
        }
        Ok(Success::command(json!({ "ok": true })))
    }

    /// One page of the user's inbox (the `rooms` event and `GET /api/rooms`).
    pub async fn rooms(&self, user: &SessionUser, data: &str) -> Reply {
        let req: RoomsRequest = if data == "null" {
            RoomsRequest::default()
        } else {
            event::parse(ClientEvent::Rooms, data)?
        };
        self.rooms_page(user, &req).await
    }

    pub async fn rooms_page(&self, user: &SessionUser, req: &RoomsRequest) -> Reply {
        let limit = req.checked_limit()?;
        let cursor = req
            .cursor
            .as_deref()
            .map(|c| self.cursors.decode(c))
            .transpose()?;
        self.rate_limiter.take(&user.id, Bucket::Request)?;
        let page = self
            .store
            .inbox_page(&user.id, cursor.as_ref(), limit)
            .await
            .map_err(internal)?;
        let next_cursor = match page.last() {
            Some(last) if page.len() == limit => Some(self.cursors.encode(&last.cursor())),
            _ => None,
        };
        let mut rooms = Vec::with_capacity(page.len());
        for row in page {
            rooms.push(json!({
                "roomId": row.room_id,
                "user": row.partner,
                "lastMessage": row.last_message,
                "unread": row.unread,
                "updatedAt": format_millis(row.updated_ms),
            }));
        }
        Ok(Success::request(
            ClientEvent::Rooms,
            json!({ "ok": true, "rooms": rooms, "nextCursor": next_cursor }),
        ))
    }

    /// One page of a room's history (the `messages` event).
    pub async fn messages(&self, user: &SessionUser, data: &str) -> Reply {
        let req: MessagesRequest = event::parse(ClientEvent::Messages, data)?;
        self.messages_page(user, &req).await
    }

    /// One page of a room's history (`messages` and `GET /api/rooms/{id}/messages`).
    pub async fn messages_page(&self, user: &SessionUser, req: &MessagesRequest) -> Reply {
        let limit = req.checked_limit()?;
        let before = req.checked_before()?;
        let room = room_for(&user.id, &req.room_id)?;
        self.rate_limiter.take(&user.id, Bucket::Request)?;
        let page = self
            .store
            .messages_page(&room, &user.id, before, limit)
            .await
            .map_err(internal)?;
        Ok(Success::request(
            ClientEvent::Messages,
            json!({
                "ok": true,
                "room": { "roomId": req.room_id, "user": page.partner, "messages": page.messages },
            }),
        ))
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
    rejected.sort_by_key(|(index, _)| *index);
    let rejections: Vec<_> = rejected
        .into_iter()
        .map(|(index, e)| crate::protocol::error::Rejection {
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
