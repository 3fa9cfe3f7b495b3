//! Where fan-out happens: every user has a channel, and every connection of that user
//! (tabs, devices, either dialect) is subscribed to it.
//!
//! An event is serialized once into an [`Outbound`] and the same `Arc` is queued to every
//! recipient. The plain frame is built lazily, once, and shared; for Socket.IO the JSON is
//! checked once and shared, and socketioxide wraps it in a packet per socket. Each connection's queue is bounded in *bytes*: a client that stops reading is
//! flagged as a slow consumer and cut off by its own connection task, so it can never slow
//! the publisher (who only pushes without waiting) or grow memory past the bound.
//!
//! The map sits behind a std `RwLock` held only for a lookup and a few non-blocking pushes,
//! never across an `.await`, so an async lock would buy nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use serde_json::value::RawValue;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One server-to-client event, serialized once for all its recipients.
#[derive(Debug)]
pub struct Outbound {
    /// Event name (`message:sent`, `message:seen`, `typing`).
    pub event: &'static str,
    /// The payload as JSON text.
    pub data: String,
    /// The plain dialect's frame, built by the first plain connection that sends it.
    plain: OnceLock<Utf8Bytes>,
    /// The payload as a raw JSON value, built by the first Socket.IO connection that sends it.
    raw: OnceLock<Box<RawValue>>,
}

impl Outbound {
    pub fn new(event: &'static str, data: String) -> Arc<Outbound> {
        Arc::new(Outbound {
            event,
            data,
            plain: OnceLock::new(),
            raw: OnceLock::new(),
        })
    }

    /// The payload as a JSON value for emitters that take one (Socket.IO), checked once
    /// per event rather than once per recipient.
    pub fn raw_data(&self) -> &RawValue {
        self.raw.get_or_init(|| {
            RawValue::from_string(self.data.clone())
                .expect("hub payloads are serialized by the server")
        })
    }

    /// `{"event":…,"data":…}`, shared by every plain connection.
    pub fn plain_frame(&self) -> Utf8Bytes {
        self.plain
            .get_or_init(|| {
                let mut frame = String::with_capacity(self.data.len() + self.event.len() + 24);
                frame.push_str("{\"event\":\"");
                frame.push_str(self.event);
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

/// The sending half of one connection's outbound queue.
#[derive(Clone)]
struct Queue {
    tx: mpsc::UnboundedSender<Arc<Outbound>>,
    state: Arc<QueueState>,
}

/// Shared between the hub (pushing) and the connection task (draining).
struct QueueState {
    /// Bytes queued and not yet written to the socket.
    queued: AtomicUsize,
    /// The byte bound; a push past it marks the connection a slow consumer.
    max_bytes: usize,
    /// Set once when the bound was exceeded; the connection must then close with 1008.
    overflowed: AtomicBool,
    /// Wakes the connection task when `overflowed` is set.
    overflow: Notify,
}

impl Queue {
    fn push(&self, event: &Arc<Outbound>) {
        if self.state.overflowed.load(Ordering::Relaxed) {
            return;
        }
        let cost = event.cost();
        let before = self.state.queued.fetch_add(cost, Ordering::AcqRel);
        if before + cost > self.state.max_bytes {
            self.state.queued.fetch_sub(cost, Ordering::AcqRel);
            self.state.overflowed.store(true, Ordering::Release);
            self.state.overflow.notify_one();
            return;
        }
        if self.tx.send(Arc::clone(event)).is_err() {
            self.state.queued.fetch_sub(cost, Ordering::AcqRel);
        }
    }
}

/// All connections, by user.
#[derive(Default)]
pub struct Hub {
    users: RwLock<HashMap<String, Vec<(u64, Queue)>>>,
    next_id: AtomicU64,
    connections: AtomicUsize,
    slow_consumers: AtomicU64,
}

/// The per-user connection cap was reached.
#[derive(Debug)]
pub struct TooManyConnections;

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    /// Subscribes one connection of `user`, unless the user already has `per_user_cap`.
    pub fn subscribe(
        self: &Arc<Self>,
        user: &str,
        per_user_cap: usize,
        max_outbound_bytes: usize,
    ) -> Result<Subscription, TooManyConnections> {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(QueueState {
            queued: AtomicUsize::new(0),
            max_bytes: max_outbound_bytes,
            overflowed: AtomicBool::new(false),
            overflow: Notify::new(),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut users = self.users.write().expect("hub lock poisoned");
            let conns = users.entry(user.to_owned()).or_default();
            if conns.len() >= per_user_cap {
                return Err(TooManyConnections);
            }
            let queue = Queue {
                tx,
                state: Arc::clone(&state),
            };
            conns.push((id, queue));
        }
        self.connections.fetch_add(1, Ordering::Relaxed);
        Ok(Subscription {
            hub: Arc::clone(self),
            user: user.to_owned(),
            id,
            rx,
            state,
        })
    }

    /// Queues `event` to every connection of `user`, without waiting for any of them.
    pub fn publish(&self, user: &str, event: &Arc<Outbound>) {
        let users = self.users.read().expect("hub lock poisoned");
        if let Some(conns) = users.get(user) {
            for (_, queue) in conns {
                queue.push(event);
            }
        }
    }

    /// Open connections, all users and dialects together.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Users with at least one open connection.
    pub fn users_online(&self) -> usize {
        self.users.read().expect("hub lock poisoned").len()
    }

    /// Connections cut off so far for not reading their events.
    pub fn slow_consumers(&self) -> u64 {
        self.slow_consumers.load(Ordering::Relaxed)
    }

    fn unsubscribe(&self, user: &str, id: u64) {
        let mut users = self.users.write().expect("hub lock poisoned");
        if let Some(conns) = users.get_mut(user) {
            conns.retain(|(conn_id, _)| *conn_id != id);
            if conns.is_empty() {
                users.remove(user);
            }
        }
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection's membership in its user's channel; dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<Hub>,
    user: String,
    id: u64,
    rx: mpsc::UnboundedReceiver<Arc<Outbound>>,
    state: Arc<QueueState>,
}

impl Subscription {
    /// The next queued event; its bytes stay counted until [`Subscription::sent`].
    pub async fn recv(&mut self) -> Option<Arc<Outbound>> {
        self.rx.recv().await
    }

    /// Releases an event's bytes once it has been written to the socket.
    pub fn sent(&self, event: &Outbound) {
        self.state.queued.fetch_sub(event.cost(), Ordering::AcqRel);
    }

    /// A handle that resolves once this connection's queue overflowed.
    pub fn overflow_signal(&self) -> OverflowSignal {
        OverflowSignal {
            hub: Arc::clone(&self.hub),
            state: Arc::clone(&self.state),
        }
    }
}

/// Watches one connection's queue for overflow, independently of its receiver.
pub struct OverflowSignal {
    hub: Arc<Hub>,
    state: Arc<QueueState>,
}

impl OverflowSignal {
    /// Resolves once the queue overflowed: the client is not reading and must be cut off.
    pub async fn overflowed(&self) {
        loop {
            let notified = self.state.overflow.notified();
            if self.state.overflowed.load(Ordering::Acquire) {
                self.hub.slow_consumers.fetch_add(1, Ordering::Relaxed);
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.user, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_connection_of_a_user_receives_and_others_do_not() {
        let hub = Hub::new();
        let mut a1 = hub.subscribe("a", 4, 1 << 20).unwrap();
        let mut a2 = hub.subscribe("a", 4, 1 << 20).unwrap();
        let mut b = hub.subscribe("b", 4, 1 << 20).unwrap();
        let event = Outbound::new("typing", "{}".into());
        hub.publish("a", &event);
        assert!(Arc::ptr_eq(&a1.recv().await.unwrap(), &event));
        assert!(Arc::ptr_eq(&a2.recv().await.unwrap(), &event));
        assert!(b.rx.try_recv().is_err());
        assert_eq!((hub.connection_count(), hub.users_online()), (3, 2));
        drop(a1);
        drop(a2);
        assert_eq!((hub.connection_count(), hub.users_online()), (1, 1));
    }

    #[test]
    fn per_user_cap_is_enforced() {
        let hub = Hub::new();
        let _one = hub.subscribe("a", 1, 1024).unwrap();
        assert!(hub.subscribe("a", 1, 1024).is_err());
        assert!(hub.subscribe("b", 1, 1024).is_ok());
    }

    #[tokio::test]
    async fn a_full_queue_flags_the_slow_consumer_instead_of_growing() {
        let hub = Hub::new();
        let sub = hub.subscribe("a", 1, 1000).unwrap();
        let event = Outbound::new("message:sent", "x".repeat(400));
        for _ in 0..10 {
            hub.publish("a", &event);
        }
        assert!(sub.state.queued.load(Ordering::Relaxed) <= 1000);
        sub.overflow_signal().overflowed().await;
        assert_eq!(hub.slow_consumers(), 1);
    }

    #[test]
    fn plain_frame_is_built_once() {
        let event = Outbound::new("typing", r#"{"roomId":"a-b"}"#.into());
        let frame = event.plain_frame();
        assert_eq!(
            frame.as_str(),
            r#"{"event":"typing","data":{"roomId":"a-b"}}"#
        );
        assert_eq!(
            frame.as_str().as_ptr(),
            event.plain_frame().as_str().as_ptr()
        );
        assert_eq!(event.raw_data().get(), r#"{"roomId":"a-b"}"#);
        assert!(std::ptr::eq(event.raw_data(), event.raw_data()));
    }
}
