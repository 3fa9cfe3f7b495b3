//! Cluster mode's fan-out over NATS, with real `nats-server`s: nodes composed in this
//! process as `main` composes one (hub, NATS broker, writer, handlers, server), sharing one
//! redb store (its write transactions are serialized), each on its own loopback port, and
//! real WebSocket clients on them.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_server::app::App;
use chat_server::auth::{AdminSecret, Auth};
use chat_server::chat::{Chat, ChatLimits};
use chat_server::config::Config;
use chat_server::fanout::hub::Hub;
use chat_server::fanout::nats::{NatsBroker, NatsOptions};
use chat_server::fanout::Broker;
use chat_server::model::RoomKey;
use chat_server::protocol::time::now_millis;
use chat_server::store::redb::RedbStore;
use chat_server::store::ReadStore;
use chat_server::store::WriteStore;
use chat_server::webhook::Hooks;
use chat_server::writer::{Writer, WriterConfig, WriterThread};
use common::held::{HeldStore, Hold};
use common::nats::{NatsCluster, NatsServer};
use common::{connect_at, Client, Server, SECRET, WAIT};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// One chat-server node in this process.
struct Node {
    addr: SocketAddr,
    /// `None` for a node without NATS, whose events never leave it.
    nats: Option<Arc<NatsBroker>>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    writer: Option<WriterThread>,
}

impl Node {
    /// A node on `store`, fanning out over the NATS server at `nats_url` (or, without one,
    /// only to its own connections).
    async fn start(store: &Arc<RedbStore>, nats_url: Option<&str>, name: &str) -> Node {
        Node::start_reading(store, nats_url, name, store.clone(), 4096).await
    }

    /// The same, its fan-out reading from `reads` rather than `store`, each of its tasks
    /// holding `queue_events` of this node's events.
    async fn start_reading(
        store: &Arc<RedbStore>,
        nats_url: Option<&str>,
        name: &str,
        reads: Arc<dyn ReadStore>,
        queue_events: usize,
    ) -> Node {
        let mut config = Config::default();
        // The load test sends faster than a person.
        config.limits.send_rate_per_sec = 1000.0;
        config.limits.send_burst = 1000;
        let hub = Hub::new(usize::MAX, 0);
        let nats = match nats_url {
            Some(url) => {
                let options = NatsOptions {
                    url: url.to_owned(),
                    node_name: name.to_owned(),
                    queue_events,
                    fanout_tasks: 4,
                    subscription_messages: 1024,
                    tracked_rooms_per_user: 16,
                };
                Some(
                    NatsBroker::connect(options, hub.clone(), reads)
                        .await
                        .expect("connect to nats-server"),
                )
            }
            None => None,
        };
        let broker: Arc<dyn Broker> = match &nats {
            Some(nats) => nats.clone(),
            None => hub.clone(),
        };
        // As in main: with other writers on the store, no latest-50 cache.
        let writer = Writer::spawn(
            store.clone(),
            broker.clone(),
            Arc::new(Hooks::none()),
            WriterConfig {
                recent_cache_bytes: 0,
                max_batch: 64,
                mark_hint_rooms: 0,
            },
        );
        let chat = Chat::new(
            store.clone(),
            writer.writer(),
            broker,
            hub,
            ChatLimits::from(&config),
            SECRET.as_bytes(),
        );
        let app = App::new(
            Arc::new(chat),
            Auth::new(SECRET.as_bytes()),
            config,
            AdminSecret::new(b"admin".to_vec()),
            store.clone(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(chat_server::server::run(listener, app, async move {
            let _ = stopped.await;
        }));
        Node {
            addr,
            nats,
            stop: Some(stop),
            server,
            writer: Some(writer),
        }
    }

    async fn connect(&self, user: &str) -> Client {
        let token = Auth::new(SECRET.as_bytes()).mint(user, None, Duration::from_secs(3600));
        connect_at(self.addr, user, &token).await
    }

    fn nats(&self) -> &NatsBroker {
        self.nats.as_ref().expect("a node on NATS")
    }

    /// Waits until this node's NATS server has the subscriptions of `users` connected here.
    async fn wait_subscribed(&self, users: u64) {
        let deadline = Instant::now() + WAIT;
        while self.nats().stats().subscribed() < users {
            assert!(Instant::now() < deadline, "the node never subscribed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = (&mut self.server).await;
        self.writer.take().unwrap().shutdown().await;
        if let Some(nats) = &self.nats {
            nats.stop();
        }
    }
}

fn shared_store() -> (tempfile::TempDir, Arc<RedbStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(dir.path()).unwrap());
    (dir, store)
}

/// The setup most tests share: a nats-server, one store, nodes `a` and `b` on both, alice
/// connected to `a` and bob to `b`, each node subscribed to its user.
struct Pair {
    nats: NatsServer,
    _dir: tempfile::TempDir,
    store: Arc<RedbStore>,
    a: Node,
    b: Node,
    alice: Client,
    bob: Client,
}

impl Pair {
    async fn start() -> Pair {
        let nats = NatsServer::start();
        let (dir, store) = shared_store();
        let a = Node::start(&store, Some(&nats.url()), "a").await;
        let b = Node::start(&store, Some(&nats.url()), "b").await;
        let alice = a.connect("alice").await;
        let bob = b.connect("bob").await;
        a.wait_subscribed(1).await;
        b.wait_subscribed(1).await;
        Pair {
            nats,
            _dir: dir,
            store,
            a,
            b,
            alice,
            bob,
        }
    }

    /// A node on the same store whose publishes never reach NATS: what it commits is a
    /// lost NATS message for everyone else.
    async fn silent_node(&self) -> Node {
        Node::start(&self.store, None, "silent").await
    }

    async fn stop(self) {
        self.a.stop().await;
        self.b.stop().await;
    }
}

/// The next `message:sent`, skipping receipts and typing notices.
async fn next_sent(client: &mut Client) -> Value {
    loop {
        let frame = client.recv().await;
        if frame["event"] == "message:sent" {
            return frame["data"].clone();
        }
    }
}

/// The ids of a `message:sent`'s snapshot, newest first.
fn snapshot_ids(sent: &Value) -> Vec<u64> {
    common::ids(&sent["messages"])
}

#[tokio::test]
async fn alice_on_one_node_and_bob_on_another_chat() {
    let mut c = Pair::start().await;
    let (alice, bob) = (&mut c.alice, &mut c.bob);

    let ack = alice.send_message("alice-bob", "hi bob").await;
    assert_eq!(ack["ok"], true, "{ack}");
    let sent = next_sent(bob).await;
    assert_eq!(sent["roomId"], "alice-bob");
    assert_eq!(sent["user"]["id"], "alice");
    assert_eq!(sent["messages"][0]["message"], "hi bob");
    assert_eq!(snapshot_ids(&sent), [1]);
    // The sender's own connection gets it from its own node.
    assert_eq!(snapshot_ids(&next_sent(alice).await), [1]);

    bob.send_message("alice-bob", "hi alice").await;
    let sent = next_sent(alice).await;
    assert_eq!(sent["user"]["id"], "bob");
    assert_eq!(snapshot_ids(&sent), [2, 1]);
    assert_eq!(snapshot_ids(&next_sent(bob).await), [2, 1]);

    // Typing and receipts cross too.
    bob.emit("typing", json!({ "roomId": "alice-bob" })).await;
    assert_eq!(alice.recv_event("typing").await["userId"], "bob");
    let read = json!([{ "userId": "bob", "roomId": "alice-bob", "messageId": 1,
                        "seenDate": "2026-01-01T00:00:00Z" }]);
    assert_eq!(bob.request("message:read", read).await["ok"], true);
    loop {
        let frame = alice.recv().await;
        if frame["event"] == "message:seen" {
            assert_eq!(frame["data"][0]["messageId"], 1);
            assert_eq!(frame["data"][0]["userId"], "bob");
            break;
        }
    }
    // Bob's node was told of the changes of his read that only alice got events for:
    // his next change there is no hole.
    assert_eq!(
        alice.send_message("alice-bob", "after the read").await["ok"],
        true
    );
    assert_eq!(snapshot_ids(&next_sent(bob).await)[0], 3);
    // Nothing was lost, so nothing was recovered, dropped twice or read from the store.
    for node in [&c.a, &c.b] {
        let stats = node.nats().stats();
        assert_eq!((stats.recovered(), stats.duplicates()), (0, 0));
        assert_eq!(
            (
                stats.recovered_changes(),
                stats.duplicate_changes(),
                stats.change_gaps()
            ),
            (0, 0, 0)
        );
    }
    c.stop().await;
}

#[tokio::test]
async fn a_user_on_two_nodes_gets_everything_on_both() {
    let c = Pair::start().await;
    let (a, b, mut alice, mut bob_b) = (c.a, c.b, c.alice, c.bob);
    let mut bob_a = a.connect("bob").await;
    a.wait_subscribed(2).await;

    for text in ["one", "two", "three"] {
        alice.send_message("alice-bob", text).await;
    }
    for bob in [&mut bob_a, &mut bob_b] {
        for n in 1..=3u64 {
            let sent = next_sent(bob).await;
            assert_eq!(snapshot_ids(&sent)[0], n, "{sent}");
        }
    }
    // Bob's own message from one node reaches his tab on the other, and alice.
    bob_b.send_message("alice-bob", "from b").await;
    assert_eq!(snapshot_ids(&next_sent(&mut bob_a).await), [4, 3, 2, 1]);
    assert_eq!(snapshot_ids(&next_sent(&mut bob_b).await), [4, 3, 2, 1]);
    for _ in 1..=3 {
        next_sent(&mut alice).await;
    }
    let sent = next_sent(&mut alice).await;
    assert_eq!(
        (sent["user"]["id"].as_str(), snapshot_ids(&sent)[0]),
        (Some("bob"), 4)
    );
    // The block a user sets on one node shows in each of their tabs, on both nodes.
    assert_eq!(
        bob_a.request("block", json!({ "userId": "mallory" })).await["ok"],
        true
    );
    for bob in [&mut bob_a, &mut bob_b] {
        assert_eq!(bob.recv_event("block").await["userId"], "mallory");
        bob.expect_silence(Duration::from_millis(300)).await;
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_lost_nats_message_is_recovered_in_order_without_duplicates() {
    let mut c = Pair::start().await;
    let silent = c.silent_node().await;
    let (alice, bob) = (&mut c.alice, &mut c.bob);
    let mut alice_silent = silent.connect("alice").await;

    alice.send_message("alice-bob", "one").await;
    assert_eq!(snapshot_ids(&next_sent(bob).await), [1]);
    alice_silent.send_message("alice-bob", "two, lost").await;
    assert_eq!(snapshot_ids(&next_sent(&mut alice_silent).await), [2, 1]);
    bob.expect_silence(Duration::from_millis(300)).await;

    alice.send_message("alice-bob", "three").await;
    // Bob gets the lost one first, from the store, then the new one; each once.
    let recovered = next_sent(bob).await;
    assert_eq!(snapshot_ids(&recovered), [2, 1]);
    assert_eq!(recovered["messages"][0]["message"], "two, lost");
    assert_eq!(recovered["user"]["id"], "alice");
    assert_eq!(snapshot_ids(&next_sent(bob).await), [3, 2, 1]);
    bob.expect_silence(Duration::from_millis(300)).await;
    // Alice's tab on node a missed it too (its node never heard of it).
    assert_eq!(snapshot_ids(&next_sent(alice).await), [1]);
    assert_eq!(snapshot_ids(&next_sent(alice).await), [2, 1]);
    assert_eq!(snapshot_ids(&next_sent(alice).await), [3, 2, 1]);
    assert_eq!(c.b.nats().stats().recovered(), 1);
    assert_eq!(c.a.nats().stats().recovered(), 1);
    silent.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn nats_restarted_under_load_loses_no_message_for_anyone() {
    let mut c = Pair::start().await;
    let (a, b, mut alice, mut bob) = (c.a, c.b, c.alice, c.bob);

    const SENDS: u64 = 120;
    let sender = tokio::spawn(async move {
        for n in 1..=SENDS {
            let ack = alice.send_message("alice-bob", &format!("m{n}")).await;
            assert_eq!(ack["ok"], true, "{ack}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        alice
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    c.nats.restart();
    let mut alice = sender.await.unwrap();
    // Every id once, in order, whatever NATS lost while it was down.
    for n in 1..=SENDS {
        assert_eq!(snapshot_ids(&next_sent(&mut bob).await)[0], n);
    }
    bob.expect_silence(Duration::from_millis(500)).await;
    for n in 1..=SENDS {
        assert_eq!(snapshot_ids(&next_sent(&mut alice).await)[0], n);
    }
    // The restart was seen, and repaired.
    assert!(b.nats().stats().resyncs() >= 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_three_server_nats_cluster_carries_events_between_nodes_on_different_servers() {
    let cluster = NatsCluster::start().await;
    let (_dir, store) = shared_store();
    let mut nodes = Vec::new();
    for (i, server) in cluster.servers.iter().enumerate() {
        nodes.push(Node::start(&store, Some(&server.url()), &format!("n{i}")).await);
    }
    let users = ["alice", "bob", "carol"];
    let mut clients = Vec::new();
    for (node, user) in nodes.iter().zip(users) {
        clients.push(node.connect(user).await);
        node.wait_subscribed(1).await;
    }
    // The subscriptions reach the other servers over the routes.
    for user in users {
        cluster
            .wait_interest(&chat_server::fanout::nats::subject(user))
            .await;
    }
    let (alice, rest) = clients.split_first_mut().unwrap();
    let (bob, rest) = rest.split_first_mut().unwrap();
    let carol = &mut rest[0];

    alice.send_message("alice-bob", "to bob").await;
    alice.send_message("alice-carol", "to carol").await;
    bob.send_message("bob-carol", "bob to carol").await;
    let sent = next_sent(bob).await;
    assert_eq!(
        (sent["roomId"].as_str(), sent["user"]["id"].as_str()),
        (Some("alice-bob"), Some("alice"))
    );
    let sent = next_sent(carol).await;
    assert_eq!(
        (sent["roomId"].as_str(), sent["user"]["id"].as_str()),
        (Some("alice-carol"), Some("alice"))
    );
    let sent = next_sent(carol).await;
    assert_eq!(
        (sent["roomId"].as_str(), sent["user"]["id"].as_str()),
        (Some("bob-carol"), Some("bob"))
    );
    assert_eq!(sent["messages"][0]["message"], "bob to carol");
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn the_binary_with_a_nats_url_runs_its_fan_out_through_nats_under_its_default_name() {
    let mut nats = NatsServer::start();
    let server = Server::start_with(&[("CHAT_CLUSTER_NATS_URL", &nats.url())]);
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    alice
        .send_message("alice-bob", "over the fan-out task")
        .await;
    assert_eq!(snapshot_ids(&next_sent(&mut bob).await), [1]);
    assert_eq!(snapshot_ids(&next_sent(&mut alice).await), [1]);
    // Its NATS connection is named after the host and the port it listens on.
    let port = format!(":{}\"", server.addr.port());
    let deadline = Instant::now() + WAIT;
    while !nats.connections().await.contains(&port) {
        assert!(
            Instant::now() < deadline,
            "no NATS connection named *{port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A NATS restart is caught up after, and counted.
    let catch_ups = r#"chat_cluster_repairs_total{kind="catch_up"}"#;
    let samples = common::metrics::scrape(&server).await;
    assert_eq!(common::metrics::value(&samples, catch_ups), 0.0);
    nats.restart();
    let deadline = Instant::now() + WAIT;
    loop {
        let samples = common::metrics::scrape(&server).await;
        if common::metrics::value(&samples, catch_ups) == 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no catch-up counted after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn without_a_reachable_nats_the_binary_refuses_to_start_and_says_why() {
    // A port nothing listens on: bound, then freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let run = |url: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args([
                "--data",
                dir.path().to_str().unwrap(),
                "--bind",
                "127.0.0.1:0",
            ])
            .env("CHAT_JWT_SECRET", SECRET)
            .env_remove("CHAT_CONFIG")
            .env("CHAT_CLUSTER_NATS_URL", url)
            .output()
            .unwrap()
    };
    let out = run(&format!("nats://127.0.0.1:{port}"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect to NATS"), "{stderr}");
    assert!(out.stdout.is_empty(), "it must not have listened");
    // A malformed address is a configuration error, naming the key.
    let out = run("nats://127.0.0.1:notaport");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cluster.nats_url"), "{stderr}");
}

#[tokio::test]
async fn a_nats_message_delivered_twice_reaches_the_user_once() {
    let c = Pair::start().await;
    let (a, b, mut alice, mut bob) = (c.a, c.b, c.alice, c.bob);
    // A bystander on bob's subject keeps what node a published, to replay it.
    let tap = async_nats::connect(c.nats.url()).await.unwrap();
    let bob_subject = chat_server::fanout::nats::subject("bob");
    let mut tapped = tap.subscribe(bob_subject.clone()).await.unwrap();
    tap.flush().await.unwrap();

    alice.send_message("alice-bob", "one").await;
    assert_eq!(snapshot_ids(&next_sent(&mut bob).await), [1]);
    let published = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut tapped))
        .await
        .unwrap()
        .unwrap();
    for _ in 0..2 {
        tap.publish(bob_subject.clone(), published.payload.clone())
            .await
            .unwrap();
    }
    tap.flush().await.unwrap();
    alice.send_message("alice-bob", "two").await;
    assert_eq!(snapshot_ids(&next_sent(&mut bob).await), [2, 1]);
    bob.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(b.nats().stats().duplicates(), 2);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn after_a_nats_outage_a_node_catches_up_what_it_missed_with_no_later_message() {
    let mut c = Pair::start().await;
    let silent = c.silent_node().await;
    let (a, b, mut alice, mut bob) = (c.a, c.b, c.alice, c.bob);
    let mut alice_silent = silent.connect("alice").await;
    alice.send_message("alice-bob", "before").await;
    assert_eq!(snapshot_ids(&next_sent(&mut bob).await), [1]);

    // Committed while NATS is down, and never published: the last message of the room,
    // so no later one reveals the gap. Only catching up after the reconnect finds it.
    c.nats.kill();
    alice_silent.send_message("alice-bob", "during").await;
    c.nats.resume();
    let caught_up = next_sent(&mut bob).await;
    assert_eq!(snapshot_ids(&caught_up), [2, 1]);
    assert_eq!(caught_up["messages"][0]["message"], "during");
    assert_eq!(snapshot_ids(&next_sent(&mut alice).await), [1]);
    assert_eq!(snapshot_ids(&next_sent(&mut alice).await), [2, 1]);
    bob.expect_silence(Duration::from_millis(300)).await;
    assert!(b.nats().stats().resyncs() >= 1);
    silent.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn after_a_nats_outage_a_node_catches_up_a_conversation_it_never_delivered_to_the_user() {
    let mut c = Pair::start().await;
    let silent = c.silent_node().await;
    let (a, b, mut bob) = (c.a, c.b, c.bob);
    let mut carol_silent = silent.connect("carol").await;
    // A new conversation whose first message is lost: node b never delivered anything of
    // it to bob, so its tracker knows nothing of the room, and no later message comes.
    carol_silent.send_message("bob-carol", "hello, lost").await;
    assert_eq!(snapshot_ids(&next_sent(&mut carol_silent).await), [1]);
    bob.expect_silence(Duration::from_millis(300)).await;

    c.nats.kill();
    c.nats.resume();
    let caught_up = next_sent(&mut bob).await;
    assert_eq!(caught_up["roomId"], "bob-carol");
    assert_eq!(caught_up["user"]["id"], "carol");
    assert_eq!(snapshot_ids(&caught_up), [1]);
    assert_eq!(caught_up["messages"][0]["message"], "hello, lost");
    bob.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(b.nats().stats().recovered(), 1);

    // Now tracked: a second outage repeats nothing.
    c.nats.kill();
    c.nats.resume();
    bob.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(b.nats().stats().recovered(), 1);
    silent.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn after_a_nats_outage_a_node_catches_up_a_room_its_tracker_forgot() {
    let mut c = Pair::start().await;
    let (a, b, mut bob) = (c.a, c.b, c.bob);
    // Bob writes in one more room than node b remembers per user (16): the first one,
    // the least recently active, is forgotten.
    for n in 0..17 {
        let room = format!("bob-u{n:02}");
        assert_eq!(bob.send_message(&room, "hi").await["ok"], true);
        assert_eq!(next_sent(&mut bob).await["roomId"], room.as_str());
    }
    // A message lost in the forgotten room: nothing else comes there.
    let forgotten = RoomKey::new("bob", "u00");
    let mut txn = c.store.begin().unwrap();
    txn.append(&forgotten, "u00", "lost", None, now_millis())
        .unwrap();
    txn.commit().unwrap();

    c.nats.kill();
    c.nats.resume();
    // Bob's own first message there may come again (sent within the clock-skew allowance
    // before the room was forgotten): a repeat, then the lost one.
    let caught_up = loop {
        let sent = next_sent(&mut bob).await;
        assert_eq!(sent["roomId"], "bob-u00", "{sent}");
        if snapshot_ids(&sent) == [2, 1] {
            break sent;
        }
        assert_eq!(snapshot_ids(&sent), [1], "{sent}");
    };
    assert_eq!(caught_up["messages"][0]["message"], "lost");
    assert_eq!(caught_up["user"]["id"], "u00");
    bob.expect_silence(Duration::from_millis(300)).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_catch_up_reads_at_most_a_bounded_number_of_untracked_rooms_most_recent_first() {
    let mut c = Pair::start().await;
    let (a, b, mut bob) = (c.a, c.b, c.bob);
    let rooms = chat_server::fanout::nats::MAX_UNTRACKED_ROOMS + 3;
    // Committed straight into the store, never published: a lost first message in each
    // of more new conversations than one catch-up reads.
    for n in 0..rooms {
        let sender = format!("u{n:03}");
        let mut txn = c.store.begin().unwrap();
        txn.append(
            &RoomKey::new("bob", &sender),
            &sender,
            "lost",
            None,
            now_millis(),
        )
        .unwrap();
        txn.commit().unwrap();
        // Distinct `sent_ms`, so "most recent" is one order.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let reads = b.nats().stats().reads();
    c.nats.kill();
    c.nats.resume();
    let mut senders = Vec::new();
    for _ in 0..chat_server::fanout::nats::MAX_UNTRACKED_ROOMS {
        senders.push(
            next_sent(&mut bob).await["user"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    bob.expect_silence(Duration::from_millis(500)).await;
    // The most recently active ones; the three oldest are left to their next message.
    senders.sort();
    let expected: Vec<String> = (3..rooms).map(|n| format!("u{n:03}")).collect();
    assert_eq!(senders, expected);
    // One read per room caught up, after one of bob's erasure and one of his rooms.
    assert_eq!(
        b.nats().stats().reads() - reads,
        chat_server::fanout::nats::MAX_UNTRACKED_ROOMS as u64 + 2
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn after_a_nats_outage_a_node_closes_the_connections_of_a_user_erased_meanwhile() {
    let mut c = Pair::start().await;
    let silent = c.silent_node().await;
    let (a, b, mut alice, mut bob) = (c.a, c.b, c.alice, c.bob);
    // Erased on a node whose notice never reaches NATS: bob's tab on node b stays open.
    let (status, report) =
        common::http_request(silent.addr, "DELETE", "/admin/users/bob", Some("admin")).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["connectionsClosed"], 0, "{report}");
    bob.expect_silence(Duration::from_millis(300)).await;

    c.nats.kill();
    c.nats.resume();
    let erased = (CloseCode::Library(4003), "user erased".to_owned());
    assert_eq!(bob.close_frame().await, erased);
    assert_eq!(b.nats().stats().erased(), 1);
    // Only bob's: alice, on node a, is still served.
    assert_eq!(
        alice.send_message("alice-carol", "still here").await["ok"],
        true
    );

    // Bob comes back with a token from after the erasure (the next second on): the next
    // catch-up leaves that connection alone.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut bob = b.connect("bob").await;
    b.wait_subscribed(1).await;
    c.nats.kill();
    c.nats.resume();
    bob.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(bob.send_message("bob-carol", "back").await["ok"], true);
    assert_eq!(b.nats().stats().erased(), 1);
    silent.stop().await;
    a.stop().await;
    b.stop().await;
}

/// The next `event`, skipping every other event.
async fn next_event(client: &mut Client, event: &str) -> Value {
    loop {
        let frame = client.recv().await;
        if frame["event"] == event {
            return frame["data"].clone();
        }
    }
}

#[tokio::test]
async fn lost_receipts_edits_and_deletes_are_recovered_from_the_store_in_order() {
    let mut c = Pair::start().await;
    let silent = c.silent_node().await;
    let (alice, bob) = (&mut c.alice, &mut c.bob);
    let mut alice_silent = silent.connect("alice").await;
    let mut bob_silent = silent.connect("bob").await;
    alice.send_message("alice-bob", "one").await;
    assert_eq!(snapshot_ids(&next_sent(bob).await), [1]);
    assert_eq!(snapshot_ids(&next_sent(alice).await), [1]);

    // Bob reads it on the silent node: its `message:delivered` and `message:seen` for
    // alice never reach NATS.
    let read = json!([{ "userId": "bob", "roomId": "alice-bob", "messageId": 1,
                        "seenDate": "2026-01-01T00:00:00Z" }]);
    assert_eq!(bob_silent.request("message:read", read).await["ok"], true);
    alice.expect_silence(Duration::from_millis(300)).await;
    // Bob's next message shows alice's node the gap in the room's changes: the receipt
    // comes first, from the store, then the message.
    bob.send_message("alice-bob", "two").await;
    let frame = alice.recv().await;
    assert_eq!(frame["event"], "message:seen", "{frame}");
    assert_eq!(
        (
            frame["data"][0]["messageId"].as_u64(),
            frame["data"][0]["userId"].as_str()
        ),
        (Some(1), Some("bob"))
    );
    let frame = alice.recv().await;
    assert_eq!(frame["event"], "message:sent", "{frame}");
    assert_eq!(snapshot_ids(&frame["data"]), [2, 1]);
    // Bob is not the sender of message 1: nothing of his read comes back to him.
    let frame = bob.recv().await;
    assert_eq!(frame["event"], "message:sent", "{frame}");
    assert_eq!(snapshot_ids(&frame["data"]), [2, 1]);
    assert_eq!(c.a.nats().stats().recovered_changes(), 1);
    assert_eq!(c.b.nats().stats().recovered_changes(), 0);
    // Each node found the hole its users had: alice's two receipts, bob's own read.
    assert_eq!(c.a.nats().stats().change_gaps(), 1);
    assert_eq!(c.b.nats().stats().change_gaps(), 1);

    // An edit and a delete on the silent node: both members miss `message:updated`.
    let edit = json!({ "roomId": "alice-bob", "messageId": 1, "message": "one, edited" });
    assert_eq!(alice_silent.request("message:edit", edit).await["ok"], true);
    alice_silent.send_message("alice-bob", "three").await;
    let delete = json!({ "roomId": "alice-bob", "messageId": 3 });
    assert_eq!(
        alice_silent.request("message:delete", delete).await["ok"],
        true
    );
    bob.expect_silence(Duration::from_millis(300)).await;
    // A send committed on bob's own node reveals the gap there (a local event), one from
    // node a on alice's node.
    bob.send_message("alice-bob", "four").await;
    let edited = next_event(bob, "message:updated").await;
    assert_eq!(edited["message"]["id"], 1);
    assert_eq!(edited["message"]["message"], "one, edited");
    // The lost message 3 comes as a `message:sent`, in id order, before its deletion.
    assert_eq!(snapshot_ids(&next_sent(bob).await), [3, 2, 1]);
    let deleted = next_event(bob, "message:updated").await;
    assert_eq!(deleted["message"]["id"], 3);
    assert!(deleted["message"]["deletedAt"].is_string(), "{deleted}");
    assert_eq!(snapshot_ids(&next_sent(bob).await), [4, 3, 2, 1]);
    bob.expect_silence(Duration::from_millis(300)).await;
    let edited = next_event(alice, "message:updated").await;
    assert_eq!(edited["message"]["message"], "one, edited");
    assert_eq!(snapshot_ids(&next_sent(alice).await), [3, 2, 1]);
    let deleted = next_event(alice, "message:updated").await;
    assert_eq!(deleted["message"]["id"], 3);
    assert_eq!(snapshot_ids(&next_sent(alice).await), [4, 3, 2, 1]);
    alice.expect_silence(Duration::from_millis(300)).await;

    // A change told twice reaches the user once.
    alice.send_message("alice-bob", "five").await;
    assert_eq!(snapshot_ids(&next_sent(bob).await)[0], 5);
    let tap = async_nats::connect(c.nats.url()).await.unwrap();
    let alice_subject = chat_server::fanout::nats::subject("alice");
    let mut tapped = tap.subscribe(alice_subject.clone()).await.unwrap();
    tap.flush().await.unwrap();
    let read = json!([{ "userId": "bob", "roomId": "alice-bob", "messageId": 5,
                        "seenDate": "2026-01-01T00:00:00Z" }]);
    assert_eq!(bob.request("message:read", read).await["ok"], true);
    assert_eq!(next_event(alice, "message:seen").await[0]["messageId"], 5);
    alice.expect_silence(Duration::from_millis(300)).await;
    let duplicates = c.a.nats().stats().duplicate_changes();
    // What node b published on alice's subject, taken before replaying (the tap hears
    // its own publishes).
    let mut published = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(
        Duration::from_millis(300),
        futures_util::StreamExt::next(&mut tapped),
    )
    .await
    {
        published.push(message.payload);
    }
    let replayed = published.len() as u64;
    for payload in published {
        tap.publish(alice_subject.clone(), payload).await.unwrap();
    }
    tap.flush().await.unwrap();
    assert!(replayed >= 2, "the delivered and the seen receipt");
    alice.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(
        c.a.nats().stats().duplicate_changes(),
        duplicates + replayed
    );
    silent.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn a_gap_of_several_lost_messages_costs_one_read_of_the_store() {
    let mut c = Pair::start().await;
    let silent = c.silent_node().await;
    let (alice, bob) = (&mut c.alice, &mut c.bob);
    let mut alice_silent = silent.connect("alice").await;
    alice.send_message("alice-bob", "one").await;
    assert_eq!(snapshot_ids(&next_sent(bob).await), [1]);
    assert_eq!(snapshot_ids(&next_sent(alice).await), [1]);
    // Node b built bob's event from one read; node a had alice's rendered.
    assert_eq!(
        (c.a.nats().stats().reads(), c.b.nats().stats().reads()),
        (0, 1)
    );

    for n in 2..=6 {
        alice_silent
            .send_message("alice-bob", &format!("{n}, lost"))
            .await;
        next_sent(&mut alice_silent).await;
    }
    alice.send_message("alice-bob", "seven").await;
    // Five lost messages, each with its own snapshot, then the new one, in order.
    for n in 2..=7 {
        let expected: Vec<u64> = (1..=n).rev().collect();
        assert_eq!(snapshot_ids(&next_sent(bob).await), expected);
        assert_eq!(snapshot_ids(&next_sent(alice).await), expected);
    }
    bob.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(c.b.nats().stats().recovered(), 5);
    assert_eq!(c.a.nats().stats().recovered(), 5);
    // One read of the room served all six on node b (the five and the notice), and all
    // five on node a (whose own message came rendered): not one read per message.
    assert_eq!(c.b.nats().stats().reads(), 2);
    assert_eq!(c.a.nats().stats().reads(), 1);
    silent.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn a_gap_in_the_changes_that_lost_a_message_costs_one_read_of_the_store() {
    let mut c = Pair::start().await;
    let silent = c.silent_node().await;
    let (alice, bob) = (&mut c.alice, &mut c.bob);
    let mut alice_silent = silent.connect("alice").await;
    let mut bob_silent = silent.connect("bob").await;
    alice.send_message("alice-bob", "one").await;
    assert_eq!(snapshot_ids(&next_sent(bob).await), [1]);
    assert_eq!(snapshot_ids(&next_sent(alice).await), [1]);
    assert_eq!(
        (c.a.nats().stats().reads(), c.b.nats().stats().reads()),
        (0, 1)
    );

    // Lost on both nodes: bob's read of message 1 (its receipts), then message 2.
    let read = json!([{ "userId": "bob", "roomId": "alice-bob", "messageId": 1,
                        "seenDate": "2026-01-01T00:00:00Z" }]);
    assert_eq!(bob_silent.request("message:read", read).await["ok"], true);
    alice_silent.send_message("alice-bob", "two, lost").await;
    next_sent(&mut alice_silent).await;
    alice.expect_silence(Duration::from_millis(300)).await;

    // Bob's next message shows both nodes the hole in the room's changes: alice's node
    // reads the changes and the page for the lost message's snapshot at once, and builds
    // the new message's from it too; bob's node the same for the lost message.
    bob.send_message("alice-bob", "three").await;
    let seen = next_event(alice, "message:seen").await;
    assert_eq!(seen[0]["messageId"], 1);
    let lost = next_sent(alice).await;
    assert_eq!(snapshot_ids(&lost), [2, 1]);
    assert_eq!(lost["messages"][0]["message"], "two, lost");
    assert_eq!(snapshot_ids(&next_sent(alice).await), [3, 2, 1]);
    assert_eq!(snapshot_ids(&next_sent(bob).await), [2, 1]);
    assert_eq!(snapshot_ids(&next_sent(bob).await), [3, 2, 1]);
    alice.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(c.a.nats().stats().change_gaps(), 1);
    assert_eq!(c.b.nats().stats().change_gaps(), 1);
    assert_eq!(c.a.nats().stats().reads(), 1);
    assert_eq!(c.b.nats().stats().reads(), 2);

    // The same after a NATS outage, with no later event: a receipt and a message lost,
    // caught up with one read of the room (its messages and its changes), after one of
    // the erasures of alice's fan-out task and one of her recently active rooms.
    let read = json!([{ "userId": "bob", "roomId": "alice-bob", "messageId": 2,
                        "seenDate": "2026-01-01T00:00:00Z" }]);
    assert_eq!(bob_silent.request("message:read", read).await["ok"], true);
    alice_silent.send_message("alice-bob", "four, lost").await;
    next_sent(&mut alice_silent).await;
    alice.expect_silence(Duration::from_millis(300)).await;
    c.nats.kill();
    c.nats.resume();
    assert_eq!(snapshot_ids(&next_sent(alice).await), [4, 3, 2, 1]);
    let frame = alice.recv().await;
    assert_eq!(frame["event"], "message:seen", "{frame}");
    assert_eq!(frame["data"][0]["messageId"], 2);
    alice.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(c.a.nats().stats().reads(), 1 + 3);
    silent.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn a_read_held_for_one_user_does_not_hold_up_another_users_messages() {
    let nats = NatsServer::start();
    let (_dir, store) = shared_store();
    let held = Arc::new(HeldStore::new(
        store.clone(),
        Hold::Room(RoomKey::new("alice", "bob")),
    ));
    let a = Node::start(&store, Some(&nats.url()), "a").await;
    let b = Node::start_reading(&store, Some(&nats.url()), "b", held.clone(), 4096).await;
    // Carol is owned by another fan-out task than bob on node b (the test nodes have 4).
    let carol = ["carol", "dave", "erin", "frank", "grace"]
        .into_iter()
        .find(|name| {
            chat_server::fanout::nats::shard_of(name, 4)
                != chat_server::fanout::nats::shard_of("bob", 4)
        })
        .expect("a user on another task");
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    let mut carol_client = b.connect(carol).await;
    a.wait_subscribed(1).await;
    b.wait_subscribed(2).await;

    alice.send_message("alice-bob", "for bob").await;
    held.wait_held().await;
    // Bob's event waits for its read; carol's comes meanwhile.
    alice
        .send_message(&format!("alice-{carol}"), "for carol")
        .await;
    let sent = next_sent(&mut carol_client).await;
    assert_eq!(sent["messages"][0]["message"], "for carol");
    bob.expect_silence(Duration::from_millis(200)).await;
    held.release();
    let sent = next_sent(&mut bob).await;
    assert_eq!(sent["messages"][0]["message"], "for bob");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn events_dropped_from_a_full_queue_are_caught_up_room_by_room_once_it_empties() {
    let nats = NatsServer::start();
    let (_dir, store) = shared_store();
    let held = Arc::new(HeldStore::new(
        store.clone(),
        Hold::Room(RoomKey::new("alice", "bob")),
    ));
    let a = Node::start(&store, Some(&nats.url()), "a").await;
    // Each task of node b holds one event of its node's own.
    let b = Node::start_reading(&store, Some(&nats.url()), "b", held.clone(), 1).await;
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    let mut carol = b.connect("carol").await;
    a.wait_subscribed(1).await;
    b.wait_subscribed(2).await;

    // Bob's task waits on a read; meanwhile his own sends fill its queue and the rest of
    // their events to him are dropped.
    alice.send_message("alice-bob", "for bob").await;
    held.wait_held().await;
    for n in 1..=5 {
        bob.send_message("bob-carol", &format!("{n}")).await;
    }
    for n in 1..=5 {
        let expected: Vec<u64> = (1..=n).rev().collect();
        assert_eq!(snapshot_ids(&next_sent(&mut carol).await), expected);
    }
    let stats = b.nats().stats();
    assert_eq!(stats.dropped(), 4);
    held.release();
    // Once the queue is empty, the room is caught up with one read: every message once,
    // in order, and no catch-up of every room.
    assert_eq!(
        next_sent(&mut bob).await["messages"][0]["message"],
        "for bob"
    );
    for n in 1..=5 {
        let expected: Vec<u64> = (1..=n).rev().collect();
        assert_eq!(snapshot_ids(&next_sent(&mut bob).await), expected);
    }
    bob.expect_silence(Duration::from_millis(300)).await;
    assert_eq!((stats.recovered(), stats.resyncs()), (4, 0));
    assert_eq!(stats.reads(), 2);
    a.stop().await;
    b.stop().await;
}
