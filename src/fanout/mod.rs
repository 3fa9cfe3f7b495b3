//! Fan-out: how an event reaches every connection of a user.
//!
//! Publishers (the writer after each commit, the typing handler) see only [`Broker`]:
//! publish an event to a user, never waiting on anyone. Two implementations, side by side:
//!
//! - [`hub::Hub`]: one node. The in-process broker, and also where connections subscribe,
//!   on every node.
//! - [`nats::NatsBroker`]: many nodes (cluster mode). Publishes to NATS subjects per user,
//!   and feeds the local hub from the subjects of the users connected here; since core
//!   NATS may lose a message, it finds gaps in the per-room ids and change counters and
//!   re-reads them from the store.
//!
//! An event is rendered once into an [`Outbound`] and the same `Arc` goes to every
//! recipient: the plain dialect's frame is built with the event, its payload written
//! straight into it, and shared; for Socket.IO the payload (a slice of that frame) is
//! checked once and shared, and socketioxide wraps it in a packet per socket.

pub mod hub;
pub mod nats;

use std::sync::{Arc, OnceLock};

use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::model::{RoomKey, SessionUser};
use crate::protocol::server_event::{Announced, ServerEvent};

/// Where events are published: to a user, whichever connections they have.
pub trait Broker: Send + Sync {
    /// Queues `event` to every connection of `user`. Never blocks: the writer calls it
    /// between commits.
    fn publish(&self, user: &str, event: &Arc<Outbound>);

    /// Whether `user` has an open connection now: webhooks marked `offline_only` are
    /// posted only for recipients who have none when their message commits.
    fn is_online(&self, user: &str) -> bool;

    /// Closes every connection of `user`, who was just erased: here, and in cluster mode
    /// on the other nodes too. Returns how many it closed on this node.
    fn disconnect_user(&self, user: &str) -> usize;

    /// Tells `user`, a member of the rooms `event` changed who does not get `event`
    /// itself (the reader of a receipt), that those changes happened. Nothing to do in one
    /// process; between nodes it keeps each member's sequence of room changes gap-free, so
    /// that a real gap means a lost event (see [`nats`]).
    fn advance(&self, _user: &str, _event: &Arc<Outbound>) {}
}

/// A span of a room's change counter (the one `changes` reads) that one event reports:
/// every change from `first` to `last`, with no other change of the room in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomChange {
    pub room: RoomKey,
    pub first: u64,
    pub last: u64,
}

/// The room changes of one event, gathered as a command makes them.
#[derive(Debug, Default, Clone)]
pub struct RoomChanges(Vec<RoomChange>);

impl RoomChanges {
    /// Adds change number `change` of `room`.
    pub fn add(&mut self, room: &RoomKey, change: u64) {
        match self.0.iter_mut().find(|span| span.room == *room) {
            Some(span) => {
                span.first = span.first.min(change);
                span.last = span.last.max(change);
            }
            None => self.0.push(RoomChange {
                room: room.clone(),
                first: change,
                last: change,
            }),
        }
    }

    pub fn spans(&self) -> &[RoomChange] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One server-to-client event, rendered once for all its recipients and both dialects.
///
/// The plain dialect's frame is the only copy of the payload: `data` is a slice of it.
/// Keeping the payload and the frame side by side doubled what a queued event holds, and
/// a connection that stops reading holds its queued events until it is cut.
#[derive(Debug)]
pub struct Outbound {
    /// Event name (`message:sent`, `message:seen`, `typing`).
    pub name: &'static str,
    /// `{"event":NAME,"data":DATA}`, shared by every plain connection.
    frame: Utf8Bytes,
    /// The payload as a raw JSON value, built by the first Socket.IO connection that sends it.
    raw: OnceLock<Box<RawValue>>,
    /// For a `message:sent` of a new message: which one, and how it was announced; what a
    /// broker between processes sends instead of the snapshot.
    new_message: Option<Box<NewMessage>>,
    /// The room changes this event reports; empty for typing and blocks, which change no
    /// room. What a broker between processes checks for lost events.
    changes: RoomChanges,
    /// For a `block` or `unblock`: the blocker's change number it reports, where the
    /// store numbers them; what a broker between processes checks for lost ones.
    block_change: Option<u64>,
}

/// A new message as a `message:sent` announces it, without the room's snapshot.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub announced: Announced,
    /// The room id as the sender named it.
    pub room_id: String,
    pub sender: SessionUser,
}

/// What a queued event holds besides its frame: the `Arc`'s allocation (counts and the
/// struct), the header `bytes` adds once the frame is shared, and its channel slot.
const QUEUED_OVERHEAD: usize = 160;

impl Outbound {
    /// Renders `event` for the wire.
    pub fn new(event: ServerEvent) -> Arc<Outbound> {
        Self::with_changes(event, RoomChanges::default())
    }

    /// Renders `event`, which reports `changes`.
    pub fn with_changes(event: ServerEvent, changes: RoomChanges) -> Arc<Outbound> {
        let new_message = match &event {
            ServerEvent::MessageSent {
                room_id,
                user,
                announces: Some(announced),
                ..
            } => Some(Box::new(NewMessage {
                announced: announced.clone(),
                room_id: room_id.clone(),
                sender: user.clone(),
            })),
            _ => None,
        };
        let name = event.name();
        let head = Self::frame_head(name);
        Arc::new(Outbound {
            name,
            frame: Utf8Bytes::from(event.render_between(&head, "}")),
            raw: OnceLock::new(),
            new_message,
            changes,
            block_change: None,
        })
    }

    /// Renders `event`, a `block` or `unblock` that took the blocker's change number
    /// `change`.
    pub fn with_block_change(event: ServerEvent, change: Option<u64>) -> Arc<Outbound> {
        let mut outbound = Self::with_changes(event, RoomChanges::default());
        Arc::get_mut(&mut outbound).expect("just made").block_change = change;
        outbound
    }

    /// An event rendered elsewhere (another node), as its name and payload.
    pub(crate) fn rendered(name: &'static str, data: String) -> Arc<Outbound> {
        Arc::new(Outbound {
            name,
            frame: Self::frame(name, &data),
            raw: OnceLock::new(),
            new_message: None,
            changes: RoomChanges::default(),
            block_change: None,
        })
    }

    /// The room changes this event reports.
    pub fn changes(&self) -> &RoomChanges {
        &self.changes
    }

    /// The blocker's change number a `block` or `unblock` reports, if the store gave one.
    pub fn block_change(&self) -> Option<u64> {
        self.block_change
    }

    /// The new message a `message:sent` announces; `None` for every other event.
    pub fn new_message(&self) -> Option<&NewMessage> {
        self.new_message.as_deref()
    }

    /// `{"event":NAME,"data":DATA}`: the plain dialect's frame, which also holds the
    /// payload, so a queued event keeps one copy of it.
    fn frame(name: &str, data: &str) -> Utf8Bytes {
        let head = Self::frame_head(name);
        let mut frame = String::with_capacity(head.len() + data.len() + 1);
        frame.push_str(&head);
        frame.push_str(data);
        frame.push('}');
        Utf8Bytes::from(frame)
    }

    /// The frame up to its payload: `{"event":NAME,"data":`.
    fn frame_head(name: &str) -> String {
        format!(r#"{{"event":"{name}","data":"#)
    }

    /// The payload as JSON text.
    pub fn data(&self) -> &str {
        let start = r#"{"event":"","data":"#.len() + self.name.len();
        &self.frame[start..self.frame.len() - 1]
    }

    /// The payload as a JSON value for emitters that take one (Socket.IO), checked once
    /// per event rather than once per recipient.
    pub fn raw_data(&self) -> &RawValue {
        self.raw.get_or_init(|| {
            RawValue::from_string(self.data().to_owned())
                .expect("event payloads are serialized by the server")
        })
    }

    /// `{"event":…,"data":…}`, shared by every plain connection.
    pub fn plain_frame(&self) -> Utf8Bytes {
        self.frame.clone()
    }

    /// What one queued copy counts against a connection's byte bound and the hub's total:
    /// the frame and what holding it in a queue costs besides. (The Socket.IO rendering,
    /// made once a Socket.IO connection sends the event, is not counted.)
    fn cost(&self) -> usize {
        self.frame.len() + QUEUED_OVERHEAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_renderings_are_built_once() {
        let event = Outbound::new(ServerEvent::Typing {
            room_id: "a-b".into(),
            user_id: "c".into(),
        });
        let frame = event.plain_frame();
        assert_eq!(
            frame.as_str(),
            r#"{"event":"typing","data":{"roomId":"a-b","userId":"c"}}"#
        );
        assert_eq!(
            frame.as_str().as_ptr(),
            event.plain_frame().as_str().as_ptr()
        );
        assert_eq!(event.raw_data().get(), r#"{"roomId":"a-b","userId":"c"}"#);
        assert!(std::ptr::eq(event.raw_data(), event.raw_data()));
    }

    #[test]
    fn a_message_sent_is_framed_around_its_payload() {
        let event = ServerEvent::MessageSent {
            room_id: "a-b".into(),
            user: SessionUser {
                id: "a".into(),
                name: "Ann".into(),
            },
            messages: r#"[{"id":2},{"id":1}]"#.into(),
            announces: None,
        };
        let payload = event.render_between("", "");
        let outbound = Outbound::new(event);
        assert_eq!(
            outbound.plain_frame().as_str(),
            format!(r#"{{"event":"message:sent","data":{payload}}}"#)
        );
        assert_eq!(outbound.data(), payload);
        let rendered = Outbound::rendered("message:sent", payload);
        assert_eq!(rendered.plain_frame(), outbound.plain_frame());
    }

    #[test]
    fn the_payload_is_held_once_inside_the_frame() {
        let event = Outbound::new(ServerEvent::Typing {
            room_id: "a-b".into(),
            user_id: "c".into(),
        });
        let frame = event.plain_frame();
        let data = event.data();
        assert_eq!(data, r#"{"roomId":"a-b","userId":"c"}"#);
        let within = frame.as_str().as_bytes().as_ptr_range();
        assert!(within.contains(&data.as_ptr()));
        assert_eq!(event.cost(), frame.len() + QUEUED_OVERHEAD);
    }
}
