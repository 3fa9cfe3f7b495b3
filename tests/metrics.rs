//! `GET /metrics` (PROTOCOL.md section 5): valid Prometheus text, and counters that move
//! with what happens on the real server.

mod common;

use std::time::{Duration, Instant};

use common::metrics::{parse_prometheus, scrape, value};
use common::Server;
use serde_json::json;

/// Scrapes until `series` has `expected` (gauges follow connection tasks asynchronously).
async fn wait_for(server: &Server, series: &str, expected: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = value(&scrape(server).await, series);
        if got == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {got}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next `error` event, past the `message:sent` echoes of earlier sends.
async fn next_error(client: &mut common::Client) -> serde_json::Value {
    loop {
        let frame = client.recv().await;
        if frame["event"] == "error" {
            return frame["data"].clone();
        }
        assert_eq!(frame["event"], "message:sent", "{frame}");
    }
}

const PLAIN: &str = "chat_connections{dialect=\"plain\"}";

#[test]
fn the_parser_refuses_malformed_pages() {
    for bad in [
        "x 1",                           // no TYPE
        "# TYPE x counter\nx one",       // not a number
        "# TYPE x counter\nx{a=b} 1",    // unquoted label
        "# TYPE x counter\nx{a=\"b\" 1", // unclosed labels
        "# TYPE x countr\nx 1",          // unknown type
        "# TYPE 1x counter\n1x 1",       // bad name
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_prometheus(bad)).is_err(),
            "accepted {bad:?}"
        );
    }
    let ok = parse_prometheus("# HELP x h\n# TYPE x counter\nx{a=\"b\"} 2\n");
    assert_eq!(ok["x{a=\"b\"}"], 2.0);
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_move_with_events() {
    let server = Server::start();
    let start = scrape(&server).await;
    assert_eq!(value(&start, "chat_messages_stored_total"), 0.0);
    assert_eq!(value(&start, PLAIN), 0.0);
    assert_eq!(value(&start, "chat_users_online"), 0.0);
    assert_eq!(value(&start, "chat_slow_consumers_total"), 0.0);
    assert_eq!(
        value(&start, "chat_rejected_total{code=\"forbidden\"}"),
        0.0
    );

    let mut alice = server.connect("alice").await;
    let mut alice_tab = server.connect("alice").await;
    let bob = server.connect("bob").await;
    wait_for(&server, PLAIN, 3.0).await;
    assert_eq!(value(&scrape(&server).await, "chat_users_online"), 2.0);

    for i in 0..3 {
        let ack = alice
            .request(
                "message",
                json!({"userId": "alice", "roomId": "alice-bob", "message": "hi",
                       "clientMessageId": format!("m{i}")}),
            )
            .await;
        assert_eq!(ack["ok"], true);
    }
    // A retry stores nothing new.
    let retry = alice
        .request(
            "message",
            json!({"userId": "alice", "roomId": "alice-bob", "message": "hi", "clientMessageId": "m0"}),
        )
        .await;
    assert_eq!(retry["ok"], true);
    let after_sends = scrape(&server).await;
    assert_eq!(value(&after_sends, "chat_messages_stored_total"), 3.0);
    let rounds = value(&after_sends, "chat_commit_batch_size_count");
    // Three sends, a retry and two profile writes; some may have shared a round.
    assert!((1.0..=6.0).contains(&rounds), "{rounds} rounds");
    assert!(value(&after_sends, "chat_commit_batch_size_sum") >= 4.0);
    assert_eq!(value(&after_sends, "chat_send_durable_seconds_count"), 4.0);
    assert_eq!(
        value(
            &after_sends,
            "chat_send_durable_seconds_bucket{le=\"+Inf\"}"
        ),
        4.0
    );
    assert!(value(&after_sends, "chat_send_durable_seconds_sum") > 0.0);
    // Every round that stored something committed once, with fsync.
    assert_eq!(value(&after_sends, "chat_commit_seconds_count"), rounds);
    assert!(value(&after_sends, "chat_commit_seconds_sum") > 0.0);

    // Refusals are counted by code, with and without ack, and over HTTP.
    let forbidden = alice
        .request(
            "message",
            json!({"userId": "bob", "roomId": "alice-bob", "message": "x"}),
        )
        .await;
    assert_eq!(forbidden["error"]["code"], "forbidden");
    alice.emit("no-such-event", json!({})).await;
    assert_eq!(next_error(&mut alice).await["code"], "unknown_event");
    alice
        .send_raw(tokio_tungstenite::tungstenite::Message::text("not json"))
        .await;
    assert_eq!(next_error(&mut alice).await["code"], "bad_request");
    let (status, _) = server.get("/api/rooms", None).await;
    assert_eq!(status, 401);
    let refused = scrape(&server).await;
    for (code, n) in [
        ("forbidden", 1.0),
        ("unknown_event", 1.0),
        ("bad_request", 1.0),
        ("unauthorized", 1.0),
        ("rate_limited", 0.0),
    ] {
        assert_eq!(
            value(&refused, &format!("chat_rejected_total{{code=\"{code}\"}}")),
            n,
            "{code}"
        );
    }
    assert_eq!(value(&refused, "chat_messages_stored_total"), 3.0);

    // Closing connections brings the gauges back down.
    alice_tab.ws.close(None).await.unwrap();
    wait_for(&server, PLAIN, 2.0).await;
    assert_eq!(value(&scrape(&server).await, "chat_users_online"), 2.0);
    drop(bob);
    wait_for(&server, PLAIN, 1.0).await;
    wait_for(&server, "chat_users_online", 1.0).await;
}
