//! The event handlers: one implementation of every client event, shared by both socket
//! dialects and the HTTP API.
//!
//! A dialect decodes a frame into (event name, payload JSON, optional ack), calls
//! [`Chat::dispatch`], and encodes the [`Reply`]. Each handler runs the protocol's checks
//! in its order (shape, who, room, content, idempotency, rate limit) and either answers at
//! once or hands a write to the group-commit writer and answers when it is durable.
//!
//! One event per file, each holding its checks, the writer command it submits (if it
//! writes) and its reply: `send.rs` (`message`), `read.rs` (`message:read`), `received.rs`
//! (`message:received`), `edit.rs` (`message:edit`, `message:delete`), `typing.rs`,
//! `rooms.rs`, `history.rs` (`messages`), `changes.rs` (`changes`), and `profile.rs` (a
//! connecting user's name). This file holds what they share and the table that routes an
//! event name to its handler. `block.rs` holds `block`, `unblock` and `blocks`: one file
//! for the three, because they share one table and one payload.
//!
//! `erase.rs` is no client event: it erases a user for the admin API (issue 14, item 5).
//! Nor is `dead_letters.rs`: webhook dead letters, listed and retried for the admin API.

mod block;
mod changes;
mod dead_letters;
mod edit;
mod erase;
mod history;
mod profile;
mod read;
mod received;
mod rooms;
mod send;
mod typing;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::fanout::hub::Hub;
use crate::fanout::Broker;
use crate::model::{RoomKey, SessionUser};
use crate::protocol::cursor::CursorCodec;
use crate::protocol::event::ClientEvent;
use crate::protocol::room::resolve_partner;
use crate::protocol::{ChatError, ErrorCode};
use crate::ratelimit::{Rate, RateLimiter};
use crate::store::ReadStore;
use crate::writer::Writer;

pub use erase::ErasureReport;

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
    /// Most users one user may block (`limits.max_blocks_per_user`).
    pub max_blocks_per_user: usize,
    /// How long after sending a message may be edited (`limits.edit_window_secs`).
    pub edit_window_ms: i64,
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
            max_blocks_per_user: limits.max_blocks_per_user,
            edit_window_ms: i64::try_from(limits.edit_window_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
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
    /// `message:received` marks in the writer's queue, which later marks raise.
    queued_marks: Arc<received::QueuedMarks>,
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
            queued_marks: Arc::default(),
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
    /// the clock leaves out the time a packet waited there. `acked`: whether the client
    /// asked for a reply (an ack), which lets an ack-less `message:received` skip waiting.
    pub async fn dispatch(
        &self,
        user: &SessionUser,
        event: &str,
        data: &str,
        acked: bool,
    ) -> Handled {
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
            ClientEvent::Typing => self.typing(user, data).await.into(),
            ClientEvent::Rooms => self.rooms(user, data).await.into(),
            ClientEvent::Messages => self.messages(user, data).await.into(),
            ClientEvent::Block => self.block(user, data).await,
            ClientEvent::Unblock => self.unblock(user, data).await,
            ClientEvent::Blocks => self.blocks(user, data).await.into(),
            ClientEvent::Received => self.mark_received(user, data, acked).await,
            ClientEvent::Edit => self.edit_message(user, data).await,
            ClientEvent::Delete => self.delete_message(user, data).await,
            ClientEvent::Changes => self.changes(user, data).await.into(),
        }
    }
}
