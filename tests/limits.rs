//! Limits against misbehaving clients (PROTOCOL.md sections 6 and 8), on the real binary:
//! rate limits, slow consumers, liveness, HTTP body size and header timeout.

mod common;

use std::time::{Duration, Instant};

use common::metrics::{scrape, value};
use common::{RawFrame, Server};
use serde_json::{json, Value};

fn send(user: &str, room: &str, text: &str, client_id: &str) -> Value {
    json!({ "userId": user, "roomId": room, "message": text, "clientMessageId": client_id })
}

fn assert_rate_limited(reply: &Value) -> u64 {
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
    let retry = &reply["error"]["retryAfterMs"];
    assert!(retry.is_u64(), "retryAfterMs must be an integer: {reply}");
    let retry = retry.as_u64().unwrap();
    assert!((1..=1000).contains(&retry), "{reply}");
    retry
}

async fn history_len(client: &mut common::Client, room: &str) -> usize {
    let page = client.request("messages", json!({ "roomId": room })).await;
    page["room"]["messages"].as_array().expect("messages").len()
}

#[tokio::test]
async fn a_flood_is_rate_limited_stores_nothing_and_others_still_flow() {
    let server = Server::start_with(&[
        ("CHAT_LIMITS_SEND_RATE_PER_SEC", "1"),
        ("CHAT_LIMITS_SEND_BURST", "5"),
    ]);
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut carol = server.connect("carol").await;

    for i in 0..5 {
        let ack = alice
            .request(
                "message",
                send("alice", "alice-bob", "hi", &format!("c{i}")),
            )
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
    }
    // The burst is spent: the flood is refused, and each refusal says when to retry.
    for i in 5..15 {
        let ack = alice
            .request(
                "message",
                send("alice", "alice-bob", "spam", &format!("c{i}")),
            )
            .await;
        assert_rate_limited(&ack);
    }
    // Without an ack the refusal is an error event with the same fields.
    alice
        .emit("message", send("alice", "alice-bob", "spam", "no-ack"))
        .await;
    let error = loop {
        let frame = alice.recv().await;
        if frame["event"] == "error" {
            break frame["data"].clone();
        }
        assert_eq!(frame["event"], "message:sent", "{frame}");
    };
    assert_eq!(error["code"], "rate_limited");
    assert_eq!(error["event"], "message");
    assert!(error["retryAfterMs"].is_u64(), "{error}");

    // Another user is not affected.
    let ack = bob
        .request("message", send("bob", "bob-carol", "still here", "b1"))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(
        carol.recv_event("message:sent").await["messages"][0]["message"],
        "still here"
    );

    // A retry of a stored message is served while the bucket is empty, storing nothing.
    let retry = alice
        .request("message", send("alice", "alice-bob", "hi", "c2"))
        .await;
    assert_eq!(retry["ok"], true, "{retry}");
    assert_eq!(retry["message"]["id"], 3);
    // Nothing refused was stored: bob's view of the room has the 5 accepted messages.
    assert_eq!(history_len(&mut bob, "alice-bob").await, 5);

    // Once a token is back, a retry does not use it up: the next new message gets it.
    let wait = assert_rate_limited(
        &alice
            .request("message", send("alice", "alice-bob", "spam", "c99"))
            .await,
    );
    tokio::time::sleep(Duration::from_millis(wait + 20)).await;
    let retry = alice
        .request("message", send("alice", "alice-bob", "hi", "c0"))
        .await;
    assert_eq!(retry["message"]["id"], 1, "{retry}");
    let fresh = alice
        .request(
            "message",
            send("alice", "alice-bob", "after the wait", "c100"),
        )
        .await;
    assert_eq!(fresh["ok"], true, "{fresh}");
    assert_eq!(fresh["message"]["id"], 6);
    assert_rate_limited(
        &alice
            .request("message", send("alice", "alice-bob", "spam", "c101"))
            .await,
    );
    assert_eq!(history_len(&mut bob, "alice-bob").await, 6);
}

#[tokio::test]
async fn requests_share_a_looser_bucket_across_socket_and_http() {
    let server = Server::start_with(&[
        ("CHAT_LIMITS_REQUEST_RATE_PER_SEC", "1"),
        ("CHAT_LIMITS_REQUEST_BURST", "4"),
    ]);
    let token = server.token("alice");
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;

    // Sends draw from the other bucket.
    let sent = bob
        .request("message", send("bob", "alice-bob", "hello", "m1"))
        .await;
    assert_eq!(sent["ok"], true);
    alice.recv_event("message:sent").await;

    assert_eq!(
        alice
            .request("typing", json!({"roomId": "alice-bob"}))
            .await["ok"],
        true
    );
    assert_eq!(alice.request("rooms", json!({})).await["ok"], true);
    let (status, _) = server.get("/api/rooms", Some(&token)).await;
    assert_eq!(status, 200);
    let (status, _) = server
        .get("/api/rooms/alice-bob/messages", Some(&token))
        .await;
    assert_eq!(status, 200);

    // Four tokens used by socket and HTTP together: everything else is refused now.
    assert_rate_limited(
        &alice
            .request("typing", json!({"roomId": "alice-bob"}))
            .await,
    );
    assert_rate_limited(&alice.request("rooms", json!({})).await);
    assert_rate_limited(
        &alice
            .request("messages", json!({"roomId": "alice-bob"}))
            .await,
    );
    let read = alice
        .request(
            "message:read",
            json!([{ "userId": "alice", "roomId": "alice-bob", "messageId": 1,
                     "seenDate": "2026-01-01T00:00:00.000Z" }]),
        )
        .await;
    assert_rate_limited(&read);
    let (status, body) = server.get("/api/rooms", Some(&token)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(body["error"]["retryAfterMs"].is_u64(), "{body}");

    // Frames refused before the rate limit are refused for their own reason.
    let bad = alice.request("typing", json!({})).await;
    assert_eq!(bad["error"]["code"], "bad_request", "{bad}");
    let forbidden = alice
        .request("typing", json!({"roomId": "bob-carol"}))
        .await;
    assert_eq!(forbidden["error"]["code"], "forbidden", "{forbidden}");
    let bad_read = alice.request("message:read", json!([])).await;
    assert_eq!(bad_read["error"]["code"], "bad_request", "{bad_read}");

    // Sends still flow, and the rate-limited read marked nothing: bob's message is unseen.
    let sent = alice
        .request("message", send("alice", "alice-bob", "again", "m2"))
        .await;
    assert_eq!(sent["ok"], true, "{sent}");
    let page = bob
        .request("messages", json!({"roomId": "alice-bob"}))
        .await;
    assert_eq!(page["ok"], true, "bob has his own bucket: {page}");
    let messages = page["room"]["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["userId"], "bob");
    assert!(messages[1]["seenAt"].is_null(), "{page}");

    // After the advertised wait exactly one request passes.
    let wait = assert_rate_limited(&alice.request("rooms", json!({})).await);
    tokio::time::sleep(Duration::from_millis(wait + 20)).await;
    assert_eq!(alice.request("rooms", json!({})).await["ok"], true);
    assert_rate_limited(&alice.request("rooms", json!({})).await);
}

/// The value of an unlabelled or labelled sample in a /metrics page.
async fn metric(server: &Server, series: &str) -> f64 {
    value(&scrape(server).await, series)
}

/// Sends messages into `room` until `chat_slow_consumers_total` reaches `cut_off`.
async fn flood_until_cut_off(
    server: &Server,
    sender: &mut common::Client,
    room: &str,
    text: &str,
    cut_off: usize,
) {
    let mut sent = 0;
    while metric(server, "chat_slow_consumers_total").await < cut_off as f64 {
        assert!(
            sent < 300,
            "stalled clients not cut off after {sent} messages"
        );
        for _ in 0..5 {
            let id = format!("{room}-{sent}");
            let ack = sender
                .request("message", send("alice", room, text, &id))
                .await;
            assert_eq!(ack["ok"], true, "{ack}");
            sent += 1;
        }
    }
}

#[tokio::test]
async fn stalled_clients_are_cut_off_while_others_flow_and_memory_stays_bounded() {
    const STALLED: usize = 200;
    let server = Server::start_with(&[
        ("CHAT_LIMITS_MAX_OUTBOUND_BYTES", "131072"),
        ("CHAT_LIMITS_MAX_CONNECTIONS_PER_USER", "256"),
    ]);
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut carol = server.connect("carol").await;

    // 200 connections of one user that never read, with tiny receive windows.
    let mut stalled = Vec::with_capacity(STALLED);
    for _ in 0..STALLED {
        stalled.push(server.raw_ws("stalled", Some(4096)).await);
    }
    let rss_before = server.rss_kib();

    // Every message to the stalled user's room goes to all 200; each message:sent carries
    // the latest 50, so the events grow to ~105 KB (less than the bound, so readers keep
    // up). Loopback sockets absorb a few MB each before writes block, so keep sending
    // until every stalled queue has overflowed.
    let text = "x".repeat(2000);
    flood_until_cut_off(&server, &mut alice, "alice-stalled", &text, STALLED).await;

    // A normal conversation is not slowed down by the stalled ones.
    let started = Instant::now();
    let ack = bob
        .request("message", send("bob", "bob-carol", "prompt", "p1"))
        .await;
    assert_eq!(ack["ok"], true);
    let sent = carol.recv_event("message:sent").await;
    assert_eq!(sent["messages"][0]["message"], "prompt");
    let latency = started.elapsed();
    bob.recv_event("message:sent").await;
    assert!(latency < Duration::from_secs(1), "took {latency:?}");

    let rss_peak = server.rss_kib();
    // Queued events are shared, not copied; a blocked socket holds one frame (~105 KB):
    // 200 of them are 21 MiB. Allow the allocator its slack; without the bound the
    // queues alone would hold 200 x several MB.
    assert!(
        rss_peak < rss_before + 96 * 1024,
        "RSS grew from {rss_before} KiB to {rss_peak} KiB"
    );

    // A stalled client that reads within the grace period gets the close with 1008.
    let mut reader = server.raw_ws("late", Some(4096)).await;
    flood_until_cut_off(&server, &mut alice, "alice-late", &text, STALLED + 1).await;
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match reader.next_frame().await {
                Some(RawFrame::Close(code)) => return code,
                Some(_) => continue,
                None => panic!("connection ended without a close frame"),
            }
        }
    })
    .await
    .expect("a close frame in time");
    assert_eq!(close, Some(1008));

    // The rest are dropped once the close grace (5 s) has passed: only the 3 readers stay.
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&server, "chat_connections{dialect=\"plain\"}").await > 3.0 {
        assert!(
            Instant::now() < deadline,
            "stalled connections were not dropped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(server.rss_kib() < rss_before + 96 * 1024);
    // The readers were never cut off.
    let ack = alice
        .request("message", send("alice", "alice-bob", "after", "a1"))
        .await;
    assert_eq!(ack["ok"], true);
    assert_eq!(
        bob.recv_event("message:sent").await["messages"][0]["message"],
        "after"
    );
}

#[tokio::test]
async fn a_silent_peer_is_pinged_then_dropped_while_a_talking_one_stays() {
    let server = Server::start_with(&[
        ("CHAT_LIMITS_PING_AFTER_SECS", "1"),
        ("CHAT_LIMITS_IDLE_TIMEOUT_SECS", "1"),
    ]);
    let mut silent = server.raw_ws("silent", None).await;
    let mut talker = server.connect("talker").await;
    let started = Instant::now();

    let talking = async {
        // A frame every 400 ms keeps the connection alive for well past both timeouts.
        while started.elapsed() < Duration::from_millis(3500) {
            let reply = talker.request("rooms", json!({})).await;
            assert_eq!(reply["ok"], true);
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    };
    let dropping = async {
        // Reading is not traffic from the client: the silent peer is pinged, then closed.
        let first = silent.next_frame().await;
        assert!(matches!(first, Some(RawFrame::Ping)), "{first:?}");
        let pinged_at = started.elapsed();
        let second = silent.next_frame().await;
        assert!(
            matches!(second, Some(RawFrame::Close(Some(1001)))),
            "{second:?}"
        );
        let closed_at = started.elapsed();
        (pinged_at, closed_at)
    };
    let ((pinged_at, closed_at), ()) = tokio::join!(
        async {
            tokio::time::timeout(Duration::from_secs(10), dropping)
                .await
                .unwrap()
        },
        talking
    );
    assert!(
        pinged_at >= Duration::from_millis(900) && pinged_at < Duration::from_millis(2500),
        "pinged after {pinged_at:?}"
    );
    assert!(
        closed_at >= pinged_at + Duration::from_millis(900)
            && closed_at < Duration::from_millis(4000),
        "closed after {closed_at:?}"
    );
    // The talker outlived both timeouts several times over and still gets answers.
    assert_eq!(talker.request("rooms", json!({})).await["ok"], true);
}

#[tokio::test]
async fn http_bodies_over_the_limit_are_refused() {
    let server = Server::start_with(&[("CHAT_LIMITS_MAX_HTTP_BODY_BYTES", "64")]);
    let token = server.token("alice");
    let (status, body) =
        common::http_get_with_body(server.addr, "/api/rooms", &token, &[b'x'; 65]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, body) =
        common::http_get_with_body(server.addr, "/api/rooms", &token, &[b'x'; 64]).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_request_whose_headers_never_finish_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start_with(&[("CHAT_LIMITS_REQUEST_TIMEOUT_SECS", "1")]);
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("the server hangs up")
        .ok();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "hung up after {waited:?}"
    );
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
}
