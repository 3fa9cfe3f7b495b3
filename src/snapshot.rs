//! The latest-50 cache behind every `message:sent`.
//!
//! Each `message:sent` carries the room's latest 50 messages. Reading them from disk on
//! every send would cost a range scan per message; instead the writer keeps them in memory
//! for recently active rooms, each message already serialized to JSON, so a snapshot is
//! one concatenation. The cache is bounded in rooms (least recently used out first) and is
//! only touched by the writer thread, so it needs no lock.

use std::collections::{HashMap, VecDeque};

use crate::protocol::event::MAX_MESSAGES_LIMIT;
use crate::protocol::{ChatMessage, SessionUser};
use crate::store::{Result, RoomKey};

struct Cached {
    id: u64,
    /// The message serialized as it appears inside `messages`.
    json: String,
}

struct RecentRoom {
    /// Newest first, at most [`MAX_MESSAGES_LIMIT`].
    messages: VecDeque<Cached>,
    /// Recency stamp for eviction.
    last_used: u64,
}

/// The latest messages of up to `capacity` rooms.
pub struct RecentCache {
    rooms: HashMap<RoomKey, RecentRoom>,
    capacity: usize,
    clock: u64,
}

fn cached(message: &ChatMessage) -> Cached {
    Cached {
        id: message.id,
        json: serde_json::to_string(message).expect("messages serialize"),
    }
}

impl RecentCache {
    pub fn new(capacity: usize) -> RecentCache {
        RecentCache {
            rooms: HashMap::new(),
            capacity: capacity.max(1),
            clock: 0,
        }
    }

    /// Records a message just appended. `load` reads the room's latest messages (which
    /// already include this one) when the room is not cached.
    pub fn record_new(
        &mut self,
        room: &RoomKey,
        message: &ChatMessage,
        load: impl FnOnce() -> Result<Vec<ChatMessage>>,
    ) -> Result<()> {
        if let Some(recent) = self.rooms.get_mut(room) {
            recent.messages.push_front(cached(message));
            recent.messages.truncate(MAX_MESSAGES_LIMIT);
            return Ok(());
        }
        self.load(room, load)
    }

    /// Makes sure the room is cached, reading it with `load` when it is not.
    pub fn ensure(
        &mut self,
        room: &RoomKey,
        load: impl FnOnce() -> Result<Vec<ChatMessage>>,
    ) -> Result<()> {
        if self.rooms.contains_key(room) {
            return Ok(());
        }
        self.load(room, load)
    }

    /// Replaces a cached message whose state changed (it was seen).
    pub fn update(&mut self, room: &RoomKey, message: &ChatMessage) {
        if let Some(recent) = self.rooms.get_mut(room) {
            if let Some(slot) = recent.messages.iter_mut().find(|c| c.id == message.id) {
                *slot = cached(message);
            }
        }
    }

    /// Forgets everything; used when a commit failed, since the cache may then hold
    /// messages that never reached the disk.
    pub fn clear(&mut self) {
        self.rooms.clear();
    }

    /// The `message:sent` payload for a cached room: `{roomId, user, messages}`.
    pub fn snapshot(&mut self, room: &RoomKey, room_id: &str, user: &SessionUser) -> String {
        self.clock += 1;
        let recent = self
            .rooms
            .get_mut(room)
            .expect("snapshot of a room that was just cached");
        recent.last_used = self.clock;
        let body: usize = recent.messages.iter().map(|c| c.json.len() + 1).sum();
        let mut out = String::with_capacity(body + room_id.len() + user.name.len() * 2 + 64);
        out.push_str("{\"roomId\":");
        out.push_str(&serde_json::to_string(room_id).expect("strings serialize"));
        out.push_str(",\"user\":");
        out.push_str(&serde_json::to_string(user).expect("users serialize"));
        out.push_str(",\"messages\":[");
        for (i, c) in recent.messages.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&c.json);
        }
        out.push_str("]}");
        out
    }

    fn load(
        &mut self,
        room: &RoomKey,
        load: impl FnOnce() -> Result<Vec<ChatMessage>>,
    ) -> Result<()> {
        let messages = load()?.iter().map(cached).collect();
        if self.rooms.len() >= self.capacity {
            let oldest = self
                .rooms
                .iter()
                .min_by_key(|(_, r)| r.last_used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.rooms.remove(&oldest);
            }
        }
        self.clock += 1;
        self.rooms.insert(
            room.clone(),
            RecentRoom {
                messages,
                last_used: self.clock,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u64) -> ChatMessage {
        ChatMessage {
            id,
            user_id: "a".into(),
            message: format!("m{id}"),
            sent_ms: id as i64,
            seen_ms: None,
            client_message_id: None,
        }
    }

    fn ids(snapshot: &str) -> Vec<u64> {
        let v: serde_json::Value = serde_json::from_str(snapshot).unwrap();
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn keeps_the_latest_fifty_newest_first() {
        let room = RoomKey::new("a", "b");
        let user = SessionUser::unnamed("a");
        let mut cache = RecentCache::new(8);
        cache
            .record_new(&room, &msg(1), || Ok(vec![msg(1)]))
            .unwrap();
        for id in 2..=60 {
            cache
                .record_new(&room, &msg(id), || panic!("room is cached"))
                .unwrap();
        }
        let snap = cache.snapshot(&room, "a-b", &user);
        assert_eq!(ids(&snap), (11..=60).rev().collect::<Vec<_>>());
        let v: serde_json::Value = serde_json::from_str(&snap).unwrap();
        assert_eq!(v["roomId"], "a-b");
        assert_eq!(v["user"]["id"], "a");
    }

    #[test]
    fn seen_updates_show_in_the_next_snapshot() {
        let room = RoomKey::new("a", "b");
        let mut cache = RecentCache::new(8);
        cache.ensure(&room, || Ok(vec![msg(2), msg(1)])).unwrap();
        let mut seen = msg(1);
        seen.seen_ms = Some(5);
        cache.update(&room, &seen);
        let snap = cache.snapshot(&room, "a-b", &SessionUser::unnamed("a"));
        let v: serde_json::Value = serde_json::from_str(&snap).unwrap();
        assert_eq!(v["messages"][1]["seenAt"], "1970-01-01T00:00:00.005Z");
        assert_eq!(v["messages"][0]["seenAt"], serde_json::Value::Null);
    }

    #[test]
    fn evicts_the_least_recently_used_room() {
        let mut cache = RecentCache::new(2);
        let (r1, r2, r3) = (
            RoomKey::new("a", "1"),
            RoomKey::new("a", "2"),
            RoomKey::new("a", "3"),
        );
        cache.ensure(&r1, || Ok(vec![msg(1)])).unwrap();
        cache.ensure(&r2, || Ok(vec![msg(1)])).unwrap();
        cache.snapshot(&r1, "1-a", &SessionUser::unnamed("a"));
        cache.ensure(&r3, || Ok(vec![msg(1)])).unwrap();
        assert!(cache.rooms.contains_key(&r1));
        assert!(!cache.rooms.contains_key(&r2));
    }
}
