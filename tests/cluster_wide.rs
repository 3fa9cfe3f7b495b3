//! What must happen once per cluster, not once per node (issue 17, item 4): real server
//! binaries on one throwaway PostgreSQL and one nats-server. Webhook events are posted by
//! one node, and by another once it is `kill -9`'d; retention is swept by one node, and by
//! another after it; an erasure on one node closes the user's connections on every node.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chat_server::protocol::time::now_millis;
use common::metrics::{scrape, value};
use common::nats::NatsServer;
use common::postgres::TestPostgres;
use common::receiver::{Mode, Receiver};
use common::{http_request, ids, Client, Server, WAIT};
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const ADMIN: &str = "admin-secret-for-integration-tests";
const DAY_MS: i64 = 86_400_000;

fn node(pg: &TestPostgres, nats: &NatsServer, extra: &[(&str, &str)]) -> Server {
    let (pg_url, nats_url) = (pg.url(), nats.url());
    let mut env = vec![
        ("CHAT_CLUSTER_POSTGRES_URL", pg_url.as_str()),
        ("CHAT_CLUSTER_NATS_URL", nats_url.as_str()),
        ("CHAT_ADMIN_SECRET", ADMIN),
    ];
    env.extend_from_slice(extra);
    Server::start_with(&env)
}

/// The environment of one hook at `url`, retrying fast.
fn hook_env(url: &str) -> [(&str, &str); 4] {
    [
        ("CHAT_WEBHOOK_URL", url),
        ("CHAT_WEBHOOK_SECRET", "receiver-secret"),
        ("CHAT_WEBHOOK_INITIAL_BACKOFF_MS", "50"),
        ("CHAT_WEBHOOK_MAX_BACKOFF_SECS", "1"),
    ]
}

/// Waits until exactly one of `nodes` runs the cluster-wide duties, and returns its index.
async fn duties_holder(nodes: &[&Server]) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut running = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            if value(&scrape(node).await, "chat_duties_running") == 1.0 {
                running.push(i);
            }
        }
        if let [holder] = running[..] {
            return holder;
        }
        assert!(
            Instant::now() < deadline,
            "nodes running the duties: {running:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends, drains the sender's own `message:sent`, and returns the new message's id.
async fn send(from: &mut Client, room: &str, text: &str) -> u64 {
    let ack = from.send_message(room, text).await;
    assert_eq!(ack["ok"], true, "{ack}");
    from.recv_event("message:sent").await;
    ack["message"]["id"].as_u64().expect("message id")
}

/// How many 2xx answers each event id got.
fn delivered_by_id(receiver: &Receiver) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in receiver.received() {
        if r.answered == Some(200) {
            *counts.entry(r.id).or_default() += 1;
        }
    }
    counts
}

#[tokio::test]
async fn each_webhook_event_is_posted_by_one_node_and_the_survivor_of_a_kill_posts_the_rest() {
    let pg = TestPostgres::start();
    let nats = NatsServer::start();
    let receiver = Receiver::start(Mode::Status(200)).await;
    let url = receiver.url();
    let mut nodes = [
        node(&pg, &nats, &hook_env(&url)),
        node(&pg, &nats, &hook_env(&url)),
    ];
    let holder = duties_holder(&[&nodes[0], &nodes[1]]).await;

    // Events committed on both nodes: alice sends on one, carol on the other; their
    // partners are offline, each message makes one message.created.
    let mut alice = nodes[0].connect("alice").await;
    let mut carol = nodes[1].connect("carol").await;
    for n in 0..5 {
        send(&mut alice, "alice-bob", &format!("a{n}")).await;
        send(&mut carol, "carol-dave", &format!("c{n}")).await;
    }
    receiver.wait_until("10 events", |r| r.len() >= 10).await;
    // Long enough for a second node's delivery (it would post as soon as it is woken).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = delivered_by_id(&receiver);
    assert_eq!(first.len(), 10, "{first:?}");
    assert!(first.values().all(|&n| n == 1), "posted twice: {first:?}");
    assert_eq!(receiver.received().len(), 10);
    // The events committed on the node that does not deliver were posted all the same.
    let recipients: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| {
            r.json()["data"]["recipient"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(recipients.iter().filter(|r| *r == "bob").count(), 5);
    assert_eq!(recipients.iter().filter(|r| *r == "dave").count(), 5);

    // The receiver fails for a while: five more events pile up in the outbox, retried by
    // the holder, which is then killed. The other node takes over and posts them.
    receiver.set_mode(Mode::Status(503));
    let survivor = 1 - holder;
    let mut sender = nodes[survivor].connect("erin").await;
    for n in 0..5 {
        send(&mut sender, "erin-frank", &format!("e{n}")).await;
    }
    receiver
        .wait_until("the new events attempted", |r| {
            r.iter().filter(|r| r.answered == Some(503)).count() >= 5
        })
        .await;
    nodes[holder].kill9();
    receiver.set_mode(Mode::Status(200));
    assert_eq!(duties_holder(&[&nodes[survivor]]).await, 0);
    receiver
        .wait_until("15 events delivered", |r| {
            r.iter().filter(|r| r.answered == Some(200)).count() >= 15
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = delivered_by_id(&receiver);
    assert_eq!(all.len(), 15, "{all:?}");
    assert!(all.values().all(|&n| n == 1), "posted twice: {all:?}");
    let survivor_metrics = scrape(&nodes[survivor]).await;
    assert_eq!(
        value(&survivor_metrics, "chat_webhook_delivered_total"),
        5.0
    );
}

#[tokio::test]
async fn retention_is_swept_by_one_node_and_by_the_next_once_it_is_killed() {
    let pg = TestPostgres::start();
    let nats = NatsServer::start();
    let retention = [("CHAT_RETENTION_MAX_AGE_DAYS", "30")];
    let mut nodes = [node(&pg, &nats, &retention), node(&pg, &nats, &retention)];
    let holder = duties_holder(&[&nodes[0], &nodes[1]]).await;
    let survivor = 1 - holder;

    // The holder swept at start (nothing to delete); the other node did not sweep.
    let deadline = Instant::now() + WAIT;
    while value(&scrape(&nodes[holder]).await, "chat_retention_sweeps_total") < 1.0 {
        assert!(Instant::now() < deadline, "the holder never swept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, sweeps) in [(holder, 1.0), (survivor, 0.0)] {
        let metrics = scrape(&nodes[i]).await;
        assert_eq!(
            value(&metrics, "chat_retention_sweeps_total"),
            sweeps,
            "node {i}"
        );
        assert_eq!(value(&metrics, "chat_retention_deleted_total"), 0.0);
    }

    // Three old messages and a recent one, written straight into the shared database.
    let old = now_millis() - 400 * DAY_MS;
    let now = now_millis();
    pg.psql(&format!(
        "WITH r AS (INSERT INTO rooms (low, high, last_id, last_sent_ms, change, listed) \
                    VALUES ('alice', 'bob', 4, {now}, 4, true) RETURNING num) \
         INSERT INTO messages (room, id, user_id, message, sent_ms, change) \
         SELECT num, i, 'alice', 'text ' || i, CASE WHEN i < 4 THEN {old} + i ELSE {now} END, i \
         FROM r, generate_series(1, 4) AS i"
    ));

    // The survivor takes the duties over and sweeps at once.
    nodes[holder].kill9();
    assert_eq!(duties_holder(&[&nodes[survivor]]).await, 0);
    let deadline = Instant::now() + WAIT;
    loop {
        let metrics = scrape(&nodes[survivor]).await;
        if value(&metrics, "chat_retention_deleted_total") == 3.0 {
            assert_eq!(value(&metrics, "chat_retention_sweeps_total"), 1.0);
            break;
        }
        assert!(Instant::now() < deadline, "the survivor did not sweep");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = nodes[survivor].token("bob");
    let (status, page) = nodes[survivor]
        .get("/api/rooms/alice-bob/messages", Some(&token))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page["room"]["messages"]), [4]);
}

#[tokio::test]
async fn erasing_a_user_on_one_node_closes_their_tabs_on_every_node() {
    let pg = TestPostgres::start();
    let nats = NatsServer::start();
    let a = node(&pg, &nats, &[]);
    let b = node(&pg, &nats, &[]);
    let mut on_a = a.connect("alice").await;
    let mut on_b = b.connect("alice").await;
    let mut bob = b.connect("bob").await;
    // Node B subscribes to alice's subject once her connection there is admitted.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (status, report) = http_request(a.addr, "DELETE", "/admin/users/alice", Some(ADMIN)).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["connectionsClosed"], 1, "{report}");
    let erased = (CloseCode::Library(4003), "user erased".to_owned());
    assert_eq!(on_a.close_frame().await, erased);
    assert_eq!(on_b.close_frame().await, erased);

    // Only alice's: bob, on node B with her, is still served.
    let reply: Value = bob.send_message("bob-carol", "still here").await;
    assert_eq!(reply["ok"], true, "{reply}");
}

#[tokio::test]
async fn an_erasure_whose_nats_notice_is_lost_closes_the_tabs_on_other_nodes_within_seconds() {
    let pg = TestPostgres::start();
    // Two NATS servers that do not know each other: nothing node A publishes reaches node
    // B, and neither sees an outage. Only the presence heartbeat's check of the store can
    // close alice's tab on B.
    let (nats_a, nats_b) = (NatsServer::start(), NatsServer::start());
    let a = node(&pg, &nats_a, &[]);
    let b = node(&pg, &nats_b, &[]);
    let mut on_b = b.connect("alice").await;
    let mut bob = b.connect("bob").await;
    wait_presence_rows(&pg, "alice", "1");

    let started = Instant::now();
    let (status, report) = http_request(a.addr, "DELETE", "/admin/users/alice", Some(ADMIN)).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["connectionsClosed"], 0, "{report}");
    let erased = (CloseCode::Library(4003), "user erased".to_owned());
    assert_eq!(on_b.close_frame().await, erased);
    // Within a heartbeat (5 s) and the time to answer.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    // A token from after the erasure (the next second on) is admitted, and the next
    // heartbeats leave that connection alone; bob was never touched.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut again = b.connect("alice").await;
    again.expect_silence(Duration::from_secs(6)).await;
    let reply: Value = again.send_message("alice-carol", "a new start").await;
    assert_eq!(reply["ok"], true, "{reply}");
    let reply: Value = bob.send_message("bob-carol", "still here").await;
    assert_eq!(reply["ok"], true, "{reply}");
}

#[tokio::test]
async fn erase_user_on_the_database_while_nodes_run_closes_the_tabs_within_seconds() {
    let pg = TestPostgres::start();
    let nats = NatsServer::start();
    let a = node(&pg, &nats, &[]);
    let old_token = a.token("alice");
    let mut alice = a.connect_token("alice", &old_token).await;
    let mut bob = a.connect("bob").await;
    let reply: Value = alice.send_message("alice-bob", "erase me").await;
    assert_eq!(reply["ok"], true, "{reply}");
    wait_presence_rows(&pg, "alice", "1");

    let started = Instant::now();
    let out = common::dump::chat_server()
        .args(["erase-user", "alice"])
        .env("CHAT_CLUSTER_POSTGRES_URL", pg.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["messagesTombstoned"], 1, "{report}");
    // No node was asked: the presence heartbeat's check of the store closes the tab.
    let erased = (CloseCode::Library(4003), "user erased".to_owned());
    assert_eq!(alice.close_frame().await, erased);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let page = bob
        .request(
            "messages",
            serde_json::json!({ "roomId": "alice-bob", "limit": 50 }),
        )
        .await;
    assert_eq!(page["room"]["messages"][0]["deleted"], true, "{page}");
    let (status, _) = a
        .refused_handshake(&format!("/ws?token={old_token}"), None)
        .await;
    assert_eq!(status, 401);
}

/// Waits until `user` has `rows` rows in the shared presence table.
fn wait_presence_rows(pg: &TestPostgres, user: &str, rows: &str) {
    let sql = format!("SELECT count(*) FROM presence WHERE user_id = '{user}'");
    wait_psql(pg, &sql, rows);
}

/// Waits until `sql` answers `expected`.
fn wait_psql(pg: &TestPostgres, sql: &str, expected: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = pg.psql(sql);
        if answer.trim() == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: {answer:?}, never {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn offline_only_webhooks_see_a_recipient_connected_to_another_node_as_online() {
    let pg = TestPostgres::start();
    let nats = NatsServer::start();
    let receiver = Receiver::start(Mode::Status(200)).await;
    let url = receiver.url();
    let mut env = hook_env(&url).to_vec();
    env.push(("CHAT_WEBHOOK_OFFLINE_ONLY", "true"));
    let a = node(&pg, &nats, &env);
    let b = node(&pg, &nats, &env);
    let mut alice = a.connect("alice").await;

    // bob is connected to node B only: alice's message, committed on node A, is held
    // back.
    let bob = b.connect("bob").await;
    wait_presence_rows(&pg, "bob", "1");
    assert_eq!(send(&mut alice, "alice-bob", "while online on B").await, 1);

    // Once his last connection closed he is offline everywhere: the next one is posted.
    drop(bob);
    wait_presence_rows(&pg, "bob", "0");
    assert_eq!(send(&mut alice, "alice-bob", "after he left").await, 2);
    let received = receiver.wait_until("one event", |r| !r.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 1, "{received:?}");
    let event = received[0].json();
    assert_eq!(event["data"]["message"]["id"], 2, "{event}");
    assert_eq!(event["data"]["recipientOnline"], false, "{event}");
}

#[tokio::test]
async fn a_hook_gone_for_one_node_is_gone_for_the_cluster_until_the_cluster_restarts() {
    let pg = TestPostgres::start();
    let nats = NatsServer::start();
    let receiver = Receiver::start(Mode::Status(410)).await;
    let url = receiver.url();
    let mut nodes = [
        node(&pg, &nats, &hook_env(&url)),
        node(&pg, &nats, &hook_env(&url)),
    ];
    let holder = duties_holder(&[&nodes[0], &nodes[1]]).await;
    let other = 1 - holder;

    // An event committed on the other node gets the 410 from the holder, which records
    // the hook as gone with the event's dead letter.
    let mut alice = nodes[other].connect("alice").await;
    send(&mut alice, "alice-bob", "first").await;
    receiver.wait_until("one attempt", |r| r.len() == 1).await;
    wait_psql(&pg, "SELECT count(*) FROM webhook_gone", "1");
    wait_psql(&pg, "SELECT count(*) FROM webhook_dead", "1");

    // The other node learns it within a poll: its next message writes no event.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    send(&mut alice, "alice-bob", "second").await;
    assert_eq!(
        pg.psql("SELECT count(*) FROM webhook_outbox").trim(),
        "0",
        "an event was written for a gone hook"
    );

    // The holder dies with an event in the outbox (as one committed by a node that had
    // not learnt it yet): the next holder does not post it, it dead-letters it.
    nodes[holder].kill9();
    receiver.set_mode(Mode::Status(200));
    pg.psql(&format!(
        "INSERT INTO webhook_outbox (hook, seq, recipient, id, created_ms, body) \
         VALUES ('{url}', 1000, 'bob', 'evt_waiting', {}, '{{}}')",
        now_millis()
    ));
    assert_eq!(duties_holder(&[&nodes[other]]).await, 0);
    wait_psql(
        &pg,
        "SELECT string_agg(id || ': ' || reason, ', ') FROM webhook_dead \
         WHERE id = 'evt_waiting'",
        "evt_waiting: the hook answered 410 Gone; it is disabled",
    );
    assert_eq!(pg.psql("SELECT count(*) FROM webhook_outbox").trim(), "0");

    // A node restarting while another runs joins the running cluster: still gone.
    nodes[holder].restart();
    let mut carol = nodes[holder].connect("carol").await;
    send(&mut carol, "carol-dave", "after a node restarted").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pg.psql("SELECT count(*) FROM webhook_gone").trim(), "1");
    assert_eq!(pg.psql("SELECT count(*) FROM webhook_outbox").trim(), "0");
    assert_eq!(receiver.received().len(), 1, "posted to a gone hook");

    // The cluster restarts (every node stopped, then one started): enabled again, as one
    // server's hook is after a restart.
    drop(carol);
    nodes[holder].kill9();
    nodes[other].kill9();
    let fresh = node(&pg, &nats, &hook_env(&url));
    assert_eq!(pg.psql("SELECT count(*) FROM webhook_gone").trim(), "0");
    let mut erin = fresh.connect("erin").await;
    send(&mut erin, "erin-frank", "after the cluster restarted").await;
    let received = receiver
        .wait_until("posted again", |r| {
            r.iter().any(|r| r.answered == Some(200))
        })
        .await;
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[1].json()["data"]["recipient"]["id"], "frank");
}

/// Waits until `node`'s `series` satisfies `done`; returns its value.
async fn wait_value(node: &Server, series: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = value(&scrape(node).await, series);
        if done(now) {
            return now;
        }
        assert!(Instant::now() < deadline, "{series} stuck at {now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_duties_holder_reports_the_cluster_s_outbox_and_the_others_report_none() {
    let pg = TestPostgres::start();
    let nats = NatsServer::start();
    let receiver = Receiver::start(Mode::Status(503)).await;
    let url = receiver.url();
    let nodes = [
        node(&pg, &nats, &hook_env(&url)),
        node(&pg, &nats, &hook_env(&url)),
    ];
    let holder = duties_holder(&[&nodes[0], &nodes[1]]).await;
    let other = 1 - holder;
    // Events committed on the node that does not post them: the receiver refuses them,
    // so they stay in the outbox.
    let mut alice = nodes[other].connect("alice").await;
    for n in 0..5 {
        send(&mut alice, &format!("alice-u{n}"), "hi").await;
    }
    // Seen by the holder's next count of the outbox in PostgreSQL.
    wait_value(&nodes[holder], "chat_webhook_queued", |v| v == 5.0).await;
    assert_eq!(
        value(&scrape(&nodes[other]).await, "chat_webhook_queued"),
        0.0
    );
    // One more committed on the holder counts at once, with no count in between.
    let mut bob = nodes[holder].connect("bob").await;
    send(&mut bob, "bob-u9", "hi").await;
    assert_eq!(
        value(&scrape(&nodes[holder]).await, "chat_webhook_queued"),
        6.0
    );
    // Delivered: down to nothing on the holder, as each leaves the outbox.
    receiver.set_mode(Mode::Status(200));
    wait_value(&nodes[holder], "chat_webhook_delivered_total", |v| v == 6.0).await;
    wait_value(&nodes[holder], "chat_webhook_queued", |v| v == 0.0).await;
    assert_eq!(
        value(&scrape(&nodes[other]).await, "chat_webhook_queued"),
        0.0
    );
    assert_eq!(pg.psql("SELECT count(*) FROM webhook_outbox").trim(), "0");
}
