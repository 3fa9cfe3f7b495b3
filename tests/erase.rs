//! Erasing a user (issue 14, item 5) against the real binary: `DELETE /admin/users/{id}`
//! with the user connected on both dialects, its auth matrix, kill -9 right after the
//! reply, and `chat-server erase-user` on a stopped server's data directory.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{http_request, token_with_claims, unix_now, Server, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const ADMIN: &str = "admin-secret-for-integration-tests";

fn start() -> Server {
    Server::start_with(&[("CHAT_ADMIN_SECRET", ADMIN)])
}

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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn erase(server: &Server, user: &str) -> Value {
    let path = format!("/admin/users/{user}");
    let (status, body) = http_request(server.addr, "DELETE", &path, Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// A room's history as `token`'s holder sees it, newest first.
async fn history(server: &Server, room: &str, token: &str) -> Value {
    let (status, body) = server
        .get(&format!("/api/rooms/{room}/messages"), Some(token))
        .await;
    assert_eq!(status, 200, "{body}");
    body["room"].clone()
}

/// `user`'s inbox row for `room`.
async fn inbox_row(server: &Server, token: &str, room: &str) -> Value {
    let (status, body) = server.get("/api/rooms", Some(token)).await;
    assert_eq!(status, 200, "{body}");
    let rooms = body["rooms"].as_array().unwrap();
    rooms.iter().find(|r| r["roomId"] == room).unwrap().clone()
}

/// Sends alice's and bob's messages; returns how many alice sent.
async fn converse(server: &Server) -> u64 {
    let mut alice = server
        .connect_token("alice", &server.named_token("alice", "Alice"))
        .await;
    let mut bob = server.connect("bob").await;
    let mut sent = 0;
    for (room, text, key) in [
        ("alice-bob", "alice secret one", Some("c1")),
        ("alice-bob", "alice secret two", Some("c2")),
        ("alice-carol", "alice secret to carol", None),
        ("alice-alice", "alice secret note", Some("c1")),
    ] {
        let reply = alice
            .request(
                "message",
                json!({ "userId": "alice", "roomId": room, "message": text,
                        "clientMessageId": key }),
            )
            .await;
        assert_eq!(reply["ok"], true, "{reply}");
        sent += 1;
    }
    let reply = bob
        .request(
            "message",
            json!({ "userId": "bob", "roomId": "alice-bob", "message": "bob stays",
                    "clientMessageId": "c1" }),
        )
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    sent
}

/// Checks alice-bob as bob sees it after alice's erasure: her messages 1 and 2 are
/// tombstones with their ids, bob's 3 is as he sent it.
async fn assert_alice_erased_in_alice_bob(server: &Server) {
    let room = history(server, "alice-bob", &server.token("bob")).await;
    let messages = room["messages"].as_array().unwrap();
    assert_eq!(common::ids(&room["messages"])[..3], [3, 2, 1], "{room}");
    let bob = messages.iter().find(|m| m["id"] == 3).unwrap();
    assert_eq!(
        (&bob["message"], &bob["userId"], &bob["clientMessageId"]),
        (&json!("bob stays"), &json!("bob"), &json!("c1"))
    );
    for m in messages.iter().filter(|m| m["id"] == 1 || m["id"] == 2) {
        assert_eq!(
            (&m["userId"], &m["message"]),
            (&json!("alice"), &json!("")),
            "{m}"
        );
        assert_eq!(m["deleted"], true, "{m}");
        assert!(m["deletedAt"].is_string(), "{m}");
        assert!(m.get("clientMessageId").is_none_or(Value::is_null), "{m}");
    }
    // Her profile is gone: she is named by her id.
    assert_eq!(
        room["user"],
        json!({ "id": "alice", "name": "alice" }),
        "{room}"
    );
}

type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A websocket-only Engine.IO connection to `/socket.io/`, OPEN done, CONNECT sent with
/// `token`; returns it with the server's reply to the CONNECT.
async fn socketio_connect(server: &Server, token: &str) -> (RawWs, String) {
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let open = next_packet(&mut ws).await;
    assert!(open.starts_with("0{"), "{open}");
    let connect = format!("40{}", json!({ "token": token }));
    ws.send(Message::text(connect)).await.unwrap();
    let reply = next_packet(&mut ws).await;
    (ws, reply)
}

/// The next Engine.IO packet other than a heartbeat ping.
async fn next_packet(ws: &mut RawWs) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.as_str() == "2" => {}
            Ok(Some(Ok(Message::Text(text)))) => return text.as_str().to_owned(),
            other => panic!("expected a packet, got {other:?}"),
        }
    }
}

/// Waits until a token minted now is issued after an erasure at `erased_at_ms` (its `iat`
/// has whole seconds: the erasure's second, rounded up).
async fn wait_past_erasure(erased_at_ms: i64) {
    let from = (erased_at_ms as u64).div_ceil(1000);
    while unix_now() < from {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn erasing_a_connected_user_closes_both_dialects_tombstones_her_messages_and_refuses_her_old_tokens(
) {
    let server = start();
    let alice_sent = converse(&server).await;
    let bob_token = server.token("bob");
    let unread_before = inbox_row(&server, &bob_token, "alice-bob").await["unread"].clone();
    assert_eq!(unread_before, 2);
    // The latest-50 cache of alice-bob is warm with her texts now.
    let mut bob = server.connect("bob").await;
    let old_token = server.token("alice");
    let mut alice_plain = server.connect_token("alice", &old_token).await;
    let (mut alice_sio, reply) = socketio_connect(&server, &old_token).await;
    assert!(reply.starts_with("40{\"sid\""), "{reply}");

    let report = erase(&server, "alice").await;
    assert_eq!(report["userId"], "alice");
    assert_eq!(report["messagesTombstoned"], alice_sent, "{report}");
    assert_eq!(report["roomsTouched"], 3, "{report}");
    assert_eq!(report["connectionsClosed"], 2, "{report}");
    let erased_at = report["erasedAtMs"].as_i64().expect("erasedAtMs");

    // Both of her connections are closed: the plain one with 4003, Socket.IO with a
    // DISCONNECT of the namespace.
    assert_eq!(
        alice_plain.close_frame().await,
        (CloseCode::Library(4003), "user erased".to_owned())
    );
    assert_eq!(next_packet(&mut alice_sio).await, "41");

    assert_alice_erased_in_alice_bob(&server).await;
    let seen = history(&server, "alice-carol", &server.token("carol")).await;
    let message = &seen["messages"][0];
    assert_eq!(
        (&message["message"], &message["deleted"]),
        (&json!(""), &json!(true))
    );
    // bob's unread count is what it was: her tombstones are still messages he has not seen.
    let row = inbox_row(&server, &bob_token, "alice-bob").await;
    assert_eq!(row["unread"], unread_before, "{row}");
    // bob's next send carries the room's latest messages: not from a stale cache.
    let reply = bob.send_message("alice-bob", "after the erasure").await;
    assert_eq!(reply["ok"], true, "{reply}");
    let snapshot = loop {
        let event = bob.recv().await;
        if event["event"] == "message:sent" && event["data"]["messages"][0]["id"] == 4 {
            break event["data"].to_string();
        }
    };
    assert!(!snapshot.contains("alice secret"), "{snapshot}");

    // Every token issued before the erasure is refused, on every way in.
    let (status, body) = server.get("/api/rooms", Some(&old_token)).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("unauthorized")),
        "{body}"
    );
    let (status, _) = server
        .refused_handshake(&format!("/ws?token={old_token}"), None)
        .await;
    assert_eq!(status, 401);
    let (_sio, reply) = socketio_connect(&server, &old_token).await;
    assert!(reply.starts_with("44"), "{reply}");
    // A token without `iat` cannot show it is newer, even long after.
    let no_iat = token_with_claims(&json!({ "sub": "alice", "exp": unix_now() + 600 }));
    let (status, _) = server.get("/api/rooms", Some(&no_iat)).await;
    assert_eq!(status, 401);
    // Other users are not affected.
    let (status, _) = server.get("/api/rooms", Some(&bob_token)).await;
    assert_eq!(status, 200);

    // A token issued after the erasure works: a fresh start with no profile, and her old
    // clientMessageId is no longer a duplicate.
    wait_past_erasure(erased_at).await;
    let mut alice = server.connect("alice").await;
    let (_sio, reply) = socketio_connect(&server, &server.token("alice")).await;
    assert!(reply.starts_with("40{\"sid\""), "{reply}");
    let reply = alice
        .request(
            "message",
            json!({ "userId": "alice", "roomId": "alice-bob", "message": "hello again",
                    "clientMessageId": "c1" }),
        )
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(
        reply["message"]["id"], 5,
        "a new message, not the old one: {reply}"
    );
    assert_eq!(reply["message"]["message"], "hello again");
    let room = history(&server, "alice-bob", &bob_token).await;
    assert_eq!(room["user"]["name"], "alice");
    let note = history(&server, "alice-alice", &server.token("alice")).await;
    let message = &note["messages"][0];
    assert_eq!(
        (&message["message"], &message["deleted"]),
        (&json!(""), &json!(true))
    );
}

#[tokio::test]
async fn the_erase_endpoint_passes_the_admin_auth_matrix_and_refuses_a_bad_id() {
    let server = start();
    converse(&server).await;
    let user = server.token("alice");
    for (token, why) in [
        (None, "no header"),
        (Some(user.as_str()), "a user token"),
        (Some("admin-secret-for-integration-test"), "a wrong secret"),
        (Some(common::SECRET), "the JWT secret"),
    ] {
        let (status, body) = http_request(server.addr, "DELETE", "/admin/users/alice", token).await;
        assert_eq!(status, 401, "with {why}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }
    // Nothing was erased by the refused requests.
    let (status, _) = server.get("/api/rooms", Some(&user)).await;
    assert_eq!(status, 200);
    let room = history(&server, "alice-bob", &server.token("bob")).await;
    assert_eq!(room["messages"][2]["message"], "alice secret one");

    for bad in ["a%2Fb", "%zz", &"x".repeat(65)] {
        let path = format!("/admin/users/{bad}");
        let (status, body) = http_request(server.addr, "DELETE", &path, Some(ADMIN)).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // A percent-encoded id is decoded; a user with nothing stored erases to zero counts.
    let (status, body) =
        http_request(server.addr, "DELETE", "/admin/users/n%40body", Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            &body["userId"],
            &body["messagesTombstoned"],
            &body["roomsTouched"]
        ),
        (&json!("n@body"), &json!(0), &json!(0))
    );
    let erased = erase(&server, "alice").await;
    assert_eq!(erased["messagesTombstoned"], 4, "{erased}");
    // Again: nothing left to tombstone, and the erasure time moves forward.
    let again = erase(&server, "alice").await;
    assert_eq!(
        (&again["messagesTombstoned"], &again["roomsTouched"]),
        (&json!(0), &json!(0))
    );
    assert!(again["erasedAtMs"].as_i64() >= erased["erasedAtMs"].as_i64());
}

#[tokio::test]
async fn an_erasure_holds_after_kill_9_right_after_the_reply_and_verifies() {
    let mut server = start();
    converse(&server).await;
    let old_token = server.token("alice");
    erase(&server, "alice").await;
    server.kill9();
    server.restart();

    assert_alice_erased_in_alice_bob(&server).await;
    let (status, _) = server.get("/api/rooms", Some(&old_token)).await;
    assert_eq!(status, 401);
    assert!(server.terminate(), "clean shutdown");
    if common::cluster_mode() {
        return; // `verify` checks the embedded store's file; PostgreSQL has none.
    }
    let data = server.data_dir().to_str().unwrap().to_owned();
    let out = chat_server(&["verify", "--data", &data]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let report = text(&out.stdout);
    assert!(report.contains("1 erased users"), "{report}");
    // Her keys left the index: bob's c1 is the only one of alice-bob's.
    assert!(report.contains("1 clientMessageId index rows"), "{report}");
}

#[tokio::test]
async fn erase_user_works_offline_on_a_stopped_store_and_refuses_a_running_one() {
    if common::cluster_mode() {
        return; // Offline `erase-user` works on the embedded store's file only.
    }
    let mut server = start();
    converse(&server).await;
    let old_token = server.token("alice");
    let data = server.data_dir().to_str().unwrap().to_owned();

    let out = chat_server(&["erase-user", "alice", "--data", &data]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("stop it first"), "{err}");
    assert!(server.terminate(), "clean shutdown");

    let out = chat_server(&["erase-user", "alice", "--data", &data]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_str(text(&out.stdout).trim()).expect("a JSON report");
    assert_eq!(
        (
            &report["messagesTombstoned"],
            &report["roomsTouched"],
            &report["connectionsClosed"]
        ),
        (&json!(4), &json!(3), &json!(0)),
        "{report}"
    );
    let out = chat_server(&["verify", "--data", &data]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // Bad input changes nothing: an invalid id, a directory with no store (none created).
    let out = chat_server(&["erase-user", "not/valid", "--data", &data]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let empty = tempfile::tempdir().unwrap();
    let nowhere = empty.path().join("none");
    let out = chat_server(&["erase-user", "alice", "--data", nowhere.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(!nowhere.exists());

    server.restart();
    assert_alice_erased_in_alice_bob(&server).await;
    let (status, _) = server.get("/api/rooms", Some(&old_token)).await;
    assert_eq!(status, 401);
}
