//! The admin API and the operator commands, against the real binary: the admin secret and
//! its auth matrix, online backup under a send load, restore, verify, compact, and the
//! store's size in `/metrics`.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::load::{history, resend, Sent, UNTHROTTLED};
use common::metrics::{scrape, value};
use common::{http_get, http_request, Server};
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret-for-integration-tests";

/// Every admin endpoint, as (method, path); each must pass the auth matrix.
const ADMIN_ENDPOINTS: &[(&str, &str)] = &[
    ("POST", "/admin/backup"),
    ("GET", "/admin/export"),
    (
        "GET",
        "/admin/webhooks/dead-letters?hook=http%3A%2F%2F127.0.0.1%3A9%2Fhook",
    ),
    (
        "POST",
        "/admin/webhooks/dead-letters/retry?hook=http%3A%2F%2F127.0.0.1%3A9%2Fhook",
    ),
];

fn chat_server(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(args)
        .env_remove("CHAT_JWT_SECRET")
        .env_remove("CHAT_ADMIN_SECRET")
        .env_remove("CHAT_CONFIG")
        .env_remove("CHAT_DATA")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run chat-server")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn with_admin(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut env = vec![("CHAT_ADMIN_SECRET", ADMIN)];
    env.extend_from_slice(extra);
    env
}

/// `chat-server backup` against `server`; the report it printed.
fn backup_cli(server: &Server, secret: &str) -> Value {
    let addr = server.addr.to_string();
    let out = chat_server(&["backup", "--bind", &addr, "--admin-secret", secret]);
    assert!(out.status.success(), "backup: {}", stderr(&out));
    serde_json::from_str(stdout(&out).trim()).expect("a JSON report")
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test]
async fn only_the_admin_secret_opens_the_admin_api_and_it_opens_nothing_else() {
    // A hook, so that its dead letters can be listed and retried (there are none: port 9
    // is never posted to).
    let server = Server::start_with(&with_admin(&[
        ("CHAT_WEBHOOK_URL", "http://127.0.0.1:9/hook"),
        ("CHAT_WEBHOOK_SECRET", "hook-secret"),
    ]));
    let user = server.token("alice");
    for (method, path) in ADMIN_ENDPOINTS {
        for (token, why) in [
            (None, "no header"),
            (Some(user.as_str()), "a user token"),
            (Some("admin-secret-for-integration-test"), "a wrong secret"),
            (Some(common::SECRET), "the JWT secret"),
        ] {
            let (status, body) = http_request(server.addr, method, path, token).await;
            assert_eq!(status, 401, "{method} {path} with {why}: {body}");
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        }
        let (status, body) = http_request(server.addr, method, path, Some(ADMIN)).await;
        assert_eq!(status, 200, "{method} {path} with the admin secret: {body}");
    }
    // A header in another scheme is refused too.
    let head = format!(
        "POST /admin/backup HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {ADMIN}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let raw = common::raw_request(server.addr, &head, b"").await;
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 401"));

    // The admin secret is no user token: not for the API, not for a socket.
    let (status, _) = http_get(server.addr, "/api/rooms", Some(ADMIN)).await;
    assert_eq!(status, 401);
    let (status, body) = server
        .refused_handshake(&format!("/ws?token={ADMIN}"), None)
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = server.refused_handshake("/ws", Some(ADMIN)).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_generated_admin_secret_is_private_stable_and_printed_by_admin_token() {
    let mut server = Server::start();
    let file = server.data_dir().join("admin-secret");
    let secret = std::fs::read_to_string(&file).expect("admin-secret generated on start");
    assert_eq!(secret.len(), 64, "{secret:?}");
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    // It differs from the JWT secret the server signs with.
    assert_ne!(secret, common::SECRET);

    let out = chat_server(&["admin-token", "--data", path_str(server.data_dir())]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), secret);
    let (status, _) = http_request(server.addr, "POST", "/admin/backup", Some(&secret)).await;
    assert_eq!(status, 200);

    server.kill9();
    server.restart();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), secret);
    let (status, _) = http_request(server.addr, "POST", "/admin/backup", Some(&secret)).await;
    assert_eq!(status, 200);
}

/// One acknowledged message of the load.
#[derive(Clone)]
struct Acked {
    sent: Sent,
    message: Value,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_holds_every_message_acknowledged_before_it_and_restores() {
    let env = with_admin(UNTHROTTLED);
    let server = Server::start_with(&env);
    let users: Vec<String> = (0..4).map(|i| format!("user{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let mut tasks = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let partner = &users[(i + 1) % users.len()];
        let room = chat_server::protocol::room::canonical_room_id(user, partner);
        let mut client = server.connect(user).await;
        let (stop, acked, user) = (stop.clone(), acked.clone(), user.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sent = Sent {
                    user: user.clone(),
                    room: room.clone(),
                    client_message_id: format!("{user}-{n}"),
                    text: format!("message {n} from {user}"),
                };
                let reply = client
                    .request(
                        "message",
                        json!({ "userId": user, "roomId": room, "message": sent.text,
                                "clientMessageId": sent.client_message_id }),
                    )
                    .await;
                assert_eq!(reply["ok"], true, "{reply}");
                let message = reply["message"].clone();
                acked.lock().unwrap().push(Acked { sent, message });
            }
        }));
    }
    // Wait for some load rather than for a time: a loaded machine acknowledges slowly.
    let acked_len = || acked.lock().unwrap().len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked_len() < 20 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Everything acknowledged up to here must be in the backup.
    let before: Vec<Acked> = acked.lock().unwrap().clone();
    assert!(
        before.len() >= 20,
        "only {} sends acknowledged in 30 s",
        before.len()
    );
    let report = {
        let addr = server.addr.to_string();
        tokio::task::spawn_blocking(move || {
            let out = chat_server(&["backup", "--bind", &addr, "--admin-secret", ADMIN]);
            assert!(out.status.success(), "backup: {}", stderr(&out));
            serde_json::from_str::<Value>(stdout(&out).trim()).expect("a JSON report")
        })
        .await
        .unwrap()
    };
    // Sends kept flowing while the backup ran, and go on after it.
    let during = acked_len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked_len() <= during && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let total = acked.lock().unwrap().len();
    assert!(total > during, "no send was acknowledged after the backup");

    let in_backup = report["messages"].as_u64().unwrap();
    eprintln!(
        "acknowledged: {} before the backup, {during} when it answered, {total} in all; \
         the backup holds {in_backup}",
        before.len()
    );
    assert!(
        in_backup as usize >= before.len() && in_backup as usize <= total + users.len(),
        "backup holds {in_backup}; {} acknowledged before it, {total} in all",
        before.len()
    );
    assert_eq!(report["rooms"], users.len());
    assert!(report["bytes"].as_u64().unwrap() > 0);
    let backup = report["path"].as_str().unwrap().to_owned();
    assert!(backup.starts_with(path_str(&server.data_dir().join("backups"))));
    assert!(report["name"].as_str().unwrap().starts_with("chat-"));

    // Restored into a new directory, it verifies.
    let fresh = tempfile::tempdir().unwrap();
    let target = fresh.path().join("data");
    let out = chat_server(&["restore", &backup, "--data", path_str(&target)]);
    assert!(out.status.success(), "restore: {}", stderr(&out));
    let out = chat_server(&["verify", "--data", path_str(&target)]);
    assert!(out.status.success(), "verify: {}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&format!("ok: {} rooms, {in_backup} messages", users.len())),
        "{}",
        stdout(&out)
    );

    // A server on the restored store serves every message acknowledged before the backup.
    let mut restored = Server::start_with(&env);
    restored.kill9();
    let out = chat_server(&[
        "restore",
        &backup,
        "--data",
        path_str(restored.data_dir()),
        "--force",
    ]);
    assert!(out.status.success(), "restore --force: {}", stderr(&out));
    restored.restart();
    let mut stored: HashMap<String, (String, Value)> = HashMap::new();
    for (i, user) in users.iter().enumerate() {
        let partner = &users[(i + 1) % users.len()];
        let room = chat_server::protocol::room::canonical_room_id(user, partner);
        let mut client = restored.connect(user).await;
        for message in history(&mut client, &room).await {
            let id = message["clientMessageId"].as_str().unwrap().to_owned();
            stored.insert(id, (room.clone(), message));
        }
    }
    assert_eq!(stored.len() as u64, in_backup);
    for acked in &before {
        let (_, message) = stored
            .get(&acked.sent.client_message_id)
            .unwrap_or_else(|| panic!("{} is not in the backup", acked.sent.client_message_id));
        assert_eq!(message, &acked.message);
    }

    // Retries of old clientMessageIds are still deduplicated: the stored message comes back,
    // and nothing new is stored.
    let retries: Vec<Sent> = before.iter().take(8).map(|a| a.sent.clone()).collect();
    let (again, problems) = resend(&restored, &retries, &stored).await;
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(again.len(), retries.len());
    let room = &retries[0].room;
    let mut client = restored.connect(&retries[0].user).await;
    let count = stored.values().filter(|(r, _)| r == room).count();
    assert_eq!(history(&mut client, room).await.len(), count);
}

#[tokio::test]
async fn backups_keep_the_newest_n_in_a_private_directory() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("kept");
    let server = Server::start_with(&[
        ("CHAT_ADMIN_SECRET", ADMIN),
        ("CHAT_BACKUP_KEEP", "2"),
        ("CHAT_BACKUP_DIR", path_str(&backups)),
    ]);
    let mut client = server.connect("alice").await;
    let mut names = Vec::new();
    for round in 0..3 {
        client
            .send_message("alice-bob", &format!("before backup {round}"))
            .await;
        let report = backup_cli(&server, ADMIN);
        assert_eq!(report["messages"], round + 1, "{report}");
        assert_eq!(report["highestMessageId"], round + 1, "{report}");
        names.push(report["name"].as_str().unwrap().to_owned());
        if round == 2 {
            assert_eq!(report["deleted"], json!([names[0]]), "{report}");
        } else {
            assert_eq!(report["deleted"], json!([]), "{report}");
        }
    }
    let mut left: Vec<String> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, names[1..]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backups).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    }
}

#[tokio::test]
async fn restore_refuses_a_non_empty_directory_or_a_damaged_backup() {
    let server = Server::start_with(&with_admin(&[]));
    let mut client = server.connect("alice").await;
    client.send_message("alice-bob", "hello").await;
    let backup = backup_cli(&server, ADMIN)["path"]
        .as_str()
        .unwrap()
        .to_owned();

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    let out = chat_server(&["restore", &backup, "--data", path_str(dir.path())]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert!(!dir.path().join("chat.redb").exists());

    // A server running on the directory is never replaced under it, even with --force.
    let out = chat_server(&[
        "restore",
        &backup,
        "--data",
        path_str(server.data_dir()),
        "--force",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already open"), "{}", stderr(&out));

    // A file that is no store is refused before anything is touched.
    let junk = dir.path().join("junk.redb");
    std::fs::write(&junk, vec![7u8; 8192]).unwrap();
    let empty = dir.path().join("empty");
    let out = chat_server(&["restore", path_str(&junk), "--data", path_str(&empty)]);
    assert!(!out.status.success());
    assert!(!empty.exists());

    let out = chat_server(&[
        "restore",
        &backup,
        "--data",
        path_str(dir.path()),
        "--force",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.path().join("notes.txt").exists());
    assert!(
        stdout(&out).contains("1 rooms, 1 messages"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn verify_passes_a_sound_store_and_lists_the_damage_of_a_broken_one() {
    let mut server = Server::start();
    let mut alice = server.connect("alice").await;
    for i in 0..5 {
        alice.send_message("alice-bob", &format!("m{i}")).await;
    }
    let data = path_str(server.data_dir()).to_owned();
    // Refused cleanly while the server holds the store.
    let out = chat_server(&["verify", "--data", &data]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already open"), "{}", stderr(&out));

    assert!(server.terminate());
    let out = chat_server(&["verify", "--data", &data]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("ok: 1 rooms, 5 messages"),
        "{}",
        stdout(&out)
    );

    // Delete message 3 behind the server's back.
    {
        let db = redb::Database::open(server.data_dir().join("chat.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let messages: redb::TableDefinition<(u64, u64), &[u8]> =
            redb::TableDefinition::new("messages");
        assert!(txn
            .open_table(messages)
            .unwrap()
            .remove((1, 3))
            .unwrap()
            .is_some());
        txn.commit().unwrap();
    }
    let out = chat_server(&["verify", "--data", &data]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("message id 4 where 3 was expected"), "{err}");
    assert!(err.contains("problem:"), "{err}");
}

#[tokio::test]
async fn compact_reports_sizes_and_the_store_still_serves() {
    let mut server = Server::start();
    let mut alice = server.connect("alice").await;
    let text = "x".repeat(4000);
    for _ in 0..200 {
        alice.send_message("alice-bob", &text).await;
    }
    drop(alice);
    let file = server.data_dir().join("chat.redb");
    let samples = scrape(&server).await;
    assert_eq!(
        value(&samples, "chat_store_file_bytes") as u64,
        std::fs::metadata(&file).unwrap().len()
    );

    let data = path_str(server.data_dir()).to_owned();
    let out = chat_server(&["compact", "--data", &data]);
    assert!(!out.status.success(), "compact ran under a live server");
    assert!(server.terminate());
    let out = chat_server(&["compact", "--data", &data]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line = stdout(&out);
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let [before, after] = numbers[numbers.len() - 2..] else {
        panic!("{line}")
    };
    assert!(after <= before && after > 0, "{line}");
    assert_eq!(after, std::fs::metadata(&file).unwrap().len(), "{line}");

    server.restart();
    let mut bob = server.connect("bob").await;
    let reply = bob
        .request("messages", json!({ "roomId": "alice-bob", "limit": 50 }))
        .await;
    assert_eq!(reply["room"]["messages"][0]["id"], 200, "{reply}");
    let out = chat_server(&["verify", "--data", &data]);
    assert!(!out.status.success(), "the server holds it again");
}

/// The admin API's claim that every action is logged: a server logging at `info` as JSON
/// lines writes exactly one `admin:` line per backup and per erasure, naming what it did.
#[tokio::test]
async fn each_admin_action_logs_one_line_saying_what_it_did() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;

    /// Kills the server however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let mut server = Killed(
        Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--data", path_str(dir.path()), "--bind", "127.0.0.1:0"])
            .env("CHAT_JWT_SECRET", common::SECRET)
            .env("CHAT_ADMIN_SECRET", ADMIN)
            .env("CHAT_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env_remove("CHAT_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("no listening line: {line:?}"))
        .parse()
        .unwrap();

    let (status, backup) = http_request(addr, "POST", "/admin/backup", Some(ADMIN)).await;
    assert_eq!(status, 200, "{backup}");
    let (status, erased) = http_request(addr, "DELETE", "/admin/users/alice", Some(ADMIN)).await;
    assert_eq!(status, 200, "{erased}");
    // Each line is written to stderr as its event happens; the kill cuts nothing.
    let mut stderr = server.0.stderr.take().unwrap();
    drop(server);
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();

    let admin: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("admin:"))
        })
        .collect();
    assert_eq!(admin.len(), 2, "{log}");
    assert_eq!(admin[0]["level"], "INFO");
    assert_eq!(admin[0]["fields"]["message"], "admin: backup written");
    assert_eq!(admin[0]["fields"]["name"], backup["name"], "{log}");
    assert_eq!(admin[1]["level"], "INFO");
    assert_eq!(admin[1]["fields"]["message"], "admin: user erased");
    assert_eq!(admin[1]["fields"]["user"], "alice", "{log}");
    assert_eq!(
        admin[1]["fields"]["messages_tombstoned"],
        erased["messagesTombstoned"]
    );
}
