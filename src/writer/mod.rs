//! The group-commit writer: the only place that writes to the store.
//!
//! Every write is a [`Command`]: sends, reads, the changed names of connecting users.
//! They queue to one thread. Each round it takes all that is queued (up to `max_batch`),
//! applies each command through one write transaction, commits once with fsync, and only
//! then releases their effects: it publishes their events in order, then answers the
//! callers (a handshake waits for its name's answer). If the commit fails, nothing of the
//! round is published and every command is answered `internal`. Under load the queue fills
//! while the previous commit is syncing, so rounds grow by themselves; an idle server
//! commits a lone message at once.
//!
//! Publishing here, in commit order, is what keeps every connection's `message:sent`
//! events of one room in increasing id order. The thread is a plain OS thread because
//! commits block on fsync, which must not stall the async runtime.
//!
//! Both guarantees (answer only once durable, publish in commit order) live here, above
//! the storage traits and the broker, so every backend gets them: a backend only has to
//! make [`WriteTxn::commit`] return once the transaction is durable. A command knows
//! neither: it applies its write, names its events ([`ServerEvent`], rendered by the
//! protocol) and returns its answer; adding a write is one new [`Command`] type, which lives beside the handler that
//! submits it (`crate::chat`).
//!
//! Writes of which only the last one of a round matters (a delivered mark: only the
//! highest counts) need not be applied one by one: a command may leave them in a
//! [`RoundEnd`] of the round instead, which gathers them and applies them once, after the
//! round's last command and before its commit. That work is part of the round: if it
//! fails, the round fails as a failed commit does.
//!
//! Once a round is durable, and before its events go out, the writer raises its
//! [`MarkHints`]: each room's newest id and delivered marks, which the `message:received`
//! handler reads instead of the store (`hints`).

mod hints;

use std::any::{Any, TypeId};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::fanout::{Broker, Outbound, RoomChanges};
use crate::metrics;
use crate::model::RoomKey;
use crate::protocol::server_event::ServerEvent;
use crate::protocol::ChatError;
use crate::snapshot::{CacheStats, RecentCache};
use crate::store::{ClientKey, HookUser, RoomLock, StoreError, WriteStore, WriteTxn};
use crate::webhook::Hooks;

use hints::Hint;
pub use hints::MarkHints;

/// One write, applied in a round's transaction and answered once the round is durable.
pub trait Command: Send + 'static {
    /// What the caller learns once the write is durable.
    type Output: Send + 'static;

    /// Applies the write through `txn` and publishes its events through `cx`. An error is
    /// this command's answer alone: the round goes on, and the events it published are
    /// dropped.
    fn apply(self, txn: &mut dyn WriteTxn, cx: &mut Context<'_>)
        -> Result<Self::Output, ChatError>;

    /// When the request arrived, for commands timed from arrival to durable
    /// (`chat_send_durable_seconds`).
    fn arrived(&self) -> Option<Instant> {
        None
    }

    /// The rooms this command writes to, known before it runs, for
    /// [`WriteTxn::lock_rooms`].
    fn rooms<'a>(&'a self, _out: &mut Vec<RoomLock<'a>>) {}

    /// The idempotency keys of the sends this command makes, in rooms it names in
    /// [`Command::rooms`], for [`WriteTxn::lock_rooms`].
    fn client_keys<'a>(&'a self, _out: &mut Vec<ClientKey<'a>>) {}

    /// The users this command's webhook events (for `hooks`) will read, for
    /// [`WriteTxn::read_hook_users`]. The writer drops the presence of those connected
    /// here ([`Context::is_online`] answers for them).
    fn hook_users<'a>(&'a self, _hooks: &Hooks, _out: &mut Vec<HookUser<'a>>) {}
}

/// Work that commands of one round leave to be applied once, after the round's last
/// command and before its commit (see the module docs). Each type is one per round.
pub trait RoundEnd: Any + Send {
    /// Applies what the round's commands gathered. An error fails the whole round.
    fn finish(
        self: Box<Self>,
        txn: &mut dyn WriteTxn,
        cx: &mut Context<'_>,
    ) -> Result<(), StoreError>;
}

/// What a command sees of its round: the latest-50 cache, the webhooks, who is online,
/// and where its effects go.
pub struct Context<'a> {
    cache: &'a mut RecentCache,
    effects: &'a mut Effects,
    hooks: &'a Hooks,
    broker: &'a dyn Broker,
    /// The round's [`RoundEnd`]s, in the order they were first asked for.
    round_ends: &'a mut Vec<Box<dyn RoundEnd>>,
}

impl Context<'_> {
    /// The latest-50 cache, which only the writer thread touches.
    pub fn cache(&mut self) -> &mut RecentCache {
        self.cache
    }

    /// Message `id` of `room` is stored, once the round is durable ([`MarkHints`]).
    pub fn hint_stored(&mut self, room: &RoomKey, id: u64) {
        self.effects.hints.push(Hint::Stored {
            room: room.clone(),
            id,
        });
    }

    /// `reader`'s delivered mark in `room` is at least `up_to`, once the round is durable.
    pub fn hint_delivered(&mut self, room: &RoomKey, reader: &str, up_to: u64) {
        self.effects.hints.push(Hint::Delivered {
            room: room.clone(),
            reader: reader.to_owned(),
            up_to,
        });
    }

    /// `room` lost messages (retention, an erasure): its hints are dropped, so that a
    /// mark there is checked against the store again.
    pub fn hint_forget(&mut self, room: &RoomKey) {
        self.effects.hints.push(Hint::Forget(room.clone()));
    }

    /// Publishes `event` to each of `users` once the round is durable.
    pub fn publish(&mut self, users: Vec<String>, event: ServerEvent) {
        self.effects.deliveries.push(Delivery {
            users,
            event: Outbound::new(event),
            bystanders: Vec::new(),
        });
    }

    /// Publishes `event`, which reports the room changes `changes`, to each of `users`
    /// once the round is durable; the rooms' other members are told the changes happened
    /// ([`Broker::advance`]).
    pub fn publish_changes(
        &mut self,
        users: Vec<String>,
        event: ServerEvent,
        changes: RoomChanges,
    ) {
        let mut bystanders = Vec::new();
        for span in changes.spans() {
            for member in [&span.room.low, &span.room.high] {
                if !users.contains(member) && !bystanders.contains(member) {
                    bystanders.push(member.clone());
                }
            }
        }
        self.effects.deliveries.push(Delivery {
            users,
            event: Outbound::with_changes(event, changes),
            bystanders,
        });
    }

    /// Publishes `event`, a `block` or `unblock`, to `blocker`'s connections once the
    /// round is durable; `change` is the blocker's change number it took, where the store
    /// numbers them, so that cluster fan-out can tell a lost one.
    pub fn publish_block(&mut self, blocker: String, event: ServerEvent, change: Option<u64>) {
        self.effects.deliveries.push(Delivery {
            users: vec![blocker],
            event: Outbound::with_block_change(event, change),
            bystanders: Vec::new(),
        });
    }

    /// Counts a new message in `chat_messages_stored_total` once the round is durable.
    pub fn stored_message(&mut self) {
        self.effects.new_messages += 1;
    }

    /// The configured webhooks, whose events a command writes in its own transaction.
    pub fn hooks(&self) -> &Hooks {
        self.hooks
    }

    /// Whether `user` has an open connection as this round is applied.
    pub fn is_online(&self, user: &str) -> bool {
        self.broker.is_online(user)
    }

    /// Tells hook number `hook`'s delivery task, once the round is durable, that an event
    /// was put in its outbox. Not taken back when the command fails: the row is in the
    /// transaction either way, and a wake-up finding nothing new costs one read.
    pub fn webhook_queued(&mut self, hook: usize) {
        self.effects.webhooks_queued.push(hook);
    }

    /// This round's `T`, created empty the first time a command of the round asks.
    /// A command that fails after adding to it must not have added anything: put work
    /// here only once nothing else of the command can fail.
    pub fn round_end<T: RoundEnd + Default>(&mut self) -> &mut T {
        let at = match self
            .round_ends
            .iter()
            .position(|end| (**end).type_id() == TypeId::of::<T>())
        {
            Some(at) => at,
            None => {
                self.round_ends.push(Box::new(T::default()));
                self.round_ends.len() - 1
            }
        };
        let end: &mut dyn Any = &mut *self.round_ends[at];
        end.downcast_mut().expect("found by its type id")
    }
}

/// What a round releases once durable, besides the answers.
#[derive(Default)]
struct Effects {
    deliveries: Vec<Delivery>,
    new_messages: u64,
    /// The hook of each webhook event written this round.
    webhooks_queued: Vec<usize>,
    hints: Vec<Hint>,
}

/// An event to publish once the round is durable.
struct Delivery {
    users: Vec<String>,
    event: Arc<Outbound>,
    /// Members of the changed rooms who do not get the event.
    bystanders: Vec<String>,
}

/// A queued command and its caller, erased so that one queue carries every command.
trait Queued: Send {
    /// The command's [`Command::rooms`].
    fn rooms<'a>(&'a self, out: &mut Vec<RoomLock<'a>>);

    /// The command's [`Command::client_keys`].
    fn client_keys<'a>(&'a self, out: &mut Vec<ClientKey<'a>>);

    /// The command's [`Command::hook_users`].
    fn hook_users<'a>(&'a self, hooks: &Hooks, out: &mut Vec<HookUser<'a>>);

    /// Applies the command, keeping its answer for [`Queued::answer`].
    fn apply(&mut self, txn: &mut dyn WriteTxn, cx: &mut Context<'_>);

    /// Answers the caller: with the command's result once the round is `Ok(durable at)`,
    /// `internal` when the round failed.
    fn answer(self: Box<Self>, round: Result<Instant, &StoreError>);
}

struct Job<C: Command, R> {
    /// Taken by `apply`.
    command: Option<C>,
    arrived: Option<Instant>,
    result: Option<Result<C::Output, ChatError>>,
    reply: R,
}

/// Where a job's answer goes: a oneshot the caller awaits ([`Writer::submit`]), or a
/// function run on the writer thread ([`Writer::submit_then`]).
trait Reply<T>: Send + 'static {
    fn send(self, answer: Result<T, ChatError>);
}

impl<T: Send + 'static> Reply<T> for oneshot::Sender<Result<T, ChatError>> {
    fn send(self, answer: Result<T, ChatError>) {
        // The caller may have gone away; nothing is owed to it then.
        let _ = oneshot::Sender::send(self, answer);
    }
}

/// A function to call with the answer.
struct Then<F>(F);

impl<T, F: FnOnce(Result<T, ChatError>) + Send + 'static> Reply<T> for Then<F> {
    fn send(self, answer: Result<T, ChatError>) {
        (self.0)(answer)
    }
}

impl<C: Command, R: Reply<C::Output>> Queued for Job<C, R> {
    fn rooms<'a>(&'a self, out: &mut Vec<RoomLock<'a>>) {
        if let Some(command) = &self.command {
            command.rooms(out);
        }
    }

    fn client_keys<'a>(&'a self, out: &mut Vec<ClientKey<'a>>) {
        if let Some(command) = &self.command {
            command.client_keys(out);
        }
    }

    fn hook_users<'a>(&'a self, hooks: &Hooks, out: &mut Vec<HookUser<'a>>) {
        if let Some(command) = &self.command {
            command.hook_users(hooks, out);
        }
    }

    fn apply(&mut self, txn: &mut dyn WriteTxn, cx: &mut Context<'_>) {
        let command = self.command.take().expect("a job is applied once");
        let (deliveries, new_messages, hints) = (
            cx.effects.deliveries.len(),
            cx.effects.new_messages,
            cx.effects.hints.len(),
        );
        let result = command.apply(txn, cx);
        if result.is_err() {
            cx.effects.deliveries.truncate(deliveries);
            cx.effects.new_messages = new_messages;
            cx.effects.hints.truncate(hints);
        }
        self.result = Some(result);
    }

    fn answer(self: Box<Self>, round: Result<Instant, &StoreError>) {
        let answer = match round {
            Ok(durable_at) => {
                if let Some(arrived) = self.arrived {
                    metrics::send_durable(durable_at.saturating_duration_since(arrived));
                }
                self.result
                    .unwrap_or_else(|| Err(ChatError::internal("the write was not applied")))
            }
            Err(e) => Err(ChatError::internal(format!("commit failed: {e}"))),
        };
        self.reply.send(answer);
    }
}

enum Request {
    Apply(Box<dyn Queued>),
    Shutdown(oneshot::Sender<()>),
}

/// The handle through which sessions submit writes. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Request>,
    /// The size of the writer thread's latest-50 cache, for `/metrics`.
    recent_cache: Arc<CacheStats>,
    mark_hints: Arc<MarkHints>,
}

/// Owns the writer thread; [`WriterThread::shutdown`] drains it.
pub struct WriterThread {
    writer: Writer,
    thread: JoinHandle<()>,
}

/// Tuning of the writer.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Bytes the latest-50 cache may hold (`memory.recent_cache_bytes`).
    pub recent_cache_bytes: usize,
    /// Most commands applied in one transaction.
    pub max_batch: usize,
    /// Rooms whose ids and marks [`MarkHints`] keeps (`memory.mark_hint_rooms`); 0 for none.
    pub mark_hint_rooms: usize,
}

impl Writer {
    /// Starts the writer thread, which publishes through `broker`.
    pub fn spawn(
        store: Arc<dyn WriteStore>,
        broker: Arc<dyn Broker>,
        hooks: Arc<Hooks>,
        config: WriterConfig,
    ) -> WriterThread {
        let (tx, rx) = mpsc::channel(config.max_batch.max(1) * 4);
        let cache = RecentCache::new(config.recent_cache_bytes);
        let recent_cache = cache.stats();
        let mark_hints = Arc::new(MarkHints::new(config.mark_hint_rooms));
        let hints = Arc::clone(&mark_hints);
        let thread = std::thread::Builder::new()
            .name("chat-writer".into())
            .spawn(move || {
                let mut state = State {
                    store,
                    broker,
                    hooks,
                    cache,
                    hints,
                };
                state.run(rx, config.max_batch.max(1));
            })
            .expect("spawn the writer thread");
        WriterThread {
            writer: Writer {
                tx,
                recent_cache,
                mark_hints,
            },
            thread,
        }
    }

    /// Queues a command; the returned receiver resolves once it is durable (or failed).
    pub async fn submit<C: Command>(
        &self,
        command: C,
    ) -> oneshot::Receiver<Result<C::Output, ChatError>> {
        let (reply, rx) = oneshot::channel();
        // A failed send drops `reply`, so the receiver reports the writer as gone.
        self.queue(command, reply).await;
        rx
    }

    /// Queues a command whose answer, once it is durable (or failed), is handed to `then`
    /// on the writer thread, so no task has to wait for it; `then` must be quick. If the
    /// writer is gone, `then` is dropped uncalled.
    pub async fn submit_then<C, F>(&self, command: C, then: F)
    where
        C: Command,
        F: FnOnce(Result<C::Output, ChatError>) + Send + 'static,
    {
        self.queue(command, Then(then)).await;
    }

    async fn queue<C: Command, R: Reply<C::Output>>(&self, command: C, reply: R) {
        let job = Job {
            arrived: command.arrived(),
            command: Some(command),
            result: None,
            reply,
        };
        let _ = self.tx.send(Request::Apply(Box::new(job))).await;
    }

    /// How big the latest-50 cache is now.
    pub fn recent_cache(&self) -> &CacheStats {
        &self.recent_cache
    }

    /// What the writer knows of each room's ids and marks, as of its last commit.
    pub fn mark_hints(&self) -> &MarkHints {
        &self.mark_hints
    }
}

/// Waits for a writer reply, mapping a vanished writer to `internal`.
pub async fn outcome<T>(rx: oneshot::Receiver<Result<T, ChatError>>) -> Result<T, ChatError> {
    rx.await
        .unwrap_or_else(|_| Err(ChatError::internal("the writer has shut down")))
}

impl WriterThread {
    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }

    /// Commits everything queued before this call, then stops the thread.
    pub async fn shutdown(self) {
        let (done, rx) = oneshot::channel();
        if self.writer.tx.send(Request::Shutdown(done)).await.is_ok() {
            let _ = rx.await;
        }
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

/// What the writer thread owns.
struct State {
    store: Arc<dyn WriteStore>,
    broker: Arc<dyn Broker>,
    /// Read by commands that write webhook events; woken after each commit.
    hooks: Arc<Hooks>,
    cache: RecentCache,
    hints: Arc<MarkHints>,
}

impl State {
    fn run(&mut self, mut rx: mpsc::Receiver<Request>, max_batch: usize) {
        let mut requests = Vec::with_capacity(max_batch);
        while rx.blocking_recv_many(&mut requests, max_batch) > 0 {
            let mut stop = None;
            let mut jobs = Vec::with_capacity(requests.len());
            for request in requests.drain(..) {
                match request {
                    Request::Shutdown(done) => stop = Some(done),
                    Request::Apply(job) => jobs.push(job),
                }
            }
            if !jobs.is_empty() {
                self.commit_round(jobs);
            }
            if let Some(done) = stop {
                rx.close();
                // Anything that raced in before the close still gets committed.
                while let Ok(request) = rx.try_recv() {
                    if let Request::Apply(job) = request {
                        self.commit_round(vec![job]);
                    }
                }
                let _ = done.send(());
                return;
            }
        }
    }

    /// Applies one round of commands in one transaction, commits, then publishes and
    /// answers.
    fn commit_round(&mut self, mut jobs: Vec<Box<dyn Queued>>) {
        let mut effects = Effects::default();
        let cache = &mut self.cache;
        let (hooks, broker) = (&*self.hooks, &*self.broker);
        let mut round_ends = Vec::new();
        let committed = self.store.begin().and_then(|mut txn| {
            let (mut rooms, mut sends, mut users) = (Vec::new(), Vec::new(), Vec::new());
            for job in &jobs {
                job.rooms(&mut rooms);
                job.client_keys(&mut sends);
                job.hook_users(hooks, &mut users);
            }
            if !users.is_empty() {
                for named in &mut users {
                    named.presence = named.presence && !broker.is_online(named.user);
                }
                // Once each, with their presence if any command of the round needs it.
                users.sort_unstable_by(|a, b| (a.user, !a.presence).cmp(&(b.user, !b.presence)));
                users.dedup_by(|later, first| later.user == first.user);
                txn.read_hook_users(&users)?;
            }
            if !rooms.is_empty() {
                // Once each, creating it if any command of the round stores a message.
                rooms.sort_unstable_by(|a, b| {
                    (&a.room.low, &a.room.high, !a.create).cmp(&(
                        &b.room.low,
                        &b.room.high,
                        !b.create,
                    ))
                });
                rooms.dedup_by(|later, first| later.room == first.room);
                txn.lock_rooms(&rooms, &sends)?;
            }
            let mut cx = Context {
                cache,
                effects: &mut effects,
                hooks,
                broker,
                round_ends: &mut round_ends,
            };
            for job in &mut jobs {
                job.apply(txn.as_mut(), &mut cx);
            }
            // Until none is left: a round end may leave work for another.
            while !cx.round_ends.is_empty() {
                for end in std::mem::take(cx.round_ends) {
                    end.finish(txn.as_mut(), &mut cx)?;
                }
            }
            let commit_started = Instant::now();
            txn.commit()?;
            metrics::commit_took(commit_started.elapsed());
            Ok(())
        });

        if let Err(e) = committed {
            // Nothing of this round is durable: nobody hears of it, and the cache may hold
            // messages that never reached the disk.
            tracing::error!(error = %e, "round failed, nothing committed");
            self.cache.clear();
            for job in jobs {
                job.answer(Err(&e));
            }
            return;
        }
        let durable_at = Instant::now();
        // Recorded before anyone hears of the commit, so a scrape after an ack sees it.
        metrics::committed(jobs.len(), effects.new_messages);
        // Before the events: a reader marks a message as soon as it has it.
        self.hints.apply(effects.hints);
        for delivery in effects.deliveries {
            for user in &delivery.users {
                self.broker.publish(user, &delivery.event);
            }
            for user in &delivery.bystanders {
                self.broker.advance(user, &delivery.event);
            }
        }
        for hook in effects.webhooks_queued {
            self.hooks.queued(hook);
        }
        for job in jobs {
            job.answer(Ok(durable_at));
        }
    }
}

#[cfg(test)]
mod tests {
    //! The writer's own guarantees, checked with commands and a store made for the test:
    //! events go out only after their round committed, in the order the commands were
    //! applied; a failed command publishes nothing; a failed commit publishes nothing and
    //! answers everyone `internal`.

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc as std_mpsc, Mutex};

    use super::*;
    use crate::model::{ChatMessage, RoomKey, SessionUser};
    use crate::protocol::ErrorCode;
    use crate::store::{
        self, Appended, DeleteOutcome, EditOutcome, OutboxEvent, ReceivedOutcome, SeenOutcome,
    };

    /// What happened, in order: `commit` for each commit, `publish <user> <room>` for each
    /// event that reached the broker.
    type Log = Arc<Mutex<Vec<String>>>;

    struct Recorder(Log);

    impl Broker for Recorder {
        fn publish(&self, user: &str, event: &Arc<Outbound>) {
            let room: serde_json::Value = serde_json::from_str(event.data()).unwrap();
            let entry = format!("publish {user} {}", room["roomId"].as_str().unwrap());
            self.0.lock().unwrap().push(entry);
        }

        /// Only cat is connected here.
        fn is_online(&self, user: &str) -> bool {
            user == "cat"
        }

        // No connections to close: these tests only record what is published.
        fn disconnect_user(&self, _: &str) -> usize {
            0
        }
    }

    struct TestStore {
        log: Log,
        fail_commits: AtomicBool,
    }

    struct TestTxn {
        log: Log,
        fail: bool,
    }

    impl WriteStore for TestStore {
        fn begin(&self) -> store::Result<Box<dyn WriteTxn>> {
            Ok(Box::new(TestTxn {
                log: Arc::clone(&self.log),
                fail: self.fail_commits.load(Ordering::SeqCst),
            }))
        }
    }

    const ONLY_TEST_COMMANDS: &str = "the writer's tests apply only their own commands";

    impl WriteTxn for TestTxn {
        fn append(
            &mut self,
            _: &RoomKey,
            _: &str,
            _: &str,
            _: Option<&str>,
            _: i64,
        ) -> store::Result<Appended> {
            unreachable!("{ONLY_TEST_COMMANDS}")
        }

        fn latest(&self, _: &RoomKey, _: usize) -> store::Result<Vec<ChatMessage>> {
            unreachable!("{ONLY_TEST_COMMANDS}")
        }

        fn mark_seen(
            &mut self,
            _: &RoomKey,
            _: &str,
            _: u64,
            _: i64,
            _: i64,
        ) -> store::Result<SeenOutcome> {
            unreachable!("{ONLY_TEST_COMMANDS}")
        }

        fn mark_received(
            &mut self,
            _: &RoomKey,
            _: &str,
            _: u64,
            _: i64,
        ) -> store::Result<ReceivedOutcome> {
            unreachable!("{ONLY_TEST_COMMANDS}")
        }

        fn edit(
            &mut self,
            _: &RoomKey,
            _: &str,
            _: u64,
            _: &str,
            _: i64,
            _: i64,
        ) -> store::Result<EditOutcome> {
            unreachable!("{ONLY_TEST_COMMANDS}")
        }

        fn delete(&mut self, _: &RoomKey, _: &str, _: u64, _: i64) -> store::Result<DeleteOutcome> {
            unreachable!("{ONLY_TEST_COMMANDS}")
        }

        fn put_profile(&mut self, _: &SessionUser) -> store::Result<()> {
            unreachable!("{ONLY_TEST_COMMANDS}")
        }

        fn blocked_since(&self, _: &str, _: &str) -> store::Result<Option<i64>> {
            unreachable!("{ONLY_TEST_COMMANDS}")
        }

        fn count_blocks(&self, _: &str) -> store::Result<usize> {
            unreachable!("{ONLY_TEST_COMMANDS}")
        }

        fn put_block(&mut self, _: &str, _: &str, _: i64) -> store::Result<Option<u64>> {
            unreachable!("{ONLY_TEST_COMMANDS}")
        }

        fn remove_block(&mut self, _: &str, _: &str, _: i64) -> store::Result<store::Lifted> {
            unreachable!("{ONLY_TEST_COMMANDS}")
        }

        fn profile(&self, _: &str) -> store::Result<SessionUser> {
            unreachable!("{ONLY_TEST_COMMANDS}")
        }

        fn enqueue_webhook(&mut self, _: &str, _: &OutboxEvent) -> store::Result<()> {
            unreachable!("{ONLY_TEST_COMMANDS}")
        }

        fn remove_webhooks(&mut self, _: &str, _: &[u64]) -> store::Result<Vec<u64>> {
            unreachable!("{ONLY_TEST_COMMANDS}")
        }

        fn dead_letter_webhook(&mut self, _: &str, _: u64, _: &str, _: i64) -> store::Result<bool> {
            unreachable!("{ONLY_TEST_COMMANDS}")
        }

        fn retry_dead_webhooks(&mut self, _: &str, _: usize, _: i64) -> store::Result<u64> {
            unreachable!("{ONLY_TEST_COMMANDS}")
        }

        fn expire(&mut self, _: &RoomKey, _: i64, _: usize) -> store::Result<store::Expired> {
            unreachable!("{ONLY_TEST_COMMANDS}")
        }

        fn erase_user(&mut self, _: &str, _: i64) -> store::Result<store::Erasure> {
            unreachable!("{ONLY_TEST_COMMANDS}")
        }

        fn erased_at(&self, _: &str) -> store::Result<Option<i64>> {
            unreachable!("{ONLY_TEST_COMMANDS}")
        }

        fn read_hook_users(&mut self, users: &[HookUser<'_>]) -> store::Result<()> {
            let named: Vec<String> = users
                .iter()
                .map(|u| format!("{}{}", u.user, if u.presence { "+presence" } else { "" }))
                .collect();
            self.log
                .lock()
                .unwrap()
                .push(format!("hook users {}", named.join(",")));
            Ok(())
        }

        fn commit(self: Box<Self>) -> store::Result<()> {
            if self.fail {
                return Err(StoreError::Corrupt("the test fails this commit".into()));
            }
            self.log.lock().unwrap().push("commit".into());
            Ok(())
        }
    }

    /// Publishes a typing event in `room` to `user` and hints message 1 of the room
    /// (`user`, `room`) stored, then answers `room`, or fails.
    struct Emit {
        user: &'static str,
        room: &'static str,
        fail: bool,
    }

    impl Command for Emit {
        type Output = &'static str;

        fn apply(
            self,
            _: &mut dyn WriteTxn,
            cx: &mut Context<'_>,
        ) -> Result<&'static str, ChatError> {
            cx.publish(
                vec![self.user.into()],
                ServerEvent::Typing {
                    room_id: self.room.into(),
                    user_id: "w".into(),
                },
            );
            cx.hint_stored(&RoomKey::new(self.user, self.room), 1);
            if self.fail {
                return Err(ChatError::bad_request("this command fails"));
            }
            Ok(self.room)
        }
    }

    /// Says when its round has started, then holds it open until the test lets it go,
    /// so that what is submitted meanwhile lands together in the next round.
    struct Hold {
        started: oneshot::Sender<()>,
        release: std_mpsc::Receiver<()>,
    }

    impl Command for Hold {
        type Output = ();

        fn apply(self, _: &mut dyn WriteTxn, _: &mut Context<'_>) -> Result<(), ChatError> {
            self.started.send(()).unwrap();
            self.release.recv().unwrap();
            Ok(())
        }
    }

    /// Names two users its webhook events would read, and whether their presence too.
    struct Named([(&'static str, bool); 2]);

    impl Command for Named {
        type Output = ();

        fn hook_users<'a>(&'a self, _: &Hooks, out: &mut Vec<HookUser<'a>>) {
            out.extend(
                self.0
                    .iter()
                    .map(|&(user, presence)| HookUser { user, presence }),
            );
        }

        fn apply(self, _: &mut dyn WriteTxn, _: &mut Context<'_>) -> Result<(), ChatError> {
            Ok(())
        }
    }

    fn start(fail_commits: bool) -> (WriterThread, Log) {
        let log = Log::default();
        let store = Arc::new(TestStore {
            log: Arc::clone(&log),
            fail_commits: AtomicBool::new(fail_commits),
        });
        let config = WriterConfig {
            recent_cache_bytes: 1 << 20,
            max_batch: 16,
            mark_hint_rooms: 1024,
        };
        let recorder = Arc::new(Recorder(Arc::clone(&log)));
        let thread = Writer::spawn(store, recorder, Arc::new(Hooks::none()), config);
        (thread, log)
    }

    fn emit(user: &'static str, room: &'static str, fail: bool) -> Emit {
        Emit { user, room, fail }
    }

    /// Whether the writer's hints know the room an [`Emit`] hinted.
    fn hinted(writer: &Writer, user: &str, room: &str) -> bool {
        writer
            .mark_hints()
            .get(&RoomKey::new(user, room), user)
            .is_some()
    }

    #[tokio::test]
    async fn events_go_out_after_their_commit_in_order_and_a_failed_command_sends_none() {
        let (thread, log) = start(false);
        let writer = thread.writer();
        let (release, held) = std_mpsc::channel();
        let (started, holding) = oneshot::channel();
        let hold = writer
            .submit(Hold {
                started,
                release: held,
            })
            .await;
        holding.await.unwrap();
        // One round: applied in this order while the first round is held open.
        let first = writer.submit(emit("a", "r1", false)).await;
        let failed = writer.submit(emit("b", "r2", true)).await;
        let last = writer.submit(emit("c", "r3", false)).await;
        release.send(()).unwrap();
        outcome(hold).await.unwrap();
        assert_eq!(outcome(first).await.unwrap(), "r1");
        let refused = outcome(failed).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::BadRequest);
        assert_eq!(outcome(last).await.unwrap(), "r3");
        // Hints are raised with the commit, and never by a command that failed.
        assert!(hinted(&writer, "a", "r1") && hinted(&writer, "c", "r3"));
        assert!(!hinted(&writer, "b", "r2"));
        thread.shutdown().await;

        assert_eq!(
            *log.lock().unwrap(),
            ["commit", "commit", "publish a r1", "publish c r3"]
        );
    }

    #[tokio::test]
    async fn a_round_names_its_commands_hook_users_to_the_store_once_each_before_they_run() {
        let (thread, log) = start(false);
        let writer = thread.writer();
        let (release, held) = std_mpsc::channel();
        let (started, holding) = oneshot::channel();
        let hold = writer
            .submit(Hold {
                started,
                release: held,
            })
            .await;
        holding.await.unwrap();
        let first = writer.submit(Named([("cat", true), ("bob", false)])).await;
        let second = writer.submit(Named([("bob", true), ("ann", false)])).await;
        release.send(()).unwrap();
        outcome(hold).await.unwrap();
        outcome(first).await.unwrap();
        outcome(second).await.unwrap();
        thread.shutdown().await;
        assert_eq!(
            *log.lock().unwrap(),
            // bob's presence is asked once, as one command needs it; cat's is not, as
            // cat is connected here.
            ["commit", "hook users ann,bob+presence,cat", "commit"]
        );
    }

    #[tokio::test]
    async fn a_failed_commit_publishes_nothing_hints_nothing_and_answers_internal() {
        let (thread, log) = start(true);
        let writer = thread.writer();
        let answers = [
            writer.submit(emit("a", "r1", false)).await,
            writer.submit(emit("b", "r2", false)).await,
        ];
        for answer in answers {
            assert_eq!(outcome(answer).await.unwrap_err().code, ErrorCode::Internal);
        }
        // A hint ahead of the store would refuse valid marks or drop new ones as stale.
        assert!(!hinted(&writer, "a", "r1") && !hinted(&writer, "b", "r2"));
        thread.shutdown().await;
        assert!(log.lock().unwrap().is_empty());
    }
}
