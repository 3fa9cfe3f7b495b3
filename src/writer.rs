//! The group-commit writer: the only place that writes to the store.
//!
//! Sends, reads and the changed names of connecting users queue to one thread. Each round
//! it takes all that is queued (up to `max_batch`), applies it in one write
//! transaction, commits once with fsync, and only then fans out `message:sent` /
//! `message:seen` and answers the callers (a handshake waits for its name's answer).
//! Under load the queue fills while the previous commit is syncing, so batches grow by
//! themselves; an idle server commits a lone message at once.
//!
//! Doing the fan-out here, in commit order, is what keeps every connection's
//! `message:sent` events of one room in increasing id order. The thread is a plain OS
//! thread because commits block on fsync, which must not stall the async runtime.
//!
//! Both guarantees (answer only once durable, fan out in commit order) live here, above
//! the storage traits, so every backend gets them: a backend only has to make
//! [`WriteTxn::commit`] return once the transaction is durable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::hub::{Hub, Outbound};
use crate::metrics;
use crate::model::{ChatMessage, RoomKey, SessionUser};
use crate::protocol::event::MAX_MESSAGES_LIMIT;
use crate::protocol::time::{format_millis, now_millis};
use crate::protocol::ChatError;
use crate::snapshot::{CacheStats, RecentCache};
use crate::store::{Appended, SeenOutcome, StoreError, WriteStore, WriteTxn};

/// A new message to store.
pub struct AppendJob {
    pub room: RoomKey,
    pub sender: SessionUser,
    pub text: String,
    pub client_message_id: Option<String>,
    /// When the `message` frame arrived, for `chat_send_durable_seconds`.
    pub arrived: Instant,
    pub reply: oneshot::Sender<Result<AppendOutcome, ChatError>>,
}

/// What the sender learns once the message is durable.
#[derive(Debug)]
pub struct AppendOutcome {
    /// The stored message (for a retry: the one stored first, in its current state).
    pub message: ChatMessage,
    /// True when this was a retry and nothing new was stored.
    pub duplicate: bool,
}

/// One item of a `message:read`, already checked for shape, reader and room.
pub struct SeenItem {
    /// Position in the request array, for the `rejected` list.
    pub index: usize,
    pub room: RoomKey,
    pub room_id: String,
    pub message_id: u64,
    pub seen_date_ms: i64,
}

/// A `message:read` to apply.
pub struct SeenJob {
    pub reader: String,
    pub items: Vec<SeenItem>,
    pub reply: oneshot::Sender<Result<Vec<(usize, SeenOutcome)>, ChatError>>,
}

/// A user's new display name to remember.
struct ProfileJob {
    user: SessionUser,
    reply: oneshot::Sender<Result<(), ChatError>>,
}

enum Job {
    Append(AppendJob),
    Seen(SeenJob),
    Profile(ProfileJob),
    Shutdown(oneshot::Sender<()>),
}

/// The handle through which sessions submit writes. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    /// The size of the writer thread's latest-50 cache, for `/metrics`.
    recent_cache: Arc<CacheStats>,
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
    /// Most jobs applied in one transaction.
    pub max_batch: usize,
}

/// The writer is gone: the server is shutting down.
fn closed() -> ChatError {
    ChatError::internal("the writer has shut down")
}

impl Writer {
    /// Starts the writer thread.
    pub fn spawn(store: Arc<dyn WriteStore>, hub: Arc<Hub>, config: WriterConfig) -> WriterThread {
        let (tx, rx) = mpsc::channel(config.max_batch.max(1) * 4);
        let cache = RecentCache::new(config.recent_cache_bytes);
        let recent_cache = cache.stats();
        let thread = std::thread::Builder::new()
            .name("chat-writer".into())
            .spawn(move || {
                let mut state = State { store, hub, cache };
                state.run(rx, config.max_batch.max(1));
            })
            .expect("spawn the writer thread");
        WriterThread {
            writer: Writer { tx, recent_cache },
            thread,
        }
    }

    /// Queues a send; the returned receiver resolves once it is durable (or failed).
    pub async fn append(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<AppendOutcome, ChatError>>) -> AppendJob,
    ) -> oneshot::Receiver<Result<AppendOutcome, ChatError>> {
        let (reply, rx) = oneshot::channel();
        // A failed send drops `reply`, so the receiver reports the writer as gone.
        let _ = self.tx.send(Job::Append(job(reply))).await;
        rx
    }

    /// Queues a `message:read`; resolves once durable.
    pub async fn mark_seen(
        &self,
        reader: String,
        items: Vec<SeenItem>,
    ) -> oneshot::Receiver<Result<Vec<(usize, SeenOutcome)>, ChatError>> {
        let (reply, rx) = oneshot::channel();
        let _ = self
            .tx
            .send(Job::Seen(SeenJob {
                reader,
                items,
                reply,
            }))
            .await;
        rx
    }

    /// How big the latest-50 cache is now.
    pub fn recent_cache(&self) -> &CacheStats {
        &self.recent_cache
    }

    /// Queues a profile update; the returned receiver resolves once it is durable.
    pub async fn put_profile(&self, user: SessionUser) -> oneshot::Receiver<Result<(), ChatError>> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Job::Profile(ProfileJob { user, reply })).await;
        rx
    }
}

/// Waits for a writer reply, mapping a vanished writer to `internal`.
pub async fn outcome<T>(rx: oneshot::Receiver<Result<T, ChatError>>) -> Result<T, ChatError> {
    rx.await.unwrap_or_else(|_| Err(closed()))
}

impl WriterThread {
    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }

    /// Commits everything queued before this call, then stops the thread.
    pub async fn shutdown(self) {
        let (done, rx) = oneshot::channel();
        if self.writer.tx.send(Job::Shutdown(done)).await.is_ok() {
            let _ = rx.await;
        }
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

/// What the writer thread owns.
struct State {
    store: Arc<dyn WriteStore>,
    hub: Arc<Hub>,
    cache: RecentCache,
}

/// An event to fan out once the batch is durable.
struct Delivery {
    users: Vec<String>,
    event: Arc<Outbound>,
}

/// A reply to send once the batch is durable.
enum Reply {
    Append(
        oneshot::Sender<Result<AppendOutcome, ChatError>>,
        Result<AppendOutcome, ChatError>,
        Instant,
    ),
    Seen(
        oneshot::Sender<Result<Vec<(usize, SeenOutcome)>, ChatError>>,
        Result<Vec<(usize, SeenOutcome)>, ChatError>,
    ),
    Profile(
        oneshot::Sender<Result<(), ChatError>>,
        Result<(), ChatError>,
    ),
}

impl State {
    fn run(&mut self, mut rx: mpsc::Receiver<Job>, max_batch: usize) {
        let mut jobs = Vec::with_capacity(max_batch);
        while rx.blocking_recv_many(&mut jobs, max_batch) > 0 {
            let mut stop = None;
            let mut work = Vec::with_capacity(jobs.len());
            for job in jobs.drain(..) {
                match job {
                    Job::Shutdown(done) => stop = Some(done),
                    other => work.push(other),
                }
            }
            if !work.is_empty() {
                self.commit_round(work);
            }
            if let Some(done) = stop {
                rx.close();
                // Anything that raced in before the close still gets committed.
                while let Ok(job) = rx.try_recv() {
                    if !matches!(job, Job::Shutdown(_)) {
                        self.commit_round(vec![job]);
                    }
                }
                let _ = done.send(());
                return;
            }
        }
    }

    /// Applies one round of jobs in one transaction, commits, then delivers and replies.
    fn commit_round(&mut self, jobs: Vec<Job>) {
        let mut deliveries = Vec::new();
        let round_size = jobs.len();
        let mut replies = Vec::with_capacity(jobs.len());
        let committed = self.store.begin().and_then(|mut batch| {
            for job in jobs {
                match job {
                    Job::Append(job) => {
                        let result = self.apply_append(batch.as_mut(), &job, &mut deliveries);
                        replies.push(Reply::Append(job.reply, result, job.arrived));
                    }
                    Job::Seen(job) => {
                        let result = self.apply_seen(batch.as_mut(), &job, &mut deliveries);
                        replies.push(Reply::Seen(job.reply, result));
                    }
                    Job::Profile(job) => {
                        let result = batch.put_profile(&job.user).map_err(ChatError::internal);
                        replies.push(Reply::Profile(job.reply, result));
                    }
                    Job::Shutdown(_) => unreachable!("shutdown is taken out of the round"),
                }
            }
            let commit_started = Instant::now();
            batch.commit()?;
            metrics::commit_took(commit_started.elapsed());
            Ok(())
        });

        if let Err(e) = committed {
            // Nothing of this round is durable: nobody hears of it, and the cache may hold
            // messages that never reached the disk.
            tracing::error!(error = %e, "commit failed");
            self.cache.clear();
            for reply in replies {
                match reply {
                    Reply::Append(tx, _, _) => drop(tx.send(Err(closed_by(&e)))),
                    Reply::Seen(tx, _) => drop(tx.send(Err(closed_by(&e)))),
                    Reply::Profile(tx, _) => drop(tx.send(Err(closed_by(&e)))),
                }
            }
            return;
        }
        let durable_at = Instant::now();
        let new_messages = replies
            .iter()
            .filter(|r| matches!(r, Reply::Append(_, Ok(appended), _) if !appended.duplicate))
            .count();
        // Recorded before anyone hears of the commit, so a scrape after an ack sees it.
        metrics::committed(round_size, new_messages as u64);
        for delivery in deliveries {
            for user in &delivery.users {
                self.hub.publish(user, &delivery.event);
            }
        }
        for reply in replies {
            match reply {
                Reply::Append(tx, result, arrived) => {
                    metrics::send_durable(durable_at.saturating_duration_since(arrived));
                    drop(tx.send(result));
                }
                Reply::Seen(tx, result) => drop(tx.send(result)),
                Reply::Profile(tx, result) => drop(tx.send(result)),
            }
        }
    }

    fn apply_append(
        &mut self,
        batch: &mut dyn WriteTxn,
        job: &AppendJob,
        deliveries: &mut Vec<Delivery>,
    ) -> Result<AppendOutcome, ChatError> {
        let appended = batch
            .append(
                &job.room,
                &job.sender.id,
                &job.text,
                job.client_message_id.as_deref(),
                now_millis(),
            )
            .map_err(ChatError::internal)?;
        let load = || batch.latest(&job.room, MAX_MESSAGES_LIMIT);
        let room_id = job.room.id();
        let (message, duplicate, recipients, snapshot) = match appended {
            Appended::New(message) => {
                let snapshot = self
                    .cache
                    .record_new(&job.room, &message, load, &room_id, &job.sender)
                    .map_err(ChatError::internal)?;
                let mut users = vec![job.room.low.clone()];
                if !job.room.is_self_room() {
                    users.push(job.room.high.clone());
                }
                (message, false, users, snapshot)
            }
            Appended::Duplicate(message) => {
                let snapshot = self
                    .cache
                    .snapshot(&job.room, load, &room_id, &job.sender)
                    .map_err(ChatError::internal)?;
                (message, true, vec![job.sender.id.clone()], snapshot)
            }
        };
        deliveries.push(Delivery {
            users: recipients,
            event: Outbound::new("message:sent", snapshot),
        });
        Ok(AppendOutcome { message, duplicate })
    }

    fn apply_seen(
        &mut self,
        batch: &mut dyn WriteTxn,
        job: &SeenJob,
        deliveries: &mut Vec<Delivery>,
    ) -> Result<Vec<(usize, SeenOutcome)>, ChatError> {
        let now = now_millis();
        let mut outcomes = Vec::with_capacity(job.items.len());
        // One message:seen per partner, listing only that partner's messages.
        let mut by_partner: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
        for item in &job.items {
            let outcome = batch
                .mark_seen(
                    &item.room,
                    &job.reader,
                    item.message_id,
                    item.seen_date_ms,
                    now,
                )
                .map_err(ChatError::internal)?;
            if let SeenOutcome::Changed(message) = &outcome {
                self.cache.update(&item.room, message);
                let seen_at = format_millis(message.seen_ms.unwrap_or(now));
                by_partner
                    .entry(message.user_id.clone())
                    .or_default()
                    .push(serde_json::json!({
                        "userId": job.reader,
                        "roomId": item.room_id,
                        "messageId": message.id,
                        "seenAt": seen_at,
                    }));
            }
            outcomes.push((item.index, outcome));
        }
        for (partner, items) in by_partner {
            deliveries.push(Delivery {
                users: vec![partner],
                event: Outbound::new(
                    "message:seen",
                    serde_json::to_string(&items).expect("values serialize"),
                ),
            });
        }
        Ok(outcomes)
    }
}

fn closed_by(e: &StoreError) -> ChatError {
    ChatError::internal(format!("commit failed: {e}"))
}
