//! `message:received`: delivered marks. A client says it has every message of a room up
//! to an id; that per-(user, room) high-water mark only moves forward, and each partner
//! message it newly covers gets `deliveredAt` and is reported to its sender in
//! `message:delivered`. Same shape and rules as `message:read`: an array of items, each
//! checked on its own, rejected items listed in the reply. A read implies received
//! (`read.rs` moves the mark through [`Delivered`] too, at once, so that the sender hears
//! of delivery before the `message:seen`).
//!
//! A client showing delivered ticks marks every message it gets, so marks come about as
//! often as messages, often several of one room in a round. Each `message:received` is
//! therefore only checked when applied; the marks wait in the round's [`RoundMarks`],
//! which moves each (reader, room) mark once, to the highest of the round, and sends each
//! sender one `message:delivered` for the whole round.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value};

use super::read::rejections;
use super::{check_sender, room_for, Chat, Handled, Success};
use crate::model::{RoomKey, SessionUser};
use crate::protocol::event::{self, ClientEvent, ReceivedItem, MAX_READ_ITEMS};
use crate::protocol::server_event::{DeliveredReceipt, ServerEvent};
use crate::protocol::time::{format_millis, now_millis};
use crate::protocol::ChatError;
use crate::ratelimit::Bucket;
use crate::store::{self, ReceivedOutcome, WriteTxn};
use crate::writer::{outcome, Command, Context, RoundEnd};

impl Chat {
    pub(super) async fn mark_received(&self, user: &SessionUser, data: &str) -> Handled {
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
        let mut valid = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            match check_item(user, item) {
                Ok((room, room_id, message_id)) => valid.push(Mark {
                    index,
                    room,
                    room_id,
                    message_id,
                }),
                Err(e) => rejected.push((index, e)),
            }
        }
        let rx = if valid.is_empty() {
            None
        } else {
            let command = MarkReceived {
                reader: user.id.clone(),
                items: valid,
            };
            Some(self.writer.submit(command).await)
        };
        Handled::Pending(Box::pin(async move {
            if let Some(rx) = rx {
                for index in outcome(rx).await? {
                    let e = ChatError::not_found("no message with that id in this room");
                    rejected.push((index, e));
                }
            }
            let (rejections, error_without_ack) = rejections(rejected);
            Ok(Success {
                body: json!({ "ok": true, "rejected": rejections }),
                reply_event: None,
                error_without_ack,
            })
        }))
    }
}

fn check_item(
    user: &SessionUser,
    item: Map<String, Value>,
) -> Result<(RoomKey, String, u64), ChatError> {
    let item: ReceivedItem = serde_json::from_value(Value::Object(item))
        .map_err(|e| ChatError::bad_request(format!("invalid message:received item: {e}")))?;
    if item.message_id == 0 {
        return Err(ChatError::bad_request("messageId must be at least 1"));
    }
    if let Some(claimed) = &item.user_id {
        check_sender(user, claimed)?;
    }
    let room = room_for(&user.id, &item.room_id)?;
    Ok((room, item.room_id, item.message_id))
}

/// One item of a `message:received`, checked for shape, reader and room.
pub struct Mark {
    /// Position in the request array, for the `rejected` list.
    pub index: usize,
    pub room: RoomKey,
    pub room_id: String,
    pub message_id: u64,
}

/// A `message:received` to apply. Answers the indexes of the items naming no message.
///
/// Each item is only checked here (a read of the room record): the marks themselves
/// wait in the round's [`RoundMarks`], so that a round holding several marks of one
/// reader in one room moves the mark once, to the highest, and tells each sender once.
pub struct MarkReceived {
    pub reader: String,
    pub items: Vec<Mark>,
}

impl Command for MarkReceived {
    type Output = Vec<usize>;

    fn apply(
        self,
        txn: &mut dyn WriteTxn,
        cx: &mut Context<'_>,
    ) -> Result<Self::Output, ChatError> {
        let mut not_found = Vec::new();
        let mut moving = Vec::with_capacity(self.items.len());
        for item in self.items {
            match txn
                .delivered_mark(&item.room, &self.reader)
                .map_err(ChatError::internal)?
            {
                Some(state) if item.message_id <= state.last_id => {
                    // At or below the mark: nothing to write, and not refused.
                    if item.message_id > state.mark {
                        moving.push(item);
                    }
                }
                _ => not_found.push(item.index),
            }
        }
        // Only now, with every check done: a command that failed must leave nothing here.
        let marks = cx.round_end::<RoundMarks>();
        for item in moving {
            marks.add(&self.reader, item.room, item.room_id, item.message_id);
        }
        Ok(not_found)
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
    by_sender: BTreeMap<String, Vec<DeliveredReceipt>>,
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
        if let ReceivedOutcome::Moved(messages) = &outcome {
            for message in messages {
                cx.cache().update(room, message);
                self.by_sender
                    .entry(message.user_id.clone())
                    .or_default()
                    .push(DeliveredReceipt {
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
        for (sender, receipts) in self.by_sender {
            cx.publish(vec![sender], ServerEvent::MessageDelivered(receipts));
        }
    }
}

#[cfg(test)]
mod tests {
    //! Marks that meet in one round, against the real store and writer: a command that
    //! waits for the test holds a round open while the marks queue up behind it, so they
    //! land together in the next round.

    use std::sync::{mpsc as std_mpsc, Arc, Mutex};

    use serde_json::Value;
    use tokio::sync::oneshot;

    use super::*;
    use crate::fanout::{Broker, Outbound};
    use crate::store::redb::RedbStore;
    use crate::store::ReadStore;
    use crate::webhook::Hooks;
    use crate::writer::{Writer, WriterConfig, WriterThread};

    /// Every event published: (user, event name, data).
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, &'static str, Value)>>);

    impl Broker for Recorder {
        fn publish(&self, user: &str, event: &Arc<Outbound>) {
            let data = serde_json::from_str(&event.data).unwrap();
            self.0
                .lock()
                .unwrap()
                .push((user.to_owned(), event.name, data));
        }

        fn is_online(&self, _: &str) -> bool {
            true
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

    fn marks(reader: &str, ids: &[u64]) -> MarkReceived {
        let items = ids
            .iter()
            .enumerate()
            .map(|(index, &message_id)| Mark {
                index,
                room: RoomKey::new("alice", "bob"),
                room_id: "alice-bob".into(),
                message_id,
            })
            .collect();
        MarkReceived {
            reader: reader.into(),
            items,
        }
    }

    fn start(dir: &tempfile::TempDir) -> (WriterThread, Arc<RedbStore>, Arc<Recorder>) {
        let store = Arc::new(RedbStore::open(dir.path()).unwrap());
        let recorder = Arc::new(Recorder::default());
        let config = WriterConfig {
            recent_cache_bytes: 1 << 20,
            max_batch: 64,
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

        let (release, held) = std_mpsc::channel();
        let (started, holding) = oneshot::channel();
        let hold = writer
            .submit(Hold {
                started,
                release: held,
            })
            .await;
        holding.await.unwrap();
        let round = [
            writer.submit(marks("bob", &[3])).await,
            writer.submit(marks("bob", &[2])).await,
            writer.submit(marks("bob", &[4, 9, 1])).await,
            // Alice's own messages need no mark: hers moves, and tells no one.
            writer.submit(marks("alice", &[5])).await,
        ];
        release.send(()).unwrap();
        outcome(hold).await.unwrap();
        let mut not_found = Vec::new();
        for answer in round {
            not_found.push(outcome(answer).await.unwrap());
        }
        assert_eq!(not_found, [vec![], vec![], vec![1], vec![]]);

        // One event for the round, each message once, up to the highest mark.
        let events = delivered_to(&recorder, "alice");
        assert_eq!(events.len(), 1, "{events:?}");
        let ids: Vec<u64> = events[0].iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        assert!(events[0].iter().all(|(_, at)| *at == events[0][0].1));
        assert!(delivered_to(&recorder, "bob").is_empty());

        // At or below the mark again: answered, nothing written, nobody told.
        let again = outcome(writer.submit(marks("bob", &[4, 2])).await).await;
        assert_eq!(again.unwrap(), Vec::<usize>::new());
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
}
