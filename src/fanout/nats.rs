//! The broker between nodes (cluster mode): events travel over NATS, on one subject per
//! user, and each node feeds the connections it holds from the subjects of its own users.
//!
//! Why core NATS: it is a broker that operators already run (Centrifugo fans out the same
//! way), its subjects map one to one onto "every connection of a user", and a node only
//! receives the traffic of the users connected to it: it subscribes to a user's subject
//! when their first connection here opens and unsubscribes when their last one closes
//! ([`Presence`]). NATS is not the store of record: every event it carries was committed
//! first, and the store can say again what it announced.
//!
//! Core NATS delivers at most once: a message is lost when a subscriber falls behind
//! (slow consumer), or while a node reconnects. Nothing here depends on every message
//! arriving. Per-room ids are gap-free, so the node remembers, per local user and room,
//! the last message id it delivered ([`Tracker`]):
//! - an id at or below it is a duplicate, dropped;
//! - an id past the next one is a gap: the missing messages are read from the store and
//!   delivered first, in order;
//! - a NATS reconnect, a slow consumer or a full queue here may have lost anything, so
//!   every remembered room is caught up from the store.
//!
//! A room the tracker does not hold (a conversation this node never delivered to the
//! user, or one it forgot under `cluster.tracked_rooms_per_user`) shows no gap: its first
//! message here may come after lost ones. The node remembers when the user came (or a
//! room of theirs was last forgotten, `since_ms`), and delivers what such a room got since:
//! when its next message arrives, and at a catch-up, which also reads the user's rooms
//! most recently sent to since then (one read per user, the store's inbox order) and
//! catches up those the tracker does not hold, at most [`MAX_UNTRACKED_ROOMS`] a user,
//! most recent first; an older one waits for its next message, or the client's `rooms`
//! read. A message's `sent_ms` is the clock of the node that committed it: the code
//! assumes the nodes' clocks agree within [`CLOCK_SKEW_MS`] (5 s; NTP keeps them within
//! milliseconds), and counts a message sent up to that long before `since_ms` as one
//! the user may have missed. A message they had (their own history read) may so come
//! again, the same message with the same id: a repeat rather than a loss. With clocks
//! further apart, a message sent just after the user came can be missed until the
//! room's next message.
//!
//! An erasure's notice ([`Notice::Erased`]) crosses NATS once. A catch-up also asks the
//! store which of the task's users were erased (one read for all of them) and closes the
//! connections admitted with a token from before the erasure, as the notice would have
//! ([`Hub::disconnect_erased`]); a connection admitted after it stays. A lost notice with
//! no outage signal here (the erasing node's NATS link was down) is caught by the
//! presence heartbeat's check in cluster mode (`store::postgres::presence`), within
//! seconds.
//!
//! The same holds for every other change to a room (a delivered or seen mark, an edit, a
//! delete): each takes the room's next change number (the counter `changes` reads), and
//! the event that reports it carries its span of that counter. A member of the room who
//! gets no event for a change (the reader of a receipt) is told the span alone
//! ([`Broker::advance`]), so each local user's changes of a room arrive as an unbroken
//! sequence, and the node remembers the last one per room:
//! - a span at or below it is a duplicate, dropped;
//! - a span that starts past the next one is a gap: the changes in between are read from
//!   the store (`changes`) and delivered first, in order, each as the event its message's
//!   state now calls for: `message:updated` for an edited or deleted message, to its
//!   sender `message:seen` (or `message:delivered`) for a marked one. A message that changed
//!   again later is left to the later change's event. Which change was lost is not
//!   stored, so a repair may repeat an update or receipt the client had (same message,
//!   same timestamps): harmless, where a missing one is not.
//!
//! Telling the reader of a receipt costs one small NATS message per receipt event; without
//! it every receipt would leave a hole that costs a read of the store.
//!
//! `block` and `unblock` change no room, so they have a counter of their own: the store
//! numbers each blocker's block changes gap-free, and the event carries its number
//! ([`Notice::Block`]). The node remembers per local user the last one it told them of
//! ([`LocalUser::block_change`]): a number at or below it is a duplicate, dropped; one past
//! the next is a gap, and the rows changed in between are read from the store
//! (`block_changes`) and delivered first, each as the event its pair's row now says
//! (`block` with the standing block's time, or `unblock` for a tombstone). A reconnect or
//! a slow consumer catches up every local user the same way, one read for many users; a
//! dropped event here, its user once the queue is empty. For a user it knows no number of
//! yet (none told since they came), the node reads the rows changed since the user came
//! (`since_ms`, less [`BLOCK_CLOCK_MARGIN_MS`]): that time is this node's clock and a
//! row's is its writer's, so node clocks are assumed to agree within the margin. Both
//! reads prefer a repeated event to a lost one: a `block` with the same `blockedAt`, or an
//! `unblock` of someone not blocked, changes nothing for a client.
//!
//! Typing is best-effort.
//!
//! NATS messages stay small: a `message:sent` carries the new message's room, id and
//! sender, never the room's 50-message snapshot; the receiving node reads that from its
//! store, up to the announced id. Every other event is carried as rendered (a receipt list,
//! one edited message, a typing notice).
//!
//! The order that matters is per user and room, not per node, so the work is shared over
//! several tasks (`cluster.fanout_tasks`), each owning the users whose id hashes to it
//! ([`shard_of`]): everything for one user (what the writer publishes here, what NATS
//! brings, their subscription and tracker) goes through the same task, so a user's
//! `message:sent` events of one room reach their connections in id order whichever node
//! committed them, while one user's store read does not hold up the others'. The tasks
//! read the store over the pool, several reads in flight.
//!
//! Each task has two bounded queues. The writer's publishes go to the first
//! (`cluster.queue_events` long) without waiting. What NATS brings goes to the second
//! (`cluster.queue_events / cluster.fanout_tasks` long), and a subscription's forwarder
//! waits while it is full: the excess stays in NATS's buffers
//! (`cluster.subscription_messages` per user, then a slow consumer, caught up as any
//! loss) rather than in ours. The task serves its own node's events first, so what the
//! writer publishes is dropped only when the node cannot keep up with its own commits.
//!
//! A dropped event is repaired without making things worse: the task notes its user and
//! rooms, and catches those rooms up (one read each) once its queue is empty. Until then
//! the next event of such a room shows the gap and repairs it. Catching up every room at
//! once, while the queue is still full, cost more reads than the events it replaced,
//! and made the task drop more. Only past as many noted rooms as the queue is long are
//! all of the task's remembered rooms caught up (still once its queue is empty).
//!
//! A `message:sent` from another node costs one read of the room, and reads are shared:
//! a task takes what its queues hold at once (up to [`BATCH`] jobs) and, for each user
//! and room, reads the room once up to the highest id announced in it, `50 + k - 1`
//! messages, which holds the snapshot of each of the `k` messages in between ([`Page`]).
//! A gap and a catch-up are one such read per room too, not one per message. A gap in a
//! user's changes that lost messages needs the room's changes and the page for the lost
//! messages' snapshots (the changes hold only the messages that changed, not the 49
//! before each): one read brings both ([`ReadStore::changes_and_page`]) when the turn
//! builds a `message:sent` of the room anyway, and at a catch-up of a remembered room. A
//! gap revealed by a receipt or an update reads the changes alone, then the page only if
//! a message was lost. A page lives
//! for one turn of the task (one batch), so a snapshot is as fresh as the events queued
//! with it.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use super::hub::{Hub, Presence};
use super::{Broker, Outbound, RoomChange};
use crate::metrics;
use crate::model::{ChangesPage, ChatMessage, HistoryPage, RoomKey, SessionUser};
use crate::protocol::event::MAX_MESSAGES_LIMIT;
use crate::protocol::server_event::{Announced, DeliveredReceipt, SeenReceipt, ServerEvent};
use crate::protocol::time::{format_millis, now_millis};
use crate::store::{BlockCursor, BlockFrom, ReadStore, StoreError};

/// Every event name a node may receive as rendered, to keep the `&'static str` that
/// [`Outbound`] holds.
const EVENT_NAMES: [&str; 7] = [
    "message:sent",
    "message:seen",
    "message:delivered",
    "message:updated",
    "typing",
    "block",
    "unblock",
];

/// Most missing messages recovered at once in one room: each `message:sent` carries the
/// room's latest 50, so a client that gets the last one has the others in its snapshot.
const MAX_RECOVERED: u64 = MAX_MESSAGES_LIMIT as u64;

/// Most pages of `changes` read to fill one gap: a larger gap is left to the client's own
/// `changes` read, as after a long disconnection.
const MAX_CHANGE_PAGES: usize = 20;

/// Most rooms the tracker does not hold that one catch-up reads for one user (see the
/// module docs): past it, the least recently active ones are left to their next message.
pub const MAX_UNTRACKED_ROOMS: usize = 64;

/// How far apart the nodes' clocks may be, in ms: a message's `sent_ms` is the clock of
/// the node that committed it, compared with this node's `since_ms`. A catch-up counts a
/// message sent up to this long before a user came as one they may have missed: a repeat
/// the client may have had (its own history read), rather than a loss.
const CLOCK_SKEW_MS: i64 = 5_000;

/// Most jobs a fan-out task takes from a queue at once, whose reads it shares.
pub const BATCH: usize = 64;

/// Most ids past the one needed that one read of a room fetches ahead for the batch:
/// a read stays within `MAX_MESSAGES_LIMIT + READ_AHEAD` messages.
const READ_AHEAD: u64 = 2 * BATCH as u64;

/// How to reach NATS and how much the node may hold for it.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// One or more servers, comma-separated.
    pub url: String,
    /// This node's name, on its NATS connection and in its logs.
    pub node_name: String,
    /// Events published here waiting for each fan-out task (`cluster.queue_events`); what
    /// NATS brings waits in a queue of this over `fanout_tasks`.
    pub queue_events: usize,
    /// Tasks the fan-out work is shared over, by user (`cluster.fanout_tasks`).
    pub fanout_tasks: usize,
    /// Messages buffered per user subscription (`cluster.subscription_messages`).
    pub subscription_messages: usize,
    /// Rooms remembered per local user (`cluster.tracked_rooms_per_user`).
    pub tracked_rooms_per_user: usize,
}

/// The name a node goes by unless `cluster.node_name` says otherwise: the host name and
/// the listening port, unique on one machine and across machines.
pub fn default_node_name(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "chat-server".to_owned());
    format!("{host}:{port}")
}

/// Why cluster fan-out could not start.
#[derive(Debug)]
pub enum NatsError {
    /// The first connection to NATS failed.
    Connect(async_nats::ConnectError),
}

impl std::fmt::Display for NatsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsError::Connect(e) => write!(f, "cannot connect to NATS: {e}"),
        }
    }
}

impl std::error::Error for NatsError {}

/// What travels on a user's subject.
#[derive(Debug, Serialize, Deserialize)]
enum Notice {
    /// A new message: the receiver builds the `message:sent` from its store.
    Sent {
        low: String,
        high: String,
        message_id: u64,
        room_id: String,
        sender_id: String,
        sender_name: String,
        changes: Vec<Span>,
    },
    /// Any other event, as rendered by the node that published it.
    Rendered {
        name: String,
        data: String,
        changes: Vec<Span>,
    },
    /// Room changes the user got no event for (the reader of a receipt): they only keep
    /// the user's sequence of changes unbroken.
    Advanced { changes: Vec<Span> },
    /// The user was erased: every node closes their connections.
    Erased,
    /// A `block` or `unblock` to the blocker, as rendered, with the blocker's change
    /// number it took.
    Block {
        name: String,
        data: String,
        change: u64,
    },
}

/// A [`RoomChange`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct Span {
    low: String,
    high: String,
    first: u64,
    last: u64,
}

impl Span {
    fn all(changes: &[RoomChange]) -> Vec<Span> {
        changes
            .iter()
            .map(|c| Span {
                low: c.room.low.clone(),
                high: c.room.high.clone(),
                first: c.first,
                last: c.last,
            })
            .collect()
    }

    fn into_change(self) -> RoomChange {
        RoomChange {
            room: RoomKey {
                low: self.low,
                high: self.high,
            },
            first: self.first,
            last: self.last,
        }
    }
}

impl Notice {
    /// What NATS carries of `event`.
    fn of(event: &Outbound) -> Notice {
        if let Some(change) = event.block_change() {
            return Notice::Block {
                name: event.name.to_owned(),
                data: event.data().to_owned(),
                change,
            };
        }
        match event.new_message() {
            Some(new) => Notice::Sent {
                low: new.announced.room.low.clone(),
                high: new.announced.room.high.clone(),
                message_id: new.announced.message_id,
                room_id: new.room_id.clone(),
                sender_id: new.sender.id.clone(),
                sender_name: new.sender.name.clone(),
                changes: Span::all(event.changes().spans()),
            },
            None => Notice::Rendered {
                name: event.name.to_owned(),
                data: event.data().to_owned(),
                changes: Span::all(event.changes().spans()),
            },
        }
    }
}

/// The subject of `user`'s events: their id in hex, since user ids may hold the dots and
/// wildcards that NATS subjects give meaning to.
pub fn subject(user: &str) -> String {
    let mut subject = String::with_capacity(10 + 2 * user.len());
    subject.push_str("chat.user.");
    for byte in user.bytes() {
        let _ = write!(subject, "{byte:02x}");
    }
    subject
}

/// One unit of work for the fan-out task.
enum Job {
    /// An event published on this node (committed by its writer, or a typing notice) for
    /// a user connected here.
    Local { user: String, event: Arc<Outbound> },
    /// The same for a user not connected here: only what NATS carries, so that a queued
    /// `message:sent` does not hold its snapshot.
    Forward { user: String, notice: Notice },
    /// A notice from NATS for a user connected here, decoded by its subscription's
    /// forwarder.
    Remote { user: String, notice: Notice },
    /// Room changes committed here that a user connected here got no event for.
    Advanced {
        user: String,
        changes: Vec<RoomChange>,
    },
}

impl Job {
    /// The blocker a `block` or `unblock` committed here is for, when they are connected
    /// here: what catching up repairs when it is dropped.
    fn block_of(&self) -> Option<&str> {
        match self {
            Job::Local { user, event } if event.block_change().is_some() => Some(user),
            _ => None,
        }
    }

    /// The rooms whose events of a user connected here this job carries: what catching
    /// up repairs when it is dropped. A notice for another node (`Forward`) is repaired
    /// there, by the gap the next one shows.
    fn rooms(&self) -> Vec<RoomKey> {
        let changes = match self {
            Job::Local { event, .. } => {
                let mut rooms: Vec<RoomKey> = event
                    .changes()
                    .spans()
                    .iter()
                    .map(|c| c.room.clone())
                    .collect();
                if let Some(new) = event.new_message() {
                    if !rooms.contains(&new.announced.room) {
                        rooms.push(new.announced.room.clone());
                    }
                }
                return rooms;
            }
            Job::Advanced { changes, .. } => changes,
            Job::Forward { .. } | Job::Remote { .. } => return Vec::new(),
        };
        changes.iter().map(|c| c.room.clone()).collect()
    }
}

/// What the broker's handles and the tasks share.
struct Shared {
    /// One per fan-out task.
    signals: Vec<Signals>,
    stats: ClusterStats,
}

/// What wakes one fan-out task besides its queues.
#[derive(Default)]
struct Signals {
    /// Its users whose first connection opened or last one closed since the task looked.
    changed: Mutex<HashSet<String>>,
    /// Set when its events may have been lost: NATS reconnected, a slow consumer.
    lost: AtomicBool,
    /// The rooms of its users whose events its full queue dropped, to catch up once the
    /// queue is empty; at most the queue's length, past which `overflowed` is set.
    dropped: Mutex<HashSet<(String, RoomKey)>>,
    /// More rooms had events dropped than `dropped` holds: once the queue is empty, every
    /// remembered room is caught up too.
    overflowed: AtomicBool,
    /// Its users whose `block` or `unblock` its full queue dropped, to catch up with the
    /// rooms; at most the queue's length too, past which `overflowed` is set.
    dropped_blocks: Mutex<HashSet<String>>,
    wake: Notify,
}

impl Shared {
    /// The signals of the task that owns `user`.
    fn of(&self, user: &str) -> &Signals {
        &self.signals[shard_of(user, self.signals.len())]
    }

    /// Anything may have been lost, for every task: one catch-up of every remembered
    /// room, counted once.
    fn lose_all(&self) {
        let mut fresh = false;
        for signals in &self.signals {
            fresh |= signals.lose();
        }
        if fresh {
            self.stats.count(Repair::CatchUp);
        }
    }
}

impl Signals {
    /// Has the task catch up; false when it was going to already.
    fn lose(&self) -> bool {
        let fresh = !self.lost.swap(true, Ordering::AcqRel);
        self.wake.notify_one();
        fresh
    }

    /// Notes that `user`'s `block` or `unblock` was dropped; like [`Signals::dropped`].
    fn dropped_block(&self, user: &str, bound: usize) -> bool {
        let mut dropped = self.dropped_blocks.lock().expect("dropped lock poisoned");
        if dropped.len() >= bound && !dropped.contains(user) {
            return !self.overflowed.swap(true, Ordering::AcqRel);
        }
        dropped.insert(user.to_owned());
        false
    }

    /// Notes that an event of `user` reporting `rooms` was dropped; true when that calls
    /// for catching up every room (`dropped` is full) and it was not called for already.
    fn dropped(&self, user: &str, rooms: Vec<RoomKey>, bound: usize) -> bool {
        let mut dropped = self.dropped.lock().expect("dropped lock poisoned");
        for room in rooms {
            let key = (user.to_owned(), room);
            if dropped.contains(&key) {
                continue;
            }
            if dropped.len() >= bound {
                return !self.overflowed.swap(true, Ordering::AcqRel);
            }
            dropped.insert(key);
        }
        false
    }
}

/// Which of `tasks` fan-out tasks owns `user`: FNV-1a of the id, the same on every run.
pub fn shard_of(user: &str, tasks: usize) -> usize {
    let hash = user.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % tasks.max(1) as u64) as usize
}

/// What the cluster fan-out has had to repair so far.
#[derive(Debug, Default)]
pub struct ClusterStats {
    recovered: AtomicU64,
    duplicates: AtomicU64,
    dropped: AtomicU64,
    resyncs: AtomicU64,
    subscribed: AtomicU64,
    recovered_changes: AtomicU64,
    duplicate_changes: AtomicU64,
    change_gaps: AtomicU64,
    reads: AtomicU64,
    recovered_blocks: AtomicU64,
    duplicate_blocks: AtomicU64,
    block_gaps: AtomicU64,
    erased: AtomicU64,
}

/// One kind of repair, counted in [`ClusterStats`] and in `chat_cluster_repairs_total`.
#[derive(Debug, Clone, Copy)]
enum Repair {
    Recovered,
    Duplicate,
    Dropped,
    CatchUp,
    RecoveredChange,
    DuplicateChange,
    ChangeGap,
    RecoveredBlock,
    DuplicateBlock,
    BlockGap,
    Erased,
}

impl Repair {
    const ALL: [Repair; 11] = [
        Repair::Recovered,
        Repair::Duplicate,
        Repair::Dropped,
        Repair::CatchUp,
        Repair::RecoveredChange,
        Repair::DuplicateChange,
        Repair::ChangeGap,
        Repair::RecoveredBlock,
        Repair::DuplicateBlock,
        Repair::BlockGap,
        Repair::Erased,
    ];

    /// Its `kind` label.
    fn kind(self) -> &'static str {
        match self {
            Repair::Recovered => "recovered",
            Repair::Duplicate => "duplicate",
            Repair::Dropped => "dropped",
            Repair::CatchUp => "catch_up",
            Repair::RecoveredChange => "recovered_change",
            Repair::DuplicateChange => "duplicate_change",
            Repair::ChangeGap => "change_gap",
            Repair::RecoveredBlock => "recovered_block",
            Repair::DuplicateBlock => "duplicate_block",
            Repair::BlockGap => "block_gap",
            Repair::Erased => "erased",
        }
    }
}

impl ClusterStats {
    fn count(&self, repair: Repair) {
        let counter = match repair {
            Repair::Recovered => &self.recovered,
            Repair::Duplicate => &self.duplicates,
            Repair::Dropped => &self.dropped,
            Repair::CatchUp => &self.resyncs,
            Repair::RecoveredChange => &self.recovered_changes,
            Repair::DuplicateChange => &self.duplicate_changes,
            Repair::ChangeGap => &self.change_gaps,
            Repair::RecoveredBlock => &self.recovered_blocks,
            Repair::DuplicateBlock => &self.duplicate_blocks,
            Repair::BlockGap => &self.block_gaps,
            Repair::Erased => &self.erased,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::cluster_repair(repair.kind());
    }

    /// Messages delivered from the store because their NATS message never came.
    pub fn recovered(&self) -> u64 {
        self.recovered.load(Ordering::Relaxed)
    }

    /// `message:sent` events dropped because the user already had them.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Events dropped here because the fan-out queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Times the remembered rooms were caught up from the store: every one after a NATS
    /// reconnect or slow consumer, one fan-out task's after too many rooms had events
    /// dropped.
    pub fn resyncs(&self) -> u64 {
        self.resyncs.load(Ordering::Relaxed)
    }

    /// Receipts and updates delivered from the store because their event never came.
    pub fn recovered_changes(&self) -> u64 {
        self.recovered_changes.load(Ordering::Relaxed)
    }

    /// Receipts and updates (and spans told alone) dropped because the user had them.
    pub fn duplicate_changes(&self) -> u64 {
        self.duplicate_changes.load(Ordering::Relaxed)
    }

    /// Holes found in a user's changes of a room, each read from the store.
    pub fn change_gaps(&self) -> u64 {
        self.change_gaps.load(Ordering::Relaxed)
    }

    /// `block` and `unblock` events delivered from the store because theirs never came.
    pub fn recovered_blocks(&self) -> u64 {
        self.recovered_blocks.load(Ordering::Relaxed)
    }

    /// `block` and `unblock` events dropped because the blocker had them.
    pub fn duplicate_blocks(&self) -> u64 {
        self.duplicate_blocks.load(Ordering::Relaxed)
    }

    /// Holes found in a blocker's block changes, each read from the store.
    pub fn block_gaps(&self) -> u64 {
        self.block_gaps.load(Ordering::Relaxed)
    }

    /// Connections closed by a catch-up because their user was erased and the erasure's
    /// notice never came.
    pub fn erased(&self) -> u64 {
        self.erased.load(Ordering::Relaxed)
    }

    /// Reads of the store: of a room's messages for `message:sent` events (notices from
    /// other nodes, gaps, catch-ups), of its changes (gaps, catch-ups; with the messages
    /// when both are needed, one read), and a catch-up's reads of its users' erasures and
    /// of each user's recently active rooms.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn count_read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        metrics::cluster_read();
    }

    /// Users whose subject this node listens to, once the NATS server has the subscription.
    pub fn subscribed(&self) -> u64 {
        self.subscribed.load(Ordering::Relaxed)
    }
}

/// Publishes to NATS and to the local hub; see the module docs.
pub struct NatsBroker {
    hub: Arc<Hub>,
    /// For the notices published outside the fan-out tasks (an erasure).
    client: async_nats::Client,
    /// Each task's queue for what is published here.
    queues: Vec<mpsc::Sender<Job>>,
    /// How many rooms of dropped events each task remembers (its queue's length).
    dropped_rooms: usize,
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The hub's [`Presence`] watcher: notes the user for the task.
struct Watcher(Arc<Shared>);

impl Presence for Watcher {
    fn changed(&self, user: &str) {
        let signals = self.0.of(user);
        signals
            .changed
            .lock()
            .expect("presence lock poisoned")
            .insert(user.to_owned());
        signals.wake.notify_one();
    }
}

impl NatsBroker {
    /// Connects to NATS and starts the fan-out tasks, which feed `hub` and read from
    /// `store`. Fails when no NATS server answers; once connected, the client reconnects
    /// by itself for as long as it takes.
    pub async fn connect(
        options: NatsOptions,
        hub: Arc<Hub>,
        store: Arc<dyn ReadStore>,
    ) -> Result<Arc<NatsBroker>, NatsError> {
        let tasks = options.fanout_tasks.max(1);
        let shared = Arc::new(Shared {
            signals: (0..tasks).map(|_| Signals::default()).collect(),
            stats: ClusterStats::default(),
        });
        let events = Arc::clone(&shared);
        let node = options.node_name.clone();
        // The first `Connected` is the connection being made: nothing was lost yet.
        let connected_before = Arc::new(AtomicBool::new(false));
        let addrs: Vec<async_nats::ServerAddr> = options
            .url
            .split(',')
            .map(|url| url.trim().parse())
            .collect::<Result<_, std::io::Error>>()
            .map_err(|e| NatsError::Connect(e.into()))?;
        let client = async_nats::ConnectOptions::new()
            .name(&options.node_name)
            // A node delivers its own events locally, before NATS: it must not get them
            // back.
            .no_echo()
            .subscription_capacity(options.subscription_messages)
            .max_reconnects(None)
            .event_callback(move |event| {
                let shared = Arc::clone(&events);
                let node = node.clone();
                let connected_before = Arc::clone(&connected_before);
                async move {
                    let reconnected = matches!(event, async_nats::Event::Connected)
                        && connected_before.swap(true, Ordering::AcqRel);
                    if reconnected || matches!(event, async_nats::Event::SlowConsumer(_)) {
                        tracing::warn!(%node, %event, "NATS: catching up from the store");
                        shared.lose_all();
                    } else {
                        tracing::info!(%node, %event, "NATS");
                    }
                }
            })
            .connect(addrs)
            .await
            .map_err(NatsError::Connect)?;
        metrics::cluster_started(&Repair::ALL.map(Repair::kind));
        let capacity = options.queue_events.max(1);
        let mut queues = Vec::with_capacity(tasks);
        let mut handles = Vec::with_capacity(tasks);
        for index in 0..tasks {
            let (local, local_jobs) = mpsc::channel(capacity);
            let (remote, remote_jobs) = mpsc::channel(capacity.div_ceil(tasks));
            let task = Fanout {
                index,
                client: client.clone(),
                hub: Arc::clone(&hub),
                store: Arc::clone(&store),
                shared: Arc::clone(&shared),
                remote,
                users: HashMap::new(),
                rooms_per_user: options.tracked_rooms_per_user,
                touched: 0,
                subscribed: 0,
                pages: HashMap::new(),
                wanted: HashMap::new(),
            };
            handles.push(tokio::spawn(task.run(local_jobs, remote_jobs)));
            queues.push(local);
        }
        hub.watch_presence(Arc::new(Watcher(Arc::clone(&shared))));
        Ok(Arc::new(NatsBroker {
            hub,
            client,
            queues,
            dropped_rooms: capacity,
            shared,
            tasks: Mutex::new(handles),
        }))
    }

    /// Queues `job` for the task that owns `user`; full, drops it and has that task catch
    /// up its rooms from the store once the queue is empty again.
    fn enqueue(&self, user: &str, job: Job) {
        let task = shard_of(user, self.queues.len());
        if let Err(full) = self.queues[task].try_send(job) {
            self.shared.stats.count(Repair::Dropped);
            let job = full.into_inner();
            let signals = &self.shared.signals[task];
            let overflowed = match job.block_of() {
                Some(blocker) => signals.dropped_block(blocker, self.dropped_rooms),
                None => signals.dropped(user, job.rooms(), self.dropped_rooms),
            };
            if overflowed {
                self.shared.stats.count(Repair::CatchUp);
            }
        }
    }

    /// What the fan-out has repaired so far.
    pub fn stats(&self) -> &ClusterStats {
        &self.shared.stats
    }

    /// Stops the fan-out tasks; their subscriptions end with them.
    pub fn stop(&self) {
        for task in self.tasks.lock().expect("task lock poisoned").drain(..) {
            task.abort();
        }
    }
}

impl Broker for NatsBroker {
    /// Queues `event` for the user's fan-out task, which delivers it here and publishes it
    /// to NATS. A full queue drops it and has the task catch up from the store.
    fn publish(&self, user: &str, event: &Arc<Outbound>) {
        let owned = user.to_owned();
        let job = if self.hub.is_online(user) {
            Job::Local {
                user: owned,
                event: Arc::clone(event),
            }
        } else {
            Job::Forward {
                user: owned,
                notice: Notice::of(event),
            }
        };
        self.enqueue(user, job);
    }

    /// Whether the user has a connection on this node: other nodes are not asked.
    fn is_online(&self, user: &str) -> bool {
        self.hub.is_online(user)
    }

    /// Closes the user's connections here, and publishes [`Notice::Erased`] on their
    /// subject: the nodes holding their other connections listen to it, and close those.
    /// Straight to NATS, not through the fan-out queue, so a full queue cannot drop it.
    /// Core NATS may still lose it (a NATS outage at that moment): the next catch-up there,
    /// or the presence heartbeat's check of the store's erasures, closes such a connection,
    /// and its token is refused on the next connect.
    fn disconnect_user(&self, user: &str) -> usize {
        let closed = self.hub.disconnect_user(user);
        let client = self.client.clone();
        let user = user.to_owned();
        tokio::spawn(async move {
            let payload = postcard::to_stdvec(&Notice::Erased).expect("notices serialize");
            let published = match client.publish(subject(&user), payload.into()).await {
                Ok(()) => client.flush().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(error) = published {
                tracing::error!(%user, %error, "cannot tell the other nodes of an erasure");
            }
        });
        closed
    }

    /// Queues the spans of `event` for `user`, like [`NatsBroker::publish`] an event.
    fn advance(&self, user: &str, event: &Arc<Outbound>) {
        if event.changes().is_empty() {
            return;
        }
        let owned = user.to_owned();
        let job = if self.hub.is_online(user) {
            Job::Advanced {
                user: owned,
                changes: event.changes().spans().to_vec(),
            }
        } else {
            Job::Forward {
                user: owned,
                notice: Notice::Advanced {
                    changes: Span::all(event.changes().spans()),
                },
            }
        };
        self.enqueue(user, job);
    }
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How a `message:sent` reached the fan-out task.
enum Delivery<'a> {
    /// Rendered, with its snapshot: committed on this node.
    Rendered(&'a Arc<Outbound>),
    /// Announced by another node, to be built from the store.
    Notice(Named),
}

/// How a `message:sent` names its room and sender.
struct Named {
    room_id: String,
    sender: SessionUser,
}

/// A user connected here: their subscription and what they were last given.
struct LocalUser {
    /// Forwards the user's subject into the queue; aborting it unsubscribes. `None` when
    /// subscribing failed: the user still gets what is committed here.
    forward: Option<JoinHandle<()>>,
    /// When their first connection here opened, or a room of theirs was last forgotten:
    /// messages of an untracked room sent since then may be ones they have not had.
    since_ms: i64,
    tracker: Tracker,
    /// The last of the user's block changes they were told of (`block`, `unblock`).
    block_change: Option<u64>,
}

impl Drop for LocalUser {
    /// Unsubscribes: with the user gone, or with the fan-out task stopped.
    fn drop(&mut self) {
        if let Some(forward) = &self.forward {
            forward.abort();
        }
    }
}

/// What one local user was last given of one room.
#[derive(Clone, Copy, Default)]
struct Told {
    /// The last message id delivered (`message:sent`).
    id: Option<u64>,
    /// The last room change they were told of (an event or a span alone).
    change: Option<u64>,
    /// When the room was last active for them (a counter), to forget the oldest first.
    touched: u64,
}

/// What each room last gave one local user; at most `cluster.tracked_rooms_per_user`
/// rooms, the least recently active forgotten first.
#[derive(Default)]
struct Tracker {
    rooms: HashMap<RoomKey, Told>,
}

impl Tracker {
    fn last(&self, room: &RoomKey) -> Option<u64> {
        self.rooms.get(room).and_then(|told| told.id)
    }

    fn last_change(&self, room: &RoomKey) -> Option<u64> {
        self.rooms.get(room).and_then(|told| told.change)
    }

    /// Records `id` as delivered in `room`, at time `touched` (a counter); true when a
    /// room was forgotten to make space.
    fn set(&mut self, room: &RoomKey, id: u64, touched: u64, cap: usize) -> bool {
        let (told, full) = self.entry(room, touched, cap);
        told.id = Some(id);
        full
    }

    /// Records that the user was told of `room`'s changes up to `change`; as
    /// [`Tracker::set`].
    fn set_change(&mut self, room: &RoomKey, change: u64, touched: u64, cap: usize) -> bool {
        let (told, full) = self.entry(room, touched, cap);
        told.change = Some(told.change.map_or(change, |last| last.max(change)));
        full
    }

    fn entry(&mut self, room: &RoomKey, touched: u64, cap: usize) -> (&mut Told, bool) {
        let full = !self.rooms.contains_key(room) && self.rooms.len() >= cap;
        if full {
            let oldest = self
                .rooms
                .iter()
                .min_by_key(|(_, told)| told.touched)
                .map(|(room, _)| room.clone());
            if let Some(oldest) = oldest {
                self.rooms.remove(&oldest);
            }
        }
        let told = self.rooms.entry(room.clone()).or_default();
        told.touched = touched;
        (told, full)
    }
}

/// A room's messages as one read gave them to one user, newest first: the snapshots of
/// several `message:sent` events (see the module docs).
struct Page {
    partner: SessionUser,
    messages: Vec<ChatMessage>,
    /// The highest id it could hold (the bound it was read below, less one).
    top: u64,
    /// It holds every message of the room up to `top`: it came back shorter than asked.
    whole: bool,
}

impl Page {
    /// What a read of up to `limit` messages up to id `top` (or the latest) gave.
    fn of(read: HistoryPage, top: Option<u64>, limit: usize) -> Page {
        Page {
            top: top.unwrap_or_else(|| read.messages.first().map_or(0, |m| m.id)),
            whole: read.messages.len() < limit,
            partner: read.partner,
            messages: read.messages,
        }
    }

    /// Whether it answers for message `id`: holds it or shows it is gone, with the 49
    /// before it (or all there are).
    fn covers(&self, id: u64) -> bool {
        if id > self.top {
            return false;
        }
        match self.messages.iter().position(|m| m.id <= id) {
            Some(at) => self.whole || self.messages.len() - at >= MAX_MESSAGES_LIMIT,
            None => self.whole,
        }
    }

    /// Message `id`'s snapshot: it and the ones before it, as many as a `message:sent`
    /// carries; `None` when it is gone. Only for an id the page [`covers`](Page::covers).
    fn snapshot_of(&self, id: u64) -> Option<&[ChatMessage]> {
        let at = self.messages.iter().position(|m| m.id == id)?;
        let end = (at + MAX_MESSAGES_LIMIT).min(self.messages.len());
        Some(&self.messages[at..end])
    }
}

/// One fan-out task's state: the users of this node that hash to it.
struct Fanout {
    /// Which task this is, for [`shard_of`].
    index: usize,
    client: async_nats::Client,
    hub: Arc<Hub>,
    store: Arc<dyn ReadStore>,
    shared: Arc<Shared>,
    /// For the forwarding tasks of new subscriptions.
    remote: mpsc::Sender<Job>,
    users: HashMap<String, LocalUser>,
    rooms_per_user: usize,
    /// Orders tracker entries by recency.
    touched: u64,
    /// Its users whose subject NATS has, counted in [`ClusterStats::subscribed`].
    subscribed: u64,
    /// Rooms read in this turn, per user and room: at most one per job of the turn.
    pages: HashMap<(String, RoomKey), Page>,
    /// The highest id this turn's jobs will want of each user's room: how far a read
    /// reads ahead.
    wanted: HashMap<(String, RoomKey), u64>,
}

impl Fanout {
    async fn run(mut self, mut local: mpsc::Receiver<Job>, mut remote: mpsc::Receiver<Job>) {
        let signals = Arc::clone(&self.shared);
        let signals = &signals.signals[self.index];
        let (mut mine, mut brought) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
        loop {
            // Its own node's events first: those are dropped when their queue is full, what
            // NATS brings waits in NATS.
            tokio::select! {
                biased;
                () = signals.wake.notified() => {
                    self.update_subscriptions(signals).await;
                    if signals.lost.swap(false, Ordering::AcqRel) {
                        self.resync().await;
                    }
                }
                n = local.recv_many(&mut mine, BATCH) => {
                    if n == 0 {
                        return;
                    }
                    self.turn(&mut mine).await;
                }
                n = remote.recv_many(&mut brought, BATCH) => {
                    if n == 0 {
                        return;
                    }
                    self.turn(&mut brought).await;
                }
            }
            self.pages.clear();
            self.wanted.clear();
            // Dropped events are caught up once their queue is empty: meanwhile the next
            // event of each room shows its gap, and catching up while the queue is full
            // would only drop more.
            if local.is_empty() {
                self.catch_up_dropped(signals).await;
                self.pages.clear();
            }
        }
    }

    /// Catches up the rooms whose events were dropped from the full queue, one read each
    /// (and every remembered room if there were more than it noted).
    async fn catch_up_dropped(&mut self, signals: &Signals) {
        self.catch_up_dropped_blocks(signals).await;
        let dropped = std::mem::take(&mut *signals.dropped.lock().expect("dropped lock"));
        if signals.overflowed.swap(false, Ordering::AcqRel) {
            self.resync().await;
        }
        for (user, room) in dropped {
            let Some(local) = self.users.get(&user) else {
                continue;
            };
            let told = local.tracker.rooms.get(&room).copied().unwrap_or_default();
            self.catch_up_room(&user, &room, told).await;
        }
    }

    /// Does `jobs` in order, sharing the reads of their `message:sent` events.
    async fn turn(&mut self, jobs: &mut Vec<Job>) {
        for job in jobs.iter() {
            let wanted = match job {
                Job::Local { user, event } => event
                    .new_message()
                    .map(|new| (user, &new.announced.room, new.announced.message_id)),
                Job::Remote {
                    user,
                    notice:
                        Notice::Sent {
                            low,
                            high,
                            message_id,
                            ..
                        },
                } => {
                    let room = RoomKey {
                        low: low.clone(),
                        high: high.clone(),
                    };
                    self.want(user, &room, *message_id);
                    None
                }
                Job::Remote { .. } => None,
                Job::Forward { .. } | Job::Advanced { .. } => None,
            };
            if let Some((user, room, id)) = wanted {
                self.want(user, room, id);
            }
        }
        for job in jobs.drain(..) {
            match job {
                Job::Local { user, event } => self.local(user, event).await,
                Job::Forward { user, notice } => self.forward(&user, &notice).await,
                Job::Remote { user, notice } => self.remote(&user, notice).await,
                Job::Advanced { user, changes } => {
                    self.told(&user, &changes).await;
                    let notice = Notice::Advanced {
                        changes: Span::all(&changes),
                    };
                    self.forward(&user, &notice).await;
                }
            }
        }
    }

    /// Notes that `user` will want message `id` of `room` in this turn.
    fn want(&mut self, user: &str, room: &RoomKey, id: u64) {
        let wanted = self
            .wanted
            .entry((user.to_owned(), room.clone()))
            .or_insert(id);
        *wanted = (*wanted).max(id);
    }

    /// Subscribes to the users who came, unsubscribes from those who left.
    async fn update_subscriptions(&mut self, signals: &Signals) {
        let changed = std::mem::take(&mut *signals.changed.lock().expect("presence lock"));
        if changed.is_empty() {
            return;
        }
        for user in changed {
            let online = self.hub.is_online(&user);
            if online && !self.users.contains_key(&user) {
                let forward = match self.client.subscribe(subject(&user)).await {
                    Ok(subscriber) => Some(tokio::spawn(forward(
                        user.clone(),
                        subscriber,
                        self.remote.clone(),
                    ))),
                    Err(e) => {
                        tracing::error!(%user, error = %e, "cannot subscribe on NATS");
                        None
                    }
                };
                let local = LocalUser {
                    forward,
                    since_ms: now_millis(),
                    tracker: Tracker::default(),
                    block_change: None,
                };
                self.users.insert(user, local);
            } else if !online {
                self.users.remove(&user);
            }
        }
        // Counted once the server has processed the subscriptions.
        if let Err(e) = self.client.flush().await {
            tracing::warn!(error = %e, "NATS flush after subscribing failed");
        }
        let subscribed = self.users.values().filter(|u| u.forward.is_some()).count() as u64;
        let total = &self.shared.stats.subscribed;
        if subscribed >= self.subscribed {
            total.fetch_add(subscribed - self.subscribed, Ordering::Relaxed);
        } else {
            total.fetch_sub(self.subscribed - subscribed, Ordering::Relaxed);
        }
        self.subscribed = subscribed;
    }

    /// An event published here: delivered to the user's connections here (in id order
    /// for a new message), then published for their connections elsewhere.
    async fn local(&mut self, user: String, event: Arc<Outbound>) {
        if let Some(change) = event.block_change() {
            if self.told_block(&user, change).await {
                self.hub.publish(&user, &event);
            }
            self.forward(&user, &Notice::of(&event)).await;
            return;
        }
        match event.new_message() {
            Some(new) => {
                self.sent(
                    &user,
                    &new.announced,
                    event.changes().spans(),
                    Delivery::Rendered(&event),
                )
                .await
            }
            None => {
                if self.told(&user, event.changes().spans()).await {
                    self.hub.publish(&user, &event);
                }
            }
        }
        self.forward(&user, &Notice::of(&event)).await;
    }

    /// Publishes `notice` on `user`'s subject, for their connections on other nodes.
    async fn forward(&self, user: &str, notice: &Notice) {
        let payload = postcard::to_stdvec(notice).expect("notices serialize");
        // Nothing to wait for: a lost message is found by the receivers' gap detection.
        if let Err(e) = self.client.publish(subject(user), payload.into()).await {
            tracing::warn!(%user, error = %e, "cannot publish on NATS");
        }
    }

    /// A notice from another node.
    async fn remote(&mut self, user: &str, notice: Notice) {
        match notice {
            Notice::Sent {
                low,
                high,
                message_id,
                room_id,
                sender_id,
                sender_name,
                changes,
            } => {
                let changes: Vec<RoomChange> = changes.into_iter().map(Span::into_change).collect();
                let announced = Announced {
                    room: RoomKey { low, high },
                    message_id,
                };
                let named = Named {
                    room_id,
                    sender: SessionUser {
                        id: sender_id,
                        name: sender_name,
                    },
                };
                self.sent(user, &announced, &changes, Delivery::Notice(named))
                    .await;
            }
            Notice::Erased => {
                let closed = self.hub.disconnect_user(user);
                tracing::info!(%user, closed, "user erased on another node: connections closed");
            }
            Notice::Rendered {
                name,
                data,
                changes,
            } => {
                let Some(name) = EVENT_NAMES.iter().find(|known| **known == name) else {
                    tracing::warn!(%user, %name, "unknown event from NATS dropped");
                    return;
                };
                let changes: Vec<RoomChange> = changes.into_iter().map(Span::into_change).collect();
                if self.told(user, &changes).await {
                    self.hub.publish(user, &Outbound::rendered(name, data));
                }
            }
            Notice::Advanced { changes } => {
                let changes: Vec<RoomChange> = changes.into_iter().map(Span::into_change).collect();
                self.told(user, &changes).await;
            }
            Notice::Block { name, data, change } => {
                self.remote_block(user, &name, data, change).await
            }
        }
    }

    /// Delivers the `message:sent` of `announced` to `user` unless they had it, after any
    /// messages of the room they are missing.
    async fn sent(
        &mut self,
        user: &str,
        announced: &Announced,
        changes: &[RoomChange],
        delivery: Delivery<'_>,
    ) {
        let Some(local) = self.users.get(user) else {
            // Not connected here, or not yet known to this task: the hub has whoever is.
            if let Delivery::Rendered(event) = delivery {
                self.hub.publish(user, event);
            }
            return;
        };
        let (room, id) = (&announced.room, announced.message_id);
        if local.tracker.last(room).is_some_and(|last| id <= last) {
            self.shared.stats.count(Repair::Duplicate);
            return;
        }
        // Changes missed before this one first; that may deliver lost messages too.
        self.told(user, changes).await;
        let Some(local) = self.users.get(user) else {
            return;
        };
        let (last, since_ms) = (local.tracker.last(room), local.since_ms);
        self.want(user, room, id);
        let missing: Vec<u64> = match last {
            Some(last) if id <= last => return,
            Some(last) => (last.max(id.saturating_sub(MAX_RECOVERED + 1)) + 1..id).collect(),
            // A room not seen since the user connected: what was sent since may be missing,
            // as far as the last snapshot reaches. Only for a notice from elsewhere: one
            // committed here was published here, in order.
            None if matches!(delivery, Delivery::Notice(_)) => {
                match self.messages_since(user, room, id, since_ms).await {
                    Ok(ids) => ids,
                    Err(e) => {
                        tracing::warn!(%user, error = %e, "cannot read what a user missed");
                        Vec::new()
                    }
                }
            }
            None => Vec::new(),
        };
        for missed in missing {
            if self.deliver_from_store(user, room, missed, None).await {
                self.shared.stats.count(Repair::Recovered);
            }
        }
        match delivery {
            Delivery::Rendered(event) => {
                self.hub.publish(user, event);
                self.delivered(user, room, id);
            }
            Delivery::Notice(named) => {
                self.deliver_from_store(user, room, id, Some(named)).await;
            }
        }
    }

    /// Ids below `id` in the room sent at or after `since_ms`, oldest first, within the
    /// latest snapshot's reach.
    async fn messages_since(
        &mut self,
        user: &str,
        room: &RoomKey,
        id: u64,
        since_ms: i64,
    ) -> Result<Vec<u64>, StoreError> {
        let low = id.saturating_sub(MAX_RECOVERED).max(1);
        let since_ms = since_ms.saturating_sub(CLOCK_SKEW_MS);
        let page = self.page(user, room, low).await?;
        Ok(page
            .messages
            .iter()
            .rev()
            .filter(|m| m.id >= low && m.id < id && m.sent_ms >= since_ms)
            .map(|m| m.id)
            .collect())
    }

    /// The page of `room` as `user` sees it that holds message `id`'s snapshot: this
    /// turn's, or one read now up to the highest id the turn wants (see [`Page`]).
    async fn page(&mut self, user: &str, room: &RoomKey, id: u64) -> Result<&Page, StoreError> {
        let key = (user.to_owned(), room.clone());
        if !self.pages.get(&key).is_some_and(|page| page.covers(id)) {
            let wanted = self.wanted.get(&key).copied().unwrap_or(id);
            let top = wanted.clamp(id, id.saturating_add(READ_AHEAD));
            let limit = MAX_MESSAGES_LIMIT + (top - id) as usize;
            let page = self.read(user, room, Some(top), limit).await?;
            self.pages.insert(key.clone(), page);
        }
        Ok(&self.pages[&key])
    }

    /// Reads up to `limit` messages of `room` as `user` sees them, up to id `top` (or the
    /// latest).
    async fn read(
        &self,
        user: &str,
        room: &RoomKey,
        top: Option<u64>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.shared.stats.count_read();
        let read = self
            .store
            .messages_page(room, user, top.map(|top| top.saturating_add(1)), limit)
            .await?;
        Ok(Page::of(read, top, limit))
    }

    /// Builds message `id`'s `message:sent` (the room's latest messages up to it, as they
    /// are now) and delivers it; false when it is gone (retention, an erasure) or the
    /// store failed. `named` is how its announcement named the room and the sender; a
    /// recovered message, which has none, gets the canonical room id and the sender's
    /// stored profile.
    async fn deliver_from_store(
        &mut self,
        user: &str,
        room: &RoomKey,
        id: u64,
        named: Option<Named>,
    ) -> bool {
        match self.sent_event(user, room, id, named).await {
            Ok(Some(event)) => {
                self.hub.publish(user, &event);
                self.delivered(user, room, id);
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(%user, id, error = %e, "cannot read a message to deliver");
                false
            }
        }
    }

    async fn sent_event(
        &mut self,
        user: &str,
        room: &RoomKey,
        id: u64,
        named: Option<Named>,
    ) -> Result<Option<Arc<Outbound>>, StoreError> {
        let page = self.page(user, room, id).await?;
        let Some(messages) = page.snapshot_of(id) else {
            return Ok(None);
        };
        let messages_json = snapshot(messages);
        let sender_id = &messages[0].user_id;
        let named = match named {
            Some(named) => named,
            None if *sender_id == page.partner.id => Named {
                room_id: room.id(),
                sender: page.partner.clone(),
            },
            None => {
                let sender_id = sender_id.clone();
                Named {
                    room_id: room.id(),
                    sender: self.store.profile(&sender_id).await?,
                }
            }
        };
        Ok(Some(Outbound::new(ServerEvent::MessageSent {
            room_id: named.room_id,
            user: named.sender,
            messages: messages_json,
            announces: Some(Announced {
                room: room.clone(),
                message_id: id,
            }),
        })))
    }

    fn delivered(&mut self, user: &str, room: &RoomKey, id: u64) {
        self.touched += 1;
        if let Some(local) = self.users.get_mut(user) {
            if local
                .tracker
                .set(room, id, self.touched, self.rooms_per_user)
            {
                // What the forgotten room misses from now on is found as for a new room.
                local.since_ms = now_millis();
            }
        }
    }

    /// After a possible loss: waits until NATS has every subscription again (so nothing
    /// published from now on is missed), closes the connections of users erased
    /// meanwhile, then delivers what each remembered room has past its last delivered id,
    /// and what the user's other rooms got since they came.
    async fn resync(&mut self) {
        if let Err(e) = self.client.flush().await {
            tracing::warn!(error = %e, "NATS flush before catching up failed");
        }
        self.close_erased().await;
        let rooms: Vec<(String, RoomKey, Told)> = self
            .users
            .iter()
            .flat_map(|(user, local)| {
                local
                    .tracker
                    .rooms
                    .iter()
                    .map(|(room, &told)| (user.clone(), room.clone(), told))
            })
            .collect();
        for (user, room, told) in rooms {
            self.catch_up_room(&user, &room, told).await;
        }
        self.catch_up_untracked().await;
    }

    /// Closes the connections here of this task's users whose erasure's notice was lost:
    /// one read of the store's erasures for all of them. Only connections admitted with
    /// a token from before the erasure close, as its notice would have closed them; a user
    /// admitted again since keeps their connection (and is caught up as any other).
    async fn close_erased(&mut self) {
        if self.users.is_empty() {
            return;
        }
        let users: Vec<String> = self.users.keys().cloned().collect();
        self.shared.stats.count_read();
        let erasures = match self.store.erasures(&users).await {
            Ok(erasures) => erasures,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read erasures to catch up");
                return;
            }
        };
        for (user, at_ms) in erasures {
            let connections = self.hub.disconnect_erased(&user, at_ms);
            if connections > 0 {
                tracing::info!(%user, connections, "user erased, notice lost: connections closed");
                for _ in 0..connections {
                    self.shared.stats.count(Repair::Erased);
                }
            }
        }
        self.catch_up_blocks(None).await;
    }

    /// Catches up, for each local user, the rooms with messages sent since `since_ms`
    /// that the tracker does not hold (a conversation this node never delivered to them,
    /// or one it forgot): one read of the user's most recently active rooms, then one
    /// read each, at most [`MAX_UNTRACKED_ROOMS`] of them.
    async fn catch_up_untracked(&mut self) {
        let users: Vec<(String, i64, usize)> = self
            .users
            .iter()
            .map(|(user, local)| (user.clone(), local.since_ms, local.tracker.rooms.len()))
            .collect();
        for (user, since_ms, tracked) in users {
            // The tracked rooms are among the most recent: read past them.
            let limit = tracked + MAX_UNTRACKED_ROOMS;
            let since = since_ms.saturating_sub(CLOCK_SKEW_MS);
            self.shared.stats.count_read();
            let rooms = match self.store.rooms_active_since(&user, since, limit).await {
                Ok(rooms) => rooms,
                Err(e) => {
                    tracing::warn!(%user, error = %e, "cannot read a user's active rooms");
                    continue;
                }
            };
            let untracked: Vec<RoomKey> = match self.users.get(&user) {
                Some(local) => rooms
                    .into_iter()
                    .filter(|room| !local.tracker.rooms.contains_key(room))
                    .take(MAX_UNTRACKED_ROOMS)
                    .collect(),
                None => continue,
            };
            for room in untracked {
                if !self.users.contains_key(&user) {
                    break;
                }
                // `since_ms` as it was: a room forgotten meanwhile moves it forward.
                self.catch_up_latest(&user, &room, None, since_ms).await;
            }
        }
    }

    /// Catches one remembered room up for `user`: what it has past the last message
    /// delivered (without one, what was sent since the user came), then the changes past
    /// the last one they were told of, all from one read of the store (the latest
    /// snapshot's messages and the snapshot of each, and the changes).
    async fn catch_up_room(&mut self, user: &str, room: &RoomKey, told: Told) {
        let Some(since_ms) = self.users.get(user).map(|local| local.since_ms) else {
            return;
        };
        let Some(change) = told.change else {
            self.catch_up_latest(user, room, told.id, since_ms).await;
            return;
        };
        let limit = MAX_MESSAGES_LIMIT + MAX_RECOVERED as usize;
        self.shared.stats.count_read();
        let read = self
            .store
            .changes_and_page(room, user, change, MAX_MESSAGES_LIMIT, None, limit)
            .await;
        let changes = match read {
            Ok((changes, read)) => {
                let page = Page::of(read, None, limit);
                self.deliver_missing(user, room, told.id, since_ms, page)
                    .await;
                Ok(changes)
            }
            Err(e) => Err(e),
        };
        self.deliver_changes(user, room, change, u64::MAX, changes)
            .await;
        // Caught up outside a turn: nothing else will use the page.
        let key = (user.to_owned(), room.clone());
        self.pages.remove(&key);
        self.wanted.remove(&key);
    }

    /// Delivers what `room` has past message `last` for `user` (without one, what was
    /// sent since `since_ms`), from one read of its latest messages.
    async fn catch_up_latest(
        &mut self,
        user: &str,
        room: &RoomKey,
        last: Option<u64>,
        since_ms: i64,
    ) {
        let limit = MAX_MESSAGES_LIMIT + MAX_RECOVERED as usize;
        match self.read(user, room, None, limit).await {
            Ok(page) => self.deliver_missing(user, room, last, since_ms, page).await,
            Err(e) => tracing::warn!(%user, error = %e, "cannot catch up a room"),
        }
        // Caught up outside a turn: nothing else will use the page.
        let key = (user.to_owned(), room.clone());
        self.pages.remove(&key);
        self.wanted.remove(&key);
    }

    /// Delivers what `page` (the room's latest messages) holds past message `last` for
    /// `user` (without one, what was sent since `since_ms`), with the snapshot of each.
    async fn deliver_missing(
        &mut self,
        user: &str,
        room: &RoomKey,
        last: Option<u64>,
        since_ms: i64,
        page: Page,
    ) {
        let since_ms = since_ms.saturating_sub(CLOCK_SKEW_MS);
        let missing: Vec<u64> = page
            .messages
            .iter()
            .take(MAX_MESSAGES_LIMIT)
            .rev()
            .filter(|m| last.map_or(m.sent_ms >= since_ms, |last| m.id > last))
            .map(|m| m.id)
            .collect();
        self.pages.insert((user.to_owned(), room.clone()), page);
        for id in missing {
            if self.deliver_from_store(user, room, id, None).await {
                self.shared.stats.count(Repair::Recovered);
            }
        }
    }

    /// Checks the room changes an event reports against what `user` was told: false when
    /// they were told of every one already (a duplicate). Otherwise delivers first what a
    /// gap before a span missed, then records the spans as told.
    async fn told(&mut self, user: &str, changes: &[RoomChange]) -> bool {
        let Some(local) = self.users.get(user) else {
            return true;
        };
        if changes.is_empty() {
            return true;
        }
        let fresh = changes.iter().any(|c| {
            local
                .tracker
                .last_change(&c.room)
                .is_none_or(|last| c.last > last)
        });
        if !fresh {
            self.shared.stats.count(Repair::DuplicateChange);
            return false;
        }
        let gaps: Vec<(RoomKey, u64, u64)> = changes
            .iter()
            .filter_map(|c| {
                let last = local.tracker.last_change(&c.room)?;
                (c.first > last + 1).then(|| (c.room.clone(), last, c.first - 1))
            })
            .collect();
        for (room, after, up_to) in gaps {
            self.shared.stats.count(Repair::ChangeGap);
            self.recover_changes(user, &room, after, up_to).await;
        }
        for c in changes {
            self.touched += 1;
            if let Some(local) = self.users.get_mut(user) {
                if local
                    .tracker
                    .set_change(&c.room, c.last, self.touched, self.rooms_per_user)
                {
                    local.since_ms = now_millis();
                }
            }
        }
        true
    }

    /// Reads `room`'s changes after `after`, up to `up_to`, from the store and delivers
    /// them to `user`: lost messages as `message:sent`, in id order, then each changed
    /// message as the event its state calls for. Records how far it read.
    async fn recover_changes(&mut self, user: &str, room: &RoomKey, after: u64, up_to: u64) {
        let first = self.first_changes(user, room, after).await;
        self.deliver_changes(user, room, after, up_to, first).await;
    }

    /// [`Fanout::recover_changes`], from the first page of the changes, already read.
    async fn deliver_changes(
        &mut self,
        user: &str,
        room: &RoomKey,
        after: u64,
        up_to: u64,
        first: Result<ChangesPage, StoreError>,
    ) {
        let mut changed = Vec::new();
        let mut position = after;
        let mut first = Some(first);
        for _ in 0..MAX_CHANGE_PAGES {
            let page = match first.take() {
                Some(first) => first,
                None => self.read_changes(user, room, position).await,
            };
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(%user, error = %e, "cannot read the changes a user missed");
                    return;
                }
            };
            changed.extend(
                page.messages
                    .into_iter()
                    .filter(|m| m.change > after && m.change <= up_to),
            );
            position = page.position;
            if !page.more || position >= up_to {
                break;
            }
        }
        // In the order of the changes: a lost message as its `message:sent` (and any
        // before it), then whatever else its state calls for. One read serves them all.
        if let Some(highest) = changed.iter().map(|m| m.id).max() {
            self.want(user, room, highest);
        }
        for message in changed {
            let last_id = self.users.get(user).and_then(|u| u.tracker.last(room));
            if let Some(last) = last_id.filter(|&last| message.id > last) {
                for id in last.max(message.id.saturating_sub(MAX_RECOVERED)) + 1..=message.id {
                    if self.deliver_from_store(user, room, id, None).await {
                        self.shared.stats.count(Repair::Recovered);
                    }
                }
            }
            for event in events_for(user, room, message) {
                self.hub.publish(user, &event);
                self.shared.stats.count(Repair::RecoveredChange);
            }
        }
        self.touched += 1;
        if let Some(local) = self.users.get_mut(user) {
            let reached = position.min(up_to).max(after);
            if local
                .tracker
                .set_change(room, reached, self.touched, self.rooms_per_user)
            {
                local.since_ms = now_millis();
            }
        }
    }

    /// The first page of `room`'s changes after `after`, for `user`. When this turn
    /// builds a `message:sent` of the room for them (so reads its messages anyway) and has
    /// no page of it yet, the same read brings that page, reaching down to the first id
    /// they may have lost ([`ReadStore::changes_and_page`]): a gap that lost messages
    /// costs one read, not the changes and then the page.
    async fn first_changes(
        &mut self,
        user: &str,
        room: &RoomKey,
        after: u64,
    ) -> Result<ChangesPage, StoreError> {
        let key = (user.to_owned(), room.clone());
        let Some(wanted) = self
            .wanted
            .get(&key)
            .copied()
            .filter(|&wanted| !self.pages.get(&key).is_some_and(|page| page.covers(wanted)))
        else {
            return self.read_changes(user, room, after).await;
        };
        let last = self
            .users
            .get(user)
            .and_then(|local| local.tracker.last(room));
        let low = last
            .map_or(wanted, |last| last.saturating_add(1))
            .clamp(wanted.saturating_sub(MAX_RECOVERED), wanted);
        // As `page` reads for `low`: up to the highest id wanted, within `READ_AHEAD`.
        let top = wanted.min(low.saturating_add(READ_AHEAD));
        let limit = MAX_MESSAGES_LIMIT + (top - low) as usize;
        self.shared.stats.count_read();
        let (changes, read) = self
            .store
            .changes_and_page(
                room,
                user,
                after,
                MAX_MESSAGES_LIMIT,
                Some(top.saturating_add(1)),
                limit,
            )
            .await?;
        self.pages.insert(key, Page::of(read, Some(top), limit));
        Ok(changes)
    }

    /// One page of `room`'s changes after `after`, for `user`.
    async fn read_changes(
        &self,
        user: &str,
        room: &RoomKey,
        after: u64,
    ) -> Result<ChangesPage, StoreError> {
        self.shared.stats.count_read();
        self.store
            .changes(room, user, after, MAX_MESSAGES_LIMIT)
            .await
    }
}

/// How far before a user's `since_ms` a read looks for the block changes of a user whose
/// last change number this node does not know: node clocks are assumed to agree within
/// this (NTP keeps servers within milliseconds of each other). A change stamped by a
/// clock further behind is missed until the tab's next `blocks` read; looking further
/// back only repeats events the tab may have had, which is harmless.
const BLOCK_CLOCK_MARGIN_MS: i64 = 5_000;

/// Most users whose block changes one read of the store asks for.
const BLOCK_READ_USERS: usize = 256;

/// `block` and `unblock`: the blocker's changes, numbered gap-free by the store, are
/// checked and repaired as a room's changes are (see the module docs).
impl Fanout {
    /// A `block` or `unblock` from another node: delivered unless the user had it, after
    /// the changes before it they are missing.
    async fn remote_block(&mut self, user: &str, name: &str, data: String, change: u64) {
        let Some(name) = EVENT_NAMES.iter().find(|known| **known == name) else {
            tracing::warn!(%user, %name, "unknown event from NATS dropped");
            return;
        };
        if self.told_block(user, change).await {
            self.hub.publish(user, &Outbound::rendered(name, data));
        }
    }

    /// Checks block change `change` of `user` against the last one they were told of:
    /// false for a duplicate. Otherwise delivers first, from the store, what came before
    /// it that they missed (a gap; knowing no change of theirs yet, the changes made since
    /// they came), then records it as told.
    async fn told_block(&mut self, user: &str, change: u64) -> bool {
        let Some(local) = self.users.get(user) else {
            return true;
        };
        let from = match local.block_change {
            Some(last) if change <= last => {
                self.shared.stats.count(Repair::DuplicateBlock);
                return false;
            }
            Some(last) if change > last + 1 => {
                self.shared.stats.count(Repair::BlockGap);
                Some(BlockFrom::After(last))
            }
            Some(_) => None,
            // Blocks are rare: one read, the first time, costs little.
            None => Some(BlockFrom::Since(local.since_ms - BLOCK_CLOCK_MARGIN_MS)),
        };
        if let Some(from) = from {
            let cursor = [BlockCursor {
                blocker: user.to_owned(),
                from,
            }];
            self.deliver_blocks(&cursor, change).await;
        }
        self.told_block_change(user, change);
        true
    }

    fn told_block_change(&mut self, user: &str, change: u64) {
        if let Some(local) = self.users.get_mut(user) {
            local.block_change = Some(local.block_change.map_or(change, |last| last.max(change)));
        }
    }

    /// Reads the block changes `cursors` ask for and delivers those below change `below`
    /// to their blockers, in order, each as the event its pair's state now calls for:
    /// `block` with the standing block's time, or `unblock`. A pair that changed again
    /// later is left to the later change's event.
    async fn deliver_blocks(&mut self, cursors: &[BlockCursor], below: u64) {
        let rows = match self.store.block_changes(cursors).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the block changes users missed");
                return;
            }
        };
        for row in rows.into_iter().filter(|row| row.change < below) {
            let event = match row.since_ms {
                Some(since_ms) => ServerEvent::Blocked {
                    user_id: row.blocked,
                    blocked_at: format_millis(since_ms),
                },
                None => ServerEvent::Unblocked {
                    user_id: row.blocked,
                },
            };
            self.hub.publish(&row.blocker, &Outbound::new(event));
            self.shared.stats.count(Repair::RecoveredBlock);
            self.told_block_change(&row.blocker, row.change);
        }
    }

    /// After a possible loss: delivers to every user connected here (or to those in
    /// `only`) the block changes past the last one they were told of, or knowing none,
    /// those made since they came.
    async fn catch_up_blocks(&mut self, only: Option<HashSet<String>>) {
        let cursors: Vec<BlockCursor> = self
            .users
            .iter()
            .filter(|(user, _)| only.as_ref().is_none_or(|only| only.contains(*user)))
            .map(|(user, local)| BlockCursor {
                blocker: user.clone(),
                from: match local.block_change {
                    Some(last) => BlockFrom::After(last),
                    None => BlockFrom::Since(local.since_ms - BLOCK_CLOCK_MARGIN_MS),
                },
            })
            .collect();
        for chunk in cursors.chunks(BLOCK_READ_USERS) {
            self.deliver_blocks(chunk, u64::MAX).await;
        }
    }

    /// Catches up the users whose `block` or `unblock` the full queue dropped.
    async fn catch_up_dropped_blocks(&mut self, signals: &Signals) {
        let dropped = std::mem::take(&mut *signals.dropped_blocks.lock().expect("dropped lock"));
        if !dropped.is_empty() {
            self.catch_up_blocks(Some(dropped)).await;
        }
    }
}

/// The events a missed change of `message` calls for, for `user`, from the message as it
/// is now: its update if it was edited or deleted, and to its sender its receipt. (Which
/// of these the missed change was is not stored; one the client already had changes
/// nothing there.)
fn events_for(user: &str, room: &RoomKey, message: ChatMessage) -> Vec<Arc<Outbound>> {
    let mut events = Vec::new();
    let room_id = room.id();
    if message.user_id == user && !room.is_self_room() {
        let reader = room.partner_of(user).to_owned();
        if let Some(seen) = message.seen_ms {
            events.push(Outbound::new(ServerEvent::MessageSeen(vec![SeenReceipt {
                message_id: message.id,
                room_id: room_id.clone(),
                seen_at: format_millis(seen),
                user_id: reader,
            }])));
        } else if let Some(delivered) = message.delivered_ms {
            events.push(Outbound::new(ServerEvent::MessageDelivered(vec![
                DeliveredReceipt {
                    user_id: reader,
                    room_id: room_id.clone(),
                    message_id: message.id,
                    delivered_at: format_millis(delivered),
                },
            ])));
        }
    }
    if message.edited_ms.is_some() || message.is_deleted() {
        events.push(Outbound::new(ServerEvent::MessageUpdated {
            room_id,
            message,
        }));
    }
    events
}

/// Feeds one user's NATS subscription into their task's queue until aborted, waiting
/// while it is full: meanwhile NATS buffers what comes (see the module docs).
async fn forward(user: String, mut subscriber: async_nats::Subscriber, queue: mpsc::Sender<Job>) {
    while let Some(message) = subscriber.next().await {
        let notice = match postcard::from_bytes(&message.payload) {
            Ok(notice) => notice,
            Err(e) => {
                tracing::warn!(%user, error = %e, "undecodable NATS message dropped");
                continue;
            }
        };
        let job = Job::Remote {
            user: user.clone(),
            notice,
        };
        if queue.send(job).await.is_err() {
            return;
        }
    }
}

/// The JSON array a `message:sent` carries, as the writer's cache renders it.
fn snapshot(messages: &[ChatMessage]) -> String {
    let mut out = String::from("[");
    for (i, message) in messages.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(message).expect("messages serialize"));
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_hex_encode_user_ids_so_dots_and_wildcards_are_plain() {
        assert_eq!(subject("a.b"), "chat.user.612e62");
        assert_eq!(subject("*>"), "chat.user.2a3e");
        assert_ne!(subject("ab"), subject("a.b"));
    }

    #[test]
    fn the_tracker_forgets_the_least_recently_active_room_first() {
        let mut tracker = Tracker::default();
        let room = |n: &str| RoomKey::new("a", n);
        assert!(!tracker.set(&room("b"), 1, 1, 2));
        assert!(!tracker.set(&room("c"), 1, 2, 2));
        assert!(!tracker.set(&room("b"), 2, 3, 2));
        assert!(tracker.set(&room("d"), 1, 4, 2));
        assert_eq!(tracker.last(&room("b")), Some(2));
        assert_eq!(tracker.last(&room("c")), None);
        assert_eq!(tracker.last(&room("d")), Some(1));
        assert_eq!(tracker.rooms.len(), 2);
    }

    #[test]
    fn a_block_event_crosses_with_its_change_number_and_dropped_ones_are_bounded() {
        let event = Outbound::with_block_change(
            ServerEvent::Unblocked {
                user_id: "b".into(),
            },
            Some(7),
        );
        match Notice::of(&event) {
            Notice::Block { name, data, change } => {
                assert_eq!(
                    (name.as_str(), data.as_str(), change),
                    ("unblock", r#"{"userId":"b"}"#, 7)
                );
            }
            other => panic!("{other:?}"),
        }
        let job = Job::Local {
            user: "a".into(),
            event,
        };
        assert_eq!(job.block_of(), Some("a"));
        // Past the bound, every user is caught up instead, called for once.
        let signals = Signals::default();
        assert!(!signals.dropped_block("a", 2));
        assert!(!signals.dropped_block("a", 2));
        assert!(!signals.dropped_block("b", 2));
        assert!(signals.dropped_block("c", 2));
        assert!(!signals.dropped_block("d", 2));
        assert_eq!(signals.dropped_blocks.lock().unwrap().len(), 2);
    }

    #[test]
    fn every_server_event_name_can_be_received() {
        let events = [
            ServerEvent::MessageSeen(Vec::new()),
            ServerEvent::MessageDelivered(Vec::new()),
            ServerEvent::Typing {
                room_id: String::new(),
                user_id: String::new(),
            },
            ServerEvent::Unblocked {
                user_id: String::new(),
            },
            ServerEvent::Blocked {
                user_id: String::new(),
                blocked_at: String::new(),
            },
        ];
        for event in &events {
            assert!(EVENT_NAMES.contains(&event.name()), "{}", event.name());
        }
        assert!(EVENT_NAMES.contains(&"message:sent") && EVENT_NAMES.contains(&"message:updated"));
    }
}
