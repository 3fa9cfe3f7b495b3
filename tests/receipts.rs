//! Read receipts, unread counts, typing and profiles.

mod common;

use std::time::Duration;

use common::Server;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const QUIET: Duration = Duration::from_millis(300);

fn read_item(reader: &str, room: &str, id: u64, seen: &str) -> Value {
    json!({ "userId": reader, "roomId": room, "messageId": id, "seenDate": seen })
}

async fn sent_at(client: &mut common::Client, room: &str, text: &str) -> String {
    let ack = client.send_message(room, text).await;
    ack["message"]["sentAt"].as_str().unwrap().to_owned()
}

async fn unread(client: &mut common::Client, room: &str) -> u64 {
    let reply = client.request("rooms", json!({})).await;
    reply["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["roomId"] == room)
        .map_or(0, |r| r["unread"].as_u64().unwrap())
}

#[tokio::test]
async fn seen_goes_to_every_tab_of_the_sender_and_not_to_the_reader() {
    let server = Server::start();
    let mut alice1 = server.connect("alice").await;
    let mut alice2 = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut bob_other_tab = server.connect("bob").await;
    let sent = sent_at(&mut alice1, "alice-bob", "hello").await;
    for c in [&mut alice1, &mut alice2, &mut bob, &mut bob_other_tab] {
        c.recv_event("message:sent").await;
    }

    let reply = bob
        .request(
            "message:read",
            json!([read_item("bob", "alice-bob", 1, "2999-01-01T00:00:00Z")]),
        )
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["rejected"], json!([]));
    let seen_at = reply["seen"][0]["seenAt"].as_str().unwrap().to_owned();
    assert!(seen_at.as_str() >= sent.as_str());
    let expected =
        json!([{ "userId": "bob", "roomId": "alice-bob", "messageId": 1, "seenAt": seen_at }]);
    assert_eq!(reply["seen"], expected);
    for tab in [&mut alice1, &mut alice2] {
        // A read implies received: the delivered mark comes first (tests/lifecycle.rs).
        assert_eq!(tab.recv_event("message:delivered").await[0]["messageId"], 1);
        assert_eq!(tab.recv_event("message:seen").await, expected);
    }
    bob.expect_silence(QUIET).await;
    bob_other_tab.expect_silence(QUIET).await;

    // Reading again changes nothing and emits nothing.
    let again = bob
        .request(
            "message:read",
            json!([read_item("bob", "alice-bob", 1, "2026-01-01T00:00:00Z")]),
        )
        .await;
    assert_eq!(
        (again["seen"].clone(), again["rejected"].clone()),
        (json!([]), json!([]))
    );
    alice1.expect_silence(QUIET).await;

    // The next snapshot carries the seenAt.
    alice1.send_message("alice-bob", "second").await;
    let room = alice1.recv_event("message:sent").await;
    assert_eq!(room["messages"][1]["seenAt"], seen_at.as_str());
}

#[tokio::test]
async fn seen_date_is_clamped_into_sent_at_and_now() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let first = sent_at(&mut alice, "alice-bob", "one").await;
    sent_at(&mut alice, "alice-bob", "two").await;
    let before_read = wire_now();
    let reply = bob
        .request(
            "message:read",
            json!([
                read_item("bob", "alice-bob", 1, "2001-01-01T00:00:00.000Z"),
                read_item("bob", "alice-bob", 2, "2999-12-31T23:59:59.999+05:00"),
            ]),
        )
        .await;
    let after_read = wire_now();
    assert_eq!(
        reply["seen"][0]["seenAt"],
        first.as_str(),
        "never before sentAt"
    );
    let future = reply["seen"][1]["seenAt"].as_str().unwrap();
    assert!(
        future >= before_read.as_str() && future <= after_read.as_str(),
        "never after now: {future}"
    );

    // Lower-case separators are accepted; an early date still clamps to sentAt.
    let third = sent_at(&mut alice, "alice-bob", "three").await;
    let reply = bob
        .request(
            "message:read",
            json!([read_item(
                "bob",
                "alice-bob",
                3,
                "2000-01-01t00:00:00.123999z"
            )]),
        )
        .await;
    assert_eq!(reply["seen"][0]["seenAt"], third.as_str());
}

/// Now, in the wire format, from the test's clock.
fn wire_now() -> String {
    use chat_server::protocol::time::{format_millis, now_millis};
    format_millis(now_millis())
}

#[tokio::test]
async fn mixed_arrays_apply_the_valid_items_and_report_the_rest_by_index() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut carol = server.connect("carol").await;
    sent_at(&mut alice, "alice-bob", "a1").await;
    bob.send_message("alice-bob", "b1").await;
    carol.send_message("bob-carol", "c1").await;
    for _ in 0..2 {
        alice.recv_event("message:sent").await;
    }
    for _ in 0..3 {
        bob.recv_event("message:sent").await;
    }
    carol.recv_event("message:sent").await;

    let items = json!([
        read_item("bob", "alice-bob", 1, "2026-01-01T00:00:00Z"),   // ok
        read_item("bob", "alice-bob", 2, "2026-01-01T00:00:00Z"),   // own message
        read_item("bob", "alice-bob", 99, "2026-01-01T00:00:00Z"),  // not found
        read_item("alice", "alice-bob", 1, "2026-01-01T00:00:00Z"), // impersonation
        read_item("bob", "alice-carol", 1, "2026-01-01T00:00:00Z"), // foreign room
        read_item("bob", "bob-alice", 1, "2026-01-01T00:00:00Z"),   // not canonical
        read_item("bob", "alice-bob", 1, "yesterday"),               // bad date
        { "userId": "bob", "roomId": "alice-bob", "messageId": 0, "seenDate": "2026-01-01T00:00:00Z" },
        { "userId": "bob", "roomId": "alice-bob" },
        read_item("bob", "bob-carol", 1, "2026-01-01T00:00:00Z"),   // ok, other room
    ]);
    let reply = bob.request("message:read", items.clone()).await;
    assert_eq!(reply["ok"], true);
    let codes: Vec<(u64, String)> = reply["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(u64, String)> = [
        (1, "forbidden"),
        (2, "not_found"),
        (3, "forbidden"),
        (4, "forbidden"),
        (5, "invalid_room"),
        (6, "bad_request"),
        (7, "bad_request"),
        (8, "bad_request"),
    ]
    .iter()
    .map(|(i, c)| (*i, c.to_string()))
    .collect();
    assert_eq!(codes, expected);
    assert_eq!(reply["seen"].as_array().unwrap().len(), 2);

    // Each partner hears only of their own messages.
    alice.recv_event("message:delivered").await;
    let to_alice = alice.recv_event("message:seen").await;
    assert_eq!(to_alice.as_array().unwrap().len(), 1);
    assert_eq!(to_alice[0]["roomId"], "alice-bob");
    carol.recv_event("message:delivered").await;
    let to_carol = carol.recv_event("message:seen").await;
    assert_eq!(to_carol[0]["roomId"], "bob-carol");

    // Without ack: one error event with the first code and the whole list.
    bob.emit(
        "message:read",
        json!([read_item("bob", "alice-bob", 77, "2026-01-01T00:00:00Z")]),
    )
    .await;
    let error = bob.recv_event("error").await;
    assert_eq!(error["code"], "not_found");
    assert_eq!(error["event"], "message:read");
    assert_eq!(error["rejected"][0]["index"], 0);

    // Not an array of 1 to 100 objects: the whole request is refused.
    for bad in [
        json!([]),
        json!({}),
        json!([1]),
        json!((0..101)
            .map(|_| read_item("bob", "alice-bob", 1, "2026-01-01T00:00:00Z"))
            .collect::<Vec<_>>()),
    ] {
        let reply = bob.request("message:read", bad).await;
        assert_eq!(reply["error"]["code"], "bad_request");
    }
}

#[tokio::test]
async fn unread_counts_go_up_and_down_and_survive_a_restart() {
    let mut server = Server::start();
    {
        let mut alice = server.connect("alice").await;
        let mut bob = server.connect("bob").await;
        for i in 0..3 {
            alice.send_message("alice-bob", &format!("m{i}")).await;
        }
        bob.send_message("alice-bob", "reply").await;
        assert_eq!(unread(&mut bob, "alice-bob").await, 3);
        assert_eq!(unread(&mut alice, "alice-bob").await, 1);
        bob.request(
            "message:read",
            json!([read_item("bob", "alice-bob", 2, "2026-01-01T00:00:00Z")]),
        )
        .await;
        assert_eq!(unread(&mut bob, "alice-bob").await, 2);
        alice.send_message("alice-alice", "self").await;
        assert_eq!(unread(&mut alice, "alice-alice").await, 0);
    }
    server.kill9();
    server.restart();
    let mut bob = server.connect("bob").await;
    assert_eq!(unread(&mut bob, "alice-bob").await, 2);
    let mut alice = server.connect("alice").await;
    assert_eq!(unread(&mut alice, "alice-bob").await, 1);
}

#[tokio::test]
async fn typing_reaches_the_partner_only() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob1 = server.connect("bob").await;
    let mut bob2 = server.connect("bob").await;
    let mut carol = server.connect("carol").await;
    let reply = alice
        .request("typing", json!({ "roomId": "alice-bob" }))
        .await;
    assert_eq!(reply, json!({ "ok": true }));
    for tab in [&mut bob1, &mut bob2] {
        assert_eq!(
            tab.recv_event("typing").await,
            json!({ "roomId": "alice-bob", "userId": "alice" })
        );
    }
    alice.expect_silence(QUIET).await;
    carol.expect_silence(QUIET).await;

    let reply = alice
        .request("typing", json!({ "roomId": "alice-alice" }))
        .await;
    assert_eq!(reply["ok"], true);
    alice.expect_silence(QUIET).await;

    let reply = carol
        .request("typing", json!({ "roomId": "alice-bob" }))
        .await;
    assert_eq!(reply["error"]["code"], "forbidden");
    let reply = alice
        .request("typing", json!({ "roomId": "bob-alice" }))
        .await;
    assert_eq!(reply["error"]["code"], "invalid_room");
    let reply = alice
        .request("typing", json!({ "room": "alice-bob" }))
        .await;
    assert_eq!(reply["error"]["code"], "bad_request");
    bob1.expect_silence(QUIET).await;
}

#[tokio::test]
async fn partners_are_shown_by_their_latest_name_while_offline() {
    let server = Server::start();
    {
        let token = server.named_token("bob", "Bob Builder");
        let mut bob = server.connect_token("bob", &token).await;
        bob.send_message("alice-bob", "hi").await;
    }
    let mut alice = server.connect("alice").await;
    let rooms = alice.request("rooms", json!({})).await;
    assert_eq!(
        rooms["rooms"][0]["user"],
        json!({ "id": "bob", "name": "Bob Builder" })
    );
    let page = alice
        .request("messages", json!({ "roomId": "alice-bob" }))
        .await;
    assert_eq!(page["room"]["user"]["name"], "Bob Builder");
    // A user never seen is named by their id.
    let empty = alice
        .request("messages", json!({ "roomId": "alice-zed" }))
        .await;
    assert_eq!(empty["room"]["user"], json!({ "id": "zed", "name": "zed" }));
    assert_eq!(empty["room"]["messages"], json!([]));
}

/// Regression (issue 12): the name from a token used to be written after the 101, so a
/// read right after the partner connected could still show the old name (or the id). Now
/// it is durable before the connection is usable: no sleep, no retry below.
#[tokio::test]
async fn a_new_name_is_seen_by_every_read_once_its_connection_is_open() {
    let server = Server::start();
    let token = server.named_token("bob", "Bob Builder");
    let mut bob = server.connect_token("bob", &token).await;
    bob.send_message("alice-bob", "hi").await;
    let mut alice = server.connect("alice").await;
    let alice_token = server.token("alice");

    let _robert = server
        .connect_token("bob", &server.named_token("bob", "Robert"))
        .await;
    let rooms = alice.request("rooms", json!({})).await;
    assert_eq!(
        rooms["rooms"][0]["user"],
        json!({ "id": "bob", "name": "Robert" })
    );

    let _rob = server
        .connect_token("bob", &server.named_token("bob", "Rob"))
        .await;
    let page = alice
        .request("messages", json!({ "roomId": "alice-bob" }))
        .await;
    assert_eq!(page["room"]["user"]["name"], "Rob");

    let _bobby = server
        .connect_token("bob", &server.named_token("bob", "Bobby"))
        .await;
    let (status, page) = server
        .get("/api/rooms/alice-bob/messages", Some(&alice_token))
        .await;
    assert_eq!(
        (status, page["room"]["user"]["name"].as_str()),
        (200, Some("Bobby"))
    );

    // A user never seen before, in a room with no message yet.
    let _zed = server
        .connect_token("zed", &server.named_token("zed", "Zed"))
        .await;
    let empty = alice
        .request("messages", json!({ "roomId": "alice-zed" }))
        .await;
    assert_eq!(empty["room"]["user"], json!({ "id": "zed", "name": "Zed" }));
}

/// Only a changed name costs a commit before the connection opens: reconnecting with the
/// same name (and connecting without one, never having had one) writes nothing.
#[tokio::test]
async fn only_a_changed_name_is_written() {
    let server = Server::start();
    let commits = |samples: &std::collections::HashMap<String, f64>| {
        common::metrics::value(samples, "chat_commit_batch_size_count")
    };
    let token = server.named_token("bob", "Bob");
    let first = server.connect_token("bob", &token).await;
    let after_first = commits(&common::metrics::scrape(&server).await);
    drop(first);
    let _again = server.connect_token("bob", &token).await;
    let _unnamed = server.connect("carol").await;
    let after_again = commits(&common::metrics::scrape(&server).await);
    assert_eq!(after_again, after_first);
    let _renamed = server
        .connect_token("bob", &server.named_token("bob", "Robert"))
        .await;
    let after_rename = commits(&common::metrics::scrape(&server).await);
    assert_eq!(after_rename, after_first + 1.0);
}

/// Sends frames in one TCP write, so the server reads them back to back.
async fn send_together(client: &mut common::Client, frames: [Value; 2]) {
    for frame in frames {
        client
            .ws
            .feed(Message::text(frame.to_string()))
            .await
            .unwrap();
    }
    client.ws.flush().await.unwrap();
}

#[tokio::test]
async fn a_request_sees_every_earlier_write_of_its_own_connection() {
    let server = Server::start();
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    for round in 1..=5u64 {
        let id = alice.send_message("alice-bob", "read me").await["message"]["id"]
            .as_u64()
            .unwrap();
        // The read's commit must land before `rooms` is answered.
        let now = "2999-01-01T00:00:00Z";
        let read = json!({ "event": "message:read", "ack": "read",
            "data": [read_item("bob", "alice-bob", id, now)] });
        let rooms = json!({ "event": "rooms", "data": {}, "ack": "rooms" });
        send_together(&mut bob, [read, rooms]).await;
        let read = bob.wait_ack(json!("read")).await;
        assert_eq!(read["seen"][0]["messageId"], id, "{read}");
        let rooms = bob.wait_ack(json!("rooms")).await;
        assert_eq!(rooms["rooms"][0]["unread"], 0, "round {round}: {rooms}");

        // The same for a send followed at once by a history page.
        let send = json!({ "event": "message", "ack": "send",
            "data": { "userId": "bob", "roomId": "alice-bob", "message": "answer" } });
        let page = json!({ "event": "messages", "ack": "page",
            "data": { "roomId": "alice-bob", "limit": 1 } });
        send_together(&mut bob, [send, page]).await;
        let sent = bob.wait_ack(json!("send")).await;
        let page = bob.wait_ack(json!("page")).await;
        assert_eq!(
            page["room"]["messages"][0]["id"], sent["message"]["id"],
            "round {round}: {page}"
        );
    }
}
