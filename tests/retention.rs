//! `retention.max_age_days` against the real binary: a store with old messages (written
//! by `import`, which keeps their `sentAt`) loses them on the server's start sweep; unread
//! counts, the inbox and the idempotency keys follow, and ids go on after the last one.
//!
//! The same sweep in cluster mode, on PostgreSQL: `import` writes only redb's file, so
//! there the messages are sent through the running server and then made old in the
//! database itself, the one way to have a message sent long ago.

mod common;

use chat_server::protocol::time::{format_millis, now_millis};
use common::dump::{dump_of, header, import, message, room};
use common::metrics::{scrape, value};
use common::postgres::TestPostgres;
use common::{ids, Server, WAIT};
use serde_json::{json, Value};

const DAY_MS: i64 = 86_400_000;

#[tokio::test]
async fn old_messages_go_and_what_remains_stays_consistent() {
    let old = format_millis(now_millis() - 400 * DAY_MS);
    let older = format_millis(now_millis() - 401 * DAY_MS);
    let recent = format_millis(now_millis() - DAY_MS);
    let ab = ["alice", "bob"];
    let ac = ["alice", "carol"];
    let aa = ["alice", "alice"];
    let mut seen = message(ab, 1, "alice", &older);
    seen["seenAt"] = json!(old);
    let mut keyed = message(ab, 2, "bob", &old);
    keyed["clientMessageId"] = json!("old-key");
    let mut seen_recent = message(ab, 5, "bob", &recent);
    seen_recent["seenAt"] = json!(recent);
    let dump = dump_of(&[
        header(),
        // alice has 1 unseen from bob (2); bob has 2 unseen from alice (3, 4).
        room(ab, 5, &recent, [1, 2]),
        seen,
        keyed,
        message(ab, 3, "alice", &old),
        message(ab, 4, "alice", &recent),
        seen_recent,
        // Every message old: the room leaves both inboxes.
        room(ac, 2, &old, [0, 2]),
        message(ac, 1, "alice", &older),
        message(ac, 2, "alice", &old),
        room(aa, 1, &old, [0, 0]),
        message(aa, 1, "alice", &old),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let out = import(dir.path(), &dump);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let server = Server::start_in(dir, &[("CHAT_RETENTION_MAX_AGE_DAYS", "30")]);
    let started = std::time::Instant::now();
    loop {
        let deleted = value(&scrape(&server).await, "chat_retention_deleted_total");
        if deleted == 6.0 {
            break;
        }
        assert!(started.elapsed() < WAIT, "{deleted} deleted so far");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let inbox = |user: &'static str| {
        let token = server.token(user);
        let server = &server;
        async move {
            let (status, body) = server.get("/api/rooms?limit=100", Some(&token)).await;
            assert_eq!(status, 200, "{body}");
            body["rooms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["roomId"].as_str().unwrap().to_owned(),
                        r["unread"].clone(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(inbox("alice").await, [("alice-bob".to_owned(), json!(0))]);
    assert_eq!(inbox("bob").await, [("alice-bob".to_owned(), json!(1))]);
    assert!(inbox("carol").await.is_empty());

    let (_, page) = server
        .get("/api/rooms/alice-bob/messages", Some(&server.token("bob")))
        .await;
    assert_eq!(ids(&page["room"]["messages"]), [5, 4]);
    let (_, page) = server
        .get(
            "/api/rooms/alice-carol/messages",
            Some(&server.token("carol")),
        )
        .await;
    assert_eq!(page["room"]["messages"], json!([]));

    // Ids go on after the deleted ones, and the emptied room comes back to the inbox.
    let mut alice = server.connect("alice").await;
    let reply = alice.send_message("alice-carol", "back").await;
    assert_eq!(reply["message"]["id"], 3, "{reply}");
    let sent = alice.recv_event("message:sent").await;
    assert_eq!(ids(&sent["messages"]), [3]);
    assert_eq!(inbox("carol").await, [("alice-carol".to_owned(), json!(1))]);
    let reply = alice.send_message("alice-alice", "note").await;
    assert_eq!(reply["message"]["id"], 2, "{reply}");

    // A deleted message's clientMessageId no longer deduplicates: it is a new message.
    let mut bob = server.connect("bob").await;
    let reply: Value = bob
        .request(
            "message",
            json!({"userId": "bob", "roomId": "alice-bob", "message": "again",
                   "clientMessageId": "old-key"}),
        )
        .await;
    assert_eq!(reply["message"]["id"], 6, "{reply}");
    assert_eq!(reply["message"]["message"], "again");

    // What retention leaves (a run of ids past 1, an emptied room with its last id) is a
    // sound store to `verify`.
    let mut server = server;
    assert!(server.terminate());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["verify", "--data", server.data_dir().to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn retention_is_off_by_default() {
    let old = format_millis(now_millis() - 4000 * DAY_MS);
    let ab = ["alice", "bob"];
    let dump = dump_of(&[
        header(),
        room(ab, 1, &old, [0, 1]),
        message(ab, 1, "alice", &old),
    ]);
    let dir = tempfile::tempdir().unwrap();
    assert!(import(dir.path(), &dump).status.success());
    let server = Server::start_in(dir, &[]);
    let (_, page) = server
        .get("/api/rooms/alice-bob/messages", Some(&server.token("bob")))
        .await;
    assert_eq!(ids(&page["room"]["messages"]), [1]);
    assert_eq!(
        value(&scrape(&server).await, "chat_retention_deleted_total"),
        0.0
    );
}

/// Waits until the server's sweeps have deleted `expected` messages.
async fn wait_deleted(server: &Server, expected: f64) {
    let started = std::time::Instant::now();
    loop {
        let deleted = value(&scrape(server).await, "chat_retention_deleted_total");
        if deleted == expected {
            return;
        }
        assert!(started.elapsed() < WAIT, "{deleted} deleted so far");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn on_postgres_the_sweep_deletes_old_messages_and_what_remains_stays_consistent() {
    let pg = TestPostgres::start();
    let url = pg.url();
    let mut server = Server::start_with(&[("CHAT_CLUSTER_POSTGRES_URL", &url)]);
    let mut alice = server.connect("alice").await;
    for text in ["one", "two", "three"] {
        assert_eq!(alice.send_message("alice-bob", text).await["ok"], true);
    }
    let keyed = json!({"userId": "alice", "roomId": "alice-carol", "message": "old",
                       "clientMessageId": "old-key"});
    assert_eq!(alice.request("message", keyed.clone()).await["ok"], true);
    drop(alice);
    assert!(server.terminate());

    // Messages 1 and 2 of alice-bob and all of alice-carol were sent 400 days ago.
    let old = now_millis() - 400 * DAY_MS;
    pg.psql(&format!(
        "UPDATE messages m SET sent_ms = {old} FROM rooms r WHERE m.room = r.num \
         AND ((r.low, r.high) = ('alice', 'carol') OR ((r.low, r.high) = ('alice', 'bob') \
         AND m.id <= 2))"
    ));
    pg.psql(&format!(
        "UPDATE rooms SET last_sent_ms = {old} WHERE (low, high) = ('alice', 'carol')"
    ));

    let server = Server::start_with(&[
        ("CHAT_CLUSTER_POSTGRES_URL", &url),
        ("CHAT_RETENTION_MAX_AGE_DAYS", "30"),
    ]);
    wait_deleted(&server, 3.0).await;
    assert_eq!(pg.psql("SELECT count(*) FROM messages").trim(), "1");

    let (_, page) = server
        .get("/api/rooms/alice-bob/messages", Some(&server.token("bob")))
        .await;
    assert_eq!(ids(&page["room"]["messages"]), [3]);
    let (_, inbox) = server
        .get("/api/rooms?limit=100", Some(&server.token("bob")))
        .await;
    assert_eq!(inbox["rooms"][0]["roomId"], "alice-bob", "{inbox}");
    assert_eq!(inbox["rooms"][0]["unread"], 1, "{inbox}");
    let (_, inbox) = server
        .get("/api/rooms?limit=100", Some(&server.token("carol")))
        .await;
    assert_eq!(inbox["rooms"], json!([]), "{inbox}");

    // Ids go on after the deleted ones, and a deleted message's key is free again.
    let mut alice = server.connect("alice").await;
    let reply = alice.request("message", keyed).await;
    assert_eq!(reply["message"]["id"], 2, "{reply}");
    assert_eq!(reply["message"]["message"], "old");
}
