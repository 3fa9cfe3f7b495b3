//! `message:received`: delivered marks. A client says it has every message of a room up
//! to an id; that per-(user, room) high-water mark only moves forward, and each partner
//! message it newly covers gets `deliveredAt` and is reported to its sender in
//! `message:delivered`. Same shape and rules as `message:read`: an array of items, each
//! checked on its own, rejected items listed in the reply. A read implies received
//! (`read.rs` moves the mark through [`Delivered`] too, at once, so that the sender hears
//! of delivery before the `message:seen`).
//!
//! A client showing delivered ticks marks every message it gets, so marks come about as
//! often as messages, and only the highest of a reader's marks in a room counts. So a
//! mark is written as few times as that allows:
//! - the handler reads the reader's mark first: a mark at or below it, or naming no
//!   message, is answered without a write. It reads it from the writer's
//!   [`crate::writer::MarkHints`] (each room's newest id and marks as of the last commit),
//!   and from the store only when those do not know the id;
//! - a mark of a (reader, room) whose earlier mark still waits in the writer's queue
//!   raises that one instead of queueing its own ([`QueuedMarks`]), and is answered when
//!   it is durable;
//! - in the writer, the marks of a round wait in its [`RoundMarks`], which moves each
//!   (reader, room) mark once and sends each sender one `message:delivered` for the round.
//!
//! Each newly covered message is still rewritten with its `deliveredAt` and moved in the
//! room's change log, so that history, the inbox, the snapshot and `changes` show it.
//!
//! A mark sent without an ack is answered at once, before it is written: the client asked
//! for no reply, so only a refusal known up front (shape, room, unknown id, rate limit)
//! reaches it as an `error` event. Waiting for the commit would keep a pending reply per
//! mark, woken by the round, only to answer nothing. The mark is written all the same,
//! and its sender hears `message:delivered` only once it is durable; a failed commit is
//! not reported to an ack-less client (the writer logs it), and a later request of the
//! same connection may not see the mark yet.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::read::rejections;
use super::{check_sender, room_for, Chat, Handled, Success};
use crate::fanout::RoomChanges;
use crate::model::{RoomKey, SessionUser};
use crate::protocol::event::{self, ClientEvent, ReceivedItem, MAX_READ_ITEMS};
use crate::protocol::server_event::{DeliveredReceipt, ServerEvent};
use crate::protocol::time::{format_millis, now_millis};
use crate::protocol::ChatError;
use crate::ratelimit::Bucket;
use crate::store::{self, ReceivedOutcome, RoomLock, WriteTxn};
use crate::writer::{Command, Context, RoundEnd};

impl Chat {
    /// `acked`: whether the client asked for a reply (see the module docs).
    pub(super) async fn mark_received(
        &self,
        user: &SessionUser,
        data: &str,
        acked: bool,
    ) -> Handled {
        let shape = || {
            ChatError::bad_request(format!(
                "message:received takes an array of 1 to {MAX_READ_ITEMS} objects"
            ))
        };
        let items: Vec<Map<String, Value>> = match event::parse(ClientEvent::Received, data) {
            Ok(items) => items,
            Err(_) => return Handled::Done(Err(shape())),
        };
        if items.is_empty() || items.len() > MAX_READ_ITEMS {
            return Handled::Done(Err(shape()));
        }
        if let Err(e) = self.rate_limiter.take(&user.id, Bucket::Request) {
            return Handled::Done(Err(e));
        }
        let mut rejected = Vec::new();
        let mut moving = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            let mark = match check_item(user, item) {
                Ok(mark) => mark,
                Err(e) => {
                    rejected.push((index, e));
                    continue;
                }
            };
            // Read-only, so a repeated or stale mark costs no write and no queue slot; from
            // the writer's hints when they know the id, else from the store.
            let hinted = self
                .writer
                .mark_hints()
                .get(&mark.room, &user.id)
                .filter(|state| mark.message_id <= state.last_id);
            let state = match hinted {
                Some(state) => Ok(Some(state)),
                None => self.store.delivered_mark(&mark.room, &user.id).await,
            };
            match state {
                Ok(Some(state)) if mark.message_id <= state.last_id => {
                    if mark.message_id > state.mark {
                        moving.push(mark);
                    }
                }
                Ok(_) => rejected.push((
                    index,
                    ChatError::not_found("no message with that id in this room"),
                )),
                Err(e) => return Handled::Done(Err(ChatError::internal(e))),
            }
        }
        let (done, done_rx) = watch::channel(None);
        let (items, unsent, mut waits) = self.queued_marks.enqueue(&user.id, moving, &done_rx);
        if !items.is_empty() {
            let command = MarkReceived {
                reader: user.id.clone(),
                items,
                queued: Arc::clone(&self.queued_marks),
            };
            // Answered on the writer thread, so others' marks waiting on this one are
            // answered even if this request's own future is dropped.
            let then = move |answer| {
                done.send_replace(Some(answer));
            };
            self.writer.submit_then(command, then).await;
            unsent.sent();
            waits.push(done_rx);
        }
        if !acked {
            // Nobody hears a success, so nothing waits for it; what was refused is known.
            return Handled::Done(Ok(marked(rejected)));
        }
        Handled::Pending(Box::pin(async move {
            for mut wait in waits {
                let answered = wait
                    .wait_for(Option::is_some)
                    .await
                    // The writer is gone, or the request that queued the mark went away
                    // before handing it over.
                    .map_err(|_| ChatError::internal("the mark was not written; send it again"))?;
                if let Some(Err(e)) = &*answered {
                    return Err(e.clone());
                }
            }
            Ok(marked(rejected))
        }))
    }
}

/// The reply to a `message:received` whose marks are written, or need no write.
fn marked(rejected: Vec<(usize, ChatError)>) -> Success {
    let (rejections, error_without_ack) = rejections(rejected);
    Success {
        body: json!({ "ok": true, "rejected": rejections }),
        reply_event: None,
        error_without_ack,
    }
}

fn check_item(user: &SessionUser, item: Map<String, Value>) -> Result<Mark, ChatError> {
    let item: ReceivedItem = serde_json::from_value(Value::Object(item))
        .map_err(|e| ChatError::bad_request(format!("invalid message:received item: {e}")))?;
    if item.message_id == 0 {
        return Err(ChatError::bad_request("messageId must be at least 1"));
    }
    if let Some(claimed) = &item.user_id {
        check_sender(user, claimed)?;
    }
    let room = room_for(&user.id, &item.room_id)?;
    Ok(Mark {
        room,
        room_id: item.room_id,
        message_id: item.message_id,
    })
}

/// One item of a `message:received`, checked for shape, reader and room.
pub struct Mark {
    pub room: RoomKey,
    pub room_id: String,
    pub message_id: u64,
}

/// What is answered to everyone waiting on a queued mark, once its round is durable.
type Done = watch::Receiver<Option<Result<(), ChatError>>>;

/// A mark as the handler submits it: what it names, and its entry in [`QueuedMarks`].
type QueuedItem = (Mark, Arc<QueuedMark>);

/// A mark in the writer's queue; later marks of the same reader and room raise it.
pub struct QueuedMark {
    up_to: AtomicU64,
    done: Done,
}

/// The marks waiting in the writer's queue, at most one per (reader, room).
///
/// Under load a mark waits in the queue for many rounds while its reader's next messages
/// arrive and are marked in turn: each of those raises the waiting mark instead of
/// queueing a write of its own, and is answered when that one is durable. So a reader
/// marking every message costs about one write per queue wait, not one per message.
/// Bounded by the queue: an entry lives from its request's submit to the round that
/// applies it, so there are at most (`storage.max_batch` × 4 queued commands + one
/// submitting request per connection) × `MAX_READ_ITEMS` entries.
#[derive(Default)]
pub struct QueuedMarks {
    marks: Mutex<HashMap<(String, RoomKey), Arc<QueuedMark>>>,
}

impl QueuedMarks {
    /// Raises each waiting mark of `reader` that `marks` names a room of, and queues the
    /// others, answered through `done`. Returns the queued ones, which the caller must
    /// submit (they are taken back when the guard is dropped unsent), and what to wait for
    /// of the raised ones.
    fn enqueue(
        &self,
        reader: &str,
        marks: Vec<Mark>,
        done: &Done,
    ) -> (Vec<QueuedItem>, Unsent<'_>, Vec<Done>) {
        let mut items = Vec::new();
        let mut unsent = Unsent {
            queue: self,
            reader: reader.to_owned(),
            entries: Vec::new(),
        };
        let mut waits = Vec::new();
        let mut queued = self.marks.lock().expect("not poisoned");
        for mark in marks {
            let key = (reader.to_owned(), mark.room.clone());
            match queued.get(&key) {
                Some(waiting) => {
                    waiting.up_to.fetch_max(mark.message_id, Ordering::Relaxed);
                    waits.push(waiting.done.clone());
                }
                None => {
                    let entry = Arc::new(QueuedMark {
                        up_to: AtomicU64::new(mark.message_id),
                        done: done.clone(),
                    });
                    queued.insert(key, Arc::clone(&entry));
                    unsent.entries.push((mark.room.clone(), Arc::clone(&entry)));
                    items.push((mark, entry));
                }
            }
        }
        (items, unsent, waits)
    }

    /// Takes `entry` out of the queue (if it is still there) and returns how far it goes:
    /// from here on a mark of that reader and room queues anew.
    fn take(&self, reader: &str, room: &RoomKey, entry: &Arc<QueuedMark>) -> u64 {
        let mut queued = self.marks.lock().expect("not poisoned");
        let key = (reader.to_owned(), room.clone());
        if queued.get(&key).is_some_and(|q| Arc::ptr_eq(q, entry)) {
            queued.remove(&key);
        }
        entry.up_to.load(Ordering::Relaxed)
    }
}

/// Marks queued in [`QueuedMarks`] but not yet submitted: taken back out if the request
/// goes away first, so that nobody waits on a mark that will never be written.
struct Unsent<'a> {
    queue: &'a QueuedMarks,
    reader: String,
    entries: Vec<(RoomKey, Arc<QueuedMark>)>,
}

impl Unsent<'_> {
    /// The writer has them now.
    fn sent(mut self) {
        self.entries.clear();
    }
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        for (room, entry) in &self.entries {
            self.queue.take(&self.reader, room, entry);
        }
    }
}

/// A `message:received` to apply: the reader's queued marks, each as far as later marks
/// raised it while it waited. The marks themselves wait in the round's [`RoundMarks`].
pub struct MarkReceived {
    pub reader: String,
    pub items: Vec<QueuedItem>,
    pub queued: Arc<QueuedMarks>,
}

impl Command for MarkReceived {
    type Output = ();

    fn rooms<'a>(&'a self, out: &mut Vec<RoomLock<'a>>) {
        out.extend(self.items.iter().map(|(mark, _)| RoomLock {
            room: &mark.room,
            create: false,
        }));
    }

    fn apply(self, _: &mut dyn WriteTxn, cx: &mut Context<'_>) -> Result<(), ChatError> {
        let marks = cx.round_end::<RoundMarks>();
        for (mark, entry) in self.items {
            let up_to = self.queued.take(&self.reader, &mark.room, &entry);
            marks.add(&self.reader, mark.room, mark.room_id, up_to);
        }
        Ok(())
    }
}

/// The `message:received` marks of one round: the highest per (reader, room), applied
/// once before the commit in the order first marked, with one `message:delivered` per
/// sender for the round. Bounded by the round: at most `storage.max_batch` commands of at
/// most `MAX_READ_ITEMS` items each.
#[derive(Default)]
pub struct RoundMarks {
    /// (reader, room, the room id as the reader wrote it, the highest mark).
    marks: Vec<(String, RoomKey, String, u64)>,
    /// Where each (reader, room) is in `marks`.
    index: HashMap<(String, RoomKey), usize>,
}

impl RoundMarks {
    fn add(&mut self, reader: &str, room: RoomKey, room_id: String, up_to: u64) {
        match self.index.get(&(reader.to_owned(), room.clone())) {
            Some(&at) => self.marks[at].3 = self.marks[at].3.max(up_to),
            None => {
                self.index
                    .insert((reader.to_owned(), room.clone()), self.marks.len());
                self.marks.push((reader.to_owned(), room, room_id, up_to));
            }
        }
    }
}

impl RoundEnd for RoundMarks {
    fn finish(self: Box<Self>, txn: &mut dyn WriteTxn, cx: &mut Context<'_>) -> store::Result<()> {
        let now = now_millis();
        let mut delivered = Delivered::default();
        for (reader, room, room_id, up_to) in self.marks {
            delivered.mark(txn, cx, &reader, &room, &room_id, up_to, now)?;
        }
        delivered.publish(cx);
        Ok(())
    }
}

/// The `message:delivered` receipts of a round's marks or of one read, one event per
/// sender.
#[derive(Default)]
pub(super) struct Delivered {
    by_sender: BTreeMap<String, (Vec<DeliveredReceipt>, RoomChanges)>,
}

impl Delivered {
    /// Moves `reader`'s mark in `room` to `up_to`, refreshing the cached copies of the
    /// messages it delivered and collecting their receipts.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn mark(
        &mut self,
        txn: &mut dyn WriteTxn,
        cx: &mut Context<'_>,
        reader: &str,
        room: &RoomKey,
        room_id: &str,
        up_to: u64,
        now: i64,
    ) -> store::Result<ReceivedOutcome> {
        let outcome = txn.mark_received(room, reader, up_to, now)?;
        if matches!(
            outcome,
            ReceivedOutcome::Moved(_) | ReceivedOutcome::Unchanged
        ) {
            cx.hint_delivered(room, reader, up_to);
        }
        if let ReceivedOutcome::Moved(messages) = &outcome {
            for message in messages {
                cx.cache().update(room, message);
                let (receipts, changes) =
                    self.by_sender.entry(message.user_id.clone()).or_default();
                changes.add(room, message.change);
                receipts.push(DeliveredReceipt {
                    user_id: reader.to_owned(),
                    room_id: room_id.to_owned(),
                    message_id: message.id,
                    delivered_at: format_millis(message.delivered_ms.unwrap_or(now)),
                });
            }
        }
        Ok(outcome)
    }

    pub(super) fn publish(self, cx: &mut Context<'_>) {
        for (sender, (receipts, changes)) in self.by_sender {
            cx.publish_changes(
                vec![sender],
                ServerEvent::MessageDelivered(receipts),
                changes,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    //! Marks that meet in one round, against the real store and writer: a command that
    //! waits for the test holds a round open while the marks queue up behind it, so they
    //! land together in the next round.

    use std::sync::{mpsc as std_mpsc, Arc, Mutex};
    use std::time::Duration;

    use serde_json::Value;
    use tokio::sync::oneshot;

    use super::*;
    use crate::fanout::{Broker, Outbound};
    use crate::protocol::ErrorCode;
    use crate::store::redb::RedbStore;
    use crate::store::ReadStore;
    use crate::webhook::Hooks;
    use crate::writer::{outcome, Writer, WriterConfig, WriterThread};

    /// Every event published: (user, event name, data).
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, &'static str, Value)>>);

    impl Broker for Recorder {
        fn publish(&self, user: &str, event: &Arc<Outbound>) {
            let data = serde_json::from_str(event.data()).unwrap();
            self.0
                .lock()
                .unwrap()
                .push((user.to_owned(), event.name, data));
        }

        fn is_online(&self, _: &str) -> bool {
            true
        }

        // No connections to close: these tests only record what is published.
        fn disconnect_user(&self, _: &str) -> usize {
            0
        }
    }

    /// Stores `count` messages from `sender` in `room`.
    struct Store {
        room: RoomKey,
        sender: &'static str,
        count: i64,
    }

    impl Command for Store {
        type Output = ();

        fn apply(self, txn: &mut dyn WriteTxn, _: &mut Context<'_>) -> Result<(), ChatError> {
            for at in 0..self.count {
                txn.append(&self.room, self.sender, "hi", None, 1_000 + at)
                    .map_err(ChatError::internal)?;
            }
            Ok(())
        }
    }

    /// Says when its round has started, then holds it open until the test lets it go.
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

    fn mark(message_id: u64) -> Mark {
        Mark {
            room: RoomKey::new("alice", "bob"),
            room_id: "alice-bob".into(),
            message_id,
        }
    }

    /// A command of `reader`'s marks as the handler submits them, each queued on its own.
    fn marks(reader: &str, ids: &[u64]) -> MarkReceived {
        let (_, done) = watch::channel(None);
        let items = ids
            .iter()
            .map(|&id| {
                let entry = Arc::new(QueuedMark {
                    up_to: AtomicU64::new(id),
                    done: done.clone(),
                });
                (mark(id), entry)
            })
            .collect();
        MarkReceived {
            reader: reader.into(),
            items,
            queued: Arc::default(),
        }
    }

    /// Submits a command and holds its round open until the returned sender is used.
    async fn hold(
        writer: &Writer,
    ) -> (
        std_mpsc::Sender<()>,
        oneshot::Receiver<Result<(), ChatError>>,
    ) {
        let (release, held) = std_mpsc::channel();
        let (started, holding) = oneshot::channel();
        let hold = writer
            .submit(Hold {
                started,
                release: held,
            })
            .await;
        holding.await.unwrap();
        (release, hold)
    }

    fn start(dir: &tempfile::TempDir) -> (WriterThread, Arc<RedbStore>, Arc<Recorder>) {
        let store = Arc::new(RedbStore::open(dir.path()).unwrap());
        let recorder = Arc::new(Recorder::default());
        let config = WriterConfig {
            recent_cache_bytes: 1 << 20,
            max_batch: 64,
            mark_hint_rooms: 1024,
        };
        let thread = Writer::spawn(
            store.clone(),
            recorder.clone(),
            Arc::new(Hooks::none()),
            config,
        );
        (thread, store, recorder)
    }

    /// The ids and `deliveredAt`s of each `message:delivered` sent to `user`.
    fn delivered_to(recorder: &Recorder, user: &str) -> Vec<Vec<(u64, String)>> {
        let events = recorder.0.lock().unwrap();
        events
            .iter()
            .filter(|(to, name, _)| to == user && *name == "message:delivered")
            .map(|(_, _, data)| {
                let receipts = data.as_array().unwrap();
                receipts
                    .iter()
                    .map(|r| {
                        assert_eq!(
                            (&r["userId"], &r["roomId"]),
                            (&"bob".into(), &"alice-bob".into())
                        );
                        let at = r["deliveredAt"].as_str().unwrap().to_owned();
                        (r["messageId"].as_u64().unwrap(), at)
                    })
                    .collect()
            })
            .collect()
    }

    #[tokio::test]
    async fn the_marks_of_one_round_move_once_to_the_highest_and_tell_the_sender_once() {
        let dir = tempfile::tempdir().unwrap();
        let (thread, store, recorder) = start(&dir);
        let writer = thread.writer();
        let room = RoomKey::new("alice", "bob");
        let stored = Store {
            room: room.clone(),
            sender: "alice",
            count: 5,
        };
        outcome(writer.submit(stored).await).await.unwrap();

        let (release, hold) = hold(&writer).await;
        let round = [
            writer.submit(marks("bob", &[3])).await,
            writer.submit(marks("bob", &[2])).await,
            writer.submit(marks("bob", &[4, 1])).await,
            // Alice's own messages need no mark: hers moves, and tells no one.
            writer.submit(marks("alice", &[5])).await,
        ];
        release.send(()).unwrap();
        outcome(hold).await.unwrap();
        for answer in round {
            outcome(answer).await.unwrap();
        }

        // One event for the round, each message once, up to the highest mark.
        let events = delivered_to(&recorder, "alice");
        assert_eq!(events.len(), 1, "{events:?}");
        let ids: Vec<u64> = events[0].iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        assert!(events[0].iter().all(|(_, at)| *at == events[0][0].1));
        assert!(delivered_to(&recorder, "bob").is_empty());
        // The moved marks are hinted for the handler, each member's own.
        let hints = writer.mark_hints();
        assert_eq!(hints.get(&room, "bob").map(|h| h.mark), Some(4));
        assert_eq!(hints.get(&room, "alice").map(|h| h.mark), Some(5));

        // At or below the mark again: nothing written, nobody told.
        outcome(writer.submit(marks("bob", &[4, 2])).await)
            .await
            .unwrap();
        assert_eq!(delivered_to(&recorder, "alice").len(), 1);
        thread.shutdown().await;

        let page = store.messages_page(&room, "alice", None, 10).await.unwrap();
        let delivered: Vec<(u64, bool)> = page
            .messages
            .iter()
            .map(|m| (m.id, m.delivered_ms.is_some()))
            .collect();
        assert_eq!(
            delivered,
            [(5, false), (4, true), (3, true), (2, true), (1, true)]
        );
    }

    /// While a round is held open, an ack-less mark is answered at once and one with an
    /// ack waits; both are written in the next round and reach the sender once durable.
    #[tokio::test]
    async fn an_ack_less_mark_is_answered_at_once_and_written_all_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let (thread, store, recorder) = start(&dir);
        let writer = thread.writer();
        let room = RoomKey::new("alice", "bob");
        let stored = Store {
            room: room.clone(),
            sender: "alice",
            count: 3,
        };
        outcome(writer.submit(stored).await).await.unwrap();
        let hub = crate::fanout::hub::Hub::new(usize::MAX, 0);
        let limits = super::super::ChatLimits::from(&crate::config::Config::default());
        let chat = Chat::new(
            store.clone(),
            writer.clone(),
            recorder.clone(),
            hub,
            limits,
            b"s",
        );
        let bob = SessionUser::unnamed("bob");
        let item = |id: u64| format!(r#"[{{"roomId":"alice-bob","messageId":{id}}}]"#);

        let (release, hold) = hold(&writer).await;
        let Handled::Done(Ok(reply)) = chat.mark_received(&bob, &item(2), false).await else {
            panic!("an ack-less mark must be answered without waiting for the commit");
        };
        assert_eq!(
            reply.body,
            serde_json::json!({ "ok": true, "rejected": [] })
        );
        assert!(reply.error_without_ack.is_none());
        // Refusals are known up front and still reported.
        let Handled::Done(Ok(refused)) = chat.mark_received(&bob, &item(9), false).await else {
            panic!("a refused ack-less mark is answered at once");
        };
        assert_eq!(refused.error_without_ack.unwrap().code, ErrorCode::NotFound);
        let Handled::Pending(mut acked) = chat.mark_received(&bob, &item(3), true).await else {
            panic!("a mark with an ack waits for its commit");
        };
        let waited = tokio::time::timeout(Duration::from_millis(100), &mut acked).await;
        assert!(waited.is_err(), "answered before the round committed");
        assert!(delivered_to(&recorder, "alice").is_empty());

        release.send(()).unwrap();
        outcome(hold).await.unwrap();
        acked.await.unwrap();
        let events = delivered_to(&recorder, "alice");
        let ids: Vec<u64> = events.iter().flatten().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 2, 3]);
        drop(chat);
        thread.shutdown().await;
        let page = store.messages_page(&room, "alice", None, 10).await.unwrap();
        assert!(page.messages.iter().all(|m| m.delivered_ms.is_some()));
    }

    #[tokio::test]
    async fn a_mark_waiting_in_the_queue_is_raised_by_later_ones_and_answers_them() {
        let dir = tempfile::tempdir().unwrap();
        let (thread, _store, recorder) = start(&dir);
        let writer = thread.writer();
        let room = RoomKey::new("alice", "bob");
        let stored = Store {
            room: room.clone(),
            sender: "alice",
            count: 6,
        };
        outcome(writer.submit(stored).await).await.unwrap();
        let queue = Arc::new(QueuedMarks::default());

        let (release, hold) = hold(&writer).await;
        let (done, first_done) = watch::channel(None);
        let (items, unsent, waits) = queue.enqueue("bob", vec![mark(2)], &first_done);
        assert_eq!((items.len(), waits.len()), (1, 0));
        let command = MarkReceived {
            reader: "bob".into(),
            items,
            queued: Arc::clone(&queue),
        };
        let first = writer.submit(command).await;
        unsent.sent();
        // While it waits, later marks of bob in that room raise it instead of queueing.
        for id in [4, 3] {
            let (_, own) = watch::channel(None);
            let (items, unsent, waits) = queue.enqueue("bob", vec![mark(id)], &own);
            assert!(items.is_empty());
            drop(unsent);
            assert_eq!(waits.len(), 1);
            assert!(waits[0].same_channel(&first_done));
        }
        release.send(()).unwrap();
        outcome(hold).await.unwrap();
        done.send(Some(outcome(first).await)).unwrap();

        let events = delivered_to(&recorder, "alice");
        let ids: Vec<Vec<u64>> = events
            .iter()
            .map(|e| e.iter().map(|(id, _)| *id).collect())
            .collect();
        assert_eq!(ids, [vec![1, 2, 3, 4]]);
        // Applied, it left the queue: the next mark queues anew.
        let (_, next) = watch::channel(None);
        let (items, unsent, waits) = queue.enqueue("bob", vec![mark(6)], &next);
        assert_eq!((items.len(), waits.len()), (1, 0));
        // A request that goes away before submitting takes its marks back out.
        drop(unsent);
        let (_, after) = watch::channel(None);
        let (items, _unsent, _) = queue.enqueue("bob", vec![mark(5)], &after);
        assert_eq!(items.len(), 1);
        thread.shutdown().await;
    }
}
