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
    // The memory picture: the settings and what is held now.
    let rss = value(&start, "chat_process_resident_bytes");
    let rss_kib = server.rss_kib() as f64;
    assert!(
        rss > 0.5 * rss_kib * 1024.0 && rss < 2.0 * rss_kib * 1024.0,
        "{rss} bytes, /proc says {rss_kib} KiB"
    );
    assert_eq!(value(&start, "chat_redb_cache_bytes"), 16.0 * 1048576.0);
    assert_eq!(value(&start, "chat_recent_cache_rooms"), 0.0);
    assert_eq!(value(&start, "chat_recent_cache_bytes"), 0.0);
    assert_eq!(value(&start, "chat_recent_cache_evictions_total"), 0.0);
    assert_eq!(value(&start, "chat_outbound_queued_bytes"), 0.0);
    assert_eq!(value(&start, "chat_outbound_budget_cuts_total"), 0.0);

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
    assert_eq!(value(&refused, "chat_recent_cache_rooms"), 1.0);
    assert!(value(&refused, "chat_recent_cache_bytes") > 0.0);

    // Closing connections brings the gauges back down.
    alice_tab.ws.close(None).await.unwrap();
    wait_for(&server, PLAIN, 2.0).await;
    assert_eq!(value(&scrape(&server).await, "chat_users_online"), 2.0);
    drop(bob);
    wait_for(&server, PLAIN, 1.0).await;
    wait_for(&server, "chat_users_online", 1.0).await;
}

#[tokio::test]
async fn the_latest_50_cache_stays_within_its_byte_budget_and_snapshots_stay_whole() {
    const BUDGET: f64 = 16384.0;
    let server = Server::start_with(&[
        ("CHAT_MEMORY_RECENT_CACHE_BYTES", "16KiB"),
        ("CHAT_MEMORY_REDB_CACHE_BYTES", "8MiB"),
    ]);
    assert_eq!(
        value(&scrape(&server).await, "chat_redb_cache_bytes"),
        8.0 * 1048576.0
    );
    let mut alice = server.connect("alice").await;
    let text = "y".repeat(3000);
    // Three rooms of ~3 KB messages: more than the budget holds together, and the last
    // one alone grows past it; every snapshot must still carry the room's whole history.
    for (room, count) in [("alice-bob", 3), ("alice-carol", 3), ("alice-dave", 8)] {
        for i in 1..=count {
            let ack = alice
                .request(
                    "message",
                    json!({"userId": "alice", "roomId": room, "message": text,
                           "clientMessageId": format!("{room}-{i}")}),
                )
                .await;
            assert_eq!(ack["ok"], true, "{ack}");
            let sent = alice.recv_event("message:sent").await;
            assert_eq!(sent["roomId"], room);
            let ids = common::ids(&sent["messages"]);
            assert_eq!(ids, (1..=i).rev().collect::<Vec<u64>>(), "{room}");
            let samples = scrape(&server).await;
            let bytes = value(&samples, "chat_recent_cache_bytes");
            assert!(bytes <= BUDGET, "{bytes} bytes cached in {room}");
        }
    }
    let samples = scrape(&server).await;
    assert!(value(&samples, "chat_recent_cache_evictions_total") >= 2.0);
    // alice-dave (8 x 3 KB) is over the budget alone, so nothing is kept.
    assert_eq!(value(&samples, "chat_recent_cache_rooms"), 0.0);
    // A retry in a room that was dropped is answered from disk, whole.
    let retry = alice
        .request(
            "message",
            json!({"userId": "alice", "roomId": "alice-bob", "message": text,
                   "clientMessageId": "alice-bob-1"}),
        )
        .await;
    assert_eq!(retry["ok"], true, "{retry}");
    let sent = alice.recv_event("message:sent").await;
    assert_eq!(common::ids(&sent["messages"]), [3, 2, 1]);
}
