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
#[derive(Debug)]
pub struct Outbound {
    /// Event name (`message:sent`, `message:seen`, `typing`).
    pub name: &'static str,
    /// The payload as JSON text.
    pub data: String,
    /// The plain dialect's frame, built by the first plain connection that sends it.
    plain: OnceLock<Utf8Bytes>,
    /// The payload as a raw JSON value, built by the first Socket.IO connection that sends it.
    raw: OnceLock<Box<RawValue>>,
}

impl Outbound {
    /// Renders `event` for the wire.
    pub fn new(event: ServerEvent) -> Arc<Outbound> {
        Arc::new(Outbound {
            name: event.name(),
            data: event.payload(),
            plain: OnceLock::new(),
            raw: OnceLock::new(),
        })
    }

    /// The payload as a JSON value for emitters that take one (Socket.IO), checked once
    /// per event rather than once per recipient.
    pub fn raw_data(&self) -> &RawValue {
        self.raw.get_or_init(|| {
            RawValue::from_string(self.data.clone())
                .expect("event payloads are serialized by the server")
        })
    }

    /// `{"event":…,"data":…}`, shared by every plain connection.
    pub fn plain_frame(&self) -> Utf8Bytes {
        self.plain
            .get_or_init(|| {
                let mut frame = String::with_capacity(self.data.len() + self.name.len() + 24);
                frame.push_str("{\"event\":\"");
                frame.push_str(self.name);
                frame.push_str("\",\"data\":");
                frame.push_str(&self.data);
                frame.push('}');
                Utf8Bytes::from(frame)
            })
            .clone()
    }

    /// What one queued copy counts against a connection's byte bound.
    fn cost(&self) -> usize {
        self.data.len() + 32
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
}
