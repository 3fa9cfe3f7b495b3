//! The in-process broker: every user has a channel, and every connection of that user
//! (tabs, devices, either dialect) is subscribed to it.
//!
//! An event is rendered once into an [`Outbound`] and the same `Arc` is queued to every
//! recipient.
//!
//! Each connection's queue is bounded in *bytes*: a client that stops reading is flagged
//! as a slow consumer and cut off (1008) by its own connection task, so it can never slow
//! the publisher (who only pushes without waiting) or grow memory past the bound. On top
//! of that, all queues together have a budget (`memory.outbound_total_bytes`), so that a
//! thousand stalled clients cannot each pin their full bound: the hot path only adds to
//! one atomic total, and when a push takes it over the budget the connections holding the
//! most bytes are cut the same way, largest first, until it is back under; the small
//! queues are not touched, unless they have not moved for a while (a client that stopped
//! reading before its queue reached the floor: hundreds of those would otherwise hold the
//! total over the budget until it doubled). A cut queue's bytes leave the total at once,
//! though its events are freed only when its connection task ends.
//!
//! The map sits behind a std `RwLock` held only for a lookup and a few non-blocking pushes,
//! never across an `.await`, so an async lock would buy nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_channel::mpsc;
use futures_util::StreamExt;
use tokio::sync::Notify;

use super::{Broker, Outbound};

/// The sending half of one connection's outbound queue.
///
/// futures-channel's unbounded channel rather than tokio's: tokio's allocates a block of 32
/// slots and a cache-padded state up front, about 0.8 KiB for every connection, most of
/// them idle; this one allocates about 0.1 KiB, then a node per queued event.
#[derive(Clone)]
struct Queue {
    tx: mpsc::UnboundedSender<Arc<Outbound>>,
    state: Arc<QueueState>,
}

/// Set in [`QueueState::queued`] once the connection is cut: its queue is dead, and its
/// bytes no longer count in the hub's total.
const CUT: usize = 1 << (usize::BITS - 1);

/// Shared between the hub (pushing) and the connection task (draining).
struct QueueState {
    /// Bytes queued and not yet written to the socket, with the [`CUT`] bit. One word for
    /// both, so that a cut and a concurrent push or release agree on who takes the bytes
    /// out of the hub's total.
    queued: AtomicUsize,
    /// The byte bound; a push past it marks the connection a slow consumer.
    max_bytes: usize,
    /// Wakes the connection task when the queue is cut.
    overflow: Notify,
    /// Set before a cut that is not the client's fault: its user was erased.
    erased: AtomicBool,
    /// When the connection last took an event off its queue, or an event arrived in its
    /// empty queue (milliseconds since the hub started): a queue with bytes that has not
    /// moved since long ago belongs to a client that stopped reading.
    moved_ms: AtomicU64,
    /// The `iat` of the token it was admitted with: an erasure after it closes the
    /// connection ([`Hub::disconnect_erased`]).
    issued_at: Option<u64>,
}

impl QueueState {
    /// Queued bytes, zero once cut.
    fn live_bytes(&self) -> usize {
        let queued = self.queued.load(Ordering::Acquire);
        if queued & CUT == 0 {
            queued
        } else {
            0
        }
    }

    fn is_cut(&self) -> bool {
        self.queued.load(Ordering::Acquire) & CUT != 0
    }
}

/// How long publishers wait before scanning again when the total is over budget but every
/// queue is below the cut floor: what can pile up meanwhile is a few milliseconds of
/// fan-out, and a scan visits every connection.
const RESCAN_AFTER_MS: u64 = 10;

/// The queued bytes of every connection together, and the budget over them.
struct Outstanding {
    /// Bytes queued on connections that are not cut.
    total: AtomicUsize,
    /// `memory.outbound_total_bytes`.
    budget: usize,
    /// `memory.outbound_cut_floor_bytes`: a queue holding less is never cut for the budget.
    /// A client that reads keeps far less than this queued, even in a burst of fan-out to
    /// every connection at once, so the budget only ever cuts clients that stopped reading.
    cut_floor: usize,
    /// `memory.outbound_stall_secs`, in milliseconds: a queue that has not moved for this
    /// long is cut for the budget even under the floor.
    stall_after_ms: u64,
    /// Set while one publisher cuts the largest queues, so that others do not repeat it.
    enforcing: AtomicBool,
    /// When the total is over budget but no queue is above the floor, publishers skip the
    /// scan until this time (milliseconds since `started`) instead of rescanning every
    /// connection on every publish.
    quiet_until_ms: AtomicU64,
    started: Instant,
    /// Connections cut because the total was over the budget.
    budget_cuts: AtomicU64,
}

impl Outstanding {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether `state` may be cut while the total is over the budget but within twice it:
    /// it holds at least the floor, or it holds bytes and has not moved for a while.
    fn may_cut(&self, bytes: usize, state: &QueueState, now_ms: u64) -> bool {
        bytes >= self.cut_floor
            || now_ms.saturating_sub(state.moved_ms.load(Ordering::Acquire)) >= self.stall_after_ms
    }

    /// Cuts a queue: from now on it takes nothing, and its bytes leave the total. Returns
    /// false when it was already cut.
    fn cut(&self, state: &QueueState) -> bool {
        let before = state.queued.fetch_or(CUT, Ordering::AcqRel);
        if before & CUT != 0 {
            return false;
        }
        self.total.fetch_sub(before, Ordering::AcqRel);
        true
    }

    /// Takes `bytes` off a queue (written to the socket, or never queued after all), and
    /// off the total unless the queue was cut, which already took them.
    fn release(&self, state: &QueueState, bytes: usize) {
        let before = state.queued.fetch_sub(bytes, Ordering::AcqRel);
        if before & CUT == 0 {
            self.total.fetch_sub(bytes, Ordering::AcqRel);
        }
    }
}

impl Queue {
    /// Queues one event, or cuts the queue when it would pass its own bound.
    fn push(&self, event: &Arc<Outbound>, outstanding: &Outstanding) {
        if self.state.is_cut() {
            return;
        }
        let cost = event.cost();
        // The total first: a cut between these two lines then takes out only what the
        // queue held before, and this push sees the cut and takes its own bytes back.
        outstanding.total.fetch_add(cost, Ordering::AcqRel);
        let before = self.state.queued.fetch_add(cost, Ordering::AcqRel);
        if before & CUT != 0 {
            self.state.queued.fetch_sub(cost, Ordering::AcqRel);
            outstanding.total.fetch_sub(cost, Ordering::AcqRel);
            return;
        }
        if before + cost > self.state.max_bytes {
            outstanding.release(&self.state, cost);
            if outstanding.cut(&self.state) {
                self.state.overflow.notify_one();
            }
            return;
        }
        if before == 0 {
            self.state
                .moved_ms
                .store(outstanding.now_ms(), Ordering::Release);
        }
        if self.tx.unbounded_send(Arc::clone(event)).is_err() {
            outstanding.release(&self.state, cost);
        }
    }
}

/// Told when a user's first connection in this process opens and when their last one
/// closes, so that a broker between processes listens for a user's events only while
/// they are connected here, and other nodes can tell that they are online
/// (`crate::store::postgres::PresenceBoard`). Called under the hub's lock, in the order the changes
/// happen: it must only note the change, never wait.
pub trait Presence: Send + Sync {
    fn changed(&self, user: &str);
}

/// All connections, by user.
pub struct Hub {
    users: RwLock<HashMap<String, Vec<(u64, Queue)>>>,
    /// Told of each user's first connection and last one (the NATS broker, cluster
    /// presence); set before the first connection.
    presence: RwLock<Vec<Arc<dyn Presence>>>,
    next_id: AtomicU64,
    connections: AtomicUsize,
    slow_consumers: AtomicU64,
    outstanding: Outstanding,
}

/// The per-user connection cap was reached.
#[derive(Debug)]
pub struct TooManyConnections;

impl Hub {
    /// A hub whose connections together may queue `outbound_total_bytes`; over it, queues
    /// holding at least `cut_floor_bytes` are cut, largest first. Queues under the floor are
    /// cut only past twice the total, however long they have not moved.
    pub fn new(outbound_total_bytes: usize, cut_floor_bytes: usize) -> Arc<Hub> {
        Self::with_stall_cut(outbound_total_bytes, cut_floor_bytes, Duration::MAX)
    }

    /// As [`Hub::new`], and over the total a queue under the floor is cut too once it has
    /// not moved for `stall_after`.
    pub fn with_stall_cut(
        outbound_total_bytes: usize,
        cut_floor_bytes: usize,
        stall_after: Duration,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            users: RwLock::default(),
            presence: RwLock::default(),
            next_id: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            slow_consumers: AtomicU64::new(0),
            outstanding: Outstanding {
                total: AtomicUsize::new(0),
                budget: outbound_total_bytes,
                cut_floor: cut_floor_bytes,
                stall_after_ms: stall_after.as_millis().try_into().unwrap_or(u64::MAX),
                enforcing: AtomicBool::new(false),
                quiet_until_ms: AtomicU64::new(0),
                started: Instant::now(),
                budget_cuts: AtomicU64::new(0),
            },
        })
    }

    /// Subscribes one connection of `user`, admitted with a token issued at `issued_at`,
    /// unless the user already has `per_user_cap`.
    pub fn subscribe(
        self: &Arc<Self>,
        user: &str,
        issued_at: Option<u64>,
        per_user_cap: usize,
        max_outbound_bytes: usize,
    ) -> Result<Subscription, TooManyConnections> {
        let (tx, rx) = mpsc::unbounded();
        let state = Arc::new(QueueState {
            queued: AtomicUsize::new(0),
            max_bytes: max_outbound_bytes,
            overflow: Notify::new(),
            erased: AtomicBool::new(false),
            moved_ms: AtomicU64::new(self.outstanding.now_ms()),
            issued_at,
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
            if conns.len() == 1 {
                self.presence_changed(user);
            }
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

    /// Cuts the connections holding the most queued bytes until the total is within the
    /// budget: first only those holding at least the cut floor or not moved for
    /// `stall_after`, so that clients that read are spared in a burst; then, if the total is still over twice the budget (everyone
    /// is falling behind: the server is overloaded), the largest of the rest too, so that
    /// the total never stays past twice the budget. Only runs when over budget, and in one
    /// publisher at a time: the others go on without waiting, since the one at work takes
    /// care of their bytes too. When nothing is left to cut, the next scan waits
    /// [`RESCAN_AFTER_MS`], unless the total passes twice the budget meanwhile.
    fn enforce_budget(&self, users: &HashMap<String, Vec<(u64, Queue)>>) {
        let outstanding = &self.outstanding;
        let now_ms = outstanding.now_ms();
        let hard_limit = outstanding.budget.saturating_mul(2);
        let quiet = now_ms < outstanding.quiet_until_ms.load(Ordering::Acquire)
            && outstanding.total.load(Ordering::Acquire) <= hard_limit;
        if quiet || outstanding.enforcing.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut queues: Vec<(usize, &QueueState)> = users
            .values()
            .flatten()
            .map(|(_, queue)| (queue.state.live_bytes(), &*queue.state))
            .filter(|(bytes, _)| *bytes > 0)
            .collect();
        queues.sort_unstable_by_key(|&(bytes, _)| std::cmp::Reverse(bytes));
        for (bytes, state) in queues {
            let total = outstanding.total.load(Ordering::Acquire);
            if total <= outstanding.budget {
                break;
            }
            // A larger queue that is still moving is skipped for a smaller stalled one.
            if total <= hard_limit && !outstanding.may_cut(bytes, state, now_ms) {
                continue;
            }
            if outstanding.cut(state) {
                outstanding.budget_cuts.fetch_add(1, Ordering::Relaxed);
                state.overflow.notify_one();
            }
        }
        if outstanding.total.load(Ordering::Acquire) > outstanding.budget {
            outstanding
                .quiet_until_ms
                .store(now_ms + RESCAN_AFTER_MS, Ordering::Release);
        }
        outstanding.enforcing.store(false, Ordering::Release);
    }

    /// Tells `presence` from now on when a user comes or goes (before the first
    /// connection).
    pub fn watch_presence(&self, presence: Arc<dyn Presence>) {
        self.presence
            .write()
            .expect("presence lock poisoned")
            .push(presence);
    }

    fn presence_changed(&self, user: &str) {
        for presence in self.presence.read().expect("presence lock poisoned").iter() {
            presence.changed(user);
        }
    }

    /// Every user with a connection here.
    pub fn online_users(&self) -> Vec<String> {
        self.users
            .read()
            .expect("hub lock poisoned")
            .keys()
            .cloned()
            .collect()
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

    /// Bytes queued for connections, all together (cut connections not counted).
    pub fn queued_bytes(&self) -> usize {
        self.outstanding.total.load(Ordering::Relaxed)
    }

    /// Connections cut off so far because the total was over the budget.
    pub fn budget_cuts(&self) -> u64 {
        self.outstanding.budget_cuts.load(Ordering::Relaxed)
    }

    /// Cuts every connection of `user` with [`Cut::Erased`], so that each closes (a plain
    /// socket with 4003, a Socket.IO one with a DISCONNECT); returns how many it cut. The
    /// caller makes sure no new connection of the user is admitted afterwards.
    pub fn disconnect_user(&self, user: &str) -> usize {
        self.disconnect_where(user, |_| true)
    }

    /// Cuts, as [`Hub::disconnect_user`] does, the connections of `user` admitted with a
    /// token from before their erasure at `erased_at_ms`: the ones admission would refuse
    /// now ([`crate::auth::predates_erasure`]). A connection admitted after the erasure is
    /// left alone, so this can be asked again and again (the cluster's checks of the
    /// store's erasures).
    pub fn disconnect_erased(&self, user: &str, erased_at_ms: i64) -> usize {
        self.disconnect_where(user, |state| {
            crate::auth::predates_erasure(state.issued_at, erased_at_ms)
        })
    }

    fn disconnect_where(&self, user: &str, cut: impl Fn(&QueueState) -> bool) -> usize {
        let users = self.users.read().expect("hub lock poisoned");
        let Some(conns) = users.get(user) else {
            return 0;
        };
        let mut closed = 0;
        for (_, queue) in conns {
            if !cut(&queue.state) || queue.state.erased.swap(true, Ordering::AcqRel) {
                continue;
            }
            self.outstanding.cut(&queue.state);
            queue.state.overflow.notify_one();
            closed += 1;
        }
        closed
    }

    fn unsubscribe(&self, user: &str, id: u64, state: &QueueState) {
        {
            let mut users = self.users.write().expect("hub lock poisoned");
            if let Some(conns) = users.get_mut(user) {
                conns.retain(|(conn_id, _)| *conn_id != id);
                if conns.is_empty() {
                    users.remove(user);
                    self.presence_changed(user);
                }
            }
        }
        // No push can reach the queue any more; whatever it still holds leaves the total.
        self.outstanding.cut(state);
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Broker for Hub {
    /// Queues `event` to every connection of `user` in this process, without waiting for
    /// any of them.
    fn publish(&self, user: &str, event: &Arc<Outbound>) {
        let users = self.users.read().expect("hub lock poisoned");
        if let Some(conns) = users.get(user) {
            for (_, queue) in conns {
                queue.push(event, &self.outstanding);
            }
        }
        if self.outstanding.total.load(Ordering::Acquire) > self.outstanding.budget {
            self.enforce_budget(&users);
        }
    }

    /// A user is listed exactly while they hold a subscription.
    fn is_online(&self, user: &str) -> bool {
        self.users
            .read()
            .expect("hub lock poisoned")
            .contains_key(user)
    }

    /// One process: its own connections are all there are.
    fn disconnect_user(&self, user: &str) -> usize {
        Hub::disconnect_user(self, user)
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
        self.rx.next().await
    }

    /// Releases an event's bytes once the socket has taken it.
    pub fn sent(&self, event: &Outbound) {
        let outstanding = &self.hub.outstanding;
        self.state
            .moved_ms
            .store(outstanding.now_ms(), Ordering::Release);
        outstanding.release(&self.state, event.cost());
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

/// Why a connection's queue was cut, and so why the connection must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The client does not read: its queue overflowed, or it was among the largest when
    /// all queues together were over budget.
    SlowConsumer,
    /// Its user was erased ([`Hub::disconnect_user`]).
    Erased,
}

impl OverflowSignal {
    /// Resolves once the queue was cut, with the reason: the client must be cut off.
    pub async fn overflowed(&self) -> Cut {
        loop {
            let notified = self.state.overflow.notified();
            if self.state.is_cut() {
                if self.state.erased.load(Ordering::Acquire) {
                    return Cut::Erased;
                }
                self.hub.slow_consumers.fetch_add(1, Ordering::Relaxed);
                return Cut::SlowConsumer;
            }
            notified.await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.user, self.id, &self.state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::server_event::ServerEvent;

    #[tokio::test]
    async fn every_connection_of_a_user_receives_and_others_do_not() {
        let hub = Hub::new(usize::MAX, 0);
        let mut a1 = hub.subscribe("a", None, 4, 1 << 20).unwrap();
        let mut a2 = hub.subscribe("a", None, 4, 1 << 20).unwrap();
        let mut b = hub.subscribe("b", None, 4, 1 << 20).unwrap();
        let event = Outbound::new(ServerEvent::Typing {
            room_id: "a".into(),
            user_id: "b".into(),
        });
        hub.publish("a", &event);
        assert!(Arc::ptr_eq(&a1.recv().await.unwrap(), &event));
        assert!(Arc::ptr_eq(&a2.recv().await.unwrap(), &event));
        assert!(b.rx.try_recv().is_err());
        assert_eq!((hub.connection_count(), hub.users_online()), (3, 2));
        drop(a1);
        drop(a2);
        assert_eq!((hub.connection_count(), hub.users_online()), (1, 1));
    }

    /// Records every presence change it is told of.
    #[derive(Default)]
    struct Changes(std::sync::Mutex<Vec<String>>);

    impl Presence for Changes {
        fn changed(&self, user: &str) {
            self.0.lock().unwrap().push(user.to_owned());
        }
    }

    #[test]
    fn presence_is_told_of_a_users_first_connection_and_last_one_only() {
        let hub = Hub::new(usize::MAX, 0);
        let changes = Arc::new(Changes::default());
        hub.watch_presence(changes.clone());
        let a1 = hub.subscribe("a", None, 4, 1024).unwrap();
        let a2 = hub.subscribe("a", None, 4, 1024).unwrap();
        let b = hub.subscribe("b", None, 4, 1024).unwrap();
        // Refused for the cap: not a change.
        assert!(hub.subscribe("b", None, 1, 1024).is_err());
        drop(a1);
        assert_eq!(*changes.0.lock().unwrap(), ["a", "b"]);
        drop(a2);
        drop(b);
        assert_eq!(*changes.0.lock().unwrap(), ["a", "b", "a", "b"]);
    }

    #[test]
    fn per_user_cap_is_enforced() {
        let hub = Hub::new(usize::MAX, 0);
        let _one = hub.subscribe("a", None, 1, 1024).unwrap();
        assert!(hub.subscribe("a", None, 1, 1024).is_err());
        assert!(hub.subscribe("b", None, 1, 1024).is_ok());
    }

    #[tokio::test]
    async fn a_full_queue_flags_the_slow_consumer_instead_of_growing() {
        let hub = Hub::new(usize::MAX, 0);
        let sub = hub.subscribe("a", None, 1, 1000).unwrap();
        let event = event_of(432);
        for _ in 0..10 {
            hub.publish("a", &event);
        }
        assert!(sub.state.is_cut());
        assert_eq!(sub.state.queued.load(Ordering::Relaxed) & !CUT, 2 * 432);
        // A cut queue's bytes no longer count in the total.
        assert_eq!(hub.queued_bytes(), 0);
        assert_eq!(sub.overflow_signal().overflowed().await, Cut::SlowConsumer);
        assert_eq!(hub.slow_consumers(), 1);
        assert_eq!(hub.budget_cuts(), 0);
    }

    #[tokio::test]
    async fn disconnecting_a_user_cuts_each_of_their_connections_as_erased_and_no_other() {
        let hub = Hub::new(usize::MAX, 0);
        let a1 = hub.subscribe("a", None, 4, 1 << 20).unwrap();
        let a2 = hub.subscribe("a", None, 4, 1 << 20).unwrap();
        let b = hub.subscribe("b", None, 4, 1 << 20).unwrap();
        hub.publish("a", &event_of(300));
        assert_eq!(hub.disconnect_user("a"), 2);
        assert_eq!(hub.disconnect_user("nobody"), 0);
        for sub in [&a1, &a2] {
            assert_eq!(sub.overflow_signal().overflowed().await, Cut::Erased);
        }
        assert!(!b.state.is_cut());
        // Not a slow consumer, and the cut queues' bytes left the total.
        assert_eq!((hub.slow_consumers(), hub.queued_bytes()), (0, 0));
    }

    #[tokio::test]
    async fn an_erasure_cuts_only_the_connections_whose_token_predates_it_and_only_once() {
        let hub = Hub::new(usize::MAX, 0);
        let old = hub.subscribe("a", Some(1_000), 4, 1 << 20).unwrap();
        let unknown = hub.subscribe("a", None, 4, 1 << 20).unwrap();
        let fresh = hub.subscribe("a", Some(3_000), 4, 1 << 20).unwrap();
        // Erased at 2,000.5 s: tokens of 1,000 s and without `iat` go, one of 3,000 s stays.
        assert_eq!(hub.disconnect_erased("a", 2_000_500), 2);
        for sub in [&old, &unknown] {
            assert_eq!(sub.overflow_signal().overflowed().await, Cut::Erased);
        }
        assert!(!fresh.state.is_cut());
        // Asked again (a periodic check): nothing more to close.
        assert_eq!(hub.disconnect_erased("a", 2_000_500), 0);
        assert_eq!(hub.disconnect_erased("nobody", 2_000_500), 0);
        assert!(!fresh.state.is_cut());
    }

    /// A connection of its own user with a generous per-connection bound.
    fn connect(hub: &Arc<Hub>, user: &str) -> Subscription {
        hub.subscribe(user, None, 1, 1 << 30).unwrap()
    }

    /// An event that costs `bytes` in a queue: the cost of an empty one, then its payload.
    fn event_of(bytes: usize) -> Arc<Outbound> {
        let typing = |room_id: String| {
            Outbound::new(ServerEvent::Typing {
                room_id,
                user_id: String::new(),
            })
        };
        let event = typing("x".repeat(bytes - typing(String::new()).cost()));
        assert_eq!(event.cost(), bytes);
        event
    }

    #[tokio::test]
    async fn over_budget_the_largest_queues_are_cut_first_and_small_ones_kept() {
        let hub = Hub::new(10_000, 1_000);
        let big1 = connect(&hub, "big1");
        let big2 = connect(&hub, "big2");
        let small = connect(&hub, "small");
        let mut active = connect(&hub, "active");
        hub.publish("small", &event_of(500));
        for _ in 0..4 {
            hub.publish("big1", &event_of(1000));
            hub.publish("big2", &event_of(1000));
        }
        // An active reader takes its events as they come.
        for _ in 0..20 {
            hub.publish("active", &event_of(1000));
            let event = active.recv().await.unwrap();
            active.sent(&event);
        }
        assert_eq!(hub.queued_bytes(), 8_500);
        assert_eq!(hub.budget_cuts(), 0);
        // Two more to big1 take the total to 10,500: big1, the largest (6,000), is cut,
        // which is enough.
        hub.publish("big1", &event_of(1000));
        hub.publish("big1", &event_of(1000));
        assert!(big1.state.is_cut());
        assert!(!big2.state.is_cut() && !small.state.is_cut());
        assert_eq!(hub.queued_bytes(), 4_500);
        assert_eq!(hub.budget_cuts(), 1);
        big1.overflow_signal().overflowed().await;
        assert_eq!(hub.slow_consumers(), 1);
        // big1 takes nothing more; big2 grows until it is over the budget in turn.
        hub.publish("big1", &event_of(1000));
        assert_eq!(hub.queued_bytes(), 4_500);
        for _ in 0..6 {
            hub.publish("big2", &event_of(1000));
        }
        assert!(big2.state.is_cut());
        assert!(!small.state.is_cut());
        assert_eq!(hub.queued_bytes(), 500);
        assert_eq!(hub.budget_cuts(), 2);
        // The small queue and the active reader still get their events.
        hub.publish("active", &event_of(1000));
        assert_eq!(active.recv().await.unwrap().cost(), 1000);
        hub.publish("small", &event_of(600));
        assert_eq!(hub.queued_bytes(), 2_100);
        // Dropping connections takes their bytes out of the total, cut or not.
        drop((big1, big2, small, active));
        assert_eq!(hub.queued_bytes(), 0);
        assert_eq!(hub.connection_count(), 0);
    }

    #[test]
    fn queues_under_the_cut_floor_are_never_cut_for_the_budget() {
        // Many readers that are each a little behind, as in a burst of fan-out to everyone:
        // together over the budget (but within twice it), each under the floor. Nobody is
        // cut.
        let hub = Hub::new(15_000, 5_000);
        let readers: Vec<_> = (0..8).map(|i| connect(&hub, &format!("r{i}"))).collect();
        for i in 0..8 {
            for _ in 0..3 {
                hub.publish(&format!("r{i}"), &event_of(1000));
            }
        }
        assert_eq!(hub.queued_bytes(), 24_000);
        assert_eq!(hub.budget_cuts(), 0);
        assert!(readers.iter().all(|r| !r.state.is_cut()));
        // One that stopped reading grows past the floor: it alone is cut, by the first
        // scan after the interval that follows a scan which found nothing to cut.
        let stalled = connect(&hub, "stalled");
        for _ in 0..6 {
            hub.publish("stalled", &event_of(1000));
        }
        std::thread::sleep(std::time::Duration::from_millis(RESCAN_AFTER_MS + 5));
        hub.publish("stalled", &event_of(1000));
        assert!(stalled.state.is_cut());
        assert_eq!(hub.budget_cuts(), 1);
        assert!(readers.iter().all(|r| !r.state.is_cut()));
        assert_eq!(hub.queued_bytes(), 24_000);
    }

    #[tokio::test]
    async fn over_budget_a_stalled_queue_under_the_floor_is_cut_before_a_larger_moving_one() {
        let stall = std::time::Duration::from_millis(30);
        let hub = Hub::with_stall_cut(10_000, 1_000_000, stall);
        let stalled = connect(&hub, "stalled");
        let mut reader = connect(&hub, "reader");
        let idle = connect(&hub, "idle");
        for _ in 0..4 {
            hub.publish("stalled", &event_of(1000));
            hub.publish("reader", &event_of(1000));
        }
        std::thread::sleep(stall + std::time::Duration::from_millis(10));
        // Under the budget nothing is cut, however long a queue has not moved.
        assert_eq!((hub.queued_bytes(), hub.budget_cuts()), (8_000, 0));
        // The reader takes one event (it moves); the idle connection's first event in a
        // long while starts its clock afresh.
        let event = reader.recv().await.unwrap();
        reader.sent(&event);
        hub.publish("idle", &event_of(1000));
        assert_eq!((hub.queued_bytes(), hub.budget_cuts()), (8_000, 0));
        // Three more to the reader take the total to 11,000 with the reader the largest
        // (6,000): the stalled queue (4,000) is cut instead, and that is enough.
        for _ in 0..3 {
            hub.publish("reader", &event_of(1000));
        }
        assert!(stalled.state.is_cut());
        assert!(!reader.state.is_cut() && !idle.state.is_cut());
        assert_eq!((hub.queued_bytes(), hub.budget_cuts()), (7_000, 1));
        assert_eq!(
            stalled.overflow_signal().overflowed().await,
            Cut::SlowConsumer
        );
    }

    #[test]
    fn past_twice_the_budget_the_largest_queues_are_cut_even_under_the_floor() {
        // Overload: every reader falls behind, none reaches the floor. Past twice the
        // budget the largest are cut until the total is back within twice the budget.
        let hub = Hub::new(4_000, 1_000_000);
        let readers: Vec<_> = (0..5).map(|i| connect(&hub, &format!("r{i}"))).collect();
        for (i, n) in [(0, 3), (1, 1), (2, 2), (3, 1)] {
            for _ in 0..n {
                hub.publish(&format!("r{i}"), &event_of(1000));
            }
        }
        assert_eq!((hub.queued_bytes(), hub.budget_cuts()), (7_000, 0));
        // Two more to r4 take the total to 9,000: r0 (3,000), the largest, is cut.
        hub.publish("r4", &event_of(1000));
        hub.publish("r4", &event_of(1000));
        assert!(readers[0].state.is_cut());
        assert!(readers[1..].iter().all(|r| !r.state.is_cut()));
        assert_eq!((hub.queued_bytes(), hub.budget_cuts()), (6_000, 1));
    }

    /// Pushes, releases, cuts and drops from several threads at once never leave bytes
    /// behind in the total: once everyone is gone it is exactly zero.
    #[test]
    fn the_total_stays_exact_under_concurrency() {
        let hub = Hub::new(200_000, 0);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let hub = Arc::clone(&hub);
                std::thread::spawn(move || {
                    for round in 0..50 {
                        let user = format!("u{t}-{round}");
                        let mut sub = hub.subscribe(&user, None, 1, 20_000).unwrap();
                        for i in 0..200 {
                            hub.publish(&user, &event_of(250 + (i % 7) * 300));
                            hub.publish(&format!("u{}-{round}", (t + 1) % 4), &event_of(500));
                            if i % 3 == 0 {
                                if let Ok(event) = sub.rx.try_recv() {
                                    sub.sent(&event);
                                }
                            }
                        }
                        // Half the connections drain before they go, half go full.
                        if round % 2 == 0 {
                            while let Ok(event) = sub.rx.try_recv() {
                                sub.sent(&event);
                            }
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(hub.queued_bytes(), 0);
        assert_eq!(hub.connection_count(), 0);
    }
}
