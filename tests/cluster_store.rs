//! Cluster mode's store: the real binary with `cluster.postgres_url` set, on a throwaway
//! PostgreSQL (`common::postgres`), one or two nodes sharing it.

mod common;

use std::time::{Duration, Instant};

use common::postgres::TestPostgres;
use common::{ids, Client, Server};
use serde_json::{json, Value};

fn node(pg: &TestPostgres) -> Server {
    Server::start_with(&[("CHAT_CLUSTER_POSTGRES_URL", &pg.url())])
}

/// The newest 50 messages of a room, newest first.
async fn history(client: &mut Client, room: &str) -> Value {
    page(client, json!({ "roomId": room, "limit": 50 })).await
}

async fn page(client: &mut Client, request: Value) -> Value {
    let reply = client.request("messages", request).await;
    assert_eq!(reply["ok"], true, "{reply}");
    reply["room"]["messages"].clone()
}

/// Every message id of a room, oldest first, page by page.
async fn all_ids(client: &mut Client, room: &str) -> Vec<u64> {
    let mut all = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut request = json!({ "roomId": room, "limit": 50 });
        if let Some(before) = before {
            request["before"] = json!(before);
        }
        let found = ids(&page(client, request).await);
        let Some(&oldest) = found.last() else {
            break;
        };
        all.extend(found);
        before = Some(oldest);
    }
    all.reverse();
    all
}

/// Sends and drains the `message:sent` the sender gets.
async fn send(from: &mut Client, room: &str, text: &str) -> Value {
    let ack = from.send_message(room, text).await;
    assert_eq!(ack["ok"], true, "{ack}");
    from.recv_event("message:sent").await;
    ack["message"].clone()
}

#[tokio::test]
async fn messaging_history_receipts_and_lifecycle_work_on_postgres() {
    let pg = TestPostgres::start();
    let server = node(&pg);
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;

    let first = send(&mut alice, "alice-bob", "hi bob").await;
    assert_eq!(
        (first["id"].as_u64(), first["userId"].as_str()),
        (Some(1), Some("alice"))
    );
    let sent = bob.recv_event("message:sent").await;
    assert_eq!(sent["messages"][0], first);
    let second = send(&mut bob, "alice-bob", "hi alice").await;
    assert_eq!(second["id"], 2);
    alice.recv_event("message:sent").await;

    // A retry with the same clientMessageId stores nothing new.
    let keyed = json!({ "userId": "alice", "roomId": "alice-bob", "message": "once",
                        "clientMessageId": "k1" });
    let once = alice.request("message", keyed.clone()).await;
    let again = alice.request("message", keyed).await;
    assert_eq!(once["message"]["id"], 3, "{once}");
    assert_eq!(again["message"], once["message"], "{again}");

    assert_eq!(ids(&history(&mut bob, "alice-bob").await), [3, 2, 1]);
    let inbox = bob.request("rooms", json!({})).await;
    assert_eq!(inbox["rooms"][0]["roomId"], "alice-bob", "{inbox}");
    assert_eq!(inbox["rooms"][0]["unread"], 2, "{inbox}");

    // Receipts: delivered, then read.
    let reply = bob
        .request(
            "message:received",
            json!([{ "roomId": "alice-bob", "messageId": 3 }]),
        )
        .await;
    assert_eq!(reply, json!({ "ok": true, "rejected": [] }));
    let read = bob
        .request(
            "message:read",
            json!([{ "userId": "bob", "roomId": "alice-bob", "messageId": 1,
                     "seenDate": "2026-01-01T00:00:00Z" }]),
        )
        .await;
    assert_eq!(read["rejected"], json!([]), "{read}");

    // Lifecycle: edit, delete.
    let edited = alice
        .request(
            "message:edit",
            json!({ "roomId": "alice-bob", "messageId": 1, "message": "hello bob" }),
        )
        .await;
    assert_eq!(edited["ok"], true, "{edited}");
    let deleted = bob
        .request(
            "message:delete",
            json!({ "roomId": "alice-bob", "messageId": 2 }),
        )
        .await;
    assert_eq!(deleted["ok"], true, "{deleted}");

    let page = history(&mut alice, "alice-bob").await;
    let by_id = |id: usize| page[3 - id].clone();
    assert_eq!(by_id(1)["message"], "hello bob", "{page}");
    assert!(by_id(1)["editedAt"].is_string(), "{page}");
    assert!(by_id(1)["seenAt"].is_string(), "{page}");
    assert!(by_id(3)["deliveredAt"].is_string(), "{page}");
    assert_eq!(by_id(2)["deleted"], true, "{page}");
    let inbox = bob.request("rooms", json!({})).await;
    assert_eq!(inbox["rooms"][0]["unread"], 1, "{inbox}");
}

#[tokio::test]
async fn two_nodes_sending_to_one_room_at_once_keep_ids_gap_free() {
    let pg = TestPostgres::start();
    let (a, b) = (node(&pg), node(&pg));
    let per_node = 100;
    // Alice on node A and bob on node B, each with several senders in flight at once.
    let mut tasks = Vec::new();
    for (server, user) in [(&a, "alice"), (&b, "bob")] {
        for lane in 0..4 {
            let mut client = server.connect(user).await;
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..per_node / 4 {
                    let ack = client
                        .send_message("alice-bob", &format!("{user} {lane} {i}"))
                        .await;
                    assert_eq!(ack["ok"], true, "{ack}");
                    acked.push(ack["message"]["id"].as_u64().unwrap());
                }
                acked
            }));
        }
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    acked.sort_unstable();
    let all: Vec<u64> = (1..=2 * per_node as u64).collect();
    assert_eq!(acked, all, "every ack a distinct id, none skipped");
    // Both nodes read the same history.
    for (server, user) in [(&a, "alice"), (&b, "bob")] {
        let mut reader = server.connect(user).await;
        assert_eq!(all_ids(&mut reader, "alice-bob").await, all);
    }
}

#[tokio::test]
async fn a_node_killed_after_acks_loses_nothing_and_another_node_serves_it_all() {
    let pg = TestPostgres::start();
    let mut a = node(&pg);
    let mut alice = a.connect("alice").await;
    let mut acked = Vec::new();
    for i in 0..30 {
        let ack = alice.send_message("alice-bob", &format!("m{i}")).await;
        assert_eq!(ack["ok"], true, "{ack}");
        acked.push(ack["message"].clone());
    }
    a.kill9();
    let b = node(&pg);
    let mut bob = b.connect("bob").await;
    let page = history(&mut bob, "alice-bob").await;
    let mut stored = page.as_array().unwrap().clone();
    stored.reverse();
    assert_eq!(stored.len(), acked.len());
    for (stored, acked) in stored.iter().zip(&acked) {
        assert_eq!(stored["id"], acked["id"]);
        assert_eq!(stored["message"], acked["message"]);
    }
    // The ids go on from where the killed node left them.
    assert_eq!(send(&mut bob, "alice-bob", "after").await["id"], 31);
}

#[tokio::test]
async fn sends_fail_clearly_while_postgres_is_down_and_service_resumes_by_itself() {
    let pg = TestPostgres::start();
    let server = node(&pg);
    let mut alice = server.connect("alice").await;
    assert_eq!(send(&mut alice, "alice-bob", "before").await["id"], 1);

    pg.stop_immediate();
    let started = Instant::now();
    let ack = alice.send_message("alice-bob", "while down").await;
    assert_eq!(ack["ok"], false, "{ack}");
    assert_eq!(ack["error"]["code"], "internal", "{ack}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    pg.start_again();
    // No restart of the node: its next round reconnects.
    let deadline = Instant::now() + Duration::from_secs(20);
    let resumed = loop {
        let ack = alice.send_message("alice-bob", "after").await;
        if ack["ok"] == true {
            break ack;
        }
        assert!(Instant::now() < deadline, "never resumed: {ack}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(resumed["message"]["id"], 2, "the failed send took no id");
    alice.recv_event("message:sent").await;
    let page = history(&mut alice, "alice-bob").await;
    assert_eq!(ids(&page), [2, 1]);
    assert_eq!(page[1]["message"], "before");
}

#[tokio::test]
async fn a_snapshot_shows_what_another_node_changed_in_the_room() {
    let pg = TestPostgres::start();
    let (a, b) = (node(&pg), node(&pg));
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    // Node A caches the room with its first message.
    send(&mut alice, "alice-bob", "one").await;
    // Meanwhile node B stores a message and bob edits it.
    send(&mut bob, "alice-bob", "two").await;
    let edited = bob
        .request(
            "message:edit",
            json!({ "roomId": "alice-bob", "messageId": 2, "message": "two, edited" }),
        )
        .await;
    assert_eq!(edited["ok"], true, "{edited}");
    // Node A's next snapshot must hold both, as they are now.
    let ack = alice.send_message("alice-bob", "three").await;
    assert_eq!(ack["message"]["id"], 3, "{ack}");
    let sent = loop {
        let frame = alice.recv_event("message:sent").await;
        if frame["messages"][0]["id"] == 3 {
            break frame;
        }
    };
    assert_eq!(ids(&sent["messages"]), [3, 2, 1], "{sent}");
    assert_eq!(sent["messages"][1]["message"], "two, edited", "{sent}");
}

#[tokio::test]
async fn the_admin_api_refuses_file_backups_before_answering_anything_else() {
    let pg = TestPostgres::start();
    let admin = "cluster-admin-secret-for-the-test";
    let server = Server::start_with(&[
        ("CHAT_CLUSTER_POSTGRES_URL", &pg.url()),
        ("CHAT_ADMIN_SECRET", admin),
    ]);
    let (status, body) =
        common::http_request(server.addr, "POST", "/admin/backup", Some(admin)).await;
    assert_eq!(status, 501, "{body}");
    assert_eq!(body["error"]["code"], "not_supported", "{body}");
    let why = body["error"]["message"].as_str().unwrap_or_default();
    assert!(why.contains("pg_dump"), "{body}");
    // The refusal is about the operation, not the caller: without the secret it is 401.
    let (status, _) = common::http_request(server.addr, "POST", "/admin/backup", None).await;
    assert_eq!(status, 401);
}

#[test]
fn a_new_cluster_whose_port_was_taken_meanwhile_starts_on_another() {
    // The port picked as free, then taken by another process before the postmaster binds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let pg = TestPostgres::start_trying(port);
    assert_ne!(pg.port(), port);
    assert_eq!(pg.psql("SELECT 41 + 1").trim(), "42");
}
