//! The Socket.IO dialect with the official `socket.io-client` (tests/js/socketio.test.mjs):
//! this file starts the real server, mints the tokens, plays the plain-dialect tabs and
//! kills the server when the JavaScript side asks, and requires node to exit 0.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chat_server::auth::Auth;
use common::{token_with_claims, unix_now, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// What the JavaScript side prints when it wants the server killed and restarted.
const RESTART_MARKER: &str = "##KILL-AND-RESTART-SERVER##";
/// How long one node run may take before the watchdog kills it.
const NODE_DEADLINE: Duration = Duration::from_secs(180);
/// What it prints when it wants the server shut down gracefully.
const TERMINATE_MARKER: &str = "##TERMINATE-SERVER##";

/// Starts `node socketio.test.mjs` for one scenario, with tokens for `users` plus a forged
/// and an expired token for alice.
fn start_node(server: &Server, scenario: &str, users: &[&str]) -> Child {
    node_command(server, scenario, users)
        .spawn()
        .expect("node is needed for the Socket.IO tests")
}

/// The command [`start_node`] runs, for a test that passes more tokens.
fn node_command(server: &Server, scenario: &str, users: &[&str]) -> Command {
    let forged =
        Auth::new(b"not the server's secret").mint("alice", None, Duration::from_secs(600));
    let expired = token_with_claims(&json!({ "sub": "alice", "exp": unix_now() - 120 }));
    let mut command = Command::new("node");
    command
        .arg("socketio.test.mjs")
        .current_dir(common::js_dir())
        .env("CHAT_URL", server.url(""))
        .env("SIO_SCENARIO", scenario)
        .env("TOKEN_FORGED", forged)
        .env("TOKEN_EXPIRED", expired)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for user in users {
        command.env(format!("TOKEN_{}", user.to_uppercase()), server.token(user));
    }
    command
}

/// Runs node to the end (see [`common::finish_node`]) and checks that node:test ran cases
/// and none failed.
fn finish_node(node: Child, on_line: impl FnMut(&str)) {
    let stdout = common::finish_node(node, NODE_DEADLINE, on_line);
    // node:test prints its counts; a run that defined no test would still exit 0.
    assert!(stdout.contains("# fail 0"), "{stdout}");
    assert!(!stdout.contains("# pass 0"), "no test ran:\n{stdout}");
}

#[test]
fn socketio_client_speaks_the_protocol() {
    let server = Server::start_with(&[("CHAT_LIMITS_MAX_CONNECTIONS_PER_USER", "3")]);
    // erin renames herself twice; fay connects with a name for the first time.
    let node = node_command(&server, "protocol", &["alice", "bob", "dave"])
        .env("TOKEN_ERIN_1", server.named_token("erin", "Erin Old"))
        .env("TOKEN_ERIN_2", server.named_token("erin", "Erin"))
        .env("TOKEN_ERIN_3", server.named_token("erin", "Erin M."))
        .env("TOKEN_FAY", server.named_token("fay", "Fay"))
        .spawn()
        .expect("node is needed for the Socket.IO tests");
    finish_node(node, |_| {});
}

#[tokio::test]
async fn a_socketio_tab_and_a_plain_tab_of_one_user_share_every_event() {
    let server = Server::start();
    let mut alice_plain = server.connect("alice").await;
    let mut bob_plain = server.connect("bob").await;
    let node = start_node(&server, "tabs", &["alice"]);

    // The Socket.IO tab's message reaches alice's plain tab and bob.
    let room = alice_plain.recv_event("message:sent").await;
    assert_eq!(room["messages"][0]["clientMessageId"], "from-socketio");
    let id = room["messages"][0]["id"].clone();
    let room = bob_plain.recv_event("message:sent").await;
    assert_eq!(room["messages"][0]["clientMessageId"], "from-socketio");

    // The plain tab's message reaches the Socket.IO tab.
    let reply = alice_plain
        .request(
            "message",
            json!({ "userId": "alice", "roomId": "alice-bob", "message": "typed in the plain tab",
                    "clientMessageId": "from-plain" }),
        )
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let room = alice_plain.recv_event("message:sent").await;
    assert_eq!(room["messages"][0]["clientMessageId"], "from-plain");

    // bob reads: message:seen goes to both of alice's tabs.
    let read = bob_plain
        .request(
            "message:read",
            json!([{ "userId": "bob", "roomId": "alice-bob", "messageId": id,
                     "seenDate": "2030-01-01T00:00:00.000Z" }]),
        )
        .await;
    assert_eq!(read["seen"].as_array().unwrap().len(), 1, "{read}");
    alice_plain.recv_event("message:delivered").await;
    let seen = alice_plain.recv_event("message:seen").await;
    assert_eq!(seen[0]["messageId"], id);

    tokio::task::spawn_blocking(move || finish_node(node, |_| {}))
        .await
        .unwrap();
}

#[test]
fn socketio_client_reconnects_after_a_restart_and_resends_without_duplicates() {
    let mut server = Server::start();
    let node = start_node(&server, "restart", &["alice"]);
    let mut restarted = false;
    finish_node(node, |line| {
        if line.trim() == RESTART_MARKER {
            server.kill9();
            server.restart_same_port();
            restarted = true;
        }
    });
    assert!(restarted, "the JavaScript side never asked for the restart");
}

#[test]
fn a_graceful_shutdown_disconnects_socketio_clients_promptly() {
    let mut server = Server::start();
    let node = start_node(&server, "shutdown", &["alice"]);
    let mut stopped_in = None;
    finish_node(node, |line| {
        if line.trim() == TERMINATE_MARKER {
            let started = std::time::Instant::now();
            assert!(server.terminate(), "the server exited with an error");
            stopped_in = Some(started.elapsed());
        }
    });
    let stopped_in = stopped_in.expect("the JavaScript side never asked for the shutdown");
    // Sockets that are not closed hold the drain until its 10 s grace period ends.
    assert!(
        stopped_in < Duration::from_secs(8),
        "shutdown took {stopped_in:?}"
    );
}

/// One HTTP/1.1 request over a fresh connection; returns the whole response as text.
async fn raw_http(server: &Server, method: &str, path: &str, headers: &str, body: &str) -> String {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\n{headers}Content-Type: text/plain;charset=UTF-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        server.addr,
        body.len()
    );
    String::from_utf8(common::raw_request(server.addr, &head, body.as_bytes()).await).unwrap()
}

/// Opens an Engine.IO long-polling session, connects it to `/` with `token` and polls for
/// the CONNECT reply; returns the session id. The caller then never polls again: a client that
/// stopped reading.
async fn polling_session(server: &Server, token: &str) -> String {
    let open = raw_http(server, "GET", "/socket.io/?EIO=4&transport=polling", "", "").await;
    let sid = open
        .split("\"sid\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no sid in {open}"))
        .to_owned();
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let connect = format!("40{}", json!({ "token": token }));
    let posted = raw_http(server, "POST", &path, "", &connect).await;
    assert!(posted.starts_with("HTTP/1.1 200"), "{posted}");
    // The POST is answered once Engine.IO has the packet; admission runs after that. Poll
    // until the CONNECT reply comes (Engine.IO's first ping may come before it), so the
    // socket holds its slot before the caller goes on.
    for _ in 0..3 {
        let polled = raw_http(server, "GET", &path, "", "").await;
        if polled.contains("40{\"sid\"") {
            return sid;
        }
        assert!(
            polled.ends_with("\r\n\r\n2"),
            "neither CONNECT nor ping: {polled}"
        );
    }
    panic!("no CONNECT reply after three polls");
}

#[tokio::test]
async fn polling_requests_from_allowed_origins_get_cors_headers() {
    let server = Server::start_with(&[("CHAT_CORS_ALLOWED_ORIGINS", "http://app.example")]);
    let handshake = "/socket.io/?EIO=4&transport=polling";
    let allowed = raw_http(
        &server,
        "GET",
        handshake,
        "Origin: http://app.example\r\n",
        "",
    )
    .await;
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    assert!(
        allowed
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: http://app.example"),
        "{allowed}"
    );
    let other = raw_http(
        &server,
        "GET",
        handshake,
        "Origin: http://evil.example\r\n",
        "",
    )
    .await;
    assert!(
        !other
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{other}"
    );
    let preflight = raw_http(
        &server,
        "OPTIONS",
        "/api/rooms",
        "Origin: http://app.example\r\nAccess-Control-Request-Method: GET\r\n\
         Access-Control-Request-Headers: authorization\r\n",
        "",
    )
    .await;
    let preflight = preflight.to_ascii_lowercase();
    assert!(
        preflight.contains("access-control-allow-origin: http://app.example"),
        "{preflight}"
    );
    assert!(preflight.contains("authorization"), "{preflight}");
}

#[tokio::test]
async fn a_socketio_client_that_stops_reading_is_cut_off() {
    let server = Server::start_with(&[
        ("CHAT_LIMITS_MAX_OUTBOUND_BYTES", "65536"),
        ("CHAT_LIMITS_MAX_CONNECTIONS_PER_USER", "1"),
    ]);
    let _stalled = polling_session(&server, &server.token("sam")).await;
    // While the stalled socket holds sam's only slot, another connection is refused.
    let (status, _) = server
        .refused_handshake(&format!("/ws?token={}", server.token("sam")), None)
        .await;
    assert_eq!(status, 429);

    // bob writes until Engine.IO's buffer and then the hub's 64 KiB bound are full (each
    // message:sent carries up to 50 messages, about 5 KiB here).
    let mut bob = server.connect("bob").await;
    for i in 0..120 {
        let reply = bob.send_message("bob-sam", &format!("message {i}")).await;
        assert_eq!(reply["ok"], true, "{reply}");
    }
    // Cut off, the stalled socket gave its slot back.
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let url = format!("ws://{}/ws?token={}", server.addr, server.token("sam"));
        if tokio_tungstenite::connect_async(url).await.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow consumer kept its slot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A websocket-only Engine.IO client, connected to `/` as `user` (OPEN, CONNECT, and the
/// CONNECT reply done).
async fn socketio_ws(server: &Server, user: &str) -> RawWs {
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let open = next_packet(&mut ws).await;
    assert!(open.starts_with("0{"), "{open}");
    let connect = format!("40{}", json!({ "token": server.token(user) }));
    ws.send(Message::text(connect)).await.unwrap();
    let reply = next_packet(&mut ws).await;
    assert!(reply.starts_with("40{\"sid\""), "{reply}");
    ws
}

/// The next Engine.IO packet other than a heartbeat ping.
async fn next_packet(ws: &mut RawWs) -> String {
    loop {
        match tokio::time::timeout(common::WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.as_str() == "2" => {}
            Ok(Some(Ok(Message::Text(text)))) => return text.as_str().to_owned(),
            other => panic!("expected a packet, got {other:?}"),
        }
    }
}

/// Expects the close frame with 1009 and the plain dialect's reason, then the end.
async fn expect_close_1009(ws: &mut RawWs) {
    use tokio::io::AsyncReadExt;
    loop {
        match tokio::time::timeout(common::WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.as_str() == "2" => {}
            Ok(Some(Ok(Message::Pong(_)))) => {}
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                assert_eq!(frame.code, CloseCode::Size);
                assert_eq!(frame.reason.as_str(), "message too large");
                break;
            }
            other => panic!("expected close 1009, got {other:?}"),
        }
    }
    // Then the server closes the TCP connection with a FIN, not a reset (which the client's
    // WebSocket library would hide after a close frame): it read the rest of the message.
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_mut() else {
        unreachable!("ws:// is plain TCP")
    };
    let mut rest = [0u8; 64];
    match tokio::time::timeout(common::WAIT, tcp.read(&mut rest)).await {
        Ok(Ok(0)) => {}
        other => panic!("expected a clean end of the connection, got {other:?}"),
    }
}

#[tokio::test]
async fn an_oversize_socketio_message_closes_only_that_connection_with_1009() {
    let server = Server::start();
    let mut alice = socketio_ws(&server, "alice").await;
    let mut bob = server.connect("bob").await;

    // A 65536-byte WebSocket message (the default limits.max_frame_bytes) is answered.
    let prefix = r#"421["message",{"userId":"alice","roomId":"alice-bob","message":""#;
    let suffix = r#""}]"#;
    let fill = 65536 - prefix.len() - suffix.len();
    let packet = format!("{prefix}{}{suffix}", "x".repeat(fill));
    assert_eq!(packet.len(), 65536);
    alice.send(Message::text(packet)).await.unwrap();
    let reply = next_packet(&mut alice).await;
    assert!(
        reply.starts_with("431[") && reply.contains("message_too_large"),
        "{reply}"
    );

    // One byte more closes the connection with 1009.
    alice
        .send(Message::text(format!("42{}", "x".repeat(65535))))
        .await
        .unwrap();
    expect_close_1009(&mut alice).await;

    let ack = bob.send_message("alice-bob", "still here").await;
    assert_eq!(ack["ok"], true, "{ack}");
    let mut again = socketio_ws(&server, "alice").await;
    again.send(Message::text("421[\"rooms\"]")).await.unwrap();
    let reply = next_packet(&mut again).await;
    assert!(
        reply.starts_with("431[") && reply.contains("\"ok\":true"),
        "{reply}"
    );
}

#[tokio::test]
async fn a_fragmented_socketio_message_counts_all_its_fragments() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    let server = Server::start_with(&[
        ("CHAT_LIMITS_MAX_FRAME_BYTES", "1000"),
        ("CHAT_LIMITS_MAX_MESSAGE_BYTES", "500"),
    ]);
    let mut alice = socketio_ws(&server, "alice").await;
    // Each fragment is under the limit, the message is not; a ping in between counts nothing.
    let first = Frame::message(
        format!("42{}", "x".repeat(598)),
        OpCode::Data(Data::Text),
        false,
    );
    alice.send(Message::Frame(first)).await.unwrap();
    alice.send(Message::Ping("p".into())).await.unwrap();
    let last = Frame::message("y".repeat(401), OpCode::Data(Data::Continue), true);
    alice.send(Message::Frame(last)).await.unwrap();
    expect_close_1009(&mut alice).await;
}
