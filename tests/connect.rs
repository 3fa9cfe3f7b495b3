//! Handshakes, authentication, connection limits, HTTP basics, frame size.

mod common;

use std::time::Duration;

use chat_server::auth::Auth;
use common::{token_with_claims, unix_now, Server};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn bad_tokens_get_401_before_the_upgrade() {
    let server = Server::start();
    let forged = Auth::new(b"another secret").mint("alice", None, Duration::from_secs(60));
    let expired = token_with_claims(&json!({"sub": "alice", "exp": unix_now() - 120}));
    let bad_sub = token_with_claims(&json!({"sub": "not valid!", "exp": unix_now() + 120}));
    for path in [
        "/ws".to_string(),
        "/ws?token=".to_string(),
        "/ws?token=garbage".to_string(),
        format!("/ws?token={forged}"),
        format!("/ws?token={expired}"),
        format!("/ws?token={bad_sub}"),
    ] {
        let (status, body) = server.refused_handshake(&path, None).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(body["error"]["code"], "unauthorized", "{path}");
    }
    // The Authorization header wins over the query parameter.
    let good = server.token("alice");
    let (status, _) = server
        .refused_handshake(&format!("/ws?token={good}"), Some(&forged))
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_bearer_header_alone_is_enough() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = Server::start();
    let mut request = format!("ws://{}/ws?token=garbage", server.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("bearer {}", server.token("alice")).parse().unwrap(),
    );
    let (_ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
}

#[tokio::test]
async fn per_user_connection_cap_answers_429() {
    let server = Server::start_with(&[("CHAT_LIMITS_MAX_CONNECTIONS_PER_USER", "2")]);
    let _one = server.connect("alice").await;
    let two = server.connect("alice").await;
    let token = server.token("alice");
    let (status, body) = server
        .refused_handshake(&format!("/ws?token={token}"), None)
        .await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "too_many_connections");
    // Another user is unaffected, and a slot frees when a tab closes.
    let _bob = server.connect("bob").await;
    drop(two);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (status, _) = server.get("/healthz", None).await;
        assert_eq!(status, 200);
        if tokio_tungstenite::connect_async(format!("ws://{}/ws?token={token}", server.addr))
            .await
            .is_ok()
        {
            return;
        }
    }
    panic!("the freed slot was never reusable");
}

#[tokio::test]
async fn http_basics() {
    let server = Server::start();
    let (status, body) = server.get("/healthz", None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = server.get("/no/such/path", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let token = server.token("alice");
    let (status, body) = server.get("/ws", Some(&token)).await;
    assert_eq!(status, 400, "a plain GET on /ws is not an upgrade: {body}");
    assert_eq!(body["error"]["code"], "bad_request");
}

#[tokio::test]
async fn an_oversize_frame_closes_only_that_connection_with_1009() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;

    // Exactly 65536 bytes is allowed: it is answered, not closed.
    let prefix = r#"{"event":"message","data":{"userId":"alice","roomId":"alice-bob","message":""#;
    let suffix = r#""},"ack":1}"#;
    let fill = 65536 - prefix.len() - suffix.len();
    let frame = format!("{prefix}{}{suffix}", "x".repeat(fill));
    assert_eq!(frame.len(), 65536);
    alice.send_raw(Message::text(frame)).await;
    let reply = alice.wait_ack(json!(1)).await;
    assert_eq!(reply["error"]["code"], "message_too_large");

    alice.send_raw(Message::text("x".repeat(65537))).await;
    match alice.recv_raw().await {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Size),
        other => panic!("expected close 1009, got {other:?}"),
    }
    let ack = bob.send_message("alice-bob", "still here").await;
    assert_eq!(ack["ok"], true);
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    use futures_util::SinkExt;
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    alice.ws.send(Message::Close(None)).await.unwrap();
    match alice.recv_raw().await {
        Some(Message::Close(_)) => {}
        other => panic!("expected the close reply, got {other:?}"),
    }
}
