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

/// Sends `text` from alice into `room` and waits for alice's own `message:sent`, so that
/// nothing stays queued for her and the queued total is the stalled clients' alone.
async fn send_and_echo(alice: &mut common::Client, room: &str, text: &str, id: &str) {
    let ack = alice
        .request("message", send("alice", room, text, id))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    let echo = alice.recv_event("message:sent").await;
    assert_eq!(echo["roomId"], room, "{echo}");
}

/// Reads a raw client's frames until the close frame, returning its code.
async fn close_code(client: &mut common::RawWs) -> Option<u16> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.next_frame().await {
                Some(RawFrame::Close(code)) => return code,
                Some(_) => continue,
                None => panic!("connection ended without a close frame"),
            }
        }
    })
    .await
    .expect("a close frame in time")
}

#[tokio::test]
async fn over_the_global_outbound_budget_the_largest_stalled_queues_are_cut_first() {
    const BUDGET: f64 = 1048576.0;
    let server = Server::start_with(&[
        // Each connection could queue 64 MiB: only the global budget can cut here.
        ("CHAT_LIMITS_MAX_OUTBOUND_BYTES", "67108864"),
        ("CHAT_MEMORY_OUTBOUND_TOTAL_BYTES", "1MiB"),
    ]);
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut small = server.raw_ws("small", Some(4096)).await;
    let mut big1 = server.raw_ws("big1", Some(4096)).await;
    let mut big2 = server.raw_ws("big2", Some(4096)).await;
    let text = "x".repeat(2000);

    // The small client stops reading; it gets just enough to fill its socket and leave
    // something in its queue (events carry the latest 50, so they grow to ~105 KB).
    let mut sent = 0;
    while metric(&server, "chat_outbound_queued_bytes").await == 0.0 {
        assert!(sent < 300, "the small client's socket never filled");
        send_and_echo(&mut alice, "alice-small", &text, &format!("s{sent}")).await;
        sent += 1;
    }
    let small_queue = metric(&server, "chat_outbound_queued_bytes").await;
    assert!(small_queue < BUDGET / 4.0, "{small_queue}");

    // Two big stalled clients take turns; once all queues together pass 1 MiB the
    // largest is cut, then the other as it grows past the budget in turn.
    let mut sent = 0;
    while metric(&server, "chat_outbound_budget_cuts_total").await < 2.0 {
        assert!(sent < 600, "the big queues were not cut");
        let queued = metric(&server, "chat_outbound_queued_bytes").await;
        assert!(queued <= BUDGET, "{queued} queued");
        for room in ["alice-big1", "alice-big2"] {
            send_and_echo(&mut alice, room, &text, &format!("{room}-{sent}")).await;
        }
        sent += 1;
    }
    assert_eq!(
        metric(&server, "chat_outbound_budget_cuts_total").await,
        2.0
    );
    // What is left queued is the small client's alone.
    assert!(metric(&server, "chat_outbound_queued_bytes").await <= small_queue);
    assert_eq!(close_code(&mut big1).await, Some(1008));
    assert_eq!(close_code(&mut big2).await, Some(1008));

    // The active pair is not touched.
    let ack = bob
        .request("message", send("bob", "alice-bob", "still here", "b1"))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(
        alice.recv_event("message:sent").await["messages"][0]["message"],
        "still here"
    );
    // Neither is the small stalled client: once it reads, it gets everything it was sent,
    // then new events, and no close.
    send_and_echo(&mut alice, "alice-small", "welcome back", "s-last").await;
    let mut seen = 0;
    let last = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match small.next_frame().await {
                Some(RawFrame::Text(text)) => {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    seen += 1;
                    let newest = &frame["data"]["messages"][0];
                    assert_eq!(newest["id"], seen, "{newest}");
                    if newest["message"] == "welcome back" {
                        return seen;
                    }
                }
                Some(RawFrame::Ping) => continue,
                other => panic!("the small client got {other:?}"),
            }
        }
    })
    .await
    .expect("the small client's backlog in time");
    assert_eq!(last, sent_small_total(&server).await);
    assert_eq!(metric(&server, "chat_slow_consumers_total").await, 2.0);
}

/// Messages stored so far in the small client's room, by the history API.
async fn sent_small_total(server: &Server) -> u64 {
    let token = server.token("small");
    let (status, body) = server
        .get("/api/rooms/alice-small/messages?limit=1", Some(&token))
        .await;
    assert_eq!(status, 200, "{body}");
    body["room"]["messages"][0]["id"].as_u64().expect("an id")
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
