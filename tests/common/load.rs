//! A concurrent send load and the audit of what it left in the store, for the durability
//! tests (`kill -9` crash trials and SIGTERM under load).
//!
//! Several users each pipeline `message` frames over their own real WebSocket, every frame
//! with a unique `clientMessageId` and an `ack`. Each room has two senders, so commits of
//! one room interleave. The load runs until the server goes away (or a per-user cap), and
//! returns what was written to the socket and what was acknowledged. The audit pages every
//! room's history back with `before` and checks the guarantees of PROTOCOL.md section 7.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use super::{Client, Server};

/// Settings that lift the rate limits: the load measures durability, not throttling.
pub const UNTHROTTLED: &[(&str, &str)] = &[
    ("CHAT_LIMITS_SEND_RATE_PER_SEC", "1000000"),
    ("CHAT_LIMITS_SEND_BURST", "1000000"),
    ("CHAT_LIMITS_REQUEST_RATE_PER_SEC", "1000000"),
    ("CHAT_LIMITS_REQUEST_BURST", "1000000"),
];

/// One message written to a socket (it may or may not have reached the server).
#[derive(Debug, Clone)]
pub struct Sent {
    pub user: String,
    pub room: String,
    pub client_message_id: String,
    pub text: String,
}

/// What a load did: every message sent, and the acknowledged ones by `clientMessageId`
/// (the `ChatMessage` as the ack reply or the sender's own `message:sent` carried it).
#[derive(Debug, Default)]
pub struct LoadOutcome {
    pub sent: Vec<Sent>,
    pub acked: HashMap<String, Value>,
}

impl LoadOutcome {
    /// Messages sent whose acknowledgement never reached the sender.
    pub fn unacked(&self) -> Vec<Sent> {
        self.sent
            .iter()
            .filter(|s| !self.acked.contains_key(&s.client_message_id))
            .cloned()
            .collect()
    }
}

/// `user0`, `user1`, …
pub fn users(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("user{i}")).collect()
}

/// The two rooms user `i` writes to: with the next user and the one after (a ring), so
/// every room has two senders.
pub fn rooms_of(users: &[String], i: usize) -> [String; 2] {
    let n = users.len();
    [1, 2].map(|step| {
        chat_server::protocol::room::canonical_room_id(&users[i], &users[(i + step) % n])
    })
}

/// Every room the load writes to, with one participant who may read it.
pub fn all_rooms(users: &[String]) -> BTreeMap<String, String> {
    (0..users.len())
        .flat_map(|i| rooms_of(users, i).map(|room| (room, users[i].clone())))
        .collect()
}

/// A running load: one task per user.
pub struct Load {
    tasks: Vec<tokio::task::JoinHandle<LoadOutcome>>,
}

impl Load {
    /// Connects every user and starts pipelining up to `window` unacknowledged messages
    /// each, at most `cap` per user. `tag` makes the `clientMessageId`s unique across loads.
    pub async fn start(
        server: &Server,
        users: &[String],
        tag: &str,
        window: usize,
        cap: usize,
    ) -> Load {
        let mut tasks = Vec::new();
        for (i, user) in users.iter().enumerate() {
            let client = server.connect(user).await;
            let rooms = rooms_of(users, i);
            let tag = format!("{tag}-{user}");
            tasks.push(tokio::spawn(user_load(client, rooms, tag, window, cap)));
        }
        Load { tasks }
    }

    /// Waits for every user's load to end (the server went away, or the cap was reached
    /// and everything acknowledged).
    pub async fn finish(self) -> LoadOutcome {
        let mut outcome = LoadOutcome::default();
        for task in self.tasks {
            let one = task.await.expect("load task");
            outcome.sent.extend(one.sent);
            outcome.acked.extend(one.acked);
        }
        outcome
    }
}

async fn user_load(
    client: Client,
    rooms: [String; 2],
    tag: String,
    window: usize,
    cap: usize,
) -> LoadOutcome {
    let user = client.user.clone();
    let (mut sink, mut stream) = client.ws.split();
    let permits = Semaphore::new(window);
    let sent_count = AtomicUsize::new(0);
    let sender_done = AtomicBool::new(false);

    let sender = async {
        let mut sent = Vec::new();
        for seq in 0..cap {
            match permits.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => break, // the reader saw the connection end
            }
            let message = Sent {
                user: user.clone(),
                room: rooms[seq % 2].clone(),
                client_message_id: format!("{tag}-{seq}"),
                text: format!("{tag} message {seq} ✓"),
            };
            let frame = json!({
                "event": "message",
                "ack": seq,
                "data": {
                    "userId": message.user, "roomId": message.room,
                    "message": message.text, "clientMessageId": message.client_message_id,
                },
            });
            // Recorded before the write: a message may reach the server even when the
            // write reports an error.
            sent.push(message);
            sent_count.fetch_add(1, Ordering::SeqCst);
            if sink.send(Message::text(frame.to_string())).await.is_err() {
                break;
            }
        }
        sender_done.store(true, Ordering::SeqCst);
        sent
    };

    let reader = async {
        let mut acked = HashMap::new();
        let mut replies = 0;
        loop {
            if sender_done.load(Ordering::SeqCst) && replies == sent_count.load(Ordering::SeqCst) {
                break;
            }
            let frame = match tokio::time::timeout(Duration::from_millis(100), stream.next()).await
            {
                Err(_) => continue,
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => break,
                Ok(Some(Ok(_))) => continue,
            };
            let frame: Value = serde_json::from_str(&frame).expect("JSON frame");
            let message = match frame["event"].as_str() {
                Some("ack") => {
                    assert_eq!(frame["data"]["ok"], true, "{user}: send refused: {frame}");
                    replies += 1;
                    permits.add_permits(1);
                    frame["data"]["message"].clone()
                }
                Some("message:sent") if frame["data"]["user"]["id"] == user.as_str() => {
                    frame["data"]["messages"][0].clone()
                }
                _ => continue,
            };
            let id = message["clientMessageId"]
                .as_str()
                .expect("clientMessageId")
                .to_owned();
            if let Some(earlier) = acked.insert(id, message.clone()) {
                assert_eq!(earlier, message, "{user}: ack and message:sent disagree");
            }
        }
        // Wakes a sender waiting for a permit, so it sees the end.
        permits.close();
        acked
    };

    let (sent, acked) = tokio::join!(sender, reader);
    LoadOutcome { sent, acked }
}

/// What the store holds, room by room, and every breach of the guarantees found.
#[derive(Debug, Default)]
pub struct Audit {
    /// Stored messages by `clientMessageId`, with their room.
    pub stored: HashMap<String, (String, Value)>,
    /// Human-readable breaches; empty when the store is sound.
    pub problems: Vec<String>,
}

/// Pages every room back and checks: ids are 1..=n per room, no `clientMessageId` is
/// stored twice, and every message in `acked` is stored with the same id and content.
pub async fn audit(server: &Server, users: &[String], acked: &HashMap<String, Value>) -> Audit {
    let mut audit = Audit::default();
    let mut readers: HashMap<String, Client> = HashMap::new();
    for (room, reader) in all_rooms(users) {
        if !readers.contains_key(&reader) {
            readers.insert(reader.clone(), server.connect(&reader).await);
        }
        let mut history = history(readers.get_mut(&reader).unwrap(), &room).await;
        history.reverse();
        let ids: Vec<u64> = history.iter().map(|m| m["id"].as_u64().unwrap()).collect();
        if ids != (1..=ids.len() as u64).collect::<Vec<_>>() {
            audit.problems.push(format!(
                "room {room}: ids are not 1..={}: {ids:?}",
                ids.len()
            ));
        }
        for message in history {
            let id = message["clientMessageId"]
                .as_str()
                .expect("clientMessageId")
                .to_owned();
            if let Some((_, first)) = audit
                .stored
                .insert(id.clone(), (room.clone(), message.clone()))
            {
                audit
                    .problems
                    .push(format!("{id} stored twice: {first} and {message}"));
            }
        }
    }
    for (id, message) in acked {
        match audit.stored.get(id) {
            None => audit
                .problems
                .push(format!("acknowledged {id} is lost: {message}")),
            Some((_, stored)) if stored != message => audit.problems.push(format!(
                "acknowledged {id} changed: {message} became {stored}"
            )),
            Some(_) => {}
        }
    }
    audit
}

/// Every message of a room, newest first (the order `messages` pages in), paged back with
/// `before` until an empty page.
pub async fn history(client: &mut Client, room: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut before = Value::Null;
    loop {
        let reply = client
            .request(
                "messages",
                json!({ "roomId": room, "before": before, "limit": 50 }),
            )
            .await;
        assert_eq!(reply["ok"], true, "messages {room}: {reply}");
        let page = reply["room"]["messages"].as_array().unwrap().clone();
        match page.last() {
            None => break,
            Some(oldest) => before = oldest["id"].clone(),
        }
        all.extend(page);
    }
    all
}

/// Resends `messages` with their original `clientMessageId`s, one at a time, and returns
/// the acknowledged messages. Checks each reply against what was sent, and against what
/// `stored` already held for that id (a retry must return the stored message).
pub async fn resend(
    server: &Server,
    messages: &[Sent],
    stored: &HashMap<String, (String, Value)>,
) -> (HashMap<String, Value>, Vec<String>) {
    let mut acked = HashMap::new();
    let mut problems = Vec::new();
    let mut senders: HashMap<String, Client> = HashMap::new();
    for sent in messages {
        if !senders.contains_key(&sent.user) {
            senders.insert(sent.user.clone(), server.connect(&sent.user).await);
        }
        let client = senders.get_mut(&sent.user).unwrap();
        let reply = client
            .request(
                "message",
                json!({ "userId": sent.user, "roomId": sent.room, "message": sent.text,
                        "clientMessageId": sent.client_message_id }),
            )
            .await;
        let message = &reply["message"];
        if reply["ok"] != true
            || message["clientMessageId"] != sent.client_message_id.as_str()
            || message["message"] != sent.text.as_str()
            || message["userId"] != sent.user.as_str()
        {
            problems.push(format!("resend of {} got {reply}", sent.client_message_id));
            continue;
        }
        if let Some((_, before)) = stored.get(&sent.client_message_id) {
            if before != message {
                problems.push(format!(
                    "resend of stored {} returned {message}, stored was {before}",
                    sent.client_message_id
                ));
            }
        }
        acked.insert(sent.client_message_id.clone(), message.clone());
    }
    (acked, problems)
}

/// Ids sent by a load that the store holds although their ack never arrived.
pub fn stored_unacked(outcome: &LoadOutcome, audit: &Audit) -> usize {
    let unacked: HashSet<_> = outcome
        .unacked()
        .into_iter()
        .map(|s| s.client_message_id)
        .collect();
    unacked
        .iter()
        .filter(|id| audit.stored.contains_key(*id))
        .count()
}
