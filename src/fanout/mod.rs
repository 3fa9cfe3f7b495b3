//! Fan-out: how an event reaches every connection of a user.
//!
//! Publishers (the writer after each commit, the typing handler) see only [`Broker`]:
//! publish an event to a user, never waiting on anyone. [`hub::Hub`] is the in-process
//! broker, and also where connections subscribe; a broker between processes would sit
//! beside it, publishing there and feeding the local hub from there.
//!
//! An event is rendered once into an [`Outbound`] and the same `Arc` goes to every
//! recipient: the plain dialect's frame is built lazily, once, and shared; for Socket.IO
//! the JSON is checked once and shared, and socketioxide wraps it in a packet per socket.

pub mod hub;

use std::sync::{Arc, OnceLock};

use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::server_event::ServerEvent;

/// Where events are published: to a user, whichever connections they have.
pub trait Broker: Send + Sync {
    /// Queues `event` to every connection of `user`. Never blocks: the writer calls it
    /// between commits.
    fn publish(&self, user: &str, event: &Arc<Outbound>);

    /// Whether `user` has an open connection now: webhooks marked `offline_only` are
    /// posted only for recipients who have none when their message commits.
    fn is_online(&self, user: &str) -> bool;
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
}

/// What a queued event holds besides its frame: the `Arc`'s allocation (counts and the
/// struct), the header `bytes` adds once the frame is shared, and its channel slot.
const QUEUED_OVERHEAD: usize = 160;

impl Outbound {
    /// Renders `event` for the wire.
    pub fn new(event: ServerEvent) -> Arc<Outbound> {
        let name = event.name();
        let data = event.payload();
        let mut frame = String::with_capacity(Self::frame_len(name, &data));
        frame.push_str("{\"event\":\"");
        frame.push_str(name);
        frame.push_str("\",\"data\":");
        frame.push_str(&data);
        frame.push('}');
        Arc::new(Outbound {
            name,
            frame: Utf8Bytes::from(frame),
            raw: OnceLock::new(),
        })
    }

    fn frame_len(name: &str, data: &str) -> usize {
        r#"{"event":"","data":}"#.len() + name.len() + data.len()
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
