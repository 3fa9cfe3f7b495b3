//! The latest-50 cache behind every `message:sent`.
//!
//! Each `message:sent` carries the room's latest 50 messages. Reading them from disk on
//! every send would cost a range scan per message; instead the writer keeps them in memory
//! for recently active rooms, each message already serialized to JSON, so a snapshot (the
//! JSON array that `ServerEvent::MessageSent` carries) is one concatenation.
//!
//! The cache is bounded in bytes (`memory.recent_cache_bytes`), not rooms: a room of fifty
//! 8 KiB messages costs a hundred times one of short ones. A room's cost is its messages'
//! JSON plus fixed overheads per message and per room. After every call the total is
//! within the budget: the least recently used rooms are dropped first, in O(1) each (a
//! doubly linked list threaded through a slab). A room larger than the whole budget still
//! gets its snapshot; it is simply not kept, and its next send reads it from disk again.
//!
//! Only the writer thread touches the cache, so it needs no lock; its size is published
//! through [`CacheStats`] atomics for `/metrics`.
//!
//! A cached room is only as good as the knowledge that nothing changed it behind the
//! cache's back: in cluster mode another node's writer may have stored, edited or marked
//! messages of the room since this node cached it. Each room therefore keeps the room's
//! change counter as of its cached messages ([`ChatMessage::change`] is the counter's
//! value at a message's latest change). A change recorded here must be the next one
//! (`cached + 1`); anything else means changes this cache never saw, and the room is read
//! from the store again, inside the round's transaction, which holds the room's lock. On
//! one node every change passes through here, so the check never misses.

use std::collections::{HashMap, VecDeque};
use std::mem::size_of;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::model::{ChatMessage, RoomKey};
use crate::protocol::event::MAX_MESSAGES_LIMIT;
use crate::store::Result;

/// The cache's size, readable from any thread while the writer changes it.
#[derive(Debug, Default)]
pub struct CacheStats {
    rooms: AtomicUsize,
    bytes: AtomicUsize,
    evictions: AtomicU64,
}

impl CacheStats {
    /// Rooms cached now.
    pub fn rooms(&self) -> usize {
        self.rooms.load(Ordering::Relaxed)
    }

    /// Bytes they are counted as, at most the budget.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Rooms dropped so far to stay within the budget.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

/// Whether `change` is the next change of a room cached as of `cached`.
fn follows(cached: Option<u64>, change: u64) -> bool {
    cached.is_some_and(|c| c.checked_add(1) == Some(change))
}

struct Cached {
    id: u64,
    /// The message serialized as it appears inside `messages`; boxed so that its
    /// allocation is exactly its length, which is what the budget counts.
    json: Box<str>,
}

/// What a cached message costs beyond its JSON.
const ENTRY_OVERHEAD: usize = size_of::<Cached>();

/// What a cached room costs beyond its messages and its key's text: its slot, and its
/// hash map entry with the table's slack (a table may be half empty after growing).
const ROOM_OVERHEAD: usize = size_of::<Slot>() + 2 * (size_of::<(RoomKey, usize)>() + 1);

/// "No slot": the end of the recency list.
const NIL: usize = usize::MAX;

struct Slot {
    key: RoomKey,
    /// Newest first, at most [`MAX_MESSAGES_LIMIT`].
    messages: VecDeque<Cached>,
    /// The room's change counter as of `messages`; `None` when it is not known (a room
    /// loaded for a retry), so that the next change reloads it.
    change: Option<u64>,
    /// Bytes this room is counted as.
    bytes: usize,
    /// Neighbours in the recency list: `prev` is more recently used.
    prev: usize,
    next: usize,
}

impl Slot {
    /// The room's cost: overheads, the key twice (map and slot), and the messages.
    fn cost(&self) -> usize {
        ROOM_OVERHEAD
            + 2 * (self.key.low.len() + self.key.high.len())
            + self.messages.capacity() * ENTRY_OVERHEAD
            + self.messages.iter().map(|c| c.json.len()).sum::<usize>()
    }
}

/// The latest messages of recently active rooms, within a byte budget.
pub struct RecentCache {
    /// Room → index in `slots`.
    index: HashMap<RoomKey, usize>,
    /// Cached rooms; entries listed in `free` are vacant.
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Most recently used room.
    head: usize,
    /// Least recently used room: the next to go.
    tail: usize,
    /// Sum of every room's `bytes`.
    bytes: usize,
    budget: usize,
    stats: Arc<CacheStats>,
}

fn cached(message: &ChatMessage) -> Cached {
    Cached {
        id: message.id,
        json: serde_json::to_string(message)
            .expect("messages serialize")
            .into_boxed_str(),
    }
}

impl RecentCache {
    /// An empty cache of at most `budget` bytes.
    pub fn new(budget: usize) -> RecentCache {
        RecentCache {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            bytes: 0,
            budget,
            stats: Arc::default(),
        }
    }

    /// The figures `/metrics` shows, kept current by every call.
    pub fn stats(&self) -> Arc<CacheStats> {
        Arc::clone(&self.stats)
    }

    /// The room's latest messages as a JSON array, after `message` was appended to `room`.
    /// `load` reads the room's latest messages (which already include this one) when it is
    /// not cached.
    pub fn record_new(
        &mut self,
        room: &RoomKey,
        message: &ChatMessage,
        load: impl FnOnce() -> Result<Vec<ChatMessage>>,
    ) -> Result<String> {
        let at = match self.index.get(room) {
            Some(&at) if follows(self.slot(at).change, message.change) => {
                let slot = self.slot_mut(at);
                slot.messages.push_front(cached(message));
                slot.messages.truncate(MAX_MESSAGES_LIMIT);
                slot.change = Some(message.change);
                self.recount(at);
                at
            }
            Some(&at) => {
                // Changed elsewhere since it was cached (another node): read it again.
                self.remove(at);
                self.load(room, load)?
            }
            None => self.load(room, load)?,
        };
        // What `load` read includes `message`, the room's latest change.
        self.slot_mut(at).change = Some(message.change);
        Ok(self.render_and_trim(at))
    }

    /// The room's latest messages as a JSON array, as they are (for a retry, which stores
    /// nothing).
    pub fn snapshot(
        &mut self,
        room: &RoomKey,
        load: impl FnOnce() -> Result<Vec<ChatMessage>>,
    ) -> Result<String> {
        let at = match self.index.get(room) {
            Some(&at) => at,
            None => self.load(room, load)?,
        };
        Ok(self.render_and_trim(at))
    }

    /// Replaces a cached message whose state changed (it was seen). A change that is not
    /// the room's next one drops the room: the cache missed changes made elsewhere.
    pub fn update(&mut self, room: &RoomKey, message: &ChatMessage) {
        let Some(&at) = self.index.get(room) else {
            return;
        };
        if !follows(self.slot(at).change, message.change) {
            self.remove(at);
            self.publish();
            return;
        }
        let slot = self.slot_mut(at);
        slot.change = Some(message.change);
        if let Some(c) = slot.messages.iter_mut().find(|c| c.id == message.id) {
            *c = cached(message);
            self.recount(at);
            self.trim();
        }
    }

    /// Forgets one room: its next snapshot is read from the store again. For a change too
    /// wide to apply message by message (messages deleted by retention, a user's erasure).
    pub fn forget(&mut self, room: &RoomKey) {
        if let Some(&at) = self.index.get(room) {
            self.remove(at);
            self.publish();
        }
    }

    /// Forgets everything; used when a commit failed, since the cache may then hold
    /// messages that never reached the disk.
    pub fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.free.clear();
        self.head = NIL;
        self.tail = NIL;
        self.bytes = 0;
        self.publish();
    }

    /// Renders the messages, marks the room most recently used, then drops rooms from the
    /// old end until the budget holds (this one too, when it alone is over the budget).
    fn render_and_trim(&mut self, at: usize) -> String {
        let slot = self.slot(at);
        let body: usize = slot.messages.iter().map(|c| c.json.len() + 1).sum();
        let mut out = String::with_capacity(body + 2);
        out.push('[');
        for (i, c) in slot.messages.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&c.json);
        }
        out.push(']');
        self.unlink(at);
        self.push_front(at);
        self.trim();
        out
    }

    /// Caches a room read with `load`, as the most recently used.
    fn load(
        &mut self,
        room: &RoomKey,
        load: impl FnOnce() -> Result<Vec<ChatMessage>>,
    ) -> Result<usize> {
        let messages = load()?.iter().map(cached).collect();
        let slot = Slot {
            key: room.clone(),
            messages,
            change: None,
            bytes: 0,
            prev: NIL,
            next: NIL,
        };
        let at = match self.free.pop() {
            Some(at) => {
                self.slots[at] = Some(slot);
                at
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.index.insert(room.clone(), at);
        self.push_front(at);
        self.recount(at);
        Ok(at)
    }

    /// Drops least recently used rooms until the total is within the budget.
    fn trim(&mut self) {
        while self.bytes > self.budget && self.tail != NIL {
            self.remove(self.tail);
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
        self.publish();
    }

    /// Drops the room in slot `at`.
    fn remove(&mut self, at: usize) {
        self.unlink(at);
        let slot = self.slots[at].take().expect("listed slots are occupied");
        self.index.remove(&slot.key);
        self.free.push(at);
        self.bytes -= slot.bytes;
    }

    /// Brings a room's counted bytes, and the total, up to date after it changed.
    fn recount(&mut self, at: usize) {
        let slot = self.slot_mut(at);
        let (old, new) = (slot.bytes, slot.cost());
        slot.bytes = new;
        self.bytes = self.bytes - old + new;
    }

    fn publish(&self) {
        self.stats.rooms.store(self.index.len(), Ordering::Relaxed);
        self.stats.bytes.store(self.bytes, Ordering::Relaxed);
    }

    fn slot(&self, at: usize) -> &Slot {
        self.slots[at].as_ref().expect("indexed slots are occupied")
    }

    fn slot_mut(&mut self, at: usize) -> &mut Slot {
        self.slots[at].as_mut().expect("indexed slots are occupied")
    }

    fn unlink(&mut self, at: usize) {
        let (prev, next) = {
            let slot = self.slot(at);
            (slot.prev, slot.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.slot_mut(p).next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slot_mut(n).prev = prev,
        }
    }

    fn push_front(&mut self, at: usize) {
        let old_head = self.head;
        {
            let slot = self.slot_mut(at);
            slot.prev = NIL;
            slot.next = old_head;
        }
        match old_head {
            NIL => self.tail = at,
            h => self.slot_mut(h).prev = at,
        }
        self.head = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(id: u64) -> ChatMessage {
        text_msg(id, format!("m{id}"))
    }

    fn text_msg(id: u64, message: String) -> ChatMessage {
        ChatMessage {
            id,
            user_id: "a".into(),
            message,
            sent_ms: id as i64,
            // As sent: the room's latest change is its newest message.
            change: id,
            ..ChatMessage::default()
        }
    }

    fn ids(snapshot: &str) -> Vec<u64> {
        let v: serde_json::Value = serde_json::from_str(snapshot).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect()
    }

    /// Every room in the recency list, most recent first, checked against the index and
    /// the byte total.
    fn listed(cache: &RecentCache) -> Vec<RoomKey> {
        let mut keys = Vec::new();
        let (mut at, mut prev, mut bytes) = (cache.head, NIL, 0);
        while at != NIL {
            let slot = cache.slot(at);
            assert_eq!(slot.prev, prev);
            assert_eq!(cache.index[&slot.key], at);
            assert_eq!(slot.bytes, slot.cost());
            bytes += slot.bytes;
            keys.push(slot.key.clone());
            (prev, at) = (at, slot.next);
        }
        assert_eq!(cache.tail, prev);
        assert_eq!(keys.len(), cache.index.len());
        assert_eq!(bytes, cache.bytes);
        keys
    }

    #[test]
    fn keeps_the_latest_fifty_newest_first() {
        let room = RoomKey::new("a", "b");
        let mut cache = RecentCache::new(1 << 20);
        cache
            .record_new(&room, &msg(1), || Ok(vec![msg(1)]))
            .unwrap();
        let mut snap = String::new();
        for id in 2..=60 {
            snap = cache
                .record_new(&room, &msg(id), || panic!("room is cached"))
                .unwrap();
        }
        assert_eq!(ids(&snap), (11..=60).rev().collect::<Vec<_>>());
    }

    #[test]
    fn a_room_changed_elsewhere_is_read_again() {
        // Cluster mode: another node stored message 2 after this node cached message 1.
        let room = RoomKey::new("a", "b");
        let mut cache = RecentCache::new(1 << 20);
        cache
            .record_new(&room, &msg(1), || Ok(vec![msg(1)]))
            .unwrap();
        let snap = cache
            .record_new(&room, &msg(3), || Ok(vec![msg(3), msg(2), msg(1)]))
            .unwrap();
        assert_eq!(ids(&snap), [3, 2, 1]);
        // The reload knows the counter again: the next send is served from memory.
        let snap = cache
            .record_new(&room, &msg(4), || panic!("room is cached"))
            .unwrap();
        assert_eq!(ids(&snap), [4, 3, 2, 1]);

        // An edit made elsewhere (change 5) then one here (6): the cached copy is stale,
        // so the room is dropped rather than patched.
        let mut edited = msg(4);
        edited.change = 6;
        cache.update(&room, &edited);
        assert!(listed(&cache).is_empty());

        // A room loaded for a retry has no known counter: its next change reloads it.
        cache.snapshot(&room, || Ok(vec![msg(7)])).unwrap();
        let snap = cache
            .record_new(&room, &msg(8), || Ok(vec![msg(8), msg(7)]))
            .unwrap();
        assert_eq!(ids(&snap), [8, 7]);
    }

    #[test]
    fn a_forgotten_room_is_read_again() {
        let (r1, r2) = (RoomKey::new("a", "b"), RoomKey::new("a", "c"));
        let mut cache = RecentCache::new(1 << 20);
        cache.snapshot(&r1, || Ok(vec![msg(2), msg(1)])).unwrap();
        cache.snapshot(&r2, || Ok(vec![msg(1)])).unwrap();
        cache.forget(&r1);
        assert_eq!(listed(&cache), std::slice::from_ref(&r2));
        cache.forget(&RoomKey::new("x", "y"));
        let snap = cache.snapshot(&r1, || Ok(vec![msg(2)])).unwrap();
        assert_eq!(ids(&snap), [2]);
        assert_eq!(listed(&cache), [r1, r2]);
        assert_eq!(cache.stats().rooms(), 2);
    }

    #[test]
    fn seen_updates_show_in_the_next_snapshot() {
        let room = RoomKey::new("a", "b");
        let mut cache = RecentCache::new(1 << 20);
        let load = || Ok(vec![msg(2), msg(1)]);
        cache.record_new(&room, &msg(2), load).unwrap();
        let mut seen = msg(1);
        seen.seen_ms = Some(5);
        seen.change = 3;
        cache.update(&room, &seen);
        let snap = cache.snapshot(&room, || panic!("room is cached")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&snap).unwrap();
        assert_eq!(v[1]["seenAt"], "1970-01-01T00:00:00.005Z");
        assert_eq!(v[0]["seenAt"], serde_json::Value::Null);
    }

    #[test]
    fn a_forgotten_room_is_loaded_again_and_its_bytes_leave_the_total() {
        let (r1, r2) = (RoomKey::new("a", "1"), RoomKey::new("a", "2"));
        let mut cache = RecentCache::new(1 << 20);
        cache.snapshot(&r1, || Ok(vec![msg(1)])).unwrap();
        let one_room = cache.bytes;
        cache.snapshot(&r2, || Ok(vec![msg(1)])).unwrap();
        cache.forget(&r1);
        assert_eq!((cache.bytes, cache.stats().rooms()), (one_room, 1));
        let mut erased = msg(1);
        erased.erase(2);
        let snap = cache.snapshot(&r1, || Ok(vec![erased])).unwrap();
        let v: serde_json::Value = serde_json::from_str(&snap).unwrap();
        assert_eq!(v[0]["deleted"], true, "{v}");
        // The other room stayed cached, and forgetting an absent room is harmless.
        cache.snapshot(&r2, || panic!("room is cached")).unwrap();
        cache.forget(&RoomKey::new("a", "3"));
        assert_eq!(cache.stats().rooms(), 2);
    }

    #[test]
    fn evicts_the_least_recently_used_room_to_stay_in_budget() {
        let (r1, r2, r3) = (
            RoomKey::new("a", "1"),
            RoomKey::new("a", "2"),
            RoomKey::new("a", "3"),
        );
        // Measure one room, then allow exactly two of that size.
        let mut probe = RecentCache::new(usize::MAX);
        probe.snapshot(&r1, || Ok(vec![msg(1)])).unwrap();
        let mut cache = RecentCache::new(2 * probe.bytes);
        cache.snapshot(&r1, || Ok(vec![msg(1)])).unwrap();
        cache.snapshot(&r2, || Ok(vec![msg(1)])).unwrap();
        cache.snapshot(&r1, || panic!("r1 is cached")).unwrap();
        cache.snapshot(&r3, || Ok(vec![msg(1)])).unwrap();
        assert_eq!(listed(&cache), [r3.clone(), r1.clone()]);
        let stats = cache.stats();
        assert_eq!(
            (stats.rooms(), stats.bytes(), stats.evictions()),
            (2, 2 * probe.bytes, 1)
        );
        cache.clear();
        assert!(listed(&cache).is_empty());
        assert_eq!((stats.rooms(), stats.bytes()), (0, 0));
    }

    #[test]
    fn a_room_larger_than_the_budget_is_served_but_not_kept() {
        let big = RoomKey::new("a", "big");
        let small = RoomKey::new("a", "small");
        let mut cache = RecentCache::new(4096);
        cache.snapshot(&small, || Ok(vec![msg(1)])).unwrap();
        let history: Vec<_> = (1..=3)
            .rev()
            .map(|id| text_msg(id, "x".repeat(2000)))
            .collect();
        let snap = cache.snapshot(&big, || Ok(history.clone())).unwrap();
        assert_eq!(ids(&snap), [3, 2, 1]);
        // Both went: the small one to make room, then the big one, which alone is over.
        assert!(listed(&cache).is_empty());
        // The next send reads it again, and is served in full.
        let mut loads = 0;
        let snap = cache
            .record_new(&big, &text_msg(4, "y".into()), || {
                loads += 1;
                let mut latest = vec![text_msg(4, "y".into())];
                latest.extend(history.clone());
                Ok(latest)
            })
            .unwrap();
        assert_eq!(loads, 1);
        assert_eq!(ids(&snap), [4, 3, 2, 1]);
        assert!(cache.bytes <= 4096);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A new message of this length into room n.
        Send(u8, usize),
        /// A retry in room n.
        Retry(u8),
        /// A read receipt for the newest-but-k message of room n.
        Seen(u8, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..40, 0usize..3000).prop_map(|(r, len)| Op::Send(r, len)),
            (0u8..40).prop_map(Op::Retry),
            (0u8..40, 0u8..60).prop_map(|(r, k)| Op::Seen(r, k)),
        ]
    }

    proptest! {
        /// Whatever the sequence, the cache never passes its budget, its bookkeeping
        /// matches its contents, and every snapshot is the room's true latest 50.
        #[test]
        fn never_exceeds_the_budget(
            budget in 1usize..200_000,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let mut cache = RecentCache::new(budget);
            // The "disk": every room's messages, oldest first.
            let mut disk: HashMap<u8, Vec<ChatMessage>> = HashMap::new();
            let mut next_id = 1;
            let latest = |all: &Vec<ChatMessage>| -> Vec<ChatMessage> {
                all.iter().rev().take(MAX_MESSAGES_LIMIT).cloned().collect()
            };
            for op in ops {
                let (r, snap) = match op {
                    Op::Send(r, len) => {
                        let message = text_msg(next_id, "z".repeat(len));
                        next_id += 1;
                        let all = disk.entry(r).or_default();
                        all.push(message.clone());
                        let rows = latest(all);
                        let room = RoomKey::new("a", &r.to_string());
                        let snap = cache
                            .record_new(&room, &message, || Ok(rows))
                            .unwrap();
                        (r, Some(snap))
                    }
                    Op::Retry(r) => {
                        let rows = latest(disk.entry(r).or_default());
                        let room = RoomKey::new("a", &r.to_string());
                        let snap = cache.snapshot(&room, || Ok(rows)).unwrap();
                        (r, Some(snap))
                    }
                    Op::Seen(r, k) => {
                        let all = disk.entry(r).or_default();
                        if let Some(i) = all.len().checked_sub(1 + k as usize) {
                            all[i].seen_ms = Some(7);
                            let room = RoomKey::new("a", &r.to_string());
                            cache.update(&room, &all[i]);
                        }
                        (r, None)
                    }
                };
                prop_assert!(cache.bytes <= budget, "{} > {budget}", cache.bytes);
                listed(&cache);
                prop_assert_eq!(cache.stats.bytes(), cache.bytes);
                if let Some(snap) = snap {
                    let v: serde_json::Value = serde_json::from_str(&snap).unwrap();
                    let want: Vec<ChatMessage> = latest(&disk[&r]);
                    prop_assert_eq!(v, serde_json::to_value(&want).unwrap());
                }
            }
        }
    }
}
