//! Cluster mode's store: the real binary with `cluster.postgres_url` set, on a throwaway
//! PostgreSQL (`common::postgres`), one or two nodes sharing it; and its backups (dumps,
//! kept like the embedded store's, restored into an empty database).

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
async fn a_scrape_answers_while_postgres_hangs() {
    let pg = TestPostgres::start();
    let server = node(&pg);
    let mut alice = server.connect("alice").await;
    assert_eq!(send(&mut alice, "alice-bob", "before").await["id"], 1);
    let size = common::metrics::value(
        &common::metrics::scrape(&server).await,
        "chat_store_file_bytes",
    );
    assert!(size > 0.0, "{size}");

    pg.freeze();
    // The store-size query waits up to 10 s for a hung database; the scrape gives it 1 s
    // and answers with the rest, the gauge at its last value.
    let started = Instant::now();
    let samples = common::metrics::scrape(&server).await;
    let took = started.elapsed();
    pg.thaw();
    assert!(took < Duration::from_secs(3), "the scrape took {took:?}");
    assert_eq!(common::metrics::value(&samples, "chat_users_online"), 1.0);
    assert_eq!(
        common::metrics::value(&samples, "chat_store_file_bytes"),
        size
    );
    assert_eq!(send(&mut alice, "alice-bob", "after").await["id"], 2);
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

const ADMIN: &str = "cluster-admin-secret-for-the-test";

/// `chat-server ARGS` in cluster mode on the database at `url`.
fn chat_server_on(url: &str, args: &[&str]) -> std::process::Output {
    common::dump::chat_server()
        .args(args)
        .env("CHAT_CLUSTER_POSTGRES_URL", url)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `chat-server backup` against `server`: the report it printed.
fn backup(server: &Server) -> Value {
    let out = common::dump::chat_server()
        .args(["backup", "--bind", &server.addr.to_string()])
        .args(["--admin-secret", ADMIN])
        .output()
        .unwrap();
    assert!(out.status.success(), "backup: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

/// `chat-server export` of the database at `url`.
fn export(url: &str) -> Vec<u8> {
    let out = chat_server_on(url, &["export"]);
    assert!(out.status.success(), "export: {}", text(&out.stderr));
    out.stdout
}

/// Two dumps hold the same lines but for the header's `exportedAt`.
fn assert_same_dump(a: &[u8], b: &[u8], what: &str) {
    let (a, b) = (text(a), text(b));
    let (head_a, rest_a) = a.split_once('\n').unwrap();
    let (head_b, rest_b) = b.split_once('\n').unwrap();
    assert!(
        rest_a == rest_b,
        "{what}: the dumps differ\n{rest_a}\n---\n{rest_b}"
    );
    let mut head_a: Value = serde_json::from_str(head_a).unwrap();
    let mut head_b: Value = serde_json::from_str(head_b).unwrap();
    head_a.as_object_mut().unwrap().remove("exportedAt");
    head_b.as_object_mut().unwrap().remove("exportedAt");
    assert_eq!(head_a, head_b, "{what}");
}

#[tokio::test]
async fn a_backup_is_a_dump_kept_like_the_embedded_ones_and_restores_into_an_empty_database() {
    let pg = TestPostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("kept");
    let server = Server::start_with(&[
        ("CHAT_CLUSTER_POSTGRES_URL", &pg.url()),
        ("CHAT_ADMIN_SECRET", ADMIN),
        ("CHAT_BACKUP_KEEP", "2"),
        ("CHAT_BACKUP_DIR", backups.to_str().unwrap()),
    ]);
    let (status, _) = common::http_request(server.addr, "POST", "/admin/backup", None).await;
    assert_eq!(status, 401, "the admin secret is needed");
    let mut alice = server.connect("alice").await;
    let mut names: Vec<String> = Vec::new();
    let mut newest = String::new();
    for round in 0..3u64 {
        send(&mut alice, "alice-bob", &format!("before backup {round}")).await;
        let report = backup(&server);
        assert_eq!(
            (
                &report["rooms"],
                &report["messages"],
                &report["highestMessageId"]
            ),
            (&json!(1), &json!(round + 1), &json!(round + 1)),
            "{report}"
        );
        let name = report["name"].as_str().unwrap().to_owned();
        assert!(
            name.starts_with("chat-2") && name.ends_with("Z.jsonl"),
            "{name}"
        );
        let expected: Vec<&String> = if round == 2 { vec![&names[0]] } else { vec![] };
        assert_eq!(report["deleted"], json!(expected), "{report}");
        newest = report["path"].as_str().unwrap().to_owned();
        let bytes = std::fs::metadata(&newest).unwrap().len();
        assert_eq!(report["bytes"], bytes, "{report}");
        names.push(name);
    }
    let mut left: Vec<String> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, names[1..], "backup.keep = 2");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backups).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    }
    // The backup is the dump of its moment: nothing was sent since, so the export now is
    // the same lines.
    let backed_up = std::fs::read(&newest).unwrap();
    assert_same_dump(&backed_up, &export(&pg.url()), "the backup and the export");

    // Restored into a new database: the same lines, and a node on it serves them.
    let restored = pg.create_database("restored");
    let out = chat_server_on(&restored, &["restore", &newest]);
    assert!(out.status.success(), "restore: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(
            "into the PostgreSQL database: 0 profiles, 0 blocks, 0 \
                                    erased users, 1 rooms, 3 messages"
        ),
        "{}",
        text(&out.stdout)
    );
    assert_same_dump(&backed_up, &export(&restored), "the restored database");
    let node = Server::start_with(&[("CHAT_CLUSTER_POSTGRES_URL", &restored)]);
    let mut bob = node.connect("bob").await;
    let texts: Vec<&str> = vec!["before backup 2", "before backup 1", "before backup 0"];
    let page = history(&mut bob, "alice-bob").await;
    let shown: Vec<&str> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    assert_eq!(shown, texts);

    // Into a database that holds data, or with --force: refused, nothing changes.
    let out = chat_server_on(&restored, &["restore", &newest]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not empty"),
        "{}",
        text(&out.stderr)
    );
    let out = chat_server_on(&restored, &["restore", &newest, "--force"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    assert_same_dump(&backed_up, &export(&restored), "after the refused restores");

    // A damaged backup (cut mid-line) is refused naming the line; nothing is stored.
    let damaged_file = dir.path().join("damaged.jsonl");
    std::fs::write(&damaged_file, &backed_up[..backed_up.len() - 10]).unwrap();
    let damaged = pg.create_database("damaged");
    let out = chat_server_on(&damaged, &["restore", damaged_file.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    let last = text(&backed_up).lines().count();
    assert!(
        stderr.contains(&format!("line {last}: not a dump line")),
        "{stderr}"
    );
    assert_eq!(
        text(&export(&damaged)).lines().count(),
        1,
        "nothing restored"
    );
}

#[tokio::test]
async fn a_backup_under_load_holds_every_message_acknowledged_before_it() {
    let pg = TestPostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(&[
        ("CHAT_CLUSTER_POSTGRES_URL", &pg.url()),
        ("CHAT_ADMIN_SECRET", ADMIN),
        ("CHAT_BACKUP_DIR", dir.path().to_str().unwrap()),
    ]);
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for (user, room) in [("alice", "alice-bob"), ("carol", "bob-carol")] {
        let mut client = server.connect(user).await;
        let (acked, stop) = (acked.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = format!("{user} {n}");
                let ack = client.send_message(room, &text).await;
                assert_eq!(ack["ok"], true, "{ack}");
                acked.lock().unwrap().push(text);
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before: Vec<String> = acked.lock().unwrap().clone();
    let report = tokio::task::spawn_blocking({
        let server_addr = server.addr;
        move || {
            let out = common::dump::chat_server()
                .args(["backup", "--bind", &server_addr.to_string()])
                .args(["--admin-secret", ADMIN])
                .output()
                .unwrap();
            assert!(out.status.success(), "backup: {}", text(&out.stderr));
            serde_json::from_slice::<Value>(&out.stdout).unwrap()
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }
    let total = acked.lock().unwrap().len();
    assert!(total > before.len(), "sends went on during the backup");
    let dump = std::fs::read_to_string(report["path"].as_str().unwrap()).unwrap();
    let in_backup: std::collections::HashSet<String> = dump
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["type"] == "message")
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(report["messages"], in_backup.len(), "{report}");
    for text in &before {
        assert!(
            in_backup.contains(text),
            "{text:?} was acknowledged before the backup"
        );
    }
    // One moment: the backup restores (the load checks every room against its messages).
    let restored = pg.create_database("restored");
    let out = chat_server_on(&restored, &["restore", report["path"].as_str().unwrap()]);
    assert!(out.status.success(), "restore: {}", text(&out.stderr));
}

#[test]
fn compact_refuses_in_cluster_mode_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // Refused from the configuration alone: nothing is connected to.
    let out = chat_server_on(
        "postgres://chat@127.0.0.1:1/chat",
        &["compact", "--data", data],
    );
    assert!(!out.status.success(), "compact succeeded");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cluster.postgres_url is set") && stderr.contains("VACUUM"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn verify_checks_the_database_while_a_node_runs_and_reports_as_the_embedded_store() {
    let pg = TestPostgres::start();
    let server = node(&pg);
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    for text in ["one", "two", "three"] {
        send(&mut alice, "alice-bob", text).await;
    }
    let keyed = json!({ "userId": "bob", "roomId": "alice-bob", "message": "four",
                        "clientMessageId": "k1" });
    assert_eq!(bob.request("message", keyed).await["ok"], true);
    send(&mut alice, "alice-carol", "hi carol").await;
    let read = bob
        .request(
            "message:read",
            json!([{ "userId": "bob", "roomId": "alice-bob", "messageId": 1,
                     "seenDate": "2026-01-01T00:00:00Z" }]),
        )
        .await;
    assert_eq!(read["rejected"], json!([]), "{read}");
    let edited = alice
        .request(
            "message:edit",
            json!({ "roomId": "alice-bob", "messageId": 2, "message": "two, edited" }),
        )
        .await;
    assert_eq!(edited["ok"], true, "{edited}");

    // Sound, while the node runs.
    let out = chat_server_on(&pg.url(), &["verify"]);
    assert!(out.status.success(), "verify: {}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(
        report.starts_with("ok: 2 rooms, 5 messages, 1 clientMessageId index rows, 4 inbox rows"),
        "{report}"
    );

    // The same chat in the embedded store reads the same.
    let dir = tempfile::tempdir().unwrap();
    let imported = common::dump::import(dir.path(), &export(&pg.url()));
    assert!(
        imported.status.success(),
        "import: {}",
        text(&imported.stderr)
    );
    let embedded = common::dump::chat_server()
        .args(["verify", "--data", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(embedded.status.success(), "{}", text(&embedded.stderr));
    assert_eq!(text(&embedded.stdout), report);

    // Damage that only the chat's bookkeeping shows: a message gone from the middle of a
    // room, an unread count off, a room time that is not its newest message's.
    pg.psql(
        "DELETE FROM messages WHERE id = 2 AND room = \
           (SELECT num FROM rooms WHERE low = 'alice' AND high = 'bob');
         UPDATE rooms SET unread_high = unread_high + 5, last_sent_ms = last_sent_ms - 1 \
           WHERE low = 'alice' AND high = 'carol';",
    );
    let out = chat_server_on(&pg.url(), &["verify"]);
    assert!(
        !out.status.success(),
        "damage passed: {}",
        text(&out.stdout)
    );
    let stderr = text(&out.stderr);
    for expected in [
        "4 problems",
        "(alice, bob): ids 1..4 hold 3 messages: a gap",
        // Message 2 was bob's to read.
        "(alice, bob): unread counts are (1, 2) but unseen messages (1, 1)",
        "(alice, carol): its time is not its last message's",
        "(alice, carol): unread counts are (0, 6) but unseen messages (0, 1)",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} missing from {stderr}"
        );
    }
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
